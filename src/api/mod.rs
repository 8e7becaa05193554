//! The admin HTTP API under `/v1`, plus `/health`, `/ready`, `/metrics`,
//! `/openapi.json` and `/docs`.
//!
//! Owns: routing, authentication, scopes (`scopes::ROUTES`) and rate limits,
//! the audit log, request validation, the
//! error envelope and the OpenAPI document (generated from the handlers by
//! utoipa, never written by hand). Conventions: prefixed opaque ids,
//! RFC 3339 UTC times, `limit`/`offset` pages answering
//! `{"items", "total", "limit", "offset"}`.
//!
//! Must not: hold SQL (that is the store's) or make call decisions (that is
//! the call layer's); internal errors are logged, never echoed.

mod agents;
mod analytics;
mod api_keys;
pub mod audio;
mod audit;
pub mod auth;
pub(crate) mod calls;
mod campaign_contacts;
pub(crate) mod campaigns;
mod chat;
pub mod credentials;
mod deliveries;
mod dnc;
pub mod error;
mod events;
mod extract;
pub mod mode;
mod nodes;
mod numbers;
mod observe;
mod publishable_keys;
mod rate_limit;
mod recordings;
pub mod scopes;
pub mod server;
mod sip_trace;
mod system;
mod transcripts;
mod trunks;
mod voices;
mod web_calls;
mod webhook_endpoints;

pub use api_keys::create as create_api_key;
pub use audit::new_id as new_audit_id;
pub use campaigns::{CampaignStats, read_stats as read_campaign_stats};
pub use scopes::Scope;
pub use system::Readiness;

use std::ops::Deref;
use std::sync::Arc;

use axum::Router;
use axum::middleware;
use metrics_exporter_prometheus::PrometheusHandle;
use utoipa::OpenApi;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa_axum::router::OpenApiRouter;

use crate::call::Calls;
use crate::config::{Config, Profiles, SharedProfiles, WebhooksConfig};
use crate::net::Guard;
use crate::store::Store;
use crate::trunk::TrunkStates;
use crate::webhook::Outbox;
use crate::webhook::event::{
    ApiKeyEventData, CallEventData, CampaignEventData, TestEventData, TrunkEventData, WebhookEvent,
};

/// Shared state of every handler; cheap to clone.
#[derive(Clone)]
pub struct AppState(Arc<Inner>);

/// What [`AppState`] shares. Built once by `app`; everything in it is either
/// read-only after start or synchronized on its own, so handlers never
/// lock the whole.
pub struct Inner {
    /// Reads and writes that are not call transitions (agents, numbers,
    /// keys, listings); a clone of the daemon's one store.
    pub store: Store,
    /// Emits events and wakes the webhook worker and the event streams.
    pub outbox: Outbox,
    /// Refuses endpoint URLs that point inside.
    pub guard: Guard,
    /// `[webhooks]`: the guard's networks, secret overlap, SSE heartbeat.
    pub webhooks: WebhooksConfig,
    /// `[campaigns] min_retry_delay_seconds`: the shortest retry delay a
    /// campaign's policy may ask.
    pub min_retry_delay_seconds: u32,
    /// Replaced whole on SIGHUP; readers take a snapshot.
    profiles: Arc<SharedProfiles>,
    /// Places and hangs up calls.
    pub calls: Calls,
    /// Live trunk state for `GET /v1/trunks`; written by the call layer,
    /// trimmed and seeded by the SIGHUP reload.
    pub trunks: Arc<TrunkStates>,
    /// Per-key request limits and failed authentications per address;
    /// outlive any one request.
    pub rate_limits: auth::RateLimits,
    /// `[api]`: stream caps, upload caps, timeouts.
    pub api: crate::config::ApiConfig,
    /// Open event streams per key.
    pub streams: events::Streams,
    /// What `/ready` answers: starting, ready, or draining from the first
    /// SIGTERM on, so a load balancer moves away before calls are refused.
    pub readiness: Arc<Readiness>,
    /// `None` when another recorder owns the process (tests that embed).
    metrics: Option<PrometheusHandle>,
    /// The OpenAPI document, rendered once.
    openapi_json: String,
    /// `[calls] daily_calls_per_key`.
    pub daily_calls_per_key: Option<u32>,
    /// `[calls] daily_minutes_per_key`.
    pub daily_minutes_per_key: Option<u32>,
    /// `[media]`: the cap on uploaded audio.
    pub media: crate::config::MediaConfig,
    /// Seals stored secrets (credentials, webhook signing secrets).
    pub sealer: crate::secrets::Sealer,
    /// `[webrtc]`: web calls' ICE servers, token lifetime and limits.
    pub webrtc: crate::webrtc::WebrtcConfig,
}

