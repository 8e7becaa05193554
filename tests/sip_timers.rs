//! RFC timers of the SIP layer against real sockets and SIPp:
//! - the 200 to an INVITE resent at T1, 2*T1 ... capped at T2 until the ACK
//!   or 64*T1, then BYE (RFC 3261 §13.3.1.4); a late ACK stops it;
//! - session timers (RFC 4028): 422 with Min-SE, our refresh at half the
//!   interval (re-INVITE, or UPDATE when allowed), BYE when the peer's
//!   refresh is overdue; outbound, our INVITE offers Session-Expires and
//!   Min-SE, a 422 is retried with the peer's Min-SE, we refresh by
//!   UPDATE when the callee makes us the refresher, and send BYE when the
//!   callee is the refresher and lets the session expire.
//!
//! Timing: the T1 tests use `t1 = 50 ms` (test-only, `[sip] t1_ms`) and
//! take ~4 s; one test runs the default T1 (~33 s). The session timer
//! tests run at Session-Expires 90 (the RFC 4028 §4 floor, no shortcut)
//! concurrently, ~60 s in all.

// A test's unwrap, expect or panic is its failure report: the daemon's bans
// (Cargo.toml `[lints]`) do not apply here.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use agentline::sip::SipConfig;
use common::{SDP, events_until, free_udp_port, run_sipp, start_stack, start_stack_config};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::UdpSocket;
use tokio::time::Instant;

