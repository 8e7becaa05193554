//! Inbound call lifecycle, as the phases of [`super::phase`] in the order
//! they happen ([`run`]): [`route`] (trunk by source, drain, number, agent,
//! offer); [`Routed::admit`] (the trunk's cps, then a slot); [`prepare`]
//! (the agent, an RTP port, and the answer to the offer or, for an INVITE
//! without one, ours); [`Ringing::start`] (record `ringing`);
//! [`Ringing::answer`] (180, the configured answer delay that CANCEL,
//! hangup or shutdown may cut, 200 and ACK, record `answered`, media
//! started with the ACK's answer if it waited for one); the call task; the
//! recorded end.
//!
//! A number with an agent webhook rings (180) first, then asks it for the
//! call's agent ([`super::context`]) within its timeout; the answer, or
//! the number's own agent on a timeout or an error, is recorded with the
//! call (`agent_source`).
//!
//! A refusal before the call is recorded is answered and then recorded as
//! created and ended at once ([`refuse_routed`]); after, the end is
//! recorded by [`Finished::record`].
//!
//! Must not: speak SIP beyond the `sip::IncomingInvite` steps; every
//! refusal is an [`EndReason`] whose `rejection()` is the response.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;
use tracing::Instrument;

use super::context::{self, AgentWebhook, HookAnswer};
use super::end_reason::FailureCause;
use super::phase::{AgentSpec, Answered, Finished, Prepared, Routed, hang_up_unanswerable};
use super::registry::CallCommand;
use super::screen::Screen;
use super::{EndReason, Shared, count_ended, count_started};
use crate::agent::CallSettings;
use crate::config::Profile;
use crate::media::amd::AmdMode;
use crate::model::{AgentSource, CallContext, CallStatus, Direction, RecordingSettings};
use crate::sip::{AcceptError, DigestAccount, IncomingInvite, InviteInfo, digest_identity};
use crate::store::StoreError;
use crate::store::calls::{CallRecord, NewCall};
use crate::{e164, ids};

/// What [`route`] found for an INVITE.
struct Route {
    /// The trunk the INVITE came on, as its profile stood at routing.
    trunk: Profile,
    /// The dialled number, E.164, as provisioned.
    number: String,
    /// The caller's number (E.164 where it parses) or `anonymous`.
    caller: String,
    /// The agent bound to the number, or the one its agent webhook chose.
    agent: AgentSpec,
    /// `None`: a late offer (RFC 3261 §13.2.1), ours goes in the 200.
    offer: Option<Bytes>,
    /// What is known about the call, stored with it and handed to its
    /// agent.
    context: CallContext,
    /// The number's agent webhook, asked while the call rings.
    hook: Option<AgentWebhook>,
    /// Who chose the agent, and why a webhook's choice was not followed.
    agent_source: AgentSource,
    agent_source_error: Option<String>,
    /// The dialled number's recording settings, over the agent's.
    recording: Option<RecordingSettings>,
}

/// The trunk whose `[inbound] allow` covers `ip`, first by name. An IPv4
/// peer on a dual-stack `[::]` listener (::ffff:a.b.c.d) is matched as the
/// IPv4 address it is.
pub(super) fn trunk_for_source(shared: &Shared, ip: IpAddr) -> Option<Profile> {
    let ip = ip.to_canonical();
    shared
        .profiles
        .get()
        .by_name
        .values()
        .find(|p| p.inbound.allow.iter().any(|net| net.contains(&ip)))
        .cloned()
}

/// The accounts of the trunks with `[inbound] auth`, which a source that
/// no trunk allows by address must prove.
pub(super) fn digest_accounts(shared: &Shared) -> Vec<DigestAccount> {
    shared
        .profiles
        .get()
        .by_name
        .values()
        .filter_map(|p| {
            let auth = p.inbound.auth.as_ref()?;
            Some(DigestAccount {
                realm: auth.realm.clone().unwrap_or_else(|| p.name.clone()),
                username: auth.username.clone(),
                password: auth.password.expose().to_owned(),
            })
        })
        .collect()
}

