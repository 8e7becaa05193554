//! Calls whose node is gone: a node that died (no heartbeat within the
//! grace) or this node after a crash. Whoever ends such a call first takes
//! it (compare-and-set on the row's node), sends BYE through the stored
//! dialog state when it was established (`sip::SipStack::bye_from_state`,
//! RFC 3261 §12.2.1.1), so the carrier does not keep the leg up and bill
//! it, or CANCEL when it is an outbound INVITE still without an answer
//! (`sip::SipStack::cancel_from_state`, §9.1), so the callee stops ringing,
//! and records it ended `lost` with `call.ended` through the outbox,
//! once. Also what this node runs for trunks: the lease-held set of trunks
//! whose registration and OPTIONS probe run here.
//!
//! The stored `dialog` column holds, for an outbound call, what its CANCEL
//! needs from the moment the INVITE is sent (written with the `dialing`
//! transition, so no statement of its own; again when a challenge re-sent
//! the INVITE with a new branch and CSeq), replaced by the established
//! dialog at the answer. The CANCEL is sent even when the dead
//! node had seen only a 100 (status still `queued`): §9.1's "not before a
//! provisional" guards a CANCEL overtaking its INVITE, and by the grace the
//! INVITE is seconds old.
//!
//! Limits: the carrier's 487 goes to the INVITE's sender, the dead node (and
//! its 200 to the CANCEL too, unless the Via has `rport`), so no answer is
//! awaited and a lost CANCEL is not noticed (over UDP it is retransmitted
//! blindly). A 200 that crossed the CANCEL goes to the dead node as well:
//! nobody ACKs it, and the carrier's UAS ends that leg with BYE after 64*T1
//! (§13.3.1.4). A proxy that record-routed the outbound INVITE could route
//! those answers to a survivor; the reference deployment sends outbound
//! INVITEs straight to the trunk, not through Kamailio.
//!
//! Must not: decide that a node is dead (that is `cluster`) or build SIP.

use std::collections::BTreeSet;
use std::time::Duration;

use super::Calls;
use crate::config::Profiles;
use crate::sip::{CancelState, DialogState, OutboundCall};
use crate::store::StoreError;

/// How long a BYE to an orphaned leg waits for its answer.
const BYE_WAIT: Duration = Duration::from_secs(5);

/// At most this many orphaned calls are ended at once.
const PARALLEL: usize = 32;

impl Calls {
    /// This node's id.
    pub fn node(&self) -> &str {
        &self.shared.node
    }

    /// A node whose heartbeat is older than this is dead.
    pub fn grace(&self) -> Duration {
        self.shared.grace
    }

    /// Whether the drain has begun.
    pub fn is_draining(&self) -> bool {
        self.shared.is_draining()
    }

    /// Ends call `id`, left unended by node `seen_node` (dead, or this node
    /// before a restart): BYE to the carrier when the call was answered and
    /// its dialog stored, then `lost` with `call.ended`. False when the
    /// call had ended or another node took it first.
    pub async fn end_orphan(&self, id: &str, seen_node: Option<&str>) -> Result<bool, StoreError> {
        let store = self.shared.transitions.store();
        let Some(orphan) = store
            .take_orphan_call(id, seen_node, &self.shared.node)
            .await?
        else {
            return Ok(false);
        };
        match orphan.dialog.as_deref() {
            Some(text) if orphan.answered => self.bye(id, text).await,
            Some(text) => self.cancel(id, text).await,
            None => {}
        }
        tracing::warn!(call_id = %id, answered = orphan.answered, from = ?seen_node, "call of a node that is gone ended as lost");
        self.shared.transitions.lost(id, orphan.answered).await;
        Ok(true)
    }

    /// CANCEL of the outbound INVITE `state` (JSON of [`CancelState`])
    /// describes; no answer comes back to this node (see the module
    /// header).
    async fn cancel(&self, id: &str, state: &str) {
        let state: CancelState = match serde_json::from_str(state) {
            Ok(state) => state,
            Err(e) => {
                tracing::warn!(call_id = %id, error = %e, "stored CANCEL state unreadable; no CANCEL");
                return;
            }
        };
        let Some(stack) = self.shared.stack.get() else {
            tracing::warn!(call_id = %id, "SIP is not up; no CANCEL for the orphaned INVITE");
            return;
        };
        match stack.cancel_from_state(&state).await {
            Ok(()) => {
                tracing::info!(call_id = %id, sip_call_id = %state.call_id, "CANCEL sent for an INVITE whose node is gone")
            }
            Err(e) => {
                tracing::warn!(call_id = %id, sip_call_id = %state.call_id, error = %e, "CANCEL for an INVITE whose node is gone failed")
            }
        }
    }

    async fn bye(&self, id: &str, dialog: &str) {
        let state: DialogState = match serde_json::from_str(dialog) {
            Ok(state) => state,
            Err(e) => {
                tracing::warn!(call_id = %id, error = %e, "stored dialog state unreadable; no BYE");
                return;
            }
        };
        let Some(stack) = self.shared.stack.get() else {
            tracing::warn!(call_id = %id, "SIP is not up; no BYE for the orphaned call");
            return;
        };
        match stack.bye_from_state(&state, BYE_WAIT).await {
            Ok(code) => {
                tracing::info!(call_id = %id, sip_call_id = %state.call_id, code, "BYE sent for a call whose node is gone")
            }
            Err(e) => {
                tracing::warn!(call_id = %id, sip_call_id = %state.call_id, error = %e, "BYE for a call whose node is gone failed")
            }
        }
    }

