//! Webhook delivery benchmark (run by `bench/webhooks.sh`, not a test).
//!
//! Starts the real daemon (the release binary) on SQLite or a fresh
//! PostgreSQL database and a loopback receiver that verifies every
//! signature, then measures:
//! - sustained deliveries/s: `--events` test events are queued while the
//!   endpoint is disabled, the endpoint is enabled, and the clock runs until
//!   the receiver has verified every one;
//! - enqueue-to-first-attempt: `--rate` events per second are enqueued
//!   through the API for `--seconds`, each timed from its `created_at` to its
//!   arrival at the receiver; p50 and p99 are printed.
//!
//! With `--mode calls` it measures instead the call lifecycle webhooks
//! under call load: SIPp (`bench/sipp-cps.xml`) calls an echo agent at
//! `--rate` calls per second for `--seconds`, and each `call.*` event is
//! timed from its `created_at` to its arrival; SIPp's failed calls and mean
//! INVITE to 200 show whether delivering them slowed the calls
//! (`--deliver 0` leaves the endpoint disabled: the events are written but
//! not delivered, the baseline).
//!
//! Prints one markdown table row. Every loop is bounded; only 127.0.0.1 is
//! used.

// A bench tool: it prints its report and stops at the first failure; the
// daemon's bans (Cargo.toml `[lints]`) do not apply here.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stdout,
    clippy::print_stderr
)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use serde_json::{Value, json};

type Seen = Arc<Mutex<HashMap<String, chrono::DateTime<chrono::Utc>>>>;
/// Each event's `created_at` and its milliseconds to first arrival, by id.
type Lags = Arc<Mutex<HashMap<String, (chrono::DateTime<chrono::Utc>, f64)>>>;

struct Args {
    mode: String,
    /// In calls mode, whether the endpoint is enabled (0: events are still
    /// written, nothing is delivered; the baseline).
    deliver: bool,
    backend: String,
    events: usize,
    rate: u32,
    seconds: u32,
    binary: String,
    pg_admin: String,
    /// TOML lines added to the daemon's `[webhooks]` (`concurrency = 256`).
    webhooks_toml: String,
}

fn args() -> Args {
    let mut a = Args {
        mode: "outbox".into(),
        deliver: true,
        backend: "sqlite".into(),
        events: 20_000,
        rate: 200,
        seconds: 10,
        binary: "target/release/agentline".into(),
        pg_admin: "postgres://postgres@127.0.0.1:5432/postgres".into(),
        webhooks_toml: String::new(),
    };
    let argv: Vec<String> = std::env::args().skip(1).collect();
    for pair in argv.chunks(2) {
        let (k, v) = (pair[0].as_str(), pair.get(1).cloned().unwrap_or_default());
        match k {
            "--mode" => a.mode = v,
            "--deliver" => a.deliver = v != "0",
            "--backend" => a.backend = v,
            "--events" => a.events = v.parse().expect("--events N"),
            "--rate" => a.rate = v.parse().expect("--rate N"),
            "--seconds" => a.seconds = v.parse().expect("--seconds N"),
            "--binary" => a.binary = v,
            "--pg-admin" => a.pg_admin = v,
            "--webhooks-toml" => a.webhooks_toml = v,
            other => panic!("unknown argument {other}"),
        }
    }
    a
}

struct Receiver {
    secret: Arc<Mutex<String>>,
    seen: Seen,
    /// Each event's `created_at` and the milliseconds from it to the
    /// event's first arrival.
    lag: Lags,
    bad: Arc<Mutex<u64>>,
}

async fn receive(State(r): State<Arc<Receiver>>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let at = chrono::Utc::now();
    let h = |n: &str| {
        headers
            .get(n)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    };
    let (id, ts, sig) = (
        h("webhook-id"),
        h("webhook-timestamp"),
        h("webhook-signature"),
    );
    let secret = r.secret.lock().unwrap().clone();
    let expected =
        agentline::signing::sign(&secret, &id, ts.parse().unwrap_or(0), &body).unwrap_or_default();
    if !sig.split(' ').any(|s| s == expected) {
        *r.bad.lock().unwrap() += 1;
        return StatusCode::UNAUTHORIZED;
    }
    // Only the creation time is read (borrowed, no tree of the body): the
    // receiver shares the daemon's cores, so it should cost little.
    #[derive(serde::Deserialize)]
    struct Created<'a> {
        created_at: &'a str,
    }
    if let Some(created) = serde_json::from_slice::<Created<'_>>(&body)
        .ok()
        .and_then(|v| v.created_at.parse::<chrono::DateTime<chrono::Utc>>().ok())
    {
        let ms = (at - created).num_microseconds().unwrap_or(0) as f64 / 1000.0;
        r.lag
            .lock()
            .unwrap()
            .entry(id.clone())
            .or_insert((created, ms));
    }
    r.seen.lock().unwrap().entry(id).or_insert(at);
    StatusCode::NO_CONTENT
}

