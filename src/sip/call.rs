//! An established dialog (RFC 3261 §12), either direction: BYE both ways,
//! re-INVITE (§14) whose answer the caller computes, INFO (RFC 6086)
//! answered 200 and reported, REFER sent for a blind transfer (RFC 3515;
//! ezk-sip-ua keeps its REFER support private to its own call type, so it
//! is built here on the dialog) or for an attended one (RFC 5589 §7: the
//! Refer-To carries a Replaces naming another dialog, RFC 3891 §3), and the
//! NOTIFYs reporting a REFER's progress (RFC 3515 §2.4.5, `message/sipfrag`)
//! read. Dropping a live [`Call`] sends BYE.
//!
//! Session timers (RFC 4028, agreed in `timers`): the call refreshes the
//! session itself when it is the refresher (UPDATE, RFC 3311, when the peer
//! allows it, else a re-INVITE with our SDP), answers the peer's refreshes
//! (re-INVITE or UPDATE) with Session-Expires, and ends the dialog with BYE
//! when the peer's refresh is overdue ([`DialogEvent::SessionExpired`]).

use super::base::{SipError, attach_sdp, is_sdp};
use super::finished::{ByeWatch, Finished};
use super::replaces::Replaces;
use super::timers::{self, Agreed, Inbound, SessionTimerConfig};
use bytes::Bytes;
use ezk_sip_core::{Endpoint, IncomingRequest, MayTake};
use ezk_sip_types::header::typed::{ContentType, MinSe, Require, SessionExpires};
use ezk_sip_types::print::{AppendCtx, PrintCtx};
use ezk_sip_types::{CodeKind, Headers, Method, Name, StatusCode};
use ezk_sip_ua::dialog::{Dialog, Usage, UsageGuard};
use ezk_sip_ua::invite::session::{InviteSession, InviteSessionEvent, ReInviteReceived, Role};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use tokio::sync::{Notify, mpsc};
use tokio::time::{Instant, sleep_until};
use tracing::Instrument;

/// What happened inside an established call.
#[derive(Debug)]
pub enum DialogEvent {
    /// The peer hung up; 200 to its BYE is already sent.
    Bye,
    /// The peer sent a re-INVITE (hold, resume, codec change). Answer it
    /// with [`Call::answer_reinvite`] or [`Call::reject_reinvite`]; the call
    /// goes on either way.
    ReInvite(Box<ReInvite>),
    /// An INFO request (already answered 200), e.g. `application/dtmf-relay`.
    Info {
        content_type: Option<String>,
        body: Bytes,
    },
    /// A NOTIFY of our REFER's progress (RFC 3515 §2.4.5, already answered
    /// 200): the status code of its `message/sipfrag` body.
    ReferProgress(u16),
    /// The dialog ended without a BYE from the peer.
    Terminated,
    /// The peer's session refresh (RFC 4028 §10) is overdue, or our own
    /// refresh failed: we sent BYE and the dialog is over.
    SessionExpired,
}

/// A re-INVITE waiting for our answer.
pub struct ReInvite {
    /// The new offer, if the re-INVITE carried one.
    pub sdp_offer: Option<Bytes>,
    received: ReInviteReceived,
}

impl std::fmt::Debug for ReInvite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReInvite")
            .field("sdp_offer", &self.sdp_offer)
            .finish_non_exhaustive()
    }
}

/// An established call. One task owns it.
pub struct Call {
    /// The INVITE session; `None` once the dialog ended (BYE either way).
    session: Option<InviteSession>,
    call_id: String,
    /// INFO requests, answered by [`InfoUsage`] and forwarded here.
    info_rx: mpsc::Receiver<(Option<String>, Bytes)>,
    /// Keeps [`InfoUsage`] registered in the dialog for the call's life.
    _info_usage: Option<UsageGuard>,
    /// The peer's BYE, answered by the guard layer without a transaction.
    bye: ByeWatch,
    /// The session timer, shared with [`InfoUsage`] (which answers UPDATE).
    timer: Arc<TimerShared>,
}

/// How a call starts its session timer.
#[derive(Debug, Clone, Default)]
pub(crate) struct TimerSetup {
    /// What was agreed in the INVITE transaction; `None`: no timer.
    pub(crate) agreed: Option<Agreed>,
    /// Our current SDP (a refresh by re-INVITE offers it again).
    pub(crate) local_sdp: Option<Bytes>,
    /// The peer listed UPDATE in Allow (RFC 3311 §5.1): refresh by UPDATE.
    pub(crate) peer_allows_update: bool,
    /// For the peer's refreshes: our Min-SE and longest interval.
    pub(crate) config: SessionTimerConfig,
}

