//! Outbound INVITE lifecycle, RFC 3261 §13.2: send, answer 401 and 407
//! challenges (§22.2, §22.3), report provisional responses, ACK the 2xx,
//! and CANCEL at any time (§9.1): only after a provisional response, with
//! the INVITE's own branch; with none, retransmissions stop at timer B.
//! Session timers (RFC 4028 §7): the INVITE offers our Session-Expires and
//! Min-SE, a 422 is retried once with the interval its Min-SE asks, and
//! the timer the 2xx settles (who refreshes, how often) runs on the call
//! (see `call`: our refreshes by UPDATE or re-INVITE, BYE on expiry).

use super::Credentials;
use super::ack::AckLayer;
use super::base::{SipError, Transport, attach_sdp, is_sdp};
use super::call::{Call, TimerSetup};
use super::challenge::{Challenge, ChallengeResponder};
use super::finished::Finished;
use super::orphan::CancelState;
use super::timers::{self, Agreed, MIN_SE_FLOOR, SessionTimerConfig};
use super::transport::SipStack;
use crate::metrics::SIP_OUTBOUND_RESULTS_TOTAL;
use bytes::Bytes;
use ezk_sip_core::transaction::TsxResponse;
use ezk_sip_core::transaction::consts::{T1, T2};
use ezk_sip_core::transport::{OutgoingParts, OutgoingRequest};
use ezk_sip_core::{Endpoint, Request};
use ezk_sip_types::header::typed::{
    Allow, CSeq, CallID, ContentType, MaxForwards, MinSe, Refresher, Require, SessionExpires, Via,
};
use ezk_sip_types::msg::RequestLine;
use ezk_sip_types::uri::{NameAddr, SipUri};
use ezk_sip_types::{Headers, Method, Name, StatusCode};
use ezk_sip_ua::invite::create_ack;
use ezk_sip_ua::invite::initiator::{Early, EarlyResponse, InviteInitiator, Response};
use ezk_sip_ua::invite::session::InviteSession;
use std::future::poll_fn;
use std::sync::Arc;
use std::task::Poll;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::{Instant, sleep_until};
use tracing::Instrument;

/// An INVITE to place.
#[derive(Debug, Clone)]
pub struct OutboundInvite {
    /// Request-URI, e.g. `sip:+4930123@trunk.example:5060`. The INVITE is
    /// sent to its host (RFC 3263), normally the trunk's proxy.
    pub request_uri: String,
    /// User part of From (our caller ID).
    pub from_user: String,
    pub from_display: Option<String>,
    /// Host of the From URI; `None` uses our public address.
    pub from_domain: Option<String>,
    /// Answer 401/407 with these.
    pub credentials: Option<Credentials>,
    /// Our SDP offer, from `media::sdp`.
    pub sdp_offer: Option<Bytes>,
    /// Extra headers, e.g. `P-Asserted-Identity`, `X-Campaign`.
    pub extra_headers: Vec<(String, String)>,
}

/// Progress of an outbound INVITE, in order; the last one is final.
#[derive(Debug)]
pub enum OutboundEvent {
    /// 18x (not 100), with early-media SDP if any.
    Progress {
        code: u16,
        reason: String,
        sdp: Option<Bytes>,
    },
    /// 200 OK, ACK sent. The SDP answer (or the early one) is here.
    Answered { call: Box<Call>, sdp: Option<Bytes> },
    /// Final error response, with its own reason phrase.
    Failed { code: u16, reason: String },
    /// Our CANCEL took effect (487, or timer B with no provisional).
    Canceled,
    /// No final response in time (timer B / C).
    TimedOut,
    /// A transport or protocol error.
    Error(String),
}

/// A placed INVITE. Read [`OutboundCall::next`] until a final event;
/// [`OutboundCall::cancel`] (or dropping it) cancels.
#[derive(Debug)]
pub struct OutboundCall {
    call_id: String,
    events: mpsc::Receiver<OutboundEvent>,
    /// Fired or dropped: cancel the INVITE.
    cancel: Option<oneshot::Sender<()>>,
    /// What a CANCEL of the INVITE last sent needs (a challenge re-sends it
    /// with a new branch and CSeq), for another node to cancel it.
    sent: watch::Receiver<Option<CancelState>>,
}

impl OutboundCall {
    pub fn call_id(&self) -> &str {
        &self.call_id
    }

