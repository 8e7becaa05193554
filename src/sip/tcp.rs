//! The TCP front door: we accept SIP over TCP ourselves, with the trunk
//! ACL applied at accept, connections capped per source and in total, a
//! partial message closed after `message_timeout_seconds` (slow-loris) and
//! an idle connection after `idle_timeout_seconds`, and messages framed
//! (65,535 bytes at most, as ezk's own limit) and put to the edge one by one.
//!
//! ezk-sip-core cannot take a connection accepted elsewhere, so each
//! admitted connection is relayed over loopback to a listener of a second
//! ezk endpoint that only we connect to. [`TcpPeers`] maps the relay's
//! loopback address back to the real peer, and the guard layer puts that
//! back into the request (source, Via `received`/`rport`) before anything
//! reads it. Responses and requests from ezk flow back unchanged.
//!
//! In `reject` mode a stranger's connection is accepted (within the same
//! caps) for one message, which gets the edge's one stateless 403 as over
//! UDP, and is then closed; in the default `drop` mode it is closed at
//! accept.
//!
//! SIP over TLS comes through the same door ([`super::tls`] says why): a
//! second acceptor with its own counts (same limits) admits the source
//! first, then runs the TLS handshake within `message_timeout_seconds`,
//! and relays the decrypted stream exactly as a TCP one.
//!
//! Must not parse SIP beyond framing: the edge, the receive path's screen
//! ([`super::udp::screen`]) and ezk do that.

pub(crate) use super::base::TcpPeers;
use super::base::{Admission, Transport};
use super::edge::{EdgeGuard, Verdict};
use super::udp::{self, Screened};
use crate::config::SipTcpConfig;
use crate::metrics::{SIP_REQUESTS_REJECTED_TOTAL, SIP_TCP_CONNECTIONS, SIP_TLS_CONNECTIONS};
use bytes::{Buf, BytesMut};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;

/// The largest SIP message over TCP (ezk's limit, and the UDP maximum).
const MAX_MESSAGE: usize = u16::MAX as usize;

/// Open connections, per source and in total.
#[derive(Default)]
struct Counts {
    total: usize,
    by_source: HashMap<IpAddr, usize>,
}

struct TcpEdge {
    guard: Arc<EdgeGuard>,
    limits: SipTcpConfig,
    /// The internal ezk listener on loopback.
    internal: SocketAddr,
    peers: Arc<TcpPeers>,
    counts: Mutex<Counts>,
    /// TLS: the handshake after admission; `None` for plain TCP.
    tls: Option<TlsAcceptor>,
    /// `Tcp` or `Tls`, for the edge's accounting and the peer map.
    transport: Transport,
    /// The open-connections gauge of this door.
    gauge: &'static str,
}

/// One admitted connection's place in the counts.
struct Slot {
    edge: Arc<TcpEdge>,
    ip: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut counts = self.edge.counts();
        counts.total = counts.total.saturating_sub(1);
        if let Some(n) = counts.by_source.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                counts.by_source.remove(&self.ip);
            }
        }
        metrics::gauge!(self.edge.gauge).set(counts.total as f64);
    }
}

impl TcpEdge {
    fn counts(&self) -> MutexGuard<'_, Counts> {
        self.counts.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A slot for a new connection from `peer` and what to do with it, or
    /// `None` to close it at once.
    fn admit(self: &Arc<Self>, peer: SocketAddr) -> Option<(Slot, Serve)> {
        if self.guard.is_banned(peer.ip()) {
            return None;
        }
        let serve = match self.guard.admission(peer, self.transport, "connect") {
            Admission::Drop if self.guard.rejects_strangers() => Serve::RejectOnce,
            Admission::Drop => return None,
            Admission::Admit | Admission::Authenticate => Serve::Relay,
        };
        let mut counts = self.counts();
        let from_source = counts.by_source.get(&peer.ip()).copied().unwrap_or(0);
        if counts.total >= self.limits.max_connections as usize
            || from_source >= self.limits.max_connections_per_source as usize
        {
            return None;
        }
        counts.total += 1;
        *counts.by_source.entry(peer.ip()).or_default() += 1;
        metrics::gauge!(self.gauge).set(counts.total as f64);
        Some((
            Slot {
                edge: Arc::clone(self),
                ip: peer.ip(),
            },
            serve,
        ))
    }
}

/// What an admitted connection gets.
enum Serve {
    /// Relayed to the stack, message by message through the edge.
    Relay,
    /// A stranger in `reject` mode: its first message gets the edge's one
    /// stateless answer, as over UDP, then the connection is closed.
    RejectOnce,
}

