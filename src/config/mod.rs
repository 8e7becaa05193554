//! Daemon configuration (`agentline.toml`) and SIP profiles (`sip-profiles/*.toml`).
//!
//! Owns: parsing, defaults, environment overrides and validation, done once
//! before anything is bound. Every error names the file and the key so an
//! operator can fix it without reading code; the binary turns a
//! [`ConfigError`] into exit code 64 (`EX_USAGE`).
//!
//! Must not: touch the network, the store or any other module's state. Other
//! modules receive already-validated values.

mod profile;
mod sip;

pub use profile::{
    Codec, Inbound, InboundAuth, Limits, Media, Outbound, Profile, Profiles, RegistrationConfig,
    Srtp, TrunkTransport,
};
pub use sip::{
    FloodConfig, MethodLimits, PortRange, RateLimit, SipConfig, SipTcpConfig, UnknownSource,
};

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

/// The prefix of environment variables that override config keys. Nested keys
/// are separated by a double underscore: `AGENTLINE_API__LISTEN` overrides
/// `[api] listen`, `AGENTLINE_SIP__RTP_PORTS` overrides `[sip] rtp_ports`.
pub const ENV_PREFIX: &str = "AGENTLINE_";

/// A configuration problem, naming where it is so it can be fixed.
#[derive(Debug, thiserror::Error)]
#[error("{file}: {key}: {message}")]
pub struct ConfigError {
    /// The file (or `environment`) the bad value came from.
    pub file: String,
    /// The dotted key, for example `api.listen`.
    pub key: String,
    pub message: String,
}

impl ConfigError {
    pub fn new(
        file: impl Into<String>,
        key: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Self {
            file: file.into(),
            key: key.into(),
            message: message.into(),
        }
    }
}

/// The whole daemon configuration.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub api: ApiConfig,
    pub sip: SipConfig,
    pub store: StoreConfig,
    pub profiles: ProfilesConfig,
    pub log: LogConfig,
    pub shutdown: ShutdownConfig,
    pub calls: CallsConfig,
    pub campaigns: CampaignsConfig,
    pub webhooks: WebhooksConfig,
    /// This node among several on one PostgreSQL store.
    pub cluster: ClusterConfig,
    /// The embedded speech engines (PocketSphinx, flite).
    pub speech: crate::agent::speech::SpeechConfig,
    /// Where outbound requests (tools, LLM, speech vendors, webhooks) may go.
    pub net: crate::net::NetConfig,
    /// Which environment variables may be sent where, and the key that
    /// encrypts stored secrets.
    pub secrets: crate::secrets::SecretsConfig,
    /// Audio prompts: the directory `prompt.wav_path` may name files in.
    pub media: MediaConfig,
    /// Where call recordings are written and how long they are kept.
    pub recordings: RecordingsConfig,
    /// Browser web calls: ICE servers, token lifetime, limits.
    pub webrtc: crate::webrtc::WebrtcConfig,
}

/// Call recordings (`"recording"` on an agent, a number, a campaign or a
/// call turns them on).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RecordingsConfig {
    /// The directory the WAV files are written to (created if missing).
    pub dir: PathBuf,
    /// Recordings older than this many days are deleted (0: kept forever).
    pub retain_days: u32,
    /// How often the retention cleanup runs.
    pub cleanup_interval_seconds: u64,
}

impl Default for RecordingsConfig {
    fn default() -> Self {
        Self {
            dir: PathBuf::from("recordings"),
            retain_days: 30,
            cleanup_interval_seconds: 3600,
        }
    }
}

/// Audio files agents may play.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MediaConfig {
    /// The only directory `prompt.wav_path` may point into (relative paths
    /// are taken inside it). None: no file on disk may be played; upload
    /// audio through `POST /v1/audio` instead.
    pub dir: Option<PathBuf>,
    /// The largest prompt file or upload, in bytes.
    pub max_bytes: u64,
}

impl Default for MediaConfig {
    fn default() -> Self {
        Self {
            dir: None,
            max_bytes: 8 * 1024 * 1024,
        }
    }
}

