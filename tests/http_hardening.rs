//! The API's HTTP limits against a running daemon: a slow-loris client is
//! disconnected, a slow body is cut, event streams close once their key is
//! revoked and are capped per key, failed authentications are limited per
//! address before the store is asked, `/metrics` needs a key unless served
//! on its own address, and CSV uploads are capped in bytes and rows.

// A test's unwrap, expect or panic is its failure report: the daemon's bans
// (Cargo.toml `[lints]`) do not apply here.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::{Duration, Instant};

use common::{Backend, TestDaemon, error_fields, json_of, wait_until};
use futures_util::StreamExt;
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const TRUNK: &str = r#"
name = "carrier-a"
[outbound]
proxy = "127.0.0.1:5080"
caller_id = "+14155550100"
"#;

/// A slow-loris client sends its headers a byte at a time and never ends
/// them: the daemon closes the connection within the header timeout, while
/// a normal request on another connection is answered meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_loris_client_is_disconnected() {
    let d = TestDaemon::builder()
        .env("AGENTLINE_API__HEADER_READ_TIMEOUT_SECONDS", "2")
        .start()
        .await;
    let stream = TcpStream::connect(d.api).await.unwrap();
    let (mut rd, mut wr) = stream.into_split();
    let started = Instant::now();
    // Reads until the daemon closes the connection (EOF or reset).
    let closed = tokio::spawn(async move {
        let mut buf = [0u8; 1024];
        loop {
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => return Instant::now(),
                Ok(_) => {}
            }
        }
    });
    let head = format!(
        "GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: {}",
        "a".repeat(400)
    );
    let mut sent = 0;
    // A byte every 100 ms: 40 s of headers if nobody stops it.
    for b in head.bytes() {
        if closed.is_finished() || wr.write_all(&[b]).await.is_err() {
            break;
        }
        sent += 1;
        if sent == 10 {
            // Others are still served while the slow client trickles.
            let r = d.http.get(d.url("/health")).send().await.unwrap();
            assert_eq!(r.status(), StatusCode::OK);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let at = tokio::time::timeout(Duration::from_secs(10), closed)
        .await
        .expect("the connection is closed")
        .unwrap();
    let took = at - started;
    eprintln!("slow-loris: closed after {took:?}, {sent} bytes sent");
    assert!(
        took >= Duration::from_millis(1500) && took < Duration::from_secs(5),
        "closed after {took:?} ({sent} bytes sent)"
    );
    assert!(sent < head.len(), "the daemon waited for all {sent} bytes");
}

/// A body that trickles past `body_timeout_seconds` is cut: the request
/// fails and nothing is created.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_body_is_cut() {
    let d = TestDaemon::builder()
        .env("AGENTLINE_API__BODY_TIMEOUT_SECONDS", "2")
        .start()
        .await;
    let body = br#"{"name": "slow", "kind": "echo"}"#;
    let mut tcp = TcpStream::connect(d.api).await.unwrap();
    let head = format!(
        "POST /v1/agents HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        d.key,
        body.len()
    );
    tcp.write_all(head.as_bytes()).await.unwrap();
    let started = Instant::now();
    for b in body.iter() {
        if tcp.write_all(&[*b]).await.is_err() || started.elapsed() > Duration::from_secs(8) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    let took = started.elapsed();
    assert!(took < Duration::from_secs(6), "answered after {took:?}");
    let (_, list) = json_of(d.get("/v1/agents").send().await.unwrap()).await;
    assert_eq!(list["total"], 0, "{list}");
}

/// Requests in progress past `max_concurrent_requests` get 503 at once;
/// when those finish, requests are served again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_past_the_concurrency_limit_get_503() {
    let d = TestDaemon::builder()
        .env("AGENTLINE_API__MAX_CONCURRENT_REQUESTS", "2")
        .start()
        .await;
    // Two requests whose bodies never come hold both places.
    let hold = || async {
        let mut tcp = TcpStream::connect(d.api).await.unwrap();
        let head = format!(
            "POST /v1/agents HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\
             Content-Type: application/json\r\nContent-Length: 100\r\n\r\n",
            d.key
        );
        tcp.write_all(head.as_bytes()).await.unwrap();
        tcp
    };
    let mut held = vec![hold().await, hold().await];
    // Generous: on a loaded machine the two held requests may be read late.
    // One answered before its body (its key lookup failed under load, say)
    // holds nothing: it is said and replaced.
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut answered = Vec::new();
    loop {
        for tcp in held.iter_mut() {
            let mut buf = [0u8; 512];
            match tcp.try_read(&mut buf) {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Ok(n) => answered.push(String::from_utf8_lossy(&buf[..n]).into_owned()),
                Err(e) => answered.push(e.to_string()),
            }
            *tcp = hold().await;
        }
        let health = d.http.get(d.url("/health")).send().await.unwrap().status();
        if health == StatusCode::SERVICE_UNAVAILABLE {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "both places taken: not within 15 s (/health {health}); held requests answered: {answered:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        answered.len() < 10,
        "held requests keep being answered: {answered:?}"
    );
    let (s, b) = json_of(d.get("/v1/agents").send().await.unwrap()).await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{b}");
    error_fields(&b, s);
    assert_eq!(b["error"]["code"], "overloaded");
    drop(held);
    wait_until(Duration::from_secs(5), "places free again", || async {
        d.get("/v1/agents").send().await.unwrap().status() == StatusCode::OK
    })
    .await;
}

/// Connections past `max_connections` are closed at accept; the ones
/// already open are served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_the_limit_are_closed() {
    let d = TestDaemon::builder()
        .env("AGENTLINE_API__MAX_CONNECTIONS", "2")
        .start()
        .await;
    let mut open = Vec::new();
    for _ in 0..2 {
        open.push(TcpStream::connect(d.api).await.unwrap());
    }
    // The third is accepted by the kernel, then closed unanswered.
    let mut third = TcpStream::connect(d.api).await.unwrap();
    let _ = third
        .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .await;
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), third.read_to_end(&mut answer)).await;
    assert!(
        matches!(read, Ok(Ok(0)) | Ok(Err(_))),
        "closed without an answer: {read:?} {:?}",
        String::from_utf8_lossy(&answer)
    );
    // One held connection still gets answers.
    let mut first = open.remove(0);
    first
        .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), first.read_to_end(&mut answer))
        .await
        .unwrap()
        .unwrap();
    assert!(
        answer.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    drop(open);
}

