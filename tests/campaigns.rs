//! Black-box tests of campaigns and the do-not-call list, on SQLite and
//! PostgreSQL.

// A test's unwrap, expect or panic is its failure report: the daemon's bans
// (Cargo.toml `[lints]`) do not apply here.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use agentline::store::contacts::{AfterAttempt, Disposition};
use common::{Backend, TestDaemon, json_of};
use reqwest::StatusCode;
use serde_json::{Value, json};

const TRUNK: &str = r#"
name = "carrier-a"
[inbound]
allow = ["127.0.0.1/32"]
[outbound]
proxy = "127.0.0.1:5080"
caller_id = "+14155550100"
[limits]
max_calls = 7
cps = 3
"#;

async fn daemon(backend: Backend) -> TestDaemon {
    TestDaemon::builder()
        .backend(backend)
        .profile("carrier-a", TRUNK)
        .start()
        .await
}

async fn campaign(d: &TestDaemon) -> Value {
    let (s, agent) = json_of(
        d.post("/v1/agents")
            .json(&json!({"name": "caller", "kind": "echo"}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{agent}");
    let (s, c) = json_of(
        d.post("/v1/campaigns")
            .json(&json!({
                "name": "renewals",
                "agent_id": agent["id"],
                "caller_number": "+1 415 555 0100",
                "trunk_ids": ["trk_carrier-a"],
                "schedule": {"weekdays": ["mon", "tue", "wed", "thu", "fri"], "timezone": "America/New_York"},
                "max_concurrent_calls": 5,
            }))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{c}");
    c
}

async fn crud_and_transitions(backend: Backend) {
    let d = daemon(backend).await;
    let c = campaign(&d).await;
    let id = c["id"].as_str().unwrap();
    assert!(id.starts_with("cmp_"));
    assert_eq!(c["status"], "draft");
    assert_eq!(c["caller_number"], "+14155550100");
    assert_eq!(c["schedule"]["start_time"], "09:00");
    assert_eq!(c["retry_policy"]["busy"]["retries"], 2);
    assert_eq!(c["max_attempts"], 3);

    // Every problem at once, by field.
    let (s, b) = json_of(
        d.post("/v1/campaigns")
            .json(
                &json!({"name": "", "agent_id": "agt_nope", "caller_number": "555",
                "trunk_ids": ["trk_nope"], "max_concurrent_calls": 0,
                "schedule": {"start_time": "25:00", "timezone": "Nowhere"},
                // Under the default `[campaigns] min_retry_delay_seconds` (60).
                "retry_policy": {"busy": {"retries": 1, "delay_seconds": 59},
                    "no_answer": {"retries": 1, "delay_seconds": 60},
                    "failed": {"retries": 1, "delay_seconds": 60}}}),
            )
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    let fields: Vec<&str> = b["error"]["details"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["field"].as_str().unwrap())
        .collect();
    for f in [
        "name",
        "caller_number",
        "trunk_ids[0]",
        "max_concurrent_calls",
        "schedule.start_time",
        "schedule.timezone",
        "agent_id",
        "retry_policy.busy.delay_seconds",
    ] {
        assert!(fields.contains(&f), "{f} in {fields:?}");
    }
    assert!(!fields.contains(&"retry_policy.no_answer.delay_seconds"));

    let (s, b) = json_of(
        d.patch(&format!("/v1/campaigns/{id}"))
            .json(&json!({"name": "renewals 2"}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (s, b["name"].as_str()),
        (StatusCode::OK, Some("renewals 2"))
    );
    assert_eq!(b["opt_out_digit"], Value::Null, "no opt-out key unless set");
    assert_eq!(b["amd"], "off");
    let patch = |body: Value| d.patch(&format!("/v1/campaigns/{id}")).json(&body).send();
    let (s, b) = json_of(
        patch(json!({"opt_out_digit": "#", "amd": "message_after_beep"}))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(
        (b["opt_out_digit"].as_str(), b["amd"].as_str()),
        (Some("#"), Some("message_after_beep"))
    );
    let (s, b) = json_of(patch(json!({"opt_out_digit": null})).await.unwrap()).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["opt_out_digit"], Value::Null, "null clears the key");
    assert_eq!(b["amd"], "message_after_beep", "left out, kept");
    let (s, b) = json_of(patch(json!({"amd": "sometimes"})).await.unwrap()).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{b}");

    let act = |a: &str| d.post(&format!("/v1/campaigns/{id}/{a}")).send();
    assert_eq!(act("pause").await.unwrap().status(), StatusCode::CONFLICT);
    assert_eq!(act("resume").await.unwrap().status(), StatusCode::CONFLICT);
    let (s, b) = json_of(act("start").await.unwrap()).await;
    assert_eq!((s, b["status"].as_str()), (StatusCode::OK, Some("running")));
    assert!(b["started_at"].is_string());
    assert_eq!(act("start").await.unwrap().status(), StatusCode::CONFLICT);
    let r = d
        .patch(&format!("/v1/campaigns/{id}"))
        .json(&json!({"name": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        StatusCode::CONFLICT,
        "a running campaign is not edited"
    );
    assert_eq!(
        d.delete(&format!("/v1/campaigns/{id}"))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::CONFLICT
    );
    let (_, b) = json_of(act("pause").await.unwrap()).await;
    assert_eq!(b["status"], "paused");
    let (_, b) = json_of(act("resume").await.unwrap()).await;
    assert_eq!(b["status"], "running");
    let (_, b) = json_of(act("cancel").await.unwrap()).await;
    assert_eq!(b["status"], "canceled");
    assert!(b["finished_at"].is_string());
    assert_eq!(act("resume").await.unwrap().status(), StatusCode::CONFLICT);

    let (s, list) = json_of(d.get("/v1/campaigns?status=canceled").send().await.unwrap()).await;
    assert_eq!((s, list["total"].as_i64()), (StatusCode::OK, Some(1)));
    assert_eq!(
        d.get("/v1/campaigns/cmp_nope")
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        d.delete(&format!("/v1/campaigns/{id}"))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        d.get(&format!("/v1/campaigns/{id}"))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::NOT_FOUND
    );
}

async fn contacts_csv_json_dedupe_dnc_and_stats(backend: Backend) {
    let d = daemon(backend).await;
    let c = campaign(&d).await;
    let id = c["id"].as_str().unwrap();
    let path = format!("/v1/campaigns/{id}/contacts");

    // A number on the do-not-call list before the import.
    let (s, dnc) = json_of(
        d.post("/v1/do-not-call")
            .json(&json!({"number": "+1 (212) 555-0104", "reason": "asked"}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{dnc}");
    assert_eq!(dnc["number"], "+12125550104");
    assert!(dnc["id"].as_str().unwrap().starts_with("dnc_"));
    let (s, _) = json_of(
        d.post("/v1/do-not-call")
            .json(&json!({"number": "+12125550104"}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "adding twice returns the entry");

    let csv = "number,first_name,timezone\n\
               +12125550101,Ada,\n\
               not-a-number,Bob,\n\
               +1 212 555 0102,Cy,Asia/Tokyo\n\
               +12125550101,Ada again,\n\
               +12125550103,Di,Mars/Base\n\
               +12125550104,Ed,\n";
    let (s, r) = json_of(
        d.post(&path)
            .header("content-type", "text/csv")
            .body(csv)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{r}");
    assert_eq!(r["received"], 6);
    assert_eq!(r["inserted"], 3);
    assert_eq!(r["duplicates"], 1);
    assert_eq!(r["rejected"], 2);
    assert_eq!(r["blocked"], 1);
    let errs: Vec<(i64, &str)> = r["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["line"].as_i64().unwrap(), e["field"].as_str().unwrap()))
        .collect();
    assert_eq!(errs, [(3, "number"), (6, "timezone")]);

    // JSON adds; the same numbers are duplicates.
    let (s, r) = json_of(
        d.post(&path)
            .json(&json!({"contacts": [
                {"number": "+12125550101"},
                {"number": "+44 20 7946 0958", "variables": {"first_name": "Flo"}},
                {"number": "nope"},
            ]}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{r}");
    assert_eq!(
        (
            r["inserted"].as_i64(),
            r["duplicates"].as_i64(),
            r["rejected"].as_i64()
        ),
        (Some(1), Some(1), Some(1))
    );
    assert_eq!(r["errors"][0]["field"], "contacts[2].number");

    let r = d
        .post(&path)
        .header("content-type", "text/plain")
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let r = d
        .post(&path)
        .header("content-type", "text/csv")
        .body("name\nx\n")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);

    let (_, list) = json_of(d.get(&format!("{path}?limit=100")).send().await.unwrap()).await;
    assert_eq!(list["total"], 4);
    let by_number = |n: &str| {
        list["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["number"] == n)
            .cloned()
            .unwrap()
    };
    assert_eq!(by_number("+12125550101")["variables"]["first_name"], "Ada");
    assert_eq!(by_number("+12125550101")["timezone"], "America/New_York");
    assert_eq!(by_number("+12125550102")["timezone"], "Asia/Tokyo");
    assert_eq!(by_number("+442079460958")["timezone"], "Europe/London");
    assert_eq!(by_number("+12125550104")["state"], "dnc");
    let (_, blocked) = json_of(d.get(&format!("{path}?state=dnc")).send().await.unwrap()).await;
    assert_eq!(blocked["total"], 1);
    assert_eq!(
        d.get(&format!("{path}?state=bogus"))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::BAD_REQUEST
    );

    // A number added to the list later blocks its waiting contact at once.
    let (s, _) = json_of(
        d.post("/v1/do-not-call")
            .json(&json!({"number": "+442079460958"}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED);

    let (s, st) = json_of(
        d.get(&format!("/v1/campaigns/{id}/stats"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{st}");
    assert_eq!(st["contacts_total"], 4);
    assert_eq!(st["contacts"]["pending"], 2);
    assert_eq!(st["contacts"]["dnc"], 2);
    assert_eq!(st["attempts"]["answered"], 0);
    assert_eq!(st["calls_active"], 0);
    assert!(st["answer_rate"].is_null());

    // DNC list, import and delete.
    let (s, r) = json_of(
        d.post("/v1/do-not-call/import")
            .header("content-type", "text/csv")
            .body("number\n+12125550199\nbad\n+12125550104\n")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{r}");
    assert_eq!(
        (
            r["inserted"].as_i64(),
            r["duplicates"].as_i64(),
            r["rejected"].as_i64()
        ),
        (Some(1), Some(1), Some(1))
    );
    assert_eq!(r["errors"][0]["line"], 3);
    let (_, all) = json_of(d.get("/v1/do-not-call").send().await.unwrap()).await;
    assert_eq!(all["total"], 3);
    let (_, one) = json_of(
        d.get("/v1/do-not-call?number=%2B1%20212%20555%200199")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(one["total"], 1);
    let entry = one["items"][0]["id"].as_str().unwrap().to_string();
    assert_eq!(
        d.delete(&format!("/v1/do-not-call/{entry}"))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        d.get(&format!("/v1/do-not-call/{entry}"))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::NOT_FOUND
    );
}

/// `agentline campaign watch` on a finished campaign prints its final
/// progress once and exits; an unknown campaign is a usage error.
async fn watch_prints_the_progress_of_a_finished_campaign(backend: Backend) {
    // The test records the attempts itself, as the dialer would: the node's
    // own dialer must not look at the campaign meanwhile, or it postpones
    // the contacts to the next calling window (a weekend, say) before the
    // test claims them.
    let d = TestDaemon::builder()
        .backend(backend)
        .profile("carrier-a", TRUNK)
        .config("[campaigns]\npoll_ms = 60000\n")
        .start()
        .await;
    let c = campaign(&d).await;
    let id = c["id"].as_str().unwrap().to_string();
    let (s, r) = json_of(
        d.post(&format!("/v1/campaigns/{id}/contacts"))
            .header("content-type", "text/csv")
            .body("number\n+12125550101\n+12125550102\n+12125550103\n+12125550104\n")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (s, r["inserted"].as_i64()),
        (StatusCode::OK, Some(4)),
        "{r}"
    );
    let started = d
        .post(&format!("/v1/campaigns/{id}/start"))
        .send()
        .await
        .unwrap();
    assert_eq!(started.status(), StatusCode::OK);

    // The calls, as the dialer would record them: two answered, one busy
    // and one unanswered, neither retried.
    let store = d.store().await;
    for (i, outcome) in ["answered", "answered", "busy", "no_answer"]
        .into_iter()
        .enumerate()
    {
        let call = format!("call_watch{i}");
        let now = chrono::Utc::now();
        let r = store
            .claim_contact(
                &id,
                now,
                10,
                "test",
                now + chrono::Duration::minutes(5),
                &call,
                "trk_carrier-a",
                |_| Disposition::Dial,
            )
            .await
            .unwrap();
        assert!(r.claimed.is_some());
        let state = if outcome == "answered" {
            "completed"
        } else {
            "exhausted"
        };
        let ended = store
            .finish_attempt(&call, outcome.parse().unwrap(), Some(30_000), now, |_| {
                Ok(AfterAttempt {
                    state,
                    next_attempt_at: None,
                    add_dnc: false,
                })
            })
            .await
            .unwrap();
        assert!(ended.is_some());
    }
    assert!(
        store
            .complete_campaign_if_done(&id, None)
            .await
            .unwrap()
            .is_some()
    );

    let out = d
        .command()
        .args(["campaign", "watch", &id, "--timeout", "30"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines,
        [
            format!("campaign {id}  completed"),
            format!("[{}] 100%  4/4 contacts done", "#".repeat(30)),
            "contacts  completed 2  exhausted 2".to_string(),
            "attempts  4 finished, 0 in flight  (answered 2  busy 1  no_answer 1)".to_string(),
            "answer rate 50.0%  avg call 30.0 s  ETA 0s".to_string(),
        ],
        "{stdout}"
    );
    assert!(
        !stdout.contains('\x1b'),
        "no ANSI codes when not on a terminal"
    );

    let out = d
        .command()
        .args(["campaign", "watch", "cmp_nope", "--timeout", "5"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no campaign cmp_nope"));
}

both_backends!(
    crud_and_transitions,
    contacts_csv_json_dedupe_dnc_and_stats,
    watch_prints_the_progress_of_a_finished_campaign
);
