//! Web calls: a browser's call to an agent, started by `POST
//! /v1/web-calls` with a publishable key. The call is a call like any
//! other (same row, statuses, events, transcript and analysis) with the
//! direction `web`; only its media differs (WebRTC, `crate::webrtc`,
//! instead of SIP and RTP).
//!
//! Owns: recording the web call (`queued` until the browser's media
//! arrives) with its context (caller name, origin, metadata), ending it
//! as `no-answer` when its media token expires unused, and the web call's
//! task once the browser's offer came: `ringing` while ICE and DTLS
//! connect, `in-progress` from then on, with the same agent, media
//! session, screen, transcript and analysis as a phone call, until the
//! page hangs up (data channel or WHIP `DELETE`), the peer goes away, the
//! agent hangs up, the API hangs up, or the duration limit.
//!
//! Must not: know HTTP, keys or tokens (the API checks them), or speak
//! WebRTC itself (`crate::webrtc::peer` does).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::time::{Instant, sleep_until, timeout};
use tracing::Instrument;

use super::end_reason::FailureCause;
use super::registry::{CallCommand, CallHandle};
use super::screen::{Screen, Screened};
use super::{Calls, EndReason, Shared, count_ended, count_started};
use crate::agent::CallSettings;
use crate::agent::runner::{AgentRequest, AgentRun, StreamEnv, Transcript};
use crate::agent::stream::StreamCall;
use crate::ids;
use crate::media::amd::AmdMode;
use crate::media::{Codec, Digit, MediaEvent, NegotiatedMedia, RtpSession};
use crate::metrics::CALL_SETUP_SECONDS;
use crate::model::{AgentSource, CallContext, CallStatus, Direction};
use crate::store::StoreError;
use crate::store::calls::{CallRecord, NewCall};
use crate::store::transcripts::NewTurn;
use crate::webrtc::peer::{
    self, Bridge, Peer, PeerAddress, PeerCommand, PeerEvent, TrickleError, TrickleRequest,
};
use crate::webrtc::trickle::SdpFrag;

/// The metric and log label of web calls.
const WEB: &str = "web";
/// The registry's trunk name for web calls: no profile can have it (a
/// profile name is a file name without `:`), so no trunk's count moves.
const WEB_SLOT: &str = "web:";

/// What the API asks for.
#[derive(Debug, Clone)]
pub struct WebCallRequest {
    pub agent_id: String,
    /// Shown to the agent as the caller's name; already bounded.
    pub caller_name: Option<String>,
    /// The page's origin, already checked against the key.
    pub origin: String,
    /// A JSON object, already bounded.
    pub metadata: serde_json::Value,
}

/// Why a web call was not recorded.
#[derive(Debug, thiserror::Error)]
pub enum WebCallError {
    #[error("the daemon is draining")]
    Draining,
    #[error("the agent does not exist")]
    UnknownAgent,
    #[error(transparent)]
    Store(StoreError),
}

/// A recorded web call and the name of its agent.
pub struct WebCall {
    pub call: Arc<CallRecord>,
    pub agent_name: String,
}