    /// What a CANCEL of the INVITE as last sent needs (RFC 3261 §9.1).
    pub fn cancel_state(&self) -> Option<CancelState> {
        self.sent.borrow().clone()
    }

    /// Changes each time the INVITE is sent again (a challenge answered):
    /// [`OutboundCall::cancel_state`] changed with it.
    pub fn resends(&self) -> watch::Receiver<Option<CancelState>> {
        self.sent.clone()
    }

    /// The next event; `None` after the final one.
    pub async fn next(&mut self) -> Option<OutboundEvent> {
        self.events.recv().await
    }

    /// Ask for the INVITE to be cancelled. A final event follows:
    /// `Canceled`, or `Answered` if the 200 crossed our CANCEL (the call is
    /// then hung up by us with BYE and reported `Canceled`).
    pub fn cancel(&mut self) {
        if let Some(cancel) = self.cancel.take() {
            let _ = cancel.send(());
        }
    }
}

impl SipStack {
    /// Send an INVITE. Fails at once if the URIs do not parse or the first
    /// INVITE cannot be sent; everything later comes as [`OutboundEvent`]s.
    pub async fn dial(&self, invite: OutboundInvite) -> Result<OutboundCall, SipError> {
        let target: SipUri = invite.request_uri.parse().map_err(|_| SipError::Invalid {
            what: "request URI",
            value: invite.request_uri.clone(),
        })?;
        let from_host = invite
            .from_domain
            .clone()
            .unwrap_or_else(|| self.local.public.to_string());
        let from_text = format!("sip:{}@{}", invite.from_user, from_host);
        let from_uri: SipUri = from_text.parse().map_err(|_| SipError::Invalid {
            what: "From URI",
            value: from_text.clone(),
        })?;
        let from = match &invite.from_display {
            Some(name) => NameAddr::new(name.clone(), from_uri),
            None => NameAddr::uri(from_uri),
        };
        let transport = Transport::of_uri(&target);
        let contact = self.local.contact(Some(&invite.from_user), transport);

        let mut initiator = InviteInitiator::new(self.endpoint.clone(), from, contact, target);
        // RFC 3262: carriers that require 100rel get our PRACKs (`prack`).
        initiator.support_100rel = true;
        // ezk's own timer is parked (see `timers`); ours writes the headers.
        initiator.support_timer = false;
        let timer_config = self.endpoint.layer::<AckLayer>().session_timer();

        let mut driver = InviteClient {
            endpoint: self.endpoint.clone(),
            finished: Arc::clone(&self.finished),
            initiator,
            challenges: ChallengeResponder::new(invite.credentials.as_ref()),
            invite,
            call_id: String::new(),
            sent: watch::Sender::new(None),
            pracks: 0,
            session_expires: timer_config.session_expires.max(timer_config.min_se),
            timer_config,
            too_brief: false,
        };
        let request = driver.prepare();
        driver.call_id = request
            .headers
            .get_named::<CallID>()
            .map(|c| c.0.to_string())
            .unwrap_or_default();
        driver.initiator.send_invite(request).await?;
        driver.note_sent();

        let call_id = driver.call_id.clone();
        let sent = driver.sent.subscribe();
        let (events_tx, events_rx) = mpsc::channel(8);
        let (cancel_tx, cancel_rx) = oneshot::channel();
        let span = tracing::info_span!("sip_outbound", %call_id);
        tokio::spawn(driver.run(cancel_rx, events_tx).instrument(span));
        Ok(OutboundCall {
            call_id,
            events: events_rx,
            cancel: Some(cancel_tx),
            sent,
        })
    }
}

/// Our CANCEL on the wire (§9.1), retransmitted like a non-INVITE request
/// over UDP (§17.1.2.2) until the INVITE gets its final response.
struct PendingCancel {
    request: OutgoingRequest,
    interval: std::time::Duration,
    next: Instant,
    /// Timer B after the CANCEL: give up on a final response.
    deadline: Instant,
}

struct InviteClient {
    endpoint: Endpoint,
    /// Where the call registers for its peer's BYE.
    finished: Arc<Finished>,
    initiator: InviteInitiator,
    invite: OutboundInvite,
    /// Answers 401 and 407 with the invite's credentials.
    challenges: ChallengeResponder,
    call_id: String,
    /// Read by the [`OutboundCall`]: see its `cancel_state`.
    sent: watch::Sender<Option<CancelState>>,
    /// PRACKs sent (RFC 3262), each with its own CSeq after the INVITE's.
    pracks: u32,
    /// The Session-Expires we offer (RFC 4028 §7.1); raised by a 422.
    session_expires: u32,
    timer_config: SessionTimerConfig,
    /// A 422 was answered already (one retry, §7.4).
    too_brief: bool,
}

