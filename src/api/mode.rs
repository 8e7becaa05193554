//! Test mode: the mode of a request, from the key that authenticated it, and
//! the wall between the modes.
//!
//! An `al_test_` key works in test mode: everything it creates (agents,
//! numbers, campaigns, webhook endpoints, calls) is stored with
//! `livemode = false`, and it sees only such objects; a live key never sees
//! them. Two pieces keep that true on every route:
//!
//! - [`Mode`], an extractor the list and create handlers take: lists filter
//!   on it, creates stamp it.
//! - [`guard_objects`], a middleware on every protected route: when the
//!   route names an object (`/v1/<kind>/{id}...`) of a kind that carries a
//!   mode, and that object is of the other mode, the answer is the same 404
//!   an unknown id gets, before the handler runs. So a get, change, delete
//!   or action on the other mode's object (and its sub-resources: a call's
//!   transcript, a campaign's contacts, an endpoint's deliveries, a chat
//!   session of an agent) cannot
//!   happen, and a new route under those prefixes is covered without anyone
//!   remembering to.
//!
//! Test-mode calls never reach a trunk: the call layer places them on its
//! simulated carrier (`call::simulated`).
//!
//! Must not: query more than the object's mode, or decide anything about
//! scopes (that is `auth` and `scopes`).

use axum::extract::{FromRequestParts, MatchedPath, Request, State};
use axum::http::request::Parts;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::AppState;
use super::auth::AuthedKey;
use super::error::ApiError;
use crate::store::modes::ModeTable;

/// The mode a request works in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Live,
    Test,
}

impl Mode {
    /// The mode of a key (`mode` as stored: `live` or `test`).
    pub fn of_key(key: &AuthedKey) -> Self {
        if key.mode == "test" {
            Mode::Test
        } else {
            Mode::Live
        }
    }

    /// The `livemode` column and field: `true` for live.
    pub fn livemode(self) -> bool {
        self == Mode::Live
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Mode {
    type Rejection = ApiError;

    /// Every protected route has its key (`auth::require_key` put it
    /// there); a route without one was never authenticated, and is refused
    /// rather than read as live.
    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<AuthedKey>()
            .map(Mode::of_key)
            .ok_or_else(ApiError::unauthorized)
    }
}

/// The table and the 404's noun of the object a route template names,
/// when its kind carries a mode.
fn object_kind(first: &str) -> Option<(ModeTable, &'static str)> {
    Some(match first {
        "calls" => (ModeTable::Calls, "call"),
        "agents" => (ModeTable::Agents, "agent"),
        "phone-numbers" => (ModeTable::Numbers, "phone number"),
        "campaigns" => (ModeTable::Campaigns, "campaign"),
        "webhook-endpoints" => (ModeTable::Endpoints, "webhook endpoint"),
        "events" => (ModeTable::Events, "event"),
        "chat-sessions" => (ModeTable::ChatSessions, "chat session"),
        _ => return None,
    })
}

/// The object a request names: its kind and the `{id}` of the actual path,
/// for templates `/v1/<kind>/{id}` and below.
fn named_object<'a>(template: &str, path: &'a str) -> Option<(ModeTable, &'static str, &'a str)> {
    let mut t = template.trim_start_matches('/').split('/');
    let mut p = path.trim_start_matches('/').split('/');
    if t.next()? != "v1" || p.next()? != "v1" {
        return None;
    }
    let kind = object_kind(t.next()?)?;
    p.next()?;
    if t.next()? != "{id}" {
        return None;
    }
    let id = p.next().filter(|id| !id.is_empty())?;
    Some((kind.0, kind.1, id))
}

/// Middleware on every protected route, inside `auth::require_key`: the
/// other mode's object answers 404, as an unknown id does.
pub async fn guard_objects(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let Some(key) = req.extensions().get::<AuthedKey>() else {
        return next.run(req).await;
    };
    let mode = Mode::of_key(key);
    let named = req
        .extensions()
        .get::<MatchedPath>()
        .and_then(|t| named_object(t.as_str(), req.uri().path()));
    if let Some((table, what, id)) = named {
        match state.store.livemode_of(table, id).await {
            Ok(Some(livemode)) if livemode != mode.livemode() => {
                return ApiError::not_found(what).into_response();
            }
            // Unknown ids are the handler's to answer.
            Ok(_) => {}
            Err(e) => return ApiError::internal(e).into_response(),
        }
    }
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_named_object_is_read_from_the_template() {
        assert_eq!(
            named_object("/v1/calls/{id}/transcript", "/v1/calls/call_1/transcript"),
            Some((ModeTable::Calls, "call", "call_1"))
        );
        assert_eq!(
            named_object("/v1/webhook-endpoints/{id}", "/v1/webhook-endpoints/we_9"),
            Some((ModeTable::Endpoints, "webhook endpoint", "we_9"))
        );
        assert_eq!(named_object("/v1/calls", "/v1/calls"), None);
        assert_eq!(named_object("/v1/audio/{id}", "/v1/audio/aud_1"), None);
        assert_eq!(named_object("/health", "/health"), None);
    }
}