impl Calls {
    /// Records a new web call, `queued` until its media connects.
    pub async fn create_web_call(&self, req: WebCallRequest) -> Result<WebCall, WebCallError> {
        let shared = &self.shared;
        if shared.is_draining() {
            return Err(WebCallError::Draining);
        }
        let store = shared.transitions.store();
        let agent = store.get_agent(&req.agent_id).await.map_err(|e| match e {
            StoreError::NotFound => WebCallError::UnknownAgent,
            e => WebCallError::Store(e),
        })?;
        let id = ids::new(ids::CALL);
        // `from` names the caller the way a number would: the web caller
        // has none, so the origin stands for it; `to` is the agent.
        let from = format!("web:{}", req.origin);
        let to = format!("agent:{}", agent.id);
        let context = CallContext {
            call_id: id.clone(),
            direction: Some(Direction::Web),
            from: from.clone(),
            to: to.clone(),
            caller_name: req.caller_name.clone(),
            origin: Some(req.origin.clone()),
            agent_id: Some(agent.id.clone()),
            metadata: req.metadata.clone(),
            ..CallContext::default()
        };
        let context_json = serde_json::to_string(&context).unwrap_or_default();
        let metadata = req.metadata.to_string();
        let call = shared
            .transitions
            .created(NewCall {
                id: &id,
                direction: Direction::Web,
                from_number: &from,
                to_number: &to,
                trunk: None,
                agent_id: Some(&agent.id),
                status: CallStatus::Queued,
                sip_call_id: None,
                metadata: &metadata,
                campaign: None,
                context: Some(&context_json),
                agent_source: Some(AgentSource::Number),
                agent_source_error: None,
                // Publishable keys are live keys' creatures; they have no
                // test mode and no daily caps of their own.
                livemode: true,
                api_key_id: None,
            })
            .await
            .map_err(WebCallError::Store)?;
        count_started("web");
        Ok(WebCall {
            call,
            agent_name: agent.name,
        })
    }

    /// Ends the web call `id` as `no-answer` once `ttl` has passed, unless
    /// its media token was spent by then (the media owns the call from
    /// that moment). Runs detached; a daemon that stops first leaves the
    /// call to the orphan sweep.
    pub fn expire_web_call(&self, id: String, ttl: Duration) {
        let calls = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(ttl).await;
            let store = calls.shared.transitions.store();
            match store.web_call_token_used(&id).await {
                Ok(true) => {}
                Ok(false) => {
                    let reason = EndReason::NoAnswer { code: None };
                    calls.shared.transitions.ended(&id, &reason, None).await;
                    count_ended("web", &reason);
                    tracing::info!(call_id = %id, "web call token expired unused");
                }
                Err(e) => tracing::warn!(call_id = %id, error = %e,
                    "cannot read the web call's token; left to the orphan sweep"),
            }
        });
    }
}

/// What the browser's offer starts.
pub struct WebMedia {
    /// The peer's SDP answer, for the browser.
    pub answer: String,
}

/// Why a web call's media could not start.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("the web call is not waiting for media")]
    NotWaiting,
    #[error("the offer cannot be answered: {0}")]
    Offer(String),
    #[error("the call cannot run: {0}")]
    Failed(String),
}

/// How a web call connects: where the peer listens and the longest the
/// call may last.
#[derive(Debug, Clone, Copy)]
pub struct WebLimits {
    /// The announced ICE host address (`[webrtc] public_ip`), if set.
    pub public_ip: Option<IpAddr>,
    /// `[webrtc] ports`, inclusive.
    pub ports: Option<(u16, u16)>,
    pub max_duration: Duration,
}

