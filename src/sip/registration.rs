//! Trunk registration, RFC 3261 §10.2: REGISTER with digest auth (§22,
//! RFC 8760), refresh well before the granted expiry, 423 Min-Expires
//! (§10.3 step 7), backoff with jitter on failure that honours Retry-After,
//! and Expires: 0 when the [`Registration`] is stopped or dropped.

use super::backoff::{RetryPolicy, refresh_after};
use super::base::{SipError, Transport};
use super::challenge::{Challenge, ChallengeResponder};
use super::transport::SipStack;
use super::{Credentials, peer_uri, random_token};
use crate::metrics::{SIP_REGISTRATION_FAILURES_TOTAL, SIP_REGISTRATION_STATE};
use ezk_sip_core::transport::TargetTransportInfo;
use ezk_sip_core::{Endpoint, Request};
use ezk_sip_types::header::typed::{
    CSeq, CallID, Contact, Expires, FromTo, MaxForwards, MinExpires, RetryAfter,
};
use ezk_sip_types::host::HostPort;
use ezk_sip_types::uri::{NameAddr, SipUri};
use ezk_sip_types::{CodeKind, Method, Name, StatusCode};
use rand::Rng;
use std::time::{Duration, SystemTime};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

/// What to register: a plain description, not the daemon's config type.
#[derive(Debug, Clone)]
pub struct TrunkRegistration {
    /// Trunk name, used in logs and metric labels.
    pub trunk: String,
    /// Registrar as `host[:port]`, optionally `sip:` prefixed and with
    /// `;transport=tcp`.
    pub registrar: String,
    /// User of the address of record and the Contact.
    pub username: String,
    /// Digest user when the registrar's credentials differ from the
    /// address of record (RFC 3261 §22.4 keeps the two apart).
    pub auth_username: Option<String>,
    /// Never printed: `Debug` of a [`crate::secrets::Secret`] shows `***`.
    pub password: crate::secrets::Secret,
    /// Domain of the address of record; `None` uses the registrar host.
    pub domain: Option<String>,
    /// Realm to answer; `None` answers whatever realm the registrar names.
    pub realm: Option<String>,
    /// Requested binding lifetime.
    pub expires: Duration,
    pub retry: RetryPolicy,
}

/// Where a registration stands, for the API and metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegistrationState {
    /// The first REGISTER is under way.
    Registering,
    /// The registrar accepted the binding.
    Registered {
        expires_at: SystemTime,
        refresh_at: SystemTime,
    },
    /// The last attempt failed; the next one is scheduled.
    Failing {
        /// SIP status of the failure, `None` for a timeout or send error.
        status: Option<u16>,
        reason: String,
        /// Failures in a row.
        failures: u32,
        next_attempt: SystemTime,
    },
    /// Stopped: the binding was removed (or never made).
    Unregistered,
}

/// A running registration. Dropping it unregisters in the background;
/// [`Registration::unregister`] does it and waits.
#[derive(Debug)]
pub struct Registration {
    state: watch::Receiver<RegistrationState>,
    /// Dropping or firing it tells the task to unregister and stop.
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl Registration {
    /// A receiver that always holds the current state.
    pub fn state(&self) -> watch::Receiver<RegistrationState> {
        self.state.clone()
    }

    /// Remove the binding (REGISTER with Expires: 0) and wait for it.
    pub async fn unregister(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take()
            && let Err(e) = task.await
        {
            tracing::warn!(error = %e, "registration task failed");
        }
    }
}

impl SipStack {
    /// Start registering a trunk; the state is observable at once.
    pub fn register(&self, trunk: TrunkRegistration) -> Result<Registration, SipError> {
        let worker = Worker::new(self, &trunk)?;
        let (state_tx, state_rx) = watch::channel(RegistrationState::Registering);
        let (stop_tx, stop_rx) = oneshot::channel();
        let span = tracing::info_span!("sip_registration", trunk = %trunk.trunk);
        let task = tokio::spawn(tracing::Instrument::instrument(
            worker.run(state_tx, stop_rx),
            span,
        ));
        Ok(Registration {
            state: state_rx,
            stop: Some(stop_tx),
            task: Some(task),
        })
    }
}

/// Result of one REGISTER (with its auth rounds).
enum RegisterResult {
    Registered(Duration),
    MinExpires(Duration),
    Failed {
        status: Option<u16>,
        reason: String,
        retry_after: Option<Duration>,
    },
}

/// Owns the REGISTER dialog state (RFC 3261 §10.2: one Call-ID, CSeq
/// increasing across refreshes).
struct Worker {
    endpoint: Endpoint,
    trunk: String,
    registrar_uri: SipUri,
    aor: NameAddr,
    from_tag: String,
    call_id: String,
    cseq: u32,
    contact: Contact,
    via_host_port: HostPort,
    expires: Duration,
    retry: RetryPolicy,
    /// Answers the registrar's 401/407 (RFC 3261 §22).
    challenges: ChallengeResponder,
}

impl Worker {
    fn new(stack: &SipStack, trunk: &TrunkRegistration) -> Result<Self, SipError> {
        let registrar_uri = peer_uri("registrar", &trunk.registrar)?;
        let transport = Transport::of_uri(&registrar_uri);
        let domain = match &trunk.domain {
            Some(domain) => domain.clone(),
            None => registrar_uri.host_port.host.to_string(),
        };
        let aor_text = format!("sip:{}@{}", trunk.username, domain);
        let aor_uri: SipUri = aor_text.parse().map_err(|_| SipError::Invalid {
            what: "registration address of record",
            value: aor_text.clone(),
        })?;
        let credentials = Credentials {
            username: trunk
                .auth_username
                .clone()
                .unwrap_or_else(|| trunk.username.clone()),
            password: trunk.password.expose().to_owned(),
            realm: trunk.realm.clone(),
        };
        Ok(Self {
            endpoint: stack.endpoint.clone(),
            trunk: trunk.trunk.clone(),
            registrar_uri,
            aor: NameAddr::uri(aor_uri),
            from_tag: random_token(),
            call_id: random_token(),
            cseq: rand::rng().random_range(1..10_000),
            contact: stack.local.contact(Some(&trunk.username), transport),
            via_host_port: HostPort::from(stack.local.address_for(transport)),
            expires: trunk.expires,
            retry: trunk.retry,
            challenges: ChallengeResponder::new(Some(&credentials)),
        })
    }

