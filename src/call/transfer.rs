//! Warm transfer's second leg: the consult call to the person the agent
//! hands the caller to, placed through the caller's own trunk, and what
//! the call task does with it once answered.
//!
//! The consult leg is a call of its own: a row (`outbound`, linked to the
//! caller's call by `parent_call_id` in its context and metadata) with
//! its webhooks (`call.created`, `call.ringing`, `call.answered`,
//! `call.ended`), a slot under the trunk's `max_calls` and `cps` (a
//! consult counts as an outbound call: a caller cannot talk the agent into
//! more calls than the trunk allows), the trunk's destination policy and
//! daily caps, and the trunk's codecs. It is placed from its own task so
//! that its row always gets its end, whatever the caller's call does
//! meanwhile; the caller's call task only reads the outcome, and asks for a
//! cancel when the caller hangs up first.
//!
//! After an attended transfer the leg is handed back here ([`linger`]) to
//! wait, bounded, for the person's side to end the replaced dialog.
//!
//! Must not: bridge the audio (see [`crate::media::bridge`]), speak, or
//! touch the caller's dialog: [`super::task`] does, with the leg this
//! returns.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::oneshot;
use tokio::time::{Instant, sleep_until, timeout};
use tracing::Instrument;

use super::end_reason::FailureCause;
use super::phase::{Finished, Routed};
use super::recording::Recorder;
use super::registry::CallCommand;
use super::{EndReason, Shared, count_started};
use crate::config::Profile;
use crate::ids;
use crate::media::{LocalSdp, MediaEvent, RtpSession, bind_rtp};
use crate::model::{CallContext, CallStatus, Direction, RecordingSettings, TrunkId};
use crate::sip::{Call, Credentials, OutboundEvent, OutboundInvite};
use crate::store::calls::NewCall;

/// Longest ring of a consult call: the caller is on hold meanwhile.
const CONSULT_RING: Duration = Duration::from_secs(30);
/// How long our BYE to the consult leg may take to be answered.
const BYE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the leg's media task gets to stop.
const MEDIA_STOP: Duration = Duration::from_secs(2);
/// How long a consult leg replaced by an attended transfer may stay up
/// before we end it: the person's side sends BYE once the caller's INVITE
/// with Replaces reached it.
const REPLACED_LINGER: Duration = Duration::from_secs(10);

/// A consult call being placed; its outcome comes once.
pub(super) struct Consult {
    outcome: oneshot::Receiver<Result<Leg, String>>,
    /// Dropped or fired: cancel the INVITE (the caller hung up).
    _cancel: oneshot::Sender<()>,
}

impl Consult {
    /// The answered leg, or why the person did not take the call (said to
    /// the agent).
    pub async fn outcome(&mut self) -> Result<Leg, String> {
        (&mut self.outcome)
            .await
            .unwrap_or_else(|_| Err("the consult call failed".to_owned()))
    }
}

/// The answered consult leg, owned by the caller's call task from here.
pub(super) struct Leg {
    /// The leg's row and trunk slot.
    call: Routed,
    pub id: String,
    pub sip: Call,
    pub rtp: RtpSession,
    /// Kept to answer the person's re-INVITEs (hold, resume).
    pub sdp: LocalSdp,
    answered_at: Instant,
    recorder: Option<Recorder>,
}

/// Places a consult call from the caller's call `parent_id` to `to`, with
/// `headers` on its INVITE, recorded as the parent is (`recording`).
pub(super) fn start(
    shared: &Arc<Shared>,
    parent_id: &str,
    to: &str,
    headers: Vec<(String, String)>,
    recording: RecordingSettings,
) -> Consult {
    let (tx, outcome) = oneshot::channel();
    let (cancel_tx, cancel) = oneshot::channel();
    let shared = Arc::clone(shared);
    let parent_id = parent_id.to_owned();
    let to = to.to_owned();
    let span = tracing::info_span!("consult", parent_call_id = %parent_id, number = %to);
    tokio::spawn(
        async move {
            let result = place(&shared, &parent_id, &to, headers, recording, cancel).await;
            if let Err(Ok(leg)) = tx.send(result) {
                // The caller's call ended while the person answered.
                leg.end(EndReason::AgentHangup).await;
            }
        }
        .instrument(span),
    );
    Consult {
        outcome,
        _cancel: cancel_tx,
    }
}