/// Reads an event stream until it ends; the instant it ended.
fn watch_stream(resp: reqwest::Response) -> tokio::task::JoinHandle<Instant> {
    tokio::spawn(async move {
        let mut body = resp.bytes_stream();
        while let Some(chunk) = body.next().await {
            if chunk.is_err() {
                break;
            }
        }
        Instant::now()
    })
}

async fn open_stream(d: &TestDaemon, key: &str) -> reqwest::Response {
    d.http
        .get(d.url("/v1/events"))
        .bearer_auth(key)
        .send()
        .await
        .unwrap()
}

async fn create_key(d: &TestDaemon, body: Value) -> (String, String) {
    let (s, b) = json_of(d.post("/v1/api-keys").json(&body).send().await.unwrap()).await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    (
        b["id"].as_str().unwrap().to_string(),
        b["secret"].as_str().unwrap().to_string(),
    )
}

/// An event stream outlives the request that opened it: it closes within
/// seconds of its key's revocation, and not before.
async fn a_stream_closes_when_its_key_is_revoked(backend: Backend) {
    let d = TestDaemon::builder()
        .backend(backend)
        .env("AGENTLINE_API__STREAM_KEY_CHECK_SECONDS", "1")
        .start()
        .await;
    let (id, secret) = create_key(&d, json!({"name": "watcher", "scope": "read"})).await;
    let resp = open_stream(&d, &secret).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let mut ended = watch_stream(resp);
    // Three checks pass while the key is good.
    assert!(
        tokio::time::timeout(Duration::from_millis(3000), &mut ended)
            .await
            .is_err(),
        "the stream ended with its key still valid"
    );
    let r = d
        .delete(&format!("/v1/api-keys/{id}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let revoked = Instant::now();
    let at = tokio::time::timeout(Duration::from_secs(10), ended)
        .await
        .expect("the stream ends after the revocation")
        .unwrap();
    let took = at.saturating_duration_since(revoked);
    assert!(
        took < Duration::from_secs(3),
        "closed {took:?} after revocation"
    );
    // And the key opens no new one.
    let r = open_stream(&d, &secret).await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
}

/// One key holds at most `max_streams_per_key` streams; another key is not
/// affected, and a closed stream frees its place.
async fn open_streams_are_capped_per_key(backend: Backend) {
    let d = TestDaemon::builder()
        .backend(backend)
        .env("AGENTLINE_API__MAX_STREAMS_PER_KEY", "2")
        .env("AGENTLINE_WEBHOOKS__SSE_HEARTBEAT_SECONDS", "1")
        .start()
        .await;
    let first = open_stream(&d, &d.key).await;
    let second = open_stream(&d, &d.key).await;
    assert_eq!(first.status(), StatusCode::OK);
    assert_eq!(second.status(), StatusCode::OK);
    let (s, b) = json_of(open_stream(&d, &d.key).await).await;
    assert_eq!(s, StatusCode::TOO_MANY_REQUESTS, "{b}");
    error_fields(&b, s);
    assert_eq!(b["error"]["code"], "too_many_streams");
    let (_, other) = create_key(&d, json!({"name": "other", "scope": "read"})).await;
    let third = open_stream(&d, &other).await;
    assert_eq!(third.status(), StatusCode::OK, "another key has places");
    // Closing one (the daemon notices at the next heartbeat) frees a place.
    drop(first);
    let kept = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    wait_until(Duration::from_secs(10), "a place frees", || {
        let kept = kept.clone();
        let req = d.http.get(d.url("/v1/events")).bearer_auth(&d.key);
        async move {
            let r = req.send().await.unwrap();
            let ok = r.status() == StatusCode::OK;
            // Held open, so that the place stays taken.
            kept.lock().unwrap().push(r);
            ok
        }
    })
    .await;
    let (s, _) = json_of(open_stream(&d, &d.key).await).await;
    assert_eq!(s, StatusCode::TOO_MANY_REQUESTS, "full again");
    drop(second);
}

/// Failed authentications are limited per client address: past the limit
/// even a good key from that address waits, before any key is looked up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_authentications_are_limited_per_address() {
    let d = TestDaemon::builder()
        .env("AGENTLINE_API__AUTH_FAILURES_PER_MINUTE", "5")
        .start()
        .await;
    let forged = format!("al_live_{}", "Q".repeat(32));
    for i in 0..5 {
        let r = d
            .http
            .get(d.url("/v1/agents"))
            .bearer_auth(&forged)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "attempt {i}");
    }
    let r = d
        .http
        .get(d.url("/v1/agents"))
        .bearer_auth(&forged)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
    let (s, b) = json_of(r).await;
    error_fields(&b, s);
    assert_eq!(b["error"]["code"], "rate_limited");
    let r = d.get("/v1/agents").send().await.unwrap();
    assert_eq!(
        r.status(),
        StatusCode::TOO_MANY_REQUESTS,
        "the address waits"
    );
    // Open routes are not behind the limit.
    let r = d.http.get(d.url("/health")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
}

/// `/metrics` needs a key by default (a read key is enough); with
/// `metrics_listen` it is served without one on that address only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_need_a_key_or_their_own_address() {
    let port = common::free_port();
    let d = TestDaemon::builder()
        .env(
            "AGENTLINE_API__METRICS_LISTEN",
            &format!("127.0.0.1:{port}"),
        )
        .start()
        .await;
    let r = d.http.get(d.url("/metrics")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let (_, reader) = create_key(&d, json!({"name": "prometheus", "scope": "read"})).await;
    let r = d
        .http
        .get(d.url("/metrics"))
        .bearer_auth(&reader)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(r.text().await.unwrap().contains("agentline_"));
    let r = d
        .http
        .get(format!("http://127.0.0.1:{port}/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(
        r.text()
            .await
            .unwrap()
            .contains("agentline_http_requests_total")
    );
    // That address serves nothing else.
    let r = d
        .http
        .get(format!("http://127.0.0.1:{port}/v1/agents"))
        .bearer_auth(&d.key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
}

async fn campaign(d: &TestDaemon) -> String {
    let (s, agent) = json_of(
        d.post("/v1/agents")
            .json(&json!({"name": "a", "kind": "echo"}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{agent}");
    let (s, c) = json_of(
        d.post("/v1/campaigns")
            .json(&json!({
                "name": "c",
                "agent_id": agent["id"],
                "caller_number": "+1 415 555 0100",
                "trunk_ids": ["trk_carrier-a"],
            }))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{c}");
    c["id"].as_str().unwrap().to_string()
}

/// A CSV upload is capped in bytes: declared too big it is refused unread;
/// streamed past the cap, reading stops and the report says so.
async fn csv_uploads_are_capped_in_bytes(backend: Backend) {
    let d = TestDaemon::builder()
        .backend(backend)
        .env("AGENTLINE_API__MAX_CSV_BYTES", "2000")
        .profile("carrier-a", TRUNK)
        .start()
        .await;
    let id = campaign(&d).await;
    let path = format!("/v1/campaigns/{id}/contacts");
    let mut csv = String::from("number\n");
    for i in 0..200 {
        csv.push_str(&format!("+1415555{:04}\n", 1000 + i));
    }
    assert!(csv.len() > 2000);
    // Declared (Content-Length): 413 before a row is read.
    let (s, b) = json_of(
        d.post(&path)
            .header("content-type", "text/csv")
            .body(csv.clone())
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE, "{b}");
    error_fields(&b, s);
    let (_, list) = json_of(d.get(&format!("{path}?limit=1")).send().await.unwrap()).await;
    assert_eq!(list["total"], 0, "{list}");
    // Streamed (chunked, no length): read up to the cap, then stopped.
    let chunks: Vec<Result<String, std::io::Error>> = csv
        .as_bytes()
        .chunks(500)
        .map(|c| Ok(String::from_utf8(c.to_vec()).unwrap()))
        .collect();
    let (s, report) = json_of(
        d.post(&path)
            .header("content-type", "text/csv")
            .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
                chunks,
            )))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{report}");
    let inserted = report["inserted"].as_u64().unwrap();
    assert!(inserted > 0 && inserted < 200, "{report}");
    let errors = report["errors"].as_array().unwrap();
    assert!(
        errors
            .iter()
            .any(|e| e["message"].as_str().unwrap().contains("max_csv_bytes")),
        "{report}"
    );
}

/// Blank rows count toward the row cap: a body of blank lines (empty, or
/// commas only) ends at the cap instead of being read forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blank_csv_rows_count_toward_the_row_cap() {
    let d = TestDaemon::builder()
        .profile("carrier-a", TRUNK)
        .start()
        .await;
    let id = campaign(&d).await;
    let path = format!("/v1/campaigns/{id}/contacts");
    for blank in ["\n", ",\n"] {
        let mut csv = String::from("number,first_name\n+14155551000,Ada\n");
        csv.push_str(&blank.repeat(1_000_010));
        csv.push_str("+14155551001,Bob\n");
        let (s, report) = json_of(
            d.post(&path)
                .header("content-type", "text/csv")
                .body(csv)
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(s, StatusCode::OK, "{report}");
        let errors = report["errors"].as_array().unwrap();
        assert!(
            errors.iter().any(|e| e["message"]
                .as_str()
                .unwrap()
                .contains("at most 1000000 rows")),
            "{blank:?}: {report}"
        );
        // Bob, past the cap, was not read.
        let (_, list) = json_of(d.get(&format!("{path}?limit=100")).send().await.unwrap()).await;
        assert_eq!(list["total"], 1, "{blank:?}: {list}");
    }
}

both_backends!(
    a_stream_closes_when_its_key_is_revoked,
    open_streams_are_capped_per_key,
    csv_uploads_are_capped_in_bytes,
);
