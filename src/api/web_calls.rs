//! `POST /v1/web-calls`: a web page starts a browser call to an agent with
//! a publishable key (`al_pk_...`), and CORS for exactly that route.
//!
//! Checks, in order, each before anything costlier: the client address's
//! rate (`[webrtc] requests_per_address_per_minute`, counted as the API's
//! per-key limit is, `rate_limit`), the key (prefix lookup, hash compared
//! in constant time, not revoked), the `Origin` against the key's list,
//! the key's own rate, then the body (the agent must be one the key
//! lists), then the concurrent web calls of the key and of the store. The
//! answer carries a single-use media token (only its hash is stored),
//! valid `[webrtc] token_ttl_seconds`, the call id, the agent's name and
//! the ICE servers.
//!
//! CORS (Fetch standard §3.2): a preflight (`OPTIONS`) is answered for an
//! origin some unrevoked key lists (the preflight carries no key), and
//! every answer after the origin check carries
//! `Access-Control-Allow-Origin` with that origin. No other route of the
//! daemon answers CORS: a page on another origin cannot read any of them.
//!
//! Must not: accept an API key here (a publishable key is the only
//! credential), or let an API route accept a publishable key.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use axum::Json;
use axum::extract::{ConnectInfo, FromRequest, Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use rand::Rng;
use rand::distr::Alphanumeric;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use super::error::{ApiError, ErrorResponses, FieldError};
use super::extract::ApiJson;
use super::publishable_keys::{key_prefix, normalize_origin};
use crate::call::web::{WebCallError, WebCallRequest, WebLimits};
use crate::secrets;
use crate::store::web_calls::PublishableKeyRecord;
use crate::store::web_calls::Redeemed;
use crate::webrtc::IceServer;
use crate::webrtc::peer::TrickleError;

/// Longest `caller_name` kept, in characters.
const MAX_CALLER_NAME: usize = 100;
/// Largest `metadata`, as JSON text.
const MAX_METADATA_BYTES: usize = 4096;
/// Length of a media token's random part.
const TOKEN_LEN: usize = 40;
/// The largest SDP offer read (a browser's audio and data channel offer is
/// a few KiB).
const MAX_OFFER_BYTES: usize = 32 * 1024;
/// How long a browser may cache a preflight's answer (Fetch §3.2.3).
const PREFLIGHT_MAX_AGE: &str = "600";

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_web_call))
        .route("/v1/web-calls", axum::routing::options(preflight))
        .routes(routes!(whip_offer))
        .route(
            "/v1/web-calls/{id}/whip",
            axum::routing::options(media_preflight),
        )
        .routes(routes!(whip_delete, whip_trickle))
        .route(
            "/v1/web-calls/{id}/session",
            axum::routing::options(media_preflight),
        )
        // The widget and the demo page: static, no key, not API routes.
        .route("/widget.js", axum::routing::get(widget_js))
        .route("/web-call", axum::routing::get(demo_page))
}

/// The embeddable widget (`src/webrtc/widget.js`, shipped in the binary).
async fn widget_js() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=300"),
        ],
        include_str!("../webrtc/widget.js"),
    )
        .into_response()
}

/// A plain page to try an agent with a publishable key.
async fn demo_page() -> Response {
    (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        include_str!("../webrtc/web-call.html"),
    )
        .into_response()
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WebCallCreate {
    /// One of the agents the publishable key lists.
    #[schema(example = "agt_01jdw8q1m7k3x9b5n4c2v6t8r0")]
    pub agent_id: String,
    /// Given to the agent as the caller's name (at most 100 characters;
    /// control characters are dropped).
    pub caller_name: Option<String>,
    /// A JSON object stored with the call and in its context (at most
    /// 4 KiB).
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<serde_json::Value>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct WebCallAgent {
    pub id: String,
    pub name: String,
}

/// A web call waiting for the browser's media.
#[derive(Debug, Serialize, ToSchema)]
pub struct WebCallCreated {
    #[schema(example = "call_01jdw8q1m7k3x9b5n4c2v6t8r0")]
    pub call_id: String,
    /// Presented once, as `Authorization: Bearer <token>`, with the SDP
    /// offer to `whip_url`; useless after `expires_at` or once used.
    pub token: String,
    pub expires_at: DateTime<Utc>,
    pub agent: WebCallAgent,
    /// What the browser's `RTCPeerConnection` should use
    /// (`iceServers`).
    pub ice_servers: Vec<IceServer>,
    /// Where to POST the SDP offer (WHIP, RFC 9725 §4.2), relative to the
    /// daemon.
    #[schema(example = "/v1/web-calls/call_01jdw8q1m7k3x9b5n4c2v6t8r0/whip")]
    pub whip_url: String,
}

/// The client address, bucketed as the failed-authentication count does:
/// an IPv6 client by its /64.
fn address_bucket(ip: IpAddr) -> String {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => {
                let s = v6.segments();
                format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
            }
        },
        v4 => v4.to_string(),
    }
}