impl InviteClient {
    /// The next INVITE of this dialog attempt (same Call-ID and From tag,
    /// CSeq + 1, §22.2), with body, extra headers and credentials.
    fn prepare(&mut self) -> Request {
        let mut request = self.initiator.create_invite();
        for (name, value) in &self.invite.extra_headers {
            request
                .headers
                .insert(Name::from(name.clone()), value.clone());
        }
        // RFC 4028 §7.1: our interval and floor; the refresher is left to
        // the UAS (§9), which names it in its 2xx.
        request.headers.insert(Name::SUPPORTED, "timer");
        // RFC 3891 §6.1: a PBX may move this call with an INVITE with
        // Replaces (`call::replace`).
        request.headers.insert(Name::SUPPORTED, "replaces");
        request.headers.insert_named(&SessionExpires {
            delta_secs: self.session_expires,
            refresher: Refresher::Unspecified,
        });
        request
            .headers
            .insert_named(&MinSe(self.timer_config.min_se.max(MIN_SE_FLOOR)));
        if let Some(sdp) = &self.invite.sdp_offer {
            attach_sdp(&mut request.headers, &mut request.body, sdp.clone());
        }
        self.challenges.authorize(&mut request.headers);
        request
    }

    /// RFC 4028 §7.4: a 422 names the smallest interval the peer takes in
    /// its Min-SE; the INVITE is sent again once with it (and that as our
    /// own floor). `false`: no retry (not a 422, retried already, or a
    /// Min-SE no larger than what we offered, or absurdly long).
    async fn retry_too_brief(&mut self, response: &TsxResponse) -> Result<bool, SipError> {
        if response.line.code.into_u16() != 422 || self.too_brief {
            return Ok(false);
        }
        self.too_brief = true;
        let Some(min_se) = response.headers.get_named::<MinSe>().ok().map(|m| m.0) else {
            return Ok(false);
        };
        if min_se <= self.session_expires || min_se > 86_400 {
            return Ok(false);
        }
        tracing::info!(min_se, "422 Session Interval Too Small, retrying");
        self.session_expires = min_se;
        self.timer_config.min_se = self.timer_config.min_se.max(min_se);
        let request = self.prepare();
        self.initiator.send_invite(request).await?;
        self.note_sent();
        Ok(true)
    }

    /// RFC 4028 §7.2: the session timer the 2xx settles. Its
    /// Session-Expires names the interval and who refreshes; without one
    /// the call has no timer. A hostile interval is bounded to
    /// [`MIN_SE_FLOOR`]..one day.
    fn timer_of(&self, response: &TsxResponse) -> TimerSetup {
        let agreed = response
            .headers
            .get_named::<SessionExpires>()
            .ok()
            .map(|se| {
                let peer_supports = timers::supports(&response.headers, "timer")
                    || response
                        .headers
                        .get_named::<Vec<Require>>()
                        .unwrap_or_default()
                        .iter()
                        .any(|r| r.0.eq_ignore_ascii_case("timer"));
                Agreed {
                    interval: se.delta_secs.clamp(MIN_SE_FLOOR, 86_400),
                    // §7.2: an unnamed refresher in a 2xx is ours.
                    we_refresh: !matches!(se.refresher, Refresher::Uas),
                    peer_supports,
                    we_are_uas: false,
                }
            });
        let peer_allows_update = response
            .headers
            .get_named::<Vec<Allow>>()
            .unwrap_or_default()
            .iter()
            .any(|a| a.0 == Method::UPDATE);
        TimerSetup {
            agreed,
            local_sdp: self.invite.sdp_offer.clone(),
            peer_allows_update,
            config: self.timer_config,
        }
    }

    /// Keeps what a CANCEL of the INVITE just sent needs.
    fn note_sent(&self) {
        let Some(tsx) = self.initiator.transaction() else {
            return;
        };
        match CancelState::of(tsx.request()) {
            Ok(state) => {
                self.sent.send_replace(Some(state));
            }
            Err(e) => tracing::warn!(error = %e, "INVITE's CANCEL state not kept"),
        }
    }

