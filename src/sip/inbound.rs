//! Inbound INVITE lifecycle, RFC 3261 §13.3: 100 Trying at once, then the
//! handler rejects, or rings and accepts; a CANCEL before the final answer
//! gets 487 (§9.2). Also the last layer: answers requests nobody took.
//!
//! Our 200 is resent on RFC 3261 §13.3.1.4's schedule by `ack` (ezk's is
//! wrong); an INVITE whose Session-Expires is below our Min-SE gets 422
//! and the agreed session timer rides in the 200 (RFC 4028, `timers`).
//! Provisional responses are reliable (RFC 3262, `prack`) when the INVITE
//! requires it, or supports it and the 183 carries early media.

use super::ack::{AckTemplate, SipTimers};
use super::base::{
    Admission, DigestAccount, LocalIdentity, RequestSource, Transport, attach_sdp, respond,
};
use super::call::{Call, InDialog, TimerSetup, sdp_of};
use super::edge::{EdgeGuard, InviteSlot};
use super::finished::Finished;
use super::prack::{self, PrackState, PrackUsage};
use super::timers::{self, Inbound};
use bytes::Bytes;
use ezk_sip_core::transport::TargetTransportInfo;
use ezk_sip_core::{Endpoint, IncomingRequest, Layer, MayTake};
use ezk_sip_types::header::typed::{Allow, FromTo, MinSe, RSeq, Require, RetryAfter};
use ezk_sip_types::host::HostPort;
use ezk_sip_types::print::AppendCtx;
use ezk_sip_types::uri::{SipUri, SipUriUserPart};
use ezk_sip_types::{Headers, Method, Name, StatusCode};
use ezk_sip_ua::dialog::{Dialog, DialogKey, UsageGuard};
use ezk_sip_ua::invite::acceptor::{self, InviteAcceptor};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tracing::Instrument;

/// The decisions the SIP layer leaves to its caller (the `call` module).
pub trait InboundHandler: Send + Sync + 'static {
    /// Called by the edge for every request (inside a dialog or not) before
    /// ezk parses it or any transaction exists: [`Admission::Admit`] when a
    /// trunk allows the source. Called per packet, so it must be cheap.
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

/// What arrived with an INVITE: everything the caller needs to route it.
#[derive(Debug, Clone)]
pub struct InviteInfo {
    pub call_id: String,
    /// The From URI as sent, e.g. `sip:+4930123@carrier.example`.
    pub from_uri: String,
    /// User part of the From URI (the caller's number), if any.
    pub from_user: Option<String>,
    /// Display name of the From header, if any.
    pub from_display: Option<String>,
    /// The To URI as sent.
    pub to_uri: String,
    /// User part of the To URI (the dialled number), if any.
    pub to_user: Option<String>,
    /// The Request-URI.
    pub request_uri: String,
    /// User part of the Request-URI, if any.
    pub request_user: Option<String>,
    /// Source of the packet or connection (after rport, RFC 3581).
    pub source: SocketAddr,
    pub transport: Transport,
    /// The SDP offer, if the INVITE carried one (else the offer goes in our
    /// 200 and the answer comes in the ACK).
    pub sdp_offer: Option<Bytes>,
    /// All headers in arrival order, names as received.
    pub headers: Vec<(String, String)>,
}