/// The `Origin` header as a browser sends it, or `None` (absent, `null`,
/// malformed).
pub(super) fn request_origin(headers: &HeaderMap) -> Option<String> {
    let raw = headers.get(header::ORIGIN)?.to_str().ok()?;
    let origin = normalize_origin(raw)?;
    // Only the exact form a browser sends matches: a key lists origins in
    // that form, and a header that needed normalizing is not a browser's.
    (origin == raw).then_some(origin)
}

/// Adds the CORS answer for `origin` (which a key allows).
pub(super) fn allow_origin(response: &mut Response, origin: &str) {
    let headers = response.headers_mut();
    if let Ok(v) = HeaderValue::from_str(origin) {
        headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, v);
    }
    headers.append(header::VARY, HeaderValue::from_static("Origin"));
    headers.insert(
        header::ACCESS_CONTROL_EXPOSE_HEADERS,
        HeaderValue::from_static("Location, Retry-After, X-RateLimit-Remaining"),
    );
}

fn forbidden(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::FORBIDDEN, "forbidden", message)
}

fn publishable_unauthorized() -> ApiError {
    ApiError::new(
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        "a valid publishable key is required (Authorization: Bearer al_pk_...)",
    )
}

/// The unrevoked publishable key the headers present.
async fn authenticate(
    state: &AppState,
    headers: &HeaderMap,
) -> Result<PublishableKeyRecord, ApiError> {
    let key = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, k)| k.trim())
        .ok_or_else(publishable_unauthorized)?;
    let prefix = key_prefix(key).ok_or_else(publishable_unauthorized)?;
    let candidates = state
        .store
        .publishable_key_candidates(prefix)
        .await
        .map_err(ApiError::internal)?;
    candidates
        .into_iter()
        .find(|c| secrets::key_matches(key, &c.secret_hash))
        .map(|c| c.record)
        .ok_or_else(publishable_unauthorized)
}

/// Answers a refused or limited request, with the rate headers.
fn limited(decision: &super::auth::Decision) -> Response {
    ApiError::rate_limited(decision.reset_secs).into_response()
}

/// Start a web call: answers the call id, a single-use media token, the
/// agent's name and the ICE servers. The call is recorded `queued` with
/// direction `web`; it ends `no-answer` if the token is not used in time.
#[utoipa::path(post, path = "/v1/web-calls", tag = "web-calls", request_body = WebCallCreate,
    security(("publishable_key" = [])),
    responses((status = 201, description = "Created", body = WebCallCreated), ErrorResponses))]