    async fn run(
        mut self,
        state: watch::Sender<RegistrationState>,
        mut stop: oneshot::Receiver<()>,
    ) {
        let mut failures = 0u32;
        let mut min_expires_rounds = 0u32;
        let mut registered = false;
        loop {
            let outcome = tokio::select! {
                outcome = self.register(self.expires) => outcome,
                _ = &mut stop => break,
            };
            let wait = match outcome {
                RegisterResult::Registered(granted) => {
                    failures = 0;
                    min_expires_rounds = 0;
                    registered = true;
                    let refresh = refresh_after(granted);
                    let now = SystemTime::now();
                    tracing::info!(
                        granted_s = granted.as_secs(),
                        refresh_s = refresh.as_secs(),
                        "registered"
                    );
                    metrics::gauge!(SIP_REGISTRATION_STATE, "trunk" => self.trunk.clone()).set(1.0);
                    state.send_replace(RegistrationState::Registered {
                        expires_at: now + granted,
                        refresh_at: now + refresh,
                    });
                    refresh
                }
                RegisterResult::MinExpires(min) if min_expires_rounds < 2 => {
                    // RFC 3261 §10.2.8: retry at once with the registrar's minimum.
                    min_expires_rounds += 1;
                    tracing::info!(min_s = min.as_secs(), "423 Interval Too Brief, retrying");
                    self.expires = min;
                    continue;
                }
                RegisterResult::MinExpires(min) => self.fail(
                    &state,
                    &mut failures,
                    Some(423),
                    format!("Min-Expires {} s not accepted", min.as_secs()),
                    None,
                ),
                RegisterResult::Failed {
                    status,
                    reason,
                    retry_after,
                } => self.fail(&state, &mut failures, status, reason, retry_after),
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = &mut stop => break,
            }
        }

        if registered {
            let timeout = self.retry.request_timeout.min(Duration::from_secs(5));
            match tokio::time::timeout(timeout, self.register(Duration::ZERO)).await {
                Ok(RegisterResult::Registered(_)) => tracing::info!("unregistered"),
                Ok(RegisterResult::Failed { status, reason, .. }) => {
                    tracing::warn!(?status, %reason, "unregister failed");
                }
                Ok(RegisterResult::MinExpires(_)) | Err(_) => {
                    tracing::warn!("unregister not answered")
                }
            }
        }
        metrics::gauge!(SIP_REGISTRATION_STATE, "trunk" => self.trunk.clone()).set(0.0);
        state.send_replace(RegistrationState::Unregistered);
    }

    fn fail(
        &self,
        state: &watch::Sender<RegistrationState>,
        failures: &mut u32,
        status: Option<u16>,
        reason: String,
        retry_after: Option<Duration>,
    ) -> Duration {
        *failures += 1;
        let delay = self
            .retry
            .delay(*failures, retry_after, rand::rng().random::<f64>());
        let status_label = status.map_or_else(|| "timeout".to_owned(), |s| s.to_string());
        metrics::counter!(SIP_REGISTRATION_FAILURES_TOTAL, "trunk" => self.trunk.clone(), "status" => status_label)
            .increment(1);
        metrics::gauge!(SIP_REGISTRATION_STATE, "trunk" => self.trunk.clone()).set(0.0);
        tracing::warn!(?status, %reason, failures = *failures, retry_in_ms = delay.as_millis() as u64, "registration failed");
        state.send_replace(RegistrationState::Failing {
            status,
            reason,
            failures: *failures,
            next_attempt: SystemTime::now() + delay,
        });
        delay
    }

