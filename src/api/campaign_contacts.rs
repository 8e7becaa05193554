//! `/v1/campaigns/{id}/contacts`: a campaign's contacts, added as a JSON
//! list or a streamed CSV upload (normalized to E.164, deduplicated, bad
//! rows reported by line) and listed by state.
//!
//! Must not: change a campaign's status; that is `campaigns`' actions.

use axum::Json;
use axum::body::Body;
use axum::extract::{FromRequest, Path, Request, State};
use axum::http::{StatusCode, header};
use chrono::{DateTime, Utc};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use super::campaigns::{fetch, to_api};
use super::error::{ApiError, ErrorResponses, FieldError};
use super::extract::{ApiJson, ApiQuery, List, Pagination};
use crate::campaign::CONTACT_STATES;
use crate::campaign::csv::{ContactColumns, CsvStream, Record, RowError};
use crate::model::CampaignStatus;
use crate::store::contacts::{ContactRecord, NewContact};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(list_contacts, add_contacts))
}

/// Rows per upload at most; blank rows count, so a body of blank lines
/// ends at the cap too. The bytes of an upload are capped by
/// `api.max_csv_bytes`.
pub const MAX_CSV_ROWS: u64 = 1_000_000;
/// Contacts per JSON request at most.
const MAX_JSON_CONTACTS: usize = 1000;
/// Row errors listed in a report at most (all are counted).
const MAX_LISTED_ERRORS: usize = 1000;
/// Contacts written per transaction during an upload.
const IMPORT_BATCH: usize = 5000;

#[derive(Debug, Serialize, ToSchema)]
pub struct Contact {
    #[schema(example = "cnt_01jdw8q1m7k3x9b5n4c2v6t8r0")]
    pub id: String,
    pub campaign_id: String,
    pub number: String,
    /// The zone the contact is called in, when known (else the campaign's).
    pub timezone: Option<String>,
    #[schema(value_type = Object)]
    pub variables: serde_json::Value,
    /// `pending`, `dialing`, `completed`, `exhausted`, `opted_out`, `dnc`,
    /// `expired` or `canceled`.
    pub state: String,
    pub attempts: i64,
    pub next_attempt_at: Option<DateTime<Utc>>,
    pub last_outcome: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ContactInput {
    #[schema(example = "+1 415 555 2671")]
    pub number: String,
    /// IANA zone; derived from the number when left out.
    pub timezone: Option<String>,
    /// Strings, numbers or booleans passed to the agent.
    #[schema(value_type = Option<Object>)]
    pub variables: Option<serde_json::Map<String, serde_json::Value>>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ContactsAdd {
    /// 1 to 1000 contacts; larger lists go as a CSV upload.
    pub contacts: Vec<ContactInput>,
}

/// One rejected row.
#[derive(Debug, Serialize, ToSchema)]
pub struct ImportError {
    /// Line in the CSV file (1 is the header), or the position in
    /// `contacts` (from 0) for JSON.
    pub line: u64,
    pub field: String,
    pub message: String,
}

/// What an import did. Good rows are kept even when others are rejected.
#[derive(Debug, Default, Serialize, ToSchema)]
pub struct ImportReport {
    /// Rows read (the header excluded).
    pub received: u64,
    /// New contacts.
    pub inserted: u64,
    /// Valid rows whose number the campaign already had.
    pub duplicates: u64,
    /// Rows rejected; the first 1000 are listed in `errors`.
    pub rejected: u64,
    /// Contacts set aside because their number is on the do-not-call list.
    pub blocked: u64,
    pub errors: Vec<ImportError>,
}

impl ImportReport {
    pub(crate) fn reject(&mut self, e: RowError) {
        self.rejected += 1;
        if self.errors.len() < MAX_LISTED_ERRORS {
            self.errors.push(ImportError {
                line: e.line,
                field: e.field,
                message: e.message,
            });
        }
    }
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ContactQuery {
    /// Only contacts in this state.
    pub state: Option<String>,
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<i64>,
    #[param(minimum = 0)]
    pub offset: Option<i64>,
}

fn contact_to_api(r: ContactRecord) -> Contact {
    Contact {
        variables: serde_json::from_str(&r.variables)
            .unwrap_or(serde_json::Value::Object(Default::default())),
        id: r.id,
        campaign_id: r.campaign_id,
        number: r.number,
        timezone: r.timezone,
        state: r.state,
        attempts: r.attempts,
        next_attempt_at: r.next_attempt_at,
        last_outcome: r.last_outcome,
        created_at: r.created_at,
        updated_at: r.updated_at,
    }
}

/// Add contacts: a JSON list, or a CSV file (`Content-Type: text/csv`,
/// streamed, up to a million rows) with a `number` column, an optional
/// `timezone` column and one column per variable. Numbers are normalized to
/// E.164 and deduplicated within the campaign; bad rows are reported by line
/// and the good ones kept.
#[utoipa::path(post, path = "/v1/campaigns/{id}/contacts", tag = "campaigns", params(("id" = String, Path)),
    request_body(content(
        (ContactsAdd = "application/json"),
        (String = "text/csv", example = "number,first_name\n+14155552671,Ada\n"))),
    responses((status = 200, description = "What was imported", body = ImportReport),
        (status = 413, description = "A CSV upload larger than api.max_csv_bytes", body = super::error::ErrorBody),
        ErrorResponses))]
async fn add_contacts(
    State(state): State<AppState>,
    Path(id): Path<String>,
    req: Request,
) -> Result<Json<ImportReport>, ApiError> {
    let campaign = to_api(fetch(&state, &id).await?)?;
    if matches!(
        campaign.status,
        CampaignStatus::Completed | CampaignStatus::Canceled
    ) {
        return Err(ApiError::conflict(format!(
            "a {} campaign takes no contacts",
            campaign.status.as_str()
        )));
    }
    let content_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    let mut report = if content_type.starts_with("text/csv") {
        let max_bytes = state.api.max_csv_bytes;
        // Refused before a row is read when the client says it is too big.
        let declared = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > max_bytes) {
            return Err(too_large(max_bytes));
        }
        import_csv(&state, &id, req.into_body(), max_bytes).await?
    } else if content_type.starts_with("application/json") {
        let ApiJson(body) = ApiJson::<ContactsAdd>::from_request(req, &state).await?;
        import_json(&state, &id, body).await?
    } else {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "send application/json or text/csv",
        ));
    };
    report.blocked = state.store.block_dnc_contacts(Some(&id)).await?;
    Ok(Json(report))
}