async fn create_web_call(State(state): State<AppState>, req: Request) -> Response {
    let ip = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip());
    // The address first: a page hammering the route costs no store read
    // of keys (on PostgreSQL, one counter row).
    if let Some(ip) = ip {
        let per_address = i64::from(state.webrtc.requests_per_address_per_minute.max(1));
        let d = super::rate_limit::decide(
            &state,
            &format!("webcall-addr:{}", address_bucket(ip)),
            Some(per_address),
        )
        .await;
        if !d.allowed {
            return limited(&d);
        }
    }
    let key = match authenticate(&state, req.headers()).await {
        Ok(k) => k,
        Err(e) => return e.into_response(),
    };
    let Some(origin) = request_origin(req.headers()) else {
        return forbidden("an Origin header the publishable key lists is required").into_response();
    };
    if !key.allowed_origins().contains(&origin) {
        // No CORS headers: the page cannot even read this refusal.
        return forbidden("this origin is not allowed for the publishable key").into_response();
    }
    let decision = super::rate_limit::decide(&state, &key.id, key.rate_limit_per_minute).await;
    let mut response = if decision.allowed {
        match start(&state, &key, &origin, req).await {
            Ok(created) => (StatusCode::CREATED, Json(created)).into_response(),
            Err(e) => e.into_response(),
        }
    } else {
        limited(&decision)
    };
    let headers = response.headers_mut();
    headers.insert("x-ratelimit-limit", HeaderValue::from(decision.limit));
    headers.insert(
        "x-ratelimit-remaining",
        HeaderValue::from(decision.remaining),
    );
    headers.insert("x-ratelimit-reset", HeaderValue::from(decision.reset_secs));
    allow_origin(&mut response, &origin);
    response
}

/// The body, the agent, the limits, then the call and its token.
async fn start(
    state: &AppState,
    key: &PublishableKeyRecord,
    origin: &str,
    req: Request,
) -> Result<WebCallCreated, ApiError> {
    let ApiJson(body) = ApiJson::<WebCallCreate>::from_request(req, &()).await?;
    let mut details = Vec::new();
    if !key.agents().contains(&body.agent_id) {
        // 403, not 422: the agent may exist, this key may not call it.
        return Err(forbidden("the publishable key does not list this agent"));
    }
    let caller_name = body.caller_name.as_deref().map(|n| {
        n.chars()
            .filter(|c| !c.is_control())
            .take(MAX_CALLER_NAME)
            .collect::<String>()
            .trim()
            .to_string()
    });
    let metadata = body
        .metadata
        .unwrap_or_else(|| serde_json::Value::Object(Default::default()));
    if !metadata.is_object() {
        details.push(FieldError {
            field: "metadata".into(),
            message: "must be a JSON object".into(),
        });
    } else if metadata.to_string().len() > MAX_METADATA_BYTES {
        details.push(FieldError {
            field: "metadata".into(),
            message: format!("must be at most {MAX_METADATA_BYTES} bytes as JSON"),
        });
    }
    if !details.is_empty() {
        return Err(ApiError::validation(details));
    }
    let per_key = key
        .max_concurrent_calls
        .unwrap_or(i64::from(state.webrtc.max_calls_per_key));
    if state.store.live_web_calls(Some(&key.id)).await? >= per_key {
        return Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_calls",
            format!("the publishable key has {per_key} web calls up, its limit"),
        )
        .retry_after(5));
    }
    if state.store.live_web_calls(None).await? >= i64::from(state.webrtc.max_calls) {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "too_many_calls",
            "the daemon has as many web calls up as it takes",
        )
        .retry_after(5));
    }
    let web = state
        .calls
        .create_web_call(WebCallRequest {
            agent_id: body.agent_id.clone(),
            caller_name: caller_name.filter(|n| !n.is_empty()),
            origin: origin.to_string(),
            metadata,
        })
        .await
        .map_err(|e| match e {
            WebCallError::Draining => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "draining",
                "the daemon is shutting down",
            ),
            WebCallError::UnknownAgent => forbidden("the publishable key does not list this agent"),
            WebCallError::Store(e) => e.into(),
        })?;
    let token: String = rand::rng()
        .sample_iter(&Alphanumeric)
        .take(TOKEN_LEN)
        .map(char::from)
        .collect();
    let ttl = Duration::from_secs(u64::from(state.webrtc.token_ttl_seconds.max(1)));
    let expires_at = Utc::now() + ttl;
    let call_id = web.call.id.clone();
    state
        .store
        .insert_web_call(
            &call_id,
            &key.id,
            origin,
            &secrets::hash_key(&token),
            expires_at.timestamp_millis(),
        )
        .await?;
    state.calls.expire_web_call(call_id.clone(), ttl);
    tracing::info!(call_id = %call_id, key = %key.id, %origin, "web call created");
    Ok(WebCallCreated {
        whip_url: format!("/v1/web-calls/{call_id}/whip"),
        call_id,
        token,
        expires_at,
        agent: WebCallAgent {
            id: body.agent_id,
            name: web.agent_name,
        },
        ice_servers: state.webrtc.ice_servers.clone(),
    })
}

