//! SRTP with SDES keys end to end (issue 19 item 2), over plain SIP (UDP)
//! and over SIP over TLS, as carriers do it with RTP/SAVP:
//! - baresip with mandatory SRTP (its `srtp-mand` media encryption) calls
//!   the echo agent: the tone comes back in what it records, and a tshark
//!   capture of the call's RTP ports holds no plain G.711: every packet
//!   carries an authentication tag and no tone is found in the payloads;
//!   the same over SIP over TLS, where the capture holds no plain SIP
//!   either.
//! - A trunk with `srtp = "mandatory"` refuses a plain offer from SIPp with
//!   488.
//! - A caller of our own, keyed through SDP, streams SRTP in each suite and
//!   hears it echoed; tampered, forged, plain and replayed packets injected
//!   into the call from its own socket are counted in
//!   `agentline_srtp_auth_failures_total` and dropped, and the echo goes on.

// A test's unwrap, expect or panic is its failure report: the daemon's bans
// (Cargo.toml `[lints]`) do not apply here.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::f64::consts::PI;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agentline::media::Codec;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use common::{Capture, TestDaemon, free_port, free_port_run, run_sipp};
use rand::RngCore as _;
use rtp_rs::{RtpPacketBuilder, RtpReader, Seq};
use tokio::net::UdpSocket;
use webrtc_srtp::context::Context;
use webrtc_srtp::protection_profile::ProtectionProfile;

const NUMBER: &str = "+14155552671";
const TONE_HZ: f64 = 1000.0;
const INJECTED_HZ: f64 = 2500.0;

fn profile(srtp: &str) -> String {
    format!("name = \"local\"\n[inbound]\nallow = [\"127.0.0.1/32\"]\n[media]\nsrtp = \"{srtp}\"\n")
}

/// Share of the power of `samples` at `hz` (Goertzel), 1 for a pure tone.
fn power_share(samples: &[i16], hz: f64) -> f64 {
    let coeff = 2.0 * (2.0 * PI * hz / 8000.0).cos();
    let (mut s1, mut s2, mut total) = (0.0f64, 0.0f64, 0.0f64);
    for &x in samples {
        let x = f64::from(x);
        total += x * x;
        let s0 = x + coeff * s1 - s2;
        s2 = s1;
        s1 = s0;
    }
    let power = s1 * s1 + s2 * s2 - coeff * s1 * s2;
    2.0 * power / (samples.len() as f64 * total.max(1.0))
}

fn pcmu_tone(hz: f64, frame: u16) -> Vec<u8> {
    let start = usize::from(frame) * 160;
    let samples: Vec<i16> = (start..start + 160)
        .map(|n| (8000.0 * (2.0 * PI * hz * n as f64 / 8000.0).sin()) as i16)
        .collect();
    let mut payload = Vec::new();
    Codec::Pcmu.encode_into(&samples, &mut payload);
    payload
}

fn pcmu_decode(payload: &[u8]) -> Vec<i16> {
    let mut samples = Vec::new();
    Codec::Pcmu.decode_into(payload, &mut samples);
    samples
}

/// The sum of the samples of metric `name` whose labels hold `label`.
async fn metric_sum(d: &TestDaemon, name: &str, label: &str) -> u64 {
    d.metrics()
        .await
        .lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) && l.contains(label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

#[tokio::test]
async fn a_mandatory_trunk_refuses_a_plain_offer_with_488() {
    let d = TestDaemon::builder()
        .profile("local", &profile("mandatory"))
        .start()
        .await;
    d.provision_echo(NUMBER, "trk_local", 30).await;
    let sip = Some(SocketAddr::from(([127, 0, 0, 1], d.sip_port)));
    let run = run_sipp(
        "uac-invite-plain-rtp-expect-488.xml",
        common::free_sip_port(),
        sip,
        &["-s", NUMBER],
        Duration::from_secs(20),
    )
    .await;
    assert!(run.success, "{}\n{}", run.output, d.log());
    assert!(
        d.log().contains("SRTP is required"),
        "the refusal says why:\n{}",
        d.log()
    );
}

// ---------------------------------------------------------------------------
// A caller of our own: SIP over UDP by hand, SRTP with webrtc-srtp.

/// A one-call SIP UAC on loopback, enough for INVITE, ACK and BYE.
struct Caller {
    sip: UdpSocket,
    daemon: SocketAddr,
    call_id: String,
    from_tag: String,
    to: String,
    contact: String,
}

fn token() -> String {
    format!("{:016x}", rand::rng().next_u64())
}

fn header<'a>(message: &'a str, name: &str) -> Option<&'a str> {
    message.lines().find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