impl Calls {
    /// Starts the media of web call `id` with the browser's SDP `offer`
    /// (its token was spent by the caller): the agent, the media session
    /// and the peer; the call is `ringing` until ICE and DTLS connect.
    pub async fn connect_web_call(
        &self,
        id: &str,
        offer: &str,
        limits: WebLimits,
    ) -> Result<WebMedia, ConnectError> {
        let shared = &self.shared;
        let span = tracing::info_span!("call", call_id = %id, direction = WEB);
        let (peer, run) = async {
            let record = shared
                .transitions
                .store()
                .get_call(id)
                .await
                .map_err(|e| ConnectError::Failed(e.to_string()))?;
            if record.status != CallStatus::Queued || record.ended_at.is_some() {
                return Err(ConnectError::NotWaiting);
            }
            let context: CallContext = record
                .context
                .as_deref()
                .and_then(|c| serde_json::from_str(c).ok())
                .unwrap_or_default();
            let agent_id = record.agent_id.clone().unwrap_or_default();
            let agent = shared
                .transitions
                .store()
                .get_agent(&agent_id)
                .await
                .map_err(|e| ConnectError::Failed(format!("agent {agent_id}: {e}")))?;
            let settings = CallSettings::from_json(&agent.settings)
                .map_err(|e| ConnectError::Failed(e.to_string()))?;
            let run = AgentRun::new(
                &agent.kind,
                &settings,
                &agent.settings,
                &shared.speech,
                true,
                StreamEnv {
                    call: StreamCall {
                        call_id: id.to_string(),
                        account: shared.node.clone(),
                        context: std::collections::BTreeMap::from([(
                            "agentline_direction".to_owned(),
                            WEB.to_owned(),
                        )]),
                    },
                    guard: crate::net::outbound().guard().clone(),
                },
                Some(super::context::agent_context(&context)),
            )
            .await
            .map_err(ConnectError::Failed)?;
            // The media session every call runs, fed by the peer over
            // loopback (see `webrtc::peer`).
            let loopback = IpAddr::from([127, 0, 0, 1]);
            let session_socket = UdpSocket::bind(SocketAddr::new(loopback, 0))
                .await
                .map_err(|e| ConnectError::Failed(e.to_string()))?;
            let bridge_socket = UdpSocket::bind(SocketAddr::new(loopback, 0))
                .await
                .map_err(|e| ConnectError::Failed(e.to_string()))?;
            let session_addr = session_socket
                .local_addr()
                .map_err(|e| ConnectError::Failed(e.to_string()))?;
            let bridge_addr = bridge_socket
                .local_addr()
                .map_err(|e| ConnectError::Failed(e.to_string()))?;
            let media_ip = shared.media_ip();
            let peer = peer::start(
                offer,
                PeerAddress {
                    bind: media_ip,
                    announce: limits.public_ip.unwrap_or(media_ip),
                    ports: limits.ports,
                },
                Bridge {
                    socket: bridge_socket,
                    session: session_addr,
                },
            )
            .await
            .map_err(|e| ConnectError::Offer(e.to_string()))?;
            let rtp = RtpSession::start(
                session_socket,
                None,
                NegotiatedMedia {
                    codec: Codec::Pcmu,
                    payload_type: 0,
                    event_payload_type: None,
                    remote: Some(bridge_addr),
                    direction: crate::media::Direction::SendRecv,
                    srtp: None,
                },
                shared.media.clone(),
            )
            .map_err(|e| ConnectError::Failed(e.to_string()))?;
            let max_duration = limits.max_duration.min(Duration::from_secs(u64::from(
                settings.max_duration_seconds,
            )));
            Ok((
                peer,
                (run, rtp, max_duration, settings.recording, session_addr),
            ))
        }
        .instrument(span.clone())
        .await?;
        let (agent, rtp, max_duration, recording, session_addr) = run;
        let (handle, commands) = CallHandle::new();
        let slot = shared
            .registry
            .try_insert(id, WEB_SLOT, WEB, u32::MAX, handle)
            .ok_or_else(|| ConnectError::Failed("no slot".into()))?;
        let Peer {
            answer,
            events,
            commands: peer_commands,
            task: peer_task,
            local,
        } = peer;
        // `session`: the media session's end of the loopback leg, where a
        // capture sees the call's audio in the clear (PCMU).
        tracing::info!(parent: &span, %local, session = %session_addr, "web call media starting");
        shared.transitions.ringing(id).await;
        let shared = Arc::clone(shared);
        let id = id.to_string();
        tokio::spawn(
            async move {
                let started = Instant::now();
                let web = WebRun {
                    id,
                    agent,
                    rtp,
                    peer_events: events,
                    peer_commands,
                    commands,
                    max_duration,
                    recording: recording.unwrap_or_default(),
                };
                let (reason, answered_for) = web.run(&shared, started).await;
                match reason.failure() {
                    Some(cause) => tracing::info!(reason = reason.label(), %cause, "call ended"),
                    None => tracing::info!(reason = reason.label(), "call ended"),
                }
                count_ended(WEB, &reason);
                let _ = answered_for;
                // The call leaves the live calls after its end is recorded,
                // so the drain waits for the record.
                drop(slot);
                if let Ok(Ok(stats)) = timeout(Duration::from_secs(2), peer_task).await {
                    tracing::info!(
                        opus_in = stats.opus_in,
                        opus_out = stats.opus_out,
                        decode_errors = stats.decode_errors,
                        "peer stopped"
                    );
                }
            }
            .instrument(span),
        );
        Ok(WebMedia { answer })
    }
}