impl InviteInfo {
    /// The value of the first header named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A final error answer to an INVITE.
#[derive(Debug, Clone)]
pub struct Rejection {
    /// 4xx, 5xx or 6xx.
    pub code: u16,
    /// Reason phrase; `None` uses the standard one.
    pub reason: Option<String>,
    /// Retry-After (RFC 3261 §20.33), e.g. with 503 or 486.
    pub retry_after: Option<Duration>,
}

impl Rejection {
    pub fn new(code: u16) -> Self {
        Self {
            code,
            reason: None,
            retry_after: None,
        }
    }
}

/// Why accepting an INVITE did not produce a call.
#[derive(Debug, thiserror::Error)]
pub enum AcceptError {
    /// The caller cancelled (487 already sent) or hung up first.
    #[error("the INVITE was cancelled before it was answered")]
    Cancelled,
    /// No ACK came for our 200 (RFC 3261 §13.3.1.4): the call failed.
    #[error("no ACK received for the 200 OK")]
    NoAck,
    /// Sending failed.
    #[error("SIP error while answering: {0}")]
    Sip(String),
}

/// An inbound INVITE waiting for the handler's decision.
///
/// Dropping it without a final answer sends 500 (RFC 3261 §8.2.6).
pub struct IncomingInvite {
    info: InviteInfo,
    /// The acceptor owns the server transaction and the early dialog;
    /// `None` once a final answer was given.
    acceptor: Option<InviteAcceptor>,
    /// Our To tag (RFC 3261 §8.2.6.2), put on every non-100 response.
    local_tag: String,
    /// Counts this INVITE against `max_server_transactions` until the
    /// handler has answered it.
    _slot: InviteSlot,
    /// Where the call registers for its peer's BYE.
    finished: Arc<Finished>,
    /// The dialog the 200 confirms: its BYE watch is set before the 200
    /// goes out (see [`Self::accept`]).
    dialog_key: DialogKey,
    /// Answers INFO, OPTIONS and UPDATE once our 200 is on its way;
    /// `None` once the call took it.
    in_dialog: Option<InDialog>,
    /// T1 and the ACKs we wait for (see `ack`).
    timers: Arc<SipTimers>,
    /// The local ACK that ends ezk's own wait for one (see `ack`).
    ack: AckTemplate,
    /// The endpoint the INVITE came to.
    endpoint: Endpoint,
    /// What the INVITE agreed for RFC 4028 (never `TooBrief` here).
    session_timer: Inbound,
    /// The INVITE's Allow lists UPDATE.
    peer_allows_update: bool,
    /// With 100rel in the INVITE's Require or Supported: the PRACK
    /// usage of the early dialog (see `prack`).
    prack: Option<(Arc<PrackState>, UsageGuard)>,
    /// The INVITE requires 100rel: every 18x is reliable.
    requires_100rel: bool,
    /// RSeq of our next reliable provisional (RFC 3262 §3).
    next_rseq: u32,
    /// The INVITE's CSeq number (RAck names it).
    invite_cseq: u32,
}

impl std::fmt::Debug for IncomingInvite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IncomingInvite")
            .field("info", &self.info)
            .finish_non_exhaustive()
    }
}

impl IncomingInvite {
    pub fn info(&self) -> &InviteInfo {
        &self.info
    }

    pub fn call_id(&self) -> &str {
        &self.info.call_id
    }

    /// Resolves when the caller sends CANCEL (487 is already sent) or BYE
    /// before our answer. Cancel-safe.
    pub async fn cancelled(&mut self) {
        match self.acceptor.as_mut() {
            Some(acceptor) => acceptor.cancelled().await,
            None => std::future::pending().await,
        }
    }

    /// Send 180 Ringing, or 183 Session Progress with early media SDP.
    /// When it is reliable (RFC 3262, see `prack`) this waits for its
    /// PRACK, up to 64*T1; without one the INVITE gets 500 and an error
    /// comes back.
    pub async fn ring(&mut self, early_sdp: Option<Bytes>) -> Result<(), AcceptError> {
        let reliable = self.prack.is_some() && (self.requires_100rel || early_sdp.is_some());
        let acceptor = self.acceptor.as_mut().ok_or(AcceptError::Cancelled)?;
        let code = if early_sdp.is_some() {
            StatusCode::SESSION_PROGRESS
        } else {
            StatusCode::RINGING
        };
        let mut response = acceptor
            .create_response(code, None)
            .await
            .map_err(map_acceptor_error)?;
        set_to_tag(&mut response.msg.headers, &self.local_tag);
        if let Some(sdp) = early_sdp {
            attach_sdp(&mut response.msg.headers, &mut response.msg.body, sdp);
        }
        let Some((state, _)) = self.prack.as_ref().filter(|_| reliable) else {
            return acceptor
                .respond_provisional(response)
                .await
                .map_err(map_acceptor_error);
        };
        // RFC 3262 §3: Require: 100rel and an RSeq one higher each time;
        // resent at T1, 2*T1, 4*T1 ... until the PRACK, for 64*T1.
        let rseq = self.next_rseq;
        self.next_rseq = self.next_rseq.wrapping_add(1);
        response
            .msg
            .headers
            .insert_named(&Require(prack::TAG.into()));
        response.msg.headers.insert_named(&RSeq(rseq));
        let mut prack_rx = state.expect(rseq, self.invite_cseq);
        let started = tokio::time::Instant::now();
        let give_up = started + self.timers.timer_h();
        let mut interval = self.timers.t1;
        let mut next = started + interval;
        acceptor
            .respond_provisional(response.clone())
            .await
            .map_err(map_acceptor_error)?;
        loop {
            tokio::select! {
                _ = &mut prack_rx => return Ok(()),
                () = acceptor.cancelled() => return Err(AcceptError::Cancelled),
                () = tokio::time::sleep_until(next.min(give_up)) => {
                    if tokio::time::Instant::now() >= give_up {
                        break;
                    }
                    acceptor
                        .respond_provisional(response.clone())
                        .await
                        .map_err(map_acceptor_error)?;
                    interval *= 2;
                    next += interval;
                }
            }
        }
        tracing::warn!(
            rseq,
            "no PRACK for our reliable provisional in 64*T1, answering 500"
        );
        if let Some(acceptor) = self.acceptor.take() {
            let mut rejection = Rejection::new(500);
            rejection.reason = Some("No PRACK".into());
            send_rejection(acceptor, &self.local_tag, &rejection).await?;
        }
        Err(AcceptError::Sip(
            "no PRACK for a reliable provisional response".into(),
        ))
    }

