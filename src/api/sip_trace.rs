//! `GET /v1/calls/{id}/sip-trace`: the SIP messages of a call, as text or
//! as a pcap file for Wireshark, tshark and sngrep (see [`crate::trace`]).
//!
//! Must not: keep or change anything; traces live in the trace store of the
//! node that carried the call, in memory, for `[sip] trace_retain_seconds`.

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use super::error::{ApiError, ErrorResponses};
use crate::ids;
use crate::trace::sip::{render_pcap, render_text, traces};

const PCAP: &str = "application/vnd.tcpdump.pcap";

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(get_sip_trace))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct TraceQuery {
    /// `text` (the default) or `pcap`; wins over `Accept`.
    pub format: Option<String>,
}

/// Get a call's SIP trace.
///
/// Every SIP message of the call, both directions, with timestamps and
/// transport addresses. `Accept: application/vnd.tcpdump.pcap` or
/// `?format=pcap` returns a pcap file (raw IP, synthetic UDP headers from
/// the real addresses); otherwise `text/plain`. 404 when tracing is off
/// (`[sip] trace`), the trace has expired or the call ran on another node.
#[utoipa::path(get, path = "/v1/calls/{id}/sip-trace", tag = "calls",
    params(("id" = String, Path), TraceQuery),
    responses(
        (status = 200, description = "The trace", content(
            (String = "text/plain"),
            (Vec<u8> = "application/vnd.tcpdump.pcap"))),
        ErrorResponses))]
async fn get_sip_trace(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(query): Query<TraceQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let pcap = match query.format.as_deref() {
        Some("pcap") => true,
        Some("text") => false,
        Some(_) => return Err(ApiError::field("format", "must be text or pcap")),
        None => headers
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.contains(PCAP)),
    };
    let call = super::find(&id, ids::CALL, "call", state.store.get_call(&id)).await?;
    let (messages, dropped) = call
        .sip_call_id
        .as_deref()
        .and_then(|sip| traces().and_then(|t| t.get(sip)))
        .ok_or_else(|| ApiError::not_found("SIP trace"))?;
    let (body, kind) = if pcap {
        (render_pcap(&messages), PCAP)
    } else {
        (
            render_text(&messages, dropped).into_bytes(),
            "text/plain; charset=utf-8",
        )
    };
    let mut response = (StatusCode::OK, body).into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(kind));
    if pcap {
        // The file name is built from our id only, which is checked above.
        if let Ok(value) =
            HeaderValue::from_str(&format!("attachment; filename=\"{}.pcap\"", call.id))
        {
            response
                .headers_mut()
                .insert(header::CONTENT_DISPOSITION, value);
        }
    }
    Ok(response)
}
