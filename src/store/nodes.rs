//! Nodes and trunk leases: each daemon's heartbeat row, the question "is
//! that node dead", and which node owns each trunk's registration and
//! OPTIONS probe.
//!
//! A node is dead when its heartbeat is older than the caller's cutoff
//! (now minus the configured grace) or it recorded a clean stop. Times
//! come from the daemons' clocks, so the nodes of one cluster must keep
//! them in step (NTP); the grace absorbs small skew.
//!
//! Must not: decide what a death means (that is `cluster` and `call`).

use chrono::{DateTime, Utc};

use super::{Result, Store, on_pool};

/// A node as `GET /v1/nodes` shows it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct NodeRecord {
    pub id: String,
    pub version: String,
    pub sip_address: Option<String>,
    pub api_address: Option<String>,
    pub started_at: DateTime<Utc>,
    pub heartbeat_at: DateTime<Utc>,
    pub active_calls: i64,
    pub draining: bool,
    pub stopped_at: Option<DateTime<Utc>>,
}

/// What one heartbeat writes.
#[derive(Debug, Clone)]
pub struct Heartbeat<'a> {
    pub node: &'a str,
    pub version: &'a str,
    pub sip_address: Option<&'a str>,
    pub api_address: Option<&'a str>,
    pub active_calls: i64,
    pub draining: bool,
}

/// Who holds a trunk's lease.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct TrunkLease {
    pub trunk: String,
    pub owner: String,
    pub lease_until: DateTime<Utc>,
    pub generation: i64,
    pub acquired_at: DateTime<Utc>,
}

impl Store {
    /// This store's node name (`None` for the CLI).
    pub fn node(&self) -> Option<&str> {
        self.node.as_deref()
    }

    /// The node (re)starts: its row is written anew, alive, not draining.
    pub async fn node_started(&self, hb: &Heartbeat<'_>) -> Result<()> {
        let now = super::now();
        on_pool!(self, p => sqlx::query(
            "INSERT INTO nodes (id, version, sip_address, api_address, started_at, heartbeat_at,
                 active_calls, draining, stopped_at)
             VALUES ($1, $2, $3, $4, $5, $5, $6, $7, NULL)
             ON CONFLICT (id) DO UPDATE SET version = excluded.version,
                 sip_address = excluded.sip_address, api_address = excluded.api_address,
                 started_at = excluded.started_at, heartbeat_at = excluded.heartbeat_at,
                 active_calls = excluded.active_calls, draining = excluded.draining,
                 stopped_at = NULL")
            .bind(hb.node).bind(hb.version).bind(hb.sip_address).bind(hb.api_address)
            .bind(now).bind(hb.active_calls).bind(hb.draining)
            .execute(p).await.map(|r| r.rows_affected()))?;
        Ok(())
    }

