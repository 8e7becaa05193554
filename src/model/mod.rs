//! The public representation of agentline's objects and the vocabulary
//! they share: what `GET /v1/calls/{id}`, `/v1/campaigns/{id}` and
//! `/v1/trunks/{id}` answer, what the webhooks carry, and the typed
//! statuses, directions and event types that the store, the event bus, the
//! webhooks and the API all use.
//!
//! Each label (`in-progress`, `call.answered`, `no_answer`...) is spelled
//! once, here: serde, the SQL columns (through [`sqlx`]) and the logs all
//! take it from the type, so the wire format and the stored values are the
//! same strings as before these types existed.
//!
//! Behaviour stays with the layer that owns it (`campaign` compiles a
//! [`campaign::Schedule`] and applies a [`campaign::RetryPolicy`]; the store
//! turns its rows into these objects).
//!
//! Must not: import `store`, `api`, `webhook`, `call` or `campaign` (they
//! all import this), or do any IO.

pub mod call;
pub mod campaign;
pub mod context;
pub mod event;
pub mod recording;
pub mod trunk;

pub use call::{AnsweredBy, Call, CallAttempt, CallStatus, Direction};
pub use campaign::{AttemptOutcome, Campaign, CampaignStatus};
pub use context::{AgentSource, CallContext};
pub use event::EventType;
pub use recording::{Recording, RecordingChannels, RecordingSettings, RecordingStatus};
pub use trunk::TrunkId;

/// A label that names no value of the type it was read as.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {kind} {label:?}")]
pub struct UnknownLabel {
    pub kind: &'static str,
    pub label: String,
}

/// Gives a fieldless enum its labels: `ALL`, `as_str`, `FromStr`,
/// `Display`, and reading from a TEXT column with sqlx (writes bind
/// `as_str()`). Serde derives stay on the enum, for the OpenAPI schema; a
/// test per enum checks that both spell each value the same.
macro_rules! labels {
    ($ty:ident, $kind:literal { $($variant:ident => $text:literal),+ $(,)? }) => {
        impl $ty {
            pub const ALL: &'static [$ty] = &[$($ty::$variant),+];

            pub fn as_str(self) -> &'static str {
                match self {
                    $($ty::$variant => $text),+
                }
            }
        }

        impl std::str::FromStr for $ty {
            type Err = $crate::model::UnknownLabel;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::ALL
                    .iter()
                    .copied()
                    .find(|v| v.as_str() == s)
                    .ok_or_else(|| $crate::model::UnknownLabel {
                        kind: $kind,
                        label: s.to_owned(),
                    })
            }
        }

        impl std::fmt::Display for $ty {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl<DB: sqlx::Database> sqlx::Type<DB> for $ty
        where
            String: sqlx::Type<DB>,
        {
            fn type_info() -> DB::TypeInfo {
                <String as sqlx::Type<DB>>::type_info()
            }

            fn compatible(ty: &DB::TypeInfo) -> bool {
                <String as sqlx::Type<DB>>::compatible(ty)
            }
        }

        impl<'r, DB: sqlx::Database> sqlx::Decode<'r, DB> for $ty
        where
            String: sqlx::Decode<'r, DB>,
        {
            fn decode(
                value: <DB as sqlx::Database>::ValueRef<'r>,
            ) -> Result<Self, sqlx::error::BoxDynError> {
                let text = <String as sqlx::Decode<'r, DB>>::decode(value)?;
                Ok(text.parse::<$ty>()?)
            }
        }
    };
}
pub(crate) use labels;

/// Checks that serde writes and reads every value of a [`labels`] enum as
/// its label.
#[cfg(test)]
pub(crate) fn assert_serde_matches<T>(all: &[T], as_str: fn(T) -> &'static str)
where
    T: Copy + std::fmt::Debug + PartialEq + serde::Serialize + serde::de::DeserializeOwned,
{
    for &v in all {
        let json = serde_json::to_value(v).unwrap();
        assert_eq!(json, serde_json::Value::String(as_str(v).into()), "{v:?}");
        assert_eq!(serde_json::from_value::<T>(json).unwrap(), v);
    }
}
