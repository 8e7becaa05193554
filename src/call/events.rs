//! Call state transitions: each one writes the call row through the webhook
//! outbox (one transaction holding the row change and its `call.*` event)
//! and then publishes the committed row on the in-process bus.
//!
//! The transcript of an agent's conversation is written here too, just
//! before the end (no event of its own: `call.ended` carries the summary),
//! and the call's analysis after it (`call.analyzed`).
//!
//! Must not: decide anything. The call tasks call these at each change; a
//! store failure is logged and the call goes on (audio matters more than
//! the record).

use std::sync::Arc;

use tokio::sync::broadcast;

use super::EndReason;
use crate::model::{AnsweredBy, EventType};
use crate::store::Store;
use crate::store::calls::{CallRecord, EndFields, NewCall};
use crate::store::transcripts::NewTurn;
use crate::webhook::Outbox;

/// Events buffered per subscriber before a slow one starts missing some.
pub(crate) const BUS_CAPACITY: usize = 1024;

/// What changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Inbound: the INVITE was routed and rings. Outbound: queued.
    Created,
    /// Outbound: the first 18x.
    Ringing,
    Answered,
    Dtmf(char),
    Ended,
}

impl Change {
    /// The webhook event the change writes; `Created` writes
    /// `call.ringing` for a call that rings at once (inbound).
    pub fn event_type(&self) -> EventType {
        match self {
            Change::Created => EventType::CallInitiated,
            Change::Ringing => EventType::CallRinging,
            Change::Answered => EventType::CallAnswered,
            Change::Dtmf(_) => EventType::CallDtmf,
            Change::Ended => EventType::CallEnded,
        }
    }
}

/// What the bus carries: one state change of a call and the call row as
/// committed with it. (Not `sip::CallEvent`, which is what the SIP dialog
/// reports to the call task.)
#[derive(Debug, Clone)]
pub struct CallUpdate {
    pub change: Change,
    pub call: Arc<CallRecord>,
}

/// The store writes and the bus, together. Cheap to clone: every call
/// task and its screen hold one.
#[derive(Clone)]
pub struct Transitions {
    /// Writes each change with its event in one transaction and wakes the
    /// webhook worker; the write is awaited, so the bus never runs ahead of
    /// the store.
    outbox: Outbox,
    /// The committed changes, for in-process subscribers (the campaign
    /// outcome feed); a subscriber that lags more than [`BUS_CAPACITY`]
    /// misses some and must reconcile from the store.
    bus: broadcast::Sender<CallUpdate>,
}

impl Transitions {
    pub fn new(outbox: Outbox) -> Self {
        let (bus, _) = broadcast::channel(BUS_CAPACITY);
        Self { outbox, bus }
    }

