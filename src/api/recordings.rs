//! `GET /v1/calls/{id}/recording` (the WAV file, with HTTP Range) and
//! `DELETE /v1/calls/{id}/recording`.
//!
//! Owns: the Range handling (RFC 9110 §14: one `bytes` range, 206 with
//! `Content-Range`, 416 with `Content-Range: bytes */len` when it cannot
//! be satisfied; several ranges or a malformed header are ignored and the
//! whole file is sent, as §14.2 allows).
//!
//! Must not: build a path from anything but a call id that parses as ours
//! (`call::recording::file_name`), or write files (the call layer does).

use std::io::SeekFrom;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use super::error::{ApiError, ErrorResponses};
use crate::call::recording::DeleteError;
use crate::ids;
use crate::model::RecordingStatus;

/// Bytes read from the file per chunk of the body.
const CHUNK: usize = 64 * 1024;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(get_recording, delete_recording))
}

/// What a `Range` header asks of a file of `len` bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ranged {
    /// No usable range: the whole file, 200.
    Whole,
    /// First and last byte, inclusive: 206.
    Part(u64, u64),
    /// 416.
    Unsatisfiable,
}

/// Reads a `Range` header (RFC 9110 §14.1.2: `bytes=first-last`,
/// `bytes=first-`, `bytes=-suffix`).
pub fn parse_range(value: Option<&str>, len: u64) -> Ranged {
    let Some(spec) = value.and_then(|v| v.trim().strip_prefix("bytes=")) else {
        return Ranged::Whole;
    };
    if spec.contains(',') {
        return Ranged::Whole;
    }
    let Some((first, last)) = spec.trim().split_once('-') else {
        return Ranged::Whole;
    };
    let number = |s: &str| -> Option<u64> {
        let s = s.trim();
        (!s.is_empty() && s.len() <= 19 && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse().ok())
            .flatten()
    };
    match (first.trim(), last.trim()) {
        // A suffix: the last `n` bytes.
        ("", n) => match number(n) {
            Some(0) => Ranged::Unsatisfiable,
            Some(_) if len == 0 => Ranged::Unsatisfiable,
            Some(n) => Ranged::Part(len.saturating_sub(n), len - 1),
            None => Ranged::Whole,
        },
        (first, last) => {
            let Some(first) = number(first) else {
                return Ranged::Whole;
            };
            let last = match last {
                "" => None,
                l => match number(l) {
                    Some(l) => Some(l),
                    None => return Ranged::Whole,
                },
            };
            if last.is_some_and(|l| l < first) {
                return Ranged::Whole;
            }
            if first >= len {
                return Ranged::Unsatisfiable;
            }
            Ranged::Part(first, last.map_or(len - 1, |l| l.min(len - 1)))
        }
    }
}

/// Get a call's recording.
///
/// The WAV file (16-bit PCM, 8 kHz; `dual`: the caller left, the agent
/// right; `mono`: mixed). Supports `Range: bytes=...` (206 with
/// `Content-Range`; 416 when the range is past the end). 404 when the call
/// was not recorded, its recording was deleted, or it is on another
/// node's disk; 409 while the call is still being recorded.
#[utoipa::path(get, path = "/v1/calls/{id}/recording", tag = "calls",
    params(("id" = String, Path)),
    responses(
        (status = 200, description = "The recording", content((Vec<u8> = "audio/wav"))),
        (status = 206, description = "The part asked with Range", content((Vec<u8> = "audio/wav"))),
        (status = 416, description = "The range is past the end of the file"),
        ErrorResponses))]