/// A CORS preflight for `POST /v1/web-calls` (Fetch §3.2.2): allowed for
/// an origin some unrevoked publishable key lists, else 403 without CORS
/// headers (the browser then sends nothing).
async fn preflight(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let Some(origin) = request_origin(&headers) else {
        return forbidden("an Origin header is required").into_response();
    };
    match state.store.publishable_origin_listed(&origin).await {
        Ok(true) => {}
        Ok(false) => return forbidden("this origin is not allowed").into_response(),
        Err(e) => return ApiError::internal(e).into_response(),
    }
    let mut response = StatusCode::NO_CONTENT.into_response();
    allow_origin(&mut response, &origin);
    let h = response.headers_mut();
    h.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("POST"),
    );
    h.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static("authorization, content-type"),
    );
    h.insert(
        header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from_static(PREFLIGHT_MAX_AGE),
    );
    response
}

/// The bearer token of a media request, if well formed.
fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let (scheme, token) = headers
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer")
        && token.len() == TOKEN_LEN
        && token.bytes().all(|b| b.is_ascii_alphanumeric()))
    .then_some(token)
}

fn token_refused() -> ApiError {
    ApiError::new(
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        "the web call's token is required, once, before it expires",
    )
}

/// The web call's origin when the request may go on: a browser's request
/// must come from the page that started the call (a request without
/// `Origin` is not a browser's, and carries the token as its only
/// credential).
async fn media_origin(
    state: &AppState,
    id: &str,
    headers: &HeaderMap,
) -> Result<Option<String>, ApiError> {
    if !crate::ids::has_prefix(id, crate::ids::CALL) {
        return Err(ApiError::not_found("web call"));
    }
    let Some(origin) = state.store.web_call_origin(id).await? else {
        return Err(ApiError::not_found("web call"));
    };
    match headers.get(header::ORIGIN) {
        None => Ok(None),
        Some(_) if request_origin(headers).as_deref() == Some(origin.as_str()) => Ok(Some(origin)),
        Some(_) => Err(forbidden("this origin did not start the web call")),
    }
}

/// Send the browser's SDP offer (WHIP, RFC 9725 §4.2) with the web call's
/// token; answers 201 with our SDP answer (our ICE candidate gathered
/// already) and the session's `Location`, which `DELETE` hangs up and
/// `PATCH` trickles the browser's later candidates to. The token works
/// once.
#[utoipa::path(post, path = "/v1/web-calls/{id}/whip", tag = "web-calls",
    params(("id" = String, Path)),
    request_body(content = String, content_type = "application/sdp"),
    security(("web_call_token" = [])),
    responses((status = 201, description = "The SDP answer", body = String, content_type = "application/sdp"),
        ErrorResponses))]
async fn whip_offer(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    // A credential that cannot be a token (an API key, a publishable key)
    // is refused before anything is looked up.
    if bearer_token(&headers).is_none() {
        return token_refused().into_response();
    }
    let origin = match media_origin(&state, &id, &headers).await {
        Ok(o) => o,
        Err(e) => return e.into_response(),
    };
    let mut response = whip_answer(&state, &id, &headers, &body)
        .await
        .unwrap_or_else(IntoResponse::into_response);
    if let Some(origin) = origin {
        allow_origin(&mut response, &origin);
    }
    response
}

