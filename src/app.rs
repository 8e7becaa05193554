//! Builds the services in dependency order and owns the process lifecycle:
//! validate config and profiles before binding anything, open and migrate the
//! store, bind the API, tell systemd we are ready, then wait for signals.
//!
//! Order at start: config and profiles, store, call layer (RTP ports), the
//! records of calls a crash left unended closed, SIP
//! transports and trunk registrations, API, campaign dialer (with its
//! outcome feed), then READY=1. A drain stops the campaign dialer first, so
//! no campaign call starts once draining; its outcome feed runs until the
//! calls are over.
//!
//! Signals: SIGTERM drains (readiness 503, INVITEs get 503 with
//! Retry-After, active calls finish up to `shutdown.drain_seconds`, then the
//! trunks unregister), a second SIGTERM or a SIGINT hangs up every call with
//! BYE at once; SIGHUP reloads the SIP profiles and applies the difference
//! (registrations of changed trunks only; calls are not touched; the
//! campaign dialer reads the trunk caps anew at each pass).

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::agent::speech::Speech;
use crate::api::{self, AppState, Readiness};
use crate::call::campaign_dialer::{CallDialer, report_outcomes};
use crate::call::{Calls, EndReason};
use crate::campaign::dialer::{CampaignRunner, RunnerConfig, TrunkCaps};
use crate::campaign::pacing::Caps;
use crate::cluster::Cluster;
use crate::config::{Config, ConfigError, Profiles, SharedProfiles};
use crate::store::{Store, StoreError};
use crate::trunk::{RegistrationStatus, TrunkStates};
use crate::webhook::{self, Outbox, worker::Worker};

/// Seals the webhook signing secrets stored before a key was configured
/// (or before sealing existed): once a key is given, none stays plain.
async fn seal_webhook_secrets(
    store: &Store,
    sealer: &crate::secrets::Sealer,
) -> Result<(), StartError> {
    if !sealer.has_key() {
        tracing::warn!(
            "no key for stored secrets (AGENTLINE_SECRETS_KEY or [secrets] key_file): \
             webhook signing secrets are stored in clear and /v1/credentials is off"
        );
        return Ok(());
    }
    let purpose = crate::secrets::WEBHOOK_PURPOSE;
    let seal = |s: &str| -> Result<String, StartError> {
        if crate::secrets::Sealer::is_sealed(s) {
            return Ok(s.to_string());
        }
        sealer
            .seal(purpose, s)
            .map_err(|e| ConfigError::new("config", "secrets", e.to_string()).into())
    };
    let rows = store.unsealed_endpoint_secrets().await?;
    let count = rows.len();
    for (id, secret, previous) in rows {
        let new_secret = seal(&secret)?;
        let new_previous = previous.as_deref().map(seal).transpose()?;
        store
            .reseal_endpoint_secrets(
                &id,
                (&secret, previous.as_deref()),
                (&new_secret, new_previous.as_deref()),
            )
            .await?;
    }
    if count > 0 {
        tracing::info!(endpoints = count, "webhook signing secrets sealed");
    }
    Ok(())
}