/// The trunk of an INVITE: by source address, else by the digest
/// credentials the SIP layer verified (a peer that `[inbound] auth` lets
/// in from any address).
pub(super) fn trunk_for(shared: &Shared, info: &InviteInfo) -> Option<Profile> {
    if let Some(trunk) = trunk_for_source(shared, info.source.ip()) {
        return Some(trunk);
    }
    let (realm, username) = digest_identity(info)?;
    shared
        .profiles
        .get()
        .by_name
        .values()
        .find(|p| {
            p.inbound.auth.as_ref().is_some_and(|a| {
                a.username == username && a.realm.as_deref().unwrap_or(&p.name) == realm
            })
        })
        .cloned()
}

/// Handles one INVITE from arrival to the end of the call.
pub(super) async fn handle(shared: Arc<Shared>, invite: IncomingInvite) {
    let id = ids::new(ids::CALL);
    let info = invite.info().clone();
    let span = tracing::info_span!(
        "call",
        call_id = %id,
        sip_call_id = %info.call_id,
        direction = "inbound",
        trunk = tracing::field::Empty,
        number = tracing::field::Empty,
    );
    async move {
        // RFC 3891: an INVITE naming a dialog of ours to take over is no
        // new call.
        if let Some(replaces) = info.header("Replaces") {
            return super::replace::handle(&shared, invite, replaces).await;
        }
        let route = match route(&shared, &id, &info).await {
            Ok(route) => route,
            Err(reason) => return refuse(invite, reason).await,
        };
        let span = tracing::Span::current();
        span.record("trunk", route.trunk.name.as_str());
        span.record("number", route.number.as_str());
        run(shared, id, invite, route).await;
    }
    .instrument(span)
    .await
}

async fn refuse(invite: IncomingInvite, reason: EndReason) {
    tracing::info!(reason = reason.label(), "inbound INVITE refused");
    count_ended("inbound", &reason);
    if let Err(e) = invite.reject(reason.rejection()).await {
        tracing::info!(error = %e, "refusal not sent");
    }
}

/// Refuses an INVITE routed to one of our numbers, then records the call
/// as created and ended at once (`busy` or `failed`, with the SIP code and
/// the reason), so that the number's owner sees the call that was missed
/// and why, and gets its webhooks. The SIP answer goes first: the store
/// must not delay it. The trunk's CPS guard does not come here: its point
/// is to shed a flood cheaply, and the metrics count what it refused.
async fn refuse_routed(
    shared: &Shared,
    id: &str,
    route: &Route,
    invite: IncomingInvite,
    reason: EndReason,
) {
    let sip_call_id = invite.call_id().to_owned();
    refuse(invite, reason.clone()).await;
    match record(shared, id, route, &sip_call_id, CallStatus::Queued).await {
        Ok(_) => shared.transitions.refused(id, &reason).await,
        Err(e) => tracing::warn!(error = %e, "refused call not recorded"),
    }
}

/// Records the routed call with `status`, and its first event.
async fn record(
    shared: &Shared,
    id: &str,
    route: &Route,
    sip_call_id: &str,
    status: CallStatus,
) -> crate::store::Result<Arc<CallRecord>> {
    let trunk = route.trunk.id();
    let context = serde_json::to_string(&route.context).ok();
    shared
        .transitions
        .created(NewCall {
            id,
            direction: Direction::Inbound,
            from_number: &route.caller,
            to_number: &route.number,
            trunk: Some(&trunk),
            agent_id: Some(&route.agent.id),
            status,
            sip_call_id: Some(sip_call_id),
            metadata: "{}",
            campaign: None,
            context: context.as_deref(),
            agent_source: Some(route.agent_source),
            agent_source_error: route.agent_source_error.as_deref(),
            // Inbound calls come from trunks: live (test numbers are
            // never routed one).
            livemode: true,
            api_key_id: None,
        })
        .await
}