/// The timer state the call and its UPDATE usage share.
#[derive(Debug)]
struct TimerShared {
    state: Mutex<TimerState>,
    /// A refresh arrived (the deadline moved).
    changed: Notify,
}

#[derive(Debug)]
struct TimerState {
    setup: TimerSetup,
    /// When the session was last refreshed (or established).
    last_refresh: Instant,
}

impl TimerShared {
    fn lock(&self) -> MutexGuard<'_, TimerState> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn deadline(&self) -> Option<Instant> {
        let state = self.lock();
        state.setup.agreed.map(|a| a.deadline(state.last_refresh))
    }

    /// A refresh request from the peer (re-INVITE or UPDATE) with
    /// `headers`: §9 again. The headers our 2xx must carry, or the Min-SE
    /// of a 422.
    fn peer_refresh(&self, headers: &Headers, we_are_uas: bool) -> Result<Headers, u32> {
        let mut state = self.lock();
        let mut extra = Headers::new();
        match timers::negotiate(headers, &state.setup.config, we_are_uas) {
            Inbound::TooBrief { min_se } => return Err(min_se),
            Inbound::None => {
                // The peer dropped the timer from its refresh (§9 allows
                // it): no timer from now on.
                state.setup.agreed = None;
            }
            Inbound::Timer(agreed) => {
                if agreed.peer_supports {
                    extra.insert_named(&Require("timer".into()));
                }
                extra.insert_named(&agreed.header());
                state.setup.agreed = Some(agreed);
            }
        }
        state.last_refresh = Instant::now();
        drop(state);
        self.changed.notify_one();
        Ok(extra)
    }
}

impl std::fmt::Debug for Call {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Call")
            .field("call_id", &self.call_id)
            .field("active", &self.session.is_some())
            .finish_non_exhaustive()
    }
}

/// INFO, OPTIONS and UPDATE inside a dialog, answered by [`InfoUsage`]:
/// registered on the dialog before our 200 goes out (an inbound call), so
/// an INFO the peer sends right behind its ACK is not answered 404 by
/// ezk's dialog layer in the gap before the [`Call`] exists. Until
/// [`Self::confirm`] the usage leaves every request to ezk, as in the
/// early dialog nothing but PRACK (see `prack`) is ours to answer.
pub(crate) struct InDialog {
    info_rx: mpsc::Receiver<(Option<String>, Bytes)>,
    guard: UsageGuard,
    timer: Arc<OnceLock<Arc<TimerShared>>>,
}

impl InDialog {
    pub(crate) fn register(dialog: &Dialog, finished: &Arc<Finished>, we_are_uas: bool) -> Self {
        // Bounded: INFO is answered 200 and its body dropped (logged) when
        // the call does not keep up (see `InfoUsage::receive`).
        let (info_tx, info_rx) = mpsc::channel(16);
        let timer = Arc::new(OnceLock::new());
        let guard = dialog.register_usage(InfoUsage {
            info_tx,
            finished: Arc::clone(finished),
            timer: Arc::clone(&timer),
            we_are_uas,
        });
        Self {
            info_rx,
            guard,
            timer,
        }
    }

    /// The dialog is confirmed (our 200 is about to go out, or the peer's
    /// arrived): the session timer starts and in-dialog requests are ours.
    pub(crate) fn confirm(&self, setup: TimerSetup) {
        let shared = Arc::new(TimerShared {
            state: Mutex::new(TimerState {
                setup,
                last_refresh: Instant::now(),
            }),
            changed: Notify::new(),
        });
        // A second confirm keeps the first timer (it cannot happen: one
        // dialog is confirmed once).
        let _ = self.timer.set(shared);
    }
}

impl Call {
    /// A call whose dialog was just confirmed by the peer's 2xx (outbound).
    pub(crate) fn new(
        session: InviteSession,
        call_id: String,
        finished: &Arc<Finished>,
        bye: ByeWatch,
        setup: TimerSetup,
    ) -> Self {
        let in_dialog =
            InDialog::register(&session.dialog, finished, matches!(session.role, Role::Uas));
        in_dialog.confirm(setup);
        Self::confirmed(session, call_id, bye, in_dialog)
    }