struct Daemon {
    child: Child,
    api: String,
    key: String,
    http: reqwest::Client,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Daemon {
    async fn json(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.api))
            .bearer_auth(&self.key);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.expect("daemon answers");
        let status = resp.status();
        let v = resp.json::<Value>().await.unwrap_or(Value::Null);
        assert!(status.is_success(), "{path}: {status} {v}");
        v
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

#[tokio::main]
async fn main() {
    let a = args();
    let dir = tempfile::tempdir().expect("tempdir");
    let (store_url, pg_db) = if a.backend == "postgres" {
        use sqlx::Connection;
        let name = format!(
            "agentline_bench_{}",
            ulid::Ulid::new().to_string().to_lowercase()
        );
        let mut admin = sqlx::PgConnection::connect(&a.pg_admin)
            .await
            .expect("PostgreSQL");
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut admin)
            .await
            .expect("create database");
        let base = &a.pg_admin[..a.pg_admin.rfind('/').expect("admin url")];
        (format!("{base}/{name}"), Some(name))
    } else {
        (
            format!("sqlite://{}", dir.path().join("bench.db").display()),
            None,
        )
    };

    // The receiver.
    let receiver = Arc::new(Receiver {
        secret: Arc::new(Mutex::new(String::new())),
        seen: Arc::new(Mutex::new(HashMap::new())),
        lag: Arc::new(Mutex::new(HashMap::new())),
        bad: Arc::new(Mutex::new(0)),
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let rx_addr: SocketAddr = listener.local_addr().expect("addr");
    let app = axum::Router::new()
        .route("/hook", axum::routing::post(receive))
        .with_state(receiver.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });

    // The daemon.
    let api_port = free_port();
    let sip_port = free_port();
    let profiles = dir.path().join("sip-profiles");
    std::fs::create_dir_all(&profiles).expect("profiles dir");
    std::fs::write(
        profiles.join("bench.toml"),
        "name = \"bench\"\n[inbound]\nallow = [\"127.0.0.1/32\"]\n\
         [limits]\nmax_calls = 20000\ncps = 10000\n",
    )
    .expect("profile");
    let config = format!(
        "[api]\nlisten = \"127.0.0.1:{api_port}\"\n[sip]\nlisten = \"127.0.0.1:{}\"\n\
         [store]\nurl = \"{store_url}\"\n[profiles]\ndir = \"{}\"\n[log]\nlevel = \"warn\"\n\
         [webhooks]\nallowed_networks = [\"127.0.0.0/8\"]\n{}\n",
        sip_port,
        profiles.display(),
        a.webhooks_toml.replace(';', "\n")
    );
    let config_path = dir.path().join("agentline.toml");
    std::fs::write(&config_path, config).expect("config");
    // Both run in the temporary directory: a daemon without a node_id keeps
    // a generated one in its data directory (the working directory).
    let binary = std::fs::canonicalize(&a.binary).expect("the agentline binary");
    let out = Command::new(&binary)
        .current_dir(dir.path())
        .arg("--config")
        .arg(&config_path)
        .args([
            "keys",
            "create",
            "--name",
            "bench",
            "--rate-limit",
            "10000000",
        ])
        .output()
        .expect("agentline keys create");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let key = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let child = Command::new(&binary)
        .current_dir(dir.path())
        .arg("--config")
        .arg(&config_path)
        .arg("run")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("daemon.log")).expect("log"))
        .spawn()
        .expect("agentline run");
    let d = Daemon {
        child,
        api: format!("http://127.0.0.1:{api_port}"),
        key,
        http: reqwest::Client::new(),
    };
    let ready_by = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(r) = d.http.get(format!("{}/ready", d.api)).send().await
            && r.status() == 200
        {
            break;
        }
        assert!(
            Instant::now() < ready_by,
            "daemon not ready: {}",
            std::fs::read_to_string(dir.path().join("daemon.log")).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let ep = d
        .json(
            reqwest::Method::POST,
            "/v1/webhook-endpoints",
            Some(json!({"url": format!("http://{rx_addr}/hook"), "enabled": false})),
        )
        .await;
    let ep_id = ep["id"].as_str().expect("id").to_string();
    *receiver.secret.lock().unwrap() = ep["secret"].as_str().expect("secret").to_string();
    if a.mode == "calls" {
        calls_mode(&a, &d, &ep_id, &receiver, sip_port, &store_url).await;
        drop(d);
        drop_database(&a, pg_db).await;
        return;
    }

    // Throughput: fill the outbox through the store, then open the tap.
    let store = agentline::store::Store::connect(&store_url)
        .await
        .expect("store");
    let outbox = agentline::webhook::Outbox::new(store.clone());
    let fill = Instant::now();
    let mut queued = 0usize;
    let workers = 4;
    let per = a.events.div_ceil(workers);
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..workers {
        let (outbox, ep_id) = (outbox.clone(), ep_id.clone());
        set.spawn(async move {
            let mut n = 0;
            for _ in 0..per {
                outbox.test_event(&ep_id, true).await.expect("enqueue");
                n += 1;
            }
            n
        });
    }
    while let Some(n) = set.join_next().await {
        queued += n.expect("enqueue task");
    }
    let fill_rate = queued as f64 / fill.elapsed().as_secs_f64();
    let start = Instant::now();
    d.json(
        reqwest::Method::POST,
        &format!("/v1/webhook-endpoints/{ep_id}/enable"),
        None,
    )
    .await;
    let deadline = start + Duration::from_secs(600);
    while receiver.seen.lock().unwrap().len() < queued && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let drained = receiver.seen.lock().unwrap().len();
    let throughput = drained as f64 / start.elapsed().as_secs_f64();

    // Latency: a steady stream through the API.
    receiver.seen.lock().unwrap().clear();
    let total = (a.rate * a.seconds) as usize;
    let interval = Duration::from_secs_f64(1.0 / f64::from(a.rate));
    let mut created = Vec::with_capacity(total);
    let t0 = Instant::now();
    for i in 0..total {
        let due = t0 + interval * i as u32;
        tokio::time::sleep_until(due.into()).await;
        let ev = d
            .json(
                reqwest::Method::POST,
                &format!("/v1/webhook-endpoints/{ep_id}/test"),
                None,
            )
            .await;
        let at: chrono::DateTime<chrono::Utc> = ev["created_at"]
            .as_str()
            .expect("created_at")
            .parse()
            .expect("time");
        created.push((ev["id"].as_str().expect("id").to_string(), at));
    }
    let wait_by = Instant::now() + Duration::from_secs(60);
    while receiver.seen.lock().unwrap().len() < total && Instant::now() < wait_by {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let seen = receiver.seen.lock().unwrap().clone();
    let mut lat: Vec<f64> = created
        .iter()
        .filter_map(|(id, at)| {
            seen.get(id)
                .map(|r| (*r - *at).num_microseconds().unwrap_or(0) as f64 / 1000.0)
        })
        .collect();
    lat.sort_by(|x, y| x.total_cmp(y));
    let bad = *receiver.bad.lock().unwrap();
    println!(
        "| {} | {} | {:.0} | {:.0} | {} | {:.1} | {:.1} | {} |",
        a.backend,
        drained,
        throughput,
        fill_rate,
        lat.len(),
        percentile(&lat, 0.50),
        percentile(&lat, 0.99),
        bad
    );
    drop(d);
    store.close().await;
    drop_database(&a, pg_db).await;
}

async fn drop_database(a: &Args, pg_db: Option<String>) {
    if let Some(name) = pg_db {
        use sqlx::Connection;
        if let Ok(mut admin) = sqlx::PgConnection::connect(&a.pg_admin).await {
            let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
            )))
            .execute(&mut admin)
            .await;
        }
    }
}