/// The trunk and our number of the parent call.
async fn parent_route(shared: &Shared, parent_id: &str) -> Result<(Profile, String), String> {
    let parent = shared
        .transitions
        .store()
        .get_call(parent_id)
        .await
        .map_err(|e| format!("the call is not found: {e}"))?;
    if !parent.livemode {
        return Err("a test-mode call cannot be transferred to a person".to_owned());
    }
    let trunk = parent
        .trunk
        .as_deref()
        .and_then(|t| t.parse::<TrunkId>().ok())
        .and_then(|t| shared.profiles.get().by_name.get(t.name()).cloned())
        .ok_or("the call has no trunk to place a consult call through")?;
    let ours = match parent.direction {
        Direction::Inbound => parent.to_number,
        _ => parent.from_number,
    };
    Ok((trunk, ours))
}

/// Checks, records and dials the consult call; the answered leg, or why
/// there is none (its row ended with the reason).
async fn place(
    shared: &Arc<Shared>,
    parent_id: &str,
    to: &str,
    headers: Vec<(String, String)>,
    recording: RecordingSettings,
    mut cancel: oneshot::Receiver<()>,
) -> Result<Leg, String> {
    if shared.is_draining() {
        return Err("the service is shutting down".to_owned());
    }
    let stack = shared.stack.get().cloned().ok_or("SIP is not running")?;
    let (trunk, from) = parent_route(shared, parent_id).await?;
    let outbound = trunk
        .outbound
        .clone()
        .ok_or("the call's trunk places no outbound calls")?;
    // Toll fraud: the trunk's destination policy and daily caps bind a
    // consult call as any outbound call (the agent checked its own
    // `transfer_targets` and the policy already; checked again here, where
    // the INVITE goes out).
    outbound
        .destination_allowed(to)
        .map_err(|e| format!("the trunk does not allow this destination: {e}"))?;
    super::outbound::check_daily_caps(shared, &trunk)
        .await
        .map_err(|e| e.to_string())?;
    let id = ids::new(ids::CALL);
    let call = Routed::admit(shared, &id, &trunk, false).map_err(|reason| match reason {
        EndReason::TrunkRate => "the trunk is at its call rate".to_owned(),
        _ => "the trunk is at its call limit".to_owned(),
    })?;
    let context = CallContext {
        call_id: id.clone(),
        direction: Some(Direction::Outbound),
        from: from.clone(),
        to: to.to_owned(),
        trunk_id: Some(trunk.id()),
        parent_call_id: Some(parent_id.to_owned()),
        ..CallContext::default()
    };
    let context_json = serde_json::to_string(&context).ok();
    let metadata = serde_json::json!({ "parent_call_id": parent_id }).to_string();
    let trunk_id = trunk.id();
    if let Err(e) = shared
        .transitions
        .created(NewCall {
            id: &id,
            direction: Direction::Outbound,
            from_number: &from,
            to_number: to,
            trunk: Some(trunk_id.as_str()),
            agent_id: None,
            status: CallStatus::Queued,
            sip_call_id: None,
            metadata: &metadata,
            campaign: None,
            context: context_json.as_deref(),
            agent_source: None,
            agent_source_error: None,
            livemode: true,
            api_key_id: None,
        })
        .await
    {
        tracing::warn!(error = %e, "consult call not recorded; not placed");
        return Err("the consult call could not be recorded".to_owned());
    }
    count_started("outbound");
    tracing::info!(consult_call_id = %id, trunk = %trunk.name, "placing the consult call");
    let (socket, permit) = match bind_rtp(&shared.ports, shared.media_ip()).await {
        Ok(bound) => bound,
        Err(e) => {
            let reason = EndReason::Failed(FailureCause::Rtp(e.to_string()));
            return Err(not_taken(call.end(reason)).await);
        }
    };
    let mut sdp = LocalSdp::new(shared.media_ip(), permit.port(), super::codecs(&trunk));
    let credentials = trunk.registration.as_ref().map(|r| Credentials {
        username: r
            .auth_username
            .clone()
            .unwrap_or_else(|| r.username.clone()),
        password: r.password.expose().to_owned(),
        realm: None,
    });
    let started = Instant::now();
    let dialled = stack
        .dial(OutboundInvite {
            request_uri: format!("sip:{to}@{}", outbound.proxy),
            from_user: from,
            from_display: None,
            from_domain: None,
            credentials,
            sdp_offer: Some(Bytes::from(sdp.offer(crate::media::Direction::SendRecv))),
            extra_headers: headers,
        })
        .await;
    let mut invite = match dialled {
        Ok(invite) => invite,
        Err(e) => {
            let reason = EndReason::Failed(FailureCause::Sip(e.to_string()));
            return Err(not_taken(call.end(reason)).await);
        }
    };
    shared
        .transitions
        .dialing(&id, invite.call_id(), None, Some(trunk_id.as_str()))
        .await;
    let ring_deadline = started + shared.ring_timeout.min(CONSULT_RING);
    let mut call = call;
    let mut canceling: Option<EndReason> = None;
    let mut ringing = false;
    let (sip, answer) = loop {
        let event = tokio::select! {
            event = invite.next() => event,
            _ = &mut cancel, if canceling.is_none() => {
                canceling = Some(EndReason::Canceled);
                invite.cancel();
                continue;
            }
            Some(CallCommand::Hangup(reason)) = call.commands.recv(), if canceling.is_none() => {
                canceling = Some(reason);
                invite.cancel();
                continue;
            }
            () = sleep_until(ring_deadline), if canceling.is_none() => {
                canceling = Some(EndReason::NoAnswer { code: None });
                invite.cancel();
                continue;
            }
        };
        let reason = match event {
            Some(OutboundEvent::Progress { .. }) => {
                if !ringing {
                    ringing = true;
                    shared.transitions.ringing(&id).await;
                }
                continue;
            }
            Some(OutboundEvent::Answered { call: sip, sdp }) if canceling.is_none() => {
                break (*sip, sdp);
            }
            Some(OutboundEvent::Answered { call: sip, .. }) => {
                // The 200 crossed our CANCEL: RFC 3261 §9.1, hang it up.
                let _ = timeout(BYE_TIMEOUT, sip.hangup()).await;
                canceling.take().unwrap_or(EndReason::Canceled)
            }
            Some(OutboundEvent::Failed { code: 487, .. }) | Some(OutboundEvent::Canceled)
                if canceling.is_some() =>
            {
                canceling.take().unwrap_or(EndReason::Canceled)
            }
            Some(OutboundEvent::Failed { code, reason }) => EndReason::from_failure(code, reason),
            Some(OutboundEvent::Canceled) => canceling.take().unwrap_or(EndReason::Canceled),
            Some(OutboundEvent::TimedOut) => canceling
                .take()
                .unwrap_or(EndReason::NoAnswer { code: Some(408) }),
            Some(OutboundEvent::Error(e)) => EndReason::Failed(FailureCause::Sip(e)),
            None => EndReason::Failed(FailureCause::NoFinalResponse),
        };
        return Err(not_taken(call.end(reason)).await);
    };
    let negotiated = match answer.as_deref().map(|a| sdp.accept_answer(a)) {
        Some(Ok(negotiated)) => negotiated,
        _ => {
            tracing::info!("the consult call's answer is not acceptable");
            let _ = timeout(BYE_TIMEOUT, sip.hangup()).await;
            return Err(not_taken(call.end(EndReason::NotAcceptable)).await);
        }
    };
    let rtp = match RtpSession::start(socket, Some(permit), negotiated, shared.media.clone()) {
        Ok(rtp) => rtp,
        Err(e) => {
            let _ = timeout(BYE_TIMEOUT, sip.hangup()).await;
            let reason = EndReason::Failed(FailureCause::Rtp(e.to_string()));
            return Err(not_taken(call.end(reason)).await);
        }
    };
    let answered_at = call.record_answered(started, sip.dialog_state()).await;
    let recorder = match recording.is_enabled() {
        true => {
            shared
                .recordings
                .start(&id, &rtp.handle, recording.channels.unwrap_or_default())
                .await
        }
        false => None,
    };
    tracing::info!(consult_call_id = %id, "the consult call is answered");
    Ok(Leg {
        call,
        id,
        sip,
        rtp,
        sdp,
        answered_at,
        recorder,
    })
}

