//! A call's recording: the settings an agent, a number, a campaign or a
//! call may give (`"recording": {"enabled": true, "channels": "dual"}`),
//! merged most specific first, and the recording as the API shows it and
//! `recording.completed` carries it.
//!
//! Must not: do IO or know where files live (`call::recording` writes
//! them, the store keeps their rows).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::labels;

/// How the two sides are laid out in the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RecordingChannels {
    /// Stereo: the caller left, the agent right, time-aligned.
    #[default]
    Dual,
    /// Both sides mixed into one channel.
    Mono,
}

labels!(RecordingChannels, "recording channels" {
    Dual => "dual",
    Mono => "mono",
});

impl RecordingChannels {
    pub fn count(self) -> u16 {
        match self {
            RecordingChannels::Dual => 2,
            RecordingChannels::Mono => 1,
        }
    }
}

/// Recording settings at one level (agent, number, campaign, call); each
/// field left out is taken from the next less specific level.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RecordingSettings {
    /// Record the call (default false).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// `dual` (default) or `mono`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channels: Option<RecordingChannels>,
    /// Played to the caller before the agent speaks: text (spoken by the
    /// embedded synthesizer) or uploaded audio (`snd_...`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub announcement: Option<String>,
}

/// Longest announcement text.
pub const MAX_ANNOUNCEMENT_CHARS: usize = 500;

impl RecordingSettings {
    /// `self` over `less_specific`, field by field.
    pub fn over(&self, less_specific: &RecordingSettings) -> RecordingSettings {
        RecordingSettings {
            enabled: self.enabled.or(less_specific.enabled),
            channels: self.channels.or(less_specific.channels),
            announcement: self
                .announcement
                .clone()
                .or_else(|| less_specific.announcement.clone()),
        }
    }

    /// The fields out of range, as (field, message).
    pub fn problems(&self) -> Vec<(&'static str, &'static str)> {
        let mut out = Vec::new();
        if let Some(a) = &self.announcement
            && (a.trim().is_empty() || a.chars().count() > MAX_ANNOUNCEMENT_CHARS)
        {
            out.push(("announcement", "must be 1 to 500 characters"));
        }
        out
    }

    pub fn is_enabled(&self) -> bool {
        self.enabled.unwrap_or(false)
    }
}

/// Where a recording stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RecordingStatus {
    /// Being written while the call runs.
    Recording,
    Completed,
    /// Removed by `DELETE` or by retention; the row stays.
    Deleted,
    /// The file could not be written.
    Failed,
}

labels!(RecordingStatus, "recording status" {
    Recording => "recording",
    Completed => "completed",
    Deleted => "deleted",
    Failed => "failed",
});

/// A call's recording, as `recording.completed` carries it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Recording {
    #[schema(example = "call_01jdw8q1m7k3x9b5n4c2v6t8r0")]
    pub call_id: String,
    pub status: RecordingStatus,
    pub channels: RecordingChannels,
    /// Audio length in milliseconds.
    pub duration_ms: i64,
    /// File size in bytes, header included.
    pub size_bytes: i64,
    /// Milliseconds of the file left silent by pause.
    pub paused_ms: i64,
    pub started_at: DateTime<Utc>,
    pub completed_at: Option<DateTime<Utc>>,
    pub deleted_at: Option<DateTime<Utc>>,
    /// Where the file is served (`GET`, scope `read`), once it is
    /// completed; absent while recording, after a failure or a delete.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(example = "/v1/calls/call_01jdw8q1m7k3x9b5n4c2v6t8r0/recording")]
    pub url: Option<String>,
}

/// The API path of call `call_id`'s recording file.
pub fn recording_url(call_id: &str) -> String {
    format!("/v1/calls/{call_id}/recording")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::assert_serde_matches;

    #[test]
    fn labels_and_the_most_specific_level_wins() {
        assert_serde_matches(RecordingChannels::ALL, RecordingChannels::as_str);
        assert_serde_matches(RecordingStatus::ALL, RecordingStatus::as_str);
        let agent = RecordingSettings {
            enabled: Some(true),
            channels: Some(RecordingChannels::Mono),
            announcement: None,
        };
        let call = RecordingSettings {
            enabled: Some(false),
            ..RecordingSettings::default()
        };
        let merged = call.over(&agent);
        assert!(!merged.is_enabled());
        assert_eq!(merged.channels, Some(RecordingChannels::Mono));
    }
}
