//! Cloud speech vendors: clients that speak each vendor's documented wire
//! protocol, behind the [`crate::agent::providers`] traits.
//!
//! - [`openai`]: OpenAI-compatible `/v1/audio/transcriptions` (STT, one
//!   request per turn) and `/v1/audio/speech` (TTS, streamed body).
//! - [`deepgram`]: Deepgram's live WebSocket STT (`/v1/listen`).
//! - [`cartesia`]: Cartesia's WebSocket TTS (`/tts/websocket`). It is the one
//!   streaming TTS vendor supported: it takes a whole piece of text in one
//!   JSON message and answers with raw 8 kHz PCM chunks, which fits the
//!   chunker's sentence-at-a-time [`crate::agent::providers::Tts`] with no
//!   resampling. ElevenLabs stays a clear "not supported" error.
//!
//! Owns what they share: reading the API key from the environment variable an
//! agent names, only when the operator bound it to the vendor's host
//! ([`api_key`], see [`crate::net::Outbound::env_secret`]), WebSocket
//! connections ([`connect`]: the TCP connection goes to an address the
//! [`crate::net::guard`] passed, TLS with rustls and the webpki roots; plain
//! `ws://` only to a loopback host, so a key never crosses a network in
//! clear), and keeping the key out of every error ([`scrub`]).
//!
//! Must not: log or return an API key (nor a URL that carries one), or know
//! about calls; which vendor an agent gets is [`crate::agent::speech`]'s.

pub mod cartesia;
pub mod deepgram;
pub mod openai;

use std::net::IpAddr;
use std::time::Duration;

use tokio_tungstenite::tungstenite;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use url::Url;

use super::brain::Secret;
use super::providers::ProviderError;

/// Longest wait for a vendor's TCP, TLS and WebSocket handshakes.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A WebSocket to a vendor.
pub type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// The key in the environment variable `named` (or `default` when the
/// agent names none), if it may be sent to `base_url` (or `default_base`):
/// a named variable must be bound to that host in `[secrets.env]`; the
/// vendor's default variable goes to the vendor's own host, or to a host the
/// operator bound it to. A key that may not go there, or is missing, is an
/// error when the agent named it or the vendor `required` one; else the
/// requests go without a key (a local OpenAI-compatible server).
pub fn api_key(
    named: Option<&str>,
    default: &str,
    required: bool,
    base_url: Option<&str>,
    default_base: &str,
) -> Result<Option<Secret>, ProviderError> {
    let name = named.unwrap_or(default);
    let raw = base_url.unwrap_or(default_base);
    let url = Url::parse(raw)
        .map_err(|e| ProviderError::Config(format!("base_url {raw:?} is not a URL: {e}")))?;
    match crate::net::outbound().env_secret(name, &url, named.is_none()) {
        Ok(key) => Ok(Some(key)),
        Err(e) if named.is_some() || required => {
            Err(ProviderError::Config(format!("the API key: {e}")))
        }
        Err(_) => Ok(None),
    }
}

/// `message` with every occurrence of the key masked: vendors echo parts
/// of what they were sent in their errors.
pub fn scrub(message: &str, key: Option<&Secret>) -> String {
    match key {
        Some(k) if !k.expose().is_empty() => message.replace(k.expose(), "***"),
        _ => message.to_string(),
    }
}

/// Parses a vendor's base URL (`default` when the agent gives none) for a
/// WebSocket: `wss://`, or `ws://` to a loopback host (a local stand-in);
/// `https://` and `http://` are taken as their WebSocket forms.
pub fn ws_base(base_url: Option<&str>, default: &str) -> Result<Url, ProviderError> {
    let raw = base_url.unwrap_or(default);
    let mut url = Url::parse(raw)
        .map_err(|e| ProviderError::Config(format!("base_url {raw:?} is not a URL: {e}")))?;
    let ws = match url.scheme() {
        "https" => Some("wss"),
        "http" => Some("ws"),
        _ => None,
    };
    if let Some(ws) = ws {
        url.set_scheme(ws).map_err(|()| {
            ProviderError::Config(format!("base_url {raw:?} cannot be a WebSocket URL"))
        })?;
    }
    let loopback = match url.host() {
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => IpAddr::V4(ip).is_loopback(),
        Some(url::Host::Ipv6(ip)) => IpAddr::V6(ip).is_loopback(),
        None => false,
    };
    match url.scheme() {
        "wss" => Ok(url),
        "ws" if loopback => Ok(url),
        "ws" => Err(ProviderError::Config(format!(
            "base_url {raw:?}: plain ws:// is allowed to a loopback host only; use wss://"
        ))),
        other => Err(ProviderError::Config(format!(
            "base_url {raw:?}: scheme {other:?} is not a WebSocket (wss://)"
        ))),
    }
}

