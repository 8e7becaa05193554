//! Answering digest challenges as a client (RFC 3261 §22.2, §22.3): the one
//! retry rule that REGISTER ([`registration`](super::registration)) and
//! INVITE ([`outbound`](super::outbound)) share. A 401 (WWW-Authenticate)
//! or 407 (Proxy-Authenticate) teaches the authenticator the challenge; the
//! next request of the same attempt carries the answer.
//!
//! Must not: send anything (the caller owns its transaction), or answer
//! more than [`MAX_AUTH_ROUNDS`] challenges for one attempt (a wrong
//! password would otherwise loop on servers that send a new nonce with
//! every challenge).

use super::{Credentials, MAX_AUTH_ROUNDS};
use ezk_sip_auth::{ClientAuthenticator, DigestAuthenticator, RequestParts, ResponseParts};
use ezk_sip_core::Request;
use ezk_sip_core::transaction::TsxResponse;
use ezk_sip_types::{Headers, StatusCode};

/// What to do after a final response to a request that may carry
/// credentials.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Challenge {
    /// Not a 401 or 407: the response stands.
    None,
    /// The challenge is learnt: send the request again (CSeq + 1) after
    /// [`ChallengeResponder::authorize`].
    Answer,
    /// A challenge we cannot or will not answer; the reason says why.
    GiveUp(String),
}

/// Answers the challenges of one request attempt (a REGISTER and its
/// refreshes, or one INVITE).
pub(crate) struct ChallengeResponder {
    /// `None` when no credentials are configured: every challenge is
    /// given up on.
    authenticator: Option<DigestAuthenticator>,
    /// Challenges answered since the last [`ChallengeResponder::restart`].
    rounds: u32,
}

impl ChallengeResponder {
    pub(crate) fn new(credentials: Option<&Credentials>) -> Self {
        Self {
            authenticator: credentials.map(Credentials::authenticator),
            rounds: 0,
        }
    }

    /// A new attempt (the next REGISTER refresh): the round count starts
    /// again, the learnt nonces are kept (RFC 3261 §22.2 allows reusing
    /// them until the server says stale).
    pub(crate) fn restart(&mut self) {
        self.rounds = 0;
    }

    /// Adds Authorization / Proxy-Authorization for every challenge learnt
    /// so far.
    pub(crate) fn authorize(&mut self, headers: &mut Headers) {
        if let Some(auth) = &mut self.authenticator {
            auth.authorize_request(headers);
        }
    }

    /// Reads the final `response` to `sent`.
    pub(crate) fn learn(&mut self, sent: &Request, response: &TsxResponse) -> Challenge {
        let code = response.line.code;
        if code != StatusCode::UNAUTHORIZED && code != StatusCode::PROXY_AUTHENTICATION_REQUIRED {
            return Challenge::None;
        }
        let Some(auth) = &mut self.authenticator else {
            return Challenge::GiveUp("challenged but no credentials configured".to_owned());
        };
        if self.rounds >= MAX_AUTH_ROUNDS {
            return Challenge::GiveUp("too many authentication challenges".to_owned());
        }
        self.rounds += 1;
        let result = auth.handle_rejection(
            RequestParts {
                line: &sent.line,
                headers: &sent.headers,
                body: &sent.body,
            },
            ResponseParts {
                line: &response.line,
                headers: &response.headers,
                body: &response.body,
            },
        );
        match result {
            Ok(()) => Challenge::Answer,
            Err(e) => Challenge::GiveUp(e.to_string()),
        }
    }
}
