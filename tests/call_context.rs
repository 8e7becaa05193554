//! Issue 17, items 1 to 3, against the real daemon: every call knows whom
//! it is for. A campaign's contacts are greeted by their `first_name`
//! (heard on the wire and decoded with PocketSphinx, and in an LLM agent's
//! system prompt); an inbound INVITE's `X-Customer-Id` reaches a tool
//! call with the call's id; a number's agent webhook changes the greeting
//! heard, or, when it does not answer in time, leaves the number's agent
//! in place within the ringing; each call records its context and who
//! chose its agent. SQLite and PostgreSQL.

// A test's unwrap, expect or panic is its failure report: the daemon's bans
// (Cargo.toml `[lints]`) do not apply here.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::routing::post;
use chrono::{DateTime, Utc};
use common::{
    Backend, Capture, TestDaemon, chunk, finish, free_udp_port, json_of, run_sipp, serve, sse_body,
    tool_call_chunks, verify, zone_at,
};
use serde_json::{Value, json};

const LIMIT: Duration = Duration::from_secs(40);
/// Our number: the campaign's caller ID, and the number inbound calls dial.
const NUMBER: &str = "+14155552671";
/// The contacts' first names, as the variables give them.
const NAMES: [&str; 3] = ["Mary", "John", "David"];
const TOOL_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// The body of a successful answer.
async fn ok(r: reqwest::RequestBuilder) -> Value {
    let (status, body) = json_of(r.send().await.unwrap()).await;
    assert!(status.is_success(), "{status}: {body}");
    body
}

/// A trunk that takes calls from 127.0.0.1 and dials `callee_port`.
fn trunk(callee_port: u16) -> String {
    format!(
        "name = \"carrier\"\n[inbound]\nallow = [\"127.0.0.1/32\"]\n\
         [outbound]\nproxy = \"127.0.0.1:{callee_port}\"\n[limits]\nmax_calls = 10\ncps = 50\n"
    )
}

async fn daemon(backend: Backend, callee_port: u16, config: &str) -> TestDaemon {
    TestDaemon::builder()
        .backend(backend)
        .profile("carrier", &trunk(callee_port))
        .env("TOOL_SECRET", TOOL_SECRET)
        .config(&format!(
            "[campaigns]\npoll_ms = 100\n[webhooks]\nallow_private = true\n\
             [secrets.env.TOOL_SECRET]\nhosts = [\"127.0.0.1\"]\n{config}"
        ))
        .start()
        .await
}

/// An agent and our number bound to it (with `number_extra` fields);
/// returns the agent id and the number as created.
async fn provision(d: &TestDaemon, agent: Value, number_extra: Value) -> (String, Value) {
    let agent = ok(d.post("/v1/agents").json(&agent)).await;
    let id = agent["id"].as_str().unwrap().to_owned();
    let mut body = json!({"number": NUMBER, "agent_id": id, "trunk_id": "trk_carrier"});
    body.as_object_mut()
        .unwrap()
        .extend(number_extra.as_object().unwrap().clone());
    let number = ok(d.post("/v1/phone-numbers").json(&body)).await;
    (id, number)
}

/// A running campaign of `agent` calling one contact per name, `cap` at
/// once; returns the contacts' numbers by first name.
async fn campaign(d: &TestDaemon, agent: &str, cap: i64) -> BTreeMap<String, String> {
    campaign_with(d, agent, cap, json!({})).await.0
}

/// [`campaign`] with `extra` fields; also returns the campaign as created.
async fn campaign_with(
    d: &TestDaemon,
    agent: &str,
    cap: i64,
    extra: Value,
) -> (BTreeMap<String, String>, Value) {
    let zone = zone_at(12);
    let mut body = json!({
        "name": "reminders",
        "agent_id": agent,
        "caller_number": NUMBER,
        "trunk_ids": ["trk_carrier"],
        "schedule": {"start_time": "06:00", "end_time": "18:00", "timezone": zone},
        "max_concurrent_calls": cap,
        "calls_per_second": 10,
        "max_attempts": 1,
    });
    body.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    let campaign = ok(d.post("/v1/campaigns").json(&body)).await;
    let id = campaign["id"].as_str().unwrap();
    let numbers: BTreeMap<String, String> = NAMES
        .iter()
        .enumerate()
        .map(|(i, n)| ((*n).to_owned(), format!("+1415555010{i}")))
        .collect();
    let contacts: Vec<Value> = numbers
        .iter()
        .map(|(name, number)| {
            json!({"number": number, "timezone": zone,
                   "variables": {"first_name": name, "appointment": "Tuesday"}})
        })
        .collect();
    ok(d.post(&format!("/v1/campaigns/{id}/contacts"))
        .json(&json!({"contacts": contacts})))
    .await;
    ok(d.post(&format!("/v1/campaigns/{id}/start"))).await;
    (numbers, campaign)
}

