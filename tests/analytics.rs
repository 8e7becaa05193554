//! `GET /v1/analytics/calls` against the real daemon on both stores (issue
//! 17): after a campaign whose callee (SIPp) answers, says busy or never
//! answers by the number's last digit, the analytics match the counts
//! taken from `GET /v1/calls` (filtered by the new `campaign_id` and
//! `end_reason`); and unknown query parameters are refused by name.

// A test's unwrap, expect or panic is its failure report: the daemon's bans
// (Cargo.toml `[lints]`) do not apply here.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use chrono::{Timelike, Utc};
use common::{Backend, TestDaemon, error_fields, json_of};
use serde_json::{Value, json};

const CALLER: &str = "+14155550100";
/// Contacts: the last digits 0 to 9 once each, and 0 to 3 again (answered).
const CONTACTS: usize = 14;

/// SIPp as the callee on a free port, for at most 120 s.
fn callee() -> (tokio::process::Child, u16) {
    common::require_sipp();
    let port = common::free_udp_port();
    let sipp = tokio::process::Command::new("sipp")
        .args(["-sf", &common::scenario("uas-invite-mixed-outcomes.xml")])
        .args(["-i", "127.0.0.1", "-p", &port.to_string()])
        .args(["-nostdin", "-timeout", "120s"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn sipp");
    (sipp, port)
}

/// A fixed-offset zone where the local time is now `hour` plus minutes.
fn zone_at(hour: i64) -> String {
    let now = i64::from(Utc::now().hour());
    let mut offset = hour - now;
    if offset < -12 {
        offset += 24;
    }
    if offset > 14 {
        offset -= 24;
    }
    match offset {
        0 => "Etc/GMT".to_owned(),
        o if o > 0 => format!("Etc/GMT-{o}"),
        o => format!("Etc/GMT+{}", -o),
    }
}

async fn ok(r: reqwest::RequestBuilder) -> Value {
    let (status, body) = json_of(r.send().await.unwrap()).await;
    assert!(status.is_success(), "{status}: {body}");
    body
}

/// Every call of the campaign, through `GET /v1/calls` pages.
async fn calls_of(d: &TestDaemon, campaign: &str, filter: &str) -> Vec<Value> {
    let mut all = Vec::new();
    for page in 0..20 {
        let list = ok(d.get(&format!(
            "/v1/calls?campaign_id={campaign}{filter}&limit=100&offset={}",
            page * 100
        )))
        .await;
        let items = list["items"].as_array().unwrap();
        all.extend(items.iter().cloned());
        if items.len() < 100 {
            break;
        }
    }
    all
}

/// Nearest-rank percentile, as the daemon documents it.
fn percentile(sorted: &[i64], p: f64) -> Option<i64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

async fn analytics_match_the_calls_of_a_mixed_campaign(backend: Backend) {
    let (_sipp, sipp_port) = callee();
    let d = TestDaemon::builder()
        .backend(backend)
        .profile(
            "callee",
            &format!(
                "name = \"callee\"\n[inbound]\nallow = [\"127.0.0.1/32\"]\n\
                 [outbound]\nproxy = \"127.0.0.1:{sipp_port}\"\n[limits]\nmax_calls = 20\ncps = 200\n"
            ),
        )
        .config(
            "[calls]\nring_timeout_seconds = 1\n[campaigns]\nmax_concurrent_calls = 50\n\
             poll_ms = 100\nmin_retry_delay_seconds = 1",
        )
        .start()
        .await;
    let from = Utc::now() - chrono::Duration::seconds(5);
    let agent = ok(d
        .post("/v1/agents")
        .json(&json!({"name": "caller", "kind": "echo", "max_duration_seconds": 1})))
    .await;
    ok(d.post("/v1/phone-numbers")
        .json(&json!({"number": CALLER, "agent_id": agent["id"], "trunk_id": "trk_callee"})))
    .await;
    let campaign = ok(d.post("/v1/campaigns").json(&json!({
        "name": "mixed",
        "agent_id": agent["id"],
        "caller_number": CALLER,
        "trunk_ids": ["trk_callee"],
        "schedule": {"start_time": "06:00", "end_time": "18:00", "timezone": zone_at(12)},
        "max_concurrent_calls": 5,
        "calls_per_second": 50,
        "max_attempts": 1,
    })))
    .await;
    let id = campaign["id"].as_str().unwrap().to_owned();
    let contacts: Vec<Value> = (0..CONTACTS)
        .map(|i| json!({"number": format!("+1415556{:04}", i * 10 + i % 10), "timezone": zone_at(12)}))
        .collect();
    ok(d.post(&format!("/v1/campaigns/{id}/contacts"))
        .json(&json!({"contacts": contacts})))
    .await;
    ok(d.post(&format!("/v1/campaigns/{id}/start"))).await;
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let c = ok(d.get(&format!("/v1/campaigns/{id}"))).await;
        let calls = calls_of(&d, &id, "").await;
        if c["status"] == "completed"
            && calls.len() == CONTACTS
            && calls.iter().all(|c| !c["ended_at"].is_null())
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "campaign not done: {c}\n{}",
            d.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let to = Utc::now() + chrono::Duration::seconds(1);

    // The counts, from GET /v1/calls.
    let calls = calls_of(&d, &id, "").await;
    let mut by_reason: BTreeMap<String, usize> = BTreeMap::new();
    let mut by_status: BTreeMap<String, i64> = BTreeMap::new();
    for c in &calls {
        *by_reason
            .entry(c["end_reason"].as_str().unwrap().to_owned())
            .or_default() += 1;
        *by_status
            .entry(c["status"].as_str().unwrap().to_owned())
            .or_default() += 1;
    }
    assert!(by_reason.len() >= 3, "a mixed campaign: {by_reason:?}");
    for (reason, n) in &by_reason {
        let filtered = calls_of(&d, &id, &format!("&end_reason={reason}")).await;
        assert_eq!(filtered.len(), *n, "{reason}");
        assert!(filtered.iter().all(|c| c["end_reason"] == reason.as_str()));
    }
    let answered: Vec<&Value> = calls
        .iter()
        .filter(|c| !c["answered_at"].is_null())
        .collect();
    let mut durations: Vec<i64> = answered
        .iter()
        .filter_map(|c| c["duration_ms"].as_i64())
        .collect();
    durations.sort_unstable();
    let mean = durations.iter().sum::<i64>() as f64 / durations.len() as f64;

    let query = |group: &str| {
        format!(
            "/v1/analytics/calls?from={}&to={}&group_by={group}",
            from.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
                .replace('+', "%2B"),
            to.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
                .replace('+', "%2B"),
        )
    };
    let a = ok(d.get(&query("campaign"))).await;
    let groups = a["groups"].as_array().unwrap();
    assert_eq!(groups.len(), 1, "{a}");
    let g = &groups[0];
    assert_eq!(g["key"], id.as_str(), "{a}");
    assert_eq!(g["calls"], CONTACTS as i64, "{a}");
    assert_eq!(g["answered"], answered.len() as i64, "{a}");
    let rate = g["answer_rate"].as_f64().unwrap();
    assert!(
        (rate - answered.len() as f64 / CONTACTS as f64).abs() < 1e-9,
        "{a}"
    );
    assert_eq!(g["statuses"], json!(by_status), "{a}");
    assert_eq!(g["duration_ms"]["count"], durations.len() as i64, "{a}");
    assert!(
        (g["duration_ms"]["mean"].as_f64().unwrap() - mean).abs() <= 0.05,
        "{a}"
    );
    assert_eq!(g["duration_ms"]["p50"], json!(percentile(&durations, 50.0)));
    assert_eq!(g["duration_ms"]["p95"], json!(percentile(&durations, 95.0)));
    assert_eq!(g["answered_by"], json!({}), "no AMD ran: {a}");
    assert_eq!(g["turn_latency"]["first_rtp_ms"]["count"], 0, "echo: {a}");
    assert_eq!(a["total"]["calls"], CONTACTS as i64);
    assert!(a["total"]["key"].is_null());

    let a = ok(d.get(&query("end_reason"))).await;
    let got: BTreeMap<String, usize> = a["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| {
            (
                g["key"].as_str().unwrap().to_owned(),
                g["calls"].as_u64().unwrap() as usize,
            )
        })
        .collect();
    assert_eq!(got, by_reason, "{a}");

    // The UTC days the calls were created on (two if the run straddled
    // midnight), each with its calls.
    let mut by_day: BTreeMap<String, i64> = BTreeMap::new();
    for c in &calls {
        let created = c["created_at"].as_str().unwrap();
        *by_day.entry(created[..10].to_owned()).or_default() += 1;
    }
    let a = ok(d.get(&query("day"))).await;
    let got: BTreeMap<String, i64> = a["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| {
            (
                g["key"].as_str().unwrap().to_owned(),
                g["calls"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(got, by_day, "{a}");
    let a = ok(d.get(&query("direction"))).await;
    assert_eq!(a["groups"][0]["key"], "outbound");
    assert_eq!(a["groups"][0]["calls"], CONTACTS as i64);

    // Bad ranges and unknown parameters are named.
    for (path, field) in [
        (format!("{}&page=2", query("agent")), "page"),
        (query("week"), "group_by"),
        (
            "/v1/analytics/calls?from=2026-01-02T00:00:00Z&to=2026-01-01T00:00:00Z".into(),
            "from",
        ),
        ("/v1/calls?page=2".into(), "page"),
    ] {
        let (status, e) = json_of(d.get(&path).send().await.unwrap()).await;
        assert!(status == 422 || status == 400, "{path}: {status} {e}");
        assert_eq!(
            error_fields(&e, status),
            vec![field.to_string()],
            "{path}: {e}"
        );
    }
}

both_backends!(analytics_match_the_calls_of_a_mixed_campaign);
