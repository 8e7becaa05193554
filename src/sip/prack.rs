//! Reliable provisional responses (RFC 3262), both ways.
//!
//! Inbound: when the INVITE requires `100rel` (or supports it and our 183
//! carries early-media SDP), our 180/183 carries `Require: 100rel` and an
//! RSeq, is resent at T1, 2*T1, 4*T1 ... until the matching PRACK (§3),
//! which [`PrackUsage`] answers 200; no PRACK in 64*T1: the INVITE gets
//! 500. ezk-sip-ua 0.9.1 has a reliable provisional too, but it panics
//! unless the INVITE lists 100rel in Supported (a carrier may put it in
//! Require only), resends at a flat 1 s after the first T1 and gives up
//! after five tries; its PRACK handling is skipped for the same reason.
//!
//! Outbound: a reliable 18x from the carrier gets a PRACK (§4) with RAck,
//! built here because ezk's early dialog keeps its dialog private; the
//! CSeq numbers the PRACKs used are skipped by the confirmed dialog.
//!
//! Must not: answer any PRACK but the one for our current reliable
//! provisional (others get 481, §3), or hold more than one pending.

use super::finished::Finished;
use ezk_sip_core::transaction::TsxResponse;
use ezk_sip_core::transport::TargetTransportInfo;
use ezk_sip_core::{Endpoint, IncomingRequest, MayTake, Request};
use ezk_sip_types::header::typed::{CSeq, Contact, MaxForwards, RAck};
use ezk_sip_types::msg::RequestLine;
use ezk_sip_types::{Headers, Method, Name, StatusCode};
use ezk_sip_ua::dialog::Usage;
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::oneshot;

/// The option tag.
pub(crate) const TAG: &str = "100rel";

/// The reliable provisional we wait a PRACK for: its RSeq and the
/// INVITE's CSeq (§7.2: RAck carries both and the method).
struct Expected {
    rseq: u32,
    cseq: u32,
    prack: oneshot::Sender<()>,
}

#[derive(Default)]
pub(crate) struct PrackState {
    expected: Mutex<Option<Expected>>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl PrackState {
    /// Waits for the PRACK of the provisional with `rseq` to the INVITE
    /// with `cseq`; replaces any earlier wait.
    pub(crate) fn expect(&self, rseq: u32, cseq: u32) -> oneshot::Receiver<()> {
        let (tx, rx) = oneshot::channel();
        *lock(&self.expected) = Some(Expected {
            rseq,
            cseq,
            prack: tx,
        });
        rx
    }
}

/// The `Require` values of `headers` include `tag`.
pub(crate) fn requires(headers: &Headers, tag: &str) -> bool {
    headers
        .get_named::<Vec<ezk_sip_types::header::typed::Require>>()
        .unwrap_or_default()
        .iter()
        .any(|r| r.0.eq_ignore_ascii_case(tag))
}

/// Answers PRACK in the early dialog of an inbound INVITE (§3).
pub(crate) struct PrackUsage {
    pub(crate) state: Arc<PrackState>,
    pub(crate) finished: Arc<Finished>,
}

#[async_trait::async_trait]
impl Usage for PrackUsage {
    fn name(&self) -> &'static str {
        "agentline-prack"
    }

    async fn receive(&self, endpoint: &Endpoint, request: MayTake<'_, IncomingRequest>) {
        if request.line.method != Method::PRACK {
            return;
        }
        let prack = request.take();
        let rack = prack.headers.get_named::<RAck>().ok();
        let matched = {
            let mut expected = lock(&self.state.expected);
            match (expected.as_ref(), rack) {
                (Some(e), Some(rack))
                    if e.rseq == rack.rack
                        && e.cseq == rack.cseq
                        && rack.method == Method::INVITE =>
                {
                    expected.take()
                }
                _ => None,
            }
        };
        let code = match matched {
            Some(expected) => {
                tracing::info!(rseq = expected.rseq, "PRACK received");
                let _ = expected.prack.send(());
                StatusCode::OK
            }
            None => StatusCode::CALL_OR_TRANSACTION_DOES_NOT_EXIST,
        };
        let response = endpoint.create_response(&prack, code, None);
        self.finished.answer(endpoint, prack, response).await;
    }
}

/// The PRACK for a reliable provisional `response` (RFC 3262 §4, §7.2) to
/// our INVITE, in the early dialog the response set up, with CSeq `cseq`.
/// `None` when the response lacks what a request in its dialog needs
/// (Contact, a To tag).
pub(crate) fn prack_for(response: &TsxResponse, rseq: u32, cseq: u32) -> Option<Request> {
    let headers = &response.base_headers;
    headers.to.tag.as_ref()?;
    let contact = response.headers.get_named::<Contact>().ok()?;
    let mut request = Request {
        line: RequestLine {
            method: Method::PRACK,
            uri: contact.uri.uri,
        },
        headers: Headers::new(),
        body: bytes::Bytes::new(),
    };
    request.headers.insert_type(Name::FROM, &headers.from);
    request.headers.insert_type(Name::TO, &headers.to);
    request.headers.insert_named(&headers.call_id);
    request
        .headers
        .insert_named(&CSeq::new(cseq, Method::PRACK));
    request.headers.insert_named(&MaxForwards(70));
    // §12.1.2: the route set is the Record-Route in reverse.
    let record_route: Vec<String> = response
        .headers
        .get_raw(&Name::RECORD_ROUTE)
        .map(|v| v.to_string())
        .collect();
    for route in record_route.iter().rev() {
        request.headers.insert(Name::ROUTE, route.clone());
    }
    request
        .headers
        .insert_named(&RAck::new(rseq, headers.cseq.cseq, Method::INVITE));
    Some(request)
}

/// Sends `request` (a PRACK) back the way `response` came, and waits for
/// its answer in the background.
pub(crate) async fn send_prack(endpoint: &Endpoint, response: &TsxResponse, request: Request) {
    let mut target = TargetTransportInfo {
        via_host_port: None,
        transport: Some((response.tp_info.transport.clone(), response.tp_info.source)),
    };
    match endpoint.send_request(request, &mut target).await {
        Ok(mut tsx) => {
            tokio::spawn(async move {
                match tsx.receive_final().await {
                    Ok(answer) => {
                        tracing::info!(code = answer.line.code.into_u16(), "PRACK answered");
                    }
                    Err(e) => tracing::info!(error = %e, "PRACK not answered"),
                }
            });
        }
        Err(e) => tracing::warn!(error = %e, "cannot send PRACK"),
    }
}
