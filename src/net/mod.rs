//! Outbound requests the API can aim: one policy for all of them.
//!
//! Webhook deliveries, agent tools, the LLM, the speech vendors' HTTP and
//! WebSocket APIs all reach hosts that an API key chose. [`Outbound`] is
//! the one place that decides where they may go and with which secret:
//!
//! - [`guard`]: the address guard (public addresses only, unless the
//!   operator allows a network), used as the HTTP client's resolver and
//!   before every WebSocket connect, so DNS rebinding fails.
//! - [`Outbound::client`]: an HTTP client that resolves only through the
//!   guard, follows no redirect (a 3xx to the inside cannot be used), and
//!   ignores the environment's proxies unless `[net] proxy` names one.
//! - [`Outbound::env_secret`]: an environment variable is sent only to the
//!   hosts the operator bound it to in `[secrets.env.NAME] hosts`.
//! - [`read_limited`]: response bodies read with a size cap and a timeout.
//! - [`ws_connect`]: a WebSocket whose TCP connection goes to an address the
//!   guard passed.
//!
//! The policy is installed once at start ([`install`]) from the config; it
//! is process-wide because every outbound client shares it. Before it is
//! installed (library tests) the strictest policy applies.
//!
//! Must not: log a secret or a resolved address in an error; know about
//! calls, agents or the store.

pub mod guard;

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use futures_util::StreamExt;
use serde::{Deserialize, Serialize};

pub use guard::{Guard, GuardError};

/// The `[net]` config table: where outbound requests may go.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NetConfig {
    /// Reach loopback, private, link-local and other non-public addresses.
    /// Off by default, so what an API key points at cannot reach inside.
    pub allow_private: bool,
    /// Non-public networks allowed all the same (a local LLM server, say:
    /// `["10.1.2.0/24"]`).
    pub allowed_networks: Vec<ipnet::IpNet>,
    /// An HTTP(S) proxy for every outbound HTTP request. None by default:
    /// the `HTTP_PROXY` family of environment variables is ignored, as a
    /// proxy would resolve names past the guard.
    pub proxy: Option<String>,
    /// The largest response body read (tool answers, error bodies, vendor
    /// answers other than streamed audio).
    pub max_response_bytes: usize,
}

impl Default for NetConfig {
    fn default() -> Self {
        Self {
            allow_private: false,
            allowed_networks: Vec::new(),
            proxy: None,
            max_response_bytes: 1024 * 1024,
        }
    }
}

/// One entry of `[secrets.env]`: the hosts a variable may be sent to.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnvBinding {
    /// Host names or IP literals (no port), compared case-insensitively.
    /// `*.example.com` matches every name under `example.com`.
    pub hosts: Vec<String>,
}

/// Vendor default variables and the one host each may go to without an
/// entry in `[secrets.env]`: an agent that names no variable gets the
/// vendor's own key only on the vendor's own host.
const BUILT_IN: &[(&str, &str)] = &[
    ("OPENAI_API_KEY", "api.openai.com"),
    ("DEEPGRAM_API_KEY", "api.deepgram.com"),
    ("CARTESIA_API_KEY", "api.cartesia.ai"),
];

/// Why a secret was not handed out.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretRefused {
    #[error("environment variable {0} is not in the operator's [secrets.env] allow-list")]
    NotListed(String),
    #[error("environment variable {name} may not be sent to {host} (see [secrets.env.{name}])")]
    WrongHost { name: String, host: String },
    #[error("environment variable {0} is not set")]
    Unset(String),
}

/// The outbound policy: the guard, the proxy, the secret bindings and the
/// shared HTTP client built from them.
#[derive(Debug, Clone)]
pub struct Outbound {
    guard: Guard,
    proxy: Option<String>,
    env: Arc<BTreeMap<String, EnvBinding>>,
    max_response_bytes: usize,
    client: reqwest::Client,
}

/// The longest connect (TCP and TLS) of an outbound request.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

impl Outbound {
    /// Builds the policy; fails on a proxy URL reqwest does not take.
    pub fn new(
        net: &NetConfig,
        extra_allowed: &[ipnet::IpNet],
        extra_allow_private: bool,
        env: BTreeMap<String, EnvBinding>,
    ) -> Result<Self, String> {
        let mut allowed = net.allowed_networks.clone();
        allowed.extend_from_slice(extra_allowed);
        let guard = Guard::new(net.allow_private || extra_allow_private, &allowed);
        let client = Self::builder(&guard, net.proxy.as_deref())?
            .build()
            .map_err(|e| e.to_string())?;
        Ok(Self {
            guard,
            proxy: net.proxy.clone(),
            env: Arc::new(env),
            max_response_bytes: net.max_response_bytes.max(1024),
            client,
        })
    }

