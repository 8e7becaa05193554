//! Outbound call lifecycle, in order: [`Calls::place`] checks the request
//! (provisioned From number, trunk with an `[outbound]` proxy, agent, slot)
//! and records `queued`; the task binds RTP, makes the offer, sends the
//! INVITE through the trunk's proxy (credentials for 401/407 from the
//! profile's `[registration]`), records `ringing` on the first 18x,
//! cancels at the ring timeout or on hangup, and on 200 reads the answer,
//! records `answered` and runs the call task.
//!
//! Must not: build SIP messages; `sip::SipStack::dial` does.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use tokio::time::{Instant, sleep_until};
use tracing::Instrument;

use super::context::{self, AgentWebhook};
use super::end_reason::FailureCause;
use super::phase::{AgentSpec, Answered, Finished, Prepared, Routed};
use super::registry::CallCommand;
use super::screen::Screen;
use super::{Calls, EndReason, Shared, count_started};
use crate::agent::CallSettings;
use crate::agent::brain::AgentContext;
use crate::config::Profile;
use crate::ids;
use crate::media::amd::AmdMode;
use crate::model::{AgentSource, CallContext, CallStatus, Direction, TrunkId};
use crate::sip::{Call, Credentials, OutboundCall, OutboundEvent, OutboundInvite, SipStack};
use crate::store::StoreError;
use crate::store::calls::{CallRecord, CampaignAttempt, NewCall};

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
    /// `None`: the trunk bound to the From number.
    pub trunk: Option<TrunkId>,
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
    /// The campaign attempt the call is, for a campaign's call.
    pub campaign: Option<CampaignAttempt>,
    /// The call's template variables (a campaign contact's `variables`,
    /// or `POST /v1/calls`'s), in its context.
    pub variables: BTreeMap<String, serde_json::Value>,
    /// Asked for the agent of this call before it is placed (a campaign's
    /// `agent_webhook_url`).
    pub agent_webhook: Option<AgentWebhook>,
    /// The call's recording settings, over the agent's.
    pub recording: Option<crate::model::RecordingSettings>,
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
    #[error("the destination is refused by the trunk's policy: {0}")]
    DestinationDenied(String),
    #[error("the trunk reached its daily cap: {0}")]
    DailyCap(String),
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
        let (mut agent, trunk, number_id) = resolve(shared, &req).await?;
        if shared.stack.get().is_none() {
            return Err(PlaceError::NotRunning);
        }
        let id = req.call_id.clone().unwrap_or_else(|| ids::new(ids::CALL));
        let mut context = CallContext {
            call_id: id.clone(),
            direction: Some(Direction::Outbound),
            from: req.from.clone(),
            to: req.to.clone(),
            trunk_id: Some(trunk.id().to_string()),
            number_id: Some(number_id),
            agent_id: Some(agent.id.clone()),
            campaign_id: req.campaign.as_ref().map(|c| c.campaign_id.clone()),
            contact_id: req.campaign.as_ref().map(|c| c.contact_id.clone()),
            variables: req.variables.clone(),
            metadata: serde_json::from_str(&req.metadata).unwrap_or_default(),
            ..CallContext::default()
        };
        let (source, source_error) = match &req.agent_webhook {
            Some(hook) => {
                let followed = match shared.hooks.ask(hook, &context).await {
                    Ok(answer) => {
                        context::follow(
                            shared.transitions.store(),
                            &shared.speech,
                            &mut agent,
                            &mut context,
                            answer,
                        )
                        .await
                    }
                    Err(e) => Err(e),
                };
                match followed {
                    Ok(()) => (AgentSource::Webhook, None),
                    Err(e) => (AgentSource::Fallback, Some(e)),
                }
            }
            None => (AgentSource::Number, None),
        };
        let context_json = serde_json::to_string(&context).ok();
        let call = Routed::admit(shared, &id, &trunk, false).map_err(|reason| match reason {
            EndReason::TrunkRate => PlaceError::TrunkRate,
            _ => PlaceError::TrunkFull,
        })?;
        let record = shared
            .transitions
            .created(NewCall {
                id: &id,
                direction: Direction::Outbound,
                from_number: &req.from,
                to_number: &req.to,
                trunk: Some(&trunk.id()),
                agent_id: Some(&agent.id),
                status: CallStatus::Queued,
                sip_call_id: None,
                metadata: &req.metadata,
                campaign: req.campaign.as_ref(),
                context: context_json.as_deref(),
                agent_source: Some(source),
                agent_source_error: source_error.as_deref(),
            })
            .await?;
        count_started("outbound");
        let max_duration = req.max_duration.unwrap_or(Duration::from_secs(u64::from(
            agent.settings.max_duration_seconds,
        )));
        let span = tracing::info_span!(
            "call",
            call_id = %id,
            direction = "outbound",
            trunk = %trunk.name,
            number = %req.to,
        );
        let job = Dial {
            call,
            trunk,
            agent,
            max_duration,
            req,
            context: context::agent_context(&context),
        };
        tokio::spawn(job.run().instrument(span));
        Ok(CallRecord::clone(&record))
    }
}