/// Why the daemon could not start, with the exit code it maps to.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    Config(#[from] ConfigError),
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error("webhook client: {0}")]
    Webhooks(#[from] reqwest::Error),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("media: {0}")]
    Media(#[from] crate::media::MediaError),
    #[error("SIP: {0}")]
    Sip(#[from] crate::sip::SipError),
}

impl StartError {
    /// `sysexits.h` codes: 64 bad config (systemd must not restart-loop on
    /// it), 69 a service we need is unavailable, 70 an internal failure
    /// (the HTTP client cannot be built), 71 the OS refused a socket.
    pub fn exit_code(&self) -> u8 {
        match self {
            StartError::Config(_) => 64,
            StartError::Store(_) => 69,
            StartError::Webhooks(_) => 70,
            StartError::Bind { .. } | StartError::Sip(_) => 71,
            StartError::Media(_) => 64,
        }
    }
}

/// What the daemon is told from outside while it runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    Run,
    /// Stop taking work; let active calls finish.
    Drain,
    /// Hang up everything and exit now.
    Stop,
}

/// A validated, connected daemon that has not bound its ports yet.
pub struct App {
    /// The validated daemon config, read once: a change needs a restart
    /// (only the SIP profiles reload on SIGHUP).
    config: Config,
    /// Where the SIP profiles are re-read from on SIGHUP.
    profiles_dir: PathBuf,
    /// What the API handlers share (store, outbox, profiles, the call
    /// layer, readiness); `run` flips its readiness and closes its outbox.
    state: AppState,
    /// Delivers the outbox; taken and started by [`App::run`], stopped by
    /// closing the outbox.
    worker: Option<Worker>,
    /// The call layer; the drain waits on it.
    calls: Calls,
}

impl App {
    /// Loads the profiles, opens and migrates the store. Nothing is bound.
    pub async fn build(
        mut config: Config,
        metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
    ) -> Result<Self, StartError> {
        let profiles = Profiles::load_dir(&config.profiles.dir)?;
        // Stable across restarts: the calls and leases a crash leaves are
        // found under it.
        config.cluster.node_id = crate::cluster::node_id(&config.cluster, &config.store.node)?;
        let tuning = crate::store::Tuning {
            pool_size: config.store.pool_size,
            commit_writers: config.store.commit_writers,
        };
        let mut store = Store::connect_with(&config.store.url, tuning).await?;
        store.migrate().await?;
        store.set_node(&config.cluster.node_id);
        webhook::install_crypto_provider();
        // Every outbound client (webhooks, tools, LLM, speech vendors)
        // takes the same policy; it is in place before any is built.
        let outbound = crate::net::Outbound::new(
            &config.net,
            &config.webhooks.allowed_networks,
            config.webhooks.allow_private,
            config.secrets.env.clone(),
        )
        .map_err(|e| ConfigError::new("config", "net", e))?;
        crate::net::install(outbound);
        let sealer = config
            .secrets
            .sealer()
            .map_err(|e| ConfigError::new("config", "secrets", e))?;
        // Prompts play from the media directory or from uploads in the
        // store, loaded once.
        let library = crate::agent::prompts::Library::new(
            config.media.dir.as_deref(),
            config.media.max_bytes,
            Some(Arc::new(crate::api::audio::StoreAudio(store.clone()))),
        )
        .map_err(|e| ConfigError::new("config", "media.dir", e))?;
        crate::agent::prompts::install(library);
        seal_webhook_secrets(&store, &sealer).await?;
        crate::secrets::install_credentials(Arc::new(crate::api::credentials::StoreCredentials {
            store: store.clone(),
            sealer: sealer.clone(),
        }));
        let outbox = Outbox::new(store.clone()).listening(std::time::Duration::from_millis(
            config.store.listen_poll_ms,
        ));
        let worker = Worker::new(store.clone(), &outbox, &config.webhooks, sealer.clone())?;
        let trunks = Arc::new(TrunkStates::default());
        seed_trunk_states(&trunks, &profiles);
        metrics::gauge!(crate::metrics::TRUNKS_CONFIGURED).set(profiles.by_name.len() as f64);
        let profiles = Arc::new(SharedProfiles::new(profiles));
        let speech = Speech::new(config.speech.clone());
        // Recognizers load while the daemon starts, not on the first call.
        speech.warm_up();
        let calls = Calls::new(
            &config,
            outbox.clone(),
            Arc::clone(&profiles),
            Arc::clone(&trunks),
            speech,
        )?;
        let state = AppState::new(
            &config,
            outbox,
            profiles,
            calls.clone(),
            trunks,
            Arc::new(Readiness::default()),
            metrics,
        );
        Ok(Self {
            profiles_dir: config.profiles.dir.clone(),
            config,
            state,
            worker: Some(worker),
            calls,
        })
    }

    /// Binds the API and serves until `control` says stop (or drain, once
    /// the drain is complete).
    pub async fn run(mut self, mut control: watch::Receiver<Control>) -> Result<(), StartError> {
        let public = match public_ip(&self.config.sip.public_address).await? {
            None if self.config.sip.listen.ip().is_unspecified() => {
                Some(primary_ip(self.config.sip.listen.is_ipv6()))
            }
            configured => configured,
        };
        // Alive (and seen so) before anything is claimed.
        let cluster = Cluster::new(
            self.state.store.clone(),
            self.calls.clone(),
            self.config.cluster.clone(),
        )
        .with_addresses(
            self.config.sip.listen.to_string(),
            self.config.api.listen.to_string(),
        );
        if let Err(e) = cluster.announce().await {
            tracing::error!(error = %e, "node heartbeat not written");
        }
        // Read before SIP is up, so that every unended call of this node's
        // is one it left behind; ended (with BYE) once SIP is up.
        let left = match self.calls.left_unended().await {
            Ok(left) => left,
            Err(e) => {
                tracing::error!(error = %e, "could not read the calls left by the last run");
                Vec::new()
            }
        };
        // Several nodes: a trunk is registered and probed by the node that
        // holds its lease, taken by the cluster task, so none until then.
        if self.state.store.backend() == "postgres" {
            self.calls.own_trunks(Some(Default::default()));
        }
        if self.config.sip.trace {
            let ip = public.unwrap_or(self.config.sip.listen.ip());
            crate::trace::sip::install(
                std::net::SocketAddr::new(ip, self.config.sip.listen.port()),
                std::time::Duration::from_secs(self.config.sip.trace_retain_seconds),
            );
        }
        // Recordings older than `[recordings] retain_days` go, files and
        // rows; the task ends with the process.
        let recordings_cleanup = (self.config.recordings.retain_days > 0).then(|| {
            self.calls.recordings().spawn_cleanup(
                Duration::from_secs(u64::from(self.config.recordings.retain_days) * 86_400),
                Duration::from_secs(self.config.recordings.cleanup_interval_seconds),
            )
        });
        // Before SIP is up: every recording of this node still open is one
        // a crash left.
        let node = self.calls.node().to_owned();
        let recovered = self.calls.recover_recordings(&node).await;
        if recovered > 0 {
            tracing::warn!(
                recordings = recovered,
                "closed the recordings left open when the daemon last stopped"
            );
        }
        let stack = self.calls.start_sip(self.config.sip.listen, public).await?;
        if !left.is_empty() {
            let n = self.calls.end_orphans(left).await;
            tracing::warn!(
                calls = n,
                "ended the calls left unended when the daemon last stopped"
            );
        }
        let (stop_cluster, cluster_stopped) = watch::channel(false);
        let cluster = tokio::spawn(cluster.run(cluster_stopped));
        let addr = self.config.api.listen;
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| StartError::Bind { addr, source })?;
        let local = listener.local_addr().unwrap_or(addr);
        let router = api::app(self.state.clone(), self.config.api.metrics_open);
        let limits = api::server::Limits::from_config(&self.config.api);
        let (stop_http, http_stopped) = watch::channel(false);
        let metrics_server = match self.config.api.metrics_listen {
            Some(addr) => {
                let listener = TcpListener::bind(addr)
                    .await
                    .map_err(|source| StartError::Bind { addr, source })?;
                tracing::info!(metrics = %listener.local_addr().unwrap_or(addr), "metrics listening without a key");
                let app = api::metrics_app(self.state.clone());
                Some(tokio::spawn(api::server::serve(
                    listener,
                    app,
                    limits.clone(),
                    http_stopped.clone(),
                )))
            }
            None => None,
        };
        let server = tokio::spawn(api::server::serve(listener, router, limits, http_stopped));
        let mut campaigns = self.start_campaigns();
        let worker = self.worker.take().map(|w| tokio::spawn(w.run()));
        self.state.readiness.set_ready();
        tracing::info!(api = %local, sip = %stack.local_addr(), store = self.state.store.backend(), "agentline ready");
        notify(&[sd_notify::NotifyState::Ready]);

        let _ = control.wait_for(|c| *c != Control::Run).await;
        self.state.readiness.set_draining();
        // No new dials from here; campaign calls up finish like any other.
        campaigns.stop_dialing().await;
        self.calls.drain();
        notify(&[sd_notify::NotifyState::Stopping]);
        let drain = Duration::from_secs(self.config.shutdown.drain_seconds);
        tracing::info!(
            drain_seconds = drain.as_secs(),
            active_calls = self.calls.active(),
            "draining: no new calls are accepted"
        );
        self.drain_calls(&mut control, drain).await;
        campaigns.stop().await;
        self.calls.stop_registrations().await;
        // Ended calls' analyses (an LLM answer each) get a bounded wait to
        // store their results; one cut off is not analyzed.
        if !self.calls.analyses_done(ANALYSIS_GRACE).await {
            tracing::warn!("call analyses still running at stop; they are not stored");
        }
        if let Some(task) = recordings_cleanup {
            task.abort();
        }
        // The calls are over: the heartbeat ends with a clean stop.
        let _ = stop_cluster.send(true);
        if tokio::time::timeout(TASK_GRACE, cluster).await.is_err() {
            tracing::warn!("cluster task did not stop in time");
        }
        // The calls have written their last events. Closing the outbox ends
        // the event streams (so the API can stop) and the worker, which lets
        // requests in flight finish; what is left is delivered after restart.
        self.state.outbox.close();
        let _ = stop_http.send(true);
        match tokio::time::timeout(Duration::from_secs(10), server).await {
            Ok(Ok(Err(e))) => tracing::warn!(error = %e, "API server ended with an error"),
            Err(_) => tracing::warn!("API server did not stop within 10 s"),
            _ => {}
        }
        if let Some(m) = metrics_server {
            let _ = tokio::time::timeout(Duration::from_secs(10), m).await;
        }
        let worker_deadline = Duration::from_secs(self.config.webhooks.timeout_seconds + 5);
        if let Some(worker) = worker
            && tokio::time::timeout(worker_deadline, worker).await.is_err()
        {
            tracing::warn!("webhook worker did not stop in time");
        }
        self.state.store.close().await;
        tracing::info!("agentline stopped");
        Ok(())
    }

    /// Starts the campaign dialer under the trunk caps of the profiles and
    /// the global cap of `[campaigns]`, with the outcome feed subscribed
    /// before the first dial.
    fn start_campaigns(&self) -> CampaignTasks {
        let c = &self.config.campaigns;
        // Read from the live profiles at each pass: SIGHUP changes them.
        let state = self.state.clone();
        let trunks: TrunkCaps = Box::new(move || {
            state
                .profiles()
                .by_name
                .values()
                .map(|p| {
                    (
                        p.id(),
                        Caps {
                            max_calls: p.limits.max_calls,
                            cps: f64::from(p.limits.cps),
                        },
                    )
                })
                .collect()
        });
        let store = self.state.store.clone();
        let cfg = RunnerConfig {
            // The node id: its heartbeat tells the others whether its
            // leases are still held by a live node.
            owner: self.config.cluster.node_id.clone(),
            grace: Duration::from_secs(u64::from(self.config.cluster.grace_seconds)),
            global_max_calls: c.max_concurrent_calls,
            lease: Duration::from_secs(u64::from(c.lease_seconds)),
            poll: Duration::from_millis(c.poll_ms),
            // One node on SQLite owns every attempt; on PostgreSQL only
            // those whose lease expired are another node's leftovers.
            recover_all: store.backend() == "sqlite",
            ..RunnerConfig::default()
        };
        let dialer = Arc::new(CallDialer::new(self.calls.clone()));
        let driver = Arc::new(CampaignRunner::new(
            self.state.outbox.clone(),
            dialer,
            cfg,
            trunks,
        ));
        let (stop_outcomes, outcomes_stopped) = watch::channel(false);
        let outcomes = tokio::spawn(report_outcomes(
            self.calls.subscribe(),
            Arc::clone(&driver),
            outcomes_stopped,
        ));
        let (stop_dialing, dialing_stopped) = watch::channel(false);
        let dialing = tokio::spawn(Arc::clone(&driver).run(dialing_stopped));
        // Renews the leases until the calls are over, the drain included.
        let (stop_leases, leases_stopped) = watch::channel(false);
        let leases = tokio::spawn(Arc::clone(&driver).keep_leases(leases_stopped));
        CampaignTasks {
            stop_dialing,
            dialing: Some(dialing),
            stop_outcomes,
            outcomes: Some(outcomes),
            stop_leases,
            leases: Some(leases),
        }
    }

    /// Lets active calls finish until `drain` passes or a second signal
    /// says stop, then hangs up what is left with BYE.
    async fn drain_calls(&self, control: &mut watch::Receiver<Control>, drain: Duration) {
        let deadline = tokio::time::Instant::now() + drain;
        let mut progress = tokio::time::interval(Duration::from_secs(5));
        loop {
            if *control.borrow() == Control::Stop {
                tracing::info!(
                    active_calls = self.calls.active(),
                    "stop: hanging up every call"
                );
                break;
            }
            tokio::select! {
                () = self.calls.emptied() => {
                    tracing::info!("drain complete: no call left");
                    return;
                }
                () = tokio::time::sleep_until(deadline) => {
                    tracing::info!(active_calls = self.calls.active(), "drain deadline: hanging up");
                    break;
                }
                _ = control.changed() => {}
                _ = progress.tick() => {
                    tracing::info!(active_calls = self.calls.active(), "draining");
                }
            }
        }
        self.calls.hangup_all(&EndReason::Shutdown);
        if tokio::time::timeout(HANGUP_GRACE, self.calls.emptied())
            .await
            .is_err()
        {
            tracing::warn!(
                active_calls = self.calls.active(),
                "calls did not end in time"
            );
        }
    }

    /// What SIGHUP runs: re-read the SIP TLS certificates and the
    /// profiles, and apply the difference.
    pub fn reloader(&self) -> impl Fn() + Send + 'static {
        let state = self.state.clone();
        let calls = self.calls.clone();
        let dir = self.profiles_dir.clone();
        move || {
            calls.reload_tls();
            if reload_profiles(&state, &dir) {
                let calls = calls.clone();
                tokio::spawn(async move { calls.apply_profiles().await });
            }
        }
    }

    pub fn state(&self) -> &AppState {
        &self.state
    }
}