fn reject(reason: &'static str) {
    metrics::counter!(SIP_REQUESTS_REJECTED_TOTAL, "reason" => reason).increment(1);
}

/// Accepts SIP over TCP (or, with `tls`, over TLS) on `listener` for ever.
pub(crate) fn spawn_acceptor(
    listener: TcpListener,
    guard: Arc<EdgeGuard>,
    limits: SipTcpConfig,
    internal: SocketAddr,
    peers: Arc<TcpPeers>,
    tls: Option<TlsAcceptor>,
) {
    let (transport, gauge) = match tls {
        Some(_) => (Transport::Tls, SIP_TLS_CONNECTIONS),
        None => (Transport::Tcp, SIP_TCP_CONNECTIONS),
    };
    let edge = Arc::new(TcpEdge {
        guard,
        limits,
        internal,
        peers,
        counts: Mutex::default(),
        tls,
        transport,
        gauge,
    });
    tokio::spawn(async move {
        loop {
            let (stream, peer) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of descriptors, most likely: let some close.
                    tracing::warn!(error = %e, transport = %edge.transport, "SIP accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let Some((slot, serve)) = edge.admit(peer) else {
                reject("tcp_refused");
                tracing::debug!(%peer, transport = %edge.transport, "SIP connection refused");
                drop(stream);
                continue;
            };
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                let edge = &slot.edge;
                match &edge.tls {
                    None => serve_stream(edge, serve, stream, peer).await,
                    Some(acceptor) => {
                        // The handshake counts as the first message: a
                        // peer that stalls in it is closed like a
                        // slow-loris one.
                        let timeout =
                            Duration::from_secs(u64::from(edge.limits.message_timeout_seconds));
                        match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
                            Ok(Ok(tls)) => serve_stream(edge, serve, tls, peer).await,
                            Ok(Err(e)) => {
                                reject("tls_handshake");
                                tracing::debug!(%peer, error = %e, "SIP TLS handshake failed");
                            }
                            Err(_) => {
                                reject("tls_handshake");
                                tracing::debug!(%peer, "SIP TLS handshake timed out");
                            }
                        }
                    }
                }
                drop(slot);
            });
        }
    });
}

/// A byte stream from a peer: TCP, or TLS over it.
trait PeerStream: AsyncRead + AsyncWrite + Send + Unpin {}

impl<S: AsyncRead + AsyncWrite + Send + Unpin> PeerStream for S {}

async fn serve_stream(edge: &TcpEdge, serve: Serve, stream: impl PeerStream, peer: SocketAddr) {
    match serve {
        Serve::Relay => relay(edge, stream, peer).await,
        Serve::RejectOnce => reject_once(edge, stream, peer).await,
    }
}

/// Reads one message from a stranger (within `message_timeout_seconds`),
/// sends the edge's answer to it if there is one (a 403 never larger than
/// the request, RFC 3261 §8.2.7 stateless), and closes: one answer per
/// connection, nothing relayed, nothing kept. The stranger's rate limit
/// and ban apply to the message as on UDP.
async fn reject_once(edge: &TcpEdge, mut stream: impl PeerStream, peer: SocketAddr) {
    let deadline = tokio::time::Instant::now()
        + Duration::from_secs(u64::from(edge.limits.message_timeout_seconds));
    let mut buffer = BytesMut::with_capacity(4096);
    loop {
        let blank = buffer
            .iter()
            .take_while(|b| matches!(b, b'\r' | b'\n'))
            .count();
        buffer.advance(blank);
        match frame(&buffer) {
            Frame::Complete(len) => {
                if let Verdict::Reply(reply) =
                    edge.guard.inspect(peer, edge.transport, &buffer[..len])
                {
                    let _ = stream.write_all(&reply).await;
                    let _ = stream.shutdown().await;
                }
                return;
            }
            Frame::Invalid(reason) => {
                reject(reason);
                return;
            }
            Frame::Incomplete => {}
        }
        match tokio::time::timeout_at(deadline, stream.read_buf(&mut buffer)).await {
            Ok(Ok(n)) if n > 0 => {}
            Ok(_) => return,
            Err(_) => {
                reject("tcp_timeout");
                return;
            }
        }
    }
}

/// Milliseconds since `origin`, for the last-activity mark shared by the
/// two directions.
fn millis_since(origin: Instant) -> u64 {
    u64::try_from(origin.elapsed().as_millis()).unwrap_or(u64::MAX)
}

