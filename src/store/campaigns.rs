//! Campaigns: the definition (JSON documents for trunks, schedule and retry
//! policy, opaque here) and the status machine's writes, each guarded by the
//! status it expects so two writers cannot both win.
//!
//! Every status change writes its `campaign.*` event through the outbox in
//! the same transaction ([`CampaignEmit`], rendered by the caller from the
//! row as the transaction left it), so a receiver hears of every change
//! that happened and of none that did not.

use chrono::{DateTime, Utc};

use super::events::{NewEvent, write_event};
use super::{Page, Result, Store, StoreError, Window, on_pool};
use crate::media::amd::AmdMode;
use crate::model::{Campaign, CampaignStatus};

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct CampaignRecord {
    pub id: String,
    pub name: String,
    pub agent_id: String,
    pub caller_number: String,
    /// JSON array of trunk ids.
    pub trunks: String,
    pub status: CampaignStatus,
    /// JSON schedule document.
    pub schedule: String,
    pub max_concurrent_calls: i64,
    pub calls_per_second: f64,
    /// JSON retry policy document.
    pub retry_policy: String,
    pub max_attempts: i64,
    /// The DTMF key that opts a callee out, if any.
    pub opt_out_digit: Option<String>,
    /// Answering-machine detection: `off`, `hangup` or `message_after_beep`.
    pub amd: String,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// Asked for the agent of each attempt, if set (its secret is read by
    /// [`Store::campaign_agent_webhook`] only).
    pub agent_webhook_url: Option<String>,
    /// `false` for a test-mode campaign: it dials on the simulated carrier.
    pub livemode: bool,
    /// JSON recording settings of its calls (`RecordingSettings`), if set.
    pub recording: Option<String>,
}

/// The campaign as the API and the webhooks show it.
impl TryFrom<CampaignRecord> for Campaign {
    type Error = StoreError;

    fn try_from(r: CampaignRecord) -> Result<Campaign> {
        let corrupt = |what: &str, e: &dyn std::fmt::Display| {
            StoreError::Corrupt(format!("stored campaign {} {what}: {e}", r.id))
        };
        let recording = r
            .recording
            .as_deref()
            .map(serde_json::from_str)
            .transpose()
            .map_err(|e| corrupt("recording", &e))?;
        Ok(Campaign {
            trunk_ids: serde_json::from_str(&r.trunks).map_err(|e| corrupt("trunks", &e))?,
            schedule: serde_json::from_str(&r.schedule).map_err(|e| corrupt("schedule", &e))?,
            retry_policy: serde_json::from_str(&r.retry_policy)
                .map_err(|e| corrupt("retry policy", &e))?,
            amd: AmdMode::parse(&r.amd).ok_or_else(|| corrupt("amd", &r.amd))?,
            status: r.status,
            opt_out_digit: r.opt_out_digit,
            id: r.id,
            name: r.name,
            agent_id: r.agent_id,
            caller_number: r.caller_number,
            max_concurrent_calls: r.max_concurrent_calls,
            calls_per_second: r.calls_per_second,
            max_attempts: r.max_attempts,
            started_at: r.started_at,
            finished_at: r.finished_at,
            created_at: r.created_at,
            updated_at: r.updated_at,
            agent_webhook_url: r.agent_webhook_url,
            agent_webhook_secret: None,
            livemode: r.livemode,
            recording,
        })
    }
}

/// Renders the event of a campaign status change from the campaign row as
/// the transaction left it.
pub type CampaignEmitFn = dyn Fn(&CampaignRecord) -> Result<NewEvent> + Send + Sync;

/// The event a campaign status change writes, if any.
pub type CampaignEmit<'a> = Option<&'a CampaignEmitFn>;

/// The writable fields of a campaign.
pub struct CampaignFields<'a> {
    pub name: &'a str,
    pub agent_id: &'a str,
    pub caller_number: &'a str,
    pub trunks: &'a str,
    pub schedule: &'a str,
    pub max_concurrent_calls: i64,
    pub calls_per_second: f64,
    pub retry_policy: &'a str,
    pub max_attempts: i64,
    pub opt_out_digit: Option<&'a str>,
    pub amd: &'a str,
    /// JSON recording settings, `None` when the campaign sets none.
    pub recording: Option<&'a str>,
}