impl Calls {
    /// The page hung up (WHIP `DELETE`, RFC 9725 §4.3): the caller's
    /// hangup.
    pub fn hangup_web_call(&self, id: &str) -> Result<(), super::HangupError> {
        let handle = self
            .shared
            .registry
            .get(id)
            .ok_or(super::HangupError::NotRunning)?;
        if handle.hangup(EndReason::CallerHangup) {
            Ok(())
        } else {
            Err(super::HangupError::NotRunning)
        }
    }

    /// Hands the browser's trickled ICE candidates (RFC 9725 §4.3.1) to
    /// the running web call `id`'s peer, and waits for its answer.
    pub async fn trickle_web_call(&self, id: &str, frag: SdpFrag) -> Result<(), TrickleError> {
        let handle = self.shared.registry.get(id).ok_or(TrickleError::Gone)?;
        let (reply, answer) = tokio::sync::oneshot::channel();
        if !handle.trickle(TrickleRequest { frag, reply }) {
            return Err(TrickleError::Gone);
        }
        match timeout(Duration::from_secs(5), answer).await {
            Ok(Ok(result)) => result,
            _ => Err(TrickleError::Gone),
        }
    }

    /// Ends a web call whose token was spent on an offer that could not
    /// start its media (the token cannot be used again, so nothing else
    /// would end it).
    pub async fn fail_web_call(&self, id: &str, error: &ConnectError) {
        let reason = match error {
            ConnectError::NotWaiting => return,
            ConnectError::Offer(_) => EndReason::NotAcceptable,
            ConnectError::Failed(e) => EndReason::Failed(FailureCause::AgentUnavailable(e.clone())),
        };
        self.shared.transitions.ended(id, &reason, None).await;
        count_ended(WEB, &reason);
    }
}

/// A web call whose media is starting.
struct WebRun {
    id: String,
    agent: AgentRun,
    rtp: RtpSession,
    peer_events: mpsc::Receiver<PeerEvent>,
    peer_commands: mpsc::Sender<PeerCommand>,
    commands: mpsc::Receiver<CallCommand>,
    max_duration: Duration,
    /// The agent's recording settings (a web call has no other level).
    recording: crate::model::RecordingSettings,
}