async fn get_recording(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let row = super::find(&id, ids::CALL, "recording", state.store.get_recording(&id)).await?;
    let recordings = state.calls.recordings();
    match row.status {
        RecordingStatus::Completed => {}
        RecordingStatus::Recording => {
            return Err(ApiError::conflict("the call is still being recorded"));
        }
        RecordingStatus::Deleted | RecordingStatus::Failed => {
            return Err(ApiError::not_found("recording"));
        }
    }
    if row.node != recordings.node() {
        return Err(ApiError::not_found("recording"));
    }
    let path = recordings
        .path(&row.call_id)
        .ok_or_else(|| ApiError::not_found("recording"))?;
    let mut file = match tokio::fs::File::open(&path).await {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(ApiError::not_found("recording"));
        }
        Err(e) => return Err(ApiError::internal(e)),
    };
    let len = file.metadata().await.map_err(ApiError::internal)?.len();
    let range = headers.get(header::RANGE).and_then(|v| v.to_str().ok());
    let (status, first, last) = match parse_range(range, len) {
        Ranged::Whole => (StatusCode::OK, 0, len.saturating_sub(1)),
        Ranged::Part(first, last) => (StatusCode::PARTIAL_CONTENT, first, last),
        Ranged::Unsatisfiable => {
            let mut response = StatusCode::RANGE_NOT_SATISFIABLE.into_response();
            if let Ok(v) = HeaderValue::from_str(&format!("bytes */{len}")) {
                response.headers_mut().insert(header::CONTENT_RANGE, v);
            }
            return Ok(response);
        }
    };
    let count = if len == 0 { 0 } else { last - first + 1 };
    file.seek(SeekFrom::Start(first))
        .await
        .map_err(ApiError::internal)?;
    let body = Body::from_stream(futures_util::stream::unfold(
        (file, count),
        |(mut file, left)| async move {
            if left == 0 {
                return None;
            }
            let n = usize::try_from(left).unwrap_or(CHUNK).min(CHUNK);
            let mut buf = vec![0u8; n];
            match file.read_exact(&mut buf).await {
                Ok(_) => Some((Ok(bytes::Bytes::from(buf)), (file, left - n as u64))),
                Err(e) => Some((Err(e), (file, 0))),
            }
        },
    ));
    let mut response = (status, body).into_response();
    let h = response.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("audio/wav"));
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(count));
    if status == StatusCode::PARTIAL_CONTENT
        && let Ok(v) = HeaderValue::from_str(&format!("bytes {first}-{last}/{len}"))
    {
        h.insert(header::CONTENT_RANGE, v);
    }
    // Built from our id only, checked above.
    if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"{}.wav\"", row.call_id)) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    Ok(response)
}

/// Delete a call's recording.
///
/// Removes the file; the call keeps a row saying it was deleted. 404 when
/// there is no recording left; 409 while the call is still being recorded.
#[utoipa::path(delete, path = "/v1/calls/{id}/recording", tag = "calls",
    params(("id" = String, Path)),
    responses((status = 204, description = "Deleted"), ErrorResponses))]
async fn delete_recording(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    if !ids::has_prefix(&id, ids::CALL) {
        return Err(ApiError::not_found("recording"));
    }
    let row = super::find(&id, ids::CALL, "recording", state.store.get_recording(&id)).await?;
    let recordings = state.calls.recordings();
    if row.node != recordings.node() {
        return Err(ApiError::conflict(
            "the recording is on another node's disk; delete it there",
        ));
    }
    match recordings.delete(&id).await {
        Ok(()) => Ok(StatusCode::NO_CONTENT),
        Err(DeleteError::NotFound) => Err(ApiError::not_found("recording")),
        Err(DeleteError::StillRecording) => {
            Err(ApiError::conflict("the call is still being recorded"))
        }
        Err(e) => Err(ApiError::internal(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_as_rfc_9110_reads_them() {
        let r = |v: &str| parse_range(Some(v), 1000);
        assert_eq!(parse_range(None, 1000), Ranged::Whole);
        assert_eq!(r("bytes=0-99"), Ranged::Part(0, 99));
        assert_eq!(r("bytes=900-"), Ranged::Part(900, 999));
        assert_eq!(r("bytes=990-5000"), Ranged::Part(990, 999));
        assert_eq!(r("bytes=-10"), Ranged::Part(990, 999));
        assert_eq!(r("bytes=-5000"), Ranged::Part(0, 999));
        assert_eq!(r("bytes=1000-"), Ranged::Unsatisfiable);
        assert_eq!(r("bytes=-0"), Ranged::Unsatisfiable);
        assert_eq!(r("bytes=5-1"), Ranged::Whole);
        assert_eq!(r("bytes=0-1,5-9"), Ranged::Whole);
        assert_eq!(r("items=0-1"), Ranged::Whole);
        assert_eq!(r("bytes=a-b"), Ranged::Whole);
        assert_eq!(r("bytes=-"), Ranged::Whole);
        assert_eq!(r("bytes=99999999999999999999999-"), Ranged::Whole);
    }
}
