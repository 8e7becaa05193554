//! Live state of each trunk: registration status, health (OPTIONS probes)
//! and active calls.
//!
//! Written by the SIP registration and probe tasks and the call tasks, read
//! by the API (`GET /v1/trunks`) and metrics. The profiles themselves live
//! in [`crate::config::Profiles`]; this holds only what changes at run time.

use std::collections::HashMap;
use std::sync::Mutex;

use chrono::{DateTime, Utc};

/// Where a trunk's registration stands.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum RegistrationStatus {
    /// The profile has no `[registration]` table.
    #[default]
    NotConfigured,
    /// Configured; the first attempt has not finished.
    Pending,
    Registered {
        expires_at: DateTime<Utc>,
    },
    Failing {
        /// The SIP status of the last answer, `None` when nothing answered.
        status: Option<u16>,
        reason: String,
        next_attempt_at: DateTime<Utc>,
    },
}

/// What the OPTIONS probes to the trunk's proxy found.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum Health {
    /// The profile sets no `[outbound] ping_seconds`.
    #[default]
    NotConfigured,
    /// Probing; no answer or timeout yet.
    Pending,
    /// The last probe was answered (any final response below 500 but 408).
    Up {
        status: u16,
        rtt_ms: u64,
        checked_at: DateTime<Utc>,
    },
    /// The last probe got 408, a 5xx or 6xx, or nothing.
    Down {
        /// `None` when nothing answered.
        status: Option<u16>,
        reason: String,
        /// When the trunk went down (kept while it stays down).
        since: DateTime<Utc>,
        checked_at: DateTime<Utc>,
    },
}

/// What one trunk looks like now.
#[derive(Debug, Clone, Default)]
pub struct TrunkLive {
    /// Written by the trunk's registration task (through its mirror).
    pub registration: RegistrationStatus,
    /// Written by the trunk's OPTIONS probe task.
    pub health: Health,
    /// The calls on the trunk on this node, as the call registry counts
    /// them against `max_calls`.
    pub active_calls: u32,
}

/// Live state of every trunk, by profile name.
#[derive(Debug, Default)]
pub struct TrunkStates {
    /// By profile name; trimmed to the profiles on SIGHUP.
    // std Mutex: every access is a short copy in or out, never across `.await`.
    inner: Mutex<HashMap<String, TrunkLive>>,
}

impl TrunkStates {
    pub fn get(&self, name: &str) -> TrunkLive {
        self.lock().get(name).cloned().unwrap_or_default()
    }

    pub fn set_registration(&self, name: &str, registration: RegistrationStatus) {
        self.lock()
            .entry(name.to_string())
            .or_default()
            .registration = registration;
    }

    pub fn set_health(&self, name: &str, health: Health) {
        self.lock().entry(name.to_string()).or_default().health = health;
    }

    pub fn set_active_calls(&self, name: &str, active: usize) {
        self.lock()
            .entry(name.to_string())
            .or_default()
            .active_calls = u32::try_from(active).unwrap_or(u32::MAX);
    }

    /// Forgets trunks whose profile is gone.
    pub fn retain(&self, keep: impl Fn(&str) -> bool) {
        self.lock().retain(|name, _| keep(name));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, TrunkLive>> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}
