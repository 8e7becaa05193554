//! One thing running per trunk profile, kept in step with the profile
//! files: the trunk registrations ([`super::registrations`]) and the
//! OPTIONS probes ([`super::trunk_pings`]) are each a [`PerTrunk`] kind
//! run by a [`Reconciler`].
//!
//! [`Reconciler::apply`] (at start and on SIGHUP) starts what a profile
//! now wants, stops what no profile wants any more, and restarts what a
//! profile wants differently, told by the [`PerTrunk::Key`] it was started
//! from; everything else is left alone (as rathole's typed config diff
//! does). [`Reconciler::stop_all`] stops everything at shutdown.
//!
//! Must not: know what runs (that is the [`PerTrunk`] kind) or build SIP.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;

use tokio::sync::Mutex;

use crate::config::{Profile, Profiles};
use crate::sip::SipStack;
use crate::trunk::TrunkStates;
use crate::webhook::Outbox;

/// What a per-trunk kind starts with.
#[derive(Clone, Copy)]
pub struct TrunkContext<'a> {
    /// The running SIP stack the REGISTERs and probes go out on.
    pub stack: &'a SipStack,
    /// Where each trunk's live state goes, for `GET /v1/trunks/{id}`.
    pub trunks: &'a Arc<TrunkStates>,
    /// Trunk events (`trunk.*`) go through it.
    pub outbox: &'a Outbox,
}

/// One kind of thing that runs per trunk profile.
pub trait PerTrunk: Sized + Send + 'static {
    /// What it runs from: a profile that wants another key gets it
    /// restarted.
    type Key: PartialEq + Send + Sync;
    /// Names the kind in the log.
    const WHAT: &'static str;

    /// What `profile` wants running; `None`: nothing.
    fn wanted(profile: &Profile) -> Option<Self::Key>;

    /// Starts it for trunk `name`; `None` when it cannot start (the kind
    /// logs why and records it on the trunk).
    fn start(name: &str, key: &Self::Key, ctx: &TrunkContext<'_>) -> Option<Self>;

    /// Stops it (at shutdown, or before [`PerTrunk::forget`]).
    fn stop(self) -> impl Future<Output = ()> + Send;

    /// Clears what trunk `name` shows of it, once no profile wants it or
    /// before it restarts (not at shutdown).
    fn forget(_name: &str, _ctx: &TrunkContext<'_>) {}
}

/// The running `T` by trunk name, each with the key it started from.
pub struct Reconciler<T: PerTrunk> {
    /// What runs now, by trunk name; emptied by `stop_all` at shutdown.
    // tokio Mutex: apply and stop_all await each stop while holding it, so
    // two SIGHUPs in a row apply one after the other.
    running: Mutex<HashMap<String, (T::Key, T)>>,
}

impl<T: PerTrunk> Default for Reconciler<T> {
    fn default() -> Self {
        Self {
            running: Mutex::new(HashMap::new()),
        }
    }
}

impl<T: PerTrunk> Reconciler<T> {
    /// Makes the running set match `profiles`.
    pub async fn apply(&self, profiles: &Profiles, ctx: &TrunkContext<'_>) {
        let mut running = self.running.lock().await;
        let mut wanted: HashMap<&str, T::Key> = profiles
            .by_name
            .values()
            .filter_map(|p| Some((p.name.as_str(), T::wanted(p)?)))
            .collect();
        let stale: Vec<String> = running
            .iter()
            .filter(|(name, (key, _))| wanted.get(name.as_str()) != Some(key))
            .map(|(name, _)| name.clone())
            .collect();
        for name in stale {
            if let Some((_, old)) = running.remove(&name) {
                tracing::info!(trunk = %name, what = T::WHAT, "removed or changed: stopping");
                old.stop().await;
                T::forget(&name, ctx);
            }
        }
        wanted.retain(|name, _| !running.contains_key(*name));
        for (name, key) in wanted {
            if let Some(started) = T::start(name, &key, ctx) {
                running.insert(name.to_owned(), (key, started));
            }
        }
    }

    /// Stops every one (at shutdown).
    pub async fn stop_all(&self) {
        let all: Vec<T> = self
            .running
            .lock()
            .await
            .drain()
            .map(|(_, (_, t))| t)
            .collect();
        for running in all {
            running.stop().await;
        }
    }
}