/// The agent and the trunk of a call to place: the request's, or those
/// bound to its From number.
async fn resolve(
    shared: &Shared,
    req: &OutboundRequest,
) -> Result<(AgentSpec, Profile, String), PlaceError> {
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
    let trunk_id = match &req.trunk {
        Some(id) => id.clone(),
        None => number
            .trunk
            .as_deref()
            .ok_or(PlaceError::NoTrunk)?
            .parse::<TrunkId>()
            .map_err(|_| PlaceError::UnknownTrunk)?,
    };
    let trunk = shared
        .profiles
        .get()
        .by_name
        .get(trunk_id.name())
        .cloned()
        .ok_or(PlaceError::UnknownTrunk)?;
    let Some(out) = &trunk.outbound else {
        return Err(PlaceError::TrunkNotOutbound);
    };
    // Toll fraud: premium-rate and high-risk ranges only where allowed.
    out.destination_allowed(&req.to)
        .map_err(PlaceError::DestinationDenied)?;
    check_daily_caps(shared, &trunk).await?;
    let agent = AgentSpec {
        id: agent_id,
        kind: agent.kind,
        settings,
        settings_json: agent.settings,
    };
    Ok((agent, trunk, number.id))
}

/// Refuses a call once the trunk's daily caps (`[limits] daily_calls`,
/// `daily_minutes`, per UTC day, over every node) are reached, and sends
/// `trunk.cap_reached` the first time this node refuses one that day.
async fn check_daily_caps(shared: &Shared, trunk: &Profile) -> Result<(), PlaceError> {
    let limits = &trunk.limits;
    if limits.daily_calls.is_none() && limits.daily_minutes.is_none() {
        return Ok(());
    }
    let now = chrono::Utc::now();
    let midnight = now
        .date_naive()
        .and_hms_opt(0, 0, 0)
        .map(|t| t.and_utc())
        .unwrap_or(now);
    let store = shared.transitions.store();
    let (calls, ms) = store.outbound_usage(&trunk.id(), midnight).await?;
    let reason = match (limits.daily_calls, limits.daily_minutes) {
        (Some(cap), _) if calls >= i64::from(cap) => format!("{cap} calls today"),
        (_, Some(cap)) if ms >= i64::from(cap) * 60_000 => format!("{cap} minutes today"),
        _ => return Ok(()),
    };
    static NOTIFIED: std::sync::Mutex<Vec<(String, chrono::NaiveDate)>> =
        std::sync::Mutex::new(Vec::new());
    let first = {
        let mut seen = NOTIFIED.lock().unwrap_or_else(|e| e.into_inner());
        let key = (trunk.name.clone(), now.date_naive());
        seen.retain(|(_, day)| *day == key.1);
        if seen.contains(&key) {
            false
        } else {
            seen.push(key);
            true
        }
    };
    if first {
        tracing::warn!(trunk = %trunk.name, %reason, "trunk daily cap reached; calls refused until midnight UTC");
        let data = crate::webhook::event::TrunkEventData {
            trunk_id: trunk.name.clone(),
            sip_code: None,
            reason: Some(format!("daily cap reached: {reason}")),
            expires_at: None,
            next_attempt_at: None,
        };
        if let Err(e) = shared
            .transitions
            .outbox()
            .trunk_changed(crate::model::EventType::TrunkCapReached, data)
            .await
        {
            tracing::warn!(error = %e, "trunk event not written");
        }
    }
    Err(PlaceError::DailyCap(reason))
}

