//! Several daemons on one PostgreSQL store: who this node is, that it is
//! alive, and what it does about the nodes that are not.
//!
//! Owns: the node id ([`node_id`]: configured, or generated once and kept
//! in the data directory, never the host name), the heartbeat row written
//! every `heartbeat_seconds` with the version, the active calls and the
//! draining flag ([`Cluster::run`]), the survivor's duty towards a node
//! whose heartbeat is older than `grace_seconds` (its calls ended with BYE
//! and `lost`, through `call::Calls::reap_node`), and trunk ownership: a
//! lease row per trunk, renewed every third of `trunk_lease_seconds`, so
//! that exactly one node registers and probes each trunk and another takes
//! it over once the owner dies or drains.
//!
//! One node on SQLite writes its heartbeat (for `GET /v1/nodes`) and runs
//! every trunk, as before: there is nobody to share with.
//!
//! Must not: build SIP, place or end calls itself (the call layer does),
//! or decide a campaign contact's fate (the campaign runner recovers those
//! with the same notion of death, [`crate::store::Store::node_alive`]).

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::watch;

use crate::call::Calls;
use crate::config::{ClusterConfig, ConfigError, is_node_id};
use crate::store::Store;
use crate::store::nodes::Heartbeat;

/// The file in the data directory that keeps a generated node id.
pub const NODE_ID_FILE: &str = "node-id";

/// This daemon's version, as the heartbeat shows it.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The node id: `cluster.node_id`, else `store.node` (its older name), else
/// the one kept in `data_dir/node-id`, generated and written there the
/// first time.
pub fn node_id(cfg: &ClusterConfig, legacy: &str) -> Result<String, ConfigError> {
    if !cfg.node_id.is_empty() {
        return Ok(cfg.node_id.clone());
    }
    if !legacy.is_empty() {
        return Ok(legacy.to_owned());
    }
    kept_node_id(&cfg.data_dir)
}

fn kept_node_id(dir: &Path) -> Result<String, ConfigError> {
    let path = dir.join(NODE_ID_FILE);
    let bad =
        |message: String| ConfigError::new(path.display().to_string(), "cluster.data_dir", message);
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let id = text.trim();
            if is_node_id(id) {
                Ok(id.to_owned())
            } else {
                Err(bad(format!(
                    "{id:?} is not a node id; delete the file to get a new one"
                )))
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let id = crate::ids::new("node");
            std::fs::create_dir_all(dir).map_err(|e| bad(format!("cannot create it: {e}")))?;
            // Written whole, then renamed: a crash leaves no half id.
            let tmp = dir.join(format!("{NODE_ID_FILE}.tmp"));
            std::fs::write(&tmp, format!("{id}\n"))
                .and_then(|()| std::fs::rename(&tmp, &path))
                .map_err(|e| bad(format!("cannot keep the node id: {e}")))?;
            Ok(id)
        }
        Err(e) => Err(bad(format!("cannot read the node id: {e}"))),
    }
}

/// This node's part in the cluster; see the module doc.
pub struct Cluster {
    store: Store,
    calls: Calls,
    cfg: ClusterConfig,
    node: String,
    /// Addresses shown in `GET /v1/nodes`.
    sip_address: Option<String>,
    api_address: Option<String>,
}

impl Cluster {
    pub fn new(store: Store, calls: Calls, cfg: ClusterConfig) -> Self {
        let node = calls.node().to_owned();
        Self {
            store,
            calls,
            cfg,
            node,
            sip_address: None,
            api_address: None,
        }
    }

    /// The addresses this node serves on, for `GET /v1/nodes`.
    pub fn with_addresses(mut self, sip: String, api: String) -> Self {
        self.sip_address = Some(sip);
        self.api_address = Some(api);
        self
    }

    /// A heartbeat older than this instant means death.
    fn dead_cutoff(&self) -> DateTime<Utc> {
        Utc::now() - chrono::Duration::seconds(i64::from(self.cfg.grace_seconds))
    }

