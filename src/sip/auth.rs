//! Inbound digest authentication (RFC 3261 §22.4, RFC 7616; RFC 2617 §3.2.2
//! for answers without qop): a request from a source that the handler says
//! must authenticate ([`InboundHandler::digest_accounts`]) goes on only with
//! a valid `Authorization`; otherwise it gets a 401 challenge.
//!
//! - Nonces carry their issue time and are keyed with an HMAC over that
//!   time and the source address: checking one needs no state, so a
//!   stranger costs us nothing but the 401. A nonce older than
//!   [`NONCE_TTL`] is refused as `stale=true` when the digest was right.
//! - Replay: a nonce that has authenticated once is remembered until it
//!   expires; with qop=auth its nonce count must grow, without qop it is
//!   single use. Only authenticated requests add state, and it is bounded.
//! - The 401 is sent without a transaction (§8.2.7, a stateless UAS), so it
//!   is never resent: one datagram answers one, and never a larger one
//!   (a request smaller than its challenge gets none).
//! - A failed attempt counts against the source in the edge's shared ban
//!   list ([`EdgeGuard::penalize`]): after `sip.flood.auth_failures_before_ban`
//!   a source no trunk allows is banned for `sip.flood.ban_seconds`, like a
//!   flooding one, and the edge drops it before any parse. A valid digest
//!   makes the source trusted at the edge ([`EdgeGuard::authenticated`]):
//!   until then it has the stranger limits.
//!
//! Must not: challenge requests inside a dialog, ACK or CANCEL (§22.1), or
//! keep state for a source that never authenticated beyond its failure
//! count.

use super::base::{DigestAccount, LocalIdentity, RequestSource};
use super::edge::EdgeGuard;
use super::inbound::{InboundHandler, InviteInfo};
use crate::metrics::SIP_REQUESTS_REJECTED_TOTAL;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use ezk_sip_core::{Endpoint, IncomingRequest, Layer, MayTake};
use ezk_sip_types::header::typed::{
    Algorithm, AlgorithmValue, AuthResponse, DigestResponse, QopOption, Username,
};
use ezk_sip_types::print::AppendCtx;
use ezk_sip_types::{Headers, Method, Name, StatusCode};
use hmac::{Hmac, Mac};
use rand::Rng;
use sha2::Sha256;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use subtle::ConstantTimeEq;

/// How long a nonce may be used (RFC 7616 §3.3 leaves it to the server).
pub(crate) const NONCE_TTL: Duration = Duration::from_secs(300);
/// Bound on remembered nonces.
const MAX_TRACKED: usize = 65_536;

/// The realm and username of the digest credentials an INVITE carried.
/// Once the INVITE reached the handler from a source that had to
/// authenticate, [`AuthLayer`] has verified them.
pub fn digest_identity(info: &InviteInfo) -> Option<(String, String)> {
    let mut headers = Headers::new();
    headers.insert(Name::AUTHORIZATION, info.header("Authorization")?);
    match headers.get::<AuthResponse>(Name::AUTHORIZATION).ok()? {
        AuthResponse::Digest(DigestResponse {
            username: Username::Username(username),
            realm,
            ..
        }) => Some((realm.to_string(), username.to_string())),
        _ => None,
    }
}

/// The verdict on a request's credentials.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    Valid,
    /// No Authorization: the first step of every handshake.
    Missing,
    /// Right digest, expired nonce: challenge again with `stale=true`.
    Stale,
    /// Wrong or forged: counts against the source.
    Failed(&'static str),
}

pub(crate) struct AuthLayer {
    /// Says which sources must authenticate, and with what.
    handler: Arc<dyn InboundHandler>,
    nonces: Nonces,
    replays: Mutex<Replays>,
    /// The shared ban list, and where a source becomes trusted.
    edge: Arc<EdgeGuard>,
    /// Tells a relayed TLS connection from a TCP one (the request's own
    /// handle is the loopback relay's TCP).
    local: Arc<LocalIdentity>,
}

impl AuthLayer {
    pub(crate) fn new(
        handler: Arc<dyn InboundHandler>,
        edge: Arc<EdgeGuard>,
        local: Arc<LocalIdentity>,
    ) -> Self {
        Self {
            handler,
            nonces: Nonces::new(),
            replays: Mutex::new(Replays::default()),
            edge,
            local,
        }
    }