impl WebRun {
    /// Runs the call to its end and records it; returns why it ended and
    /// how long it was up.
    async fn run(self, shared: &Arc<Shared>, started: Instant) -> (EndReason, Option<Duration>) {
        let WebRun {
            id,
            mut agent,
            rtp,
            mut peer_events,
            peer_commands,
            mut commands,
            max_duration,
            recording,
        } = self;
        let RtpSession {
            handle: media,
            mut events,
            task: media_task,
        } = rtp;
        // Ringing until the peer connects, bounded by the peer's own
        // connect timeout.
        let connected = loop {
            tokio::select! {
                event = peer_events.recv() => match event {
                    Some(PeerEvent::Connected) => break Ok(()),
                    Some(PeerEvent::Hangup) => break Err(EndReason::Canceled),
                    Some(PeerEvent::Digit(_)) => {}
                    Some(PeerEvent::Closed(why)) => {
                        tracing::info!(%why, "peer never connected");
                        break Err(EndReason::NoAnswer { code: None });
                    }
                    None => break Err(EndReason::Failed(FailureCause::MediaClosed)),
                },
                Some(command) = commands.recv() => match command {
                    CallCommand::Hangup(reason) => break Err(reason),
                    CallCommand::Trickle(request) => to_peer(&peer_commands, request),
                    // A web call has no SIP dialog to replace: 481.
                    CallCommand::Replace(_) => {}
                },
            }
        };
        if let Err(reason) = connected {
            drop(peer_commands);
            super::task::stop_media(media, media_task).await;
            shared.transitions.ended(&id, &reason, None).await;
            return (reason, None);
        }
        let answered_at = Instant::now();
        metrics::histogram!(CALL_SETUP_SECONDS, "direction" => WEB)
            .record(answered_at.duration_since(started).as_secs_f64());
        // A web call has no SIP dialog for a survivor to end.
        shared.transitions.answered(&id, None).await;
        let deadline = answered_at + max_duration;
        let mut screen = Screen::new(&id, shared.transitions.clone(), AmdMode::Off, None);
        // Recorded from the media session's tap, as a phone call is.
        let mut recorder = match recording.is_enabled() {
            true => {
                let channels = recording.channels.unwrap_or_default();
                shared.recordings.start(&id, &media, channels).await
            }
            false => None,
        };
        let mut announcement = recording.announcement.filter(|_| recorder.is_some());
        // Each line as it is said goes to the page's captions.
        let mut live = agent.live_transcript();
        let mut reason = None;
        while reason.is_none() {
            reason = tokio::select! {
                Some(said) = recv_opt(&mut live) => {
                    let _ = peer_commands.try_send(PeerCommand::Send(caption(&said)));
                    None
                }
                event = peer_events.recv() => match event {
                    Some(PeerEvent::Digit(c)) => match Digit::from_char(c) {
                        Some(digit) => on_digit(shared, &id, &screen, &mut agent, digit).await,
                        None => None,
                    },
                    Some(PeerEvent::Hangup) => Some(EndReason::CallerHangup),
                    Some(PeerEvent::Closed(why)) => {
                        tracing::info!(%why, "peer gone");
                        Some(EndReason::CallerHangup)
                    }
                    Some(PeerEvent::Connected) => None,
                    None => Some(EndReason::Failed(FailureCause::MediaClosed)),
                },
                screened = screen.next(&mut events) => match screened {
                    Screened::StartAgent => {
                        if let Some(text) = announcement.take() {
                            super::task::announce(shared, &media, &text).await;
                        }
                        agent
                            .start(&media, None)
                            .await
                            .err()
                            .map(|_| EndReason::Failed(FailureCause::MediaClosed))
                    }
                    Screened::End(reason) => Some(reason),
                    Screened::Media(event) => on_media(shared, &id, &screen, &mut agent, event).await,
                },
                request = agent.next_request() => match request {
                    Some(AgentRequest::Recording(paused)) => {
                        if let Some(recorder) = recorder.as_mut() {
                            recorder.set_paused(paused);
                        }
                        None
                    }
                    Some(request) => fulfil(request),
                    None => Some(EndReason::Failed(FailureCause::AgentEnded)),
                },
                Some(command) = commands.recv() => match command {
                    CallCommand::Hangup(reason) => Some(reason),
                    CallCommand::Trickle(request) => {
                        to_peer(&peer_commands, request);
                        None
                    }
                    // No SIP dialog to replace: dropped, 481.
                    CallCommand::Replace(_) => None,
                },
                () = sleep_until(deadline) => Some(EndReason::MaxDuration),
            };
        }
        let reason = reason.unwrap_or(EndReason::Failed(FailureCause::NoReason));
        tracing::info!(reason = reason.label(), "web call ending");
        if let Some(recorder) = recorder.as_mut() {
            recorder.stop();
        }
        let mut analysis = None;
        if let Some(Transcript {
            said,
            summary,
            analysis: job,
        }) = agent.finish().await
        {
            let mut turns: Vec<NewTurn> = said.into_iter().map(super::task::turn_of).collect();
            if let Some(recorder) = &recorder {
                super::task::mark_paused(&mut turns, &recorder.paused_spans());
            }
            shared
                .transitions
                .transcript(&id, &turns, summary.as_deref())
                .await;
            analysis = job;
        }
        drop(events);
        drop(peer_commands);
        super::task::stop_media(media, media_task).await;
        if let Some(job) = analysis {
            shared.analyzer.hold(&id, job);
        }
        let answered_for = answered_at.elapsed();
        // `recording.completed` goes before `call.ended`.
        if let Some(recorder) = recorder {
            recorder.finish(shared.transitions.outbox()).await;
        }
        shared
            .transitions
            .ended(&id, &reason, Some(answered_for))
            .await;
        shared.analyzer.release(&id);
        (reason, Some(answered_for))
    }
}

