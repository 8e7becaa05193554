//! Trunk health: one OPTIONS probe task per profile with
//! `[outbound] ping_seconds`, kept in step with the profile files like the
//! registrations (SIGHUP starts, stops or restarts only the changed ones).
//! Each answer or silence goes into [`TrunkStates`] for
//! `GET /v1/trunks/{id}` and into the `agentline_trunk_up` gauge; each
//! change between up and down (the first result included) emits
//! `trunk.up` or `trunk.down`.
//!
//! A trunk is up when its proxy answers with any final response below 500
//! but 408: a 404 or 405 still proves a live SIP peer (Kamailio's
//! dispatcher and FreeSWITCH's gateway ping count it so too), while 408,
//! 5xx, 6xx or no answer mean the calls would not get through. One failed
//! probe is enough to go down, because on UDP it already stands for
//! several lost retransmissions (RFC 3261 §17.1.2.2).
//!
//! Must not: build SIP (that is `sip::SipStack::probe`) or refuse calls.
//! A call that names only this trunk still goes to it when it is down
//! (there is nowhere else to send it, and the INVITE's own failure is the
//! answer the caller of the API gets); a call with other trunks skips it
//! (`super::failover` reads the health written here).

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use tokio::task::JoinHandle;
use tracing::Instrument;

use super::reconcile::{PerTrunk, Reconciler, TrunkContext};
use crate::config::Profile;
use crate::metrics::{TRUNK_PING_SECONDS, TRUNK_UP};
use crate::model::EventType;
use crate::sip::{Probe, SipStack};
use crate::trunk::{Health, TrunkStates};
use crate::webhook::Outbox;
use crate::webhook::event::TrunkEventData;

/// Longest wait for an answer; shorter when the interval is.
const MAX_WAIT: Duration = Duration::from_secs(5);

/// The running probe tasks by trunk name.
pub type TrunkPings = Reconciler<Probing>;

/// One trunk's probe task.
pub struct Probing {
    /// The probe loop; aborted when the trunk's profile stops wanting it
    /// or at shutdown (a probe in flight is dropped with it).
    task: JoinHandle<()>,
}

impl PerTrunk for Probing {
    /// `(proxy, interval in seconds)`.
    type Key = (String, u32);
    const WHAT: &'static str = "OPTIONS probes";

    fn wanted(profile: &Profile) -> Option<Self::Key> {
        let out = profile.outbound.as_ref()?;
        Some((profile.sip_target(&out.proxy), out.ping_seconds?))
    }

    fn start(name: &str, (proxy, seconds): &Self::Key, ctx: &TrunkContext<'_>) -> Option<Self> {
        tracing::info!(trunk = %name, %proxy, seconds, "probing the trunk with OPTIONS");
        ctx.trunks.set_health(name, Health::Pending);
        let task = tokio::spawn(
            probe_loop(
                ctx.stack.clone(),
                Arc::clone(ctx.trunks),
                ctx.outbox.clone(),
                name.to_owned(),
                proxy.clone(),
                Duration::from_secs(u64::from(*seconds)),
            )
            .instrument(tracing::info_span!("trunk_ping", trunk = %name)),
        );
        Some(Probing { task })
    }

    async fn stop(self) {
        self.task.abort();
    }

    /// The trunk shows no health any more (until probes start again).
    fn forget(name: &str, ctx: &TrunkContext<'_>) {
        metrics::gauge!(TRUNK_UP, "trunk" => name.to_owned()).set(0.0);
        ctx.trunks.set_health(name, Health::NotConfigured);
    }
}

/// Whether an answer to OPTIONS shows a trunk that can take calls.
fn is_up(status: u16) -> bool {
    status < 500 && status != 408
}

async fn probe_loop(
    stack: SipStack,
    trunks: Arc<TrunkStates>,
    outbox: Outbox,
    name: String,
    proxy: String,
    every: Duration,
) {
    let wait = every.min(MAX_WAIT);
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let up_gauge = metrics::gauge!(TRUNK_UP, "trunk" => name.clone());
    let rtt_histogram = metrics::histogram!(TRUNK_PING_SECONDS, "trunk" => name.clone());
    let mut down_since = None;
    let mut was_up = None;
    loop {
        tick.tick().await;
        let probe = match stack.probe(&proxy, wait).await {
            Ok(probe) => probe,
            Err(e) => Probe::NoAnswer {
                reason: e.to_string(),
            },
        };
        let now = Utc::now();
        let health = match probe {
            Probe::Answered { status, rtt } if is_up(status) => {
                rtt_histogram.record(rtt.as_secs_f64());
                down_since = None;
                Health::Up {
                    status,
                    rtt_ms: u64::try_from(rtt.as_millis()).unwrap_or(u64::MAX),
                    checked_at: now,
                }
            }
            Probe::Answered { status, rtt } => {
                rtt_histogram.record(rtt.as_secs_f64());
                Health::Down {
                    status: Some(status),
                    reason: format!("answered {status}"),
                    since: *down_since.get_or_insert(now),
                    checked_at: now,
                }
            }
            Probe::NoAnswer { reason } => Health::Down {
                status: None,
                reason,
                since: *down_since.get_or_insert(now),
                checked_at: now,
            },
        };
        let up = matches!(health, Health::Up { .. });
        up_gauge.set(if up { 1.0 } else { 0.0 });
        if was_up != Some(up) {
            changed(&outbox, &name, &health).await;
        }
        was_up = Some(up);
        trunks.set_health(&name, health);
    }
}

/// Logs a change between up and down and emits its event.
async fn changed(outbox: &Outbox, name: &str, health: &Health) {
    let (event_type, sip_code, reason) = match health {
        Health::Up { status, rtt_ms, .. } => {
            tracing::info!(status, rtt_ms, "trunk is up");
            (EventType::TrunkUp, Some(*status), None)
        }
        Health::Down { status, reason, .. } => {
            tracing::warn!(?status, %reason, "trunk is down");
            (EventType::TrunkDown, *status, Some(reason.clone()))
        }
        Health::NotConfigured | Health::Pending => return,
    };
    let data = TrunkEventData {
        trunk_id: name.to_owned(),
        sip_code,
        reason,
        expires_at: None,
        next_attempt_at: None,
    };
    if let Err(e) = outbox.trunk_changed(event_type, data).await {
        tracing::warn!(error = %e, "trunk event not written");
    }
}

#[cfg(test)]
mod tests {
    use super::is_up;

    #[test]
    fn any_answer_below_500_but_408_is_up() {
        for up in [200, 202, 403, 404, 405, 483] {
            assert!(is_up(up), "{up}");
        }
        for down in [408, 500, 503, 504, 603] {
            assert!(!is_up(down), "{down}");
        }
    }
}
