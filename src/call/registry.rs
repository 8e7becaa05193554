//! Who is on a call right now: the index of live calls by id ([`LiveCalls`]),
//! their [`CallHandle`]s, and the per-trunk slots that enforce `max_calls`:
//! the one count of a trunk's calls on this node (the campaign pacer reads
//! it through [`LiveCalls::on_trunk`]).
//!
//! Each trunk's `cps` is a GCRA limiter (governor) checked by
//! [`LiveCalls::admit_rate`] before a slot is taken.
//! A [`TrunkSlot`] is the call's place in the index; dropping it removes the
//! call, lowers the trunk's active count and the gauge, and wakes the drain.
//! Must not: hold a lock across `.await` (every access is a short insert,
//! remove or copy).

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

use tokio::sync::{Notify, mpsc};

use super::EndReason;
use crate::metrics::CALLS_ACTIVE;
use crate::trunk::TrunkStates;

/// What others may ask of a call; the call task decides what it means in
/// its current state.
#[derive(Debug)]
pub enum CallCommand {
    Hangup(EndReason),
    /// A web call's trickled ICE candidates, for its peer.
    Trickle(crate::webrtc::peer::TrickleRequest),
}

/// A handle to a running call task. Cheap to clone.
#[derive(Debug, Clone)]
pub struct CallHandle {
    /// To the call task; bounded and sent with `try_send`, so a caller
    /// never waits on a busy call, and closed once the task has dropped
    /// its receiver (the call is over).
    commands: mpsc::Sender<CallCommand>,
}

impl CallHandle {
    /// A handle and the receiving end the call task reads.
    pub fn new() -> (Self, mpsc::Receiver<CallCommand>) {
        let (commands, rx) = mpsc::channel(4);
        (Self { commands }, rx)
    }

    /// Asks the call to end with `reason`; false when the task is gone.
    pub fn hangup(&self, reason: EndReason) -> bool {
        self.commands.try_send(CallCommand::Hangup(reason)).is_ok()
    }

    /// Hands a web call's trickled candidates on; false once the call is
    /// over (or too busy to take them).
    pub fn trickle(&self, request: crate::webrtc::peer::TrickleRequest) -> bool {
        self.commands
            .try_send(CallCommand::Trickle(request))
            .is_ok()
    }
}

/// One live call in the index.
struct Entry {
    /// The trunk's profile name: the key its `max_calls` is counted by.
    trunk: String,
    /// The label of the `agentline_calls_active` gauge it raised.
    direction: &'static str,
    /// How the API and the drain reach the call task.
    handle: CallHandle,
}

/// The live calls. Cheap to clone.
#[derive(Clone)]
pub struct LiveCalls {
    /// Shared by the call layer, every call's [`TrunkSlot`] and the drain.
    inner: Arc<Inner>,
}

/// The index behind [`LiveCalls`].
struct Inner {
    /// The live calls by id, ringing or up.
    // std Mutex: inserts, removals and copies only, never across `.await`.
    calls: Mutex<HashMap<String, Entry>>,
    /// Fired whenever a call leaves, for the drain.
    left: Notify,
    /// Where each trunk's active-call count is mirrored for the API.
    trunks: Arc<TrunkStates>,
    /// Each trunk's `cps` limiter (GCRA).
    // std Mutex: a lookup or insert, never across `.await`. Keyed by trunk,
    // with the rate the limiter was made for, so a SIGHUP that changes
    // `cps` takes effect on the next call.
    rates: Mutex<HashMap<String, (NonZeroU32, Arc<DefaultDirectRateLimiter>)>>,
}