async fn import_json(
    state: &AppState,
    campaign: &str,
    body: ContactsAdd,
) -> Result<ImportReport, ApiError> {
    if body.contacts.is_empty() || body.contacts.len() > MAX_JSON_CONTACTS {
        return Err(ApiError::field(
            "contacts",
            format!("must hold 1 to {MAX_JSON_CONTACTS} contacts"),
        ));
    }
    let mut report = ImportReport::default();
    let mut batch = Vec::new();
    for (i, c) in body.contacts.into_iter().enumerate() {
        report.received += 1;
        let line = i as u64;
        let variables =
            serde_json::to_string(&c.variables.unwrap_or_default()).map_err(ApiError::internal)?;
        match crate::campaign::csv::contact(line, &c.number, c.timezone.as_deref(), variables) {
            Ok(c) => batch.push(c),
            Err(mut e) => {
                e.field = format!("contacts[{i}].{}", e.field);
                report.reject(e);
            }
        }
    }
    flush(state, campaign, &mut batch, &mut report).await?;
    Ok(report)
}

async fn flush(
    state: &AppState,
    campaign: &str,
    batch: &mut Vec<NewContact>,
    report: &mut ImportReport,
) -> Result<(), ApiError> {
    if batch.is_empty() {
        return Ok(());
    }
    let inserted = state.store.insert_contacts(campaign, batch).await?;
    report.inserted += inserted;
    report.duplicates += batch.len() as u64 - inserted;
    batch.clear();
    Ok(())
}

fn too_large(max_bytes: u64) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
        format!("a CSV upload is at most {max_bytes} bytes (api.max_csv_bytes)"),
    )
}

