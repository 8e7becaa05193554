//! Phone numbers: E.164 (normalized by the caller), unique, bound to an
//! agent and a trunk.

use chrono::{DateTime, Utc};

use super::agents::{AgentRecord, SELECT_AGENT};
use super::commit::{FromSqlite, Value, time};
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
}

/// The writable fields of a number.
pub struct NumberFields<'a> {
    pub number: &'a str,
    pub name: Option<&'a str>,
    pub agent_id: Option<&'a str>,
    pub trunk: Option<&'a str>,
    pub agent_webhook_url: Option<&'a str>,
    pub agent_webhook_secret: Option<&'a str>,
}

/// The columns of a [`NumberRecord`].
macro_rules! number_columns {
    () => {
        "id, number, name, agent_id, trunk, created_at, updated_at, agent_webhook_url,
        agent_webhook_secret, livemode"
    };
}

const FIND_NUMBER: &str = concat!(
    "SELECT ",
    number_columns!(),
    " FROM phone_numbers WHERE number = $1"
);

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
                 agent_webhook_url, agent_webhook_secret, livemode)
             VALUES ($1, $2, $3, $4, $5, $6, $6, $7, $8, $9)")
            .bind(id).bind(f.number).bind(f.name).bind(f.agent_id).bind(f.trunk).bind(now)
            .bind(f.agent_webhook_url).bind(f.agent_webhook_secret).bind(livemode)
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
    /// the agent is gone), for routing an inbound call; a test-mode number
    /// is never routed one (`NotFound`, as for an unknown number). On the
    /// call path,
    /// so on SQLite both reads run on the group commit's thread, away from
    /// the busy runtime ([`super::commit`]); on PostgreSQL on one
    /// connection.
    pub async fn find_number_with_agent(
        &self,
        number: &str,
    ) -> Result<(NumberRecord, Option<AgentRecord>)> {
        match &self.pool {
            Pool::Sqlite(_) => {
                let number = Value::from(number);
                self.group_commit()?
                    .read(Box::new(move |batch| {
                        let record: NumberRecord = batch
                            .row(FIND_NUMBER, std::slice::from_ref(&number))?
                            .filter(|r: &NumberRecord| r.livemode)
                            .ok_or(StoreError::NotFound)?;
                        let agent = match &record.agent_id {
                            Some(id) => batch.row(SELECT_AGENT, &[id.as_str().into()])?,
                            None => None,
                        };
                        Ok((record, agent))
                    }))
                    .await
            }
            Pool::Postgres(p) => {
                let mut c = p.acquire().await?;
                let record = sqlx::query_as::<_, NumberRecord>(FIND_NUMBER)
                    .bind(number)
                    .fetch_optional(&mut *c)
                    .await?
                    .filter(|r| r.livemode)
                    .ok_or(StoreError::NotFound)?;
                let agent = match &record.agent_id {
                    Some(id) => {
                        sqlx::query_as::<_, AgentRecord>(SELECT_AGENT)
                            .bind(id)
                            .fetch_optional(&mut *c)
                            .await?
                    }
                    None => None,
                };
                Ok((record, agent))
            }
        }
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
                 agent_webhook_url = $7, agent_webhook_secret = $8
             WHERE id = $1")
            .bind(id).bind(f.number).bind(f.name).bind(f.agent_id).bind(f.trunk).bind(now)
            .bind(f.agent_webhook_url).bind(f.agent_webhook_secret)
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
