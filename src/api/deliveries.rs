//! The delivery log as the API shows it: each delivery of an event to an
//! endpoint with every attempt made, listed per endpoint or per event.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::AppState;
use super::error::ApiError;
use super::extract::{List, Pagination};
use crate::store::deliveries::{AttemptRecord, DeliveryRecord, DeliveryScope};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum DeliveryStatus {
    /// Waiting for its next attempt (or in flight).
    Pending,
    /// An attempt got a 2xx.
    Succeeded,
    /// Dead-lettered: out of attempts, or the endpoint answered 410. Replay
    /// puts it back to pending.
    Failed,
}

impl DeliveryStatus {
    fn as_str(self) -> &'static str {
        match self {
            DeliveryStatus::Pending => "pending",
            DeliveryStatus::Succeeded => "succeeded",
            DeliveryStatus::Failed => "failed",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum AttemptOutcome {
    Success,
    Retry,
    /// Not retried (410 Gone, or the last attempt).
    Fail,
}

/// One HTTP request made for a delivery.
#[derive(Debug, Serialize, ToSchema)]
pub struct Attempt {
    /// 1 for the first attempt of the delivery.
    pub attempt: i64,
    /// The endpoint's HTTP status; absent when nothing answered.
    pub status_code: Option<i64>,
    pub latency_ms: i64,
    pub outcome: AttemptOutcome,
    /// Why, for example `http 503` or `timeout`.
    pub reason: String,
    /// Transport error, when there was one.
    pub error: Option<String>,
    pub started_at: DateTime<Utc>,
}

/// One event to one endpoint.
#[derive(Debug, Serialize, ToSchema)]
pub struct Delivery {
    #[schema(example = "dlv_01jdw8q1m7k3x9b5n4c2v6t8r0")]
    pub id: String,
    pub event_id: String,
    pub event_type: String,
    pub endpoint_id: String,
    pub status: DeliveryStatus,
    /// When the next attempt is due, while pending.
    pub next_attempt_at: Option<DateTime<Utc>>,
    pub last_status_code: Option<i64>,
    pub last_error: Option<String>,
    /// Every attempt, oldest first.
    pub attempts: Vec<Attempt>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DeliveryQuery {
    pub status: Option<DeliveryStatus>,
    /// How many items to return, 1 to 100 (default 20).
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<i64>,
    /// How many items to skip (default 0).
    #[param(minimum = 0)]
    pub offset: Option<i64>,
}

fn status_of(s: &str, id: &str) -> Result<DeliveryStatus, ApiError> {
    match s {
        "pending" => Ok(DeliveryStatus::Pending),
        "succeeded" => Ok(DeliveryStatus::Succeeded),
        "failed" => Ok(DeliveryStatus::Failed),
        other => Err(ApiError::internal(format!(
            "delivery {id} has status {other:?}"
        ))),
    }
}

fn attempt_of(a: AttemptRecord) -> Attempt {
    let outcome = match a.outcome.as_str() {
        "success" => AttemptOutcome::Success,
        "retry" => AttemptOutcome::Retry,
        _ => AttemptOutcome::Fail,
    };
    Attempt {
        attempt: a.attempt,
        status_code: a.status_code,
        latency_ms: a.latency_ms,
        outcome,
        reason: a.reason,
        error: a.error,
        started_at: a.started_at,
    }
}

/// A page of deliveries in `scope`, each with its attempts.
pub async fn list(
    state: &AppState,
    scope: DeliveryScope<'_>,
    q: &DeliveryQuery,
) -> Result<List<Delivery>, ApiError> {
    let w = Pagination::new(q.limit, q.offset).window()?;
    let page = state
        .store
        .list_deliveries(scope, q.status.map(DeliveryStatus::as_str), w)
        .await?;
    let ids: Vec<String> = page.items.iter().map(|d| d.id.clone()).collect();
    let attempts = state.store.attempts_of(&ids).await?;
    let mut by_delivery: std::collections::HashMap<String, Vec<Attempt>> =
        std::collections::HashMap::new();
    for a in attempts {
        by_delivery
            .entry(a.delivery_id.clone())
            .or_default()
            .push(attempt_of(a));
    }
    let mut items = Vec::with_capacity(page.items.len());
    for d in page.items {
        items.push(delivery_of(d, &mut by_delivery)?);
    }
    Ok(List {
        items,
        total: page.total,
        limit: w.limit,
        offset: w.offset,
    })
}

fn delivery_of(
    d: DeliveryRecord,
    attempts: &mut std::collections::HashMap<String, Vec<Attempt>>,
) -> Result<Delivery, ApiError> {
    let status = status_of(&d.status, &d.id)?;
    Ok(Delivery {
        attempts: attempts.remove(&d.id).unwrap_or_default(),
        next_attempt_at: (status == DeliveryStatus::Pending).then_some(d.next_attempt_at),
        status,
        id: d.id,
        event_id: d.event_id,
        event_type: d.event_type,
        endpoint_id: d.endpoint_id,
        last_status_code: d.last_status_code,
        last_error: d.last_error,
        created_at: d.created_at,
        updated_at: d.updated_at,
    })
}
