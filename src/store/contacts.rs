//! Campaign contacts and their attempts: batched import deduplicated by
//! (campaign, number), the dialer's lease-based claim, the outcome of each
//! attempt and the recovery of attempts a crash left in flight.
//!
//! The claim runs in one transaction: it picks due contacts (on PostgreSQL
//! with `FOR UPDATE SKIP LOCKED`, so nodes never take the same row), sets
//! aside those on the do-not-call list or outside their calling window, and
//! leases one contact while writing its attempt row with the call id chosen
//! up front. A contact is therefore never dialled twice for one attempt.

use chrono::{DateTime, Utc};

use super::{Page, Pool, Result, Store, StoreError, Window, on_pool};
use crate::ids;
use crate::model::AttemptOutcome;

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ContactRecord {
    pub id: String,
    pub campaign_id: String,
    pub number: String,
    pub timezone: Option<String>,
    /// JSON object of variables for the agent.
    pub variables: String,
    pub state: String,
    pub attempts: i64,
    pub next_attempt_at: Option<DateTime<Utc>>,
    pub last_outcome: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

const COLUMNS: &str =
    "id, campaign_id, number, timezone, variables, state, attempts, next_attempt_at,
    last_outcome, created_at, updated_at";

/// A contact to import (number normalized, variables as JSON text).
#[derive(Debug, Clone)]
pub struct NewContact {
    pub number: String,
    pub timezone: Option<String>,
    pub variables: String,
}

/// A due contact, as the claim sees it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct DueContact {
    pub id: String,
    pub number: String,
    pub timezone: Option<String>,
    pub variables: String,
    pub attempts: i64,
    pub blocked: bool,
}

/// What the claim does with a due contact that is not blocked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    Dial,
    /// Outside its calling window: wait until then.
    Postpone(DateTime<Utc>),
    /// Its window never opens again.
    Expire,
}

/// A leased contact and its new attempt.
#[derive(Debug, Clone)]
pub struct Claimed {
    pub contact: DueContact,
    pub attempt_id: String,
    /// 1 for the first attempt.
    pub attempt: i64,
    pub call_id: String,
    /// The contact's lease generation under this claim: the fencing token
    /// every later write of the attempt carries.
    pub lease_gen: i64,
}

/// What one claim did.
#[derive(Debug, Clone, Default)]
pub struct ClaimReport {
    pub claimed: Option<Claimed>,
    pub postponed: u32,
    pub blocked: u32,
    pub expired: u32,
}

/// An attempt still in flight (no outcome yet).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct InFlight {
    pub attempt_id: String,
    pub call_id: String,
    pub campaign_id: String,
    pub contact_id: String,
    pub trunk: Option<String>,
    pub lease_owner: Option<String>,
    /// The contact's lease generation as read.
    pub lease_gen: i64,
}

/// The lease a write must still hold to change anything: the owner, and
/// the generation when the writer knows it. A node whose lease was taken
/// over (it was presumed dead) carries an older one and writes nothing.
#[derive(Debug, Clone, Copy)]
pub struct Fence<'a> {
    pub owner: &'a str,
    pub lease_gen: Option<i64>,
}

/// What an attempt's end needs to decide the contact's fate.
#[derive(Debug, Clone)]
pub struct AttemptEnd {
    pub campaign_id: String,
    pub contact_id: String,
    pub number: String,
    pub trunk: Option<String>,
    /// The campaign's retry policy document.
    pub retry_policy: String,
    pub max_attempts: i64,
    /// Attempts made so far, this one included.
    pub attempts: i64,
    /// Attempts that ended with this outcome, this one included.
    pub same_outcome: i64,
}

/// An attempt without its outcome, as [`Store::finish_attempt`] reads it.
#[derive(sqlx::FromRow)]
struct AttemptRow {
    campaign_id: String,
    contact_id: String,
    number: String,
    trunk: Option<String>,
    retry_policy: String,
    max_attempts: i64,
    attempts: i64,
}

/// The contact's fate after an attempt.
#[derive(Debug, Clone)]
pub struct AfterAttempt {
    /// `pending` (with `next_attempt_at`) or a final state.
    pub state: &'static str,
    pub next_attempt_at: Option<DateTime<Utc>>,
    /// Adds the number to the do-not-call list (an opt-out).
    pub add_dnc: bool,
}

/// How many contacts one multi-row INSERT carries (6 parameters each).
const BATCH: usize = 500;

