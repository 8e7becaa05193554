//! The SIP edge as a stranger sees it: a real daemon whose one trunk allows
//! 127.0.0.1/32, probed from other loopback addresses (127.0.0.2 and up),
//! which no trunk allows. Counts every datagram and byte that comes back.

// A test's unwrap, expect or panic is its failure report: the daemon's bans
// (Cargo.toml `[lints]`) do not apply here.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{TestDaemon, free_udp_port, run_sipp};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

const NUMBER: &str = "+14155552671";
const LIMIT: Duration = Duration::from_secs(30);
/// Long enough for every UDP retransmission of a final response to go out
/// (T1 = 500 ms doubling: 0.5, 1.5, 3.5 s after the first).
const RETRANSMIT_WINDOW: Duration = Duration::from_secs(4);

fn trunk() -> String {
    "name = \"carrier\"\n[inbound]\nallow = [\"127.0.0.1/32\"]\n[limits]\nmax_calls = 50\ncps = 1000\n"
        .to_owned()
}

async fn daemon(config: &str, env: &[(&str, &str)]) -> TestDaemon {
    let mut builder = TestDaemon::builder()
        .profile("carrier", &trunk())
        .config(config);
    for (key, value) in env {
        builder = builder.env(key, value);
    }
    let d = builder.start().await;
    d.provision_echo(NUMBER, "trk_carrier", 60).await;
    d
}

fn sip_addr(d: &TestDaemon) -> SocketAddr {
    ([127, 0, 0, 1], d.sip_port).into()
}

fn request(
    method: &str,
    user: &str,
    to_tag: bool,
    call_id: &str,
    local: SocketAddr,
    target: SocketAddr,
) -> String {
    let tag = if to_tag { ";tag=peer1" } else { "" };
    format!(
        "{method} sip:{user}@{target} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bK{call_id};rport\r\n\
         From: <sip:+15550001@{local}>;tag=1\r\nTo: <sip:{user}@{target}>{tag}\r\nCall-ID: {call_id}\r\n\
         CSeq: 1 {method}\r\nContact: <sip:+15550001@{local}>\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
    )
}

/// Sends OPTIONS from the trunk's address and waits for its 200: the daemon
/// has read everything sent before it.
async fn control_probe(target: SocketAddr) {
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let local = socket.local_addr().unwrap();
    let options = request("OPTIONS", "ping", false, "control", local, target);
    socket.send_to(options.as_bytes(), target).await.unwrap();
    let mut buf = [0u8; 4096];
    let (n, _) = tokio::time::timeout(Duration::from_secs(5), socket.recv_from(&mut buf))
        .await
        .expect("the trunk's OPTIONS answered")
        .unwrap();
    let text = String::from_utf8_lossy(&buf[..n]).to_lowercase();
    assert!(
        !text.contains("\r\nserver:") && !text.contains("\r\nuser-agent:"),
        "a version announced: {text}"
    );
    assert!(
        buf[..n].starts_with(b"SIP/2.0 200"),
        "{}",
        String::from_utf8_lossy(&buf[..n])
    );
}

/// Every datagram that reaches `socket` within `window`.
async fn drain(socket: &UdpSocket, window: Duration) -> Vec<Vec<u8>> {
    let deadline = tokio::time::Instant::now() + window;
    let mut got = Vec::new();
    let mut buf = vec![0u8; 65536];
    while let Ok(Ok((n, _))) = tokio::time::timeout_at(deadline, socket.recv_from(&mut buf)).await {
        got.push(buf[..n].to_vec());
    }
    got
}