/// The campaign dialer's two tasks and their stop switches.
struct CampaignTasks {
    /// Stops claiming and placing; calls in flight go on.
    stop_dialing: watch::Sender<bool>,
    /// The driver's loop; `None` once stopped.
    dialing: Option<tokio::task::JoinHandle<()>>,
    /// Stops the outcome feed once the calls are over.
    stop_outcomes: watch::Sender<bool>,
    /// The outcome feed; `None` once stopped.
    outcomes: Option<tokio::task::JoinHandle<()>>,
    /// Stops the lease renewal once the calls are over.
    stop_leases: watch::Sender<bool>,
    /// The lease renewal; `None` once stopped.
    leases: Option<tokio::task::JoinHandle<()>>,
}

impl CampaignTasks {
    /// Stops new dials and waits (bounded) for the pass in progress.
    async fn stop_dialing(&mut self) {
        let _ = self.stop_dialing.send(true);
        if let Some(task) = self.dialing.take()
            && tokio::time::timeout(TASK_GRACE, task).await.is_err()
        {
            tracing::warn!("campaign dialer did not stop in time");
        }
    }

    /// Stops dialing, then the outcome feed once it has reported the ends
    /// already published.
    async fn stop(&mut self) {
        self.stop_dialing().await;
        let _ = self.stop_outcomes.send(true);
        if let Some(task) = self.outcomes.take()
            && tokio::time::timeout(TASK_GRACE, task).await.is_err()
        {
            tracing::warn!("campaign outcome feed did not stop in time");
        }
        let _ = self.stop_leases.send(true);
        if let Some(task) = self.leases.take()
            && tokio::time::timeout(TASK_GRACE, task).await.is_err()
        {
            tracing::warn!("campaign lease renewal did not stop in time");
        }
    }
}

