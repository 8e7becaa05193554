//! Publishable keys (`al_pk_...`) and the web calls they start: each key's
//! hash, visible prefix, agents and origins; each web call's key, origin
//! and single-use media token (its hash and expiry).
//!
//! Must not: decide what a key may do (the API does), or write call rows
//! (the call layer's transitions do; a web call's row comes first, this
//! table only points at it).

use chrono::{DateTime, Utc};

use super::{Page, Result, Store, StoreError, Window, on_pool};

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct PublishableKeyRecord {
    pub id: String,
    pub name: String,
    pub prefix: String,
    /// JSON array of agent ids.
    pub agent_ids: String,
    /// JSON array of origins (`https://shop.example`).
    pub origins: String,
    pub rate_limit_per_minute: Option<i64>,
    pub max_concurrent_calls: Option<i64>,
    pub revoked_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl PublishableKeyRecord {
    /// The bound agents; a corrupt value binds none.
    pub fn agents(&self) -> Vec<String> {
        serde_json::from_str(&self.agent_ids).unwrap_or_default()
    }

    /// The allowed origins; a corrupt value allows none.
    pub fn allowed_origins(&self) -> Vec<String> {
        serde_json::from_str(&self.origins).unwrap_or_default()
    }
}

/// A candidate for authentication: the record and its stored hash.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct PublishableCandidate {
    #[sqlx(flatten)]
    pub record: PublishableKeyRecord,
    pub secret_hash: String,
}

pub struct NewPublishableKey<'a> {
    pub id: &'a str,
    pub name: &'a str,
    pub prefix: &'a str,
    pub secret_hash: &'a str,
    pub agent_ids: &'a str,
    pub origins: &'a str,
    pub rate_limit_per_minute: Option<i64>,
    pub max_concurrent_calls: Option<i64>,
}

const COLUMNS: &str = "id, name, prefix, agent_ids, origins, rate_limit_per_minute, \
    max_concurrent_calls, revoked_at, created_at, updated_at";

/// What redeeming a media token found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Redeemed {
    /// The token was valid and is now spent; the web call's origin.
    Ok { origin: String },
    /// No such call, a wrong token, already used, or expired: the caller
    /// answers the same to all four, so a guesser learns nothing.
    Refused,
}

impl Store {
    pub async fn insert_publishable_key(
        &self,
        k: NewPublishableKey<'_>,
    ) -> Result<PublishableKeyRecord> {
        let now = super::now();
        on_pool!(self, p => sqlx::query(
            "INSERT INTO publishable_keys (id, name, prefix, secret_hash, agent_ids, origins,
                rate_limit_per_minute, max_concurrent_calls, created_at, updated_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $9)")
            .bind(k.id).bind(k.name).bind(k.prefix).bind(k.secret_hash)
            .bind(k.agent_ids).bind(k.origins).bind(k.rate_limit_per_minute)
            .bind(k.max_concurrent_calls).bind(now)
            .execute(p).await.map(|r| r.rows_affected()))?;
        self.get_publishable_key(k.id).await
    }

    pub async fn get_publishable_key(&self, id: &str) -> Result<PublishableKeyRecord> {
        let sql = format!("SELECT {COLUMNS} FROM publishable_keys WHERE id = $1");
        on_pool!(self, p => sqlx::query_as::<_, PublishableKeyRecord>(sqlx::AssertSqlSafe(sql))
            .bind(id).fetch_optional(p).await)?
        .ok_or(StoreError::NotFound)
    }

    /// Keys, newest first, revoked ones included.
    pub async fn list_publishable_keys(&self, w: Window) -> Result<Page<PublishableKeyRecord>> {
        let sql = format!(
            "SELECT {COLUMNS} FROM publishable_keys
             ORDER BY created_at DESC, id DESC LIMIT $1 OFFSET $2"
        );
        let items = on_pool!(self, p => sqlx::query_as::<_, PublishableKeyRecord>(sqlx::AssertSqlSafe(sql))
            .bind(w.limit).bind(w.offset).fetch_all(p).await)?;
        let total: i64 = on_pool!(self, p => sqlx::query_scalar(
            "SELECT COUNT(*) FROM publishable_keys").fetch_one(p).await)?;
        Ok(Page { items, total })
    }

