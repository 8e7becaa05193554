//! SIP over TLS (RFC 3261 §26.2, RFC 5630): the certificates, their reload
//! on SIGHUP, the trust each trunk asks for, and the rustls configurations
//! built from them.
//!
//! Inbound, we terminate TLS ourselves with tokio-rustls and hand the
//! decrypted stream to the TCP front door ([`super::tcp`]): ezk's own TLS
//! listener accepts every connection and handshakes before anyone could
//! look, so it would have none of the edge (the ACL at accept, connection
//! caps per source and in total, a handshake and slow-loris timeout,
//! framing limits), and it fixes its certificate at bind time. Through the
//! relay a TLS connection is held to exactly the rules of a TCP one, and
//! the handshake itself runs only once the source has been admitted.
//!
//! Outbound, ezk's `tls-rustls` connector opens the connection (its Via
//! then says `TLS`) with our [`ClientConfig`]: one connector serves every
//! trunk, so the verifier ([`TrunkTrust`]) picks the trust by the server
//! name each trunk's registrar or proxy has (system roots plus the
//! trunk's `tls_ca_file`, or nothing verified when the trunk explicitly
//! says `tls_verify = false`), and the client certificate is resolved
//! from a slot SIGHUP refills.
//!
//! Must not: parse SIP (the TCP relay does the framing; the only bytes we
//! touch are the Via transport token, see [`mark_via_tls`]).

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{ResolvesClientCert, WebPkiServerVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

/// Where Debian (and most distributions) keep the system's trusted roots.
const SYSTEM_ROOTS: &str = "/etc/ssl/certs/ca-certificates.crt";

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A certificate chain and its key, from PEM files: a clear message naming
/// the file when either is missing, unreadable, empty or does not match.
pub(crate) fn load_certified_key(cert: &Path, key: &Path) -> Result<Arc<CertifiedKey>, String> {
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("{}: {e}", cert.display()))?;
    if chain.is_empty() {
        return Err(format!("{}: no PEM certificate in it", cert.display()));
    }
    let der = PrivateKeyDer::from_pem_file(key).map_err(|e| format!("{}: {e}", key.display()))?;
    let signer = rustls::crypto::ring::sign::any_supported_type(&der)
        .map_err(|e| format!("{}: {e}", key.display()))?;
    let certified = CertifiedKey::new(chain, signer);
    certified
        .keys_match()
        .map_err(|e| format!("{} and {}: {e}", cert.display(), key.display()))?;
    Ok(Arc::new(certified))
}

/// A certificate (and key) that SIGHUP may replace while connections and
/// calls go on: each handshake takes whatever the slot holds then.
#[derive(Debug)]
pub(crate) struct CertSlot {
    cert_file: PathBuf,
    key_file: PathBuf,
    current: RwLock<Arc<CertifiedKey>>,
}

impl CertSlot {
    /// Loads the files now: an error here is a start-up error.
    pub(crate) fn load(cert_file: PathBuf, key_file: PathBuf) -> Result<Arc<Self>, String> {
        let current = load_certified_key(&cert_file, &key_file)?;
        Ok(Arc::new(Self {
            cert_file,
            key_file,
            current: RwLock::new(current),
        }))
    }

    /// Re-reads the files; on error the certificate in use stays.
    pub(crate) fn reload(&self) -> Result<(), String> {
        let fresh = load_certified_key(&self.cert_file, &self.key_file)?;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = fresh;
        Ok(())
    }

    fn get(&self) -> Arc<CertifiedKey> {
        Arc::clone(&self.current.read().unwrap_or_else(|e| e.into_inner()))
    }
}

impl ResolvesServerCert for CertSlot {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.get())
    }
}

impl ResolvesClientCert for CertSlot {
    fn resolve(&self, _hints: &[&[u8]], _schemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.get())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// No client certificate to offer.
#[derive(Debug)]
struct NoClientCert;

impl ResolvesClientCert for NoClientCert {
    fn resolve(&self, _hints: &[&[u8]], _schemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        None
    }