/// One spoofed INVITE per case (with and without a To tag, to our number and
/// to one we do not have) from 127.0.0.2; returns what came back per case
/// and the bytes sent.
async fn stranger_probes(d: &TestDaemon) -> (Vec<(String, usize)>, usize, usize) {
    let target = sip_addr(d);
    let socket = UdpSocket::bind("127.0.0.2:0").await.unwrap();
    let local = socket.local_addr().unwrap();
    let mut sent = 0;
    let mut cases = Vec::new();
    for (n, (user, tagged)) in [
        (NUMBER, false),
        (NUMBER, true),
        ("+19995550000", false),
        ("+19995550000", true),
    ]
    .into_iter()
    .enumerate()
    {
        let call_id = format!("probe{n}");
        let invite = request("INVITE", user, tagged, &call_id, local, target);
        sent += invite.len();
        socket.send_to(invite.as_bytes(), target).await.unwrap();
        cases.push(call_id);
    }
    control_probe(target).await;
    let got = drain(&socket, RETRANSMIT_WINDOW).await;
    let received: usize = got.iter().map(Vec::len).sum();
    let per_case = cases
        .into_iter()
        .map(|call_id| {
            let needle = format!("Call-ID: {call_id}\r\n");
            let n = got
                .iter()
                .filter(|r| String::from_utf8_lossy(r).contains(&needle))
                .count();
            (call_id, n)
        })
        .collect();
    for response in &got {
        let text = String::from_utf8_lossy(response);
        assert!(
            !text.starts_with("SIP/2.0 100"),
            "a stranger got 100 Trying: {text}"
        );
        // The status line only: "481" may stand in a Via port or a tag.
        assert!(
            !text.starts_with("SIP/2.0 481"),
            "a stranger got 481: {text}"
        );
    }
    (per_case, sent, received)
}

#[tokio::test]
async fn a_spoofed_invite_from_a_stranger_draws_nothing_by_default() {
    let d = daemon("", &[]).await;
    let (per_case, _, received) = stranger_probes(&d).await;
    assert!(per_case.iter().all(|(_, n)| *n == 0), "{per_case:?}");
    assert_eq!(received, 0);
    let metrics = d.metrics().await;
    assert!(
        metrics.contains("agentline_sip_requests_rejected_total{reason=\"not_admitted\"} 4"),
        "{metrics}"
    );
}

#[tokio::test]
async fn in_reject_mode_a_stranger_gets_one_answer_never_larger_than_its_request() {
    let d = daemon("", &[("AGENTLINE_SIP__UNKNOWN_SOURCE", "reject")]).await;
    let (per_case, sent, received) = stranger_probes(&d).await;
    assert!(per_case.iter().all(|(_, n)| *n == 1), "{per_case:?}");
    assert!(
        received <= sent,
        "amplification: {received} bytes back for {sent} sent"
    );
}

fn rss_mb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap();
    kb / 1024
}

fn metric(text: &str, name_and_labels: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name_and_labels))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The shape of the flood acceptance test (issue 14): strangers, INVITEs a
/// second in all, seconds, media calls from the trunk.
struct FloodShape {
    strangers: u8,
    rate: usize,
    seconds: usize,
    calls: usize,
}

/// The full shape (10,000 INVITEs a second for 10 s from 20 stranger
/// addresses, 50 G.711 calls) runs where `CI` is set; a developer's run
/// is smaller, same assertions.
fn flood_shape() -> FloodShape {
    if std::env::var_os("CI").is_some() {
        FloodShape {
            strangers: 20,
            rate: 10_000,
            seconds: 10,
            calls: 50,
        }
    } else {
        FloodShape {
            strangers: 4,
            rate: 10_000,
            seconds: 2,
            calls: 5,
        }
    }
}

/// Sends `rate` INVITEs a second for `seconds`, spread over `strangers`
/// source addresses (127.0.0.10 and up), paced by a 10 ms tick that makes
/// up for late ticks. Returns how long it took.
async fn flood_from_many(shape: &FloodShape, target: SocketAddr) -> Duration {
    let mut sockets = Vec::new();
    for n in 0..shape.strangers {
        sockets.push(
            UdpSocket::bind(format!("127.0.0.{}:0", 10 + n))
                .await
                .unwrap(),
        );
    }
    let per_tick = shape.rate / 100;
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let started = Instant::now();
    let mut sent = 0usize;
    for _ in 0..shape.seconds * 100 {
        tick.tick().await;
        for _ in 0..per_tick {
            let socket = &sockets[sent % sockets.len()];
            let local = socket.local_addr().unwrap();
            let invite = request(
                "INVITE",
                NUMBER,
                false,
                &format!("flood-{sent}"),
                local,
                target,
            );
            let _ = socket.send_to(invite.as_bytes(), target).await;
            sent += 1;
        }
    }
    started.elapsed()
}

