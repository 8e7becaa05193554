//! Browser web calls: the `[webrtc]` settings and the WebRTC media of a
//! web call ([`peer`]); the embeddable widget (`widget.js`) and the demo
//! page (`web-call.html`) the API serves.
//!
//! A web call is started by `POST /v1/web-calls` with a publishable key
//! (`crate::api`), recorded by the call layer (`crate::call::web`), and
//! answers a short-lived single-use token the browser presents with its
//! SDP offer (WHIP, RFC 9725). The call layer then starts a [`peer`] and
//! the same media session and agent a phone call runs.
//!
//! Why these crates:
//! - `str0m` for ICE, DTLS-SRTP, RTP and SCTP data channels: it is
//!   sans-IO (no runtime or threads of its own; we feed it datagrams and
//!   timeouts and send what it returns), which fits the media design here
//!   (one tokio task per call owns its socket, as `media::session` does),
//!   it is maintained and widely used, and its `rust-crypto` backend
//!   (pure Rust DTLS) needs no C toolchain beyond what we have. `webrtc-rs`
//!   brings its own async runtime model and many tasks per connection.
//! - `opus` (libopus through `audiopus_sys`, Debian's `libopus-dev`
//!   found by pkg-config): the reference codec, maintained by Xiph and
//!   Debian; a pure-Rust Opus encoder of that quality does not exist.
//!
//! Must not: authenticate (the API does) or write call rows (the call
//! layer does).

pub mod peer;

use std::net::IpAddr;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// `[webrtc]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebrtcConfig {
    /// STUN/TURN servers handed to the browser with each web call (the
    /// daemon itself offers host candidates only).
    pub ice_servers: Vec<IceServer>,
    /// The address the daemon's ICE host candidate announces; `None`: the
    /// SIP public address, else the bind address.
    pub public_ip: Option<IpAddr>,
    /// How long a web call's media token is valid, in seconds (it works
    /// once).
    pub token_ttl_seconds: u32,
    /// Web calls at once on this store, over every key.
    pub max_calls: u32,
    /// Web calls at once per publishable key, unless the key sets its own.
    pub max_calls_per_key: u32,
    /// `POST /v1/web-calls` per minute from one client address (an IPv6
    /// client by its /64), over every key.
    pub requests_per_address_per_minute: u32,
    /// The longest a web call may last, in seconds (the agent's own
    /// `max_duration_seconds` applies when shorter).
    pub max_duration_seconds: u32,
}

impl Default for WebrtcConfig {
    fn default() -> Self {
        Self {
            ice_servers: Vec::new(),
            public_ip: None,
            token_ttl_seconds: 60,
            max_calls: 100,
            max_calls_per_key: 10,
            requests_per_address_per_minute: 20,
            max_duration_seconds: 900,
        }
    }
}

/// One ICE server as `RTCPeerConnection` takes it (W3C WebRTC §4.2.1,
/// `RTCIceServer`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct IceServer {
    /// `stun:` or `turn:` URLs.
    pub urls: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
}