    /// A call whose [`InDialog`] was registered and confirmed before.
    pub(crate) fn confirmed(
        mut session: InviteSession,
        call_id: String,
        bye: ByeWatch,
        in_dialog: InDialog,
    ) -> Self {
        // Our own timer replaces ezk's (see `timers`).
        timers::park_ezk_timer(&mut session);
        let timer = match in_dialog.timer.get() {
            Some(timer) => Arc::clone(timer),
            // Unreachable by the callers (both confirm first); a call
            // without a timer is the safe reading.
            None => Arc::new(TimerShared {
                state: Mutex::new(TimerState {
                    setup: TimerSetup::default(),
                    last_refresh: Instant::now(),
                }),
                changed: Notify::new(),
            }),
        };
        {
            let state = timer.lock();
            if let Some(agreed) = &state.setup.agreed {
                tracing::info!(
                    %call_id,
                    interval = agreed.interval,
                    we_refresh = agreed.we_refresh,
                    "session timer (RFC 4028)"
                );
            }
        }
        Self {
            session: Some(session),
            call_id,
            info_rx: in_dialog.info_rx,
            _info_usage: Some(in_dialog.guard),
            bye,
            timer,
        }
    }

    pub fn call_id(&self) -> &str {
        &self.call_id
    }

    /// What ending this dialog without this process needs (RFC 3261
    /// §12.2.1.1), to be stored; `None` once it ended.
    pub fn dialog_state(&self) -> Option<super::DialogState> {
        self.session
            .as_ref()
            .map(|s| super::DialogState::of(&s.dialog))
    }

    /// Whether the dialog is still up.
    pub fn is_active(&self) -> bool {
        self.session.is_some()
    }

    /// Wait for the next in-dialog event. Cancel-safe; after `Bye` or
    /// `Terminated` it returns `Err(SipError::Terminated)`.
    pub async fn next_event(&mut self) -> Result<DialogEvent, SipError> {
        let span = tracing::info_span!("sip_call", call_id = %self.call_id);
        async {
            loop {
                let deadline = self.timer.deadline();
                let session = self.session.as_mut().ok_or(SipError::Terminated)?;
                // INFO first: an INFO already answered came before a BYE
                // that is ready at the same time (a key pressed just before
                // hanging up must not be lost).
                let event = tokio::select! {
                    biased;
                    Some((content_type, body)) = self.info_rx.recv() => {
                        return Ok(DialogEvent::Info { content_type, body });
                    }
                    () = self.bye.bye() => {
                        // 200 already sent (see `finished`): the dialog
                        // ends here, without a BYE of ours.
                        self.session = None;
                        tracing::info!("peer hung up (BYE)");
                        return Ok(DialogEvent::Bye);
                    }
                    // A refresh from the peer moved the deadline.
                    () = self.timer.changed.notified() => continue,
                    () = sleep_until(deadline.unwrap_or_else(far_future)), if deadline.is_some() => {
                        if self.on_session_timer().await {
                            return Ok(DialogEvent::SessionExpired);
                        }
                        continue;
                    }
                    event = session.run() => event?,
                };
                match event {
                    InviteSessionEvent::Bye(bye) => {
                        let result = session.handle_bye(bye).await;
                        self.session = None;
                        tracing::info!("peer hung up (BYE)");
                        result?;
                        return Ok(DialogEvent::Bye);
                    }
                    InviteSessionEvent::ReInviteReceived(received) => {
                        let sdp_offer = sdp_of(&received.invite);
                        tracing::info!(with_offer = sdp_offer.is_some(), "re-INVITE received");
                        return Ok(DialogEvent::ReInvite(Box::new(ReInvite {
                            sdp_offer,
                            received,
                        })));
                    }
                    InviteSessionEvent::Terminated => {
                        self.session = None;
                        return Ok(DialogEvent::Terminated);
                    }
                    // ezk answered the NOTIFY 200 already; one of a REFER's
                    // implicit subscription reports its progress.
                    InviteSessionEvent::Notify(notify) => {
                        if let Some(code) = refer_progress(&notify) {
                            tracing::info!(code, "REFER progress (NOTIFY)");
                            return Ok(DialogEvent::ReferProgress(code));
                        }
                    }
                    // We never take the refresher role (RFC 4028 refresher=uac
                    // on inbound, no timer on outbound).
                    InviteSessionEvent::RefreshNeeded => {}
                }
            }
        }
        .instrument(span)
        .await
    }