    /// One heartbeat: the node is alive now, with this many calls.
    pub async fn node_heartbeat(&self, hb: &Heartbeat<'_>) -> Result<()> {
        let now = super::now();
        on_pool!(self, p => sqlx::query(
            "UPDATE nodes SET heartbeat_at = $2, active_calls = $3, draining = $4,
                 sip_address = COALESCE($5, sip_address), api_address = COALESCE($6, api_address)
             WHERE id = $1")
            .bind(hb.node).bind(now).bind(hb.active_calls).bind(hb.draining)
            .bind(hb.sip_address).bind(hb.api_address)
            .execute(p).await.map(|r| r.rows_affected()))?;
        Ok(())
    }

    /// The node stopped cleanly (its calls have ended): dead from now on,
    /// without waiting for the grace.
    pub async fn node_stopped(&self, node: &str) -> Result<()> {
        let now = super::now();
        on_pool!(self, p => sqlx::query(
            "UPDATE nodes SET stopped_at = $2, heartbeat_at = $2, active_calls = 0 WHERE id = $1")
            .bind(node).bind(now).execute(p).await.map(|r| r.rows_affected()))?;
        Ok(())
    }

    /// Every node that ever ran on this store, by id.
    pub async fn list_nodes(&self) -> Result<Vec<NodeRecord>> {
        Ok(on_pool!(self, p => sqlx::query_as::<_, NodeRecord>(
            "SELECT id, version, sip_address, api_address, started_at, heartbeat_at, active_calls,
                    draining, stopped_at
             FROM nodes ORDER BY id")
            .fetch_all(p).await)?)
    }

    /// Whether `node` is alive: it has a row, has not stopped and beat at
    /// or after `cutoff`. A node without a row never ran here (or ran a
    /// version without heartbeats): it is not alive.
    pub async fn node_alive(&self, node: &str, cutoff: DateTime<Utc>) -> Result<bool> {
        let alive: Option<i64> = on_pool!(self, p => sqlx::query_scalar(
            "SELECT 1 FROM nodes WHERE id = $1 AND stopped_at IS NULL AND heartbeat_at >= $2")
            .bind(node).bind(cutoff).fetch_optional(p).await)?;
        Ok(alive.is_some())
    }

    /// Nodes other than `me` that are dead at `cutoff` and still hold
    /// unended calls: what a survivor must clean up.
    pub async fn dead_nodes_with_calls(
        &self,
        me: &str,
        cutoff: DateTime<Utc>,
    ) -> Result<Vec<String>> {
        Ok(on_pool!(self, p => sqlx::query_scalar(
            "SELECT DISTINCT c.node FROM calls c
             WHERE c.ended_at IS NULL AND c.node IS NOT NULL AND c.node <> $1
               AND NOT EXISTS (SELECT 1 FROM nodes n WHERE n.id = c.node
                               AND n.stopped_at IS NULL AND n.heartbeat_at >= $2)
             ORDER BY c.node")
            .bind(me).bind(cutoff).fetch_all(p).await)?)
    }

    /// Takes or renews the lease of `trunk` for `owner` until `until`: it
    /// is granted when nobody holds it, `owner` already does, or the
    /// holder's lease ended before `now`. The lease as it is after the
    /// attempt (another node's when not granted).
    pub async fn acquire_trunk_lease(
        &self,
        trunk: &str,
        owner: &str,
        now: DateTime<Utc>,
        until: DateTime<Utc>,
    ) -> Result<TrunkLease> {
        on_pool!(self, p => sqlx::query(
            "INSERT INTO trunk_leases (trunk, owner, lease_until, generation, acquired_at)
             VALUES ($1, $2, $4, 1, $3)
             ON CONFLICT (trunk) DO UPDATE SET
                 generation = CASE WHEN trunk_leases.owner = excluded.owner
                     THEN trunk_leases.generation ELSE trunk_leases.generation + 1 END,
                 acquired_at = CASE WHEN trunk_leases.owner = excluded.owner
                     THEN trunk_leases.acquired_at ELSE excluded.acquired_at END,
                 owner = excluded.owner,
                 lease_until = excluded.lease_until
             WHERE trunk_leases.owner = excluded.owner OR trunk_leases.lease_until < excluded.acquired_at")
            .bind(trunk).bind(owner).bind(now).bind(until)
            .execute(p).await.map(|r| r.rows_affected()))?;
        self.trunk_lease(trunk)
            .await?
            .ok_or(super::StoreError::NotFound)
    }

    /// Gives up `owner`'s leases (a drain): another node may take them at
    /// once.
    pub async fn release_trunk_leases(&self, owner: &str) -> Result<u64> {
        let past = super::now() - chrono::Duration::seconds(1);
        Ok(on_pool!(self, p => sqlx::query(
            "UPDATE trunk_leases SET lease_until = $2 WHERE owner = $1")
            .bind(owner).bind(past).execute(p).await.map(|r| r.rows_affected()))?)
    }

    /// Who holds `trunk`'s lease, if anyone ever did.
    pub async fn trunk_lease(&self, trunk: &str) -> Result<Option<TrunkLease>> {
        Ok(on_pool!(self, p => sqlx::query_as::<_, TrunkLease>(
            "SELECT trunk, owner, lease_until, generation, acquired_at FROM trunk_leases
             WHERE trunk = $1")
            .bind(trunk).fetch_optional(p).await)?)
    }
}
