//! Inbound call lifecycle, in the order the steps happen:
//! [`route`] (trunk by source, drain, number, agent, offer), take a trunk
//! slot, bind RTP and answer the offer (or, for an INVITE without one, make
//! ours), record `ringing`, 180, wait the configured answer delay (CANCEL,
//! hangup or shutdown may come), 200 and ACK (with the answer to our
//! offer), record `answered`, start the media if it waited for that answer,
//! run the call task, record the end.
//!
//! Must not: speak SIP beyond the `sip::IncomingInvite` steps; every
//! refusal is an [`EndReason`] whose `rejection()` is the response.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::net::UdpSocket;
use tokio::time::Instant;
use tracing::Instrument;

use super::agents::AgentRun;
use super::registry::{CallHandle, Command};
use super::screen::Screen;
use super::task::{self, Established};
use super::{EndReason, Shared, count_ended, count_started};
use crate::agent::CallSettings;
use crate::config::Profile;
use crate::media::amd::AmdMode;
use crate::media::{Direction, LocalSdp, PortPermit, RtpSession, bind_rtp};
use crate::metrics::CALL_SETUP_SECONDS;
use crate::sip::{AcceptError, IncomingInvite, InviteInfo};
use crate::store::StoreError;
use crate::store::calls::{CallRecord, NewCall};
use crate::{e164, ids};

/// How long we wait for the answer to our BYE when the ACK leaves the call
/// without a session.
const BYE_TIMEOUT: Duration = Duration::from_secs(10);

/// What [`route`] found for an INVITE.
struct Route {
    trunk: Profile,
    number: String,
    caller: String,
    agent_id: String,
    agent_kind: String,
    settings: CallSettings,
    /// The agent's whole settings document (the brain reads it).
    settings_json: String,
    /// `None`: a late offer (RFC 3261 §13.2.1), ours goes in the 200.
    offer: Option<Bytes>,
}

