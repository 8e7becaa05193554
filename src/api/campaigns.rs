//! `/v1/campaigns`: outbound campaigns, their contacts (JSON or a streamed
//! CSV upload) and their progress. Status changes go through actions
//! (`start`, `pause`, `resume`, `cancel`); one that the current status does
//! not allow is 409, and each one done writes its `campaign.*` event with
//! the change.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use super::error::{ApiError, ErrorResponses, FieldError};
use super::extract::{ApiJson, ApiQuery, List, Pagination};
use super::mode::Mode;
use crate::campaign::{Action, CONTACT_STATES};
use crate::config::MAX_RETRY_DELAY_SECONDS;
use crate::media::amd::AmdMode;
use crate::model::campaign::{RetryPolicy, RetryRule, Schedule};
use crate::model::{AttemptOutcome, Campaign, CampaignStatus, EventType, RecordingSettings};
use crate::store::StoreError;
use crate::store::campaigns::{CampaignFields, CampaignRecord};
use crate::{e164, ids, secrets};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_campaigns, create_campaign))
        .routes(routes!(get_campaign, update_campaign, delete_campaign))
        .routes(routes!(start_campaign))
        .routes(routes!(pause_campaign))
        .routes(routes!(resume_campaign))
        .routes(routes!(cancel_campaign))
        .routes(routes!(campaign_stats))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CampaignCreate {
    pub name: String,
    pub agent_id: String,
    #[schema(example = "+14155550100")]
    pub caller_number: String,
    pub trunk_ids: Vec<String>,
    /// Default: every day, 09:00 to 20:00 in each contact's zone.
    pub schedule: Option<Schedule>,
    /// 1 to 1000 (default 10).
    pub max_concurrent_calls: Option<i64>,
    /// New calls per second, 0.01 to 100 (default 1).
    pub calls_per_second: Option<f64>,
    pub retry_policy: Option<RetryPolicy>,
    /// Attempts per contact, 1 to 20 (default 3).
    pub max_attempts: Option<i64>,
    /// The DTMF key (`0`-`9`, `*`, `#`) that opts the callee out (default
    /// none: say the key in the agent's greeting when you set one).
    pub opt_out_digit: Option<String>,
    /// Answering-machine detection (default `off`).
    pub amd: Option<AmdMode>,
    /// http(s) URL asked for the agent of each attempt (as a number's
    /// agent webhook); its signing secret is in this answer only.
    pub agent_webhook_url: Option<String>,
    /// Recording of the campaign's calls, field by field over the From
    /// number's and the agent's settings.
    pub recording: Option<RecordingSettings>,
}

