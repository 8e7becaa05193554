//! SRTP (RFC 3711) for one call's RTP, keyed by SDES (RFC 4568 `a=crypto`).
//!
//! Owns: the trunk's SRTP policy ([`SrtpMode`]), the crypto suites we speak
//! ([`Suite`]), our master keys and what the far end's `a=crypto` lines
//! offer or answer ([`Sdes`], used by [`super::sdp`]), and the
//! protect/unprotect step of the media path ([`SrtpStream`], used by
//! [`super::session`]).
//!
//! Must not: implement any cipher, read the network, or end a call. A packet
//! that fails authentication or replays one already seen is counted
//! (`agentline_srtp_auth_failures_total{reason}`) and dropped; the call goes
//! on (FreeSWITCH CVE-2021-41105, where a bad packet tore the call down, is
//! the counter-example).
//!
//! The transforms are `webrtc-srtp` (webrtc-rs): a maintained pure-Rust SRTP
//! on the RustCrypto `aes`, `ctr`, `hmac`, `sha1` and `aes-gcm` crates, which
//! str0m already brings into the build, with the four suites we need,
//! per-SSRC rollover counting (RFC 3711 §3.3.1) and a replay window (§3.3.2).
//! libsrtp2 through bindings would add a system library to every build and
//! an `unsafe` boundary for the same work. Its gaps we work around here:
//! - It keeps a state for every SSRC it is shown, authenticated or not, so a
//!   stranger spraying SSRCs would grow it without bound. We give each SSRC
//!   its own context and keep one only after a packet of it authenticated,
//!   at most [`MAX_INBOUND_SSRCS`] of them.
//! - It has no MKI (RFC 3711 §3.1): `a=crypto` lines with one are skipped.
//!
//! Choices:
//! - Keys come from `rand::rng()`, a CSPRNG (ChaCha12) seeded and reseeded
//!   from the operating system. A key never appears in a log: [`MasterKey`]
//!   prints redacted.
//! - We offer AES_CM_128_HMAC_SHA1_80 first (every SDES peer has it,
//!   RFC 4568 §6.2.1), then _32, then AEAD_AES_128_GCM and AEAD_AES_256_GCM
//!   (RFC 7714 §12); answering, we take the first line of the offer we can
//!   use (the offerer's preference), AES_256_CM (RFC 6188) included.
//! - `optional` offers RTP/AVP with `a=crypto` lines (best-effort SRTP, as
//!   FreeSWITCH and baresip's `srtp` do) and answers either; `mandatory`
//!   offers RTP/SAVP and refuses a stream without a usable line (488).
//!   Whichever profile the offer names, the answer keeps it (RFC 3264 §6).
//! - Session parameters (RFC 4568 §6.3: UNENCRYPTED_SRTP, KDR, FEC...) change
//!   what protection means; a line carrying any is not used. The key
//!   lifetime is not enforced: the stream never nears 2^31 packets of a call.
//! - We send no RTCP (see [`super::session`]), so there is no SRTCP to
//!   protect; the far end's RTCP goes to a port nobody reads.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::{DecodePaddingMode, general_purpose};
use bytes::Bytes;
use ezk_sdp_types::{
    MediaDescription, SrtpCrypto, SrtpKeyingMaterial, SrtpSuite, TransportProtocol,
};
use rand::RngCore as _;
use webrtc_srtp::context::Context;
use webrtc_srtp::option::srtp_replay_protection;
use webrtc_srtp::protection_profile::ProtectionProfile;

use crate::metrics::SRTP_AUTH_FAILURES_TOTAL;

/// SSRCs of the far end we keep a context for (a stream restarted after a
/// re-INVITE, a transfer behind an SBC); the oldest goes first.
pub const MAX_INBOUND_SSRCS: usize = 4;
/// Packets behind the newest that may still arrive once (RFC 3711 §3.3.2
/// asks at least 64; libsrtp keeps 128).
const REPLAY_WINDOW: usize = 128;

/// The trunk's SRTP policy (`[media] srtp`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SrtpMode {
    /// Plain RTP only; `RTP/SAVP` streams are refused.
    #[default]
    Off,
    /// Either; SRTP whenever the far end can.
    Optional,
    /// SRTP or nothing: a plain offer or answer is refused (488).
    Mandatory,
}