impl Deref for AppState {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

impl Inner {
    /// A snapshot of the trunk profiles.
    pub fn profiles(&self) -> Arc<Profiles> {
        self.profiles.get()
    }

    pub fn replace_profiles(&self, profiles: Profiles) {
        self.profiles.replace(profiles);
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "agentline admin API",
        description = "Agents, phone numbers, trunks, calls, webhook endpoints and API keys. \
            Authenticate with `Authorization: Bearer <key>` or `X-API-Key: <key>`. \
            An `al_test_` key works in test mode: it sees and creates only test-mode objects \
            (`livemode: false`), and its calls run on the simulated carrier, never on a trunk."
    ),
    modifiers(&Security),
    components(schemas(
        error::ErrorBody,
        error::ErrorObject,
        error::FieldError,
        WebhookEvent<CallEventData>,
        WebhookEvent<TrunkEventData>,
        WebhookEvent<TestEventData>,
        WebhookEvent<CampaignEventData>,
        WebhookEvent<crate::model::Recording>,
        WebhookEvent<ApiKeyEventData>,
    )),
    tags(
        (name = "agents", description = "What answers a call"),
        (name = "chat", description = "Text chat with an agent: same brain and tools as on a call"),
        (name = "phone-numbers", description = "Numbers agentline answers"),
        (name = "trunks", description = "SIP trunks, from the profile files (read-only)"),
        (name = "nodes", description = "The daemons sharing this store, with their heartbeats (read-only)"),
        (name = "calls", description = "Call records"),
        (name = "campaigns", description = "Outbound campaigns, their contacts and progress"),
        (name = "do-not-call", description = "Numbers never called by a campaign"),
        (name = "webhook-endpoints", description = "Where call events are delivered, and their delivery log"),
        (name = "events", description = "Call, trunk and campaign events: the live stream (SSE), replay. \
            Webhook requests carry the same JSON envelope, signed with Standard Webhooks v1 \
            (`webhook-id`, `webhook-timestamp`, `webhook-signature`)"),
        (name = "web-calls", description = "Browser calls to an agent: publishable keys (`al_pk_...`, \
            safe in a web page) start web calls for the agents and origins they list"),
        (name = "api-keys", description = "Keys to this API, each with a scope: `admin`, `calls` or `read` \
            (every operation states the scope it needs as `x-required-scope`)"),
        (name = "audit", description = "Every create, change and delete made through the API"),
        (name = "system", description = "Health, readiness, metrics and this document"),
    )
)]
struct ApiDoc;

struct Security;

impl utoipa::Modify for Security {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
        components.add_security_scheme(
            "api_key",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::new("X-API-Key"))),
        );
        components.add_security_scheme(
            "publishable_key",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "A publishable key (`al_pk_...`): only `POST /v1/web-calls`, \
                         from an origin it lists",
                    ))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "web_call_token",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "A web call's single-use token, from `POST /v1/web-calls`",
                    ))
                    .build(),
            ),
        );
        openapi.security = Some(vec![
            utoipa::openapi::security::SecurityRequirement::new("bearer", Vec::<String>::new()),
            utoipa::openapi::security::SecurityRequirement::new("api_key", Vec::<String>::new()),
        ]);
    }
}

/// Builds the routers and the OpenAPI document from the same handlers.
pub(crate) fn routers(metrics_open: bool) -> (OpenApiRouter<AppState>, OpenApiRouter<AppState>) {
    let mut protected = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .merge(agents::router())
        .merge(numbers::router())
        .merge(trunks::router())
        .merge(nodes::router())
        .merge(calls::router())
        .merge(transcripts::router())
        .merge(sip_trace::router())
        .merge(recordings::router())
        .merge(campaigns::router())
        .merge(campaign_contacts::router())
        .merge(dnc::router())
        .merge(audio::router())
        .merge(credentials::router())
        .merge(chat::router())
        .merge(webhook_endpoints::router())
        .merge(events::router())
        .merge(api_keys::router())
        .merge(publishable_keys::router())
        .merge(audit::router())
        .merge(voices::router())
        .merge(analytics::router());
    // Web calls authenticate with a publishable key, not an API key: they
    // stay outside the API key middleware and check their key themselves.
    let mut open = system::open_router().merge(web_calls::router());
    if metrics_open {
        open = open.merge(system::metrics_router());
    } else {
        protected = protected.merge(system::metrics_router());
    }
    (protected, open)
}