    /// Revokes a key; revoking twice keeps the first time.
    pub async fn revoke_publishable_key(&self, id: &str) -> Result<PublishableKeyRecord> {
        let now = super::now();
        let done = on_pool!(self, p => sqlx::query(
            "UPDATE publishable_keys SET revoked_at = COALESCE(revoked_at, $2), updated_at = $2
             WHERE id = $1")
            .bind(id).bind(now).execute(p).await.map(|r| r.rows_affected()))?;
        if done == 0 {
            return Err(StoreError::NotFound);
        }
        self.get_publishable_key(id).await
    }

    /// Unrevoked keys with this visible prefix; the caller compares hashes
    /// in constant time.
    pub async fn publishable_key_candidates(
        &self,
        prefix: &str,
    ) -> Result<Vec<PublishableCandidate>> {
        let sql = format!(
            "SELECT {COLUMNS}, secret_hash FROM publishable_keys
             WHERE prefix = $1 AND revoked_at IS NULL"
        );
        Ok(
            on_pool!(self, p => sqlx::query_as::<_, PublishableCandidate>(sqlx::AssertSqlSafe(sql))
            .bind(prefix).fetch_all(p).await)?,
        )
    }

    /// Whether some unrevoked key lists `origin` (a CORS preflight carries
    /// no key). Keys are few; their lists are read and matched here rather
    /// than with a LIKE the origin's characters could steer.
    pub async fn publishable_origin_listed(&self, origin: &str) -> Result<bool> {
        let lists: Vec<String> = on_pool!(self, p => sqlx::query_scalar(
            "SELECT origins FROM publishable_keys WHERE revoked_at IS NULL")
            .fetch_all(p).await)?;
        Ok(lists.iter().any(|l| {
            serde_json::from_str::<Vec<String>>(l)
                .unwrap_or_default()
                .iter()
                .any(|o| o == origin)
        }))
    }

    /// Web calls not yet ended: of one key, or (`None`) of every key.
    pub async fn live_web_calls(&self, key_id: Option<&str>) -> Result<i64> {
        Ok(on_pool!(self, p => sqlx::query_scalar(
            "SELECT COUNT(*) FROM web_calls w JOIN calls c ON c.id = w.call_id
             WHERE c.ended_at IS NULL AND ($1 IS NULL OR w.key_id = $1)")
            .bind(key_id).fetch_one(p).await)?)
    }

    /// Records the web call `call_id` (whose row exists) with its token.
    pub async fn insert_web_call(
        &self,
        call_id: &str,
        key_id: &str,
        origin: &str,
        token_hash: &str,
        expires_at_ms: i64,
    ) -> Result<()> {
        let now = super::now();
        on_pool!(self, p => sqlx::query(
            "INSERT INTO web_calls (call_id, key_id, origin, token_hash, expires_at_ms, created_at)
             VALUES ($1, $2, $3, $4, $5, $6)")
            .bind(call_id).bind(key_id).bind(origin).bind(token_hash)
            .bind(expires_at_ms).bind(now)
            .execute(p).await.map(|r| r.rows_affected()))?;
        Ok(())
    }

    /// Spends the media token of `call_id` if `token_hash` is its hash, it
    /// is unused and not expired at `now_ms`: one atomic update, so two
    /// requests racing with the same token cannot both win (on either
    /// backend, across nodes).
    pub async fn redeem_web_call_token(
        &self,
        call_id: &str,
        token_hash: &str,
        now_ms: i64,
    ) -> Result<Redeemed> {
        let now = super::now();
        let origin: Option<String> = on_pool!(self, p => sqlx::query_scalar(
            "UPDATE web_calls SET used_at = $3
             WHERE call_id = $1 AND token_hash = $2 AND used_at IS NULL AND expires_at_ms > $4
             RETURNING origin")
            .bind(call_id).bind(token_hash).bind(now).bind(now_ms)
            .fetch_optional(p).await)?;
        Ok(match origin {
            Some(origin) => Redeemed::Ok { origin },
            None => Redeemed::Refused,
        })
    }

    /// The origin a web call was started from (what its media routes
    /// answer CORS for); `None` for no such web call.
    pub async fn web_call_origin(&self, call_id: &str) -> Result<Option<String>> {
        Ok(on_pool!(self, p => sqlx::query_scalar(
            "SELECT origin FROM web_calls WHERE call_id = $1")
            .bind(call_id).fetch_optional(p).await)?)
    }

    /// Whether `token_hash` is the web call's token, spent or not (a
    /// hangup may come after it expired).
    pub async fn web_call_token_matches(&self, call_id: &str, token_hash: &str) -> Result<bool> {
        let stored: Option<String> = on_pool!(self, p => sqlx::query_scalar(
            "SELECT token_hash FROM web_calls WHERE call_id = $1")
            .bind(call_id).fetch_optional(p).await)?;
        Ok(stored.is_some_and(|s| {
            subtle::ConstantTimeEq::ct_eq(s.as_bytes(), token_hash.as_bytes()).into()
        }))
    }

    /// Whether the web call's token was spent (media connected or tried).
    pub async fn web_call_token_used(&self, call_id: &str) -> Result<bool> {
        let used: Option<Option<DateTime<Utc>>> = on_pool!(self, p => sqlx::query_scalar(
            "SELECT used_at FROM web_calls WHERE call_id = $1")
            .bind(call_id).fetch_optional(p).await)?;
        Ok(matches!(used, Some(Some(_))))
    }
}
