//! The first layer every request passes once the edge ([`super::edge`])
//! admitted it: OPTIONS keepalive, and the RFC 3261 §8.2 checks a UAS makes
//! before it acts on a request.
//!
//! Must not decide who may talk to us: by the time a request gets here the
//! edge has classified its source, applied the flood limits and dropped
//! strangers, before ezk parsed it or made a transaction.

use super::base::{is_sdp, respond};
use super::finished::Finished;
use super::tcp::TcpPeers;
use crate::metrics::{SIP_REQUESTS_REJECTED_TOTAL, SIP_REQUESTS_TOTAL};
use ezk_sip_core::{Endpoint, IncomingRequest, Layer, MayTake};
use ezk_sip_types::header::typed::{Accept, ContentType, Require, Unsupported};
use ezk_sip_types::{Headers, Method, Name, StatusCode};
use std::sync::Arc;

/// Option tags we accept in Require (RFC 3261 §8.2.2.3): session timers
/// (RFC 4028, `timers`), reliable provisional responses (RFC 3262,
/// `prack`) and Replaces (RFC 3891, `call::replace`).
const SUPPORTED_EXTENSIONS: &[&str] = &["timer", "100rel", "replaces"];

pub(crate) struct GuardLayer {
    /// On the endpoint behind the TCP relay: who is really at the other
    /// end of each relayed connection.
    peers: Option<Arc<TcpPeers>>,
    /// Final responses kept for retransmissions, and the established
    /// dialogs whose BYE we answer here (see `finished`).
    finished: Arc<Finished>,
}

impl GuardLayer {
    pub(crate) fn new(peers: Option<Arc<TcpPeers>>, finished: Arc<Finished>) -> Self {
        Self { peers, finished }
    }
}

#[async_trait::async_trait]
impl Layer for GuardLayer {
    fn name(&self) -> &'static str {
        "agentline-guard"
    }

    fn init(&mut self, endpoint: &mut ezk_sip_core::EndpointBuilder) {
        endpoint.add_allow(Method::OPTIONS);
        endpoint.add_allow(Method::INFO);
        endpoint.add_accept(Accept("application/sdp".into()));
    }

    async fn receive(&self, endpoint: &Endpoint, mut request: MayTake<'_, IncomingRequest>) {
        if let Some(peers) = &self.peers {
            restore_peer(peers, &mut request);
        }
        let method = request.line.method.clone();
        metrics::counter!(SIP_REQUESTS_TOTAL, "method" => method_label(&method)).increment(1);

        let in_dialog = request.base_headers.to.tag.is_some();
        if method == Method::ACK {
            return;
        }
        // RFC 3261 §17.2.2: a retransmission of a request we answered
        // without a transaction gets the same answer again.
        if method != Method::INVITE && self.finished.resend(&request).await {
            drop(request.take());
            return;
        }

        // RFC 4475 §3.1.2: a request the grammar rejects is never acted on.
        if let Err(reason) = super::lint::check(&request.tp_info.buffer) {
            reject_metric("bad_request");
            respond(
                endpoint,
                request.take(),
                StatusCode::BAD_REQUEST,
                Some(reason),
                Headers::new(),
            )
            .await;
            return;
        }

        // The peer's BYE of an established call: 200 without a server
        // transaction (RFC 3261 §15.1.2; `finished` keeps what Timer J
        // needs).
        if method == Method::BYE && in_dialog && self.finished.hang_up(&request) {
            let response = endpoint.create_response(&request, StatusCode::OK, None);
            self.finished
                .answer(endpoint, request.take(), response)
                .await;
            return;
        }

        // Inside a dialog the dialog layer must see every request to keep
        // the peer's CSeq in step, so only new requests are vetted here.
        if let Some((code, reason, headers)) = (!in_dialog).then(|| check(&request)).flatten() {
            let call_id = request.base_headers.call_id.0.to_string();
            tracing::info!(%call_id, %method, code = code.into_u16(), reason, "rejecting request");
            respond(endpoint, request.take(), code, Some(reason), headers).await;
            return;
        }

        // RFC 3261 §11.2: OPTIONS is answered as an INVITE would be, without
        // ringing. Carriers send it as keepalive. Inside a dialog the dialog
        // layer must see it (it tracks the peer's CSeq, and would hold back
        // later requests forever), so the call's usage answers those.
        if method == Method::OPTIONS && !in_dialog {
            let mut headers = Headers::new();
            headers.insert_named(endpoint.allowed());
            headers.insert_named(&Accept("application/sdp".into()));
            headers.insert(Name::SUPPORTED, SUPPORTED_EXTENSIONS.join(", "));
            respond(endpoint, request.take(), StatusCode::OK, None, headers).await;
        }
    }
}

/// Puts the real peer of a relayed TCP connection back where ezk wrote
/// the relay's loopback address: the source, and Via `received`/`rport`
/// (RFC 3261 §18.2.1, RFC 3581 §4).
fn restore_peer(peers: &TcpPeers, request: &mut IncomingRequest) {
    let Some(relay) = request.tp_info.transport.connection_remote() else {
        return;
    };
    let Some(peer) = peers.peer_of(relay) else {
        return;
    };
    request.tp_info.source = peer;
    if let Some(via) = request.base_headers.via.first_mut() {
        via.params.push_or_edit("received", peer.ip().to_string());
        if let Some(rport) = via.params.get_mut("rport") {
            rport.value = Some(peer.port().to_string().into());
        }
    }
}