/// The running trunk profiles, replaced whole on SIGHUP; readers take a
/// snapshot and never hold the lock.
#[derive(Debug, Default)]
pub struct SharedProfiles(
    /// Held only to clone or swap the `Arc`, never across an `.await`.
    RwLock<Arc<Profiles>>,
);

impl SharedProfiles {
    pub fn new(profiles: Profiles) -> Self {
        Self(RwLock::new(Arc::new(profiles)))
    }

    pub fn get(&self) -> Arc<Profiles> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn replace(&self, profiles: Profiles) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(profiles);
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CallsConfig {
    /// How long an inbound call rings (180) before it is answered.
    pub answer_delay_ms: u64,
    /// Ring timeout of outbound calls that do not give their own.
    pub ring_timeout_seconds: u32,
    /// A call with no RTP for this long while it should flow is ended
    /// (end reason `media_timeout`).
    pub rtp_timeout_seconds: u32,
    /// While the agent says nothing, send a frame of silence every 20 ms
    /// (as FreeSWITCH and Asterisk do) so that carriers' RTP timeouts and
    /// NAT bindings keep seeing traffic; it starts once the far end's RTP
    /// has arrived. Off: no RTP while silent.
    pub send_silence: bool,
    /// Toll fraud: calls one API key may place with `POST /v1/calls` per
    /// UTC day (counted in the store, over every node); past it, 429
    /// `daily_cap` and `api_key.cap_reached`. None: no cap. Trunks have
    /// their own caps (`[limits] daily_calls`).
    pub daily_calls_per_key: Option<u32>,
    /// Toll fraud: minutes the calls one API key placed may last per UTC
    /// day (ended calls, counted in the store); past it, 429 `daily_cap`.
    /// None: no cap. Trunks have their own (`[limits] daily_minutes`).
    pub daily_minutes_per_key: Option<u32>,
    /// Test mode: an answered call on the simulated carrier (an `al_test_`
    /// key's, or a test campaign's) is hung up by the simulated callee
    /// after this many seconds.
    pub test_hangup_after_seconds: u32,
    /// Test mode: calls on the simulated carrier at once, on this node;
    /// past it, 429 `trunk_full`.
    pub test_max_calls: u32,
    /// Test mode: what the simulated callee says once it answers: a WAV
    /// file (8 kHz mono 16-bit PCM, at most 8 MiB) played once, then
    /// silence. None: silence throughout.
    pub test_callee_wav: Option<std::path::PathBuf>,

    /// Inbound SIP headers that join a call's context (and so its agent's
    /// templates and tool requests): names, case-insensitive, a trailing
    /// `*` matching any rest. At most 20 headers of 256 characters each
    /// are kept; `Authorization` never.
    pub context_headers: Vec<String>,
    /// How long an agent webhook (a number's or a campaign's) has to
    /// answer before the call keeps its own agent. Inbound calls ring
    /// (180) meanwhile.
    pub agent_webhook_timeout_ms: u64,
}

impl Default for CallsConfig {
    fn default() -> Self {
        Self {
            answer_delay_ms: 0,
            ring_timeout_seconds: 60,
            rtp_timeout_seconds: 30,
            send_silence: true,
            daily_calls_per_key: None,
            daily_minutes_per_key: None,
            test_hangup_after_seconds: 10,
            test_max_calls: 10,
            test_callee_wav: None,
            context_headers: vec!["X-*".to_owned()],
            agent_webhook_timeout_ms: 1500,
        }
    }
}

/// The longest retry delay a campaign may ask (30 days).
pub const MAX_RETRY_DELAY_SECONDS: u32 = 2_592_000;

/// The campaign dialer on this node.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CampaignsConfig {
    /// Campaign calls in flight on this node across every campaign, on top
    /// of each campaign's and each trunk's own caps.
    pub max_concurrent_calls: u32,
    /// How long a claimed contact stays this node's without renewal; after
    /// a crash another node (PostgreSQL) recovers it once this passes.
    pub lease_seconds: u32,
    /// Longest pause between two looks at the store for due contacts.
    pub poll_ms: u64,
    /// The shortest retry delay a campaign's retry policy may ask. 60 s
    /// keeps a busy callee from being redialled at once; a test lab sets it
    /// lower to see retries happen.
    pub min_retry_delay_seconds: u32,
}

