//! The `[sip]` section: listen addresses, RTP ports, the source policy for
//! strangers, and the SIP edge's limits (flood buckets per source and
//! method, TCP connection caps and timeouts), and SIP over TLS (listen
//! address, certificate files, the client certificate for outbound).
//!
//! Must not: act on these values; `sip` receives them validated.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::ConfigError;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SipConfig {
    /// UDP and TCP signalling address.
    pub listen: SocketAddr,
    /// Host or address announced in Contact and SDP when behind NAT; empty
    /// means the address of the listening socket.
    pub public_address: String,
    /// RTP port range, inclusive, as `"LOW-HIGH"`.
    pub rtp_ports: PortRange,
    /// What to do with a request from a source no trunk allows: drop it
    /// silently so scanners learn nothing (the default), or answer it once
    /// with 403, statelessly and never with more bytes than it had.
    pub unknown_source: UnknownSource,
    /// `Server`/`User-Agent` value we send; empty sends none (a version
    /// tells scanners which exploits to try).
    pub server_header: String,
    /// The flood guard in front of the parser: per-source token buckets,
    /// bans, the transaction cap and scanner user agents.
    pub flood: FloodConfig,
    /// Limits of SIP over TCP.
    pub tcp: SipTcpConfig,
    /// Keep the SIP messages of each call in memory for
    /// `GET /v1/calls/{id}/sip-trace` (text or pcap).
    pub trace: bool,
    /// How long a call's SIP trace is kept after its last message.
    pub trace_retain_seconds: u64,
    /// RFC 4028 session interval we ask for on outbound calls and accept
    /// at most on inbound ones (a longer offer is shortened), in seconds.
    pub session_expires: u32,
    /// RFC 4028 Min-SE: an inbound Session-Expires below it gets 422. At
    /// least 90 (RFC 4028 §4).
    pub min_se: u32,
    /// RFC 3261 T1 in milliseconds (the 2xx retransmission starts at T1,
    /// doubles to T2 = 8*T1 and stops at 64*T1). Leave at 500: smaller
    /// values are for tests only.
    pub t1_ms: u64,
    /// SIP over TLS (RFC 3261 §26.2, RFC 5630): address to accept TLS
    /// connections on (usually port 5061); unset accepts none. The edge
    /// and `[sip.tcp]` limits apply as for TCP.
    pub tls_listen: Option<SocketAddr>,
    /// PEM certificate chain presented on `tls_listen` (leaf first);
    /// re-read on SIGHUP.
    pub tls_cert_file: Option<PathBuf>,
    /// PEM private key of `tls_cert_file` (PKCS#8, PKCS#1 or SEC1);
    /// re-read on SIGHUP.
    pub tls_key_file: Option<PathBuf>,
    /// PEM client certificate chain offered on outbound TLS connections to
    /// trunks that ask for one; re-read on SIGHUP.
    pub tls_client_cert_file: Option<PathBuf>,
    /// PEM private key of `tls_client_cert_file`.
    pub tls_client_key_file: Option<PathBuf>,
}

impl Default for SipConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 5060)),
            public_address: String::new(),
            rtp_ports: PortRange {
                low: 20000,
                high: 30000,
            },
            unknown_source: UnknownSource::Drop,
            server_header: String::new(),
            flood: FloodConfig::default(),
            tcp: SipTcpConfig::default(),
            trace: false,
            trace_retain_seconds: 3600,
            session_expires: 1800,
            min_se: 90,
            t1_ms: 500,
            tls_listen: None,
            tls_cert_file: None,
            tls_key_file: None,
            tls_client_cert_file: None,
            tls_client_key_file: None,
        }
    }
}

