//! `/v1/trunks`: read-only. The profile files are the source of truth; the
//! API adds the live fields (registration state, last error, health from
//! the OPTIONS probes, active calls, and the node that owns the trunk's
//! registration and probe).

use axum::Json;
use axum::extract::{Path, State};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use super::error::{ApiError, ErrorResponses};
use super::extract::{ApiQuery, List, Pagination};
use crate::config::{Codec, Profile};
use crate::model::trunk::{Trunk, TrunkHealth, TrunkRegistration};
use crate::trunk::{Health, RegistrationStatus, TrunkLive};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_trunks))
        .routes(routes!(get_trunk))
}

fn health_to_api(p: &Profile, health: Health) -> TrunkHealth {
    let ping_seconds = p.outbound.as_ref().and_then(|o| o.ping_seconds);
    let mut h = TrunkHealth {
        state: "not_configured".into(),
        ping_seconds,
        last_status: None,
        rtt_ms: None,
        last_error: None,
        down_since: None,
        checked_at: None,
    };
    if ping_seconds.is_none() {
        // A probe task stopped by SIGHUP may still write one last verdict.
        return h;
    }
    match health {
        Health::NotConfigured | Health::Pending => h.state = "pending".into(),
        Health::Up {
            status,
            rtt_ms,
            checked_at,
        } => {
            h.state = "up".into();
            h.last_status = Some(status);
            h.rtt_ms = Some(rtt_ms);
            h.checked_at = Some(checked_at);
        }
        Health::Down {
            status,
            reason,
            since,
            checked_at,
        } => {
            h.state = "down".into();
            h.last_status = status;
            h.last_error = Some(reason);
            h.down_since = Some(since);
            h.checked_at = Some(checked_at);
        }
    }
    h
}

fn to_api(p: &Profile, live: TrunkLive) -> Trunk {
    let reg = p.registration.as_ref();
    let (state, expires_at, last_status, last_error, next_attempt_at) = match live.registration {
        RegistrationStatus::NotConfigured if reg.is_some() => ("pending", None, None, None, None),
        RegistrationStatus::NotConfigured => ("not_configured", None, None, None, None),
        RegistrationStatus::Pending => ("pending", None, None, None, None),
        RegistrationStatus::Registered { expires_at } => {
            ("registered", Some(expires_at), None, None, None)
        }
        RegistrationStatus::Failing {
            status,
            reason,
            next_attempt_at,
        } => ("failing", None, status, Some(reason), Some(next_attempt_at)),
    };
    Trunk {
        id: p.id(),
        name: p.name.clone(),
        registration: TrunkRegistration {
            state: state.into(),
            registrar: reg.map(|r| r.registrar.clone()),
            username: reg.map(|r| r.username.clone()),
            expires_at,
            last_status,
            last_error,
            next_attempt_at,
        },
        health: health_to_api(p, live.health),
        inbound_allow: p.inbound.allow.iter().map(ToString::to_string).collect(),
        outbound_proxy: p.outbound.as_ref().map(|o| o.proxy.clone()),
        caller_id: p.outbound.as_ref().and_then(|o| o.caller_id.clone()),
        max_calls: p.limits.max_calls,
        cps: p.limits.cps,
        codecs: p
            .media
            .codecs
            .iter()
            .map(|c| match c {
                Codec::Pcmu => "PCMU".to_string(),
                Codec::Pcma => "PCMA".to_string(),
                Codec::G722 => "G722".to_string(),
                Codec::Opus => "OPUS".to_string(),
            })
            .collect(),
        active_calls: live.active_calls,
        owner: None,
    }
}

/// The node that runs trunk `p`: the holder of a lease that has not
/// ended, or this node when it runs every trunk (one node on SQLite).
async fn owner_of(state: &AppState, p: &Profile) -> Result<Option<String>, ApiError> {
    if state.store.backend() != "postgres" {
        return Ok(Some(state.calls.node().to_owned()));
    }
    let lease = state.store.trunk_lease(&p.id()).await?;
    Ok(lease
        .filter(|l| l.lease_until >= chrono::Utc::now())
        .map(|l| l.owner))
}

/// List trunks, by name.
#[utoipa::path(get, path = "/v1/trunks", tag = "trunks", params(Pagination),
    responses((status = 200, description = "A page of trunks", body = List<Trunk>), ErrorResponses))]
async fn list_trunks(
    State(state): State<AppState>,
    ApiQuery(page): ApiQuery<Pagination>,
) -> Result<Json<List<Trunk>>, ApiError> {
    let w = page.window()?;
    let profiles = state.profiles();
    let mut items = Vec::new();
    for p in profiles
        .by_name
        .values()
        .skip(usize::try_from(w.offset).unwrap_or(usize::MAX))
        .take(usize::try_from(w.limit).unwrap_or(0))
    {
        let mut trunk = to_api(p, state.trunks.get(&p.name));
        trunk.owner = owner_of(&state, p).await?;
        items.push(trunk);
    }
    Ok(Json(List {
        items,
        total: i64::try_from(profiles.by_name.len()).unwrap_or(i64::MAX),
        limit: w.limit,
        offset: w.offset,
    }))
}

/// Get a trunk.
#[utoipa::path(get, path = "/v1/trunks/{id}", tag = "trunks", params(("id" = String, Path)),
    responses((status = 200, description = "The trunk", body = Trunk), ErrorResponses))]
async fn get_trunk(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Trunk>, ApiError> {
    let profiles = state.profiles();
    let p = profiles
        .get_by_id(&id)
        .ok_or_else(|| ApiError::not_found("trunk"))?;
    let mut trunk = to_api(p, state.trunks.get(&p.name));
    trunk.owner = owner_of(&state, p).await?;
    Ok(Json(trunk))
}
