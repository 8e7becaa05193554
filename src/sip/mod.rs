//! Signalling: SIP transport, transactions, dialogs, registration and digest
//! auth. SDP bodies are opaque bytes here; `media::sdp` makes and reads them.
//!
//! # What comes from where
//!
//! The ezk family is pinned to exact versions (each 0.x minor broke its API):
//!
//! - `ezk-sip-types`: the parser and typed headers (`Via`, `CSeq`, `Contact`,
//!   digest challenge headers, ...). Every message we build or read goes
//!   through it.
//! - `ezk-sip-core`: the [`Endpoint`](ezk_sip_core::Endpoint) with its UDP
//!   and TCP transports, rport handling (RFC 3581) and the RFC 3261 §17
//!   client and server transactions with their retransmission timers. We plug
//!   our own layers into it.
//! - `ezk-sip-ua`: the dialog layer and the INVITE building blocks
//!   (`InviteAcceptor`, `InviteInitiator`, `InviteSession`): CANCEL of an
//!   inbound INVITE (487), ACK matching, BYE and re-INVITE inside a dialog.
//!   We do not use its `Call`/`OutboundCall`/`Registration` wrappers, which
//!   tie calls to a media backend and have the gaps listed below.
//! - `ezk-sip-auth`: client digest (MD5, SHA-256, qop=auth) for 401 and 407.
//!
//! # Where we wrote our own, and why
//!
//! - [`guard`]: the first layer. It asks the handler whether a source may be
//!   answered at all (silent drop for sources no trunk allows), answers
//!   OPTIONS with 200 (carriers use it as keepalive; ezk would send 481), and
//!   rejects requests ezk parsed but RFC 3261 forbids (400, 415, 420).
//! - [`auth`]: inbound digest authentication for trunks with `[inbound]
//!   auth` (401 challenge, keyed stateless nonces, replay and failure
//!   limits); ezk-sip-auth is client-only.
//! - [`lint`]: RFC 3261 grammar checks ezk's parser is lenient about.
//! - [`inbound`]: turns an INVITE into an [`IncomingInvite`] for the handler
//!   and answers what no layer took (405/481 instead of ezk's blanket 481).
//! - [`outbound`]: drives `InviteInitiator` itself so that 401 **and** 407
//!   are answered (ezk's `OutboundCall` retries only on 401) and so that a
//!   CANCEL can be asked for at any time: RFC 3261 §9.1 says to wait for a
//!   provisional response first, and the CANCEL carries the INVITE's branch
//!   (ezk's own CANCEL opens a new transaction with a new branch).
//! - [`registration`]: REGISTER on the core client transaction, with digest
//!   auth, refresh well before expiry, 423 Min-Expires and backoff with
//!   jitter that honours Retry-After ([`backoff`]).
//! - [`ack`]: the 2xx retransmission of an inbound INVITE on RFC 3261
//!   §13.3.1.4's schedule (ezk's is flat and gives up at 8.5 s), then BYE.
//! - [`timers`]: RFC 4028 session timers (422 with Min-SE, the offered
//!   interval and refresher honoured; ezk answers its own 1800 s), run by
//!   [`Call`] (refresh by UPDATE or re-INVITE, BYE on expiry).
//! - [`prack`]: RFC 3262 both ways (ezk's reliable provisional panics on
//!   `Require: 100rel` without Supported, and its early dialog cannot send
//!   PRACK).
//! - [`ping`]: OPTIONS probes to a trunk's proxy on the same core client
//!   transaction (ezk-sip-ua has no out-of-dialog request helper).
//!
//! # Known limits of the ezk transport
//!
//! Our receive path ([`udp`], [`lint`]) normalises what ezk's parser would
//! refuse although RFC 3261 allows it, and answers itself (400, 416, 505)
//! what ezk would drop although RFC 3261 gives an answer. What remains
//! dropped without an answer (a start line or a To that does not parse, no
//! Via) is what RFC 4475 allows to drop; the torture test checks every
//! message's outcome and that the stack stays up.
//! After a 2xx to an INVITE, ezk resends it every second and gives up
//! waiting for the ACK after about 8.5 s rather than doubling T1 up to T2
//! for 64*T1 (32 s); [`ack`] does that for the initial INVITE instead, and
//! the caller is told through [`AcceptError::NoAck`] after our BYE.
//! ezk's session timer ignores the offered interval and has no 422;
//! [`timers`] and the call run RFC 4028 instead.
//! ezk matches server transactions on the Via branch alone (RFC 3261
//! §17.2.3 also compares sent-by), and its dialog layer holds back an
//! in-dialog request whose CSeq skips a number until the missing one
//! arrives; that is why in-dialog OPTIONS go through the dialog (see
//! [`guard`]) rather than being answered before it.

mod ack;
mod auth;
pub mod backoff;
mod base;
mod call;
mod challenge;
mod edge;
mod finished;
mod guard;
mod inbound;
mod lint;
mod orphan;
mod outbound;
mod ping;
mod prack;
mod registration;
mod replaces;
mod tcp;
mod timers;
mod tls;
mod transport;
mod udp;

pub use auth::digest_identity;
pub use base::DigestAccount;
pub use base::{Admission, RequestSource, SipError, Transport};
pub use call::{Call, DialogEvent, ReInvite};
pub use inbound::{AcceptError, InboundHandler, IncomingInvite, InviteInfo, Rejection};
pub use orphan::{CancelState, DialogState};
pub use outbound::{OutboundCall, OutboundEvent, OutboundInvite};
pub use ping::Probe;
pub use registration::{Registration, RegistrationState, TrunkRegistration};
pub use replaces::Replaces;
pub use timers::{MIN_SE_FLOOR, SessionTimerConfig};
pub use tls::TrunkTls;
pub use transport::{SipConfig, SipStack, TlsListen};