    /// The session timer's deadline passed: our refresh is due, or the
    /// peer's is overdue. `true` when the dialog is over (BYE sent).
    async fn on_session_timer(&mut self) -> bool {
        let (agreed, setup) = {
            let state = self.timer.lock();
            (state.setup.agreed, state.setup.clone())
        };
        let Some(agreed) = agreed else {
            return false;
        };
        let span = tracing::info_span!("sip_session_timer", call_id = %self.call_id);
        async {
            if agreed.we_refresh {
                match self.refresh(agreed, &setup).await {
                    Ok(()) => return false,
                    Err(e) => tracing::warn!(error = %e, "session refresh failed, ending the call"),
                }
            } else {
                tracing::warn!(
                    interval = agreed.interval,
                    "no session refresh from the peer (RFC 4028 §10), sending BYE"
                );
            }
            if let Some(mut session) = self.session.take()
                && let Err(e) = session.terminate().await
            {
                tracing::info!(error = %e, "BYE after session expiry not answered");
            }
            true
        }
        .instrument(span)
        .await
    }

    /// Our session refresh (RFC 4028 §7.4 / §9): UPDATE without a body when
    /// the peer allows UPDATE (§9 recommends that), else a re-INVITE with
    /// our SDP again (its origin version one higher, RFC 3264 §8). A 422
    /// is retried once with the Min-SE it names (§7.4).
    async fn refresh(&mut self, mut agreed: Agreed, setup: &TimerSetup) -> Result<(), SipError> {
        let session = self.session.as_mut().ok_or(SipError::Terminated)?;
        let by_update = setup.peer_allows_update || setup.local_sdp.is_none();
        for _attempt in 0..2 {
            let method = if by_update {
                Method::UPDATE
            } else {
                Method::INVITE
            };
            let mut request = session.dialog.create_request(method.clone(), None);
            if by_update {
                // RFC 3311 §5.1: UPDATE is a target refresh request.
                request.headers.insert_named(&session.dialog.local_contact);
            }
            request.headers.insert(Name::SUPPORTED, "timer");
            if agreed.peer_supports {
                request.headers.insert_named(&Require("timer".into()));
            }
            request.headers.insert_named(&agreed.header());
            request.headers.insert_named(&MinSe(setup.config.min_se));
            let mut sdp = None;
            if !by_update && let Some(local) = &setup.local_sdp {
                let bumped = timers::bump_origin_version(local);
                attach_sdp(&mut request.headers, &mut request.body, bumped.clone());
                sdp = Some(bumped);
            }
            tracing::info!(%method, interval = agreed.interval, "refreshing the session");
            let mut target_tp_info = session.dialog.target_tp_info.lock().await;
            let response = if by_update {
                let mut tsx = session
                    .endpoint
                    .send_request(request, &mut target_tp_info)
                    .await?;
                drop(target_tp_info);
                tsx.receive_final().await?
            } else {
                let mut tsx = session
                    .endpoint
                    .send_invite(request, &mut target_tp_info)
                    .await?;
                drop(target_tp_info);
                let mut last = None;
                while let Some(response) = tsx.receive().await? {
                    match response.line.code.kind() {
                        CodeKind::Provisional => continue,
                        CodeKind::Success => {
                            let mut ack = ezk_sip_ua::invite::create_ack(
                                &session.dialog,
                                response.base_headers.cseq.cseq,
                            )
                            .await?;
                            session
                                .endpoint
                                .send_outgoing_request(&mut ack)
                                .await
                                .map_err(|e| SipError::Transaction(e.to_string()))?;
                            // §13.2.2.4: every retransmission of the 2xx
                            // is ACKed too, without holding up the call
                            // (the transaction lives on for 64*T1).
                            let endpoint = session.endpoint.clone();
                            tokio::spawn(async move {
                                while let Ok(Some(again)) = tsx.receive().await {
                                    if again.line.code.kind() == CodeKind::Success
                                        && endpoint.send_outgoing_request(&mut ack).await.is_err()
                                    {
                                        break;
                                    }
                                }
                            });
                            last = Some(response);
                            break;
                        }
                        _ => {
                            last = Some(response);
                            break;
                        }
                    }
                }
                last.ok_or_else(|| SipError::Transaction("no final response".into()))?
            };
            let code = response.line.code.into_u16();
            tracing::info!(code, "session refresh answered");
            if code == 422 {
                let min_se = response
                    .headers
                    .get_named::<MinSe>()
                    .map(|m| m.0)
                    .unwrap_or(agreed.interval);
                if min_se <= agreed.interval || min_se > 86_400 {
                    return Err(SipError::Transaction(format!("422 with Min-SE {min_se}")));
                }
                agreed.interval = min_se;
                continue;
            }
            if !(200..300).contains(&code) {
                return Err(SipError::Transaction(format!("refresh answered {code}")));
            }
            // §7.4: the 2xx may change the interval (and who refreshes).
            if let Ok(se) = response.headers.get_named::<SessionExpires>()
                && se.delta_secs >= timers::MIN_SE_FLOOR
            {
                agreed.interval = se.delta_secs;
                agreed.we_refresh = match se.refresher {
                    ezk_sip_types::header::typed::Refresher::Uas => agreed.we_are_uas,
                    ezk_sip_types::header::typed::Refresher::Uac => !agreed.we_are_uas,
                    ezk_sip_types::header::typed::Refresher::Unspecified => agreed.we_refresh,
                };
            }
            let mut state = self.timer.lock();
            state.setup.agreed = Some(agreed);
            if let Some(sdp) = sdp {
                state.setup.local_sdp = Some(sdp);
            }
            state.last_refresh = Instant::now();
            return Ok(());
        }
        Err(SipError::Transaction("422 twice".into()))
    }

