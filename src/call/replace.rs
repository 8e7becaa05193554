//! An INVITE with Replaces (RFC 3891) naming one of our established
//! dialogs: a PBX that transferred a call it has with us moves the call
//! onto a new dialog. The call is found by the SIP Call-ID of its dialog
//! ([`super::registry`]) and must be on the trunk the new INVITE came on:
//! a stranger who learned a Call-ID must not take over a live call, so
//! only the call's own trunk (by its allowed addresses, or the digest
//! account its `[inbound] auth` verified) may replace it. The call task
//! then checks the tags against its dialog and takes the INVITE over
//! ([`take_over`]): 200 with our SDP (same RTP port), the media sent to the
//! new SDP's address, BYE on the old dialog. The call keeps its id, agent,
//! recording and transcript; the transcript notes the replacement.
//!
//! Answers (§3): 481 when nothing matches, the same whether the Call-ID
//! is unknown, on another trunk, or its tags differ (no oracle for live
//! Call-IDs); 603 when it names a dialog of the INVITE's own trunk that
//! ended in the last [`super::registry::ENDED_FOR`] (§3: "already
//! terminated"; by Call-ID, as the registry keeps no tags of ended
//! dialogs); 486 for a confirmed dialog named `early-only`; 400 for a
//! Replaces that does not parse; 488 for an offer we cannot take.
//! Dialogs that are early or not established by a call task (ringing,
//! placing, web calls) never match: the registry knows a SIP Call-ID only
//! once the call task runs.
//!
//! Must not: create a call row or route the INVITE as a new call.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::time::timeout;

use super::Shared;
use crate::media::{Direction, LocalSdp, MediaHandle};
use crate::sip::{Call, IncomingInvite, Rejection, Replaces};

/// How long our BYE to the replaced dialog may take to be answered.
const BYE_TIMEOUT: Duration = Duration::from_secs(10);

/// An INVITE with Replaces on its way to the call it names. Dropped
/// without being taken over, it is answered 481 (§3: no such dialog).
pub struct Replacement {
    invite: Option<IncomingInvite>,
    replaces: Replaces,
}

impl std::fmt::Debug for Replacement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replacement")
            .field("replaces", &self.replaces)
            .finish_non_exhaustive()
    }
}

impl Drop for Replacement {
    fn drop(&mut self) {
        if let Some(invite) = self.invite.take()
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            runtime.spawn(refuse(invite, 481));
        }
    }
}

/// Answers `invite` with `code`.
async fn refuse(invite: IncomingInvite, code: u16) {
    tracing::info!(
        sip_call_id = %invite.call_id(),
        code,
        "INVITE with Replaces refused"
    );
    if let Err(e) = invite.reject(Rejection::new(code)).await {
        tracing::info!(error = %e, "refusal of an INVITE with Replaces not sent");
    }
}

/// An INVITE whose Replaces header is `value`: to the call it names when
/// that call is on the INVITE's own trunk; 603 when it names a dialog of
/// that trunk that has ended; else 481.
pub(super) async fn handle(shared: &Arc<Shared>, invite: IncomingInvite, value: &str) {
    let Some(replaces) = Replaces::parse(value) else {
        return refuse(invite, 400).await;
    };
    let trunk = super::inbound::trunk_for(shared, invite.info()).map(|t| t.name);
    let target = shared.registry.by_sip_call_id(&replaces.call_id);
    match (trunk, target) {
        (Some(trunk), Some((handle, on))) if trunk == on => {
            tracing::info!(%trunk, replaces = %replaces, "INVITE with Replaces, handed to its call");
            // Refused (the call just ended): dropped, 481.
            handle.replace(Box::new(Replacement {
                invite: Some(invite),
                replaces,
            }));
        }
        (Some(trunk), None)
            if shared.registry.ended_on(&replaces.call_id).as_deref() == Some(trunk.as_str()) =>
        {
            tracing::info!(%trunk, replaces = %replaces,
                "INVITE with Replaces names an ended dialog of its trunk");
            refuse(invite, 603).await;
        }
        (trunk, target) => {
            tracing::info!(
                trunk = trunk.as_deref().unwrap_or("none"),
                dialog_on = target.as_ref().map_or("none", |(_, on)| on.as_str()),
                "INVITE with Replaces names no dialog of its trunk"
            );
            refuse(invite, 481).await;
        }
    }
}

/// The call task's part (§3): when `replacement` names `sip`'s dialog,
/// accepts the new INVITE with our SDP (an answer from the same port, or
/// our offer when it had none), sends the media to the new peer, makes the
/// new dialog the call's and ends the old one with BYE. The transcript's
/// note of it, or `None` when the call goes on unchanged (the INVITE
/// answered 481, 486 or 488).
pub(super) async fn take_over(
    shared: &Shared,
    id: &str,
    sip: &mut Call,
    sdp: &mut LocalSdp,
    media: &MediaHandle,
    mut replacement: Box<Replacement>,
) -> Option<String> {
    if !sip.is_named_by(&replacement.replaces) {
        // Dropped: 481.
        return None;
    }
    let invite = replacement.invite.take()?;
    if replacement.replaces.early_only {
        refuse(invite, 486).await;
        return None;
    }
    let offer = invite.info().sdp_offer.clone();
    let (local, negotiated) = match offer.as_deref() {
        Some(offer) => match sdp.answer(offer, Direction::SendRecv) {
            Ok((answer, negotiated)) => (answer, Some(negotiated)),
            Err(e) => {
                tracing::info!(error = %e, "the replacing INVITE's offer is not acceptable");
                refuse(invite, 488).await;
                return None;
            }
        },
        None => (sdp.offer(Direction::SendRecv), None),
    };
    let (new, ack_sdp) = match invite.accept(Bytes::from(local)).await {
        Ok(accepted) => accepted,
        Err(e) => {
            tracing::info!(error = %e, "the replacing INVITE was not completed; the call stays");
            return None;
        }
    };
    let negotiated = match negotiated {
        Some(negotiated) => Some(negotiated),
        // A late offer: the answer came in the ACK (RFC 3261 §13.2.1).
        None => ack_sdp.as_deref().and_then(|a| sdp.accept_answer(a).ok()),
    };
    match negotiated {
        Some(negotiated) => {
            if media.update(negotiated).await.is_err() {
                tracing::warn!("media session gone while replacing the dialog");
            }
        }
        None => tracing::info!("no usable answer in the ACK; the media stays as it was"),
    }
    let old = std::mem::replace(sip, new);
    let new_call_id = sip.call_id().to_owned();
    shared.registry.set_sip_call_id(id, &new_call_id);
    super::orphans::store_dialog(&shared.transitions, id, sip.dialog_state());
    tracing::info!(
        old_sip_call_id = %old.call_id(),
        new_sip_call_id = %new_call_id,
        "dialog replaced (RFC 3891); ending the old one"
    );
    // §3: the replaced dialog ends with BYE; the call does not wait.
    tokio::spawn(async move {
        if old.is_active() {
            match timeout(BYE_TIMEOUT, old.hangup()).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::info!(error = %e, "BYE of the replaced dialog failed"),
                Err(_) => tracing::info!("BYE of the replaced dialog not answered in time"),
            }
        }
    });
    Some(format!(
        "[replaced: the call moved to SIP dialog {new_call_id} (INVITE with Replaces)]"
    ))
}
