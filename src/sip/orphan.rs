//! Ending a dialog this process did not set up: the state an established
//! dialog needs for a BYE ([`DialogState`], stored by the call layer when
//! the call is answered) and the BYE built from it
//! ([`SipStack::bye_from_state`]), so that a surviving node (or the node
//! itself after a restart) ends a carrier leg whose node died. Likewise
//! for an outbound INVITE still without a final response: what its CANCEL
//! needs ([`CancelState`], stored when the INVITE is sent) and the CANCEL
//! ([`SipStack::cancel_from_state`]).
//!
//! The BYE follows RFC 3261 §12.2.1.1: Request-URI the remote target, the
//! route set as Route headers (loose routing, §16.12), From with our tag,
//! To with theirs, the dialog's Call-ID, CSeq one above the last we used.
//! It goes out through the first hop (the first route, or the remote
//! target; the address the dialog last used when known) as one non-INVITE
//! client transaction (§17.1.2), from this node's own socket: carriers
//! match in-dialog requests on Call-ID and tags, not on the source.
//!
//! The CANCEL follows RFC 3261 §9.1: the INVITE's Request-URI, Call-ID,
//! From, To (no tag: none was sent), CSeq number with method CANCEL, Route
//! headers, and its one Via unchanged, branch and sent-by included: that is
//! how the carrier matches the CANCEL to the INVITE's server transaction
//! (§9.2, §17.2.3). Sent to the address the INVITE went to. Its responses
//! (200 to the CANCEL, 487 to the INVITE) follow that Via to the dead
//! node's address (or, with `rport`, RFC 3581, back to us, where no
//! transaction knows them): so no answer is awaited, and over UDP the
//! CANCEL is retransmitted blindly on timer E's schedule (§17.1.2.2) a few
//! times. The 487 is never ACKed by us (its To tag is unknown); the carrier
//! stops retransmitting it at timer H (§17.2.1). If a 200 crossed the
//! CANCEL, it too goes to the dead node: the carrier's UAS then ends the
//! leg itself with BYE after 64*T1 without an ACK (§13.3.1.4).
//!
//! Must not: decide which calls are orphans or write the store.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use ezk_sip_core::Request;
use ezk_sip_core::transaction::consts::T1;
use ezk_sip_core::transport::{OutgoingParts, OutgoingRequest, TargetTransportInfo};
use ezk_sip_types::header::typed::CSeq;
use ezk_sip_types::host::HostPort;
use ezk_sip_types::msg::RequestLine;
use ezk_sip_types::print::{AppendCtx, PrintCtx};
use ezk_sip_types::uri::SipUri;
use ezk_sip_types::{Method, Name};
use ezk_sip_ua::dialog::Dialog;
use serde::{Deserialize, Serialize};
use tracing::Instrument;

use super::base::SipError;
use super::peer_uri;
use super::transport::SipStack;

/// What a BYE for an established dialog needs, as printed header values.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DialogState {
    pub call_id: String,
    /// Our From (address and our tag), as in every request we send.
    pub local: String,
    /// Their To (address and their tag).
    pub remote: String,
    /// The last CSeq we used in the dialog.
    pub cseq: u32,
    /// The remote target: the peer's Contact URI.
    pub remote_target: String,
    /// The route set (Record-Route), in the order of Route headers.
    pub route_set: Vec<String>,
    /// Where the dialog last sent, when known: `udp` or `tcp`, and the
    /// address.
    pub transport: Option<String>,
    pub target: Option<SocketAddr>,
}