impl LiveCalls {
    pub fn new(trunks: Arc<TrunkStates>) -> Self {
        Self {
            inner: Arc::new(Inner {
                calls: Mutex::new(HashMap::new()),
                left: Notify::new(),
                trunks,
                rates: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// Whether one more call may start on `trunk` now without exceeding its
    /// `cps` new calls per second (a burst of at most `cps`).
    pub fn admit_rate(&self, trunk: &str, cps: u32) -> bool {
        let cps = NonZeroU32::new(cps).unwrap_or(NonZeroU32::MIN);
        let limiter = {
            let mut rates = self.inner.rates.lock().unwrap_or_else(|e| e.into_inner());
            match rates.get(trunk) {
                Some((rate, limiter)) if *rate == cps => limiter.clone(),
                _ => {
                    let limiter = Arc::new(RateLimiter::direct(Quota::per_second(cps)));
                    rates.insert(trunk.to_owned(), (cps, limiter.clone()));
                    limiter
                }
            }
        };
        limiter.check().is_ok()
    }

    /// Takes a slot on `trunk` for call `id`, or `None` when the trunk
    /// already carries `max_calls`.
    pub fn try_insert(
        &self,
        id: &str,
        trunk: &str,
        direction: &'static str,
        max_calls: u32,
        handle: CallHandle,
    ) -> Option<TrunkSlot> {
        let on_trunk = {
            let mut calls = self.inner.lock();
            let on_trunk = calls.values().filter(|e| e.trunk == trunk).count();
            if on_trunk >= usize::try_from(max_calls).unwrap_or(usize::MAX) {
                return None;
            }
            calls.insert(
                id.to_owned(),
                Entry {
                    trunk: trunk.to_owned(),
                    direction,
                    handle,
                },
            );
            on_trunk + 1
        };
        self.inner.trunks.set_active_calls(trunk, on_trunk);
        metrics::gauge!(CALLS_ACTIVE, "direction" => direction).increment(1.0);
        Some(TrunkSlot {
            registry: self.clone(),
            id: Box::from(id),
        })
    }

    /// Moves call `id` onto `trunk` (trunk failover) if it has room under
    /// `max_calls`; the call keeps its handle, and its old trunk's count
    /// drops. `false` when the new trunk is full or the call is not live.
    pub fn move_call(&self, id: &str, trunk: &str, max_calls: u32) -> bool {
        let counts = {
            let mut calls = self.inner.lock();
            let on_new = calls.values().filter(|e| e.trunk == trunk).count();
            let here = calls.get(id).is_some_and(|e| e.trunk == trunk);
            if !here && on_new >= usize::try_from(max_calls).unwrap_or(usize::MAX) {
                return false;
            }
            let Some(entry) = calls.get_mut(id) else {
                return false;
            };
            if entry.trunk == trunk {
                return true;
            }
            let old = std::mem::replace(&mut entry.trunk, trunk.to_owned());
            let on_old = calls.values().filter(|e| e.trunk == old).count();
            (old, on_old, on_new + 1)
        };
        let (old, on_old, on_new) = counts;
        self.inner.trunks.set_active_calls(&old, on_old);
        self.inner.trunks.set_active_calls(trunk, on_new);
        true
    }

    /// The trunk (profile name) call `id` is counted on.
    pub fn trunk_of(&self, id: &str) -> Option<String> {
        self.inner.lock().get(id).map(|e| e.trunk.clone())
    }

    /// The calls on `trunk` now: the count its `max_calls` caps.
    pub fn on_trunk(&self, trunk: &str) -> usize {
        self.inner
            .lock()
            .values()
            .filter(|e| e.trunk == trunk)
            .count()
    }

    pub fn get(&self, id: &str) -> Option<CallHandle> {
        self.inner.lock().get(id).map(|e| e.handle.clone())
    }

    pub fn len(&self) -> usize {
        self.inner.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Asks every call to end with `reason`.
    pub fn hangup_all(&self, reason: &EndReason) {
        let handles: Vec<CallHandle> = self
            .inner
            .lock()
            .values()
            .map(|e| e.handle.clone())
            .collect();
        for handle in handles {
            handle.hangup(reason.clone());
        }
    }

    /// Resolves when no call is left.
    pub async fn emptied(&self) {
        loop {
            let left = self.inner.left.notified();
            if self.is_empty() {
                return;
            }
            left.await;
        }
    }

    fn remove(&self, id: &str) {
        let removed = {
            let mut calls = self.inner.lock();
            calls.remove(id).map(|e| {
                let on_trunk = calls.values().filter(|o| o.trunk == e.trunk).count();
                (e, on_trunk)
            })
        };
        if let Some((entry, on_trunk)) = removed {
            self.inner.trunks.set_active_calls(&entry.trunk, on_trunk);
            metrics::gauge!(CALLS_ACTIVE, "direction" => entry.direction).decrement(1.0);
        }
        self.inner.left.notify_waiters();
    }
}

impl Inner {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.calls.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A call's place in the [`LiveCalls`]; dropping it frees the trunk slot.
pub struct TrunkSlot {
    /// The index to leave on drop.
    registry: LiveCalls,
    /// The call's id, its key in the index.
    id: Box<str>,
}

impl Drop for TrunkSlot {
    fn drop(&mut self) {
        self.registry.remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_calls_is_a_permit_freed_on_drop() {
        let trunks = Arc::new(TrunkStates::default());
        let registry = LiveCalls::new(trunks.clone());
        let (h, _rx) = CallHandle::new();
        let a = registry.try_insert("a", "t", "inbound", 1, h.clone());
        assert!(a.is_some());
        assert!(
            registry
                .try_insert("b", "t", "inbound", 1, h.clone())
                .is_none()
        );
        assert!(
            registry
                .try_insert("c", "u", "inbound", 1, h.clone())
                .is_some()
        );
        assert_eq!(trunks.get("t").active_calls, 1);
        drop(a);
        assert_eq!(trunks.get("t").active_calls, 0);
        assert!(registry.try_insert("b", "t", "inbound", 1, h).is_some());
    }

    #[test]
    fn a_call_moves_to_a_trunk_with_room() {
        let trunks = Arc::new(TrunkStates::default());
        let registry = LiveCalls::new(trunks.clone());
        let (h, _rx) = CallHandle::new();
        let _a = registry.try_insert("a", "t", "outbound", 1, h.clone());
        let _b = registry.try_insert("b", "u", "outbound", 1, h.clone());
        assert!(!registry.move_call("a", "u", 1), "u is full");
        assert!(registry.move_call("a", "v", 1));
        assert_eq!(trunks.get("t").active_calls, 0);
        assert_eq!(trunks.get("v").active_calls, 1);
        assert!(registry.try_insert("c", "t", "outbound", 1, h).is_some());
        assert!(!registry.move_call("gone", "w", 1));
        assert!(registry.move_call("a", "v", 1), "already there, at the cap");
        assert_eq!(registry.trunk_of("a").as_deref(), Some("v"));
    }
}
