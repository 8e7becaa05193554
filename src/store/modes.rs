//! Test mode in the store: which mode an object was made in. Every object
//! an API key creates carries its key's mode (`livemode`: `false` for an
//! `al_test_` key); the API answers a key only with objects of its mode.
//!
//! Must not: decide what a key may see (that is `api::mode`).

use super::{Result, Store, on_pool};

/// The kinds of objects that carry a mode, each its own table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModeTable {
    Calls,
    Agents,
    Numbers,
    Campaigns,
    Endpoints,
    Events,
    /// A chat session has its agent's mode.
    ChatSessions,
}

impl ModeTable {
    /// One fixed statement per table: no table name is ever formatted in.
    fn select(self) -> &'static str {
        match self {
            ModeTable::Calls => "SELECT livemode FROM calls WHERE id = $1",
            ModeTable::Agents => "SELECT livemode FROM agents WHERE id = $1",
            ModeTable::Numbers => "SELECT livemode FROM phone_numbers WHERE id = $1",
            ModeTable::Campaigns => "SELECT livemode FROM campaigns WHERE id = $1",
            ModeTable::Endpoints => "SELECT livemode FROM webhook_endpoints WHERE id = $1",
            ModeTable::Events => "SELECT livemode FROM events WHERE id = $1",
            ModeTable::ChatSessions => {
                "SELECT a.livemode FROM chat_sessions s JOIN agents a ON a.id = s.agent_id
                 WHERE s.id = $1"
            }
        }
    }
}

impl Store {
    /// The mode of object `id` (`true`: live), `None` when there is none.
    pub async fn livemode_of(&self, table: ModeTable, id: &str) -> Result<Option<bool>> {
        Ok(
            on_pool!(self, p => sqlx::query_scalar::<_, bool>(table.select())
            .bind(id).fetch_optional(p).await)?,
        )
    }
}