    fn heartbeat(&self) -> Heartbeat<'_> {
        Heartbeat {
            node: &self.node,
            version: VERSION,
            sip_address: self.sip_address.as_deref(),
            api_address: self.api_address.as_deref(),
            active_calls: i64::try_from(self.calls.active()).unwrap_or(i64::MAX),
            draining: self.calls.is_draining(),
        }
    }

    /// Writes this node's row anew (at start, before anything is claimed).
    pub async fn announce(&self) -> Result<(), crate::store::StoreError> {
        self.store.node_started(&self.heartbeat()).await
    }

    /// Whether the store is shared with other nodes.
    fn shared_store(&self) -> bool {
        self.store.backend() == "postgres"
    }

    /// Heartbeats, ends dead nodes' calls and keeps the trunk leases until
    /// `stop` turns true (after the drain: a draining node is alive); then
    /// records the clean stop.
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        let lease_tick = Duration::from_secs(u64::from(self.cfg.trunk_lease_seconds)) / 3;
        let every = Duration::from_secs(u64::from(self.cfg.heartbeat_seconds)).min(lease_tick);
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut released = false;
        while !*stop.borrow() {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.changed() => continue,
            }
            if let Err(e) = self.store.node_heartbeat(&self.heartbeat()).await {
                tracing::warn!(error = %e, "heartbeat not written");
            }
            if !self.shared_store() {
                continue;
            }
            if self.calls.is_draining() {
                if !released {
                    released = true;
                    self.release_trunks().await;
                }
            } else {
                self.keep_trunks().await;
            }
            self.reap().await;
        }
        if let Err(e) = self.store.node_stopped(&self.node).await {
            tracing::warn!(error = %e, "clean stop not recorded");
        }
    }

    /// Ends the calls of every node that is dead now.
    async fn reap(&self) {
        let dead = match self
            .store
            .dead_nodes_with_calls(&self.node, self.dead_cutoff())
            .await
        {
            Ok(dead) => dead,
            Err(e) => {
                tracing::warn!(error = %e, "dead nodes not looked up");
                return;
            }
        };
        for node in dead {
            match self.calls.reap_node(&node).await {
                Ok(0) => {}
                Ok(n) => tracing::warn!(node = %node, calls = n, "ended the calls of a dead node"),
                Err(e) => {
                    tracing::error!(node = %node, error = %e, "calls of a dead node not ended")
                }
            }
        }
    }

    /// Takes or renews the lease of every trunk with a registration or a
    /// probe, and runs what this node holds.
    async fn keep_trunks(&self) {
        let profiles = self.calls.profiles();
        let now = Utc::now();
        let until = now + chrono::Duration::seconds(i64::from(self.cfg.trunk_lease_seconds));
        let mut owned = BTreeSet::new();
        for p in profiles.by_name.values() {
            let wants = p.registration.is_some()
                || p.outbound
                    .as_ref()
                    .is_some_and(|o| o.ping_seconds.is_some());
            if !wants {
                continue;
            }
            match self
                .store
                .acquire_trunk_lease(&p.id(), &self.node, now, until)
                .await
            {
                Ok(lease) if lease.owner == self.node => {
                    owned.insert(p.name.clone());
                }
                Ok(_) => {}
                Err(e) => {
                    // Unknown: keep what runs rather than flap; the lease
                    // ends by itself if this goes on.
                    tracing::warn!(trunk = %p.name, error = %e, "trunk lease not renewed");
                    if self.calls.owns_trunk(&p.name) {
                        owned.insert(p.name.clone());
                    }
                }
            }
        }
        if self.calls.own_trunks(Some(owned.clone())) {
            tracing::info!(trunks = ?owned, "trunks run by this node changed");
            self.calls.apply_profiles().await;
        }
    }

    /// Stops this node's registrations and probes and gives up their
    /// leases, so that another node takes them at once.
    async fn release_trunks(&self) {
        if self.calls.own_trunks(Some(BTreeSet::new())) {
            self.calls.apply_profiles().await;
        }
        match self.store.release_trunk_leases(&self.node).await {
            Ok(n) if n > 0 => tracing::info!(trunks = n, "draining: trunk leases released"),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "trunk leases not released"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generated_id_is_kept_and_a_configured_one_wins() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = ClusterConfig {
            data_dir: dir.path().to_path_buf(),
            ..ClusterConfig::default()
        };
        let first = node_id(&cfg, "").unwrap();
        assert!(is_node_id(&first), "{first}");
        assert_eq!(node_id(&cfg, "").unwrap(), first, "kept across starts");
        assert_eq!(node_id(&cfg, "old-name").unwrap(), "old-name");
        let named = ClusterConfig {
            node_id: "node-a".into(),
            ..cfg.clone()
        };
        assert_eq!(node_id(&named, "old-name").unwrap(), "node-a");
        std::fs::write(dir.path().join(NODE_ID_FILE), "bad id\n").unwrap();
        assert!(node_id(&cfg, "").is_err(), "a damaged file is refused");
    }
}