/// How long a campaign task gets to finish its pass when told to stop.
const TASK_GRACE: Duration = Duration::from_secs(10);

/// How long the drain waits for ended calls' analyses to be stored.
const ANALYSIS_GRACE: Duration = Duration::from_secs(10);

/// How long calls get to send BYE and record their end after the hangup.
const HANGUP_GRACE: Duration = Duration::from_secs(15);

/// The IP for Contact and SDP: `sip.public_address` (an IP or a host name,
/// resolved once at start), or `None` for the listen address.
async fn public_ip(configured: &str) -> Result<Option<std::net::IpAddr>, StartError> {
    if configured.is_empty() {
        return Ok(None);
    }
    if let Ok(ip) = configured.parse() {
        return Ok(Some(ip));
    }
    let bad = |message: String| {
        StartError::Config(ConfigError::new("config", "sip.public_address", message))
    };
    let mut addrs = tokio::net::lookup_host((configured, 0))
        .await
        .map_err(|e| bad(format!("cannot resolve {configured:?}: {e}")))?;
    addrs
        .next()
        .map(|a| Some(a.ip()))
        .ok_or_else(|| bad(format!("{configured:?} resolves to no address")))
}

/// The address to announce when listening on every interface and no
/// `sip.public_address` is set: the source address the kernel picks for the
/// default route. A connected UDP socket only selects a route; nothing is
/// sent. Without a route (an isolated host) it falls back to loopback.
fn primary_ip(v6: bool) -> std::net::IpAddr {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, UdpSocket};
    // Documentation prefixes (RFC 5737, RFC 3849): routed by the default
    // route, never answered.
    let (any, probe): (IpAddr, IpAddr) = if v6 {
        (
            Ipv6Addr::UNSPECIFIED.into(),
            Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1).into(),
        )
    } else {
        (
            Ipv4Addr::UNSPECIFIED.into(),
            Ipv4Addr::new(192, 0, 2, 1).into(),
        )
    };
    let picked = UdpSocket::bind((any, 0))
        .and_then(|s| s.connect((probe, 9)).map(|()| s))
        .and_then(|s| s.local_addr())
        .map(|a| a.ip())
        .ok()
        .filter(|ip| !ip.is_unspecified());
    match picked {
        Some(ip) => {
            tracing::info!(%ip, "sip.public_address not set: announcing the default route's address");
            ip
        }
        None => {
            let lo: IpAddr = if v6 {
                Ipv6Addr::LOCALHOST.into()
            } else {
                Ipv4Addr::LOCALHOST.into()
            };
            tracing::warn!(%lo, "sip.public_address not set and no default route: announcing loopback");
            lo
        }
    }
}

