//! Per-call traces kept for troubleshooting: today the SIP messages of
//! each call ([`sip`]), rendered as text or as a pcap file ([`pcap`]).
//!
//! Owns: the bounded in-memory trace store and its renderers.
//! Must not: touch a call, the media path or the store; a trace is a copy
//! taken on the side, and losing one never affects a call.

pub mod pcap;
pub mod sip;
