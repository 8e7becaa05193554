//! PostgreSQL LISTEN/NOTIFY for the outbox: a transaction that writes
//! events also sends a NOTIFY, and one listener connection per daemon hears
//! the other daemons' and wakes the webhook worker and the event streams at
//! once, instead of their polling the tables.
//!
//! The NOTIFY is sent inside the transaction that writes the events, so it
//! is delivered when (and only if) they commit (PostgreSQL, NOTIFY: "if a
//! NOTIFY is executed inside a transaction, the notify events are not
//! delivered until and unless the transaction is committed"), and identical
//! notices of one transaction are folded into one. Its payload says whether
//! deliveries were written (`d`) or events only (`e`), and which process
//! sent it: a daemon already wakes its own worker in-process, so it skips
//! its own notices.
//!
//! Notices are not durable: a listener whose connection drops misses those
//! sent meanwhile. So the listener reconnects with a backoff and, each time,
//! wakes everyone once (there may be something it missed), and the woken
//! parts keep a slow poll as a safety net.
//!
//! Must not: carry data (the woken parts read the tables), or be relied on
//! for delivery: it only shortens waits.

use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgListener, PgPoolOptions};
use tokio::sync::watch;

use super::Result;

/// The channel every daemon of one database uses.
pub(crate) const CHANNEL: &str = "agentline_outbox";

/// Sends a notice: `$1` the channel, `$2` the payload.
pub(crate) const NOTIFY: &str = "SELECT pg_notify($1, $2)";

/// What a notice from another daemon says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Notice {
    /// Deliveries were written (or may have been: after a reconnect), so
    /// the webhook worker should look now; events were written in any case.
    pub deliveries: bool,
}

/// The NOTIFYs this process sends; cheap to clone.
#[derive(Clone, Debug)]
pub(crate) struct Notices {
    /// This process among the daemons (not the node name, which two test
    /// daemons on one host may share).
    instance: Arc<str>,
}

impl Notices {
    pub(crate) fn new() -> Self {
        Self {
            instance: ulid::Ulid::new().to_string().into(),
        }
    }

    /// The payload of this process's notice.
    pub(crate) fn payload(&self, deliveries: bool) -> String {
        let kind = if deliveries { 'd' } else { 'e' };
        format!("{kind}{}", self.instance)
    }

    /// What a payload says, `None` for this process's own notices or a
    /// payload of no known form.
    fn parse(&self, payload: &str) -> Option<Notice> {
        let mut chars = payload.chars();
        let deliveries = match chars.next()? {
            'd' => true,
            'e' => false,
            _ => return None,
        };
        (chars.as_str() != &*self.instance).then_some(Notice { deliveries })
    }
}

/// The longest wait between two attempts to connect the listener.
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// Starts the listener of this process: one connection of its own (not the
/// pool's), reconnecting with a backoff, calling `on_notice` for each notice
/// of another daemon, and once with `deliveries: true` after each
/// (re)connection. Stops when `closing` turns true.
pub(crate) fn listen(
    options: PgConnectOptions,
    notices: Notices,
    on_notice: Arc<dyn Fn(Notice) + Send + Sync>,
    mut closing: watch::Receiver<bool>,
) {
    tokio::spawn(async move {
        let mut backoff = Duration::from_millis(100);
        while !*closing.borrow() {
            let started = std::time::Instant::now();
            let outcome = tokio::select! {
                r = serve(&options, &notices, &*on_notice) => r,
                _ = closing.changed() => return,
            };
            if let Err(e) = outcome {
                tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64,
                    "outbox listener lost its connection");
            }
            // A connection that held a while starts the backoff over.
            if started.elapsed() > MAX_BACKOFF * 3 {
                backoff = Duration::from_millis(100);
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = closing.changed() => return,
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    });
}

/// One connection's life: LISTEN, then notices until it fails. sqlx's
/// listener reconnects by itself on some errors (`Ok(None)`): that is a
/// reconnection too, so everyone is woken.
async fn serve(
    options: &PgConnectOptions,
    notices: &Notices,
    on_notice: &(dyn Fn(Notice) + Send + Sync),
) -> Result<()> {
    // A pool of one, which the listener uses only to reconnect.
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .max_lifetime(None)
        .idle_timeout(None)
        .connect_with(options.clone())
        .await?;
    let mut listener = PgListener::connect_with(&pool).await?;
    listener.ignore_pool_close_event(true);
    listener.listen(CHANNEL).await?;
    tracing::debug!("outbox listener connected");
    // Anything sent while no one listened.
    on_notice(Notice { deliveries: true });
    loop {
        match listener.try_recv().await? {
            Some(n) => {
                if let Some(notice) = notices.parse(n.payload()) {
                    on_notice(notice);
                }
            }
            None => {
                tracing::info!("outbox listener reconnected");
                on_notice(Notice { deliveries: true });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_notices_are_skipped_and_others_read() {
        let mine = Notices::new();
        let other = Notices::new();
        assert_eq!(mine.parse(&mine.payload(true)), None);
        assert_eq!(
            mine.parse(&other.payload(true)),
            Some(Notice { deliveries: true })
        );
        assert_eq!(
            mine.parse(&other.payload(false)),
            Some(Notice { deliveries: false })
        );
        assert_eq!(mine.parse(""), None);
        assert_eq!(mine.parse("x123"), None);
    }
}
