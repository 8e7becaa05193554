//! A web call from a real browser: Debian's headless Chromium, driven by
//! `tests/web_call_browser.py` through chromium-driver, on a page of
//! another origin that embeds the daemon's `/widget.js`, its fake
//! microphone playing a WAV file.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// `text` as flite says it, 48 kHz mono, with `before` s of silence first
/// (the greeting plays then) and `after` s after it (Chromium loops the
/// file).
pub fn flite_wav(dir: &Path, text: &str, before: f32, after: f32) -> PathBuf {
    let raw = dir.join("flite-raw.wav");
    let ok = Command::new("flite")
        .args(["-voice", "kal", "-t", text, "-o"])
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
        .args(["pad", &before.to_string(), &after.to_string()])
        .status()
        .expect("sox is installed by scripts/test")
        .success();
    assert!(ok, "sox failed");
    wav
}

/// One web call to `agent_id` from the browser: a publishable key for the
/// page's origin, the page served from `dir`, the caller's microphone
/// `caller_wav`; the browser hangs up once a caption holds `expect`.
/// Returns what the browser saw (the script's JSON); panics with the
/// script's reason when a step failed.
pub async fn browser_web_call(
    d: &super::TestDaemon,
    agent_id: &str,
    dir: &Path,
    caller_wav: &Path,
    expect: &str,
) -> Value {
    let page_port = super::free_port();
    let origin = format!("http://127.0.0.1:{page_port}");
    let (s, pk) = super::json_of(
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
    std::fs::write(dir.join("index.html"), html).unwrap();
    let mut server = Command::new("python3")
        .args(["-m", "http.server", "--bind", "127.0.0.1"])
        .arg(page_port.to_string())
        .arg("--directory")
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("python3");
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", page_port)).is_err() {
        assert!(Instant::now() < deadline, "the page server did not start");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/web_call_browser.py");
    let page = format!("{origin}/index.html");
    let (wav, shot, expect) = (
        caller_wav.to_owned(),
        dir.join("widget.png"),
        expect.to_owned(),
    );
    let out = tokio::task::spawn_blocking(move || {
        Command::new("python3")
            .arg(script)
            .arg(page)
            .arg(&wav)
            .arg(&shot)
            .arg(expect)
            .output()
            .expect("python3 with selenium (scripts/test installs it)")
    })
    .await
    .unwrap();
    let _ = server.kill();
    let _ = server.wait();
    assert!(
        out.status.success(),
        "the browser's call failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        d.log()
    );
    serde_json::from_slice(&out.stdout).unwrap()
}