/// One outbound call, placed and recorded `queued`, for its task.
struct Dial {
    /// The admitted call, with its trunk slot, recorded `queued`.
    call: Routed,
    /// The trunk to dial through, as its profile stood when placed.
    trunk: Profile,
    /// The agent the call runs once answered.
    agent: AgentSpec,
    /// How long the answered call may last.
    max_duration: Duration,
    /// The request as placed (numbers, headers, ring timeout, AMD).
    req: OutboundRequest,
    /// The call's context, for its agent.
    context: AgentContext,
}

impl Dial {
    async fn run(self) {
        self.call().await.record().await;
    }

    /// The outbound phases, in order; each failure edge ends the call
    /// where it happens.
    async fn call(self) -> Finished {
        let Dial {
            call,
            trunk,
            agent,
            max_duration,
            req,
            context,
        } = self;
        let Some(stack) = call.shared.stack.get().cloned() else {
            return call.end(EndReason::Failed(FailureCause::SipNotRunning));
        };
        let prepared = match call
            .prepare(&agent, &trunk, context, req.recording.as_ref())
            .await
        {
            Ok(prepared) => prepared,
            Err(finished) => return finished,
        };
        let dialing = match Dialing::start(prepared, &stack, &trunk, &req).await {
            Ok(dialing) => dialing,
            Err(finished) => return finished,
        };
        let ring_timeout = req
            .ring_timeout
            .unwrap_or(dialing.prepared.call.shared.ring_timeout);
        let (prepared, sip, answer, started) = match dialing.answered(ring_timeout).await {
            Ok(answered) => answered,
            Err(finished) => return finished,
        };
        let (call, session) = prepared.into_session(answer.as_deref());
        let session = match session {
            Ok(session) => session,
            Err(reason) => {
                // Dropping the dialog hangs it up.
                drop(sip);
                return call.end(reason);
            }
        };
        let answered_at = call.record_answered(started).await;
        let screen = Screen::new(
            &call.id,
            call.shared.transitions.clone(),
            req.amd,
            req.opt_out_digit,
        );
        Answered::new(call, sip, session, answered_at)
            .run(max_duration, screen)
            .await
    }
}

/// An INVITE sent through the trunk's proxy, until its final response.
struct Dialing {
    /// The call with its agent and bound port, waiting for the answer.
    prepared: Prepared,
    /// The INVITE client transaction: its responses, and CANCEL.
    invite: OutboundCall,
    /// When the INVITE went out: the setup time and the ring timeout
    /// count from here.
    started: Instant,
    /// Set when we cancel: what the call ends with once the CANCEL lands.
    canceling: Option<EndReason>,
    /// Whether `ringing` is recorded (on the first 18x).
    ringing: bool,
}

