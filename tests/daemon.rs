//! The daemon as an operator meets it: config validation and exit codes,
//! environment overrides, signals (SIGTERM, SIGHUP), systemd notification and
//! the unit file, metrics.

// A test's unwrap, expect or panic is its failure report: the daemon's bans
// (Cargo.toml `[lints]`) do not apply here.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::os::unix::net::UnixDatagram;
use std::process::Command;
use std::time::Duration;

use common::TestDaemon;
use serde_json::Value;

const TRUNK_A: &str = "name = \"a\"\n[inbound]\nallow = [\"127.0.0.1/32\"]\n";
const TRUNK_B: &str = "name = \"b\"\n[outbound]\nproxy = \"127.0.0.1:5099\"\n";

/// Runs `agentline run` expecting it to refuse to start; returns stderr.
async fn refuses_to_start(d: &TestDaemon) -> String {
    let out = d.command().arg("run").output().expect("run");
    assert_eq!(out.status.code(), Some(64), "exit code 64 for bad config");
    // Nothing was bound.
    assert!(
        std::net::TcpStream::connect(d.api).is_err(),
        "nothing may listen on {}",
        d.api
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[tokio::test]
async fn a_bad_config_file_exits_64_naming_the_key() {
    let d = TestDaemon::builder()
        .config("[log]\nformat = \"yaml\"")
        .prepare()
        .await;
    let err = refuses_to_start(&d).await;
    assert!(
        err.contains("agentline.toml") && err.contains("log.format"),
        "{err}"
    );

    let d = TestDaemon::builder()
        .config("[webhook]\nurl = 1")
        .prepare()
        .await;
    let err = refuses_to_start(&d).await;
    assert!(err.contains("webhook"), "{err}");

    let d = TestDaemon::builder()
        .config("[campaigns]\nmax_concurrent_calls = 0")
        .prepare()
        .await;
    let err = refuses_to_start(&d).await;
    assert!(err.contains("campaigns.max_concurrent_calls"), "{err}");

    // An explicit config path that does not exist is an error too.
    let out = Command::new(common::bin())
        .args(["--config", "/nonexistent/agentline.toml", "check-config"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
}

#[tokio::test]
async fn a_bad_profile_exits_64_naming_the_file_and_key() {
    let bad = "name = \"c\"\n[limits]\nmax_calls = \"many\"\n";
    let d = TestDaemon::builder()
        .profile("a", TRUNK_A)
        .profile("carrier-c", bad)
        .prepare()
        .await;
    let err = refuses_to_start(&d).await;
    assert!(
        err.contains("carrier-c.toml") && err.contains("limits.max_calls"),
        "{err}"
    );

    let missing_secret = "name = \"d\"\n[registration]\nregistrar = \"127.0.0.1:5070\"\nusername = \"1001\"\npassword_env = \"AGENTLINE_TEST_NO_SUCH_SECRET\"\n";
    let d = TestDaemon::builder()
        .profile("d", missing_secret)
        .prepare()
        .await;
    let err = refuses_to_start(&d).await;
    assert!(
        err.contains("d.toml") && err.contains("registration.password_env"),
        "{err}"
    );

    let dup = TestDaemon::builder()
        .profile("a", TRUNK_A)
        .profile("a2", TRUNK_A)
        .prepare()
        .await;
    let err = refuses_to_start(&dup).await;
    assert!(err.contains("defined twice"), "{err}");
}

#[tokio::test]
async fn check_config_prints_what_would_run_with_env_overrides() {
    let d = TestDaemon::builder()
        .profile("a", TRUNK_A)
        .profile("b", TRUNK_B)
        .env("AGENTLINE_SIP__RTP_PORTS", "40000-40100")
        .env(
            "AGENTLINE_STORE__URL",
            "postgres://u:hunter2@db.example/agentline",
        )
        .prepare()
        .await;
    let out = d.command().arg("check-config").output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("40000-40100"), "env override applied: {text}");
    assert!(
        text.contains("(2 trunks)") && text.contains("outbound via 127.0.0.1:5099"),
        "{text}"
    );
    assert!(!text.contains("hunter2"), "passwords are redacted: {text}");

    // A bad value from the environment names the variable.
    let out = d
        .command()
        .env("AGENTLINE_API__LISTEN", "nowhere")
        .arg("check-config")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("AGENTLINE_API__LISTEN"), "{err}");
}

#[tokio::test]
async fn sighup_reloads_profiles_and_keeps_them_on_error() {
    let d = TestDaemon::builder().profile("a", TRUNK_A).start().await;
    let total = |d: &TestDaemon| {
        let req = d.get("/v1/trunks");
        async move {
            req.send().await.unwrap().json::<Value>().await.unwrap()["total"]
                .as_i64()
                .unwrap()
        }
    };
    assert_eq!(total(&d).await, 1);
    std::fs::write(d.profiles_dir().join("b.toml"), TRUNK_B).unwrap();
    d.signal("HUP");
    let mut n = 0;
    for _ in 0..100 {
        n = total(&d).await;
        if n == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(n, 2, "the new profile is served after SIGHUP");

    // A broken file is refused and the running set stays.
    std::fs::write(d.profiles_dir().join("c.toml"), "name = 5").unwrap();
    d.signal("HUP");
    for _ in 0..200 {
        if d.log().contains("not reloaded") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(d.log().contains("not reloaded"), "{}", d.log());
    assert_eq!(total(&d).await, 2);

    // Removing a profile removes the trunk.
    std::fs::remove_file(d.profiles_dir().join("c.toml")).unwrap();
    std::fs::remove_file(d.profiles_dir().join("a.toml")).unwrap();
    d.signal("HUP");
    for _ in 0..100 {
        n = total(&d).await;
        if n == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(n, 1);
    let r = d.get("/v1/trunks/trk_a").send().await.unwrap();
    assert_eq!(r.status(), 404);
}

#[tokio::test]
async fn systemd_is_notified_ready_and_stopping_and_sigterm_exits() {
    let sock_dir = tempfile::tempdir().unwrap();
    let socket_path = sock_dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut d = TestDaemon::builder()
        .env("NOTIFY_SOCKET", &socket_path.display().to_string())
        .prepare()
        .await;
    d.spawn();
    let mut buf = [0u8; 256];
    let n = socket.recv(&mut buf).unwrap();
    let msg = String::from_utf8_lossy(&buf[..n]).to_string();
    assert!(msg.contains("READY=1"), "{msg}");
    // READY is sent only once the API answers.
    let r = d.http.get(d.url("/ready")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    d.signal("TERM");
    let n = socket.recv(&mut buf).unwrap();
    let msg = String::from_utf8_lossy(&buf[..n]).to_string();
    assert!(msg.contains("STOPPING=1"), "{msg}");
    let status = d.wait_exit(Duration::from_secs(15)).await;
    assert!(
        status.success(),
        "SIGTERM exits cleanly: {status}\n{}",
        d.log()
    );
}

#[tokio::test]
async fn the_unit_file_passes_systemd_analyze() {
    let unit = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/systemd/agentline.service"
    ))
    .unwrap();
    assert!(unit.contains("Type=notify") && unit.contains("NoNewPrivileges=yes"));
    assert!(unit.contains("RestartPreventExitStatus=64"));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("agentline.service");
    std::fs::write(
        &path,
        unit.replace("/usr/local/bin/agentline", common::bin()),
    )
    .unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .expect("systemd-analyze is installed by scripts/test");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    let complaints: Vec<_> = err
        .lines()
        .filter(|l| l.contains("agentline.service"))
        .collect();
    assert!(complaints.is_empty(), "{complaints:?}");
}

#[tokio::test]
async fn metrics_count_requests_by_route_and_status() {
    let d = TestDaemon::builder().start().await;
    for _ in 0..3 {
        d.get("/v1/agents").send().await.unwrap();
    }
    d.http.get(d.url("/v1/agents")).send().await.unwrap();
    let text = d.metrics().await;
    let line = |status: &str| {
        text.lines()
            .find(|l| {
                l.starts_with("agentline_http_requests_total{")
                    && l.contains("route=\"/v1/agents\"")
                    && l.contains(&format!("status=\"{status}\""))
            })
            .map(|l| l.rsplit(' ').next().unwrap().to_string())
    };
    assert_eq!(line("200").as_deref(), Some("3"), "{text}");
    assert_eq!(line("401").as_deref(), Some("1"), "{text}");
    assert!(
        text.contains("agentline_http_request_duration_seconds_bucket"),
        "{text}"
    );
    assert!(text.contains("agentline_trunks_configured"), "{text}");
    // /docs and /openapi.json are open.
    let docs = d.http.get(d.url("/docs")).send().await.unwrap();
    assert_eq!(docs.status(), 200);
    assert!(docs.text().await.unwrap().contains("/openapi.json"));
}

/// The embedded default listens for SIP on every interface with no
/// `public_address`: the daemon picks an address to announce and starts.
#[tokio::test]
async fn listening_on_every_interface_needs_no_public_address() {
    let port = common::free_sip_port();
    let d = TestDaemon::builder()
        .env("AGENTLINE_SIP__LISTEN", &format!("0.0.0.0:{port}"))
        .start()
        .await;
    let r = d.http.get(d.url("/ready")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        d.log().contains(&format!("bound=0.0.0.0:{port}")),
        "{}",
        d.log()
    );
}
