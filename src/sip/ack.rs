//! Our own 2xx retransmission for inbound INVITEs (RFC 3261 §13.3.1.4):
//! the 200 goes out again after T1, 2*T1, 4*T1 ... capped at T2, until the
//! ACK arrives or 64*T1 passed; then the caller ends the dialog with BYE.
//!
//! # Why not ezk's
//!
//! ezk-sip-ua 0.9.1's `InviteAcceptor::respond_success` sends the 200 and
//! waits for the ACK in a private loop (`invite::receive_ack`) that resends
//! on a flat 1 s schedule and gives up after about 8.5 s, dropping the
//! session it would have returned. Nothing of that loop is configurable,
//! and the only way to build the `InviteSession` a [`Call`](super::Call)
//! needs is that method. So:
//!
//! 1. ezk sends the 200 once (its first transmission is ours too);
//! 2. right after it, we hand ezk's endpoint a local ACK for it, never seen
//!    on the wire ([`AckTemplate::message`], with a branch only we know),
//!    so that its loop ends before its first resend (at T1) and it returns
//!    the session;
//! 3. from then on we resend a copy of the 200 on the RFC schedule until
//!    the peer's real ACK, which [`AckLayer`] takes before ezk's dialog
//!    layer (that ACK carries the SDP answer to an offer in our 200).
//!
//! Nothing of ezk is patched or copied. T1 is [`SipTimers::t1`] (500 ms,
//! `[sip] t1_ms` shortens it for tests only); T2 is 8*T1 (4 s by default).
//!
//! Must not: take any ACK but the one for a 2xx we are resending, or
//! decide what happens to the call when no ACK comes (the caller does).

use super::base::Transport;
use ezk_sip_core::transport::{OutgoingResponse, ReceivedMessage, TpHandle};
use ezk_sip_core::{Endpoint, IncomingRequest, Layer, MayTake};
use ezk_sip_types::Method;
use ezk_sip_types::print::{AppendCtx, PrintCtx};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::oneshot;
use tokio::time::{Instant, sleep_until};

/// RFC 3261 §17.1.1.1 default T1.
pub(crate) const DEFAULT_T1: Duration = Duration::from_millis(500);

/// The most 2xx responses waiting for their ACK at once; more are answered
/// but resent by ezk's schedule only (never a growing map).
const MAX_PENDING: usize = 65_536;

/// A 2xx waiting for its ACK: the ACK's key is Call-ID and CSeq number
/// (§17.1.1.3: the ACK of a 2xx has the INVITE's CSeq number).
type Key = (Box<str>, u32);

struct Pending {
    /// The branch of our local ACK: that one goes on to ezk.
    synthetic_branch: Box<str>,
    ack: oneshot::Sender<IncomingRequest>,
}

