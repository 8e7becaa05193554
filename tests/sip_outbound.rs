//! Outbound INVITEs from the stack to SIPp playing the trunk's proxy.

// A test's unwrap, expect or panic is its failure report: the daemon's bans
// (Cargo.toml `[lints]`) do not apply here.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use agentline::sip::{Credentials, OutboundEvent, OutboundInvite};
use bytes::Bytes;
use common::{SDP, free_udp_port, run_sipp, start_stack};
use std::time::Duration;

const LIMIT: Duration = Duration::from_secs(20);

fn invite(port: u16, credentials: Option<Credentials>) -> OutboundInvite {
    OutboundInvite {
        request_uri: format!("sip:+4930555@127.0.0.1:{port}"),
        from_user: "+4930999".to_owned(),
        from_display: Some("Agent".to_owned()),
        from_domain: None,
        credentials,
        sdp_offer: Some(Bytes::from_static(SDP.as_bytes())),
        extra_headers: vec![("X-Campaign".to_owned(), "c42".to_owned())],
    }
}

/// Events until a final one (or `None` when the time is up).
async fn collect(call: &mut agentline::sip::OutboundCall) -> Vec<OutboundEvent> {
    let mut seen = Vec::new();
    while let Ok(Some(event)) = tokio::time::timeout(LIMIT, call.next()).await {
        let last = !matches!(event, OutboundEvent::Progress { .. });
        seen.push(event);
        if last {
            break;
        }
    }
    seen
}

#[tokio::test]
async fn outbound_answered_then_hung_up_by_us() {
    let (stack, _events) = start_stack().await;
    let port = free_udp_port();
    let sipp = tokio::spawn(run_sipp(
        "uas-invite-expect-answer-then-bye.xml",
        port,
        None,
        &[],
        LIMIT,
    ));
    common::wait_for_udp_listener(port).await;

    let mut call = stack.dial(invite(port, None)).await.expect("dial");
    let mut seen = collect(&mut call).await;
    assert!(
        matches!(
            seen.first(),
            Some(OutboundEvent::Progress { code: 180, .. })
        ),
        "{seen:?}"
    );
    let Some(OutboundEvent::Answered {
        call: established,
        sdp,
    }) = seen.pop()
    else {
        panic!("not answered: {seen:?}");
    };
    assert!(sdp.is_some(), "200 carried SDP");
    // `Answered` comes once our ACK is sent (§13.2.2.4), so the BYE follows
    // it on the wire, as SIPp's scenario expects.
    established.hangup().await.expect("BYE");
    let run = sipp.await.expect("sipp task");
    assert!(run.success, "{}", run.output);
}

#[tokio::test]
async fn outbound_busy_reports_486_with_reason() {
    let (stack, _events) = start_stack().await;
    let port = free_udp_port();
    let sipp = tokio::spawn(run_sipp(
        "uas-invite-expect-486-busy.xml",
        port,
        None,
        &[],
        LIMIT,
    ));
    common::wait_for_udp_listener(port).await;

    let mut call = stack.dial(invite(port, None)).await.expect("dial");
    let seen = collect(&mut call).await;
    match seen.last() {
        Some(OutboundEvent::Failed { code, reason }) => {
            assert_eq!(*code, 486);
            assert_eq!(reason, "Busy Here Right Now");
        }
        other => panic!("expected 486, got {other:?}"),
    }
    let run = sipp.await.expect("sipp task");
    assert!(run.success, "{}", run.output);
}

#[tokio::test]
async fn outbound_407_challenge_answered() {
    let (stack, _events) = start_stack().await;
    let port = free_udp_port();
    let sipp = tokio::spawn(run_sipp(
        "uas-invite-407-then-expect-answer.xml",
        port,
        None,
        &[],
        LIMIT,
    ));
    common::wait_for_udp_listener(port).await;

    let credentials = Credentials {
        username: "bob".to_owned(),
        password: "pw".to_owned(),
        realm: None,
    };
    let mut call = stack
        .dial(invite(port, Some(credentials)))
        .await
        .expect("dial");
    let mut seen = collect(&mut call).await;
    let Some(OutboundEvent::Answered {
        call: established, ..
    }) = seen.pop()
    else {
        panic!("not answered: {seen:?}");
    };
    established.hangup().await.expect("BYE");
    let run = sipp.await.expect("sipp task");
    assert!(run.success, "{}", run.output);
}

/// Cancel asked for before any provisional: the CANCEL waits for the 180
/// (RFC 3261 §9.1), then the 487 ends the INVITE.
#[tokio::test]
async fn outbound_cancel_before_first_provisional() {
    let (stack, _events) = start_stack().await;
    let port = free_udp_port();
    let sipp = tokio::spawn(run_sipp(
        "uas-invite-late-180-expect-cancel.xml",
        port,
        None,
        &[],
        LIMIT,
    ));
    common::wait_for_udp_listener(port).await;

    // `dial` returns once the INVITE is sent; SIPp holds its 180 for 1 s,
    // so this cancel comes before any provisional.
    let mut call = stack.dial(invite(port, None)).await.expect("dial");
    call.cancel();
    let seen = collect(&mut call).await;
    assert!(
        matches!(seen.last(), Some(OutboundEvent::Canceled)),
        "{seen:?}"
    );
    let run = sipp.await.expect("sipp task");
    assert!(run.success, "{}", run.output);
}