/// A crypto suite we can run (RFC 4568 §6.2, RFC 6188, RFC 7714 §12).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Suite {
    AesCm128HmacSha1_80,
    AesCm128HmacSha1_32,
    AesCm256HmacSha1_80,
    AesCm256HmacSha1_32,
    AeadAes128Gcm,
    AeadAes256Gcm,
}

impl Suite {
    /// What we offer, in our order of preference.
    pub const OFFERED: [Suite; 4] = [
        Suite::AesCm128HmacSha1_80,
        Suite::AesCm128HmacSha1_32,
        Suite::AeadAes128Gcm,
        Suite::AeadAes256Gcm,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Suite::AesCm128HmacSha1_80 => "AES_CM_128_HMAC_SHA1_80",
            Suite::AesCm128HmacSha1_32 => "AES_CM_128_HMAC_SHA1_32",
            Suite::AesCm256HmacSha1_80 => "AES_256_CM_HMAC_SHA1_80",
            Suite::AesCm256HmacSha1_32 => "AES_256_CM_HMAC_SHA1_32",
            Suite::AeadAes128Gcm => "AEAD_AES_128_GCM",
            Suite::AeadAes256Gcm => "AEAD_AES_256_GCM",
        }
    }

    fn from_sdp(suite: &SrtpSuite) -> Option<Suite> {
        Some(match suite {
            SrtpSuite::AES_CM_128_HMAC_SHA1_80 => Suite::AesCm128HmacSha1_80,
            SrtpSuite::AES_CM_128_HMAC_SHA1_32 => Suite::AesCm128HmacSha1_32,
            SrtpSuite::AES_256_CM_HMAC_SHA1_80 => Suite::AesCm256HmacSha1_80,
            SrtpSuite::AES_256_CM_HMAC_SHA1_32 => Suite::AesCm256HmacSha1_32,
            SrtpSuite::AEAD_AES_128_GCM => Suite::AeadAes128Gcm,
            SrtpSuite::AEAD_AES_256_GCM => Suite::AeadAes256Gcm,
            _ => return None,
        })
    }

    fn to_sdp(self) -> SrtpSuite {
        match self {
            Suite::AesCm128HmacSha1_80 => SrtpSuite::AES_CM_128_HMAC_SHA1_80,
            Suite::AesCm128HmacSha1_32 => SrtpSuite::AES_CM_128_HMAC_SHA1_32,
            Suite::AesCm256HmacSha1_80 => SrtpSuite::AES_256_CM_HMAC_SHA1_80,
            Suite::AesCm256HmacSha1_32 => SrtpSuite::AES_256_CM_HMAC_SHA1_32,
            Suite::AeadAes128Gcm => SrtpSuite::AEAD_AES_128_GCM,
            Suite::AeadAes256Gcm => SrtpSuite::AEAD_AES_256_GCM,
        }
    }

    fn profile(self) -> ProtectionProfile {
        match self {
            Suite::AesCm128HmacSha1_80 => ProtectionProfile::Aes128CmHmacSha1_80,
            Suite::AesCm128HmacSha1_32 => ProtectionProfile::Aes128CmHmacSha1_32,
            Suite::AesCm256HmacSha1_80 => ProtectionProfile::Aes256CmHmacSha1_80,
            Suite::AesCm256HmacSha1_32 => ProtectionProfile::Aes256CmHmacSha1_32,
            Suite::AeadAes128Gcm => ProtectionProfile::AeadAes128Gcm,
            Suite::AeadAes256Gcm => ProtectionProfile::AeadAes256Gcm,
        }
    }

    /// Master key length.
    fn key_len(self) -> usize {
        self.profile().key_len()
    }

    /// Bytes of the inline key: master key then master salt (RFC 4568
    /// §6.1; RFC 7714 §12 for the 12-byte GCM salt).
    fn inline_len(self) -> usize {
        self.profile().key_len() + self.profile().salt_len()
    }
}

/// A master key and salt, concatenated as `inline:` carries them. Never
/// printed.
#[derive(Clone, PartialEq, Eq)]
pub struct MasterKey(Vec<u8>);

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MasterKey(<redacted>)")
    }
}

/// Peers pad their base64 or not; both decode.
const LENIENT_BASE64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

