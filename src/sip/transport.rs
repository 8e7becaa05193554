//! Transport glue: picks the port, builds the ezk endpoint with our layers
//! in order, puts the edge in front of it (our own UDP reader and TCP and
//! TLS acceptors, see [`super::udp`], [`super::tcp`] and [`super::tls`]),
//! gives the endpoint its outbound TLS connector, and knows the address
//! we announce in Contact (and that the media layer puts into SDP).
//!
//! Must not read or answer messages itself.

use super::ack::{AckLayer, SipTimers};
use super::auth::AuthLayer;
use super::base::{LocalIdentity, SipError, TcpPeers, Transport};
use super::edge::EdgeGuard;
use super::finished::Finished;
use super::guard::GuardLayer;
use super::inbound::{InboundHandler, InboundLayer};
use super::tcp;
use super::tls::{self, CertSlot, TrunkTls, TrunkTrust};
use super::udp;
use crate::config::{FloodConfig, SipTcpConfig, UnknownSource};
use ezk_sip_core::{Endpoint, EndpointBuilder};
use ezk_sip_ua::dialog::DialogLayer;
use ezk_sip_ua::invite::InviteLayer;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
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
    /// User-Agent header value of our requests; `None` sends none (a
    /// version tells scanners which exploits to try).
    pub user_agent: Option<String>,
    /// Sources no trunk allows: silence, or one stateless 403.
    pub unknown_source: UnknownSource,
    /// The edge's flood guard.
    pub flood: FloodConfig,
    /// TCP connection limits and timeouts.
    pub tcp_limits: SipTcpConfig,
    /// RFC 3261 T1; 500 ms but in tests (`[sip] t1_ms`).
    pub t1: std::time::Duration,
    /// RFC 4028 session timers: our interval and Min-SE.
    pub session_timer: super::timers::SessionTimerConfig,
    /// Whether this stack's edge sets the `agentline_sip_*` gauges. Only
    /// the daemon's own stack does: a helper stack (test mode's simulated
    /// carrier) would overwrite them with its own zeros every second.
    pub edge_gauges: bool,
    /// SIP over TLS, inbound (`[sip] tls_listen` and its certificate).
    pub tls: Option<TlsListen>,
    /// Client certificate and key offered on outbound TLS (files).
    pub tls_client_cert: Option<(PathBuf, PathBuf)>,
}

/// `[sip] tls_listen` and the certificate files served there.
#[derive(Debug, Clone)]
pub struct TlsListen {
    /// Port 0 picks a free port.
    pub listen: SocketAddr,
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

impl SipConfig {
    /// UDP and TCP on `listen`, announcing the listen address, with the
    /// default edge (strangers dropped).
    pub fn new(listen: SocketAddr) -> Self {
        Self {
            listen,
            public_address: None,
            tcp: true,
            user_agent: None,
            unknown_source: UnknownSource::Drop,
            flood: FloodConfig::default(),
            tcp_limits: SipTcpConfig::default(),
            t1: super::ack::DEFAULT_T1,
            session_timer: super::timers::SessionTimerConfig::default(),
            edge_gauges: true,
            tls: None,
            tls_client_cert: None,
        }
    }
}

/// A running SIP stack. Cheap to clone; the sockets live as long as any
/// clone or any call or registration made from it.
#[derive(Clone)]
pub struct SipStack {
    pub(crate) endpoint: Endpoint,
    pub(crate) local: Arc<LocalIdentity>,
    edge: Arc<EdgeGuard>,
    /// Answers kept for retransmissions, and calls waiting for a BYE.
    pub(crate) finished: Arc<Finished>,
    /// The TLS certificates SIGHUP re-reads, and the trunks' trust.
    tls: Arc<TlsState>,
}

/// What of TLS may change while the stack runs.
#[derive(Debug)]
struct TlsState {
    server: Option<Arc<CertSlot>>,
    client: Option<Arc<CertSlot>>,
    trust: Arc<TrunkTrust>,
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
        let public = match config.public_address {
            Some(addr) if addr.port() == 0 => SocketAddr::new(addr.ip(), listen.port()),
            Some(addr) => addr,
            None => listen,
        };
        if public.ip().is_unspecified() {
            return Err(SipError::Invalid {
                what: "public_address (required when listening on an unspecified address)",
                value: public.to_string(),
            });
        }
        let tls_invalid =
            |what: &'static str| move |e: String| SipError::Invalid { what, value: e };
        // Certificates first: a bad file is a start-up error naming it,
        // before any socket is bound.
        let server_slot = match &config.tls {
            Some(t) => Some(
                CertSlot::load(t.cert_file.clone(), t.key_file.clone())
                    .map_err(tls_invalid("sip.tls_cert_file / sip.tls_key_file"))?,
            ),
            None => None,
        };
        let client_slot = match &config.tls_client_cert {
            Some((cert, key)) => Some(CertSlot::load(cert.clone(), key.clone()).map_err(
                tls_invalid("sip.tls_client_cert_file / sip.tls_client_key_file"),
            )?),
            None => None,
        };
        let trust = TrunkTrust::new();
        let tls_listener =
            match &config.tls {
                Some(t) => Some(tokio::net::TcpListener::bind(t.listen).await.map_err(
                    |source| SipError::Bind {
                        transport: Transport::Tls,
                        addr: t.listen,
                        source,
                    },
                )?),
                None => None,
            };
        let tls_bound = match &tls_listener {
            Some(l) => Some(l.local_addr().map_err(|source| SipError::Bind {
                transport: Transport::Tls,
                addr: listen,
                source,
            })?),
            None => None,
        };
        let peers = Arc::new(TcpPeers::default());
        let local = Arc::new(LocalIdentity {
            bound: listen,
            public,
            tls_public: tls_bound.map(|b| SocketAddr::new(public.ip(), b.port())),
            peers: peers.clone(),
        });
        let admit_handler = handler.clone();
        let edge = EdgeGuard::new(
            config.flood,
            config.unknown_source,
            Arc::new(move |source| admit_handler.admit(source)),
        );
        if !config.edge_gauges {
            edge.stop_gauges();
        }
        let finished = Arc::new(Finished::default());
        let timers = Arc::new(SipTimers::new(config.t1, config.session_timer));
        let layers = |builder: &mut EndpointBuilder, peers: Option<Arc<TcpPeers>>| {
            if let Some(user_agent) = &config.user_agent {
                builder.user_agent(user_agent.clone());
            }
            builder.add_layer(GuardLayer::new(peers, finished.clone()));
            builder.add_layer(AuthLayer::new(handler.clone(), edge.clone(), local.clone()));
            // Before the dialog layer: the ACKs of 200s we resend (`ack`).
            builder.add_layer(AckLayer::new(timers.clone()));
            builder.add_layer(DialogLayer::default());
            builder.add_layer(InviteLayer::default());
            builder.add_layer(InboundLayer::new(
                handler.clone(),
                local.clone(),
                edge.clone(),
                finished.clone(),
                timers.clone(),
            ));
        };