/// Decides whether and to what the INVITE is routed; `id` is the call's.
async fn route(shared: &Shared, id: &str, info: &InviteInfo) -> Result<Route, EndReason> {
    let trunk = trunk_for(shared, info).ok_or(EndReason::SourceNotAllowed)?;
    if shared.is_draining() {
        return Err(EndReason::Draining);
    }
    // The Request-URI names the number on a direct trunk; behind a
    // registrar it names our registered contact and the number is in To
    // (RFC 3261 §8.2.2.1 lets a UAS route on either).
    let store = shared.transitions.store();
    let mut found = None;
    let dialled = [info.request_user.as_deref(), info.to_user.as_deref()];
    // As written first (a provisioned number is stored in E.164, so an exact
    // match is the number), then through libphonenumber for the forms
    // carriers send ("14155552671", "+44 (0)20 ...").
    let candidates = dialled
        .iter()
        .flatten()
        .filter_map(|u| as_written(u))
        .chain(dialled.iter().flatten().filter_map(|u| normalize(u)));
    let mut tried = Vec::with_capacity(2);
    for number in candidates {
        if tried.contains(&number) {
            continue;
        }
        tried.push(number.clone());
        match store.find_number_with_agent(&number).await {
            Ok(route) => {
                found = Some((number, route));
                break;
            }
            Err(StoreError::NotFound) => continue,
            Err(e) => return Err(EndReason::Failed(FailureCause::Store(e.to_string()))),
        }
    }
    let (number, (record, agent)) = found.ok_or(EndReason::UnknownNumber)?;
    let agent_id = record.agent_id.ok_or(EndReason::UnknownNumber)?;
    let agent = agent.ok_or_else(|| {
        EndReason::Failed(FailureCause::AgentConfig(format!(
            "agent {agent_id} not found"
        )))
    })?;
    let settings = CallSettings::from_json(&agent.settings).map_err(|e| {
        EndReason::Failed(FailureCause::AgentConfig(format!(
            "agent {agent_id} settings: {e}"
        )))
    })?;
    let offer = info.sdp_offer.clone();
    let caller = info
        .from_user
        .as_deref()
        .map(|u| {
            as_written(u)
                .or_else(|| normalize(u))
                .unwrap_or_else(|| u.to_owned())
        })
        .unwrap_or_else(|| "anonymous".to_owned());
    let context = CallContext {
        call_id: id.to_owned(),
        direction: Some(Direction::Inbound),
        from: caller.clone(),
        to: number.clone(),
        caller_name: info
            .from_display
            .as_deref()
            .map(|n| n.chars().filter(|c| !c.is_control()).take(100).collect()),
        trunk_id: Some(trunk.id().to_string()),
        number_id: Some(record.id.clone()),
        agent_id: Some(agent_id.clone()),
        sip_headers: context::sip_headers(&shared.hooks.header_patterns, &info.headers),
        metadata: serde_json::json!({}),
        ..CallContext::default()
    };
    let recording = record.recording.as_deref().and_then(|json| {
        serde_json::from_str(json)
            .inspect_err(|e| tracing::warn!(error = %e, "number recording settings unreadable"))
            .ok()
    });
    let hook = match (record.agent_webhook_url, record.agent_webhook_secret) {
        (Some(url), Some(secret)) => Some(AgentWebhook { url, secret }),
        _ => None,
    };
    Ok(Route {
        trunk,
        number,
        caller,
        context,
        hook,
        agent_source: AgentSource::Number,
        agent_source_error: None,
        recording,
        agent: AgentSpec {
            id: agent_id,
            kind: agent.kind,
            settings,
            settings_json: agent.settings,
        },
        offer,
    })
}

/// Follows an agent webhook's answer (see [`context::follow`]).
async fn follow(shared: &Shared, route: &mut Route, answer: HookAnswer) -> Result<(), String> {
    let store = shared.transitions.store();
    let speech = &shared.speech;
    context::follow(store, speech, &mut route.agent, &mut route.context, answer).await
}