    /// 200 OK with our SDP to a re-INVITE (the answer, or our offer when
    /// the re-INVITE had none); waits for its ACK and returns the SDP the
    /// ACK carried (the answer to such an offer, RFC 3261 §14.2). A
    /// re-INVITE is also a session refresh (RFC 4028 §9): the 200 carries
    /// Session-Expires and the timer restarts; one below our Min-SE gets
    /// 422 instead (and `Ok(None)`).
    pub async fn answer_reinvite(
        &mut self,
        reinvite: Box<ReInvite>,
        sdp: Bytes,
    ) -> Result<Option<Bytes>, SipError> {
        let session = self.session.as_mut().ok_or(SipError::Terminated)?;
        let we_are_uas = matches!(session.role, Role::Uas);
        let timer_headers = match self
            .timer
            .peer_refresh(&reinvite.received.invite.headers, we_are_uas)
        {
            Ok(headers) => headers,
            Err(min_se) => {
                let mut response = session.dialog.create_response(
                    &reinvite.received.invite,
                    StatusCode::from(422),
                    None,
                )?;
                response.msg.headers.insert_named(&MinSe(min_se));
                tokio::spawn(async move {
                    let _ = reinvite
                        .received
                        .transaction
                        .respond_failure(response)
                        .await;
                });
                return Ok(None);
            }
        };
        self.timer.lock().setup.local_sdp = Some(sdp.clone());
        let mut response =
            session
                .dialog
                .create_response(&reinvite.received.invite, StatusCode::OK, None)?;
        let mut timer_headers = timer_headers;
        timer_headers.drain_into(&mut response.msg.headers);
        attach_sdp(&mut response.msg.headers, &mut response.msg.body, sdp);
        let ack = session
            .handle_reinvite_success(reinvite.received, response)
            .instrument(tracing::info_span!("sip_reinvite", call_id = %self.call_id))
            .await?;
        Ok(sdp_of(&ack))
    }

    /// Refuse a re-INVITE (488 when the offer is unacceptable, RFC 3261
    /// §14.2); the call keeps its previous session description.
    pub async fn reject_reinvite(
        &mut self,
        reinvite: Box<ReInvite>,
        code: u16,
    ) -> Result<(), SipError> {
        let session = self.session.as_mut().ok_or(SipError::Terminated)?;
        let response = session.dialog.create_response(
            &reinvite.received.invite,
            StatusCode::from(code.clamp(400, 699)),
            None,
        )?;
        tokio::spawn(async move {
            if let Err(e) = reinvite
                .received
                .transaction
                .respond_failure(response)
                .await
            {
                tracing::debug!(error = %e, "re-INVITE rejection not acknowledged");
            }
        });
        Ok(())
    }