impl MasterKey {
    fn random(suite: Suite) -> MasterKey {
        let mut bytes = vec![0u8; suite.inline_len()];
        rand::rng().fill_bytes(&mut bytes);
        MasterKey(bytes)
    }

    fn decode(suite: Suite, text: &str) -> Option<MasterKey> {
        let bytes = LENIENT_BASE64.decode(text).ok()?;
        (bytes.len() == suite.inline_len()).then_some(MasterKey(bytes))
    }

    fn encode(&self) -> String {
        general_purpose::STANDARD.encode(&self.0)
    }

    /// A context for one direction of `suite`.
    fn context(&self, suite: Suite) -> Result<Context, SrtpError> {
        let (key, salt) = self.0.split_at(suite.key_len().min(self.0.len()));
        Context::new(
            key,
            salt,
            suite.profile(),
            Some(srtp_replay_protection(REPLAY_WINDOW)),
            None,
        )
        .map_err(|e| SrtpError::Context(e.to_string()))
    }
}

/// The SRTP of a negotiated stream: the suite and both directions' keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SrtpParams {
    pub suite: Suite,
    /// Ours: what we protect with.
    pub local: MasterKey,
    /// Theirs: what we unprotect with.
    pub remote: MasterKey,
}

/// Why a stream's SRTP cannot run or a packet cannot go.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum SrtpError {
    #[error("SRTP context: {0}")]
    Context(String),
    #[error("SRTP protect: {0}")]
    Protect(String),
}

/// What the far end's usable `a=crypto` line says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct RemoteCrypto {
    pub tag: u32,
    pub suite: Suite,
    pub key: MasterKey,
}

/// Whether a stream with `proto` may be used under `mode`: plain RTP only
/// when off, RTP/AVP or RTP/SAVP otherwise (the crypto lines decide).
pub(super) fn transport_usable(proto: &TransportProtocol, mode: SrtpMode) -> bool {
    match mode {
        SrtpMode::Off => *proto == TransportProtocol::RtpAvp,
        SrtpMode::Optional | SrtpMode::Mandatory => {
            matches!(
                proto,
                TransportProtocol::RtpAvp | TransportProtocol::RtpSavp
            )
        }
    }
}

/// Why a stream's crypto lines do not do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum CryptoRefusal {
    /// A plain stream where the trunk requires SRTP.
    Required,
    /// RTP/SAVP, or SRTP required, and no line we can use.
    NoUsableLine,
}

/// The crypto line of `media` to use, if any, under `mode` (RFC 4568 §7.1.1:
/// the first one we support, in the offer's order).
pub(super) fn pick(
    media: &MediaDescription,
    mode: SrtpMode,
) -> Result<Option<RemoteCrypto>, CryptoRefusal> {
    if mode == SrtpMode::Off {
        // A best-effort line on RTP/AVP is ignored: plain RTP.
        return Ok(None);
    }
    let usable = media.crypto.iter().find_map(usable_line);
    let secure = media.media.proto == TransportProtocol::RtpSavp;
    match (usable, secure, mode) {
        (Some(line), _, _) => Ok(Some(line)),
        (None, true, _) => Err(CryptoRefusal::NoUsableLine),
        (None, false, SrtpMode::Mandatory) if media.crypto.is_empty() => {
            Err(CryptoRefusal::Required)
        }
        (None, false, SrtpMode::Mandatory) => Err(CryptoRefusal::NoUsableLine),
        (None, false, _) => Ok(None),
    }
}

/// One line, if we can run it: a suite we have, one key without MKI, of the
/// suite's length, and no session parameter.
fn usable_line(line: &SrtpCrypto) -> Option<RemoteCrypto> {
    let suite = Suite::from_sdp(&line.suite)?;
    let [key] = line.keys.as_slice() else {
        return None;
    };
    if key.mki.is_some() || !line.params.is_empty() {
        return None;
    }
    Some(RemoteCrypto {
        tag: line.tag,
        suite,
        key: MasterKey::decode(suite, &key.key_and_salt)?,
    })
}

fn crypto_line(tag: u32, suite: Suite, key: &MasterKey) -> SrtpCrypto {
    SrtpCrypto {
        tag,
        suite: suite.to_sdp(),
        keys: vec![SrtpKeyingMaterial {
            key_and_salt: key.encode().into(),
            lifetime: None,
            mki: None,
        }],
        params: Vec::new(),
    }
}

