//! The UDP front door: we read the SIP socket ourselves, ask the edge
//! ([`super::edge`]) about each datagram, and only then parse it and hand
//! it to ezk's endpoint, so a stranger's packet costs no task, no parse
//! and no transaction.
//!
//! ezk-sip-core offers no way to plug in a receive path: `bind_udp` binds
//! the socket and spawns its own reader, which waits for the endpoint on a
//! broadcast channel of capacity one before it reads anything. We bind and
//! build on a current-thread runtime of our own, where that reader cannot
//! run between two `build()` calls: the second endpoint overwrites the
//! first in the channel, the reader sees `Lagged` and ends without ever
//! reading. The socket stays in the real endpoint's transports (so requests
//! we send leave from the SIP port, and responses come from it), and we read
//! a duplicate of its descriptor. That runtime keeps running on its thread
//! for the life of the process: the socket is registered with its I/O
//! driver. Nothing of ezk is patched.
//!
//! Our reader runs on that same runtime, reading a duplicate of the
//! descriptor registered with the same I/O driver: ezk's registration of
//! the socket wakes that thread for every datagram anyway (both watch the
//! same socket), so reading there costs no second wake-up. Admitted
//! messages go to the endpoint on the daemon's runtime, as ezk's own
//! reader would hand them.
//!
//! Must not decide anything about a datagram: that is the edge's job.

use super::base::{SipError, Transport};
use super::edge::{self, EdgeGuard, Verdict};
use super::lint;
use crate::metrics::SIP_REQUESTS_REJECTED_TOTAL;
use bytes::Bytes;
use ezk_sip_core::transport::{ReceivedMessage, TpHandle};
use ezk_sip_core::{Endpoint, EndpointBuilder};
use ezk_sip_types::Headers;
use ezk_sip_types::header::typed::{ContentLength, Via};
use ezk_sip_types::msg::{Line, MessageLine, PullParser};
use ezk_sip_types::parse::Parse;
use std::borrow::Cow;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{FromRawFd, RawFd};
use std::sync::Arc;
use tokio::runtime::Handle;

/// The largest datagram we read (the UDP maximum; ezk reads the same).
const MAX_DATAGRAM: usize = u16::MAX as usize;

/// What [`build`] returns: the endpoint, its UDP transport handle, a
/// duplicate of the SIP socket (non-blocking, not yet registered) and the
/// runtime that drives the socket's I/O.
pub(crate) type Built = (Endpoint, TpHandle, std::net::UdpSocket, Handle);

/// Binds UDP on `addr` into `builder`, builds the endpoint with ezk's own
/// UDP reader disarmed, and returns it with what the reader needs.
pub(crate) async fn build(
    mut builder: EndpointBuilder,
    addr: SocketAddr,
) -> Result<Built, SipError> {
    let bind_error = |source| SipError::Bind {
        transport: Transport::Udp,
        addr,
        source,
    };
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("sip-udp-io".into())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime,
                Err(e) => {
                    let _ = tx.send(Err(e));
                    return;
                }
            };
            let io = runtime.handle().clone();
            let built = runtime.block_on(async move {
                let handle = builder.bind_udp(addr).await?;
                // No await between these two: ezk's reader, spawned on this
                // runtime, cannot run before the second endpoint is sent.
                let endpoint = builder.build();
                drop(builder.build());
                Ok::<_, io::Error>((endpoint, handle, io))
            });
            let ok = built.is_ok();
            let _ = tx.send(built);
            if ok {
                runtime.block_on(std::future::pending::<()>());
            }
        })
        .map_err(bind_error)?;
    let (endpoint, handle, io) = rx
        .await
        .map_err(|_| bind_error(io::Error::other("the SIP I/O thread ended")))?
        .map_err(bind_error)?;
    let socket = duplicate_udp(handle.bound())
        .and_then(|socket| socket.set_nonblocking(true).map(|()| socket))
        .map_err(bind_error)?;
    Ok((endpoint, handle, socket, io))
}