/// The OpenAPI document as JSON (also served at `/openapi.json`).
pub fn openapi_json(metrics_open: bool) -> String {
    let (protected, open) = routers(metrics_open);
    let mut doc = protected.into_openapi();
    // Before the open routes join: they need no scope.
    scopes::annotate(&mut doc);
    doc.merge(open.into_openapi());
    scopes::annotate_publishable(&mut doc);
    doc.to_pretty_json().unwrap_or_default()
}

impl AppState {
    pub fn new(
        config: &Config,
        outbox: Outbox,
        profiles: Arc<SharedProfiles>,
        calls: Calls,
        trunks: Arc<TrunkStates>,
        readiness: Arc<Readiness>,
        metrics: Option<PrometheusHandle>,
    ) -> Self {
        // `App::build` read the same key first and refuses to start on a
        // bad one; none here means none configured.
        let sealer = config
            .secrets
            .sealer()
            .unwrap_or_else(|_| crate::secrets::Sealer::none());
        AppState(Arc::new(Inner {
            store: outbox.store().clone(),
            outbox,
            guard: crate::net::outbound().guard().clone(),
            webhooks: config.webhooks.clone(),
            min_retry_delay_seconds: config.campaigns.min_retry_delay_seconds,
            profiles,
            calls,
            trunks,
            rate_limits: auth::RateLimits::new(
                config.api.rate_limit_per_minute,
                config.api.auth_failures_per_minute,
            ),
            api: config.api.clone(),
            streams: events::Streams::default(),
            readiness,
            metrics,
            openapi_json: openapi_json(config.api.metrics_open),
            media: config.media.clone(),
            daily_calls_per_key: config.calls.daily_calls_per_key,
            daily_minutes_per_key: config.calls.daily_minutes_per_key,
            sealer,
            webrtc: config.webrtc.clone(),
        }))
    }
}

/// Builds the whole HTTP application.
pub fn app(state: AppState, metrics_open: bool) -> Router {
    let (protected, open) = routers(metrics_open);
    // Outermost first: authenticate and check the scope, then audit, then
    // keep each key to the objects of its mode.
    let protected = Router::from(protected)
        .layer(middleware::from_fn_with_state(
            state.clone(),
            mode::guard_objects,
        ))
        .layer(middleware::from_fn_with_state(state.clone(), audit::record))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            auth::require_key,
        ));
    protected
        .merge(Router::from(open))
        .fallback(system::not_found)
        .method_not_allowed_fallback(system::method_not_allowed)
        .layer(middleware::from_fn(observe::observe))
        .with_state(state)
}

/// Only `/metrics`, without a key: what `api.metrics_listen` serves.
pub fn metrics_app(state: AppState) -> Router {
    Router::from(system::metrics_router())
        .fallback(system::not_found)
        .with_state(state)
}

/// Runs the store lookup `get` for `id`, answering 404 naming `what` when
/// the id is not of the `prefix` kind (the lookup is then never run) or
/// nothing is stored under it.
pub(crate) async fn find<T>(
    id: &str,
    prefix: &str,
    what: &str,
    get: impl std::future::Future<Output = Result<T, crate::store::StoreError>>,
) -> Result<T, error::ApiError> {
    if !crate::ids::has_prefix(id, prefix) {
        return Err(error::ApiError::not_found(what));
    }
    get.await.map_err(|e| match e {
        crate::store::StoreError::NotFound => error::ApiError::not_found(what),
        e => e.into(),
    })
}

pub(crate) fn is_http_url(s: &str) -> bool {
    let rest = s
        .strip_prefix("https://")
        .or_else(|| s.strip_prefix("http://"));
    rest.is_some_and(|r| {
        let host = r.split(['/', '?', '#']).next().unwrap_or("");
        !host.is_empty() && !host.contains(char::is_whitespace) && !r.contains(char::is_whitespace)
    })
}
