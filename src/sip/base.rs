//! The types and helpers every other `sip` module shares: errors, the
//! transport a message came on, who sent a request and whether it is
//! admitted, our own addresses, the accounts inbound digest auth checks,
//! and the plain answer to a request.
//!
//! Must not depend on any other `sip` module: it sits below all of them,
//! so that `transport`, `guard`, `inbound` and `call` import it and not
//! each other in a cycle.

use bytes::Bytes;
use ezk_sip_core::transport::TpHandle;
use ezk_sip_core::{Endpoint, IncomingRequest};
use ezk_sip_types::header::typed::{Contact, ContentType};
use ezk_sip_types::host::HostPort;
use ezk_sip_types::uri::{NameAddr, SipUri};
use ezk_sip_types::{Headers, Method, StatusCode};
use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::{Mutex, MutexGuard};

/// Errors at the border of the SIP layer.
#[derive(Debug, thiserror::Error)]
pub enum SipError {
    /// The listen socket could not be bound.
    #[error("cannot bind SIP {transport} on {addr}: {source}")]
    Bind {
        transport: Transport,
        addr: SocketAddr,
        source: std::io::Error,
    },
    /// A configured address or URI does not parse or cannot be used.
    #[error("invalid {what}: {value}")]
    Invalid { what: &'static str, value: String },
    /// Sending failed or the transaction timed out.
    #[error("SIP transaction failed: {0}")]
    Transaction(String),
    /// The dialog or transaction is already over.
    #[error("the call is already terminated")]
    Terminated,
}

impl From<ezk_sip_core::Error> for SipError {
    fn from(e: ezk_sip_core::Error) -> Self {
        SipError::Transaction(e.to_string())
    }
}

impl From<ezk_sip_types::header::HeaderError> for SipError {
    fn from(e: ezk_sip_types::header::HeaderError) -> Self {
        SipError::Transaction(e.to_string())
    }
}

/// The transport a message arrived on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    Udp,
    Tcp,
    Tls,
}

impl Transport {
    /// The transport a request to `uri` goes over: its `transport`
    /// parameter, TLS for `sips:` (RFC 3261 §26.2.2), else UDP.
    pub(crate) fn of_uri(uri: &ezk_sip_types::uri::SipUri) -> Self {
        match uri.uri_params.get_val("transport") {
            Some(t) if t.eq_ignore_ascii_case("tcp") => Transport::Tcp,
            Some(t) if t.eq_ignore_ascii_case("tls") => Transport::Tls,
            _ if uri.sips => Transport::Tls,
            _ => Transport::Udp,
        }
    }

    /// UDP or a connection, without knowing which kind of connection:
    /// [`LocalIdentity::transport_of`] knows TLS too.
    pub(crate) fn of(handle: &TpHandle) -> Self {
        if handle.is_udp() {
            Transport::Udp
        } else {
            Transport::Tcp
        }
    }
}

impl fmt::Display for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Transport::Udp => "UDP",
            Transport::Tcp => "TCP",
            Transport::Tls => "TLS",
        })
    }
}

/// Who sent a request (any request, inside a dialog or not).
#[derive(Debug, Clone)]
pub struct RequestSource {
    /// Source address of the packet or connection.
    pub addr: SocketAddr,
    pub transport: Transport,
    /// Request method (`INVITE`, `OPTIONS`, ...).
    pub method: String,
}

/// The handler's answer to "does a trunk allow this source".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// A trunk allows the source: the request goes on to the stack.
    Admit,
    /// No trunk allows it: a stranger. The edge drops the request, or in
    /// `reject` mode answers it once without any state.
    Drop,
    /// No trunk allows the address, but a trunk with inbound digest auth
    /// lets it try: the request goes on to the challenge, counted with the
    /// stranger limits (and banned like a stranger) until it authenticated.
    Authenticate,
}

/// Relay address (our end of a loopback connection to the internal
/// endpoint, as ezk sees the peer) to the real peer and the transport it
/// came over (TCP or TLS); written by the TCP/TLS front door.
#[derive(Default, Debug)]
pub(crate) struct TcpPeers(Mutex<HashMap<SocketAddr, (SocketAddr, Transport)>>);