/// A duplicate of the UDP socket of this process bound to `bound`.
#[allow(unsafe_code)] // FFI: std has no safe way to duplicate a descriptor it does not own
fn duplicate_udp(bound: SocketAddr) -> io::Result<std::net::UdpSocket> {
    for entry in std::fs::read_dir("/proc/self/fd")? {
        let Some(fd) = entry?
            .file_name()
            .to_str()
            .and_then(|name| name.parse::<RawFd>().ok())
        else {
            continue;
        };
        if !is_datagram_socket(fd) {
            continue;
        }
        // SAFETY: F_DUPFD_CLOEXEC on any descriptor number is sound; it
        // fails for a closed one and otherwise returns a new descriptor.
        let copy = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0) };
        if copy < 0 {
            continue;
        }
        // SAFETY: `copy` is a fresh descriptor owned by nothing else, and
        // a datagram socket when `fd` was one.
        let socket = unsafe { std::net::UdpSocket::from_raw_fd(copy) };
        if socket.local_addr().is_ok_and(|addr| addr == bound) {
            return Ok(socket);
        }
    }
    Err(io::Error::new(
        io::ErrorKind::NotFound,
        format!("no UDP socket bound to {bound}"),
    ))
}

#[allow(unsafe_code)] // FFI: getsockopt(SO_TYPE) has no safe wrapper in std or libc
fn is_datagram_socket(fd: RawFd) -> bool {
    let mut kind: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `kind`; a
    // descriptor that is not a socket makes it fail, nothing else.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_TYPE,
            (&raw mut kind).cast(),
            &raw mut len,
        )
    };
    rc == 0 && kind == libc::SOCK_DGRAM
}

/// Reads the SIP port forever on the socket's I/O runtime (`io`): the
/// edge decides, admitted messages go to the endpoint on the calling
/// (daemon's) runtime.
pub(crate) fn spawn_reader(
    socket: std::net::UdpSocket,
    io: &Handle,
    endpoint: Endpoint,
    handle: TpHandle,
    guard: Arc<EdgeGuard>,
) {
    let daemon = Handle::current();
    io.spawn(async move {
        let socket = match tokio::net::UdpSocket::from_std(socket) {
            Ok(socket) => socket,
            Err(e) => {
                tracing::error!(error = %e, "SIP UDP reader cannot start");
                return;
            }
        };
        let mut buffer = vec![0u8; MAX_DATAGRAM];
        loop {
            let (len, source) = match socket.recv_from(&mut buffer).await {
                Ok(received) => received,
                Err(e) => {
                    // ICMP errors of earlier sends surface here; the socket
                    // itself is fine.
                    tracing::debug!(error = %e, "SIP UDP receive error");
                    // Never spin on an error that does not go away.
                    tokio::time::sleep(std::time::Duration::from_millis(1)).await;
                    continue;
                }
            };
            let raw = &buffer[..len];
            let sent = match guard.inspect(source, Transport::Udp, raw) {
                Verdict::Pass { trusted } => match screen(raw, trusted) {
                    Screened::Go(message) => {
                        crate::trace::sip::received("UDP", source, &message);
                        let buffer = match message {
                            Cow::Borrowed(raw) => Bytes::copy_from_slice(raw),
                            Cow::Owned(normalized) => Bytes::from(normalized),
                        };
                        match parse(buffer) {
                            Some((line, headers, body, buffer)) => {
                                // ezk spawns the message's task on the
                                // current runtime: make that the daemon's.
                                let _daemon = daemon.enter();
                                endpoint.receive(ReceivedMessage::new(
                                    source,
                                    buffer,
                                    handle.clone(),
                                    line,
                                    headers,
                                    body,
                                ));
                            }
                            None => tracing::debug!(%source, "unparsable SIP datagram dropped"),
                        }
                        Ok(())
                    }
                    Screened::Answer(reply) => socket.send_to(&reply, source).await.map(drop),
                    Screened::Dropped => Ok(()),
                },
                Verdict::KeepAlive => socket.send_to(b"\r\n", source).await.map(drop),
                Verdict::Reply(reply) | Verdict::Busy(reply) => {
                    socket.send_to(&reply, source).await.map(drop)
                }
                Verdict::Drop(_) => Ok(()),
            };
            if let Err(e) = sent {
                tracing::debug!(error = %e, %source, "SIP UDP send failed");
            }
        }
    });
}