fn header<'a>(message: &'a str, name: &str) -> Option<&'a str> {
    message.lines().find_map(|line| {
        let (n, v) = line.split_once(':')?;
        n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

fn invite(local: SocketAddr, target: SocketAddr, call_id: &str) -> String {
    format!(
        "INVITE sip:+4930111@{target} SIP/2.0\r\n\
         Via: SIP/2.0/UDP {local};branch=z9hG4bK{call_id};rport\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:caller@{local}>;tag=caller1\r\n\
         To: <sip:+4930111@{target}>\r\n\
         Call-ID: {call_id}\r\n\
         CSeq: 1 INVITE\r\n\
         Contact: <sip:caller@{local}>\r\n\
         Content-Type: application/sdp\r\n\
         Content-Length: {}\r\n\r\n{SDP}",
        SDP.len()
    )
}

/// What the caller socket received, with its arrival time.
async fn next_message(socket: &UdpSocket, until: Instant) -> Option<(Instant, String)> {
    let mut buf = vec![0u8; 65536];
    match tokio::time::timeout_at(until, socket.recv_from(&mut buf)).await {
        Ok(Ok((len, _))) => Some((
            Instant::now(),
            String::from_utf8_lossy(&buf[..len]).into_owned(),
        )),
        _ => None,
    }
}

/// 200 to a request we received (a BYE), echoing its dialog headers.
fn ok_to(request: &str) -> String {
    let mut out = String::from("SIP/2.0 200 OK\r\n");
    for name in ["Via", "From", "To", "Call-ID", "CSeq"] {
        if let Some(v) = header(request, name) {
            out.push_str(&format!("{name}: {v}\r\n"));
        }
    }
    out.push_str("Content-Length: 0\r\n\r\n");
    out
}

fn short_t1() -> SipConfig {
    let mut config = SipConfig::new("127.0.0.1:0".parse().expect("addr"));
    config.t1 = Duration::from_millis(50);
    config
}

/// With T1 = 50 ms (T2 = 400 ms, 64*T1 = 3.2 s): the 200 comes at 0, then
/// after 50, 100, 200, 400, 400 ... ms; no ACK: BYE at 3.2 s, the handler
/// told `no ACK`.
#[tokio::test]
async fn missing_ack_doubles_the_200_spacing_up_to_t2_then_bye() {
    let (stack, mut events) = start_stack_config(short_t1()).await;
    let target = stack.local_addr();
    let socket = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    let local = socket.local_addr().expect("addr");
    socket
        .send_to(invite(local, target, "no-ack-short-t1").as_bytes(), target)
        .await
        .expect("send INVITE");

    let mut oks = Vec::new();
    let mut bye = None;
    let until = Instant::now() + Duration::from_secs(8);
    while let Some((at, message)) = next_message(&socket, until).await {
        if message.starts_with("SIP/2.0 200") {
            oks.push(at);
        } else if message.starts_with("BYE ") {
            socket
                .send_to(ok_to(&message).as_bytes(), target)
                .await
                .expect("send 200 to BYE");
            bye = Some(at);
            break;
        }
    }
    let bye = bye.expect("BYE after 64*T1 without ACK");
    let offsets: Vec<u128> = oks.iter().map(|at| (*at - oks[0]).as_millis()).collect();
    // 0, 50, 150, 350, 750, 1150 ... 3150 ms: the first and ten resends,
    // i.e. gaps of 50, 100, 200, 400, 400 ... ms (T1 doubling to T2).
    assert_eq!(oks.len(), 11, "200 transmissions at {offsets:?} ms");
    let expected = [0u128, 50, 150, 350, 750, 1150, 1550, 1950, 2350, 2750, 3150];
    for (offset, want) in offsets.iter().zip(expected) {
        // A resend is never early; under load (2 shared cores) it may be
        // late, but each is due at its own point, so lateness never adds up.
        assert!(
            *offset + 25 >= want && *offset <= want + 100,
            "a 200 at {offset} ms where {want} ms was due; all at {offsets:?} ms"
        );
    }
    let to_bye = (bye - oks[0]).as_millis();
    assert!(
        (3150..4000).contains(&to_bye),
        "BYE {to_bye} ms after the first 200 (64*T1 = 3200 ms)"
    );
    let seen = events_until(
        &mut events,
        "accept failed: no ACK received for the 200 OK",
        Duration::from_secs(3),
    )
    .await;
    assert_eq!(
        seen,
        [
            "invite +4930111",
            "accept failed: no ACK received for the 200 OK"
        ]
    );
}

/// An ACK after three resends stops them; the call goes on and ends with
/// the caller's BYE.
#[tokio::test]
async fn a_late_ack_stops_the_resends_and_the_call_proceeds() {
    let (stack, mut events) = start_stack_config(short_t1()).await;
    let target = stack.local_addr();
    let socket = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    let local = socket.local_addr().expect("addr");
    socket
        .send_to(invite(local, target, "late-ack").as_bytes(), target)
        .await
        .expect("send INVITE");

    let mut to = None;
    let mut oks = 0;
    let until = Instant::now() + Duration::from_secs(3);
    while let Some((_, message)) = next_message(&socket, until).await {
        if message.starts_with("SIP/2.0 200") {
            oks += 1;
            to = header(&message, "To").map(str::to_owned);
            if oks == 4 {
                break;
            }
        }
    }
    assert_eq!(oks, 4, "the 200 and three resends before our ACK");
    let to = to.expect("To of the 200");
    let ack = format!(
        "ACK sip:+4930111@{target} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bKlateack2;rport\r\nMax-Forwards: 70\r\nFrom: <sip:caller@{local}>;tag=caller1\r\nTo: {to}\r\nCall-ID: late-ack\r\nCSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n"
    );
    socket.send_to(ack.as_bytes(), target).await.expect("ACK");
    let seen = events_until(&mut events, "answered", Duration::from_secs(2)).await;
    assert_eq!(seen, ["invite +4930111", "answered"]);

    // No more 200s after the ACK (the next resend was due 400 ms later).
    let quiet_until = Instant::now() + Duration::from_millis(900);
    while let Some((_, message)) = next_message(&socket, quiet_until).await {
        assert!(
            !message.starts_with("SIP/2.0 200"),
            "200 resent after the ACK: {message}"
        );
    }
    let bye = format!(
        "BYE sip:+4930111@{target} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bKlatebye;rport\r\nMax-Forwards: 70\r\nFrom: <sip:caller@{local}>;tag=caller1\r\nTo: {to}\r\nCall-ID: late-ack\r\nCSeq: 2 BYE\r\nContent-Length: 0\r\n\r\n"
    );
    socket.send_to(bye.as_bytes(), target).await.expect("BYE");
    let answer = next_message(&socket, Instant::now() + Duration::from_secs(2))
        .await
        .expect("answer to BYE");
    assert!(answer.1.starts_with("SIP/2.0 200"), "{}", answer.1);
    let seen = events_until(&mut events, "bye", Duration::from_secs(2)).await;
    assert_eq!(seen, ["bye"]);
}

/// At the default T1 (500 ms) SIPp never ACKs: the BYE comes 64*T1 = 32 s
/// after the 200, not ezk's 8.5 s.
#[tokio::test]
async fn missing_ack_at_default_t1_is_waited_for_32_seconds() {
    let (stack, mut events) = start_stack().await;
    let started = Instant::now();
    let run = run_sipp(
        "uac-invite-no-ack-expect-bye-after-64-t1.xml",
        free_udp_port(),
        Some(stack.local_addr()),
        &["-s", "+4930104"],
        Duration::from_secs(45),
    )
    .await;
    let elapsed = started.elapsed();
    assert!(run.success, "{}", run.output);
    assert!(
        elapsed >= Duration::from_secs(31) && elapsed < Duration::from_secs(38),
        "BYE after {elapsed:?}"
    );
    let seen = events_until(
        &mut events,
        "accept failed: no ACK received for the 200 OK",
        Duration::from_secs(3),
    )
    .await;
    assert_eq!(
        seen,
        [
            "invite +4930104",
            "accept failed: no ACK received for the 200 OK"
        ]
    );
}

/// RFC 4028 §8.1: Session-Expires 60 is below our Min-SE (90): 422 with
/// Min-SE 90, and the handler never sees the INVITE.
#[tokio::test]
async fn session_expires_below_min_se_gets_422_with_min_se() {
    let (stack, mut events) = start_stack().await;
    let run = run_sipp(
        "uac-invite-session-expires-60-expect-422-min-se-90.xml",
        free_udp_port(),
        Some(stack.local_addr()),
        &["-s", "+4930105"],
        Duration::from_secs(10),
    )
    .await;
    assert!(run.success, "{}", run.output);
    let seen = events_until(&mut events, "never", Duration::from_millis(300)).await;
    assert!(seen.is_empty(), "the handler saw {seen:?}");
}

/// Session-Expires 90, both ways, at the RFC's floor (no shortcut):
/// - refresher=uas without UPDATE in Allow: our re-INVITE (same SDP,
///   origin version + 1) comes at 45 s;
/// - refresher=uas with UPDATE allowed: our UPDATE comes at 45 s;
/// - refresher=uac and the caller never refreshes: our BYE comes at
///   90 - min(32, 90/3) = 60 s and the call ends `session expired`.
#[tokio::test]
async fn session_expires_90_refreshed_by_us_and_enforced_on_the_peer() {
    async fn timed(scenario: &'static str, user: &'static str) -> (Duration, Vec<String>) {
        let (stack, mut events) = start_stack().await;
        let started = Instant::now();
        let run = run_sipp(
            scenario,
            free_udp_port(),
            Some(stack.local_addr()),
            &["-s", user],
            Duration::from_secs(80),
        )
        .await;
        let elapsed = started.elapsed();
        assert!(run.success, "{scenario}: {}", run.output);
        let seen = events_until(&mut events, "never", Duration::from_millis(500)).await;
        (elapsed, seen)
    }
    let (reinvite, update, expired) = tokio::join!(
        timed(
            "uac-invite-session-expires-90-uas-refresher-expect-reinvite.xml",
            "+4930106"
        ),
        timed(
            "uac-invite-session-expires-90-uas-refresher-expect-update.xml",
            "+4930107"
        ),
        timed(
            "uac-invite-session-expires-90-uac-refresher-never-refresh-expect-bye.xml",
            "+4930108"
        ),
    );
    for (what, (elapsed, seen)) in [("re-INVITE", &reinvite), ("UPDATE", &update)] {
        assert!(
            elapsed >= &Duration::from_secs(44) && elapsed < &Duration::from_secs(52),
            "{what} refresh after {elapsed:?}"
        );
        assert_eq!(
            seen.last().map(String::as_str),
            Some("bye"),
            "{what}: {seen:?}"
        );
    }
    assert!(
        expired.0 >= Duration::from_secs(59) && expired.0 < Duration::from_secs(66),
        "BYE after {:?}",
        expired.0
    );
    assert_eq!(
        expired.1,
        ["invite +4930108", "answered", "session expired"],
    );
}

/// RFC 3262 §3: an INVITE that requires 100rel (in Require only, which
/// ezk's own reliable provisional would panic on) gets a reliable 180
/// (Require: 100rel, RSeq); SIPp's PRACK is answered 200 and the call then
/// completes.
#[tokio::test]
async fn inbound_require_100rel_gets_a_reliable_180_and_completes_after_prack() {
    let (stack, mut events) = start_stack().await;
    let run = run_sipp(
        "uac-invite-require-100rel-expect-reliable-180-prack.xml",
        free_udp_port(),
        Some(stack.local_addr()),
        &["-s", "+4930109"],
        Duration::from_secs(15),
    )
    .await;
    assert!(run.success, "{}", run.output);
    let seen = events_until(&mut events, "bye", Duration::from_secs(3)).await;
    assert_eq!(seen, ["invite +4930109", "answered", "bye"]);
}

/// RFC 3262 §4: a carrier that requires 100rel sends a reliable 183; we
/// PRACK it (RAck with its RSeq and our INVITE's CSeq), the call is
/// answered, and our BYE's CSeq comes after the PRACK's.
#[tokio::test]
async fn outbound_prack_for_a_carrier_requiring_100rel() {
    use agentline::sip::{OutboundEvent, OutboundInvite};
    let (stack, _events) = start_stack().await;
    let port = free_udp_port();
    let sipp = tokio::spawn(run_sipp(
        "uas-invite-require-100rel-reliable-183-expect-prack-then-answer.xml",
        port,
        None,
        &[],
        Duration::from_secs(15),
    ));
    common::wait_for_udp_listener(port).await;
    let mut call = stack
        .dial(OutboundInvite {
            request_uri: format!("sip:+4930555@127.0.0.1:{port}"),
            from_user: "+4930999".to_owned(),
            from_display: None,
            from_domain: None,
            credentials: None,
            sdp_offer: Some(bytes::Bytes::from_static(SDP.as_bytes())),
            extra_headers: Vec::new(),
        })
        .await
        .expect("dial");
    let mut seen = Vec::new();
    while let Ok(Some(event)) = tokio::time::timeout(Duration::from_secs(10), call.next()).await {
        let last = !matches!(event, OutboundEvent::Progress { .. });
        seen.push(event);
        if last {
            break;
        }
    }
    assert!(
        matches!(
            seen.first(),
            Some(OutboundEvent::Progress { code: 183, .. })
        ),
        "{seen:?}"
    );
    let Some(OutboundEvent::Answered { call: answered, .. }) = seen.pop() else {
        let run = sipp.await.expect("sipp task");
        panic!("not answered: {seen:?}\n{}", run.output);
    };
    let bye = answered.hangup().await;
    let run = sipp.await.expect("sipp task");
    assert!(run.success, "{}", run.output);
    bye.expect("BYE answered");
}

/// The daemon end to end: a call whose 200 is never ACKed ends `no_ack`
/// after 64*T1 (`[sip] t1_ms = 50`, test-only: 3.2 s) with our BYE; an
/// inbound call whose caller (the refresher) never refreshes its
/// Session-Expires 90, and an outbound call whose callee answers
/// Session-Expires 90 as the refresher (`refresher=uas`) and never
/// refreshes, both end `session_expired` with our BYE 60 s after the
/// answer (RFC 4028 §10: 90 - min(32, 90/3)); both stores. The three run
/// at once: the RFC's floor of 90 s makes this a one-minute test.
async fn daemon_timer_end_reasons(backend: common::Backend) {
    use serde_json::{Value, json};
    const NUMBER: &str = "+14155552671";
    let short = common::TestDaemon::builder()
        .backend(backend)
        .sip("t1_ms = 50")
        .profile(
            "carrier",
            "name = \"carrier\"\n[inbound]\nallow = [\"127.0.0.1/32\"]\n",
        )
        .start()
        .await;
    // No RTP comes from SIPp: the RTP timeout must not end the call first.
    let callee_port = free_udp_port();
    let plain = common::TestDaemon::builder()
        .backend(backend)
        .config("[calls]\nrtp_timeout_seconds = 600")
        .profile(
            "carrier",
            &format!(
                "name = \"carrier\"\n[inbound]\nallow = [\"127.0.0.1/32\"]\n\
                 [outbound]\nproxy = \"127.0.0.1:{callee_port}\"\n"
            ),
        )
        .start()
        .await;
    for d in [&short, &plain] {
        let agent: Value = d
            .post("/v1/agents")
            .json(&json!({"name": "echo", "kind": "echo", "max_duration_seconds": 300}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let r = d
            .post("/v1/phone-numbers")
            .json(&json!({"number": NUMBER, "agent_id": agent["id"], "trunk_id": "trk_carrier"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
    }
    /// The newest ended call of `direction`, within 10 s.
    async fn ended(d: &common::TestDaemon, direction: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let page: Value = d
                .get("/v1/calls?limit=10")
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            if let Some(call) = page["items"].as_array().and_then(|calls| {
                calls
                    .iter()
                    .find(|c| c["direction"] == direction && !c["ended_at"].is_null())
            }) {
                return call.clone();
            }
            assert!(
                Instant::now() < deadline,
                "no ended {direction} call: {page}\n{}",
                d.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    /// How long `call` was up, from its answer to its end.
    fn held(call: &Value) -> Duration {
        let at = |key: &str| {
            chrono::DateTime::parse_from_rfc3339(call[key].as_str().unwrap())
                .unwrap_or_else(|e| panic!("{key}: {e}: {call}"))
        };
        (at("ended_at") - at("answered_at")).to_std().unwrap()
    }
    let target = |d: &common::TestDaemon| Some(([127, 0, 0, 1], d.sip_port).into());
    let callee = tokio::spawn(run_sipp(
        "uas-invite-session-expires-answer-90-uas-refresher-never-refresh-expect-bye.xml",
        callee_port,
        None,
        &[],
        Duration::from_secs(85),
    ));
    common::wait_for_udp_listener(callee_port).await;
    let r = plain
        .post("/v1/calls")
        .json(&json!({"from": NUMBER, "to": "+442079460958"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    let started = Instant::now();
    let (no_ack, expired) = tokio::join!(
        run_sipp(
            "uac-invite-no-ack-expect-bye-after-64-t1.xml",
            free_udp_port(),
            target(&short),
            &["-s", NUMBER],
            Duration::from_secs(20),
        ),
        run_sipp(
            "uac-invite-session-expires-90-uac-refresher-never-refresh-expect-bye.xml",
            free_udp_port(),
            target(&plain),
            &["-s", NUMBER],
            Duration::from_secs(80),
        ),
    );
    let callee = callee.await.unwrap();
    assert!(no_ack.success, "{}\n{}", no_ack.output, short.log());
    assert!(expired.success, "{}\n{}", expired.output, plain.log());
    assert!(callee.success, "{}\n{}", callee.output, plain.log());
    assert!(started.elapsed() >= Duration::from_secs(59));
    let call = ended(&short, "inbound").await;
    assert_eq!(call["end_reason"], "no_ack", "{call}");
    for direction in ["inbound", "outbound"] {
        let call = ended(&plain, direction).await;
        assert_eq!(call["end_reason"], "session_expired", "{call}");
        let held = held(&call);
        assert!(
            held >= Duration::from_secs(59) && held < Duration::from_secs(66),
            "{direction}: BYE {held:?} after the answer: {call}"
        );
    }
}

#[tokio::test]
async fn daemon_timer_end_reasons_sqlite() {
    daemon_timer_end_reasons(common::Backend::Sqlite).await;
}

#[tokio::test]
async fn daemon_timer_end_reasons_postgres() {
    daemon_timer_end_reasons(common::Backend::Postgres).await;
}

/// Dials SIPp's `scenario` (a callee on a free port) from a bare stack
/// with the default timers (Session-Expires 1800, Min-SE 90); the answered
/// call, and SIPp's run to await.
async fn dial_sipp(
    scenario: &'static str,
    limit: Duration,
) -> (
    agentline::sip::Call,
    tokio::task::JoinHandle<common::SippRun>,
) {
    use agentline::sip::{OutboundEvent, OutboundInvite};
    let (stack, _events) = start_stack().await;
    let port = free_udp_port();
    let sipp = tokio::spawn(run_sipp(scenario, port, None, &[], limit));
    common::wait_for_udp_listener(port).await;
    let mut call = stack
        .dial(OutboundInvite {
            request_uri: format!("sip:+4930555@127.0.0.1:{port}"),
            from_user: "+4930999".to_owned(),
            from_display: None,
            from_domain: None,
            credentials: None,
            sdp_offer: Some(bytes::Bytes::from_static(SDP.as_bytes())),
            extra_headers: Vec::new(),
        })
        .await
        .expect("dial");
    loop {
        match tokio::time::timeout(Duration::from_secs(10), call.next()).await {
            Ok(Some(OutboundEvent::Progress { .. })) => continue,
            // The stack's sockets live on with the call.
            Ok(Some(OutboundEvent::Answered { call, .. })) => return (*call, sipp),
            other => {
                let run = sipp.await.expect("sipp task");
                panic!("not answered: {other:?}\n{}", run.output);
            }
        }
    }
}

/// RFC 4028 outbound: our INVITE offers Session-Expires and Min-SE; the
/// callee answers 90 s with us as refresher and allows UPDATE: we refresh
/// by UPDATE before half the interval is gone, and the call stays up.
#[tokio::test]
async fn outbound_session_timer_refreshed_by_update_when_we_refresh() {
    let (mut call, sipp) = dial_sipp(
        "uas-invite-session-expires-answer-90-uac-refresher-expect-update.xml",
        Duration::from_secs(70),
    )
    .await;
    // The refresh is due at 45 s; the call is up past it.
    let until = Instant::now() + Duration::from_secs(50);
    if let Ok(event) = tokio::time::timeout_at(until, call.next_event()).await {
        panic!("the call did not stay up: {event:?}");
    }
    assert!(call.is_active());
    call.hangup().await.expect("BYE answered");
    let run = sipp.await.expect("sipp task");
    assert!(run.success, "{}", run.output);
}

/// RFC 4028 §7.4: a 422 with Min-SE 2000 (above our 1800) gets the INVITE
/// again with Session-Expires 2000, and the call is answered.
#[tokio::test]
async fn outbound_422_is_retried_with_the_peers_min_se() {
    let (call, sipp) = dial_sipp(
        "uas-invite-422-min-se-2000-expect-retry-with-2000.xml",
        Duration::from_secs(20),
    )
    .await;
    call.hangup().await.expect("BYE answered");
    let run = sipp.await.expect("sipp task");
    assert!(run.success, "{}", run.output);
}