/// Re-reads the profile directory and applies the difference; on error the
/// running profiles stay as they were. True when the set was replaced.
fn reload_profiles(state: &AppState, dir: &std::path::Path) -> bool {
    match Profiles::load_dir(dir) {
        Ok(profiles) => {
            let old = state.profiles();
            let added: Vec<_> = profiles
                .by_name
                .keys()
                .filter(|n| !old.by_name.contains_key(*n))
                .cloned()
                .collect();
            let removed: Vec<_> = old
                .by_name
                .keys()
                .filter(|n| !profiles.by_name.contains_key(*n))
                .cloned()
                .collect();
            let changed: Vec<_> = profiles
                .by_name
                .iter()
                .filter(|(n, p)| old.by_name.get(*n).is_some_and(|o| o != *p))
                .map(|(n, _)| n.clone())
                .collect();
            tracing::info!(?added, ?removed, ?changed, "SIP profiles reloaded");
            state
                .trunks
                .retain(|name| profiles.by_name.contains_key(name));
            seed_trunk_states(&state.trunks, &profiles);
            metrics::gauge!(crate::metrics::TRUNKS_CONFIGURED).set(profiles.by_name.len() as f64);
            state.replace_profiles(profiles);
            true
        }
        Err(e) => {
            tracing::error!(error = %e, "SIP profiles not reloaded; keeping the running set");
            false
        }
    }
}

