//! The events agentline sends: their types, the JSON envelope every webhook
//! and stream message carries, and the builders that render a state change
//! into a [`NewEvent`] for the outbox.
//!
//! Envelope: `{"id": "evt_...", "type": "call.ended", "created_at": RFC 3339,
//! "api_version": "...", "data": {...}}`. For call events `data` is the call
//! object exactly as `GET /v1/calls/{id}` answers it plus `sequence`, the
//! event's position among that call's events, so receivers can order what
//! arrives out of order. For campaign events `data` is the campaign exactly
//! as `GET /v1/campaigns/{id}` answers it, after the change.
//!
//! Must not: write to the store or send anything; it only renders.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::api::calls::{Call, to_api};
use crate::api::campaigns::Campaign;
use crate::ids;
use crate::store::StoreError;
use crate::store::calls::CallRecord;
use crate::store::campaigns::CampaignRecord;
use crate::store::events::{Fanout, NewEvent};

/// The version of the envelope and data shapes; changes only with a breaking
/// change to the payloads.
pub const API_VERSION: &str = "2025-06-01";

/// What happened to a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallEventType {
    Initiated,
    Ringing,
    Answered,
    Ended,
    /// A digit arrived (opt-in per endpoint).
    Dtmf,
}

impl CallEventType {
    pub fn as_str(self) -> &'static str {
        match self {
            CallEventType::Initiated => "call.initiated",
            CallEventType::Ringing => "call.ringing",
            CallEventType::Answered => "call.answered",
            CallEventType::Ended => "call.ended",
            CallEventType::Dtmf => "call.dtmf",
        }
    }
}

/// What happened to a trunk: its registration, or its health as the
/// OPTIONS probes see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrunkEventType {
    Registered,
    RegistrationFailed,
    Up,
    Down,
}

impl TrunkEventType {
    pub fn as_str(self) -> &'static str {
        match self {
            TrunkEventType::Registered => "trunk.registered",
            TrunkEventType::RegistrationFailed => "trunk.registration_failed",
            TrunkEventType::Up => "trunk.up",
            TrunkEventType::Down => "trunk.down",
        }
    }
}

/// What happened to a campaign: its status changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CampaignEventType {
    Started,
    Paused,
    Resumed,
    Completed,
    Canceled,
}

impl CampaignEventType {
    pub fn as_str(self) -> &'static str {
        match self {
            CampaignEventType::Started => "campaign.started",
            CampaignEventType::Paused => "campaign.paused",
            CampaignEventType::Resumed => "campaign.resumed",
            CampaignEventType::Completed => "campaign.completed",
            CampaignEventType::Canceled => "campaign.canceled",
        }
    }
}

/// The type of events sent by `POST /v1/webhook-endpoints/{id}/test`, to
/// that endpoint only.
pub const TEST_EVENT_TYPE: &str = "webhook.test";

/// Every event, as delivered by webhook and by `GET /v1/events`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct WebhookEvent<D> {
    /// Also the `webhook-id` header and the SSE `id`; the same on every
    /// attempt and replay, so receivers can drop duplicates.
    #[schema(example = "evt_01jdw8q1m7k3x9b5n4c2v6t8r0")]
    pub id: String,
    /// `call.initiated`, `call.ringing`, `call.answered`, `call.ended`,
    /// `call.dtmf`, `trunk.registered`, `trunk.registration_failed`,
    /// `trunk.up`, `trunk.down`, `campaign.started`, `campaign.paused`, `campaign.resumed`,
    /// `campaign.completed`, `campaign.canceled` or `webhook.test`.
    #[serde(rename = "type")]
    pub event_type: String,
    pub created_at: DateTime<Utc>,
    #[schema(example = "2025-06-01")]
    pub api_version: String,
    pub data: D,
}

/// A call event: event `data` of `call.*`.
pub type CallEvent = WebhookEvent<CallEventData>;
/// A trunk event: event `data` of `trunk.*`.
pub type TrunkEvent = WebhookEvent<TrunkEventData>;
/// A test event: event `data` of `webhook.test`.
pub type TestEvent = WebhookEvent<TestEventData>;
/// A campaign event: event `data` of `campaign.*`.
pub type CampaignEvent = WebhookEvent<CampaignEventData>;

