//! Standard Webhooks v1 signatures, the one implementation: the webhook
//! worker signs its deliveries with it and the agent its HTTP tool calls.
//! `webhook-signature` carries `v1,<base64 HMAC-SHA256 of
//! "id.timestamp.body">`, keyed with the bytes base64-encoded after the
//! `whsec_` prefix of the secret. During a secret rotation the header
//! carries one signature per valid secret, separated by spaces; receivers
//! accept any.
//!
//! Must not: know endpoints, tools, the store or HTTP; it turns bytes into
//! headers. It imports nothing of the crate, so any layer may use it.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// A secret that is not `whsec_` followed by base64.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the signing secret is not whsec_ followed by base64")]
pub struct BadSecret;

/// One signature (`v1,...`) of `body` sent as message `id` at `timestamp`
/// (Unix seconds).
pub fn sign(secret: &str, id: &str, timestamp: i64, body: &[u8]) -> Result<String, BadSecret> {
    let key = secret.strip_prefix("whsec_").ok_or(BadSecret)?;
    let key = STANDARD.decode(key).map_err(|_| BadSecret)?;
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).map_err(|_| BadSecret)?;
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    Ok(format!(
        "v1,{}",
        STANDARD.encode(mac.finalize().into_bytes())
    ))
}

/// The `webhook-signature` value: one signature per secret, space-separated.
pub fn signature_header(
    secrets: &[&str],
    id: &str,
    timestamp: i64,
    body: &[u8],
) -> Result<String, BadSecret> {
    let mut out = Vec::with_capacity(secrets.len());
    for s in secrets {
        out.push(sign(s, id, timestamp, body)?);
    }
    Ok(out.join(" "))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example of the Standard Webhooks specification.
    #[test]
    fn matches_the_specification_example() {
        let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let id = "msg_p5jXN8AQM9LWM0D4loKWxJek";
        let body = br#"{"test": 2432232314}"#;
        let sig = sign(secret, id, 1614265330, body).unwrap();
        assert_eq!(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    #[test]
    fn rotation_signs_with_every_secret() {
        let a = crate::secrets::new_webhook_secret();
        let b = crate::secrets::new_webhook_secret();
        let h = signature_header(&[&a, &b], "evt_1", 1, b"{}").unwrap();
        let parts: Vec<_> = h.split(' ').collect();
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0], sign(&a, "evt_1", 1, b"{}").unwrap());
        assert_eq!(parts[1], sign(&b, "evt_1", 1, b"{}").unwrap());
    }

    #[test]
    fn a_malformed_secret_is_refused() {
        assert_eq!(sign("nope", "x", 1, b""), Err(BadSecret));
        assert_eq!(sign("whsec_!!!", "x", 1, b""), Err(BadSecret));
    }
}
