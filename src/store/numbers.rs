//! Phone numbers: E.164 (normalized by the caller), unique, bound to an
//! agent and a trunk.

use chrono::{DateTime, Utc};

use super::agents::AgentRecord;
use super::commit::{FromSqlite, Value, time, time_opt};
use super::{Page, Pool, Result, Store, StoreError, Window, on_pool};

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct NumberRecord {
    pub id: String,
    pub number: String,
    pub name: Option<String>,
    pub agent_id: Option<String>,
    pub trunk: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// Asked for the agent of each inbound call (issue 17).
    pub agent_webhook_url: Option<String>,
    /// `whsec_...`: signs the agent webhook's requests; never shown again
    /// after it was handed out.
    pub agent_webhook_secret: Option<String>,
    /// `false` for a test-mode number: it places test calls only and is
    /// never routed an inbound call.
    pub livemode: bool,
    /// JSON recording settings for its calls (`RecordingSettings`), if set.
    pub recording: Option<String>,
}

/// The writable fields of a number.
pub struct NumberFields<'a> {
    pub number: &'a str,
    pub name: Option<&'a str>,
    pub agent_id: Option<&'a str>,
    pub trunk: Option<&'a str>,
    pub agent_webhook_url: Option<&'a str>,
    pub agent_webhook_secret: Option<&'a str>,
    /// JSON recording settings, `None` when the number sets none.
    pub recording: Option<&'a str>,
}

/// The columns of a [`NumberRecord`].
macro_rules! number_columns {
    () => {
        "id, number, name, agent_id, trunk, created_at, updated_at, agent_webhook_url,
        agent_webhook_secret, livemode, recording"
    };
}

const FIND_NUMBER: &str = concat!(
    "SELECT ",
    number_columns!(),
    " FROM phone_numbers WHERE number = $1"
);

/// A number and its agent in one statement (the agent's columns are
/// prefixed `agent_`, all NULL when there is none).
const FIND_ROUTE: &str = "SELECT n.id, n.number, n.name, n.agent_id, n.trunk, n.created_at,
        n.updated_at, n.agent_webhook_url, n.agent_webhook_secret, n.livemode, n.recording,
        a.id AS agent_row_id, a.name AS agent_name, a.kind AS agent_kind,
        a.settings AS agent_settings, a.livemode AS agent_livemode,
        a.created_at AS agent_created_at, a.updated_at AS agent_updated_at
     FROM phone_numbers n LEFT JOIN agents a ON a.id = n.agent_id
     WHERE n.number = $1 AND n.livemode";

/// A row of [`FIND_ROUTE`].
#[derive(sqlx::FromRow)]
struct RouteRow {
    #[sqlx(flatten)]
    number: NumberRecord,
    agent_row_id: Option<String>,
    agent_name: Option<String>,
    agent_kind: Option<String>,
    agent_settings: Option<String>,
    agent_livemode: Option<bool>,
    agent_created_at: Option<DateTime<Utc>>,
    agent_updated_at: Option<DateTime<Utc>>,
}

impl RouteRow {
    fn split(self) -> (NumberRecord, Option<AgentRecord>) {
        let agent = match (
            self.agent_row_id,
            self.agent_name,
            self.agent_kind,
            self.agent_settings,
            self.agent_livemode,
            self.agent_created_at,
            self.agent_updated_at,
        ) {
            (
                Some(id),
                Some(name),
                Some(kind),
                Some(settings),
                Some(livemode),
                Some(created_at),
                Some(updated_at),
            ) => Some(AgentRecord {
                id,
                name,
                kind,
                settings,
                livemode,
                created_at,
                updated_at,
            }),
            _ => None,
        };
        (self.number, agent)
    }
}

impl FromSqlite for RouteRow {
    fn from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<Self> {
        Ok(Self {
            number: NumberRecord::from_row(row)?,
            agent_row_id: row.get("agent_row_id")?,
            agent_name: row.get("agent_name")?,
            agent_kind: row.get("agent_kind")?,
            agent_settings: row.get("agent_settings")?,
            agent_livemode: row.get("agent_livemode")?,
            agent_created_at: time_opt(row, "agent_created_at")?,
            agent_updated_at: time_opt(row, "agent_updated_at")?,
        })
    }
}

impl FromSqlite for NumberRecord {
    /// By column name, as sqlx's `FromRow` maps them.
    fn from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<Self> {
        Ok(Self {
            id: row.get("id")?,
            number: row.get("number")?,
            name: row.get("name")?,
            agent_id: row.get("agent_id")?,
            trunk: row.get("trunk")?,
            created_at: time(row, "created_at")?,
            updated_at: time(row, "updated_at")?,
            agent_webhook_url: row.get("agent_webhook_url")?,
            agent_webhook_secret: row.get("agent_webhook_secret")?,
            livemode: row.get("livemode")?,
            recording: row.get("recording")?,
        })
    }
}

