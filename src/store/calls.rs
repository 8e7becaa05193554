//! Calls: one row per call, written by the call task at each state change
//! and read by the API.
//!
//! Every write to a call row is one of the state transitions below
//! ([`Store::call_created`], [`Store::call_dialing`], [`Store::call_ringing`],
//! [`Store::call_answered`], [`Store::call_answered_by`], [`Store::call_dtmf`],
//! [`Store::call_ended`], and after the end [`Store::call_analyzed`]),
//! each one atomic unit (on SQLite a job of the group commit,
//! [`super::commit`]) that returns the row as committed. That is the
//! seam for the webhook outbox: a transition given an [`Emit`] renders its
//! `call.*` event from the row as updated (with the call's next event
//! sequence in `event_seq`) and writes it, with its deliveries, in the same
//! transaction ([`super::events`]). Nothing else writes to `calls`.

use chrono::{DateTime, Utc};

use super::commit::{FromSqlite, Value, label, label_opt, time, time_opt};
use super::events::NewEvent;
use super::{Page, Pool, Result, Store, StoreError, Window, on_pool};
use crate::model::{AgentSource, AnsweredBy, Call, CallContext, CallStatus, Direction};

/// Renders the event of a call transition from the call row as the
/// transaction left it (`event_seq` is the event's per-call sequence).
pub type EmitFn = dyn Fn(&CallRecord) -> Result<NewEvent> + Send + Sync;

/// The event a call transition writes, if any (owned: on SQLite the
/// transition runs on the group commit's thread).
pub type Emit = Option<Box<EmitFn>>;

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct CallRecord {
    pub id: String,
    pub direction: Direction,
    pub from_number: String,
    pub to_number: String,
    pub trunk: Option<String>,
    pub agent_id: Option<String>,
    pub status: CallStatus,
    pub sip_call_id: Option<String>,
    pub sip_code: Option<i64>,
    pub sip_reason: Option<String>,
    pub end_reason: Option<String>,
    /// Digits received, in order.
    pub dtmf: String,
    /// JSON object given when the call was placed.
    pub metadata: String,
    pub ringing_at: Option<DateTime<Utc>>,
    pub answered_at: Option<DateTime<Utc>>,
    pub ended_at: Option<DateTime<Utc>>,
    pub duration_ms: Option<i64>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// How many events the call has emitted: the sequence of the last one.
    pub event_seq: i64,
    /// Once answering-machine detection decided; `None` when it did not
    /// run.
    pub answered_by: Option<AnsweredBy>,
    /// A short summary of the conversation (agent calls), set at the end.
    pub summary: Option<String>,
    /// The campaign attempt this call is, for a campaign's call.
    #[sqlx(flatten)]
    pub attempt: AttemptColumns,
    /// The structured result (JSON text), once analyzed after the end.
    pub analysis: Option<String>,
    /// The call's context (a JSON object, [`CallContext`]); `None` for
    /// calls recorded before contexts were.
    pub context: Option<String>,
    /// Who chose the agent; `None` before contexts were recorded.
    pub agent_source: Option<AgentSource>,
    /// Why the agent webhook was not followed.
    pub agent_source_error: Option<String>,
    /// `false` for a test-mode call (simulated carrier).
    pub livemode: bool,
    /// The API key that placed it (`POST /v1/calls`), for its daily caps.
    pub api_key_id: Option<String>,
}

/// The campaign attempt a call is: all three set for a campaign's call
/// (calls placed before these columns existed got them from their
/// metadata), none for any other.
#[derive(Debug, Clone, Default, PartialEq, Eq, sqlx::FromRow)]
pub struct AttemptColumns {
    pub campaign_id: Option<String>,
    pub contact_id: Option<String>,
    pub attempt: Option<i64>,
}

/// The campaign attempt a new call is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CampaignAttempt {
    pub campaign_id: String,
    pub contact_id: String,
    /// 1 for the contact's first attempt.
    pub attempt: i64,
}

impl CallRecord {
    /// The campaign the call belongs to, if it is a campaign's attempt.
    pub fn campaign_id(&self) -> Option<&str> {
        self.attempt.campaign_id.as_deref()
    }
}

