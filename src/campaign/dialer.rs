//! The campaign runner: claims due contacts with leases through the store,
//! paces them with [`Pacer`] and places each call through the [`Dialer`]
//! seam; the call layer reports every end through [`CampaignRunner::call_ended`].
//!
//! Exactly once per attempt: the attempt row, with the call id chosen here,
//! is committed before [`Dialer::place`] runs. After a crash,
//! [`CampaignRunner::recover`] looks at the attempts still in flight whose
//! lease owner is dead (no heartbeat within the grace: never merely an
//! expired lease or a call missing from this node's registry; on one
//! SQLite node after a restart, all of them). It first takes the lease
//! over (compare-and-set on the owner and generation seen, bumping the
//! generation: the fencing token), then asks the call layer what became of
//! the call ([`Dialer::fate`]): never placed -> the claim is undone and the
//! contact is due again under the same attempt number; ended (the call
//! layer ends a dead node's call itself, with BYE) -> its outcome is
//! recorded; still up -> adopted and counted against the caps. Every write
//! of an attempt carries the generation it holds ([`Fence`]), and a
//! campaign call's row is only created under the current one, so a node
//! that was presumed dead and comes back can neither place a call that was
//! taken from it nor overwrite what the new owner recorded.
//!
//! Leases are renewed by [`CampaignRunner::keep_leases`], which runs until
//! the node's calls have ended, a drain included: the dialing loop stops at
//! the drain, the renewal does not.
//!
//! Pause takes effect at the next claim, which checks the campaign is still
//! running inside its transaction; calls in flight finish normally.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use tokio::sync::{Notify, watch};
use tokio::time::Instant;

use super::contact_zone;
use super::pacing::{Caps, Pacer, Wait};
use super::policy::{Final, Next};
use super::window::Verdict;
use crate::ids;
use crate::media::amd::AmdMode;
use crate::model::campaign::{AttemptOutcome, RetryPolicy, Schedule};
use crate::store::contacts::{AfterAttempt, Disposition, Fence};
use crate::store::{Store, StoreError};
use crate::webhook::Outbox;

/// A call the dialer asks the call layer to place.
#[derive(Debug, Clone, PartialEq)]
pub struct PlaceCall {
    /// The id the call must carry (its `calls` row and every event): chosen
    /// before placing, so a crash can be reconciled.
    pub call_id: String,
    pub campaign_id: String,
    pub contact_id: String,
    /// 1 for the first attempt.
    pub attempt: i64,
    pub to: String,
    pub from: String,
    /// Trunk id (`trk_...`).
    pub trunk: String,
    /// Trunk failover: the campaign's other trunks, in its order, tried
    /// after `trunk` when it fails with a 408 or 5xx or is down.
    pub failover: Vec<String>,
    pub agent_id: String,
    /// The contact's variables for the agent, a JSON object.
    pub variables: serde_json::Value,
    /// The key that opts the callee out, if the campaign has one.
    pub opt_out_digit: Option<char>,
    /// Answering-machine detection on the call.
    pub amd: AmdMode,
    /// `false` for a test-mode campaign: the call goes to the simulated
    /// carrier, never to the trunk.
    pub livemode: bool,
}

/// Why a call could not be placed.
#[derive(Debug, thiserror::Error)]
pub enum DialError {
    /// Refused before anything was sent or stored (a local cap, a drain):
    /// the attempt is given back and the contact is due again.
    #[error("not placed: {0}")]
    NotPlaced(String),
    #[error("{0}")]
    Failed(String),
}

/// What became of a call, as the call layer knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallFate {
    /// No call with this id exists: nothing was sent.
    NeverPlaced,
    /// The call is still up; its end will be reported.
    InProgress,
    Ended {
        outcome: AttemptOutcome,
        duration_ms: Option<i64>,
    },
}

/// A call this node placed or adopted and has not seen end.
#[derive(Debug, Clone)]
struct Flight {
    campaign: String,
    /// The lease generation this node holds on the attempt's contact.
    lease_gen: i64,
}

