//! IPv6 end to end: the daemon listening on `[::1]`, SIPp on `::1` as the
//! caller and as the trunk's proxy, and the test's own RTP socket on
//! `[::1]` as the far end's media, so that audio is checked both ways:
//! the daemon's frames arrive from an IPv6 address, and the echo agent
//! sends back the tone the test sends it (the RTP latch pinned an IPv6
//! source). SDP says `c=IN IP6 ::1` and Via/Contact carry `[::1]` (the
//! SIPp scenarios check both). An IPv6 source no trunk allows is refused
//! like an IPv4 one.

// A test's unwrap, expect or panic is its failure report: the daemon's bans
// (Cargo.toml `[lints]`) do not apply here.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{Backend, TestDaemon, free_udp_port};
use serde_json::{Value, json};

const NUMBER: &str = "+14155552671";
const LIMIT: Duration = Duration::from_secs(20);

/// Fails loudly when the machine has no IPv6 loopback (never a silent
/// skip): `ip -6 addr add ::1/128 dev lo` in the test's network namespace.
fn require_ipv6_loopback() {
    assert!(
        std::net::UdpSocket::bind("[::1]:0").is_ok(),
        "no IPv6 loopback: run `ip -6 addr add ::1/128 dev lo` (or `sysctl net.ipv6.conf.lo.disable_ipv6=0`)"
    );
}