/// Our SDES keys for one call, kept across re-INVITEs so that the same
/// offer or answer is the same description (RFC 3264 §8).
#[derive(Debug, Clone, Default)]
pub(super) struct Sdes {
    /// Our offer's lines: tag, suite and our key, made at the first offer.
    offered: Vec<(u32, Suite, MasterKey)>,
    /// The key we answered with, and its suite.
    answered: Option<(Suite, MasterKey)>,
}

impl Sdes {
    /// Makes `media` our offer under `mode`: RTP/SAVP when SRTP is
    /// mandatory, and a line per suite we offer unless SRTP is off.
    pub fn offer(&mut self, media: &mut MediaDescription, mode: SrtpMode) {
        if mode == SrtpMode::Off {
            return;
        }
        if mode == SrtpMode::Mandatory {
            media.media.proto = TransportProtocol::RtpSavp;
        }
        if self.offered.is_empty() {
            self.offered = (1u32..)
                .zip(Suite::OFFERED)
                .map(|(tag, suite)| (tag, suite, MasterKey::random(suite)))
                .collect();
        }
        media.crypto = self
            .offered
            .iter()
            .map(|(tag, suite, key)| crypto_line(*tag, *suite, key))
            .collect();
    }

    /// Our line answering `remote` (RFC 4568 §7.1.2: same tag and suite, our
    /// own key), and the stream's parameters.
    pub fn answer(&mut self, media: &mut MediaDescription, remote: &RemoteCrypto) -> SrtpParams {
        let local = match &self.answered {
            Some((suite, key)) if *suite == remote.suite => key.clone(),
            _ => MasterKey::random(remote.suite),
        };
        self.answered = Some((remote.suite, local.clone()));
        media.crypto = vec![crypto_line(remote.tag, remote.suite, &local)];
        SrtpParams {
            suite: remote.suite,
            local,
            remote: remote.key.clone(),
        }
    }

    /// The stream's parameters from the answer to our offer: its line must
    /// name one of our tags with the same suite (RFC 4568 §7.1.3).
    pub fn accept(&self, remote: &RemoteCrypto) -> Option<SrtpParams> {
        self.offered
            .iter()
            .find(|(tag, suite, _)| *tag == remote.tag && *suite == remote.suite)
            .map(|(_, suite, key)| SrtpParams {
                suite: *suite,
                local: key.clone(),
                remote: remote.key.clone(),
            })
    }
}

/// Why an inbound packet was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dropped {
    /// Too short, or its tag does not verify: forged, damaged, or plain RTP.
    Auth,
    /// Already received, or older than the replay window (RFC 3711 §3.3.2).
    Replay,
}

/// The protect and unprotect state of one running stream.
pub struct SrtpStream {
    params: SrtpParams,
    outbound: Context,
    /// By SSRC, the oldest first; only SSRCs that authenticated.
    inbound: Vec<(u32, Context)>,
    auth_failures: metrics::Counter,
    replays: metrics::Counter,
}

impl fmt::Debug for SrtpStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SrtpStream")
            .field("suite", &self.params.suite)
            .field("inbound_ssrcs", &self.inbound.len())
            .finish()
    }
}

impl SrtpStream {
    pub fn new(params: &SrtpParams) -> Result<SrtpStream, SrtpError> {
        // Checked now, so that no packet can fail on it later.
        params.remote.context(params.suite)?;
        Ok(SrtpStream {
            outbound: params.local.context(params.suite)?,
            inbound: Vec::with_capacity(MAX_INBOUND_SSRCS),
            params: params.clone(),
            auth_failures: metrics::counter!(SRTP_AUTH_FAILURES_TOTAL, "reason" => "auth"),
            replays: metrics::counter!(SRTP_AUTH_FAILURES_TOTAL, "reason" => "replay"),
        })
    }

    pub fn params(&self) -> &SrtpParams {
        &self.params
    }

    /// An RTP packet made SRTP (RFC 3711 §3.3).
    pub fn protect(&mut self, rtp: &[u8]) -> Result<Bytes, SrtpError> {
        self.outbound
            .encrypt_rtp(rtp)
            .map_err(|e| SrtpError::Protect(e.to_string()))
    }