/// The call as the API and the webhooks show it.
impl TryFrom<CallRecord> for Call {
    type Error = StoreError;

    fn try_from(r: CallRecord) -> Result<Call> {
        let metadata = serde_json::from_str(&r.metadata)
            .map_err(|e| StoreError::Corrupt(format!("call {} metadata: {e}", r.id)))?;
        let analysis = match &r.analysis {
            Some(text) => Some(
                serde_json::from_str(text)
                    .map_err(|e| StoreError::Corrupt(format!("call {} analysis: {e}", r.id)))?,
            ),
            None => None,
        };
        let context = match r.context.as_deref() {
            Some(text) => {
                let mut context: CallContext = serde_json::from_str(text)
                    .map_err(|e| StoreError::Corrupt(format!("call {} context: {e}", r.id)))?;
                // Known after the context was stored.
                context.answered_by = context.answered_by.or(r.answered_by);
                Some(context)
            }
            None => None,
        };
        Ok(Call {
            context,
            agent_source: r.agent_source,
            agent_source_error: r.agent_source_error,
            livemode: r.livemode,
            metadata,
            id: r.id,
            direction: r.direction,
            from: r.from_number,
            to: r.to_number,
            trunk_id: r.trunk,
            agent_id: r.agent_id,
            status: r.status,
            sip_call_id: r.sip_call_id,
            sip_code: r.sip_code,
            sip_reason: r.sip_reason,
            end_reason: r.end_reason,
            dtmf: r.dtmf,
            answered_by: r.answered_by,
            created_at: r.created_at,
            ringing_at: r.ringing_at,
            answered_at: r.answered_at,
            ended_at: r.ended_at,
            duration_ms: r.duration_ms,
            summary: r.summary,
            analysis,
            attempts: None,
            recording: None,
        })
    }
}

/// Filters of a call listing; `None` matches everything.
#[derive(Debug, Clone, Default)]
pub struct CallFilter<'a> {
    pub status: Option<CallStatus>,
    pub direction: Option<Direction>,
    /// Matches the From or the To number.
    pub number: Option<&'a str>,
    pub agent_id: Option<&'a str>,
    pub created_after: Option<DateTime<Utc>>,
    pub created_before: Option<DateTime<Utc>>,
    pub campaign_id: Option<&'a str>,
    /// An `EndReason` label, e.g. `no_answer`.
    pub end_reason: Option<&'a str>,
    /// Only calls of this mode (`false`: test mode).
    pub livemode: Option<bool>,
}

/// What a new call row starts with.
pub struct NewCall<'a> {
    pub id: &'a str,
    pub direction: Direction,
    pub from_number: &'a str,
    pub to_number: &'a str,
    pub trunk: Option<&'a str>,
    pub agent_id: Option<&'a str>,
    /// `Queued` (outbound, before the INVITE) or `Ringing` (inbound).
    pub status: CallStatus,
    pub sip_call_id: Option<&'a str>,
    pub metadata: &'a str,
    /// Set for a campaign's call.
    pub campaign: Option<&'a CampaignAttempt>,
    /// The call's context, JSON text ([`CallContext`]).
    pub context: Option<&'a str>,
    /// Who chose the agent, and why a webhook's choice was not followed.
    pub agent_source: Option<AgentSource>,
    pub agent_source_error: Option<&'a str>,
    /// `false` for a test-mode call.
    pub livemode: bool,
    /// The API key that placed it, if one did.
    pub api_key_id: Option<&'a str>,
}

/// An unended call taken over from a dead node ([`Store::take_orphan_call`]).
#[derive(Debug, Clone)]
pub struct Orphan {
    pub answered: bool,
    /// The stored state (JSON): the dialog's (`sip::DialogState`) if the
    /// call was established, else the INVITE's CANCEL state
    /// (`sip::CancelState`) if one was sent.
    pub dialog: Option<String>,
}

