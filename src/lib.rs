//! agentline: a daemon that puts voice agents on the phone network.
//!
//! The module map follows `DESIGN.md`; `main.rs` only hands over to [`cli`].

pub mod api;
pub mod app;
pub mod cli;
pub mod config;
pub mod e164;
pub mod ids;
pub mod metrics;
pub mod secrets;
pub mod store;
pub mod trunk;
pub mod webhook;