/// A JSON Merge Patch (RFC 7396) of the campaign: fields left out keep
/// their value, `null` clears one (back to its default; `opt_out_digit` to
/// none). Only a `draft` or `paused` campaign can change.
// The PATCH body as the OpenAPI document shows it; the handler merges the
// raw body (RFC 7396, `extract::patched`), so nothing reads these fields.
#[allow(dead_code)]
#[derive(Debug, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CampaignUpdate {
    pub name: Option<String>,
    pub agent_id: Option<String>,
    pub caller_number: Option<String>,
    pub trunk_ids: Option<Vec<String>>,
    pub schedule: Option<Schedule>,
    pub max_concurrent_calls: Option<i64>,
    pub calls_per_second: Option<f64>,
    pub retry_policy: Option<RetryPolicy>,
    pub max_attempts: Option<i64>,
    /// `null` removes the opt-out key.
    #[schema(value_type = Option<String>)]
    pub opt_out_digit: Option<Option<String>>,
    pub amd: Option<AmdMode>,
    /// A new URL gets a new signing secret (in this answer); `null` turns
    /// the agent webhook off.
    #[schema(value_type = Option<String>)]
    pub agent_webhook_url: Option<Option<String>>,
    /// Merged into the current settings; `null` removes them.
    pub recording: Option<RecordingSettings>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct CampaignQuery {
    /// Only campaigns in this status.
    pub status: Option<CampaignStatus>,
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<i64>,
    #[param(minimum = 0)]
    pub offset: Option<i64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CampaignStats {
    pub campaign_id: String,
    pub status: CampaignStatus,
    pub contacts_total: i64,
    /// Contacts per state (every state listed).
    pub contacts: BTreeMap<String, i64>,
    /// Finished attempts per outcome (every outcome listed).
    pub attempts: BTreeMap<String, i64>,
    pub calls_active: i64,
    /// Answered attempts over finished attempts.
    pub answer_rate: Option<f64>,
    /// Mean duration of answered calls.
    pub average_duration_seconds: Option<f64>,
    /// A rough estimate from the pace so far: pending contacts over attempts
    /// finished per second since the start (retry delays make it longer).
    pub estimated_seconds_remaining: Option<f64>,
}

/// The campaign as the API answers it; a row that cannot be shown is a 500.
pub(crate) fn to_api(r: CampaignRecord) -> Result<Campaign, ApiError> {
    Ok(Campaign::try_from(r)?)
}

/// A campaign's fields once validated, as stored.
struct Valid {
    name: String,
    agent_id: String,
    caller_number: String,
    trunks: String,
    schedule: String,
    max_concurrent_calls: i64,
    calls_per_second: f64,
    retry_policy: String,
    max_attempts: i64,
    opt_out_digit: Option<String>,
    amd: AmdMode,
    recording: Option<String>,
}

impl Valid {
    fn fields(&self) -> CampaignFields<'_> {
        CampaignFields {
            name: &self.name,
            agent_id: &self.agent_id,
            caller_number: &self.caller_number,
            trunks: &self.trunks,
            schedule: &self.schedule,
            max_concurrent_calls: self.max_concurrent_calls,
            calls_per_second: self.calls_per_second,
            retry_policy: &self.retry_policy,
            max_attempts: self.max_attempts,
            opt_out_digit: self.opt_out_digit.as_deref(),
            amd: self.amd.as_str(),
            recording: self.recording.as_deref(),
        }
    }
}

/// Checks every field and answers all problems at once.
#[allow(clippy::too_many_arguments)] // one per field of the campaign
async fn validate(
    state: &AppState,
    name: String,
    agent_id: String,
    caller_number: &str,
    trunk_ids: Vec<String>,
    schedule: Schedule,
    max_concurrent_calls: i64,
    calls_per_second: f64,
    retry_policy: RetryPolicy,
    max_attempts: i64,
    opt_out_digit: Option<String>,
    amd: AmdMode,
    recording: Option<RecordingSettings>,
    mode: Mode,
) -> Result<Valid, ApiError> {
    let mut details = Vec::new();
    let mut problem = |field: &str, message: &str| {
        details.push(FieldError {
            field: field.into(),
            message: message.into(),
        })
    };
    let len = name.trim().chars().count();
    if len == 0 || len > 100 {
        problem("name", "must be 1 to 100 characters");
    }
    let caller_number = e164::normalize(caller_number).unwrap_or_else(|m| {
        problem("caller_number", &m);
        String::new()
    });
    if trunk_ids.is_empty() || trunk_ids.len() > 10 {
        problem("trunk_ids", "must name 1 to 10 trunks");
    }
    let profiles = state.profiles();
    for (i, t) in trunk_ids.iter().enumerate() {
        if profiles.get_by_id(t).is_none() {
            problem(&format!("trunk_ids[{i}]"), "no such trunk");
        }
    }
    if !(1..=1000).contains(&max_concurrent_calls) {
        problem("max_concurrent_calls", "must be between 1 and 1000");
    }
    if !(0.01..=100.0).contains(&calls_per_second) {
        problem("calls_per_second", "must be between 0.01 and 100");
    }
    if !(1..=20).contains(&max_attempts) {
        problem("max_attempts", "must be between 1 and 20");
    }
    if opt_out_digit.as_deref().is_some_and(|d| {
        d.len() != 1
            || !d
                .chars()
                .all(|c| c.is_ascii_digit() || c == '*' || c == '#')
    }) {
        problem("opt_out_digit", "must be one DTMF key: 0-9, * or #");
    }
    for (field, rule) in [
        ("busy", retry_policy.busy),
        ("no_answer", retry_policy.no_answer),
        ("failed", retry_policy.failed),
    ] {
        let RetryRule {
            retries,
            delay_seconds,
        } = rule;
        if retries > 20 {
            problem(
                &format!("retry_policy.{field}.retries"),
                "must be at most 20",
            );
        }
        let min = state.min_retry_delay_seconds;
        if !(min..=MAX_RETRY_DELAY_SECONDS).contains(&delay_seconds) {
            problem(
                &format!("retry_policy.{field}.delay_seconds"),
                &format!("must be between {min} and {MAX_RETRY_DELAY_SECONDS}"),
            );
        }
    }
    for (field, message) in recording
        .as_ref()
        .map(RecordingSettings::problems)
        .unwrap_or_default()
    {
        problem(&format!("recording.{field}"), message);
    }
    if let Err(problems) = schedule.compile() {
        for (field, message) in problems {
            problem(&field, &message);
        }
    }
    // An agent of the other mode is no agent to this key.
    let agent_known = ids::has_prefix(&agent_id, ids::AGENT)
        && match state.store.get_agent(&agent_id).await {
            Ok(a) => a.livemode == mode.livemode(),
            Err(StoreError::NotFound) => false,
            Err(e) => return Err(e.into()),
        };
    if !agent_known {
        details.push(FieldError {
            field: "agent_id".into(),
            message: "no such agent".into(),
        });
    }
    if !details.is_empty() {
        return Err(ApiError::validation(details));
    }
    let json = |v: serde_json::Result<String>| v.map_err(ApiError::internal);
    Ok(Valid {
        name: name.trim().to_string(),
        agent_id,
        caller_number,
        trunks: json(serde_json::to_string(&trunk_ids))?,
        schedule: json(serde_json::to_string(&schedule))?,
        max_concurrent_calls,
        calls_per_second,
        retry_policy: json(serde_json::to_string(&retry_policy))?,
        max_attempts,
        opt_out_digit,
        amd,
        recording: super::numbers::settings_json(recording.as_ref())?,
    })
}