impl DialogState {
    /// The state of `dialog` now.
    pub(crate) fn of(dialog: &Dialog) -> Self {
        let ctx = PrintCtx::default();
        let (transport, target) = match dialog.target_tp_info.try_lock() {
            Ok(info) => match &info.transport {
                Some((tp, addr)) => (
                    Some(if tp.is_udp() { "udp" } else { "tcp" }.to_owned()),
                    Some(*addr),
                ),
                None => (None, None),
            },
            Err(_) => (None, None),
        };
        Self {
            call_id: dialog.call_id.0.to_string(),
            local: dialog.local_fromto.print_ctx(ctx).to_string(),
            remote: dialog.peer_fromto.print_ctx(ctx).to_string(),
            cseq: dialog.local_cseq.load(Ordering::Relaxed),
            remote_target: dialog.peer_contact.uri.uri.print_ctx(ctx).to_string(),
            route_set: dialog
                .route_set
                .iter()
                .map(|r| r.print_ctx(ctx).to_string())
                .collect(),
            transport,
            target,
        }
    }

    /// The URI the BYE is sent towards: the address last used, else the
    /// first route, else the remote target.
    fn first_hop(&self) -> Result<SipUri, SipError> {
        if let Some(addr) = self.target {
            let transport = self.transport.as_deref().unwrap_or("udp");
            return peer_uri("BYE target", &format!("sip:{addr};transport={transport}"));
        }
        match self.route_set.first() {
            Some(route) => {
                let inner = route
                    .split_once('<')
                    .and_then(|(_, rest)| rest.split_once('>'))
                    .map_or(route.as_str(), |(uri, _)| uri);
                peer_uri("BYE route", inner)
            }
            None => peer_uri("BYE remote target", &self.remote_target),
        }
    }
}

/// Header values from the store go back into a request: nothing that
/// could end a header line may be in them.
fn header_safe(value: &str) -> Result<&str, SipError> {
    if value.is_empty() || value.len() > 1024 || value.chars().any(|c| c.is_control()) {
        return Err(SipError::Invalid {
            what: "stored dialog header",
            value: value.chars().take(64).collect(),
        });
    }
    Ok(value)
}

/// What a CANCEL of an INVITE in flight needs (RFC 3261 §9.1), as printed
/// header values, and where the INVITE went.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CancelState {
    pub request_uri: String,
    /// The INVITE's one Via, branch included.
    pub via: String,
    pub from: String,
    pub to: String,
    pub call_id: String,
    /// The INVITE's CSeq number.
    pub cseq: u32,
    /// The INVITE's Route headers, in order.
    pub route_set: Vec<String>,
    /// `udp` or `tcp`, and the address the INVITE was sent to.
    pub transport: String,
    pub target: SocketAddr,
}

/// Blind sends of a CANCEL over UDP: at 0, T1, 3*T1 and 7*T1 (timer E
/// doubling from T1, §17.1.2.2), 3.5 s in all; over TCP one.
const CANCEL_SENDS: u32 = 4;

impl CancelState {
    /// The state of the INVITE `invite` as it was sent.
    pub(crate) fn of(invite: &OutgoingRequest) -> Result<Self, SipError> {
        Self::from_parts(
            &invite.msg,
            invite.parts.transport.is_udp(),
            invite.parts.destination,
        )
    }