    async fn run(
        mut self,
        mut cancel_rx: oneshot::Receiver<()>,
        events: mpsc::Sender<OutboundEvent>,
    ) {
        let outcome = self.drive(&mut cancel_rx, &events).await;
        let label = match &outcome {
            OutboundEvent::Answered { .. } => "200".to_owned(),
            OutboundEvent::Failed { code, .. } => code.to_string(),
            OutboundEvent::Canceled => "canceled".to_owned(),
            OutboundEvent::TimedOut => "timeout".to_owned(),
            OutboundEvent::Error(_) | OutboundEvent::Progress { .. } => "error".to_owned(),
        };
        tracing::info!(result = %label, "outbound INVITE finished");
        metrics::counter!(SIP_OUTBOUND_RESULTS_TOTAL, "status" => label).increment(1);
        let answered = matches!(outcome, OutboundEvent::Answered { .. });
        // If nobody listens any more, the Call inside is dropped: BYE.
        let _ = events.send(outcome).await;
        if answered {
            self.absorb_retransmissions().await;
        }
    }

    async fn drive(
        &mut self,
        cancel_rx: &mut oneshot::Receiver<()>,
        events: &mpsc::Sender<OutboundEvent>,
    ) -> OutboundEvent {
        let mut earlies: Vec<Early> = Vec::new();
        // The last RSeq we sent a PRACK for (RFC 3262 §4).
        let mut last_rseq: Option<u32> = None;
        let mut provisional_seen = false;
        let mut cancel_requested = false;
        let mut pending_cancel: Option<PendingCancel> = None;

        loop {
            let cancel_timer = pending_cancel
                .as_ref()
                .map_or_else(|| Instant::now() + T2 * 1000, |c| c.next.min(c.deadline));
            let response = tokio::select! {
                response = self.initiator.receive() => response,
                _ = &mut *cancel_rx, if !cancel_requested => {
                    cancel_requested = true;
                    tracing::info!(provisional_seen, "cancel requested");
                    if provisional_seen {
                        pending_cancel = self.send_cancel().await;
                    }
                    continue;
                }
                _ = sleep_until(cancel_timer), if pending_cancel.is_some() => {
                    if let Some(cancel) = &mut pending_cancel {
                        if Instant::now() >= cancel.deadline {
                            return OutboundEvent::Canceled;
                        }
                        if let Err(e) = self.endpoint.send_outgoing_request(&mut cancel.request).await {
                            tracing::warn!(error = %e, "CANCEL retransmission failed");
                        }
                        cancel.interval = (cancel.interval * 2).min(T2);
                        cancel.next = Instant::now() + cancel.interval;
                    }
                    continue;
                }
            };

            let response = match response {
                Ok(response) => response,
                Err(ezk_sip_core::Error::RequestTimedOut) if cancel_requested => {
                    return OutboundEvent::Canceled;
                }
                Err(ezk_sip_core::Error::RequestTimedOut) => return OutboundEvent::TimedOut,
                Err(e) => return OutboundEvent::Error(e.to_string()),
            };

            match response {
                Response::Provisional(response) => {
                    provisional_seen = true;
                    if response.line.code != StatusCode::TRYING {
                        send_event(events, progress(&response)).await;
                    }
                }
                Response::Early(early, response, rseq) => {
                    provisional_seen = true;
                    earlies.push(early);
                    self.prack(&response, rseq.map(|r| r.0), &mut last_rseq)
                        .await;
                    send_event(events, progress(&response)).await;
                }
                Response::EarlyEvent => {
                    let polled = poll_fn(|cx| {
                        for (i, early) in earlies.iter_mut().enumerate() {
                            if let Poll::Ready(result) = early.poll_receive(cx) {
                                return Poll::Ready(Some((i, result)));
                            }
                        }
                        Poll::Ready(None)
                    })
                    .await;
                    match polled {
                        Some((_, Ok(EarlyResponse::Provisional(response, rseq)))) => {
                            self.prack(&response, rseq.map(|r| r.0), &mut last_rseq)
                                .await;
                            send_event(events, progress(&response)).await;
                        }
                        Some((i, Ok(EarlyResponse::Success(session, response)))) => {
                            earlies.remove(i);
                            return self.answered(session, response, cancel_requested).await;
                        }
                        Some((_, Ok(EarlyResponse::Terminated))) | None => {}
                        Some((_, Err(e))) => return OutboundEvent::Error(e.to_string()),
                    }
                }
                Response::Session(session, response) => {
                    return self.answered(session, response, cancel_requested).await;
                }
                Response::Failure(response) => {
                    let code = response.line.code;
                    if !cancel_requested {
                        match self.retry_too_brief(&response).await {
                            Ok(true) => {
                                earlies.clear();
                                provisional_seen = false;
                                continue;
                            }
                            Ok(false) => {}
                            Err(e) => tracing::warn!(error = %e, "cannot retry after 422"),
                        }
                        match self.answer_challenge(&response).await {
                            Ok(true) => {
                                earlies.clear();
                                provisional_seen = false;
                                continue;
                            }
                            Ok(false) => {}
                            Err(e) => tracing::warn!(error = %e, "cannot answer challenge"),
                        }
                    }
                    if cancel_requested && code == StatusCode::REQUEST_TERMINATED {
                        return OutboundEvent::Canceled;
                    }
                    return OutboundEvent::Failed {
                        code: code.into_u16(),
                        reason: reason_of(&response),
                    };
                }
                Response::Finished => {
                    return if cancel_requested {
                        OutboundEvent::Canceled
                    } else {
                        OutboundEvent::TimedOut
                    };
                }
            }

            if cancel_requested && provisional_seen && pending_cancel.is_none() {
                pending_cancel = self.send_cancel().await;
            }
        }
    }