    /// The strictest policy: public addresses only, no secret bindings.
    pub fn strict() -> Self {
        let guard = Guard::default();
        let client = Self::builder(&guard, None)
            .and_then(|b| b.build().map_err(|e| e.to_string()))
            .unwrap_or_default();
        Self {
            guard,
            proxy: None,
            env: Arc::default(),
            max_response_bytes: NetConfig::default().max_response_bytes,
            client,
        }
    }

    /// A client builder with the policy's resolver, no redirects and the
    /// proxy (or none). Callers add their timeouts.
    pub fn builder(guard: &Guard, proxy: Option<&str>) -> Result<reqwest::ClientBuilder, String> {
        let b = reqwest::Client::builder()
            .dns_resolver(Arc::new(guard.clone()))
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(CONNECT_TIMEOUT)
            .user_agent(concat!("agentline/", env!("CARGO_PKG_VERSION")));
        Ok(match proxy {
            Some(p) => b.proxy(reqwest::Proxy::all(p).map_err(|e| format!("net.proxy: {e}"))?),
            None => b.no_proxy(),
        })
    }

    /// A fresh client builder under this policy (the webhook worker's
    /// client has its own timeouts and pool).
    pub fn http_builder(&self) -> Result<reqwest::ClientBuilder, String> {
        Self::builder(&self.guard, self.proxy.as_deref())
    }

    pub fn guard(&self) -> &Guard {
        &self.guard
    }

    /// The shared HTTP client (LLM, tools, speech vendors).
    pub fn client(&self) -> reqwest::Client {
        self.client.clone()
    }

    pub fn max_response_bytes(&self) -> usize {
        self.max_response_bytes
    }

    /// Checks a URL about to be requested: its scheme, and its host when it
    /// is an IP literal (names are checked by the resolver at connect time).
    pub fn check_url(&self, url: &url::Url) -> Result<(), GuardError> {
        if !matches!(url.scheme(), "http" | "https" | "ws" | "wss") {
            return Err(GuardError::BadUrl);
        }
        self.guard.check_literal(url)
    }

    /// Whether environment variable `name` may be sent to `url`'s host:
    /// listed in `[secrets.env]` with that host, or (when `built_in` is
    /// true, the agent named no variable) a vendor default on its own host.
    pub fn may_send(
        &self,
        name: &str,
        url: &url::Url,
        built_in: bool,
    ) -> Result<(), SecretRefused> {
        let host = url
            .host_str()
            .unwrap_or_default()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_ascii_lowercase();
        if built_in && BUILT_IN.iter().any(|(n, h)| *n == name && host == *h) {
            return Ok(());
        }
        let binding = self
            .env
            .get(name)
            .ok_or_else(|| SecretRefused::NotListed(name.to_string()))?;
        if binding.hosts.iter().any(|h| host_matches(h, &host)) {
            Ok(())
        } else {
            Err(SecretRefused::WrongHost {
                name: name.to_string(),
                host,
            })
        }
    }

    /// Whether `name` is in the allow-list at all (checked when an agent is
    /// saved; the host is checked again at use).
    pub fn is_listed(&self, name: &str) -> bool {
        self.env.contains_key(name)
    }

    /// Reads `name` from the environment if it may go to `url`.
    pub fn env_secret(
        &self,
        name: &str,
        url: &url::Url,
        built_in: bool,
    ) -> Result<crate::secrets::Secret, SecretRefused> {
        self.may_send(name, url, built_in)?;
        std::env::var(name)
            .ok()
            .filter(|v| !v.is_empty())
            .map(crate::secrets::Secret::new)
            .ok_or_else(|| SecretRefused::Unset(name.to_string()))
    }
}

/// Whether `url`'s host is one of `hosts` (names, IP literals or
/// `*.suffix`), compared case-insensitively.
pub fn host_allowed(hosts: &[String], url: &url::Url) -> bool {
    let host = url
        .host_str()
        .unwrap_or_default()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_ascii_lowercase();
    hosts.iter().any(|h| host_matches(h, &host))
}

/// `pattern` (from the config) against a lower-case host.
fn host_matches(pattern: &str, host: &str) -> bool {
    let pattern = pattern.trim().to_ascii_lowercase();
    match pattern.strip_prefix("*.") {
        Some(suffix) => host.len() > suffix.len() && host.ends_with(&format!(".{suffix}")),
        None => pattern == host,
    }
}

static OUTBOUND: OnceLock<Outbound> = OnceLock::new();

/// Installs the process's policy; false when one was already in place
/// (the first stays: a policy never loosens after start).
pub fn install(o: Outbound) -> bool {
    OUTBOUND.set(o).is_ok()
}

