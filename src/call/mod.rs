//! Calls: the decisions about a call and the one task that owns each.
//!
//! Owns: inbound routing (trunk by source, number, agent, accept or refuse:
//! [`inbound`]), placing outbound calls ([`outbound`]), the call phases
//! both share, as types (routed, prepared, answered, finished: [`phase`]),
//! the established call task ([`task`]) and its screening
//! (answering-machine detection and the opt-out key: [`screen`]), the
//! campaign dialer's seam ([`campaign_dialer`]), the one [`EndReason`] per
//! call ([`end_reason`]), the live-call index with its handles and trunk
//! slots, the one count of a trunk's `max_calls` ([`registry`]), every
//! call state transition with its store write and bus event ([`events`]),
//! the call's context and the agent webhook ([`context`]), test mode's
//! simulated carrier ([`simulated`]), a warm transfer's consult leg
//! ([`transfer`]),
//! and what runs per trunk profile
//! ([`reconcile`]): the registrations ([`registrations`]) and the OPTIONS
//! probes ([`trunk_pings`]). The agents a call runs are `agent`'s
//! ([`crate::agent::runner`]).
//!
//! Must not: parse or build SIP or RTP (that is `sip` and `media`), or know
//! HTTP (the API calls [`Calls`]). Nothing but [`events::Transitions`]
//! writes call rows.

mod analysis;
pub mod campaign_dialer;
pub mod context;
pub mod end_reason;
pub mod events;
mod failover;
mod inbound;
pub mod orphans;
pub mod outbound;
mod phase;
mod reconcile;
pub mod recording;
pub mod registrations;
pub mod registry;
pub mod replace;
mod screen;
pub mod simulated;
mod task;
mod transfer;
pub mod trunk_pings;
pub mod web;

pub use end_reason::{EndReason, FailureCause};
pub use events::{CallUpdate, Change};
pub use outbound::{OutboundRequest, PlaceError};

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::sync::broadcast;

use crate::agent::speech::Speech;
use crate::config::{self, Config, Profile, SharedProfiles};
use crate::media::{self, MediaError, PortAllocator, SessionConfig};
use crate::metrics::{CALLS_ENDED_TOTAL, CALLS_STARTED_TOTAL};
use crate::sip::{
    Admission, DigestAccount, InboundHandler, IncomingInvite, RequestSource, SipConfig, SipError,
    SipStack,
};
use crate::trunk::TrunkStates;
use crate::webhook::Outbox;
use events::Transitions;
use reconcile::TrunkContext;
use registrations::Registrations;
use registry::LiveCalls;
use trunk_pings::TrunkPings;

/// The call layer. Cheap to clone.
#[derive(Clone)]
pub struct Calls {
    /// The state every call task and the API's handle share; the last
    /// clone goes with the last call task after the daemon has stopped.
    shared: Arc<Shared>,
}

