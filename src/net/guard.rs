//! The address guard: every outbound request the API can point somewhere
//! (webhook endpoints, agent tools, LLM/STT/TTS `base_url`s and the
//! vendors' WebSockets) may reach only public addresses, unless the
//! operator allows a network (`[net] allowed_networks`).
//!
//! It runs twice: when a URL is saved ([`Guard::check_url`], resolving the
//! host once, so the API can refuse it with a 422), and on every connection,
//! where names resolve only through [`Guard`] (as reqwest's resolver, or
//! [`Guard::resolve`] before a WebSocket's TCP connect), so a client connects
//! only to the addresses that passed: a name that changes to a private
//! address after it was saved (DNS rebinding) is refused. IP literals skip a
//! resolver and are checked by [`Guard::check_literal`] before sending.
//!
//! Errors are generic: they name the host the caller gave, never the address
//! it resolved to, so the guard cannot be used to map the inside.
//!
//! Must not: make any request or know who asked; it answers yes or no
//! about addresses.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use ipnet::IpNet;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};

/// How long one name lookup may take.
const RESOLVE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Why a URL was refused. The messages never carry a resolved address.
#[derive(Debug, Clone, thiserror::Error)]
pub enum GuardError {
    #[error("not an http(s) or ws(s) URL")]
    BadUrl,
    #[error("the destination is not allowed (not a public address)")]
    Private,
    #[error("{host} does not resolve")]
    Unresolvable { host: String },
}

/// Which addresses outbound requests may reach.
#[derive(Debug, Clone, Default)]
pub struct Guard {
    allow_private: bool,
    allowed: Arc<[IpNet]>,
}

impl Guard {
    /// `allow_private` opens every non-public address (tests, closed
    /// networks); `allowed` opens the listed networks only.
    pub fn new(allow_private: bool, allowed: &[IpNet]) -> Self {
        Self {
            allow_private,
            allowed: allowed.to_vec().into(),
        }
    }

    /// Whether a request may connect to `ip`.
    pub fn allows(&self, ip: IpAddr) -> bool {
        self.allow_private || is_public(ip) || self.allowed.iter().any(|n| n.contains(&ip))
    }

    /// Checks a URL when it is saved: an IP literal directly, a name by
    /// resolving it (every address must be allowed; a name that does not
    /// resolve passes, and is checked again at connect time).
    pub async fn check_url(&self, url: &str) -> Result<(), GuardError> {
        let parsed = reqwest::Url::parse(url).map_err(|_| GuardError::BadUrl)?;
        if !matches!(parsed.scheme(), "http" | "https" | "ws" | "wss") {
            return Err(GuardError::BadUrl);
        }
        let port = parsed.port_or_known_default().unwrap_or(443);
        match parsed.host() {
            Some(url::Host::Ipv4(ip)) => self.check_ip(IpAddr::V4(ip)),
            Some(url::Host::Ipv6(ip)) => self.check_ip(IpAddr::V6(ip)),
            Some(url::Host::Domain(host)) => {
                // A name that does not resolve (yet) is accepted: the
                // connect-time check refuses it if it ever points inside.
                match self.resolve(host, port).await {
                    Err(GuardError::Unresolvable { .. }) => Ok(()),
                    other => other.map(|_| ()),
                }
            }
            None => Err(GuardError::BadUrl),
        }
    }

    /// Checks the host of a URL about to be requested when it is an IP
    /// literal (names are checked by the resolver).
    pub fn check_literal(&self, url: &url::Url) -> Result<(), GuardError> {
        match url.host() {
            Some(url::Host::Ipv4(ip)) => self.check_ip(IpAddr::V4(ip)),
            Some(url::Host::Ipv6(ip)) => self.check_ip(IpAddr::V6(ip)),
            Some(url::Host::Domain(_)) => Ok(()),
            None => Err(GuardError::BadUrl),
        }
    }

    fn check_ip(&self, ip: IpAddr) -> Result<(), GuardError> {
        if self.allows(ip) {
            Ok(())
        } else {
            Err(GuardError::Private)
        }
    }

    /// Resolves `host` (a name or a literal) and refuses it if any address
    /// is not allowed: a name with one public and one private address could
    /// otherwise be steered to the private one.
    pub async fn resolve(&self, host: &str, port: u16) -> Result<Vec<SocketAddr>, GuardError> {
        let unresolvable = || GuardError::Unresolvable {
            host: host.to_string(),
        };
        let literal = host.trim_start_matches('[').trim_end_matches(']');
        if let Ok(ip) = literal.parse::<IpAddr>() {
            self.check_ip(ip)?;
            return Ok(vec![SocketAddr::new(ip, port)]);
        }
        let addrs: Vec<SocketAddr> =
            tokio::time::timeout(RESOLVE_TIMEOUT, tokio::net::lookup_host((host, port)))
                .await
                .map_err(|_| unresolvable())?
                .map_err(|_| unresolvable())?
                .collect();
        if addrs.is_empty() {
            return Err(unresolvable());
        }
        if addrs.iter().any(|a| !self.allows(a.ip())) {
            return Err(GuardError::Private);
        }
        Ok(addrs)
    }
}

