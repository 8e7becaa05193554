//! Outbound call lifecycle, in order: [`Calls::place`] checks the request
//! (provisioned From number, trunk with an `[outbound]` proxy, agent, slot)
//! and records `queued`; the task binds RTP, makes the offer, sends the
//! INVITE through the trunk's proxy (credentials for 401/407 from the
//! profile's `[registration]`), records `ringing` on the first 18x,
//! cancels at the ring timeout or on hangup, and on 200 reads the answer,
//! records `answered` and runs the call task.
//!
//! Must not: build SIP messages; `sip::SipStack::dial` does.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio::time::{Instant, sleep_until};
use tracing::Instrument;

use super::agents::AgentRun;
use super::registry::{CallHandle, Command, Slot};
use super::screen::Screen;
use super::task::{self, Established};
use super::{Calls, EndReason, Shared, count_ended, count_started};
use crate::agent::CallSettings;
use crate::config::Profile;
use crate::ids;
use crate::media::amd::AmdMode;
use crate::media::{Direction, LocalSdp, RtpSession, bind_rtp};
use crate::metrics::CALL_SETUP_SECONDS;
use crate::sip::{Credentials, OutboundEvent, OutboundInvite};
use crate::store::StoreError;
use crate::store::calls::{CallRecord, NewCall};

/// A call to place, as the API received it (numbers already E.164).
#[derive(Debug, Clone)]
pub struct OutboundRequest {
    /// The id the call must carry; `None`: a new one. A campaign chooses
    /// it before placing, so that a crash can be reconciled.
    pub call_id: Option<String>,
    /// A provisioned number: our caller ID.
    pub from: String,
    pub to: String,
    /// `None`: the agent bound to the From number.
    pub agent_id: Option<String>,
    /// Profile name; `None`: the trunk bound to the From number.
    pub trunk: Option<String>,
    pub ring_timeout: Option<Duration>,
    /// `None`: the agent's `max_duration_seconds`.
    pub max_duration: Option<Duration>,
    /// Extra SIP headers on the INVITE.
    pub headers: Vec<(String, String)>,
    /// JSON object text, stored with the call.
    pub metadata: String,
    /// Answering-machine detection at the answer.
    pub amd: AmdMode,
    /// A key that opts the callee out (campaign calls).
    pub opt_out_digit: Option<char>,
}

