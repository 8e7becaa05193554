//! A live webhook receiver for black-box tests: runs
//! `tests/webhook_receiver.py`, which verifies every request with the
//! `standardwebhooks` PyPI package and records it, and misbehaves as told
//! (fail the first N attempts, 429 with Retry-After, 410, hang).
//!
//! `let r = Receiver::start(json!({"secrets": [secret]}));` then
//! `r.wait_until(Duration::from_secs(10), |recs| recs.len() >= 3)`.

#![allow(dead_code)] // each test binary uses a different part

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// One request the receiver got.
#[derive(Debug, Clone)]
pub struct Record {
    pub id: String,
    pub timestamp: String,
    pub signature: String,
    /// One entry per secret in the control file: did it verify?
    pub verified: Vec<bool>,
    /// The attempt number of this webhook-id at the receiver, from 1.
    pub attempt: u64,
    /// The status the receiver answered.
    pub status: u16,
    pub received_at: f64,
    pub body: Value,
}

pub struct Receiver {
    dir: tempfile::TempDir,
    child: Child,
    pub port: u16,
}

impl Receiver {
    /// Starts the receiver with `control` (see the script's doc).
    pub fn start(control: Value) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let r = |name: &str| dir.path().join(name);
        std::fs::write(r("control.json"), control.to_string()).expect("control");
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/webhook_receiver.py");
        let child = Command::new("python3")
            .arg(script)
            .arg("--control")
            .arg(r("control.json"))
            .arg("--log")
            .arg(r("received.jsonl"))
            .arg("--port-file")
            .arg(r("port"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(r("receiver.log")).expect("log"))
            .spawn()
            .expect("python3 runs the receiver");
        let deadline = Instant::now() + Duration::from_secs(15);
        let port = loop {
            if let Ok(p) = std::fs::read_to_string(r("port"))
                && let Ok(p) = p.trim().parse()
            {
                break p;
            }
            assert!(Instant::now() < deadline, "receiver did not start");
            std::thread::sleep(Duration::from_millis(20));
        };
        Self { dir, child, port }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/hook", self.port)
    }

    /// Replaces the control file; the next request reads it.
    pub fn set(&self, control: Value) {
        let tmp = self.dir.path().join("control.json.tmp");
        std::fs::write(&tmp, control.to_string()).expect("control");
        std::fs::rename(tmp, self.dir.path().join("control.json")).expect("control");
    }

    pub fn records(&self) -> Vec<Record> {
        let text =
            std::fs::read_to_string(self.dir.path().join("received.jsonl")).unwrap_or_default();
        text.lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .map(|v| Record {
                id: v["id"].as_str().unwrap_or_default().to_string(),
                timestamp: v["timestamp"].as_str().unwrap_or_default().to_string(),
                signature: v["signature"].as_str().unwrap_or_default().to_string(),
                verified: v["verified"]
                    .as_array()
                    .map(|a| a.iter().map(|b| b.as_bool() == Some(true)).collect())
                    .unwrap_or_default(),
                attempt: v["attempt"].as_u64().unwrap_or(0),
                status: v["status"].as_u64().unwrap_or(0) as u16,
                received_at: v["received_at"].as_f64().unwrap_or(0.0),
                body: v["body"]
                    .as_str()
                    .and_then(|b| serde_json::from_str(b).ok())
                    .unwrap_or(Value::Null),
            })
            .collect()
    }

    /// Polls the records until `done` holds; panics after `timeout`.
    pub async fn wait_until(
        &self,
        timeout: Duration,
        done: impl Fn(&[Record]) -> bool,
    ) -> Vec<Record> {
        let deadline = Instant::now() + timeout;
        loop {
            let recs = self.records();
            if done(&recs) {
                return recs;
            }
            assert!(
                Instant::now() < deadline,
                "receiver condition not met within {timeout:?}; got {} records",
                recs.len()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Receiver {
    /// A receiver with an endpoint on daemon `d` for `events`, whose
    /// secret it verifies every request with.
    pub async fn subscribed(d: &crate::common::TestDaemon, events: &[&str]) -> Receiver {
        let rx = Receiver::start(serde_json::json!({}));
        let r = d
            .post("/v1/webhook-endpoints")
            .json(&serde_json::json!({"url": rx.url(), "events": events}))
            .send()
            .await
            .expect("POST /v1/webhook-endpoints");
        assert_eq!(r.status(), 201, "webhook endpoint created");
        let ep: Value = r.json().await.expect("endpoint JSON");
        rx.set(serde_json::json!({"secrets": [ep["secret"]]}));
        rx
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `[webhooks]` table of tests: loopback allowed, a short schedule.
pub fn fast_webhooks_config(schedule: &[u64], retry_for: u64) -> String {
    format!(
        "[webhooks]\nallowed_networks = [\"127.0.0.0/8\"]\nretry_schedule_seconds = {schedule:?}\n\
         retry_for_seconds = {retry_for}\njitter = 0.0\npoll_interval_ms = 100\ntimeout_seconds = 2\n"
    )
}
