//! What each API key may do: the three scopes and the one table that says,
//! for every protected route (method and path template), the least scope it
//! needs.
//!
//! The table is the only place a route's scope is decided: the
//! authentication middleware looks every request up in it, and the OpenAPI
//! document states it as `x-required-scope` on each operation. A unit test
//! walks the router and fails for a route the table does not name (or a
//! table row no route has). A route missing from the table anyway (a merge
//! that skipped the test) needs `admin`: the failure closes, not opens.
//!
//! Must not: authenticate (that is `auth`) or decide inside a handler.

use std::fmt;

use axum::http::Method;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// A key's scope. Ordered: each includes what the ones before it allow.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// `GET` routes (except keys and the audit log) and the event stream.
    Read,
    /// Also places and ends calls; manages agents, numbers, campaigns,
    /// do-not-call entries and chat sessions.
    Calls,
    /// Everything, including API keys, webhook endpoints and the audit log.
    Admin,
}

impl Scope {
    pub const ALL: [Scope; 3] = [Scope::Read, Scope::Calls, Scope::Admin];

    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Read => "read",
            Scope::Calls => "calls",
            Scope::Admin => "admin",
        }
    }

    pub fn parse(s: &str) -> Option<Scope> {
        Scope::ALL.into_iter().find(|v| v.as_str() == s)
    }

    /// Whether a key of this scope may use a route that needs `needed`.
    pub fn covers(self, needed: Scope) -> bool {
        self >= needed
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

use Scope::{Admin, Calls, Read};

/// Every protected route and the scope it needs. Routes without a key
/// (`/health`, `/ready`, `/openapi.json`, `/docs`, an open `/metrics`) are
/// not here.
pub const ROUTES: &[(&str, &str, Scope)] = &[
    ("GET", "/metrics", Read),
    // Agents and their chat sessions.
    ("GET", "/v1/agents", Read),
    ("POST", "/v1/agents", Calls),
    ("GET", "/v1/agents/{id}", Read),
    ("PATCH", "/v1/agents/{id}", Calls),
    ("DELETE", "/v1/agents/{id}", Calls),
    ("POST", "/v1/agents/{id}/chat-sessions", Calls),
    // What agents can name: voices and models.
    ("GET", "/v1/voices", Read),
    ("GET", "/v1/models", Read),
    // Analytics of the calls.
    ("GET", "/v1/analytics/calls", Read),
    ("GET", "/v1/chat-sessions/{id}", Read),
    ("POST", "/v1/chat-sessions/{id}/messages", Calls),
    // Numbers and trunks.
    ("GET", "/v1/phone-numbers", Read),
    ("POST", "/v1/phone-numbers", Calls),
    ("GET", "/v1/phone-numbers/{id}", Read),
    ("PATCH", "/v1/phone-numbers/{id}", Calls),
    ("DELETE", "/v1/phone-numbers/{id}", Calls),
    ("GET", "/v1/trunks", Read),
    ("GET", "/v1/trunks/{id}", Read),
    // The daemons sharing the store.
    ("GET", "/v1/nodes", Read),
    // Calls.
    ("GET", "/v1/calls", Read),
    ("POST", "/v1/calls", Calls),
    ("GET", "/v1/calls/{id}", Read),
    ("POST", "/v1/calls/{id}/hangup", Calls),
    ("GET", "/v1/calls/{id}/transcript", Read),
    ("GET", "/v1/calls/{id}/sip-trace", Read),
    ("GET", "/v1/calls/{id}/recording", Read),
    ("DELETE", "/v1/calls/{id}/recording", Calls),
    // Campaigns, their contacts and the do-not-call list.
    ("GET", "/v1/campaigns", Read),
    ("POST", "/v1/campaigns", Calls),
    ("GET", "/v1/campaigns/{id}", Read),
    ("PATCH", "/v1/campaigns/{id}", Calls),
    ("DELETE", "/v1/campaigns/{id}", Calls),
    ("POST", "/v1/campaigns/{id}/start", Calls),
    ("POST", "/v1/campaigns/{id}/pause", Calls),
    ("POST", "/v1/campaigns/{id}/resume", Calls),
    ("POST", "/v1/campaigns/{id}/cancel", Calls),
    ("GET", "/v1/campaigns/{id}/stats", Read),
    ("GET", "/v1/campaigns/{id}/contacts", Read),
    ("POST", "/v1/campaigns/{id}/contacts", Calls),
    ("GET", "/v1/do-not-call", Read),
    ("POST", "/v1/do-not-call", Calls),
    ("POST", "/v1/do-not-call/import", Calls),
    ("GET", "/v1/do-not-call/{id}", Read),
    ("DELETE", "/v1/do-not-call/{id}", Calls),
    // Events: reading and streaming is `read`; sending again to endpoints
    // is endpoint management.
    ("GET", "/v1/events", Read),
    ("GET", "/v1/events/{id}", Read),
    ("GET", "/v1/events/{id}/deliveries", Read),
    ("POST", "/v1/events/{id}/replay", Admin),
    // Webhook endpoints: where the daemon sends data, so `admin` to change.
    ("GET", "/v1/webhook-endpoints", Read),
    ("POST", "/v1/webhook-endpoints", Admin),
    ("GET", "/v1/webhook-endpoints/{id}", Read),
    ("PATCH", "/v1/webhook-endpoints/{id}", Admin),
    ("DELETE", "/v1/webhook-endpoints/{id}", Admin),
    ("GET", "/v1/webhook-endpoints/{id}/deliveries", Read),
    ("POST", "/v1/webhook-endpoints/{id}/disable", Admin),
    ("POST", "/v1/webhook-endpoints/{id}/enable", Admin),
    ("POST", "/v1/webhook-endpoints/{id}/replay", Admin),
    ("POST", "/v1/webhook-endpoints/{id}/rotate-secret", Admin),
    ("POST", "/v1/webhook-endpoints/{id}/test", Admin),
    // Uploaded audio prompts: part of building agents.
    ("GET", "/v1/audio", Read),
    ("POST", "/v1/audio", Calls),
    ("GET", "/v1/audio/{id}", Read),
    ("DELETE", "/v1/audio/{id}", Calls),
    // Stored credentials: reads show names and hosts, never a value;
    // storing or removing a secret is the operator's.
    ("GET", "/v1/credentials", Read),
    ("POST", "/v1/credentials", Admin),
    ("GET", "/v1/credentials/{id}", Read),
    ("DELETE", "/v1/credentials/{id}", Admin),
    // Keys and the audit log: `admin` even to read.
    ("GET", "/v1/api-keys", Admin),
    ("POST", "/v1/api-keys", Admin),
    ("DELETE", "/v1/api-keys/{id}", Admin),
    // Publishable keys start calls from any page their origins serve, so
    // they are made and listed like API keys.
    ("GET", "/v1/publishable-keys", Admin),
    ("POST", "/v1/publishable-keys", Admin),
    ("DELETE", "/v1/publishable-keys/{id}", Admin),
    ("GET", "/v1/audit-events", Admin),
];

/// The routes a publishable key (`al_pk_...`) may use, and the only ones:
/// no API key opens them and a publishable key opens nothing else (the API
/// key middleware does not know it). Stated in the OpenAPI document as
/// `x-required-scope: publishable`. The media routes of a web call take
/// the call's own token and are documented with it.
pub const PUBLISHABLE_ROUTES: &[(&str, &str)] = &[("POST", "/v1/web-calls")];

/// The scope name the document states for [`PUBLISHABLE_ROUTES`].
pub const PUBLISHABLE: &str = "publishable";

/// The media routes of one web call (WHIP, RFC 9725): opened only by the
/// call's own token (`Authorization: Bearer <token>` from `POST
/// /v1/web-calls`), stated as `x-required-scope: web-call-token`.
pub const TOKEN_ROUTES: &[(&str, &str)] = &[
    ("POST", "/v1/web-calls/{id}/whip"),
    ("DELETE", "/v1/web-calls/{id}/session"),
    ("PATCH", "/v1/web-calls/{id}/session"),
];

/// The scope name the document states for [`TOKEN_ROUTES`].
pub const WEB_CALL_TOKEN: &str = "web-call-token";

/// The scope a route needs, by method and path template (`MatchedPath`);
/// `None` for a route the table does not name. `HEAD` is answered by the
/// `GET` route, so it needs what `GET` needs.
pub fn lookup(method: &Method, template: &str) -> Option<Scope> {
    let method = if method == Method::HEAD {
        "GET"
    } else {
        method.as_str()
    };
    ROUTES
        .iter()
        .find(|(m, p, _)| *m == method && *p == template)
        .map(|(_, _, s)| *s)
}

/// What the middleware enforces: the table's scope, or `admin` for a route
/// it does not name.
pub fn required(method: &Method, template: Option<&str>) -> Scope {
    match template.and_then(|t| lookup(method, t)) {
        Some(s) => s,
        None => {
            tracing::warn!(%method, route = ?template, "route has no declared scope; admin required");
            Admin
        }
    }
}

/// States each operation's scope in the OpenAPI document
/// (`x-required-scope`) and in its description.
pub fn annotate(doc: &mut utoipa::openapi::OpenApi) {
    for (path, item) in doc.paths.paths.iter_mut() {
        let ops = [
            ("GET", &mut item.get),
            ("POST", &mut item.post),
            ("PUT", &mut item.put),
            ("PATCH", &mut item.patch),
            ("DELETE", &mut item.delete),
        ];
        for (method, op) in ops {
            let Some(op) = op.as_mut() else { continue };
            let Some(scope) = ROUTES
                .iter()
                .find(|(m, p, _)| *m == method && p == path)
                .map(|(_, _, s)| *s)
            else {
                continue;
            };
            op.extensions
                .get_or_insert_with(Default::default)
                .insert("x-required-scope".into(), scope.as_str().into());
            let note = format!("Needs a key with the `{scope}` scope (or a stronger one).");
            op.description = Some(match op.description.take() {
                Some(d) if !d.is_empty() => format!("{d}\n\n{note}"),
                _ => note,
            });
        }
    }
}

/// States [`PUBLISHABLE_ROUTES`] and [`TOKEN_ROUTES`] in the OpenAPI
/// document: the credential they need as `x-required-scope` and in the
/// description.
pub fn annotate_publishable(doc: &mut utoipa::openapi::OpenApi) {
    for (path, item) in doc.paths.paths.iter_mut() {
        let ops = [
            ("GET", &mut item.get),
            ("POST", &mut item.post),
            ("PUT", &mut item.put),
            ("PATCH", &mut item.patch),
            ("DELETE", &mut item.delete),
        ];
        for (method, op) in ops {
            let Some(op) = op.as_mut() else { continue };
            let listed =
                |routes: &[(&str, &str)]| routes.iter().any(|(m, p)| *m == method && p == path);
            let (scope, note) = if listed(PUBLISHABLE_ROUTES) {
                (
                    PUBLISHABLE,
                    "Needs a publishable key (`al_pk_...`) that lists the agent and the \
                     request's `Origin`; API keys are refused.",
                )
            } else if listed(TOKEN_ROUTES) {
                (
                    WEB_CALL_TOKEN,
                    "Needs the web call's token (from `POST /v1/web-calls`) as \
                     `Authorization: Bearer <token>`; keys are refused.",
                )
            } else {
                continue;
            };
            op.extensions
                .get_or_insert_with(Default::default)
                .insert("x-required-scope".into(), scope.into());
            op.description = Some(match op.description.take() {
                Some(d) if !d.is_empty() => format!("{d}\n\n{note}"),
                _ => note.to_string(),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    /// Every operation of the protected router, as (METHOD, template).
    fn protected_operations(metrics_open: bool) -> BTreeSet<(String, String)> {
        let (protected, _) = crate::api::routers(metrics_open);
        let doc = protected.into_openapi();
        let mut ops = BTreeSet::new();
        for (path, item) in &doc.paths.paths {
            let methods = [
                ("GET", item.get.is_some()),
                ("POST", item.post.is_some()),
                ("PUT", item.put.is_some()),
                ("PATCH", item.patch.is_some()),
                ("DELETE", item.delete.is_some()),
                ("HEAD", item.head.is_some()),
                ("OPTIONS", item.options.is_some()),
                ("TRACE", item.trace.is_some()),
            ];
            for (m, present) in methods {
                if present {
                    ops.insert((m.to_string(), path.clone()));
                }
            }
        }
        ops
    }

    #[test]
    fn every_protected_route_declares_its_scope() {
        let ops = protected_operations(false);
        let missing: Vec<_> = ops
            .iter()
            .filter(|(m, p)| lookup(&Method::from_bytes(m.as_bytes()).unwrap(), p).is_none())
            .collect();
        assert!(
            missing.is_empty(),
            "routes without a scope in api/scopes.rs ROUTES: {missing:?}"
        );
        let stale: Vec<_> = ROUTES
            .iter()
            .filter(|(m, p, _)| !ops.contains(&(m.to_string(), p.to_string())))
            .collect();
        assert!(stale.is_empty(), "ROUTES rows no route has: {stale:?}");
        let mut seen = BTreeSet::new();
        for (m, p, _) in ROUTES {
            assert!(seen.insert((m, p)), "{m} {p} is listed twice");
        }
    }

    #[test]
    fn read_covers_only_gets_and_keys_need_admin() {
        for (m, p, s) in ROUTES {
            if *m != "GET" {
                assert!(*s > Read, "{m} {p} must need more than read");
            }
            if p.starts_with("/v1/api-keys")
                || p.starts_with("/v1/audit-events")
                || (p.starts_with("/v1/webhook-endpoints") && *m != "GET")
            {
                assert_eq!(*s, Admin, "{m} {p}");
            }
        }
        assert!(Admin.covers(Calls) && Calls.covers(Read) && !Read.covers(Calls));
        assert_eq!(required(&Method::HEAD, Some("/v1/agents")), Read);
        assert_eq!(required(&Method::POST, Some("/v1/not-declared")), Admin);
        assert_eq!(required(&Method::GET, None), Admin);
    }

    #[test]
    fn the_document_states_each_scope() {
        let doc: serde_json::Value =
            serde_json::from_str(&crate::api::openapi_json(false)).unwrap();
        assert_eq!(
            doc["paths"]["/v1/api-keys"]["post"]["x-required-scope"],
            "admin"
        );
        assert_eq!(
            doc["paths"]["/v1/calls"]["post"]["x-required-scope"],
            "calls"
        );
        assert_eq!(doc["paths"]["/v1/calls"]["get"]["x-required-scope"], "read");
        assert!(doc["paths"]["/health"]["get"]["x-required-scope"].is_null());
        let open: serde_json::Value =
            serde_json::from_str(&crate::api::openapi_json(true)).unwrap();
        assert!(open["paths"]["/metrics"]["get"]["x-required-scope"].is_null());
        assert_eq!(doc["paths"]["/metrics"]["get"]["x-required-scope"], "read");
    }
}