    /// Answer with an error. The ACK is awaited in the background.
    pub async fn reject(mut self, rejection: Rejection) -> Result<(), AcceptError> {
        let acceptor = self.acceptor.take().ok_or(AcceptError::Cancelled)?;
        send_rejection(acceptor, &self.local_tag, &rejection).await
    }

    /// 200 OK with our SDP: the answer to the INVITE's offer, or our offer
    /// when the INVITE had none. Waits for the ACK and returns the
    /// established call and the SDP the ACK carried (the answer to such an
    /// offer, RFC 3261 §13.2.1).
    pub async fn accept(mut self, sdp: Bytes) -> Result<(Call, Option<Bytes>), AcceptError> {
        let mut acceptor = self.acceptor.take().ok_or(AcceptError::Cancelled)?;
        let call_id = self.info.call_id.clone();
        let span = tracing::info_span!("sip_accept", %call_id);
        async move {
            let mut response = acceptor
                .create_response(StatusCode::OK, None)
                .await
                .map_err(map_acceptor_error)?;
            attach_sdp(
                &mut response.msg.headers,
                &mut response.msg.body,
                sdp.clone(),
            );
            // RFC 3891 §6.1: this dialog may be replaced (`call::replace`).
            response.msg.headers.insert(Name::SUPPORTED, "replaces");
            let agreed = match self.session_timer {
                Inbound::Timer(agreed) => Some(agreed),
                Inbound::None | Inbound::TooBrief { .. } => None,
            };
            // Our copy for the retransmissions gets what ezk adds to the
            // one it sends: with a peer that supports timers, ezk writes
            // Require and Session-Expires from its timer config, which is
            // set to what we agreed; without, we write Session-Expires.
            let mut copy = response.clone();
            if let Some(agreed) = agreed {
                let se = agreed.header();
                if acceptor.peer_supports_timer() {
                    let config = acceptor.timer_config();
                    config.interval_secs = se.delta_secs;
                    config.refresher = se.refresher;
                    copy.msg.headers.insert_named(&Require("timer".into()));
                    copy.msg.headers.insert_named(&se);
                } else {
                    response.msg.headers.insert_named(&se);
                    copy.msg.headers.insert_named(&se);
                }
            } else if acceptor.peer_supports_timer() {
                // Unreachable by `timers::negotiate` (support means a
                // timer), kept so ezk's default never rides unnoticed.
                copy.msg.headers.insert_named(&Require("timer".into()));
            }
            let Some(ack_wait) = self.timers.expect_ack(&self.ack) else {
                return Err(AcceptError::Sip("too many answers waiting for ACK".into()));
            };
            // The peer may send its BYE right behind its ACK (RFC 3261 §15
            // lets a caller end the dialog once it has our 200): the watch
            // is set before the 200 goes out, so that BYE is answered
            // statelessly by `finished` like any other. Caught by ezk's
            // dialog layer instead, it would keep a server transaction (a
            // task and a channel of about 4 KB) for 64*T1.
            let bye = self.finished.watch(self.dialog_key.clone());
            // Likewise an INFO or UPDATE right behind the ACK: the usage
            // that answers them was registered with the dialog and takes
            // them from now on, before the call exists.
            let in_dialog = self
                .in_dialog
                .take()
                .ok_or_else(|| AcceptError::Sip("dialog usage already taken".into()))?;
            in_dialog.confirm(TimerSetup {
                agreed,
                local_sdp: Some(sdp.clone()),
                peer_allows_update: self.peer_allows_update,
                config: self.timers.session,
            });
            let sent_at = tokio::time::Instant::now();
            // ezk sends the 200 and waits for an ACK on its own flat
            // schedule: the local ACK ends that wait before its first
            // resend (see `ack`), retried in case it overtook the send.
            let accepted = {
                let respond = acceptor.respond_success(response);
                tokio::pin!(respond);
                let mut nudge = tokio::time::interval(std::time::Duration::from_millis(20));
                loop {
                    tokio::select! {
                        biased;
                        result = &mut respond => break result,
                        _ = nudge.tick() => {
                            if let Some(message) = self.ack.message() {
                                self.endpoint.receive(message);
                            }
                        }
                    }
                }
            };
            let session = match accepted {
                Ok((session, _local_ack)) => session,
                Err(acceptor::Error::RequestTerminated) => return Err(AcceptError::Cancelled),
                Err(acceptor::Error::Core(ezk_sip_core::Error::RequestTimedOut)) => {
                    tracing::warn!("no ACK for 200 OK, call failed");
                    return Err(AcceptError::NoAck);
                }
                Err(e) => return Err(AcceptError::Sip(e.to_string())),
            };
            let call = Call::confirmed(session, call_id, bye, in_dialog);
            let (ack, resent) = ack_wait
                .retransmit_until_ack(&self.endpoint, copy, sent_at)
                .await;
            match ack {
                Some(ack) => {
                    tracing::info!(resent, "call established (inbound)");
                    Ok((call, sdp_of(&ack)))
                }
                None => {
                    // §13.3.1.4: no ACK in 64*T1: the dialog is confirmed
                    // and then ended with BYE.
                    tracing::warn!(resent, "no ACK for 200 OK in 64*T1, sending BYE");
                    if let Err(e) = call.hangup().await {
                        tracing::info!(error = %e, "BYE after missing ACK not answered");
                    }
                    Err(AcceptError::NoAck)
                }
            }
        }
        .instrument(span)
        .await
    }
}

