//! Black-box test harness: starts the real `agentline` binary with a config
//! written to a temporary directory, on a free port, on SQLite or on a fresh
//! PostgreSQL database, and talks to it over HTTP.
//!
//! `TestDaemon::builder().postgres().profile("a", TOML).start().await`.

#![allow(dead_code)] // each test binary uses a different part of the harness

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use sqlx::Connection;

mod browser;
mod llm;
mod media;
mod peers;
mod sip;
mod tls;
// Only the chat and voice test binaries use the LLM stand-in pieces.
#[allow(unused_imports)]
pub use llm::*;
// Only the SIP and call test binaries use these.
#[allow(unused_imports)]
pub use peers::*;
#[allow(unused_imports)]
pub use sip::*;
// Only the call tests that stream tones and capture media use these.
#[allow(unused_imports)]
pub use media::*;
// Only the TLS tests make certificates.
#[allow(unused_imports)]
pub use tls::*;
// Only the web call tests drive a browser.
#[allow(unused_imports)]
pub use browser::*;

/// A fixed-offset zone (`Etc/GMT...`) where the local time is now `hour`
/// plus minutes: a campaign schedule in it is open now whatever the hour.
pub fn zone_at(hour: i64) -> String {
    use chrono::Timelike;
    let now = i64::from(chrono::Utc::now().hour());
    let mut offset = hour - now;
    if offset < -12 {
        offset += 24;
    }
    if offset > 14 {
        offset -= 24;
    }
    // Etc/GMT signs are inverted: Etc/GMT-3 is UTC+3.
    match offset {
        0 => "Etc/GMT".to_owned(),
        o if o > 0 => format!("Etc/GMT-{o}"),
        o => format!("Etc/GMT+{}", -o),
    }
}

/// The store a daemon runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Admin URL of the PostgreSQL server the tests create databases on.
pub fn pg_admin_url() -> String {
    std::env::var("AGENTLINE_TEST_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres:postgres@127.0.0.1:5432/postgres".into())
}

/// A free TCP port on 127.0.0.1 (bound and released; the daemon binds it
/// right after). Drawn from 10000-19999, below the kernel's ephemeral
/// range (32768-60999 by default): a port-0 bind or an outgoing connection
/// of a test running beside this one cannot take it between this check and
/// the daemon's bind, as it could an ephemeral port (seen as "Address
/// already in use" at the daemon's start).
pub fn free_port() -> u16 {
    low_port(|port| TcpListener::bind(("127.0.0.1", port)).is_ok())
}

/// The next port of 10000-19999 that `free` accepts, walking from a
/// per-process start so that the tests of one binary never share one.
fn low_port(free: impl Fn(u16) -> bool) -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let start = std::process::id().wrapping_mul(7919);
    for _ in 0..10_000 {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        // 97 is coprime with 10,000: the walk visits every port once.
        let port = 10_000 + (start.wrapping_add(n.wrapping_mul(97)) % 10_000) as u16;
        if free(port) {
            return port;
        }
    }
    panic!("no free port in 10000-19999");
}

/// A free UDP port on 127.0.0.1 whose neighbour two above is free too.
/// SIPp given `-mp P` binds P for audio and P + 2 for video, and exits at
/// once when either is taken; a port held by a parallel test's peer two
/// above the one picked would fail that run before it began.
pub fn free_udp_port() -> u16 {
    for _ in 0..100 {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind udp");
        let port = socket.local_addr().expect("udp addr").port();
        if port < u16::MAX - 2 && std::net::UdpSocket::bind(("127.0.0.1", port + 2)).is_ok() {
            return port;
        }
    }
    panic!("no free UDP port with a free neighbour two above");
}

/// A port free on 127.0.0.1 for both UDP and TCP, as the daemon's SIP
/// listener binds both; below the ephemeral range, as [`free_port`], so
/// that no outgoing TCP connection takes it before the daemon's bind.
pub fn free_sip_port() -> u16 {
    low_port(|port| {
        std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok()
            && TcpListener::bind(("127.0.0.1", port)).is_ok()
    })
}

