//! Webhook endpoints: where call events are delivered and the secret that
//! signs them.

use chrono::{DateTime, Utc};

use super::{Page, Result, Store, StoreError, Window, on_pool};

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct EndpointRecord {
    pub id: String,
    pub url: String,
    pub description: Option<String>,
    /// JSON array of subscribed event types.
    pub events: String,
    pub enabled: bool,
    pub secret: String,
    /// The secret before the last rotation, still valid (and signing) until
    /// `previous_secret_expires_at`.
    pub previous_secret: Option<String>,
    pub previous_secret_expires_at: Option<DateTime<Utc>>,
    /// `call.ended` carries the call's transcript to this endpoint.
    pub include_transcript: bool,
    /// `false` for a test-mode endpoint: it gets only test-mode events.
    pub livemode: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// The writable fields of an endpoint.
pub struct EndpointFields<'a> {
    pub url: &'a str,
    pub description: Option<&'a str>,
    pub events: &'a str,
    pub enabled: bool,
    pub include_transcript: bool,
}

impl Store {
    pub async fn insert_endpoint(
        &self,
        id: &str,
        secret: &str,
        f: EndpointFields<'_>,
        livemode: bool,
    ) -> Result<EndpointRecord> {
        let now = super::now();
        on_pool!(self, p => sqlx::query(
            "INSERT INTO webhook_endpoints (id, url, description, events, enabled, secret, created_at, updated_at,
                include_transcript, livemode)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $7, $8, $9)")
            .bind(id).bind(f.url).bind(f.description).bind(f.events).bind(f.enabled).bind(secret).bind(now)
            .bind(f.include_transcript).bind(livemode)
            .execute(p).await.map(|r| r.rows_affected()))?;
        self.get_endpoint(id).await
    }

    pub async fn get_endpoint(&self, id: &str) -> Result<EndpointRecord> {
        on_pool!(self, p => sqlx::query_as::<_, EndpointRecord>(
            "SELECT id, url, description, events, enabled, secret, previous_secret, previous_secret_expires_at,
                include_transcript, livemode, created_at, updated_at
             FROM webhook_endpoints WHERE id = $1")
            .bind(id).fetch_optional(p).await)?
        .ok_or(StoreError::NotFound)
    }

    /// The endpoints of one mode (`livemode`), newest first.
    pub async fn list_endpoints(&self, livemode: bool, w: Window) -> Result<Page<EndpointRecord>> {
        let items = on_pool!(self, p => sqlx::query_as::<_, EndpointRecord>(
            "SELECT id, url, description, events, enabled, secret, previous_secret, previous_secret_expires_at,
                include_transcript, livemode, created_at, updated_at
             FROM webhook_endpoints WHERE livemode = $3
             ORDER BY created_at DESC, id DESC LIMIT $1 OFFSET $2")
            .bind(w.limit).bind(w.offset).bind(livemode).fetch_all(p).await)?;
        let total: i64 = on_pool!(self, p => sqlx::query_scalar(
            "SELECT COUNT(*) FROM webhook_endpoints WHERE livemode = $1")
            .bind(livemode).fetch_one(p).await)?;
        Ok(Page { items, total })
    }

    pub async fn update_endpoint(&self, id: &str, f: EndpointFields<'_>) -> Result<EndpointRecord> {
        let now = super::now();
        let done = on_pool!(self, p => sqlx::query(
            "UPDATE webhook_endpoints SET url = $2, description = $3, events = $4, enabled = $5, updated_at = $6,
                include_transcript = $7
             WHERE id = $1")
            .bind(id).bind(f.url).bind(f.description).bind(f.events).bind(f.enabled).bind(now)
            .bind(f.include_transcript)
            .execute(p).await.map(|r| r.rows_affected()))?;
        if done == 0 {
            return Err(StoreError::NotFound);
        }
        self.get_endpoint(id).await
    }

    pub async fn delete_endpoint(&self, id: &str) -> Result<()> {
        let done = on_pool!(self, p => sqlx::query("DELETE FROM webhook_endpoints WHERE id = $1")
            .bind(id).execute(p).await.map(|r| r.rows_affected()))?;
        if done == 0 {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }

    pub async fn set_endpoint_enabled(&self, id: &str, enabled: bool) -> Result<EndpointRecord> {
        let now = super::now();
        let done = on_pool!(self, p => sqlx::query(
            "UPDATE webhook_endpoints SET enabled = $2, updated_at = $3 WHERE id = $1")
            .bind(id).bind(enabled).bind(now)
            .execute(p).await.map(|r| r.rows_affected()))?;
        if done == 0 {
            return Err(StoreError::NotFound);
        }
        self.get_endpoint(id).await
    }

    /// Endpoints whose current or previous secret is not sealed yet:
    /// (id, secret, previous secret).
    pub async fn unsealed_endpoint_secrets(&self) -> Result<Vec<(String, String, Option<String>)>> {
        Ok(
            on_pool!(self, p => sqlx::query_as::<_, (String, String, Option<String>)>(
            "SELECT id, secret, previous_secret FROM webhook_endpoints
             WHERE secret NOT LIKE 'enc:%' OR previous_secret NOT LIKE 'enc:%'")
            .fetch_all(p).await)?,
        )
    }

    /// Replaces an endpoint's secrets by their sealed forms, only if they
    /// are still `old` (another node may have sealed them meanwhile).
    pub async fn reseal_endpoint_secrets(
        &self,
        id: &str,
        old: (&str, Option<&str>),
        new: (&str, Option<&str>),
    ) -> Result<()> {
        on_pool!(self, p => sqlx::query(
            "UPDATE webhook_endpoints SET secret = $4, previous_secret = $5
             WHERE id = $1 AND secret = $2
               AND (previous_secret = $3 OR (previous_secret IS NULL AND $3 IS NULL))")
            .bind(id).bind(old.0).bind(old.1).bind(new.0).bind(new.1)
            .execute(p).await.map(|_| ()))?;
        Ok(())
    }

    /// Makes `secret` the signing secret; the current one stays valid until
    /// `previous_expires_at`.
    pub async fn rotate_endpoint_secret(
        &self,
        id: &str,
        secret: &str,
        previous_expires_at: DateTime<Utc>,
    ) -> Result<EndpointRecord> {
        let now = super::now();
        let done = on_pool!(self, p => sqlx::query(
            "UPDATE webhook_endpoints SET previous_secret = secret, previous_secret_expires_at = $3,
                 secret = $2, updated_at = $4
             WHERE id = $1")
            .bind(id).bind(secret).bind(previous_expires_at).bind(now)
            .execute(p).await.map(|r| r.rows_affected()))?;
        if done == 0 {
            return Err(StoreError::NotFound);
        }
        self.get_endpoint(id).await
    }
}
