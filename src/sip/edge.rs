//! The edge: what decides about a packet before ezk parses it or any
//! transaction exists, like Kamailio's pike and htable modules together.
//!
//! For every datagram (and every framed TCP message) it sniffs the method
//! and the User-Agent from the raw bytes, then in this order:
//! 1. a banned source gets nothing;
//! 2. the handler says whether a trunk allows the source, or lets it try
//!    to authenticate ([`Admission::Authenticate`]);
//! 3. a per-source token bucket for the method's class (INVITE, REGISTER,
//!    OPTIONS, the rest) with separate limits for trusted sources (a trunk
//!    allows them, or they authenticated in the last
//!    [`AUTHENTICATED_FOR`]) and for strangers, including those that may
//!    still authenticate: a stranger over its limit is banned for
//!    `ban_seconds`, a trusted source is throttled (the excess dropped)
//!    and logged, never banned;
//! 4. a scanner User-Agent is dropped and its source banned;
//! 5. a stranger (one that may authenticate excepted: it goes on to the
//!    challenge) gets nothing (`unknown_source = "drop"`), or in `reject`
//!    mode one stateless 403 no larger than its request: the amplification
//!    factor toward a spoofed source stays at most 1, and there is no 100
//!    Trying and no retransmission (RFC 3261 §8.2.7 allows a stateless UAS);
//! 6. a new INVITE is refused when the stack is behind: beyond
//!    `max_server_transactions` live INVITE transactions, or with more
//!    than `max_receive_backlog` messages queued for the daemon's runtime
//!    and not yet started (ezk spawns a task per message; a queue that
//!    only grows while the offered load exceeds what the machine serves
//!    is where memory went under overload). A trunk source gets one
//!    stateless 503 with `Retry-After` (RFC 3261 §21.5.4), no larger than
//!    its INVITE, so it stops retransmitting and may try elsewhere; the
//!    rest is dropped. In-dialog requests (ACK, BYE) always pass: they
//!    end calls, which frees what the stack holds.
//!
//! Responses come from peers we sent requests to; they pass with the trunk
//! limits whoever sends them, as they can never draw an answer.
//!
//! Must not parse SIP properly or hold per-request state: it sees bytes,
//! and keeps one small entry per source (bounded by `max_tracked_sources`).

use super::base::{Admission, RequestSource, Transport};
use crate::config::{FloodConfig, MethodLimits, RateLimit, UnknownSource};
use crate::metrics::{
    SIP_BANNED_SOURCES, SIP_INVITES_IN_PROGRESS, SIP_RECEIVE_BACKLOG, SIP_REQUESTS_REJECTED_TOTAL,
};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

/// How long a source with full buckets and no ban is remembered.
const IDLE_FORGET: Duration = Duration::from_secs(60);
/// How long a source that authenticated (digest, `sip::auth`) counts as
/// trusted: its in-dialog requests carry no credentials.
pub(crate) const AUTHENTICATED_FOR: Duration = Duration::from_secs(3600);

/// What the edge decided about one message.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Hand it to the stack. `trusted`: a trunk allows the source or it
    /// authenticated; only those get the receive path's own stateless
    /// answers (400, 416).
    Pass { trusted: bool },
    /// A keepalive (RFC 5626 §4.4.1 CRLFCRLF) from an admitted source:
    /// answer CRLF.
    KeepAlive,
    /// Send nothing; the reason labels the metric.
    Drop(&'static str),
    /// Send this once to the packet's source, keep nothing.
    Reply(Vec<u8>),
    /// Overload: send this stateless 503 once to an admitted source and
    /// keep its connection; nothing else happens for the message.
    Busy(Vec<u8>),
}

/// How many messages the daemon's runtime has queued and not started.
pub(crate) type Backlog = Arc<dyn Fn() -> usize + Send + Sync>;

/// The daemon runtime's queue of tasks woken or spawned from outside its
/// workers: the UDP reader runs on a runtime of its own, so every message
/// it hands to ezk (which spawns a task for it) waits there until a
/// worker takes it. Zero outside a runtime.
fn runtime_backlog() -> Backlog {
    match tokio::runtime::Handle::try_current() {
        Ok(runtime) => Arc::new(move || runtime.metrics().global_queue_depth()),
        Err(_) => Arc::new(|| 0),
    }
}

/// The method classes that have limits of their own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    Invite = 0,
    Register = 1,
    Options = 2,
    Other = 3,
}

struct Bucket {
    tokens: f64,
    refilled: Instant,
}