async fn import_csv(
    state: &AppState,
    campaign: &str,
    body: Body,
    max_bytes: u64,
) -> Result<ImportReport, ApiError> {
    let mut stream = body.into_data_stream();
    // Line 1 is the header.
    let mut parser = CsvStream::with_last_line(MAX_CSV_ROWS + 1);
    let mut report = ImportReport::default();
    let mut columns: Option<ContactColumns> = None;
    let mut header_error: Option<String> = None;
    let mut batch: Vec<NewContact> = Vec::with_capacity(IMPORT_BATCH);
    let mut truncated = None;
    let mut ended = false;
    let mut bytes_read: u64 = 0;
    // Bounded by the body: each turn consumes one chunk until the stream
    // ends or the row cap is reached.
    while !ended && truncated.is_none() && header_error.is_none() {
        let chunk = stream.next().await;
        let mut sink = |line: u64, record: Record<'_>| {
            if header_error.is_some() || truncated.is_some() {
                return;
            }
            let Some(cols) = &columns else {
                match record
                    .map_err(str::to_string)
                    .and_then(|h| ContactColumns::from_header(&h))
                {
                    Ok(c) => columns = Some(c),
                    Err(e) => header_error = Some(e),
                }
                return;
            };
            report.received += 1;
            let row = match record {
                Ok(fields) if fields.iter().all(|f| f.trim().is_empty()) => {
                    report.received -= 1;
                    return;
                }
                Ok(fields) => cols.contact(line, &fields),
                Err(message) => Err(RowError {
                    line,
                    field: "row".into(),
                    message: message.into(),
                }),
            };
            match row {
                Ok(c) => batch.push(c),
                Err(e) => report.reject(e),
            }
        };
        match chunk {
            Some(Ok(bytes)) => {
                bytes_read = bytes_read.saturating_add(bytes.len() as u64);
                if bytes_read > max_bytes {
                    // Rows already written stay (as with the row cap); the
                    // partial chunk is not read.
                    flush(state, campaign, &mut batch, &mut report).await?;
                    report.reject(RowError {
                        line: parser.line(),
                        field: "body".into(),
                        message: format!(
                            "a CSV upload is at most {max_bytes} bytes (api.max_csv_bytes); \
                             the rest was not read"
                        ),
                    });
                    return Ok(report);
                }
                parser.feed(&bytes, &mut sink);
            }
            Some(Err(e)) => {
                return Err(ApiError::bad_request(format!("cannot read the body: {e}")));
            }
            None => {
                parser.finish(&mut sink);
                ended = true;
            }
        }
        if truncated.is_none() {
            truncated = parser.capped();
        }
        if batch.len() >= IMPORT_BATCH {
            flush(state, campaign, &mut batch, &mut report).await?;
        }
    }
    if let Some(message) = header_error {
        return Err(ApiError::field("body", message));
    }
    if columns.is_none() {
        return Err(ApiError::field(
            "body",
            "the file is empty; it needs a header row",
        ));
    }
    flush(state, campaign, &mut batch, &mut report).await?;
    if let Some(line) = truncated {
        report.reject(RowError {
            line,
            field: "body".into(),
            message: format!(
                "at most {MAX_CSV_ROWS} rows per upload; this row and the rest were not read"
            ),
        });
    }
    Ok(report)
}

/// List a campaign's contacts in the order they were added.
#[utoipa::path(get, path = "/v1/campaigns/{id}/contacts", tag = "campaigns",
    params(("id" = String, Path), ContactQuery),
    responses((status = 200, description = "A page of contacts", body = List<Contact>), ErrorResponses))]
async fn list_contacts(
    State(state): State<AppState>,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<ContactQuery>,
) -> Result<Json<List<Contact>>, ApiError> {
    let w = Pagination::new(q.limit, q.offset).window()?;
    if let Some(s) = &q.state
        && !CONTACT_STATES.contains(&s.as_str())
    {
        return Err(
            ApiError::bad_request("invalid query parameters").with_details(vec![FieldError {
                field: "state".into(),
                message: format!("must be one of {}", CONTACT_STATES.join(", ")),
            }]),
        );
    }
    fetch(&state, &id).await?;
    let page = state
        .store
        .list_contacts(&id, q.state.as_deref(), w)
        .await?;
    Ok(Json(List::new(page, w, contact_to_api)))
}