impl SipConfig {
    pub(super) fn validate(&self, file: &str) -> Result<(), ConfigError> {
        let err = |key: String, message: &str| Err(ConfigError::new(file, key, message));
        if !(1..=604_800).contains(&self.trace_retain_seconds) {
            return err(
                "sip.trace_retain_seconds".into(),
                "must be between 1 and 604800 (a week)",
            );
        }
        if !(90..=86_400).contains(&self.min_se) {
            return err(
                "sip.min_se".into(),
                "must be between 90 (RFC 4028 section 4) and 86400",
            );
        }
        if self.session_expires < self.min_se || self.session_expires > 86_400 {
            return err(
                "sip.session_expires".into(),
                "must be at least sip.min_se and at most 86400",
            );
        }
        if !(10..=2000).contains(&self.t1_ms) {
            return err("sip.t1_ms".into(), "must be between 10 and 2000");
        }
        let f = &self.flood;
        for (class, limits) in [("stranger", &f.stranger), ("trunk", &f.trunk)] {
            for (method, limit) in limits.each() {
                if !(1..=1_000_000).contains(&limit.rate) {
                    return err(
                        format!("sip.flood.{class}.{method}.rate"),
                        "must be between 1 and 1000000 requests per second",
                    );
                }
                if limit.burst < 1 || limit.burst > 10_000_000 {
                    return err(
                        format!("sip.flood.{class}.{method}.burst"),
                        "must be between 1 and 10000000",
                    );
                }
            }
        }
        if !(1..=86_400).contains(&f.ban_seconds) {
            return err(
                "sip.flood.ban_seconds".into(),
                "must be between 1 and 86400",
            );
        }
        if !(1..=60).contains(&f.trunk_throttle_seconds) {
            return err(
                "sip.flood.trunk_throttle_seconds".into(),
                "must be between 1 and 60",
            );
        }
        if !(1..=1000).contains(&f.auth_failures_before_ban) {
            return err(
                "sip.flood.auth_failures_before_ban".into(),
                "must be between 1 and 1000",
            );
        }
        if !(1..=1_000_000).contains(&f.max_server_transactions) {
            return err(
                "sip.flood.max_server_transactions".into(),
                "must be between 1 and 1000000",
            );
        }
        if !(1..=1_000_000).contains(&f.max_receive_backlog) {
            return err(
                "sip.flood.max_receive_backlog".into(),
                "must be between 1 and 1000000",
            );
        }
        if f.overload_retry_after > 3600 {
            return err(
                "sip.flood.overload_retry_after".into(),
                "must be between 0 and 3600",
            );
        }
        if !(16..=10_000_000).contains(&f.max_tracked_sources) {
            return err(
                "sip.flood.max_tracked_sources".into(),
                "must be between 16 and 10000000",
            );
        }
        if f.scanner_user_agents.iter().any(|ua| ua.trim().is_empty()) {
            return err(
                "sip.flood.scanner_user_agents".into(),
                "entries must not be empty",
            );
        }
        let t = &self.tcp;
        if !(1..=1_000_000).contains(&t.max_connections) {
            return err(
                "sip.tcp.max_connections".into(),
                "must be between 1 and 1000000",
            );
        }
        if t.max_connections_per_source < 1 || t.max_connections_per_source > t.max_connections {
            return err(
                "sip.tcp.max_connections_per_source".into(),
                "must be between 1 and max_connections",
            );
        }
        if !(1..=3600).contains(&t.message_timeout_seconds) {
            return err(
                "sip.tcp.message_timeout_seconds".into(),
                "must be between 1 and 3600",
            );
        }
        if !(1..=86_400).contains(&t.idle_timeout_seconds) {
            return err(
                "sip.tcp.idle_timeout_seconds".into(),
                "must be between 1 and 86400",
            );
        }
        if self.tls_listen.is_some()
            && (self.tls_cert_file.is_none() || self.tls_key_file.is_none())
        {
            return err(
                "sip.tls_listen".into(),
                "needs sip.tls_cert_file and sip.tls_key_file",
            );
        }
        if self.tls_client_cert_file.is_some() != self.tls_client_key_file.is_some() {
            return err(
                "sip.tls_client_cert_file".into(),
                "needs sip.tls_client_key_file (and the key the certificate)",
            );
        }
        if self.server_header.chars().any(|c| c.is_control()) {
            return err(
                "sip.server_header".into(),
                "must not hold control characters",
            );
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UnknownSource {
    Reject,
    Drop,
}

/// A token bucket: `rate` requests per second on average, `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    pub rate: u32,
    pub burst: u32,
}

impl RateLimit {
    const fn new(rate: u32, burst: u32) -> Self {
        Self { rate, burst }
    }
}

/// One source's limits, by the method it sends (responses count as
/// `other`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MethodLimits {
    pub invite: RateLimit,
    pub register: RateLimit,
    pub options: RateLimit,
    pub other: RateLimit,
}

impl MethodLimits {
    /// Each limit with its key, in the order of the method classes.
    pub fn each(&self) -> [(&'static str, RateLimit); 4] {
        [
            ("invite", self.invite),
            ("register", self.register),
            ("options", self.options),
            ("other", self.other),
        ]
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FloodConfig {
    /// Off, nothing is counted or banned (for benchmarks only).
    pub enabled: bool,
    /// Limits of a source no trunk allows; going over bans it.
    pub stranger: MethodLimits,
    /// Limits of a source a trunk allows; going over throttles it (the
    /// excess is dropped) and logs, never bans.
    pub trunk: MethodLimits,
    /// How long a banned source gets nothing at all.
    pub ban_seconds: u32,
    /// Shortest time between two throttle log lines for one trunk source.
    pub trunk_throttle_seconds: u32,
    /// Failed digest authentications that ban a source no trunk allows.
    pub auth_failures_before_ban: u32,
    /// New INVITE server transactions alive at once; beyond, new INVITEs
    /// are dropped (the caller retransmits, or tries elsewhere).
    pub max_server_transactions: u32,
    /// Messages handed to the SIP stack that the daemon's runtime has not
    /// started on yet (its queue of tasks woken from outside); beyond, new
    /// INVITEs are refused at the edge. The stack spawns a task per
    /// message, so without this bound a backlog grows in memory for as
    /// long as the offered load exceeds what the machine serves.
    pub max_receive_backlog: u32,
    /// `Retry-After` seconds of the stateless 503 that a trunk source's
    /// INVITE refused for overload gets (RFC 3261 §21.5.4); 0 drops it
    /// without an answer instead.
    pub overload_retry_after: u32,
    /// Sources the guard keeps counters for; beyond, new strangers are
    /// dropped until idle ones expire.
    pub max_tracked_sources: u32,
    /// A request whose User-Agent contains one of these (any case) is
    /// dropped and its source banned for `ban_seconds`.
    pub scanner_user_agents: Vec<String>,
}

impl Default for FloodConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            stranger: MethodLimits {
                invite: RateLimit::new(5, 10),
                register: RateLimit::new(5, 10),
                options: RateLimit::new(5, 10),
                other: RateLimit::new(20, 40),
            },
            trunk: MethodLimits {
                invite: RateLimit::new(1000, 2000),
                register: RateLimit::new(200, 400),
                options: RateLimit::new(200, 400),
                other: RateLimit::new(4000, 8000),
            },
            ban_seconds: 600,
            trunk_throttle_seconds: 10,
            auth_failures_before_ban: 5,
            // Each INVITE waiting for the call layer's answer holds an ezk
            // transaction and its call state (about 100 KB under overload):
            // this bounds that memory (issue 14: 20,000 let RSS reach 3.9 GB
            // at 3,000 CPS offered beyond what the machine could serve).
            max_server_transactions: 1_000,
            // A queued INVITE costs its task until it runs, then an ezk
            // transaction (about 32 KB of channel) and a call task
            // (BENCHMARKS.md, memory under overload); 1,000 is half a
            // second of messages at 2,000 CPS.
            max_receive_backlog: 1_000,
            overload_retry_after: 5,
            max_tracked_sources: 100_000,
            scanner_user_agents: [
                "friendly-scanner",
                "sipcli",
                "sipvicious",
                "sip-scan",
                "sipsak",
                "iWar",
                "sundayddr",
                "VaxSIPUserAgent",
                "SIVuS",
            ]
            .map(String::from)
            .to_vec(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SipTcpConfig {
    /// Connections open at once, all sources together.
    pub max_connections: u32,
    /// Connections open at once from one source address.
    pub max_connections_per_source: u32,
    /// A message must be complete this long after its first byte
    /// (slow-loris clients are closed).
    pub message_timeout_seconds: u32,
    /// A connection with no complete message either way this long is closed.
    pub idle_timeout_seconds: u32,
}

impl Default for SipTcpConfig {
    fn default() -> Self {
        Self {
            max_connections: 1024,
            max_connections_per_source: 64,
            message_timeout_seconds: 30,
            idle_timeout_seconds: 120,
        }
    }
}

/// An inclusive UDP port range written `"20000-30000"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortRange {
    pub low: u16,
    pub high: u16,
}

impl std::str::FromStr for PortRange {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (low, high) = s
            .split_once('-')
            .ok_or_else(|| format!("expected \"LOW-HIGH\", found {s:?}"))?;
        let low: u16 = low
            .trim()
            .parse()
            .map_err(|_| format!("bad low port in {s:?}"))?;
        let high: u16 = high
            .trim()
            .parse()
            .map_err(|_| format!("bad high port in {s:?}"))?;
        // RTP wants an even port and RTCP the odd one above it (RFC 3550
        // section 11), so a usable range holds at least one such pair.
        if low == 0 || high <= low {
            return Err(format!("range {s:?} must be LOW-HIGH with 0 < LOW < HIGH"));
        }
        Ok(Self { low, high })
    }
}

impl Serialize for PortRange {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("{}-{}", self.low, self.high))
    }
}

impl<'de> Deserialize<'de> for PortRange {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}