impl Bucket {
    fn full(limit: RateLimit, now: Instant) -> Self {
        Self {
            tokens: f64::from(limit.burst),
            refilled: now,
        }
    }

    /// Takes one token; false when the bucket is empty.
    fn take(&mut self, limit: RateLimit, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.tokens = (self.tokens + elapsed * f64::from(limit.rate)).min(f64::from(limit.burst));
        self.refilled = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// What the edge remembers about one source address.
struct SourceState {
    buckets: [Bucket; 4],
    /// Whether the buckets were filled with trunk limits (a reload, or an
    /// authentication, that changes it restarts them).
    trunk: bool,
    /// Until when a digest authentication makes the source trusted.
    authenticated_until: Option<Instant>,
    last_seen: Instant,
    banned_until: Option<Instant>,
    /// Last throttle log line of a trunk source.
    throttle_logged: Option<Instant>,
    auth_failures: u32,
}

impl SourceState {
    fn new(limits: &MethodLimits, trunk: bool, now: Instant) -> Self {
        Self {
            buckets: limits.each().map(|(_, limit)| Bucket::full(limit, now)),
            trunk,
            authenticated_until: None,
            last_seen: now,
            banned_until: None,
            throttle_logged: None,
            auth_failures: 0,
        }
    }

    fn banned(&self, now: Instant) -> bool {
        self.banned_until.is_some_and(|until| until > now)
    }

    fn authenticated(&self, now: Instant) -> bool {
        self.authenticated_until.is_some_and(|until| until > now)
    }
}

/// Whether a trunk allows a source: the handler's `admit`, passed in so
/// that the edge sits below `inbound`.
pub(crate) type Admit = Arc<dyn Fn(&RequestSource) -> Admission + Send + Sync>;

/// The flood guard and admission policy of one SIP stack. Cheap to share.
pub(crate) struct EdgeGuard {
    config: FloodConfig,
    unknown_source: UnknownSource,
    admit: Admit,
    sources: Mutex<HashMap<IpAddr, SourceState>>,
    /// Inbound INVITE server transactions alive now.
    live_invites: AtomicUsize,
    /// Messages queued for the daemon's runtime, not yet started.
    backlog: Backlog,
    /// Lower-cased scanner User-Agent needles.
    scanners: Vec<Vec<u8>>,
    /// Whether the sweep sets the gauges (see `SipConfig::edge_gauges`).
    gauges: AtomicBool,
}

impl EdgeGuard {
    pub(crate) fn new(
        config: FloodConfig,
        unknown_source: UnknownSource,
        admit: Admit,
    ) -> Arc<Self> {
        Self::with_backlog(config, unknown_source, admit, runtime_backlog())
    }

    /// [`EdgeGuard::new`] with the runtime backlog read from `backlog`.
    pub(crate) fn with_backlog(
        config: FloodConfig,
        unknown_source: UnknownSource,
        admit: Admit,
        backlog: Backlog,
    ) -> Arc<Self> {
        let scanners = config
            .scanner_user_agents
            .iter()
            .map(|ua| ua.to_ascii_lowercase().into_bytes())
            .collect();
        let guard = Arc::new(Self {
            config,
            unknown_source,
            admit,
            sources: Mutex::new(HashMap::new()),
            live_invites: AtomicUsize::new(0),
            backlog,
            scanners,
            gauges: AtomicBool::new(true),
        });
        tokio::spawn(sweep(Arc::downgrade(&guard)));
        guard
    }

    /// The sweep stops setting the `agentline_sip_*` gauges (a helper
    /// stack's edge; the daemon's own sets them).
    pub(crate) fn stop_gauges(&self) {
        self.gauges.store(false, Ordering::Relaxed);
    }

    fn sources(&self) -> MutexGuard<'_, HashMap<IpAddr, SourceState>> {
        // A panic while holding the lock leaves counters only: keep going.
        self.sources.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// What the handler says about `addr` (TCP asks at accept).
    pub(crate) fn admission(
        &self,
        addr: SocketAddr,
        transport: Transport,
        method: &str,
    ) -> Admission {
        (self.admit)(&RequestSource {
            addr,
            transport,
            method: method.to_owned(),
        })
    }

    /// Marks `ip` as authenticated (a valid digest, `sip::auth`): trusted
    /// limits for [`AUTHENTICATED_FOR`], its failures forgiven.
    pub(crate) fn authenticated(&self, ip: IpAddr) {
        let ip = ip.to_canonical();
        let now = Instant::now();
        let mut sources = self.sources();
        let state = sources
            .entry(ip)
            .or_insert_with(|| SourceState::new(&self.config.stranger, false, now));
        state.authenticated_until = Some(now + AUTHENTICATED_FOR);
        state.auth_failures = 0;
        state.last_seen = now;
    }

    /// Whether strangers get one stateless answer (`reject` mode) rather
    /// than silence.
    pub(crate) fn rejects_strangers(&self) -> bool {
        self.unknown_source == UnknownSource::Reject
    }

    /// Whether `ip` is banned now.
    pub(crate) fn is_banned(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        let now = Instant::now();
        self.sources().get(&ip).is_some_and(|s| s.banned(now))
    }

    /// Counts one failed authentication (digest) from `ip`; after
    /// `auth_failures_before_ban` of them a source no trunk allows is
    /// banned like a flooding one. For the inbound digest auth layer.
    pub fn penalize(&self, ip: IpAddr) {
        let ip = ip.to_canonical();
        let trunk =
            self.admission(SocketAddr::new(ip, 0), Transport::Udp, "REGISTER") == Admission::Admit;
        let now = Instant::now();
        let mut sources = self.sources();
        let limits = self.limits(trunk);
        let state = sources
            .entry(ip)
            .or_insert_with(|| SourceState::new(limits, trunk, now));
        state.auth_failures += 1;
        state.last_seen = now;
        if !trunk && state.auth_failures >= self.config.auth_failures_before_ban {
            self.ban(ip, state, now, "auth_failures");
        }
    }

    fn limits(&self, trunk: bool) -> &MethodLimits {
        if trunk {
            &self.config.trunk
        } else {
            &self.config.stranger
        }
    }

    fn ban(&self, ip: IpAddr, state: &mut SourceState, now: Instant, reason: &'static str) {
        if state.banned(now) {
            return;
        }
        let seconds = self.config.ban_seconds;
        state.banned_until = Some(now + Duration::from_secs(u64::from(seconds)));
        metrics::gauge!(SIP_BANNED_SOURCES).increment(1.0);
        tracing::warn!(source = %ip, reason, seconds, "SIP source banned");
    }

    /// The decision about one message from `source`.
    pub(crate) fn inspect(&self, source: SocketAddr, transport: Transport, raw: &[u8]) -> Verdict {
        let verdict = self.decide(source, transport, raw);
        if let Verdict::Drop(reason) = verdict {
            metrics::counter!(SIP_REQUESTS_REJECTED_TOTAL, "reason" => reason).increment(1);
        }
        verdict
    }

    fn decide(&self, source: SocketAddr, transport: Transport, raw: &[u8]) -> Verdict {
        // An IPv4 peer on a dual-stack `[::]` socket arrives as
        // ::ffff:a.b.c.d (RFC 4291 §2.5.5.2): one source, one entry.
        let ip = source.ip().to_canonical();
        let now = Instant::now();
        if self.config.enabled && self.sources().get(&ip).is_some_and(|s| s.banned(now)) {
            return Verdict::Drop("banned");
        }
        let sniff = Sniff::of(raw);
        // Responses answer requests we sent, to peers we chose (ezk drops
        // those that match no transaction, and never answers them): they
        // are counted with trunk limits, throttled but never banned.
        let admission = if sniff.response {
            Admission::Admit
        } else {
            self.admission(source, transport, sniff.method_text())
        };
        let mut trunk = admission == Admission::Admit;

        if self.config.enabled {
            let class = sniff.class();
            let mut sources = self.sources();
            // A source that authenticated counts as trusted.
            trunk = trunk || sources.get(&ip).is_some_and(|s| s.authenticated(now));
            let limits = self.limits(trunk);
            let limit = limits.each()[class as usize].1;
            if !sources.contains_key(&ip)
                && sources.len() >= self.config.max_tracked_sources as usize
            {
                forget_idle(&mut sources, now);
                if !trunk && sources.len() >= self.config.max_tracked_sources as usize {
                    return Verdict::Drop("overload");
                }
            }
            let state = sources
                .entry(ip)
                .or_insert_with(|| SourceState::new(limits, trunk, now));
            if state.trunk != trunk {
                // The profiles were reloaded, or the source authenticated:
                // count with the new limits.
                let authenticated_until = state.authenticated_until;
                *state = SourceState::new(limits, trunk, now);
                state.authenticated_until = authenticated_until;
            }
            state.last_seen = now;
            if !state.buckets[class as usize].take(limit, now) {
                if !trunk {
                    self.ban(ip, state, now, "rate");
                    return Verdict::Drop("rate_limited");
                }
                let period = Duration::from_secs(u64::from(self.config.trunk_throttle_seconds));
                if state
                    .throttle_logged
                    .is_none_or(|at| now.saturating_duration_since(at) >= period)
                {
                    state.throttle_logged = Some(now);
                    tracing::warn!(
                        source = %ip,
                        class = ?class,
                        rate = limit.rate,
                        burst = limit.burst,
                        "trunk source over its SIP rate limit, excess dropped"
                    );
                }
                return Verdict::Drop("throttled");
            }
            if sniff.user_agent.is_some_and(|ua| self.is_scanner(ua)) {
                // Whoever admits it (a trunk with inbound auth admits
                // strangers to its challenge): a scanner is banned, for
                // `ban_seconds`, never for ever.
                self.ban(ip, state, now, "scanner");
                return Verdict::Drop("scanner");
            }
        }

        if sniff.keepalive {
            return if trunk {
                Verdict::KeepAlive
            } else {
                Verdict::Drop("not_admitted")
            };
        }
        if admission == Admission::Drop && !trunk {
            return match self.unknown_source {
                UnknownSource::Drop => Verdict::Drop("not_admitted"),
                UnknownSource::Reject => match forbidden(raw, &sniff) {
                    Some(reply) => Verdict::Reply(reply),
                    None => Verdict::Drop("not_admitted"),
                },
            };
        }
        if sniff.class() == Class::Invite && self.overloaded() {
            return self.refuse_overload(raw, trunk);
        }
        Verdict::Pass { trusted: trunk }
    }

    /// Whether a new INVITE would be more than the stack holds: too many
    /// INVITE transactions in progress, or too many messages waiting for
    /// the runtime (those become transactions and call tasks later, past
    /// the first check).
    fn overloaded(&self) -> bool {
        self.live_invites.load(Ordering::Relaxed) >= self.config.max_server_transactions as usize
            || (self.backlog)() >= self.config.max_receive_backlog as usize
    }

    /// A refused INVITE: a stateless 503 with `Retry-After` to a trunk
    /// source (unless `overload_retry_after` is 0), never larger than the
    /// request; otherwise dropped. Counted as `overload` either way.
    fn refuse_overload(&self, raw: &[u8], trunk: bool) -> Verdict {
        let seconds = self.config.overload_retry_after;
        let reply = (trunk && seconds > 0)
            .then(|| stateless(raw, "503 Service Unavailable", true))
            .flatten()
            .and_then(|mut reply| {
                // Before the closing `Content-Length: 0` and blank line.
                let tail = b"Content-Length: 0\r\n\r\n".len();
                let at = reply.len().checked_sub(tail)?;
                let header = format!("Retry-After: {seconds}\r\n");
                reply.splice(at..at, header.into_bytes());
                (reply.len() <= raw.len()).then_some(reply)
            });
        match reply {
            Some(reply) => {
                metrics::counter!(SIP_REQUESTS_REJECTED_TOTAL, "reason" => "overload").increment(1);
                Verdict::Busy(reply)
            }
            None => Verdict::Drop("overload"),
        }
    }

    /// Messages queued for the daemon's runtime now (for the gauge).
    fn backlog(&self) -> usize {
        (self.backlog)()
    }

    fn is_scanner(&self, user_agent: &[u8]) -> bool {
        let ua = user_agent.to_ascii_lowercase();
        self.scanners
            .iter()
            .any(|needle| ua.windows(needle.len()).any(|w| w == needle.as_slice()))
    }

    /// Counts one inbound INVITE server transaction until the slot drops.
    pub(crate) fn invite_slot(self: &Arc<Self>) -> InviteSlot {
        self.live_invites.fetch_add(1, Ordering::Relaxed);
        InviteSlot(Arc::clone(self))
    }
}

/// One live inbound INVITE transaction, counted against
/// `max_server_transactions`.
pub(crate) struct InviteSlot(Arc<EdgeGuard>);

impl Drop for InviteSlot {
    fn drop(&mut self) {
        self.0.live_invites.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Drops sources that are idle, not banned and not authenticated;
/// recounts the banned gauge.
fn forget_idle(sources: &mut HashMap<IpAddr, SourceState>, now: Instant) -> usize {
    sources.retain(|_, s| {
        s.banned(now)
            || s.authenticated(now)
            || now.saturating_duration_since(s.last_seen) < IDLE_FORGET
    });
    sources.values().filter(|s| s.banned(now)).count()
}

/// Once a second: forget idle sources, end expired bans, set the gauge.
async fn sweep(guard: Weak<EdgeGuard>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        let Some(guard) = guard.upgrade() else {
            return;
        };
        let now = Instant::now();
        let banned = forget_idle(&mut guard.sources(), now);
        if !guard.gauges.load(Ordering::Relaxed) {
            continue;
        }
        metrics::gauge!(SIP_BANNED_SOURCES).set(banned as f64);
        metrics::gauge!(SIP_RECEIVE_BACKLOG).set(guard.backlog() as f64);
        metrics::gauge!(SIP_INVITES_IN_PROGRESS)
            .set(guard.live_invites.load(Ordering::Relaxed) as f64);
    }
}

/// What the edge reads from a message's raw bytes.
struct Sniff<'a> {
    /// The first token of the start line (`SIP/2.0` for a response).
    method: &'a [u8],
    response: bool,
    keepalive: bool,
    user_agent: Option<&'a [u8]>,
}

impl<'a> Sniff<'a> {
    fn of(raw: &'a [u8]) -> Self {
        let keepalive = raw.iter().all(|b| *b == b'\r' || *b == b'\n');
        let mut lines = header_lines(raw);
        let start = lines.next().unwrap_or_default();
        let method = start.split(|b| *b == b' ').next().unwrap_or_default();
        let user_agent = lines.find_map(|line| header_value(line, &[b"user-agent"]));
        Self {
            method,
            response: method.starts_with(b"SIP/"),
            keepalive,
            user_agent,
        }
    }

    fn class(&self) -> Class {
        if self.response {
            return Class::Other;
        }
        match self.method {
            b"INVITE" => Class::Invite,
            b"REGISTER" => Class::Register,
            b"OPTIONS" => Class::Options,
            _ => Class::Other,
        }
    }

    /// The method for the admission question: a known one by name, else
    /// `other` (or `response`).
    fn method_text(&self) -> &'static str {
        const KNOWN: &[&str] = &[
            "INVITE",
            "ACK",
            "BYE",
            "CANCEL",
            "OPTIONS",
            "REGISTER",
            "INFO",
            "UPDATE",
            "PRACK",
            "NOTIFY",
            "SUBSCRIBE",
            "REFER",
            "MESSAGE",
        ];
        if self.response {
            return "response";
        }
        KNOWN
            .iter()
            .find(|m| m.as_bytes() == self.method)
            .copied()
            .unwrap_or("other")
    }
}

/// The lines of the message head, without their CRLF, up to the blank line.
fn header_lines(raw: &[u8]) -> impl Iterator<Item = &[u8]> {
    raw.split(|b| *b == b'\n')
        .map(|line| line.strip_suffix(b"\r").unwrap_or(line))
        .take_while(|line| !line.is_empty())
}

/// The value of `line` when its header name is one of `names` (lower case).
fn header_value<'a>(line: &'a [u8], names: &[&[u8]]) -> Option<&'a [u8]> {
    let colon = line.iter().position(|b| *b == b':')?;
    let name = line[..colon].trim_ascii();
    names
        .iter()
        .any(|n| name.eq_ignore_ascii_case(n))
        .then(|| line[colon + 1..].trim_ascii())
}