    /// Blind transfer (RFC 3515 §2.4, RFC 5589 §6): asks the peer to call
    /// `target` (a `sip:` URI, or a user part such as an E.164 number, sent
    /// to the peer's own host) and returns the final status of the REFER.
    /// 2xx means the peer took it; the NOTIFYs that follow (§2.4.4) are
    /// answered by the INVITE session. The caller then ends the dialog.
    /// `headers` ride in the Refer-To URI (RFC 3261 §19.1.1 header
    /// fields; RFC 3515 §2.1: the referee puts them in its INVITE to the
    /// target): names that are not tokens are dropped, values escaped.
    pub async fn refer(
        &mut self,
        target: &str,
        headers: &[(String, String)],
    ) -> Result<u16, SipError> {
        // Whatever goes into the header must not break out of it.
        let safe = !target.is_empty()
            && target.len() <= 256
            && target
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "+-_.@:;=*#%".contains(c));
        if !safe {
            return Err(SipError::Invalid {
                what: "transfer target",
                value: target.to_owned(),
            });
        }
        let session = self.session.as_ref().ok_or(SipError::Terminated)?;
        let uri = if target.starts_with("sip:") || target.starts_with("sips:") {
            target.to_owned()
        } else {
            let host = session
                .dialog
                .peer_contact
                .uri
                .uri
                .host_port
                .print_ctx(PrintCtx::default())
                .to_string();
            format!("sip:{target}@{host}")
        };
        self.send_refer(with_headers(uri, headers), false).await
    }

    /// Attended transfer (RFC 5589 §7): asks the peer to call `target` (the
    /// URI [`Call::replaced_by_peer`] gave for the other dialog) with an
    /// INVITE that replaces that dialog (RFC 3891 §3: `Replaces` rides in
    /// the Refer-To URI as an escaped header field, RFC 3261 §19.1.1), and
    /// says who referred it (Referred-By, RFC 3892). Returns the REFER's
    /// final status; its progress comes as [`DialogEvent::ReferProgress`].
    pub async fn refer_replacing(
        &mut self,
        target: &str,
        replaces: &Replaces,
    ) -> Result<u16, SipError> {
        let uri = with_headers(
            target.to_owned(),
            &[("Replaces".to_owned(), replaces.to_string())],
        );
        self.send_refer(uri, true).await
    }

    /// This dialog as the peer would name it in the Replaces of an INVITE
    /// sent to it (RFC 3891 §3: the to-tag is the peer's own tag, the
    /// from-tag ours), with the peer's Contact, where that INVITE goes
    /// (RFC 5589 §7.1). `None` once the dialog ended, or when the Contact
    /// (the peer's bytes) is not fit to be quoted in a Refer-To.
    pub fn replaced_by_peer(&self) -> Option<(String, Replaces)> {
        let dialog = &self.session.as_ref()?.dialog;
        let target = dialog
            .peer_contact
            .uri
            .uri
            .print_ctx(PrintCtx::default())
            .to_string();
        let fit = target.len() <= 256
            && (target.starts_with("sip:") || target.starts_with("sips:"))
            && target
                .bytes()
                .all(|b| b.is_ascii_graphic() && !b"<>\"?&,".contains(&b));
        if !fit {
            tracing::info!(%target, "the peer's Contact cannot be a Refer-To");
            return None;
        }
        let replaces = Replaces {
            call_id: dialog.call_id.0.to_string(),
            to_tag: dialog.peer_fromto.tag.as_ref()?.to_string(),
            from_tag: dialog.local_fromto.tag.as_ref()?.to_string(),
            early_only: false,
        };
        // The tags and Call-ID come from the peer too: refused unless they
        // read back as a Replaces (no quote, comma or line break).
        (Replaces::parse(&replaces.to_string()).as_ref() == Some(&replaces))
            .then_some((target, replaces))
    }

    /// Whether `replaces` (from an INVITE we received) names this dialog,
    /// confirmed and up (RFC 3891 §3: its to-tag is compared to our local
    /// tag, its from-tag to the peer's).
    pub fn is_named_by(&self, replaces: &Replaces) -> bool {
        let Some(session) = self.session.as_ref() else {
            return false;
        };
        let dialog = &session.dialog;
        *dialog.call_id.0 == *replaces.call_id
            && dialog.local_fromto.tag.as_deref() == Some(replaces.to_tag.as_str())
            && dialog.peer_fromto.tag.as_deref() == Some(replaces.from_tag.as_str())
    }

    /// Sends REFER with `Refer-To: <uri>` (and our Referred-By when
    /// `referred_by`) and returns its final status.
    async fn send_refer(&mut self, uri: String, referred_by: bool) -> Result<u16, SipError> {
        let session = self.session.as_mut().ok_or(SipError::Terminated)?;
        let mut request = session.dialog.create_request(Method::REFER, None);
        request.headers.insert(Name::REFER_TO, format!("<{uri}>"));
        if referred_by {
            // RFC 3892 §3: the referrer's address, here our From URI.
            let ours = session
                .dialog
                .local_fromto
                .uri
                .uri
                .print_ctx(PrintCtx::default())
                .to_string();
            request.headers.insert("Referred-By", format!("<{ours}>"));
        }
        // RFC 3515 §2.4.1 / RFC 3261 §8.1.1.8: REFER creates a dialog usage
        // (the implicit subscription), so it carries our Contact.
        request.headers.insert_named(&session.dialog.local_contact);
        let span = tracing::info_span!("sip_refer", call_id = %self.call_id, %uri);
        async {
            let mut target_tp_info = session.dialog.target_tp_info.lock().await;
            let mut transaction = session
                .endpoint
                .send_request(request, &mut target_tp_info)
                .await?;
            drop(target_tp_info);
            let response = transaction.receive_final().await?;
            let code = response.line.code.into_u16();
            tracing::info!(code, "REFER answered");
            Ok(code)
        }
        .instrument(span)
        .await
    }

    /// Send BYE and wait for its final response.
    pub async fn hangup(mut self) -> Result<(), SipError> {
        let mut session = self.session.take().ok_or(SipError::Terminated)?;
        let span = tracing::info_span!("sip_hangup", call_id = %self.call_id);
        let response = session.terminate().instrument(span).await?;
        tracing::info!(call_id = %self.call_id, code = response.line.code.into_u16(), "BYE answered");
        Ok(())
    }
}