fn store_conflict(e: StoreError) -> ApiError {
    match e {
        StoreError::Conflict(m) => ApiError::conflict(m),
        StoreError::NotFound => ApiError::not_found("campaign"),
        StoreError::InUse(_) => ApiError::field("agent_id", "no such agent"),
        e => e.into(),
    }
}

/// Sets the campaign's agent webhook as asked (`None`: left as it is,
/// `Some(None)`: removed); a URL given gets a new secret, returned to be
/// shown once.
async fn set_agent_webhook(
    state: &AppState,
    id: &str,
    asked: Option<Option<String>>,
) -> Result<Option<String>, ApiError> {
    let Some(url) = asked else {
        return Ok(None);
    };
    let secret = url.as_ref().map(|_| secrets::new_webhook_secret());
    let hook = url.as_deref().zip(secret.as_deref());
    state
        .store
        .set_campaign_agent_webhook(id, hook)
        .await
        .map_err(store_conflict)?;
    Ok(secret)
}

/// Create a campaign (in `draft`).
#[utoipa::path(post, path = "/v1/campaigns", tag = "campaigns", request_body = CampaignCreate,
    responses((status = 201, description = "Created", body = Campaign), ErrorResponses))]
async fn create_campaign(
    State(state): State<AppState>,
    mode: Mode,
    ApiJson(b): ApiJson<CampaignCreate>,
) -> Result<(StatusCode, Json<Campaign>), ApiError> {
    let hook = b.agent_webhook_url.clone();
    let v = validated(&state, b, mode).await?;
    if let Some(url) = &hook {
        super::numbers::check_agent_webhook(&state, "agent_webhook_url", url)
            .await
            .map_err(|e| ApiError::validation(vec![e]))?;
    }
    let id = ids::new(ids::CAMPAIGN);
    state
        .store
        .insert_campaign(&id, v.fields(), mode.livemode())
        .await
        .map_err(store_conflict)?;
    let secret = set_agent_webhook(&state, &id, Some(hook)).await?;
    let mut campaign = to_api(fetch(&state, &id).await?)?;
    campaign.agent_webhook_secret = secret;
    Ok((StatusCode::CREATED, Json(campaign)))
}

/// A create body (or a patched campaign) validated, defaults filled in.
async fn validated(state: &AppState, b: CampaignCreate, mode: Mode) -> Result<Valid, ApiError> {
    validate(
        state,
        b.name,
        b.agent_id,
        &b.caller_number,
        b.trunk_ids,
        b.schedule.unwrap_or_default(),
        b.max_concurrent_calls.unwrap_or(10),
        b.calls_per_second.unwrap_or(1.0),
        b.retry_policy.unwrap_or_default(),
        b.max_attempts.unwrap_or(3),
        b.opt_out_digit,
        b.amd.unwrap_or_default(),
        b.recording,
        mode,
    )
    .await
}