impl Caller {
    /// INVITEs `NUMBER` with `sdp`; returns the 200's SDP and ACKs it, or
    /// the final status when it is not 200.
    async fn call(daemon: SocketAddr, sdp: &str) -> Result<(Caller, String), u16> {
        let sip = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let me = sip.local_addr().unwrap();
        let call_id = format!("{}@srtp-test", token());
        let from_tag = token();
        let invite = format!(
            "INVITE sip:{NUMBER}@{daemon} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bK{b};rport\r\n\
             Max-Forwards: 70\r\nFrom: <sip:+15550001@{me}>;tag={from_tag}\r\nTo: <sip:{NUMBER}@{daemon}>\r\n\
             Call-ID: {call_id}\r\nCSeq: 1 INVITE\r\nContact: <sip:caller@{me}>\r\n\
             Content-Type: application/sdp\r\nContent-Length: {len}\r\n\r\n{sdp}",
            b = token(),
            len = sdp.len(),
        );
        sip.send_to(invite.as_bytes(), daemon).await.unwrap();
        let mut buf = vec![0u8; 8192];
        let response = loop {
            let (n, _) = tokio::time::timeout(Duration::from_secs(15), sip.recv_from(&mut buf))
                .await
                .expect("a response to the INVITE")
                .unwrap();
            let text = String::from_utf8_lossy(&buf[..n]).to_string();
            let code: u16 = text
                .split(' ')
                .nth(1)
                .and_then(|c| c.parse().ok())
                .unwrap_or(0);
            if code >= 200 {
                break (code, text);
            }
        };
        let (code, text) = response;
        let to = header(&text, "To").unwrap().to_string();
        let mut caller = Caller {
            sip,
            daemon,
            call_id,
            from_tag,
            to,
            contact: format!("sip:{NUMBER}@{daemon}"),
        };
        if code != 200 {
            return Err(code);
        }
        if let Some(contact) = header(&text, "Contact")
            && let Some(uri) = contact
                .split_once('<')
                .and_then(|(_, r)| r.split_once('>'))
                .map(|(u, _)| u.to_string())
        {
            caller.contact = uri;
        }
        caller.ack().await;
        let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string());
        Ok((caller, body.unwrap_or_default()))
    }

    /// The ACK of the 200 (RFC 3261 §13.2.2.4), to its Contact.
    async fn ack(&self) {
        let me = self.sip.local_addr().unwrap();
        let message = format!(
            "ACK {uri} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bK{b};rport\r\n\
             Max-Forwards: 70\r\nFrom: <sip:+15550001@{me}>;tag={tag}\r\nTo: {to}\r\n\
             Call-ID: {id}\r\nCSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n",
            uri = self.contact,
            b = token(),
            tag = self.from_tag,
            to = self.to,
            id = self.call_id,
        );
        self.sip
            .send_to(message.as_bytes(), self.daemon)
            .await
            .unwrap();
    }

    /// BYE, and its 200.
    async fn hang_up(&self) {
        let me = self.sip.local_addr().unwrap();
        let message = format!(
            "BYE {uri} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bK{b};rport\r\n\
             Max-Forwards: 70\r\nFrom: <sip:+15550001@{me}>;tag={tag}\r\nTo: {to}\r\n\
             Call-ID: {id}\r\nCSeq: 2 BYE\r\nContent-Length: 0\r\n\r\n",
            uri = self.contact,
            b = token(),
            tag = self.from_tag,
            to = self.to,
            id = self.call_id,
        );
        self.sip
            .send_to(message.as_bytes(), self.daemon)
            .await
            .unwrap();
        let mut buf = vec![0u8; 8192];
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let (n, _) = tokio::time::timeout_at(deadline, self.sip.recv_from(&mut buf))
                .await
                .expect("a 200 to the BYE")
                .unwrap();
            let text = String::from_utf8_lossy(&buf[..n]);
            if text.starts_with("SIP/2.0 200") && text.contains("BYE") {
                return;
            }
        }
    }
}

