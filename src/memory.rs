//! Hands freed heap back to the system.
//!
//! Under call load the SIP transaction layer (ezk-sip-core) holds about
//! 20 KB per call for the 32 s that RFC 3261 Timer J and RFC 6026 Timer L
//! keep finished transactions around (one unbounded channel per server
//! transaction). heaptrack shows the heap falling back to its idle size
//! once those timers fire, but glibc's malloc keeps the freed pages
//! resident: RSS stayed at the peak and crept up run after run, which
//! looked like a leak. `malloc_trim` returns them (measured: 124 MB back
//! to 56 MB after a 2,000-call burst; see `BENCHMARKS.md`). mimalloc was
//! tried instead and kept more resident than glibc, so the allocator stays.
//!
//! Must not: run often; a trim walks every arena under its lock.

use std::time::Duration;

/// How often freed memory is handed back.
const TRIM_EVERY: Duration = Duration::from_secs(30);

/// Starts the trimming task (glibc only; elsewhere nothing to do).
pub fn start_trimming() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    tokio::spawn(async {
        let mut every = tokio::time::interval(TRIM_EVERY);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        every.tick().await;
        loop {
            every.tick().await;
            let started = std::time::Instant::now();
            #[allow(unsafe_code)] // FFI: glibc's malloc_trim has no safe wrapper
            // SAFETY: malloc_trim has no preconditions; it only releases
            // free memory at the top of and inside glibc's arenas.
            let released = unsafe { libc::malloc_trim(0) };
            tracing::debug!(
                released = released != 0,
                took_us = started.elapsed().as_micros() as u64,
                "heap trimmed"
            );
        }
    });
}