/// Opens a WebSocket to `url` with extra request `headers`; a refusal (such
/// as 401) is [`ProviderError::Refused`] with the vendor's message.
pub async fn connect(
    url: &Url,
    headers: &[(&str, &str)],
    key: Option<&Secret>,
    vendor: &str,
) -> Result<Ws, ProviderError> {
    let mut request = url
        .as_str()
        .into_client_request()
        .map_err(|e| ProviderError::Config(scrub(&format!("{vendor} URL: {e}"), key)))?;
    for (name, value) in headers {
        let value = tungstenite::http::HeaderValue::from_str(value).map_err(|_| {
            ProviderError::Config(format!("{vendor}: the {name} header is not valid text"))
        })?;
        let name = tungstenite::http::HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| ProviderError::Config(format!("{vendor}: bad header name {name}")))?;
        request.headers_mut().insert(name, value);
    }
    let timed_out = || {
        ProviderError::Unreachable(format!(
            "{vendor} did not answer within {} s",
            CONNECT_TIMEOUT.as_secs()
        ))
    };
    // The TCP connection goes to an address the guard passed; the
    // handshake (TLS for wss, with the URL's host as the server name) runs
    // on it, so the library never resolves the name itself.
    let started = tokio::time::Instant::now();
    let tcp = crate::net::ws_tcp(url, CONNECT_TIMEOUT)
        .await
        .map_err(|e| ProviderError::Unreachable(format!("{vendor}: {e}")))?;
    let left = CONNECT_TIMEOUT.saturating_sub(started.elapsed());
    let connected = tokio::time::timeout(
        left,
        tokio_tungstenite::client_async_tls_with_config(request, tcp, Some(ws_limits()), None),
    )
    .await
    .map_err(|_| timed_out())?;
    match connected {
        Ok((ws, _)) => Ok(ws),
        Err(tungstenite::Error::Http(response)) => {
            let status = response.status();
            let body = response
                .body()
                .as_deref()
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .unwrap_or_default();
            let message = error_message(&body);
            Err(ProviderError::Refused(scrub(
                &format!("{vendor} answered HTTP {}: {message}", status.as_u16()),
                key,
            )))
        }
        Err(e) => Err(ProviderError::Unreachable(scrub(
            &format!("{vendor}: {e}"),
            key,
        ))),
    }
}

/// Caps on what a vendor may send in one WebSocket message: audio chunks
/// and transcripts are small; a peer sending more is cut off.
fn ws_limits() -> tungstenite::protocol::WebSocketConfig {
    tungstenite::protocol::WebSocketConfig::default()
        .max_message_size(Some(4 << 20))
        .max_frame_size(Some(1 << 20))
}

/// The human part of a vendor's error body: the usual JSON fields, else
/// the start of the text.
pub fn error_message(body: &str) -> String {
    let json: Option<serde_json::Value> = serde_json::from_str(body).ok();
    let field = json.as_ref().and_then(|v| {
        [
            "/error/message",
            "/err_msg",
            "/message",
            "/description",
            "/error",
        ]
        .iter()
        .find_map(|p| v.pointer(p).and_then(serde_json::Value::as_str))
        .map(str::to_string)
    });
    field.unwrap_or_else(|| {
        let text: String = body.trim().chars().take(200).collect();
        if text.is_empty() {
            "no details".into()
        } else {
            text
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_websockets_go_to_loopback_only() {
        assert!(ws_base(Some("ws://127.0.0.1:9/x"), "wss://a").is_ok());
        assert!(ws_base(Some("ws://localhost:9"), "wss://a").is_ok());
        assert!(ws_base(Some("ws://[::1]:9"), "wss://a").is_ok());
        assert!(ws_base(None, "wss://api.example.com").is_ok());
        let e = ws_base(Some("ws://10.0.0.1"), "wss://a").unwrap_err();
        assert!(e.to_string().contains("loopback"), "{e}");
        assert_eq!(
            ws_base(Some("https://api.example.com"), "wss://a")
                .unwrap()
                .scheme(),
            "wss"
        );
        assert!(ws_base(Some("http://10.0.0.1"), "wss://a").is_err());
        assert!(ws_base(Some("ftp://a"), "wss://a").is_err());
        assert!(ws_base(Some("not a url"), "wss://a").is_err());
    }

    #[test]
    fn keys_are_masked_and_messages_found() {
        let k = Secret::new("sk-123");
        assert_eq!(scrub("bad key sk-123!", Some(&k)), "bad key ***!");
        assert_eq!(
            error_message(r#"{"error":{"message":"Invalid key"}}"#),
            "Invalid key"
        );
        assert_eq!(
            error_message(r#"{"err_code":"INVALID_AUTH","err_msg":"Invalid credentials."}"#),
            "Invalid credentials."
        );
        assert_eq!(error_message(""), "no details");
    }
}