/// SIPp as the callee of `calls` calls with `scenario`, its media on a
/// port of its own; the child, its SIP port and its media port.
fn callee(scenario: &str, calls: usize) -> (tokio::process::Child, u16, u16) {
    common::require_sipp();
    let port = free_udp_port();
    let media = free_udp_port();
    let child = tokio::process::Command::new("sipp")
        .args(["-sf", &common::scenario(scenario)])
        .args(["-i", "127.0.0.1", "-p", &port.to_string()])
        .args(["-mi", "127.0.0.1", "-mp", &media.to_string()])
        .args(["-m", &calls.to_string(), "-nostdin", "-timeout", "120s"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn sipp");
    (child, port, media)
}

/// The calls of `agent`, once `count` of them have ended (within 90 s).
async fn ended_calls(d: &TestDaemon, agent: &str, count: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let page = ok(d.get(&format!("/v1/calls?agent_id={agent}&limit=100"))).await;
        let items = page["items"].as_array().unwrap().clone();
        if items.len() >= count && items.iter().all(|c| !c["ended_at"].is_null()) {
            return items;
        }
        assert!(
            Instant::now() < deadline,
            "calls did not end: {page}\n{}",
            d.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The newest call once it has ended.
async fn ended_call(d: &TestDaemon) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let page = ok(d.get("/v1/calls?limit=1")).await;
        if let Some(call) = page["items"].get(0)
            && !call["ended_at"].is_null()
        {
            return call.clone();
        }
        assert!(Instant::now() < deadline, "no ended call\n{}", d.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The agent's first line in a transcript (a callee's key may come
/// first on a loaded machine).
fn greeting(t: &Value) -> Value {
    t["turns"]
        .as_array()
        .and_then(|turns| turns.iter().find(|turn| turn["speaker"] == "agent"))
        .map(|turn| turn["text"].clone())
        .unwrap_or(Value::Null)
}

async fn transcript(d: &TestDaemon, id: &str) -> Value {
    ok(d.get(&format!("/v1/calls/{id}/transcript"))).await
}

/// The µ-law audio sent to `port` in `capture`, one stream per sending
/// port (one per call: each call has an RTP port of its own), in the
/// order the streams started.
fn streams_to(capture: &Path, port: u16) -> Vec<Vec<u8>> {
    let out = std::process::Command::new("tshark")
        .arg("-r")
        .arg(capture)
        .args(["-d", &format!("udp.port=={port},rtp")])
        .args(["-Y", &format!("rtp.p_type == 0 && udp.dstport == {port}")])
        .args(["-T", "fields", "-e", "udp.srcport", "-e", "rtp.payload"])
        .output()
        .expect("tshark is installed by scripts/test");
    let mut order = Vec::new();
    let mut streams: BTreeMap<u16, Vec<u8>> = BTreeMap::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let mut f = line.split('\t');
        let (Some(src), Some(hex)) = (f.next(), f.next()) else {
            continue;
        };
        let Ok(src) = src.parse::<u16>() else {
            continue;
        };
        let hex = hex.replace(':', "");
        let bytes =
            (0..hex.len() / 2).filter_map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok());
        if !streams.contains_key(&src) {
            order.push(src);
        }
        streams.entry(src).or_default().extend(bytes);
    }
    order
        .into_iter()
        .filter_map(|src| streams.remove(&src))
        .collect()
}

/// Decodes 16 kHz mono `wav` with PocketSphinx 5 against a JSGF grammar:
/// the expected sentences give an exact pass/fail answer.
const DECODE: &str = "import sys, wave\n\
from pocketsphinx import Decoder\n\
d = Decoder(samprate=16000, jsgf=sys.argv[2], lm=None)\n\
w = wave.open(sys.argv[1])\n\
d.start_utt(); d.process_raw(w.readframes(w.getnframes()), full_utt=True); d.end_utt()\n\
print(d.hyp().hypstr if d.hyp() else '')\n";

/// What PocketSphinx hears in `ulaw` (8 kHz µ-law), silence trimmed,
/// with `grammar` (a JSGF rule body for `<call>`).
fn decode(dir: &Path, name: &str, ulaw: &[u8], grammar: &str) -> String {
    let raw = dir.join(format!("{name}.ul"));
    std::fs::write(&raw, ulaw).unwrap();
    let wav = dir.join(format!("{name}.wav"));
    let converted = std::process::Command::new("sox")
        .args(["-t", "ul", "-r", "8000", "-c", "1"])
        .arg(&raw)
        .args(["-r", "16000", "-b", "16", "-e", "signed", "-c", "1"])
        .arg(&wav)
        .args([
            "silence", "1", "0.05", "1%", "reverse", "silence", "1", "0.05", "1%", "reverse",
        ])
        .status()
        .expect("sox is installed by scripts/test");
    assert!(converted.success());
    let jsgf = dir.join(format!("{name}.jsgf"));
    std::fs::write(
        &jsgf,
        format!("#JSGF V1.0;\ngrammar call;\npublic <call> = {grammar};\n"),
    )
    .unwrap();
    let decoded = std::process::Command::new("python3")
        .args(["-c", DECODE])
        .arg(&wav)
        .arg(&jsgf)
        .output()
        .expect("python3 with pocketsphinx (scripts/test)");
    String::from_utf8_lossy(&decoded.stdout).trim().to_owned()
}

/// The names the grammars know, lowercase, as alternatives.
fn name_rule() -> String {
    let mut names: Vec<String> = NAMES.iter().map(|n| n.to_lowercase()).collect();
    names.push("there".into());
    format!("({})", names.join(" | "))
}

fn at(v: &Value) -> DateTime<Utc> {
    v.as_str().unwrap().parse().unwrap()
}

/// A campaign whose contacts have `first_name`, one call at a time to
/// SIPp: the greeting heard on each call, decoded with PocketSphinx, is
/// that contact's; each call's context holds the contact and its
/// variables, and the transcript the greeting as said.
async fn campaign_greets_each_contact_by_name(backend: Backend) {
    let (mut sipp, sipp_port, media_port) =
        callee("uas-invite-expect-answer-then-bye.xml", NAMES.len());
    let d = daemon(backend, sipp_port, "").await;
    let (agent, _) = provision(
        &d,
        json!({
            "name": "clinic",
            "kind": "voice",
            "max_duration_seconds": 5,
            "opening": {"outbound_wait_ms": 0},
            "tts": {"provider": "embedded", "voice": "slt"},
            "script": {
                "start": "main",
                "greeting": "Hello {first_name|there}, this is the clinic.",
                "states": {"main": {"intents": [
                    {"name": "yes", "keywords": ["yes"], "reply": "See you on {appointment}."}
                ]}}
            }
        }),
        json!({}),
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let capture = Capture::start(dir.path(), media_port);
    let numbers = campaign(&d, &agent, 1).await;
    let mut calls = ended_calls(&d, &agent, NAMES.len()).await;
    let pcap = capture.stop();
    let _ = sipp.kill().await;

    calls.sort_by_key(|c| at(&c["answered_at"]));
    let streams = streams_to(&pcap, media_port);
    assert_eq!(
        streams.len(),
        NAMES.len(),
        "one RTP stream per call\n{}",
        d.log()
    );
    for (call, stream) in calls.iter().zip(&streams) {
        let id = call["id"].as_str().unwrap();
        let full = ok(d.get(&format!("/v1/calls/{id}"))).await;
        let context = &full["context"];
        let name = context["variables"]["first_name"].as_str().unwrap();
        assert_eq!(context["to"], numbers[name], "{full}");
        assert_eq!(context["call_id"], id, "{full}");
        assert_eq!(context["direction"], "outbound", "{full}");
        assert_eq!(context["from"], NUMBER, "{full}");
        assert_eq!(
            context["campaign_id"], full["metadata"]["campaign_id"],
            "{full}"
        );
        assert!(
            context["contact_id"].as_str().unwrap().starts_with("cnt_"),
            "{full}"
        );
        assert_eq!(context["variables"]["appointment"], "Tuesday", "{full}");
        assert_eq!(full["agent_source"], "number", "{full}");

        let t = transcript(&d, id).await;
        assert_eq!(
            greeting(&t),
            format!("Hello {name}, this is the clinic."),
            "{t}"
        );
        let heard = decode(
            dir.path(),
            id,
            stream,
            &format!("hello {} this is the clinic", name_rule()),
        );
        assert_eq!(
            heard,
            format!("hello {} this is the clinic", name.to_lowercase()),
            "what {name}'s call heard"
        );
    }
}

/// What the stand-in LLM and the tool server saw.
#[derive(Default)]
struct StandIn {
    /// Each chat completion request's body.
    llm: Vec<Value>,
    /// Each tool request: its headers and body.
    tools: Vec<(HeaderMap, Bytes)>,
    /// Each agent webhook request: when it came, its headers and body.
    hooks: Vec<(SystemTime, HeaderMap, Bytes)>,
}

type Seen = Arc<Mutex<StandIn>>;

/// The stand-in LLM: asks for `lookup_customer` once on the caller's
/// key, says what the tool answered after it, and "Noted." otherwise.
async fn llm_handler(
    State(seen): State<Seen>,
    body: axum::Json<Value>,
) -> axum::response::Response {
    let body = body.0;
    seen.lock().unwrap().llm.push(body.clone());
    let tools_offered = body["tools"]
        .as_array()
        .is_some_and(|t| t.iter().any(|t| t["function"]["name"] == "lookup_customer"));
    let last = body["messages"]
        .as_array()
        .and_then(|m| m.last().cloned())
        .unwrap_or(Value::Null);
    let zero = Duration::ZERO;
    let mut chunks = vec![(zero, chunk(json!({"role": "assistant", "content": ""})))];
    if last["role"] == "tool" {
        chunks.push((zero, chunk(json!({"content": "Found you."}))));
    } else if tools_offered && last["content"] == "[DTMF 1]" {
        let call = tool_call_chunks("call_c1", "lookup_customer", r#"{"reason": "greeting"}"#);
        chunks.extend(call.into_iter().map(|c| (zero, c)));
    } else {
        chunks.push((zero, chunk(json!({"content": "Noted."}))));
    }
    chunks.extend(finish().into_iter().map(|c| (zero, c)));
    axum::response::Response::builder()
        .header("content-type", "text/event-stream")
        .body(sse_body(chunks, Arc::default()))
        .unwrap()
}

async fn tool_handler(
    State(seen): State<Seen>,
    headers: HeaderMap,
    body: Bytes,
) -> axum::Json<Value> {
    seen.lock().unwrap().tools.push((headers, body));
    axum::Json(json!({"customer": "gold"}))
}

/// The stand-ins on a free port: the LLM at `/v1/chat/completions`, the
/// tool at `/tool`, agent webhooks at `/hook/answer` (overrides) and
/// `/hook/slow` (answers after 5 s).
async fn stand_ins() -> (String, Seen) {
    let seen: Seen = Arc::default();
    async fn hook(seen: Seen, headers: HeaderMap, body: Bytes, slow: bool) -> axum::Json<Value> {
        seen.lock()
            .unwrap()
            .hooks
            .push((SystemTime::now(), headers, body));
        if slow {
            tokio::time::sleep(Duration::from_secs(5)).await;
        }
        axum::Json(json!({
            "greeting": "Hello {first_name}, welcome back to the clinic.",
            "variables": {"first_name": "David"}
        }))
    }
    let url = serve(
        axum::Router::new()
            .route("/v1/chat/completions", post(llm_handler))
            .route("/tool", post(tool_handler))
            .route(
                "/hook/answer",
                post(|State(s): State<Seen>, h: HeaderMap, b: Bytes| hook(s, h, b, false)),
            )
            .route(
                "/hook/campaign",
                post(|State(s): State<Seen>, h: HeaderMap, b: Bytes| async move {
                    s.lock().unwrap().hooks.push((SystemTime::now(), h, b));
                    axum::Json(json!({"greeting": "Good morning {first_name}."}))
                }),
            )
            .route("/hook/huge", post(|| async { "x".repeat(70 * 1024) }))
            .route(
                "/hook/unknown-agent",
                post(|| async {
                    axum::Json(json!({"agent_id": "agt_01jdw8q1m7k3x9b5n4c2v6t8r0"}))
                }),
            )
            .route(
                "/hook/bad-voice",
                post(|| async { axum::Json(json!({"voice": "nosuchvoice"})) }),
            )
            .route(
                "/hook/slow",
                post(|State(s): State<Seen>, h: HeaderMap, b: Bytes| hook(s, h, b, true)),
            )
            .with_state(seen.clone()),
    )
    .await;
    (url, seen)
}

/// The same campaign with an LLM agent: the system prompt each call's
/// LLM requests carry names that call's contact (and the call).
async fn llm_campaign_prompts_name_each_contact(backend: Backend) {
    let (stand_in, seen) = stand_ins().await;
    let (mut sipp, sipp_port, _) = callee("uas-answer-listen-press-1-expect-bye.xml", NAMES.len());
    let d = daemon(backend, sipp_port, "").await;
    let (agent, _) = provision(
        &d,
        json!({
            "name": "reminder",
            "kind": "voice",
            "max_duration_seconds": 5,
            "opening": {"outbound_wait_ms": 0},
            "greeting": "Hi {{first_name|there}}.",
            "instructions": "You are calling {{first_name|a customer}} (call {{call_id}}) \
                about the appointment on {{appointment|an unknown day}}. {{missing|Be kind.}}",
            "llm": {"provider": "openai", "base_url": format!("{stand_in}/v1"), "model": "stand-in"}
        }),
        json!({}),
    )
    .await;
    campaign(&d, &agent, 3).await;
    let calls = ended_calls(&d, &agent, NAMES.len()).await;
    let _ = sipp.kill().await;
    let llm = seen.lock().unwrap().llm.clone();
    for call in &calls {
        let id = call["id"].as_str().unwrap();
        let full = ok(d.get(&format!("/v1/calls/{id}"))).await;
        let name = full["context"]["variables"]["first_name"]
            .as_str()
            .unwrap()
            .to_owned();
        let system: Vec<&str> = llm
            .iter()
            .filter_map(|b| b["messages"][0]["content"].as_str())
            .filter(|s| s.contains(id))
            .collect();
        assert!(
            !system.is_empty(),
            "no LLM request for {id}: {llm:?}\n{}",
            d.log()
        );
        for s in system {
            assert_eq!(
                s,
                format!(
                    "You are calling {name} (call {id}) about the appointment on Tuesday. Be kind."
                )
            );
        }
        let t = transcript(&d, id).await;
        let said: Vec<&Value> = t["turns"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|turn| turn["speaker"] == "agent")
            .map(|turn| &turn["text"])
            .collect();
        assert_eq!(said.first(), Some(&&json!(format!("Hi {name}."))), "{t}");
    }
}

/// An inbound INVITE with `X-Customer-Id: 42`: the call's context holds
/// it (and the caller), the LLM's instructions use it, and the tool the
/// LLM calls gets it with the call's id, signed.
async fn sip_headers_reach_the_tool_with_the_call_id(backend: Backend) {
    let (stand_in, seen) = stand_ins().await;
    let d = daemon(backend, free_udp_port(), "").await;
    provision(
        &d,
        json!({
            "name": "support",
            "kind": "voice",
            "max_duration_seconds": 30,
            "greeting": "Support.",
            "instructions": "The caller is customer {{x_customer_id|unknown}}.",
            "tts": {"provider": "embedded", "voice": "slt"},
            "llm": {"provider": "openai", "base_url": format!("{stand_in}/v1"), "model": "stand-in"},
            "tools": [{
                "name": "lookup_customer",
                "description": "The customer's record",
                "url": format!("{stand_in}/tool"),
                "parameters": {"type": "object", "properties": {"reason": {"type": "string"}}},
                "timeout_ms": 2000,
                "secret_env": "TOOL_SECRET"
            }]
        }),
        json!({}),
    )
    .await;
    let run = run_sipp(
        "uac-invite-x-customer-id-dtmf-1-expect-200-bye.xml",
        free_udp_port(),
        Some(([127, 0, 0, 1], d.sip_port).into()),
        &[
            "-s",
            NUMBER,
            "-mi",
            "127.0.0.1",
            "-mp",
            &free_udp_port().to_string(),
        ],
        LIMIT,
    )
    .await;
    assert!(run.success, "{}\n{}", run.output, d.log());
    let call = ended_call(&d).await;
    let id = call["id"].as_str().unwrap();
    let context = &call["context"];
    assert_eq!(context["sip_headers"]["X-Customer-Id"], "42", "{call}");
    assert_eq!(
        context["sip_headers"]["X-Campaign-Ref"], "spring-promo",
        "{call}"
    );
    assert!(context["sip_headers"].get("Via").is_none(), "{call}");
    assert_eq!(context["from"], "+15550001", "{call}");
    assert_eq!(context["to"], NUMBER, "{call}");
    assert_eq!(context["caller_name"], "sipp", "{call}");
    assert!(
        context["number_id"].as_str().unwrap().starts_with("num_"),
        "{call}"
    );

    let seen = seen.lock().unwrap();
    assert_eq!(seen.tools.len(), 1, "{}", d.log());
    let (headers, body) = &seen.tools[0];
    assert!(
        verify(TOOL_SECRET, headers, body),
        "bad signature: {headers:?}"
    );
    assert_eq!(headers["agentline-call-id"], id);
    let sent: Value = serde_json::from_slice(body).unwrap();
    assert_eq!(sent["reason"], "greeting", "{sent}");
    assert_eq!(sent["_call"]["id"], id, "{sent}");
    assert_eq!(
        sent["_call"]["context"]["sip_headers"]["X-Customer-Id"], "42",
        "{sent}"
    );
    assert_eq!(sent["_call"]["context"]["call_id"], id, "{sent}");
    let system = seen.llm[0]["messages"][0]["content"].as_str().unwrap();
    assert_eq!(system, "The caller is customer 42.");
}

/// A number's agent webhook that answers with overrides: the caller hears
/// the greeting it gave, with the variable it added; the request was the
/// call's context, signed with the number's secret; the call records the
/// webhook as the agent's source.
async fn agent_webhook_overrides_the_greeting_heard(backend: Backend) {
    let (stand_in, seen) = stand_ins().await;
    let d = daemon(backend, free_udp_port(), "").await;
    let (_, number) = provision(
        &d,
        clinic_agent(),
        json!({"agent_webhook_url": format!("{stand_in}/hook/answer")}),
    )
    .await;
    let secret = number["agent_webhook_secret"].as_str().unwrap().to_owned();
    assert!(secret.starts_with("whsec_"), "{number}");
    // The secret is shown once.
    let again = ok(d.get(&format!(
        "/v1/phone-numbers/{}",
        number["id"].as_str().unwrap()
    )))
    .await;
    assert!(again.get("agent_webhook_secret").is_none(), "{again}");
    assert_eq!(
        again["agent_webhook_url"],
        format!("{stand_in}/hook/answer")
    );

    let dir = tempfile::tempdir().unwrap();
    let media_port = free_udp_port();
    let capture = Capture::start(dir.path(), media_port);
    let run = run_sipp(
        "uac-invite-expect-200-bye.xml",
        free_udp_port(),
        Some(([127, 0, 0, 1], d.sip_port).into()),
        &[
            "-s",
            NUMBER,
            "-mi",
            "127.0.0.1",
            "-mp",
            &media_port.to_string(),
            "-d",
            "4000",
        ],
        LIMIT,
    )
    .await;
    let pcap = capture.stop();
    assert!(run.success, "{}\n{}", run.output, d.log());
    let call = ended_call(&d).await;
    let id = call["id"].as_str().unwrap();
    assert_eq!(call["agent_source"], "webhook", "{call}");
    assert!(call["agent_source_error"].is_null(), "{call}");
    assert_eq!(
        call["context"]["variables"]["first_name"], "David",
        "{call}"
    );

    let (headers, body) = {
        let seen = seen.lock().unwrap();
        assert_eq!(seen.hooks.len(), 1);
        (seen.hooks[0].1.clone(), seen.hooks[0].2.clone())
    };
    assert!(
        verify(&secret, &headers, &body),
        "bad signature: {headers:?}"
    );
    let asked: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(asked["type"], "call.agent_request", "{asked}");
    assert_eq!(asked["data"]["context"]["call_id"], id, "{asked}");
    assert_eq!(asked["data"]["context"]["from"], "+15550001", "{asked}");
    assert!(!String::from_utf8_lossy(&body).contains(&secret));

    let t = transcript(&d, id).await;
    assert_eq!(
        greeting(&t),
        "Hello David, welcome back to the clinic.",
        "{t}"
    );
    let streams = streams_to(&pcap, media_port);
    assert_eq!(streams.len(), 1, "{}", d.log());
    let heard = decode(
        dir.path(),
        "override",
        &streams[0],
        &format!(
            "hello this is the clinic | hello {} welcome back to the clinic",
            name_rule()
        ),
    );
    assert_eq!(heard, "hello david welcome back to the clinic");
}

/// The number's own agent: a scripted clinic greeting.
fn clinic_agent() -> Value {
    json!({
        "name": "clinic",
        "kind": "voice",
        "max_duration_seconds": 30,
        "tts": {"provider": "embedded", "voice": "slt"},
        "script": {
            "start": "main",
            "greeting": "Hello, this is the clinic.",
            "states": {"main": {"intents": [
                {"name": "yes", "keywords": ["yes"], "reply": "Thank you."}
            ]}}
        }
    })
}

/// A number's agent webhook that does not answer in time: the call is
/// answered with the number's agent once the timeout passes (while it
/// rang), and records the fallback and why.
async fn a_slow_agent_webhook_leaves_the_numbers_agent(backend: Backend) {
    let (stand_in, seen) = stand_ins().await;
    let d = daemon(
        backend,
        free_udp_port(),
        "[calls]\nagent_webhook_timeout_ms = 700\n",
    )
    .await;
    provision(
        &d,
        clinic_agent(),
        json!({"agent_webhook_url": format!("{stand_in}/hook/slow")}),
    )
    .await;
    let run = run_sipp(
        "uac-invite-expect-200-bye.xml",
        free_udp_port(),
        Some(([127, 0, 0, 1], d.sip_port).into()),
        &[
            "-s",
            NUMBER,
            "-mi",
            "127.0.0.1",
            "-mp",
            &free_udp_port().to_string(),
            "-d",
            "3000",
        ],
        LIMIT,
    )
    .await;
    assert!(run.success, "{}\n{}", run.output, d.log());
    let call = ended_call(&d).await;
    assert_eq!(call["agent_source"], "fallback", "{call}");
    assert_eq!(
        call["agent_source_error"], "no answer within 700 ms",
        "{call}"
    );
    assert!(
        call["context"]["variables"].get("first_name").is_none(),
        "{call}"
    );
    let t = transcript(&d, call["id"].as_str().unwrap()).await;
    assert_eq!(greeting(&t), "Hello, this is the clinic.", "{t}");
    // Answered after the timeout, well before the webhook's answer.
    let asked: DateTime<Utc> = seen.lock().unwrap().hooks[0].0.into();
    let waited = (at(&call["answered_at"]) - asked).num_milliseconds();
    assert!(
        (650..2000).contains(&waited),
        "answered {waited} ms after asking"
    );
}

/// A campaign's agent webhook, asked for each attempt with the contact's
/// context, changes each call's greeting; the calls record it.
async fn campaign_agent_webhook_is_asked_per_attempt(backend: Backend) {
    let (stand_in, seen) = stand_ins().await;
    let (mut sipp, sipp_port, _) = callee("uas-invite-expect-answer-then-bye.xml", NAMES.len());
    let d = daemon(backend, sipp_port, "").await;
    let (agent, _) = provision(
        &d,
        json!({
            "name": "clinic",
            "kind": "voice",
            "max_duration_seconds": 3,
            "opening": {"outbound_wait_ms": 0},
            "script": {
                "start": "main",
                "greeting": "Hello {first_name}, this is the clinic.",
                "states": {"main": {"intents": [
                    {"name": "yes", "keywords": ["yes"], "reply": "Thank you."}
                ]}}
            }
        }),
        json!({}),
    )
    .await;
    let url = format!("{stand_in}/hook/campaign");
    let (_, created) = campaign_with(&d, &agent, 3, json!({"agent_webhook_url": url})).await;
    assert_eq!(created["agent_webhook_url"], url, "{created}");
    let secret = created["agent_webhook_secret"].as_str().unwrap().to_owned();
    let shown = ok(d.get(&format!(
        "/v1/campaigns/{}",
        created["id"].as_str().unwrap()
    )))
    .await;
    assert!(shown.get("agent_webhook_secret").is_none(), "{shown}");
    let calls = ended_calls(&d, &agent, NAMES.len()).await;
    let _ = sipp.kill().await;
    for call in &calls {
        let id = call["id"].as_str().unwrap();
        assert_eq!(call["agent_source"], "webhook", "{call}");
        let name = call["context"]["variables"]["first_name"].as_str().unwrap();
        let t = transcript(&d, id).await;
        assert_eq!(greeting(&t), format!("Good morning {name}."), "{t}");
    }
    let seen = seen.lock().unwrap();
    assert_eq!(seen.hooks.len(), NAMES.len());
    for (_, headers, body) in &seen.hooks {
        assert!(verify(&secret, headers, body), "bad signature: {headers:?}");
        let asked: Value = serde_json::from_slice(body).unwrap();
        let context = &asked["data"]["context"];
        assert_eq!(context["campaign_id"], created["id"], "{asked}");
        assert!(context["variables"]["first_name"].is_string(), "{asked}");
    }
}

/// A transfer passes the variables the agent names to the target, as
/// header fields of the REFER's Refer-To URI (SIPp checks them); a name
/// the call lacks passes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transfer_passes_the_chosen_context_to_the_target() {
    let d = daemon(Backend::Sqlite, free_udp_port(), "").await;
    provision(
        &d,
        json!({
            "name": "switchboard",
            "kind": "voice",
            "max_duration_seconds": 60,
            "transfer_context": ["x_customer_id", "caller_name", "first_name"],
            "script": {
                "start": "main",
                "greeting": "Hello.",
                "states": {"main": {"intents": [
                    {"name": "operator", "dtmf": "0", "reply": "Transferring you.",
                     "actions": [{"type": "transfer", "to": "+14155550100"}]}
                ]}}
            }
        }),
        json!({}),
    )
    .await;
    let run = run_sipp(
        "uac-invite-x-customer-id-dtmf-0-expect-refer-with-headers-bye.xml",
        free_udp_port(),
        Some(([127, 0, 0, 1], d.sip_port).into()),
        &[
            "-s",
            NUMBER,
            "-mi",
            "127.0.0.1",
            "-mp",
            &free_udp_port().to_string(),
        ],
        LIMIT,
    )
    .await;
    assert!(run.success, "{}\n{}", run.output, d.log());
    let call = ended_call(&d).await;
    assert_eq!(call["end_reason"], "transferred", "{call}");
    // Agent settings name variables only.
    let (status, body) = json_of(
        d.post("/v1/agents")
            .json(&json!({"name": "x", "kind": "echo", "transfer_context": ["X-Bad: 1"]}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(
        body["error"]["details"][0]["field"], "transfer_context[0]",
        "{body}"
    );
}

/// A number's agent webhook URL goes through the webhooks' address guard,
/// and `null` turns it off.
async fn agent_webhook_urls_are_guarded(backend: Backend) {
    let d = TestDaemon::builder().backend(backend).start().await;
    let agent = ok(d
        .post("/v1/agents")
        .json(&json!({"name": "e", "kind": "echo"})))
    .await;
    for url in [
        "http://127.0.0.1:9/hook",
        "ftp://example.com/",
        "http://169.254.169.254/",
    ] {
        let (status, body) = json_of(
            d.post("/v1/phone-numbers")
                .json(&json!({"number": NUMBER, "agent_id": agent["id"], "agent_webhook_url": url}))
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(status, 422, "{url}: {body}");
        assert_eq!(
            body["error"]["details"][0]["field"], "agent_webhook_url",
            "{body}"
        );
    }
    let number = ok(d
        .post("/v1/phone-numbers")
        .json(&json!({"number": NUMBER, "agent_id": agent["id"]})))
    .await;
    assert!(number["agent_webhook_url"].is_null(), "{number}");
    assert!(number.get("agent_webhook_secret").is_none(), "{number}");
    let path = format!("/v1/phone-numbers/{}", number["id"].as_str().unwrap());
    let (status, body) = json_of(
        d.patch(&path)
            .json(&json!({"agent_webhook_url": "http://10.0.0.1/hook"}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 422, "{body}");
    let unchanged = ok(d.get(&path)).await;
    assert!(unchanged["agent_webhook_url"].is_null(), "{unchanged}");
}

/// Agent webhook answers the call cannot follow (too big, an unknown
/// agent, a voice there is not) leave the number's agent, and say why.
async fn bad_agent_webhook_answers_fall_back(backend: Backend) {
    let (stand_in, _) = stand_ins().await;
    let d = daemon(backend, free_udp_port(), "").await;
    let (_, number) = provision(&d, clinic_agent(), json!({})).await;
    let path = format!("/v1/phone-numbers/{}", number["id"].as_str().unwrap());
    for (hook, error) in [
        ("huge", "answer over 65536 bytes"),
        (
            "unknown-agent",
            "agent agt_01jdw8q1m7k3x9b5n4c2v6t8r0 not found",
        ),
        ("bad-voice", "voice: "),
    ] {
        let set = ok(d
            .patch(&path)
            .json(&json!({"agent_webhook_url": format!("{stand_in}/hook/{hook}")})))
        .await;
        let secret = set["agent_webhook_secret"].as_str().unwrap();
        assert!(secret.starts_with("whsec_"), "{set}");
        let run = run_sipp(
            "uac-invite-expect-200-bye.xml",
            free_udp_port(),
            Some(([127, 0, 0, 1], d.sip_port).into()),
            &[
                "-s",
                NUMBER,
                "-mi",
                "127.0.0.1",
                "-mp",
                &free_udp_port().to_string(),
                "-d",
                "500",
            ],
            LIMIT,
        )
        .await;
        assert!(run.success, "{hook}: {}\n{}", run.output, d.log());
        let call = ended_call(&d).await;
        assert_eq!(call["agent_source"], "fallback", "{hook}: {call}");
        let why = call["agent_source_error"].as_str().unwrap();
        assert!(why.starts_with(error), "{hook}: {why}");
    }
    // `null` turns the webhook off.
    let off = ok(d.patch(&path).json(&json!({"agent_webhook_url": null}))).await;
    assert!(off["agent_webhook_url"].is_null(), "{off}");
}

both_backends!(
    campaign_greets_each_contact_by_name,
    llm_campaign_prompts_name_each_contact,
    sip_headers_reach_the_tool_with_the_call_id,
    agent_webhook_overrides_the_greeting_heard,
    a_slow_agent_webhook_leaves_the_numbers_agent,
    campaign_agent_webhook_is_asked_per_attempt,
    bad_agent_webhook_answers_fall_back,
    agent_webhook_urls_are_guarded,
);
