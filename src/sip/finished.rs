//! Non-INVITE requests answered without an ezk server transaction: the
//! in-dialog BYE of an established call, and in-dialog INFO and OPTIONS.
//!
//! An ezk `ServerTsx` keeps a task, a channel (tokio allocates a block of
//! 32 message slots, about 32 KB) and the whole response for 64*T1 = 32 s
//! after its final response, so that a retransmitted request is answered
//! again (RFC 3261 §17.2.2, Timer J). That is all the state Timer J needs:
//! here we send the final response ourselves and keep only its bytes and
//! destination, keyed by the request's branch and method (§17.2.3), for
//! the same 32 s, over UDP only (Timer J is zero on reliable transports).
//! A retransmission is answered from that copy by the guard layer before
//! any other layer sees it.
//!
//! A BYE for a dialog that has a [`Call`](super::Call) is taken by the
//! guard layer before ezk's dialog layer (which would open a transaction
//! for it): [`Finished::hang_up`] finds the call by dialog key and tells it
//! the peer hung up. The dialog layer then never sees that BYE, so its
//! CSeq order check (§12.2.2) does not apply to it: only a peer holding
//! the dialog's Call-ID and both tags can send one.
//!
//! Must not: keep more than [`MAX_REMEMBERED`] responses, answer a request
//! whose branch lacks the RFC 3261 magic cookie from the store (those keep
//! ezk's transaction), or decide what a request is answered.

use bytes::Bytes;
use ezk_sip_core::transport::OutgoingResponse;
use ezk_sip_core::{Endpoint, IncomingRequest};
use ezk_sip_types::print::{AppendCtx, PrintCtx};
use ezk_sip_ua::dialog::DialogKey;
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// Timer J for UDP: 64*T1 (RFC 3261 §17.2.2, Table 4).
const TIMER_J: Duration = Duration::from_secs(32);
/// The most responses kept at once: at 3,000 hang-ups a second that is
/// about 22 s of Timer J. Older ones are forgotten first; a retransmission
/// that old then meets the dialog layer (481), never a panic or growth.
pub(crate) const MAX_REMEMBERED: usize = 65_536;
/// RFC 3261 §8.1.1.7.
const MAGIC_COOKIE: &str = "z9hG4bK";

/// One final response, as sent.
struct Sent {
    bytes: Bytes,
    destination: SocketAddr,
}

#[derive(Default)]
struct Remembered {
    /// `branch SP method` to what we sent.
    by_key: HashMap<Box<str>, Sent>,
    /// Keys in the order they were sent, with their expiry.
    order: VecDeque<(Instant, Box<str>)>,
}

/// Responses kept for Timer J, and the calls waiting for their peer's BYE.
/// One per SIP stack, shared by the UDP and TCP endpoints.
#[derive(Default)]
pub(crate) struct Finished {
    remembered: Mutex<Remembered>,
    /// Established dialogs and how to tell their call the peer hung up.
    dialogs: Mutex<HashMap<DialogKey, oneshot::Sender<()>>>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock leaves a consistent map: keep going.
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The §17.2.3 key of a request with an RFC 3261 branch.
fn key_of(request: &IncomingRequest) -> Option<Box<str>> {
    let via = request.base_headers.via.first()?;
    let branch = via.params.get_val("branch")?;
    branch.starts_with(MAGIC_COOKIE).then(|| {
        let sent_by = via.sent_by.print_ctx(PrintCtx::default());
        format!("{branch} {} {sent_by}", request.line.method).into_boxed_str()
    })
}

impl Finished {
    /// Sends `response` (a final one) to `request` and keeps its bytes for
    /// retransmissions over UDP; the request, and with it any transaction
    /// ezk registered for it, is dropped. Falls back to ezk's own server
    /// transaction for a request without an RFC 3261 branch.
    pub(crate) async fn answer(
        &self,
        endpoint: &Endpoint,
        mut request: IncomingRequest,
        mut response: OutgoingResponse,
    ) {
        let key = key_of(&request).filter(|_| request.tp_info.transport.is_udp());
        let Some(key) = key else {
            let tsx = endpoint.create_server_tsx(&mut request);
            if let Err(e) = tsx.respond(response).await {
                tracing::debug!(error = %e, "cannot answer in-dialog request");
            }
            return;
        };
        drop(request);
        if let Err(e) = endpoint.send_outgoing_response(&mut response).await {
            tracing::debug!(error = %e, "cannot answer in-dialog request");
        }
        self.remember(
            key,
            Sent {
                // An exact-size copy: the printed buffer may have grown
                // to twice its length.
                bytes: Bytes::copy_from_slice(&response.parts.buffer),
                destination: response.parts.destination,
            },
            Instant::now(),
        );
    }

