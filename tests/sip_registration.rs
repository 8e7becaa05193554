//! Trunk registration against SIPp registrars and an unreachable one.

// A test's unwrap, expect or panic is its failure report: the daemon's bans
// (Cargo.toml `[lints]`) do not apply here.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use agentline::sip::backoff::RetryPolicy;
use agentline::sip::{RegistrationState, TrunkRegistration};
use common::{free_udp_port, run_sipp, start_stack};
use std::time::{Duration, SystemTime};
use tokio::sync::watch;

fn trunk(registrar: String, expires: u64) -> TrunkRegistration {
    TrunkRegistration {
        trunk: "test".to_owned(),
        registrar,
        username: "alice".to_owned(),
        auth_username: None,
        password: "secret".into(),
        domain: Some("sipp.test".to_owned()),
        realm: None,
        expires: Duration::from_secs(expires),
        retry: RetryPolicy {
            initial: Duration::from_millis(300),
            max: Duration::from_secs(10),
            request_timeout: Duration::from_millis(400),
        },
    }
}

/// Next state matching `pred`, within `limit`.
async fn wait_for(
    rx: &mut watch::Receiver<RegistrationState>,
    limit: Duration,
    pred: impl Fn(&RegistrationState) -> bool,
) -> RegistrationState {
    let result = tokio::time::timeout(limit, rx.wait_for(|s| pred(s)))
        .await
        .map(|state| state.expect("state channel open").clone());
    let found = match result {
        Ok(state) => state,
        Err(_) => panic!("state not reached in time, last {:?}", *rx.borrow()),
    };
    rx.mark_unchanged();
    found
}

#[tokio::test]
async fn register_challenged_401_then_accepted_and_refreshed() {
    let (stack, _events) = start_stack().await;
    let port = free_udp_port();
    let sipp = tokio::spawn(run_sipp(
        "uas-register-401-then-200-refresh.xml",
        port,
        None,
        &[],
        Duration::from_secs(15),
    ));
    common::wait_for_udp_listener(port).await;

    let registration = stack
        .register(trunk(format!("127.0.0.1:{port}"), 60))
        .expect("register");
    let mut state = registration.state();
    let first = wait_for(&mut state, Duration::from_secs(5), |s| {
        matches!(s, RegistrationState::Registered { .. })
    })
    .await;
    let RegistrationState::Registered {
        expires_at,
        refresh_at,
    } = first
    else {
        unreachable!()
    };
    assert!(refresh_at < expires_at, "refresh before expiry");
    assert!(
        expires_at <= SystemTime::now() + Duration::from_secs(3),
        "granted 2 s honoured"
    );

    // The refresh is a second, separately verified REGISTER.
    let second = wait_for(
        &mut state,
        Duration::from_secs(5),
        |s| matches!(s, RegistrationState::Registered { expires_at: e, .. } if *e > expires_at),
    )
    .await;
    assert!(matches!(second, RegistrationState::Registered { .. }));

    registration.unregister().await;
    assert_eq!(*state.borrow(), RegistrationState::Unregistered);
    let run = sipp.await.expect("sipp task");
    assert!(run.success, "{}", run.output);
}

#[tokio::test]
async fn register_answers_the_challenge_as_the_auth_username() {
    let (stack, _events) = start_stack().await;
    let port = free_udp_port();
    let sipp = tokio::spawn(run_sipp(
        "uas-register-expect-auth-username.xml",
        port,
        None,
        &[],
        Duration::from_secs(15),
    ));
    common::wait_for_udp_listener(port).await;

    let registration = stack
        .register(TrunkRegistration {
            auth_username: Some("alice-auth".to_owned()),
            ..trunk(format!("127.0.0.1:{port}"), 60)
        })
        .expect("register");
    let mut state = registration.state();
    wait_for(&mut state, Duration::from_secs(5), |s| {
        matches!(s, RegistrationState::Registered { .. })
    })
    .await;
    registration.unregister().await;
    let run = sipp.await.expect("sipp task");
    assert!(run.success, "{}", run.output);
}

#[tokio::test]
async fn register_honours_423_min_expires() {
    let (stack, _events) = start_stack().await;
    let port = free_udp_port();
    let sipp = tokio::spawn(run_sipp(
        "uas-register-expect-423-min-expires.xml",
        port,
        None,
        &[],
        Duration::from_secs(15),
    ));
    common::wait_for_udp_listener(port).await;

    let registration = stack
        .register(trunk(format!("127.0.0.1:{port}"), 30))
        .expect("register");
    let mut state = registration.state();
    let registered = wait_for(&mut state, Duration::from_secs(5), |s| {
        matches!(s, RegistrationState::Registered { .. })
    })
    .await;
    let RegistrationState::Registered { expires_at, .. } = registered else {
        unreachable!()
    };
    assert!(expires_at > SystemTime::now() + Duration::from_secs(100));

    registration.unregister().await;
    let run = sipp.await.expect("sipp task");
    assert!(run.success, "{}", run.output);
}

#[tokio::test]
async fn unreachable_registrar_retries_with_growing_intervals() {
    let (stack, _events) = start_stack().await;
    // A socket that swallows everything: the registrar never answers.
    let sink = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind sink");
    let registrar = sink.local_addr().expect("sink addr").to_string();

    let registration = stack.register(trunk(registrar, 60)).expect("register");
    let mut state = registration.state();
    let mut gaps = Vec::new();
    for expected in 1..=4u32 {
        let failing = wait_for(
            &mut state,
            Duration::from_secs(10),
            |s| matches!(s, RegistrationState::Failing { failures, .. } if *failures == expected),
        )
        .await;
        let RegistrationState::Failing {
            status,
            next_attempt,
            ..
        } = failing
        else {
            unreachable!()
        };
        assert_eq!(status, None, "a timeout has no SIP status");
        gaps.push(
            next_attempt
                .duration_since(SystemTime::now())
                .unwrap_or_default(),
        );
    }
    for pair in gaps.windows(2) {
        assert!(pair[1] > pair[0], "retry intervals must grow: {gaps:?}");
    }
    drop(registration);
}
