//! Black-box tests of where a `prompt` agent's audio may come from: only
//! regular files inside the operator's media directory (`/dev/zero`,
//! `/etc/passwd`, `..` and symlinks out are refused when the agent is
//! saved), or audio uploaded with `POST /v1/audio` (validated, capped),
//! which plays on a call: baresip calls in and hears the uploaded tone.

// A test's unwrap, expect or panic is its failure report: the daemon's bans
// (Cargo.toml `[lints]`) do not apply here.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{Backend, TestDaemon, json_of};
use reqwest::StatusCode;
use serde_json::{Value, json};

const NUMBER: &str = "+14155552671";

fn fields(body: &Value) -> Vec<String> {
    body["error"]["details"]
        .as_array()
        .map(|d| {
            d.iter()
                .map(|e| e["field"].as_str().unwrap_or_default().to_string())
                .collect()
        })
        .unwrap_or_default()
}

async fn prompt_agent(d: &TestDaemon, prompt: Value) -> (StatusCode, Value) {
    json_of(
        d.post("/v1/agents")
            .json(&json!({"name": "p", "kind": "prompt", "prompt": prompt}))
            .send()
            .await
            .unwrap(),
    )
    .await
}

/// (a) `wav_path` is refused unless it names a regular file inside the
/// media directory; with no directory configured every path is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wav_paths_outside_the_media_directory_are_refused() {
    let root = tempfile::tempdir().unwrap();
    let media = root.path().join("media");
    std::fs::create_dir(&media).unwrap();
    common::write_tone_wav(&media.join("hello.wav"), 8000, 700.0, 0, 500);
    common::write_tone_wav(&root.path().join("outside.wav"), 8000, 700.0, 0, 500);
    std::os::unix::fs::symlink("/etc/passwd", media.join("passwd.wav")).unwrap();
    std::os::unix::fs::symlink(root.path().join("outside.wav"), media.join("out.wav")).unwrap();
    std::fs::write(media.join("huge.wav"), vec![0u8; 200_000]).unwrap();

    let bare = TestDaemon::builder().start().await;
    for path in ["/dev/zero", "/etc/passwd", "hello.wav"] {
        let (s, b) = prompt_agent(&bare, json!({"wav_path": path})).await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{path}: {b}");
        assert_eq!(fields(&b), vec!["prompt.wav_path"], "{b}");
    }

    let d = TestDaemon::builder()
        .config(&format!(
            "[media]\ndir = \"{}\"\nmax_bytes = 100000",
            media.display()
        ))
        .start()
        .await;
    for path in [
        "/dev/zero",
        "/etc/passwd",
        "../outside.wav",
        "passwd.wav",
        "out.wav",
        "huge.wav",
        "missing.wav",
        ".",
    ] {
        let (s, b) = prompt_agent(&d, json!({"wav_path": path})).await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{path}: {b}");
        assert_eq!(fields(&b), vec!["prompt.wav_path"], "{path}: {b}");
    }
    let (s, b) = prompt_agent(&d, json!({"wav_path": "hello.wav"})).await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    let inside = media.join("hello.wav");
    let (s, b) = prompt_agent(&d, json!({"wav_path": inside.to_str().unwrap()})).await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    let (_, page) = json_of(d.get("/v1/agents").send().await.unwrap()).await;
    assert_eq!(page["total"], 2, "{page}");
    assert!(
        !d.log().contains("root:"),
        "a file's content reached the log"
    );
}

async fn upload(d: &TestDaemon, content_type: &str, body: Vec<u8>) -> (StatusCode, Value) {
    json_of(
        d.post("/v1/audio?name=tone")
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .unwrap(),
    )
    .await
}

