//! Agents: a name, the pipeline `kind`, and its settings as a JSON document
//! whose shape the API owns.

use chrono::{DateTime, Utc};

use super::commit::{FromSqlite, time};
use super::{Page, Result, Store, StoreError, Window, on_pool};

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct AgentRecord {
    pub id: String,
    pub name: String,
    pub kind: String,
    /// JSON document.
    pub settings: String,
    /// `false` for a test-mode agent (made with an `al_test_` key).
    pub livemode: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

pub(super) const SELECT_AGENT: &str =
    "SELECT id, name, kind, settings, livemode, created_at, updated_at FROM agents WHERE id = $1";

impl FromSqlite for AgentRecord {
    /// By column name, as sqlx's `FromRow` maps them.
    fn from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<Self> {
        Ok(Self {
            id: row.get("id")?,
            name: row.get("name")?,
            kind: row.get("kind")?,
            settings: row.get("settings")?,
            livemode: row.get("livemode")?,
            created_at: time(row, "created_at")?,
            updated_at: time(row, "updated_at")?,
        })
    }
}

impl Store {
    pub async fn insert_agent(
        &self,
        id: &str,
        name: &str,
        kind: &str,
        settings: &str,
        livemode: bool,
    ) -> Result<AgentRecord> {
        let now = super::now();
        on_pool!(self, p => sqlx::query(
            "INSERT INTO agents (id, name, kind, settings, created_at, updated_at, livemode)
             VALUES ($1, $2, $3, $4, $5, $5, $6)")
            .bind(id).bind(name).bind(kind).bind(settings).bind(now).bind(livemode)
            .execute(p).await.map(|r| r.rows_affected()))?;
        self.get_agent(id).await
    }

    pub async fn get_agent(&self, id: &str) -> Result<AgentRecord> {
        on_pool!(self, p => sqlx::query_as::<_, AgentRecord>(SELECT_AGENT)
            .bind(id).fetch_optional(p).await)?
        .ok_or(StoreError::NotFound)
    }

    /// The agents of one mode (`livemode`), newest first.
    pub async fn list_agents(&self, livemode: bool, w: Window) -> Result<Page<AgentRecord>> {
        let items = on_pool!(self, p => sqlx::query_as::<_, AgentRecord>(
            "SELECT id, name, kind, settings, livemode, created_at, updated_at FROM agents
             WHERE livemode = $3 ORDER BY created_at DESC, id DESC LIMIT $1 OFFSET $2")
            .bind(w.limit).bind(w.offset).bind(livemode).fetch_all(p).await)?;
        let total: i64 = on_pool!(self, p => sqlx::query_scalar(
            "SELECT COUNT(*) FROM agents WHERE livemode = $1")
            .bind(livemode).fetch_one(p).await)?;
        Ok(Page { items, total })
    }

    pub async fn update_agent(
        &self,
        id: &str,
        name: &str,
        kind: &str,
        settings: &str,
    ) -> Result<AgentRecord> {
        let now = super::now();
        let done = on_pool!(self, p => sqlx::query(
            "UPDATE agents SET name = $2, kind = $3, settings = $4, updated_at = $5 WHERE id = $1")
            .bind(id).bind(name).bind(kind).bind(settings).bind(now)
            .execute(p).await.map(|r| r.rows_affected()))?;
        if done == 0 {
            return Err(StoreError::NotFound);
        }
        self.get_agent(id).await
    }

    /// Deletes an agent; [`StoreError::InUse`] while a number is bound to it.
    pub async fn delete_agent(&self, id: &str) -> Result<()> {
        let done = on_pool!(self, p => sqlx::query("DELETE FROM agents WHERE id = $1")
            .bind(id).execute(p).await.map(|r| r.rows_affected()))?;
        if done == 0 {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }
}