/// What every call task shares, behind one `Arc`: read-mostly settings,
/// handles that are cheap to clone, and the small indexes (live calls, RTP
/// ports) each behind its own short lock. Nothing here is held across an
/// `.await` by one call at the expense of another.
pub(crate) struct Shared {
    /// Store writes plus the event bus: the one writer of call rows, whose
    /// every change also queues its webhook in the same transaction.
    transitions: Transitions,
    /// The trunk profiles, replaced whole on SIGHUP; a call reads one
    /// snapshot when it is routed and keeps it to its end.
    profiles: Arc<SharedProfiles>,
    /// Live trunk state (registration, health, active calls) the API
    /// reads; the registrations, the probes and the registry write it.
    trunks: Arc<TrunkStates>,
    /// Live calls and trunk slots: the one `max_calls` count, the handles
    /// the API and the drain hang up through; the drain waits on it
    /// emptying.
    registry: LiveCalls,
    /// Set once by [`Calls::start_sip`]; empty until then, so placing a
    /// call before SIP is up fails with `NotRunning` instead of waiting.
    stack: OnceLock<SipStack>,
    /// The RTP port range; a call's port is freed when its media session
    /// ends (the permit is dropped), even if the call task was cut short.
    ports: PortAllocator,
    /// The SIP edge's settings (`[sip]` unknown_source, flood, tcp), handed
    /// to the stack once by [`Calls::start_sip`].
    sip: config::SipConfig,
    /// Ringing time before an inbound call is answered; a CANCEL, a hangup
    /// or the drain's hangup may end the call within it.
    answer_delay: Duration,
    /// Default ring timeout of outbound calls.
    ring_timeout: Duration,
    /// The settings every call's media session starts with (inactivity
    /// timeout, comfort silence).
    media: SessionConfig,
    /// Set once by the drain and never cleared: inbound INVITEs get 503 and
    /// placing fails from then on; calls already up are not touched.
    draining: AtomicBool,
    /// One REGISTER task per trunk with `[registration]`, reconciled with
    /// the profiles at start and on SIGHUP, stopped (unregistered) after
    /// the drain.
    registrations: Registrations,
    /// One OPTIONS probe task per trunk with `ping_seconds`, reconciled and
    /// stopped with the registrations.
    pings: TrunkPings,
    /// The STT and TTS engines the `voice` agents get.
    speech: Speech,
    /// This node's id (`[cluster] node_id`): on its calls and leases.
    node: String,
    /// A node whose heartbeat is older than this is dead.
    grace: Duration,
    /// The trunks (profile names) whose registration and probe this node
    /// runs: `None` for every trunk (one node on SQLite), else those whose
    /// lease it holds ([`crate::cluster`]). A std Mutex held for a copy or
    /// a swap, never across `.await`.
    owned_trunks: std::sync::Mutex<Option<std::collections::BTreeSet<String>>>,
    /// Ended calls' analyses, run off the call tasks, bounded.
    analyzer: analysis::Analyzer,
    /// The agent webhooks' client and the context's SIP header patterns.
    hooks: context::Hooks,
    /// Where recorded calls' files go.
    recordings: recording::Recordings,
    /// How the simulated carrier's callees behave (`[calls] test_*`).
    simulated_settings: simulated::Settings,
    /// Test mode's simulated carrier, started with SIP by
    /// [`Calls::start_sip`]; test calls go there, never to a trunk.
    simulated: OnceLock<simulated::Carrier>,
}

impl Shared {
    fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// The address our RTP sockets bind to and SDP announces.
    fn media_ip(&self) -> IpAddr {
        self.stack
            .get()
            .map_or(IpAddr::from([127, 0, 0, 1]), SipStack::public_ip)
    }
}

/// The codecs a trunk allows, in its order of preference.
fn codecs(trunk: &Profile) -> Vec<media::Codec> {
    trunk
        .media
        .codecs
        .iter()
        .map(|c| match c {
            config::Codec::Pcmu => media::Codec::Pcmu,
            config::Codec::Pcma => media::Codec::Pcma,
            config::Codec::G722 => media::Codec::G722,
            config::Codec::Opus => media::Codec::Opus,
        })
        .collect()
}

/// The trunk's SRTP policy, for its SDP.
fn srtp(trunk: &Profile) -> media::SrtpMode {
    match trunk.media.srtp {
        config::Srtp::Off => media::SrtpMode::Off,
        config::Srtp::Optional => media::SrtpMode::Optional,
        config::Srtp::Mandatory => media::SrtpMode::Mandatory,
    }
}

fn count_started(direction: &'static str) {
    metrics::counter!(CALLS_STARTED_TOTAL, "direction" => direction).increment(1);
}

fn count_ended(direction: &'static str, reason: &EndReason) {
    metrics::counter!(CALLS_ENDED_TOTAL, "direction" => direction, "reason" => reason.label())
        .increment(1);
}

