//! agentline: a daemon that puts voice agents on the phone network.
//!
//! The module map follows `DESIGN.md`; `main.rs` only hands over to [`cli`].
//!
//! - [`cli`] parses the command line; [`app`] builds the services in order
//!   and owns drain versus stop.
//! - [`config`]: the daemon config and the SIP profiles, validated once.
//! - [`sip`]: signalling only; [`media`]: RTP, codecs, jitter buffer, DTMF,
//!   SDP. Neither imports `store` or `api`.
//! - [`call`]: decisions about calls and the one task per call
//!   (inbound routing, outbound dialing, `EndReason`, the event bus, trunk
//!   registrations); [`agent`]: what runs on a call (settings for now).
//! - [`model`]: the public representation of a call, a campaign and a
//!   trunk (what the API answers and the webhooks carry) and the typed
//!   statuses and event types every layer shares; below the store.
//! - [`store`]: every SQL statement, for SQLite and PostgreSQL.
//! - [`api`]: the admin HTTP API, its auth, rate limits and OpenAPI document.
//! - [`webhook`]: the outbox and signed delivery of events.
//! - [`campaign`]: outbound campaigns: calling windows, retry policy, pacing,
//!   CSV import and the dialer that claims contacts with row leases.
//! - Small shared pieces: [`trunk`] (live trunk state), [`e164`] (number
//!   normalization), [`ids`] (prefixed ids), [`secrets`] (API keys and
//!   webhook secrets), [`signing`] (Standard Webhooks signatures, for
//!   webhooks and agent tools), [`metrics`] (every metric name), [`memory`] (hands
//!   freed heap back to the system).

pub mod agent;
pub mod api;
pub mod app;
pub mod call;
pub mod campaign;
pub mod cli;
pub mod config;
pub mod e164;
#[doc(hidden)]
pub mod fuzz;
pub mod ids;
pub mod media;
pub mod memory;
pub mod metrics;
pub mod model;
pub mod secrets;
pub mod signing;
pub mod sip;
pub mod store;
pub mod trunk;
pub mod webhook;