impl Resolve for Guard {
    fn resolve(&self, name: Name) -> Resolving {
        let guard = self.clone();
        Box::pin(async move {
            // The client sets the real port afterwards.
            let addrs = Guard::resolve(&guard, name.as_str(), 0).await?;
            let addrs: Addrs = Box::new(addrs.into_iter());
            Ok(addrs)
        })
    }
}

/// True for addresses on the public internet.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => is_public_v4(v4),
            None => is_public_v6(v6),
        },
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, ..] = ip.octets();
    !(ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_unspecified()
        || ip.is_broadcast()
        || ip.is_multicast()
        || ip.is_documentation()
        || a == 0
        // 100.64.0.0/10 carrier-grade NAT, 198.18.0.0/15 benchmarking,
        // 240.0.0.0/4 reserved.
        || (a == 100 && (64..128).contains(&b))
        || (a == 198 && (b == 18 || b == 19))
        // 192.0.0.0/24 IETF protocol assignments (RFC 6890).
        || (a == 192 && b == 0 && ip.octets()[2] == 0)
        || a >= 240)
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    let seg = ip.segments();
    let first = seg[0];
    // ::/96, the deprecated IPv4-compatible form (::127.0.0.1): some stacks
    // still route it to the IPv4 address.
    let v4_compatible = seg[..6].iter().all(|s| *s == 0);
    !(ip.is_loopback()
        || v4_compatible
        || ip.is_unspecified()
        || ip.is_multicast()
        // fc00::/7 unique local, fe80::/10 link-local, 2001:db8::/32
        // documentation, 64:ff9b::/96 NAT64 (may reach private IPv4).
        || (first & 0xfe00) == 0xfc00
        || (first & 0xffc0) == 0xfe80
        // fec0::/10 site-local (deprecated, still routed inside some
        // networks), 2002::/16 6to4 (embeds any IPv4 address).
        || (first & 0xffc0) == 0xfec0
        || first == 0x2002
        || (first == 0x2001 && ip.segments()[1] == 0x0db8)
        || (first == 0x0064 && ip.segments()[1] == 0xff9b))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guard(allow_private: bool, allowed: &[&str]) -> Guard {
        let nets: Vec<IpNet> = allowed.iter().map(|n| n.parse().unwrap()).collect();
        Guard::new(allow_private, &nets)
    }

    #[test]
    fn private_addresses_are_not_public() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "100.64.0.1",
            "::1",
            "fe80::1",
            "fd00::1",
            "::ffff:127.0.0.1",
            "::",
            "::127.0.0.1",
            "::a9fe:a9fe",
            "2002:7f00:1::1",
            "192.0.0.8",
            "fec0::1",
            "64:ff9b::7f00:1",
        ] {
            assert!(!is_public(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["8.8.8.8", "1.1.1.1", "2606:4700:4700::1111"] {
            assert!(is_public(ip.parse().unwrap()), "{ip}");
        }
    }

    #[tokio::test]
    async fn urls_are_refused_unless_allowed() {
        let g = guard(false, &[]);
        assert!(matches!(
            g.check_url("http://127.0.0.1:9/x").await,
            Err(GuardError::Private)
        ));
        assert!(matches!(
            g.check_url("http://[::1]/x").await,
            Err(GuardError::Private)
        ));
        assert!(matches!(
            g.check_url("http://localhost/x").await,
            Err(GuardError::Private)
        ));
        assert!(matches!(
            g.check_url("ftp://example.com/").await,
            Err(GuardError::BadUrl)
        ));
        let e = g
            .check_url("http://169.254.169.254/latest")
            .await
            .unwrap_err();
        assert!(!e.to_string().contains("169.254"), "{e}");
        assert!(matches!(
            g.check_url("ws://[::1]:9/x").await,
            Err(GuardError::Private)
        ));
        let g = guard(false, &["127.0.0.0/8"]);
        assert!(g.check_url("http://127.0.0.1:9/x").await.is_ok());
        assert!(g.check_url("http://10.0.0.1/x").await.is_err());
        assert!(
            guard(true, &[])
                .check_url("http://10.0.0.1/x")
                .await
                .is_ok()
        );
    }
}
