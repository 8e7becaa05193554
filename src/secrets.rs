//! Secrets handed out once: API keys and webhook signing secrets; the
//! [`Secret`] newtype every held secret lives in (its `Debug` prints no
//! value); and [`Sealer`], which encrypts secrets kept in the store
//! (credentials, webhook signing secrets) with a key the operator gives.
//!
//! An API key is `al_live_` or `al_test_` followed by 32 base62 characters
//! (about 190 bits from the OS generator). The store keeps its SHA-256 and a
//! visible prefix; a fast hash is right here because the key is high-entropy
//! random, not a password. Comparison is constant-time.

use rand::Rng;
use rand::distr::Alphanumeric;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// The `[secrets]` config table.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SecretsConfig {
    /// A file holding the key that encrypts stored secrets (credentials,
    /// webhook signing secrets): 32 bytes as 64 hex digits or base64. The
    /// environment variable `AGENTLINE_SECRETS_KEY` wins over it.
    pub key_file: Option<std::path::PathBuf>,
    /// The environment variables agents may name (`api_key_env`,
    /// `secret_env`), each with the hosts it may be sent to:
    /// `[secrets.env.OPENAI_KEY] hosts = ["api.openai.com"]`.
    pub env: std::collections::BTreeMap<String, crate::net::EnvBinding>,
}

/// The environment variable holding the encryption key of stored secrets.
pub const KEY_ENV: &str = "AGENTLINE_SECRETS_KEY";

impl SecretsConfig {
    /// The sealer from `AGENTLINE_SECRETS_KEY` or `key_file`; no key at all
    /// gives [`Sealer::none`].
    pub fn sealer(&self) -> Result<Sealer, String> {
        if let Some(text) = std::env::var(KEY_ENV).ok().filter(|v| !v.trim().is_empty()) {
            return Sealer::from_text(&text).map_err(|e| format!("{KEY_ENV}: {e}"));
        }
        match &self.key_file {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| format!("secrets.key_file {}: {e}", path.display()))?;
                Sealer::from_text(&text).map_err(|e| format!("secrets.key_file: {e}"))
            }
            None => Ok(Sealer::none()),
        }
    }
}

/// A secret held in memory (a provider key, a password): sent where it
/// belongs, never printed. `Debug` and `Display`-free by design.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<&str> for Secret {
    fn from(s: &str) -> Self {
        Self(s.to_owned())
    }
}

impl From<String> for Secret {
    fn from(s: String) -> Self {
        Self(s)
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// The associated data of sealed webhook signing secrets.
pub const WEBHOOK_PURPOSE: &str = "webhook";

/// The prefix of a value sealed by [`Sealer`] (version 1: AES-256-GCM).
const SEALED_PREFIX: &str = "enc:v1:";

/// Why a sealed value could not be opened or made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    #[error("no encryption key is configured (AGENTLINE_SECRETS_KEY or secrets.key_file)")]
    NoKey,
    #[error("the encryption key must be 32 bytes, as 64 hex digits or base64")]
    BadKey,
    #[error("a stored secret cannot be decrypted with the configured key")]
    Corrupt,
}

/// Encrypts secrets at rest with AES-256-GCM (ring): a random 96-bit nonce
/// per value, the purpose (`credential`, `webhook`) as associated data so a
/// value cannot be moved to another column. Stored as
/// `enc:v1:<base64 nonce||ciphertext||tag>`.
#[derive(Clone)]
pub struct Sealer {
    key: Option<std::sync::Arc<ring::aead::LessSafeKey>>,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.key.is_some() {
            "Sealer(key)"
        } else {
            "Sealer(none)"
        })
    }
}

impl Sealer {
    /// No key: sealing fails, and plain (legacy) values still open.
    pub fn none() -> Self {
        Self { key: None }
    }

    /// A key given as 64 hex digits or base64 of 32 bytes.
    pub fn from_text(text: &str) -> Result<Self, SealError> {
        use base64::Engine;
        let text = text.trim();
        let bytes = hex::decode(text)
            .ok()
            .filter(|b| b.len() == 32)
            .or_else(|| {
                base64::engine::general_purpose::STANDARD
                    .decode(text)
                    .ok()
                    .filter(|b| b.len() == 32)
            })
            .ok_or(SealError::BadKey)?;
        let unbound = ring::aead::UnboundKey::new(&ring::aead::AES_256_GCM, &bytes)
            .map_err(|_| SealError::BadKey)?;
        Ok(Self {
            key: Some(std::sync::Arc::new(ring::aead::LessSafeKey::new(unbound))),
        })
    }

    pub fn has_key(&self) -> bool {
        self.key.is_some()
    }

    /// Seals `plain` when a key is configured, else keeps it as is (webhook
    /// signing secrets must keep working on a daemon without a key).
    pub fn seal_if_keyed(&self, purpose: &str, plain: &str) -> Result<String, SealError> {
        if self.has_key() {
            self.seal(purpose, plain)
        } else {
            Ok(plain.to_string())
        }
    }

