//! The audit log: one row per create, change or delete made through the
//! API (appended by the API's audit middleware) or the CLI's key commands
//! (`actor` `cli`), listed newest first.
//!
//! Must not: update or delete rows (the log is append-only) or hold any
//! secret: a key appears by its id only.

use chrono::{DateTime, Utc};

use super::{Page, Result, Store, Window, on_pool};

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct AuditRecord {
    pub id: String,
    pub key_id: Option<String>,
    pub action: String,
    pub object_type: String,
    pub object_id: Option<String>,
    pub method: String,
    pub route: String,
    pub status: i64,
    pub client_addr: Option<String>,
    pub request_id: Option<String>,
    /// `api` or `cli`.
    pub actor: String,
    pub created_at: DateTime<Utc>,
}

/// A row to append; `id` and `created_at` are the store's.
#[derive(Debug, Clone)]
pub struct NewAudit<'a> {
    pub id: &'a str,
    pub key_id: Option<&'a str>,
    pub action: &'a str,
    pub object_type: &'a str,
    pub object_id: Option<&'a str>,
    pub method: &'a str,
    pub route: &'a str,
    pub status: i64,
    pub client_addr: Option<&'a str>,
    pub request_id: Option<&'a str>,
    /// `api` (a request) or `cli` (the command line).
    pub actor: &'a str,
}

/// What a listing is narrowed to; `None` matches everything.
#[derive(Debug, Clone, Copy, Default)]
pub struct AuditFilter<'a> {
    pub key_id: Option<&'a str>,
    pub object_id: Option<&'a str>,
    pub object_type: Option<&'a str>,
}

const COLUMNS: &str = "id, key_id, action, object_type, object_id, method, route, status, \
     client_addr, request_id, actor, created_at";
const WHERE: &str = "($1 IS NULL OR key_id = $1) AND ($2 IS NULL OR object_id = $2) \
     AND ($3 IS NULL OR object_type = $3)";

impl Store {
    pub async fn insert_audit(&self, a: NewAudit<'_>) -> Result<()> {
        let now = super::now();
        on_pool!(self, p => sqlx::query(
            "INSERT INTO audit_events (id, key_id, action, object_type, object_id, method, route,
                 status, client_addr, request_id, created_at, actor)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)")
            .bind(a.id).bind(a.key_id).bind(a.action).bind(a.object_type).bind(a.object_id)
            .bind(a.method).bind(a.route).bind(a.status).bind(a.client_addr)
            .bind(a.request_id).bind(now).bind(a.actor)
            .execute(p).await.map(|r| r.rows_affected()))?;
        Ok(())
    }

    /// Audit events, newest first (ids sort by time).
    pub async fn list_audit(&self, f: AuditFilter<'_>, w: Window) -> Result<Page<AuditRecord>> {
        let sql = format!(
            "SELECT {COLUMNS} FROM audit_events WHERE {WHERE} ORDER BY id DESC LIMIT $4 OFFSET $5"
        );
        let items = on_pool!(self, p => sqlx::query_as::<_, AuditRecord>(sqlx::AssertSqlSafe(sql))
            .bind(f.key_id).bind(f.object_id).bind(f.object_type)
            .bind(w.limit).bind(w.offset).fetch_all(p).await)?;
        let count = format!("SELECT COUNT(*) FROM audit_events WHERE {WHERE}");
        let total: i64 = on_pool!(self, p => sqlx::query_scalar(sqlx::AssertSqlSafe(count))
            .bind(f.key_id).bind(f.object_id).bind(f.object_type).fetch_one(p).await)?;
        Ok(Page { items, total })
    }
}
