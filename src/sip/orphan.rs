//! Ending a dialog this process did not set up: the state an established
//! dialog needs for a BYE ([`DialogState`], stored by the call layer when
//! the call is answered) and the BYE built from it
//! ([`SipStack::bye_from_state`]), so that a surviving node (or the node
//! itself after a restart) ends a carrier leg whose node died.
//!
//! The BYE follows RFC 3261 §12.2.1.1: Request-URI the remote target, the
//! route set as Route headers (loose routing, §16.12), From with our tag,
//! To with theirs, the dialog's Call-ID, CSeq one above the last we used.
//! It goes out through the first hop (the first route, or the remote
//! target; the address the dialog last used when known) as one non-INVITE
//! client transaction (§17.1.2), from this node's own socket: carriers
//! match in-dialog requests on Call-ID and tags, not on the source.
//!
//! Must not: decide which calls are orphans or write the store.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;

use ezk_sip_core::Request;
use ezk_sip_core::transport::TargetTransportInfo;
use ezk_sip_types::host::HostPort;
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

impl SipStack {
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

    #[test]
    fn the_state_round_trips_through_json() {
        let s = state();
        let text = serde_json::to_string(&s).unwrap();
        assert_eq!(serde_json::from_str::<DialogState>(&text).unwrap(), s);
    }
}
