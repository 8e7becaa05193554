//! A trunk as the API answers it, and its id: `trk_` and the profile name,
//! parsed and printed here only.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use utoipa::ToSchema;

/// The prefix of a trunk's API id.
const PREFIX: &str = "trk_";

/// A trunk's API id, `trk_<profile name>`; [`TrunkId::name`] is the
/// profile's name, which the SIP profiles and live state are keyed by.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TrunkId {
    name: String,
}

impl TrunkId {
    /// The id of the profile named `name`.
    pub fn of(name: &str) -> Self {
        Self {
            name: name.to_owned(),
        }
    }

    /// The profile name.
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn into_name(self) -> String {
        self.name
    }
}

/// Not `trk_` followed by a name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("must be a trunk id (trk_...)")]
pub struct NotATrunkId;

impl FromStr for TrunkId {
    type Err = NotATrunkId;

    fn from_str(s: &str) -> Result<Self, NotATrunkId> {
        match s.strip_prefix(PREFIX) {
            Some(name) if !name.is_empty() => Ok(Self::of(name)),
            _ => Err(NotATrunkId),
        }
    }
}

impl fmt::Display for TrunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{PREFIX}{}", self.name)
    }
}

impl Serialize for TrunkId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for TrunkId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Trunk {
    /// `trk_` and the profile name.
    #[schema(example = "trk_carrier-a")]
    pub id: String,
    pub name: String,
    pub registration: TrunkRegistration,
    pub health: TrunkHealth,
    /// Source networks allowed to send calls.
    pub inbound_allow: Vec<String>,
    pub outbound_proxy: Option<String>,
    pub caller_id: Option<String>,
    pub max_calls: u32,
    pub cps: u32,
    pub codecs: Vec<String>,
    pub active_calls: u32,
    /// The node that runs this trunk's registration and OPTIONS probe
    /// (the holder of its lease when several nodes share the store; this
    /// node on one node); `None` while no live node holds it.
    #[schema(example = "node-a")]
    pub owner: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TrunkRegistration {
    /// `not_configured`, `pending`, `registered` or `failing`.
    pub state: String,
    pub registrar: Option<String>,
    pub username: Option<String>,
    pub expires_at: Option<DateTime<Utc>>,
    /// SIP status of the last failed attempt, if anything answered.
    pub last_status: Option<u16>,
    pub last_error: Option<String>,
    pub next_attempt_at: Option<DateTime<Utc>>,
}

/// What the OPTIONS probes to the outbound proxy found
/// (`[outbound] ping_seconds`).
#[derive(Debug, Serialize, ToSchema)]
pub struct TrunkHealth {
    /// `not_configured`, `pending`, `up` or `down`. Up: the last probe got a
    /// final answer below 500 other than 408.
    pub state: String,
    /// Seconds between probes.
    pub ping_seconds: Option<u32>,
    /// SIP status of the last answer, if anything answered.
    pub last_status: Option<u16>,
    /// Round trip of the last probe, when up.
    pub rtt_ms: Option<u64>,
    /// Why the trunk is down.
    pub last_error: Option<String>,
    /// When it went down.
    pub down_since: Option<DateTime<Utc>>,
    pub checked_at: Option<DateTime<Utc>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_prefix_is_parsed_and_printed_once() {
        let id: TrunkId = "trk_carrier-a".parse().unwrap();
        assert_eq!(id.name(), "carrier-a");
        assert_eq!(id.to_string(), "trk_carrier-a");
        assert_eq!(TrunkId::of("carrier-a"), id);
        assert_eq!("carrier-a".parse::<TrunkId>(), Err(NotATrunkId));
        assert_eq!("trk_".parse::<TrunkId>(), Err(NotATrunkId));
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(json, "\"trk_carrier-a\"");
        assert_eq!(serde_json::from_str::<TrunkId>(&json).unwrap(), id);
    }
}