/// SIPp on `[::1]:local_port` for one call, killed after `limit`.
async fn sipp6(
    scenario: &str,
    local_port: u16,
    remote: Option<String>,
    extra: &[&str],
) -> common::SippRun {
    common::require_sipp();
    let mut command = tokio::process::Command::new("sipp");
    if let Some(remote) = remote {
        command.arg(remote);
    }
    command
        .args(["-sf", &common::scenario(scenario)])
        .args(["-i", "::1", "-p", &local_port.to_string()])
        .args(["-m", "1", "-nostdin", "-timeout"])
        .arg(format!("{}s", LIMIT.as_secs()))
        .arg("-timeout_error")
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let child = command.spawn().expect("spawn sipp");
    match tokio::time::timeout(LIMIT + Duration::from_secs(5), child.wait_with_output()).await {
        Ok(Ok(out)) => common::SippRun {
            success: out.status.success(),
            output: format!(
                "exit {:?}\n{}\n{}",
                out.status.code(),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        },
        Ok(Err(e)) => panic!("sipp failed to run: {e}"),
        Err(_) => common::SippRun {
            success: false,
            output: "sipp did not exit in time (killed)".to_owned(),
        },
    }
}

/// What the test's RTP socket saw.
#[derive(Debug, Default)]
struct Media {
    /// Packets from the daemon.
    received: usize,
    /// Of those, packets whose audio is loud (our tone echoed back).
    loud: usize,
    /// Where the daemon's RTP came from.
    source: Option<SocketAddr>,
    /// Packets we sent.
    sent: usize,
}

/// One 20 ms PCMU packet of a loud square wave (μ-law 0x80 and 0x00 are
/// the extremes; silence is 0xFF / 0x7F).
fn rtp_packet(seq: u16) -> Vec<u8> {
    let mut p = vec![0x80, 0x00];
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(&(u32::from(seq) * 160).to_be_bytes());
    p.extend_from_slice(&0x5157_0006_u32.to_be_bytes());
    p.extend((0..160).map(|i| if (i / 10) % 2 == 0 { 0x80 } else { 0x00 }));
    p
}

/// Whether a PCMU payload is far from silence.
fn loud(payload: &[u8]) -> bool {
    let big = payload.iter().filter(|b| (**b & 0x7F) < 0x30).count();
    big > payload.len() / 2
}

/// Symmetric RTP (RFC 4961) on `socket` for `time`: sends our tone to
/// `to` (the daemon's RTP address from its SDP) and then to wherever the
/// daemon's RTP comes from, and counts what comes back. The daemon sends
/// nothing before our media latches it.
async fn talk(socket: tokio::net::UdpSocket, to: SocketAddr, time: Duration) -> Media {
    let mut media = Media::default();
    let deadline = Instant::now() + time;
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    let mut buf = [0u8; 2048];
    let mut seq: u16 = 1;
    while Instant::now() < deadline {
        tokio::select! {
            got = socket.recv_from(&mut buf) => {
                let (n, from) = got.unwrap();
                if n > 12 && buf[0] >> 6 == 2 {
                    media.received += 1;
                    media.source = Some(from);
                    if loud(&buf[12..n]) {
                        media.loud += 1;
                    }
                }
            }
            _ = tick.tick() => {
                if let Some(to) = media.source.or(Some(to)) {
                    socket.send_to(&rtp_packet(seq), to).await.unwrap();
                    seq = seq.wrapping_add(1);
                    media.sent += 1;
                }
            }
        }
    }
    media
}

fn assert_media(media: &Media) {
    let source = media.source.expect("RTP from the daemon");
    assert!(source.is_ipv6() && source.ip().is_loopback(), "{media:?}");
    assert!(media.received > 50, "the daemon's frames: {media:?}");
    assert!(media.sent > 50, "{media:?}");
    assert!(media.loud > 20, "our tone echoed back over IPv6: {media:?}");
}

/// The daemon's RTP address for the newest call, from the SDP in its SIP
/// trace (`[sip] trace`): the `m=audio` port that is not `ours`.
async fn daemon_rtp(d: &TestDaemon, ours: u16) -> SocketAddr {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let page: Value = d
            .get("/v1/calls?limit=1")
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if let Some(id) = page["items"][0]["id"].as_str() {
            let trace = d
                .get(&format!("/v1/calls/{id}/sip-trace"))
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
            let port = trace
                .lines()
                .filter_map(|l| l.trim().strip_prefix("m=audio "))
                .filter_map(|l| l.split(' ').next()?.parse::<u16>().ok())
                .find(|p| *p != ours);
            if let Some(port) = port {
                return SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, port));
            }
        }
        assert!(Instant::now() < deadline, "no SDP of ours in the trace");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn wait_ended(d: &TestDaemon) -> Value {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let page: Value = d
            .get("/v1/calls?limit=1")
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if let Some(call) = page["items"].get(0)
            && call["ended_at"].is_string()
        {
            return call.clone();
        }
        assert!(Instant::now() < deadline, "no ended call: {page}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A daemon whose SIP listens on `[::1]` (UDP and TCP), and that port.
async fn daemon6(backend: Backend, profile: &str, env: &[(&str, &str)]) -> (TestDaemon, u16) {
    let port = common::free_sip_port();
    let mut b = TestDaemon::builder()
        .backend(backend)
        .profile("carrier", profile)
        .env("AGENTLINE_SIP__LISTEN", &format!("[::1]:{port}"))
        .env("AGENTLINE_SIP__TRACE", "true");
    for (k, v) in env {
        b = b.env(k, v);
    }
    (b.start().await, port)
}

async fn inbound_call_over_ipv6_with_media(backend: Backend) {
    inbound_call(backend, false).await;
}

async fn inbound_call_over_ipv6_tcp_with_media(backend: Backend) {
    inbound_call(backend, true).await;
}

/// SIPp calls the echo agent over `[::1]` (UDP, or TCP with `tcp`).
async fn inbound_call(backend: Backend, tcp: bool) {
    require_ipv6_loopback();
    let (d, sip) = daemon6(
        backend,
        "name = \"carrier\"\n[inbound]\nallow = [\"::1/128\"]\n",
        &[],
    )
    .await;
    d.provision_echo(NUMBER, "trk_carrier", 60).await;
    let rtp = tokio::net::UdpSocket::bind("[::1]:0").await.unwrap();
    let ours = rtp.local_addr().unwrap().port();
    let rtp_port = ours.to_string();
    let caller = tokio::spawn(async move {
        sipp6(
            "uac-invite-ipv6-keyed-rtp-expect-200-bye.xml",
            free_udp_port(),
            Some(format!("[::1]:{sip}")),
            &[
                "-s",
                NUMBER,
                "-key",
                "rtp_port",
                &rtp_port,
                "-d",
                "4000",
                "-t",
                if tcp { "t1" } else { "u1" },
            ],
        )
        .await
    });
    let to = daemon_rtp(&d, ours).await;
    let media = talk(rtp, to, Duration::from_secs(3)).await;
    let run = caller.await.unwrap();
    assert!(run.success, "{}", run.output);
    assert_media(&media);
    let call = wait_ended(&d).await;
    assert_eq!(call["direction"], "inbound");
    assert_eq!(call["status"], "completed", "{call}");
    assert_eq!(call["end_reason"], "caller_hangup");
    let trace = d
        .get(&format!(
            "/v1/calls/{}/sip-trace",
            call["id"].as_str().unwrap()
        ))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let transport = if tcp { "TCP" } else { "UDP" };
    assert!(trace.contains(transport), "over {transport}: {trace}");
    assert!(trace.contains("[::1]"), "{trace}");
}

async fn outbound_call_over_ipv6_with_media(backend: Backend) {
    require_ipv6_loopback();
    let proxy = free_udp_port();
    let (d, _) = daemon6(
        backend,
        &format!("name = \"carrier\"\n[outbound]\nproxy = \"[::1]:{proxy}\"\n"),
        &[],
    )
    .await;
    // The echo agent hangs up (BYE) after 4 s.
    d.provision_echo(NUMBER, "trk_carrier", 4).await;
    let rtp = tokio::net::UdpSocket::bind("[::1]:0").await.unwrap();
    let ours = rtp.local_addr().unwrap().port();
    let rtp_port = ours.to_string();
    let callee = tokio::spawn(async move {
        sipp6(
            "uas-invite-ipv6-keyed-rtp-expect-answer-then-bye.xml",
            proxy,
            None,
            &["-key", "rtp_port", &rtp_port],
        )
        .await
    });
    common::wait_for_udp_listener(proxy).await;
    let r = d
        .post("/v1/calls")
        .json(&json!({"from": NUMBER, "to": "+442079460958"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let to = daemon_rtp(&d, ours).await;
    let media = talk(rtp, to, Duration::from_millis(2500)).await;
    let run = callee.await.unwrap();
    assert!(run.success, "{}", run.output);
    assert_media(&media);
    let call = wait_ended(&d).await;
    assert_eq!(call["direction"], "outbound");
    assert_eq!(call["status"], "completed", "{call}");
    assert_eq!(call["end_reason"], "max_duration");
}

async fn an_ipv6_stranger_is_refused(backend: Backend) {
    require_ipv6_loopback();
    // Only an IPv4 network and another IPv6 host are allowed.
    let (d, sip) = daemon6(
        backend,
        "name = \"carrier\"\n[inbound]\nallow = [\"127.0.0.1/32\", \"2001:db8::/32\"]\n",
        &[("AGENTLINE_SIP__UNKNOWN_SOURCE", "reject")],
    )
    .await;
    d.provision_echo(NUMBER, "trk_carrier", 60).await;
    let run = sipp6(
        "uac-invite-expect-403.xml",
        free_udp_port(),
        Some(format!("[::1]:{sip}")),
        &["-s", NUMBER],
    )
    .await;
    assert!(run.success, "{}", run.output);
    let page: Value = d
        .get("/v1/calls")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        page["items"].as_array().unwrap().len(),
        0,
        "nothing recorded"
    );
}

/// A dual-stack listener (`[::]`): an IPv4 peer arrives as
/// ::ffff:127.0.0.1 and is still the 127.0.0.1 a trunk allows, while an
/// IPv6 peer that no trunk allows is refused on the same socket.
async fn a_dual_stack_listener_keeps_ipv4_allow_lists(backend: Backend) {
    require_ipv6_loopback();
    let port = common::free_sip_port();
    let d = TestDaemon::builder()
        .backend(backend)
        .profile(
            "carrier",
            "name = \"carrier\"\n[inbound]\nallow = [\"127.0.0.1/32\"]\n",
        )
        .env("AGENTLINE_SIP__LISTEN", &format!("[::]:{port}"))
        .env("AGENTLINE_SIP__PUBLIC_ADDRESS", "127.0.0.1")
        .env("AGENTLINE_SIP__UNKNOWN_SOURCE", "reject")
        .start()
        .await;
    d.provision_echo(NUMBER, "trk_carrier", 1).await;
    let v4 = common::run_sipp(
        "uac-invite-expect-bye-from-daemon.xml",
        free_udp_port(),
        Some(SocketAddr::from(([127, 0, 0, 1], port))),
        &["-s", NUMBER],
        LIMIT,
    )
    .await;
    assert!(v4.success, "the IPv4 trunk is allowed: {}", v4.output);
    let call = wait_ended(&d).await;
    assert_eq!(call["status"], "completed", "{call}");
    let v6 = sipp6(
        "uac-invite-expect-403.xml",
        free_udp_port(),
        Some(format!("[::1]:{port}")),
        &["-s", NUMBER],
    )
    .await;
    assert!(v6.success, "the IPv6 stranger is refused: {}", v6.output);
}

both_backends!(
    inbound_call_over_ipv6_with_media,
    inbound_call_over_ipv6_tcp_with_media,
    outbound_call_over_ipv6_with_media,
    an_ipv6_stranger_is_refused,
    a_dual_stack_listener_keeps_ipv4_allow_lists,
);
