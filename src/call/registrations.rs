//! Trunk registrations: one `sip::Registration` per profile with a
//! `[registration]` table, kept in step with the profile files by a
//! [`Reconciler`]. On SIGHUP [`Reconciler::apply`] registers added trunks,
//! unregisters removed ones and restarts changed ones; the others, and
//! every call, are left alone. Each registration's state is mirrored into [`TrunkStates`] for
//! `GET /v1/trunks/{id}` (the SIP layer sets the metric gauge).

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::task::JoinHandle;

use super::reconcile::{PerTrunk, Reconciler, TrunkContext};
use crate::config::{self, Profile};
use crate::model::EventType;
use crate::sip::backoff::RetryPolicy;
use crate::sip::{self, RegistrationState, TrunkRegistration};
use crate::trunk::{self, TrunkStates};
use crate::webhook::Outbox;
use crate::webhook::event::TrunkEventData;

/// The running registrations by trunk name.
pub type Registrations = Reconciler<Registered>;

/// One trunk's running registration; it unregisters when stopped.
pub struct Registered {
    /// The REGISTER task's handle; stopping it unregisters (Expires: 0).
    registration: sip::Registration,
    /// Copies state changes into [`TrunkStates`]; ends with the registration.
    mirror: JoinHandle<()>,
}

impl PerTrunk for Registered {
    /// The `[registration]` table it was started from.
    type Key = config::RegistrationConfig;
    const WHAT: &'static str = "registration";

    fn wanted(profile: &Profile) -> Option<Self::Key> {
        // The registrar as a URI over the trunk's transport (a change of
        // transport restarts the registration).
        let mut reg = profile.registration.clone()?;
        reg.registrar = profile.sip_target(&reg.registrar);
        Some(reg)
    }

    fn start(name: &str, reg: &Self::Key, ctx: &TrunkContext<'_>) -> Option<Self> {
        let description = TrunkRegistration {
            trunk: name.to_owned(),
            registrar: reg.registrar.clone(),
            username: reg.username.clone(),
            auth_username: reg.auth_username.clone(),
            password: reg.password.clone(),
            domain: reg.domain.clone(),
            realm: None,
            expires: Duration::from_secs(u64::from(reg.expires)),
            retry: RetryPolicy::default(),
        };
        match ctx.stack.register(description) {
            Ok(registration) => {
                tracing::info!(trunk = %name, "registering");
                let mirror = tokio::spawn(mirror(
                    registration.state(),
                    Arc::clone(ctx.trunks),
                    name.to_owned(),
                    ctx.outbox.clone(),
                ));
                Some(Registered {
                    registration,
                    mirror,
                })
            }
            Err(e) => {
                tracing::error!(trunk = %name, error = %e, "cannot register");
                ctx.trunks.set_registration(
                    name,
                    trunk::RegistrationStatus::Failing {
                        status: None,
                        reason: e.to_string(),
                        next_attempt_at: Utc::now(),
                    },
                );
                None
            }
        }
    }

    /// Unregisters (Expires: 0) and waits for it.
    async fn stop(self) {
        self.mirror.abort();
        self.registration.unregister().await;
    }
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
            RegistrationState::Registering => trunk::RegistrationStatus::Pending,
            RegistrationState::Registered { expires_at, .. } => {
                trunk::RegistrationStatus::Registered {
                    expires_at: DateTime::<Utc>::from(*expires_at),
                }
            }
            RegistrationState::Failing {
                status,
                reason,
                next_attempt,
                ..
            } => trunk::RegistrationStatus::Failing {
                status: *status,
                reason: reason.clone(),
                next_attempt_at: DateTime::<Utc>::from(*next_attempt),
            },
            RegistrationState::Unregistered => trunk::RegistrationStatus::Pending,
        };
        let kind = std::mem::discriminant(&live);
        let event = match &live {
            trunk::RegistrationStatus::Registered { expires_at } => Some((
                EventType::TrunkRegistered,
                TrunkEventData {
                    trunk_id: name.clone(),
                    sip_code: Some(200),
                    reason: None,
                    expires_at: Some(*expires_at),
                    next_attempt_at: None,
                },
            )),
            trunk::RegistrationStatus::Failing {
                status,
                reason,
                next_attempt_at,
            } => Some((
                EventType::TrunkRegistrationFailed,
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