    fn verify(
        &self,
        request: &IncomingRequest,
        accounts: &[DigestAccount],
        ip: IpAddr,
        now: u64,
    ) -> Verdict {
        let digest = match request.headers.try_get::<AuthResponse>(Name::AUTHORIZATION) {
            None => return Verdict::Missing,
            Some(Ok(AuthResponse::Digest(digest))) => digest,
            Some(_) => return Verdict::Failed("unreadable credentials"),
        };
        let Username::Username(username) = &digest.username else {
            return Verdict::Failed("unknown user");
        };
        let Some(account) = accounts
            .iter()
            .find(|a| a.username == username.as_str() && a.realm == digest.realm.as_str())
        else {
            return Verdict::Failed("unknown user or realm");
        };
        let Some(issued) = self.nonces.check(&digest.nonce, ip) else {
            return Verdict::Failed("nonce not ours");
        };
        let Some(expected) = expected_response(account, &request.line.method, &digest) else {
            return Verdict::Failed("unsupported algorithm or qop");
        };
        if !bool::from(expected.as_bytes().ct_eq(digest.response.as_bytes())) {
            return Verdict::Failed("wrong password");
        }
        if now.saturating_sub(issued) > NONCE_TTL.as_secs() {
            return Verdict::Stale;
        }
        let nc = digest.qop_response.as_ref().map(|q| q.nc);
        if !lock(&self.replays).fresh(&digest.nonce, nc, issued, now) {
            return Verdict::Failed("replayed nonce");
        }
        Verdict::Valid
    }

    /// 401 with a fresh nonce, sent once, outside any transaction.
    async fn challenge(
        &self,
        endpoint: &Endpoint,
        request: &IncomingRequest,
        accounts: &[DigestAccount],
        stale: bool,
        now: u64,
    ) {
        let nonce = self.nonces.issue(request.tp_info.source.ip(), now);
        let mut response = endpoint.create_response(request, StatusCode::UNAUTHORIZED, None);
        let mut realms: Vec<&str> = accounts.iter().map(|a| a.realm.as_str()).collect();
        realms.dedup();
        for realm in realms {
            let stale = if stale { ", stale=true" } else { "" };
            response.msg.headers.insert(
                Name::WWW_AUTHENTICATE,
                format!(
                    // MD5 is the default algorithm (RFC 2617 §3.2.1):
                    // saying so would cost bytes.
                    r#"Digest realm="{realm}", nonce="{nonce}", qop="auth"{stale}"#
                ),
            );
        }
        // Over UDP, never more bytes out than in (no amplifier toward a
        // spoofed source): Content-Length is optional there (RFC 3261
        // §20.14), and a request smaller than its challenge gets nothing.
        if request.tp_info.transport.is_udp() {
            let text = format!(
                "{}\r\n{}\r\n",
                response.msg.line.default_print_ctx(),
                response.msg.headers
            );
            if text.len() > request.tp_info.buffer.len() {
                reject_metric("auth_undersized");
                return;
            }
            response.parts.buffer = Bytes::from(text);
        }
        if let Err(e) = endpoint.send_outgoing_response(&mut response).await {
            tracing::debug!(error = %e, "cannot send 401");
        }
    }
}

#[async_trait::async_trait]
impl Layer for AuthLayer {
    fn name(&self) -> &'static str {
        "agentline-auth"
    }

    async fn receive(&self, endpoint: &Endpoint, request: MayTake<'_, IncomingRequest>) {
        let method = request.line.method.clone();
        if request.base_headers.to.tag.is_some()
            || method == Method::ACK
            || method == Method::CANCEL
        {
            return;
        }
        let source = RequestSource {
            addr: request.tp_info.source,
            transport: self.local.transport_of(&request.tp_info.transport),
            method: method.to_string(),
        };
        let ip = source.addr.ip();
        if self.edge.is_banned(ip) {
            reject_metric("auth_banned");
            drop(request.take());
            return;
        }
        let accounts = self.handler.digest_accounts(&source);
        if accounts.is_empty() {
            return;
        }
        let now = unix_now();
        let call_id = request.base_headers.call_id.0.to_string();
        let stale = match self.verify(&request, &accounts, ip, now) {
            Verdict::Valid => {
                tracing::info!(%call_id, source = %source.addr, %method, "digest credentials accepted");
                self.edge.authenticated(ip);
                return;
            }
            Verdict::Missing => false,
            Verdict::Stale => true,
            Verdict::Failed(why) => {
                reject_metric("auth_failed");
                tracing::info!(%call_id, source = %source.addr, %method, why, "digest authentication failed");
                // The edge logs the ban.
                self.edge.penalize(ip);
                if self.edge.is_banned(ip) {
                    drop(request.take());
                    return;
                }
                false
            }
        };
        let request = request.take();
        self.challenge(endpoint, &request, &accounts, stale, now)
            .await;
    }
}

