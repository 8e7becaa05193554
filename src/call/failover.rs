//! Trunk failover for outbound calls: the trunks a call may go through, in
//! order, and what each did with it.
//!
//! A call names its trunks (`POST /v1/calls` `trunk_ids`, a campaign's
//! `trunk_ids`, or a profile's `[outbound] failover_to`). The call task
//! ([`super::outbound`]) tries them in turn with the same call (same id,
//! one row, one `call.initiated` ... `call.ended`) and a new SIP dialog
//! per trunk. Before each INVITE the trunk is checked here: down by its
//! OPTIONS probe or failing its registration (only when the call has
//! another trunk to go to: with one trunk the INVITE's own failure is the
//! answer), its destination policy, its daily caps, the do-not-call list,
//! its `cps` and `max_calls`; a trunk that fails a check is skipped without
//! an INVITE. A final response the trunk's `failover_on` lists (default
//! 408 and 5xx), a transaction timeout or a transport error moves the call
//! on; any other answer (busy, declined, 6xx, our own CANCEL) ends it.
//! Every attempt, skipped or tried, is written to `call_attempts`.
//!
//! Must not: send SIP (the outbound call task does) or write the call row
//! (only [`super::events::Transitions`] does).

use chrono::{DateTime, Utc};

use super::Shared;
use super::end_reason::EndReason;
use super::outbound::{PlaceError, check_daily_caps};
use super::phase::Routed;
use crate::config::Profile;
use crate::model::TrunkId;
use crate::store::call_attempts::NewAttempt;
use crate::trunk::{Health, RegistrationStatus};

/// The most trunks one call may name.
pub const MAX_TRUNKS: usize = 8;

/// One trunk of a call, as resolved when it was placed.
pub(super) struct Candidate {
    pub trunk: Profile,
    /// Why the trunk is skipped, known when the call was placed (its
    /// destination policy, a daily cap).
    pub refused: Option<String>,
}

/// The trunks of a call in order: the request's list (`trunk` then
/// `failover`), else the first trunk and its profile's `failover_to`.
/// An unknown trunk or one without `[outbound]` in the request's own list
/// is the caller's mistake (an error); one named by a profile's
/// `failover_to` is skipped with a warning (the operator's).
pub(super) async fn candidates(
    shared: &Shared,
    first: Profile,
    failover: &[TrunkId],
    to: &str,
) -> Result<Vec<Candidate>, PlaceError> {
    let profiles = shared.profiles.get();
    let mut trunks = vec![first];
    if failover.is_empty() {
        let named = trunks[0]
            .outbound
            .as_ref()
            .map(|o| o.failover_to.clone())
            .unwrap_or_default();
        for name in named {
            match profiles.by_name.get(&name) {
                Some(p) if p.outbound.is_some() => trunks.push(p.clone()),
                _ => tracing::warn!(trunk = %trunks[0].name, failover_to = %name,
                    "failover_to names no trunk with [outbound]; skipped"),
            }
        }
    } else {
        for id in failover {
            let trunk = profiles
                .by_name
                .get(id.name())
                .cloned()
                .ok_or(PlaceError::UnknownTrunk)?;
            if trunk.outbound.is_none() {
                return Err(PlaceError::TrunkNotOutbound);
            }
            trunks.push(trunk);
        }
    }
    let mut seen = std::collections::HashSet::new();
    trunks.retain(|t| seen.insert(t.name.clone()));
    trunks.truncate(MAX_TRUNKS);
    let mut out = Vec::with_capacity(trunks.len());
    let mut first_error = None;
    for trunk in trunks {
        let refused = match refusal(shared, &trunk, to).await {
            Ok(()) => None,
            Err(PlaceError::Store(e)) => return Err(PlaceError::Store(e)),
            Err(e) => {
                let text = e.to_string();
                first_error.get_or_insert(e);
                Some(text)
            }
        };
        out.push(Candidate { trunk, refused });
    }
    // With no trunk left the call is refused as before failover: the
    // first trunk's reason, and nothing is stored.
    match first_error {
        Some(e) if out.iter().all(|c| c.refused.is_some()) => Err(e),
        _ => Ok(out),
    }
}