/// The call as `GET /v1/calls/{id}` returns it, plus its event sequence.
/// `call.ended` carries the final `status`, `end_reason`, `sip_code` and
/// `duration_ms` in the call itself, and for a `voice` agent the
/// conversation's `summary` (stored with the transcript just before).
#[derive(Debug, Serialize, ToSchema)]
pub struct CallEventData {
    #[serde(flatten)]
    pub call: Call,
    /// 1 for the call's first event, then 2, 3, ... with no gaps.
    pub sequence: i64,
    /// The digit received, on `call.dtmf` only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub digit: Option<String>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct TrunkEventData {
    /// The trunk (profile name).
    pub trunk_id: String,
    /// The registrar's final SIP status, or the proxy's answer to the
    /// OPTIONS probe (`trunk.up`, `trunk.down`), when one answered.
    pub sip_code: Option<u16>,
    pub reason: Option<String>,
    /// When the registration expires (`trunk.registered`).
    pub expires_at: Option<DateTime<Utc>>,
    /// When registering is tried again (`trunk.registration_failed`).
    pub next_attempt_at: Option<DateTime<Utc>>,
}

/// The campaign as `GET /v1/campaigns/{id}` returns it, after the change:
/// `status` is the new status; `started_at` and `finished_at` are set by
/// the change that sets them.
#[derive(Debug, Serialize, ToSchema)]
pub struct CampaignEventData {
    #[serde(flatten)]
    pub campaign: Campaign,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct TestEventData {
    pub endpoint_id: String,
    pub message: String,
}

fn render<D: Serialize>(
    event_type: &str,
    data: D,
    call: Option<(&str, i64)>,
    fanout: Fanout,
) -> Result<NewEvent, StoreError> {
    let id = ids::new(ids::EVENT);
    let created_at = crate::store::now();
    let envelope = WebhookEvent {
        id: id.clone(),
        event_type: event_type.to_string(),
        created_at,
        api_version: API_VERSION.to_string(),
        data,
    };
    let payload = serde_json::to_string(&envelope)
        .map_err(|e| StoreError::Corrupt(format!("event {id}: {e}")))?;
    Ok(NewEvent {
        id,
        event_type: event_type.to_string(),
        api_version: API_VERSION.to_string(),
        call_id: call.map(|(c, _)| c.to_string()),
        call_seq: call.map(|(_, s)| s),
        payload,
        created_at,
        fanout,
    })
}

/// Renders a call event from the call row as the transaction left it.
pub fn call_event(
    event_type: CallEventType,
    call: &CallRecord,
    digit: Option<&str>,
) -> Result<NewEvent, StoreError> {
    let sequence = call.event_seq;
    let api_call = to_api(call.clone())
        .map_err(|_| StoreError::Corrupt(format!("call {} cannot be rendered", call.id)))?;
    let data = CallEventData {
        call: api_call,
        sequence,
        digit: digit.map(str::to_string),
    };
    render(
        event_type.as_str(),
        data,
        Some((&call.id, sequence)),
        Fanout::Subscribed,
    )
}

pub fn trunk_event(
    event_type: TrunkEventType,
    data: TrunkEventData,
) -> Result<NewEvent, StoreError> {
    render(event_type.as_str(), data, None, Fanout::Subscribed)
}

/// Renders a campaign event from the campaign row as the transaction left it.
pub fn campaign_event(
    event_type: CampaignEventType,
    campaign: &CampaignRecord,
) -> Result<NewEvent, StoreError> {
    let api = crate::api::campaigns::to_api(campaign.clone())
        .map_err(|_| StoreError::Corrupt(format!("campaign {} cannot be rendered", campaign.id)))?;
    render(
        event_type.as_str(),
        CampaignEventData { campaign: api },
        None,
        Fanout::Subscribed,
    )
}

pub fn test_event(endpoint_id: &str) -> Result<NewEvent, StoreError> {
    let data = TestEventData {
        endpoint_id: endpoint_id.to_string(),
        message: "a test event from agentline".into(),
    };
    render(
        TEST_EVENT_TYPE,
        data,
        None,
        Fanout::Endpoint(endpoint_id.to_string()),
    )
}
