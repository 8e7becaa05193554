//! Calls through real peers: Kamailio as the carrier's registrar and proxy,
//! and baresip as a softphone whose ears prove that audio flows both ways.

// A test's unwrap, expect or panic is its failure report: the daemon's bans
// (Cargo.toml `[lints]`) do not apply here.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::{Duration, Instant};

use common::{Kamailio, TestDaemon, free_udp_port, run_sipp};
use serde_json::{Value, json};

const NUMBER: &str = "+14155552671";

async fn provision_echo(d: &TestDaemon, trunk: &str) {
    let r = d
        .post("/v1/agents")
        .json(&json!({"name": "echo", "kind": "echo", "max_duration_seconds": 30}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let agent: Value = r.json().await.unwrap();
    let r = d
        .post("/v1/phone-numbers")
        .json(&json!({"number": NUMBER, "agent_id": agent["id"], "trunk_id": trunk}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
}

async fn latest_call(d: &TestDaemon) -> Value {
    let page: Value = d
        .get("/v1/calls?limit=1")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    page["items"][0].clone()
}

/// The daemon registers to Kamailio with digest auth; a call from SIPp to
/// Kamailio for the registered user reaches the daemon's number and is
/// answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registers_to_kamailio_and_answers_a_call_through_it() {
    let kamailio = Kamailio::start(&[("1001", "s3cret-pw")]);
    let profile = format!(
        "name = \"kam\"\n[registration]\nregistrar = \"127.0.0.1:{}\"\nusername = \"1001\"\n\
         password_env = \"KAM_TEST_PASSWORD\"\nexpires = 60\n[inbound]\nallow = [\"127.0.0.1/32\"]\n",
        kamailio.port
    );
    let d = TestDaemon::builder()
        .profile("kam", &profile)
        .env("KAM_TEST_PASSWORD", "s3cret-pw")
        .start()
        .await;
    provision_echo(&d, "trk_kam").await;

    let deadline = Instant::now() + Duration::from_secs(15);
    let trunk = loop {
        let t: Value = d
            .get("/v1/trunks/trk_kam")
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if t["registration"]["state"] == "registered" {
            break t;
        }
        assert!(
            Instant::now() < deadline,
            "not registered: {t}\n{}\n{}",
            d.log(),
            kamailio.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(trunk["registration"]["expires_at"].is_string(), "{trunk}");

    let run = run_sipp(
        "uac-invite-via-registrar-expect-200-bye.xml",
        free_udp_port(),
        Some(([127, 0, 0, 1], kamailio.port).into()),
        &["-s", "1001", "-key", "number", NUMBER, "-d", "500"],
        Duration::from_secs(20),
    )
    .await;
    assert!(
        run.success,
        "{}\n{}\n{}",
        run.output,
        d.log(),
        kamailio.log()
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    let call = loop {
        let c = latest_call(&d).await;
        if !c["ended_at"].is_null() {
            break c;
        }
        assert!(Instant::now() < deadline, "call not ended: {c}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(call["status"], "completed", "{call}");
    assert_eq!(call["to"], NUMBER);
    assert_eq!(call["trunk_id"], "trk_kam");

    // A wrong password is refused by Kamailio and shows as failing.
    std::fs::write(
        d.profiles_dir().join("kam.toml"),
        profile.replace("1001", "1002"),
    )
    .unwrap();
    d.signal("HUP");
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let t: Value = d
            .get("/v1/trunks/trk_kam")
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if t["registration"]["state"] == "failing" {
            assert_eq!(t["registration"]["last_status"], 401, "{t}");
            assert!(t["registration"]["next_attempt_at"].is_string(), "{t}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "unknown user not failing: {t}\n{}",
            d.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// baresip calls the echo agent and plays a 700 Hz tone; what it hears back
/// holds the same tone (Goertzel), so audio went out and came back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn baresip_hears_its_own_tone_from_the_echo_agent() {
    let d = TestDaemon::builder()
        .profile(
            "local",
            "name = \"local\"\n[inbound]\nallow = [\"127.0.0.1/32\"]\n",
        )
        .start()
        .await;
    provision_echo(&d, "trk_local").await;

    let dir = tempfile::tempdir().unwrap();
    let tone = dir.path().join("tone.wav");
    common::write_tone_wav(&tone, 8000, 700.0, 600, 2500);
    let common::BaresipCall { log, heard } =
        common::baresip_call(dir.path(), &tone, NUMBER, d.sip_port, 10).await;
    let heard = heard.unwrap_or_else(|| panic!("baresip recorded nothing:\n{log}\n{}", d.log()));
    let (rate, samples) = common::read_wav(&heard);
    let at_700 = common::strongest_window(&samples, rate, 700.0);
    let at_1100 = common::strongest_window(&samples, rate, 1100.0);
    assert!(
        at_700 > 0.3,
        "the tone came back: 700 Hz {at_700}, 1100 Hz {at_1100}\n{log}"
    );
    assert!(at_1100 < 0.05, "and nothing else: 1100 Hz {at_1100}");
    let call = latest_call(&d).await;
    assert_eq!(call["to"], NUMBER, "{call}");
}
