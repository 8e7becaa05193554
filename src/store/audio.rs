//! Uploaded audio prompts: validated and decoded by the API before they
//! get here; the store keeps the 8 kHz samples and their description.
//!
//! Must not: decode or validate audio (that is the API's and `media`'s).

use chrono::{DateTime, Utc};

use super::{Page, Result, Store, StoreError, Window, on_pool};

/// An audio prompt without its samples (what listings show).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct AudioRecord {
    pub id: String,
    pub name: String,
    /// `wav`, `pcmu` or `pcma`: what was uploaded.
    pub format: String,
    pub duration_ms: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

const COLUMNS: &str = "id, name, format, duration_ms, created_at, updated_at";

impl Store {
    /// Saves an upload: `samples` are 8 kHz mono 16-bit PCM, little-endian.
    pub async fn insert_audio(
        &self,
        id: &str,
        name: &str,
        format: &str,
        duration_ms: i64,
        samples: &[u8],
    ) -> Result<AudioRecord> {
        let now = super::now();
        on_pool!(self, p => sqlx::query(
            "INSERT INTO audio_prompts (id, name, format, duration_ms, samples, created_at, updated_at)
             VALUES ($1, $2, $3, $4, $5, $6, $6)")
            .bind(id).bind(name).bind(format).bind(duration_ms).bind(samples).bind(now)
            .execute(p).await.map(|_| ()))?;
        self.get_audio(id).await
    }

    pub async fn get_audio(&self, id: &str) -> Result<AudioRecord> {
        on_pool!(self, p => sqlx::query_as::<_, AudioRecord>(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM audio_prompts WHERE id = $1")))
            .bind(id).fetch_optional(p).await)?
        .ok_or(StoreError::NotFound)
    }

    /// The samples of an upload (8 kHz mono 16-bit PCM, little-endian).
    pub async fn audio_samples(&self, id: &str) -> Result<Vec<u8>> {
        on_pool!(self, p => sqlx::query_scalar::<_, Vec<u8>>(
            "SELECT samples FROM audio_prompts WHERE id = $1")
            .bind(id).fetch_optional(p).await)?
        .ok_or(StoreError::NotFound)
    }

    /// Uploads, newest first.
    pub async fn list_audio(&self, w: Window) -> Result<Page<AudioRecord>> {
        let items = on_pool!(self, p => sqlx::query_as::<_, AudioRecord>(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM audio_prompts ORDER BY created_at DESC, id DESC LIMIT $1 OFFSET $2")))
            .bind(w.limit).bind(w.offset).fetch_all(p).await)?;
        let total: i64 = on_pool!(self, p => sqlx::query_scalar(
            "SELECT COUNT(*) FROM audio_prompts").fetch_one(p).await)?;
        Ok(Page { items, total })
    }

    pub async fn delete_audio(&self, id: &str) -> Result<()> {
        let done = on_pool!(self, p => sqlx::query("DELETE FROM audio_prompts WHERE id = $1")
            .bind(id).execute(p).await.map(|r| r.rows_affected()))?;
        if done == 0 {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }
}