    /// RFC 3261 §22.2/§22.3: re-send the INVITE with credentials for the
    /// 401 (WWW-Authenticate) or 407 (Proxy-Authenticate) challenge.
    /// `Ok(false)` when the response is no challenge.
    async fn answer_challenge(&mut self, response: &TsxResponse) -> Result<bool, SipError> {
        let tsx = self.initiator.transaction().ok_or(SipError::Terminated)?;
        match self.challenges.learn(&tsx.request().msg, response) {
            Challenge::None => return Ok(false),
            Challenge::GiveUp(reason) => return Err(SipError::Transaction(reason)),
            Challenge::Answer => {}
        }
        let request = self.prepare();
        self.initiator.send_invite(request).await?;
        self.note_sent();
        tracing::info!(
            code = response.line.code.into_u16(),
            "answered auth challenge"
        );
        Ok(true)
    }

    /// Build and send the CANCEL for the current INVITE (§9.1): same
    /// Request-URI, Call-ID, From, To, CSeq number and top Via as the
    /// INVITE; its response is not needed (the 487 to the INVITE is).
    async fn send_cancel(&mut self) -> Option<PendingCancel> {
        let tsx = self.initiator.transaction()?;
        let mut request = match build_cancel(tsx.request()) {
            Ok(request) => request,
            Err(e) => {
                tracing::warn!(error = %e, "cannot build CANCEL");
                return None;
            }
        };
        if let Err(e) = self.endpoint.send_outgoing_request(&mut request).await {
            tracing::warn!(error = %e, "cannot send CANCEL");
        }
        tracing::info!("CANCEL sent");
        let reliable = request.parts.transport.connection_remote().is_some();
        let now = Instant::now();
        Some(PendingCancel {
            request,
            interval: T1,
            next: if reliable { now + T1 * 64 } else { now + T1 },
            deadline: now + T1 * 64,
        })
    }

    /// ACK the 2xx (§13.2.2.4). If we were cancelling, hang up at once.
    /// PRACK a reliable provisional response (RFC 3262 §4) once: one with
    /// an RSeq we have not acknowledged yet (a retransmission, or one out
    /// of order, is not acknowledged again).
    async fn prack(&mut self, response: &TsxResponse, rseq: Option<u32>, last: &mut Option<u32>) {
        let Some(rseq) = rseq else {
            return;
        };
        if last.is_some_and(|l| rseq <= l) {
            return;
        }
        self.pracks += 1;
        let cseq = response.base_headers.cseq.cseq.wrapping_add(self.pracks);
        match super::prack::prack_for(response, rseq, cseq) {
            Some(request) => {
                *last = Some(rseq);
                tracing::info!(rseq, "reliable provisional, sending PRACK");
                super::prack::send_prack(&self.endpoint, response, request).await;
            }
            None => tracing::info!(rseq, "reliable provisional without Contact or To tag"),
        }
    }