/// Why hanging up a call through the API did nothing.
#[derive(Debug, thiserror::Error)]
pub enum HangupError {
    #[error("the call is not running on this node")]
    NotRunning,
}

impl Calls {
    /// Waits (at most `limit`) for the analyses of ended calls to be
    /// stored; says whether they all were. The drain calls it before the
    /// outbox closes.
    pub async fn analyses_done(&self, limit: Duration) -> bool {
        self.shared.analyzer.idle(limit).await
    }

    /// The recordings on this node's disk (the API serves and deletes
    /// them; the retention cleanup runs on it).
    pub fn recordings(&self) -> &recording::Recordings {
        &self.shared.recordings
    }

    /// The speech engines calls get (the API lists their voices).
    pub fn speech(&self) -> &Speech {
        &self.shared.speech
    }

    pub fn new(
        config: &Config,
        outbox: Outbox,
        profiles: Arc<SharedProfiles>,
        trunks: Arc<TrunkStates>,
        speech: Speech,
    ) -> Result<Self, MediaError> {
        let ports = PortAllocator::new(config.sip.rtp_ports.low..=config.sip.rtp_ports.high)?;
        let media = SessionConfig {
            inactivity_timeout: Duration::from_secs(u64::from(config.calls.rtp_timeout_seconds)),
            send_silence: config.calls.send_silence,
            ..SessionConfig::default()
        };
        let transitions = Transitions::new(outbox);
        let recordings = recording::Recordings::new(
            config.recordings.dir.clone(),
            transitions.store().clone(),
            config.cluster.node_id.clone(),
        );
        Ok(Self {
            shared: Arc::new(Shared {
                analyzer: analysis::Analyzer::new(transitions.clone()),
                transitions,
                profiles,
                registry: LiveCalls::new(Arc::clone(&trunks)),
                trunks,
                stack: OnceLock::new(),
                ports,
                sip: config.sip.clone(),
                answer_delay: Duration::from_millis(config.calls.answer_delay_ms),
                ring_timeout: Duration::from_secs(u64::from(config.calls.ring_timeout_seconds)),
                media,
                draining: AtomicBool::new(false),
                registrations: Registrations::default(),
                pings: TrunkPings::default(),
                speech,
                node: config.cluster.node_id.clone(),
                grace: Duration::from_secs(u64::from(config.cluster.grace_seconds)),
                owned_trunks: std::sync::Mutex::new(None),
                hooks: context::Hooks::new(&config.calls, &config.webhooks),
                recordings,
                simulated_settings: simulated::Settings::from_config(&config.calls),
                simulated: OnceLock::new(),
            }),
        })
    }

    /// Binds the SIP transports, starts answering INVITEs and registers
    /// the trunks. `public` is the address for Contact and SDP.
    pub async fn start_sip(
        &self,
        listen: SocketAddr,
        public: Option<IpAddr>,
    ) -> Result<SipStack, SipError> {
        let mut config = SipConfig::new(listen);
        config.public_address = public.map(|ip| SocketAddr::new(ip, 0));
        let edge = &self.shared.sip;
        config.unknown_source = edge.unknown_source;
        config.flood = edge.flood.clone();
        config.tcp_limits = edge.tcp;
        config.user_agent = Some(edge.server_header.clone()).filter(|ua| !ua.is_empty());
        config.t1 = Duration::from_millis(edge.t1_ms);
        config.tls = match (&edge.tls_listen, &edge.tls_cert_file, &edge.tls_key_file) {
            (Some(listen), Some(cert), Some(key)) => Some(crate::sip::TlsListen {
                listen: *listen,
                cert_file: cert.clone(),
                key_file: key.clone(),
            }),
            _ => None,
        };
        config.tls_client_cert = edge
            .tls_client_cert_file
            .clone()
            .zip(edge.tls_client_key_file.clone());
        config.session_timer = crate::sip::SessionTimerConfig {
            session_expires: edge.session_expires,
            min_se: edge.min_se,
        };
        let stack = SipStack::start(config, Arc::new(Handler(Arc::clone(&self.shared)))).await?;
        // Before the stack is published: a test call placed as soon as
        // SIP is up finds its carrier.
        let carrier =
            simulated::Carrier::start(&stack, self.shared.simulated_settings.clone()).await?;
        if self.shared.simulated.set(carrier).is_err()
            || self.shared.stack.set(stack.clone()).is_err()
        {
            return Err(SipError::Invalid {
                what: "SIP stack",
                value: "already started".into(),
            });
        }
        self.apply_profiles().await;
        Ok(stack)
    }

