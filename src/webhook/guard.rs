//! The address guard: endpoint URLs may not reach loopback, private,
//! link-local or other non-public addresses unless the config allows them.
//!
//! It runs twice: when an endpoint is created or updated ([`Guard::check_url`],
//! resolving the host once), and on every delivery, where the HTTP client
//! resolves names only through [`Guard`] as its resolver and so connects only
//! to the addresses that passed (a name that changes to a private address
//! after the endpoint was saved, DNS rebinding, is refused). IP literals skip
//! the resolver and are checked by [`Guard::check_literal`] before sending.
//!
//! Must not: make any request or know endpoints; it answers yes or no about
//! addresses.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use ipnet::IpNet;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};

use crate::config::WebhooksConfig;

/// How long one name lookup may take.
const RESOLVE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Why a URL was refused.
#[derive(Debug, Clone, thiserror::Error)]
pub enum GuardError {
    #[error("not an http or https URL")]
    BadUrl,
    #[error("{0} is not a public address")]
    Private(IpAddr),
    #[error("{host} does not resolve: {reason}")]
    Unresolvable { host: String, reason: String },
}

/// Which addresses deliveries may reach.
#[derive(Debug, Clone)]
pub struct Guard {
    allow_private: bool,
    allowed: Arc<[IpNet]>,
}

impl Guard {
    pub fn new(c: &WebhooksConfig) -> Self {
        Self {
            allow_private: c.allow_private,
            allowed: c.allowed_networks.clone().into(),
        }
    }

    /// Whether a delivery may connect to `ip`.
    pub fn allows(&self, ip: IpAddr) -> bool {
        self.allow_private || is_public(ip) || self.allowed.iter().any(|n| n.contains(&ip))
    }

    /// Checks a URL at create/update time: an IP literal directly, a name
    /// by resolving it (every address must be allowed; a name that does not
    /// resolve passes, and is checked again at delivery).
    pub async fn check_url(&self, url: &str) -> Result<(), GuardError> {
        let parsed = reqwest::Url::parse(url).map_err(|_| GuardError::BadUrl)?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(GuardError::BadUrl);
        }
        let port = parsed.port_or_known_default().unwrap_or(443);
        match parsed.host() {
            Some(url::Host::Ipv4(ip)) => self.check_ip(IpAddr::V4(ip)),
            Some(url::Host::Ipv6(ip)) => self.check_ip(IpAddr::V6(ip)),
            Some(url::Host::Domain(host)) => {
                // A name that does not resolve (yet) is accepted: the
                // delivery-time check refuses it if it ever points inside.
                match self.resolve_checked(host, port).await {
                    Err(GuardError::Unresolvable { .. }) => Ok(()),
                    other => other.map(|_| ()),
                }
            }
            None => Err(GuardError::BadUrl),
        }
    }

    /// Checks the host of a URL about to be requested when it is an IP
    /// literal (names are checked by the resolver).
    pub fn check_literal(&self, url: &reqwest::Url) -> Result<(), GuardError> {
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
            Err(GuardError::Private(ip))
        }
    }

    /// Resolves `host` and refuses it if any address is not allowed.
    async fn resolve_checked(&self, host: &str, port: u16) -> Result<Vec<SocketAddr>, GuardError> {
        let unresolvable = |reason: String| GuardError::Unresolvable {
            host: host.to_string(),
            reason,
        };
        let addrs: Vec<SocketAddr> =
            tokio::time::timeout(RESOLVE_TIMEOUT, tokio::net::lookup_host((host, port)))
                .await
                .map_err(|_| unresolvable("timed out".into()))?
                .map_err(|e| unresolvable(e.to_string()))?
                .collect();
        if addrs.is_empty() {
            return Err(unresolvable("no address".into()));
        }
        if let Some(bad) = addrs.iter().find(|a| !self.allows(a.ip())) {
            return Err(GuardError::Private(bad.ip()));
        }
        Ok(addrs)
    }
}

impl Resolve for Guard {
    fn resolve(&self, name: Name) -> Resolving {
        let guard = self.clone();
        Box::pin(async move {
            // The client sets the real port afterwards.
            let addrs = guard.resolve_checked(name.as_str(), 0).await?;
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
        || a >= 240)
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    let first = ip.segments()[0];
    !(ip.is_loopback()
        || ip.is_unspecified()
        || ip.is_multicast()
        // fc00::/7 unique local, fe80::/10 link-local, 2001:db8::/32
        // documentation, 64:ff9b::/96 NAT64 (may reach private IPv4).
        || (first & 0xfe00) == 0xfc00
        || (first & 0xffc0) == 0xfe80
        || (first == 0x2001 && ip.segments()[1] == 0x0db8)
        || (first == 0x0064 && ip.segments()[1] == 0xff9b))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guard(allow_private: bool, allowed: &[&str]) -> Guard {
        Guard::new(&WebhooksConfig {
            allow_private,
            allowed_networks: allowed.iter().map(|n| n.parse().unwrap()).collect(),
            ..WebhooksConfig::default()
        })
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
            Err(GuardError::Private(_))
        ));
        assert!(matches!(
            g.check_url("http://[::1]/x").await,
            Err(GuardError::Private(_))
        ));
        assert!(matches!(
            g.check_url("http://localhost/x").await,
            Err(GuardError::Private(_))
        ));
        assert!(matches!(
            g.check_url("ftp://example.com/").await,
            Err(GuardError::BadUrl)
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