/// Issue 14's flood acceptance: strangers flood INVITEs while calls with
/// media run from the trunk's address. Every call completes with no RTP
/// lost at the daemon, every stranger is banned (one log line each), and
/// RSS stays under 200 MB.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_from_strangers_bans_them_while_trunk_calls_keep_their_media() {
    let shape = flood_shape();
    let d = daemon("", &[]).await;
    let target = sip_addr(&d);
    // G.711 both ways from the answer until the BYE: through the flood.
    let hold_ms = (shape.seconds as u64 + 4) * 1000;
    let media = free_udp_port().to_string();
    let calls = shape.calls.to_string();
    let sipp = tokio::spawn(async move {
        run_sipp(
            "uac-invite-pcmu-stream-expect-200-bye.xml",
            free_udp_port(),
            Some(target),
            &[
                "-s",
                NUMBER,
                "-mi",
                "127.0.0.1",
                "-mp",
                &media,
                "-d",
                &hold_ms.to_string(),
                "-m",
                &calls,
                "-l",
                &calls,
                "-r",
                "50",
            ],
            LIMIT + Duration::from_millis(hold_ms),
        )
        .await
    });
    // Every call up before the flood starts.
    let wanted = shape.calls as f64;
    common::wait_until(Duration::from_secs(15), "every call up", || async {
        metric(&d.metrics().await, "agentline_calls_active") >= wanted
    })
    .await;
    let took = flood_from_many(&shape, target).await;
    let rss_during = rss_mb(d.pid());
    let run = sipp.await.unwrap();
    assert!(run.success, "{}\n{}", run.output, d.log());
    let metrics = d.metrics().await;
    assert_eq!(
        metric(&metrics, "agentline_rtp_packets_lost_total"),
        0.0,
        "{metrics}"
    );
    // 50 packets a second per call, for most of the hold.
    assert!(
        metric(&metrics, "agentline_rtp_packets_total{direction=\"in\"}")
            > (shape.calls * shape.seconds * 40) as f64,
        "{metrics}"
    );
    assert_eq!(
        metric(&metrics, "agentline_sip_banned_sources"),
        f64::from(shape.strangers),
        "{metrics}"
    );
    let log = d.log();
    assert_eq!(
        log.matches("SIP source banned").count(),
        usize::from(shape.strangers),
        "one log line per ban:\n{log}"
    );
    assert!(rss_during < 200, "RSS {rss_during} MB during the flood");
    // The offered rate held (a loaded machine may stretch it a little).
    assert!(
        took < Duration::from_secs(shape.seconds as u64) * 3 / 2,
        "the flood took {took:?}"
    );
}

#[tokio::test]
async fn a_trunk_source_over_its_limit_is_throttled_and_logged_not_banned() {
    let d = daemon(
        "[sip.flood.trunk]\ninvite = { rate = 1000, burst = 2000 }\nregister = { rate = 10, burst = 10 }\n\
         options = { rate = 2, burst = 5 }\nother = { rate = 1000, burst = 2000 }\n",
        &[],
    )
    .await;
    let target = sip_addr(&d);
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let local = socket.local_addr().unwrap();
    for n in 0..40 {
        let options = request(
            "OPTIONS",
            "ping",
            false,
            &format!("burst{n}"),
            local,
            target,
        );
        socket.send_to(options.as_bytes(), target).await.unwrap();
    }
    let answered = drain(&socket, Duration::from_secs(1)).await.len();
    assert!((5..=10).contains(&answered), "{answered} of 40 answered");
    assert!(
        d.log().contains("trunk source over its SIP rate limit"),
        "{}",
        d.log()
    );
    // The bucket refills: the trunk is served again, never banned.
    tokio::time::sleep(Duration::from_millis(600)).await;
    control_probe(target).await;
    let metrics = d.metrics().await;
    assert_eq!(
        metric(&metrics, "agentline_sip_banned_sources"),
        0.0,
        "{metrics}"
    );
    assert!(
        metric(
            &metrics,
            "agentline_sip_requests_rejected_total{reason=\"throttled\"}"
        ) >= 30.0
    );
}

