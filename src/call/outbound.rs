//! Outbound call lifecycle, in order: [`Calls::place`] checks the request
//! (provisioned From number, trunk with an `[outbound]` proxy, agent, slot)
//! and records `queued`; the task binds RTP, makes the offer, sends the
//! INVITE through the trunk's proxy (credentials for 401/407 from the
//! profile's `[registration]`), records `ringing` on the first 18x,
//! cancels at the ring timeout or on hangup, and on 200 reads the answer,
//! records `answered` and runs the call task. A call that names several
//! trunks goes on to the next one on a 408, 5xx or other failure its
//! trunk's `failover_on` lists (see [`super::failover`]).
//!
//! A test-mode call (`livemode: false`: an `al_test_` key's, or a test
//! campaign's) takes the same path with its own From number and agent (of
//! test mode too), but no trunk: its INVITE goes to the simulated carrier
//! ([`super::simulated`]), counted under its `test_max_calls`.
//!
//! Must not: build SIP messages; `sip::SipStack::dial` does.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use tokio::time::{Instant, sleep_until};
use tracing::Instrument;

use super::context::{self, AgentWebhook};
use super::end_reason::FailureCause;
use super::failover::{Attempts, Candidate, Outcome};
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
use crate::sip::{
    Call, CancelState, Credentials, OutboundCall, OutboundEvent, OutboundInvite, SipStack,
};
use crate::store::StoreError;
use crate::store::calls::{CallRecord, CampaignAttempt, NewCall};
use crate::store::numbers::NumberRecord;

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
    /// Trunk failover: the trunks tried after `trunk`, in order; empty:
    /// the first trunk's `[outbound] failover_to`.
    pub failover: Vec<TrunkId>,
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
    /// The call's recording settings (a campaign's for its calls), over
    /// the From number's and the agent's.
    pub recording: Option<crate::model::RecordingSettings>,
    /// `false`: a test-mode call, placed on the simulated carrier with a
    /// test-mode number and agent; never on a trunk.
    pub livemode: bool,
    /// The API key that placed it (`POST /v1/calls`), for its daily caps.
    pub api_key_id: Option<String>,
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
        let (mut agent, trunks, number) = resolve(shared, &req).await?;
        let number_id = number.id;
        // Recording: the call's (or campaign's) over the From number's; the
        // agent's is merged under both when the call is prepared.
        let mut req = req;
        let number_recording = number.recording.as_deref().and_then(|json| {
            serde_json::from_str(json)
                .inspect_err(|e| tracing::warn!(error = %e, "number recording settings unreadable"))
                .ok()
        });
        if number_recording.is_some() {
            req.recording = Some(super::recording::merged(&[
                number_recording.as_ref(),
                req.recording.as_ref(),
            ]));
        }
        // Admitted on the first trunk the call may use; failover moves it.
        let Some(trunk) = trunks
            .iter()
            .find(|c| c.refused.is_none())
            .map(|c| c.trunk.clone())
        else {
            return Err(PlaceError::NoTrunk);
        };
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
        if !req.livemode {
            context.trunk_id = None;
        }
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
                trunk: req.livemode.then(|| trunk.id()).as_deref(),
                agent_id: Some(&agent.id),
                status: CallStatus::Queued,
                sip_call_id: None,
                metadata: &req.metadata,
                campaign: req.campaign.as_ref(),
                context: context_json.as_deref(),
                agent_source: Some(source),
                agent_source_error: source_error.as_deref(),
                livemode: req.livemode,
                api_key_id: req.api_key_id.as_deref(),
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
            trunks,
            agent,
            max_duration,
            req,
            context: context::agent_context(&context),
        };
        tokio::spawn(job.run().instrument(span));
        Ok(CallRecord::clone(&record))
    }
}

/// The agent and the trunks of a call to place: the request's, or those
/// bound to its From number (returned too), each with its policy's verdict.
async fn resolve(
    shared: &Shared,
    req: &OutboundRequest,
) -> Result<(AgentSpec, Vec<Candidate>, NumberRecord), PlaceError> {
    let store = shared.transitions.store();
    let number = store.find_number(&req.from).await.map_err(|e| match e {
        StoreError::NotFound => PlaceError::UnknownFrom,
        e => PlaceError::Store(e),
    })?;
    // Test mode and live mode never share an object.
    if number.livemode != req.livemode {
        return Err(PlaceError::UnknownFrom);
    }
    let agent_id = req
        .agent_id
        .clone()
        .or_else(|| number.agent_id.clone())
        .ok_or(PlaceError::NoAgent)?;
    let agent = store.get_agent(&agent_id).await.map_err(|e| match e {
        StoreError::NotFound => PlaceError::UnknownAgent,
        e => PlaceError::Store(e),
    })?;
    if agent.livemode != req.livemode {
        return Err(PlaceError::UnknownAgent);
    }
    let settings = CallSettings::from_json(&agent.settings)
        .map_err(|e| PlaceError::AgentSettings(e.to_string()))?;
    if !req.livemode {
        // No trunk, no toll: the simulated carrier's own profile.
        let carrier = shared.simulated.get().ok_or(PlaceError::NotRunning)?;
        let agent = AgentSpec {
            id: agent_id,
            kind: agent.kind,
            settings,
            settings_json: agent.settings,
        };
        let simulated = super::failover::Candidate {
            trunk: carrier.profile().clone(),
            refused: None,
        };
        return Ok((agent, vec![simulated], number));
    }
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
    if trunk.outbound.is_none() {
        return Err(PlaceError::TrunkNotOutbound);
    }
    // Toll fraud (premium-rate and high-risk ranges only where allowed)
    // and the daily caps, per trunk: refused by all, the call is refused.
    let trunks = super::failover::candidates(shared, trunk, &req.failover, &req.to).await?;
    let agent = AgentSpec {
        id: agent_id,
        kind: agent.kind,
        settings,
        settings_json: agent.settings,
    };
    Ok((agent, trunks, number))
}

