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
//! Prints one markdown table row. Every loop is bounded; only 127.0.0.1 is
//! used.

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

struct Args {
    backend: String,
    events: usize,
    rate: u32,
    seconds: u32,
    binary: String,
    pg_admin: String,
}

fn args() -> Args {
    let mut a = Args {
        backend: "sqlite".into(),
        events: 20_000,
        rate: 200,
        seconds: 10,
        binary: "target/release/agentline".into(),
        pg_admin: "postgres://postgres@127.0.0.1:5432/postgres".into(),
    };
    let argv: Vec<String> = std::env::args().skip(1).collect();
    for pair in argv.chunks(2) {
        let (k, v) = (pair[0].as_str(), pair.get(1).cloned().unwrap_or_default());
        match k {
            "--backend" => a.backend = v,
            "--events" => a.events = v.parse().expect("--events N"),
            "--rate" => a.rate = v.parse().expect("--rate N"),
            "--seconds" => a.seconds = v.parse().expect("--seconds N"),
            "--binary" => a.binary = v,
            "--pg-admin" => a.pg_admin = v,
            other => panic!("unknown argument {other}"),
        }
    }
    a
}

struct Receiver {
    secret: Arc<Mutex<String>>,
    seen: Seen,
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
    let expected = agentline::webhook::sign::sign(&secret, &id, ts.parse().unwrap_or(0), &body)
        .unwrap_or_default();
    if !sig.split(' ').any(|s| s == expected) {
        *r.bad.lock().unwrap() += 1;
        return StatusCode::UNAUTHORIZED;
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
    let profiles = dir.path().join("sip-profiles");
    std::fs::create_dir_all(&profiles).expect("profiles dir");
    let config = format!(
        "[api]\nlisten = \"127.0.0.1:{api_port}\"\n[sip]\nlisten = \"127.0.0.1:{}\"\n\
         [store]\nurl = \"{store_url}\"\n[profiles]\ndir = \"{}\"\n[log]\nlevel = \"warn\"\n\
         [webhooks]\nallowed_networks = [\"127.0.0.0/8\"]\n",
        free_port(),
        profiles.display()
    );
    let config_path = dir.path().join("agentline.toml");
    std::fs::write(&config_path, config).expect("config");
    let out = Command::new(&a.binary)
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
    let child = Command::new(&a.binary)
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
                outbox.test_event(&ep_id).await.expect("enqueue");
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