/// Issue 14, memory bounded under load: with `max_server_transactions`
/// INVITEs in progress, a trunk's next INVITE is refused at the edge with
/// one stateless 503 and its Retry-After (never resent, never larger than
/// the INVITE), counted; the INVITE in progress is untouched.
#[tokio::test]
async fn a_trunk_invite_beyond_the_bound_gets_one_stateless_503() {
    let d = daemon(
        "[sip.flood]\nmax_server_transactions = 1\noverload_retry_after = 7\n",
        &[],
    )
    .await;
    let target = sip_addr(&d);
    // The first INVITE is answered and never ACKed: it stays in progress
    // (the daemon waits for the ACK, RFC 3261 §13.3.1.4).
    let first = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let local = first.local_addr().unwrap();
    let invite = request("INVITE", NUMBER, false, "held", local, target);
    first.send_to(invite.as_bytes(), target).await.unwrap();
    let mut buf = vec![0u8; 65536];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (n, _) = tokio::time::timeout_at(deadline, first.recv_from(&mut buf))
            .await
            .expect("the first INVITE answered 200")
            .unwrap();
        if buf[..n].starts_with(b"SIP/2.0 200") {
            break;
        }
    }

    let second = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let local = second.local_addr().unwrap();
    let invite = request("INVITE", NUMBER, false, "refused", local, target);
    second.send_to(invite.as_bytes(), target).await.unwrap();
    let got = drain(&second, RETRANSMIT_WINDOW).await;
    assert_eq!(got.len(), 1, "one answer, never resent: {got:?}");
    let text = String::from_utf8_lossy(&got[0]).to_string();
    assert!(text.starts_with("SIP/2.0 503 "), "{text}");
    assert!(text.contains("\r\nRetry-After: 7\r\n"), "{text}");
    assert!(text.contains("\r\nCall-ID: refused\r\n"), "{text}");
    assert!(
        got[0].len() <= invite.len(),
        "larger than the INVITE: {text}"
    );

    // The gauges are set once a second.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let metrics = d.metrics().await;
    assert!(
        metric(
            &metrics,
            "agentline_sip_requests_rejected_total{reason=\"overload\"}"
        ) >= 1.0,
        "{metrics}"
    );
    assert_eq!(
        metric(&metrics, "agentline_sip_invites_in_progress"),
        1.0,
        "{metrics}"
    );
    assert!(
        metric(&metrics, "agentline_sip_receive_backlog") < 1000.0,
        "{metrics}"
    );
}

/// True when the server closes `stream` (EOF or reset) within `within`.
async fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 1024];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Ok(Ok(0) | Err(_)) => return true,
            Ok(Ok(_)) => {}
            Err(_) => return false,
        }
    }
}

#[tokio::test]
async fn tcp_connections_from_a_stranger_are_closed_while_a_trunk_tcp_call_succeeds() {
    let d = daemon("", &[]).await;
    let target = sip_addr(&d);
    let call = tokio::spawn(run_sipp(
        "uac-invite-expect-200-bye.xml",
        free_udp_port(),
        Some(target),
        &["-s", NUMBER, "-t", "t1", "-d", "2000"],
        LIMIT,
    ));
    let mut refused = 0;
    for _ in 0..20 {
        let batch: Vec<_> = (0..250)
            .map(|_| {
                tokio::spawn(async move {
                    let socket = tokio::net::TcpSocket::new_v4().unwrap();
                    socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
                    match socket.connect(target).await {
                        Ok(mut stream) => closed_within(&mut stream, Duration::from_secs(5)).await,
                        Err(_) => true,
                    }
                })
            })
            .collect();
        for conn in batch {
            if conn.await.unwrap() {
                refused += 1;
            }
        }
    }
    assert_eq!(refused, 5_000);
    let run = call.await.unwrap();
    assert!(run.success, "{}\n{}", run.output, d.log());
}