/// Refuses a call once the trunk's daily caps (`[limits] daily_calls`,
/// `daily_minutes`, per UTC day, over every node) are reached, and sends
/// `trunk.cap_reached` the first time this node refuses one that day.
pub(super) async fn check_daily_caps(shared: &Shared, trunk: &Profile) -> Result<(), PlaceError> {
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
    /// The trunks to dial through in turn, as their profiles stood when
    /// placed (the first one the call may use is the one it was admitted
    /// on).
    trunks: Vec<Candidate>,
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
            trunks,
            agent,
            max_duration,
            req,
            context,
        } = self;
        let Some(stack) = call.shared.stack.get().cloned() else {
            return call.end(EndReason::Failed(FailureCause::SipNotRunning));
        };
        let Some(first) = trunks.iter().find(|c| c.refused.is_none()) else {
            return call.end(EndReason::Failed(FailureCause::NoTrunkUp));
        };
        let mut prepared = match call
            .prepare(&agent, &first.trunk, context, req.recording.as_ref())
            .await
        {
            Ok(prepared) => prepared,
            Err(finished) => return finished,
        };
        let mut attempts = Attempts::new(&prepared.call.id, trunks.len());
        // The last trunk's failure: what the call ends with if no trunk
        // after it takes the call.
        let mut last: Option<EndReason> = None;
        let mut ringing = false;
        for (index, candidate) in trunks.iter().enumerate() {
            let trunk = &candidate.trunk;
            if index > 0 && attempts.on_dnc(&prepared.call, &req.to).await {
                tracing::info!("the number went on the do-not-call list; no more trunks");
                break;
            }
            if let Some(skip) = attempts
                .check(&prepared.call, candidate, index, &req.to)
                .await
            {
                attempts
                    .record(&prepared.call, trunk, None, Outcome::Skipped(&skip))
                    .await;
                continue;
            }
            prepared.use_trunk(trunk);
            let dialed = match Dialing::start(prepared, &stack, trunk, &req, ringing).await {
                Ok(dialing) => {
                    let ring_timeout = req
                        .ring_timeout
                        .unwrap_or(dialing.prepared.call.shared.ring_timeout);
                    dialing.answered(ring_timeout, trunk).await
                }
                Err(unanswered) => Err(unanswered),
            };
            match dialed {
                Ok(up) => {
                    attempts
                        .record(&up.0.call, trunk, up.4.as_deref(), Outcome::Answered)
                        .await;
                    return run_answered(up, &req, max_duration).await;
                }
                Err(no) => {
                    let reason_text = no.reason.label();
                    let detail = match &no.reason {
                        EndReason::Busy { reason, .. } | EndReason::Declined { reason, .. } => {
                            format!("{reason_text}: {reason}")
                        }
                        EndReason::Failed(cause) => format!("{reason_text}: {cause}"),
                        _ => reason_text.to_owned(),
                    };
                    let outcome = Outcome::Failed {
                        code: no.reason.sip_status().map(|(code, _)| code),
                        reason: &detail,
                    };
                    attempts
                        .record(&no.prepared.call, trunk, no.sip_call_id.as_deref(), outcome)
                        .await;
                    ringing = no.ringing;
                    prepared = no.prepared;
                    if !no.fail_over {
                        return prepared.call.end(no.reason);
                    }
                    last = Some(no.reason);
                }
            }
        }
        prepared
            .call
            .end(last.unwrap_or(EndReason::Failed(FailureCause::NoTrunkUp)))
    }
}