/// The process's policy (the strictest until [`install`]).
pub fn outbound() -> &'static Outbound {
    OUTBOUND.get_or_init(Outbound::strict)
}

/// Why a body could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReadError {
    #[error("the answer is larger than {0} bytes")]
    TooLarge(usize),
    #[error("the answer did not arrive in time")]
    Timeout,
    #[error("the answer broke off")]
    Broken,
}

/// Reads a response body, at most `max` bytes, the whole within `timeout`.
pub async fn read_limited(
    response: reqwest::Response,
    max: usize,
    timeout: Duration,
) -> Result<Vec<u8>, ReadError> {
    if response.content_length().is_some_and(|n| n > max as u64) {
        return Err(ReadError::TooLarge(max));
    }
    let read = async {
        let mut body = response.bytes_stream();
        let mut out = Vec::new();
        // Bounded: each chunk grows `out`, which stops at `max`.
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|_| ReadError::Broken)?;
            if out.len() + chunk.len() > max {
                return Err(ReadError::TooLarge(max));
            }
            out.extend_from_slice(&chunk);
        }
        Ok(out)
    };
    tokio::time::timeout(timeout, read)
        .await
        .map_err(|_| ReadError::Timeout)?
}

/// An error body as text, cut to `max` bytes and read within `timeout`;
/// what could not be read is left out.
pub async fn error_text(response: reqwest::Response, max: usize, timeout: Duration) -> String {
    match read_limited(response, max, timeout).await {
        Ok(b) => String::from_utf8_lossy(&b).into_owned(),
        Err(e) => format!("({e})"),
    }
}

/// Opens a TCP connection for a WebSocket to `url`: the host resolved
/// through the guard, the first address that answers within `timeout`.
pub async fn ws_tcp(
    url: &url::Url,
    timeout: Duration,
) -> Result<tokio::net::TcpStream, GuardError> {
    let o = outbound();
    o.check_url(url)?;
    let host = url.host_str().ok_or(GuardError::BadUrl)?;
    let port = url.port_or_known_default().ok_or(GuardError::BadUrl)?;
    let addrs = o.guard.resolve(host, port).await?;
    let unreachable = || GuardError::Unresolvable {
        host: host.to_string(),
    };
    for addr in addrs {
        if let Ok(Ok(s)) = tokio::time::timeout(timeout, tokio::net::TcpStream::connect(addr)).await
        {
            return Ok(s);
        }
    }
    Err(unreachable())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(env: &[(&str, &[&str])]) -> Outbound {
        let env = env
            .iter()
            .map(|(n, h)| {
                (
                    n.to_string(),
                    EnvBinding {
                        hosts: h.iter().map(|s| s.to_string()).collect(),
                    },
                )
            })
            .collect();
        Outbound::new(&NetConfig::default(), &[], false, env).unwrap()
    }

    #[test]
    fn secrets_go_only_to_their_hosts() {
        let p = policy(&[("LLM_KEY", &["llm.example.com", "*.corp.example"])]);
        let url = |s: &str| url::Url::parse(s).unwrap();
        assert!(
            p.may_send("LLM_KEY", &url("https://LLM.example.com/v1"), false)
                .is_ok()
        );
        assert!(
            p.may_send("LLM_KEY", &url("https://a.corp.example/v1"), false)
                .is_ok()
        );
        assert!(
            p.may_send("LLM_KEY", &url("https://corp.example/v1"), false)
                .is_err()
        );
        assert!(matches!(
            p.may_send("LLM_KEY", &url("https://evil.example/v1"), false),
            Err(SecretRefused::WrongHost { .. })
        ));
        assert!(matches!(
            p.may_send(
                "AGENTLINE_STORE__URL",
                &url("https://llm.example.com"),
                false
            ),
            Err(SecretRefused::NotListed(_))
        ));
        assert!(
            p.may_send("OPENAI_API_KEY", &url("https://api.openai.com/v1"), true)
                .is_ok()
        );
        assert!(
            p.may_send("OPENAI_API_KEY", &url("https://evil.example/v1"), true)
                .is_err()
        );
        assert!(
            p.may_send("OPENAI_API_KEY", &url("https://api.openai.com/v1"), false)
                .is_err()
        );
    }

    #[tokio::test]
    async fn bodies_are_capped() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf).await;
            let body = vec![b'x'; 5000];
            let head =
                "HTTP/1.1 200 OK\r\ntransfer-encoding: identity\r\nconnection: close\r\n\r\n";
            let _ = s.write_all(head.as_bytes()).await;
            let _ = s.write_all(&body).await;
        });
        let r = reqwest::get(format!("http://{addr}/")).await.unwrap();
        assert_eq!(
            read_limited(r, 1000, Duration::from_secs(5)).await,
            Err(ReadError::TooLarge(1000))
        );
    }
}