const COLUMNS: &str =
    "id, name, agent_id, caller_number, trunks, status, schedule, max_concurrent_calls,
    calls_per_second, retry_policy, max_attempts, opt_out_digit, amd, started_at, finished_at,
    created_at, updated_at, agent_webhook_url, livemode, recording";

/// Counts behind `GET /v1/campaigns/{id}/stats`.
#[derive(Debug, Clone, Default)]
pub struct CampaignCounts {
    /// Contacts per state.
    pub contacts: Vec<(String, i64)>,
    /// Finished attempts per outcome.
    pub outcomes: Vec<(String, i64)>,
    /// Attempts in flight.
    pub in_flight: i64,
    /// Mean duration of answered attempts, in milliseconds.
    pub answered_avg_ms: Option<f64>,
    /// Sum of the attempts each pending contact may still need at least (one each).
    pub pending: i64,
}

impl Store {
    pub async fn insert_campaign(
        &self,
        id: &str,
        f: CampaignFields<'_>,
        livemode: bool,
    ) -> Result<CampaignRecord> {
        let now = super::now();
        on_pool!(self, p => sqlx::query(
            "INSERT INTO campaigns (id, name, agent_id, caller_number, trunks, status, schedule,
                 max_concurrent_calls, calls_per_second, retry_policy, max_attempts, opt_out_digit, amd,
                 created_at, updated_at, livemode, recording)
             VALUES ($1, $2, $3, $4, $5, 'draft', $6, $7, $8, $9, $10, $12, $13, $11, $11, $14, $15)")
            .bind(id).bind(f.name).bind(f.agent_id).bind(f.caller_number).bind(f.trunks)
            .bind(f.schedule).bind(f.max_concurrent_calls).bind(f.calls_per_second)
            .bind(f.retry_policy).bind(f.max_attempts).bind(now).bind(f.opt_out_digit).bind(f.amd)
            .bind(livemode).bind(f.recording)
            .execute(p).await.map(|r| r.rows_affected()))?;
        self.get_campaign(id).await
    }

    pub async fn get_campaign(&self, id: &str) -> Result<CampaignRecord> {
        let sql = format!("SELECT {COLUMNS} FROM campaigns WHERE id = $1");
        on_pool!(self, p => sqlx::query_as::<_, CampaignRecord>(sqlx::AssertSqlSafe(sql))
            .bind(id).fetch_optional(p).await)?
        .ok_or(StoreError::NotFound)
    }

    /// The campaigns of one mode (`livemode`), newest first.
    pub async fn list_campaigns(
        &self,
        status: Option<CampaignStatus>,
        livemode: bool,
        w: Window,
    ) -> Result<Page<CampaignRecord>> {
        let status = status.map(CampaignStatus::as_str);
        let sql = format!(
            "SELECT {COLUMNS} FROM campaigns WHERE ($1 IS NULL OR status = $1) AND livemode = $4
             ORDER BY created_at DESC, id DESC LIMIT $2 OFFSET $3"
        );
        let items = on_pool!(self, p => sqlx::query_as::<_, CampaignRecord>(sqlx::AssertSqlSafe(sql))
            .bind(status).bind(w.limit).bind(w.offset).bind(livemode).fetch_all(p).await)?;
        let total: i64 = on_pool!(self, p => sqlx::query_scalar(
            "SELECT COUNT(*) FROM campaigns WHERE ($1 IS NULL OR status = $1) AND livemode = $2")
            .bind(status).bind(livemode).fetch_one(p).await)?;
        Ok(Page { items, total })
    }

    /// Campaigns the dialer works on.
    pub async fn running_campaigns(&self) -> Result<Vec<CampaignRecord>> {
        let sql = format!("SELECT {COLUMNS} FROM campaigns WHERE status = 'running' ORDER BY id");
        Ok(
            on_pool!(self, p => sqlx::query_as::<_, CampaignRecord>(sqlx::AssertSqlSafe(sql))
            .fetch_all(p).await)?,
        )
    }

