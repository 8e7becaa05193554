//! The type of every event agentline emits, as the envelope's `type`, the
//! `events.type` column and an endpoint's subscription list spell it.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::labels;

/// What happened: to a call, a trunk or a campaign, or a test delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
pub enum EventType {
    #[serde(rename = "call.initiated")]
    CallInitiated,
    #[serde(rename = "call.ringing")]
    CallRinging,
    #[serde(rename = "call.answered")]
    CallAnswered,
    #[serde(rename = "call.ended")]
    CallEnded,
    /// The call's structured result is stored (after `call.ended`, for
    /// agents that define an `analysis`).
    #[serde(rename = "call.analyzed")]
    CallAnalyzed,
    /// A digit arrived (opt-in per endpoint).
    #[serde(rename = "call.dtmf")]
    CallDtmf,
    /// A call's recording is complete (after the call ends): its
    /// duration, size and channels.
    #[serde(rename = "recording.completed")]
    RecordingCompleted,
    #[serde(rename = "trunk.registered")]
    TrunkRegistered,
    #[serde(rename = "trunk.registration_failed")]
    TrunkRegistrationFailed,
    /// The OPTIONS probes found the trunk up again.
    #[serde(rename = "trunk.up")]
    TrunkUp,
    #[serde(rename = "trunk.down")]
    TrunkDown,
    /// The trunk reached a daily cap (`[limits] daily_calls` or
    /// `daily_minutes`); outbound calls are refused until midnight UTC.
    #[serde(rename = "trunk.cap_reached")]
    TrunkCapReached,
    /// An API key reached a daily cap (`[calls] daily_calls_per_key` or
    /// `daily_minutes_per_key`); its calls are refused until midnight UTC.
    #[serde(rename = "api_key.cap_reached")]
    ApiKeyCapReached,
    #[serde(rename = "campaign.started")]
    CampaignStarted,
    #[serde(rename = "campaign.paused")]
    CampaignPaused,
    #[serde(rename = "campaign.resumed")]
    CampaignResumed,
    #[serde(rename = "campaign.completed")]
    CampaignCompleted,
    #[serde(rename = "campaign.canceled")]
    CampaignCanceled,
    /// Sent by `POST /v1/webhook-endpoints/{id}/test`, to that endpoint
    /// only.
    #[serde(rename = "webhook.test")]
    WebhookTest,
}

labels!(EventType, "event type" {
    CallInitiated => "call.initiated",
    CallRinging => "call.ringing",
    CallAnswered => "call.answered",
    CallEnded => "call.ended",
    CallAnalyzed => "call.analyzed",
    CallDtmf => "call.dtmf",
    RecordingCompleted => "recording.completed",
    TrunkRegistered => "trunk.registered",
    TrunkRegistrationFailed => "trunk.registration_failed",
    TrunkUp => "trunk.up",
    TrunkDown => "trunk.down",
    TrunkCapReached => "trunk.cap_reached",
    ApiKeyCapReached => "api_key.cap_reached",
    CampaignStarted => "campaign.started",
    CampaignPaused => "campaign.paused",
    CampaignResumed => "campaign.resumed",
    CampaignCompleted => "campaign.completed",
    CampaignCanceled => "campaign.canceled",
    WebhookTest => "webhook.test",
});

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::assert_serde_matches;

    #[test]
    fn serde_and_sql_spell_the_labels_alike() {
        assert_serde_matches(EventType::ALL, EventType::as_str);
        assert_eq!("call.dtmf".parse(), Ok(EventType::CallDtmf));
    }
}