    /// The calls this node left unended when it last stopped (a crash),
    /// with the node each row names: read before SIP is up, so that none
    /// of them is a call of this run, and ended by [`Calls::end_orphans`]
    /// once SIP is up to send their BYEs.
    pub async fn left_unended(
        &self,
    ) -> Result<Vec<(String, Option<String>)>, crate::store::StoreError> {
        self.shared
            .transitions
            .store()
            .unended_calls_of(&self.shared.node)
            .await
    }

    /// Brings the registrations and the OPTIONS probes in line with the
    /// current profiles.
    pub async fn apply_profiles(&self) {
        if let Some(stack) = self.shared.stack.get() {
            let profiles = self.owned_profiles();
            let ctx = TrunkContext {
                stack,
                trunks: &self.shared.trunks,
                outbox: self.shared.transitions.outbox(),
            };
            // Before the probes and registrations connect: each trunk's
            // TLS trust.
            let trust: Vec<_> = self
                .shared
                .profiles
                .get()
                .by_name
                .values()
                .map(|p| crate::sip::TrunkTls {
                    hosts: p.tls_hosts(),
                    ca_file: p.tls_ca_file.clone(),
                    verify: p.tls_verify,
                })
                .collect();
            stack.set_trunk_tls(&trust);
            self.shared.pings.apply(&profiles, &ctx).await;
            self.shared.registrations.apply(&profiles, &ctx).await;
        }
    }

    /// SIGHUP: re-reads the SIP TLS certificate files; calls and
    /// connections go on, and on an error the old certificates stay.
    pub fn reload_tls(&self) {
        if let Some(stack) = self.shared.stack.get() {
            match stack.reload_tls() {
                Ok(()) => tracing::info!("SIP TLS certificates reloaded"),
                Err(e) => {
                    tracing::error!(error = %e, "SIP TLS certificates not reloaded: the old ones stay");
                }
            }
        }
    }

    /// Stops the OPTIONS probes and unregisters every trunk.
    pub async fn stop_registrations(&self) {
        self.shared.pings.stop_all().await;
        self.shared.registrations.stop_all().await;
    }

    /// Every call event from now on (the webhook worker's feed).
    pub fn subscribe(&self) -> broadcast::Receiver<CallUpdate> {
        self.shared.transitions.subscribe()
    }

    /// Calls ringing or up.
    pub fn active(&self) -> usize {
        self.shared.registry.len()
    }

    /// The calls trunk `trunk_id` carries now on this node, inbound and
    /// outbound: its `max_calls` count (0 for a trunk no profile names).
    pub fn calls_on_trunk(&self, trunk_id: &str) -> u32 {
        let profiles = self.shared.profiles.get();
        let Some(trunk) = profiles.get_by_id(trunk_id) else {
            return 0;
        };
        let calls = self.shared.registry.on_trunk(&trunk.name);
        u32::try_from(calls).unwrap_or(u32::MAX)
    }

    /// Stops taking calls: INVITEs get 503 with Retry-After, placing fails.
    pub fn drain(&self) {
        self.shared.draining.store(true, Ordering::SeqCst);
    }

    /// Resolves when no call is left.
    pub async fn emptied(&self) {
        self.shared.registry.emptied().await;
    }

    /// Ends every call with `reason` (BYE, CANCEL or a final response).
    pub fn hangup_all(&self, reason: &EndReason) {
        self.shared.registry.hangup_all(reason);
    }

