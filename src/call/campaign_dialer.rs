//! The call layer's side of the campaign dialer: [`CallDialer`] places a
//! campaign's call through the same path as `POST /v1/calls` (with the id
//! the driver chose, the row written before the INVITE) and tells what
//! became of a call from its row; [`report_outcomes`] feeds every campaign
//! call's end from the event bus back to [`Driver::call_ended`].
//!
//! No outcome is lost: an end missed while the daemon was down is found by
//! the driver's recovery through [`Dialer::fate`]; one missed because the
//! bus feed lagged is found by [`Driver::reconcile`]. A call row left
//! unended by a crash belongs to no task any more: `fate` ends it
//! (`failed`, end reason `error`) so that the policy decides the retry.
//!
//! Must not: decide who to dial or when (that is `campaign`).

use std::sync::Arc;

use tokio::sync::{broadcast, watch};

use super::{CallEvent, CallEventKind, Calls, OutboundRequest, PlaceError};
use crate::campaign::dialer::{CallFate, DialError, Dialer, Driver, PlaceCall};
use crate::campaign::policy::Outcome;
use crate::store::StoreError;

/// Places campaign calls through [`Calls`].
#[derive(Clone)]
pub struct CallDialer {
    calls: Calls,
}

impl CallDialer {
    pub fn new(calls: Calls) -> Self {
        Self { calls }
    }
}

/// The campaign outcome of a call's final status and end reason. A
/// machine hung up on counts as no answer: the person was not reached, so
/// the no-answer retries apply.
pub fn outcome_of(status: &str, end_reason: Option<&str>) -> Outcome {
    match (status, end_reason) {
        (_, Some("opted_out")) => Outcome::OptedOut,
        (_, Some("machine_detected")) => Outcome::NoAnswer,
        (status, _) => outcome_of_status(status),
    }
}

fn outcome_of_status(status: &str) -> Outcome {
    match status {
        "completed" => Outcome::Answered,
        "busy" => Outcome::Busy,
        "no-answer" => Outcome::NoAnswer,
        _ => Outcome::Failed,
    }
}

/// The call metadata that ties a call to its campaign attempt.
fn metadata(req: &PlaceCall) -> String {
    serde_json::json!({
        "campaign_id": req.campaign_id,
        "contact_id": req.contact_id,
        "attempt": req.attempt,
        "variables": req.variables,
    })
    .to_string()
}

/// The campaign a call row belongs to, from its metadata.
fn campaign_of(metadata: &str) -> Option<String> {
    serde_json::from_str::<serde_json::Value>(metadata)
        .ok()?
        .get("campaign_id")?
        .as_str()
        .map(str::to_owned)
}

#[async_trait::async_trait]
impl Dialer for CallDialer {
    async fn place(&self, req: PlaceCall) -> Result<String, DialError> {
        let request = OutboundRequest {
            call_id: Some(req.call_id.clone()),
            from: req.from.clone(),
            to: req.to.clone(),
            agent_id: Some(req.agent_id.clone()),
            trunk: Some(
                req.trunk
                    .strip_prefix("trk_")
                    .unwrap_or(&req.trunk)
                    .to_owned(),
            ),
            ring_timeout: None,
            max_duration: None,
            headers: Vec::new(),
            metadata: metadata(&req),
            amd: req.amd,
            opt_out_digit: req.opt_out_digit,
        };
        let record = self.calls.place(request).await.map_err(|e| match e {
            // Refused before a row was written or a packet sent.
            PlaceError::TrunkFull
            | PlaceError::TrunkRate
            | PlaceError::Draining
            | PlaceError::NotRunning => DialError::NotPlaced(e.to_string()),
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
                outcome: outcome_of(&row.status, row.end_reason.as_deref()),
                duration_ms: row.duration_ms,
            });
        }
        if shared.registry.get(call_id).is_some() {
            return Ok(CallFate::InProgress);
        }
        // The row is written after the call joins the registry and ended
        // before it leaves, so an unended row no task holds was left by a
        // crash: nothing will ever end it but this.
        tracing::info!(call = %call_id, "campaign call lost in a restart; ending its record");
        shared
            .transitions
            .lost(call_id, row.answered_at.is_some())
            .await;
        let row = store
            .get_call(call_id)
            .await
            .map_err(|e| DialError::Failed(e.to_string()))?;
        Ok(CallFate::Ended {
            outcome: outcome_of(&row.status, row.end_reason.as_deref()),
            duration_ms: row.duration_ms,
        })
    }
}

/// Reports the end of every campaign call on `events` to `driver`, until
/// `shutdown` turns true; then reports the ends already published and
/// returns. Subscribe before the driver places anything.
pub async fn report_outcomes(
    mut events: broadcast::Receiver<CallEvent>,
    driver: Arc<Driver<CallDialer>>,
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
    driver: &Driver<CallDialer>,
    event: Result<CallEvent, broadcast::error::RecvError>,
) -> bool {
    match event {
        Ok(e) if e.kind == CallEventKind::Ended && campaign_of(&e.call.metadata).is_some() => {
            let outcome = outcome_of(&e.call.status, e.call.end_reason.as_deref());
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

async fn reconcile(driver: &Driver<CallDialer>) {
    if let Err(e) = driver.reconcile().await {
        tracing::error!(error = %e, "campaign calls not reconciled");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::amd::AmdMode;

    #[test]
    fn statuses_map_to_outcomes() {
        let plain = |s| outcome_of(s, Some("callee_hangup"));
        assert_eq!(plain("completed"), Outcome::Answered);
        assert_eq!(plain("busy"), Outcome::Busy);
        assert_eq!(plain("no-answer"), Outcome::NoAnswer);
        assert_eq!(plain("failed"), Outcome::Failed);
        assert_eq!(plain("canceled"), Outcome::Failed);
        assert_eq!(
            outcome_of("completed", Some("opted_out")),
            Outcome::OptedOut
        );
        assert_eq!(
            outcome_of("completed", Some("machine_detected")),
            Outcome::NoAnswer
        );
    }

    #[test]
    fn the_campaign_is_read_from_the_metadata() {
        let req = PlaceCall {
            call_id: "call_1".into(),
            campaign_id: "cmp_1".into(),
            contact_id: "cnt_1".into(),
            attempt: 2,
            to: "+14155550100".into(),
            from: "+14155550199".into(),
            trunk: "trk_a".into(),
            agent_id: "agt_1".into(),
            variables: serde_json::json!({"name": "Ada"}),
            opt_out_digit: Some('9'),
            amd: AmdMode::Off,
        };
        let m = metadata(&req);
        assert_eq!(campaign_of(&m).as_deref(), Some("cmp_1"));
        assert_eq!(campaign_of("{}"), None);
        assert_eq!(campaign_of("not json"), None);
    }
}