/// The SIP stack's timing and the 2xx responses waiting for an ACK. One
/// per stack, shared by its UDP and TCP endpoints.
pub(crate) struct SipTimers {
    /// RFC 3261 T1 (round-trip estimate).
    pub(crate) t1: Duration,
    /// RFC 4028 settings, see `timers`.
    pub(crate) session: super::timers::SessionTimerConfig,
    pending: Mutex<HashMap<Key, Pending>>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl SipTimers {
    pub(crate) fn new(t1: Duration, session: super::timers::SessionTimerConfig) -> Self {
        Self {
            t1,
            session,
            pending: Mutex::new(HashMap::new()),
        }
    }

    /// T2 scales with T1 (RFC 3261 defaults: 500 ms and 4 s).
    pub(crate) fn t2(&self) -> Duration {
        self.t1 * 8
    }

    /// Timer H / the 2xx give-up time: 64*T1.
    pub(crate) fn timer_h(&self) -> Duration {
        self.t1 * 64
    }

    /// Starts taking the ACK `template` stands for; `None` when too many
    /// are pending. Dropping the [`AckWait`] forgets it.
    pub(crate) fn expect_ack(self: &Arc<Self>, template: &AckTemplate) -> Option<AckWait> {
        let (tx, rx) = oneshot::channel();
        let key: Key = (template.call_id.clone(), template.cseq);
        let mut pending = lock(&self.pending);
        if pending.len() >= MAX_PENDING {
            return None;
        }
        pending.insert(
            key.clone(),
            Pending {
                synthetic_branch: template.branch.clone(),
                ack: tx,
            },
        );
        Some(AckWait {
            timers: Arc::clone(self),
            key,
            rx,
        })
    }
}

/// Registered interest in one ACK; forgotten when dropped.
pub(crate) struct AckWait {
    timers: Arc<SipTimers>,
    key: Key,
    rx: oneshot::Receiver<IncomingRequest>,
}

impl Drop for AckWait {
    fn drop(&mut self) {
        lock(&self.timers.pending).remove(&self.key);
    }
}

impl AckWait {
    /// Resends `response` (first sent at `sent_at`) at T1, 2*T1, ... capped
    /// at T2 until the peer's ACK arrives (returned) or 64*T1 after
    /// `sent_at` (`None`). Returns how many times it resent, too.
    pub(crate) async fn retransmit_until_ack(
        mut self,
        endpoint: &Endpoint,
        mut response: OutgoingResponse,
        sent_at: Instant,
    ) -> (Option<IncomingRequest>, u32) {
        let t1 = self.timers.t1;
        let t2 = self.timers.t2();
        let give_up = sent_at + self.timers.timer_h();
        let mut interval = t1;
        let mut next = sent_at + interval;
        let mut resent = 0;
        loop {
            tokio::select! {
                ack = &mut self.rx => return (ack.ok(), resent),
                () = sleep_until(next.min(give_up)) => {
                    if Instant::now() >= give_up {
                        return (None, resent);
                    }
                    resent += 1;
                    tracing::debug!(resent, "200 OK retransmitted, no ACK yet");
                    if let Err(e) = endpoint.send_outgoing_response(&mut response).await {
                        tracing::warn!(error = %e, "cannot retransmit 200 OK");
                    }
                    interval = (interval * 2).min(t2);
                    next += interval;
                }
            }
        }
    }
}

/// What a local ACK for our 200 to one INVITE needs.
pub(crate) struct AckTemplate {
    text: String,
    source: SocketAddr,
    transport: TpHandle,
    call_id: Box<str>,
    cseq: u32,
    branch: Box<str>,
}

impl AckTemplate {
    /// The ACK the peer would send for our 200 to `invite`, where
    /// `local_tag` is our To tag.
    pub(crate) fn of(invite: &IncomingRequest, local_tag: &str) -> Self {
        let headers = &invite.base_headers;
        let branch: Box<str> =
            format!("z9hG4bK-agentline-local-ack-{}", super::random_token()).into();
        let mut to = headers.to.clone();
        to.tag = Some(local_tag.to_owned().into());
        let transport = Transport::of(&invite.tp_info.transport);
        let source = invite.tp_info.source;
        let text = format!(
            "ACK {uri} SIP/2.0\r\nVia: SIP/2.0/{transport} {source};branch={branch}\r\nFrom: {from}\r\nTo: {to}\r\nCall-ID: {call_id}\r\nCSeq: {cseq} ACK\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n",
            uri = invite.line.uri.print_ctx(PrintCtx::default()),
            from = headers.from.print_ctx(PrintCtx::default()),
            to = to.print_ctx(PrintCtx::default()),
            call_id = headers.call_id.0,
            cseq = headers.cseq.cseq,
        );
        Self {
            text,
            source,
            transport: invite.tp_info.transport.clone(),
            call_id: headers.call_id.0.as_str().into(),
            cseq: headers.cseq.cseq,
            branch,
        }
    }

    /// The local ACK as if received from the peer on the INVITE's
    /// transport (ezk points the dialog at the ACK's source and transport,
    /// which are the INVITE's).
    pub(crate) fn message(&self) -> Option<ReceivedMessage> {
        let (line, headers, body, buffer) =
            super::udp::parse(bytes::Bytes::from(self.text.clone()))?;
        Some(ReceivedMessage::new(
            self.source,
            buffer,
            self.transport.clone(),
            line,
            headers,
            body,
        ))
    }
}

/// Takes the peer's ACK of a 2xx we are resending (before ezk's dialog
/// layer, which would hand it to nobody); lets our local ACK through.
pub(crate) struct AckLayer {
    timers: Arc<SipTimers>,
}

impl AckLayer {
    pub(crate) fn new(timers: Arc<SipTimers>) -> Self {
        Self { timers }
    }

    /// The stack's RFC 4028 settings (our outbound INVITEs offer them).
    pub(crate) fn session_timer(&self) -> super::timers::SessionTimerConfig {
        self.timers.session
    }
}

#[async_trait::async_trait]
impl Layer for AckLayer {
    fn name(&self) -> &'static str {
        "agentline-ack"
    }

    async fn receive(&self, _endpoint: &Endpoint, request: MayTake<'_, IncomingRequest>) {
        if request.line.method != Method::ACK {
            return;
        }
        let key: Key = (
            request.base_headers.call_id.0.as_str().into(),
            request.base_headers.cseq.cseq,
        );
        let branch = request
            .base_headers
            .via
            .first()
            .and_then(|via| via.params.get_val("branch"))
            .map(|b| b.as_str().to_owned())
            .unwrap_or_default();
        let mut pending = lock(&self.timers.pending);
        match pending.get(&key) {
            None => {}
            Some(p) if *p.synthetic_branch == *branch => {}
            Some(_) => {
                if let Some(p) = pending.remove(&key) {
                    drop(pending);
                    tracing::debug!(call_id = %key.0, "ACK for our 200 OK received");
                    // The waiter may have given up meanwhile: then the ACK
                    // is simply dropped, as a late one would be.
                    let _ = p.ack.send(request.take());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn t2_and_timer_h_scale_with_t1() {
        let timers = SipTimers::new(DEFAULT_T1, Default::default());
        assert_eq!(timers.t2(), Duration::from_secs(4));
        assert_eq!(timers.timer_h(), Duration::from_secs(32));
    }
}