/// The trunk whose `[inbound] allow` covers `ip`, first by name.
pub(super) fn trunk_for_source(shared: &Shared, ip: IpAddr) -> Option<Profile> {
    shared
        .profiles
        .get()
        .by_name
        .values()
        .find(|p| p.inbound.allow.iter().any(|net| net.contains(&ip)))
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
        let route = match route(&shared, &info).await {
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
    match record(shared, id, route, &sip_call_id, "queued").await {
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
    status: &str,
) -> crate::store::Result<Arc<CallRecord>> {
    let trunk = route.trunk.id();
    shared
        .transitions
        .created(NewCall {
            id,
            direction: "inbound",
            from_number: &route.caller,
            to_number: &route.number,
            trunk: Some(&trunk),
            agent_id: Some(&route.agent_id),
            status,
            sip_call_id: Some(sip_call_id),
            metadata: "{}",
        })
        .await
}

/// Decides whether and to what the INVITE is routed.
async fn route(shared: &Shared, info: &InviteInfo) -> Result<Route, EndReason> {
    let trunk = trunk_for_source(shared, info.source.ip()).ok_or(EndReason::SourceNotAllowed)?;
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
            Err(e) => return Err(EndReason::Error(format!("store: {e}"))),
        }
    }
    let (number, (record, agent)) = found.ok_or(EndReason::UnknownNumber)?;
    let agent_id = record.agent_id.ok_or(EndReason::UnknownNumber)?;
    let agent = agent
        .ok_or_else(|| EndReason::Error(format!("agent {agent_id}: {}", StoreError::NotFound)))?;
    let settings = CallSettings::from_json(&agent.settings)
        .map_err(|e| EndReason::Error(format!("agent {agent_id} settings: {e}")))?;
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
    Ok(Route {
        trunk,
        number,
        caller,
        agent_id,
        agent_kind: agent.kind,
        settings,
        settings_json: agent.settings,
        offer,
    })
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

async fn run(shared: Arc<Shared>, id: String, mut invite: IncomingInvite, route: Route) {
    let started = Instant::now();
    if !shared
        .registry
        .admit_rate(&route.trunk.name, route.trunk.limits.cps)
    {
        return refuse(invite, EndReason::TrunkRate).await;
    }
    let (handle, mut commands) = CallHandle::new();
    let Some(_slot) = shared.registry.try_insert(
        &id,
        &route.trunk.name,
        "inbound",
        route.trunk.limits.max_calls,
        handle,
    ) else {
        return refuse_routed(&shared, &id, &route, invite, EndReason::TrunkFull).await;
    };
    let agent = match AgentRun::new(
        &route.agent_kind,
        &route.settings,
        &route.settings_json,
        &shared.speech,
        true,
    )
    .await
    {
        Ok(agent) => agent,
        Err(e) => {
            tracing::warn!(error = %e, agent_id = %route.agent_id, "the agent cannot run");
            return refuse_routed(&shared, &id, &route, invite, EndReason::Error(e)).await;
        }
    };
    let (socket, permit) = match bind_rtp(&shared.ports, shared.media_ip()).await {
        Ok(bound) => bound,
        Err(e) => {
            let reason = EndReason::Error(format!("RTP: {e}"));
            return refuse_routed(&shared, &id, &route, invite, reason).await;
        }
    };
    let port = permit.port();
    let mut sdp = LocalSdp::new(shared.media_ip(), port, super::codecs(&route.trunk));
    // RFC 3264 §6: the INVITE's offer is answered in the 200 and media
    // starts now. An INVITE without one (a late offer, RFC 3261 §13.2.1)
    // gets our offer in the 200; media starts with the answer in the ACK.
    let (local_sdp, media) = match &route.offer {
        Some(offer) => {
            let (answer, negotiated) = match sdp.answer(offer, Direction::SendRecv) {
                Ok(answered) => answered,
                Err(e) => {
                    tracing::info!(error = %e, "offer not acceptable");
                    let reason = EndReason::NotAcceptable;
                    return refuse_routed(&shared, &id, &route, invite, reason).await;
                }
            };
            match RtpSession::start(socket, Some(permit), negotiated, shared.media.clone()) {
                Ok(rtp) => (answer, Media::Started(rtp)),
                Err(e) => {
                    let reason = EndReason::Error(format!("RTP: {e}"));
                    return refuse_routed(&shared, &id, &route, invite, reason).await;
                }
            }
        }
        None => {
            tracing::info!("late offer: our offer goes in the 200");
            (
                sdp.offer(Direction::SendRecv),
                Media::Offered(socket, permit),
            )
        }
    };

    let recorded = record(&shared, &id, &route, invite.call_id(), "ringing").await;
    if let Err(e) = recorded {
        tracing::warn!(error = %e, "call not recorded");
        return refuse(invite, EndReason::Error("call not recorded".into())).await;
    }
    count_started("inbound");

    // Ring, then answer after the configured delay unless something ends
    // the call first.
    let before_answer = async {
        if let Err(e) = invite.ring(None).await {
            return Some(match e {
                AcceptError::Cancelled => EndReason::Canceled,
                e => EndReason::Error(e.to_string()),
            });
        }
        tokio::select! {
            () = invite.cancelled() => Some(EndReason::Canceled),
            Some(Command::Hangup(reason)) = commands.recv() => Some(reason),
            () = tokio::time::sleep(shared.answer_delay) => None,
        }
    }
    .await;
    if let Some(reason) = before_answer {
        if reason != EndReason::Canceled
            && let Err(e) = invite.reject(reason.rejection()).await
        {
            tracing::info!(error = %e, "refusal not sent");
        }
        return finish(&shared, &id, reason, None).await;
    }

    let (sip, ack_sdp) = match invite.accept(Bytes::from(local_sdp)).await {
        Ok(accepted) => accepted,
        Err(AcceptError::Cancelled) => {
            return finish(&shared, &id, EndReason::Canceled, None).await;
        }
        Err(AcceptError::NoAck) => return finish(&shared, &id, EndReason::NoAck, None).await,
        Err(e) => return finish(&shared, &id, EndReason::Error(e.to_string()), None).await,
    };
    let answered_at = Instant::now();
    metrics::histogram!(CALL_SETUP_SECONDS, "direction" => "inbound")
        .record(answered_at.duration_since(started).as_secs_f64());
    shared.transitions.answered(&id).await;
    let rtp = match media {
        Media::Started(rtp) => Ok(rtp),
        Media::Offered(socket, permit) => {
            media_from_ack(&shared, &sdp, socket, permit, ack_sdp.as_deref())
        }
    };
    let rtp = match rtp {
        Ok(rtp) => rtp,
        Err(reason) => {
            // RFC 3261 §13.2.2.4: the ACK to a 200 with an offer must carry
            // an answer. Without one we can use, no session can run: the
            // dialog ends with our BYE.
            match tokio::time::timeout(BYE_TIMEOUT, sip.hangup()).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::info!(error = %e, "BYE not answered cleanly"),
                Err(_) => tracing::info!("BYE not answered in time"),
            }
            return finish(&shared, &id, reason, Some(answered_at.elapsed())).await;
        }
    };
    let reason = task::run(
        &shared,
        Established {
            id: id.clone(),
            inbound: true,
            sip,
            rtp,
            sdp,
            agent,
            max_duration: Duration::from_secs(u64::from(route.settings.max_duration_seconds)),
            commands,
            screen: Screen::new(&id, shared.transitions.clone(), AmdMode::Off, None),
        },
    )
    .await;
    finish(&shared, &id, reason, Some(answered_at.elapsed())).await;
}

/// Starts the media our offer in the 200 waited for, with the answer the
/// ACK carried.
fn media_from_ack(
    shared: &Shared,
    sdp: &LocalSdp,
    socket: UdpSocket,
    permit: PortPermit,
    ack_sdp: Option<&[u8]>,
) -> Result<RtpSession, EndReason> {
    let negotiated = match ack_sdp.map(|a| sdp.accept_answer(a)) {
        Some(Ok(negotiated)) => negotiated,
        Some(Err(e)) => {
            tracing::info!(error = %e, "answer in the ACK not acceptable");
            return Err(EndReason::NotAcceptable);
        }
        None => {
            tracing::info!("no answer in the ACK to our offer");
            return Err(EndReason::NotAcceptable);
        }
    };
    RtpSession::start(socket, Some(permit), negotiated, shared.media.clone())
        .map_err(|e| EndReason::Error(format!("RTP: {e}")))
}

/// The media of a call being answered.
enum Media {
    /// Negotiated from the INVITE's offer and running.
    Started(RtpSession),
    /// Our offer is in the 200: the port waits for the answer in the ACK.
    Offered(UdpSocket, PortPermit),
}

async fn finish(shared: &Shared, id: &str, reason: EndReason, answered_for: Option<Duration>) {
    tracing::info!(reason = reason.label(), "call ended");
    count_ended("inbound", &reason);
    shared.transitions.ended(id, &reason, answered_for).await;
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
