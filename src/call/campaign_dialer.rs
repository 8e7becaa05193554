//! The call layer's side of the campaign dialer: [`CallDialer`] places a
//! campaign's call through the same path as `POST /v1/calls` (with the id
//! the driver chose, the row written before the INVITE) and tells what
//! became of a call from its row; [`report_outcomes`] feeds every campaign
//! call's end from the event bus back to [`CampaignRunner::call_ended`].
//!
//! No outcome is lost: an end missed while the daemon was down is found by
//! the driver's recovery through [`Dialer::fate`]; one missed because the
//! bus feed lagged is found by [`CampaignRunner::reconcile`]. A call row left
//! unended by a node that is dead (or by this node before a restart)
//! belongs to no task any more: `fate` ends it as an orphan (BYE to the
//! carrier from the stored dialog, then `lost`) so that the policy decides
//! the retry. A call that is missing from this node's registry but whose
//! node is alive is that node's, still in progress: never ended here.
//!
//! Must not: decide who to dial or when (that is `campaign`).

use std::sync::Arc;

use tokio::sync::{broadcast, watch};

use super::context::AgentWebhook;
use super::{CallUpdate, Calls, Change, EndReason, OutboundRequest, PlaceError};
use crate::campaign::dialer::{CallFate, CampaignRunner, DialError, Dialer, PlaceCall};
use crate::model::{AttemptOutcome, CallStatus, TrunkId};
use crate::store::StoreError;
use crate::store::calls::{CallRecord, CampaignAttempt};

/// Places campaign calls through [`Calls`].
#[derive(Clone)]
pub struct CallDialer {
    /// The call layer, placing through the same path as the API.
    calls: Calls,
}

impl CallDialer {
    pub fn new(calls: Calls) -> Self {
        Self { calls }
    }
}

/// The campaign outcome of an ended call, from its final status and end
/// reason. A machine hung up on counts as no answer: the person was not
/// reached, so the no-answer retries apply.
pub fn outcome_of(call: &CallRecord) -> AttemptOutcome {
    let reason = call.end_reason.as_deref();
    if reason == Some(EndReason::OptedOut.label()) {
        return AttemptOutcome::OptedOut;
    }
    if reason == Some(EndReason::MachineDetected.label()) {
        return AttemptOutcome::NoAnswer;
    }
    match call.status {
        CallStatus::Completed => AttemptOutcome::Answered,
        CallStatus::Busy => AttemptOutcome::Busy,
        CallStatus::NoAnswer => AttemptOutcome::NoAnswer,
        CallStatus::Queued
        | CallStatus::Ringing
        | CallStatus::InProgress
        | CallStatus::Failed
        | CallStatus::Canceled => AttemptOutcome::Failed,
    }
}

/// The call metadata of a campaign call: the contact's variables for the
/// agent, and (as callers of the API have always seen them) the attempt's
/// ids, which the call row also holds in columns of its own.
fn metadata(req: &PlaceCall) -> String {
    serde_json::json!({
        "campaign_id": req.campaign_id,
        "contact_id": req.contact_id,
        "attempt": req.attempt,
        "variables": req.variables,
    })
    .to_string()
}