    /// The RTP packet inside an SRTP one (RFC 3711 §3.4), or why it was
    /// dropped; each drop is counted.
    pub fn unprotect(&mut self, srtp: &[u8]) -> Result<Bytes, Dropped> {
        let result = self.unprotect_uncounted(srtp);
        match result {
            Err(Dropped::Auth) => self.auth_failures.increment(1),
            Err(Dropped::Replay) => self.replays.increment(1),
            Ok(_) => {}
        }
        result
    }

    fn unprotect_uncounted(&mut self, srtp: &[u8]) -> Result<Bytes, Dropped> {
        let Some(ssrc) = srtp
            .get(8..12)
            .and_then(|b| <[u8; 4]>::try_from(b).ok())
            .map(u32::from_be_bytes)
        else {
            return Err(Dropped::Auth);
        };
        if let Some((_, context)) = self.inbound.iter_mut().find(|(s, _)| *s == ssrc) {
            return context.decrypt_rtp(srtp).map_err(dropped);
        }
        // A new SSRC is tried on a fresh context, kept only if it verified.
        let mut context = self
            .params
            .remote
            .context(self.params.suite)
            .map_err(|_| Dropped::Auth)?;
        let plain = context.decrypt_rtp(srtp).map_err(dropped)?;
        if self.inbound.len() >= MAX_INBOUND_SSRCS {
            self.inbound.remove(0);
        }
        self.inbound.push((ssrc, context));
        Ok(plain)
    }
}

fn dropped(error: webrtc_srtp::Error) -> Dropped {
    match error {
        webrtc_srtp::Error::SrtpSsrcDuplicated(..) => Dropped::Replay,
        _ => Dropped::Auth,
    }
}