/// A stateless 403 (RFC 3261 §8.2.6: Via, From, To, Call-ID and CSeq
/// copied, a To tag added), or `None` for an ACK, a response, a request
/// missing one of them, or when the answer would be longer than the
/// request.
fn forbidden(raw: &[u8], sniff: &Sniff<'_>) -> Option<Vec<u8>> {
    if sniff.response || sniff.keepalive || sniff.method == b"ACK" || sniff.method.is_empty() {
        return None;
    }
    stateless(raw, "403 Forbidden", true)
}

/// A stateless final response to `raw` (RFC 3261 §8.2.6: Via, From, To,
/// Call-ID and CSeq copied, a To tag added), never longer than the request.
/// With `complete`, `None` unless all five are there; without, those there
/// are copied (a 400 for a missing one). `None` for an ACK, a response, or
/// a request without Via (no way back).
pub(crate) fn stateless(raw: &[u8], status: &str, complete: bool) -> Option<Vec<u8>> {
    let sniff = Sniff::of(raw);
    if sniff.response || sniff.keepalive || sniff.method == b"ACK" || sniff.method.is_empty() {
        return None;
    }
    let mut vias = Vec::new();
    let (mut from, mut to, mut call_id, mut cseq) = (None, None, None, None);
    for line in header_lines(raw).skip(1) {
        if let Some(v) = header_value(line, &[b"via", b"v"]) {
            vias.push(v);
        } else if let Some(v) = header_value(line, &[b"from", b"f"]) {
            from = Some(v);
        } else if let Some(v) = header_value(line, &[b"to", b"t"]) {
            to = Some(v);
        } else if let Some(v) = header_value(line, &[b"call-id", b"i"]) {
            call_id = Some(v);
        } else if let Some(v) = header_value(line, &[b"cseq"]) {
            cseq = Some(v);
        }
    }
    if complete && (from.is_none() || to.is_none() || call_id.is_none() || cseq.is_none()) {
        return None;
    }
    if vias.is_empty() {
        return None;
    }
    let mut out = Vec::with_capacity(raw.len());
    out.extend_from_slice(b"SIP/2.0 ");
    out.extend_from_slice(status.as_bytes());
    out.extend_from_slice(b"\r\n");
    for via in vias {
        push_header(&mut out, b"Via", via);
    }
    if let Some(from) = from {
        push_header(&mut out, b"From", from);
    }
    if let Some(to) = to {
        let tagged = to.to_ascii_lowercase().windows(5).any(|w| w == b";tag=");
        if tagged {
            push_header(&mut out, b"To", to);
        } else {
            let mut with_tag = to.to_vec();
            with_tag.extend_from_slice(b";tag=");
            with_tag.extend_from_slice(super::random_token().as_bytes());
            push_header(&mut out, b"To", &with_tag);
        }
    }
    if let Some(call_id) = call_id {
        push_header(&mut out, b"Call-ID", call_id);
    }
    if let Some(cseq) = cseq {
        push_header(&mut out, b"CSeq", cseq);
    }
    out.extend_from_slice(b"Content-Length: 0\r\n\r\n");
    (out.len() <= raw.len()).then_some(out)
}