    async fn answered(
        &mut self,
        mut session: InviteSession,
        response: TsxResponse,
        cancel_requested: bool,
    ) -> OutboundEvent {
        // The dialog's next request (BYE, REFER) comes after our PRACKs'
        // CSeq numbers (RFC 3261 §12.2.1.1: strictly increasing).
        session
            .dialog
            .local_cseq
            .fetch_add(self.pracks, std::sync::atomic::Ordering::Relaxed);
        let mut ack = match create_ack(&session.dialog, response.base_headers.cseq.cseq).await {
            Ok(ack) => ack,
            Err(e) => return OutboundEvent::Error(e.to_string()),
        };
        if let Err(e) = self.endpoint.send_outgoing_request(&mut ack).await {
            return OutboundEvent::Error(e.to_string());
        }
        self.initiator.set_acknowledge(&session, ack);
        if cancel_requested {
            tracing::info!("200 OK crossed our CANCEL, sending BYE");
            if let Err(e) = session.terminate().await {
                tracing::warn!(error = %e, "BYE after crossed CANCEL failed");
            }
            return OutboundEvent::Canceled;
        }
        let sdp = match response.headers.try_get_named::<ContentType>() {
            Some(Ok(ct)) if is_sdp(&ct) && !response.body.is_empty() => Some(response.body.clone()),
            _ => None,
        };
        let bye = self.finished.watch(session.dialog.key());
        let timer = self.timer_of(&response);
        OutboundEvent::Answered {
            call: Box::new(Call::new(
                session,
                self.call_id.clone(),
                &self.finished,
                bye,
                timer,
            )),
            sdp,
        }
    }

    /// After the 2xx, keep the INVITE transaction alive until timer B so
    /// retransmitted 200s get our ACK again (§13.2.2.4); a second forked
    /// 200 is hung up.
    async fn absorb_retransmissions(mut self) {
        while let Ok(response) = self.initiator.receive().await {
            match response {
                Response::Session(mut session, _) => {
                    let _ = session.terminate().await;
                }
                Response::Failure(_) | Response::Finished => break,
                Response::Provisional(_) | Response::Early(..) | Response::EarlyEvent => {}
            }
        }
    }
}

async fn send_event(events: &mpsc::Sender<OutboundEvent>, event: OutboundEvent) {
    if events.send(event).await.is_err() {
        tracing::debug!("outbound call handle dropped");
    }
}

fn reason_of(response: &TsxResponse) -> String {
    response
        .line
        .reason
        .as_ref()
        .map_or_else(String::new, |r| r.to_string())
}

fn progress(response: &TsxResponse) -> OutboundEvent {
    let sdp = match response.headers.try_get_named::<ContentType>() {
        Some(Ok(ct)) if is_sdp(&ct) && !response.body.is_empty() => Some(response.body.clone()),
        _ => None,
    };
    OutboundEvent::Progress {
        code: response.line.code.into_u16(),
        reason: reason_of(response),
        sdp,
    }
}

fn build_cancel(invite: &OutgoingRequest) -> Result<OutgoingRequest, SipError> {
    let headers_in = &invite.msg.headers;
    let mut headers = Headers::with_capacity(7);
    let vias: Vec<Via> = headers_in.get_named()?;
    let top = vias.first().ok_or(SipError::Invalid {
        what: "INVITE",
        value: "no Via".to_owned(),
    })?;
    headers.insert_named(top);
    headers.insert_named(&MaxForwards(70));
    headers_in.clone_into(&mut headers, Name::FROM)?;
    headers_in.clone_into(&mut headers, Name::TO)?;
    headers_in.clone_into(&mut headers, Name::CALL_ID)?;
    let cseq: CSeq = headers_in.get_named()?;
    headers.insert_named(&CSeq::new(cseq.cseq, Method::CANCEL));
    if headers_in.contains(&Name::ROUTE) {
        headers_in.clone_into(&mut headers, Name::ROUTE)?;
    }
    Ok(OutgoingRequest {
        msg: Request {
            line: RequestLine {
                method: Method::CANCEL,
                uri: invite.msg.line.uri.clone(),
            },
            headers,
            body: Bytes::new(),
        },
        parts: OutgoingParts {
            transport: invite.parts.transport.clone(),
            destination: invite.parts.destination,
            buffer: Bytes::new(),
        },
    })
}
