//! `/v1/nodes`: the daemons that share this store, read-only. Each row is
//! the node's own heartbeat; whether it is alive is judged here with this
//! node's `[cluster] grace_seconds`, as the survivors judge it.

use axum::Json;
use axum::extract::State;
use chrono::{DateTime, Utc};
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use super::error::{ApiError, ErrorResponses};
use super::extract::{ApiQuery, List, Pagination};
use crate::store::nodes::NodeRecord;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(list_nodes))
}

/// A daemon on this store.
#[derive(Debug, Serialize, ToSchema)]
pub struct Node {
    /// `[cluster] node_id`, or the id generated once and kept in the
    /// node's data directory.
    #[schema(example = "node-a")]
    pub id: String,
    pub version: String,
    /// Whether its last heartbeat is within the grace and it has not
    /// stopped. A dead node's calls are ended (BYE, `lost`) and its
    /// campaign contacts recovered by the others.
    pub alive: bool,
    /// Draining: it takes no new calls and ends when its calls have.
    pub draining: bool,
    /// Calls ringing or up on it, as of its last heartbeat.
    pub active_calls: i64,
    pub last_heartbeat_at: DateTime<Utc>,
    pub started_at: DateTime<Utc>,
    /// When it stopped cleanly, if it did.
    pub stopped_at: Option<DateTime<Utc>>,
    /// Its SIP and API listen addresses.
    pub sip_address: Option<String>,
    pub api_address: Option<String>,
}

fn to_api(n: NodeRecord, cutoff: DateTime<Utc>) -> Node {
    Node {
        alive: n.stopped_at.is_none() && n.heartbeat_at >= cutoff,
        id: n.id,
        version: n.version,
        draining: n.draining,
        active_calls: n.active_calls,
        last_heartbeat_at: n.heartbeat_at,
        started_at: n.started_at,
        stopped_at: n.stopped_at,
        sip_address: n.sip_address,
        api_address: n.api_address,
    }
}

/// List the nodes, by id.
#[utoipa::path(get, path = "/v1/nodes", tag = "nodes", params(Pagination),
    responses((status = 200, description = "A page of nodes", body = List<Node>), ErrorResponses))]
async fn list_nodes(
    State(state): State<AppState>,
    ApiQuery(page): ApiQuery<Pagination>,
) -> Result<Json<List<Node>>, ApiError> {
    let w = page.window()?;
    let grace = chrono::Duration::from_std(state.calls.grace()).unwrap_or_default();
    let cutoff = Utc::now() - grace;
    let all = state.store.list_nodes().await?;
    let total = i64::try_from(all.len()).unwrap_or(i64::MAX);
    let items = all
        .into_iter()
        .skip(usize::try_from(w.offset).unwrap_or(usize::MAX))
        .take(usize::try_from(w.limit).unwrap_or(0))
        .map(|n| to_api(n, cutoff))
        .collect();
    Ok(Json(List {
        items,
        total,
        limit: w.limit,
        offset: w.offset,
    }))
}
