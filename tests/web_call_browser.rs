//! A browser web call end to end: Debian's headless Chromium (driven by
//! `tests/web_call_browser.py` through chromium-driver) opens a page on
//! another origin that embeds the daemon's `/widget.js`, its fake
//! microphone saying a flite sentence; it clicks "Call", and the scripted
//! voice agent hears the sentence (PocketSphinx) and answers. The page
//! shows both as captions (data channel), `getStats()` shows the agent's
//! audio arriving, the page hangs up, and `call.ended` reaches a webhook
//! receiver. A screenshot of the live widget is saved under
//! `target/web-call-artifacts/` (its path is printed).

// A test's unwrap, expect or panic is its failure report: the daemon's bans
// (Cargo.toml `[lints]`) do not apply here.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
#[path = "common/webhook_receiver.rs"]
mod receiver;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{TestDaemon, free_port, json_of};
use receiver::{Receiver, fast_webhooks_config};
use serde_json::{Value, json};

const CALLER: &str = "I would like to book an appointment for Tuesday.";
const REPLY: &str = "Your appointment is booked, see you soon.";

/// The caller's sentence as flite says it, with silence before (the
/// greeting plays first) and after (Chromium loops the file).
fn caller_wav(dir: &std::path::Path) -> PathBuf {
    let raw = dir.join("raw.wav");
    let ok = Command::new("flite")
        .args(["-voice", "kal", "-t", CALLER, "-o"])
        .arg(&raw)
        .status()
        .expect("flite is installed by scripts/test")
        .success();
    assert!(ok, "flite failed");
    let wav = dir.join("caller.wav");
    let ok = Command::new("sox")
        .arg(&raw)
        .args(["-r", "48000", "-c", "1", "-b", "16"])
        .arg(&wav)
        .args(["pad", "3", "12"])
        .status()
        .expect("sox is installed by scripts/test")
        .success();
    assert!(ok, "sox failed");
    wav
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_calls_an_agent_through_the_widget() {
    let d = TestDaemon::builder()
        .allow_loopback()
        .config(&fast_webhooks_config(&[1], 0))
        .start()
        .await;
    let rx = Receiver::start(json!({}));
    let (s, ep) = json_of(
        d.post("/v1/webhook-endpoints")
            .json(&json!({"url": rx.url(), "events": ["call.answered", "call.ended"]}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s, 201, "{ep}");
    rx.set(json!({"secrets": [ep["secret"]]}));
    let (s, agent) = json_of(
        d.post("/v1/agents")
            .json(&json!({
                "name": "Clinic",
                "kind": "voice",
                "max_duration_seconds": 90,
                "tts": {"provider": "embedded", "voice": "slt"},
                "script": {
                    "start": "main",
                    "greeting": "Hello, this is the clinic.",
                    "fallback": "Sorry, could you say that again?",
                    "states": {"main": {"intents": [
                        {"name": "book", "keywords": ["appointment", "book"],
                         "reply": REPLY}
                    ]}}
                }
            }))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s, 201, "{agent}");
    let agent_id = agent["id"].as_str().unwrap();

    // The page, on another origin (another port) than the daemon.
    let dir = tempfile::tempdir().unwrap();
    let page_port = free_port();
    let origin = format!("http://127.0.0.1:{page_port}");
    let (s, pk) = json_of(
        d.post("/v1/publishable-keys")
            .json(&json!({"name": "test page", "agent_ids": [agent_id], "origins": [origin]}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s, 201, "{pk}");
    let html = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>Shop</title></head><body><h1>Shop</h1><div id=\"talk\"></div>\
         <script src=\"{}\" data-key=\"{}\" data-agent=\"{agent_id}\" data-target=\"#talk\" \
         data-caller-name=\"Grace\"></script></body></html>",
        d.url("/widget.js"),
        pk["secret"].as_str().unwrap()
    );
    std::fs::write(dir.path().join("index.html"), html).unwrap();
    let mut server = Command::new("python3")
        .args(["-m", "http.server", "--bind", "127.0.0.1"])
        .arg(page_port.to_string())
        .arg("--directory")
        .arg(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("python3");
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", page_port)).is_err() {
        assert!(Instant::now() < deadline, "the page server did not start");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let wav = caller_wav(dir.path());
    let artifacts = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/web-call-artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    let shot = artifacts.join("widget-live.png");
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/web_call_browser.py");
    let page = format!("{origin}/index.html");
    let out = tokio::task::spawn_blocking(move || {
        Command::new("python3")
            .arg(script)
            .arg(page)
            .arg(&wav)
            .arg(&shot)
            .arg("booked, see you soon")
            .output()
            .expect("python3 with selenium (scripts/test installs it)")
    })
    .await
    .unwrap();
    let _ = server.kill();
    let _ = server.wait();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the browser's call failed: {stderr}\n{}",
        d.log()
    );
    let seen: Value = serde_json::from_slice(&out.stdout).unwrap();
    println!("browser saw: {seen:#}");
    println!(
        "screenshot of the live widget: {}",
        seen["screenshot"].as_str().unwrap()
    );

    // Layout at 375 px: the widget and its buttons fit, nothing scrolls
    // sideways, every button is a 44 px target.
    let layout = &seen["layout"];
    assert_eq!(layout["viewport"], 375, "{layout}");
    assert!(layout["scroll"].as_f64().unwrap() <= 375.0, "{layout}");
    assert!(layout["right"].as_f64().unwrap() <= 375.0, "{layout}");
    for b in layout["buttons"].as_array().unwrap() {
        assert!(b["right"].as_f64().unwrap() <= 375.0, "{b}");
        assert!(b["height"].as_f64().unwrap() >= 44.0, "{b}");
    }
    assert_eq!(seen["call_label"], "Call", "keyboard focus: {seen}");
    assert!(
        seen["live_status"].as_str().unwrap().contains("Clinic"),
        "{seen}"
    );
    // The captions hold both sides.
    let captions = seen["captions"].as_str().unwrap().to_lowercase();
    assert!(captions.contains("appointment"), "{captions}");
    assert!(captions.contains("booked, see you soon"), "{captions}");
    // The agent's audio arrived, with energy.
    let inbound = &seen["stats"]["inbound"];
    assert!(
        inbound["packetsReceived"].as_u64().unwrap() > 50,
        "{inbound}"
    );
    assert!(
        inbound["totalAudioEnergy"].as_f64().unwrap() > 0.0,
        "{inbound}"
    );
    assert!(
        seen["stats"]["outbound"]["packetsSent"].as_u64().unwrap() > 50,
        "{seen}"
    );

    // The call, as the API and the webhooks tell it.
    let recs = rx
        .wait_until(Duration::from_secs(20), |r| {
            r.iter().any(|x| x.body["type"] == "call.ended")
        })
        .await;
    let ended = recs
        .iter()
        .find(|r| r.body["type"] == "call.ended")
        .unwrap();
    assert_eq!(ended.verified, vec![true]);
    let call = &ended.body["data"];
    assert_eq!(call["direction"], "web", "{call}");
    assert_eq!(call["status"], "completed", "{call}");
    assert_eq!(call["end_reason"], "caller_hangup", "{call}");
    assert!(
        recs.iter().any(|r| r.body["type"] == "call.answered"),
        "{recs:?}"
    );
    let id = call["id"].as_str().unwrap();
    let (s, t) = json_of(
        d.get(&format!("/v1/calls/{id}/transcript"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s, 200, "{t}");
    let turns = t["turns"].as_array().unwrap();
    let heard = turns
        .iter()
        .filter(|t| t["speaker"] == "caller")
        .map(|t| t["text"].as_str().unwrap().to_lowercase())
        .collect::<Vec<_>>()
        .join(" ");
    assert!(heard.contains("appointment"), "{t}");
    assert!(
        turns
            .iter()
            .any(|t| t["speaker"] == "agent" && t["text"] == REPLY),
        "{t}"
    );
    let (_, call) = json_of(d.get(&format!("/v1/calls/{id}")).send().await.unwrap()).await;
    assert_eq!(call["context"]["caller_name"], "Grace", "{call}");
    assert_eq!(call["context"]["origin"], origin.as_str(), "{call}");
}