async fn relay(edge: &TcpEdge, stream: impl PeerStream, peer: SocketAddr) {
    let internal = match TcpStream::connect(edge.internal).await {
        Ok(internal) => internal,
        Err(e) => {
            tracing::warn!(error = %e, "SIP TCP relay to the stack failed");
            return;
        }
    };
    let Ok(relay_addr) = internal.local_addr() else {
        return;
    };
    edge.peers.map().insert(relay_addr, (peer, edge.transport));
    let _ = internal.set_nodelay(true);
    let (from_peer, to_peer) = tokio::io::split(stream);
    let (from_stack, to_stack) = internal.into_split();
    let tls = edge.transport == Transport::Tls;
    let origin = Instant::now();
    let activity = AtomicU64::new(0);
    // Our own stateless answers (400, 416) to the peer, between the
    // stack's messages.
    let (replies_tx, replies_rx) = mpsc::channel(4);
    tokio::select! {
        () = downstream(from_stack, to_peer, replies_rx, tls, origin, &activity) => {}
        () = upstream(edge, from_peer, to_stack, replies_tx, peer, origin, &activity) => {}
    }
    edge.peers.map().remove(&relay_addr);
}

/// From the stack to the peer, whole messages at a time, and between
/// them our own answers: only complete messages are forwarded, so the
/// stream to the peer is always at a message boundary when a reply of
/// ours goes out.
async fn downstream(
    mut from_stack: impl AsyncRead + Unpin,
    mut to_peer: impl AsyncWrite + Unpin,
    mut replies: mpsc::Receiver<Vec<u8>>,
    tls: bool,
    origin: Instant,
    activity: &AtomicU64,
) {
    let mut buffer = BytesMut::with_capacity(16 * 1024);
    loop {
        tokio::select! {
            read = from_stack.read_buf(&mut buffer) => match read {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            },
            Some(reply) = replies.recv() => {
                if to_peer.write_all(&reply).await.is_err() {
                    return;
                }
                continue;
            }
        }
        let whole = whole_messages(&buffer);
        if whole > 0 {
            if tls {
                super::tls::mark_via_tls(&mut buffer[..whole], |m| match frame(m) {
                    Frame::Complete(len) => Some(len),
                    _ => None,
                });
            }
            if to_peer.write_all(&buffer[..whole]).await.is_err() {
                return;
            }
            buffer.advance(whole);
            activity.store(millis_since(origin), Ordering::Relaxed);
        }
    }
}

/// How many bytes at the start of `buffer` are whole messages (with any
/// CRLF keepalives between them). What ezk sends always frames; if it did
/// not, everything goes (the connection is then beyond repair anyway).
fn whole_messages(buffer: &[u8]) -> usize {
    let mut end = 0;
    loop {
        end += buffer[end..]
            .iter()
            .take_while(|b| matches!(b, b'\r' | b'\n'))
            .count();
        match frame(&buffer[end..]) {
            Frame::Complete(len) => end += len,
            Frame::Incomplete => return end,
            Frame::Invalid(_) => return buffer.len(),
        }
    }
}