/// List campaigns, newest first.
#[utoipa::path(get, path = "/v1/campaigns", tag = "campaigns", params(CampaignQuery),
    responses((status = 200, description = "A page of campaigns", body = List<Campaign>), ErrorResponses))]
async fn list_campaigns(
    State(state): State<AppState>,
    mode: Mode,
    ApiQuery(q): ApiQuery<CampaignQuery>,
) -> Result<Json<List<Campaign>>, ApiError> {
    let w = Pagination::new(q.limit, q.offset).window()?;
    let page = state
        .store
        .list_campaigns(q.status, mode.livemode(), w)
        .await?;
    List::try_new(page, w, to_api).map(Json)
}

pub(super) async fn fetch(state: &AppState, id: &str) -> Result<CampaignRecord, ApiError> {
    super::find(id, ids::CAMPAIGN, "campaign", state.store.get_campaign(id)).await
}

/// Get a campaign.
#[utoipa::path(get, path = "/v1/campaigns/{id}", tag = "campaigns", params(("id" = String, Path)),
    responses((status = 200, description = "The campaign", body = Campaign), ErrorResponses))]
async fn get_campaign(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Campaign>, ApiError> {
    Ok(Json(to_api(fetch(&state, &id).await?)?))
}

/// Update a `draft` or `paused` campaign (409 otherwise).
#[utoipa::path(patch, path = "/v1/campaigns/{id}", tag = "campaigns", params(("id" = String, Path)),
    request_body = CampaignUpdate,
    responses((status = 200, description = "The updated campaign", body = Campaign), ErrorResponses))]
async fn update_campaign(
    State(state): State<AppState>,
    mode: Mode,
    Path(id): Path<String>,
    ApiJson(patch): ApiJson<serde_json::Value>,
) -> Result<Json<Campaign>, ApiError> {
    let current = to_api(fetch(&state, &id).await?)?;
    if !matches!(
        current.status,
        CampaignStatus::Draft | CampaignStatus::Paused
    ) {
        return Err(ApiError::conflict(format!(
            "a {} campaign cannot be changed",
            current.status.as_str()
        )));
    }
    let hook = super::extract::patched_field(&patch, "agent_webhook_url")?;
    let b: CampaignCreate = super::extract::patched(&current, &patch)?;
    let v = validated(&state, b, mode).await?;
    if let Some(Some(url)) = &hook {
        super::numbers::check_agent_webhook(&state, "agent_webhook_url", url)
            .await
            .map_err(|e| ApiError::validation(vec![e]))?;
    }
    state
        .store
        .update_campaign(&id, v.fields())
        .await
        .map_err(store_conflict)?;
    let secret = set_agent_webhook(&state, &id, hook).await?;
    let mut campaign = to_api(fetch(&state, &id).await?)?;
    campaign.agent_webhook_secret = secret;
    Ok(Json(campaign))
}

/// Delete a campaign that is not running, with its contacts.
#[utoipa::path(delete, path = "/v1/campaigns/{id}", tag = "campaigns", params(("id" = String, Path)),
    responses((status = 204, description = "Deleted"), ErrorResponses))]
async fn delete_campaign(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    fetch(&state, &id).await?;
    state
        .store
        .delete_campaign(&id)
        .await
        .map_err(store_conflict)?;
    Ok(StatusCode::NO_CONTENT)
}

async fn act(state: &AppState, id: &str, action: Action) -> Result<Json<Campaign>, ApiError> {
    fetch(state, id).await?;
    let event = match action {
        Action::Start => EventType::CampaignStarted,
        Action::Pause => EventType::CampaignPaused,
        Action::Resume => EventType::CampaignResumed,
        Action::Cancel => EventType::CampaignCanceled,
    };
    let record = state
        .outbox
        .campaign_transition(id, action.from(), action.to(), event)
        .await
        .map_err(store_conflict)?;
    tracing::info!(campaign = %id, event = event.as_str(), "campaign status changed");
    Ok(Json(to_api(record)?))
}