impl Drop for IncomingInvite {
    fn drop(&mut self) {
        if let Some(acceptor) = self.acceptor.take() {
            let local_tag = self.local_tag.clone();
            tracing::warn!(call_id = %self.info.call_id, "INVITE dropped unanswered, sending 500");
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(async move {
                    let _ = send_rejection(acceptor, &local_tag, &Rejection::new(500)).await;
                });
            }
        }
    }
}

async fn send_rejection(
    acceptor: InviteAcceptor,
    local_tag: &str,
    rejection: &Rejection,
) -> Result<(), AcceptError> {
    let code = StatusCode::from(rejection.code.clamp(400, 699));
    let mut response = acceptor
        .create_response(code, rejection.reason.clone().map(Into::into))
        .await
        .map_err(map_acceptor_error)?;
    set_to_tag(&mut response.msg.headers, local_tag);
    if let Some(retry_after) = rejection.retry_after {
        let secs = u32::try_from(retry_after.as_secs()).unwrap_or(u32::MAX);
        response.msg.headers.insert_named(&RetryAfter::new(secs));
    }
    // The failure response waits for the ACK (RFC 3261 §17.2.1, timer H);
    // the caller need not wait for that.
    tokio::spawn(async move {
        if let Err(e) = acceptor.respond_failure(response).await {
            tracing::debug!(error = %e, "error response to INVITE not acknowledged");
        }
    });
    Ok(())
}

fn map_acceptor_error(e: acceptor::Error) -> AcceptError {
    match e {
        acceptor::Error::RequestTerminated => AcceptError::Cancelled,
        acceptor::Error::Core(e) => AcceptError::Sip(e.to_string()),
    }
}