impl Dialing {
    /// Sends the INVITE with our offer, credentials for 401/407 from the
    /// profile's `[registration]`, and records its SIP Call-ID.
    async fn start(
        mut prepared: Prepared,
        stack: &SipStack,
        trunk: &Profile,
        req: &OutboundRequest,
    ) -> Result<Self, Finished> {
        let offer = prepared.offer();
        let Some(outbound) = &trunk.outbound else {
            return Err(prepared
                .call
                .end(EndReason::Failed(FailureCause::TrunkNotOutbound)));
        };
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
                request_uri: format!("sip:{}@{}", req.to, outbound.proxy),
                from_user: req.from.clone(),
                from_display: None,
                from_domain: None,
                credentials,
                sdp_offer: Some(offer),
                extra_headers: req.headers.clone(),
            })
            .await;
        let invite = match dialled {
            Ok(invite) => invite,
            Err(e) => {
                let reason = EndReason::Failed(FailureCause::Sip(e.to_string()));
                return Err(prepared.call.end(reason));
            }
        };
        let call = &prepared.call;
        call.shared
            .transitions
            .dialing(&call.id, invite.call_id())
            .await;
        Ok(Self {
            prepared,
            invite,
            started,
            canceling: None,
            ringing: false,
        })
    }

    /// Waits for the 200 (recording `ringing` on the first 18x), canceling
    /// at `ring_timeout` or on a hangup; the answered dialog with its SDP
    /// answer and the instant the INVITE went out.
    async fn answered(
        mut self,
        ring_timeout: Duration,
    ) -> Result<(Prepared, Call, Option<Bytes>, Instant), Finished> {
        let ring_deadline = self.started + ring_timeout;
        loop {
            let commands = &mut self.prepared.call.commands;
            let event = tokio::select! {
                event = self.invite.next() => event,
                Some(CallCommand::Hangup(reason)) = commands.recv(), if self.canceling.is_none() => {
                    tracing::info!(reason = reason.label(), "canceling the INVITE");
                    self.cancel(reason);
                    continue;
                }
                () = sleep_until(ring_deadline), if self.canceling.is_none() => {
                    tracing::info!("ring timeout, canceling the INVITE");
                    self.cancel(EndReason::NoAnswer { code: None });
                    continue;
                }
            };
            match event {
                Some(OutboundEvent::Progress { code, .. }) => {
                    tracing::debug!(code, "provisional response");
                    if !self.ringing {
                        self.ringing = true;
                        let call = &self.prepared.call;
                        call.shared.transitions.ringing(&call.id).await;
                    }
                }
                Some(OutboundEvent::Answered { call, sdp }) => {
                    return Ok((self.prepared, *call, sdp, self.started));
                }
                other => {
                    let reason = self.not_answered(other);
                    return Err(self.prepared.call.end(reason));
                }
            }
        }
    }

    fn cancel(&mut self, reason: EndReason) {
        self.canceling = Some(reason);
        self.invite.cancel();
    }

    /// Why the INVITE ended without an answer: the reason we canceled
    /// for, or the far end's.
    fn not_answered(&mut self, event: Option<OutboundEvent>) -> EndReason {
        let canceling = self.canceling.take();
        match event {
            // 487 answers our own CANCEL (RFC 3261 §9.1).
            Some(OutboundEvent::Failed { code: 487, .. }) if canceling.is_some() => {
                canceling.unwrap_or(EndReason::Canceled)
            }
            Some(OutboundEvent::Failed { code, reason }) => EndReason::from_failure(code, reason),
            Some(OutboundEvent::Canceled) => canceling.unwrap_or(EndReason::Canceled),
            Some(OutboundEvent::TimedOut) => {
                canceling.unwrap_or(EndReason::NoAnswer { code: Some(408) })
            }
            Some(OutboundEvent::Error(e)) => EndReason::Failed(FailureCause::Sip(e)),
            None => EndReason::Failed(FailureCause::NoFinalResponse),
            // Progress and Answered never end the INVITE here.
            Some(OutboundEvent::Progress { .. } | OutboundEvent::Answered { .. }) => {
                EndReason::Failed(FailureCause::NoFinalResponse)
            }
        }
    }
}