/// Start a `draft` campaign.
#[utoipa::path(post, path = "/v1/campaigns/{id}/start", tag = "campaigns", params(("id" = String, Path)),
    responses((status = 200, description = "The campaign, running", body = Campaign), ErrorResponses))]
async fn start_campaign(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Campaign>, ApiError> {
    act(&state, &id, Action::Start).await
}

/// Pause a running campaign: no new calls; calls in progress finish.
#[utoipa::path(post, path = "/v1/campaigns/{id}/pause", tag = "campaigns", params(("id" = String, Path)),
    responses((status = 200, description = "The campaign, paused", body = Campaign), ErrorResponses))]
async fn pause_campaign(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Campaign>, ApiError> {
    act(&state, &id, Action::Pause).await
}

/// Resume a paused campaign.
#[utoipa::path(post, path = "/v1/campaigns/{id}/resume", tag = "campaigns", params(("id" = String, Path)),
    responses((status = 200, description = "The campaign, running", body = Campaign), ErrorResponses))]
async fn resume_campaign(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Campaign>, ApiError> {
    act(&state, &id, Action::Resume).await
}

/// Cancel a campaign for good; waiting contacts are canceled.
#[utoipa::path(post, path = "/v1/campaigns/{id}/cancel", tag = "campaigns", params(("id" = String, Path)),
    responses((status = 200, description = "The campaign, canceled", body = Campaign), ErrorResponses))]
async fn cancel_campaign(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Campaign>, ApiError> {
    act(&state, &id, Action::Cancel).await
}

/// Progress of a campaign.
#[utoipa::path(get, path = "/v1/campaigns/{id}/stats", tag = "campaigns", params(("id" = String, Path)),
    responses((status = 200, description = "The campaign's progress", body = CampaignStats), ErrorResponses))]
async fn campaign_stats(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<CampaignStats>, ApiError> {
    let campaign = to_api(fetch(&state, &id).await?)?;
    let counts = state.store.campaign_counts(&id).await?;
    Ok(Json(stats(campaign, counts, Utc::now())))
}

/// The campaign's progress read straight from the store, as
/// `GET /v1/campaigns/{id}/stats` answers it (the CLI's `campaign watch`).
pub async fn read_stats(
    store: &crate::store::Store,
    id: &str,
) -> Result<CampaignStats, StoreError> {
    let record = store.get_campaign(id).await?;
    let campaign = Campaign::try_from(record)?;
    let counts = store.campaign_counts(id).await?;
    Ok(stats(campaign, counts, Utc::now()))
}

pub(crate) fn stats(
    campaign: Campaign,
    counts: crate::store::campaigns::CampaignCounts,
    now: DateTime<Utc>,
) -> CampaignStats {
    let mut contacts: BTreeMap<String, i64> =
        CONTACT_STATES.iter().map(|s| (s.to_string(), 0)).collect();
    for (s, n) in counts.contacts {
        contacts.insert(s, n);
    }
    let mut attempts: BTreeMap<String, i64> = AttemptOutcome::ALL
        .iter()
        .map(|o| (o.to_string(), 0))
        .collect();
    for (o, n) in counts.outcomes {
        attempts.insert(o, n);
    }
    let finished: i64 = attempts.values().sum();
    let answered = attempts
        .get(AttemptOutcome::Answered.as_str())
        .copied()
        .unwrap_or(0);
    let estimated_seconds_remaining = match (campaign.status, campaign.started_at) {
        (CampaignStatus::Running, Some(start)) if finished > 0 => {
            let elapsed = (now - start).num_milliseconds() as f64 / 1000.0;
            let rate = finished as f64 / elapsed.max(1.0);
            Some(((counts.pending + counts.in_flight) as f64 / rate).round())
        }
        (CampaignStatus::Completed | CampaignStatus::Canceled, _) => Some(0.0),
        _ => None,
    };
    CampaignStats {
        campaign_id: campaign.id,
        status: campaign.status,
        contacts_total: contacts.values().sum(),
        contacts,
        attempts,
        calls_active: counts.in_flight,
        answer_rate: (finished > 0).then(|| answered as f64 / finished as f64),
        average_duration_seconds: counts.answered_avg_ms.map(|ms| ms / 1000.0),
        estimated_seconds_remaining,
    }
}