/// The first of `n` (at most 60) consecutive ports free on 127.0.0.1 for
/// both UDP and TCP, between the test daemons' RTP ports (20000 to 30000,
/// the default) and the kernel's ephemeral range (32768 and up on Linux),
/// so that neither another test's daemon nor its outgoing connections take
/// one of them between this probe and the peer's bind: for peers such as
/// baresip that bind ports next to the one they are given.
pub fn free_port_run(n: u16) -> u16 {
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0)
        ^ std::process::id();
    for i in 0..200u32 {
        let base = 30000 + ((seed.wrapping_add(i.wrapping_mul(7919)) % 270) * 10) as u16;
        let free = (base..base + n).all(|port| {
            std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok()
                && TcpListener::bind(("127.0.0.1", port)).is_ok()
        });
        if free {
            return base;
        }
    }
    panic!("no run of {n} free ports between 30000 and 32768");
}

/// Polls `check` every 50 ms until it holds; panics with `what` after
/// `timeout`. The wait for a condition that replaces a fixed sleep.
pub async fn wait_until<F, Fut>(timeout: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !check().await {
        assert!(Instant::now() < deadline, "{what}: not within {timeout:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The status and JSON body of an answer (`null` when the body is not JSON).
pub async fn json_of(r: reqwest::Response) -> (reqwest::StatusCode, serde_json::Value) {
    let status = r.status();
    let body = r
        .json::<serde_json::Value>()
        .await
        .unwrap_or(serde_json::Value::Null);
    (status, body)
}

/// Asserts the API's error envelope and returns `details[].field`.
pub fn error_fields(body: &serde_json::Value, status: reqwest::StatusCode) -> Vec<String> {
    let e = &body["error"];
    assert_eq!(e["status"], status.as_u16(), "{body}");
    assert!(e["code"].as_str().is_some_and(|c| !c.is_empty()), "{body}");
    assert!(
        e["message"].as_str().is_some_and(|c| !c.is_empty()),
        "{body}"
    );
    e["details"]
        .as_array()
        .expect("details array")
        .iter()
        .map(|d| d["field"].as_str().unwrap_or_default().to_string())
        .collect()
}

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_agentline")
}

pub struct Builder {
    backend: Backend,
    profiles: Vec<(String, String)>,
    env: Vec<(String, String)>,
    extra_config: String,
    /// Keys added to the generated `[sip]` table (see [`Builder::sip`]).
    sip_keys: String,
    /// Whether the generated config opens loopback to outbound requests
    /// (`[net] allowed_networks`), so agents may use the tests' stand-ins
    /// on 127.0.0.1 (see [`Builder::allow_loopback`]).
    loopback_allowed: bool,
}

impl Builder {
    pub fn backend(mut self, backend: Backend) -> Self {
        self.backend = backend;
        self
    }

    pub fn postgres(self) -> Self {
        self.backend(Backend::Postgres)
    }

    /// Adds `sip-profiles/NAME.toml` with `toml` as its text.
    pub fn profile(mut self, name: &str, toml: &str) -> Self {
        self.profiles.push((name.into(), toml.into()));
        self
    }

    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Opens loopback to outbound requests (`[net] allowed_networks`), so
    /// agents may use the tests' stand-ins (LLM, tools, speech vendors) on
    /// 127.0.0.1; the daemon's default policy refuses them. Webhook
    /// endpoints are opened too (one policy for every outbound request).
    pub fn allow_loopback(mut self) -> Self {
        self.loopback_allowed = true;
        self
    }

    /// `key = value` lines for the generated `[sip]` table (e.g. a short
    /// test-only `t1_ms`).
    pub fn sip(mut self, keys: &str) -> Self {
        self.sip_keys.push_str(keys);
        self.sip_keys.push('\n');
        self
    }

    /// TOML appended to the generated config (new tables only).
    pub fn config(mut self, toml: &str) -> Self {
        self.extra_config.push_str(toml);
        self.extra_config.push('\n');
        self
    }

    /// Writes the files without starting anything.
    pub async fn prepare(self) -> TestDaemon {
        let dir = tempfile::tempdir().expect("tempdir");
        let profiles_dir = dir.path().join("sip-profiles");
        std::fs::create_dir_all(&profiles_dir).expect("profiles dir");
        for (name, text) in &self.profiles {
            std::fs::write(profiles_dir.join(format!("{name}.toml")), text).expect("profile");
        }
        let (store_url, pg_db) = match self.backend {
            Backend::Sqlite => (
                format!("sqlite://{}", dir.path().join("agentline.db").display()),
                None,
            ),
            Backend::Postgres => {
                let name = format!(
                    "agentline_t_{}",
                    ulid::Ulid::new().to_string().to_lowercase()
                );
                let mut admin = sqlx::PgConnection::connect(&pg_admin_url())
                    .await
                    .expect("PostgreSQL reachable (see scripts/test)");
                sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
                    .execute(&mut admin)
                    .await
                    .expect("create database");
                let base = pg_admin_url();
                let url = match base.rfind('/') {
                    Some(i) => format!("{}/{name}", &base[..i]),
                    None => panic!("bad admin url"),
                };
                (url, Some(name))
            }
        };
        let api = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let sip_port = free_sip_port();
        // The stand-ins (LLM, tools, vendors) listen on loopback, which
        // the outbound policy refuses by default.
        let net = if self.loopback_allowed {
            "[net]\nallowed_networks = [\"127.0.0.0/8\", \"::1/128\"]\n"
        } else {
            ""
        };
        let config = format!(
            "[api]\nlisten = \"{api}\"\n[sip]\nlisten = \"127.0.0.1:{sip_port}\"\n{}[store]\nurl = \"{store_url}\"\n\
             [profiles]\ndir = \"{}\"\n[shutdown]\ndrain_seconds = 10\n{net}{}",
            self.sip_keys,
            profiles_dir.display(),
            self.extra_config
        );
        let config_path = dir.path().join("agentline.toml");
        std::fs::write(&config_path, config).expect("config");
        TestDaemon {
            dir,
            config_path,
            api,
            sip_port,
            store_url,
            pg_db,
            env: self.env,
            child: None,
            http: reqwest::Client::new(),
            key: String::new(),
        }
    }

    /// Starts the daemon, waits until `/ready` answers 200, and makes a key.
    pub async fn start(self) -> TestDaemon {
        let mut d = self.prepare().await;
        d.key = d.create_key_cli("harness", Some(100_000));
        d.spawn();
        d.wait_ready().await;
        d
    }
}

pub struct TestDaemon {
    pub dir: tempfile::TempDir,
    pub config_path: PathBuf,
    pub api: SocketAddr,
    pub sip_port: u16,
    pub store_url: String,
    pg_db: Option<String>,
    env: Vec<(String, String)>,
    child: Option<Child>,
    pub http: reqwest::Client,
    /// A key with a high rate limit, made through the CLI before start.
    pub key: String,
}

impl TestDaemon {
    pub fn builder() -> Builder {
        Builder {
            backend: Backend::Sqlite,
            profiles: Vec::new(),
            env: Vec::new(),
            extra_config: String::new(),
            sip_keys: String::new(),
            loopback_allowed: false,
        }
    }

    /// A `Command` for the binary with this daemon's config and environment.
    pub fn command(&self) -> Command {
        let mut cmd = Command::new(bin());
        cmd.arg("--config").arg(&self.config_path);
        cmd.current_dir(self.dir.path());
        cmd.env_remove("RUST_LOG");
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd
    }

    /// Runs `agentline keys create` and returns the printed key.
    pub fn create_key_cli(&self, name: &str, rate_limit: Option<u32>) -> String {
        let mut cmd = self.command();
        cmd.args(["keys", "create", "--name", name]);
        if let Some(n) = rate_limit {
            cmd.args(["--rate-limit", &n.to_string()]);
        }
        let out = cmd.output().expect("run keys create");
        assert!(
            out.status.success(),
            "keys create: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout)
            .expect("utf8")
            .trim()
            .to_string()
    }

    /// The Prometheus text of `/metrics` (with the harness key: metrics
    /// need one unless `api.metrics_open`).
    pub async fn metrics(&self) -> String {
        self.http
            .get(self.url("/metrics"))
            .bearer_auth(&self.key)
            .send()
            .await
            .expect("GET /metrics")
            .text()
            .await
            .expect("metrics text")
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("daemon.log")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Spawns `agentline run`, logging to `daemon.log`.
    pub fn spawn(&mut self) {
        let log = std::fs::File::create(self.log_path()).expect("log file");
        let err = log.try_clone().expect("log file");
        let child = self
            .command()
            .arg("run")
            .env("RUST_LOG", "info,agentline=debug")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .spawn()
            .expect("spawn agentline");
        self.child = Some(child);
    }

    pub async fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("daemon exited early with {status}:\n{}", self.log());
            }
            if let Ok(r) = self.http.get(self.url("/ready")).send().await
                && r.status() == 200
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "daemon not ready:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{sig}"), &self.pid().to_string()])
            .status()
            .expect("kill")
            .success();
        assert!(ok, "kill -{sig} failed");
    }

    /// Waits for the process to exit, at most `timeout`.
    pub async fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        let child = self.child.as_mut().expect("running");
        loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                self.child = None;
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "daemon did not exit within {timeout:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// kill -9, as a crash would.
    pub async fn kill9(&mut self) {
        self.signal("KILL");
        self.wait_exit(Duration::from_secs(10)).await;
    }

    /// Restarts after a stop or crash, on the same store and port.
    pub async fn restart(&mut self) {
        self.spawn();
        self.wait_ready().await;
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.api)
    }

    pub fn get(&self, path: &str) -> reqwest::RequestBuilder {
        self.http.get(self.url(path)).bearer_auth(&self.key)
    }

    pub fn post(&self, path: &str) -> reqwest::RequestBuilder {
        self.http.post(self.url(path)).bearer_auth(&self.key)
    }

    pub fn patch(&self, path: &str) -> reqwest::RequestBuilder {
        self.http.patch(self.url(path)).bearer_auth(&self.key)
    }

    pub fn delete(&self, path: &str) -> reqwest::RequestBuilder {
        self.http.delete(self.url(path)).bearer_auth(&self.key)
    }

    /// An echo agent (calls end after `max_duration_seconds`) and `number`
    /// bound to it on `trunk_id`; both must be created.
    pub async fn provision_echo(&self, number: &str, trunk_id: &str, max_duration_seconds: u32) {
        let r = self
            .post("/v1/agents")
            .json(&serde_json::json!({"name": "echo", "kind": "echo", "max_duration_seconds": max_duration_seconds}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
        let agent: serde_json::Value = r.json().await.unwrap();
        let r = self
            .post("/v1/phone-numbers")
            .json(&serde_json::json!({"number": number, "agent_id": agent["id"], "trunk_id": trunk_id}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
    }

    /// A direct connection to the daemon's store, for tests that read what
    /// was written (for example that a key is stored hashed).
    pub async fn store(&self) -> agentline::store::Store {
        agentline::store::Store::connect(&self.store_url)
            .await
            .expect("connect to the test store")
    }

    pub fn profiles_dir(&self) -> PathBuf {
        self.dir.path().join("sip-profiles")
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for TestDaemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if let Some(db) = self.pg_db.take() {
            // Drop the throwaway database from a fresh thread: Drop cannot
            // await and may run inside a runtime.
            let _ = std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build();
                if let Ok(rt) = rt {
                    rt.block_on(async {
                        if let Ok(mut admin) = sqlx::PgConnection::connect(&pg_admin_url()).await {
                            let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                                "DROP DATABASE IF EXISTS {db} WITH (FORCE)"
                            )))
                            .execute(&mut admin)
                            .await;
                        }
                    });
                }
            })
            .join();
        }
    }
}

/// Runs an async test body once per backend: `both_backends!(name);` expects
/// `async fn name(backend: Backend)` in scope.
#[macro_export]
macro_rules! both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::common::Backend::Sqlite).await
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::common::Backend::Postgres).await
                }
            )*
        }
    };
}