    fn build_request(&mut self, expires: Duration) -> Request {
        self.cseq += 1;
        let mut request = Request::new(Method::REGISTER, self.registrar_uri.clone());
        let headers = &mut request.headers;
        headers.insert_named(&MaxForwards(70));
        headers.insert_type(
            Name::FROM,
            &FromTo::new(self.aor.clone(), Some(self.from_tag.clone().into())),
        );
        headers.insert_type(Name::TO, &FromTo::new(self.aor.clone(), None));
        headers.insert_named(&CallID::new(self.call_id.clone()));
        headers.insert_named(&CSeq::new(self.cseq, Method::REGISTER));
        headers.insert_named(&self.contact);
        headers.insert_named(&Expires(
            u32::try_from(expires.as_secs()).unwrap_or(u32::MAX),
        ));
        request
    }

    /// One REGISTER, answering the challenges [`ChallengeResponder`] allows.
    async fn register(&mut self, expires: Duration) -> RegisterResult {
        let mut target = TargetTransportInfo {
            via_host_port: Some(self.via_host_port.clone()),
            transport: None,
        };
        match self.endpoint.select_transport(&self.registrar_uri).await {
            Ok(selected) => target.transport = Some(selected),
            Err(e) => {
                return RegisterResult::Failed {
                    status: None,
                    reason: format!("no route to registrar: {e}"),
                    retry_after: None,
                };
            }
        }
        self.challenges.restart();
        loop {
            let mut request = self.build_request(expires);
            self.challenges.authorize(&mut request.headers);
            let mut tsx = match self.endpoint.send_request(request, &mut target).await {
                Ok(tsx) => tsx,
                Err(e) => {
                    return RegisterResult::Failed {
                        status: None,
                        reason: format!("cannot send REGISTER: {e}"),
                        retry_after: None,
                    };
                }
            };
            let response =
                match tokio::time::timeout(self.retry.request_timeout, tsx.receive_final()).await {
                    Ok(Ok(response)) => response,
                    Ok(Err(e)) => {
                        return RegisterResult::Failed {
                            status: None,
                            reason: format!("REGISTER failed: {e}"),
                            retry_after: None,
                        };
                    }
                    Err(_) => {
                        return RegisterResult::Failed {
                            status: None,
                            reason: "registrar did not answer".to_owned(),
                            retry_after: None,
                        };
                    }
                };
            let code = response.line.code;
            let reason = response
                .line
                .reason
                .as_ref()
                .map_or_else(String::new, |r| r.to_string());
            match code.kind() {
                CodeKind::Success => {
                    return RegisterResult::Registered(granted_expiry(
                        &response.headers,
                        &self.contact,
                        expires,
                    ));
                }
                _ if code == StatusCode::UNAUTHORIZED
                    || code == StatusCode::PROXY_AUTHENTICATION_REQUIRED =>
                {
                    if let Challenge::GiveUp(e) =
                        self.challenges.learn(&tsx.request().msg, &response)
                    {
                        return RegisterResult::Failed {
                            status: Some(code.into_u16()),
                            reason: format!("{reason}: {e}"),
                            retry_after: None,
                        };
                    }
                }
                _ if code.into_u16() == 423 => {
                    return match response.headers.get_named::<MinExpires>() {
                        Ok(min) => {
                            RegisterResult::MinExpires(Duration::from_secs(u64::from(min.0)))
                        }
                        Err(_) => RegisterResult::Failed {
                            status: Some(423),
                            reason: "423 without Min-Expires".to_owned(),
                            retry_after: None,
                        },
                    };
                }
                _ => {
                    let retry_after = response
                        .headers
                        .get_named::<RetryAfter>()
                        .ok()
                        .map(|r| Duration::from_secs(u64::from(r.value)));
                    return RegisterResult::Failed {
                        status: Some(code.into_u16()),
                        reason,
                        retry_after,
                    };
                }
            }
        }
    }
}

/// RFC 3261 §10.2.4: the expiry the registrar granted is the `expires`
/// parameter of our Contact in the 200, else its Expires header, else what
/// we asked for.
fn granted_expiry(
    headers: &ezk_sip_types::Headers,
    ours: &Contact,
    requested: Duration,
) -> Duration {
    let contacts: Vec<Contact> = headers.get_named().unwrap_or_default();
    let from_contact = contacts
        .iter()
        .find(|c| c.uri.uri.compare(&ours.uri.uri))
        .or_else(|| contacts.first())
        .and_then(|c| c.params.get_val("expires"))
        .and_then(|v| v.parse::<u64>().ok());
    let secs = from_contact.or_else(|| headers.get_named::<Expires>().ok().map(|e| u64::from(e.0)));
    secs.map_or(requested, Duration::from_secs)
}
