//! Runs each ended call's analysis (`agent::analysis`) off the call's
//! path and stores its result with `call.analyzed`.
//!
//! The call task hands its job over when the call ends ([`Analyzer::hold`]);
//! it starts once the end is recorded ([`Analyzer::release`], from
//! `Finished::record`), so `call.ended` is never delayed by it and
//! `call.analyzed` always follows `call.ended` in the call's event
//! sequence. Submitting
//! never waits: each job is a task of its own that waits for one of
//! [`CONCURRENCY`] slots (an LLM answer can take seconds; the slots bound
//! how many are asked at once). Past [`MAX_WAITING`] jobs waiting, a new
//! one is recorded at once as failed ("busy") rather than queued without
//! bound. Whatever happens to the model, a result is stored: a failed one
//! carries the error, so the event is never lost. The drain waits for the
//! jobs in flight ([`Analyzer::idle`]), bounded.
//!
//! Must not: hold up a call task, or write anything but the result.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, Semaphore};
use tracing::Instrument;

use super::events::Transitions;
use crate::agent::analysis::{self, Job};

/// Analyses that run at once.
pub const CONCURRENCY: usize = 4;
/// Jobs that may wait for a slot; more are recorded as failed at once.
pub const MAX_WAITING: usize = 1000;

/// The analyses in flight. Cheap to clone.
#[derive(Clone)]
pub(crate) struct Analyzer {
    inner: Arc<Inner>,
}

struct Inner {
    transitions: Transitions,
    slots: Semaphore,
    /// Jobs submitted and not yet stored.
    in_flight: AtomicUsize,
    /// Woken each time a job is stored.
    stored: Notify,
    /// Jobs of calls whose end is not recorded yet, by call id (a short
    /// lock, never held across an await).
    held: Mutex<HashMap<String, Job>>,
}

impl Analyzer {
    pub fn new(transitions: Transitions) -> Self {
        Analyzer {
            inner: Arc::new(Inner {
                transitions,
                slots: Semaphore::new(CONCURRENCY),
                in_flight: AtomicUsize::new(0),
                stored: Notify::new(),
                held: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// Keeps call `id`'s job until [`Analyzer::release`].
    pub fn hold(&self, id: &str, job: Job) {
        if let Ok(mut held) = self.inner.held.lock() {
            held.insert(id.to_string(), job);
        }
    }

    /// Call `id`'s end is recorded: its held job, if any, starts.
    pub fn release(&self, id: &str) {
        let job = self
            .inner
            .held
            .lock()
            .ok()
            .and_then(|mut held| held.remove(id));
        if let Some(job) = job {
            self.submit(id, job);
        }
    }

    /// Analyzes call `id` in the background; returns at once.
    fn submit(&self, id: &str, job: Job) {
        let inner = Arc::clone(&self.inner);
        let waiting = inner.in_flight.fetch_add(1, Ordering::SeqCst);
        let id = id.to_string();
        let span = tracing::info_span!("analysis", call_id = %id);
        tokio::spawn(
            async move {
                let result = if waiting >= MAX_WAITING + CONCURRENCY {
                    tracing::warn!("too many analyses waiting; recorded as failed");
                    analysis::failed("llm", "busy: too many analyses waiting")
                } else {
                    match inner.slots.acquire().await {
                        Ok(_permit) => analysis::analyze(&job).await,
                        Err(_) => analysis::failed("llm", "the analyzer is closed"),
                    }
                };
                if result["status"] == "failed" {
                    tracing::info!(error = %result["error"], "analysis failed");
                }
                inner.transitions.analyzed(&id, &result).await;
                inner.in_flight.fetch_sub(1, Ordering::SeqCst);
                inner.stored.notify_waiters();
            }
            .instrument(span),
        );
    }

    /// Waits until no analysis is in flight, at most `limit`; says whether
    /// they all were stored.
    pub async fn idle(&self, limit: Duration) -> bool {
        tokio::time::timeout(limit, async {
            loop {
                let stored = self.inner.stored.notified();
                if self.inner.in_flight.load(Ordering::SeqCst) == 0 {
                    return;
                }
                stored.await;
            }
        })
        .await
        .is_ok()
    }
}