impl Store {
    /// Inserts contacts into `campaign_id` in one transaction, skipping
    /// numbers the campaign already has; how many were new.
    pub async fn insert_contacts(&self, campaign_id: &str, contacts: &[NewContact]) -> Result<u64> {
        if contacts.is_empty() {
            return Ok(0);
        }
        let now = super::now();
        let inserted = on_pool!(self, p => {
            let mut tx = p.begin().await?;
            let mut inserted = 0;
            for chunk in contacts.chunks(BATCH) {
                let mut q = sqlx::QueryBuilder::new(
                    "INSERT INTO campaign_contacts (id, campaign_id, number, timezone, variables, state,
                         attempts, next_attempt_at, created_at, updated_at) ");
                q.push_values(chunk, |mut b, c| {
                    b.push_bind(ids::new(ids::CONTACT))
                        .push_bind(campaign_id)
                        .push_bind(c.number.as_str())
                        .push_bind(c.timezone.as_deref())
                        .push_bind(c.variables.as_str())
                        .push("'pending'")
                        .push("0")
                        .push_bind(now)
                        .push_bind(now)
                        .push_bind(now);
                });
                q.push(" ON CONFLICT (campaign_id, number) DO NOTHING");
                inserted += q.build().execute(&mut *tx).await?.rows_affected();
            }
            tx.commit().await?;
            Ok::<u64, sqlx::Error>(inserted)
        })?;
        Ok(inserted)
    }

