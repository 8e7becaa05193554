//! Inbound calls driven by SIPp against a stack on 127.0.0.1:0.

// A test's unwrap, expect or panic is its failure report: the daemon's bans
// (Cargo.toml `[lints]`) do not apply here.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{events_until, free_udp_port, run_sipp, start_stack, start_stack_with};
use std::time::Duration;

const LIMIT: Duration = Duration::from_secs(20);

#[tokio::test]
async fn inbound_call_answered_and_hung_up_by_caller() {
    let (stack, mut events) = start_stack().await;
    let run = run_sipp(
        "uac-invite-expect-200-bye.xml",
        free_udp_port(),
        Some(stack.local_addr()),
        &["-s", "+4930100", "-d", "500"],
        LIMIT,
    )
    .await;
    assert!(run.success, "{}", run.output);
    let seen = events_until(&mut events, "bye", Duration::from_secs(5)).await;
    assert_eq!(seen, ["invite +4930100", "answered", "bye"]);
}

#[tokio::test]
async fn inbound_call_answered_over_tcp() {
    let (stack, mut events) = start_stack().await;
    let run = run_sipp(
        "uac-invite-expect-200-bye.xml",
        free_udp_port(),
        Some(stack.local_addr()),
        &["-s", "+4930101", "-t", "t1", "-d", "500"],
        LIMIT,
    )
    .await;
    assert!(run.success, "{}", run.output);
    let seen = events_until(&mut events, "bye", Duration::from_secs(5)).await;
    assert_eq!(seen, ["invite +4930101", "answered", "bye"]);
}

#[tokio::test]
async fn cancel_before_answer_gets_487() {
    let (stack, mut events) = start_stack().await;
    let run = run_sipp(
        "uac-invite-cancel-expect-487.xml",
        free_udp_port(),
        Some(stack.local_addr()),
        &["-s", "ring100"],
        LIMIT,
    )
    .await;
    assert!(run.success, "{}", run.output);
    let seen = events_until(&mut events, "cancelled", Duration::from_secs(5)).await;
    assert_eq!(seen, ["invite ring100", "cancelled"]);
}

#[tokio::test]
async fn unknown_number_gets_404_from_the_handler() {
    let (stack, _events) = start_stack().await;
    let run = run_sipp(
        "uac-invite-expect-404.xml",
        free_udp_port(),
        Some(stack.local_addr()),
        &["-s", "404000"],
        LIMIT,
    )
    .await;
    assert!(run.success, "{}", run.output);
}

#[tokio::test]
async fn source_not_allowed_gets_403() {
    let (stack, _events) = start_stack().await;
    let run = run_sipp(
        "uac-invite-expect-403.xml",
        free_udp_port(),
        Some(stack.local_addr()),
        &["-s", "blocked1"],
        LIMIT,
    )
    .await;
    assert!(run.success, "{}", run.output);
}

#[tokio::test]
async fn hold_reinvite_answered_without_hangup() {
    let (stack, mut events) = start_stack().await;
    let run = run_sipp(
        "uac-invite-hold-expect-200.xml",
        free_udp_port(),
        Some(stack.local_addr()),
        &["-s", "+4930102"],
        LIMIT,
    )
    .await;
    assert!(run.success, "{}", run.output);
    let seen = events_until(&mut events, "bye", Duration::from_secs(5)).await;
    assert_eq!(
        seen,
        [
            "invite +4930102",
            "answered",
            "reinvite offer=true",
            "reinvite answered",
            "bye"
        ]
    );
}

/// A source the handler does not admit gets no answer at all: not even to
/// OPTIONS.
#[tokio::test]
async fn dropped_source_gets_silence() {
    let (stack, _events) = start_stack_with(true).await;
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let local = socket.local_addr().expect("addr");
    let options = format!(
        "OPTIONS sip:x@{target} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bKdrop1\r\nFrom: <sip:a@{local}>;tag=1\r\nTo: <sip:x@{target}>\r\nCall-ID: drop1\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n",
        target = stack.local_addr()
    );
    socket
        .send_to(options.as_bytes(), stack.local_addr())
        .await
        .expect("send");
    let mut buf = [0u8; 4096];
    let got = tokio::time::timeout(Duration::from_millis(800), socket.recv_from(&mut buf)).await;
    assert!(got.is_err(), "a dropped source got an answer");
}

/// A 200 that is never ACKed fails the call (RFC 3261 §13.3.1.4) and the
/// handler is told: after 64*T1 (T1 = 50 ms here, 3.2 s; the schedule
/// itself is checked in `sip_timers`).
#[tokio::test]
async fn missing_ack_fails_the_call() {
    let mut config = agentline::sip::SipConfig::new("127.0.0.1:0".parse().expect("addr"));
    config.t1 = Duration::from_millis(50);
    let (stack, mut events) = common::start_stack_config(config).await;
    let sipp = tokio::spawn(run_sipp(
        "uac-invite-no-ack-expect-200-retransmitted.xml",
        free_udp_port(),
        Some(stack.local_addr()),
        &["-s", "+4930103"],
        LIMIT,
    ));
    let seen = events_until(
        &mut events,
        "accept failed: no ACK received for the 200 OK",
        Duration::from_secs(15),
    )
    .await;
    assert_eq!(
        seen,
        [
            "invite +4930103",
            "accept failed: no ACK received for the 200 OK"
        ]
    );
    sipp.abort();
}
