//! SIP trace per call against a real daemon: a SIPp call to an echo agent,
//! then `GET /v1/calls/{id}/sip-trace` as text and as pcap, the pcap read
//! back by tshark.

// A test's unwrap, expect or panic is its failure report: the daemon's bans
// (Cargo.toml `[lints]`) do not apply here.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{Backend, TestDaemon, free_udp_port, run_sipp, wait_until};
use serde_json::Value;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

const NUMBER: &str = "+14155552671";
const LIMIT: Duration = Duration::from_secs(30);

fn trunk() -> String {
    "name = \"carrier\"\n[inbound]\nallow = [\"127.0.0.1/32\"]\n".to_owned()
}

async fn daemon(backend: Backend, trace: bool) -> TestDaemon {
    let d = TestDaemon::builder()
        .backend(backend)
        .profile("carrier", &trunk())
        .env("AGENTLINE_SIP__TRACE", if trace { "true" } else { "false" })
        .start()
        .await;
    d.provision_echo(NUMBER, "trk_carrier", 60).await;
    d
}

/// Places one SIPp call (INVITE, 200, ACK, BYE from SIPp) and returns the
/// ended call.
async fn one_call(d: &TestDaemon) -> Value {
    let target = SocketAddr::from(([127, 0, 0, 1], d.sip_port));
    let run = run_sipp(
        "uac-invite-expect-200-bye.xml",
        free_udp_port(),
        Some(target),
        &["-s", NUMBER, "-d", "300"],
        LIMIT,
    )
    .await;
    assert!(run.success, "{}\n{}", run.output, d.log());
    let found = Arc::new(Mutex::new(Value::Null));
    wait_until(Duration::from_secs(15), "the call ended", || {
        let found = found.clone();
        async move {
            let page: Value = d
                .get("/v1/calls?limit=1")
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            let call = page["items"][0].clone();
            let ended = !call["ended_at"].is_null();
            *found.lock().unwrap() = call;
            ended
        }
    })
    .await;
    found.lock().unwrap().clone()
}

async fn trace_of(backend: Backend) {
    let d = daemon(backend, true).await;
    let call = one_call(&d).await;
    let id = call["id"].as_str().unwrap();

    let r = d
        .get(&format!("/v1/calls/{id}/sip-trace"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    let text = r.text().await.unwrap();
    let sip = format!("127.0.0.1:{}", d.sip_port);
    for needle in [
        "received UDP ",
        "sent UDP ",
        "\nINVITE sip:",
        "\nSIP/2.0 200 OK",
        "\nACK sip:",
        "\nBYE sip:",
    ] {
        assert!(text.contains(needle), "{needle:?} missing from\n{text}");
    }
    assert!(text.contains(&format!("-> {sip}\nINVITE")), "{text}");
    assert!(text.contains(&format!("{sip} -> ")), "{text}");

    // The same as pcap, by Accept and by query, read back by tshark.
    let r = d
        .get(&format!("/v1/calls/{id}/sip-trace"))
        .header("accept", "application/vnd.tcpdump.pcap")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/vnd.tcpdump.pcap");
    let pcap = r.bytes().await.unwrap();
    let by_query = d
        .get(&format!("/v1/calls/{id}/sip-trace?format=pcap"))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(pcap.len(), by_query.len());
    let file = d.dir.path().join("trace.pcap");
    std::fs::write(&file, &pcap).unwrap();
    let out = std::process::Command::new("tshark")
        .arg("-r")
        .arg(&file)
        .args([
            "-Y",
            "sip",
            "-T",
            "fields",
            "-e",
            "sip.Method",
            "-e",
            "sip.Status-Code",
        ])
        .args(["-e", "udp.srcport", "-e", "udp.dstport"])
        .output()
        .expect("tshark installed (see scripts/test)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let fields = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = fields.lines().collect();
    let has = |method: &str, status: &str| {
        lines
            .iter()
            .any(|l| l.split('\t').take(2).eq([method, status]))
    };
    assert!(has("INVITE", ""), "{fields}");
    assert!(has("", "200"), "{fields}");
    assert!(has("ACK", ""), "{fields}");
    assert!(has("BYE", ""), "{fields}");
    let port = d.sip_port.to_string();
    assert!(
        lines.iter().any(|l| l.ends_with(&format!("\t{port}")))
            && lines
                .iter()
                .any(|l| l.split('\t').nth(2) == Some(port.as_str())),
        "both directions on the SIP port: {fields}"
    );

    // Bad input: a clear 422; an unknown call: 404.
    let r = d
        .get(&format!("/v1/calls/{id}/sip-trace?format=xml"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422);
    let r = d
        .get("/v1/calls/call_00000000000000000000000000/sip-trace")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
}

#[tokio::test]
async fn a_calls_sip_trace_holds_invite_200_ack_bye_as_text_and_pcap() {
    trace_of(Backend::Sqlite).await;
}

#[tokio::test]
async fn a_calls_sip_trace_holds_invite_200_ack_bye_as_text_and_pcap_postgres() {
    if std::env::var("AGENTLINE_TEST_PG_URL").is_err() {
        return;
    }
    trace_of(Backend::Postgres).await;
}

#[tokio::test]
async fn without_trace_on_there_is_no_trace() {
    let d = daemon(Backend::Sqlite, false).await;
    let call = one_call(&d).await;
    let id = call["id"].as_str().unwrap();
    let r = d
        .get(&format!("/v1/calls/{id}/sip-trace"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
}