    /// Ends one call, whatever its state.
    pub fn hangup(&self, id: &str) -> Result<(), HangupError> {
        self.hangup_with(id, EndReason::ApiHangup)
    }

    /// Ends one call as its agent's hang-up (`agent_hangup`): a `stream`
    /// bot ending the call through the API.
    pub fn hangup_as_agent(&self, id: &str) -> Result<(), HangupError> {
        self.hangup_with(id, EndReason::AgentHangup)
    }

    fn hangup_with(&self, id: &str, reason: EndReason) -> Result<(), HangupError> {
        let handle = self
            .shared
            .registry
            .get(id)
            .ok_or(HangupError::NotRunning)?;
        if handle.hangup(reason) {
            Ok(())
        } else {
            Err(HangupError::NotRunning)
        }
    }
}

/// Whether a stranger's request may go on to the digest challenge: only
/// what a PBX behind `[inbound] auth` sends outside a dialog (a call, its
/// CANCEL and the ACK of our 401; REGISTER so that a guesser is counted and
/// banned), and only when some trunk takes such callers.
fn may_authenticate(shared: &Shared, method: &str) -> bool {
    // The rest are the in-dialog requests of a call that authenticated
    // (the edge cannot see dialogs; the dialog layer answers the others).
    matches!(
        method,
        "INVITE" | "CANCEL" | "ACK" | "REGISTER" | "BYE" | "INFO" | "UPDATE" | "PRACK"
    ) && !inbound::digest_accounts(shared).is_empty()
}

/// The address of a `host[:port]` (or `sip:` URI) peer given as an IP
/// literal; names are not resolved per packet.
fn host_ip(peer: &str) -> Option<IpAddr> {
    let peer = peer.trim();
    let peer = peer.strip_prefix("sip:").unwrap_or(peer);
    let peer = peer.split(';').next().unwrap_or(peer);
    peer.parse::<SocketAddr>()
        .map(|a| a.ip())
        .or_else(|_| peer.trim_start_matches('[').trim_end_matches(']').parse())
        .ok()
}

/// The `sip` layer's questions, answered by the call layer.
struct Handler(Arc<Shared>);

impl InboundHandler for Handler {
    /// Asked for every packet: no profile is cloned.
    fn admit(&self, source: &RequestSource) -> Admission {
        // The simulated carrier's in-dialog requests (its callees' BYE).
        if self.0.simulated.get().map(simulated::Carrier::addr) == Some(source.addr) {
            return Admission::Admit;
        }
        // ::ffff:a.b.c.d on a dual-stack listener is the IPv4 peer.
        let ip = source.addr.ip().to_canonical();
        let allowed = self.0.profiles.get().by_name.values().any(|p| {
            p.inbound.allow.iter().any(|net| net.contains(&ip))
                // The peers we send to answer and send in-dialog
                // requests from there.
                || p.outbound.as_ref().and_then(|o| host_ip(&o.proxy)) == Some(ip)
                || p.registration.as_ref().and_then(|r| host_ip(&r.registrar)) == Some(ip)
        });
        // A trunk with inbound auth lets strangers reach its challenge,
        // as strangers.
        if allowed {
            Admission::Admit
        } else if may_authenticate(&self.0, &source.method) {
            Admission::Authenticate
        } else {
            Admission::Drop
        }
    }

    fn digest_accounts(&self, source: &RequestSource) -> Vec<DigestAccount> {
        if self.0.simulated.get().map(simulated::Carrier::addr) == Some(source.addr) {
            return Vec::new();
        }
        match inbound::trunk_for_source(&self.0, source.addr.ip()) {
            Some(_) => Vec::new(),
            None => inbound::digest_accounts(&self.0),
        }
    }

    fn on_invite(&self, invite: IncomingInvite) {
        tokio::spawn(inbound::handle(Arc::clone(&self.0), invite));
    }
}