/// `uri` with `headers` as its RFC 3261 §19.1.1 header fields
/// (`?name=value&...`): names must be tokens (§25.1) of at most 64
/// characters, values are %-escaped but for letters, digits and `-_.~`, so
/// that nothing a caller said can break out of the URI or the header.
fn with_headers(uri: String, headers: &[(String, String)]) -> String {
    let fields: Vec<String> = headers
        .iter()
        .filter(|(name, _)| {
            !name.is_empty()
                && name.len() <= 64
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
        .map(|(name, value)| {
            let escaped: String = value
                .bytes()
                .map(|b| {
                    if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                        char::from(b).to_string()
                    } else {
                        format!("%{b:02X}")
                    }
                })
                .collect();
            format!("{name}={escaped}")
        })
        .collect();
    if fields.is_empty() {
        uri
    } else {
        format!("{uri}?{}", fields.join("&"))
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        if let Some(mut session) = self.session.take() {
            let call_id = self.call_id.clone();
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(async move {
                    tracing::info!(%call_id, "call dropped while up, sending BYE");
                    if let Err(e) = session.terminate().await {
                        tracing::warn!(%call_id, error = %e, "BYE failed");
                    }
                });
            }
        }
    }
}

/// The status code of a REFER's progress NOTIFY (RFC 3515 §2.4.4-5:
/// `Event: refer`, a `message/sipfrag` body whose first line is a status
/// line, RFC 3420); `None` for any other NOTIFY.
fn refer_progress(notify: &IncomingRequest) -> Option<u16> {
    let event: &str = notify.headers.get_raw(&Name::EVENT).next()?;
    let package = event.split(';').next()?.trim();
    if !package.eq_ignore_ascii_case("refer") {
        return None;
    }
    sipfrag_status(&notify.body)
}

/// The status code of a `message/sipfrag` body's status line.
fn sipfrag_status(body: &[u8]) -> Option<u16> {
    let line = body.split(|b| *b == b'\n').next()?;
    let line = std::str::from_utf8(line).ok()?.trim();
    let mut words = line.split_ascii_whitespace();
    if !words.next()?.eq_ignore_ascii_case("SIP/2.0") {
        return None;
    }
    let code = words.next()?;
    if code.len() != 3 {
        return None;
    }
    code.parse().ok().filter(|c| (100..700).contains(c))
}

pub(super) fn sdp_of(request: &IncomingRequest) -> Option<Bytes> {
    match request.headers.try_get_named::<ContentType>() {
        Some(Ok(ct)) if is_sdp(&ct) && !request.body.is_empty() => Some(request.body.clone()),
        _ => None,
    }
}

/// Answers INFO inside the dialog with 200 and forwards its body
/// (RFC 6086 §4.2.2), and answers OPTIONS inside the dialog with 200
/// (RFC 3261 §11.2). ezk's INVITE usage ignores both.
struct InfoUsage {
    info_tx: mpsc::Sender<(Option<String>, Bytes)>,
    /// Answers without a transaction (see `finished`).
    finished: Arc<Finished>,
    /// UPDATE refreshes the session timer (RFC 4028 §9 / RFC 3311).
    /// Unset while the dialog is early: the usage then takes nothing.
    timer: Arc<OnceLock<Arc<TimerShared>>>,
    we_are_uas: bool,
}

