//! Chat sessions with an agent and their messages. A turn (the user's
//! message, the brain's replies and its new state) is written in one
//! transaction; `seq` orders the messages and its uniqueness refuses two
//! turns racing on one session (the loser gets [`StoreError::Conflict`]).

use chrono::{DateTime, Utc};

use super::{Result, Store, StoreError, on_pool};

/// The most messages a session holds; the API refuses turns past it.
pub const MAX_MESSAGES: i64 = 1000;

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ChatSessionRecord {
    pub id: String,
    pub agent_id: String,
    /// The brain's state, JSON.
    pub state: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ChatMessageRecord {
    pub id: String,
    pub session_id: String,
    pub seq: i64,
    pub role: String,
    pub content: String,
    /// The whole message, JSON.
    pub data: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// A message to append.
#[derive(Debug, Clone)]
pub struct NewChatMessage {
    pub id: String,
    pub role: String,
    pub content: String,
    pub data: String,
}

impl Store {
    /// Creates a session with its first messages (the greeting).
    pub async fn insert_chat_session(
        &self,
        id: &str,
        agent_id: &str,
        state: &str,
        messages: &[NewChatMessage],
    ) -> Result<ChatSessionRecord> {
        let now = super::now();
        on_pool!(self, p => async {
            let mut tx = p.begin().await?;
            sqlx::query(
                "INSERT INTO chat_sessions (id, agent_id, state, created_at, updated_at)
                 VALUES ($1, $2, $3, $4, $4)")
                .bind(id).bind(agent_id).bind(state).bind(now)
                .execute(&mut *tx).await?;
            for (seq, m) in messages.iter().enumerate() {
                sqlx::query(
                    "INSERT INTO chat_messages (id, session_id, seq, role, content, data, created_at, updated_at)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $7)")
                    .bind(&m.id).bind(id).bind(seq as i64).bind(&m.role).bind(&m.content)
                    .bind(&m.data).bind(now)
                    .execute(&mut *tx).await?;
            }
            tx.commit().await
        }.await)?;
        self.get_chat_session(id).await
    }

    pub async fn get_chat_session(&self, id: &str) -> Result<ChatSessionRecord> {
        on_pool!(self, p => sqlx::query_as::<_, ChatSessionRecord>(
            "SELECT id, agent_id, state, created_at, updated_at FROM chat_sessions WHERE id = $1")
            .bind(id).fetch_optional(p).await)?
        .ok_or(StoreError::NotFound)
    }

    /// The messages of a session in order (at most [`MAX_MESSAGES`]).
    pub async fn list_chat_messages(&self, session_id: &str) -> Result<Vec<ChatMessageRecord>> {
        Ok(on_pool!(self, p => sqlx::query_as::<_, ChatMessageRecord>(
            "SELECT id, session_id, seq, role, content, data, created_at, updated_at
             FROM chat_messages WHERE session_id = $1 ORDER BY seq LIMIT $2")
            .bind(session_id).bind(MAX_MESSAGES).fetch_all(p).await)?)
    }

    /// Appends one turn after message `first_seq - 1` and saves the state;
    /// answers the time written.
    pub async fn append_chat_turn(
        &self,
        session_id: &str,
        first_seq: i64,
        state: &str,
        messages: &[NewChatMessage],
    ) -> Result<DateTime<Utc>> {
        let now = super::now();
        let updated = on_pool!(self, p => async {
            let mut tx = p.begin().await?;
            let updated = sqlx::query(
                "UPDATE chat_sessions SET state = $2, updated_at = $3 WHERE id = $1")
                .bind(session_id).bind(state).bind(now)
                .execute(&mut *tx).await?.rows_affected();
            for (i, m) in messages.iter().enumerate() {
                sqlx::query(
                    "INSERT INTO chat_messages (id, session_id, seq, role, content, data, created_at, updated_at)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $7)")
                    .bind(&m.id).bind(session_id).bind(first_seq + i as i64).bind(&m.role)
                    .bind(&m.content).bind(&m.data).bind(now)
                    .execute(&mut *tx).await?;
            }
            tx.commit().await?;
            Ok::<_, sqlx::Error>(updated)
        }.await)?;
        if updated == 0 {
            return Err(StoreError::NotFound);
        }
        Ok(now)
    }
}