/// Why a call was not placed; each says what the caller can fix.
#[derive(Debug, thiserror::Error)]
pub enum PlaceError {
    #[error("the from number is not provisioned")]
    UnknownFrom,
    #[error("no agent given and none bound to the from number")]
    NoAgent,
    #[error("agent not found")]
    UnknownAgent,
    #[error("no trunk given and none bound to the from number")]
    NoTrunk,
    #[error("trunk not found")]
    UnknownTrunk,
    #[error("the trunk has no [outbound] proxy")]
    TrunkNotOutbound,
    #[error("the trunk is at its max_calls")]
    TrunkFull,
    #[error("the trunk is at its cps (new calls per second)")]
    TrunkRate,
    #[error("the daemon is draining and places no new calls")]
    Draining,
    #[error("the SIP stack is not running")]
    NotRunning,
    #[error("agent settings: {0}")]
    AgentSettings(String),
    #[error("store: {0}")]
    Store(#[from] StoreError),
}

impl Calls {
    /// Checks and records the call (`queued`), then dials it in its own task.
    pub async fn place(&self, req: OutboundRequest) -> Result<CallRecord, PlaceError> {
        let shared = &self.shared;
        if shared.is_draining() {
            return Err(PlaceError::Draining);
        }
        let store = shared.transitions.store();
        let number = store.find_number(&req.from).await.map_err(|e| match e {
            StoreError::NotFound => PlaceError::UnknownFrom,
            e => PlaceError::Store(e),
        })?;
        let agent_id = req
            .agent_id
            .clone()
            .or(number.agent_id)
            .ok_or(PlaceError::NoAgent)?;
        let agent = store.get_agent(&agent_id).await.map_err(|e| match e {
            StoreError::NotFound => PlaceError::UnknownAgent,
            e => PlaceError::Store(e),
        })?;
        let settings = CallSettings::from_json(&agent.settings)
            .map_err(|e| PlaceError::AgentSettings(e.to_string()))?;
        let trunk_name = req
            .trunk
            .clone()
            .or_else(|| {
                number
                    .trunk
                    .as_deref()
                    .map(|t| t.strip_prefix("trk_").unwrap_or(t).to_owned())
            })
            .ok_or(PlaceError::NoTrunk)?;
        let trunk = shared
            .profiles
            .get()
            .by_name
            .get(&trunk_name)
            .cloned()
            .ok_or(PlaceError::UnknownTrunk)?;
        if trunk.outbound.is_none() {
            return Err(PlaceError::TrunkNotOutbound);
        }
        if shared.stack.get().is_none() {
            return Err(PlaceError::NotRunning);
        }
        if !shared.registry.admit_rate(&trunk.name, trunk.limits.cps) {
            return Err(PlaceError::TrunkRate);
        }
        let id = req.call_id.clone().unwrap_or_else(|| ids::new(ids::CALL));
        let (handle, commands) = CallHandle::new();
        let slot = shared
            .registry
            .try_insert(&id, &trunk.name, "outbound", trunk.limits.max_calls, handle)
            .ok_or(PlaceError::TrunkFull)?;
        let record = shared
            .transitions
            .created(NewCall {
                id: &id,
                direction: "outbound",
                from_number: &req.from,
                to_number: &req.to,
                trunk: Some(&trunk.id()),
                agent_id: Some(&agent_id),
                status: "queued",
                sip_call_id: None,
                metadata: &req.metadata,
            })
            .await?;
        count_started("outbound");
        let max_duration = req.max_duration.unwrap_or(Duration::from_secs(u64::from(
            settings.max_duration_seconds,
        )));
        let span = tracing::info_span!(
            "call",
            call_id = %id,
            direction = "outbound",
            trunk = %trunk.name,
            number = %req.to,
        );
        let job = Dial {
            shared: Arc::clone(shared),
            id,
            trunk,
            agent_kind: agent.kind,
            settings,
            settings_json: agent.settings,
            max_duration,
            req,
            commands,
            _slot: slot,
        };
        tokio::spawn(job.run().instrument(span));
        Ok(CallRecord::clone(&record))
    }
}

/// One outbound call's task state.
struct Dial {
    shared: Arc<Shared>,
    id: String,
    trunk: Profile,
    agent_kind: String,
    settings: CallSettings,
    /// The agent's whole settings document (the brain reads it).
    settings_json: String,
    max_duration: Duration,
    req: OutboundRequest,
    commands: mpsc::Receiver<Command>,
    /// Frees the trunk slot when the task ends.
    _slot: Slot,
}

impl Dial {
    async fn run(mut self) {
        let (reason, answered_for) = self.call().await;
        tracing::info!(reason = reason.label(), "call ended");
        count_ended("outbound", &reason);
        self.shared
            .transitions
            .ended(&self.id, &reason, answered_for)
            .await;
    }

