//! Who is on a call right now: the index of live calls by id ([`LiveCalls`])
//! and by the SIP Call-ID of their established dialog (an INVITE with
//! Replaces finds its call by it), the dialogs that ended in the last
//! [`ENDED_FOR`] (one naming them is declined, RFC 3891 §3), their
//! [`CallHandle`]s, and the per-trunk
//! slots that enforce `max_calls`:
//! the one count of a trunk's calls on this node (the campaign pacer reads
//! it through [`LiveCalls::on_trunk`]).
//!
//! Each trunk's `cps` is a GCRA limiter (governor) checked by
//! [`LiveCalls::admit_rate`] before a slot is taken.
//! A [`TrunkSlot`] is the call's place in the index; dropping it removes the
//! call, lowers the trunk's active count and the gauge, and wakes the drain.
//! Must not: hold a lock across `.await` (every access is a short insert,
//! remove or copy).

use std::collections::{HashMap, VecDeque};
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

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
    /// An INVITE with Replaces naming this call's dialog (RFC 3891 §3);
    /// a call that does not take it over drops it, which answers 481.
    Replace(Box<super::replace::Replacement>),
}

/// How long an ended dialog is remembered: 64 × T1 (RFC 3261 §17), the
/// life of the transactions that ended it, which covers a PBX's transfer
/// racing the hang-up.
pub const ENDED_FOR: Duration = Duration::from_secs(32);
/// At most this many ended dialogs are remembered (the oldest go first):
/// a bound on memory whatever the call rate.
const ENDED_KEPT: usize = 1024;

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

    /// Hands an INVITE with Replaces to the call; false when the task is
    /// gone or too busy to take it (the INVITE, dropped, gets 481).
    pub fn replace(&self, replacement: Box<super::replace::Replacement>) -> bool {
        self.commands
            .try_send(CallCommand::Replace(replacement))
            .is_ok()
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
    /// The SIP Call-ID of the call's established dialog, once it has one.
    sip_call_id: Option<String>,
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
    /// The SIP Call-IDs of dialogs that ended (their call ended, or an
    /// INVITE with Replaces moved it off them), with their trunk, oldest
    /// first.
    // std Mutex: a push or a scan, never across `.await`.
    ended: Mutex<VecDeque<(String, String, Instant)>>,
}

impl LiveCalls {
    pub fn new(trunks: Arc<TrunkStates>) -> Self {
        Self {
            inner: Arc::new(Inner {
                calls: Mutex::new(HashMap::new()),
                left: Notify::new(),
                trunks,
                rates: Mutex::new(HashMap::new()),
                ended: Mutex::new(VecDeque::new()),
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
                    sip_call_id: None,
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

    /// Notes the SIP Call-ID of call `id`'s established dialog (again
    /// after an INVITE with Replaces moved it to another).
    pub fn set_sip_call_id(&self, id: &str, sip_call_id: &str) {
        let replaced = self.inner.lock().get_mut(id).and_then(|entry| {
            let old = entry.sip_call_id.replace(sip_call_id.to_owned())?;
            (old != sip_call_id).then(|| (old, entry.trunk.clone()))
        });
        if let Some((old, trunk)) = replaced {
            self.inner.dialog_ended(old, trunk);
        }
    }

    /// The trunk of the dialog with SIP Call-ID `sip_call_id` when it
    /// ended within the last [`ENDED_FOR`].
    pub fn ended_on(&self, sip_call_id: &str) -> Option<String> {
        let ended = self.inner.ended.lock().unwrap_or_else(|e| e.into_inner());
        ended
            .iter()
            .rev()
            .find(|(id, _, at)| id == sip_call_id && at.elapsed() < ENDED_FOR)
            .map(|(_, trunk, _)| trunk.clone())
    }

    /// The live call whose established dialog has SIP Call-ID
    /// `sip_call_id`: its handle and the trunk it is on.
    pub fn by_sip_call_id(&self, sip_call_id: &str) -> Option<(CallHandle, String)> {
        self.inner
            .lock()
            .values()
            .find(|e| e.sip_call_id.as_deref() == Some(sip_call_id))
            .map(|e| (e.handle.clone(), e.trunk.clone()))
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
            if let Some(sip_call_id) = entry.sip_call_id {
                self.inner.dialog_ended(sip_call_id, entry.trunk);
            }
        }
        self.inner.left.notify_waiters();
    }
}

impl Inner {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.calls.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Remembers that the dialog `sip_call_id` on `trunk` ended, forgetting
    /// those past [`ENDED_FOR`] and the oldest past [`ENDED_KEPT`].
    fn dialog_ended(&self, sip_call_id: String, trunk: String) {
        let mut ended = self.ended.lock().unwrap_or_else(|e| e.into_inner());
        while ended
            .front()
            .is_some_and(|(_, _, at)| at.elapsed() >= ENDED_FOR || ended.len() >= ENDED_KEPT)
        {
            ended.pop_front();
        }
        ended.push_back((sip_call_id, trunk, Instant::now()));
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
    fn ended_dialogs_are_remembered_with_their_trunk_and_bounded() {
        let registry = LiveCalls::new(Arc::new(TrunkStates::default()));
        let (h, _rx) = CallHandle::new();
        let a = registry.try_insert("a", "t", "inbound", 10, h.clone());
        registry.set_sip_call_id("a", "first@x");
        assert_eq!(registry.ended_on("first@x"), None, "live, not ended");
        // Replaced: the old dialog ended, the new one is live.
        registry.set_sip_call_id("a", "second@x");
        assert_eq!(registry.ended_on("first@x").as_deref(), Some("t"));
        assert_eq!(registry.ended_on("second@x"), None);
        drop(a);
        assert_eq!(registry.ended_on("second@x").as_deref(), Some("t"));
        assert_eq!(registry.ended_on("never@x"), None);
        // The oldest go past the bound.
        for n in 0..ENDED_KEPT {
            let slot = registry.try_insert(&format!("c{n}"), "u", "inbound", 10, h.clone());
            registry.set_sip_call_id(&format!("c{n}"), &format!("c{n}@x"));
            drop(slot);
        }
        assert_eq!(registry.ended_on("first@x"), None, "evicted");
        assert_eq!(registry.ended_on("c0@x").as_deref(), Some("u"));
        assert_eq!(
            registry.inner.ended.lock().map(|e| e.len()).unwrap_or(0),
            ENDED_KEPT
        );
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
