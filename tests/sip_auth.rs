//! Inbound digest authentication (`[inbound] auth`) end to end: the real
//! daemon with a trunk that allows no address but takes a PBX that proves
//! its password; SIPp as that PBX, sipvicious `svcrack` as the attacker.

// A test's unwrap, expect or panic is its failure report: the daemon's bans
// (Cargo.toml `[lints]`) do not apply here.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::{Duration, Instant};

use common::{TestDaemon, free_udp_port, run_sipp};
use serde_json::Value;
use tokio::net::UdpSocket;

const LIMIT: Duration = Duration::from_secs(20);
const NUMBER: &str = "+14155552671";
const PASSWORD: &str = "s3cret-Pbx";

/// A daemon whose only trunk allows no source address and asks for
/// digest credentials (user `pbx`, realm `agentline-test`), with the
/// number on an echo agent.
async fn auth_daemon() -> TestDaemon {
    let d = TestDaemon::builder()
        .profile(
            "pbx",
            "name = \"pbx\"\n[inbound]\nauth = { username = \"pbx\", password_env = \"PBX_PASSWORD\", realm = \"agentline-test\" }\n",
        )
        .env("PBX_PASSWORD", PASSWORD)
        .env("AGENTLINE_SIP__UNKNOWN_SOURCE", "drop")
        .start()
        .await;
    d.provision_echo(NUMBER, "trk_pbx", 60).await;
    d
}

async fn call_in(d: &TestDaemon, scenario: &str, password: &str) -> common::SippRun {
    run_sipp(
        scenario,
        free_udp_port(),
        Some(([127, 0, 0, 1], d.sip_port).into()),
        &["-s", NUMBER, "-au", "pbx", "-ap", password, "-d", "500"],
        LIMIT,
    )
    .await
}

