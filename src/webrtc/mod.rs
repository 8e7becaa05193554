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
pub mod trickle;

use std::net::IpAddr;

use crate::config::PortRange;

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
    /// The UDP ports a web call's socket binds (`"LOW-HIGH"`, one port
    /// per call, for a firewall to open); `None`: any free port.
    pub ports: Option<PortRange>,
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
            ports: None,
            token_ttl_seconds: 60,
            max_calls: 100,
            max_calls_per_key: 10,
            requests_per_address_per_minute: 20,
            max_duration_seconds: 900,
        }
    }
}

/// The longest an ICE server URL may be, and the most URLs and servers
/// handed to a browser (each is tried by every web call).
const MAX_ICE_URL: usize = 512;
const MAX_ICE_URLS: usize = 8;
const MAX_ICE_SERVERS: usize = 8;

impl WebrtcConfig {
    /// The first bad value as (`key` under `webrtc.`, what is wrong), so
    /// the daemon refuses to start instead of handing browsers an ICE
    /// server they reject or announcing an address no one can reach.
    pub fn problem(&self) -> Option<(String, String)> {
        let bad = |key: &str, message: String| Some((key.to_owned(), message));
        if let Some(ip) = self.public_ip
            && (ip.is_unspecified()
                || ip.is_multicast()
                || ip == IpAddr::from([255, 255, 255, 255]))
        {
            return bad(
                "public_ip",
                format!(
                    "{ip} cannot be an ICE host candidate (unspecified, multicast or broadcast)"
                ),
            );
        }
        for (key, value, max) in [
            ("token_ttl_seconds", self.token_ttl_seconds, 3600),
            ("max_calls", self.max_calls, 100_000),
            ("max_calls_per_key", self.max_calls_per_key, 100_000),
            (
                "requests_per_address_per_minute",
                self.requests_per_address_per_minute,
                1_000_000,
            ),
            ("max_duration_seconds", self.max_duration_seconds, 86_400),
        ] {
            if !(1..=max).contains(&value) {
                return bad(key, format!("must be between 1 and {max}, found {value}"));
            }
        }
        if self.max_calls_per_key > self.max_calls {
            return bad(
                "max_calls_per_key",
                format!("must be at most max_calls ({})", self.max_calls),
            );
        }
        if self.ice_servers.len() > MAX_ICE_SERVERS {
            return bad("ice_servers", format!("at most {MAX_ICE_SERVERS} servers"));
        }
        for (i, server) in self.ice_servers.iter().enumerate() {
            if let Err(message) = server.check() {
                return bad(&format!("ice_servers[{i}]"), message);
            }
        }
        None
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

impl IceServer {
    /// What a browser would refuse in this server (W3C WebRTC §4.2.1:
    /// `RTCPeerConnection` throws on a bad URL, and on a TURN server
    /// without `username` and `credential`), or a URL that is not one.
    fn check(&self) -> Result<(), String> {
        if self.urls.is_empty() || self.urls.len() > MAX_ICE_URLS {
            return Err(format!("urls: 1 to {MAX_ICE_URLS} URLs"));
        }
        for url in &self.urls {
            let turn = check_ice_url(url).map_err(|e| format!("urls: {url:?}: {e}"))?;
            if turn && (self.username.is_none() || self.credential.is_none()) {
                return Err(format!(
                    "urls: {url:?}: a TURN server needs username and credential"
                ));
            }
        }
        for (key, value) in [
            ("username", &self.username),
            ("credential", &self.credential),
        ] {
            if let Some(v) = value
                && (v.is_empty() || v.len() > MAX_ICE_URL || v.chars().any(char::is_control))
            {
                return Err(format!(
                    "{key}: 1 to {MAX_ICE_URL} characters, no control characters"
                ));
            }
        }
        Ok(())
    }
}

/// Checks one `stun:`/`stuns:` (RFC 7064 §3.1) or `turn:`/`turns:` (RFC
/// 7065 §3.1) URL; `Ok(true)` for TURN.
fn check_ice_url(url: &str) -> Result<bool, String> {
    if url.len() > MAX_ICE_URL || url.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(format!("at most {MAX_ICE_URL} characters, no spaces"));
    }
    let (scheme, rest) = url
        .split_once(':')
        .ok_or("must start with stun:, stuns:, turn: or turns:")?;
    let turn = match scheme {
        "stun" | "stuns" => false,
        "turn" | "turns" => true,
        _ => return Err("must start with stun:, stuns:, turn: or turns:".into()),
    };
    // `?transport=udp|tcp` is TURN's only query (RFC 7065 §3.1).
    let (hostport, query) = match rest.split_once('?') {
        Some((h, q)) => (h, Some(q)),
        None => (rest, None),
    };
    match query {
        None => {}
        Some("transport=udp" | "transport=tcp") if turn => {}
        Some(_) => return Err("the only query is ?transport=udp|tcp, on TURN".into()),
    }
    if hostport.starts_with("//") || hostport.contains('/') || hostport.contains('@') {
        return Err("is host[:port], without // or a path".into());
    }
    let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
        let (ip, after) = v6.split_once(']').ok_or("an unclosed [IPv6 address]")?;
        ip.parse::<std::net::Ipv6Addr>()
            .map_err(|_| "a bad IPv6 address")?;
        (ip, after.strip_prefix(':'))
    } else {
        match hostport.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (hostport, None),
        }
    };
    if let Some(p) = port
        && !p.parse::<u16>().is_ok_and(|p| p > 0)
    {
        return Err(format!("bad port {p:?}"));
    }
    if !hostport.starts_with('[')
        && host.parse::<IpAddr>().is_err()
        && !crate::config::is_hostname(host)
    {
        return Err(format!("{host:?} is not a host name or address"));
    }
    Ok(turn)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(urls: &[&str], user: Option<&str>) -> IceServer {
        IceServer {
            urls: urls.iter().map(|u| (*u).to_owned()).collect(),
            username: user.map(str::to_owned),
            credential: user.map(|_| "secret".to_owned()),
        }
    }

    #[test]
    fn the_defaults_are_valid() {
        assert_eq!(WebrtcConfig::default().problem(), None);
    }

    #[test]
    fn good_ice_servers_pass() {
        let c = WebrtcConfig {
            ice_servers: vec![
                server(&["stun:stun.example.net:3478", "stun:192.0.2.1"], None),
                server(&["stuns:[2001:db8::1]:5349"], None),
                server(
                    &[
                        "turn:turn.example.net:3478?transport=udp",
                        "turns:turn.example.net",
                    ],
                    Some("user"),
                ),
            ],
            ..WebrtcConfig::default()
        };
        assert_eq!(c.problem(), None);
    }

    #[test]
    fn bad_values_name_their_key() {
        let cases: Vec<(WebrtcConfig, &str)> = vec![
            (
                WebrtcConfig {
                    public_ip: Some("0.0.0.0".parse().unwrap()),
                    ..Default::default()
                },
                "public_ip",
            ),
            (
                WebrtcConfig {
                    public_ip: Some("224.0.0.1".parse().unwrap()),
                    ..Default::default()
                },
                "public_ip",
            ),
            (
                WebrtcConfig {
                    public_ip: Some("::".parse().unwrap()),
                    ..Default::default()
                },
                "public_ip",
            ),
            (
                WebrtcConfig {
                    token_ttl_seconds: 0,
                    ..Default::default()
                },
                "token_ttl_seconds",
            ),
            (
                WebrtcConfig {
                    token_ttl_seconds: 7200,
                    ..Default::default()
                },
                "token_ttl_seconds",
            ),
            (
                WebrtcConfig {
                    max_calls: 0,
                    ..Default::default()
                },
                "max_calls",
            ),
            (
                WebrtcConfig {
                    max_calls: 5,
                    max_calls_per_key: 6,
                    ..Default::default()
                },
                "max_calls_per_key",
            ),
            (
                WebrtcConfig {
                    requests_per_address_per_minute: 0,
                    ..Default::default()
                },
                "requests_per_address_per_minute",
            ),
            (
                WebrtcConfig {
                    max_duration_seconds: 0,
                    ..Default::default()
                },
                "max_duration_seconds",
            ),
        ];
        for (c, key) in cases {
            assert_eq!(c.problem().map(|p| p.0).as_deref(), Some(key), "{c:?}");
        }
        for (urls, user) in [
            (&["http://stun.example.net"][..], None),
            (&["stun:"][..], None),
            (&["stun://stun.example.net"][..], None),
            (&["stun:stun.example.net:0"][..], None),
            (&["stun:stun.example.net:99999"][..], None),
            (&["stun:bad host"][..], None),
            (&["stun:stun.example.net?transport=udp"][..], None),
            (&["turn:turn.example.net"][..], None),
            (&["turn:user@turn.example.net"][..], Some("u")),
            (&["turn:turn.example.net?transport=sctp"][..], Some("u")),
            (&["stun:[2001:db8::1"][..], None),
            (&[][..], None),
        ] {
            let c = WebrtcConfig {
                ice_servers: vec![server(urls, user)],
                ..Default::default()
            };
            let problem = c.problem();
            assert_eq!(
                problem.as_ref().map(|p| p.0.as_str()),
                Some("ice_servers[0]"),
                "{urls:?}: {problem:?}"
            );
        }
    }
}
