//! Secrets handed out once: API keys and webhook signing secrets.
//!
//! An API key is `al_live_` or `al_test_` followed by 32 base62 characters
//! (about 190 bits from the OS generator). The store keeps its SHA-256 and a
//! visible prefix; a fast hash is right here because the key is high-entropy
//! random, not a password. Comparison is constant-time.

use rand::Rng;
use rand::distr::Alphanumeric;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Length of the random part of an API key.
const KEY_BODY_LEN: usize = 32;
/// How many characters of the random part the visible prefix keeps.
const PREFIX_BODY_LEN: usize = 8;

/// Live keys act on real calls; test keys are marked so operators can tell
/// them apart in logs and listings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyMode {
    Live,
    Test,
}

impl KeyMode {
    pub fn as_str(self) -> &'static str {
        match self {
            KeyMode::Live => "live",
            KeyMode::Test => "test",
        }
    }
}

/// A freshly made key: the secret (shown once), its prefix and its hash.
pub struct NewKey {
    pub secret: String,
    pub prefix: String,
    pub hash: String,
}

pub fn new_api_key(mode: KeyMode) -> NewKey {
    let body: String = rand::rng()
        .sample_iter(&Alphanumeric)
        .take(KEY_BODY_LEN)
        .map(char::from)
        .collect();
    let secret = format!("al_{}_{}", mode.as_str(), body);
    let prefix = key_prefix(&secret).unwrap_or_default().to_string();
    let hash = hash_key(&secret);
    NewKey {
        secret,
        prefix,
        hash,
    }
}

/// The visible prefix of a well-formed key (`al_live_AbCd1234`), or `None`
/// when `key` cannot be one of ours.
pub fn key_prefix(key: &str) -> Option<&str> {
    let body = key
        .strip_prefix("al_live_")
        .or_else(|| key.strip_prefix("al_test_"))?;
    if body.len() != KEY_BODY_LEN || !body.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return None;
    }
    Some(&key[..key.len() - KEY_BODY_LEN + PREFIX_BODY_LEN])
}

pub fn hash_key(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

/// Constant-time comparison of a presented key against a stored hash.
pub fn key_matches(key: &str, stored_hash: &str) -> bool {
    hash_key(key)
        .as_bytes()
        .ct_eq(stored_hash.as_bytes())
        .into()
}

/// A Standard Webhooks signing secret: `whsec_` and base64 of 32 random bytes.
pub fn new_webhook_secret() -> String {
    use base64::Engine;
    let mut bytes = [0u8; 32];
    rand::rng().fill(&mut bytes);
    format!(
        "whsec_{}",
        base64::engine::general_purpose::STANDARD.encode(bytes)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_key_matches_its_hash_and_prefix() {
        let k = new_api_key(KeyMode::Live);
        assert!(k.secret.starts_with("al_live_"));
        assert_eq!(k.secret.len(), 8 + KEY_BODY_LEN);
        assert_eq!(key_prefix(&k.secret), Some(k.prefix.as_str()));
        assert!(key_matches(&k.secret, &k.hash));
        assert!(!key_matches(&new_api_key(KeyMode::Live).secret, &k.hash));
        assert_ne!(k.hash, k.secret);
    }

    #[test]
    fn malformed_keys_have_no_prefix() {
        assert_eq!(key_prefix("al_live_short"), None);
        assert_eq!(key_prefix("sk_live_0123456789abcdef0123456789abcdef"), None);
        assert_eq!(key_prefix("al_test_0123456789abcdef0123456789abcde!"), None);
    }
}