async fn calls(d: &TestDaemon) -> Vec<Value> {
    let page: Value = d
        .get("/v1/calls")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    page["items"].as_array().cloned().unwrap_or_default()
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
async fn right_credentials_are_answered_after_a_401() {
    let d = auth_daemon().await;
    let run = call_in(&d, "uac-invite-auth-expect-401-then-200-bye.xml", PASSWORD).await;
    assert!(run.success, "{}\n{}", run.output, d.log());

    let deadline = Instant::now() + Duration::from_secs(15);
    let call = loop {
        if let Some(call) = calls(&d).await.into_iter().next()
            && !call["ended_at"].is_null()
        {
            break call;
        }
        assert!(Instant::now() < deadline, "no ended call\n{}", d.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(call["trunk_id"], "trk_pbx", "{call}");
    assert_eq!(call["status"], "completed", "{call}");
}

#[tokio::test]
async fn a_wrong_password_is_challenged_again_and_no_call_is_made() {
    let d = auth_daemon().await;
    let run = call_in(&d, "uac-invite-auth-wrong-password-expect-401.xml", "guess").await;
    assert!(run.success, "{}\n{}", run.output, d.log());
    assert!(calls(&d).await.is_empty(), "a call was recorded");
    assert_eq!(
        metric_sum(
            &d,
            "agentline_sip_requests_rejected_total",
            "reason=\"auth_failed\""
        )
        .await,
        1
    );
}

/// The first status other than 100 answering `call_id`, within 5 s.
async fn answer(socket: &UdpSocket, call_id: &str) -> (u16, String) {
    let mut buf = vec![0u8; 65536];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let (len, _) = tokio::time::timeout_at(deadline, socket.recv_from(&mut buf))
            .await
            .expect("an answer within 5 s")
            .expect("recv");
        let text = String::from_utf8_lossy(&buf[..len]).into_owned();
        let code = text
            .strip_prefix("SIP/2.0 ")
            .and_then(|rest| rest.get(..3))
            .and_then(|c| c.parse::<u16>().ok());
        if text.contains(&format!("Call-ID: {call_id}")) && !matches!(code, Some(100) | None) {
            return (code.unwrap_or_default(), text);
        }
    }
}

fn md5_hex(s: &str) -> String {
    use md5::Digest as _;
    hex::encode(md5::Md5::digest(s.as_bytes()))
}

/// An INVITE sent twice with the very same credentials (nonce, nonce
/// count, cnonce, response), as a listener on the path could: the first
/// rings, the copy is challenged again and counted as a failure.
#[tokio::test]
async fn a_replayed_nonce_is_refused() {
    let d = auth_daemon().await;
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let local = socket.local_addr().unwrap();
    let target = std::net::SocketAddr::from(([127, 0, 0, 1], d.sip_port));
    let uri = format!("sip:{NUMBER}@{target}");
    let invite = |call_id: &str, cseq: u32, auth: &str| {
        format!(
            "INVITE {uri} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bK{call_id}{cseq}\r\nFrom: <sip:pbx@{local}>;tag={call_id}\r\nTo: <{uri}>\r\nCall-ID: {call_id}\r\nCSeq: {cseq} INVITE\r\nContact: <sip:pbx@{local}>\r\nMax-Forwards: 70\r\nUser-Agent: test-pbx\r\nAllow: INVITE, ACK, CANCEL, BYE, OPTIONS\r\n{auth}Content-Length: 0\r\n\r\n"
        )
    };

    let first = invite("replay1", 1, "");
    socket.send_to(first.as_bytes(), target).await.unwrap();
    let (code, challenge) = answer(&socket, "replay1").await;
    assert_eq!(code, 401, "{challenge}");
    assert!(
        challenge.len() <= first.len(),
        "the 401 ({} bytes) is larger than the INVITE ({} bytes)",
        challenge.len(),
        first.len()
    );
    let nonce = challenge
        .split("nonce=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("a nonce in the challenge");
    let ha1 = md5_hex(&format!("pbx:agentline-test:{PASSWORD}"));
    let ha2 = md5_hex(&format!("INVITE:{uri}"));
    let response = md5_hex(&format!("{ha1}:{nonce}:00000001:c0ffee:auth:{ha2}"));
    let auth = format!(
        "Authorization: Digest username=\"pbx\", realm=\"agentline-test\", nonce=\"{nonce}\", uri=\"{uri}\", response=\"{response}\", algorithm=MD5, qop=auth, nc=00000001, cnonce=\"c0ffee\"\r\n"
    );

    socket
        .send_to(invite("replay1", 2, &auth).as_bytes(), target)
        .await
        .unwrap();
    let (code, text) = answer(&socket, "replay1").await;
    assert!(matches!(code, 180 | 200), "{text}\n{}", d.log());

    socket
        .send_to(invite("replay2", 1, &auth).as_bytes(), target)
        .await
        .unwrap();
    let (code, text) = answer(&socket, "replay2").await;
    assert_eq!(code, 401, "{text}");
    assert!(d.log().contains("replayed nonce"), "{}", d.log());
    assert_eq!(
        metric_sum(
            &d,
            "agentline_sip_requests_rejected_total",
            "reason=\"auth_failed\""
        )
        .await,
        1
    );
}

/// No amplifier: a stranger's request smaller than the 401 it would draw
/// (a spoofed source's favourite) gets nothing back.
#[tokio::test]
async fn a_request_smaller_than_its_challenge_gets_nothing() {
    let d = auth_daemon().await;
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let local = socket.local_addr().unwrap();
    let target = std::net::SocketAddr::from(([127, 0, 0, 1], d.sip_port));
    let tiny = format!(
        "REGISTER sip:{target} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bKtiny\r\nFrom: <sip:a@b>;tag=1\r\nTo: <sip:a@b>\r\nCall-ID: tiny\r\nCSeq: 1 REGISTER\r\n\r\n"
    );
    socket.send_to(tiny.as_bytes(), target).await.unwrap();
    let mut buf = [0u8; 2048];
    let got = tokio::time::timeout(Duration::from_secs(2), socket.recv_from(&mut buf)).await;
    assert!(got.is_err(), "a {}-byte request drew an answer", tiny.len());
    assert_eq!(
        metric_sum(
            &d,
            "agentline_sip_requests_rejected_total",
            "reason=\"auth_undersized\""
        )
        .await,
        1
    );
}

/// A trunk with `[inbound] auth` opens the door to calls only: a
/// stranger's OPTIONS (a scanner's first probe) still gets silence.
#[tokio::test]
async fn a_stranger_options_gets_nothing() {
    let d = auth_daemon().await;
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let local = socket.local_addr().unwrap();
    let target = std::net::SocketAddr::from(([127, 0, 0, 1], d.sip_port));
    let options = format!(
        "OPTIONS sip:{target} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bKscan\r\nFrom: <sip:100@{local}>;tag=1\r\nTo: <sip:100@{target}>\r\nCall-ID: scan\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nUser-Agent: friendly-scanner\r\nAccept: application/sdp\r\nContent-Length: 0\r\n\r\n"
    );
    socket.send_to(options.as_bytes(), target).await.unwrap();
    let mut buf = [0u8; 2048];
    let got = tokio::time::timeout(Duration::from_secs(2), socket.recv_from(&mut buf)).await;
    assert!(got.is_err(), "a stranger's OPTIONS was answered");
}

/// sipvicious' password cracker: challenged, refused, and silenced after
/// a few wrong guesses; the guesses after the ban get no answer at all.
#[tokio::test]
async fn svcrack_is_banned_after_a_few_attempts() {
    assert!(
        std::process::Command::new("svcrack")
            .arg("--version")
            .output()
            .is_ok(),
        "svcrack not installed (Debian sipvicious, see scripts/test)"
    );
    let d = auth_daemon().await;
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new("svcrack")
            .args(["-u", "pbx", "-r", "1-300", "-b", "127.0.0.1"])
            .args(["-P", &free_udp_port().to_string()])
            .args(["-p", &d.sip_port.to_string(), "--maximumtime=3"])
            .arg("127.0.0.1")
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("svcrack finished within a minute")
    .expect("run svcrack");
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!text.contains(PASSWORD), "{text}");

    let failed = metric_sum(
        &d,
        "agentline_sip_requests_rejected_total",
        "reason=\"auth_failed\"",
    )
    .await;
    let banned = metric_sum(
        &d,
        "agentline_sip_requests_rejected_total",
        "reason=\"auth_banned\"",
    )
    .await;
    // svcrack names itself (friendly-scanner): the edge drops and bans it
    // at its first request, before the digest layer counts a failure.
    let scanner = metric_sum(
        &d,
        "agentline_sip_requests_rejected_total",
        "reason=\"scanner\"",
    )
    .await;
    let edge_banned = metric_sum(
        &d,
        "agentline_sip_requests_rejected_total",
        "reason=\"banned\"",
    )
    .await;
    println!(
        "svcrack: {failed} failures counted, {scanner} dropped as a scanner, then {banned} + {edge_banned} requests dropped by the ban"
    );
    assert!(
        failed <= 5 && (failed >= 1 || scanner >= 1),
        "{failed} failures counted\n{text}\n{}",
        d.log()
    );
    // Banned by the digest layer (later requests dropped), or by the edge
    // at the first one (svcrack then gives up on the silence).
    assert!(
        banned + edge_banned > 0 || scanner >= 1,
        "nothing dropped after the ban\n{text}\n{}",
        d.log()
    );
    assert!(d.log().contains("source banned"), "{}", d.log());
    assert!(calls(&d).await.is_empty());
}

/// A source let through only to the challenge is a stranger at the flood
/// guard until it authenticated: a burst of INVITEs without credentials
/// draws at most the stranger burst (10) of 401s, then its source is
/// banned, where the trunk limits (a burst of 2,000) would answer them all.
#[tokio::test]
async fn a_source_that_may_authenticate_has_the_stranger_limits() {
    let d = auth_daemon().await;
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let local = socket.local_addr().unwrap();
    let target = std::net::SocketAddr::from(([127, 0, 0, 1], d.sip_port));
    // Large enough that its 401 is never larger (the challenge is not sent
    // otherwise).
    let pad = "x".repeat(300);
    let invite = |n: usize| {
        format!(
            "INVITE sip:{NUMBER}@{target} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bKburst{n};rport\r\n\
             From: <sip:pbx@{local}>;tag=b{n}\r\nTo: <sip:{NUMBER}@{target}>\r\nCall-ID: burst-{n}\r\n\
             CSeq: 1 INVITE\r\nContact: <sip:pbx@{local}>\r\nMax-Forwards: 70\r\n\
             Subject: {pad}\r\nContent-Length: 0\r\n\r\n"
        )
    };
    // Every 401 that comes within 2 s of the last one.
    async fn challenges(socket: &UdpSocket) -> usize {
        let mut got = 0;
        let mut buf = [0u8; 4096];
        while let Ok(Ok((n, _))) =
            tokio::time::timeout(Duration::from_secs(2), socket.recv_from(&mut buf)).await
        {
            if buf[..n].starts_with(b"SIP/2.0 401") {
                got += 1;
            }
        }
        got
    }
    // Within the stranger burst: every one challenged.
    for n in 0..8 {
        socket.send_to(invite(n).as_bytes(), target).await.unwrap();
    }
    assert_eq!(challenges(&socket).await, 8, "{}", d.log());
    // Beyond it: banned, the rest unanswered.
    for n in 8..30 {
        socket.send_to(invite(n).as_bytes(), target).await.unwrap();
    }
    let more = challenges(&socket).await;
    // The bucket refilled at 5/s meanwhile, but never beyond its burst.
    assert!(more <= 10, "{more} more challenges past the burst");
    assert_eq!(
        metric_sum(&d, "agentline_sip_requests_rejected_total", "rate_limited").await,
        1
    );
    assert!(d.log().contains("SIP source banned"), "{}", d.log());
}