/// How a call ended, as [`Store::call_ended`] records it.
#[derive(Debug, Clone)]
pub struct EndFields<'a> {
    /// `Completed`, `Busy`, `NoAnswer`, `Failed` or `Canceled`.
    pub status: CallStatus,
    /// The final SIP status of the INVITE (200 once answered), if any.
    pub sip_code: Option<u16>,
    pub sip_reason: Option<&'a str>,
    /// The `EndReason` label, e.g. `caller_hangup`.
    pub end_reason: &'a str,
    /// Time from answer to end; `None` for a call never answered.
    pub duration_ms: Option<i64>,
    /// What answered, when the end itself says it (a machine hung up on);
    /// `None` keeps what detection recorded.
    pub answered_by: Option<AnsweredBy>,
}

/// The columns of a [`CallRecord`], as a literal for `concat!`.
macro_rules! call_columns {
    () => {
        "id, direction, from_number, to_number, trunk, agent_id, status, sip_call_id,
    sip_code, sip_reason, end_reason, dtmf, metadata, ringing_at, answered_at, ended_at, duration_ms,
    created_at, updated_at, event_seq, answered_by, summary, campaign_id, contact_id, attempt, analysis,
    context, agent_source, agent_source_error, livemode, api_key_id"
    };
}

const SELECT_CALL: &str = concat!("SELECT ", call_columns!(), " FROM calls WHERE id = $1");

/// The statements of the transitions, each reading the row back with
/// RETURNING (SQLite 3.35 and PostgreSQL both have it).
const CREATE: &str = concat!(
    "INSERT INTO calls (id, direction, from_number, to_number, trunk, agent_id, status, sip_call_id,
                                           metadata, ringing_at, created_at, updated_at, event_seq, node,
                        campaign_id, contact_id, attempt, context, agent_source, agent_source_error, livemode, api_key_id)
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $11, 1, $12, $13, $14, $15, $16, $17, $18, $19, $20)
     RETURNING ",
    call_columns!()
);
/// [`CREATE`] for a campaign's call, fenced (see [`Store::call_created`]):
/// the row is written only while the attempt is in flight and its contact
/// is still leased to this node under the generation the attempt was
/// claimed with.
const CREATE_CAMPAIGN: &str = concat!(
    "INSERT INTO calls (id, direction, from_number, to_number, trunk, agent_id, status, sip_call_id,
                        metadata, ringing_at, created_at, updated_at, event_seq, node,
                        campaign_id, contact_id, attempt, context, agent_source, agent_source_error, livemode, api_key_id)
     SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $11, 1, $12, $13, $14, $15, $16, $17, $18, $19, $20
     WHERE EXISTS (SELECT 1 FROM campaign_attempts a JOIN campaign_contacts c ON c.id = a.contact_id
                   WHERE a.call_id = $1 AND a.outcome IS NULL AND c.lease_owner = $12
                     AND c.lease_gen = a.lease_gen)
     RETURNING ",
    call_columns!()
);
/// [`CREATE_CAMPAIGN`] on PostgreSQL: the contact row is share-locked, so
/// a take-over (which bumps the generation) waits for this insert to
/// commit, or this insert sees the new generation and writes nothing.
const CREATE_CAMPAIGN_PG: &str = concat!(
    "INSERT INTO calls (id, direction, from_number, to_number, trunk, agent_id, status, sip_call_id,
                        metadata, ringing_at, created_at, updated_at, event_seq, node,
                        campaign_id, contact_id, attempt, context, agent_source, agent_source_error, livemode, api_key_id)
     SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $11, 1, $12, $13, $14, $15, $16, $17, $18, $19, $20
     WHERE EXISTS (SELECT 1 FROM campaign_attempts a JOIN campaign_contacts c ON c.id = a.contact_id
                   WHERE a.call_id = $1 AND a.outcome IS NULL AND c.lease_owner = $12
                     AND c.lease_gen = a.lease_gen FOR SHARE OF c)
     RETURNING ",
    call_columns!()
);
/// The dialog state of an established call (no event, no status change),
/// replacing the CANCEL state its INVITE left.
const DIALOG: &str = concat!(
    "UPDATE calls SET dialog = $2 WHERE id = $1 AND ended_at IS NULL RETURNING ",
    call_columns!()
);
// The dialog column holds what a CANCEL needs until the answer, then what
// a BYE needs (written with ANSWERED, and by DIALOG when a Replaces moves
// the call): an answered call's is never replaced from here.
const DIALING: &str = concat!(
    "UPDATE calls SET sip_call_id = $2, updated_at = $3,
        dialog = CASE WHEN answered_at IS NULL THEN COALESCE($4, dialog) ELSE dialog END,
        trunk = COALESCE($5, trunk)
     WHERE id = $1 AND ended_at IS NULL RETURNING ",
    call_columns!()
);
const RINGING: &str = concat!(
    "UPDATE calls SET status = 'ringing', ringing_at = $2, updated_at = $2, event_seq = event_seq + 1
     WHERE id = $1 AND status = 'queued' RETURNING ",
    call_columns!()
);
const ANSWERED: &str = concat!(
    "UPDATE calls SET status = 'in-progress', answered_at = $2, sip_code = 200, sip_reason = 'OK',
        ringing_at = COALESCE(ringing_at, $2), updated_at = $2, event_seq = event_seq + 1,
        dialog = COALESCE($3, dialog)
     WHERE id = $1 AND status IN ('queued', 'ringing') RETURNING ",
    call_columns!()
);
const DTMF: &str = concat!(
    "UPDATE calls SET dtmf = dtmf || $2, updated_at = $3, event_seq = event_seq + 1
     WHERE id = $1 AND status = 'in-progress' RETURNING ",
    call_columns!()
);
const ENDED: &str = concat!(
    "UPDATE calls SET status = $2, sip_code = COALESCE($3, sip_code), sip_reason = COALESCE($4, sip_reason),
        end_reason = $5, duration_ms = $6, ended_at = $7, updated_at = $7, event_seq = event_seq + 1,
        answered_by = COALESCE($8, answered_by)
     WHERE id = $1 AND ended_at IS NULL RETURNING ",
    call_columns!()
);
const ANALYZED: &str = concat!(
    "UPDATE calls SET analysis = $2, updated_at = $3, event_seq = event_seq + 1
     WHERE id = $1 RETURNING ",
    call_columns!()
);
const ANSWERED_BY: &str = concat!(
    "UPDATE calls SET answered_by = $2, updated_at = $3 WHERE id = $1 AND ended_at IS NULL RETURNING ",
    call_columns!()
);