    fn remember(&self, key: Box<str>, sent: Sent, now: Instant) {
        let mut remembered = lock(&self.remembered);
        remembered.expire(now);
        while remembered.order.len() >= MAX_REMEMBERED {
            remembered.forget_oldest();
        }
        remembered.order.push_back((now + TIMER_J, key.clone()));
        remembered.by_key.insert(key, sent);
    }

    /// Answers a retransmitted request from the response we kept; `false`
    /// when there is none (a new request).
    pub(crate) async fn resend(&self, request: &IncomingRequest) -> bool {
        if !request.tp_info.transport.is_udp() {
            return false;
        }
        let Some(key) = key_of(request) else {
            return false;
        };
        let found = {
            let mut remembered = lock(&self.remembered);
            remembered.expire(Instant::now());
            remembered
                .by_key
                .get(&key)
                .map(|sent| (sent.bytes.clone(), sent.destination))
        };
        let Some((bytes, destination)) = found else {
            return false;
        };
        if let Err(e) = request.tp_info.transport.send(&bytes, destination).await {
            tracing::debug!(error = %e, "cannot resend final response");
        }
        true
    }

    /// How many responses are kept now.
    #[cfg(test)]
    fn remembered(&self) -> usize {
        lock(&self.remembered).by_key.len()
    }

    /// Registers an established dialog: its call learns of the peer's BYE
    /// through the returned watch, which unregisters when dropped.
    pub(crate) fn watch(self: &Arc<Self>, key: DialogKey) -> ByeWatch {
        let (tx, rx) = oneshot::channel();
        lock(&self.dialogs).insert(key.clone(), tx);
        ByeWatch {
            finished: Arc::clone(self),
            key,
            rx,
        }
    }

    /// For a BYE inside an established dialog: tells its call and returns
    /// `true` (the caller answers 200); `false` for any other dialog.
    pub(crate) fn hang_up(&self, request: &IncomingRequest) -> bool {
        let headers = &request.base_headers;
        let Some(local_tag) = headers.to.tag.as_ref() else {
            return false;
        };
        let key = DialogKey {
            call_id: headers.call_id.0.clone_detach(),
            peer_tag: headers.from.tag.as_ref().map(|t| t.clone_detach()),
            local_tag: local_tag.clone_detach(),
        };
        match lock(&self.dialogs).remove(&key) {
            // The call may have gone meanwhile: the 200 is still right
            // (the dialog existed until now).
            Some(tx) => {
                let _ = tx.send(());
                true
            }
            None => false,
        }
    }
}

impl Remembered {
    fn expire(&mut self, now: Instant) {
        while self.order.front().is_some_and(|(until, _)| *until <= now) {
            self.forget_oldest();
        }
    }

    fn forget_oldest(&mut self) {
        if let Some((_, key)) = self.order.pop_front() {
            self.by_key.remove(&key);
        }
    }
}

/// A call's registration for its peer's BYE.
pub(crate) struct ByeWatch {
    finished: Arc<Finished>,
    key: DialogKey,
    rx: oneshot::Receiver<()>,
}

impl ByeWatch {
    /// Resolves when the peer's BYE was answered. Cancel-safe; pending for
    /// ever once it fired.
    pub(crate) async fn bye(&mut self) {
        if (&mut self.rx).await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

impl Drop for ByeWatch {
    fn drop(&mut self) {
        lock(&self.finished.dialogs).remove(&self.key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sent() -> Sent {
        Sent {
            bytes: Bytes::from_static(b"SIP/2.0 200 OK\r\n\r\n"),
            destination: SocketAddr::from(([127, 0, 0, 1], 5060)),
        }
    }

    #[test]
    fn responses_expire_after_timer_j_and_stay_bounded() {
        let finished = Finished::default();
        let t0 = Instant::now();
        finished.remember("a BYE h".into(), sent(), t0);
        finished.remember("b BYE h".into(), sent(), t0 + Duration::from_secs(1));
        assert_eq!(finished.remembered(), 2);
        lock(&finished.remembered).expire(t0 + TIMER_J);
        assert_eq!(finished.remembered(), 1);
        lock(&finished.remembered).expire(t0 + TIMER_J + Duration::from_secs(1));
        assert_eq!(finished.remembered(), 0);

        for i in 0..MAX_REMEMBERED + 10 {
            finished.remember(format!("{i} BYE h").into(), sent(), t0);
        }
        assert_eq!(finished.remembered(), MAX_REMEMBERED);
        assert!(lock(&finished.remembered).by_key.contains_key("10 BYE h"));
        assert!(!lock(&finished.remembered).by_key.contains_key("9 BYE h"));
    }
}
