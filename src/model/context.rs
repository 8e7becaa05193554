//! The context of a call: what is known about whom the call is for, built
//! once per call by the call layer (`call::context`), stored on the call,
//! shown as `context` by `GET /v1/calls/{id}`, handed to the agent (its
//! templates and tool requests) and to an agent webhook.
//!
//! Must not: hold secrets (numbers' and campaigns' webhook secrets, trunk
//! credentials never enter it) or build itself; the bounds on what
//! callers control (the SIP headers) are the call layer's.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{AnsweredBy, Direction, labels};

/// Who chose the agent of a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AgentSource {
    /// The agent bound to the number (inbound) or named by the request or
    /// the campaign (outbound); no agent webhook was asked.
    Number,
    /// The agent webhook answered with an agent or overrides.
    Webhook,
    /// The agent webhook was asked and failed (timeout, error, a bad
    /// answer): the number's or campaign's agent runs, see
    /// `agent_source_error`.
    Fallback,
}

labels!(AgentSource, "agent source" {
    Number => "number",
    Webhook => "webhook",
    Fallback => "fallback",
});

/// What is known about a call and whom it is for.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct CallContext {
    #[schema(example = "call_01jdw8q1m7k3x9b5n4c2v6t8r0")]
    pub call_id: String,
    #[schema(value_type = Option<Direction>)]
    pub direction: Option<Direction>,
    /// The caller (E.164 where it parses, or `anonymous`).
    pub from: String,
    /// The called number (E.164).
    pub to: String,
    /// The display name of the caller's From header (inbound), or the
    /// `caller_name` a web call was started with, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub caller_name: Option<String>,
    /// A web call: the origin of the page that started it (as the
    /// browser sent it and the publishable key allows).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trunk_id: Option<String>,
    /// Our number on the call (`num_...`): the dialled one inbound, the
    /// caller ID outbound.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub number_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub campaign_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contact_id: Option<String>,
    /// The template variables of the call: a campaign contact's
    /// `variables`, `POST /v1/calls`'s `variables`, and those an agent
    /// webhook added (which win).
    #[serde(default)]
    #[schema(value_type = Object)]
    pub variables: BTreeMap<String, serde_json::Value>,
    /// The `metadata` given to `POST /v1/calls` (a campaign's call: the
    /// attempt's ids).
    #[serde(default)]
    #[schema(value_type = Object)]
    pub metadata: serde_json::Value,
    /// Inbound: the INVITE's headers whose names match
    /// `[calls] context_headers` (default `X-*`), bounded in count and
    /// length.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub sip_headers: BTreeMap<String, String>,
    /// The answering-machine verdict, once known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub answered_by: Option<AnsweredBy>,
    /// A warm transfer's consult call: the caller's call it was placed
    /// for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_call_id: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::assert_serde_matches;

    #[test]
    fn serde_and_sql_spell_the_sources_alike() {
        assert_serde_matches(AgentSource::ALL, AgentSource::as_str);
    }
}