/// A bounded label: methods we know by name, everything else `other` (a
/// peer must not be able to create metric series at will).
fn method_label(method: &Method) -> &'static str {
    const KNOWN: &[(Method, &str)] = &[
        (Method::INVITE, "INVITE"),
        (Method::ACK, "ACK"),
        (Method::BYE, "BYE"),
        (Method::CANCEL, "CANCEL"),
        (Method::OPTIONS, "OPTIONS"),
        (Method::REGISTER, "REGISTER"),
        (Method::INFO, "INFO"),
        (Method::UPDATE, "UPDATE"),
        (Method::PRACK, "PRACK"),
        (Method::NOTIFY, "NOTIFY"),
        (Method::SUBSCRIBE, "SUBSCRIBE"),
        (Method::REFER, "REFER"),
        (Method::MESSAGE, "MESSAGE"),
    ];
    KNOWN
        .iter()
        .find(|(known, _)| known == method)
        .map_or("other", |(_, label)| label)
}

fn reject_metric(reason: &'static str) {
    metrics::counter!(SIP_REQUESTS_REJECTED_TOTAL, "reason" => reason).increment(1);
}

/// The checks of RFC 3261 §8.2 that ezk's parser leaves to us. Returns the
/// error response to send, if any.
fn check(request: &IncomingRequest) -> Option<(StatusCode, &'static str, Headers)> {
    let method = &request.line.method;

    // §8.1.1.5: the CSeq method must match the request method.
    if &request.base_headers.cseq.method != method {
        reject_metric("bad_request");
        return Some((
            StatusCode::BAD_REQUEST,
            "CSeq method does not match request method",
            Headers::new(),
        ));
    }

    // §20.14: one Content-Length (RFC 4475 §3.3.9 `mcl01`).
    if request.headers.get_raw(&Name::CONTENT_LENGTH).count() > 1 {
        reject_metric("bad_request");
        return Some((
            StatusCode::BAD_REQUEST,
            "Multiple Content-Length values",
            Headers::new(),
        ));
    }

    // §20.14: a Content-Length that is not a number (RFC 4475 §3.1.2.3
    // `ncl`); ezk would take the datagram's length instead.
    if let Some(Err(_)) = request
        .headers
        .try_get_named::<ezk_sip_types::header::typed::ContentLength>()
    {
        reject_metric("bad_request");
        return Some((
            StatusCode::BAD_REQUEST,
            "Bad Content-Length",
            Headers::new(),
        ));
    }

    // A header we depend on that is present but does not parse.
    if let Some(Err(_)) = request
        .headers
        .try_get_named::<ezk_sip_types::header::typed::MaxForwards>()
    {
        reject_metric("bad_request");
        return Some((StatusCode::BAD_REQUEST, "Bad Max-Forwards", Headers::new()));
    }

    // §8.2.2.3: unknown option tags in Require get 420 with Unsupported.
    if *method != Method::CANCEL {
        match request.headers.try_get_named::<Vec<Require>>() {
            Some(Ok(required)) => {
                let unsupported: Vec<Unsupported> = required
                    .into_iter()
                    .filter(|tag| !SUPPORTED_EXTENSIONS.contains(&tag.0.as_str()))
                    .map(|tag| Unsupported(tag.0))
                    .collect();
                if !unsupported.is_empty() {
                    reject_metric("bad_extension");
                    let mut headers = Headers::new();
                    headers.insert_named(&unsupported);
                    return Some((StatusCode::BAD_EXTENSION, "Bad Extension", headers));
                }
            }
            Some(Err(_)) => {
                reject_metric("bad_request");
                return Some((StatusCode::BAD_REQUEST, "Bad Require", Headers::new()));
            }
            None => {}
        }
    }

    if *method == Method::INVITE {
        // §8.2.3: we only understand SDP bodies.
        if !request.body.is_empty() {
            match request.headers.try_get_named::<ContentType>() {
                Some(Ok(ct)) if is_sdp(&ct) => {}
                Some(Err(_)) => {
                    reject_metric("bad_request");
                    return Some((StatusCode::BAD_REQUEST, "Bad Content-Type", Headers::new()));
                }
                _ => {
                    reject_metric("unsupported_media_type");
                    let mut headers = Headers::new();
                    headers.insert_named(&Accept("application/sdp".into()));
                    return Some((
                        StatusCode::UNSUPPORTED_MEDIA_TYPE,
                        "Unsupported Media Type",
                        headers,
                    ));
                }
            }
        }
        // §8.1.1.8 / §12.1.2: an INVITE creating a dialog needs a Contact
        // and a From tag.
        if request.base_headers.to.tag.is_none() {
            if request.base_headers.from.tag.is_none() {
                reject_metric("bad_request");
                return Some((StatusCode::BAD_REQUEST, "Missing From tag", Headers::new()));
            }
            if !matches!(
                request
                    .headers
                    .try_get_named::<ezk_sip_types::header::typed::Contact>(),
                Some(Ok(_))
            ) {
                reject_metric("bad_request");
                return Some((
                    StatusCode::BAD_REQUEST,
                    "Missing or bad Contact",
                    Headers::new(),
                ));
            }
        }
    }
    None
}