/// A user part that is already E.164 as written: `+` and 8 to 15 digits
/// (ITU-T E.164 §6.1: at most 15). Parsing with libphonenumber's metadata
/// was a tenth of an inbound call's CPU; most trunks send this form.
fn as_written(user: &str) -> Option<String> {
    let digits = user.strip_prefix('+')?;
    ((8..=15).contains(&digits.len()) && digits.bytes().all(|b| b.is_ascii_digit()))
        .then(|| user.to_owned())
}

/// A dialled user part as E.164: as given, or with the `+` carriers often
/// leave out.
fn normalize(user: &str) -> Option<String> {
    e164::normalize(user)
        .ok()
        .or_else(|| e164::normalize(&format!("+{user}")).ok())
}

/// The inbound phases, in order; each failure edge ends the call where it
/// happens.
async fn run(shared: Arc<Shared>, id: String, mut invite: IncomingInvite, mut route: Route) {
    let started = Instant::now();
    let call = match Routed::admit(&shared, &id, &route.trunk, true) {
        Ok(call) => call,
        // The CPS guard sheds a flood cheaply: nothing is recorded.
        Err(reason @ EndReason::TrunkRate) => return refuse(invite, reason).await,
        Err(reason) => return refuse_routed(&shared, &id, &route, invite, reason).await,
    };
    let mut rang = false;
    if let Some(hook) = route.hook.take() {
        // The caller hears ringing (RFC 3261 §13.3.1.1) while the webhook
        // is asked; its CANCEL ends the asking.
        rang = invite.ring(None).await.is_ok();
        let asked = tokio::select! {
            answer = shared.hooks.ask(&hook, &route.context) => Some(answer),
            () = invite.cancelled() => None,
        };
        let Some(answer) = asked else {
            return refuse_routed(&shared, &id, &route, invite, EndReason::Canceled).await;
        };
        let followed = match answer {
            Ok(answer) => follow(&shared, &mut route, answer).await,
            Err(e) => Err(e),
        };
        match followed {
            Ok(()) => route.agent_source = AgentSource::Webhook,
            Err(e) => {
                route.agent_source = AgentSource::Fallback;
                route.agent_source_error = Some(e);
            }
        }
    }
    let (prepared, local_sdp) = match prepare(call, &route).await {
        Ok(prepared) => prepared,
        // The slot stays held until the refusal is recorded.
        Err(finished) => {
            return refuse_routed(&shared, &id, &route, invite, finished.reason.clone()).await;
        }
    };
    let Some(mut ringing) = Ringing::start(prepared, &route, invite, local_sdp).await else {
        return;
    };
    ringing.rang = rang;
    let finished = match ringing.answer(started).await {
        Ok(answered) => {
            let max_duration =
                Duration::from_secs(u64::from(route.agent.settings.max_duration_seconds));
            let screen = Screen::new(&id, shared.transitions.clone(), AmdMode::Off, None);
            answered.run(max_duration, screen).await
        }
        Err(finished) => finished,
    };
    finished.record().await;
}

/// The agent and the RTP port, and our SDP for the 200: RFC 3264 §6, the
/// answer to the INVITE's offer (media starts now), or for an INVITE
/// without one (a late offer, RFC 3261 §13.2.1) our offer, whose answer
/// comes in the ACK.
async fn prepare(call: Routed, route: &Route) -> Result<(Prepared, Bytes), Finished> {
    let context = context::agent_context(&route.context);
    let mut prepared = call
        .prepare(
            &route.agent,
            &route.trunk,
            context,
            route.recording.as_ref(),
        )
        .await?;
    match &route.offer {
        Some(offer) => prepared.answer(offer),
        None => {
            tracing::info!("late offer: our offer goes in the 200");
            let offer = prepared.offer();
            Ok((prepared, offer))
        }
    }
}