fn seed_trunk_states(trunks: &TrunkStates, profiles: &Profiles) {
    for p in profiles.by_name.values() {
        let live = trunks.get(&p.name);
        match (&p.registration, &live.registration) {
            (Some(_), RegistrationStatus::NotConfigured) => {
                trunks.set_registration(&p.name, RegistrationStatus::Pending)
            }
            (None, _) => trunks.set_registration(&p.name, RegistrationStatus::NotConfigured),
            _ => {}
        }
    }
}

fn notify(states: &[sd_notify::NotifyState]) {
    if let Err(e) = sd_notify::notify(false, states) {
        tracing::debug!(error = %e, "sd_notify failed");
    }
}

/// Turns process signals into [`Control`] changes: the first SIGTERM drains,
/// a second SIGTERM or any SIGINT stops; SIGHUP calls `on_hup`.
pub async fn watch_signals(
    control: watch::Sender<Control>,
    on_hup: impl Fn() + Send + 'static,
) -> std::io::Result<impl Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    Ok(async move {
        loop {
            tokio::select! {
                _ = term.recv() => {
                    let next = if *control.borrow() == Control::Run { Control::Drain } else { Control::Stop };
                    tracing::info!(?next, "SIGTERM");
                    let _ = control.send(next);
                }
                _ = int.recv() => {
                    tracing::info!("SIGINT: stopping now");
                    let _ = control.send(Control::Stop);
                }
                _ = hup.recv() => on_hup(),
            }
        }
    })
}
