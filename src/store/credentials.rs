//! Stored credentials: provider keys written through the API, kept sealed
//! (the API seals them with [`crate::secrets::Sealer`] before they get
//! here) and never read back through the API.
//!
//! Must not: hold or see a plaintext value.

use chrono::{DateTime, Utc};

use super::{Page, Result, Store, StoreError, Window, on_pool};

/// A credential's description (no value).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct CredentialRecord {
    pub id: String,
    pub name: String,
    /// JSON array of the hosts the value may be sent to.
    pub hosts: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

const COLUMNS: &str = "id, name, hosts, created_at, updated_at";

impl Store {
    pub async fn insert_credential(
        &self,
        id: &str,
        name: &str,
        hosts: &str,
        sealed: &str,
    ) -> Result<CredentialRecord> {
        let now = super::now();
        on_pool!(self, p => sqlx::query(
            "INSERT INTO credentials (id, name, hosts, sealed, created_at, updated_at)
             VALUES ($1, $2, $3, $4, $5, $5)")
            .bind(id).bind(name).bind(hosts).bind(sealed).bind(now)
            .execute(p).await.map(|_| ()))?;
        self.get_credential(id).await
    }

    pub async fn get_credential(&self, id: &str) -> Result<CredentialRecord> {
        on_pool!(self, p => sqlx::query_as::<_, CredentialRecord>(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM credentials WHERE id = $1")))
            .bind(id).fetch_optional(p).await)?
        .ok_or(StoreError::NotFound)
    }

    /// The sealed value and hosts of a credential, for the daemon's own use.
    pub async fn credential_secret(&self, id: &str) -> Result<(String, String)> {
        on_pool!(self, p => sqlx::query_as::<_, (String, String)>(
            "SELECT sealed, hosts FROM credentials WHERE id = $1")
            .bind(id).fetch_optional(p).await)?
        .ok_or(StoreError::NotFound)
    }

    pub async fn list_credentials(&self, w: Window) -> Result<Page<CredentialRecord>> {
        let items = on_pool!(self, p => sqlx::query_as::<_, CredentialRecord>(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM credentials ORDER BY created_at DESC, id DESC LIMIT $1 OFFSET $2")))
            .bind(w.limit).bind(w.offset).fetch_all(p).await)?;
        let total: i64 = on_pool!(self, p => sqlx::query_scalar(
            "SELECT COUNT(*) FROM credentials").fetch_one(p).await)?;
        Ok(Page { items, total })
    }

    pub async fn delete_credential(&self, id: &str) -> Result<()> {
        let done = on_pool!(self, p => sqlx::query("DELETE FROM credentials WHERE id = $1")
            .bind(id).execute(p).await.map(|r| r.rows_affected()))?;
        if done == 0 {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }
}
