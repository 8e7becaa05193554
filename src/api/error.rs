//! The one error type of the API and its JSON envelope:
//! `{"error": {"code", "message", "status", "details": [{"field", "message"}]}}`.
//!
//! Store and internal errors are logged with the request id and never echoed:
//! the client sees a generic message and the request id to quote.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use crate::store::StoreError;

/// The error envelope every non-2xx answer carries.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorObject,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorObject {
    /// Stable machine-readable code, for example `validation_failed`.
    pub code: String,
    /// Human-readable explanation.
    pub message: String,
    /// The HTTP status, repeated for clients that lose it.
    pub status: u16,
    /// Field-level problems, empty when the error is not about fields.
    pub details: Vec<FieldError>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct FieldError {
    /// Dotted path of the field in the request, for example `settings.greeting`.
    pub field: String,
    pub message: String,
}

#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    details: Vec<FieldError>,
    retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            details: Vec::new(),
            retry_after: None,
        }
    }

    pub fn not_found(what: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("{what} not found"),
        )
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "conflict", message)
    }

    pub fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "a valid API key is required (Authorization: Bearer <key> or X-API-Key)",
        )
    }

    pub fn rate_limited(retry_after: u64) -> Self {
        let mut e = Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            format!("rate limit exceeded, retry in {retry_after} s"),
        );
        e.retry_after = Some(retry_after);
        e
    }

    /// 422 with one problem per field.
    pub fn validation(details: Vec<FieldError>) -> Self {
        let mut e = Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
            "the request has invalid fields",
        );
        e.details = details;
        e
    }

    pub fn field(field: &str, message: impl Into<String>) -> Self {
        Self::validation(vec![FieldError {
            field: field.into(),
            message: message.into(),
        }])
    }

    /// An error the client cannot act on: logged in full (inside the request's
    /// span, which carries the request id), answered with a generic 500.
    pub fn internal(err: impl std::fmt::Display) -> Self {
        tracing::error!(error = %err, "internal error");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error; quote the X-Request-Id header when reporting it",
        )
    }

    /// Adds `Retry-After: secs` to the answer.
    pub fn retry_after(mut self, secs: u64) -> Self {
        self.retry_after = Some(secs);
        self
    }

    pub fn with_details(mut self, details: Vec<FieldError>) -> Self {
        self.details = details;
        self
    }

    pub fn message(&self) -> &str {
        &self.message
    }

    pub fn status(&self) -> StatusCode {
        self.status
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound => ApiError::not_found("resource"),
            StoreError::Conflict(_) => {
                ApiError::conflict("a resource with these unique fields already exists")
            }
            StoreError::InUse(_) => ApiError::conflict("the resource is still referenced"),
            other => ApiError::internal(other),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorObject {
                code: self.code.into(),
                message: self.message,
                status: self.status.as_u16(),
                details: self.details,
            },
        };
        let mut response = (self.status, axum::Json(body)).into_response();
        if let Some(secs) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

/// The error answers any protected route may give, for the OpenAPI document.
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)] // never built: it only documents the error answers
pub enum ErrorResponses {
    #[response(status = 400, description = "Malformed request or query")]
    BadRequest(ErrorBody),
    #[response(status = 401, description = "Missing or wrong API key")]
    Unauthorized(ErrorBody),
    #[response(status = 403, description = "The key's scope does not allow this")]
    Forbidden(ErrorBody),
    #[response(status = 404, description = "No such resource")]
    NotFound(ErrorBody),
    #[response(status = 409, description = "Conflicts with an existing resource")]
    Conflict(ErrorBody),
    #[response(status = 422, description = "Invalid fields")]
    Unprocessable(ErrorBody),
    #[response(status = 429, description = "Rate limit exceeded; see Retry-After")]
    TooManyRequests(ErrorBody),
}