fn profile_of(suite: &str) -> ProtectionProfile {
    match suite {
        "AES_CM_128_HMAC_SHA1_80" => ProtectionProfile::Aes128CmHmacSha1_80,
        "AES_CM_128_HMAC_SHA1_32" => ProtectionProfile::Aes128CmHmacSha1_32,
        "AEAD_AES_128_GCM" => ProtectionProfile::AeadAes128Gcm,
        "AEAD_AES_256_GCM" => ProtectionProfile::AeadAes256Gcm,
        other => panic!("suite {other}"),
    }
}

fn context(profile: ProtectionProfile, inline: &[u8]) -> Context {
    let (key, salt) = inline.split_at(profile.key_len());
    Context::new(key, salt, profile, None, None).unwrap()
}

fn random_inline(profile: ProtectionProfile) -> Vec<u8> {
    let mut key = vec![0u8; profile.key_len() + profile.salt_len()];
    rand::rng().fill_bytes(&mut key);
    key
}

/// The port of the first `m=audio` and the key of its `a=crypto` with `tag`.
fn answer_media(sdp: &str, suite: &str) -> (u16, Vec<u8>) {
    let port = sdp
        .lines()
        .find_map(|l| l.strip_prefix("m=audio "))
        .and_then(|l| l.split(' ').next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no m=audio in {sdp}"));
    assert!(sdp.contains("RTP/SAVP"), "the answer keeps RTP/SAVP: {sdp}");
    let line = sdp
        .lines()
        .find_map(|l| l.strip_prefix("a=crypto:1 "))
        .unwrap_or_else(|| panic!("no a=crypto:1 in {sdp}"));
    let (answered_suite, key) = line.split_once(" inline:").unwrap();
    assert_eq!(answered_suite, suite, "{sdp}");
    let key = key.split(['|', ' ']).next().unwrap();
    (port, STANDARD.decode(key).unwrap())
}

fn rtp(ssrc: u32, frame: u16, payload: &[u8]) -> Vec<u8> {
    RtpPacketBuilder::new()
        .payload_type(0)
        .ssrc(ssrc)
        .sequence(Seq::from(frame.wrapping_add(3000)))
        .timestamp(u32::from(frame) * 160 + 8000)
        .marked(frame == 0)
        .payload(payload)
        .build()
        .unwrap()
}

/// What one SRTP call counted on its caller's side.
struct Echo {
    /// Decoded 20 ms frames of the echo, in arrival order.
    frames: Vec<Vec<i16>>,
    /// Frames of the echo that arrived after the last injection.
    after_injection: usize,
    /// Datagrams from the daemon that did not unprotect.
    undecryptable: usize,
}

/// Calls the echo agent offering `suite` only, streams `frames` of tone
/// over SRTP and collects the echo. With `inject`, from frame 40 on, every
/// 4th frame comes with a tampered copy, plain RTP, a forged packet and a
/// replay; returns the echo and the counts injected (auth, replay).
async fn srtp_echo_call(
    d: &TestDaemon,
    suite: &str,
    frames: u16,
    inject: bool,
) -> (Echo, [usize; 2]) {
    let profile = profile_of(suite);
    let ours = random_inline(profile);
    let media = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let media_port = media.local_addr().unwrap().port();
    let sdp = format!(
        "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
         m=audio {media_port} RTP/SAVP 0\r\na=rtpmap:0 PCMU/8000\r\n\
         a=crypto:1 {suite} inline:{}\r\na=ptime:20\r\n",
        STANDARD.encode(&ours)
    );
    let daemon = SocketAddr::from(([127, 0, 0, 1], d.sip_port));
    let (caller, answer) = Caller::call(daemon, &sdp)
        .await
        .unwrap_or_else(|code| panic!("{suite}: the INVITE got {code}\n{}", d.log()));
    let (port, theirs) = answer_media(&answer, suite);
    let to = SocketAddr::from(([127, 0, 0, 1], port));
    let media = Arc::new(media);

    let received: Arc<Mutex<(Vec<Vec<i16>>, usize)>> = Arc::default();
    let sink = Arc::clone(&received);
    let socket = Arc::clone(&media);
    let receiver = tokio::spawn(async move {
        let mut inbound = context(profile, &theirs);
        let mut buf = [0u8; 2048];
        while let Ok((n, _)) = socket.recv_from(&mut buf).await {
            let mut got = sink.lock().unwrap();
            match inbound.decrypt_rtp(&buf[..n]) {
                Ok(plain) => {
                    let payload = RtpReader::new(&plain).unwrap().payload().to_vec();
                    got.0.push(pcmu_decode(&payload));
                }
                Err(_) => got.1 += 1,
            }
        }
    });

    let mut outbound = context(profile, &ours);
    let mut stranger = context(profile, &random_inline(profile));
    let mut sent: Vec<Vec<u8>> = Vec::new();
    let mut injected = [0usize; 2];
    let mut echoed_at_last_injection = 0;
    let mut ticker = tokio::time::interval(Duration::from_millis(20));
    for frame in 0..frames {
        ticker.tick().await;
        let packet = outbound
            .encrypt_rtp(&rtp(0x5EC0_0001, frame, &pcmu_tone(TONE_HZ, frame)))
            .unwrap();
        let injecting = inject && frame >= 40 && frame % 4 == 0 && frame + 40 < frames;
        if injecting {
            // Tampered: one bit of the encrypted payload flipped, sent
            // before the genuine packet (after it, it would be a replay).
            let mut tampered = packet.to_vec();
            tampered[20] ^= 0x01;
            media.send_to(&tampered, to).await.unwrap();
            injected[0] += 1;
        }
        media.send_to(&packet, to).await.unwrap();
        sent.push(packet.to_vec());
        if injecting {
            // Plain RTP of another tone, numbered ahead.
            let plain = rtp(0x5EC0_0001, frame + 1000, &pcmu_tone(INJECTED_HZ, frame));
            // Forged: the right SSRC and numbers, keyed by a stranger.
            let forged = stranger
                .encrypt_rtp(&rtp(0x5EC0_0001, frame + 2, &pcmu_tone(INJECTED_HZ, frame)))
                .unwrap();
            // Replayed: a packet of ours that already arrived.
            let replayed = sent[usize::from(frame) - 10].clone();
            for bad in [&plain[..], &forged[..]] {
                media.send_to(bad, to).await.unwrap();
                injected[0] += 1;
            }
            media.send_to(&replayed, to).await.unwrap();
            injected[1] += 1;
            echoed_at_last_injection = received.lock().unwrap().0.len();
        }
    }
    // The echo's tail.
    tokio::time::sleep(Duration::from_millis(500)).await;
    receiver.abort();
    caller.hang_up().await;
    let (frames, undecryptable) = received.lock().unwrap().clone();
    let after_injection = frames.len().saturating_sub(echoed_at_last_injection);
    (
        Echo {
            frames,
            after_injection,
            undecryptable,
        },
        injected,
    )
}

/// Mean share of `hz` over the echo's audible frames.
fn echo_share(frames: &[Vec<i16>], hz: f64) -> (f64, usize) {
    let audible: Vec<f64> = frames
        .iter()
        .filter(|f| f.iter().any(|&x| x.abs() > 500))
        .map(|f| power_share(f, hz))
        .collect();
    let n = audible.len();
    (audible.iter().sum::<f64>() / n.max(1) as f64, n)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_suite_carries_the_echo_and_injected_packets_are_counted_and_dropped() {
    let d = TestDaemon::builder()
        .profile("local", &profile("mandatory"))
        .start()
        .await;
    d.provision_echo(NUMBER, "trk_local", 60).await;

    for suite in [
        "AES_CM_128_HMAC_SHA1_32",
        "AEAD_AES_128_GCM",
        "AEAD_AES_256_GCM",
    ] {
        let (echo, _) = srtp_echo_call(&d, suite, 60, false).await;
        let (share, audible) = echo_share(&echo.frames, TONE_HZ);
        assert!(
            audible >= 20 && share > 0.8,
            "{suite}: echo {audible} frames, share {share}\n{}",
            d.log()
        );
        assert_eq!(echo.undecryptable, 0, "{suite}");
    }
    assert_eq!(
        metric_sum(&d, "agentline_srtp_auth_failures_total", "reason").await,
        0,
        "clean calls drop nothing"
    );

    let (echo, [bad, replays]) = srtp_echo_call(&d, "AES_CM_128_HMAC_SHA1_80", 200, true).await;
    let (share, audible) = echo_share(&echo.frames, TONE_HZ);
    let (injected_share, _) = echo_share(&echo.frames, INJECTED_HZ);
    assert!(
        audible >= 120 && share > 0.8,
        "the echo went on: {audible} frames, share {share}\n{}",
        d.log()
    );
    assert!(
        injected_share < 0.05,
        "nothing injected was played: {injected_share}"
    );
    assert!(
        echo.after_injection >= 20,
        "echo after the last injection: {}",
        echo.after_injection
    );
    assert_eq!(echo.undecryptable, 0);
    common::wait_until(Duration::from_secs(5), "the drops counted", || async {
        metric_sum(&d, "agentline_srtp_auth_failures_total", "reason=\"auth\"").await == bad as u64
            && metric_sum(
                &d,
                "agentline_srtp_auth_failures_total",
                "reason=\"replay\"",
            )
            .await
                == replays as u64
    })
    .await;
    assert!(bad >= 60 && replays >= 20);
}

// ---------------------------------------------------------------------------
// baresip with mandatory SRTP, over UDP or TLS, and a capture of the wire.

/// baresip with its `srtp` module and `mediaenc=srtp-mand` (RTP/SAVP and
/// `a=crypto`, SRTP required) calls the echo agent, over TLS when `tls`
/// (trusting the test CA), plays a tone and records what it hears: the
/// tone comes back. A tshark capture of the daemon's SIP and RTP ports
/// shows SRTP only: every RTP packet carries an authentication tag and no
/// payload holds the tone in clear; over TLS, the SIP port carries TLS
/// records and not one plain SIP message.
async fn baresip_srtp_echo(tls: bool) {
    let dir = tempfile::tempdir().unwrap();
    let daemon_rtp = free_port_run(4);
    let tls_port = free_port();
    let certs = tls.then(|| common::make_certs(dir.path(), "daemon"));
    let mut daemon = TestDaemon::builder()
        .profile("local", &profile("mandatory"))
        .env(
            "AGENTLINE_SIP__RTP_PORTS",
            &format!("{daemon_rtp}-{}", daemon_rtp + 3),
        );
    if let Some(certs) = &certs {
        daemon = daemon.sip(&common::tls_keys(tls_port, certs));
    }
    let d = daemon.start().await;
    d.provision_echo(NUMBER, "trk_local", 30).await;
    let tone = dir.path().join("tone.wav");
    common::write_tone_wav(&tone, 8000, TONE_HZ, 500, 4000);

    let capture = Capture::start_filter(
        &dir.path().join("call.pcapng"),
        &format!(
            "udp portrange {daemon_rtp}-{} or port {} or port {tls_port}",
            daemon_rtp + 3,
            d.sip_port
        ),
    );
    let how = common::Baresip {
        tls_ca: certs.as_ref().map(|c| c.ca.as_path()),
        mediaenc: Some("srtp-mand"),
        ..common::Baresip::default()
    };
    let dialled = if tls { tls_port } else { d.sip_port };
    let common::BaresipCall { log, heard } =
        common::baresip_call_with(dir.path(), &tone, NUMBER, dialled, 8, &how).await;
    let pcap = capture.stop();

    let heard = heard.unwrap_or_else(|| panic!("baresip recorded nothing:\n{log}\n{}", d.log()));
    let (rate, samples) = common::read_wav(&heard);
    let echoed = common::strongest_window(&samples, rate, TONE_HZ);
    assert!(
        echoed > 0.3,
        "the tone came back through SRTP: {echoed}\n{log}\n{}",
        d.log()
    );
    assert_srtp_only(&common::udp_packets(&pcap), daemon_rtp..daemon_rtp + 4);
    if tls {
        let decode = format!("tcp.port=={tls_port},tls");
        let records = common::tshark_count(&pcap, &decode, "tls.app_data");
        assert!(records >= 4, "TLS application data records: {records}");
        assert_eq!(
            common::tshark_count(&pcap, &decode, "sip"),
            0,
            "no plain SIP on the daemon's ports"
        );
        let raw = std::fs::read(&pcap).unwrap();
        for needle in [&b"SIP/2.0"[..], b"INVITE sip:", NUMBER.as_bytes()] {
            assert!(
                !raw.windows(needle.len()).any(|w| w == needle),
                "{:?} in clear in the capture",
                String::from_utf8_lossy(needle)
            );
        }
    }
}

/// The RTP both ways on the daemon's `media` ports in `packets` is SRTP:
/// at least 100 packets each way, each 160 bytes of payload and an
/// authentication tag, and no payload that decodes as the tone in G.711.
fn assert_srtp_only(packets: &[(u16, u16, Vec<u8>)], media: std::ops::Range<u16>) {
    let from_daemon: Vec<&Vec<u8>> = packets
        .iter()
        .filter(|(s, _, _)| media.contains(s))
        .map(|(_, _, p)| p)
        .collect();
    let to_daemon: Vec<&Vec<u8>> = packets
        .iter()
        .filter(|(_, d, _)| media.contains(d))
        .map(|(_, _, p)| p)
        .collect();
    assert!(
        from_daemon.len() >= 100 && to_daemon.len() >= 100,
        "captured {} from the daemon, {} to it",
        from_daemon.len(),
        to_daemon.len()
    );
    for (side, packets) in [("daemon", &from_daemon), ("baresip", &to_daemon)] {
        let mut tone_frames = 0;
        for p in packets.iter().filter(|p| p.len() >= 12 && p[0] >> 6 == 2) {
            let rtp = RtpReader::new(p).unwrap();
            if rtp.payload_type() != 0 {
                continue;
            }
            // 160 bytes of G.711 and an authentication tag: 4, 10 or 16.
            let tag = rtp.payload().len() as i64 - 160;
            assert!(
                [4, 10, 16].contains(&tag),
                "{side}: an RTP packet of {} payload bytes, no SRTP tag",
                rtp.payload().len()
            );
            let as_g711 = pcmu_decode(&rtp.payload()[..160]);
            if power_share(&as_g711, TONE_HZ) > 0.3 {
                tone_frames += 1;
            }
        }
        assert!(
            tone_frames <= 2,
            "{side}: {tone_frames} packets carry the tone in clear"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn baresip_with_mandatory_srtp_hears_its_echo_and_the_wire_has_no_plain_rtp() {
    baresip_srtp_echo(false).await;
}

/// Issue 19's first acceptance line: TLS and mandatory SRTP together.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn baresip_over_tls_with_mandatory_srtp_hears_its_echo_and_the_wire_has_no_plain_sip_or_rtp()
{
    baresip_srtp_echo(true).await;
}
