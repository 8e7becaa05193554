//! API keys: stored only as a SHA-256 hash plus the visible prefix, with
//! the scope that bounds what each may do (`admin`, `calls`, `read`).

use chrono::{DateTime, Utc};

use super::{Page, Result, Store, StoreError, Window, on_pool};

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ApiKeyRecord {
    pub id: String,
    pub name: String,
    pub prefix: String,
    pub mode: String,
    /// `admin`, `calls` or `read`; the API decides what each allows.
    pub scope: String,
    pub rate_limit_per_minute: Option<i64>,
    pub revoked_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// A key candidate for authentication: the record and its stored hash.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct KeyCandidate {
    #[sqlx(flatten)]
    pub record: ApiKeyRecord,
    pub secret_hash: String,
}

pub struct NewApiKey<'a> {
    pub id: &'a str,
    pub name: &'a str,
    pub prefix: &'a str,
    pub secret_hash: &'a str,
    pub mode: &'a str,
    pub scope: &'a str,
    pub rate_limit_per_minute: Option<i64>,
}

impl Store {
    pub async fn insert_api_key(&self, key: NewApiKey<'_>) -> Result<ApiKeyRecord> {
        let now = super::now();
        on_pool!(self, p => sqlx::query(
            "INSERT INTO api_keys (id, name, prefix, secret_hash, mode, scope, rate_limit_per_minute, created_at, updated_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8)")
            .bind(key.id).bind(key.name).bind(key.prefix).bind(key.secret_hash)
            .bind(key.mode).bind(key.scope).bind(key.rate_limit_per_minute).bind(now)
            .execute(p).await.map(|r| r.rows_affected()))?;
        self.get_api_key(key.id).await
    }

    pub async fn get_api_key(&self, id: &str) -> Result<ApiKeyRecord> {
        on_pool!(self, p => sqlx::query_as::<_, ApiKeyRecord>(
            "SELECT id, name, prefix, mode, scope, rate_limit_per_minute, revoked_at, created_at, updated_at
             FROM api_keys WHERE id = $1")
            .bind(id).fetch_optional(p).await)?
        .ok_or(StoreError::NotFound)
    }

    /// Keys, newest first, revoked ones included (they show `revoked_at`).
    pub async fn list_api_keys(&self, w: Window) -> Result<Page<ApiKeyRecord>> {
        let items = on_pool!(self, p => sqlx::query_as::<_, ApiKeyRecord>(
            "SELECT id, name, prefix, mode, scope, rate_limit_per_minute, revoked_at, created_at, updated_at
             FROM api_keys ORDER BY created_at DESC, id DESC LIMIT $1 OFFSET $2")
            .bind(w.limit).bind(w.offset).fetch_all(p).await)?;
        let total: i64 = on_pool!(self, p => sqlx::query_scalar("SELECT COUNT(*) FROM api_keys")
            .fetch_one(p).await)?;
        Ok(Page { items, total })
    }

    /// Revokes a key; revoking twice keeps the first time.
    pub async fn revoke_api_key(&self, id: &str) -> Result<ApiKeyRecord> {
        let now = super::now();
        let done = on_pool!(self, p => sqlx::query(
            "UPDATE api_keys SET revoked_at = COALESCE(revoked_at, $2), updated_at = $2 WHERE id = $1")
            .bind(id).bind(now).execute(p).await.map(|r| r.rows_affected()))?;
        if done == 0 {
            return Err(StoreError::NotFound);
        }
        self.get_api_key(id).await
    }

    /// Unrevoked keys with this visible prefix; the caller compares hashes in
    /// constant time.
    pub async fn api_key_candidates(&self, prefix: &str) -> Result<Vec<KeyCandidate>> {
        Ok(on_pool!(self, p => sqlx::query_as::<_, KeyCandidate>(
            "SELECT id, name, prefix, mode, scope, rate_limit_per_minute, revoked_at, created_at, updated_at, secret_hash
             FROM api_keys WHERE prefix = $1 AND revoked_at IS NULL")
            .bind(prefix).fetch_all(p).await)?)
    }

    /// Whether the key exists and is not revoked: what a long-lived event
    /// stream asks every few seconds.
    pub async fn api_key_active(&self, id: &str) -> Result<bool> {
        let n: i64 = on_pool!(self, p => sqlx::query_scalar(
            "SELECT COUNT(*) FROM api_keys WHERE id = $1 AND revoked_at IS NULL")
            .bind(id).fetch_one(p).await)?;
        Ok(n > 0)
    }
}