/// An inbound call recorded `ringing`, until it is answered or ends.
struct Ringing {
    /// The call with its agent and media, recorded `ringing`.
    prepared: Prepared,
    /// The server INVITE transaction: 180, 200 or a final refusal, and
    /// the caller's CANCEL.
    invite: IncomingInvite,
    /// What the 200 carries: our answer, or our offer.
    local_sdp: Bytes,
    /// The 180 went out already (while the agent webhook was asked).
    rang: bool,
}

impl Ringing {
    /// Records the call `ringing` (its first row and `call.created`).
    /// Without a row there is no call to run: the INVITE is refused
    /// (`None`).
    async fn start(
        prepared: Prepared,
        route: &Route,
        invite: IncomingInvite,
        local_sdp: Bytes,
    ) -> Option<Self> {
        let call = &prepared.call;
        let recorded = record(
            &call.shared,
            &call.id,
            route,
            invite.call_id(),
            CallStatus::Ringing,
        )
        .await;
        if let Err(e) = recorded {
            tracing::warn!(error = %e, "call not recorded");
            let reason = EndReason::Failed(FailureCause::Store(e.to_string()));
            refuse(invite, reason).await;
            return None;
        }
        count_started("inbound");
        Some(Self {
            prepared,
            invite,
            local_sdp,
            rang: false,
        })
    }

    /// 180, the configured answer delay (CANCEL, hangup or shutdown may
    /// end the call first), then 200 and its ACK, recorded `answered`;
    /// media starts with the ACK's answer if our 200 carried the offer.
    async fn answer(mut self, setup_started: Instant) -> Result<Answered, Finished> {
        if let Some(reason) = self.ring().await {
            if reason != EndReason::Canceled
                && let Err(e) = self.invite.reject(reason.rejection()).await
            {
                tracing::info!(error = %e, "refusal not sent");
            }
            return Err(self.prepared.call.end(reason));
        }
        let (sip, ack_sdp) = match self.invite.accept(self.local_sdp).await {
            Ok(accepted) => accepted,
            Err(e) => return Err(self.prepared.call.end(not_answered(e))),
        };
        let answered_at = self
            .prepared
            .call
            .record_answered(setup_started, sip.dialog_state())
            .await;
        match self.prepared.into_session(ack_sdp.as_deref()) {
            (call, Ok(session)) => Ok(Answered::new(call, sip, session, answered_at)),
            // RFC 3261 §13.2.2.4: the ACK to a 200 with an offer must
            // carry an answer; without one we can use, no session runs.
            (call, Err(reason)) => Err(hang_up_unanswerable(call, sip, reason, answered_at).await),
        }
    }

    /// Rings, then waits the answer delay; the reason if something ended
    /// the call first.
    async fn ring(&mut self) -> Option<EndReason> {
        if !self.rang
            && let Err(e) = self.invite.ring(None).await
        {
            return Some(not_answered(e));
        }
        let commands = &mut self.prepared.call.commands;
        tokio::select! {
            () = self.invite.cancelled() => Some(EndReason::Canceled),
            Some(CallCommand::Hangup(reason)) = commands.recv() => Some(reason),
            () = tokio::time::sleep(self.prepared.call.shared.answer_delay) => None,
        }
    }
}

/// Why an INVITE we were answering ended (RFC 3261 §13.3.1).
fn not_answered(e: AcceptError) -> EndReason {
    match e {
        AcceptError::Cancelled => EndReason::Canceled,
        AcceptError::NoAck => EndReason::NoAck,
        AcceptError::Sip(e) => EndReason::Failed(FailureCause::Sip(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::{as_written, normalize};

    #[test]
    fn numbers_as_written_skip_the_parser_and_others_go_through_it() {
        assert_eq!(as_written("+14155552671").as_deref(), Some("+14155552671"));
        assert_eq!(as_written("14155552671"), None);
        assert_eq!(as_written("+1415555267a"), None);
        assert_eq!(as_written("+1234567"), None);
        assert_eq!(as_written("+1234567890123456"), None);
        assert_eq!(normalize("14155552671").as_deref(), Some("+14155552671"));
    }
}