    fn from_parts(invite: &Request, udp: bool, target: SocketAddr) -> Result<Self, SipError> {
        let headers = &invite.headers;
        let one = |name: &Name, what: &'static str| {
            headers
                .get_raw(name)
                .next()
                .map(ToString::to_string)
                .ok_or(SipError::Invalid {
                    what,
                    value: "missing".to_owned(),
                })
        };
        let cseq: CSeq = headers.get_named()?;
        Ok(Self {
            request_uri: invite.line.uri.print_ctx(PrintCtx::default()).to_string(),
            via: one(&Name::VIA, "INVITE Via")?,
            from: one(&Name::FROM, "INVITE From")?,
            to: one(&Name::TO, "INVITE To")?,
            call_id: one(&Name::CALL_ID, "INVITE Call-ID")?,
            cseq: cseq.cseq,
            route_set: headers
                .get_raw(&Name::ROUTE)
                .map(ToString::to_string)
                .collect(),
            transport: if udp { "udp" } else { "tcp" }.to_owned(),
            target,
        })
    }

    /// The CANCEL (§9.1); every stored value is checked first, since it
    /// comes back from the store.
    pub(crate) fn request(&self) -> Result<Request, SipError> {
        let uri = peer_uri("CANCEL request URI", header_safe(&self.request_uri)?)?;
        let via = header_safe(&self.via)?;
        if !via.contains(";branch=z9hG4bK") {
            // Only an RFC 3261 branch identifies the transaction (§8.1.1.7).
            return Err(SipError::Invalid {
                what: "stored Via",
                value: via.chars().take(64).collect(),
            });
        }
        let mut headers = ezk_sip_types::Headers::with_capacity(7);
        headers.insert(Name::VIA, via.to_owned());
        headers.insert(Name::MAX_FORWARDS, "70");
        headers.insert(Name::FROM, header_safe(&self.from)?.to_owned());
        headers.insert(Name::TO, header_safe(&self.to)?.to_owned());
        headers.insert(Name::CALL_ID, header_safe(&self.call_id)?.to_owned());
        headers.insert(Name::CSEQ, format!("{} CANCEL", self.cseq));
        for route in &self.route_set {
            headers.insert(Name::ROUTE, header_safe(route)?.to_owned());
        }
        Ok(Request {
            line: RequestLine {
                method: Method::CANCEL,
                uri,
            },
            headers,
            body: Bytes::new(),
        })
    }
}

impl SipStack {
    /// Sends the CANCEL of the INVITE `state` describes, from this node,
    /// to where the INVITE went; over UDP it is retransmitted in the
    /// background (see the module header: no answer comes back here).
    pub async fn cancel_from_state(&self, state: &CancelState) -> Result<(), SipError> {
        let msg = state.request()?;
        let transport = match state.transport.as_str() {
            "tcp" => "tcp",
            _ => "udp",
        };
        let hop = peer_uri(
            "CANCEL target",
            &format!("sip:{};transport={transport}", state.target),
        )?;
        let (tp, _) =
            self.endpoint
                .select_transport(&hop)
                .await
                .map_err(|e| SipError::Invalid {
                    what: "CANCEL target",
                    value: e.to_string(),
                })?;
        let reliable = !tp.is_udp();
        let mut request = OutgoingRequest {
            msg,
            parts: OutgoingParts {
                transport: tp,
                destination: state.target,
                buffer: Bytes::new(),
            },
        };
        self.endpoint
            .send_outgoing_request(&mut request)
            .await
            .map_err(|e| SipError::Transaction(format!("CANCEL not sent: {e}")))?;
        if !reliable {
            let endpoint = self.endpoint.clone();
            let span = tracing::info_span!("sip_orphan_cancel", call_id = %state.call_id);
            tokio::spawn(
                async move {
                    let mut interval = T1;
                    for _ in 1..CANCEL_SENDS {
                        tokio::time::sleep(interval).await;
                        interval *= 2;
                        if let Err(e) = endpoint.send_outgoing_request(&mut request).await {
                            tracing::debug!(error = %e, "CANCEL retransmission failed");
                            return;
                        }
                    }
                }
                .instrument(span),
            );
        }
        Ok(())
    }