type Parsed = (MessageLine, Headers, Bytes, Bytes);

/// What becomes of a message the edge passed.
pub(crate) enum Screened<'a> {
    /// For ezk, normalised.
    Go(Cow<'a, [u8]>),
    /// Answered by us, once and without state (see [`lint::screen`]).
    Answer(Vec<u8>),
    /// Nothing to send.
    Dropped,
}

/// The receive path between the edge and ezk, for UDP and TCP alike: the
/// message normalised so that ezk's parser takes what RFC 3261 allows
/// ([`lint::normalize`]), and the requests ezk would drop but RFC 3261
/// answers answered here ([`lint::screen`]; only to `trusted` sources,
/// never with more bytes than came in).
pub(crate) fn screen(raw: &[u8], trusted: bool) -> Screened<'_> {
    let message = lint::normalize(raw);
    let Err((code, reason)) = lint::screen(&message) else {
        return Screened::Go(message);
    };
    let label = match code {
        416 => "unsupported_uri_scheme",
        505 => "version_not_supported",
        _ => "bad_request",
    };
    metrics::counter!(SIP_REQUESTS_REJECTED_TOTAL, "reason" => label).increment(1);
    // Never more bytes out than came in (the normalised message may have
    // grown).
    let reply = trusted
        .then(|| edge::stateless(&message, &format!("{code} {reason}"), false))
        .flatten()
        .filter(|reply| reply.len() <= raw.len());
    reply.map_or(Screened::Dropped, Screened::Answer)
}

/// A whole SIP message in one datagram, split as ezk's own UDP reader does:
/// start line, header lines, and the body by Content-Length (or the rest of
/// the datagram without one). `None` for what ezk would drop: a bad start
/// line, a bad header line, invalid UTF-8, no Via, or a body shorter than
/// its Content-Length.
pub(crate) fn parse(buffer: Bytes) -> Option<Parsed> {
    let mut parser = PullParser::new(&buffer, 0);
    let mut line = None;
    let mut headers = Headers::new();
    for item in &mut parser {
        let text = std::str::from_utf8(item.ok()?).ok()?;
        if line.is_none() {
            line = Some(MessageLine::parse(&buffer)(text).ok()?.1);
        } else {
            let (_, header) = Line::parse(&buffer, text).ok()?;
            headers.insert(header.name, header.value);
        }
    }
    // ezk's endpoint reads the first Via of every message without checking
    // there is one (ezk-sip-core 0.9.2 `Endpoint::do_receive`): a message
    // whose Via headers decode to none would panic its receive task.
    match headers.get_named::<Vec<Via>>() {
        Ok(via) if !via.is_empty() => {}
        _ => return None,
    }
    let head_end = parser.head_end();
    let body = match headers.get_named::<ContentLength>() {
        Ok(ContentLength(0)) => Bytes::new(),
        Ok(ContentLength(len)) => {
            let end = head_end.checked_add(len)?;
            if end > buffer.len() {
                return None;
            }
            buffer.slice(head_end..end)
        }
        Err(_) => buffer.slice(head_end.min(buffer.len())..),
    };
    Some((line?, headers, body, buffer))
}

#[cfg(test)]
mod tests {
    use super::parse;
    use bytes::Bytes;

    #[test]
    fn splits_a_datagram_like_ezk() {
        let raw = b"OPTIONS sip:a@b SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\nContent-Length: 3\r\n\r\nabcdef";
        let (line, headers, body, _) = parse(Bytes::from_static(raw)).expect("parsed");
        assert!(line.is_request());
        assert_eq!(headers.iter().count(), 2);
        assert_eq!(&body[..], b"abc");
        // A body shorter than its Content-Length, and a broken header line.
        assert!(
            parse(Bytes::from_static(
                b"OPTIONS sip:a@b SIP/2.0\r\nContent-Length: 9\r\n\r\nabc"
            ))
            .is_none()
        );
        assert!(
            parse(Bytes::from_static(
                b"OPTIONS sip:a@b SIP/2.0\r\nno colon here\r\n\r\n"
            ))
            .is_none()
        );
    }
}