impl Default for CampaignsConfig {
    fn default() -> Self {
        Self {
            max_concurrent_calls: 100,
            lease_seconds: 120,
            poll_ms: 1000,
            min_retry_delay_seconds: 60,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    /// Address of the admin HTTP API.
    pub listen: SocketAddr,
    /// Serve `/metrics` on `listen` without an API key. Off by default: a
    /// scraper then sends a key (a `read` key is enough), or scrapes
    /// `metrics_listen`.
    pub metrics_open: bool,
    /// A second address serving only `/metrics`, without a key (bind it to
    /// a private interface).
    pub metrics_listen: Option<SocketAddr>,
    /// Requests per minute for a key that has no limit of its own.
    pub rate_limit_per_minute: u32,
    /// Failed authentications per minute from one client address (an IPv6
    /// client by its /64) before its requests are refused unread, so that
    /// guessed keys cannot keep the store busy.
    pub auth_failures_per_minute: u32,
    /// A client must send a request's headers within this (slow-loris).
    pub header_read_timeout_seconds: u64,
    /// A client must send a request's body within this.
    pub body_timeout_seconds: u64,
    /// Requests handled at once; more get 503 (open event streams do not
    /// count once they have started).
    pub max_concurrent_requests: usize,
    /// Open client connections at most; more are closed at accept.
    pub max_connections: usize,
    /// Event streams (`GET /v1/events`) one key may hold open.
    pub max_streams_per_key: usize,
    /// How often an open event stream checks that its key is not revoked.
    pub stream_key_check_seconds: u64,
    /// The largest CSV upload (contacts), in bytes.
    pub max_csv_bytes: u64,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            metrics_open: false,
            metrics_listen: None,
            rate_limit_per_minute: 100,
            auth_failures_per_minute: 30,
            header_read_timeout_seconds: 10,
            body_timeout_seconds: 60,
            max_concurrent_requests: 512,
            max_connections: 1024,
            max_streams_per_key: 5,
            stream_key_check_seconds: 5,
            max_csv_bytes: 128 * 1024 * 1024,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// `sqlite://PATH` (the embedded default) or `postgres://...`.
    pub url: String,
    /// The older name of `cluster.node_id`, used when that is not set.
    pub node: String,
    /// PostgreSQL: connections of the pool at most (the API, the webhook
    /// worker, campaigns and the call path's group commit).
    pub pool_size: u32,
    /// PostgreSQL: transactions of batched call transitions open at once.
    pub commit_writers: u32,
    /// PostgreSQL: how often an event stream looks for other daemons'
    /// events when no NOTIFY came (the safety net of LISTEN/NOTIFY).
    pub listen_poll_ms: u64,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            url: "sqlite://agentline.db".into(),
            node: String::new(),
            pool_size: 16,
            commit_writers: 2,
            listen_poll_ms: 5000,
        }
    }
}

/// This node among several daemons on one PostgreSQL store.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// This node's stable id, written on its calls, leases and heartbeat.
    /// Empty: generated once and kept in `data_dir/node-id` (never the
    /// host name, which containers change).
    pub node_id: String,
    /// Where the generated node id is kept.
    pub data_dir: PathBuf,
    /// How often the node writes its heartbeat.
    pub heartbeat_seconds: u32,
    /// A node whose heartbeat is older than this is dead: another node
    /// ends its calls (BYE) and recovers its campaign contacts.
    pub grace_seconds: u32,
    /// How long a node holds a trunk's registration and OPTIONS probe
    /// without renewing; after it dies, another takes the trunk within it.
    pub trunk_lease_seconds: u32,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            node_id: String::new(),
            data_dir: PathBuf::from("."),
            heartbeat_seconds: 2,
            grace_seconds: 10,
            trunk_lease_seconds: 15,
        }
    }
}