    /// Sends BYE in the dialog `state` describes and waits up to `wait` for
    /// the final response; its status code.
    pub async fn bye_from_state(
        &self,
        state: &DialogState,
        wait: Duration,
    ) -> Result<u16, SipError> {
        let uri = peer_uri("BYE remote target", &state.remote_target)?;
        let hop = state.first_hop()?;
        let mut request = Request::new(Method::BYE, uri);
        let headers = &mut request.headers;
        headers.insert(Name::FROM, header_safe(&state.local)?.to_owned());
        headers.insert(Name::TO, header_safe(&state.remote)?.to_owned());
        headers.insert(Name::CALL_ID, header_safe(&state.call_id)?.to_owned());
        headers.insert(Name::CSEQ, format!("{} BYE", state.cseq.wrapping_add(1)));
        headers.insert(Name::MAX_FORWARDS, "70");
        for route in &state.route_set {
            headers.insert(Name::ROUTE, header_safe(route)?.to_owned());
        }
        let mut transport = TargetTransportInfo {
            via_host_port: Some(HostPort::from(self.local.public)),
            transport: None,
        };
        let selected =
            self.endpoint
                .select_transport(&hop)
                .await
                .map_err(|e| SipError::Invalid {
                    what: "BYE first hop",
                    value: e.to_string(),
                })?;
        transport.transport = Some(selected);
        let span = tracing::info_span!("sip_orphan_bye", call_id = %state.call_id);
        async move {
            let mut tsx = self.endpoint.send_request(request, &mut transport).await?;
            match tokio::time::timeout(wait, tsx.receive_final()).await {
                Ok(Ok(response)) => Ok(response.line.code.into_u16()),
                Ok(Err(e)) => Err(e.into()),
                Err(_) => Err(SipError::Transaction(format!(
                    "no answer to BYE within {} ms",
                    wait.as_millis()
                ))),
            }
        }
        .instrument(span)
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> DialogState {
        DialogState {
            call_id: "abc@host".into(),
            local: "<sip:agentline@10.0.0.11>;tag=ours".into(),
            remote: "<sip:+14155550100@carrier>;tag=theirs".into(),
            cseq: 7,
            remote_target: "sip:callee@203.0.113.5:5070".into(),
            route_set: vec!["<sip:10.0.0.10;lr>".into()],
            transport: None,
            target: None,
        }
    }

    fn hop(s: &DialogState) -> String {
        s.first_hop()
            .unwrap()
            .print_ctx(PrintCtx::default())
            .to_string()
    }

    #[test]
    fn the_bye_goes_to_the_first_route_else_the_remote_target() {
        let s = state();
        assert_eq!(hop(&s), "sip:10.0.0.10;lr");
        let direct = DialogState {
            route_set: Vec::new(),
            ..state()
        };
        assert_eq!(hop(&direct), "sip:callee@203.0.113.5:5070");
        let known = DialogState {
            transport: Some("tcp".into()),
            target: Some("198.51.100.7:5060".parse().unwrap()),
            ..state()
        };
        assert_eq!(hop(&known), "sip:198.51.100.7:5060;transport=tcp");
    }

    #[test]
    fn stored_headers_cannot_break_out_of_their_line() {
        assert!(header_safe("<sip:a@b>;tag=1").is_ok());
        for bad in ["", "x\r\nVia: evil", "x\nBYE", &"a".repeat(2000)] {
            assert!(header_safe(bad).is_err(), "{bad:?}");
        }
    }

    fn cancel_state() -> CancelState {
        CancelState {
            request_uri: "sip:+14155557000@203.0.113.5:5060".into(),
            via: "SIP/2.0/UDP 10.0.0.11:5060;branch=z9hG4bKabc;rport".into(),
            from: "<sip:+14155550100@10.0.0.11>;tag=ours".into(),
            to: "<sip:+14155557000@203.0.113.5:5060>".into(),
            call_id: "call-1@10.0.0.11".into(),
            cseq: 2,
            route_set: vec!["<sip:10.0.0.10;lr>".into()],
            transport: "udp".into(),
            target: "203.0.113.5:5060".parse().unwrap(),
        }
    }

    #[test]
    fn the_cancel_matches_the_invite_it_ends() {
        let state = cancel_state();
        let text = serde_json::to_string(&state).unwrap();
        let back: CancelState = serde_json::from_str(&text).unwrap();
        assert_eq!(back, state);
        // A stored established dialog is not taken for an INVITE in flight.
        assert!(
            serde_json::from_str::<CancelState>(
                &serde_json::to_string(&state_of_dialog()).unwrap()
            )
            .is_err()
        );
        let cancel = back.request().unwrap();
        let ctx = PrintCtx::default();
        assert_eq!(cancel.line.method, Method::CANCEL);
        assert_eq!(
            cancel.line.uri.print_ctx(ctx).to_string(),
            "sip:+14155557000@203.0.113.5:5060"
        );
        let raw = |name: &Name| -> Vec<String> {
            cancel
                .headers
                .get_raw(name)
                .map(ToString::to_string)
                .collect()
        };
        assert_eq!(
            raw(&Name::VIA),
            vec![state.via.clone()],
            "the INVITE's one Via, same branch"
        );
        assert_eq!(raw(&Name::CSEQ), vec!["2 CANCEL".to_owned()]);
        assert_eq!(raw(&Name::FROM), vec![state.from.clone()]);
        assert_eq!(raw(&Name::TO), vec![state.to.clone()]);
        assert_eq!(raw(&Name::CALL_ID), vec![state.call_id.clone()]);
        assert_eq!(raw(&Name::ROUTE), state.route_set);
        assert!(cancel.body.is_empty());
    }

    #[test]
    fn the_cancel_state_is_read_from_the_invite_as_sent() {
        let mut invite = Request::new(
            Method::INVITE,
            "sip:+14155557000@203.0.113.5:5060"
                .parse::<SipUri>()
                .unwrap(),
        );
        let h = &mut invite.headers;
        h.insert(Name::VIA, "SIP/2.0/UDP 10.0.0.11:5060;branch=z9hG4bKxyz");
        h.insert(Name::FROM, "<sip:a@10.0.0.11>;tag=1");
        h.insert(Name::TO, "<sip:+14155557000@203.0.113.5:5060>");
        h.insert(Name::CALL_ID, "c1");
        h.insert(Name::CSEQ, "3 INVITE");
        h.insert(Name::ROUTE, "<sip:10.0.0.10;lr>");
        let target = "203.0.113.5:5060".parse().unwrap();
        let state = CancelState::from_parts(&invite, true, target).unwrap();
        assert_eq!(
            state,
            CancelState {
                request_uri: "sip:+14155557000@203.0.113.5:5060".into(),
                via: "SIP/2.0/UDP 10.0.0.11:5060;branch=z9hG4bKxyz".into(),
                from: "<sip:a@10.0.0.11>;tag=1".into(),
                to: "<sip:+14155557000@203.0.113.5:5060>".into(),
                call_id: "c1".into(),
                cseq: 3,
                route_set: vec!["<sip:10.0.0.10;lr>".into()],
                transport: "udp".into(),
                target,
            }
        );
        invite.headers.remove(&Name::VIA);
        assert!(CancelState::from_parts(&invite, true, target).is_err());
    }

    #[test]
    fn a_hostile_cancel_state_is_refused() {
        for bad in [
            CancelState {
                via: "SIP/2.0/UDP x;branch=z9hG4bK1\r\nBYE sip:x SIP/2.0".into(),
                ..cancel_state()
            },
            CancelState {
                via: "SIP/2.0/UDP x;branch=old".into(),
                ..cancel_state()
            },
            CancelState {
                to: "x\r\nContact: evil".into(),
                ..cancel_state()
            },
            CancelState {
                request_uri: "not a uri <>".into(),
                ..cancel_state()
            },
            CancelState {
                route_set: vec![String::new()],
                ..cancel_state()
            },
        ] {
            assert!(bad.request().is_err(), "{bad:?}");
        }
    }

    fn state_of_dialog() -> DialogState {
        state()
    }

    #[test]
    fn the_state_round_trips_through_json() {
        let s = state();
        let text = serde_json::to_string(&s).unwrap();
        assert_eq!(serde_json::from_str::<DialogState>(&text).unwrap(), s);
    }
}