/// The receive path's own steps on raw bytes, for the fuzz targets: the
/// message normalised for ezk (returned), the screen, and the stateless
/// answer it would draw, which must never be larger than the request (no
/// amplifier) nor make the receive path panic.
pub(crate) fn receive_path_for_fuzzing(raw: &[u8]) -> Vec<u8> {
    match udp::screen(raw, true) {
        udp::Screened::Go(message) => message.into_owned(),
        udp::Screened::Answer(reply) => {
            assert!(reply.len() <= raw.len(), "amplification");
            Vec::new()
        }
        udp::Screened::Dropped => Vec::new(),
    }
}

/// A peer given as `host[:port]` (or already a `sip:`/`sips:` URI, with
/// `;transport=tcp` or `;transport=tls` if wanted) as the URI requests
/// are sent to.
pub(crate) fn peer_uri(
    what: &'static str,
    raw: &str,
) -> Result<ezk_sip_types::uri::SipUri, SipError> {
    let trimmed = raw.trim();
    let text = if trimmed.starts_with("sip:") || trimmed.starts_with("sips:") {
        trimmed.to_owned()
    } else {
        format!("sip:{trimmed}")
    };
    text.parse().map_err(|_| SipError::Invalid {
        what,
        value: raw.to_owned(),
    })
}

/// A random token for tags and Call-IDs (RFC 3261 §19.3: at least 32 bits
/// of randomness).
pub(crate) fn random_token() -> String {
    use rand::Rng;
    use rand::distr::Alphanumeric;
    rand::rng()
        .sample_iter(Alphanumeric)
        .take(16)
        .map(char::from)
        .collect()
}

/// Username and password for digest authentication (RFC 3261 §22, RFC 8760).
#[derive(Clone)]
pub struct Credentials {
    /// Digest username.
    pub username: String,
    /// Digest password.
    pub password: String,
    /// Realm to answer; `None` answers any realm the server names.
    pub realm: Option<String>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("realm", &self.realm)
            .finish_non_exhaustive()
    }
}

impl Credentials {
    /// An authenticator that answers 401 and 407 challenges with these
    /// credentials (MD5 or SHA-256, qop=auth, as the challenge asks).
    pub(crate) fn authenticator(&self) -> ezk_sip_auth::DigestAuthenticator {
        let user = ezk_sip_auth::DigestUser::new(
            self.username.clone(),
            self.password.clone().into_bytes(),
        );
        let mut credentials = ezk_sip_auth::DigestCredentials::new();
        match &self.realm {
            Some(realm) => credentials.add_for_realm(realm.clone(), user),
            None => credentials.set_default(user),
        }
        ezk_sip_auth::DigestAuthenticator::new(credentials)
    }
}

/// How many 401/407 rounds one request may go through before we give up
/// (a wrong password would otherwise loop on servers that send a new nonce
/// with every challenge).
pub(crate) const MAX_AUTH_ROUNDS: u32 = 3;

#[cfg(test)]
mod tests {
    use super::Credentials;
    use ezk_sip_auth::{ClientAuthenticator, RequestParts, ResponseParts};
    use ezk_sip_types::header::typed::AuthResponse;
    use ezk_sip_types::msg::{RequestLine, StatusLine};
    use ezk_sip_types::uri::SipUri;
    use ezk_sip_types::{Headers, Method, Name, StatusCode};
    use sha2::{Digest, Sha256};

    fn sha256_hex(data: &[u8]) -> String {
        hex::encode(Sha256::digest(data))
    }

    /// RFC 8760 §2 / RFC 7616 §3.4.1: a 407 with algorithm=SHA-256 and
    /// qop=auth is answered in Proxy-Authorization with the right digest.
    #[test]
    fn answers_sha256_proxy_challenge_with_qop_auth() {
        let credentials = Credentials {
            username: "bob".to_owned(),
            password: "pw".to_owned(),
            realm: None,
        };
        let mut auth = credentials.authenticator();
        let uri: SipUri = "sip:+4930555@proxy.test".parse().expect("uri");
        let line = RequestLine {
            method: Method::INVITE,
            uri,
        };
        let sent = Headers::new();
        let mut challenge = Headers::new();
        challenge.insert(
            Name::PROXY_AUTHENTICATE,
            r#"Digest realm="proxy.test", nonce="n0nce", qop="auth", algorithm=SHA-256"#,
        );
        let status = StatusLine {
            code: StatusCode::PROXY_AUTHENTICATION_REQUIRED,
            reason: None,
        };
        auth.handle_rejection(
            RequestParts {
                line: &line,
                headers: &sent,
                body: &[],
            },
            ResponseParts {
                line: &status,
                headers: &challenge,
                body: &[],
            },
        )
        .expect("challenge understood");

        let mut retry = Headers::new();
        auth.authorize_request(&mut retry);
        let AuthResponse::Digest(digest) = retry
            .get::<AuthResponse>(Name::PROXY_AUTHORIZATION)
            .expect("Proxy-Authorization")
        else {
            panic!("not a digest response");
        };
        let qop = digest.qop_response.expect("qop=auth answered");
        let ha1 = sha256_hex(b"bob:proxy.test:pw");
        let ha2 = sha256_hex(format!("INVITE:{}", digest.uri).as_bytes());
        let expected =
            sha256_hex(format!("{ha1}:n0nce:{:08x}:{}:auth:{ha2}", qop.nc, qop.cnonce).as_bytes());
        assert_eq!(digest.response.as_str(), expected);
    }
}