    /// Ends every call in `calls` (id, node seen) as [`Calls::end_orphan`]
    /// does, a few at a time; how many this node ended.
    pub async fn end_orphans(&self, calls: Vec<(String, Option<String>)>) -> usize {
        let mut ended = 0;
        for chunk in calls.chunks(PARALLEL) {
            let mut set = tokio::task::JoinSet::new();
            for (id, node) in chunk {
                let (id, node) = (id.clone(), node.clone());
                let me = self.clone();
                set.spawn(async move {
                    match me.end_orphan(&id, node.as_deref()).await {
                        Ok(done) => done,
                        Err(e) => {
                            tracing::error!(call_id = %id, error = %e, "orphaned call not ended");
                            false
                        }
                    }
                });
            }
            while let Some(done) = set.join_next().await {
                if matches!(done, Ok(true)) {
                    ended += 1;
                }
            }
        }
        ended
    }

    /// Ends the unended calls of dead node `node`; how many this node
    /// ended (another survivor may take some). Their recordings are closed
    /// here when their files are on this node's disk too (a shared
    /// `[recordings] dir`), else by `node` when it starts again.
    pub async fn reap_node(&self, node: &str) -> Result<usize, StoreError> {
        let calls = self
            .shared
            .transitions
            .store()
            .unended_calls_of(node)
            .await?;
        self.recover_recordings(node).await;
        Ok(self.end_orphans(calls).await)
    }

    /// Closes the recordings node `node` left open (see
    /// `recording::Recordings::recover`); run for this node at start,
    /// before any call of this run records, so that a file cut short by a
    /// crash gets its header and `recording.completed` before its call's
    /// `call.ended`.
    pub async fn recover_recordings(&self, node: &str) -> usize {
        self.shared
            .recordings
            .recover(node, self.shared.transitions.outbox())
            .await
    }

    /// Sets the trunks (profile names) this node runs registrations and
    /// probes for (`None`: all); true when that changed, and then
    /// [`Calls::apply_profiles`] should run.
    pub fn own_trunks(&self, owned: Option<BTreeSet<String>>) -> bool {
        let mut current = self
            .shared
            .owned_trunks
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if *current == owned {
            return false;
        }
        *current = owned;
        true
    }

    /// Whether this node runs trunk `name`'s registration and probe.
    pub fn owns_trunk(&self, name: &str) -> bool {
        self.shared
            .owned_trunks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .is_none_or(|set| set.contains(name))
    }

    /// The profiles whose registration and probe run here.
    pub(super) fn owned_profiles(&self) -> Profiles {
        let mut profiles = Profiles::clone(&self.shared.profiles.get());
        let owned = self
            .shared
            .owned_trunks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        if let Some(owned) = owned {
            profiles.by_name.retain(|name, _| owned.contains(name));
        }
        profiles
    }

    /// The current profiles (every trunk, owned or not).
    pub fn profiles(&self) -> std::sync::Arc<Profiles> {
        self.shared.profiles.get()
    }
}

/// The state needed to end call `id` without this node, as stored.
pub(super) fn dialog_text(id: &str, state: Option<DialogState>) -> Option<String> {
    match serde_json::to_string(&state?) {
        Ok(text) => Some(text),
        Err(e) => {
            tracing::warn!(call_id = %id, error = %e, "dialog state not serialized");
            None
        }
    }
}

/// Stores the state needed to end call `id` without this node once its
/// dialog changed after the answer (a Replaces takeover); the answer
/// itself stores it with `answered`. The write is spawned: the call goes
/// on.
pub(super) fn store_dialog(
    transitions: &super::events::Transitions,
    id: &str,
    state: Option<DialogState>,
) {
    let Some(text) = dialog_text(id, state) else {
        return;
    };
    let store = transitions.store().clone();
    let id = id.to_owned();
    tokio::spawn(async move {
        if let Err(e) = store.call_dialog(&id, &text).await {
            tracing::debug!(call_id = %id, error = %e, "dialog state not stored");
        }
    });
}

/// Records the outbound INVITE as sent (the `dialing` transition: its SIP
/// Call-ID) with what its CANCEL needs, unless `stored` is that already
/// (then nothing is written); what is stored now. The call task calls it
/// when the INVITE leaves and each time a challenge re-sends it.
pub(super) async fn store_cancel(
    transitions: &super::events::Transitions,
    id: &str,
    invite: &OutboundCall,
    stored: Option<CancelState>,
    trunk: Option<&str>,
) -> Option<CancelState> {
    let current = invite.cancel_state();
    if stored.is_some() && current == stored {
        return stored;
    }
    let text = current
        .as_ref()
        .and_then(|state| match serde_json::to_string(state) {
            Ok(text) => Some(text),
            Err(e) => {
                tracing::warn!(call_id = %id, error = %e, "CANCEL state not serialized");
                None
            }
        });
    transitions
        .dialing(id, invite.call_id(), text.as_deref(), trunk)
        .await;
    current
}
