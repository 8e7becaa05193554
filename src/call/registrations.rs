//! Trunk registrations: one `sip::Registration` per profile with a
//! `[registration]` table, kept in step with the profile files. On SIGHUP
//! [`Registrations::apply`] registers added trunks, unregisters removed
//! ones and restarts changed ones; the others, and every call, are left
//! alone. Each registration's state is mirrored into [`TrunkStates`] for
//! `GET /v1/trunks/{id}` (the SIP layer sets the metric gauge).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::Mutex;
use tokio::task::JoinHandle;

use crate::config::{self, Profiles};
use crate::sip::backoff::RetryPolicy;
use crate::sip::{Registration, RegistrationState, SipStack, TrunkRegistration};
use crate::trunk::{self, TrunkStates};
use crate::webhook::Outbox;
use crate::webhook::event::{TrunkEventData, TrunkEventType};

struct Running {
    /// The table it was started from, to tell a changed profile.
    config: config::Registration,
    registration: Registration,
    /// Copies state changes into [`TrunkStates`]; ends with the registration.
    mirror: JoinHandle<()>,
}

/// The running registrations by trunk name.
#[derive(Default)]
pub struct Registrations {
    // tokio Mutex: apply and stop await unregistration while holding it, so
    // two SIGHUPs in a row apply one after the other.
    running: Mutex<HashMap<String, Running>>,
}

impl Registrations {
    /// Makes the running set match `profiles`.
    pub async fn apply(
        &self,
        stack: &SipStack,
        profiles: &Profiles,
        trunks: &Arc<TrunkStates>,
        outbox: &Outbox,
    ) {
        let mut running = self.running.lock().await;
        let stale: Vec<String> = running
            .iter()
            .filter(|(name, r)| {
                profiles
                    .by_name
                    .get(*name)
                    .and_then(|p| p.registration.as_ref())
                    != Some(&r.config)
            })
            .map(|(name, _)| name.clone())
            .collect();
        for name in stale {
            if let Some(old) = running.remove(&name) {
                tracing::info!(trunk = %name, "registration removed or changed: unregistering");
                stop(old).await;
            }
        }
        for profile in profiles.by_name.values() {
            let Some(reg) = &profile.registration else {
                continue;
            };
            if running.contains_key(&profile.name) {
                continue;
            }
            let description = TrunkRegistration {
                trunk: profile.name.clone(),
                registrar: reg.registrar.clone(),
                username: reg.username.clone(),
                auth_username: reg.auth_username.clone(),
                password: reg.password.clone(),
                domain: reg.domain.clone(),
                realm: None,
                expires: Duration::from_secs(u64::from(reg.expires)),
                retry: RetryPolicy::default(),
            };
            match stack.register(description) {
                Ok(registration) => {
                    tracing::info!(trunk = %profile.name, "registering");
                    let mirror = tokio::spawn(mirror(
                        registration.state(),
                        Arc::clone(trunks),
                        profile.name.clone(),
                        outbox.clone(),
                    ));
                    running.insert(
                        profile.name.clone(),
                        Running {
                            config: reg.clone(),
                            registration,
                            mirror,
                        },
                    );
                }
                Err(e) => {
                    tracing::error!(trunk = %profile.name, error = %e, "cannot register");
                    trunks.set_registration(
                        &profile.name,
                        trunk::Registration::Failing {
                            status: None,
                            reason: e.to_string(),
                            next_attempt_at: Utc::now(),
                        },
                    );
                }
            }
        }
    }

    /// Unregisters every trunk (Expires: 0) and waits for it.
    pub async fn stop_all(&self) {
        let all: Vec<Running> = self.running.lock().await.drain().map(|(_, r)| r).collect();
        for running in all {
            stop(running).await;
        }
    }
}

async fn stop(running: Running) {
    running.mirror.abort();
    running.registration.unregister().await;
}

/// Copies the registration's state into [`TrunkStates`] and emits
/// `trunk.registered` / `trunk.registration_failed` when it becomes
/// registered or starts failing (a refresh or a further failure emits
/// nothing).
async fn mirror(
    mut state: tokio::sync::watch::Receiver<RegistrationState>,
    trunks: Arc<TrunkStates>,
    name: String,
    outbox: Outbox,
) {
    let mut last = None;
    loop {
        let live = match &*state.borrow_and_update() {
            RegistrationState::Registering => trunk::Registration::Pending,
            RegistrationState::Registered { expires_at, .. } => trunk::Registration::Registered {
                expires_at: DateTime::<Utc>::from(*expires_at),
            },
            RegistrationState::Failing {
                status,
                reason,
                next_attempt,
                ..
            } => trunk::Registration::Failing {
                status: *status,
                reason: reason.clone(),
                next_attempt_at: DateTime::<Utc>::from(*next_attempt),
            },
            RegistrationState::Unregistered => trunk::Registration::Pending,
        };
        let kind = std::mem::discriminant(&live);
        let event = match &live {
            trunk::Registration::Registered { expires_at } => Some((
                TrunkEventType::Registered,
                TrunkEventData {
                    trunk_id: name.clone(),
                    sip_code: Some(200),
                    reason: None,
                    expires_at: Some(*expires_at),
                    next_attempt_at: None,
                },
            )),
            trunk::Registration::Failing {
                status,
                reason,
                next_attempt_at,
            } => Some((
                TrunkEventType::RegistrationFailed,
                TrunkEventData {
                    trunk_id: name.clone(),
                    sip_code: *status,
                    reason: Some(reason.clone()),
                    expires_at: None,
                    next_attempt_at: Some(*next_attempt_at),
                },
            )),
            _ => None,
        };
        trunks.set_registration(&name, live);
        if last != Some(kind)
            && let Some((event_type, data)) = event
            && let Err(e) = outbox.trunk_changed(event_type, data).await
        {
            tracing::warn!(trunk = %name, error = %e, "trunk event not written");
        }
        last = Some(kind);
        if state.changed().await.is_err() {
            return;
        }
    }
}
