//! agentline: a daemon that puts voice agents on the phone network.
//!
//! `main.rs` only hands over to [`cli`]. How the modules fit together, what
//! each may import, which task owns what and the life of a call are in
//! `docs/ARCHITECTURE.md`; the design and its reasons in `docs/DESIGN.md`.
//! One line per module, entry points first, leaves last:
//!
//! - [`cli`]: the command line (`run`, `check-config`, `migrate`, `keys`,
//!   `campaign watch`); the config is validated before anything opens.
//! - [`app`]: builds the services in order and owns drain versus stop.
//! - [`api`]: the admin HTTP API, its auth, rate limits, SSE stream and
//!   OpenAPI document; only `app`, `cli` and `api` import it.
//! - [`call`]: the decisions about calls and the one task per call: inbound
//!   routing, outbound placing, the phases as types, `EndReason`, every
//!   state transition, trunk registrations and probes.
//! - [`campaign`]: outbound campaigns: calling windows, retry policy,
//!   pacing, CSV import and the runner that claims contacts with leases.
//! - [`cluster`]: several nodes on one PostgreSQL: node id, heartbeat,
//!   the calls of dead nodes, trunk ownership by lease.
//! - [`webhook`]: the outbox (events written with the change that caused
//!   them) and the worker that signs, delivers and retries them.
//! - [`store`]: every SQL statement, for SQLite and PostgreSQL.
//! - [`model`]: the public shape of a call, a campaign and a trunk (what
//!   the API answers and the webhooks carry), and the typed statuses,
//!   directions and event types every layer uses; below the store.
//! - [`sip`]: signalling only, from the edge before the parser to dialogs
//!   and registrations; imports neither `call` nor `store`.
//! - [`media`]: RTP, codecs, jitter buffer, DTMF, pacing, SDP; decides
//!   nothing about a call.
//! - [`agent`]: what runs on a call: turn-taking, the session, the brain,
//!   the speech engines and vendors.
//! - [`signing`]: Standard Webhooks signatures, for deliveries and agent
//!   tools.
//! - [`trunk`]: the live state of each trunk (registration, health, calls).
//! - [`config`]: the daemon config and the SIP profiles, validated once.
//! - [`metrics`]: every metric name in one place.
//! - [`e164`]: phone number normalization.
//! - [`ids`]: prefixed opaque ids.
//! - [`secrets`]: API keys, webhook secrets, the `Secret` newtype and
//!   encryption at rest.
//! - [`net`]: the outbound policy: address guard, secret bindings, body caps.
//! - [`memory`]: hands freed heap back to the system.
//! - `fuzz` (hidden from the docs): one entry per parser that takes
//!   outside bytes, for `fuzz/` and `tests/fuzz.rs`.

pub mod agent;
pub mod api;
pub mod app;
pub mod call;
pub mod campaign;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod e164;
#[doc(hidden)]
pub mod fuzz;
pub mod ids;
pub mod media;
pub mod memory;
pub mod metrics;
pub mod model;
pub mod net;
pub mod secrets;
pub mod signing;
pub mod sip;
pub mod store;
pub mod trace;
pub mod trunk;
pub mod webhook;
pub mod webrtc;
