//! Webhooks: the outbox seam, signed delivery with retries, and the wake-ups
//! of the live event stream.
//!
//! Owns: [`Outbox`], the one way anything in the process emits an event.
//! Call state changes go through [`Outbox::call_created`] and
//! [`Outbox::call_changed`], which write the call row and the event (and its
//! deliveries) in one store transaction ([`crate::store::events`]) and then
//! wake the delivery worker and the event streams. A crash after the commit
//! loses nothing: the worker finds the rows on the next start. The
//! [`worker`] claims due deliveries with a lease, signs ([`sign`]), checks the
//! address ([`guard`]), POSTs, classifies the result and schedules the next
//! attempt ([`policy`]).
//!
//! Must not: decide anything about calls (that is the call layer's), or hold
//! SQL (that is the store's).

pub mod event;
pub mod guard;
pub mod policy;
pub mod sign;
pub mod worker;

use std::sync::Arc;

use tokio::sync::{Notify, watch};

use crate::store::calls::{CallRecord, NewCall};
use crate::store::events::{CallUpdate, EventRecord};
use crate::store::{Store, StoreError};
use event::{CallEventType, TrunkEventData, TrunkEventType};

/// Installs ring as the process's TLS crypto provider (https endpoints).
/// Idempotent: a provider installed earlier stays.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Emits events: writes them with the change that caused them and wakes
/// whoever waits for them. Cheap to clone.
#[derive(Clone)]
pub struct Outbox {
    store: Store,
    /// Wakes the delivery worker when new deliveries are due.
    wake: Arc<Notify>,
    /// Counts events emitted by this process; event streams wait on it.
    emitted: Arc<watch::Sender<u64>>,
    /// Set once when the daemon stops; ends the worker and every stream.
    closing: Arc<watch::Sender<bool>>,
}

impl Outbox {
    pub fn new(store: Store) -> Self {
        Self {
            store,
            wake: Arc::new(Notify::new()),
            emitted: Arc::new(watch::Sender::new(0)),
            closing: Arc::new(watch::Sender::new(false)),
        }
    }

    /// A new call and its first event, in one transaction.
    pub async fn call_created(
        &self,
        call: NewCall<'_>,
        event_type: CallEventType,
    ) -> Result<(CallRecord, EventRecord), StoreError> {
        let done = self
            .store
            .insert_call_and_emit(call, |c| event::call_event(event_type, c, None))
            .await?;
        self.emitted();
        Ok(done)
    }

    /// A call state change and its event, in one transaction. `digit` is
    /// the digit of a `call.dtmf` event (also appended to the call's digits
    /// through `update.dtmf`).
    pub async fn call_changed(
        &self,
        call_id: &str,
        update: &CallUpdate<'_>,
        event_type: CallEventType,
        digit: Option<&str>,
    ) -> Result<(CallRecord, EventRecord), StoreError> {
        let done = self
            .store
            .update_call_and_emit(call_id, update, |c| event::call_event(event_type, c, digit))
            .await?;
        self.emitted();
        Ok(done)
    }

    /// A trunk registration event.
    pub async fn trunk_changed(
        &self,
        event_type: TrunkEventType,
        data: TrunkEventData,
    ) -> Result<EventRecord, StoreError> {
        let record = self
            .store
            .emit(&event::trunk_event(event_type, data)?)
            .await?;
        self.emitted();
        Ok(record)
    }

    /// A `webhook.test` event delivered to one endpoint only.
    pub async fn test_event(&self, endpoint_id: &str) -> Result<EventRecord, StoreError> {
        let record = self.store.emit(&event::test_event(endpoint_id)?).await?;
        self.emitted();
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

    fn emitted(&self) {
        self.wake.notify_one();
        self.emitted.send_modify(|n| *n = n.wrapping_add(1));
    }
}
