//! Webhooks: the outbox seam, signed delivery with retries, and the wake-ups
//! of the live event stream.
//!
//! Owns: [`Outbox`], the one way anything in the process emits an event.
//! Call state changes go through [`Outbox::call_created`],
//! [`Outbox::call_ringing`], [`Outbox::call_answered`], [`Outbox::call_dtmf`]
//! and [`Outbox::call_ended`] (the call layer's `Transitions` calls them),
//! campaign status changes through [`Outbox::campaign_transition`] and
//! [`Outbox::campaign_completed_if_done`],
//! which write the call row and the event (and its deliveries) in one store
//! transaction ([`crate::store::events`]) and then wake the delivery worker
//! and the event streams (on PostgreSQL the other daemons' too, by
//! LISTEN/NOTIFY: [`Outbox::listening`]). A crash after the commit
//! loses nothing: the worker finds the rows on the next start. The
//! [`worker`] claims due deliveries with a lease, signs ([`crate::signing`]), checks the
//! address ([`crate::net::guard`]), POSTs, classifies the result and schedules the next
//! attempt ([`policy`]).
//!
//! Must not: decide anything about calls (that is the call layer's), or hold
//! SQL (that is the store's).

pub mod event;
pub mod policy;
pub mod worker;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Notify, watch};

use crate::model::{CallStatus, CampaignStatus, EventType};
use crate::store::calls::{CallRecord, EndFields, NewCall};
use crate::store::campaigns::CampaignRecord;
use crate::store::events::EventRecord;
use crate::store::notify::Notice;
use crate::store::{Store, StoreError};
use event::TrunkEventData;

/// Installs ring as the process's TLS crypto provider (https endpoints).
/// Idempotent: a provider installed earlier stays.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Emits events: writes them with the change that caused them and wakes
/// whoever waits for them. Cheap to clone.
#[derive(Clone)]
pub struct Outbox {
    /// Where events are written, with the change that caused them.
    store: Store,
    /// Wakes the delivery worker when new deliveries are due.
    wake: Arc<Notify>,
    /// Counts events emitted by this process; event streams wait on it.
    emitted: Arc<watch::Sender<u64>>,
    /// Set once when the daemon stops; ends the worker and every stream.
    closing: Arc<watch::Sender<bool>>,
    /// How often an event stream looks for events it was not woken for
    /// (see [`Outbox::stream_poll`]).
    stream_poll: Duration,
}

/// An event stream's poll on SQLite: events written by another process
/// on the same file (the CLI) have no wake-up.
const SQLITE_STREAM_POLL: Duration = Duration::from_millis(500);

impl Outbox {
    pub fn new(store: Store) -> Self {
        Self {
            store,
            wake: Arc::new(Notify::new()),
            emitted: Arc::new(watch::Sender::new(0)),
            closing: Arc::new(watch::Sender::new(false)),
            stream_poll: SQLITE_STREAM_POLL,
        }
    }

    /// On PostgreSQL, wakes the worker and the event streams when another
    /// daemon writes events (LISTEN/NOTIFY, [`crate::store::notify`]), and
    /// lets the streams poll only every `safety_poll` for a notice that got
    /// lost. On SQLite nothing changes: this process is the only writer
    /// that matters and wakes them itself. Call inside the runtime.
    pub fn listening(mut self, safety_poll: Duration) -> Self {
        let wake = self.wake.clone();
        let emitted = self.emitted.clone();
        let on_notice = Arc::new(move |notice: Notice| {
            if notice.deliveries {
                wake.notify_one();
            }
            emitted.send_modify(|n| *n = n.wrapping_add(1));
        });
        if self.store.listen(on_notice, self.closing()) {
            self.stream_poll = safety_poll;
        }
        self
    }