/// Records the end of a consult call that was not taken, and says why, as
/// the agent tells the caller.
async fn not_taken(finished: Finished) -> String {
    let why = match &finished.reason {
        EndReason::Busy { .. } => "the line is busy".to_owned(),
        EndReason::Declined { .. } => "the call was declined".to_owned(),
        EndReason::NoAnswer { .. } | EndReason::Canceled => "nobody answered".to_owned(),
        EndReason::NotAcceptable => "the call could not be connected".to_owned(),
        other => format!("the call failed ({})", other.label()),
    };
    finished.record().await;
    why
}

impl Leg {
    /// Ends the leg: BYE while the dialog is up (not after the person's
    /// own BYE), the media stopped,
    /// the recording completed and the end recorded with `reason`.
    pub async fn end(self, reason: EndReason) {
        let Leg {
            call,
            sip,
            rtp,
            answered_at,
            mut recorder,
            ..
        } = self;
        if let Some(recorder) = recorder.as_mut() {
            recorder.stop();
        }
        if sip.is_active() {
            match timeout(BYE_TIMEOUT, sip.hangup()).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::info!(error = %e, "consult BYE not answered cleanly"),
                Err(_) => tracing::info!("consult BYE not answered in time"),
            }
        }
        let RtpSession {
            handle,
            events,
            task,
        } = rtp;
        drop(events);
        drop(handle);
        let _ = timeout(MEDIA_STOP, task).await;
        if let Some(recorder) = recorder {
            recorder.finish(call.shared.transitions.outbox()).await;
        }
        Finished::answered(call, reason, answered_at.elapsed())
            .record()
            .await;
    }
}