/// Hands trickled candidates to the peer; a peer that cannot take them
/// drops the request, which answers `Gone`.
fn to_peer(peer: &mpsc::Sender<PeerCommand>, request: TrickleRequest) {
    let _ = peer.try_send(PeerCommand::Trickle(request));
}

/// The next live transcript line, or never when there is no stream.
async fn recv_opt(
    live: &mut Option<mpsc::UnboundedReceiver<crate::agent::session::Said>>,
) -> Option<crate::agent::session::Said> {
    match live {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// One transcript line for the page's captions (data channel JSON).
fn caption(said: &crate::agent::session::Said) -> String {
    let speaker = if said.role == crate::agent::brain::Role::User {
        "caller"
    } else {
        "agent"
    };
    serde_json::json!({
        "type": "transcript",
        "speaker": speaker,
        "text": said.text,
        "interrupted": said.interrupted,
        "start_ms": u64::try_from(said.start.as_millis()).unwrap_or(u64::MAX),
    })
    .to_string()
}

/// A key from the page: stored on the call and handed to the agent.
async fn on_digit(
    shared: &Shared,
    id: &str,
    screen: &Screen,
    agent: &mut AgentRun,
    digit: Digit,
) -> Option<EndReason> {
    tracing::info!(digit = %digit.as_char(), via = "data channel", "DTMF received");
    let opted_out = screen.on_digit(digit.as_char());
    if opted_out.is_none() {
        agent.on_digit(digit);
    }
    shared.transitions.dtmf(id, digit.as_char()).await;
    opted_out
}

/// A media event for the call (the audio itself goes to the agent).
async fn on_media(
    shared: &Shared,
    id: &str,
    screen: &Screen,
    agent: &mut AgentRun,
    event: Option<MediaEvent>,
) -> Option<EndReason> {
    match event {
        Some(MediaEvent::Digit(digit)) => on_digit(shared, id, screen, agent, digit).await,
        Some(MediaEvent::PlayoutDrained) => agent.on_playout_drained().and_then(fulfil),
        Some(MediaEvent::Timeout) => Some(EndReason::MediaTimeout),
        Some(MediaEvent::Audio(_) | MediaEvent::PlayoutStarted(_) | MediaEvent::Latched(_)) => None,
        None => Some(EndReason::Failed(FailureCause::MediaClosed)),
    }
}

/// What the agent asked; a web call cannot be transferred (no SIP leg).
fn fulfil(request: AgentRequest) -> Option<EndReason> {
    match request {
        AgentRequest::Hangup => Some(EndReason::AgentHangup),
        AgentRequest::OptOut => Some(EndReason::OptedOut),
        AgentRequest::Unreachable(e) => {
            tracing::warn!(error = %e, "the stream agent's bot is unreachable");
            Some(EndReason::AgentUnreachable)
        }
        AgentRequest::Transfer(to, _) | AgentRequest::WarmTransfer { to, .. } => {
            tracing::info!(%to, "a web call cannot be transferred; the call goes on");
            None
        }
        // Handled by the call's loop (it holds the recorder).
        AgentRequest::Recording(_) => None,
    }
}
