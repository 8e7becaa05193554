//! The events agentline sends: their types, the JSON envelope every webhook
//! and stream message carries, and the builders that render a state change
//! into a [`NewEvent`] for the outbox.
//!
//! Envelope: `{"id": "evt_...", "type": "call.ended", "created_at": RFC 3339,
//! "api_version": "...", "livemode": true, "data": {...}}`; `livemode` is
//! `false` for an event about a test-mode object (test keys' calls and
//! campaigns), and only test-mode endpoints receive those. For call events `data` is the call
//! object exactly as `GET /v1/calls/{id}` answers it plus `sequence`, the
//! event's position among that call's events, so receivers can order what
//! arrives out of order. For campaign events `data` is the campaign exactly
//! as `GET /v1/campaigns/{id}` answers it, after the change.
//!
//! Must not: write to the store or send anything; it only renders.
//! (`call.ended` gets the transcript added at delivery, for the endpoints
//! that ask: [`with_transcript`].)

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::ids;
use crate::model::{Call, Campaign, EventType};
use crate::store::StoreError;
use crate::store::calls::CallRecord;
use crate::store::campaigns::CampaignRecord;
use crate::store::events::{Fanout, NewEvent};
use crate::store::transcripts::TurnRecord;

/// The version of the envelope and data shapes; changes only with a breaking
/// change to the payloads.
pub const API_VERSION: &str = "2025-06-01";

/// Every event, as delivered by webhook and by `GET /v1/events`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct WebhookEvent<D> {
    /// Also the `webhook-id` header and the SSE `id`; the same on every
    /// attempt and replay, so receivers can drop duplicates.
    #[schema(example = "evt_01jdw8q1m7k3x9b5n4c2v6t8r0")]
    pub id: String,
    #[serde(rename = "type")]
    pub event_type: EventType,
    pub created_at: DateTime<Utc>,
    #[schema(example = "2025-06-01")]
    pub api_version: String,
    /// `false` when the event is about a test-mode object (made with an
    /// `al_test_` key; its calls ran on the simulated carrier). Such
    /// events go to test-mode endpoints only; live ones to live only.
    pub livemode: bool,
    pub data: D,
}

/// The call as `GET /v1/calls/{id}` returns it, plus its event sequence.
/// `call.ended` carries the final `status`, `end_reason`, `sip_code` and
/// `duration_ms` in the call itself, and for a `voice` agent the
/// conversation's `summary` (stored with the transcript just before), and
/// for endpoints with `include_transcript` the `transcript` itself;
/// `call.analyzed` carries the call's `analysis`.
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

/// An API key that reached a daily cap (`api_key.cap_reached`).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ApiKeyEventData {
    /// The key (its id; never the secret).
    pub api_key_id: String,
    /// Which cap, e.g. `100 calls today`.
    pub reason: String,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct TestEventData {
    pub endpoint_id: String,
    pub message: String,
}

fn render<D: Serialize>(
    event_type: EventType,
    data: D,
    call: Option<(&str, i64)>,
    fanout: Fanout,
    livemode: bool,
) -> Result<NewEvent, StoreError> {
    let id = ids::new(ids::EVENT);
    let created_at = crate::store::now();
    let envelope = WebhookEvent {
        id: id.clone(),
        event_type,
        created_at,
        api_version: API_VERSION.to_string(),
        livemode,
        data,
    };
    let payload = serde_json::to_string(&envelope)
        .map_err(|e| StoreError::Corrupt(format!("event {id}: {e}")))?;
    Ok(NewEvent {
        id,
        event_type,
        api_version: API_VERSION.to_string(),
        call_id: call.map(|(c, _)| c.to_string()),
        call_seq: call.map(|(_, s)| s),
        payload,
        created_at,
        fanout,
        livemode,
    })
}

/// Renders a recording event (`recording.completed`): `data` is the
/// recording as `GET /v1/calls/{id}` shows it under `recording`.
pub fn recording_event(
    event_type: EventType,
    recording: crate::model::Recording,
    livemode: bool,
) -> Result<NewEvent, StoreError> {
    render(event_type, recording, None, Fanout::Subscribed, livemode)
}