fn set_to_tag(headers: &mut Headers, tag: &str) {
    let result = headers.edit(Name::TO, |to: &mut FromTo| {
        if to.tag.is_none() {
            to.tag = Some(tag.to_owned().into());
        }
    });
    if let Err(e) = result {
        tracing::warn!(error = %e, "cannot set To tag");
    }
}

pub(crate) fn user_of(uri: &SipUri) -> Option<String> {
    match &uri.user_part {
        SipUriUserPart::Empty => None,
        SipUriUserPart::User(user) => Some(user.to_string()),
        SipUriUserPart::UserPw(user_pw) => Some(user_pw.user.to_string()),
    }
}

/// The last layer: new INVITEs go to the handler; what is left gets the
/// answer RFC 3261 asks for.
pub(crate) struct InboundLayer {
    /// Receives every admitted new INVITE.
    handler: Arc<dyn InboundHandler>,
    /// Our Contact for the dialogs we accept.
    local: Arc<LocalIdentity>,
    /// Counts the INVITEs in progress.
    edge: Arc<EdgeGuard>,
    /// Handed to each call.
    finished: Arc<Finished>,
    /// T1, the session timer settings and the ACKs we wait for.
    timers: Arc<SipTimers>,
}

impl InboundLayer {
    pub(crate) fn new(
        handler: Arc<dyn InboundHandler>,
        local: Arc<LocalIdentity>,
        edge: Arc<EdgeGuard>,
        finished: Arc<Finished>,
        timers: Arc<SipTimers>,
    ) -> Self {
        Self {
            handler,
            local,
            edge,
            finished,
            timers,
        }
    }
}

#[async_trait::async_trait]
impl Layer for InboundLayer {
    fn name(&self) -> &'static str {
        "agentline-inbound"
    }

    async fn receive(&self, endpoint: &Endpoint, request: MayTake<'_, IncomingRequest>) {
        let method = request.line.method.clone();
        let in_dialog = request.base_headers.to.tag.is_some();
        match method {
            Method::ACK => {}
            Method::INVITE if !in_dialog => {
                let call_id = request.base_headers.call_id.0.to_string();
                let span = tracing::info_span!("sip_inbound", %call_id);
                self.new_invite(endpoint, request.take())
                    .instrument(span)
                    .await;
            }
            // §12.2.2: a request for a dialog we do not have, or a CANCEL
            // (§9.2) or BYE matching nothing.
            _ if in_dialog || method == Method::CANCEL || method == Method::BYE => {
                respond(
                    endpoint,
                    request.take(),
                    StatusCode::CALL_OR_TRANSACTION_DOES_NOT_EXIST,
                    None,
                    Headers::new(),
                )
                .await;
            }
            // §8.2.1: a method we do not offer outside a dialog.
            _ => {
                let mut headers = Headers::new();
                headers.insert_named(endpoint.allowed());
                respond(
                    endpoint,
                    request.take(),
                    StatusCode::METHOD_NOT_ALLOWED,
                    None,
                    headers,
                )
                .await;
            }
        }
    }
}