/// The answered call: its media from the 200's SDP, `answered` recorded,
/// then the call task until the end.
async fn run_answered(up: Up, req: &OutboundRequest, max_duration: Duration) -> Finished {
    let (prepared, sip, answer, started, _) = up;
    let (call, session) = prepared.into_session(answer.as_deref());
    let session = match session {
        Ok(session) => session,
        Err(reason) => {
            // Dropping the dialog hangs it up.
            drop(sip);
            return call.end(reason);
        }
    };
    let answered_at = call.record_answered(started, sip.dialog_state()).await;
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

/// An INVITE that ended without an answer, with the call to go on with.
struct Unanswered {
    prepared: Prepared,
    reason: EndReason,
    /// Whether the next trunk may take the call (the trunk's
    /// `failover_on`, no answer at all, or a transport error; never our own
    /// CANCEL).
    fail_over: bool,
    /// The SIP Call-ID of the INVITE, if it went out.
    sip_call_id: Option<String>,
    /// Whether `ringing` is recorded (on this trunk or an earlier one).
    ringing: bool,
}

/// The answered dialog: the call, its dialog, the SDP answer, when the
/// INVITE went out, its SIP Call-ID.
type Up = (Prepared, Call, Option<Bytes>, Instant, Option<String>);

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
    /// Whether `ringing` is recorded (on the first 18x of any trunk).
    ringing: bool,
    /// The CANCEL state stored for another node (see `orphans`).
    cancel: Option<CancelState>,
    /// Changes when a challenge re-sent the INVITE.
    resends: tokio::sync::watch::Receiver<Option<CancelState>>,
    /// The INVITE's SIP Call-ID.
    sip_call_id: String,
    /// The trunk the INVITE went through (`None`: the simulated carrier).
    trunk_id: Option<String>,
}

impl Dialing {
    /// Sends the INVITE with our offer, credentials for 401/407 from the
    /// profile's `[registration]`, and records its SIP Call-ID.
    async fn start(
        mut prepared: Prepared,
        stack: &SipStack,
        trunk: &Profile,
        req: &OutboundRequest,
        ringing: bool,
    ) -> Result<Self, Unanswered> {
        let offer = prepared.offer();
        let (proxy, credentials) = if req.livemode {
            let Some(outbound) = &trunk.outbound else {
                return Err(Unanswered {
                    prepared,
                    reason: EndReason::Failed(FailureCause::TrunkNotOutbound),
                    fail_over: true,
                    sip_call_id: None,
                    ringing,
                });
            };
            let credentials = trunk.registration.as_ref().map(|r| Credentials {
                username: r
                    .auth_username
                    .clone()
                    .unwrap_or_else(|| r.username.clone()),
                password: r.password.expose().to_owned(),
                realm: None,
            });
            (trunk.sip_target(&outbound.proxy), credentials)
        } else {
            // Test mode: the simulated carrier, never a trunk.
            match prepared.call.shared.simulated.get() {
                Some(carrier) => (carrier.addr().to_string(), None),
                None => {
                    return Err(Unanswered {
                        prepared,
                        reason: EndReason::Failed(FailureCause::SipNotRunning),
                        fail_over: false,
                        sip_call_id: None,
                        ringing,
                    });
                }
            }
        };
        let started = Instant::now();
        let dialled = stack
            .dial(OutboundInvite {
                request_uri: format!("sip:{}@{}", req.to, proxy),
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
                // The trunk could not be reached: the next one may be.
                return Err(Unanswered {
                    prepared,
                    reason: EndReason::Failed(FailureCause::Sip(e.to_string())),
                    fail_over: true,
                    sip_call_id: None,
                    ringing,
                });
            }
        };
        let call = &prepared.call;
        let trunk_id = req.livemode.then(|| trunk.id().to_string());
        let cancel = super::orphans::store_cancel(
            &call.shared.transitions,
            &call.id,
            &invite,
            None,
            trunk_id.as_deref(),
        )
        .await;
        let resends = invite.resends();
        let sip_call_id = invite.call_id().to_owned();
        Ok(Self {
            prepared,
            invite,
            started,
            canceling: None,
            ringing,
            cancel,
            resends,
            sip_call_id,
            trunk_id,
        })
    }

    /// Waits for the 200 (recording `ringing` on the first 18x), canceling
    /// at `ring_timeout` or on a hangup; the answered dialog with its SDP
    /// answer and the instant the INVITE went out.
    async fn answered(mut self, ring_timeout: Duration, trunk: &Profile) -> Result<Up, Unanswered> {
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
                Ok(()) = self.resends.changed() => {
                    // A challenge re-sent the INVITE: a new branch to cancel.
                    self.resends.borrow_and_update();
                    let call = &self.prepared.call;
                    let stored = self.cancel.take();
                    self.cancel = super::orphans::store_cancel(
                        &call.shared.transitions,
                        &call.id,
                        &self.invite,
                        stored,
                        self.trunk_id.as_deref(),
                    )
                    .await;
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
                    return Ok((
                        self.prepared,
                        *call,
                        sdp,
                        self.started,
                        Some(self.sip_call_id),
                    ));
                }
                other => {
                    let fail_over = self.canceling.is_none()
                        && match &other {
                            Some(OutboundEvent::Failed { code, .. }) => trunk
                                .outbound
                                .as_ref()
                                .is_some_and(|o| o.fails_over_on(*code)),
                            Some(OutboundEvent::TimedOut | OutboundEvent::Error(_)) | None => true,
                            _ => false,
                        };
                    let reason = self.not_answered(other);
                    return Err(Unanswered {
                        prepared: self.prepared,
                        reason,
                        fail_over,
                        sip_call_id: Some(self.sip_call_id),
                        ringing: self.ringing,
                    });
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