/// The seam the call layer implements.
#[async_trait::async_trait]
pub trait Dialer: Send + Sync + 'static {
    /// Starts the call and returns its id (`req.call_id`). The call layer
    /// must write its call row before sending anything, so that
    /// [`Dialer::fate`] can tell a placed call from one never placed.
    async fn place(&self, req: PlaceCall) -> Result<String, DialError>;

    /// What became of a call placed earlier (used after a restart).
    async fn fate(&self, call_id: &str) -> Result<CallFate, DialError>;

    /// How many calls trunk `trunk` (an id) carries now, inbound and
    /// outbound, as the call layer counts them against its `max_calls`:
    /// the one count of a trunk's calls, which the pacer reads.
    fn calls_on_trunk(&self, trunk: &str) -> u32;
}

/// How the runner runs.
#[derive(Debug, Clone)]
pub struct RunnerConfig {
    /// Names this node in leases.
    pub owner: String,
    /// Calls in flight across every campaign.
    pub global_max_calls: u32,
    /// How long a claim is held without renewal.
    pub lease: Duration,
    /// Longest sleep between looks at the store.
    pub poll: Duration,
    /// Due contacts looked at per claim.
    pub scan: i64,
    /// Whether every in-flight attempt is this node's to recover at start
    /// (one node on SQLite) or only those whose owner is dead (PostgreSQL).
    pub recover_all: bool,
    /// A node whose heartbeat is older than this is dead.
    pub grace: Duration,
}

impl Default for RunnerConfig {
    fn default() -> Self {
        Self {
            owner: ids::new("node"),
            global_max_calls: 100,
            lease: Duration::from_secs(120),
            poll: Duration::from_secs(1),
            scan: 50,
            recover_all: true,
            grace: Duration::from_secs(10),
        }
    }
}

/// The trunks' caps as configured now, by trunk id: read at every pass, so
/// that a profile reload (SIGHUP) applies to the next dial.
pub type TrunkCaps = Box<dyn Fn() -> Vec<(String, Caps)> + Send + Sync>;

/// The campaign runner; share it as `Arc<CampaignRunner<D>>`.
pub struct CampaignRunner<D> {
    /// Claims contacts (leases), records attempts and outcomes.
    store: Store,
    /// Writes `campaign.completed` with the status change.
    outbox: Outbox,
    /// The call layer's side of the seam: places calls and tells their
    /// fate after a restart.
    dialer: Arc<D>,
    /// Owner name, caps, lease length and poll interval, fixed at start.
    cfg: RunnerConfig,
    /// When the next call may start under the global and per-trunk caps.
    // std Mutex: held only for short synchronous updates, never across `.await`.
    pacer: Mutex<Pacer>,
    /// Where the trunk caps come from.
    trunk_caps: TrunkCaps,
    /// Calls this node placed and has not seen end: call id -> campaign.
    /// Their leases are renewed while they run; a std Mutex held for an
    /// insert, a removal or a copy, never across `.await`.
    in_flight: Mutex<HashMap<String, Flight>>,
    /// Woken when a call ends, so a freed slot is used at once.
    ended: Notify,
    /// Place requests handed to the call layer and not yet answered:
    /// [`CampaignRunner::run`] waits for them before it returns, so that a stop
    /// followed by a drain of the call layer refuses none of them.
    placing: std::sync::atomic::AtomicUsize,
}

impl<D: Dialer> CampaignRunner<D> {
    /// A runner over the outbox's store under the caps `trunk_caps` gives.
    pub fn new(outbox: Outbox, dialer: Arc<D>, cfg: RunnerConfig, trunk_caps: TrunkCaps) -> Self {
        let pacer = Pacer::new(cfg.global_max_calls);
        Self {
            trunk_caps,
            store: outbox.store().clone(),
            outbox,
            dialer,
            cfg,
            pacer: Mutex::new(pacer),
            in_flight: Mutex::new(HashMap::new()),
            ended: Notify::new(),
            placing: std::sync::atomic::AtomicUsize::new(0),
        }
    }

    fn pacer(&self) -> std::sync::MutexGuard<'_, Pacer> {
        self.pacer.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn flights(&self) -> std::sync::MutexGuard<'_, HashMap<String, Flight>> {
        self.in_flight.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Calls this node has in flight.
    pub fn active(&self) -> usize {
        self.flights().len()
    }