impl ClusterConfig {
    fn validate(&self, file: &str) -> Result<(), ConfigError> {
        let err = |key: &str, message: &str| {
            Err(ConfigError::new(file, format!("cluster.{key}"), message))
        };
        if !self.node_id.is_empty() && !is_node_id(&self.node_id) {
            return err(
                "node_id",
                "up to 64 letters, digits, '.', '_' or '-', starting with a letter or digit",
            );
        }
        if self.heartbeat_seconds == 0 || self.heartbeat_seconds > 60 {
            return err("heartbeat_seconds", "must be between 1 and 60");
        }
        if self.grace_seconds < 2 * self.heartbeat_seconds + 1 {
            return err(
                "grace_seconds",
                "must be more than twice heartbeat_seconds (one lost beat is not a death)",
            );
        }
        if self.trunk_lease_seconds < 3 || self.trunk_lease_seconds > 3600 {
            return err("trunk_lease_seconds", "must be between 3 and 3600");
        }
        Ok(())
    }
}

/// Whether `id` may name a node (it goes into logs, SQL parameters and a
/// file, never into SQL text).
pub fn is_node_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProfilesConfig {
    /// Directory holding one TOML file per SIP trunk.
    pub dir: PathBuf,
}

impl Default for ProfilesConfig {
    fn default() -> Self {
        Self {
            dir: PathBuf::from("sip-profiles"),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    pub format: LogFormat,
    /// A `tracing` filter such as `info` or `agentline::sip=debug,info`.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: LogFormat::Text,
            level: "info".into(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ShutdownConfig {
    /// How long SIGTERM lets active calls finish before hanging them up.
    pub drain_seconds: u64,
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        Self { drain_seconds: 300 }
    }
}

/// Webhook delivery: timeouts, the retry schedule, concurrency and which
/// addresses endpoints may point at.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebhooksConfig {
    /// How long one attempt may take, connect to last byte.
    pub timeout_seconds: u64,
    /// Delay before each retry, in order. After the last entry the delivery
    /// is retried at that interval until `retry_for_seconds` have passed
    /// since its first attempt, then dead-lettered.
    pub retry_schedule_seconds: Vec<u64>,
    pub retry_for_seconds: u64,
    /// Each delay is moved at random by up to this fraction either way, so
    /// many failed deliveries do not come back at the same instant.
    pub jitter: f64,
    /// The longest `Retry-After` (on 429 and 503) that is honoured.
    pub max_retry_after_seconds: u64,
    /// Requests in flight at once, over all endpoints.
    pub concurrency: usize,
    /// Deliveries claimed per database round trip.
    pub batch_size: usize,
    /// How often the outbox is checked when nothing wakes the worker (work
    /// made by another node, retries coming due).
    pub poll_interval_ms: u64,
    /// Deliver to loopback, private, link-local and other non-public
    /// addresses. Off by default so endpoint URLs cannot reach the inside.
    pub allow_private: bool,
    /// Non-public networks that are allowed all the same, for example
    /// `["127.0.0.0/8"]` in tests.
    pub allowed_networks: Vec<ipnet::IpNet>,
    /// How long a rotated-out secret stays valid and keeps signing.
    pub secret_overlap_seconds: u64,
    /// Comment lines sent on an idle event stream.
    pub sse_heartbeat_seconds: u64,
}

impl Default for WebhooksConfig {
    fn default() -> Self {
        Self {
            timeout_seconds: 10,
            retry_schedule_seconds: vec![5, 30, 120, 600, 1800, 3600],
            retry_for_seconds: 86_400,
            jitter: 0.2,
            max_retry_after_seconds: 3600,
            concurrency: 64,
            batch_size: 100,
            poll_interval_ms: 1000,
            allow_private: false,
            allowed_networks: Vec::new(),
            secret_overlap_seconds: 86_400,
            sse_heartbeat_seconds: 15,
        }
    }
}

impl WebhooksConfig {
    fn validate(&self, file: &str) -> Result<(), ConfigError> {
        let err = |key: &str, message: &str| {
            Err(ConfigError::new(file, format!("webhooks.{key}"), message))
        };
        if !(1..=300).contains(&self.timeout_seconds) {
            return err("timeout_seconds", "must be between 1 and 300");
        }
        if self.retry_schedule_seconds.is_empty() {
            return err("retry_schedule_seconds", "must list at least one delay");
        }
        if self
            .retry_schedule_seconds
            .iter()
            .any(|s| !(1..=86_400).contains(s))
        {
            return err(
                "retry_schedule_seconds",
                "every delay must be between 1 and 86400 seconds",
            );
        }
        if self.retry_for_seconds > 30 * 86_400 {
            return err("retry_for_seconds", "must be at most 30 days");
        }
        if !(0.0..=1.0).contains(&self.jitter) {
            return err("jitter", "must be between 0 and 1");
        }
        if !(1..=4096).contains(&self.concurrency) {
            return err("concurrency", "must be between 1 and 4096");
        }
        if !(1..=1000).contains(&self.batch_size) {
            return err("batch_size", "must be between 1 and 1000");
        }
        if !(10..=60_000).contains(&self.poll_interval_ms) {
            return err("poll_interval_ms", "must be between 10 and 60000");
        }
        if self.sse_heartbeat_seconds == 0 || self.sse_heartbeat_seconds > 3600 {
            return err("sse_heartbeat_seconds", "must be between 1 and 3600");
        }
        Ok(())
    }
}

impl Config {
    /// Loads the file at `path` (defaults when it does not exist and
    /// `required` is false), applies `AGENTLINE_*` overrides, then validates.
    pub fn load(path: &Path, required: bool) -> Result<Self, ConfigError> {
        let file = path.display().to_string();
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if path.exists() {
            if let Err(e) = std::fs::File::open(path) {
                return Err(ConfigError::new(&file, "-", format!("cannot read: {e}")));
            }
            figment = figment.merge(Toml::file_exact(path));
        } else if required {
            return Err(ConfigError::new(&file, "-", "file not found"));
        }
        // Every key lives in a table, so an override always has a `__`;
        // other AGENTLINE_* variables (AGENTLINE_CONFIG, test settings) are
        // not config keys.
        figment = figment.merge(
            Env::prefixed(ENV_PREFIX)
                .filter(|key| key.as_str().contains("__"))
                .split("__"),
        );
        let config: Config = figment.extract().map_err(|e| figment_error(&file, e))?;
        config.validate(&file)?;
        Ok(config)
    }

    fn validate(&self, file: &str) -> Result<(), ConfigError> {
        if let Some(p) = &self.net.proxy
            && reqwest::Proxy::all(p.as_str()).is_err()
        {
            return Err(ConfigError::new(file, "net.proxy", "must be a proxy URL"));
        }
        for name in self.secrets.env.keys() {
            if name.is_empty()
                || !name
                    .chars()
                    .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
            {
                return Err(ConfigError::new(
                    file,
                    format!("secrets.env.{name}"),
                    "must be an environment variable name (A-Z, 0-9, _)",
                ));
            }
        }
        if !(1024..=512 * 1024 * 1024).contains(&self.media.max_bytes) {
            return Err(ConfigError::new(
                file,
                "media.max_bytes",
                "must be between 1024 and 536870912",
            ));
        }
        let url = &self.store.url;
        if !(url.starts_with("sqlite:")
            || url.starts_with("postgres://")
            || url.starts_with("postgresql://"))
        {
            return Err(ConfigError::new(
                file,
                "store.url",
                format!("expected sqlite://PATH or postgres://..., found {url:?}"),
            ));
        }
        if !self.sip.public_address.is_empty()
            && self.sip.public_address.parse::<std::net::IpAddr>().is_err()
            && !is_hostname(&self.sip.public_address)
        {
            return Err(ConfigError::new(
                file,
                "sip.public_address",
                format!(
                    "{:?} is neither an IP address nor a host name",
                    self.sip.public_address
                ),
            ));
        }
        if self.calls.ring_timeout_seconds == 0 || self.calls.rtp_timeout_seconds == 0 {
            return Err(ConfigError::new(
                file,
                "calls",
                "ring_timeout_seconds and rtp_timeout_seconds must be at least 1",
            ));
        }
        if !(1..=10_000).contains(&self.calls.agent_webhook_timeout_ms) {
            return Err(ConfigError::new(
                file,
                "calls.agent_webhook_timeout_ms",
                "must be between 1 and 10000",
            ));
        }
        let c = &self.campaigns;
        if c.max_concurrent_calls == 0 {
            return Err(ConfigError::new(
                file,
                "campaigns.max_concurrent_calls",
                "must be at least 1",
            ));
        }
        if c.lease_seconds < 10 {
            return Err(ConfigError::new(
                file,
                "campaigns.lease_seconds",
                "must be at least 10",
            ));
        }
        if !(10..=60_000).contains(&c.poll_ms) {
            return Err(ConfigError::new(
                file,
                "campaigns.poll_ms",
                "must be between 10 and 60000",
            ));
        }
        if c.min_retry_delay_seconds > MAX_RETRY_DELAY_SECONDS {
            return Err(ConfigError::new(
                file,
                "campaigns.min_retry_delay_seconds",
                "must be at most 2592000 (30 days, the longest retry delay)",
            ));
        }
        let store = &self.store;
        if !(2..=1000).contains(&store.pool_size) {
            return Err(ConfigError::new(
                file,
                "store.pool_size",
                "must be between 2 and 1000",
            ));
        }
        if store.commit_writers == 0 || store.commit_writers >= store.pool_size {
            return Err(ConfigError::new(
                file,
                "store.commit_writers",
                "must be at least 1 and below store.pool_size",
            ));
        }
        if !(100..=600_000).contains(&store.listen_poll_ms) {
            return Err(ConfigError::new(
                file,
                "store.listen_poll_ms",
                "must be between 100 and 600000",
            ));
        }
        if self.api.rate_limit_per_minute == 0 {
            return Err(ConfigError::new(
                file,
                "api.rate_limit_per_minute",
                "must be at least 1",
            ));
        }
        let a = &self.api;
        for (key, value) in [
            (
                "auth_failures_per_minute",
                u64::from(a.auth_failures_per_minute),
            ),
            ("header_read_timeout_seconds", a.header_read_timeout_seconds),
            ("body_timeout_seconds", a.body_timeout_seconds),
            ("max_concurrent_requests", a.max_concurrent_requests as u64),
            ("max_connections", a.max_connections as u64),
            ("max_streams_per_key", a.max_streams_per_key as u64),
            ("stream_key_check_seconds", a.stream_key_check_seconds),
            ("max_csv_bytes", a.max_csv_bytes),
        ] {
            if value == 0 {
                return Err(ConfigError::new(
                    file,
                    format!("api.{key}"),
                    "must be at least 1",
                ));
            }
        }
        if a.metrics_listen == Some(a.listen) {
            return Err(ConfigError::new(
                file,
                "api.metrics_listen",
                "must differ from api.listen",
            ));
        }
        self.sip.validate(file)?;
        self.webhooks.validate(file)?;
        self.cluster.validate(file)?;
        if !self.store.node.is_empty() && !is_node_id(&self.store.node) {
            return Err(ConfigError::new(
                file,
                "store.node",
                "up to 64 letters, digits, '.', '_' or '-', starting with a letter or digit",
            ));
        }
        if let Some((key, message)) = self.webrtc.problem() {
            return Err(ConfigError::new(file, format!("webrtc.{key}"), message));
        }
        if let Some(p) = self.webrtc.ports
            && p.low <= self.sip.rtp_ports.high
            && self.sip.rtp_ports.low <= p.high
        {
            return Err(ConfigError::new(
                file,
                "webrtc.ports",
                "must not overlap sip.rtp_ports (both take ports from their range)",
            ));
        }
        if let Some((key, message)) = self.speech.problem() {
            return Err(ConfigError::new(file, format!("speech.{key}"), message));
        }
        if self
            .log
            .level
            .parse::<tracing_subscriber::EnvFilter>()
            .is_err()
        {
            return Err(ConfigError::new(
                file,
                "log.level",
                format!("{:?} is not a tracing filter", self.log.level),
            ));
        }
        Ok(())
    }
}

/// True for an RFC 1123 host name (letters, digits, hyphens, dots).
pub(crate) fn is_hostname(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
}

/// Turns a figment error into one that names the file and the dotted key.
fn figment_error(file: &str, err: figment::Error) -> ConfigError {
    let err = err.into_iter().next();
    let Some(err) = err else {
        return ConfigError::new(file, "-", "invalid configuration");
    };
    let source = match &err.metadata {
        Some(meta) if meta.name.contains("environment") => {
            let key = err.path.join("__").to_uppercase();
            format!("environment variable {ENV_PREFIX}{key}")
        }
        _ => file.to_string(),
    };
    let key = if err.path.is_empty() {
        "-".to_string()
    } else {
        err.path.join(".")
    };
    ConfigError::new(source, key, err.kind.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn load_str(toml: &str) -> Result<Config, ConfigError> {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(toml.as_bytes()).unwrap();
        Config::load(f.path(), true)
    }

    #[test]
    fn defaults_apply_when_the_file_is_missing() {
        let c = Config::load(Path::new("/nonexistent/agentline.toml"), false).unwrap();
        assert_eq!(c.api.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(
            c.sip.rtp_ports,
            PortRange {
                low: 20000,
                high: 30000
            }
        );
        assert_eq!(c.store.url, "sqlite://agentline.db");
    }

    #[test]
    fn an_unknown_key_is_named() {
        let e = load_str("[api]\nlisten = \"127.0.0.1:1\"\nlsiten = 3\n").unwrap_err();
        assert_eq!(e.key, "api.lsiten", "{e}");
    }

    #[test]
    fn a_bad_address_is_named() {
        let e = load_str("[sip]\nlisten = \"nowhere\"\n").unwrap_err();
        assert_eq!(e.key, "sip.listen", "{e}");
    }

    #[test]
    fn a_bad_port_range_is_named() {
        let e = load_str("[sip]\nrtp_ports = \"30000-20000\"\n").unwrap_err();
        assert_eq!(e.key, "sip.rtp_ports", "{e}");
    }

    #[test]
    fn bad_webhook_settings_are_named() {
        let e = load_str("[webhooks]\nretry_schedule_seconds = []\n").unwrap_err();
        assert_eq!(e.key, "webhooks.retry_schedule_seconds", "{e}");
        let e = load_str("[webhooks]\njitter = 2.0\n").unwrap_err();
        assert_eq!(e.key, "webhooks.jitter", "{e}");
        let e = load_str("[webhooks]\nallowed_networks = [\"nope\"]\n").unwrap_err();
        assert_eq!(e.key, "webhooks.allowed_networks.0", "{e}");
        let c = load_str("[webhooks]\nallowed_networks = [\"127.0.0.0/8\"]\n").unwrap();
        assert_eq!(c.webhooks.allowed_networks.len(), 1);
    }

    #[test]
    fn the_example_file_loads_and_documents_the_speech_defaults() {
        let c = load_str(include_str!("../../agentline.example.toml")).unwrap();
        assert_eq!(c.speech, crate::agent::speech::SpeechConfig::default());
    }

    #[test]
    fn the_example_file_documents_the_call_defaults() {
        let c = load_str(include_str!("../../agentline.example.toml")).unwrap();
        let d = CallsConfig::default();
        assert_eq!(c.calls.context_headers, d.context_headers);
        assert_eq!(c.calls.agent_webhook_timeout_ms, d.agent_webhook_timeout_ms);
        assert_eq!(c.calls.ring_timeout_seconds, d.ring_timeout_seconds);
    }

    #[test]
    fn the_example_file_documents_the_sip_edge_defaults() {
        let c = load_str(include_str!("../../agentline.example.toml")).unwrap();
        let defaults = SipConfig::default();
        assert_eq!(c.sip.unknown_source, UnknownSource::Drop);
        assert_eq!(c.sip.flood, defaults.flood);
        assert_eq!(c.sip.tcp, defaults.tcp);
        assert_eq!(c.sip.server_header, "");
    }

    #[test]
    fn the_cluster_settings_are_documented_and_checked() {
        let c = load_str(include_str!("../../agentline.example.toml")).unwrap();
        let defaults = ClusterConfig::default();
        assert_eq!(c.cluster.node_id, "");
        assert_eq!(c.cluster.grace_seconds, defaults.grace_seconds);
        assert_eq!(c.cluster.trunk_lease_seconds, defaults.trunk_lease_seconds);
        let e = load_str("[cluster]\nnode_id = \"a b\"\n").unwrap_err();
        assert_eq!(e.key, "cluster.node_id", "{e}");
        let e = load_str("[cluster]\nnode_id = \"../etc\"\n").unwrap_err();
        assert_eq!(e.key, "cluster.node_id", "{e}");
        let e = load_str("[cluster]\nheartbeat_seconds = 5\ngrace_seconds = 10\n").unwrap_err();
        assert_eq!(e.key, "cluster.grace_seconds", "{e}");
        let e = load_str("[cluster]\ntrunk_lease_seconds = 1\n").unwrap_err();
        assert_eq!(e.key, "cluster.trunk_lease_seconds", "{e}");
        let e = load_str("[store]\nnode = \"x;drop\"\n").unwrap_err();
        assert_eq!(e.key, "store.node", "{e}");
        let c = load_str("[cluster]\nnode_id = \"node-a.eu_1\"\n").unwrap();
        assert_eq!(c.cluster.node_id, "node-a.eu_1");
    }

    #[test]
    fn bad_sip_edge_settings_are_named() {
        let e = load_str(
            "[sip.flood.trunk]
invite = { rate = 0, burst = 5 }
register = { rate = 1, burst = 1 }
options = { rate = 1, burst = 1 }
other = { rate = 1, burst = 1 }
",
        )
        .unwrap_err();
        assert_eq!(e.key, "sip.flood.trunk.invite.rate", "{e}");
        let e = load_str(
            "[sip.flood]
ban_seconds = 0
",
        )
        .unwrap_err();
        assert_eq!(e.key, "sip.flood.ban_seconds", "{e}");
        let e = load_str(
            "[sip.tcp]
max_connections = 10
max_connections_per_source = 11
",
        )
        .unwrap_err();
        assert_eq!(e.key, "sip.tcp.max_connections_per_source", "{e}");
        let e = load_str(
            "[sip.tcp]
message_timeout_seconds = 0
",
        )
        .unwrap_err();
        assert_eq!(e.key, "sip.tcp.message_timeout_seconds", "{e}");
        let e = load_str(
            "[sip.flood]
scanner_user_agents = [\"\"]
",
        )
        .unwrap_err();
        assert_eq!(e.key, "sip.flood.scanner_user_agents", "{e}");
    }

    #[test]
    fn bad_speech_settings_are_named() {
        let c = load_str("[speech]\nvoice = \"kal\"\nwarm_workers = 2\n").unwrap();
        assert_eq!(c.speech.voice, "kal");
        assert_eq!(c.speech.warm_workers, 2);
        let e = load_str("[speech]\nvoice = \"/tmp/evil.flitevox\"\n").unwrap_err();
        assert_eq!(e.key, "speech.voice", "{e}");
        let e = load_str("[speech]\nwarm_workers = 99\n").unwrap_err();
        assert_eq!(e.key, "speech.warm_workers", "{e}");
        let e = load_str("[speech]\npython = \"\"\n").unwrap_err();
        assert_eq!(e.key, "speech.python", "{e}");
        let e = load_str("[speech]\nvoise = \"kal\"\n").unwrap_err();
        assert_eq!(e.key, "speech.voise", "{e}");
    }

    #[test]
    fn a_bad_store_url_is_named() {
        let e = load_str("[store]\nurl = \"mysql://x\"\n").unwrap_err();
        assert_eq!(e.key, "store.url", "{e}");
    }
}