    fn has_certs(&self) -> bool {
        false
    }
}

/// The server side of `[sip] tls_listen`: TLS 1.2 and 1.3, no client
/// certificate asked for (trunks are told apart by the ACL and digest
/// auth, as over TCP).
pub(crate) fn server_config(slot: Arc<CertSlot>) -> Result<Arc<ServerConfig>, String> {
    let config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_cert_resolver(slot);
    Ok(Arc::new(config))
}

/// How one trunk's server certificate is checked.
#[derive(Debug)]
enum Trust {
    /// The chain to the system roots plus the trunk's CA file, and the name.
    Verify(Arc<WebPkiServerVerifier>),
    /// Nothing checked but the handshake signature (`tls_verify = false`).
    Unverified,
    /// No roots to check against: every certificate fails.
    Nothing,
}

/// The verifier of outbound TLS: by server name, each trunk's trust; any
/// other name (a Contact or Record-Route of a peer) the system roots.
#[derive(Debug)]
pub(crate) struct TrunkTrust {
    system: Vec<CertificateDer<'static>>,
    /// `None` when there are no system roots: only trunks with a CA file
    /// (or unverified) can connect then.
    default: Option<Arc<WebPkiServerVerifier>>,
    by_name: RwLock<HashMap<String, Arc<Trust>>>,
    provider: Arc<CryptoProvider>,
}

/// One trunk's wish, as the profiles say it.
#[derive(Debug, Clone)]
pub struct TrunkTls {
    /// The server names (hosts or IPs) of the trunk's registrar and proxy.
    pub hosts: Vec<String>,
    pub ca_file: Option<PathBuf>,
    pub verify: bool,
}

impl TrunkTrust {
    pub(crate) fn new() -> Arc<Self> {
        let system = match CertificateDer::pem_file_iter(SYSTEM_ROOTS) {
            Ok(certs) => certs.filter_map(Result::ok).collect(),
            Err(e) => {
                tracing::warn!(file = SYSTEM_ROOTS, error = %e, "no system TLS roots: only trunks' tls_ca_file are trusted");
                Vec::new()
            }
        };
        let provider = provider();
        let default = Self::verifier(&provider, &system, None).ok();
        Arc::new(Self {
            system,
            default,
            by_name: RwLock::default(),
            provider,
        })
    }

    fn verifier(
        provider: &Arc<CryptoProvider>,
        system: &[CertificateDer<'static>],
        extra: Option<&Path>,
    ) -> Result<Arc<WebPkiServerVerifier>, String> {
        let mut roots = RootCertStore::empty();
        let _ = roots.add_parsable_certificates(system.iter().cloned());
        if let Some(file) = extra {
            let certs = CertificateDer::pem_file_iter(file)
                .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                .map_err(|e| format!("{}: {e}", file.display()))?;
            for cert in certs {
                roots
                    .add(cert)
                    .map_err(|e| format!("{}: {e}", file.display()))?;
            }
        }
        if roots.is_empty() {
            return Err("no trusted TLS roots (system bundle missing, no tls_ca_file)".into());
        }
        WebPkiServerVerifier::builder_with_provider(Arc::new(roots), Arc::clone(provider))
            .build()
            .map_err(|e| e.to_string())
    }

    /// Replaces the trust of every trunk (at start and on SIGHUP). A trunk
    /// whose CA file cannot be read (profile loading checked it, but it
    /// may have changed since) fails verification, logged.
    pub fn set_trunks(&self, trunks: &[TrunkTls]) {
        let mut by_name = HashMap::new();
        for trunk in trunks {
            let trust = if trunk.verify {
                match Self::verifier(&self.provider, &self.system, trunk.ca_file.as_deref()) {
                    Ok(verifier) => Trust::Verify(verifier),
                    Err(e) => {
                        tracing::error!(hosts = ?trunk.hosts, error = %e, "trunk TLS trust unusable: its servers will fail verification");
                        Trust::Nothing
                    }
                }
            } else {
                Trust::Unverified
            };
            let trust = Arc::new(trust);
            for host in &trunk.hosts {
                by_name.insert(host.to_ascii_lowercase(), Arc::clone(&trust));
            }
        }
        *self.by_name.write().unwrap_or_else(|e| e.into_inner()) = by_name;
    }

    fn trust_for(&self, name: &ServerName<'_>) -> Option<Arc<Trust>> {
        let key = match name {
            ServerName::DnsName(dns) => dns.as_ref().to_ascii_lowercase(),
            ServerName::IpAddress(ip) => std::net::IpAddr::from(*ip).to_string(),
            _ => return None,
        };
        self.by_name
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
            .cloned()
    }
}

impl ServerCertVerifier for TrunkTrust {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self.trust_for(server_name).as_deref() {
            Some(Trust::Unverified) => {
                tracing::warn!(server = ?server_name, "TLS server certificate accepted WITHOUT verification (tls_verify = false)");
                Ok(ServerCertVerified::assertion())
            }
            Some(Trust::Verify(verifier)) => verifier.verify_server_cert(
                end_entity,
                intermediates,
                server_name,
                ocsp_response,
                now,
            ),
            None => match &self.default {
                Some(verifier) => verifier.verify_server_cert(
                    end_entity,
                    intermediates,
                    server_name,
                    ocsp_response,
                    now,
                ),
                None => Err(rustls::Error::InvalidCertificate(
                    rustls::CertificateError::UnknownIssuer,
                )),
            },
            Some(Trust::Nothing) => Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::UnknownIssuer,
            )),
        }
    }

    // The handshake signature is always checked, verified trunk or not: it
    // proves the peer holds the key of the certificate it sent.
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// The client side: every trunk's trust, and the client certificate when
/// `[sip] tls_client_cert_file` is set.
pub(crate) fn client_config(
    trust: Arc<TrunkTrust>,
    client_cert: Option<Arc<CertSlot>>,
) -> Result<Arc<ClientConfig>, String> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(trust);
    let config = match client_cert {
        Some(slot) => builder.with_client_cert_resolver(slot),
        None => builder.with_client_cert_resolver(Arc::new(NoClientCert)),
    };
    Ok(Arc::new(config))
}