#[async_trait::async_trait]
impl Dialer for CallDialer {
    async fn place(&self, req: PlaceCall) -> Result<String, DialError> {
        let trunk = req
            .trunk
            .parse::<TrunkId>()
            .map_err(|e| DialError::Failed(format!("campaign trunk {:?}: {e}", req.trunk)))?;
        // The campaign's agent webhook, read per attempt so that a change
        // applies to the next call.
        let agent_webhook = self
            .calls
            .shared
            .transitions
            .store()
            .campaign_agent_webhook(&req.campaign_id)
            .await
            .or_else(|e| match e {
                StoreError::NotFound => Ok(None),
                e => Err(DialError::Failed(format!(
                    "campaign {}: {e}",
                    req.campaign_id
                ))),
            })?
            .map(|(url, secret)| AgentWebhook { url, secret });
        // The campaign's recording settings, per attempt too; unreadable
        // ones (never written so by the API) leave the call to the
        // number's and the agent's.
        let recording = self
            .calls
            .shared
            .transitions
            .store()
            .campaign_recording(&req.campaign_id)
            .await
            .or_else(|e| match e {
                StoreError::NotFound => Ok(None),
                e => Err(DialError::Failed(format!(
                    "campaign {}: {e}",
                    req.campaign_id
                ))),
            })?
            .and_then(|json| {
                serde_json::from_str(&json)
                    .inspect_err(
                        |e| tracing::warn!(error = %e, "campaign recording settings unreadable"),
                    )
                    .ok()
            });
        let variables = req
            .variables
            .as_object()
            .map(|o| o.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default();
        let request = OutboundRequest {
            recording,
            call_id: Some(req.call_id.clone()),
            from: req.from.clone(),
            to: req.to.clone(),
            agent_id: Some(req.agent_id.clone()),
            trunk: Some(trunk),
            // The campaign's other trunks, checked like the first.
            failover: req
                .failover
                .iter()
                .filter_map(|t| t.parse::<TrunkId>().ok())
                .collect(),
            ring_timeout: None,
            max_duration: None,
            headers: Vec::new(),
            metadata: metadata(&req),
            amd: req.amd,
            opt_out_digit: req.opt_out_digit,
            campaign: Some(CampaignAttempt {
                campaign_id: req.campaign_id.clone(),
                contact_id: req.contact_id.clone(),
                attempt: req.attempt,
            }),
            variables,
            agent_webhook,
            livemode: req.livemode,
            api_key_id: None,
        };
        let record = self.calls.place(request).await.map_err(|e| match e {
            // Refused before a row was written or a packet sent.
            PlaceError::TrunkFull
            | PlaceError::TrunkRate
            | PlaceError::Draining
            | PlaceError::NotRunning
            | PlaceError::DailyCap(_) => DialError::NotPlaced(e.to_string()),
            e => DialError::Failed(e.to_string()),
        })?;
        Ok(record.id)
    }

    fn calls_on_trunk(&self, trunk: &str) -> u32 {
        self.calls.calls_on_trunk(trunk)
    }

    async fn fate(&self, call_id: &str) -> Result<CallFate, DialError> {
        let shared = &self.calls.shared;
        let store = shared.transitions.store();
        let row = match store.get_call(call_id).await {
            Ok(row) => row,
            Err(StoreError::NotFound) => return Ok(CallFate::NeverPlaced),
            Err(e) => return Err(DialError::Failed(e.to_string())),
        };
        if row.ended_at.is_some() {
            return Ok(CallFate::Ended {
                outcome: outcome_of(&row),
                duration_ms: row.duration_ms,
            });
        }
        if shared.registry.get(call_id).is_some() {
            return Ok(CallFate::InProgress);
        }
        let failed = |e: StoreError| DialError::Failed(e.to_string());
        let node = store.call_node(call_id).await.map_err(failed)?;
        let me = self.calls.node();
        if let Some(other) = node.as_deref().filter(|n| *n != me) {
            let cutoff = chrono::Utc::now()
                - chrono::Duration::from_std(self.calls.grace()).unwrap_or_default();
            if store.node_alive(other, cutoff).await.map_err(failed)? {
                // Its node is alive: the call is running there.
                return Ok(CallFate::InProgress);
            }
        }
        // The row is written after the call joins the registry and ended
        // before it leaves, so an unended row no live task holds was left
        // by a crash: nothing will ever end it but this.
        tracing::info!(call = %call_id, node = ?node, "campaign call of a node that is gone; ending it");
        self.calls
            .end_orphan(call_id, node.as_deref())
            .await
            .map_err(failed)?;
        let row = store
            .get_call(call_id)
            .await
            .map_err(|e| DialError::Failed(e.to_string()))?;
        if row.ended_at.is_none() {
            // Another node took it first and is ending it.
            return Ok(CallFate::InProgress);
        }
        Ok(CallFate::Ended {
            outcome: outcome_of(&row),
            duration_ms: row.duration_ms,
        })
    }
}

/// Reports the end of every campaign call on `events` to `driver`, until
/// `shutdown` turns true; then reports the ends already published and
/// returns. Subscribe before the driver places anything.
pub async fn report_outcomes(
    mut events: broadcast::Receiver<CallUpdate>,
    driver: Arc<CampaignRunner<CallDialer>>,
    mut shutdown: watch::Receiver<bool>,
) {
    while !*shutdown.borrow() {
        tokio::select! {
            event = events.recv() => {
                if !report(&driver, event).await {
                    return;
                }
            }
            changed = shutdown.changed() => {
                if changed.is_err() {
                    break;
                }
            }
        }
    }
    // Bounded: the bus holds at most its capacity.
    for _ in 0..=super::events::BUS_CAPACITY {
        match events.try_recv() {
            Ok(event) => {
                report(&driver, Ok(event)).await;
            }
            Err(broadcast::error::TryRecvError::Lagged(missed)) => {
                report(&driver, Err(broadcast::error::RecvError::Lagged(missed))).await;
            }
            Err(_) => return,
        }
    }
}

/// Reports one bus event; false once the bus is closed.
async fn report(
    driver: &CampaignRunner<CallDialer>,
    event: Result<CallUpdate, broadcast::error::RecvError>,
) -> bool {
    match event {
        Ok(e) if e.change == Change::Ended && e.call.campaign_id().is_some() => {
            let outcome = outcome_of(&e.call);
            if let Err(err) = driver
                .call_ended(&e.call.id, outcome, e.call.duration_ms)
                .await
            {
                tracing::error!(call = %e.call.id, error = %err, "campaign outcome not recorded; reconciling");
                reconcile(driver).await;
            }
            true
        }
        Ok(_) => true,
        Err(broadcast::error::RecvError::Lagged(missed)) => {
            tracing::warn!(missed, "call events missed; reconciling campaign calls");
            reconcile(driver).await;
            true
        }
        Err(broadcast::error::RecvError::Closed) => false,
    }
}

async fn reconcile(driver: &CampaignRunner<CallDialer>) {
    if let Err(e) = driver.reconcile().await {
        tracing::error!(error = %e, "campaign calls not reconciled");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Direction;
    use crate::store::calls::AttemptColumns;

    fn ended(status: CallStatus, reason: &EndReason) -> CallRecord {
        let now = chrono::Utc::now();
        CallRecord {
            id: "call_1".into(),
            direction: Direction::Outbound,
            from_number: "+14155550199".into(),
            to_number: "+14155550100".into(),
            trunk: Some("trk_a".into()),
            agent_id: Some("agt_1".into()),
            status,
            sip_call_id: None,
            sip_code: None,
            sip_reason: None,
            end_reason: Some(reason.label().into()),
            dtmf: String::new(),
            metadata: "{}".into(),
            ringing_at: None,
            answered_at: None,
            ended_at: Some(now),
            duration_ms: None,
            created_at: now,
            updated_at: now,
            event_seq: 2,
            answered_by: None,
            summary: None,
            attempt: AttemptColumns::default(),
            analysis: None,
            context: None,
            agent_source: None,
            agent_source_error: None,
            livemode: true,
            api_key_id: None,
        }
    }

    #[test]
    fn statuses_map_to_outcomes() {
        let plain = |s| outcome_of(&ended(s, &EndReason::CalleeHangup));
        assert_eq!(plain(CallStatus::Completed), AttemptOutcome::Answered);
        assert_eq!(plain(CallStatus::Busy), AttemptOutcome::Busy);
        assert_eq!(plain(CallStatus::NoAnswer), AttemptOutcome::NoAnswer);
        assert_eq!(plain(CallStatus::Failed), AttemptOutcome::Failed);
        assert_eq!(plain(CallStatus::Canceled), AttemptOutcome::Failed);
        assert_eq!(
            outcome_of(&ended(CallStatus::Completed, &EndReason::OptedOut)),
            AttemptOutcome::OptedOut
        );
        assert_eq!(
            outcome_of(&ended(CallStatus::Completed, &EndReason::MachineDetected)),
            AttemptOutcome::NoAnswer
        );
    }
}