    /// Updates a campaign that is `draft` or `paused`; `Conflict` otherwise.
    pub async fn update_campaign(&self, id: &str, f: CampaignFields<'_>) -> Result<CampaignRecord> {
        let now = super::now();
        let done = on_pool!(self, p => sqlx::query(
            "UPDATE campaigns SET name = $2, agent_id = $3, caller_number = $4, trunks = $5,
                 schedule = $6, max_concurrent_calls = $7, calls_per_second = $8, retry_policy = $9,
                 max_attempts = $10, updated_at = $11, opt_out_digit = $12, amd = $13,
                 recording = $14
             WHERE id = $1 AND status IN ('draft', 'paused')")
            .bind(id).bind(f.name).bind(f.agent_id).bind(f.caller_number).bind(f.trunks)
            .bind(f.schedule).bind(f.max_concurrent_calls).bind(f.calls_per_second)
            .bind(f.retry_policy).bind(f.max_attempts).bind(now).bind(f.opt_out_digit).bind(f.amd)
            .bind(f.recording)
            .execute(p).await.map(|r| r.rows_affected()))?;
        if done == 0 {
            let current = self.get_campaign(id).await?;
            return Err(StoreError::Conflict(format!(
                "a {} campaign cannot be changed",
                current.status
            )));
        }
        self.get_campaign(id).await
    }

    /// Deletes a campaign that is not running, with its contacts and attempts.
    pub async fn delete_campaign(&self, id: &str) -> Result<()> {
        let done = on_pool!(self, p => sqlx::query(
            "DELETE FROM campaigns WHERE id = $1 AND status <> 'running'")
            .bind(id).execute(p).await.map(|r| r.rows_affected()))?;
        if done == 0 {
            self.get_campaign(id).await?;
            return Err(StoreError::Conflict(
                "a running campaign cannot be deleted".into(),
            ));
        }
        Ok(())
    }

    /// Moves a campaign from one of `from` (at most three) to `to`; `Conflict` when it is in
    /// another status. `running` stamps `started_at` the first time;
    /// `completed` and `canceled` stamp `finished_at`, and `canceled` cancels
    /// the contacts still waiting. `emit`'s event is written with the change.
    pub async fn transition_campaign(
        &self,
        id: &str,
        from: &[CampaignStatus],
        to: CampaignStatus,
        emit: CampaignEmit<'_>,
    ) -> Result<CampaignRecord> {
        let now = super::now();
        let pick = |i: usize| from.get(i).or(from.first()).map_or("", |s| s.as_str());
        let finished =
            matches!(to, CampaignStatus::Completed | CampaignStatus::Canceled).then_some(now);
        let select = format!("SELECT {COLUMNS} FROM campaigns WHERE id = $1");
        let changed = on_pool!(self, p => {
            let mut tx = p.begin().await?;
            let done = sqlx::query(
                "UPDATE campaigns SET status = $2, updated_at = $3,
                     started_at = CASE WHEN $2 = 'running' AND started_at IS NULL THEN $3 ELSE started_at END,
                     finished_at = COALESCE($6, finished_at)
                 WHERE id = $1 AND status IN ($4, $5, $7)")
                .bind(id).bind(to.as_str()).bind(now).bind(pick(0)).bind(pick(1)).bind(finished).bind(pick(2))
                .execute(&mut *tx).await?.rows_affected();
            if done == 0 {
                Ok::<_, StoreError>(None)
            } else {
                if to == CampaignStatus::Canceled {
                    sqlx::query(
                        "UPDATE campaign_contacts SET state = 'canceled', updated_at = $2
                         WHERE campaign_id = $1 AND state = 'pending'")
                        .bind(id).bind(now).execute(&mut *tx).await?;
                }
                let record = sqlx::query_as::<_, CampaignRecord>(sqlx::AssertSqlSafe(select))
                    .bind(id).fetch_one(&mut *tx).await?;
                if let Some(emit) = emit {
                    write_event!(self, tx, &emit(&record)?);
                }
                tx.commit().await?;
                Ok(Some(record))
            }
        })?;
        match changed {
            Some(record) => Ok(record),
            None => {
                let current = self.get_campaign(id).await?;
                Err(StoreError::Conflict(format!(
                    "the campaign is {}; it cannot become {to}",
                    current.status
                )))
            }
        }
    }

    /// Marks a running campaign completed when no contact waits or dials,
    /// writing `emit`'s event with it; the campaign when it did.
    pub async fn complete_campaign_if_done(
        &self,
        id: &str,
        emit: CampaignEmit<'_>,
    ) -> Result<Option<CampaignRecord>> {
        let now = super::now();
        let select = format!("SELECT {COLUMNS} FROM campaigns WHERE id = $1");
        on_pool!(self, p => {
            let mut tx = p.begin().await?;
            let done = sqlx::query(
                "UPDATE campaigns SET status = 'completed', finished_at = $2, updated_at = $2
                 WHERE id = $1 AND status = 'running' AND NOT EXISTS (
                     SELECT 1 FROM campaign_contacts
                     WHERE campaign_id = $1 AND state IN ('pending', 'dialing'))")
                .bind(id).bind(now).execute(&mut *tx).await?.rows_affected();
            if done == 0 {
                return Ok(None);
            }
            let record = sqlx::query_as::<_, CampaignRecord>(sqlx::AssertSqlSafe(select))
                .bind(id).fetch_one(&mut *tx).await?;
            if let Some(emit) = emit {
                write_event!(self, tx, &emit(&record)?);
            }
            tx.commit().await?;
            Ok::<_, StoreError>(Some(record))
        })
    }

    pub async fn campaign_counts(&self, id: &str) -> Result<CampaignCounts> {
        let contacts: Vec<(String, i64)> = on_pool!(self, p => sqlx::query_as(
            "SELECT state, COUNT(*) FROM campaign_contacts WHERE campaign_id = $1
             GROUP BY state ORDER BY state")
            .bind(id).fetch_all(p).await)?;
        let rows: Vec<(Option<String>, i64)> = on_pool!(self, p => sqlx::query_as(
            "SELECT outcome, COUNT(*) FROM campaign_attempts WHERE campaign_id = $1
             GROUP BY outcome ORDER BY outcome")
            .bind(id).fetch_all(p).await)?;
        let answered_avg_ms: Option<f64> = on_pool!(self, p => sqlx::query_scalar(
            "SELECT CAST(AVG(duration_ms) AS DOUBLE PRECISION) FROM campaign_attempts
             WHERE campaign_id = $1 AND outcome = 'answered'")
            .bind(id).fetch_one(p).await)?;
        let mut counts = CampaignCounts {
            answered_avg_ms,
            ..CampaignCounts::default()
        };
        for (outcome, n) in rows {
            match outcome {
                Some(o) => counts.outcomes.push((o, n)),
                None => counts.in_flight = n,
            }
        }
        counts.pending = contacts
            .iter()
            .filter(|(s, _)| s == "pending")
            .map(|(_, n)| *n)
            .sum();
        counts.contacts = contacts;
        Ok(counts)
    }

    /// The campaign's agent webhook: its URL and signing secret, when it
    /// has one (asked for the agent of each attempt).
    pub async fn campaign_agent_webhook(&self, id: &str) -> Result<Option<(String, String)>> {
        let row: Option<(Option<String>, Option<String>)> = on_pool!(self, p => sqlx::query_as(
            "SELECT agent_webhook_url, agent_webhook_secret FROM campaigns WHERE id = $1")
            .bind(id).fetch_optional(p).await)?;
        match row {
            None => Err(StoreError::NotFound),
            Some((Some(url), Some(secret))) => Ok(Some((url, secret))),
            Some(_) => Ok(None),
        }
    }

    /// The recording settings of campaign `id`'s calls (JSON), read per
    /// attempt so that a change applies to the next call.
    pub async fn campaign_recording(&self, id: &str) -> Result<Option<String>> {
        let row: Option<(Option<String>,)> = on_pool!(self, p => sqlx::query_as(
            "SELECT recording FROM campaigns WHERE id = $1")
            .bind(id).fetch_optional(p).await)?;
        row.map(|(r,)| r).ok_or(StoreError::NotFound)
    }

    /// Sets (or, with `None`, removes) the campaign's agent webhook.
    pub async fn set_campaign_agent_webhook(
        &self,
        id: &str,
        hook: Option<(&str, &str)>,
    ) -> Result<()> {
        let (url, secret) = hook.unzip();
        let done = on_pool!(self, p => sqlx::query(
            "UPDATE campaigns SET agent_webhook_url = $2, agent_webhook_secret = $3 WHERE id = $1")
            .bind(id).bind(url).bind(secret).execute(p).await.map(|r| r.rows_affected()))?;
        if done == 0 {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }
}
