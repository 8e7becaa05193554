//! Voices, models and the API details of issue 17 against the real daemon:
//! `GET /v1/voices` lists the flite voices installed on this machine (as
//! `flite -lv` prints them) and agents naming another voice or model get
//! 422 naming the field; every PATCH route follows JSON Merge Patch (RFC
//! 7396: `null` clears); unknown query parameters are 422 naming them;
//! numbers with punctuation right after the country code are accepted.

// A test's unwrap, expect or panic is its failure report: the daemon's bans
// (Cargo.toml `[lints]`) do not apply here.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{TestDaemon, error_fields, json_of};
use serde_json::{Value, json};

/// The voices `flite -lv` prints on this machine.
fn installed_flite_voices() -> Vec<String> {
    let out = std::process::Command::new("flite")
        .arg("-lv")
        .output()
        .expect("flite is installed by scripts/test");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let mut v: Vec<String> = text
        .split_once(':')
        .map(|(_, l)| l.split_whitespace().map(str::to_owned).collect())
        .unwrap_or_default();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn voices_and_models_are_listed_and_agents_held_to_them() {
    let d = TestDaemon::builder().allow_loopback().start().await;
    let (status, page) = json_of(
        d.get("/v1/voices?provider=embedded&limit=100")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200, "{page}");
    let mut listed: Vec<String> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["id"].as_str().unwrap().to_owned())
        .collect();
    listed.sort();
    let installed = installed_flite_voices();
    assert!(!installed.is_empty());
    assert_eq!(listed, installed, "{page}");
    assert_eq!(page["total"], installed.len() as i64);
    let slt = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["id"] == "slt")
        .unwrap();
    assert_eq!(slt["default"], true, "[speech] voice is slt: {page}");
    let (_, all) = json_of(d.get("/v1/voices?limit=100").send().await.unwrap()).await;
    assert!(
        all["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|v| v["provider"] == "openai" && v["id"] == "alloy"),
        "{all}"
    );

    let (status, models) = json_of(
        d.get("/v1/models?kind=tts&provider=openai")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200, "{models}");
    let ids: Vec<&str> = models["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids[0], "tts-1", "{models}");
    assert_eq!(models["items"][0]["default"], true);

    let agent = |tts: Value| json!({"name": "v", "kind": "echo", "tts": tts});
    for (tts, field) in [
        (
            json!({"provider": "embedded", "voice": "nosuchvoice"}),
            "tts.voice",
        ),
        (json!({"provider": "openai", "voice": "robot"}), "tts.voice"),
        (json!({"provider": "openai", "model": "tts-9"}), "tts.model"),
        (
            json!({"provider": "embedded", "model": "whisper-1"}),
            "tts.model",
        ),
    ] {
        let (status, e) = json_of(
            d.post("/v1/agents")
                .json(&agent(tts.clone()))
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(status, 422, "{tts}: {e}");
        assert_eq!(error_fields(&e, status), vec![field.to_string()], "{e}");
    }
    for tts in [
        json!({"provider": "embedded", "voice": installed[0]}),
        json!({"provider": "openai", "voice": "nova", "model": "gpt-4o-mini-tts"}),
        // A server of its own names its own voices and models.
        json!({"provider": "openai", "voice": "robot", "model": "tts-9",
               "base_url": "http://127.0.0.1:9/v1"}),
    ] {
        let (status, a) = json_of(
            d.post("/v1/agents")
                .json(&agent(tts.clone()))
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(status, 201, "{tts}: {a}");
    }
    // The same check on PATCH.
    let (_, a) = json_of(
        d.post("/v1/agents")
            .json(&agent(json!({"provider": "embedded"})))
            .send()
            .await
            .unwrap(),
    )
    .await;
    let (status, e) = json_of(
        d.patch(&format!("/v1/agents/{}", a["id"].as_str().unwrap()))
            .json(&json!({"tts": {"voice": "nosuchvoice"}}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 422, "{e}");
    assert_eq!(error_fields(&e, status), vec!["tts.voice".to_string()]);
}

/// RFC 7396 on every PATCH route: a field left out keeps its value,
/// `null` clears it (optional fields), nested objects merge, and `null` on
/// a required field or an unknown field is a 422 naming it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_patch_route_is_a_json_merge_patch() {
    let d = TestDaemon::builder()
        .profile(
            "carrier",
            "name = \"carrier\"\n[inbound]\nallow = [\"127.0.0.1/32\"]\n",
        )
        .config("[webhooks]\nallowed_networks = [\"127.0.0.0/8\"]\n")
        .start()
        .await;
    let patch = |path: String, body: Value| {
        let d = &d;
        async move { json_of(d.patch(&path).json(&body).send().await.unwrap()).await }
    };

    // Agents: nested merge, null clears.
    let (_, a) = json_of(
        d.post("/v1/agents")
            .json(&json!({"name": "a", "kind": "echo", "greeting": "Hi",
                          "turn": {"end_silence_ms": 700, "max_turn_ms": 5000}}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    let agent = format!("/v1/agents/{}", a["id"].as_str().unwrap());
    let (status, a) = patch(
        agent.clone(),
        json!({"greeting": null, "turn": {"max_turn_ms": null, "barge_in_min_ms": 300}}),
    )
    .await;
    assert_eq!(status, 200, "{a}");
    assert!(a["greeting"].is_null(), "{a}");
    assert_eq!(
        a["turn"],
        json!({"end_silence_ms": 700, "barge_in_min_ms": 300})
    );
    assert_eq!(a["name"], "a", "left out, kept");
    for (body, field) in [
        (json!({"name": null}), "name"),
        (json!({"id": "agt_x"}), "id"),
        (json!({"max_duration_seconds": "x"}), "max_duration_seconds"),
    ] {
        let (status, e) = patch(agent.clone(), body.clone()).await;
        assert_eq!(status, 422, "{body}: {e}");
        assert_eq!(error_fields(&e, status), vec![field.to_string()], "{e}");
    }
    let (status, e) = json_of(d.patch(&agent).json(&json!([1])).send().await.unwrap()).await;
    assert_eq!(status, 422, "{e}");

    // Phone numbers: null unbinds the agent.
    let (status, n) = json_of(
        d.post("/v1/phone-numbers")
            .json(&json!({"number": "+1 415 555 2671", "name": "front desk",
                          "agent_id": a["id"], "trunk_id": "trk_carrier"}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 201, "{n}");
    let number = format!("/v1/phone-numbers/{}", n["id"].as_str().unwrap());
    let (status, n) = patch(number.clone(), json!({"agent_id": null})).await;
    assert_eq!(status, 200, "{n}");
    assert!(n["agent_id"].is_null());
    assert_eq!(n["name"], "front desk");
    assert_eq!(n["trunk_id"], "trk_carrier");

    // Webhook endpoints: null clears the description; enabled back to its
    // default.
    let (status, ep) = json_of(
        d.post("/v1/webhook-endpoints")
            .json(
                &json!({"url": "http://127.0.0.1:9/hook", "description": "crm",
                          "enabled": false}),
            )
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 201, "{ep}");
    let endpoint = format!("/v1/webhook-endpoints/{}", ep["id"].as_str().unwrap());
    let (status, ep) = patch(
        endpoint.clone(),
        json!({"description": null, "include_transcript": true}),
    )
    .await;
    assert_eq!(status, 200, "{ep}");
    assert!(ep["description"].is_null(), "{ep}");
    assert_eq!(ep["enabled"], false, "left out, kept");
    assert_eq!(ep["include_transcript"], true);
    let (_, ep) = patch(endpoint.clone(), json!({"enabled": null})).await;
    assert_eq!(ep["enabled"], true, "null: the default");

    // Campaigns: null removes the opt-out key and resets the cap.
    let (status, c) = json_of(
        d.post("/v1/campaigns")
            .json(
                &json!({"name": "c", "agent_id": a["id"], "caller_number": "+14155552671",
                          "trunk_ids": ["trk_carrier"], "opt_out_digit": "9",
                          "max_concurrent_calls": 3}),
            )
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 201, "{c}");
    let campaign = format!("/v1/campaigns/{}", c["id"].as_str().unwrap());
    let (status, c) = patch(
        campaign.clone(),
        json!({"opt_out_digit": null, "max_concurrent_calls": null, "name": "c2"}),
    )
    .await;
    assert_eq!(status, 200, "{c}");
    assert!(c["opt_out_digit"].is_null(), "{c}");
    assert_eq!(c["max_concurrent_calls"], 10, "{c}");
    assert_eq!(c["name"], "c2");
    assert_eq!(c["trunk_ids"], json!(["trk_carrier"]));
    let (status, e) = patch(campaign, json!({"agent_id": null})).await;
    assert_eq!(status, 422, "{e}");
    assert_eq!(error_fields(&e, status), vec!["agent_id".to_string()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_query_parameters_and_punctuated_numbers() {
    let d = TestDaemon::builder()
        .profile(
            "carrier",
            "name = \"carrier\"\n[inbound]\nallow = [\"127.0.0.1/32\"]\n",
        )
        .start()
        .await;
    for path in [
        "/v1/agents?page=2",
        "/v1/calls?limit=5&page=2",
        "/v1/phone-numbers?agentid=x",
        "/v1/campaigns?page=1",
        "/v1/webhook-endpoints?page=1",
        "/v1/voices?page=1",
    ] {
        let (status, e) = json_of(d.get(path).send().await.unwrap()).await;
        assert_eq!(status, 422, "{path}: {e}");
        let fields = error_fields(&e, status);
        assert_eq!(fields.len(), 1, "{path}: {e}");
        assert!(path.contains(&format!("{}=", fields[0])), "{path}: {e}");
    }
    let (status, _) = json_of(d.get("/v1/calls?limit=5&offset=0").send().await.unwrap()).await;
    assert_eq!(status, 200);

    for (written, e164) in [
        ("+813-5550-0115", "+81355500115"),
        ("+1212-750-0115", "+12127500115"),
        ("+4420-7946-0958", "+442079460958"),
    ] {
        let (status, n) = json_of(
            d.post("/v1/phone-numbers")
                .json(&json!({"number": written}))
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(status, 201, "{written}: {n}");
        assert_eq!(n["number"], e164);
    }
}