async fn whip_answer(
    state: &AppState,
    id: &str,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Response, ApiError> {
    let token = bearer_token(headers).ok_or_else(token_refused)?;
    let sdp_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/sdp"));
    if !sdp_type {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "the offer must be sent as application/sdp",
        ));
    }
    if body.is_empty() || body.len() > MAX_OFFER_BYTES {
        return Err(ApiError::bad_request(format!(
            "the offer must be 1 to {MAX_OFFER_BYTES} bytes"
        )));
    }
    let offer =
        std::str::from_utf8(body).map_err(|_| ApiError::bad_request("the offer is not UTF-8"))?;
    let now_ms = Utc::now().timestamp_millis();
    match state
        .store
        .redeem_web_call_token(id, &secrets::hash_key(token), now_ms)
        .await?
    {
        Redeemed::Ok { .. } => {}
        Redeemed::Refused => return Err(token_refused()),
    }
    let limits = WebLimits {
        public_ip: state.webrtc.public_ip,
        ports: state.webrtc.ports.map(|p| (p.low, p.high)),
        max_duration: Duration::from_secs(u64::from(state.webrtc.max_duration_seconds)),
    };
    match state.calls.connect_web_call(id, offer, limits).await {
        Ok(media) => {
            let location = format!("/v1/web-calls/{id}/session");
            let mut response = (StatusCode::CREATED, media.answer).into_response();
            let h = response.headers_mut();
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/sdp"),
            );
            if let Ok(v) = HeaderValue::from_str(&location) {
                h.insert(header::LOCATION, v);
            }
            Ok(response)
        }
        Err(e) => {
            tracing::info!(call_id = %id, error = %e, "web call media not started");
            state.calls.fail_web_call(id, &e).await;
            Err(match e {
                crate::call::web::ConnectError::Offer(m) => ApiError::bad_request(m),
                crate::call::web::ConnectError::NotWaiting => {
                    ApiError::conflict("the web call is not waiting for media")
                }
                crate::call::web::ConnectError::Failed(m) => ApiError::internal(m),
            })
        }
    }
}

/// Hang up the web call (WHIP session `DELETE`, RFC 9725 §4.3), with its
/// token.
#[utoipa::path(delete, path = "/v1/web-calls/{id}/session", tag = "web-calls",
    params(("id" = String, Path)),
    security(("web_call_token" = [])),
    responses((status = 200, description = "Hanging up"), ErrorResponses))]
async fn whip_delete(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    if bearer_token(&headers).is_none() {
        return token_refused().into_response();
    }
    let origin = match media_origin(&state, &id, &headers).await {
        Ok(o) => o,
        Err(e) => return e.into_response(),
    };
    let result = async {
        let token = bearer_token(&headers).ok_or_else(token_refused)?;
        if !state
            .store
            .web_call_token_matches(&id, &secrets::hash_key(token))
            .await?
        {
            return Err(token_refused());
        }
        state
            .calls
            .hangup_web_call(&id)
            .map_err(|_| ApiError::not_found("running web call"))?;
        Ok(StatusCode::OK.into_response())
    }
    .await;
    let mut response = result.unwrap_or_else(IntoResponse::into_response);
    if let Some(origin) = origin {
        allow_origin(&mut response, &origin);
    }
    response
}

/// The largest trickle fragment read (a few candidate lines).
const MAX_SDPFRAG_BYTES: usize = 8 * 1024;

/// Send ICE candidates gathered after the offer (trickle ICE, RFC 9725
/// §4.3.1) as `application/trickle-ice-sdpfrag` (RFC 8840 §9) with the
/// web call's token: 204 once the peer took them. An ICE restart (other
/// `ice-ufrag`/`ice-pwd`, or `If-Match: *`) is not supported: 422, as
/// §4.3 says for a session that trickles but does not restart.
#[utoipa::path(patch, path = "/v1/web-calls/{id}/session", tag = "web-calls",
    params(("id" = String, Path)),
    request_body(content = String, content_type = "application/trickle-ice-sdpfrag"),
    security(("web_call_token" = [])),
    responses((status = 204, description = "The candidates were taken"), ErrorResponses))]
