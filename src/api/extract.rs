//! Request extractors that answer in the API's error envelope instead of
//! axum's plain-text rejections, with the path of each offending field.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::error::{ApiError, FieldError};
use crate::store::Window;

/// A JSON body: malformed JSON is 400, a body of the wrong shape is 422 with
/// the field that is wrong.
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = Bytes::from_request(req, state)
            .await
            .map_err(|e| ApiError::bad_request(format!("cannot read the body: {e}")))?;
        let value: serde_json::Value = serde_json::from_slice(&bytes)
            .map_err(|e| ApiError::bad_request(format!("malformed JSON: {e}")))?;
        // PostgreSQL text cannot hold NUL; refuse it here, for both stores
        // alike, rather than fail deep in a query.
        if let Some(field) = nul_path(&value, String::new()) {
            return Err(ApiError::validation(vec![FieldError {
                field,
                message: "must not contain NUL characters".into(),
            }]));
        }
        serde_path_to_error::deserialize(value)
            .map(ApiJson)
            .map_err(|err| {
                let path = err.path().to_string();
                ApiError::validation(vec![field_error(&path, &err.into_inner().to_string())])
            })
    }
}

/// The path of the first string (or key) holding a NUL character.
fn nul_path(value: &serde_json::Value, path: String) -> Option<String> {
    let here = || {
        if path.is_empty() {
            "body".to_string()
        } else {
            path.clone()
        }
    };
    match value {
        serde_json::Value::String(s) if s.contains('\0') => Some(here()),
        serde_json::Value::Array(items) => items
            .iter()
            .enumerate()
            .find_map(|(i, v)| nul_path(v, format!("{path}[{i}]"))),
        serde_json::Value::Object(map) => map.iter().find_map(|(k, v)| {
            if k.contains('\0') {
                Some(here())
            } else if path.is_empty() {
                nul_path(v, k.clone())
            } else {
                nul_path(v, format!("{path}.{k}"))
            }
        }),
        _ => None,
    }
}

/// A query string: a parameter of the wrong type is 400 naming it.
pub struct ApiQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let query = parts.uri.query().unwrap_or_default();
        if form_urlencoded::parse(query.as_bytes())
            .any(|(k, v)| k.contains('\0') || v.contains('\0'))
        {
            return Err(ApiError::bad_request(
                "query parameters must not contain NUL characters",
            ));
        }
        let de = serde_urlencoded::Deserializer::new(form_urlencoded::parse(query.as_bytes()));
        serde_path_to_error::deserialize(de)
            .map(ApiQuery)
            .map_err(|err| {
                let path = err.path().to_string();
                ApiError::bad_request("invalid query parameters")
                    .with_details(vec![field_error(&path, &err.into_inner().to_string())])
            })
    }
}

/// One field problem, with `field` the dotted path of the field itself.
fn field_error(path: &str, message: &str) -> FieldError {
    // serde names a missing field in its message only; the path stops at
    // the parent. (An unknown field is already the last path segment.)
    let named = message
        .strip_prefix("missing field `")
        .and_then(|rest| rest.split('`').next());
    let field = match (named, path) {
        (Some(name), "." | "") => name.to_string(),
        (Some(name), parent) => format!("{parent}.{name}"),
        (None, "." | "") => "body".to_string(),
        (None, p) => p.to_string(),
    };
    // serde's message ends with a position only meaningful to a parser.
    let message = message
        .split(" at line ")
        .next()
        .unwrap_or(message)
        .to_string();
    FieldError { field, message }
}

/// `limit` and `offset` of every listing.
#[derive(Debug, Clone, Copy, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct Pagination {
    /// How many items to return, 1 to 100 (default 20).
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<i64>,
    /// How many items to skip (default 0).
    #[param(minimum = 0)]
    pub offset: Option<i64>,
}

pub const MAX_LIMIT: i64 = 100;
const DEFAULT_LIMIT: i64 = 20;

impl Pagination {
    pub fn new(limit: Option<i64>, offset: Option<i64>) -> Self {
        Self { limit, offset }
    }

    pub fn window(&self) -> Result<Window, ApiError> {
        let limit = self.limit.unwrap_or(DEFAULT_LIMIT);
        let offset = self.offset.unwrap_or(0);
        let mut details = Vec::new();
        if !(1..=MAX_LIMIT).contains(&limit) {
            details.push(FieldError {
                field: "limit".into(),
                message: format!("must be between 1 and {MAX_LIMIT}"),
            });
        }
        if offset < 0 {
            details.push(FieldError {
                field: "offset".into(),
                message: "must not be negative".into(),
            });
        }
        if details.is_empty() {
            Ok(Window { limit, offset })
        } else {
            Err(ApiError::bad_request("invalid pagination").with_details(details))
        }
    }
}

/// A page of a listing, as every list endpoint answers.
#[derive(Debug, Serialize, ToSchema)]
pub struct List<T> {
    pub items: Vec<T>,
    pub total: i64,
    pub limit: i64,
    pub offset: i64,
}

impl<T> List<T> {
    pub fn new<R>(page: crate::store::Page<R>, w: Window, map: impl FnMut(R) -> T) -> Self {
        Self {
            items: page.items.into_iter().map(map).collect(),
            total: page.total,
            limit: w.limit,
            offset: w.offset,
        }
    }

    /// Like [`List::new`] for a conversion that can fail.
    pub fn try_new<R>(
        page: crate::store::Page<R>,
        w: Window,
        map: impl FnMut(R) -> Result<T, ApiError>,
    ) -> Result<Self, ApiError> {
        Ok(Self {
            items: page.items.into_iter().map(map).collect::<Result<_, _>>()?,
            total: page.total,
            limit: w.limit,
            offset: w.offset,
        })
    }
}
