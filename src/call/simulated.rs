//! The simulated carrier of test mode: where the calls of `al_test_` keys
//! and test campaigns go instead of a trunk.
//!
//! It is a second SIP stack inside the daemon, on a loopback port (or the
//! daemon's own SIP address when that is not loopback), answering only the
//! daemon's own stack. A test call is placed exactly as a live one (the
//! same [`super::outbound`] path, INVITE, SDP offer/answer, RTP, agent,
//! transcript, webhooks); only its INVITE goes here. The callee's outcome
//! is chosen by the dialled number, as Twilio's magic numbers do:
//!
//! | To | Outcome |
//! |---|---|
//! | `+15005550001` | rings, then 486 Busy Here (`busy`) |
//! | `+15005550002` | rings, then 480 Temporarily Unavailable (`no_answer`) |
//! | `+15005550003` | rings, then 503 Service Unavailable (status `failed`) |
//! | any other, e.g. `+15005550006` | rings, answers, hangs up after `[calls] test_hangup_after_seconds` |
//!
//! An answered simulated callee runs a real RTP session on loopback
//! (`media::RtpSession`): it plays `[calls] test_callee_wav` once if set,
//! and sends silence otherwise, so the agent's media, speech recognition
//! and timers run as on a real call.
//!
//! Must not: be reachable from outside the daemon (its stack admits only
//! the daemon's own address), or decide anything about the call (the call
//! layer's `outbound` does, from what this callee answers).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::net::UdpSocket;
use tracing::Instrument;

use crate::config::{Limits, Media, Profile};
use crate::media::{self, Codec, LocalSdp, RtpSession, SessionConfig};
use crate::sip::{
    Admission, DialogEvent, InboundHandler, IncomingInvite, Rejection, RequestSource, SipConfig,
    SipError, SipStack,
};

/// The name the simulated carrier's calls are counted under (its
/// `test_max_calls`); not a valid profile name, so no trunk shares it.
pub const SIMULATED_TRUNK: &str = "~simulated";

/// How long every simulated call rings before its outcome.
const RING_FOR: Duration = Duration::from_secs(1);
/// How long the no-answer number rings (after [`RING_FOR`]) before 480.
const NO_ANSWER_AFTER: Duration = Duration::from_secs(3);
/// The largest callee WAV read.
const MAX_WAV_BYTES: u64 = 8 * 1024 * 1024;

/// What the simulated callee does, by the dialled number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Busy,
    NoAnswer,
    Failed,
    Answer,
}

impl Outcome {
    /// The magic numbers; every other number answers.
    pub fn of(to: &str) -> Self {
        match to.trim_start_matches('+') {
            "15005550001" => Outcome::Busy,
            "15005550002" => Outcome::NoAnswer,
            "15005550003" => Outcome::Failed,
            _ => Outcome::Answer,
        }
    }
}

/// How simulated callees behave (`[calls] test_*`).
#[derive(Debug, Clone)]
pub struct Settings {
    /// An answered callee hangs up after this.
    pub hangup_after: Duration,
    /// Simulated calls at once on this node.
    pub max_calls: u32,
    /// What an answered callee plays once (8 kHz mono samples).
    pub callee_audio: Option<Arc<Vec<i16>>>,
}

impl Settings {
    pub fn from_config(calls: &crate::config::CallsConfig) -> Self {
        let callee_audio = calls
            .test_callee_wav
            .as_deref()
            .and_then(|path| match read_wav(path) {
                Ok(samples) => Some(Arc::new(samples)),
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e,
                        "[calls] test_callee_wav cannot be read; simulated callees stay silent");
                    None
                }
            });
        Self {
            hangup_after: Duration::from_secs(u64::from(calls.test_hangup_after_seconds.max(1))),
            max_calls: calls.test_max_calls,
            callee_audio,
        }
    }
}

fn read_wav(path: &std::path::Path) -> Result<Vec<i16>, String> {
    use std::io::Read;
    let file = std::fs::File::open(path).map_err(|e| e.to_string())?;
    if !file.metadata().map_err(|e| e.to_string())?.is_file() {
        return Err("not a regular file".into());
    }
    let mut bytes = Vec::new();
    file.take(MAX_WAV_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| e.to_string())?;
    if bytes.len() as u64 > MAX_WAV_BYTES {
        return Err(format!("larger than {MAX_WAV_BYTES} bytes"));
    }
    media::wav::read_mono_8k(&bytes)
}

/// The running simulated carrier.
pub struct Carrier {
    /// Its own SIP stack; kept so its sockets live as long as the daemon.
    _stack: SipStack,
    /// Where test calls' INVITEs go.
    addr: SocketAddr,
    /// The profile test calls are placed with: no proxy, no credentials,
    /// `max_calls` = `test_max_calls`.
    profile: Profile,
}