impl InboundLayer {
    async fn new_invite(&self, endpoint: &Endpoint, invite: IncomingRequest) {
        let transport = self.local.transport_of(&invite.tp_info.transport);
        // RFC 4028 §8.1: a session interval below our Min-SE gets 422
        // with the Min-SE we accept, before anything else is set up.
        let session_timer = timers::negotiate(&invite.headers, &self.timers.session, true);
        if let Inbound::TooBrief { min_se } = session_timer {
            tracing::info!(min_se, "Session-Expires below our Min-SE, answering 422");
            let mut headers = Headers::new();
            headers.insert_named(&MinSe(min_se));
            respond(
                endpoint,
                invite,
                StatusCode::from(422),
                Some("Session Interval Too Small"),
                headers,
            )
            .await;
            return;
        }
        let peer_allows_update = invite
            .headers
            .get_named::<Vec<Allow>>()
            .unwrap_or_default()
            .iter()
            .any(|a| a.0 == Method::UPDATE);
        let info = invite_info(&invite, transport);
        let mut contact = self.local.contact(None, transport);
        // RFC 5630 §4.1 / RFC 3261 §12.1.1: a dialog set up by a `sips:`
        // Request-URI over TLS has a `sips:` Contact, so that requests in
        // it stay on TLS end to end.
        if transport == Transport::Tls && invite.line.uri.sips {
            contact.uri.uri.sips = true;
        }
        let dialog = match Dialog::new_server(endpoint.clone(), &invite, contact) {
            Ok(dialog) => dialog,
            Err(e) => {
                tracing::info!(error = %e, "INVITE cannot create a dialog");
                respond(
                    endpoint,
                    invite,
                    StatusCode::BAD_REQUEST,
                    Some("Bad dialog headers"),
                    Headers::new(),
                )
                .await;
                return;
            }
        };
        // RFC 3261 §18.2.2 / RFC 5923 reuse: our requests in a dialog that
        // came over TCP (a BYE when we hang up) go back over the connection
        // the peer opened, which the TCP relay carries, not over a new one
        // to its Contact (from behind NAT, or the relay's loopback view of
        // it, that one cannot be reached).
        if let Some(relay) = invite.tp_info.transport.connection_remote() {
            *dialog.target_tp_info.lock().await = TargetTransportInfo {
                via_host_port: Some(HostPort::from(self.local.address_for(transport))),
                transport: Some((invite.tp_info.transport.clone(), relay)),
            };
        }
        let local_tag = dialog
            .local_fromto
            .tag
            .as_ref()
            .map(|t| t.to_string())
            .unwrap_or_default();
        let ack = AckTemplate::of(&invite, &local_tag);
        let requires_100rel = prack::requires(&invite.headers, prack::TAG);
        let prack = (requires_100rel || timers::supports(&invite.headers, prack::TAG)).then(|| {
            let state = Arc::new(PrackState::default());
            let guard = dialog.register_usage(PrackUsage {
                state: Arc::clone(&state),
                finished: Arc::clone(&self.finished),
            });
            (state, guard)
        });
        let invite_cseq = invite.base_headers.cseq.cseq;
        let dialog_key = dialog.key();
        let in_dialog = InDialog::register(&dialog, &self.finished, true);
        let mut acceptor = InviteAcceptor::new(dialog, invite);

        // RFC 3261 §8.2.6.1 / §17.2.1: 100 Trying at once, so the caller
        // stops retransmitting while we decide.
        match acceptor.create_response(StatusCode::TRYING, None).await {
            Ok(trying) => {
                if let Err(e) = acceptor.respond_provisional(trying).await {
                    tracing::warn!(error = %e, "cannot send 100 Trying");
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot build 100 Trying"),
        }

        tracing::info!(
            from = %info.from_uri,
            to = %info.to_uri,
            source = %info.source,
            transport = %info.transport,
            "inbound INVITE"
        );
        self.handler.on_invite(IncomingInvite {
            info,
            acceptor: Some(acceptor),
            local_tag,
            _slot: self.edge.invite_slot(),
            finished: Arc::clone(&self.finished),
            dialog_key,
            in_dialog: Some(in_dialog),
            timers: Arc::clone(&self.timers),
            ack,
            endpoint: endpoint.clone(),
            session_timer,
            peer_allows_update,
            prack,
            requires_100rel,
            // §3: the first RSeq is random, between 1 and 2**31 - 1.
            next_rseq: rand::random_range(1..=(1u32 << 30)),
            invite_cseq,
        });
    }
}

fn invite_info(invite: &IncomingRequest, transport: Transport) -> InviteInfo {
    let from = &invite.base_headers.from.uri;
    let to = &invite.base_headers.to.uri;
    let sdp_offer = sdp_of(invite);
    InviteInfo {
        call_id: invite.base_headers.call_id.0.to_string(),
        from_uri: from.uri.default_print_ctx().to_string(),
        from_user: user_of(&from.uri),
        from_display: from.name.as_ref().map(|n| n.to_string()),
        to_uri: to.uri.default_print_ctx().to_string(),
        to_user: user_of(&to.uri),
        request_uri: invite.line.uri.default_print_ctx().to_string(),
        request_user: user_of(&invite.line.uri),
        source: invite.tp_info.source,
        transport,
        sdp_offer,
        headers: invite
            .headers
            .iter()
            .map(|(name, value)| (name.as_print_str().to_owned(), value.to_string()))
            .collect(),
    }
}
