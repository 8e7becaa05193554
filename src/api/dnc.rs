//! `/v1/do-not-call`: the global do-not-call list, checked before every
//! campaign dial. Numbers are E.164, normalized; adding one also blocks the
//! campaign contacts waiting to be called at it.

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use super::campaign_contacts::{ImportReport, MAX_CSV_ROWS};
use super::error::{ApiError, ErrorResponses, FieldError};
use super::extract::{ApiJson, ApiQuery, List, Pagination};
use crate::campaign::csv::{CsvStream, Record, RowError};
use crate::store::dnc::DncRecord;
use crate::{e164, ids};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_dnc, add_dnc))
        .routes(routes!(get_dnc, delete_dnc))
        .routes(routes!(import_dnc))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DoNotCall {
    #[schema(example = "dnc_01jdw8q1m7k3x9b5n4c2v6t8r0")]
    pub id: String,
    pub number: String,
    pub reason: Option<String>,
    /// `api`, `import` or `opt_out` (asked during a call).
    pub source: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DoNotCallCreate {
    #[schema(example = "+1 415 555 2671")]
    pub number: String,
    pub reason: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DncQuery {
    /// Only this number (any formatting).
    pub number: Option<String>,
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<i64>,
    #[param(minimum = 0)]
    pub offset: Option<i64>,
}

fn to_api(r: DncRecord) -> DoNotCall {
    DoNotCall {
        id: r.id,
        number: r.number,
        reason: r.reason,
        source: r.source,
        created_at: r.created_at,
        updated_at: r.updated_at,
    }
}

/// Add a number (201), or return it when it is already listed (200).
#[utoipa::path(post, path = "/v1/do-not-call", tag = "do-not-call", request_body = DoNotCallCreate,
    responses((status = 201, description = "Added", body = DoNotCall),
        (status = 200, description = "Already listed", body = DoNotCall), ErrorResponses))]
async fn add_dnc(
    State(state): State<AppState>,
    ApiJson(b): ApiJson<DoNotCallCreate>,
) -> Result<(StatusCode, Json<DoNotCall>), ApiError> {
    let mut details = Vec::new();
    let number = e164::normalize(&b.number).unwrap_or_else(|message| {
        details.push(FieldError {
            field: "number".into(),
            message,
        });
        String::new()
    });
    if b.reason.as_ref().is_some_and(|r| r.chars().count() > 500) {
        details.push(FieldError {
            field: "reason".into(),
            message: "must be at most 500 characters".into(),
        });
    }
    if !details.is_empty() {
        return Err(ApiError::validation(details));
    }
    let added = state
        .store
        .add_dnc(std::slice::from_ref(&number), b.reason.as_deref(), "api")
        .await?;
    let record = state.store.find_dnc(&number).await?;
    let status = if added == 1 {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(to_api(record))))
}

/// List the do-not-call numbers, newest first.
#[utoipa::path(get, path = "/v1/do-not-call", tag = "do-not-call", params(DncQuery),
    responses((status = 200, description = "A page of numbers", body = List<DoNotCall>), ErrorResponses))]
async fn list_dnc(
    State(state): State<AppState>,
    ApiQuery(q): ApiQuery<DncQuery>,
) -> Result<Json<List<DoNotCall>>, ApiError> {
    let w = Pagination::new(q.limit, q.offset).window()?;
    let number = match q.number.as_deref() {
        Some(n) => Some(e164::normalize(n).map_err(|message| {
            ApiError::bad_request("invalid query parameters").with_details(vec![FieldError {
                field: "number".into(),
                message,
            }])
        })?),
        None => None,
    };
    let page = state.store.list_dnc(number.as_deref(), w).await?;
    Ok(Json(List::new(page, w, to_api)))
}

async fn fetch(state: &AppState, id: &str) -> Result<DncRecord, ApiError> {
    super::find(id, ids::DNC, "do-not-call entry", state.store.get_dnc(id)).await
}

/// Get a do-not-call entry.
#[utoipa::path(get, path = "/v1/do-not-call/{id}", tag = "do-not-call", params(("id" = String, Path)),
    responses((status = 200, description = "The entry", body = DoNotCall), ErrorResponses))]
async fn get_dnc(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<DoNotCall>, ApiError> {
    Ok(Json(to_api(fetch(&state, &id).await?)))
}

/// Remove a number from the list. Contacts it already blocked stay blocked.
#[utoipa::path(delete, path = "/v1/do-not-call/{id}", tag = "do-not-call", params(("id" = String, Path)),
    responses((status = 204, description = "Removed"), ErrorResponses))]
async fn delete_dnc(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    fetch(&state, &id).await?;
    state.store.delete_dnc(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Import numbers from a CSV file (`text/csv`, streamed) with a `number`
/// column and an optional `reason` column. Bad rows are reported by line.
#[utoipa::path(post, path = "/v1/do-not-call/import", tag = "do-not-call",
    request_body(content((String = "text/csv", example = "number,reason\n+14155552671,asked\n"))),
    responses((status = 200, description = "What was imported", body = ImportReport), ErrorResponses))]
async fn import_dnc(
    State(state): State<AppState>,
    req: Request,
) -> Result<Json<ImportReport>, ApiError> {
    import(&state, req.into_body()).await.map(Json)
}

async fn import(state: &AppState, body: Body) -> Result<ImportReport, ApiError> {
    let mut stream = body.into_data_stream();
    let mut parser = CsvStream::new();
    let mut report = ImportReport::default();
    let mut column: Option<usize> = None;
    let mut header_error = false;
    let mut numbers: Vec<String> = Vec::new();
    let mut ended = false;
    // Bounded by the body and the row cap.
    while !ended && !header_error && report.received < MAX_CSV_ROWS {
        let chunk = stream.next().await;
        let mut sink = |line: u64, record: Record<'_>| {
            let Some(col) = column else {
                match record.ok().and_then(|h| {
                    h.iter()
                        .position(|c| c.trim().eq_ignore_ascii_case("number"))
                }) {
                    Some(c) => column = Some(c),
                    None => header_error = true,
                }
                return;
            };
            if header_error || report.received >= MAX_CSV_ROWS {
                return;
            }
            report.received += 1;
            let result = record
                .map_err(str::to_string)
                .and_then(|f| e164::normalize(f.get(col).copied().unwrap_or("")));
            match result {
                Ok(n) => numbers.push(n),
                Err(message) => report.reject(RowError {
                    line,
                    field: "number".into(),
                    message,
                }),
            }
        };
        match chunk {
            Some(Ok(bytes)) => parser.feed(&bytes, &mut sink),
            Some(Err(e)) => {
                return Err(ApiError::bad_request(format!("cannot read the body: {e}")));
            }
            None => {
                parser.finish(&mut sink);
                ended = true;
            }
        }
        if numbers.len() >= 5000 {
            report.inserted += state.store.add_dnc(&numbers, None, "import").await?;
            report.duplicates += numbers.len() as u64;
            numbers.clear();
        }
    }
    if header_error || column.is_none() {
        return Err(ApiError::field(
            "body",
            "the header row needs a `number` column",
        ));
    }
    report.inserted += state.store.add_dnc(&numbers, None, "import").await?;
    report.duplicates += numbers.len() as u64;
    report.duplicates -= report.inserted;
    Ok(report)
}