/// A poisoned lock still holds consistent counters: take it.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn reject_metric(reason: &'static str) {
    metrics::counter!(SIP_REQUESTS_REJECTED_TOTAL, "reason" => reason).increment(1);
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// RFC 7616 §3.4.1 (RFC 2617 §3.2.2.1 without qop): the response the
/// client must have sent. MD5 and SHA-256, qop=auth or none.
fn expected_response(
    account: &DigestAccount,
    method: &Method,
    digest: &DigestResponse,
) -> Option<String> {
    let hash: fn(&str) -> String = match &digest.algorithm {
        Algorithm::AlgorithmValue(AlgorithmValue::MD5) => |s| {
            use md5::Digest as _;
            hex::encode(md5::Md5::digest(s.as_bytes()))
        },
        Algorithm::AlgorithmValue(AlgorithmValue::SHA256) => |s| {
            use sha2::Digest as _;
            hex::encode(Sha256::digest(s.as_bytes()))
        },
        _ => return None,
    };
    let ha1 = hash(&format!(
        "{}:{}:{}",
        account.username, account.realm, account.password
    ));
    let ha2 = hash(&format!("{method}:{}", digest.uri));
    match &digest.qop_response {
        None => Some(hash(&format!("{ha1}:{}:{ha2}", digest.nonce))),
        Some(qop) if qop.qop == QopOption::Auth => Some(hash(&format!(
            "{ha1}:{}:{:08x}:{}:auth:{ha2}",
            digest.nonce, qop.nc, qop.cnonce
        ))),
        Some(_) => None,
    }
}

/// Stateless nonces: `time (4, seconds) | random (4) | HMAC-SHA256(time |
/// random | source IP)` truncated to 10 bytes, base64url (24 characters:
/// the 401 must stay smaller than the requests it answers). Forging one needs the
/// key, which lives only in this process (a restart invalidates every
/// nonce: the peer is challenged again).
struct Nonces {
    key: [u8; 32],
}

impl Nonces {
    fn new() -> Self {
        Self {
            key: rand::rng().random(),
        }
    }

    fn mac(&self, head: &[u8], ip: IpAddr) -> [u8; 10] {
        let mut mac = match Hmac::<Sha256>::new_from_slice(&self.key) {
            Ok(mac) => mac,
            // HMAC takes keys of any length.
            Err(_) => return [0; 10],
        };
        mac.update(head);
        match ip {
            IpAddr::V4(v4) => mac.update(&v4.octets()),
            IpAddr::V6(v6) => mac.update(&v6.octets()),
        }
        let tag = mac.finalize().into_bytes();
        let mut out = [0u8; 10];
        out.copy_from_slice(&tag[..10]);
        out
    }

    fn issue(&self, ip: IpAddr, now: u64) -> String {
        // Seconds fit in 32 bits until 2106.
        let now = u32::try_from(now).unwrap_or(u32::MAX);
        let mut raw = [0u8; 18];
        raw[..4].copy_from_slice(&now.to_be_bytes());
        raw[4..8].copy_from_slice(&rand::rng().random::<u32>().to_be_bytes());
        let mac = self.mac(&raw[..8], ip);
        raw[8..].copy_from_slice(&mac);
        URL_SAFE_NO_PAD.encode(raw)
    }

    /// The issue time of a nonce we made for `ip`, or `None`.
    fn check(&self, nonce: &str, ip: IpAddr) -> Option<u64> {
        let raw = URL_SAFE_NO_PAD.decode(nonce).ok()?;
        let raw: [u8; 18] = raw.try_into().ok()?;
        let mac = self.mac(&raw[..8], ip);
        if !bool::from(mac.ct_eq(&raw[8..])) {
            return None;
        }
        let mut time = [0u8; 4];
        time.copy_from_slice(&raw[..4]);
        Some(u64::from(u32::from_be_bytes(time)))
    }
}