#[tokio::test]
async fn slow_loris_idle_and_surplus_tcp_connections_are_closed() {
    let d = daemon(
        "[sip.tcp]\nmessage_timeout_seconds = 2\nidle_timeout_seconds = 4\nmax_connections_per_source = 2\n",
        &[],
    )
    .await;
    let target = sip_addr(&d);
    let mut idle = TcpStream::connect(target).await.unwrap();
    let mut loris = TcpStream::connect(target).await.unwrap();
    // Both admitted; a third from the same source is over the cap.
    let mut surplus = TcpStream::connect(target).await.unwrap();
    assert!(closed_within(&mut surplus, Duration::from_secs(2)).await);

    let started = Instant::now();
    let drip = tokio::spawn(async move {
        for byte in b"INVITE sip:+14155552671@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/TCP" {
            if loris.write_all(&[*byte]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        loris
    });
    let mut loris = drip.await.unwrap();
    assert!(closed_within(&mut loris, Duration::from_secs(1)).await);
    let loris_closed = started.elapsed();
    assert!(
        loris_closed >= Duration::from_millis(1800) && loris_closed < Duration::from_secs(5),
        "slow-loris closed after {loris_closed:?}"
    );
    assert!(
        closed_within(&mut idle, Duration::from_secs(4)).await,
        "idle connection left open"
    );
    let metrics = d.metrics().await;
    assert!(
        metric(
            &metrics,
            "agentline_sip_requests_rejected_total{reason=\"tcp_timeout\"}"
        ) >= 2.0
    );
    assert!(
        metric(
            &metrics,
            "agentline_sip_requests_rejected_total{reason=\"tcp_refused\"}"
        ) >= 1.0
    );
}

/// Runs a sipvicious tool from 127.0.0.2 (a stranger) for at most 60 s.
async fn sipvicious(tool: &str, args: &[&str]) -> String {
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new(tool)
            .args(args)
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("sipvicious finished")
    .unwrap_or_else(|e| panic!("{tool} missing (apt-get install sipvicious): {e}"));
    format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[tokio::test]
async fn sipvicious_from_a_stranger_finds_nothing() {
    let d = daemon("", &[("AGENTLINE_SIP__UNKNOWN_SOURCE", "reject")]).await;
    let port = d.sip_port.to_string();
    let local = free_udp_port().to_string();
    // svmap's OPTIONS names its scanner user agent: dropped, source banned,
    // even in reject mode.
    let map = sipvicious(
        "svmap",
        &[
            "-p",
            &port,
            "-P",
            &local,
            "-b",
            "127.0.0.2",
            "-x",
            "127.0.0.2",
            "127.0.0.1",
        ],
    )
    .await;
    assert!(
        !map.contains(&format!("127.0.0.1:{port}")),
        "svmap found us:\n{map}"
    );
    let metrics = d.metrics().await;
    assert!(
        metric(
            &metrics,
            "agentline_sip_requests_rejected_total{reason=\"scanner\"}"
        ) >= 1.0
    );
    assert_eq!(
        metric(&metrics, "agentline_sip_banned_sources"),
        1.0,
        "{metrics}"
    );

    // svwar with our number and a missing one, from another stranger in
    // the default mode: both get the same silence.
    let d = daemon("", &[]).await;
    let port = d.sip_port.to_string();
    let dictionary = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(dictionary.path(), format!("{NUMBER}\n+19995550000\n")).unwrap();
    let war = sipvicious(
        "svwar",
        &[
            "-p",
            &port,
            "-P",
            &free_udp_port().to_string(),
            "-b",
            "127.0.0.3",
            "-x",
            "127.0.0.3",
            "-m",
            "INVITE",
            "-d",
            &dictionary.path().display().to_string(),
            "127.0.0.1",
        ],
    )
    .await;
    assert!(!war.contains(NUMBER), "svwar told our number apart:\n{war}");
}

/// Reads from `stream` until it closes or `within` passes; everything read.
async fn read_until_closed(stream: &mut TcpStream, within: Duration) -> (Vec<u8>, bool) {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Ok(Ok(0) | Err(_)) => return (got, true),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => return (got, false),
        }
    }
}

/// `reject` mode over TCP: a stranger's connection gets the same one
/// stateless 403 as over UDP, never larger than its request, and is then
/// closed; in the default mode it is closed at once with nothing sent.
#[tokio::test]
async fn over_tcp_a_stranger_gets_one_answer_in_reject_mode_and_none_by_default() {
    for (mode, answers) in [("reject", 1), ("drop", 0)] {
        let d = daemon("", &[("AGENTLINE_SIP__UNKNOWN_SOURCE", mode)]).await;
        let target = sip_addr(&d);
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
        let mut stream = socket.connect(target).await.unwrap();
        let local = stream.local_addr().unwrap();
        let invite = request("INVITE", NUMBER, false, "tcp-probe", local, target)
            .replace("SIP/2.0/UDP", "SIP/2.0/TCP");
        // A closed connection may refuse the write: that is no answer.
        let _ = stream.write_all(invite.as_bytes()).await;
        let (got, closed) = read_until_closed(&mut stream, Duration::from_secs(5)).await;
        assert!(closed, "{mode}: connection left open");
        let text = String::from_utf8_lossy(&got);
        assert_eq!(text.matches("SIP/2.0 ").count(), answers, "{mode}: {text}");
        assert!(got.len() <= invite.len(), "{mode}: amplification {text}");
        if answers == 1 {
            assert!(text.starts_with("SIP/2.0 403 Forbidden\r\n"), "{text}");
            assert!(text.contains("Call-ID: tcp-probe\r\n"), "{text}");
        }
    }
}

/// A call that came over TCP is hung up by the daemon (the agent's maximum
/// duration) with a BYE over the very connection the caller opened (RFC
/// 3261 §18.2.2 reuse, through the relay), not over a new one to its
/// Contact, where nothing listens here.
#[tokio::test]
async fn the_daemon_sends_its_bye_over_the_callers_tcp_connection() {
    let d = TestDaemon::builder()
        .profile("carrier", &trunk())
        .start()
        .await;
    d.provision_echo(NUMBER, "trk_carrier", 1).await;
    let target = sip_addr(&d);
    let mut stream = TcpStream::connect(target).await.unwrap();
    let local = stream.local_addr().unwrap();
    // A Contact port nothing listens on.
    let nowhere = free_udp_port();
    let sdp = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 9 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n";
    let invite = format!(
        "INVITE sip:{NUMBER}@{target};transport=tcp SIP/2.0\r\nVia: SIP/2.0/TCP {local};branch=z9hG4bKtcpbye1\r\n\
         From: <sip:+15550001@127.0.0.1>;tag=c1\r\nTo: <sip:{NUMBER}@{target}>\r\nCall-ID: tcp-bye@test\r\n\
         CSeq: 1 INVITE\r\nContact: <sip:+15550001@127.0.0.1:{nowhere};transport=tcp>\r\nMax-Forwards: 70\r\n\
         Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{sdp}",
        sdp.len()
    );
    stream.write_all(invite.as_bytes()).await.unwrap();
    let mut seen = String::new();
    let mut buf = [0u8; 8192];
    let deadline = tokio::time::Instant::now() + LIMIT;
    while !seen.contains("SIP/2.0 200") {
        let n = tokio::time::timeout_at(deadline, stream.read(&mut buf))
            .await
            .expect("200 in time")
            .unwrap();
        assert!(n > 0, "closed before 200: {seen}");
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    let to = seen
        .lines()
        .skip_while(|l| !l.starts_with("SIP/2.0 200"))
        .find(|l| l.starts_with("To:"))
        .expect("To in 200")
        .to_owned();
    let ack = format!(
        "ACK sip:{NUMBER}@{target};transport=tcp SIP/2.0\r\nVia: SIP/2.0/TCP {local};branch=z9hG4bKtcpbye2\r\n\
         From: <sip:+15550001@127.0.0.1>;tag=c1\r\n{to}\r\nCall-ID: tcp-bye@test\r\nCSeq: 1 ACK\r\n\
         Max-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
    );
    stream.write_all(ack.as_bytes()).await.unwrap();
    let mut after = String::new();
    while !after.contains("BYE sip:") {
        let n = tokio::time::timeout_at(deadline, stream.read(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("no BYE on our connection: {after}\n{}", d.log()))
            .unwrap();
        assert!(n > 0, "closed before BYE: {after}");
        after.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
}