impl Store {
    pub async fn insert_number(
        &self,
        id: &str,
        f: NumberFields<'_>,
        livemode: bool,
    ) -> Result<NumberRecord> {
        let now = super::now();
        on_pool!(self, p => sqlx::query(
            "INSERT INTO phone_numbers (id, number, name, agent_id, trunk, created_at, updated_at,
                 agent_webhook_url, agent_webhook_secret, livemode, recording)
             VALUES ($1, $2, $3, $4, $5, $6, $6, $7, $8, $9, $10)")
            .bind(id).bind(f.number).bind(f.name).bind(f.agent_id).bind(f.trunk).bind(now)
            .bind(f.agent_webhook_url).bind(f.agent_webhook_secret).bind(livemode)
            .bind(f.recording)
            .execute(p).await.map(|r| r.rows_affected()))?;
        self.get_number(id).await
    }

    pub async fn get_number(&self, id: &str) -> Result<NumberRecord> {
        on_pool!(self, p => sqlx::query_as::<_, NumberRecord>(concat!(
            "SELECT ", number_columns!(), " FROM phone_numbers WHERE id = $1"))
            .bind(id).fetch_optional(p).await)?
        .ok_or(StoreError::NotFound)
    }

    /// The provisioned number `number` (E.164), as inbound routing needs.
    pub async fn find_number(&self, number: &str) -> Result<NumberRecord> {
        on_pool!(self, p => sqlx::query_as::<_, NumberRecord>(FIND_NUMBER)
            .bind(number).fetch_optional(p).await)?
        .ok_or(StoreError::NotFound)
    }

    /// The number and the agent it is bound to (`None` when it has none, or
    /// the agent is gone), for routing an inbound call: one statement (a
    /// join, so one round trip on PostgreSQL and one read on SQLite's group
    /// commit thread, away from the busy runtime, [`super::commit`]). Not
    /// cached: a cache would need invalidation across nodes, and a number
    /// deleted or moved through the API must stop answering at once. A
    /// test-mode number is never routed one (`NotFound`, as for an unknown
    /// number).
    pub async fn find_number_with_agent(
        &self,
        number: &str,
    ) -> Result<(NumberRecord, Option<AgentRecord>)> {
        let row: RouteRow = match &self.pool {
            Pool::Sqlite(_) => {
                let number = Value::from(number);
                self.group_commit()?
                    .read(Box::new(move |batch| {
                        batch
                            .row(FIND_ROUTE, std::slice::from_ref(&number))?
                            .ok_or(StoreError::NotFound)
                    }))
                    .await?
            }
            Pool::Postgres(p) => sqlx::query_as::<_, RouteRow>(FIND_ROUTE)
                .bind(number)
                .fetch_optional(p)
                .await?
                .ok_or(StoreError::NotFound)?,
        };
        Ok(row.split())
    }

    /// The numbers of one mode (`livemode`), newest first.
    pub async fn list_numbers(
        &self,
        agent_id: Option<&str>,
        livemode: bool,
        w: Window,
    ) -> Result<Page<NumberRecord>> {
        let items = on_pool!(self, p => sqlx::query_as::<_, NumberRecord>(concat!(
            "SELECT ", number_columns!(), " FROM phone_numbers
             WHERE ($1 IS NULL OR agent_id = $1) AND livemode = $4
             ORDER BY created_at DESC, id DESC LIMIT $2 OFFSET $3"))
            .bind(agent_id).bind(w.limit).bind(w.offset).bind(livemode).fetch_all(p).await)?;
        let total: i64 = on_pool!(self, p => sqlx::query_scalar(
            "SELECT COUNT(*) FROM phone_numbers WHERE ($1 IS NULL OR agent_id = $1) AND livemode = $2")
            .bind(agent_id).bind(livemode).fetch_one(p).await)?;
        Ok(Page { items, total })
    }

    pub async fn update_number(&self, id: &str, f: NumberFields<'_>) -> Result<NumberRecord> {
        let now = super::now();
        let done = on_pool!(self, p => sqlx::query(
            "UPDATE phone_numbers SET number = $2, name = $3, agent_id = $4, trunk = $5, updated_at = $6,
                 agent_webhook_url = $7, agent_webhook_secret = $8, recording = $9
             WHERE id = $1")
            .bind(id).bind(f.number).bind(f.name).bind(f.agent_id).bind(f.trunk).bind(now)
            .bind(f.agent_webhook_url).bind(f.agent_webhook_secret).bind(f.recording)
            .execute(p).await.map(|r| r.rows_affected()))?;
        if done == 0 {
            return Err(StoreError::NotFound);
        }
        self.get_number(id).await
    }

    pub async fn delete_number(&self, id: &str) -> Result<()> {
        let done = on_pool!(self, p => sqlx::query("DELETE FROM phone_numbers WHERE id = $1")
            .bind(id).execute(p).await.map(|r| r.rows_affected()))?;
        if done == 0 {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }
}