/// From the peer to the stack, one framed message at a time, each put to
/// the edge. Returns when the connection is to be closed.
async fn upstream(
    edge: &TcpEdge,
    mut from_peer: impl AsyncRead + Unpin,
    mut to_stack: impl AsyncWrite + Unpin,
    replies: mpsc::Sender<Vec<u8>>,
    peer: SocketAddr,
    origin: Instant,
    activity: &AtomicU64,
) {
    let message_timeout = Duration::from_secs(u64::from(edge.limits.message_timeout_seconds));
    let idle_timeout = Duration::from_secs(u64::from(edge.limits.idle_timeout_seconds));
    let mut buffer = BytesMut::with_capacity(4096);
    // When the message now in the buffer began.
    let mut started: Option<Instant> = None;
    loop {
        // Whatever complete messages the buffer holds go first.
        loop {
            // Leading CRLFs are keepalives (RFC 5626 §4.4.1): ezk answers.
            let blank = buffer
                .iter()
                .take_while(|b| matches!(b, b'\r' | b'\n'))
                .count();
            if blank > 0 {
                if to_stack.write_all(&buffer[..blank]).await.is_err() {
                    return;
                }
                buffer.advance(blank);
            }
            match frame(&buffer) {
                Frame::Incomplete => break,
                Frame::Invalid(reason) => {
                    reject(reason);
                    tracing::debug!(%peer, reason, "SIP TCP connection closed");
                    return;
                }
                Frame::Complete(len) => {
                    let message = buffer.split_to(len);
                    started = None;
                    activity.store(millis_since(origin), Ordering::Relaxed);
                    match edge.guard.inspect(peer, edge.transport, &message) {
                        Verdict::Pass { trusted } => match udp::screen(&message, trusted) {
                            Screened::Go(message) => {
                                let name = if edge.transport == Transport::Tls {
                                    "TLS"
                                } else {
                                    "TCP"
                                };
                                crate::trace::sip::received(name, peer, &message);
                                if to_stack.write_all(&message).await.is_err() {
                                    return;
                                }
                            }
                            Screened::Answer(reply) => {
                                if replies.send(reply).await.is_err() {
                                    return;
                                }
                            }
                            Screened::Dropped => {}
                        },
                        Verdict::KeepAlive => {
                            if to_stack.write_all(&message).await.is_err() {
                                return;
                            }
                        }
                        // Overload: the stateless 503, the connection kept.
                        Verdict::Busy(reply) => {
                            if replies.send(reply).await.is_err() {
                                return;
                            }
                        }
                        // A source no longer admitted (a reload) or banned
                        // meanwhile: no answers over TCP, close.
                        Verdict::Reply(_) | Verdict::Drop("banned" | "not_admitted") => return,
                        Verdict::Drop(_) => {}
                    }
                }
            }
        }
        if !buffer.is_empty() && started.is_none() {
            started = Some(Instant::now());
        }
        let last = origin + Duration::from_millis(activity.load(Ordering::Relaxed));
        let idle_deadline = last + idle_timeout;
        let deadline = match started {
            Some(started) => (started + message_timeout).min(idle_deadline),
            None => idle_deadline,
        };
        let read = tokio::time::timeout_at(deadline.into(), from_peer.read_buf(&mut buffer));
        match read.await {
            Ok(Ok(0) | Err(_)) => return,
            Ok(Ok(_)) => {}
            Err(_) => {
                // The other direction may have moved the idle deadline.
                let last = origin + Duration::from_millis(activity.load(Ordering::Relaxed));
                if started.is_none() && last + idle_timeout > Instant::now() {
                    continue;
                }
                reject("tcp_timeout");
                tracing::debug!(%peer, partial = started.is_some(), "SIP TCP connection timed out");
                return;
            }
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Frame {
    /// More bytes are needed.
    Incomplete,
    /// The first message is this many bytes long.
    Complete(usize),
    /// Close the connection (the metric reason).
    Invalid(&'static str),
}

/// Where the first message in `buffer` ends (RFC 3261 §18.3: the head ends
/// at the blank line, the body is Content-Length bytes long).
fn frame(buffer: &[u8]) -> Frame {
    let Some(head_end) = buffer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|p| p + 4)
    else {
        return if buffer.len() > MAX_MESSAGE {
            Frame::Invalid("too_large")
        } else {
            Frame::Incomplete
        };
    };
    let mut content_length = 0usize;
    for line in buffer[..head_end].split(|b| *b == b'\n').skip(1) {
        let Some(colon) = line.iter().position(|b| *b == b':') else {
            continue;
        };
        let name = line[..colon].trim_ascii();
        if name.eq_ignore_ascii_case(b"content-length") || name.eq_ignore_ascii_case(b"l") {
            let value = std::str::from_utf8(line[colon + 1..].trim_ascii()).ok();
            match value.and_then(|v| v.parse::<usize>().ok()) {
                Some(len) => content_length = len,
                None => return Frame::Invalid("bad_request"),
            }
        }
    }
    let total = head_end.saturating_add(content_length);
    if total > MAX_MESSAGE {
        Frame::Invalid("too_large")
    } else if buffer.len() < total {
        Frame::Incomplete
    } else {
        Frame::Complete(total)
    }
}

#[cfg(test)]
mod tests {
    use super::{Frame, frame};

    #[test]
    fn frames_by_content_length() {
        let head = b"BYE sip:a@b SIP/2.0\r\nl: 4\r\n\r\n";
        assert_eq!(frame(head), Frame::Incomplete);
        let mut whole = head.to_vec();
        whole.extend_from_slice(b"abcdNEXT");
        assert_eq!(frame(&whole), Frame::Complete(head.len() + 4));
        assert_eq!(frame(b"BYE sip:a@b SIP/2.0\r\nVia: x"), Frame::Incomplete);
        assert_eq!(
            frame(b"BYE sip:a@b SIP/2.0\r\nContent-Length: x\r\n\r\n"),
            Frame::Invalid("bad_request")
        );
        assert_eq!(
            frame(b"BYE sip:a@b SIP/2.0\r\nContent-Length: 70000\r\n\r\n"),
            Frame::Invalid("too_large")
        );
        assert_eq!(frame(&vec![b'a'; 70_000]), Frame::Invalid("too_large"));
    }
}