/// (b) Uploads: WAV and raw G.711 are stored with their length; garbage,
/// an unknown type and an upload over the cap are refused; an agent names
/// an upload by id, an unknown id is refused.
async fn uploads_are_validated(backend: Backend) {
    let d = TestDaemon::builder()
        .backend(backend)
        .config("[media]\nmax_bytes = 100000")
        .start()
        .await;
    let dir = tempfile::tempdir().unwrap();
    let wav = dir.path().join("t.wav");
    common::write_tone_wav(&wav, 16000, 1100.0, 0, 1000);
    let (s, a) = upload(&d, "audio/wav", std::fs::read(&wav).unwrap()).await;
    assert_eq!(s, StatusCode::CREATED, "{a}");
    assert_eq!(a["format"], "wav");
    assert_eq!(a["duration_ms"], 1000, "{a}");
    let (s, g) = upload(&d, "audio/PCMU", vec![0xff; 4000]).await;
    assert_eq!(s, StatusCode::CREATED, "{g}");
    assert_eq!(g["duration_ms"], 500, "{g}");

    let (s, b) = upload(&d, "audio/wav", b"RIFF....WAVEnot really".to_vec()).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{b}");
    let (s, b) = upload(&d, "text/plain", b"hello".to_vec()).await;
    assert_eq!(s, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{b}");
    let (s, b) = upload(&d, "audio/PCMA", vec![0xd5; 150_000]).await;
    assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE, "{b}");
    let (s, o) = json_of(
        d.post("/v1/audio?format=pcma")
            .header("content-type", "application/octet-stream")
            .body(vec![0xd5; 800])
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{o}");
    assert_eq!(o["format"], "pcma", "{o}");
    let (_, page) = json_of(d.get("/v1/audio").send().await.unwrap()).await;
    assert_eq!(page["total"], 3, "{page}");

    let (s, b) = prompt_agent(&d, json!({"audio_id": "snd_nope"})).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{b}");
    assert_eq!(fields(&b), vec!["prompt.audio_id"], "{b}");
    let (s, b) = prompt_agent(&d, json!({"audio_id": a["id"], "tone_hz": 440})).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{b}");
    let (s, b) = prompt_agent(&d, json!({"audio_id": a["id"]})).await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    assert_eq!(b["prompt"]["audio_id"], a["id"]);

    let r = d
        .delete(&format!("/v1/audio/{}", g["id"].as_str().unwrap()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
}

both_backends!(uploads_are_validated);

/// (c) Uploaded audio plays: a 1100 Hz tone uploaded at 16 kHz, on a
/// prompt agent; baresip calls in with silence and hears the tone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploaded_audio_plays_on_a_call() {
    let d = TestDaemon::builder()
        .profile(
            "local",
            "name = \"local\"\n[inbound]\nallow = [\"127.0.0.1/32\"]\n",
        )
        .start()
        .await;
    let dir = tempfile::tempdir().unwrap();
    let wav = dir.path().join("t.wav");
    common::write_tone_wav(&wav, 16000, 1100.0, 200, 2500);
    let (s, a) = upload(&d, "audio/x-wav", std::fs::read(&wav).unwrap()).await;
    assert_eq!(s, StatusCode::CREATED, "{a}");
    let (s, agent) = prompt_agent(&d, json!({"audio_id": a["id"]})).await;
    assert_eq!(s, StatusCode::CREATED, "{agent}");
    let r = d
        .post("/v1/phone-numbers")
        .json(&json!({"number": NUMBER, "agent_id": agent["id"], "trunk_id": "trk_local"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);

    let silence = dir.path().join("silence.wav");
    common::write_tone_wav(&silence, 8000, 300.0, 4000, 0);
    let common::BaresipCall { log, heard } =
        common::baresip_call(dir.path(), &silence, NUMBER, d.sip_port, 8).await;
    let heard = heard.unwrap_or_else(|| panic!("baresip recorded nothing:\n{log}\n{}", d.log()));
    let (rate, samples) = common::read_wav(&heard);
    let at_1100 = common::strongest_window(&samples, rate, 1100.0);
    let at_700 = common::strongest_window(&samples, rate, 700.0);
    assert!(
        at_1100 > 0.3,
        "the uploaded tone played: 1100 Hz {at_1100}, 700 Hz {at_700}\n{log}\n{}",
        d.log()
    );
    assert!(at_700 < 0.05, "and nothing else: 700 Hz {at_700}");
}