impl FromSqlite for CallRecord {
    /// By column name, as sqlx's `FromRow` maps them.
    fn from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<Self> {
        Ok(Self {
            id: row.get("id")?,
            direction: label(row, "direction")?,
            from_number: row.get("from_number")?,
            to_number: row.get("to_number")?,
            trunk: row.get("trunk")?,
            agent_id: row.get("agent_id")?,
            status: label(row, "status")?,
            sip_call_id: row.get("sip_call_id")?,
            sip_code: row.get("sip_code")?,
            sip_reason: row.get("sip_reason")?,
            end_reason: row.get("end_reason")?,
            dtmf: row.get("dtmf")?,
            metadata: row.get("metadata")?,
            ringing_at: time_opt(row, "ringing_at")?,
            answered_at: time_opt(row, "answered_at")?,
            ended_at: time_opt(row, "ended_at")?,
            duration_ms: row.get("duration_ms")?,
            created_at: time(row, "created_at")?,
            updated_at: time(row, "updated_at")?,
            event_seq: row.get("event_seq")?,
            answered_by: label_opt(row, "answered_by")?,
            summary: row.get("summary")?,
            attempt: AttemptColumns {
                campaign_id: row.get("campaign_id")?,
                contact_id: row.get("contact_id")?,
                attempt: row.get("attempt")?,
            },
            analysis: row.get("analysis")?,
            context: row.get("context")?,
            agent_source: label_opt(row, "agent_source")?,
            agent_source_error: row.get("agent_source_error")?,
            livemode: row.get("livemode")?,
            api_key_id: row.get("api_key_id")?,
        })
    }
}