/// Nonces that have authenticated, with the last nonce count (`None`:
/// used without qop, single use).
#[derive(Default)]
struct Replays {
    seen: HashMap<String, (u64, Option<u32>)>,
}

impl Replays {
    /// Records a use; `false` for a replay.
    fn fresh(&mut self, nonce: &str, nc: Option<u32>, issued: u64, now: u64) -> bool {
        if let Some((_, last)) = self.seen.get_mut(nonce) {
            return match (last.as_mut(), nc) {
                (Some(last), Some(nc)) if nc > *last => {
                    *last = nc;
                    true
                }
                _ => false,
            };
        }
        if self.seen.len() >= MAX_TRACKED {
            self.seen
                .retain(|_, (t, _)| now.saturating_sub(*t) <= NONCE_TTL.as_secs());
        }
        if self.seen.len() >= MAX_TRACKED {
            // Only valid credentials get here; forgetting opens a replay
            // window for nonces still young, but memory stays bounded.
            self.seen.clear();
        }
        self.seen.insert(nonce.to_owned(), (issued, nc));
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn account() -> DigestAccount {
        DigestAccount {
            realm: "pbx".to_owned(),
            username: "alice".to_owned(),
            password: "s3cret".to_owned(),
        }
    }

    fn md5_hex(s: &str) -> String {
        use md5::Digest as _;
        hex::encode(md5::Md5::digest(s.as_bytes()))
    }

    fn parse(value: &str) -> DigestResponse {
        let mut headers = Headers::new();
        headers.insert(Name::AUTHORIZATION, value);
        match headers.get::<AuthResponse>(Name::AUTHORIZATION) {
            Ok(AuthResponse::Digest(d)) => d,
            other => panic!("not a digest: {other:?}"),
        }
    }

    /// RFC 2617 §3.5's example, recomputed for SIP: qop=auth.
    #[test]
    fn qop_auth_response_matches_rfc_formula() {
        let ha1 = md5_hex("alice:pbx:s3cret");
        let ha2 = md5_hex("INVITE:sip:+4930@example.net");
        let response = md5_hex(&format!("{ha1}:n1:00000002:c1:auth:{ha2}"));
        let digest = parse(&format!(
            r#"Digest username="alice", realm="pbx", nonce="n1", uri="sip:+4930@example.net", response="{response}", algorithm=MD5, qop=auth, nc=00000002, cnonce="c1""#
        ));
        assert_eq!(
            expected_response(&account(), &Method::INVITE, &digest).as_deref(),
            Some(response.as_str())
        );
        let wrong = DigestAccount {
            password: "guess".to_owned(),
            ..account()
        };
        assert_ne!(
            expected_response(&wrong, &Method::INVITE, &digest).as_deref(),
            Some(response.as_str())
        );
    }

    #[test]
    fn nonces_are_bound_to_their_source_and_keyed() {
        let nonces = Nonces::new();
        let ip: IpAddr = "192.0.2.7".parse().unwrap();
        let nonce = nonces.issue(ip, 1_000);
        assert_eq!(nonces.check(&nonce, ip), Some(1_000));
        assert_eq!(nonces.check(&nonce, "192.0.2.8".parse().unwrap()), None);
        assert_eq!(Nonces::new().check(&nonce, ip), None, "another key");
        let mut forged = URL_SAFE_NO_PAD.decode(&nonce).unwrap();
        forged[3] ^= 1; // a later issue time
        assert_eq!(nonces.check(&URL_SAFE_NO_PAD.encode(forged), ip), None);
        assert_eq!(nonces.check("garbage", ip), None);
    }

    #[test]
    fn a_nonce_count_must_grow_and_a_qopless_nonce_is_single_use() {
        let mut replays = Replays::default();
        assert!(replays.fresh("a", Some(1), 0, 0));
        assert!(!replays.fresh("a", Some(1), 0, 0), "same nc");
        assert!(replays.fresh("a", Some(2), 0, 0));
        assert!(replays.fresh("b", None, 0, 0));
        assert!(!replays.fresh("b", None, 0, 0));
    }
}