        let mut builder = Endpoint::builder();
        layers(&mut builder, None);
        let client_config = tls::client_config(trust.clone(), client_slot.clone())
            .map_err(tls_invalid("TLS client"))?;
        builder.use_rustls_connector(tokio_rustls::TlsConnector::from(client_config));
        let (endpoint, udp_handle, socket, io) = udp::build(builder, listen).await?;
        udp::spawn_reader(socket, &io, endpoint.clone(), udp_handle, edge.clone());

        if config.tcp || tls_listener.is_some() {
            let tcp_error = |source| SipError::Bind {
                transport: Transport::Tcp,
                addr: listen,
                source,
            };
            // The second endpoint only we reach, over loopback (see `tcp`);
            // TCP and TLS connections are both relayed to it.
            let mut inner = Endpoint::builder();
            layers(&mut inner, Some(peers.clone()));
            let internal = internal_tcp(&mut inner).await.map_err(tcp_error)?;
            drop(inner.build());
            if config.tcp {
                let listener = tokio::net::TcpListener::bind(listen)
                    .await
                    .map_err(tcp_error)?;
                let peers = peers.clone();
                tcp::spawn_acceptor(
                    listener,
                    edge.clone(),
                    config.tcp_limits,
                    internal,
                    peers,
                    None,
                );
            }
            if let (Some(listener), Some(slot)) = (tls_listener, &server_slot) {
                let server = tls::server_config(slot.clone()).map_err(tls_invalid("TLS server"))?;
                let acceptor = tokio_rustls::TlsAcceptor::from(server);
                let (guard, limits) = (edge.clone(), config.tcp_limits);
                tcp::spawn_acceptor(listener, guard, limits, internal, peers, Some(acceptor));
            }
        }

        tracing::info!(bound = %listen, %public, tcp = config.tcp, tls = ?tls_bound, "SIP stack listening");
        Ok(Self {
            endpoint,
            local,
            edge,
            finished,
            tls: Arc::new(TlsState {
                server: server_slot,
                client: client_slot,
                trust,
            }),
        })
    }

    /// Re-reads the TLS certificate files (SIGHUP). Connections and calls
    /// go on; new handshakes present the new certificate. On an error the
    /// old certificate stays and the error is returned.
    pub fn reload_tls(&self) -> Result<(), String> {
        for slot in [&self.tls.server, &self.tls.client].into_iter().flatten() {
            slot.reload()?;
        }
        Ok(())
    }

    /// Sets which trunk's TLS server certificate is checked how (at start
    /// and after each profile reload).
    pub fn set_trunk_tls(&self, trunks: &[TrunkTls]) {
        self.tls.trust.set_trunks(trunks);
    }

    /// Counts a failed authentication from `ip` toward a ban (for the
    /// inbound digest auth layer; see `sip.flood.auth_failures_before_ban`).
    pub fn penalize(&self, ip: IpAddr) {
        self.edge.penalize(ip);
    }

    /// Whether the flood guard has banned `ip` now.
    pub fn is_banned(&self, ip: IpAddr) -> bool {
        self.edge.is_banned(ip)
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

/// With port 0, find a port free for UDP (and TCP when on). The probe
/// sockets close again before we bind: a small race, retried by the
/// caller's restart if it loses.
fn pick_port(listen: SocketAddr, tcp: bool) -> Result<SocketAddr, SipError> {
    if listen.port() != 0 {
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
        if !tcp {
            return Ok(addr);
        }
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

/// Lets `builder` listen for the TCP relay on a free loopback port.
async fn internal_tcp(builder: &mut EndpointBuilder) -> std::io::Result<SocketAddr> {
    let mut last_error = None;
    for _ in 0..16 {
        let probe = std::net::TcpListener::bind((IpAddr::from([127, 0, 0, 1]), 0))?;
        let addr = probe.local_addr()?;
        drop(probe);
        match builder.listen_tcp(addr).await {
            Ok(()) => return Ok(addr),
            Err(e) => last_error = Some(e),
        }
    }
    Err(last_error.unwrap_or_else(|| std::io::Error::other("no free loopback port")))
}