    /// How often an event stream looks for new events without a wake-up.
    pub fn stream_poll(&self) -> Duration {
        self.stream_poll
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// A new call and its first event (`call.ringing` for an inbound call
    /// that rings, `call.initiated` for an outbound one or an inbound one
    /// refused before it rang), in one transaction.
    pub async fn call_created(&self, call: NewCall<'_>) -> Result<CallRecord, StoreError> {
        let emit = |c: &CallRecord| {
            let kind = if c.status == CallStatus::Ringing {
                EventType::CallRinging
            } else {
                EventType::CallInitiated
            };
            event::call_event(kind, c, None)
        };
        let mark = self.store.deliveries_written();
        let record = self.store.call_created(call, Some(Box::new(emit))).await?;
        self.emitted(mark);
        Ok(record)
    }

    /// `call.ringing` (the first 18x of an outbound call).
    pub async fn call_ringing(&self, id: &str) -> Result<CallRecord, StoreError> {
        let emit = |c: &CallRecord| event::call_event(EventType::CallRinging, c, None);
        let mark = self.store.deliveries_written();
        let record = self.store.call_ringing(id, Some(Box::new(emit))).await?;
        self.emitted(mark);
        Ok(record)
    }

    /// `call.answered`.
    pub async fn call_answered(
        &self,
        id: &str,
        dialog: Option<&str>,
    ) -> Result<CallRecord, StoreError> {
        let emit = |c: &CallRecord| event::call_event(EventType::CallAnswered, c, None);
        let mark = self.store.deliveries_written();
        let record = self
            .store
            .call_answered(id, dialog, Some(Box::new(emit)))
            .await?;
        self.emitted(mark);
        Ok(record)
    }

    /// `call.dtmf`: a digit received (delivered to endpoints that opt in).
    pub async fn call_dtmf(&self, id: &str, digit: char) -> Result<CallRecord, StoreError> {
        let text = digit.to_string();
        let emit = move |c: &CallRecord| event::call_event(EventType::CallDtmf, c, Some(&text));
        let mark = self.store.deliveries_written();
        let record = self
            .store
            .call_dtmf(id, digit, Some(Box::new(emit)))
            .await?;
        self.emitted(mark);
        Ok(record)
    }

    /// `call.ended`, carrying the final status, end reason, SIP code and
    /// duration in the call object.
    pub async fn call_ended(&self, id: &str, end: EndFields<'_>) -> Result<CallRecord, StoreError> {
        let emit = |c: &CallRecord| event::call_event(EventType::CallEnded, c, None);
        let mark = self.store.deliveries_written();
        let record = self.store.call_ended(id, end, Some(Box::new(emit))).await?;
        self.emitted(mark);
        Ok(record)
    }

    /// `call.analyzed`: the call's structured result stored with its event
    /// in one transaction, so a result is never stored without its event.
    pub async fn call_analyzed(&self, id: &str, analysis: &str) -> Result<CallRecord, StoreError> {
        let emit = |c: &CallRecord| event::call_event(EventType::CallAnalyzed, c, None);
        let mark = self.store.deliveries_written();
        let record = self
            .store
            .call_analyzed(id, analysis, Some(Box::new(emit)))
            .await?;
        self.emitted(mark);
        Ok(record)
    }

    /// A recording's file is closed: its row completed, with
    /// `recording.completed` (unless it failed) in the same transaction.
    pub async fn recording_completed(
        &self,
        call_id: &str,
        totals: crate::store::recordings::RecordingTotals,
        failed: bool,
        emit: crate::store::recordings::RecordingEmit<'_>,
    ) -> Result<crate::store::recordings::RecordingRecord, StoreError> {
        let mark = self.store.deliveries_written();
        let record = self
            .store
            .recording_completed(call_id, totals, failed, emit)
            .await?;
        self.emitted(mark);
        Ok(record)
    }

    /// A trunk event (`trunk.*`): its registration or its health changed.
    pub async fn trunk_changed(
        &self,
        event_type: EventType,
        data: TrunkEventData,
    ) -> Result<EventRecord, StoreError> {
        let mark = self.store.deliveries_written();
        let record = self
            .store
            .emit(&event::trunk_event(event_type, data)?)
            .await?;
        self.emitted(mark);
        Ok(record)
    }

    /// `api_key.cap_reached`: a key reached a daily cap.
    pub async fn api_key_cap_reached(
        &self,
        data: event::ApiKeyEventData,
        livemode: bool,
    ) -> Result<EventRecord, StoreError> {
        let mark = self.store.deliveries_written();
        let record = self
            .store
            .emit(&event::api_key_event(data, livemode)?)
            .await?;
        self.emitted(mark);
        Ok(record)
    }

    /// A campaign moves from one of `from` to `to` (an operator's action),
    /// with its event of type `kind` in the same transaction.
    pub async fn campaign_transition(
        &self,
        id: &str,
        from: &[CampaignStatus],
        to: CampaignStatus,
        kind: EventType,
    ) -> Result<CampaignRecord, StoreError> {
        let emit = move |c: &CampaignRecord| event::campaign_event(kind, c);
        let mark = self.store.deliveries_written();
        let record = self
            .store
            .transition_campaign(id, from, to, Some(&emit))
            .await?;
        self.emitted(mark);
        Ok(record)
    }

    /// A running campaign with nothing left to dial becomes `completed`,
    /// with `campaign.completed`; the campaign when it did.
    pub async fn campaign_completed_if_done(
        &self,
        id: &str,
    ) -> Result<Option<CampaignRecord>, StoreError> {
        let emit = |c: &CampaignRecord| event::campaign_event(EventType::CampaignCompleted, c);
        let mark = self.store.deliveries_written();
        let record = self
            .store
            .complete_campaign_if_done(id, Some(&emit))
            .await?;
        if record.is_some() {
            self.emitted(mark);
        }
        Ok(record)
    }

    /// A `webhook.test` event delivered to one endpoint only.
    pub async fn test_event(
        &self,
        endpoint_id: &str,
        livemode: bool,
    ) -> Result<EventRecord, StoreError> {
        let mark = self.store.deliveries_written();
        let record = self
            .store
            .emit(&event::test_event(endpoint_id, livemode)?)
            .await?;
        self.emitted(mark);
        Ok(record)
    }

    /// Deliveries became due outside an emit (replay, endpoint enabled).
    pub fn deliveries_due(&self) {
        self.wake.notify_one();
    }

    /// Stops the worker and ends every event stream.
    pub fn close(&self) {
        self.closing.send_replace(true);
        self.wake.notify_one();
    }

    /// Changes each time this process emits an event.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.emitted.subscribe()
    }

    /// Becomes true when the daemon stops.
    pub fn closing(&self) -> watch::Receiver<bool> {
        self.closing.subscribe()
    }

    /// An event was written; `mark` is [`Store::deliveries_written`] from
    /// before. The worker is woken only if deliveries were written since:
    /// most events (no endpoint wants them) cost no claim query.
    fn emitted(&self, mark: u64) {
        if self.store.deliveries_written() != mark {
            self.wake.notify_one();
        }
        self.emitted.send_modify(|n| *n = n.wrapping_add(1));
    }
}