    async fn call(&mut self) -> (EndReason, Option<Duration>) {
        let shared = Arc::clone(&self.shared);
        let Some(stack) = shared.stack.get() else {
            return (EndReason::Error("SIP stack not running".into()), None);
        };
        let agent = match AgentRun::new(
            &self.agent_kind,
            &self.settings,
            &self.settings_json,
            &shared.speech,
            false,
        )
        .await
        {
            Ok(agent) => agent,
            Err(e) => {
                tracing::warn!(error = %e, "the agent cannot run");
                return (EndReason::Error(e), None);
            }
        };
        let (socket, permit) = match bind_rtp(&shared.ports, shared.media_ip()).await {
            Ok(bound) => bound,
            Err(e) => return (EndReason::Error(format!("RTP: {e}")), None),
        };
        let mut sdp = LocalSdp::new(shared.media_ip(), permit.port(), super::codecs(&self.trunk));
        let offer = sdp.offer(Direction::SendRecv);
        let Some(outbound) = &self.trunk.outbound else {
            return (EndReason::Error("trunk has no [outbound]".into()), None);
        };
        let credentials = self.trunk.registration.as_ref().map(|r| Credentials {
            username: r
                .auth_username
                .clone()
                .unwrap_or_else(|| r.username.clone()),
            password: r.password.clone(),
            realm: None,
        });
        let started = Instant::now();
        let dialled = stack
            .dial(OutboundInvite {
                request_uri: format!("sip:{}@{}", self.req.to, outbound.proxy),
                from_user: self.req.from.clone(),
                from_display: None,
                from_domain: None,
                credentials,
                sdp_offer: Some(Bytes::from(offer)),
                extra_headers: self.req.headers.clone(),
            })
            .await;
        let mut invite = match dialled {
            Ok(invite) => invite,
            Err(e) => return (EndReason::Error(format!("SIP: {e}")), None),
        };
        shared.transitions.dialing(&self.id, invite.call_id()).await;

        let ring_deadline = started + self.req.ring_timeout.unwrap_or(shared.ring_timeout);
        // Set when we cancel: what the call ends with once the CANCEL lands.
        let mut cancel_reason: Option<EndReason> = None;
        let mut ringing = false;
        loop {
            let event = tokio::select! {
                event = invite.next() => event,
                Some(Command::Hangup(reason)) = self.commands.recv(), if cancel_reason.is_none() => {
                    tracing::info!(reason = reason.label(), "canceling the INVITE");
                    cancel_reason = Some(reason);
                    invite.cancel();
                    continue;
                }
                () = sleep_until(ring_deadline), if cancel_reason.is_none() => {
                    tracing::info!("ring timeout, canceling the INVITE");
                    cancel_reason = Some(EndReason::NoAnswer { code: None });
                    invite.cancel();
                    continue;
                }
            };
            match event {
                Some(OutboundEvent::Progress { code, .. }) => {
                    tracing::debug!(code, "provisional response");
                    if !ringing {
                        ringing = true;
                        shared.transitions.ringing(&self.id).await;
                    }
                }
                Some(OutboundEvent::Answered { call, sdp: answer }) => {
                    let negotiated = match answer.as_deref().map(|a| sdp.accept_answer(a)) {
                        Some(Ok(negotiated)) => negotiated,
                        Some(Err(e)) => {
                            tracing::info!(error = %e, "answer not acceptable; hanging up");
                            drop(call);
                            return (EndReason::NotAcceptable, None);
                        }
                        None => {
                            drop(call);
                            return (EndReason::NotAcceptable, None);
                        }
                    };
                    let rtp = match RtpSession::start(
                        socket,
                        Some(permit),
                        negotiated,
                        shared.media.clone(),
                    ) {
                        Ok(rtp) => rtp,
                        Err(e) => return (EndReason::Error(format!("RTP: {e}")), None),
                    };
                    let answered_at = Instant::now();
                    metrics::histogram!(CALL_SETUP_SECONDS, "direction" => "outbound")
                        .record(answered_at.duration_since(started).as_secs_f64());
                    shared.transitions.answered(&self.id).await;
                    let (_, placeholder) = mpsc::channel(1);
                    let commands = std::mem::replace(&mut self.commands, placeholder);
                    let reason = task::run(
                        &shared,
                        Established {
                            id: self.id.clone(),
                            inbound: false,
                            sip: *call,
                            rtp,
                            sdp,
                            agent,
                            max_duration: self.max_duration,
                            commands,
                            screen: Screen::new(
                                &self.id,
                                shared.transitions.clone(),
                                self.req.amd,
                                self.req.opt_out_digit,
                            ),
                        },
                    )
                    .await;
                    return (reason, Some(answered_at.elapsed()));
                }
                Some(OutboundEvent::Failed { code, reason }) => {
                    let ended = EndReason::from_failure(code, reason);
                    // 487 answers our own CANCEL (RFC 3261 §9.1).
                    return match (code, cancel_reason) {
                        (487, Some(why)) => (why, None),
                        _ => (ended, None),
                    };
                }
                Some(OutboundEvent::Canceled) => {
                    return (cancel_reason.unwrap_or(EndReason::Canceled), None);
                }
                Some(OutboundEvent::TimedOut) => {
                    return (
                        cancel_reason.unwrap_or(EndReason::NoAnswer { code: Some(408) }),
                        None,
                    );
                }
                Some(OutboundEvent::Error(e)) => {
                    return (EndReason::Error(format!("SIP: {e}")), None);
                }
                None => {
                    return (
                        EndReason::Error("INVITE ended without an answer".into()),
                        None,
                    );
                }
            }
        }
    }
}