/// How many deliveries to endpoint `ep_id` the daemon created (one per
/// call event it subscribes to): what should have arrived.
async fn deliveries_made(store_url: &str, ep_id: &str) -> Option<usize> {
    use sqlx::Connection;
    const SQL: &str = "SELECT COUNT(*) FROM webhook_deliveries WHERE endpoint_id = $1";
    let n: i64 = if store_url.starts_with("postgres") {
        let mut c = sqlx::PgConnection::connect(store_url).await.ok()?;
        sqlx::query_scalar(SQL)
            .bind(ep_id)
            .fetch_one(&mut c)
            .await
            .ok()?
    } else {
        let mut c = sqlx::SqliteConnection::connect(store_url).await.ok()?;
        sqlx::query_scalar(SQL)
            .bind(ep_id)
            .fetch_one(&mut c)
            .await
            .ok()?
    };
    usize::try_from(n).ok()
}

/// SIPp calls an echo agent at `--rate` CPS for `--seconds` while the
/// endpoint receives every call event; prints one row. The percentiles
/// rank every delivery the daemon created, an event that never arrived
/// (within the wait) as slower than any that did: a percentile that falls
/// on one prints as `>` the wait, so a lagging worker cannot look fast by
/// leaving its slowest events out.
async fn calls_mode(
    a: &Args,
    d: &Daemon,
    ep_id: &str,
    receiver: &Receiver,
    sip_port: u16,
    store_url: &str,
) {
    const NUMBER: &str = "+14155552671";
    if a.deliver {
        d.json(
            reqwest::Method::POST,
            &format!("/v1/webhook-endpoints/{ep_id}/enable"),
            None,
        )
        .await;
    }
    let agent = d
        .json(
            reqwest::Method::POST,
            "/v1/agents",
            Some(json!({"name": "echo", "kind": "echo", "max_duration_seconds": 60})),
        )
        .await;
    d.json(
        reqwest::Method::POST,
        "/v1/phone-numbers",
        Some(json!({"number": NUMBER, "agent_id": agent["id"], "trunk_id": "trk_bench"})),
    )
    .await;
    let calls = a.rate * a.seconds;
    let daemon_cpu0 = cpu_seconds(d.child.id());
    let receiver_cpu0 = cpu_seconds(std::process::id());
    let stats = std::env::temp_dir().join(format!("webhook-bench-{}.csv", std::process::id()));
    let sipp = tokio::process::Command::new("timeout")
        .arg(format!("{}", a.seconds + 100))
        .args([
            "sipp",
            &format!("127.0.0.1:{sip_port}"),
            "-sf",
            "bench/sipp-cps.xml",
        ])
        .args([
            "-s",
            NUMBER,
            "-i",
            "127.0.0.1",
            "-p",
            &free_port().to_string(),
        ])
        .args([
            "-r",
            &a.rate.to_string(),
            "-m",
            &calls.to_string(),
            "-l",
            "20000",
        ])
        .args(["-buff_size", "4194304", "-timeout", "100s", "-nostdin"])
        .args(["-trace_stat", "-stf"])
        .arg(&stats)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .await
        .expect("sipp (Debian package sip-tester)");
    // Every call that reached the daemon has its events; wait until
    // nothing more arrives for 2 s (at most 60 s).
    let wait_by = Instant::now() + Duration::from_secs(if a.deliver { 60 } else { 0 });
    let mut last = (0, Instant::now());
    while Instant::now() < wait_by {
        let n = receiver.lag.lock().unwrap().len();
        if n != last.0 {
            last = (n, Instant::now());
        } else if last.1.elapsed() > Duration::from_secs(2) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let text = std::fs::read_to_string(&stats).unwrap_or_default();
    let _ = std::fs::remove_file(&stats);
    let column = |name: &str| -> String {
        let mut lines = text.lines();
        let head: Vec<&str> = lines.next().unwrap_or_default().split(';').collect();
        let last = text.lines().last().unwrap_or_default();
        head.iter()
            .position(|h| *h == name)
            .and_then(|i| last.split(';').nth(i))
            .unwrap_or_default()
            .to_string()
    };
    let ok = column("SuccessfulCall(C)");
    // Every offered call that did not succeed, also those SIPp never got
    // to (killed by the time limit): "no failed call" means all of them.
    let failed = calls.saturating_sub(ok.parse::<u32>().unwrap_or(0));
    // HH:MM:SS:microseconds
    let setup_ms = {
        let t: Vec<f64> = column("ResponseTime1(C)")
            .split(':')
            .filter_map(|x| x.parse().ok())
            .collect();
        if t.len() == 4 {
            ((t[0] * 60.0 + t[1]) * 60.0 + t[2]) * 1000.0 + t[3] / 1000.0
        } else {
            f64::NAN
        }
    };
    // How long the daemon's requests took (its histogram): a worker short
    // of request slots shows here, not in its CPU.
    if let Ok(r) = d
        .http
        .get(format!("{}/metrics", d.api))
        .bearer_auth(&d.key)
        .send()
        .await
    {
        let text = r.text().await.unwrap_or_default();
        for line in text.lines().filter(|l| {
            l.starts_with("agentline_webhook_attempt_duration_seconds")
                || l.starts_with("agentline_webhook_outbox")
        }) {
            eprintln!("{line}");
        }
    }
    let cpu_daemon = cpu_seconds(d.child.id()) - daemon_cpu0;
    let cpu_receiver = cpu_seconds(std::process::id()) - receiver_cpu0;
    eprintln!(
        "CPU-s over the run: daemon {cpu_daemon:.1}, bench process (the receiver) {cpu_receiver:.1}"
    );
    let by_arrival: Vec<(chrono::DateTime<chrono::Utc>, f64)> =
        receiver.lag.lock().unwrap().values().copied().collect();
    timeline(&by_arrival);
    let mut lag: Vec<f64> = by_arrival.iter().map(|x| x.1).collect();
    lag.sort_by(|x, y| x.total_cmp(y));
    let delivered = lag.len();
    let expected = if a.deliver {
        deliveries_made(store_url, ep_id).await.unwrap_or(delivered)
    } else {
        delivered
    };
    // The wait above: 60 s at most, less when arrivals stopped for 2 s.
    let waited_ms = 60_000;
    // Missing ones last, slower than anything delivered.
    let rank = |p: f64| -> String {
        let n = expected.max(delivered);
        if n == 0 {
            return "n/a".into();
        }
        let i = ((n as f64 - 1.0) * p).round() as usize;
        match lag.get(i) {
            Some(ms) => format!("{ms:.1}"),
            None => format!("> {waited_ms}"),
        }
    };
    let max = if delivered < expected {
        format!("> {waited_ms}")
    } else {
        format!("{:.1}", lag.last().copied().unwrap_or(f64::NAN))
    };
    println!(
        "| {} | {} | {} | {} | {} | {:.1} | {}/{} | {} | {} | {} | {} |",
        a.backend,
        a.rate,
        calls,
        ok,
        failed,
        setup_ms,
        delivered,
        expected,
        rank(0.50),
        rank(0.99),
        max,
        *receiver.bad.lock().unwrap(),
    );
    if !sipp.success() {
        eprintln!("sipp exited with {sipp}");
    }
}

/// User and system CPU seconds of process `pid` so far (0 when unreadable).
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The fields after the command's closing parenthesis; utime and stime
    // are the 14th and 15th of the line (clock ticks, 100 a second here).
    let rest = stat.rsplit_once(')').map_or("", |x| x.1);
    let field = |n: usize| -> f64 {
        rest.split_whitespace()
            .nth(n - 3)
            .and_then(|x| x.parse().ok())
            .unwrap_or(0.0)
    };
    (field(14) + field(15)) / 100.0
}

/// On stderr, per second of creation: events made, and their p50 and p99
/// created->arrival, so a backlog's start and end can be seen.
fn timeline(events: &[(chrono::DateTime<chrono::Utc>, f64)]) {
    let Some(first) = events.iter().map(|e| e.0).min() else {
        return;
    };
    let mut per: std::collections::BTreeMap<i64, Vec<f64>> = std::collections::BTreeMap::new();
    for (at, ms) in events {
        per.entry((*at - first).num_seconds())
            .or_default()
            .push(*ms);
    }
    eprintln!("second | events | p50 ms | p99 ms");
    for (second, mut v) in per {
        v.sort_by(|x, y| x.total_cmp(y));
        eprintln!(
            "{second} | {} | {:.0} | {:.0}",
            v.len(),
            percentile(&v, 0.5),
            percentile(&v, 0.99)
        );
    }
}
