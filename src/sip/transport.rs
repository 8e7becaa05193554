//! Transport glue: binds UDP and TCP at the listen address, builds the ezk
//! endpoint with our layers in order, and knows the address we announce in
//! Contact (and that the media layer puts into SDP).

use super::auth::{AuthLayer, DigestAccount};
use super::guard::GuardLayer;
use super::inbound::{InboundLayer, IncomingInvite};
use ezk_sip_core::Endpoint;
use ezk_sip_core::transport::TpHandle;
use ezk_sip_types::header::typed::Contact;
use ezk_sip_types::host::HostPort;
use ezk_sip_types::uri::{NameAddr, SipUri};
use ezk_sip_ua::dialog::DialogLayer;
use ezk_sip_ua::invite::InviteLayer;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

/// Where and how the SIP stack listens.
#[derive(Debug, Clone)]
pub struct SipConfig {
    /// Address to bind UDP and TCP to; port 0 picks a free port (the same
    /// for both).
    pub listen: SocketAddr,
    /// Address announced in Contact and to be used in SDP; `None` uses the
    /// listen address. A port of 0 means the bound port.
    pub public_address: Option<SocketAddr>,
    /// Also accept SIP over TCP at the same port.
    pub tcp: bool,
    /// User-Agent / Server header value.
    pub user_agent: String,
}

impl SipConfig {
    /// UDP and TCP on `listen`, announcing the listen address.
    pub fn new(listen: SocketAddr) -> Self {
        Self {
            listen,
            public_address: None,
            tcp: true,
            user_agent: concat!("agentline/", env!("CARGO_PKG_VERSION")).to_owned(),
        }
    }
}

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
}

impl Transport {
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
        })
    }
}

/// Who sent a request that opens a transaction outside any dialog.
#[derive(Debug, Clone)]
pub struct RequestSource {
    /// Source address of the packet or connection.
    pub addr: SocketAddr,
    pub transport: Transport,
    /// Request method (`INVITE`, `OPTIONS`, ...).
    pub method: String,
}

/// The handler's answer to "may this source talk to us at all".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Process the request.
    Admit,
    /// Send nothing back (sources that no trunk allows, flood guard).
    Drop,
}

/// The decisions the SIP layer leaves to its caller (the `call` module).
pub trait InboundHandler: Send + Sync + 'static {
    /// Called for each request outside a dialog before anything is sent,
    /// so that sources no trunk allows get silence, not even 100 Trying.
    fn admit(&self, source: &RequestSource) -> Admission;

    /// A new INVITE, already answered with 100 Trying. The handler owns it
    /// and must reject it, or ring and accept it; dropping it unanswered
    /// sends 500.
    fn on_invite(&self, invite: IncomingInvite);

    /// The digest accounts a request from `source` must prove one of
    /// before it is processed (see `sip::auth`); none (the default): no
    /// authentication.
    fn digest_accounts(&self, _source: &RequestSource) -> Vec<DigestAccount> {
        Vec::new()
    }
}

/// What every part of the layer needs to know about our own addresses.
#[derive(Debug)]
pub(crate) struct LocalIdentity {
    /// Bound UDP socket address.
    pub(crate) bound: SocketAddr,
    /// Address announced in Contact.
    pub(crate) public: SocketAddr,
}

impl LocalIdentity {
    /// `<sip:user@public:port>` with `transport=tcp` when asked for.
    pub(crate) fn contact(&self, user: Option<&str>, transport: Transport) -> Contact {
        let mut uri = SipUri::new(HostPort::from(self.public));
        if let Some(user) = user {
            uri.set_user(user.to_owned().into());
        }
        if transport == Transport::Tcp {
            uri = uri.uri_param_value("transport", "tcp");
        }
        Contact::new(NameAddr::uri(uri))
    }
}

/// A running SIP stack. Cheap to clone; the sockets live as long as any
/// clone or any call or registration made from it.
#[derive(Clone)]
pub struct SipStack {
    pub(crate) endpoint: Endpoint,
    pub(crate) local: Arc<LocalIdentity>,
}

impl fmt::Debug for SipStack {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SipStack")
            .field("local", &self.local)
            .finish_non_exhaustive()
    }
}

impl SipStack {
    /// Binds the transports and starts answering. Inbound INVITEs and the
    /// admission question go to `handler`.
    pub async fn start(
        config: SipConfig,
        handler: Arc<dyn InboundHandler>,
    ) -> Result<Self, SipError> {
        let listen = pick_port(config.listen, config.tcp)?;

        let mut builder = Endpoint::builder();
        builder.user_agent(config.user_agent.clone());
        builder.add_layer(GuardLayer::new(handler.clone()));
        builder.add_layer(AuthLayer::new(handler.clone()));
        builder.add_layer(DialogLayer::default());
        builder.add_layer(InviteLayer::default());

        let udp = builder
            .bind_udp(listen)
            .await
            .map_err(|source| SipError::Bind {
                transport: Transport::Udp,
                addr: listen,
                source,
            })?;
        let bound = udp.bound();
        if config.tcp {
            builder
                .listen_tcp(bound)
                .await
                .map_err(|source| SipError::Bind {
                    transport: Transport::Tcp,
                    addr: bound,
                    source,
                })?;
        }

        let public = match config.public_address {
            Some(addr) if addr.port() == 0 => SocketAddr::new(addr.ip(), bound.port()),
            Some(addr) => addr,
            None => bound,
        };
        if public.ip().is_unspecified() {
            return Err(SipError::Invalid {
                what: "public_address (required when listening on an unspecified address)",
                value: public.to_string(),
            });
        }

        let local = Arc::new(LocalIdentity { bound, public });
        builder.add_layer(InboundLayer::new(handler, local.clone()));

        let endpoint = builder.build();
        tracing::info!(%bound, %public, tcp = config.tcp, "SIP stack listening");
        Ok(Self { endpoint, local })
    }

    /// The bound UDP (and TCP) address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local.bound
    }

    /// The address announced in Contact: what the media layer puts in SDP
    /// (`c=` line) too.
    pub fn public_address(&self) -> SocketAddr {
        self.local.public
    }

    /// The public IP alone, for SDP.
    pub fn public_ip(&self) -> IpAddr {
        self.local.public.ip()
    }
}

/// With port 0 and TCP on, find a port free for both UDP and TCP. The
/// probe sockets close again before ezk binds: a small race, retried by the
/// caller's restart if it loses.
fn pick_port(listen: SocketAddr, tcp: bool) -> Result<SocketAddr, SipError> {
    if listen.port() != 0 || !tcp {
        return Ok(listen);
    }
    let mut last_error = None;
    for _ in 0..16 {
        let udp = std::net::UdpSocket::bind(listen).map_err(|source| SipError::Bind {
            transport: Transport::Udp,
            addr: listen,
            source,
        })?;
        let addr = udp.local_addr().map_err(|source| SipError::Bind {
            transport: Transport::Udp,
            addr: listen,
            source,
        })?;
        match std::net::TcpListener::bind(addr) {
            Ok(_) => return Ok(addr),
            Err(e) => last_error = Some(e),
        }
    }
    Err(SipError::Bind {
        transport: Transport::Tcp,
        addr: listen,
        source: last_error.unwrap_or_else(|| std::io::Error::other("no free port")),
    })
}