    /// Marks the campaign's waiting contacts whose number is on the
    /// do-not-call list; how many.
    pub async fn block_dnc_contacts(&self, campaign_id: Option<&str>) -> Result<u64> {
        let now = super::now();
        Ok(on_pool!(self, p => sqlx::query(
            "UPDATE campaign_contacts SET state = 'dnc', updated_at = $2
             WHERE ($1 IS NULL OR campaign_id = $1) AND state = 'pending'
               AND number IN (SELECT number FROM do_not_call)")
            .bind(campaign_id).bind(now).execute(p).await.map(|r| r.rows_affected()))?)
    }

    pub async fn get_contact(&self, campaign_id: &str, id: &str) -> Result<ContactRecord> {
        let sql =
            format!("SELECT {COLUMNS} FROM campaign_contacts WHERE campaign_id = $1 AND id = $2");
        on_pool!(self, p => sqlx::query_as::<_, ContactRecord>(sqlx::AssertSqlSafe(sql))
            .bind(campaign_id).bind(id).fetch_optional(p).await)?
        .ok_or(StoreError::NotFound)
    }

    /// The campaign's contacts in the order they were added.
    pub async fn list_contacts(
        &self,
        campaign_id: &str,
        state: Option<&str>,
        w: Window,
    ) -> Result<Page<ContactRecord>> {
        let sql = format!(
            "SELECT {COLUMNS} FROM campaign_contacts WHERE campaign_id = $1 AND ($2 IS NULL OR state = $2)
             ORDER BY id LIMIT $3 OFFSET $4"
        );
        let items = on_pool!(self, p => sqlx::query_as::<_, ContactRecord>(sqlx::AssertSqlSafe(sql))
            .bind(campaign_id).bind(state).bind(w.limit).bind(w.offset).fetch_all(p).await)?;
        let total: i64 = on_pool!(self, p => sqlx::query_scalar(
            "SELECT COUNT(*) FROM campaign_contacts WHERE campaign_id = $1 AND ($2 IS NULL OR state = $2)")
            .bind(campaign_id).bind(state).fetch_one(p).await)?;
        Ok(Page { items, total })
    }

    /// Leases the next due contact of `campaign_id` that may be dialled now,
    /// looking at no more than `scan` due contacts; `decide` places each in
    /// its calling window. The attempt row is written with `call_id`.
    #[allow(clippy::too_many_arguments)] // one statement's worth of inputs
    pub async fn claim_contact(
        &self,
        campaign_id: &str,
        now: DateTime<Utc>,
        scan: i64,
        owner: &str,
        lease_until: DateTime<Utc>,
        call_id: &str,
        trunk: &str,
        mut decide: impl FnMut(&DueContact) -> Disposition,
    ) -> Result<ClaimReport> {
        const SELECT: &str = "SELECT c.id, c.number, c.timezone, c.variables, c.attempts,
                EXISTS (SELECT 1 FROM do_not_call d WHERE d.number = c.number) AS blocked
             FROM campaign_contacts c
             WHERE c.campaign_id = $1 AND c.state = 'pending' AND c.next_attempt_at <= $2
               AND EXISTS (SELECT 1 FROM campaigns m WHERE m.id = $1 AND m.status = 'running')
             ORDER BY c.next_attempt_at, c.id LIMIT $3";
        const SELECT_LOCKED: &str = "SELECT c.id, c.number, c.timezone, c.variables, c.attempts,
                EXISTS (SELECT 1 FROM do_not_call d WHERE d.number = c.number) AS blocked
             FROM campaign_contacts c
             WHERE c.campaign_id = $1 AND c.state = 'pending' AND c.next_attempt_at <= $2
               AND EXISTS (SELECT 1 FROM campaigns m WHERE m.id = $1 AND m.status = 'running')
             ORDER BY c.next_attempt_at, c.id LIMIT $3 FOR UPDATE OF c SKIP LOCKED";
        let select = match self.pool {
            Pool::Sqlite(_) => SELECT,
            Pool::Postgres(_) => SELECT_LOCKED,
        };
        let stamp = super::now();
        let sqlite = matches!(self.pool, Pool::Sqlite(_));
        let report = on_pool!(self, p => {
            let mut tx = p.begin().await?;
            if sqlite {
                // Take SQLite's write lock first (waiting out the busy
                // timeout) rather than fail upgrading a read lock later.
                sqlx::query("UPDATE campaigns SET updated_at = updated_at WHERE id = $1")
                    .bind(campaign_id).execute(&mut *tx).await?;
            }
            let due: Vec<DueContact> = sqlx::query_as(select)
                .bind(campaign_id).bind(now).bind(scan).fetch_all(&mut *tx).await?;
            let mut report = ClaimReport::default();
            for c in due {
                let (state, next) = if c.blocked {
                    report.blocked += 1;
                    ("dnc", None)
                } else {
                    match decide(&c) {
                        Disposition::Postpone(at) => {
                            report.postponed += 1;
                            ("pending", Some(at))
                        }
                        Disposition::Expire => {
                            report.expired += 1;
                            ("expired", None)
                        }
                        Disposition::Dial => {
                            let leased: Option<i64> = sqlx::query_scalar(
                                "UPDATE campaign_contacts SET state = 'dialing', attempts = attempts + 1,
                                     lease_owner = $2, lease_until = $3, updated_at = $4,
                                     lease_gen = lease_gen + 1
                                 WHERE id = $1 AND state = 'pending' RETURNING lease_gen")
                                .bind(&c.id).bind(owner).bind(lease_until).bind(stamp)
                                .fetch_optional(&mut *tx).await?;
                            if let Some(lease_gen) = leased {
                                let attempt_id = ids::new(ids::ATTEMPT);
                                sqlx::query(
                                    "INSERT INTO campaign_attempts (id, campaign_id, contact_id, attempt,
                                         call_id, trunk, created_at, updated_at, lease_gen)
                                     VALUES ($1, $2, $3, $4, $5, $6, $7, $7, $8)")
                                    .bind(&attempt_id).bind(campaign_id).bind(&c.id)
                                    .bind(c.attempts + 1).bind(call_id).bind(trunk).bind(stamp)
                                    .bind(lease_gen)
                                    .execute(&mut *tx).await?;
                                report.claimed = Some(Claimed {
                                    attempt: c.attempts + 1,
                                    contact: c,
                                    attempt_id,
                                    call_id: call_id.to_string(),
                                    lease_gen,
                                });
                                break;
                            }
                            continue;
                        }
                    }
                };
                sqlx::query(
                    "UPDATE campaign_contacts SET state = $2, next_attempt_at = $3, updated_at = $4
                     WHERE id = $1")
                    .bind(&c.id).bind(state).bind(next).bind(stamp).execute(&mut *tx).await?;
            }
            tx.commit().await?;
            Ok::<ClaimReport, sqlx::Error>(report)
        })?;
        Ok(report)
    }

    /// Records how the attempt placed as `call_id` ended and moves its
    /// contact on as `decide` says, in one transaction. `None` when the
    /// attempt is unknown or already has its outcome (a repeated report).
    pub async fn finish_attempt(
        &self,
        call_id: &str,
        outcome: AttemptOutcome,
        duration_ms: Option<i64>,
        ended_at: DateTime<Utc>,
        decide: impl FnOnce(&AttemptEnd) -> Result<AfterAttempt>,
    ) -> Result<Option<(AttemptEnd, AfterAttempt)>> {
        self.finish_attempt_fenced(call_id, None, outcome, duration_ms, ended_at, decide)
            .await
    }

    /// [`Store::finish_attempt`], only while the contact's lease is as
    /// `fence` says (`None`: unfenced, for tools and tests); otherwise
    /// `None` and nothing is written.
    pub async fn finish_attempt_fenced(
        &self,
        call_id: &str,
        fence: Option<Fence<'_>>,
        outcome: AttemptOutcome,
        duration_ms: Option<i64>,
        ended_at: DateTime<Utc>,
        decide: impl FnOnce(&AttemptEnd) -> Result<AfterAttempt>,
    ) -> Result<Option<(AttemptEnd, AfterAttempt)>> {
        let owner = fence.map(|f| f.owner);
        let lease_gen = fence.and_then(|f| f.lease_gen);
        let stamp = super::now();
        let outcome = outcome.as_str();
        on_pool!(self, p => {
            let mut tx = p.begin().await?;
            // A write first: takes SQLite's write lock up front and locks the
            // attempt row on PostgreSQL, so two reports of one end serialize.
            sqlx::query("UPDATE campaign_attempts SET updated_at = updated_at WHERE call_id = $1")
                .bind(call_id).execute(&mut *tx).await?;
            let row: Option<AttemptRow> = sqlx::query_as(
                "SELECT a.campaign_id, a.contact_id, c.number, a.trunk, m.retry_policy, m.max_attempts,
                        c.attempts
                 FROM campaign_attempts a
                 JOIN campaign_contacts c ON c.id = a.contact_id
                 JOIN campaigns m ON m.id = a.campaign_id
                 WHERE a.call_id = $1 AND a.outcome IS NULL
                   AND ($2 IS NULL OR c.lease_owner = $2) AND ($3 IS NULL OR c.lease_gen = $3)")
                .bind(call_id).bind(owner).bind(lease_gen).fetch_optional(&mut *tx).await?;
            let Some(row) = row else {
                return Ok(None);
            };
            let earlier: i64 = sqlx::query_scalar(
                "SELECT COUNT(*) FROM campaign_attempts WHERE contact_id = $1 AND outcome = $2")
                .bind(&row.contact_id).bind(outcome).fetch_one(&mut *tx).await?;
            let end = AttemptEnd {
                campaign_id: row.campaign_id,
                contact_id: row.contact_id,
                number: row.number,
                trunk: row.trunk,
                retry_policy: row.retry_policy,
                max_attempts: row.max_attempts,
                attempts: row.attempts,
                same_outcome: earlier + 1,
            };
            let after = decide(&end)?;
            sqlx::query(
                "UPDATE campaign_attempts SET outcome = $2, duration_ms = $3, ended_at = $4,
                     next_attempt_at = $5, updated_at = $6
                 WHERE call_id = $1 AND outcome IS NULL")
                .bind(call_id).bind(outcome).bind(duration_ms).bind(ended_at)
                .bind(after.next_attempt_at).bind(stamp).execute(&mut *tx).await?;
            sqlx::query(
                "UPDATE campaign_contacts SET state = $2, next_attempt_at = $3, last_outcome = $4,
                     lease_owner = NULL, lease_until = NULL, updated_at = $5
                 WHERE id = $1")
                .bind(&end.contact_id).bind(after.state).bind(after.next_attempt_at).bind(outcome)
                .bind(stamp).execute(&mut *tx).await?;
            if after.add_dnc {
                sqlx::query(
                    "INSERT INTO do_not_call (id, number, reason, source, created_at, updated_at)
                     VALUES ($1, $2, $4, 'opt_out', $3, $3)
                     ON CONFLICT (number) DO NOTHING")
                    .bind(ids::new(ids::DNC)).bind(&end.number).bind(stamp)
                    .bind(format!("opted out during call {call_id} of campaign {}", end.campaign_id))
                    .execute(&mut *tx).await?;
            }
            tx.commit().await?;
            Ok::<_, StoreError>(Some((end, after)))
        })
    }

    /// Attempts without an outcome whose contact's lease owner is dead at
    /// `dead_cutoff` (no heartbeat since, stopped, or never seen), or all of
    /// them when it is `None` (a single node after a restart). An expired
    /// lease alone is not enough: a live owner (a draining node, one whose
    /// renewal failed once) still runs the call.
    pub async fn in_flight_attempts(
        &self,
        dead_cutoff: Option<DateTime<Utc>>,
    ) -> Result<Vec<InFlight>> {
        Ok(on_pool!(self, p => sqlx::query_as::<_, InFlight>(
            "SELECT a.id AS attempt_id, a.call_id, a.campaign_id, a.contact_id, a.trunk, c.lease_owner,
                    c.lease_gen
             FROM campaign_attempts a JOIN campaign_contacts c ON c.id = a.contact_id
             WHERE a.outcome IS NULL AND c.state = 'dialing'
               AND ($1 IS NULL OR NOT EXISTS (
                   SELECT 1 FROM nodes n WHERE n.id = c.lease_owner
                     AND n.stopped_at IS NULL AND n.heartbeat_at >= $1))
             ORDER BY a.id")
            .bind(dead_cutoff).fetch_all(p).await)?)
    }

    /// Undoes the claim of an attempt whose call was never placed: the
    /// attempt row goes and the contact is due again, with the same attempt
    /// number next time.
    /// Fenced: only while the contact is leased to `fence.owner` (under
    /// `fence.lease_gen` when given).
    pub async fn unclaim_attempt(&self, attempt_id: &str, fence: Fence<'_>) -> Result<()> {
        let stamp = super::now();
        on_pool!(self, p => {
            let mut tx = p.begin().await?;
            let contact: Option<String> = sqlx::query_scalar(
                "DELETE FROM campaign_attempts WHERE id = $1 AND outcome IS NULL
                   AND EXISTS (SELECT 1 FROM campaign_contacts c
                               WHERE c.id = campaign_attempts.contact_id AND c.lease_owner = $2
                                 AND ($3 IS NULL OR c.lease_gen = $3))
                 RETURNING contact_id")
                .bind(attempt_id).bind(fence.owner).bind(fence.lease_gen)
                .fetch_optional(&mut *tx).await?;
            if let Some(contact) = contact {
                sqlx::query(
                    "UPDATE campaign_contacts SET state = 'pending', attempts = attempts - 1,
                         lease_owner = NULL, lease_until = NULL, next_attempt_at = $2, updated_at = $2
                     WHERE id = $1 AND state = 'dialing'")
                    .bind(&contact).bind(stamp).execute(&mut *tx).await?;
            }
            tx.commit().await?;
            Ok::<(), sqlx::Error>(())
        })?;
        Ok(())
    }

    /// Moves the lease of an in-flight contact from `seen_owner` under
    /// `seen_gen` (as [`Store::in_flight_attempts`] read them) to `owner`
    /// until `until`, bumping the generation: the old owner's writes are
    /// fenced off from here. The new generation; `None` when another node
    /// took it over first, so one node recovers it.
    pub async fn take_over_lease(
        &self,
        contact_id: &str,
        seen_owner: Option<&str>,
        seen_gen: i64,
        owner: &str,
        until: DateTime<Utc>,
    ) -> Result<Option<i64>> {
        let stamp = super::now();
        Ok(on_pool!(self, p => sqlx::query_scalar(
            "UPDATE campaign_contacts SET lease_owner = $3, lease_until = $4, updated_at = $5,
                 lease_gen = lease_gen + 1
             WHERE id = $1 AND state = 'dialing' AND lease_gen = $6
               AND (lease_owner = $2 OR (lease_owner IS NULL AND $2 IS NULL))
             RETURNING lease_gen")
            .bind(contact_id).bind(seen_owner).bind(owner).bind(until).bind(stamp).bind(seen_gen)
            .fetch_optional(p).await)?)
    }

    /// Extends the leases `owner` holds.
    pub async fn renew_leases(&self, owner: &str, until: DateTime<Utc>) -> Result<u64> {
        Ok(on_pool!(self, p => sqlx::query(
            "UPDATE campaign_contacts SET lease_until = $2 WHERE lease_owner = $1 AND state = 'dialing'")
            .bind(owner).bind(until).execute(p).await.map(|r| r.rows_affected()))?)
    }

    /// Every attempt of a campaign (contact id, attempt number, call id,
    /// outcome), for tests and audits.
    pub async fn campaign_attempts(
        &self,
        campaign_id: &str,
    ) -> Result<Vec<(String, i64, String, Option<AttemptOutcome>)>> {
        Ok(on_pool!(self, p => sqlx::query_as(
            "SELECT contact_id, attempt, call_id, outcome FROM campaign_attempts
             WHERE campaign_id = $1 ORDER BY contact_id, attempt")
            .bind(campaign_id).fetch_all(p).await)?)
    }
}