/// Waits until everything queued on the leg has been played (the summary
/// to the person), bounded by `limit`; `Err` with the reason the leg ended
/// if the person hung up meanwhile.
pub(super) async fn played_out(leg: &mut Leg, limit: Duration) -> Result<(), EndReason> {
    let deadline = Instant::now() + limit;
    loop {
        tokio::select! {
            event = leg.rtp.events.recv() => match event {
                Some(MediaEvent::PlayoutDrained) => return Ok(()),
                Some(MediaEvent::Timeout) => return Err(EndReason::MediaTimeout),
                Some(_) => {}
                None => return Err(EndReason::Failed(FailureCause::MediaClosed)),
            },
            event = leg.sip.next_event() => match event {
                Ok(crate::sip::DialogEvent::Bye | crate::sip::DialogEvent::Terminated) => {
                    return Err(EndReason::CalleeHangup);
                }
                Ok(crate::sip::DialogEvent::SessionExpired) => return Err(EndReason::SessionExpired),
                Ok(crate::sip::DialogEvent::ReInvite(re)) => {
                    super::task::reinvite(&mut leg.sip, &mut leg.sdp, &leg.rtp.handle, re).await;
                }
                Ok(crate::sip::DialogEvent::Info { .. } | crate::sip::DialogEvent::ReferProgress(_)) => {}
                Err(e) => return Err(EndReason::Failed(FailureCause::Sip(e.to_string()))),
            },
            () = sleep_until(deadline) => return Ok(()),
        }
    }
}

/// After an attended transfer: the person's side ends the consult leg once
/// the caller's INVITE with Replaces took it over (RFC 3891 §3); we send
/// BYE ourselves after [`REPLACED_LINGER`]. The leg ends `transferred`.
pub(super) async fn linger(mut leg: Leg) {
    let deadline = Instant::now() + REPLACED_LINGER;
    loop {
        tokio::select! {
            event = leg.sip.next_event() => match event {
                Ok(crate::sip::DialogEvent::ReInvite(re)) => {
                    super::task::reinvite(&mut leg.sip, &mut leg.sdp, &leg.rtp.handle, re).await;
                }
                Ok(crate::sip::DialogEvent::Info { .. } | crate::sip::DialogEvent::ReferProgress(_)) => {}
                Ok(_) | Err(_) => break,
            },
            Some(_) = leg.rtp.events.recv() => {}
            () = sleep_until(deadline) => {
                tracing::info!(consult_call_id = %leg.id, "the replaced consult leg is still up; ending it");
                break;
            }
        }
    }
    leg.end(EndReason::Transferred).await;
}