/// Rewrites the transport of the top Via of each request in `messages`
/// (whole messages, as the relay forwards them) from `TCP` to `TLS`: ezk
/// sent them over its loopback TCP leg and says so, but the peer received
/// them over TLS, and RFC 3261 §18.1.1 / §20.42 want the Via to name the
/// transport actually used. Same length, so nothing else moves.
pub(crate) fn mark_via_tls(messages: &mut [u8], frame: impl Fn(&[u8]) -> Option<usize>) {
    let mut at = 0;
    while at < messages.len() {
        at += messages[at..]
            .iter()
            .take_while(|b| matches!(b, b'\r' | b'\n'))
            .count();
        let Some(len) = frame(&messages[at..]) else {
            return;
        };
        mark_one(&mut messages[at..at + len]);
        at += len;
    }
}

fn mark_one(message: &mut [u8]) {
    // Responses carry the peer's Via, untouched.
    if message.starts_with(b"SIP/") {
        return;
    }
    let head_end = message
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or(message.len());
    let mut line_start = 0;
    while line_start < head_end {
        let line_end = message[line_start..head_end]
            .windows(2)
            .position(|w| w == b"\r\n")
            .map_or(head_end, |p| line_start + p);
        let line = &message[line_start..line_end];
        if let Some(colon) = line.iter().position(|b| *b == b':') {
            let name = line[..colon].trim_ascii();
            if name.eq_ignore_ascii_case(b"via") || name.eq_ignore_ascii_case(b"v") {
                let value = &line[colon + 1..];
                if let Some(p) = value
                    .windows(11)
                    .position(|w| w.eq_ignore_ascii_case(b"SIP/2.0/TCP"))
                {
                    let start = line_start + colon + 1 + p + 8;
                    message[start..start + 3].copy_from_slice(b"TLS");
                }
                return;
            }
        }
        line_start = line_end + 2;
    }
}

#[cfg(test)]
mod tests {
    use super::mark_one;

    #[test]
    fn marks_the_top_via_of_requests_only() {
        let mut bye = b"BYE sip:a@b SIP/2.0\r\nVia: SIP/2.0/TCP 1.2.3.4:5061;branch=z9hG4bK1\r\nVia: SIP/2.0/TCP x\r\nl: 0\r\n\r\n".to_vec();
        mark_one(&mut bye);
        assert_eq!(
            bye,
            b"BYE sip:a@b SIP/2.0\r\nVia: SIP/2.0/TLS 1.2.3.4:5061;branch=z9hG4bK1\r\nVia: SIP/2.0/TCP x\r\nl: 0\r\n\r\n"
        );
        let mut compact = b"BYE sip:a@b SIP/2.0\r\nv: sip/2.0/tcp h\r\n\r\n".to_vec();
        mark_one(&mut compact);
        assert_eq!(compact, b"BYE sip:a@b SIP/2.0\r\nv: sip/2.0/TLS h\r\n\r\n");
        let response = b"SIP/2.0 200 OK\r\nVia: SIP/2.0/TCP h\r\n\r\n".to_vec();
        let mut same = response.clone();
        mark_one(&mut same);
        assert_eq!(same, response);
    }
}