    /// A receiver of every call update from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<CallUpdate> {
        self.bus.subscribe()
    }

    pub fn store(&self) -> &Store {
        self.outbox.store()
    }

    /// The outbox the transitions write through (trunk events use it too).
    pub fn outbox(&self) -> &Outbox {
        &self.outbox
    }

    fn publish(&self, change: Change, result: crate::store::Result<CallRecord>) {
        match result {
            Ok(call) => {
                // No subscriber is fine: nothing listens yet.
                let _ = self.bus.send(CallUpdate {
                    change,
                    call: Arc::new(call),
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, event = %change.event_type(), "call record not written")
            }
        }
    }

    /// Records a new call; the error is returned because without a row
    /// there is no call to run.
    pub async fn created(&self, call: NewCall<'_>) -> crate::store::Result<Arc<CallRecord>> {
        let record = Arc::new(self.outbox.call_created(call).await?);
        let _ = self.bus.send(CallUpdate {
            change: Change::Created,
            call: Arc::clone(&record),
        });
        Ok(record)
    }

    /// The INVITE went out with `sip_call_id`, through `trunk` (an id; it
    /// changes when the call fails over; `None` for the simulated carrier);
    /// `cancel` is what another node needs to cancel it (JSON of
    /// `sip::CancelState`).
    pub async fn dialing(
        &self,
        id: &str,
        sip_call_id: &str,
        cancel: Option<&str>,
        trunk: Option<&str>,
    ) {
        let store = self.outbox.store();
        if let Err(e) = store.call_dialing(id, sip_call_id, cancel, trunk).await {
            tracing::warn!(error = %e, "SIP Call-ID not recorded");
        }
    }

    pub async fn ringing(&self, id: &str) {
        let result = self.outbox.call_ringing(id).await;
        self.publish(Change::Ringing, result);
    }

    /// The call answered, with what a survivor needs to end it (its dialog
    /// state, serialized) in the same write.
    pub async fn answered(&self, id: &str, dialog: Option<&str>) {
        let result = self.outbox.call_answered(id, dialog).await;
        self.publish(Change::Answered, result);
    }

    /// Answering-machine detection decided.
    pub async fn answered_by(&self, id: &str, answered_by: AnsweredBy) {
        if let Err(e) = self.outbox.store().call_answered_by(id, answered_by).await {
            tracing::warn!(error = %e, "answering-machine verdict not recorded");
        }
    }

    pub async fn dtmf(&self, id: &str, digit: char) {
        let result = self.outbox.call_dtmf(id, digit).await;
        self.publish(Change::Dtmf(digit), result);
    }

    /// The agent's conversation: its turns and summary, stored before the
    /// end is recorded so that `call.ended` carries the summary.
    pub async fn transcript(&self, id: &str, turns: &[NewTurn], summary: Option<&str>) {
        if let Err(e) = self
            .outbox
            .store()
            .save_transcript(id, turns, summary)
            .await
        {
            tracing::warn!(error = %e, turns = turns.len(), "transcript not stored");
        }
    }

    /// The call's structured result, after its end: stored with
    /// `call.analyzed` (not published on the bus: nothing in the process
    /// waits for it).
    pub async fn analyzed(&self, id: &str, analysis: &serde_json::Value) {
        let text = analysis.to_string();
        if let Err(e) = self.outbox.call_analyzed(id, &text).await {
            tracing::warn!(error = %e, "call analysis not stored");
        }
    }

    /// A call lost in a crash ([`EndReason::Lost`]): its status says
    /// whether it had been answered; how long it lasted is unknown.
    pub async fn lost(&self, id: &str, answered: bool) {
        self.record_end(id, &EndReason::Lost, answered, None, None)
            .await;
    }

    /// An inbound call refused with `reason` before it rang: the status
    /// says `busy` or `failed`, the SIP code is the one we answered.
    pub async fn refused(&self, id: &str, reason: &EndReason) {
        let rejection = reason.rejection();
        let sip = (rejection.code, rejection.reason.unwrap_or_default());
        self.record_end(id, reason, false, None, Some(sip)).await;
    }

    /// The call ended with `reason`; `answered_for` is how long it was up.
    pub async fn ended(
        &self,
        id: &str,
        reason: &EndReason,
        answered_for: Option<std::time::Duration>,
    ) {
        let duration_ms = answered_for.map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
        self.record_end(id, reason, answered_for.is_some(), duration_ms, None)
            .await;
    }

    async fn record_end(
        &self,
        id: &str,
        reason: &EndReason,
        answered: bool,
        duration_ms: Option<i64>,
        sip: Option<(u16, String)>,
    ) {
        let sip = sip.or_else(|| reason.sip_status());
        let result = self
            .outbox
            .call_ended(
                id,
                EndFields {
                    status: reason.status(answered),
                    sip_code: sip.as_ref().map(|(code, _)| *code),
                    sip_reason: sip
                        .as_ref()
                        .map(|(_, r)| r.as_str())
                        .filter(|r| !r.is_empty()),
                    end_reason: reason.label(),
                    duration_ms,
                    answered_by: reason.answered_by(),
                },
            )
            .await;
        self.publish(Change::Ended, result);
    }
}