/// The trunk's own policy for a call to `to`: its destinations (toll
/// fraud) and its daily caps.
async fn refusal(shared: &Shared, trunk: &Profile, to: &str) -> Result<(), PlaceError> {
    let Some(out) = &trunk.outbound else {
        return Err(PlaceError::TrunkNotOutbound);
    };
    out.destination_allowed(to)
        .map_err(PlaceError::DestinationDenied)?;
    check_daily_caps(shared, trunk).await
}

/// Why a trunk is not worth an INVITE now: down by its OPTIONS probe, or
/// its registration failing.
fn down(shared: &Shared, trunk: &Profile) -> Option<String> {
    let live = shared.trunks.get(&trunk.name);
    if let Health::Down { reason, .. } = live.health {
        return Some(format!("trunk down (OPTIONS: {reason})"));
    }
    if let RegistrationStatus::Failing { reason, .. } = live.registration {
        return Some(format!("registration failing: {reason}"));
    }
    None
}

/// The attempts of one call, written as each ends.
pub(super) struct Attempts {
    call_id: String,
    /// How many trunks the call has: health only skips when there is
    /// another one.
    count: usize,
    seq: i64,
    /// When the running attempt started.
    started: DateTime<Utc>,
}

/// What an attempt came to.
pub(super) enum Outcome<'a> {
    Answered,
    Failed { code: Option<u16>, reason: &'a str },
    Skipped(&'a str),
}

impl Attempts {
    pub fn new(call_id: &str, count: usize) -> Self {
        Self {
            call_id: call_id.to_owned(),
            count,
            seq: 0,
            started: Utc::now(),
        }
    }

    /// Checks `candidate` (the `index`th trunk) just before its INVITE,
    /// and moves the call's slot onto it; why it is skipped, if it is.
    pub async fn check(
        &mut self,
        call: &Routed,
        candidate: &Candidate,
        index: usize,
        to: &str,
    ) -> Option<String> {
        self.started = Utc::now();
        if let Some(refused) = &candidate.refused {
            return Some(refused.clone());
        }
        let shared = &call.shared;
        if self.count > 1
            && let Some(reason) = down(shared, &candidate.trunk)
        {
            return Some(reason);
        }
        if index > 0 {
            // Policies may have changed while the previous trunk rang.
            match refusal(shared, &candidate.trunk, to).await {
                Ok(()) | Err(PlaceError::Store(_)) => {}
                Err(e) => return Some(e.to_string()),
            }
        }
        if let Err(reason) = call.move_to(&candidate.trunk) {
            return Some(match reason {
                EndReason::TrunkRate => "the trunk is at its cps".to_owned(),
                _ => "the trunk is at its max_calls".to_owned(),
            });
        }
        None
    }

    /// Whether the do-not-call list now holds `to` (checked before every
    /// attempt after the first: the number may have opted out meanwhile).
    pub async fn on_dnc(&self, call: &Routed, to: &str) -> bool {
        call.shared.transitions.store().find_dnc(to).await.is_ok()
    }

    /// Writes the attempt on `trunk` that just ended with `outcome`.
    pub async fn record(
        &mut self,
        call: &Routed,
        trunk: &Profile,
        sip_call_id: Option<&str>,
        outcome: Outcome<'_>,
    ) {
        self.seq += 1;
        let (label, code, reason) = match outcome {
            Outcome::Answered => ("answered", Some(200), None),
            Outcome::Failed { code, reason } => ("failed", code, Some(reason)),
            Outcome::Skipped(reason) => ("skipped", None, Some(reason)),
        };
        tracing::info!(trunk = %trunk.name, seq = self.seq, outcome = label, ?code,
            reason = reason.unwrap_or(""), "call attempt");
        metrics::counter!(crate::metrics::CALL_ATTEMPTS, "outcome" => label).increment(1);
        let trunk_id = trunk.id();
        let written = call
            .shared
            .transitions
            .store()
            .add_call_attempt(NewAttempt {
                call_id: &self.call_id,
                seq: self.seq,
                trunk: &trunk_id,
                outcome: label,
                sip_code: code,
                sip_call_id,
                reason,
                started_at: self.started,
                ended_at: Utc::now(),
            })
            .await;
        if let Err(e) = written {
            tracing::warn!(error = %e, "call attempt not recorded");
        }
    }
}