impl Store {
    /// Runs one of the statements above with `values`, and writes the
    /// event `emit` renders from the row it returns, as one atomic unit: on
    /// SQLite a job of the group commit ([`super::commit`]), on PostgreSQL
    /// a job of its group commit ([`super::pg_commit`]). [`StoreError::NotFound`] when no row matched (the
    /// call is unknown or already past that state).
    async fn transition(
        &self,
        sql: &'static str,
        values: Vec<Value>,
        emit: Emit,
    ) -> Result<CallRecord> {
        match &self.pool {
            Pool::Sqlite(_) => {
                self.group_commit()?
                    .write(Box::new(move |batch| {
                        let record: CallRecord =
                            batch.row(sql, &values)?.ok_or(StoreError::NotFound)?;
                        if let Some(build) = &emit {
                            batch.write_event(&build(&record)?)?;
                        }
                        Ok(record)
                    }))
                    .await
            }
            Pool::Postgres(_) => self.pg_group_commit()?.transition(sql, values, emit).await,
        }
    }

    /// A new call: `queued` (outbound, before the INVITE) or `ringing`
    /// (inbound, with `ringing_at` set); its first event has sequence 1.
    pub async fn call_created(&self, c: NewCall<'_>, emit: Emit) -> Result<CallRecord> {
        let now = super::now();
        let ringing_at = (c.status == CallStatus::Ringing).then_some(now);
        let values = vec![
            c.id.into(),
            c.direction.as_str().into(),
            c.from_number.into(),
            c.to_number.into(),
            c.trunk.into(),
            c.agent_id.into(),
            c.status.as_str().into(),
            c.sip_call_id.into(),
            c.metadata.into(),
            ringing_at.into(),
            now.into(),
            self.node.as_deref().into(),
            c.campaign.map(|a| a.campaign_id.as_str()).into(),
            c.campaign.map(|a| a.contact_id.as_str()).into(),
            c.campaign.map(|a| a.attempt).into(),
            c.context.into(),
            c.agent_source.map(AgentSource::as_str).into(),
            c.agent_source_error.into(),
            c.livemode.into(),
            c.api_key_id.into(),
        ];
        // A campaign's call is fenced by its contact's lease: a node that
        // was presumed dead and whose claim was taken over writes no row
        // (NotFound), so it places nothing.
        let sql = match (&self.pool, c.campaign.is_some()) {
            (_, false) => CREATE,
            (Pool::Sqlite(_), true) => CREATE_CAMPAIGN,
            (Pool::Postgres(_), true) => CREATE_CAMPAIGN_PG,
        };
        self.transition(sql, values, emit).await
    }

    /// Stores the state needed to end the established call `id` without
    /// its node (JSON, see `sip::DialogState`) after its dialog changed
    /// (the answer writes the first); nothing once it ended.
    pub async fn call_dialog(&self, id: &str, dialog: &str) -> Result<CallRecord> {
        let values = vec![id.into(), dialog.into()];
        self.transition(DIALOG, values, None).await
    }

