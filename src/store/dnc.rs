//! The do-not-call list: one row per E.164 number (normalized by the
//! caller), global to all campaigns. Adding a number also blocks the waiting
//! contacts that have it, in the same transaction.

use chrono::{DateTime, Utc};

use super::{Page, Result, Store, StoreError, Window, on_pool};
use crate::ids;

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct DncRecord {
    pub id: String,
    pub number: String,
    pub reason: Option<String>,
    /// `api`, `import` or `opt_out`.
    pub source: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl Store {
    /// Adds `numbers` (with one reason) in one transaction, skipping those
    /// already listed, and blocks the waiting contacts that have them; how
    /// many were new.
    pub async fn add_dnc(
        &self,
        numbers: &[String],
        reason: Option<&str>,
        source: &str,
    ) -> Result<u64> {
        if numbers.is_empty() {
            return Ok(0);
        }
        let now = super::now();
        let added = on_pool!(self, p => {
            let mut tx = p.begin().await?;
            let mut added = 0;
            for chunk in numbers.chunks(500) {
                let mut q = sqlx::QueryBuilder::new(
                    "INSERT INTO do_not_call (id, number, reason, source, created_at, updated_at) ");
                q.push_values(chunk, |mut b, n| {
                    b.push_bind(ids::new(ids::DNC))
                        .push_bind(n.as_str())
                        .push_bind(reason)
                        .push_bind(source)
                        .push_bind(now)
                        .push_bind(now);
                });
                q.push(" ON CONFLICT (number) DO NOTHING");
                added += q.build().execute(&mut *tx).await?.rows_affected();
                let mut q = sqlx::QueryBuilder::new(
                    "UPDATE campaign_contacts SET state = 'dnc', updated_at = ");
                q.push_bind(now);
                q.push(" WHERE state = 'pending' AND number IN (");
                let mut list = q.separated(", ");
                for n in chunk {
                    list.push_bind(n.as_str());
                }
                q.push(")");
                q.build().execute(&mut *tx).await?;
            }
            tx.commit().await?;
            Ok::<u64, sqlx::Error>(added)
        })?;
        Ok(added)
    }

    pub async fn find_dnc(&self, number: &str) -> Result<DncRecord> {
        on_pool!(self, p => sqlx::query_as::<_, DncRecord>(
            "SELECT id, number, reason, source, created_at, updated_at FROM do_not_call WHERE number = $1")
            .bind(number).fetch_optional(p).await)?
        .ok_or(StoreError::NotFound)
    }

    pub async fn get_dnc(&self, id: &str) -> Result<DncRecord> {
        on_pool!(self, p => sqlx::query_as::<_, DncRecord>(
            "SELECT id, number, reason, source, created_at, updated_at FROM do_not_call WHERE id = $1")
            .bind(id).fetch_optional(p).await)?
        .ok_or(StoreError::NotFound)
    }

    /// The list, newest first, optionally only `number`.
    pub async fn list_dnc(&self, number: Option<&str>, w: Window) -> Result<Page<DncRecord>> {
        let items = on_pool!(self, p => sqlx::query_as::<_, DncRecord>(
            "SELECT id, number, reason, source, created_at, updated_at FROM do_not_call
             WHERE ($1 IS NULL OR number = $1)
             ORDER BY created_at DESC, id DESC LIMIT $2 OFFSET $3")
            .bind(number).bind(w.limit).bind(w.offset).fetch_all(p).await)?;
        let total: i64 = on_pool!(self, p => sqlx::query_scalar(
            "SELECT COUNT(*) FROM do_not_call WHERE ($1 IS NULL OR number = $1)")
            .bind(number).fetch_one(p).await)?;
        Ok(Page { items, total })
    }

    /// Removes a number from the list. Contacts it blocked stay blocked.
    pub async fn delete_dnc(&self, id: &str) -> Result<()> {
        let done = on_pool!(self, p => sqlx::query("DELETE FROM do_not_call WHERE id = $1")
            .bind(id).execute(p).await.map(|r| r.rows_affected()))?;
        if done == 0 {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }
}
