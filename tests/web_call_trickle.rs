//! Trickle ICE on a web call (RFC 9725 §4.3.1): a headless WebRTC client
//! (str0m + libopus, `examples/web_call_client/client.rs`) sends its offer
//! without candidates and ignores the answer's, so the call can only
//! connect once the daemon learns the client's candidate from a late
//! `PATCH` of the session URL; then the refusals: wrong type (415), an
//! ICE restart (422), an entity tag (412), a malformed fragment (400),
//! another token (401) or origin (403), a call not running (404).

// A test's unwrap, expect or panic is its failure report: the daemon's bans
// (Cargo.toml `[lints]`) do not apply here.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../examples/web_call_client/client.rs"]
mod client;
mod common;

use std::time::Duration;

use common::{TestDaemon, json_of, wait_until};
use reqwest::StatusCode;
use serde_json::json;

const PAGE: &str = "http://127.0.0.1:18083";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn candidates_trickled_late_connect_the_call() {
    let d = TestDaemon::builder().start().await;
    let (s, agent) = json_of(
        d.post("/v1/agents")
            .json(&json!({"name": "echo", "kind": "echo"}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{agent}");
    let agent = agent["id"].as_str().unwrap();
    let (s, pk) = json_of(
        d.post("/v1/publishable-keys")
            .json(&json!({"name": "page", "agent_ids": [agent], "origins": [PAGE]}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{pk}");
    let key = pk["secret"].as_str().unwrap();
    let http = reqwest::Client::new();
    let opts = client::Options {
        base: d.url(""),
        origin: PAGE.into(),
        trickle: true,
        trickle_delay: Duration::from_millis(1500),
        talk: Duration::from_secs(2),
        connect_timeout: Duration::from_secs(15),
    };

    // The late candidate connects the call: not before the PATCH (no
    // side knew the other's address), soon after it.
    let call = client::create(&http, &opts, key, agent).await.unwrap();
    let out = client::run(&http, &opts, &call).await.unwrap();
    println!("trickled call: {out:?}");
    assert_eq!(out.patch_status, Some(204), "{out:?}\n{}", d.log());
    let after = out
        .connected_after
        .unwrap_or_else(|| panic!("never connected: {out:?}\n{}", d.log()));
    assert!(after >= Duration::from_millis(1500), "{out:?}");
    assert!(out.opus_in > 25, "the echo agent's audio arrived: {out:?}");
    assert_eq!(out.delete_status, Some(200), "{out:?}");
    wait_until(Duration::from_secs(15), "the call ends", || async {
        let (_, c) = json_of(
            d.get(&format!("/v1/calls/{}", call.call_id))
                .send()
                .await
                .unwrap(),
        )
        .await;
        c["status"] == "completed"
    })
    .await;

    // A running call's session refuses what it cannot take.
    let running = client::create(&http, &opts, key, agent).await.unwrap();
    let plain = client::Options {
        trickle: false,
        talk: Duration::from_secs(8),
        ..opts.clone()
    };
    let media = {
        let (http, running) = (http.clone(), running.clone());
        tokio::spawn(async move { client::run(&http, &plain, &running).await })
    };
    wait_until(Duration::from_secs(15), "the call is up", || async {
        let (_, c) = json_of(
            d.get(&format!("/v1/calls/{}", running.call_id))
                .send()
                .await
                .unwrap(),
        )
        .await;
        c["status"] == "in-progress"
    })
    .await;
    let session = d.url(&format!("/v1/web-calls/{}/session", running.call_id));
    let patch = |token: &str, origin: &str, ct: &str, if_match: Option<&str>, body: &str| {
        let mut r = http
            .patch(&session)
            .bearer_auth(token)
            .header("origin", origin)
            .header("content-type", ct)
            .body(body.to_string());
        if let Some(m) = if_match {
            r = r.header("if-match", m);
        }
        r.send()
    };
    let restart = "a=ice-ufrag:WRONG\r\na=candidate:1 1 udp 2122260223 127.0.0.1 9 typ host\r\n";
    let only_candidate =
        "a=candidate:1 1 udp 2122260223 127.0.0.1 9 typ host\r\na=end-of-candidates\r\n";
    let t = running.token.as_str();
    let frag = "application/trickle-ice-sdpfrag";
    for (token, origin, ct, if_match, body, want, code) in [
        (t, PAGE, "application/sdp", None, only_candidate, 415, None),
        (
            t,
            PAGE,
            frag,
            Some("*"),
            only_candidate,
            422,
            Some("ice_restart_unsupported"),
        ),
        (t, PAGE, frag, Some("\"abc\""), only_candidate, 412, None),
        (
            t,
            PAGE,
            frag,
            None,
            restart,
            422,
            Some("ice_restart_unsupported"),
        ),
        (
            t,
            PAGE,
            frag,
            None,
            "a=candidate:1 1 udp 1 0.0.0.0 9 typ host",
            400,
            None,
        ),
        (t, PAGE, frag, None, "garbage", 400, None),
        (&"x".repeat(40), PAGE, frag, None, only_candidate, 401, None),
        (
            t,
            "http://127.0.0.1:1",
            frag,
            None,
            only_candidate,
            403,
            None,
        ),
        (t, PAGE, frag, None, only_candidate, 204, None),
    ] {
        let r = patch(token, origin, ct, if_match, body).await.unwrap();
        let status = r.status().as_u16();
        let text = r.text().await.unwrap();
        assert_eq!(status, want, "{ct} {if_match:?} {body:?}: {text}");
        if let Some(code) = code {
            assert!(text.contains(code), "{text}");
        }
    }
    // None of that disturbed the call.
    let out = media.await.unwrap().unwrap();
    assert!(out.connected_after.is_some(), "{out:?}");
    assert!(out.opus_in > 100, "{out:?}");
    // Over: nothing to trickle to.
    wait_until(Duration::from_secs(15), "the second call ends", || async {
        let r = patch(t, PAGE, frag, None, only_candidate).await.unwrap();
        r.status() == StatusCode::NOT_FOUND
    })
    .await;

    // A call whose offer has not come yet has no session to trickle to.
    let queued = client::create(&http, &opts, key, agent).await.unwrap();
    let r = http
        .patch(d.url(&format!("/v1/web-calls/{}/session", queued.call_id)))
        .bearer_auth(&queued.token)
        .header("origin", PAGE)
        .header("content-type", frag)
        .body(only_candidate)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
}