#[async_trait::async_trait]
impl Usage for InfoUsage {
    fn name(&self) -> &'static str {
        "agentline-info"
    }

    async fn receive(&self, endpoint: &Endpoint, request: MayTake<'_, IncomingRequest>) {
        let Some(timer) = self.timer.get() else {
            return;
        };
        let method = request.line.method.clone();
        if method == Method::UPDATE {
            let update = request.take();
            self.answer_update(endpoint, timer, update).await;
            return;
        }
        if method != Method::INFO && method != Method::OPTIONS {
            return;
        }
        let info = request.take();
        let content_type = match info.headers.try_get_named::<ContentType>() {
            Some(Ok(ct)) => Some(ct.0.to_string()),
            _ => None,
        };
        // Handed to the call before the 200 goes out, so that whatever the
        // peer sends after our answer (a BYE) is seen after it.
        if method == Method::INFO
            && self
                .info_tx
                .try_send((content_type, info.body.clone()))
                .is_err()
        {
            tracing::debug!("INFO not delivered, call not listening");
        }
        let response = endpoint.create_response(&info, StatusCode::OK, None);
        self.finished.answer(endpoint, info, response).await;
    }
}

impl InfoUsage {
    /// UPDATE inside the dialog (RFC 3311 §5.2), which ezk's INVITE usage
    /// ignores (its dialog layer would answer 404): a session refresh
    /// (RFC 4028 §9) answered 200 with Session-Expires; one below our
    /// Min-SE gets 422. An offer in it is answered with our current SDP:
    /// the media of a call never changes by UPDATE here.
    async fn answer_update(
        &self,
        endpoint: &Endpoint,
        timer: &TimerShared,
        update: IncomingRequest,
    ) {
        let response = match timer.peer_refresh(&update.headers, self.we_are_uas) {
            Ok(mut extra) => {
                let mut response = endpoint.create_response(&update, StatusCode::OK, None);
                extra.drain_into(&mut response.msg.headers);
                let local = timer.lock().setup.local_sdp.clone();
                if sdp_of(&update).is_some()
                    && let Some(sdp) = local
                {
                    attach_sdp(&mut response.msg.headers, &mut response.msg.body, sdp);
                }
                tracing::info!("session refreshed by UPDATE");
                response
            }
            Err(min_se) => {
                let mut response = endpoint.create_response(&update, StatusCode::from(422), None);
                response.msg.headers.insert_named(&MinSe(min_se));
                response
            }
        };
        self.finished.answer(endpoint, update, response).await;
    }
}

/// A deadline that never comes (for a `select!` branch that is off).
fn far_future() -> Instant {
    Instant::now() + std::time::Duration::from_secs(86_400 * 365)
}

#[cfg(test)]
mod tests {
    use super::{sipfrag_status, with_headers};
    use crate::sip::replaces::Replaces;

    #[test]
    fn sipfrag_status_lines_are_read_and_anything_else_is_not() {
        assert_eq!(sipfrag_status(b"SIP/2.0 200 OK\r\n"), Some(200));
        assert_eq!(sipfrag_status(b"SIP/2.0 100 Trying"), Some(100));
        assert_eq!(
            sipfrag_status(b"SIP/2.0 603 Declined\r\nX: y\r\n"),
            Some(603)
        );
        for bad in [
            &b""[..],
            b"INVITE sip:a@b SIP/2.0",
            b"SIP/2.0 2000 OK",
            b"SIP/2.0 099 x",
        ] {
            assert_eq!(sipfrag_status(bad), None);
        }
    }

    #[test]
    fn replaces_rides_escaped_in_the_refer_to() {
        let replaces = Replaces {
            call_id: "a84b4c76e66710@10.0.0.2".into(),
            to_tag: "1928301774".into(),
            from_tag: "f00-1".into(),
            early_only: false,
        };
        let uri = with_headers(
            "sip:+14155550100@10.0.0.2:5062".into(),
            &[("Replaces".into(), replaces.to_string())],
        );
        assert_eq!(
            uri,
            "sip:+14155550100@10.0.0.2:5062?Replaces=a84b4c76e66710%4010.0.0.2\
             %3Bto-tag%3D1928301774%3Bfrom-tag%3Df00-1"
        );
    }

    #[test]
    fn refer_to_headers_are_escaped_and_names_checked() {
        let uri = with_headers(
            "sip:+14155550100@10.0.0.1".into(),
            &[
                ("X-Customer-Id".into(), "42".into()),
                ("X-First-Name".into(), "Zoë <x>&y=z\r\nVia: evil".into()),
                ("Bad Name".into(), "1".into()),
                ("X-Bad\r\n".into(), "1".into()),
            ],
        );
        assert_eq!(
            uri,
            "sip:+14155550100@10.0.0.1?X-Customer-Id=42&\
             X-First-Name=Zo%C3%AB%20%3Cx%3E%26y%3Dz%0D%0AVia%3A%20evil"
        );
        assert_eq!(with_headers("sip:a@b".into(), &[]), "sip:a@b");
    }
}
