//! agentline: a daemon that puts voice agents on the phone network.
//!
//! The module map follows `DESIGN.md`; `main.rs` only parses the command line
//! and hands over to `app`.

pub mod sip;
