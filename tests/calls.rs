//! Calls end to end: the real daemon, SIPp as caller or callee, and the
//! call records read back through the API.

// A test's unwrap, expect or panic is its failure report: the daemon's bans
// (Cargo.toml `[lints]`) do not apply here.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::{Duration, Instant};

use common::{Backend, TestDaemon, free_udp_port, run_sipp};
use serde_json::{Value, json};

const LIMIT: Duration = Duration::from_secs(20);
const NUMBER: &str = "+14155552671";

fn trunk(allow: &str, max_calls: u32, extra: &str) -> String {
    format!(
        "name = \"carrier\"\n[inbound]\nallow = [\"{allow}\"]\n[limits]\nmax_calls = {max_calls}\n{extra}"
    )
}

/// An agent and the number bound to it; returns the agent id.
async fn provision(d: &TestDaemon, agent: Value) -> String {
    let r = d.post("/v1/agents").json(&agent).send().await.unwrap();
    assert_eq!(r.status(), 201);
    let agent: Value = r.json().await.unwrap();
    let id = agent["id"].as_str().unwrap().to_owned();
    let r = d
        .post("/v1/phone-numbers")
        .json(&json!({"number": NUMBER, "agent_id": id, "trunk_id": "trk_carrier"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    id
}

fn echo(max_duration: u32) -> Value {
    json!({"name": "echo", "kind": "echo", "max_duration_seconds": max_duration})
}

/// A daemon with the carrier trunk (127.0.0.1, 10 calls) and the number on
/// an echo agent.
async fn echo_daemon() -> TestDaemon {
    let d = TestDaemon::builder()
        .profile("carrier", &trunk("127.0.0.1/32", 10, ""))
        .start()
        .await;
    provision(&d, echo(60)).await;
    d
}

/// The sum of the samples of metric `name` whose labels hold `label`.
async fn metric_sum(d: &TestDaemon, name: &str, label: &str) -> u64 {
    let text = d.metrics().await;
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) && l.contains(label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// The newest call once `done` holds for it, within 15 s.
async fn wait_call(d: &TestDaemon, done: impl Fn(&Value) -> bool) -> Value {
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
            && done(call)
        {
            let id = call["id"].as_str().unwrap();
            return d
                .get(&format!("/v1/calls/{id}"))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
        }
        assert!(
            Instant::now() < deadline,
            "no such call: {page}\n{}",
            d.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until the daemon has taken a SIGTERM: `/ready` answers 503.
async fn wait_draining(d: &TestDaemon) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let ready = d.http.get(d.url("/ready")).send().await.unwrap();
        if ready.status() == 503 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "/ready stayed {}",
            ready.status()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `GET /v1/trunks/trk_carrier` once `done` holds for it, within 15 s.
async fn wait_trunk(d: &TestDaemon, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let t: Value = d
            .get("/v1/trunks/trk_carrier")
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if done(&t) {
            return t;
        }
        assert!(Instant::now() < deadline, "{what}: {t}\n{}", d.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn ended(call: &Value) -> bool {
    !call["ended_at"].is_null()
}

fn sip_target(d: &TestDaemon) -> Option<std::net::SocketAddr> {
    Some(([127, 0, 0, 1], d.sip_port).into())
}

async fn call_in(d: &TestDaemon, scenario: &str, extra: &[&str]) -> common::SippRun {
    let mut args = vec!["-s", NUMBER];
    args.extend_from_slice(extra);
    run_sipp(scenario, free_udp_port(), sip_target(d), &args, LIMIT).await
}

/// A SIPp call with RTP (`-mi`/`-mp` on a free port) that must succeed;
/// returns the call once ended.
async fn call_in_with_media(d: &TestDaemon, scenario: &str) -> Value {
    let media_port = free_udp_port().to_string();
    let run = call_in(d, scenario, &["-mi", "127.0.0.1", "-mp", &media_port]).await;
    assert!(run.success, "{}\n{}", run.output, d.log());
    wait_call(d, ended).await
}

async fn inbound_answered_and_ended_by_caller(backend: Backend) {
    let d = TestDaemon::builder()
        .backend(backend)
        .profile("carrier", &trunk("127.0.0.1/32", 10, ""))
        .start()
        .await;
    let agent = provision(&d, echo(60)).await;
    let run = call_in(&d, "uac-invite-expect-200-bye.xml", &["-d", "700"]).await;
    assert!(run.success, "{}\n{}", run.output, d.log());
    let call = wait_call(&d, ended).await;
    assert_eq!(call["direction"], "inbound");
    assert_eq!(call["status"], "completed", "{call}");
    assert_eq!(call["sip_code"], 200);
    assert_eq!(call["end_reason"], "caller_hangup");
    assert_eq!(call["to"], NUMBER);
    assert_eq!(call["trunk_id"], "trk_carrier");
    assert_eq!(call["agent_id"], agent.as_str());
    for t in ["created_at", "ringing_at", "answered_at", "ended_at"] {
        assert!(call[t].is_string(), "{t} missing: {call}");
    }
    assert!(call["duration_ms"].as_i64().unwrap() >= 500, "{call}");
    let list: Value = d
        .get("/v1/calls?status=completed&direction=inbound")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list["total"], 1);
}

/// Inbound routing reads the number and its agent in one statement, with
/// no cache: a number deleted or moved to another agent through the API
/// routes the next call accordingly (404, or the new agent) at once.
async fn a_number_changed_through_the_api_routes_the_next_call(backend: Backend) {
    let d = TestDaemon::builder()
        .backend(backend)
        .profile("carrier", &trunk("127.0.0.1/32", 10, ""))
        .start()
        .await;
    let first = provision(&d, echo(60)).await;
    let run = call_in(&d, "uac-invite-expect-200-bye.xml", &["-d", "200"]).await;
    assert!(run.success, "{}\n{}", run.output, d.log());
    let call = wait_call(&d, ended).await;
    assert_eq!(call["agent_id"], first.as_str(), "{call}");

    let numbers: Value = d
        .get("/v1/phone-numbers")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let number_id = numbers["items"][0]["id"].as_str().unwrap().to_owned();
    let r = d
        .delete(&format!("/v1/phone-numbers/{number_id}"))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    let run = call_in(&d, "uac-invite-expect-404.xml", &[]).await;
    assert!(run.success, "deleted number still answered: {}", run.output);

    let second = provision(&d, echo(60)).await;
    let run = call_in(&d, "uac-invite-expect-200-bye.xml", &["-d", "200"]).await;
    assert!(run.success, "{}\n{}", run.output, d.log());
    let call = wait_call(&d, |c| ended(c) && c["agent_id"] != first.as_str()).await;
    assert_eq!(call["agent_id"], second.as_str(), "{call}");
}

both_backends!(
    inbound_answered_and_ended_by_caller,
    a_call_lost_in_a_crash_is_ended_at_the_next_start,
    a_number_changed_through_the_api_routes_the_next_call
);

#[tokio::test]
async fn inbound_ended_by_the_daemon_at_max_duration() {
    let d = TestDaemon::builder()
        .profile("carrier", &trunk("127.0.0.1/32", 10, ""))
        .start()
        .await;
    provision(&d, echo(1)).await;
    let run = call_in(&d, "uac-invite-expect-bye-from-daemon.xml", &[]).await;
    assert!(run.success, "{}\n{}", run.output, d.log());
    let call = wait_call(&d, ended).await;
    assert_eq!(call["status"], "completed");
    assert_eq!(call["end_reason"], "max_duration");
}

#[tokio::test]
async fn inbound_cancel_before_answer() {
    let d = TestDaemon::builder()
        .profile("carrier", &trunk("127.0.0.1/32", 10, ""))
        .config("[calls]\nanswer_delay_ms = 5000")
        .start()
        .await;
    provision(&d, echo(60)).await;
    let run = call_in(&d, "uac-invite-cancel-expect-487.xml", &[]).await;
    assert!(run.success, "{}\n{}", run.output, d.log());
    let call = wait_call(&d, ended).await;
    assert_eq!(call["status"], "canceled");
    assert_eq!(call["end_reason"], "canceled");
    assert_eq!(call["sip_code"], 487);
    assert!(call["answered_at"].is_null());
}

#[tokio::test]
async fn inbound_unknown_number_404_and_source_not_allowed_403() {
    let d = echo_daemon().await;
    let run = run_sipp(
        "uac-invite-expect-404.xml",
        free_udp_port(),
        sip_target(&d),
        &["-s", "+14155550100"],
        LIMIT,
    )
    .await;
    assert!(run.success, "{}", run.output);

    let d = TestDaemon::builder()
        .profile("carrier", &trunk("10.0.0.0/8", 10, ""))
        .env("AGENTLINE_SIP__UNKNOWN_SOURCE", "reject")
        .start()
        .await;
    provision(&d, echo(60)).await;
    let run = call_in(&d, "uac-invite-expect-403.xml", &[]).await;
    assert!(run.success, "{}", run.output);
}

#[tokio::test]
async fn inbound_source_not_allowed_is_dropped_in_drop_mode() {
    let d = TestDaemon::builder()
        .profile("carrier", &trunk("10.0.0.0/8", 10, ""))
        .env("AGENTLINE_SIP__UNKNOWN_SOURCE", "drop")
        .start()
        .await;
    provision(&d, echo(60)).await;
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let local = socket.local_addr().unwrap();
    let target = sip_target(&d).unwrap();
    let invite = format!(
        "INVITE sip:{NUMBER}@{target} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bKdrop2\r\nFrom: <sip:a@{local}>;tag=1\r\nTo: <sip:{NUMBER}@{target}>\r\nCall-ID: drop2\r\nCSeq: 1 INVITE\r\nContact: <sip:a@{local}>\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
    );
    socket.send_to(invite.as_bytes(), target).await.unwrap();
    let mut buf = [0u8; 2048];
    let got = tokio::time::timeout(Duration::from_secs(2), socket.recv_from(&mut buf)).await;
    assert!(got.is_err(), "a dropped source got an answer");
}

#[tokio::test]
async fn inbound_over_max_calls_gets_486() {
    let d = TestDaemon::builder()
        .profile("carrier", &trunk("127.0.0.1/32", 1, ""))
        .start()
        .await;
    provision(&d, echo(3)).await;
    let first = tokio::spawn(run_sipp(
        "uac-invite-expect-bye-from-daemon.xml",
        free_udp_port(),
        sip_target(&d),
        &["-s", NUMBER],
        LIMIT,
    ));
    wait_call(&d, |c| c["status"] == "in-progress").await;
    let trunk: Value = d
        .get("/v1/trunks/trk_carrier")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(trunk["active_calls"], 1, "{trunk}");
    let run = call_in(&d, "uac-invite-expect-486.xml", &[]).await;
    assert!(run.success, "{}", run.output);
    // The refused call is on record, as the caller was told (recorded
    // just after the answer went out).
    let refused = wait_call(&d, |c| c["status"] == "busy").await;
    assert_eq!(refused["direction"], "inbound", "{refused}");
    assert_eq!(refused["to"], NUMBER);
    assert_eq!(refused["sip_code"], 486, "{refused}");
    assert_eq!(refused["end_reason"], "trunk_full", "{refused}");
    assert!(refused["answered_at"].is_null(), "{refused}");
    assert!(refused["ended_at"].is_string(), "{refused}");
    let first = first.await.unwrap();
    assert!(first.success, "{}", first.output);
}

#[tokio::test]
async fn inbound_over_trunk_cps_gets_503() {
    let d = TestDaemon::builder()
        .profile("carrier", &trunk("127.0.0.1/32", 100, "cps = 2\n"))
        .start()
        .await;
    provision(&d, echo(60)).await;
    // Ten INVITEs within a quarter of a second: a burst of two fits.
    let run = call_in(
        &d,
        "uac-invite-expect-200-bye.xml",
        &["-m", "10", "-r", "40", "-d", "100"],
    )
    .await;
    assert!(
        !run.success,
        "calls over the rate must fail: {}",
        run.output
    );
    let refused = metric_sum(&d, "agentline_calls_ended_total", "reason=\"trunk_cps\"").await;
    let page: Value = d
        .get("/v1/calls")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let answered = page["total"].as_u64().unwrap();
    assert!(
        (2..=3).contains(&answered),
        "burst of 2 (+1 refilled): {page}"
    );
    assert_eq!(refused + answered, 10, "{page}");
}

#[tokio::test]
async fn inbound_hold_reinvite_answered_without_hanging_up() {
    let d = echo_daemon().await;
    let run = call_in(&d, "uac-invite-hold-expect-200.xml", &[]).await;
    assert!(run.success, "{}\n{}", run.output, d.log());
    let call = wait_call(&d, ended).await;
    assert_eq!(call["status"], "completed");
    assert_eq!(call["end_reason"], "caller_hangup");
}

#[tokio::test]
async fn inbound_rfc4733_digits_are_stored_on_the_call() {
    let d = echo_daemon().await;
    let call = call_in_with_media(&d, "uac-invite-dtmf-expect-200-bye.xml").await;
    let dtmf = call["dtmf"].as_str().unwrap();
    // The shipped pcaps reuse one SSRC and sequence numbers, so the first
    // digit may be taken for a duplicate; the second must arrive.
    assert!(dtmf.ends_with('5'), "{call}\n{}", d.log());
}

#[tokio::test]
async fn inbound_late_offer_gets_our_offer_and_media_runs_on_the_ack_answer() {
    let d = echo_daemon().await;
    let call = call_in_with_media(&d, "uac-invite-late-offer-expect-offer-in-200.xml").await;
    assert_eq!(call["status"], "completed", "{call}");
    assert_eq!(call["end_reason"], "caller_hangup", "{call}");
    // The digits came over RTP to the port our offer named, decoded with
    // the event payload type the ACK's answer agreed.
    let dtmf = call["dtmf"].as_str().unwrap();
    assert!(dtmf.ends_with('5'), "{call}\n{}", d.log());
}

#[tokio::test]
async fn inbound_late_offer_without_an_answer_in_the_ack_is_hung_up() {
    let d = echo_daemon().await;
    let run = call_in(
        &d,
        "uac-invite-late-offer-ack-without-answer-expect-bye.xml",
        &[],
    )
    .await;
    assert!(run.success, "{}\n{}", run.output, d.log());
    let call = wait_call(&d, ended).await;
    assert_eq!(call["end_reason"], "not_acceptable", "{call}");
    assert!(call["answered_at"].is_string(), "{call}");
}

#[tokio::test]
async fn reinvite_without_offer_gets_our_offer_and_the_ack_answer_applies() {
    let d = echo_daemon().await;
    let call = call_in_with_media(
        &d,
        "uac-invite-reinvite-without-offer-expect-offer-in-200.xml",
    )
    .await;
    assert_eq!(call["end_reason"], "caller_hangup", "{call}");
    // The ACK's answer has no telephone-event: the events sent after it
    // are packets of a type the call no longer has, not digits.
    assert!(!call["dtmf"].as_str().unwrap_or("").contains('1'), "{call}");
    let unknown = metric_sum(
        &d,
        "agentline_rtp_packets_dropped_total",
        "reason=\"unknown_payload_type\"",
    )
    .await;
    assert!(unknown > 0, "{}", d.log());
}

#[tokio::test]
async fn inbound_sip_info_keys_are_stored_on_the_call() {
    let d = echo_daemon().await;
    let run = call_in(&d, "uac-invite-info-dtmf-expect-200-bye.xml", &[]).await;
    assert!(run.success, "{}\n{}", run.output, d.log());
    let call = wait_call(&d, ended).await;
    assert_eq!(call["dtmf"], "4#", "{call}");
    assert_eq!(call["end_reason"], "caller_hangup");
}

#[tokio::test]
async fn inbound_hangup_via_api() {
    let d = echo_daemon().await;
    let caller = tokio::spawn(run_sipp(
        "uac-invite-expect-bye-from-daemon.xml",
        free_udp_port(),
        sip_target(&d),
        &["-s", NUMBER],
        LIMIT,
    ));
    let call = wait_call(&d, |c| c["status"] == "in-progress").await;
    let id = call["id"].as_str().unwrap();
    let r = d
        .post(&format!("/v1/calls/{id}/hangup"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let run = caller.await.unwrap();
    assert!(run.success, "{}", run.output);
    let call = wait_call(&d, ended).await;
    assert_eq!(call["end_reason"], "api_hangup");
    assert_eq!(call["status"], "completed");
    let r = d
        .post(&format!("/v1/calls/{id}/hangup"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 409);
}

fn outbound_trunk(proxy_port: u16, extra: &str) -> String {
    format!(
        "name = \"carrier\"\n[inbound]\nallow = [\"127.0.0.1/32\"]\n[outbound]\nproxy = \"127.0.0.1:{proxy_port}\"\n{extra}"
    )
}

async fn place(d: &TestDaemon, body: Value) -> Value {
    let r = d.post("/v1/calls").json(&body).send().await.unwrap();
    let status = r.status();
    let call: Value = r.json().await.unwrap();
    assert_eq!(status, 201, "{call}");
    assert_eq!(call["status"], "queued");
    call
}

async fn outbound(
    scenario: &'static str,
    extra_profile: &str,
    body: Value,
) -> (Value, common::SippRun) {
    let port = free_udp_port();
    let d = TestDaemon::builder()
        .profile("carrier", &outbound_trunk(port, extra_profile))
        .env("CARRIER_PASSWORD", "pw")
        .start()
        .await;
    provision(
        &d,
        json!({"name": "p", "kind": "prompt", "prompt": {"tone_hz": 440, "duration_ms": 600}}),
    )
    .await;
    let callee = tokio::spawn(run_sipp(scenario, port, None, &[], LIMIT));
    common::wait_for_udp_listener(port).await;
    let mut request = json!({"from": NUMBER, "to": "+442079460958"});
    if let (Some(r), Some(b)) = (request.as_object_mut(), body.as_object()) {
        r.extend(b.clone());
    }
    let placed = place(&d, request).await;
    let run = callee.await.unwrap();
    let call = wait_call(&d, ended).await;
    assert_eq!(call["id"], placed["id"]);
    assert_eq!(call["direction"], "outbound");
    (call, run)
}

#[tokio::test]
async fn outbound_answered_then_ended_by_the_agent() {
    let (call, run) = outbound(
        "uas-invite-expect-answer-then-bye.xml",
        "",
        json!({"metadata": {"crm": 7}, "headers": {"X-Campaign": "c42"}}),
    )
    .await;
    assert!(run.success, "{}", run.output);
    assert_eq!(call["status"], "completed", "{call}");
    assert_eq!(call["sip_code"], 200);
    assert_eq!(call["end_reason"], "agent_hangup");
    assert_eq!(call["metadata"]["crm"], 7);
    assert!(call["answered_at"].is_string());
}

#[tokio::test]
async fn outbound_busy() {
    let (call, run) = outbound("uas-invite-expect-486-busy.xml", "", json!({})).await;
    assert!(run.success, "{}", run.output);
    assert_eq!(call["status"], "busy", "{call}");
    assert_eq!(call["sip_code"], 486);
    assert_eq!(call["end_reason"], "busy");
}

#[tokio::test]
async fn outbound_not_answered_within_ring_timeout() {
    let (call, run) = outbound(
        "uas-invite-late-180-expect-cancel.xml",
        "",
        json!({"ring_timeout_seconds": 2}),
    )
    .await;
    assert!(run.success, "{}", run.output);
    assert_eq!(call["status"], "no-answer", "{call}");
    assert_eq!(call["end_reason"], "no_answer");
}

#[tokio::test]
async fn outbound_challenged_with_407() {
    let registrar = free_udp_port();
    let (call, run) = outbound(
        "uas-invite-407-then-expect-answer.xml",
        &format!(
            "[registration]\nregistrar = \"127.0.0.1:{registrar}\"\nusername = \"bob\"\npassword_env = \"CARRIER_PASSWORD\"\n"
        ),
        json!({}),
    )
    .await;
    assert!(run.success, "{}", run.output);
    assert_eq!(call["status"], "completed", "{call}");
}

#[tokio::test]
async fn trunk_registration_state_is_visible() {
    let port = free_udp_port();
    let registrar = tokio::spawn(run_sipp(
        "uas-register-401-then-200-refresh.xml",
        port,
        None,
        &[],
        Duration::from_secs(60),
    ));
    common::wait_for_udp_listener(port).await;
    let d = TestDaemon::builder()
        .profile(
            "carrier",
            &format!(
                "name = \"carrier\"\n[registration]\nregistrar = \"127.0.0.1:{port}\"\nusername = \"alice\"\npassword_env = \"CARRIER_PASSWORD\"\nexpires = 60\n"
            ),
        )
        .env("CARRIER_PASSWORD", "secret")
        .start()
        .await;
    let t = wait_trunk(&d, "not registered", |t| {
        t["registration"]["state"] == "registered"
    })
    .await;
    assert!(t["registration"]["expires_at"].is_string(), "{t}");
    registrar.abort();
}

/// The trunk's health from OPTIONS probes: up while SIPp answers them, down
/// once it has gone (with `trunk.up` then `trunk.down`), and not probed
/// after SIGHUP takes `ping_seconds` away.
#[tokio::test]
async fn trunk_health_follows_the_options_probes() {
    let port = free_udp_port();
    let proxy = tokio::spawn(run_sipp(
        "uas-options-expect-probe-answer-200.xml",
        port,
        None,
        &["-m", "5"],
        LIMIT,
    ));
    common::wait_for_udp_listener(port).await;
    let profile = |ping: &str| {
        format!("name = \"carrier\"\n[outbound]\nproxy = \"127.0.0.1:{port}\"\n{ping}")
    };
    let d = TestDaemon::builder()
        .profile("carrier", &profile("ping_seconds = 1\n"))
        .start()
        .await;
    let health = |want: &'static str| {
        let d = &d;
        async move {
            let t = wait_trunk(d, &format!("health not {want}"), |t| {
                t["health"]["state"] == want
            })
            .await;
            t["health"].clone()
        }
    };
    let up = health("up").await;
    assert_eq!(up["last_status"], 200, "{up}");
    assert_eq!(up["ping_seconds"], 1, "{up}");
    assert!(
        up["rtt_ms"].is_u64() && up["checked_at"].is_string(),
        "{up}"
    );
    assert_eq!(
        metric_sum(&d, "agentline_trunk_up", "trunk=\"carrier\"").await,
        1
    );

    // SIPp answered its five probes and left: the next probe goes unanswered.
    let run = proxy.await.unwrap();
    assert!(run.success, "{}", run.output);
    let down = health("down").await;
    assert!(down["last_status"].is_null(), "{down}");
    assert!(
        down["last_error"].as_str().is_some_and(|e| !e.is_empty()),
        "{down}"
    );
    assert!(down["down_since"].is_string(), "{down}");
    assert_eq!(
        metric_sum(&d, "agentline_trunk_up", "trunk=\"carrier\"").await,
        0
    );

    std::fs::write(d.profiles_dir().join("carrier.toml"), profile("")).unwrap();
    d.signal("HUP");
    let off = health("not_configured").await;
    assert!(off["ping_seconds"].is_null(), "{off}");

    // One event per change, however many probes stayed down.
    let events = d.store().await.events_after(0, 1000).await.expect("events");
    let trunk_events: Vec<(String, Value)> = events
        .into_iter()
        .filter(|e| e.event_type.as_str().starts_with("trunk."))
        .map(|e| {
            let payload = serde_json::from_str(&e.payload).unwrap();
            (e.event_type.to_string(), payload)
        })
        .collect();
    let types: Vec<&str> = trunk_events.iter().map(|(t, _)| t.as_str()).collect();
    // A probe sent before SIPp was listening may have made a first down.
    let changes = types.strip_prefix(&["trunk.down"][..]).unwrap_or(&types);
    assert_eq!(changes, ["trunk.up", "trunk.down"], "{trunk_events:?}");
    let (up, down) = (
        &trunk_events[types.len() - 2].1,
        &trunk_events[types.len() - 1].1,
    );
    assert_eq!(up["data"]["sip_code"], 200, "{up}");
    assert_eq!(down["data"]["trunk_id"], "carrier", "{down}");
    assert!(down["data"]["sip_code"].is_null(), "{down}");
}

#[tokio::test]
async fn sigterm_drains_then_a_second_signal_hangs_up() {
    let mut d = TestDaemon::builder()
        .profile("carrier", &trunk("127.0.0.1/32", 10, ""))
        .start()
        .await;
    provision(&d, echo(60)).await;
    // A call that the caller ends after 3 s: it must finish normally.
    let active = tokio::spawn(run_sipp(
        "uac-invite-expect-200-bye.xml",
        free_udp_port(),
        sip_target(&d),
        &["-s", NUMBER, "-d", "3000"],
        LIMIT,
    ));
    wait_call(&d, |c| c["status"] == "in-progress").await;
    d.signal("TERM");
    wait_draining(&d).await;
    let refused = call_in(&d, "uac-invite-expect-503.xml", &[]).await;
    assert!(refused.success, "{}", refused.output);
    let run = active.await.unwrap();
    assert!(run.success, "{}", run.output);
    let status = d.wait_exit(Duration::from_secs(10)).await;
    assert!(status.success(), "{status}\n{}", d.log());

    // Second run: a call up, two SIGTERMs: the daemon hangs up with BYE.
    d.restart().await;
    let held = tokio::spawn(run_sipp(
        "uac-invite-expect-bye-from-daemon.xml",
        free_udp_port(),
        sip_target(&d),
        &["-s", NUMBER],
        LIMIT,
    ));
    wait_call(&d, |c| c["status"] == "in-progress").await;
    d.signal("TERM");
    // Signals of one kind coalesce until the daemon has taken the first.
    wait_draining(&d).await;
    d.signal("TERM");
    let run = held.await.unwrap();
    assert!(run.success, "{}", run.output);
    let status = d.wait_exit(Duration::from_secs(10)).await;
    assert!(status.success(), "{status}\n{}", d.log());
    let store = d.store().await;
    let page = store
        .list_calls(
            &Default::default(),
            agentline::store::Window {
                limit: 1,
                offset: 0,
            },
        )
        .await
        .unwrap();
    assert_eq!(page.items[0].end_reason.as_deref(), Some("shutdown"));
}

#[tokio::test]
async fn malformed_sip_during_a_call_leaves_it_unaffected() {
    let d = TestDaemon::builder()
        .profile("carrier", &trunk("127.0.0.1/32", 10, ""))
        .start()
        .await;
    provision(&d, echo(4)).await;
    let caller = tokio::spawn(run_sipp(
        "uac-invite-expect-bye-from-daemon.xml",
        free_udp_port(),
        sip_target(&d),
        &["-s", NUMBER],
        LIMIT,
    ));
    wait_call(&d, |c| c["status"] == "in-progress").await;
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/rfc4475");
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let target = sip_target(&d).unwrap();
    let mut sent = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let bytes = std::fs::read(entry.unwrap().path()).unwrap();
        socket.send_to(&bytes, target).await.unwrap();
        sent += 1;
    }
    assert!(sent >= 40, "torture messages missing");
    let run = caller.await.unwrap();
    assert!(run.success, "{}\n{}", run.output, d.log());
    let call = wait_call(&d, ended).await;
    assert_eq!(call["end_reason"], "max_duration", "{call}");
    assert_eq!(call["status"], "completed");
}

/// A call up when the daemon is killed (-9) is ended when the daemon starts
/// again, with `call.ended` and end reason `lost`: nothing else would ever
/// end its record. On PostgreSQL only this node's calls are its to end; an
/// unended call of no node (another daemon's) is left alone.
async fn a_call_lost_in_a_crash_is_ended_at_the_next_start(backend: Backend) {
    let mut d = TestDaemon::builder()
        .backend(backend)
        .profile("carrier", &trunk("127.0.0.1/32", 10, ""))
        .start()
        .await;
    provision(&d, echo(60)).await;
    let store = d.store().await;
    let foreign = agentline::ids::new(agentline::ids::CALL);
    store
        .call_created(
            agentline::store::calls::NewCall {
                id: &foreign,
                direction: agentline::model::Direction::Inbound,
                from_number: "+14155550111",
                to_number: NUMBER,
                trunk: None,
                agent_id: None,
                status: agentline::model::CallStatus::Ringing,
                sip_call_id: None,
                metadata: "{}",
                campaign: None,
                context: None,
                agent_source: None,
                agent_source_error: None,
                livemode: true,
                api_key_id: None,
            },
            None,
        )
        .await
        .unwrap();
    let caller = tokio::spawn(run_sipp(
        "uac-invite-expect-200-bye.xml",
        free_udp_port(),
        sip_target(&d),
        &["-s", NUMBER, "-d", "60000"],
        LIMIT,
    ));
    let call = wait_call(&d, |c| c["status"] == "in-progress").await;
    let id = call["id"].as_str().unwrap().to_owned();
    d.kill9().await;
    caller.abort();
    d.restart().await;

    let call = wait_call(&d, ended).await;
    assert_eq!(call["id"], id.as_str());
    assert_eq!(call["status"], "completed", "{call}");
    assert_eq!(call["end_reason"], "lost", "{call}");
    assert!(call["ended_at"].is_string(), "{call}");
    assert!(
        call["duration_ms"].is_null(),
        "unknown, not made up: {call}"
    );
    let events = store.events_after(0, 1000).await.unwrap();
    let ended: Vec<_> = events
        .iter()
        .filter(|e| {
            e.call_id.as_deref() == Some(id.as_str()) && e.event_type.as_str() == "call.ended"
        })
        .collect();
    assert_eq!(ended.len(), 1, "one call.ended for the lost call");

    let other = store.get_call(&foreign).await.unwrap();
    match backend {
        // One daemon per SQLite file: every unended call was its own.
        Backend::Sqlite => {
            assert_eq!(other.end_reason.as_deref(), Some("lost"));
            assert_eq!(other.status.as_str(), "failed", "never answered");
        }
        Backend::Postgres => assert!(other.ended_at.is_none(), "another node's call"),
    }
}