fn push_header(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    const TRUNK: &str = "127.0.0.1:5080";
    const STRANGER: &str = "127.0.0.2:5080";

    fn guard(mode: UnknownSource, config: FloodConfig) -> Arc<EdgeGuard> {
        let trunk = IpAddr::from([127, 0, 0, 1]);
        let admit: Admit = Arc::new(move |source: &RequestSource| {
            if source.addr.ip() == trunk {
                Admission::Admit
            } else {
                Admission::Drop
            }
        });
        EdgeGuard::new(config, mode, admit)
    }

    fn invite(to_tag: bool, ua: &str) -> Vec<u8> {
        let tag = if to_tag { ";tag=abc" } else { "" };
        format!(
            "INVITE sip:+4930123@127.0.0.9 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.2:5080;branch=z9hG4bK1\r\n\
             Max-Forwards: 70\r\nFrom: <sip:a@127.0.0.2>;tag=1\r\nTo: <sip:+4930123@127.0.0.9>{tag}\r\n\
             Call-ID: c1\r\nCSeq: 1 INVITE\r\nContact: <sip:a@127.0.0.2:5080>\r\nUser-Agent: {ua}\r\n\
             Content-Length: 0\r\n\r\n"
        )
        .into_bytes()
    }

    fn addr(s: &str) -> SocketAddr {
        s.parse().expect("addr")
    }

    #[tokio::test]
    async fn strangers_get_nothing_by_default_and_trunks_pass() {
        let g = guard(UnknownSource::Drop, FloodConfig::default());
        for tagged in [false, true] {
            let raw = invite(tagged, "x");
            let verdict = g.inspect(addr(STRANGER), Transport::Udp, &raw);
            assert_eq!(verdict, Verdict::Drop("not_admitted"));
            assert_eq!(
                g.inspect(addr(TRUNK), Transport::Udp, &raw),
                Verdict::Pass { trusted: true }
            );
        }
    }

    #[tokio::test]
    async fn reject_mode_answers_once_no_larger_than_the_request() {
        let g = guard(UnknownSource::Reject, FloodConfig::default());
        for tagged in [false, true] {
            let raw = invite(tagged, "x");
            let Verdict::Reply(reply) = g.inspect(addr(STRANGER), Transport::Udp, &raw) else {
                panic!("no reply");
            };
            let text = String::from_utf8(reply.clone()).expect("utf8");
            assert!(text.starts_with("SIP/2.0 403 Forbidden\r\n"), "{text}");
            assert!(
                text.contains("\r\nTo: <sip:+4930123@127.0.0.9>;tag="),
                "{text}"
            );
            assert!(text.contains("\r\nCSeq: 1 INVITE\r\n"), "{text}");
            assert!(reply.len() <= raw.len());
        }
        // An ACK gets nothing.
        let ack = String::from_utf8(invite(true, "x"))
            .expect("utf8")
            .replace("INVITE", "ACK");
        assert_eq!(
            g.inspect(addr(STRANGER), Transport::Udp, ack.as_bytes()),
            Verdict::Drop("not_admitted")
        );
    }

    #[tokio::test]
    async fn a_stranger_over_its_limit_is_banned_and_a_trunk_only_throttled() {
        let g = guard(UnknownSource::Reject, FloodConfig::default());
        let raw = invite(false, "x");
        let burst = FloodConfig::default().stranger.invite.burst;
        for _ in 0..burst {
            assert!(matches!(
                g.inspect(addr(STRANGER), Transport::Udp, &raw),
                Verdict::Reply(_)
            ));
        }
        assert_eq!(
            g.inspect(addr(STRANGER), Transport::Udp, &raw),
            Verdict::Drop("rate_limited")
        );
        assert!(g.is_banned(addr(STRANGER).ip()));
        assert_eq!(
            g.inspect(addr(STRANGER), Transport::Udp, &raw),
            Verdict::Drop("banned")
        );

        let mut config = FloodConfig::default();
        config.trunk.invite = RateLimit { rate: 1, burst: 2 };
        let g = guard(UnknownSource::Drop, config);
        assert_eq!(
            g.inspect(addr(TRUNK), Transport::Udp, &raw),
            Verdict::Pass { trusted: true }
        );
        assert_eq!(
            g.inspect(addr(TRUNK), Transport::Udp, &raw),
            Verdict::Pass { trusted: true }
        );
        assert_eq!(
            g.inspect(addr(TRUNK), Transport::Udp, &raw),
            Verdict::Drop("throttled")
        );
        assert!(!g.is_banned(addr(TRUNK).ip()));
        // Other methods have buckets of their own.
        let options = String::from_utf8(raw)
            .expect("utf8")
            .replace("INVITE", "OPTIONS");
        assert_eq!(
            g.inspect(addr(TRUNK), Transport::Udp, options.as_bytes()),
            Verdict::Pass { trusted: true }
        );
    }

    #[tokio::test]
    async fn scanners_are_dropped_and_strangers_among_them_banned() {
        let g = guard(UnknownSource::Reject, FloodConfig::default());
        let raw = invite(false, "friendly-scanner");
        assert_eq!(
            g.inspect(addr(STRANGER), Transport::Udp, &raw),
            Verdict::Drop("scanner")
        );
        assert!(g.is_banned(addr(STRANGER).ip()));
        let raw = invite(false, "SIPVicious 0.3.3");
        assert_eq!(
            g.inspect(addr(TRUNK), Transport::Udp, &raw),
            Verdict::Drop("scanner")
        );
        assert!(g.is_banned(addr(TRUNK).ip()));
    }

    /// A stranger let through only to a digest challenge keeps the
    /// stranger limits (and is banned over them) until it authenticated;
    /// then it has the trunk limits.
    #[tokio::test]
    async fn a_source_that_may_authenticate_is_a_stranger_until_it_does() {
        let admit: Admit = Arc::new(|_: &RequestSource| Admission::Authenticate);
        let g = EdgeGuard::new(FloodConfig::default(), UnknownSource::Drop, admit);
        let raw = invite(false, "x");
        let burst = FloodConfig::default().stranger.invite.burst;
        for _ in 0..burst {
            assert_eq!(
                g.inspect(addr(STRANGER), Transport::Udp, &raw),
                Verdict::Pass { trusted: false }
            );
        }
        assert_eq!(
            g.inspect(addr(STRANGER), Transport::Udp, &raw),
            Verdict::Drop("rate_limited")
        );
        assert!(g.is_banned(addr(STRANGER).ip()));

        let other = addr("127.0.0.3:5080");
        g.authenticated(other.ip());
        for _ in 0..burst * 2 {
            assert_eq!(
                g.inspect(other, Transport::Udp, &raw),
                Verdict::Pass { trusted: true }
            );
        }
        assert!(!g.is_banned(other.ip()));
    }

    #[tokio::test]
    async fn auth_failures_ban_a_stranger() {
        let g = guard(UnknownSource::Drop, FloodConfig::default());
        let ip = addr(STRANGER).ip();
        for _ in 1..FloodConfig::default().auth_failures_before_ban {
            g.penalize(ip);
            assert!(!g.is_banned(ip));
        }
        g.penalize(ip);
        assert!(g.is_banned(ip));
    }

    #[tokio::test]
    async fn the_invite_cap_refuses_new_invites_from_trunks() {
        let config = FloodConfig {
            max_server_transactions: 1,
            ..FloodConfig::default()
        };
        let g = guard(UnknownSource::Drop, config);
        let raw = invite(false, "x");
        let slot = g.invite_slot();
        assert!(matches!(
            g.inspect(addr(TRUNK), Transport::Udp, &raw),
            Verdict::Busy(_)
        ));
        drop(slot);
        assert_eq!(
            g.inspect(addr(TRUNK), Transport::Udp, &raw),
            Verdict::Pass { trusted: true }
        );
    }

    fn guard_with_backlog(config: FloodConfig, queued: Arc<AtomicUsize>) -> Arc<EdgeGuard> {
        let trunk = IpAddr::from([127, 0, 0, 1]);
        let admit: Admit = Arc::new(move |source: &RequestSource| {
            if source.addr.ip() == trunk {
                Admission::Admit
            } else {
                Admission::Drop
            }
        });
        let backlog: Backlog = Arc::new(move || queued.load(Ordering::Relaxed));
        EdgeGuard::with_backlog(config, UnknownSource::Drop, admit, backlog)
    }

    #[tokio::test]
    async fn a_full_receive_backlog_refuses_new_invites_with_one_503() {
        let config = FloodConfig {
            max_receive_backlog: 10,
            ..FloodConfig::default()
        };
        let queued = Arc::new(AtomicUsize::new(9));
        let g = guard_with_backlog(config, Arc::clone(&queued));
        let raw = invite(false, "x");
        assert_eq!(
            g.inspect(addr(TRUNK), Transport::Udp, &raw),
            Verdict::Pass { trusted: true }
        );
        queued.store(10, Ordering::Relaxed);
        let Verdict::Busy(reply) = g.inspect(addr(TRUNK), Transport::Udp, &raw) else {
            panic!("an INVITE over the backlog bound passed");
        };
        let text = String::from_utf8_lossy(&reply);
        assert!(
            text.starts_with("SIP/2.0 503 Service Unavailable\r\n"),
            "{text}"
        );
        assert!(text.contains("\r\nRetry-After: 5\r\n"), "{text}");
        assert!(text.contains("\r\nCall-ID: c1\r\n"), "{text}");
        assert!(text.ends_with("Content-Length: 0\r\n\r\n"), "{text}");
        assert!(reply.len() <= raw.len(), "{text}");
        // What ends calls still passes: a BYE frees what the stack holds.
        let bye = String::from_utf8_lossy(&raw)
            .replacen("INVITE sip:", "BYE sip:", 1)
            .replace("CSeq: 1 INVITE", "CSeq: 2 BYE");
        assert_eq!(
            g.inspect(addr(TRUNK), Transport::Udp, bye.as_bytes()),
            Verdict::Pass { trusted: true }
        );
        // A stranger gets nothing, overload or not.
        assert_eq!(
            g.inspect(addr(STRANGER), Transport::Udp, &raw),
            Verdict::Drop("not_admitted")
        );
        queued.store(0, Ordering::Relaxed);
        assert_eq!(
            g.inspect(addr(TRUNK), Transport::Udp, &raw),
            Verdict::Pass { trusted: true }
        );
    }

    #[tokio::test]
    async fn overload_with_no_retry_after_drops_the_invite() {
        let config = FloodConfig {
            max_receive_backlog: 1,
            overload_retry_after: 0,
            ..FloodConfig::default()
        };
        let g = guard_with_backlog(config, Arc::new(AtomicUsize::new(1)));
        assert_eq!(
            g.inspect(addr(TRUNK), Transport::Udp, &invite(false, "x")),
            Verdict::Drop("overload")
        );
    }

    #[tokio::test]
    async fn a_503_that_would_outgrow_the_invite_is_not_sent() {
        let config = FloodConfig {
            max_receive_backlog: 1,
            ..FloodConfig::default()
        };
        let g = guard_with_backlog(config, Arc::new(AtomicUsize::new(1)));
        // No Contact, Max-Forwards or User-Agent to spare: the 503 and its
        // Retry-After would be longer than the request.
        let raw = b"INVITE sip:1@h SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\n\
                    From: <sip:a@h>;tag=1\r\nTo: <sip:1@h>\r\nCall-ID: c\r\nCSeq: 1 INVITE\r\n\r\n";
        assert_eq!(
            g.inspect(addr(TRUNK), Transport::Udp, raw),
            Verdict::Drop("overload")
        );
    }
}
