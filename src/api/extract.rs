//! Request extractors that answer in the API's error envelope instead of
//! axum's plain-text rejections, with the path of each offending field;
//! the one JSON Merge Patch (RFC 7396) every `PATCH` route applies.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, OptionalFromRequest, Request};
use axum::http::request::Parts;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;
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
        Self::from_bytes(&bytes)
    }
}

/// An optional JSON body: none at all (or only whitespace) is `None`; a
/// body that is there is held to [`ApiJson`]'s rules, never axum's
/// plain-text rejection.
impl<S: Send + Sync, T: DeserializeOwned> OptionalFromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Option<Self>, Self::Rejection> {
        let bytes = Bytes::from_request(req, state)
            .await
            .map_err(|e| ApiError::bad_request(format!("cannot read the body: {e}")))?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(None);
        }
        Self::from_bytes(&bytes).map(Some)
    }
}

impl<T: DeserializeOwned> ApiJson<T> {
    fn from_bytes(bytes: &[u8]) -> Result<Self, ApiError> {
        let value: serde_json::Value = serde_json::from_slice(bytes)
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
fn nul_path(value: &Value, path: String) -> Option<String> {
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

/// A query string: a parameter of the wrong type is 400 naming it; a
/// parameter the route does not document is 422 naming it (a misspelt
/// `?page=` would otherwise be silently ignored and answer the first page).
/// The names known are the ones the OpenAPI document lists for `T`.
pub struct ApiQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + IntoParams> FromRequestParts<S> for ApiQuery<T> {
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
        let unknown = unknown_parameters::<T>(query);
        if !unknown.is_empty() {
            return Err(ApiError::validation(
                unknown
                    .into_iter()
                    .map(|field| FieldError {
                        field,
                        message: "unknown query parameter".into(),
                    })
                    .collect(),
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

/// The names in `query` that `T` does not document, each once, in order.
fn unknown_parameters<T: IntoParams>(query: &str) -> Vec<String> {
    let known: Vec<String> = T::into_params(|| Some(utoipa::openapi::path::ParameterIn::Query))
        .into_iter()
        .map(|p| p.name)
        .collect();
    let mut unknown: Vec<String> = Vec::new();
    for (name, _) in form_urlencoded::parse(query.as_bytes()) {
        if !known.iter().any(|k| *k == name) && !unknown.iter().any(|u| *u == name) {
            // Bounded: at most 20 names echoed, each at most 100
            // characters long.
            unknown.push(name.chars().take(100).collect());
            if unknown.len() == 20 {
                break;
            }
        }
    }
    unknown
}

/// RFC 7396 §2, `MergePatch(Target, Patch)`: an object patch merges into
/// the target key by key, `null` removes a key, anything else replaces.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(serde_json::Map::new());
    }
    if let Value::Object(fields) = target {
        for (key, value) in patch {
            if value.is_null() {
                fields.remove(key);
            } else {
                merge_patch(fields.entry(key.clone()).or_insert(Value::Null), value);
            }
        }
    }
}

/// A `PATCH` body applied to a resource: `current` is the resource as the
/// API shows it; its writable fields (those of the create body `C`) are
/// merged with `patch` by JSON Merge Patch (RFC 7396), so a field left out
/// keeps its value and `null` clears it (an optional field falls back to
/// its default; a required one is a 422 naming it), and the result is read
/// as a create body, answering 422 with the field's path when it does not
/// fit. Every `PATCH` route goes through here, so they all follow the RFC.
pub fn patched<C>(current: &impl Serialize, patch: &Value) -> Result<C, ApiError>
where
    C: DeserializeOwned + utoipa::PartialSchema,
{
    if !patch.is_object() {
        return Err(ApiError::validation(vec![FieldError {
            field: "body".into(),
            message: "must be a JSON object (RFC 7396 merge patch)".into(),
        }]));
    }
    let writable = writable_fields::<C>();
    let mut target = match serde_json::to_value(current).map_err(ApiError::internal)? {
        Value::Object(fields) => Value::Object(
            fields
                .into_iter()
                .filter(|(k, _)| writable.contains(k))
                .collect(),
        ),
        _ => return Err(ApiError::internal("a resource that is not an object")),
    };
    merge_patch(&mut target, patch);
    serde_path_to_error::deserialize(target).map_err(|err| {
        let path = err.path().to_string();
        ApiError::validation(vec![field_error(&path, &err.into_inner().to_string())])
    })
}

/// What a merge patch says of one optional string field: absent (`None`,
/// keep it), `null` (`Some(None)`, clear it) or a new value. For fields
/// whose change has a side effect beyond the value (a new secret).
pub fn patched_field(patch: &Value, field: &str) -> Result<Option<Option<String>>, ApiError> {
    match patch.get(field) {
        None => Ok(None),
        Some(Value::Null) => Ok(Some(None)),
        Some(Value::String(v)) => Ok(Some(Some(v.clone()))),
        Some(_) => Err(ApiError::validation(vec![FieldError {
            field: field.into(),
            message: "must be a URL or null".into(),
        }])),
    }
}

/// The property names of `C`'s schema: the fields a create body takes.
fn writable_fields<C: utoipa::PartialSchema>() -> Vec<String> {
    use utoipa::openapi::{RefOr, Schema};
    match C::schema() {
        RefOr::T(Schema::Object(o)) => o.properties.keys().cloned().collect(),
        _ => Vec::new(),
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

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// RFC 7396 Appendix A, every example.
    #[test]
    fn merge_patch_follows_the_rfc_examples() {
        let cases = [
            (json!({"a": "b"}), json!({"a": "c"}), json!({"a": "c"})),
            (
                json!({"a": "b"}),
                json!({"b": "c"}),
                json!({"a": "b", "b": "c"}),
            ),
            (json!({"a": "b"}), json!({"a": null}), json!({})),
            (
                json!({"a": "b", "b": "c"}),
                json!({"a": null}),
                json!({"b": "c"}),
            ),
            (json!({"a": ["b"]}), json!({"a": "c"}), json!({"a": "c"})),
            (json!({"a": "c"}), json!({"a": ["b"]}), json!({"a": ["b"]})),
            (
                json!({"a": {"b": "c"}}),
                json!({"a": {"b": "d", "c": null}}),
                json!({"a": {"b": "d"}}),
            ),
            (
                json!({"a": [{"b": "c"}]}),
                json!({"a": [1]}),
                json!({"a": [1]}),
            ),
            (json!(["a", "b"]), json!(["c", "d"]), json!(["c", "d"])),
            (json!({"a": "b"}), json!(["c"]), json!(["c"])),
            (json!({"a": "foo"}), json!(null), json!(null)),
            (json!({"a": "foo"}), json!("bar"), json!("bar")),
            (
                json!({"e": null}),
                json!({"a": 1}),
                json!({"e": null, "a": 1}),
            ),
            (
                json!([1, 2]),
                json!({"a": "b", "c": null}),
                json!({"a": "b"}),
            ),
            (
                json!({}),
                json!({"a": {"bb": {"ccc": null}}}),
                json!({"a": {"bb": {}}}),
            ),
        ];
        for (target, patch, want) in cases {
            let mut got = target.clone();
            merge_patch(&mut got, &patch);
            assert_eq!(got, want, "{target} + {patch}");
        }
    }

    #[derive(Debug, Serialize)]
    struct Shown {
        id: &'static str,
        name: String,
        note: Option<String>,
    }

    #[derive(Debug, Deserialize, utoipa::ToSchema)]
    #[serde(deny_unknown_fields)]
    struct Create {
        name: String,
        note: Option<String>,
    }

    #[test]
    fn a_patch_keeps_clears_and_names_what_does_not_fit() {
        let shown = Shown {
            id: "x_1",
            name: "a".into(),
            note: Some("n".into()),
        };
        let kept: Create = patched(&shown, &json!({})).unwrap();
        assert_eq!((kept.name.as_str(), kept.note.as_deref()), ("a", Some("n")));
        let cleared: Create = patched(&shown, &json!({"note": null})).unwrap();
        assert_eq!(cleared.note, None);
        let err = patched::<Create>(&shown, &json!({"name": null})).unwrap_err();
        assert_eq!(err.status(), axum::http::StatusCode::UNPROCESSABLE_ENTITY);
        let err = patched::<Create>(&shown, &json!({"id": "x_2"})).unwrap_err();
        assert_eq!(err.status(), axum::http::StatusCode::UNPROCESSABLE_ENTITY);
        assert!(patched::<Create>(&shown, &json!([1])).is_err());
    }

    #[derive(Debug, Deserialize, IntoParams)]
    #[into_params(parameter_in = Query)]
    #[allow(dead_code)]
    struct Q {
        limit: Option<i64>,
        status: Option<String>,
    }

    #[test]
    fn unknown_query_parameters_are_named_once() {
        assert!(unknown_parameters::<Q>("limit=1&status=x").is_empty());
        assert_eq!(
            unknown_parameters::<Q>("page=2&limit=1&page=3&x%20y=1"),
            vec!["page".to_string(), "x y".to_string()]
        );
    }
}