/// Renders a call event (`call.*`) from the call row as the transaction
/// left it.
pub fn call_event(
    event_type: EventType,
    call: &CallRecord,
    digit: Option<&str>,
) -> Result<NewEvent, StoreError> {
    let sequence = call.event_seq;
    let livemode = call.livemode;
    let data = CallEventData {
        call: Call::try_from(call.clone())?,
        sequence,
        digit: digit.map(str::to_string),
    };
    render(
        event_type,
        data,
        Some((&call.id, sequence)),
        Fanout::Subscribed,
        livemode,
    )
}

/// `payload` (a `call.ended` envelope as stored) with the call's transcript
/// added as `data.transcript`: `{"summary", "turns"}`, each turn shaped as
/// `GET /v1/calls/{id}/transcript` answers it. For the endpoints that opt
/// in (`include_transcript`); the transcript is stored before `call.ended`
/// and never changes, so every attempt sends the same bytes.
pub fn with_transcript(payload: &str, turns: &[TurnRecord]) -> Result<String, StoreError> {
    let mut envelope: serde_json::Value = serde_json::from_str(payload)
        .map_err(|e| StoreError::Corrupt(format!("event payload: {e}")))?;
    let summary = envelope
        .pointer("/data/summary")
        .cloned()
        .unwrap_or_default();
    let turns: Vec<serde_json::Value> = turns
        .iter()
        .map(|t| {
            let has_latency = t.stt_final_ms.is_some()
                || t.llm_first_token_ms.is_some()
                || t.tts_first_audio_ms.is_some()
                || t.first_rtp_ms.is_some();
            serde_json::json!({
                "speaker": t.speaker,
                "text": t.text,
                "start_ms": t.start_ms,
                "end_ms": t.end_ms,
                "interrupted": t.interrupted,
                "heard": t.heard,
                "latency": has_latency.then(|| serde_json::json!({
                    "stt_final_ms": t.stt_final_ms,
                    "llm_first_token_ms": t.llm_first_token_ms,
                    "tts_first_audio_ms": t.tts_first_audio_ms,
                    "first_rtp_ms": t.first_rtp_ms,
                })),
            })
        })
        .collect();
    if let Some(data) = envelope.get_mut("data").and_then(|d| d.as_object_mut()) {
        data.insert(
            "transcript".into(),
            serde_json::json!({"summary": summary, "turns": turns}),
        );
    }
    serde_json::to_string(&envelope).map_err(|e| StoreError::Corrupt(format!("event payload: {e}")))
}

/// Renders a trunk event (`trunk.*`): trunks are live, test mode has none.
pub fn trunk_event(event_type: EventType, data: TrunkEventData) -> Result<NewEvent, StoreError> {
    render(event_type, data, None, Fanout::Subscribed, true)
}

/// Renders `api_key.cap_reached`, in the key's mode.
pub fn api_key_event(data: ApiKeyEventData, livemode: bool) -> Result<NewEvent, StoreError> {
    render(
        EventType::ApiKeyCapReached,
        data,
        None,
        Fanout::Subscribed,
        livemode,
    )
}

/// Renders a campaign event (`campaign.*`) from the campaign row as the
/// transaction left it.
pub fn campaign_event(
    event_type: EventType,
    campaign: &CampaignRecord,
) -> Result<NewEvent, StoreError> {
    render(
        event_type,
        CampaignEventData {
            campaign: Campaign::try_from(campaign.clone())?,
        },
        None,
        Fanout::Subscribed,
        campaign.livemode,
    )
}

/// A `webhook.test` for one endpoint, in the endpoint's mode.
pub fn test_event(endpoint_id: &str, livemode: bool) -> Result<NewEvent, StoreError> {
    let data = TestEventData {
        endpoint_id: endpoint_id.to_string(),
        message: "a test event from agentline".into(),
    };
    render(
        EventType::WebhookTest,
        data,
        None,
        Fanout::Endpoint(endpoint_id.to_string()),
        livemode,
    )
}
