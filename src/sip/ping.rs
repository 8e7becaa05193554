//! Out-of-dialog OPTIONS to a peer (RFC 3261 §11), the probe carriers and
//! proxies use to tell a live peer from a dead one (FreeSWITCH's gateway
//! `ping`, Kamailio's dispatcher probing). One probe is one non-INVITE
//! client transaction on the core, so UDP retransmits it on Timer E
//! (§17.1.2.2): a probe that gets no answer lost several packets in a row.
//!
//! Must not: decide what an answer means for a trunk or keep any state
//! between probes; `call::trunk_pings` does that.

use super::base::{SipError, Transport};
use super::transport::SipStack;
use super::{peer_uri, random_token};
use ezk_sip_core::Request;
use ezk_sip_core::transport::TargetTransportInfo;
use ezk_sip_types::header::typed::{CSeq, CallID, FromTo, MaxForwards};
use ezk_sip_types::host::HostPort;
use ezk_sip_types::uri::{NameAddr, SipUri};
use ezk_sip_types::{Method, Name};
use std::time::Duration;
use tokio::time::Instant;

/// What one OPTIONS got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    /// A final response, and the time from sending to it.
    Answered { status: u16, rtt: Duration },
    /// No final response in time, or it could not be sent.
    NoAnswer { reason: String },
}

impl SipStack {
    /// Sends one OPTIONS to `target` (`host[:port]`, optionally `sip:`
    /// prefixed and with `;transport=tcp`) and waits up to `timeout` for
    /// the final response. Each probe has its own Call-ID and tags, as an
    /// out-of-dialog request (§8.1.1).
    pub async fn probe(&self, target: &str, timeout: Duration) -> Result<Probe, SipError> {
        let uri = peer_uri("OPTIONS target", target)?;
        // Via and From name the address of the transport the probe goes
        // over: our TLS port for a TLS peer (RFC 3261 §18.1.1), not the
        // UDP one it cannot answer on.
        let local = self.local.address_for(Transport::of_uri(&uri));
        let mut transport = TargetTransportInfo {
            via_host_port: Some(HostPort::from(local)),
            transport: None,
        };
        match self.endpoint.select_transport(&uri).await {
            Ok(selected) => transport.transport = Some(selected),
            Err(e) => {
                return Ok(Probe::NoAnswer {
                    reason: format!("no route to {target}: {e}"),
                });
            }
        }
        let mut from = SipUri::new(HostPort::from(local));
        from.set_user("agentline".to_owned().into());
        let mut request = Request::new(Method::OPTIONS, uri.clone());
        let headers = &mut request.headers;
        headers.insert_named(&MaxForwards(70));
        headers.insert_type(
            Name::FROM,
            &FromTo::new(NameAddr::uri(from), Some(random_token().into())),
        );
        headers.insert_type(Name::TO, &FromTo::new(NameAddr::uri(uri), None));
        headers.insert_named(&CallID::new(random_token()));
        headers.insert_named(&CSeq::new(1, Method::OPTIONS));
        // §11.1: say what body we would understand in the answer.
        headers.insert(Name::ACCEPT, "application/sdp");
        let sent = Instant::now();
        let mut tsx = match self.endpoint.send_request(request, &mut transport).await {
            Ok(tsx) => tsx,
            Err(e) => {
                return Ok(Probe::NoAnswer {
                    reason: format!("cannot send OPTIONS: {e}"),
                });
            }
        };
        Ok(
            match tokio::time::timeout(timeout, tsx.receive_final()).await {
                Ok(Ok(response)) => Probe::Answered {
                    status: response.line.code.into_u16(),
                    rtt: sent.elapsed(),
                },
                Ok(Err(e)) => Probe::NoAnswer {
                    reason: format!("OPTIONS failed: {e}"),
                },
                Err(_) => Probe::NoAnswer {
                    reason: format!("no answer within {} ms", timeout.as_millis()),
                },
            },
        )
    }
}