/// `text` with every `a=crypto` key lifetime `2^N` above 2^31 lowered to
/// 2^31: `ezk-sdp-types` 0.6.1 computes `2u32.pow(N)`, which overflows (a
/// panic in debug builds) for the legal 2^48 (RFC 3711 §9.2) and for any
/// hostile exponent. We do not enforce the lifetime, so the value is moot.
pub(super) fn clamp_lifetimes(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.contains("2^") {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("2^") {
        let (before, after) = rest.split_at(at);
        out.push_str(before);
        let digits = after[2..].bytes().take_while(u8::is_ascii_digit).count();
        let exponent = &after[2..2 + digits];
        let small = exponent.len() <= 2 && exponent.parse::<u32>().is_ok_and(|n| n <= 31);
        if small || digits == 0 {
            out.push_str(&after[..2 + digits]);
        } else {
            out.push_str("2^31");
        }
        rest = &after[2 + digits..];
    }
    out.push_str(rest);
    std::borrow::Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtp_rs::{RtpPacketBuilder, RtpReader, Seq};

    fn rtp(ssrc: u32, seq: u16, payload: &[u8]) -> Vec<u8> {
        RtpPacketBuilder::new()
            .payload_type(0)
            .ssrc(ssrc)
            .sequence(Seq::from(seq))
            .timestamp(u32::from(seq) * 160)
            .payload(payload)
            .build()
            .unwrap()
    }

    /// Two ends of one stream: `a` protects with what `b` unprotects.
    fn pair(suite: Suite) -> (SrtpStream, SrtpStream) {
        let a_key = MasterKey::random(suite);
        let b_key = MasterKey::random(suite);
        let a = SrtpParams {
            suite,
            local: a_key.clone(),
            remote: b_key.clone(),
        };
        let b = SrtpParams {
            suite,
            local: b_key,
            remote: a_key,
        };
        (SrtpStream::new(&a).unwrap(), SrtpStream::new(&b).unwrap())
    }

    #[test]
    fn every_suite_round_trips_and_hides_the_payload() {
        let suites = [
            (Suite::AesCm128HmacSha1_80, 10),
            (Suite::AesCm128HmacSha1_32, 4),
            (Suite::AesCm256HmacSha1_80, 10),
            (Suite::AesCm256HmacSha1_32, 4),
            (Suite::AeadAes128Gcm, 16),
            (Suite::AeadAes256Gcm, 16),
        ];
        for (suite, tag_len) in suites {
            let (mut a, mut b) = pair(suite);
            let payload = [0x55u8; 160];
            for seq in 0..20u16 {
                let plain = rtp(7, seq, &payload);
                let protected = a.protect(&plain).unwrap();
                assert_eq!(protected.len(), plain.len() + tag_len, "{suite:?}");
                assert_eq!(protected[..12], plain[..12], "the header stays clear");
                assert!(!protected[12..].windows(16).any(|w| w == [0x55; 16]));
                let back = b.unprotect(&protected).unwrap();
                assert_eq!(back[..], plain[..], "{suite:?}");
            }
        }
    }

    #[test]
    fn tampered_forged_replayed_and_plain_packets_are_dropped_and_the_stream_goes_on() {
        let (mut a, mut b) = pair(Suite::AesCm128HmacSha1_80);
        let first = a.protect(&rtp(7, 1, &[1; 160])).unwrap();
        b.unprotect(&first).unwrap();
        let mut tampered = a.protect(&rtp(7, 2, &[2; 160])).unwrap().to_vec();
        tampered[20] ^= 1;
        assert_eq!(b.unprotect(&tampered), Err(Dropped::Auth));
        assert_eq!(b.unprotect(&first), Err(Dropped::Replay));
        assert_eq!(b.unprotect(&rtp(7, 3, &[3; 160])), Err(Dropped::Auth));
        assert_eq!(b.unprotect(&[0x80, 0]), Err(Dropped::Auth));
        // Keyed by someone else: fails however it is dressed.
        let (mut stranger, _) = pair(Suite::AesCm128HmacSha1_80);
        let forged = stranger.protect(&rtp(7, 4, &[4; 160])).unwrap();
        assert_eq!(b.unprotect(&forged), Err(Dropped::Auth));
        // The genuine stream is still read after all of that.
        let next = a.protect(&rtp(7, 5, &[5; 160])).unwrap();
        let plain = b.unprotect(&next).unwrap();
        assert_eq!(RtpReader::new(&plain).unwrap().payload(), &[5; 160]);
    }

    #[test]
    fn sprayed_ssrcs_keep_no_state_and_real_ones_are_bounded() {
        let (mut a, mut b) = pair(Suite::AeadAes128Gcm);
        for ssrc in 0..1000 {
            let _ = b.unprotect(&rtp(ssrc, 1, &[0; 160]));
        }
        assert!(b.inbound.is_empty());
        for ssrc in 0..10 {
            let p = a.protect(&rtp(100 + ssrc, 1, &[0; 160])).unwrap();
            b.unprotect(&p).unwrap();
        }
        assert_eq!(b.inbound.len(), MAX_INBOUND_SSRCS);
        assert_eq!(b.inbound.last().map(|(s, _)| *s), Some(109));
    }

    #[test]
    fn keys_are_random_the_right_length_and_never_printed() {
        let a = MasterKey::random(Suite::AesCm128HmacSha1_80);
        let b = MasterKey::random(Suite::AesCm128HmacSha1_80);
        assert_ne!(a, b);
        assert_eq!(a.0.len(), 30);
        assert_eq!(MasterKey::random(Suite::AeadAes256Gcm).0.len(), 44);
        let text = a.encode();
        assert_eq!(
            MasterKey::decode(Suite::AesCm128HmacSha1_80, &text),
            Some(a.clone())
        );
        assert_eq!(
            MasterKey::decode(Suite::AesCm128HmacSha1_80, text.trim_end_matches('=')),
            Some(a.clone())
        );
        assert_eq!(MasterKey::decode(Suite::AeadAes128Gcm, &text), None);
        let params = SrtpParams {
            suite: Suite::AesCm128HmacSha1_80,
            local: a.clone(),
            remote: b,
        };
        assert!(!format!("{params:?}").contains(&text));
        assert!(!format!("{:?}", SrtpStream::new(&params).unwrap()).contains(&text));
    }

    #[test]
    fn huge_lifetimes_are_clamped_before_the_parser_sees_them() {
        let line = "a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:abc|2^48\r\n";
        assert_eq!(
            clamp_lifetimes(line),
            "a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:abc|2^31\r\n"
        );
        let fine = "inline:abc|2^20 2^ 2^031 2^99999999999999";
        assert_eq!(clamp_lifetimes(fine), "inline:abc|2^20 2^ 2^31 2^31");
    }
}