    /// Takes an unended call whose node (`seen_node`, as read) is dead or
    /// restarted, for `me` to end: one taker wins (compare-and-set on the
    /// node), and only the first gets the dialog (or CANCEL) state, so one
    /// BYE (or CANCEL) goes out. `None` when the call ended or another node
    /// took it.
    pub async fn take_orphan_call(
        &self,
        id: &str,
        seen_node: Option<&str>,
        me: &str,
    ) -> Result<Option<Orphan>> {
        on_pool!(self, p => {
            let mut tx = p.begin().await?;
            let row: Option<(Option<DateTime<Utc>>, Option<String>)> = sqlx::query_as(
                "UPDATE calls SET node = $3
                 WHERE id = $1 AND ended_at IS NULL
                   AND (node = $2 OR (node IS NULL AND $2 IS NULL))
                 RETURNING answered_at, dialog")
                .bind(id).bind(seen_node).bind(me).fetch_optional(&mut *tx).await?;
            if row.is_some() {
                sqlx::query("UPDATE calls SET dialog = NULL WHERE id = $1")
                    .bind(id).execute(&mut *tx).await?;
            }
            tx.commit().await?;
            Ok::<_, StoreError>(row.map(|(answered_at, dialog)| Orphan {
                answered: answered_at.is_some(),
                dialog,
            }))
        })
    }

    /// Unended calls of `node`, with the node each row names (for
    /// [`Store::take_orphan_call`]); on SQLite every unended call.
    pub async fn unended_calls_of(&self, node: &str) -> Result<Vec<(String, Option<String>)>> {
        let all = matches!(self.pool, Pool::Sqlite(_));
        Ok(on_pool!(self, p => sqlx::query_as(
            "SELECT id, node FROM calls WHERE ended_at IS NULL AND ($2 OR node = $1)
             ORDER BY created_at")
            .bind(node).bind(all).fetch_all(p).await)?)
    }

    /// The node a call's row names.
    pub async fn call_node(&self, id: &str) -> Result<Option<String>> {
        on_pool!(self, p => sqlx::query_scalar::<_, Option<String>>(
            "SELECT node FROM calls WHERE id = $1")
            .bind(id).fetch_optional(p).await)?
        .ok_or(StoreError::NotFound)
    }

    /// The outbound INVITE left with this SIP Call-ID (status unchanged),
    /// through `trunk` (an id; it changes when the call fails over; `None`
    /// keeps it), with what its CANCEL needs (JSON, see `sip::CancelState`)
    /// so that another node can cancel it if this one dies before the
    /// answer.
    pub async fn call_dialing(
        &self,
        id: &str,
        sip_call_id: &str,
        cancel: Option<&str>,
        trunk: Option<&str>,
    ) -> Result<CallRecord> {
        let values = vec![
            id.into(),
            sip_call_id.into(),
            super::now().into(),
            cancel.into(),
            trunk.into(),
        ];
        self.transition(DIALING, values, None).await
    }

    /// `queued` to `ringing` (the first 18x of an outbound call).
    pub async fn call_ringing(&self, id: &str, emit: Emit) -> Result<CallRecord> {
        let values = vec![id.into(), super::now().into()];
        self.transition(RINGING, values, emit).await
    }

    /// Answered (200 OK and ACK): `in-progress`, SIP code 200.
    pub async fn call_answered(
        &self,
        id: &str,
        dialog: Option<&str>,
        emit: Emit,
    ) -> Result<CallRecord> {
        let values = vec![id.into(), super::now().into(), dialog.into()];
        self.transition(ANSWERED, values, emit).await
    }

    /// A DTMF digit received on an answered call, appended to `dtmf`.
    pub async fn call_dtmf(&self, id: &str, digit: char, emit: Emit) -> Result<CallRecord> {
        let values = vec![id.into(), digit.to_string().into(), super::now().into()];
        self.transition(DTMF, values, emit).await
    }

    /// The call ended; a row already ended is left alone (`NotFound`).
    pub async fn call_ended(&self, id: &str, e: EndFields<'_>, emit: Emit) -> Result<CallRecord> {
        let values = vec![
            id.into(),
            e.status.as_str().into(),
            e.sip_code.map(i64::from).into(),
            e.sip_reason.into(),
            e.end_reason.into(),
            e.duration_ms.into(),
            super::now().into(),
            e.answered_by.map(AnsweredBy::as_str).into(),
        ];
        self.transition(ENDED, values, emit).await
    }

    /// The call's structured result (JSON text), stored after its end with
    /// its `call.analyzed` event in the same transaction.
    pub async fn call_analyzed(&self, id: &str, analysis: &str, emit: Emit) -> Result<CallRecord> {
        let values = vec![id.into(), analysis.into(), super::now().into()];
        self.transition(ANALYZED, values, emit).await
    }

    /// Answering-machine detection's verdict on a call still up (no event:
    /// the call's next event carries it).
    pub async fn call_answered_by(&self, id: &str, answered_by: AnsweredBy) -> Result<CallRecord> {
        let values = vec![id.into(), answered_by.as_str().into(), super::now().into()];
        self.transition(ANSWERED_BY, values, None).await
    }

    pub async fn get_call(&self, id: &str) -> Result<CallRecord> {
        on_pool!(self, p => sqlx::query_as::<_, CallRecord>(SELECT_CALL)
            .bind(id).fetch_optional(p).await)?
        .ok_or(StoreError::NotFound)
    }

    /// Calls matching `f`, newest first.
    pub async fn list_calls(&self, f: &CallFilter<'_>, w: Window) -> Result<Page<CallRecord>> {
        let status = f.status.map(CallStatus::as_str);
        let direction = f.direction.map(Direction::as_str);
        let items = on_pool!(self, p => sqlx::query_as::<_, CallRecord>(concat!(
            "SELECT ", call_columns!(), " FROM calls
             WHERE ($1 IS NULL OR status = $1) AND ($2 IS NULL OR direction = $2)
               AND ($3 IS NULL OR from_number = $3 OR to_number = $3) AND ($4 IS NULL OR agent_id = $4)
               AND ($5 IS NULL OR created_at >= $5) AND ($6 IS NULL OR created_at < $6)
               AND ($9 IS NULL OR campaign_id = $9) AND ($10 IS NULL OR end_reason = $10)
               AND ($11 IS NULL OR livemode = $11)
             ORDER BY created_at DESC, id DESC LIMIT $7 OFFSET $8"))
            .bind(status).bind(direction).bind(f.number).bind(f.agent_id)
            .bind(f.created_after).bind(f.created_before).bind(w.limit).bind(w.offset)
            .bind(f.campaign_id).bind(f.end_reason).bind(f.livemode)
            .fetch_all(p).await)?;
        let total: i64 = on_pool!(self, p => sqlx::query_scalar(
            "SELECT COUNT(*) FROM calls
             WHERE ($1 IS NULL OR status = $1) AND ($2 IS NULL OR direction = $2)
               AND ($3 IS NULL OR from_number = $3 OR to_number = $3) AND ($4 IS NULL OR agent_id = $4)
               AND ($5 IS NULL OR created_at >= $5) AND ($6 IS NULL OR created_at < $6)
               AND ($7 IS NULL OR campaign_id = $7) AND ($8 IS NULL OR end_reason = $8)
               AND ($9 IS NULL OR livemode = $9)")
            .bind(status).bind(direction).bind(f.number).bind(f.agent_id)
            .bind(f.created_after).bind(f.created_before).bind(f.campaign_id).bind(f.end_reason)
            .bind(f.livemode)
            .fetch_one(p).await)?;
        Ok(Page { items, total })
    }
}

#[cfg(test)]
mod tests {
    use sqlx::sqlite::SqliteConnectOptions;
    use std::str::FromStr;

    use super::super::{SQLITE_MIGRATIONS, migrations};
    use super::*;

    /// A campaign call written before the attempt had columns of its own
    /// (its ids only in the metadata) reads as that campaign's attempt once
    /// the store is opened by this version.
    #[tokio::test]
    async fn older_campaign_calls_get_their_attempt_columns() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("old.db").display());
        let before = SQLITE_MIGRATIONS
            .iter()
            .position(|(version, _, _)| *version == 9)
            .unwrap();
        let options = SqliteConnectOptions::from_str(&url)
            .unwrap()
            .create_if_missing(true);
        let pool = sqlx::SqlitePool::connect_with(options).await.unwrap();
        migrations(&SQLITE_MIGRATIONS[..before])
            .run(&pool)
            .await
            .unwrap();
        let insert = "INSERT INTO calls (id, direction, from_number, to_number, status, metadata,
                created_at, updated_at, event_seq)
             VALUES ($1, 'outbound', '+14155550199', '+14155550100', 'completed', $2, $3, $3, 3)";
        let metadata = r#"{"campaign_id":"cmp_1","contact_id":"cnt_1","attempt":2,"variables":{}}"#;
        for (id, metadata) in [("call_old", metadata), ("call_api", "{\"crm\":7}")] {
            sqlx::query(insert)
                .bind(id)
                .bind(metadata)
                .bind(crate::store::now())
                .execute(&pool)
                .await
                .unwrap();
        }
        pool.close().await;

        let store = Store::connect(&url).await.unwrap();
        store.migrate().await.unwrap();
        let old = store.get_call("call_old").await.unwrap();
        assert_eq!(
            old.attempt,
            AttemptColumns {
                campaign_id: Some("cmp_1".into()),
                contact_id: Some("cnt_1".into()),
                attempt: Some(2),
            }
        );
        assert_eq!(old.status, CallStatus::Completed);
        assert_eq!(old.metadata, metadata, "the metadata is left as it was");
        let api = store.get_call("call_api").await.unwrap();
        assert_eq!(api.campaign_id(), None);
        store.close().await;
    }
}