impl TcpPeers {
    pub(crate) fn map(&self) -> MutexGuard<'_, HashMap<SocketAddr, (SocketAddr, Transport)>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The real peer behind a relayed connection.
    pub(crate) fn peer_of(&self, relay: SocketAddr) -> Option<SocketAddr> {
        self.map().get(&relay).map(|(peer, _)| *peer)
    }
}

/// What every part of the layer needs to know about our own addresses.
#[derive(Debug)]
pub(crate) struct LocalIdentity {
    /// Bound UDP socket address.
    pub(crate) bound: SocketAddr,
    /// Address announced in Contact.
    pub(crate) public: SocketAddr,
    /// Address announced in Contact for TLS (the public IP and the
    /// `tls_listen` port); `None` when we accept no TLS.
    pub(crate) tls_public: Option<SocketAddr>,
    /// The relayed TCP and TLS connections.
    pub(crate) peers: std::sync::Arc<TcpPeers>,
}

impl LocalIdentity {
    /// `<sip:user@public:port>` with `transport=tcp` or `transport=tls`
    /// (and the TLS port) when asked for.
    pub(crate) fn contact(&self, user: Option<&str>, transport: Transport) -> Contact {
        let mut uri = SipUri::new(HostPort::from(self.address_for(transport)));
        if let Some(user) = user {
            uri.set_user(user.to_owned().into());
        }
        match transport {
            Transport::Udp => {}
            Transport::Tcp => uri = uri.uri_param_value("transport", "tcp"),
            Transport::Tls => uri = uri.uri_param_value("transport", "tls"),
        }
        Contact::new(NameAddr::uri(uri))
    }

    /// Our address as peers reach it over `transport` (Contact, Via).
    pub(crate) fn address_for(&self, transport: Transport) -> SocketAddr {
        match (transport, self.tls_public) {
            (Transport::Tls, Some(tls)) => tls,
            _ => self.public,
        }
    }

    /// The transport a message really came over: the TCP relay's loopback
    /// leg is TCP to ezk, but the peer may have used TLS.
    pub(crate) fn transport_of(&self, handle: &TpHandle) -> Transport {
        let Some(remote) = handle.connection_remote() else {
            return Transport::Udp;
        };
        if let Some((_, transport)) = self.peers.map().get(&remote) {
            return *transport;
        }
        // A connection ezk opened itself (a trunk over TLS): ezk names the
        // kind only in its Debug output (`name()` is private).
        if format!("{handle:?}").contains("Rustls") {
            Transport::Tls
        } else {
            Transport::Tcp
        }
    }
}

/// `application/sdp`, compared without parameters and case.
pub(crate) fn is_sdp(content_type: &ContentType) -> bool {
    content_type
        .0
        .split(';')
        .next()
        .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/sdp"))
}

pub(crate) fn attach_sdp(headers: &mut Headers, body: &mut Bytes, sdp: Bytes) {
    headers.insert_named(&ContentType("application/sdp".into()));
    *body = sdp;
}

/// Answer a request outside any dialog with a final response: an INVITE in
/// its own server transaction (waiting for the ACK in the background), any
/// other request statelessly.
pub(crate) async fn respond(
    endpoint: &Endpoint,
    mut request: IncomingRequest,
    code: StatusCode,
    reason: Option<&'static str>,
    mut extra: Headers,
) {
    if request.line.method == Method::ACK {
        return;
    }
    let mut response = endpoint.create_response(&request, code, reason.map(Into::into));
    extra.drain_into(&mut response.msg.headers);
    if request.line.method == Method::INVITE {
        let tsx = endpoint.create_server_inv_tsx(&mut request);
        tokio::spawn(async move {
            if let Err(e) = tsx.respond_failure(response).await {
                tracing::debug!(error = %e, "no ACK for error response");
            }
        });
    } else {
        // RFC 3261 §8.2.7: answered statelessly. A server transaction would
        // hold ezk's per-transaction channel (32 slots of ~1 KB) for timer J,
        // 32 s over UDP, only to resend this answer to a retransmission,
        // which is answered alike anyway.
        if let Err(e) = endpoint.send_outgoing_response(&mut response).await {
            tracing::warn!(error = %e, "failed to send response");
        }
        drop(request);
    }
}

/// An account a caller may prove (one per trunk with `[inbound] auth`).
#[derive(Clone)]
pub struct DigestAccount {
    pub realm: String,
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for DigestAccount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DigestAccount")
            .field("realm", &self.realm)
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}