    /// Recovers, then claims and places until `shutdown` turns true.
    pub async fn run(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        if let Err(e) = self.recover().await {
            tracing::error!(error = %e, "campaign recovery failed; retrying on the next pass");
        }
        let mut last_recover = Instant::now();
        while !*shutdown.borrow() {
            let sleep = match self.tick().await {
                Ok(Some(Wait::Until(t))) => t
                    .saturating_duration_since(Instant::now())
                    .min(self.cfg.poll),
                Ok(_) => self.cfg.poll,
                Err(e) => {
                    tracing::warn!(error = %e, "dialer pass failed");
                    self.cfg.poll
                }
            };
            // A dead node is found within the grace: look that often.
            if !self.cfg.recover_all && last_recover.elapsed() >= self.cfg.grace / 2 {
                last_recover = Instant::now();
                if let Err(e) = self.recover().await {
                    tracing::warn!(error = %e, "recovery of a dead node's attempts failed");
                }
                if let Err(e) = self.reconcile().await {
                    tracing::warn!(error = %e, "campaign calls not reconciled");
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(sleep) => {}
                _ = self.ended.notified() => {}
                _ = shutdown.changed() => {}
            }
        }
        // Bounded: 5 s for the calls being placed to reach the call layer.
        for _ in 0..100 {
            if self.placing.load(std::sync::atomic::Ordering::SeqCst) == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Renews this node's leases every third of the lease until `stop`
    /// turns true: started with the runner and stopped only once the
    /// node's calls have ended, so that a draining node keeps what it
    /// still dials.
    pub async fn keep_leases(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(self.cfg.lease / 3);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        while !*stop.borrow() {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.changed() => continue,
            }
            let until = Utc::now() + self.cfg.lease;
            if let Err(e) = self.store.renew_leases(&self.cfg.owner, until).await {
                tracing::warn!(error = %e, "lease renewal failed");
            }
        }
    }

    /// One pass over the running campaigns: places every call the caps
    /// allow now; what the soonest campaign waits for.
    pub async fn tick(self: &Arc<Self>) -> Result<Option<Wait>, StoreError> {
        let campaigns = self.store.running_campaigns().await?;
        {
            let caps = (self.trunk_caps)();
            let mut pacer = self.pacer();
            for (id, caps) in &caps {
                pacer.set_trunk(id, *caps);
            }
        }
        let mut waits = Vec::new();
        for c in campaigns {
            let trunks: Vec<String> = serde_json::from_str(&c.trunks)
                .map_err(|e| StoreError::Corrupt(format!("campaign {} trunks: {e}", c.id)))?;
            let schedule: Schedule = serde_json::from_str(&c.schedule)
                .map_err(|e| StoreError::Corrupt(format!("campaign {} schedule: {e}", c.id)))?;
            let Ok((window, default_zone)) = schedule.compile() else {
                return Err(StoreError::Corrupt(format!("campaign {} schedule", c.id)));
            };
            self.pacer().set_campaign(
                &c.id,
                Caps {
                    max_calls: u32::try_from(c.max_concurrent_calls).unwrap_or(0),
                    cps: c.calls_per_second,
                },
            );
            // Bounded: each pass places at most the global cap.
            for _ in 0..self.cfg.global_max_calls {
                // The start is counted from the instant the pacer allowed
                // it, not after the claim: the claim's store round trip
                // would otherwise stretch every spacing and lower the rate.
                let allowed_at = Instant::now();
                let on_trunk = |t: &str| self.dialer.calls_on_trunk(t);
                let trunk = match self.pacer().ready(allowed_at, &c.id, &trunks, on_trunk) {
                    Ok(t) => t,
                    Err(w) => {
                        waits.push(w);
                        break;
                    }
                };
                let now = Utc::now();
                let call_id = ids::new(ids::CALL);
                let report = self
                    .store
                    .claim_contact(
                        &c.id,
                        now,
                        self.cfg.scan,
                        &self.cfg.owner,
                        now + self.cfg.lease,
                        &call_id,
                        &trunk,
                        |due| {
                            let zone: Tz = contact_zone(due.timezone.as_deref(), default_zone);
                            match window.verdict(zone, now) {
                                Verdict::Open => Disposition::Dial,
                                Verdict::OpensAt(t) => Disposition::Postpone(t),
                                Verdict::Closed => Disposition::Expire,
                            }
                        },
                    )
                    .await?;
                if report.blocked > 0 {
                    tracing::info!(campaign = %c.id, blocked = report.blocked, "contacts on the do-not-call list skipped");
                }
                let Some(claimed) = report.claimed else {
                    if report.postponed == 0 && report.blocked == 0 && report.expired == 0 {
                        if self
                            .outbox
                            .campaign_completed_if_done(&c.id)
                            .await?
                            .is_some()
                        {
                            tracing::info!(campaign = %c.id, event = "campaign.completed", "campaign completed");
                        }
                        break;
                    }
                    continue;
                };
                self.pacer().start(allowed_at, &c.id, &trunk);
                let lease_gen = claimed.lease_gen;
                self.flights().insert(
                    call_id.clone(),
                    Flight {
                        campaign: c.id.clone(),
                        lease_gen,
                    },
                );
                let placing_on = trunk.clone();
                let failover = trunks.iter().filter(|t| **t != trunk).cloned().collect();
                let req = PlaceCall {
                    call_id: call_id.clone(),
                    campaign_id: c.id.clone(),
                    contact_id: claimed.contact.id.clone(),
                    attempt: claimed.attempt,
                    to: claimed.contact.number.clone(),
                    from: c.caller_number.clone(),
                    trunk,
                    failover,
                    agent_id: c.agent_id.clone(),
                    variables: serde_json::from_str(&claimed.contact.variables)
                        .unwrap_or(serde_json::Value::Object(Default::default())),
                    opt_out_digit: c.opt_out_digit.as_deref().and_then(|d| d.chars().next()),
                    amd: AmdMode::parse(&c.amd).unwrap_or_default(),
                    livemode: c.livemode,
                };
                let attempt_id = claimed.attempt_id.clone();
                let me = Arc::clone(self);
                self.placing
                    .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                tokio::spawn(async move {
                    let placed = me.dialer.place(req).await;
                    me.pacer().placed(&placing_on);
                    me.placing.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
                    match placed {
                        Ok(_) => {}
                        Err(DialError::NotPlaced(why)) => {
                            tracing::info!(call = %call_id, %why, "campaign call refused locally; attempt given back");
                            if let Err(e) = me.not_placed(&call_id, &attempt_id, lease_gen).await {
                                tracing::error!(call = %call_id, error = %e, "cannot give the attempt back");
                            }
                        }
                        Err(e) => {
                            tracing::warn!(call = %call_id, error = %e, "campaign call not placed");
                            if let Err(e) =
                                me.call_ended(&call_id, AttemptOutcome::Failed, None).await
                            {
                                tracing::error!(call = %call_id, error = %e, "cannot record a failed dial");
                            }
                        }
                    }
                });
            }
        }
        Ok(Pacer::soonest(waits))
    }

    /// Undoes the claim of a call the call layer refused before sending
    /// anything: the contact is due again with the same attempt number.
    async fn not_placed(
        &self,
        call_id: &str,
        attempt_id: &str,
        lease_gen: i64,
    ) -> Result<(), StoreError> {
        self.store
            .unclaim_attempt(attempt_id, self.fence(Some(lease_gen)))
            .await?;
        if let Some(f) = self.flights().remove(call_id) {
            self.pacer().finish(&f.campaign);
        }
        self.ended.notify_one();
        Ok(())
    }

    /// The outcome callback: the call layer invokes it once when a campaign
    /// call ends (repeats are ignored). Records the attempt, schedules a
    /// retry or closes the contact, adds an opt-out to the do-not-call list,
    /// and frees the call's slot.
    pub async fn call_ended(
        &self,
        call_id: &str,
        outcome: AttemptOutcome,
        duration_ms: Option<i64>,
    ) -> Result<(), StoreError> {
        let lease_gen = self.flights().get(call_id).map(|f| f.lease_gen);
        self.record_end(call_id, lease_gen, outcome, duration_ms)
            .await
    }

    /// This node's fence on a lease, under `lease_gen` when known.
    fn fence(&self, lease_gen: Option<i64>) -> Fence<'_> {
        Fence {
            owner: &self.cfg.owner,
            lease_gen,
        }
    }

    /// Records an end under the lease this node holds (generation
    /// `lease_gen`, or any of this node's when unknown): a lease taken over
    /// by another node records nothing here.
    async fn record_end(
        &self,
        call_id: &str,
        lease_gen: Option<i64>,
        outcome: AttemptOutcome,
        duration_ms: Option<i64>,
    ) -> Result<(), StoreError> {
        let ended_at = crate::store::now();
        let fence = Some(self.fence(lease_gen));
        let recorded = self
            .store
            .finish_attempt_fenced(call_id, fence, outcome, duration_ms, ended_at, |end| {
                let policy: RetryPolicy = serde_json::from_str(&end.retry_policy)
                    .map_err(|e| StoreError::Corrupt(format!("retry policy: {e}")))?;
                let next = policy.next(
                    outcome,
                    u32::try_from(end.same_outcome).unwrap_or(u32::MAX),
                    u32::try_from(end.attempts).unwrap_or(u32::MAX),
                    u32::try_from(end.max_attempts).unwrap_or(0),
                    ended_at,
                );
                Ok(match next {
                    Next::Retry(at) => AfterAttempt {
                        state: "pending",
                        next_attempt_at: Some(at),
                        add_dnc: false,
                    },
                    Next::Done(f) => AfterAttempt {
                        state: match f {
                            Final::Completed => "completed",
                            Final::Exhausted => "exhausted",
                            Final::OptedOut => "opted_out",
                        },
                        next_attempt_at: None,
                        add_dnc: f == Final::OptedOut,
                    },
                })
            })
            .await?;
        if let Some(f) = self.flights().remove(call_id) {
            self.pacer().finish(&f.campaign);
        }
        if let Some((end, _)) = recorded
            && self
                .outbox
                .campaign_completed_if_done(&end.campaign_id)
                .await?
                .is_some()
        {
            tracing::info!(campaign = %end.campaign_id, event = "campaign.completed", "campaign completed");
        }
        self.ended.notify_one();
        Ok(())
    }

    /// Asks the call layer about every call this node has in flight and
    /// records those that ended: the catch-up when end reports were missed.
    pub async fn reconcile(&self) -> Result<(), StoreError> {
        let ids: Vec<String> = self.flights().keys().cloned().collect();
        for id in ids {
            if let Ok(CallFate::Ended {
                outcome,
                duration_ms,
            }) = self.dialer.fate(&id).await
            {
                self.call_ended(&id, outcome, duration_ms).await?;
            }
        }
        Ok(())
    }

    /// Reconciles attempts left in flight by a crash (see the module doc).
    pub async fn recover(&self) -> Result<(), StoreError> {
        let dead_cutoff: Option<DateTime<Utc>> = (!self.cfg.recover_all)
            .then(|| Utc::now() - chrono::Duration::from_std(self.cfg.grace).unwrap_or_default());
        for f in self.store.in_flight_attempts(dead_cutoff).await? {
            if self.flights().contains_key(&f.call_id) {
                continue;
            }
            // The lease first (compare-and-set on the owner and generation
            // seen): one node recovers each attempt, and the dead owner's
            // late writes are fenced off before its call is looked at.
            let until = Utc::now() + self.cfg.lease;
            let owner = f.lease_owner.as_deref();
            let Some(lease_gen) = self
                .store
                .take_over_lease(&f.contact_id, owner, f.lease_gen, &self.cfg.owner, until)
                .await?
            else {
                continue;
            };
            tracing::info!(call = %f.call_id, contact = %f.contact_id, from = ?owner, "attempt of a dead node taken over");
            match self.dialer.fate(&f.call_id).await {
                Ok(CallFate::NeverPlaced) => {
                    tracing::info!(call = %f.call_id, contact = %f.contact_id, "attempt never placed; due again");
                    self.store
                        .unclaim_attempt(&f.attempt_id, self.fence(Some(lease_gen)))
                        .await?;
                }
                Ok(CallFate::Ended {
                    outcome,
                    duration_ms,
                }) => {
                    self.record_end(&f.call_id, Some(lease_gen), outcome, duration_ms)
                        .await?
                }
                Ok(CallFate::InProgress) => {
                    // Still up: adopted, counted against the caps, its
                    // lease renewed as this node's; its end is reported or
                    // found by the periodic reconcile.
                    self.pacer().adopt(Instant::now(), &f.campaign_id);
                    self.flights().insert(
                        f.call_id.clone(),
                        Flight {
                            campaign: f.campaign_id.clone(),
                            lease_gen,
                        },
                    );
                }
                Err(e) => {
                    // Kept as this node's, so the reconcile asks again.
                    tracing::warn!(call = %f.call_id, error = %e, "call fate unknown; will ask again");
                    self.flights().insert(
                        f.call_id.clone(),
                        Flight {
                            campaign: f.campaign_id.clone(),
                            lease_gen,
                        },
                    );
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use tokio::sync::mpsc;

    use super::*;
    use crate::model::CampaignStatus;
    use crate::store::campaigns::CampaignFields;
    use crate::store::contacts::NewContact;

    /// Records placements, tracks concurrency, and hands each call to the
    /// test, which ends it.
    struct FakeDialer {
        placed: Mutex<Vec<PlaceCall>>,
        live: AtomicUsize,
        max_live: AtomicUsize,
        ends: mpsc::UnboundedSender<String>,
        fates: Mutex<HashMap<String, CallFate>>,
        /// Numbers whose first placement the "call layer" refuses locally.
        refuse_once: Mutex<HashSet<String>>,
    }

    #[async_trait::async_trait]
    impl Dialer for FakeDialer {
        async fn place(&self, req: PlaceCall) -> Result<String, DialError> {
            if self.refuse_once.lock().unwrap().remove(&req.to) {
                return Err(DialError::NotPlaced("trunk at its cps".into()));
            }
            let live = self.live.fetch_add(1, Ordering::SeqCst) + 1;
            self.max_live.fetch_max(live, Ordering::SeqCst);
            let id = req.call_id.clone();
            self.placed.lock().unwrap().push(req);
            let _ = self.ends.send(id.clone());
            Ok(id)
        }
        async fn fate(&self, call_id: &str) -> Result<CallFate, DialError> {
            Ok(self
                .fates
                .lock()
                .unwrap()
                .get(call_id)
                .copied()
                .unwrap_or(CallFate::NeverPlaced))
        }
        fn calls_on_trunk(&self, _trunk: &str) -> u32 {
            u32::try_from(self.live.load(Ordering::SeqCst)).unwrap()
        }
    }

    async fn setup(contacts: usize) -> (tempfile::TempDir, Store, String) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::connect(&format!("sqlite://{}", dir.path().join("t.db").display()))
            .await
            .unwrap();
        store.migrate().await.unwrap();
        store
            .insert_agent("agt_1", "a", "echo", "{}", true)
            .await
            .unwrap();
        let policy = RetryPolicy {
            busy: crate::model::campaign::RetryRule {
                retries: 1,
                delay_seconds: 0,
            },
            ..RetryPolicy::default()
        };
        let schedule = Schedule {
            start_time: "00:00".into(),
            end_time: "23:59".into(),
            ..Schedule::default()
        };
        let c = store
            .insert_campaign(
                "cmp_1",
                CampaignFields {
                    name: "t",
                    agent_id: "agt_1",
                    caller_number: "+14155550100",
                    trunks: r#"["trk_a"]"#,
                    schedule: &serde_json::to_string(&schedule).unwrap(),
                    max_concurrent_calls: 4,
                    calls_per_second: 100.0,
                    retry_policy: &serde_json::to_string(&policy).unwrap(),
                    max_attempts: 3,
                    opt_out_digit: None,
                    amd: "off",
                    recording: None,
                },
                true,
            )
            .await
            .unwrap();
        let list: Vec<NewContact> = (0..contacts)
            .map(|i| NewContact {
                number: format!("+1415555{:04}", 1000 + i),
                timezone: None,
                variables: "{}".into(),
            })
            .collect();
        store.insert_contacts(&c.id, &list).await.unwrap();
        store
            .transition_campaign(
                &c.id,
                &[CampaignStatus::Draft],
                CampaignStatus::Running,
                None,
            )
            .await
            .unwrap();
        (dir, store, c.id)
    }

    fn driver(
        store: &Store,
    ) -> (
        Arc<CampaignRunner<FakeDialer>>,
        mpsc::UnboundedReceiver<String>,
    ) {
        let (tx, rx) = mpsc::unbounded_channel();
        let fake = Arc::new(FakeDialer {
            placed: Mutex::new(Vec::new()),
            live: AtomicUsize::new(0),
            max_live: AtomicUsize::new(0),
            ends: tx,
            fates: Mutex::new(HashMap::new()),
            refuse_once: Mutex::new(HashSet::new()),
        });
        let cfg = RunnerConfig {
            poll: Duration::from_millis(10),
            global_max_calls: 10,
            ..RunnerConfig::default()
        };
        let trunks: TrunkCaps = Box::new(|| {
            vec![(
                "trk_a".to_string(),
                Caps {
                    max_calls: 3,
                    cps: 0.0,
                },
            )]
        });
        let outbox = Outbox::new(store.clone());
        (Arc::new(CampaignRunner::new(outbox, fake, cfg, trunks)), rx)
    }

    /// Ends each placed call: odd-numbered contacts are busy on their first
    /// attempt, everyone answers after that.
    async fn end_calls(
        d: Arc<CampaignRunner<FakeDialer>>,
        mut rx: mpsc::UnboundedReceiver<String>,
        limit: usize,
    ) {
        for _ in 0..limit {
            let Some(call) = rx.recv().await else { return };
            tokio::time::sleep(Duration::from_millis(2)).await;
            let req = d
                .dialer
                .placed
                .lock()
                .unwrap()
                .iter()
                .find(|p| p.call_id == call)
                .cloned()
                .unwrap();
            let last: u32 = req.to[req.to.len() - 1..].parse().unwrap();
            let outcome = if last % 2 == 1 && req.attempt == 1 {
                AttemptOutcome::Busy
            } else {
                AttemptOutcome::Answered
            };
            d.dialer.live.fetch_sub(1, Ordering::SeqCst);
            d.call_ended(&call, outcome, Some(1000)).await.unwrap();
        }
    }

    /// Waits until the campaign completes, for at most 30 s: generous,
    /// so that a loaded machine does not fail the test, yet bounded.
    async fn wait_completed(store: &Store, campaign: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if store.get_campaign(campaign).await.unwrap().status == CampaignStatus::Completed {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_local_refusal_gives_the_attempt_back() {
        let (_dir, store, campaign) = setup(6).await;
        let (d, rx) = driver(&store);
        d.dialer
            .refuse_once
            .lock()
            .unwrap()
            .extend(["+14155551000".to_string(), "+14155551002".to_string()]);
        let (stop, stop_rx) = watch::channel(false);
        let runner = tokio::spawn(Arc::clone(&d).run(stop_rx));
        let ender = tokio::spawn(end_calls(Arc::clone(&d), rx, 100));
        wait_completed(&store, &campaign).await;
        let _ = stop.send(true);
        runner.await.unwrap();
        ender.abort();
        let placed = d.dialer.placed.lock().unwrap().clone();
        // Six first attempts and three busy retries; the refusals cost none.
        assert_eq!(placed.len(), 6 + 3, "{placed:?}");
        for number in ["+14155551000", "+14155551002"] {
            let attempts: Vec<i64> = placed
                .iter()
                .filter(|p| p.to == number)
                .map(|p| p.attempt)
                .collect();
            assert_eq!(attempts, vec![1], "{number} dialled once, as attempt 1");
        }
        assert!(d.dialer.refuse_once.lock().unwrap().is_empty());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn caps_hold_and_attempts_follow_the_policy() {
        let (_dir, store, campaign) = setup(40).await;
        store
            .add_dnc(&["+14155551003".to_string()], None, "api")
            .await
            .unwrap();
        let (d, rx) = driver(&store);
        let (stop, stop_rx) = watch::channel(false);
        let runner = tokio::spawn(Arc::clone(&d).run(stop_rx));
        let ender = tokio::spawn(end_calls(Arc::clone(&d), rx, 1000));
        wait_completed(&store, &campaign).await;
        let _ = stop.send(true);
        runner.await.unwrap();
        ender.abort();
        assert_eq!(
            store.get_campaign(&campaign).await.unwrap().status,
            CampaignStatus::Completed
        );
        let placed = d.dialer.placed.lock().unwrap().clone();
        // 39 dialable contacts, 19 of them odd and not on the list: busy once.
        assert_eq!(placed.len(), 39 + 19);
        assert!(
            placed.iter().all(|p| p.to != "+14155551003"),
            "DNC never dialled"
        );
        assert!(d.dialer.max_live.load(Ordering::SeqCst) <= 3, "trunk cap");
        let unique: HashSet<(String, i64)> = placed
            .iter()
            .map(|p| (p.contact_id.clone(), p.attempt))
            .collect();
        assert_eq!(unique.len(), placed.len(), "no attempt placed twice");
        let counts = store.campaign_counts(&campaign).await.unwrap();
        assert!(counts.contacts.contains(&("completed".to_string(), 39)));
        assert!(counts.contacts.contains(&("dnc".to_string(), 1)));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_restart_neither_repeats_nor_skips_an_attempt() {
        let (_dir, store, campaign) = setup(3).await;
        // Before the "crash": three claims. The first call was placed and
        // ended busy, the second is still up, the third was never placed.
        let mut calls = Vec::new();
        for i in 0..3 {
            let call = format!("call_{i}");
            let r = store
                .claim_contact(
                    &campaign,
                    Utc::now(),
                    10,
                    "old",
                    Utc::now(),
                    &call,
                    "trk_a",
                    |_| Disposition::Dial,
                )
                .await
                .unwrap();
            calls.push((call, r.claimed.unwrap()));
        }
        // Claims follow the import order (ids are monotonic), which the fake
        // relies on: only the second contact (odd) would be busy at first.
        let numbers: Vec<&str> = calls.iter().map(|c| c.1.contact.number.as_str()).collect();
        assert_eq!(numbers, ["+14155551000", "+14155551001", "+14155551002"]);
        let (d, rx) = driver(&store);
        {
            let mut fates = d.dialer.fates.lock().unwrap();
            fates.insert(
                calls[0].0.clone(),
                CallFate::Ended {
                    outcome: AttemptOutcome::Busy,
                    duration_ms: None,
                },
            );
            fates.insert(calls[1].0.clone(), CallFate::InProgress);
        }
        d.recover().await.unwrap();
        assert_eq!(d.active(), 1, "the live call is adopted");
        assert_eq!(
            store.renew_leases(&d.cfg.owner, Utc::now()).await.unwrap(),
            1,
            "with its lease, renewed by its new owner"
        );
        let (stop, stop_rx) = watch::channel(false);
        let runner = tokio::spawn(Arc::clone(&d).run(stop_rx));
        let ender = tokio::spawn(end_calls(Arc::clone(&d), rx, 100));
        tokio::time::sleep(Duration::from_millis(100)).await;
        // The adopted call ends now.
        d.call_ended(&calls[1].0, AttemptOutcome::Answered, Some(5))
            .await
            .unwrap();
        wait_completed(&store, &campaign).await;
        let _ = stop.send(true);
        runner.await.unwrap();
        ender.abort();
        let attempts = store.campaign_attempts(&campaign).await.unwrap();
        let per_contact = |id: &str| attempts.iter().filter(|a| a.0 == id).count();
        // Contact 0: busy (before) + retry after the restart.
        assert_eq!(per_contact(&calls[0].1.contact.id), 2);
        // Contact 1: the one call, never redialled.
        assert_eq!(per_contact(&calls[1].1.contact.id), 1);
        // Contact 2: its unplaced attempt 1 was placed exactly once, as attempt 1.
        let third: Vec<_> = attempts
            .iter()
            .filter(|a| a.0 == calls[2].1.contact.id)
            .collect();
        assert_eq!(third.len(), 1, "{attempts:?}");
        assert_eq!(third[0].1, 1);
        assert!(attempts.iter().all(|a| a.3.is_some()), "{attempts:?}");
        let placed = d.dialer.placed.lock().unwrap().clone();
        assert_eq!(
            placed.len(),
            2,
            "only the retry and the unplaced attempt: {placed:?}"
        );
    }
}