async fn whip_trickle(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    if bearer_token(&headers).is_none() {
        return token_refused().into_response();
    }
    let origin = match media_origin(&state, &id, &headers).await {
        Ok(o) => o,
        Err(e) => return e.into_response(),
    };
    let mut response = trickle(&state, &id, &headers, &body)
        .await
        .map_or_else(IntoResponse::into_response, |()| {
            StatusCode::NO_CONTENT.into_response()
        });
    if let Some(origin) = origin {
        allow_origin(&mut response, &origin);
    }
    response
}

async fn trickle(
    state: &AppState,
    id: &str,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<(), ApiError> {
    let token = bearer_token(headers).ok_or_else(token_refused)?;
    if !state
        .store
        .web_call_token_matches(id, &secrets::hash_key(token))
        .await?
    {
        return Err(token_refused());
    }
    let frag_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.trim()
                .eq_ignore_ascii_case("application/trickle-ice-sdpfrag")
        });
    if !frag_type {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "candidates must be sent as application/trickle-ice-sdpfrag",
        ));
    }
    // RFC 9725 §4.3.2: an ICE restart carries `If-Match: *`; we issue no
    // entity tags, so any other `If-Match` cannot match (RFC 9110 §13.1.1).
    match headers.get(header::IF_MATCH).map(|v| v.as_bytes()) {
        None => {}
        Some(b"*") => return Err(restart_refused()),
        Some(_) => {
            return Err(ApiError::new(
                StatusCode::PRECONDITION_FAILED,
                "precondition_failed",
                "the web call's session has no such entity tag",
            ));
        }
    }
    if body.is_empty() || body.len() > MAX_SDPFRAG_BYTES {
        return Err(ApiError::bad_request(format!(
            "the fragment must be 1 to {MAX_SDPFRAG_BYTES} bytes"
        )));
    }
    let text = std::str::from_utf8(body)
        .map_err(|_| ApiError::bad_request("the fragment is not UTF-8"))?;
    let frag = crate::webrtc::trickle::parse(text).map_err(ApiError::bad_request)?;
    match state.calls.trickle_web_call(id, frag).await {
        Ok(()) => Ok(()),
        Err(TrickleError::Restart) => Err(restart_refused()),
        Err(e @ TrickleError::TooMany) => Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "too_many_candidates",
            e.to_string(),
        )),
        Err(TrickleError::Gone) => Err(ApiError::not_found("running web call")),
    }
}

fn restart_refused() -> ApiError {
    ApiError::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        "ice_restart_unsupported",
        TrickleError::Restart.to_string(),
    )
}

/// The CORS preflight of a web call's media routes: for the origin that
/// started the call only.
async fn media_preflight(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let origin = match media_origin(&state, &id, &headers).await {
        Ok(Some(o)) => o,
        Ok(None) => return forbidden("an Origin header is required").into_response(),
        Err(e) => return e.into_response(),
    };
    let mut response = StatusCode::NO_CONTENT.into_response();
    allow_origin(&mut response, &origin);
    let h = response.headers_mut();
    h.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("POST, PATCH, DELETE"),
    );
    h.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static("authorization, content-type, if-match"),
    );
    h.insert(
        header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from_static(PREFLIGHT_MAX_AGE),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_counted_by_host_or_64() {
        assert_eq!(address_bucket("192.0.2.7".parse().unwrap()), "192.0.2.7");
        assert_eq!(
            address_bucket("2001:db8:1:2::1".parse().unwrap()),
            address_bucket("2001:db8:1:2:ffff::9".parse().unwrap())
        );
        assert_eq!(
            address_bucket("::ffff:192.0.2.7".parse().unwrap()),
            "192.0.2.7"
        );
    }

    #[test]
    fn only_a_browsers_exact_origin_is_read() {
        let mut h = HeaderMap::new();
        assert_eq!(request_origin(&h), None);
        h.insert(
            header::ORIGIN,
            HeaderValue::from_static("https://a.example"),
        );
        assert_eq!(request_origin(&h).as_deref(), Some("https://a.example"));
        h.insert(
            header::ORIGIN,
            HeaderValue::from_static("https://A.example/"),
        );
        assert_eq!(request_origin(&h), None);
        h.insert(header::ORIGIN, HeaderValue::from_static("null"));
        assert_eq!(request_origin(&h), None);
    }
}