    /// Encrypts `plain` for `purpose`.
    pub fn seal(&self, purpose: &str, plain: &str) -> Result<String, SealError> {
        use base64::Engine;
        let key = self.key.as_ref().ok_or(SealError::NoKey)?;
        let mut nonce = [0u8; 12];
        rand::rng().fill(&mut nonce);
        let mut data = plain.as_bytes().to_vec();
        key.seal_in_place_append_tag(
            ring::aead::Nonce::assume_unique_for_key(nonce),
            ring::aead::Aad::from(purpose.as_bytes()),
            &mut data,
        )
        .map_err(|_| SealError::Corrupt)?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&data);
        Ok(format!(
            "{SEALED_PREFIX}{}",
            base64::engine::general_purpose::STANDARD.encode(out)
        ))
    }

    /// Decrypts a stored value; a value without the prefix is a plain one
    /// written before encryption (returned as is, so an upgrade keeps
    /// working until the rows are sealed).
    pub fn open(&self, purpose: &str, stored: &str) -> Result<Secret, SealError> {
        use base64::Engine;
        let Some(body) = stored.strip_prefix(SEALED_PREFIX) else {
            return Ok(Secret::new(stored));
        };
        let key = self.key.as_ref().ok_or(SealError::NoKey)?;
        let mut data = base64::engine::general_purpose::STANDARD
            .decode(body)
            .map_err(|_| SealError::Corrupt)?;
        if data.len() < 12 + 16 {
            return Err(SealError::Corrupt);
        }
        let mut nonce = [0u8; 12];
        nonce.copy_from_slice(&data[..12]);
        let plain = key
            .open_in_place(
                ring::aead::Nonce::assume_unique_for_key(nonce),
                ring::aead::Aad::from(purpose.as_bytes()),
                &mut data[12..],
            )
            .map_err(|_| SealError::Corrupt)?;
        String::from_utf8(plain.to_vec())
            .map(Secret::new)
            .map_err(|_| SealError::Corrupt)
    }

    /// Whether a stored value is sealed.
    pub fn is_sealed(stored: &str) -> bool {
        stored.starts_with(SEALED_PREFIX)
    }
}

/// Where stored credentials come from (the store, through the API's
/// sealer): the value of credential `id` and the hosts it may go to.
#[async_trait::async_trait]
pub trait CredentialSource: Send + Sync {
    async fn credential(&self, id: &str) -> Result<Option<(Secret, Vec<String>)>, String>;
}

static CREDENTIALS: std::sync::OnceLock<std::sync::Arc<dyn CredentialSource>> =
    std::sync::OnceLock::new();

/// Installs the process's credential source (once, at start).
pub fn install_credentials(source: std::sync::Arc<dyn CredentialSource>) -> bool {
    CREDENTIALS.set(source).is_ok()
}

/// The value of stored credential `id`, if it may be sent to `url`'s host
/// (its `hosts`, compared as `[secrets.env]` hosts are).
pub async fn credential_for(id: &str, url: &url::Url) -> Result<Secret, String> {
    let source = CREDENTIALS
        .get()
        .ok_or("stored credentials are not available")?;
    let (secret, hosts) = source
        .credential(id)
        .await?
        .ok_or_else(|| format!("no credential {id}"))?;
    if crate::net::host_allowed(&hosts, url) {
        Ok(secret)
    } else {
        Err(format!(
            "credential {id} may not be sent to {}",
            url.host_str().unwrap_or_default()
        ))
    }
}

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
    fn secrets_do_not_print() {
        let s = Secret::new("sk-very-secret");
        assert_eq!(format!("{s:?}"), "Secret(***)");
        #[derive(Debug)]
        #[allow(dead_code)]
        struct Holder {
            password: Secret,
        }
        let h = Holder {
            password: Secret::new("hunter2"),
        };
        assert!(!format!("{h:?}").contains("hunter2"));
        assert!(!format!("{h:#?}").contains("hunter2"));
    }

    #[test]
    fn sealed_values_open_only_with_their_key_and_purpose() {
        let key = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
        let s = Sealer::from_text(key).unwrap();
        let sealed = s.seal("credential", "sk-123").unwrap();
        assert!(Sealer::is_sealed(&sealed));
        assert!(!sealed.contains("sk-123"));
        assert_ne!(
            sealed,
            s.seal("credential", "sk-123").unwrap(),
            "fresh nonce"
        );
        assert_eq!(s.open("credential", &sealed).unwrap().expose(), "sk-123");
        assert_eq!(s.open("webhook", &sealed), Err(SealError::Corrupt));
        let other = Sealer::from_text(&"11".repeat(32)).unwrap();
        assert_eq!(other.open("credential", &sealed), Err(SealError::Corrupt));
        assert_eq!(
            Sealer::none().open("credential", &sealed),
            Err(SealError::NoKey)
        );
        assert_eq!(
            s.open("webhook", "whsec_plain").unwrap().expose(),
            "whsec_plain"
        );
        assert_eq!(Sealer::from_text("short").err(), Some(SealError::BadKey));
        assert_eq!(Sealer::none().seal("x", "y"), Err(SealError::NoKey));
    }

    #[test]
    fn malformed_keys_have_no_prefix() {
        assert_eq!(key_prefix("al_live_short"), None);
        assert_eq!(key_prefix("sk_live_0123456789abcdef0123456789abcdef"), None);
        assert_eq!(key_prefix("al_test_0123456789abcdef0123456789abcde!"), None);
    }
}