impl Carrier {
    /// Starts the carrier beside the daemon's stack `main`.
    pub async fn start(main: &SipStack, settings: Settings) -> Result<Self, SipError> {
        let main_addr = main.local_addr();
        let ip = match main_addr.ip() {
            IpAddr::V4(v4) if v4.is_unspecified() || v4.is_loopback() => {
                IpAddr::V4(Ipv4Addr::LOCALHOST)
            }
            IpAddr::V6(v6) if v6.is_unspecified() || v6.is_loopback() => {
                IpAddr::V6(Ipv6Addr::LOCALHOST)
            }
            other => other,
        };
        let mut config = SipConfig::new(SocketAddr::new(ip, 0));
        config.tcp = false;
        config.edge_gauges = false;
        let handler = Arc::new(Callee {
            daemon: main_addr,
            settings: settings.clone(),
        });
        let stack = SipStack::start(config, handler).await?;
        let addr = stack.local_addr();
        let profile = Profile {
            name: SIMULATED_TRUNK.to_owned(),
            registration: None,
            inbound: Default::default(),
            outbound: None,
            limits: Limits {
                max_calls: settings.max_calls,
                cps: settings.max_calls.max(1),
                daily_calls: None,
                daily_minutes: None,
            },
            media: Media::default(),
            transport: Default::default(),
            tls_ca_file: None,
            tls_verify: true,
        };
        tracing::info!(%addr, "simulated carrier (test mode) listening");
        Ok(Self {
            _stack: stack,
            addr,
            profile,
        })
    }

    /// Where test calls' INVITEs go.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn profile(&self) -> &Profile {
        &self.profile
    }
}

/// The simulated callees: the carrier stack's handler.
struct Callee {
    /// The daemon's own SIP address: the only source answered.
    daemon: SocketAddr,
    settings: Settings,
}

impl InboundHandler for Callee {
    fn admit(&self, source: &RequestSource) -> Admission {
        let ip = source.addr.ip();
        if ip == self.daemon.ip() || ip.is_loopback() {
            Admission::Admit
        } else {
            Admission::Drop
        }
    }

    fn on_invite(&self, invite: IncomingInvite) {
        let to = invite
            .info()
            .request_user
            .clone()
            .or_else(|| invite.info().to_user.clone())
            .unwrap_or_default();
        let span = tracing::info_span!("simulated_callee", sip_call_id = %invite.call_id(), %to);
        tokio::spawn(answer(invite, Outcome::of(&to), self.settings.clone()).instrument(span));
    }
}

/// One simulated callee: rings, then does what its number says.
async fn answer(mut invite: IncomingInvite, outcome: Outcome, settings: Settings) {
    if invite.ring(None).await.is_err() {
        return;
    }
    let rang = match outcome {
        Outcome::NoAnswer => RING_FOR + NO_ANSWER_AFTER,
        _ => RING_FOR,
    };
    tokio::select! {
        () = invite.cancelled() => return,
        () = tokio::time::sleep(rang) => {}
    }
    let code = match outcome {
        Outcome::Busy => 486,
        Outcome::NoAnswer => 480,
        Outcome::Failed => 503,
        Outcome::Answer => return answered(invite, settings).await,
    };
    tracing::debug!(code, "simulated callee refuses");
    let _ = invite.reject(Rejection::new(code)).await;
}

/// The answered callee: a loopback RTP session (silence, or the configured
/// audio once), hung up after `hangup_after` unless the daemon hangs up
/// first.
async fn answered(invite: IncomingInvite, settings: Settings) {
    let Some(offer) = invite.info().sdp_offer.clone() else {
        let _ = invite.reject(Rejection::new(488)).await;
        return;
    };
    let ip = invite.info().source.ip();
    let bind_ip = if ip.is_loopback() {
        ip
    } else {
        match ip {
            IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
        }
    };
    let socket = match UdpSocket::bind(SocketAddr::new(bind_ip, 0)).await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "simulated callee has no RTP socket");
            let _ = invite.reject(Rejection::new(500)).await;
            return;
        }
    };
    let port = socket.local_addr().map(|a| a.port()).unwrap_or(0);
    let mut sdp = LocalSdp::new(bind_ip, port, vec![Codec::Pcmu, Codec::Pcma]);
    let (answer, negotiated) = match sdp.answer(&offer, media::Direction::SendRecv) {
        Ok(a) => a,
        Err(e) => {
            tracing::debug!(error = %e, "simulated callee cannot answer the offer");
            let _ = invite.reject(Rejection::new(488)).await;
            return;
        }
    };
    let config = SessionConfig {
        send_silence: true,
        inactivity_timeout: settings.hangup_after + Duration::from_secs(30),
        ..SessionConfig::default()
    };
    let session = match RtpSession::start(socket, None, negotiated, config) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "simulated callee's RTP did not start");
            let _ = invite.reject(Rejection::new(500)).await;
            return;
        }
    };
    let (mut call, _) = match invite.accept(Bytes::from(answer)).await {
        Ok(accepted) => accepted,
        Err(e) => {
            tracing::debug!(error = %e, "simulated call not established");
            return;
        }
    };
    if let Some(audio) = &settings.callee_audio {
        let _ = session.handle.play(audio.as_ref().clone()).await;
    }
    let deadline = tokio::time::sleep(settings.hangup_after);
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            () = &mut deadline => {
                tracing::debug!("simulated callee hangs up");
                let _ = call.hangup().await;
                break;
            }
            event = call.next_event() => match event {
                Ok(DialogEvent::ReInvite(re)) => {
                    // Hold and resume: the callee keeps its media as is.
                    let _ = call.reject_reinvite(re, 488).await;
                }
                Ok(DialogEvent::Info { .. } | DialogEvent::ReferProgress(_)) => {}
                Ok(DialogEvent::Bye | DialogEvent::Terminated | DialogEvent::SessionExpired) | Err(_) => break,
            }
        }
    }
    drop(session);
}
