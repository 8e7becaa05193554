//! The cloud speech vendors, through the library's speech seam
//! (`Speech::stt` / `Speech::tts` with a `SpeechChoice`), against local
//! stand-ins written here that speak each vendor's documented wire protocol
//! frame for frame: OpenAI-compatible `/v1/audio/transcriptions` and
//! `/v1/audio/speech` over HTTP (axum), Deepgram's `/v1/listen` and
//! Cartesia's `/tts/websocket` over WebSockets (tokio-tungstenite's server
//! side). Each test asserts what our client sends and what it makes of the
//! answers, and each vendor's refusal becomes a clear `ProviderError`
//! without the key in it.

// A test's unwrap, expect or panic is its failure report: the daemon's bans
// (Cargo.toml `[lints]`) do not apply here.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::{Arc, Mutex, Once};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use base64::Engine as _;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};

use agentline::agent::providers::{Audio, ProviderError, SttStream, Transcript};
use agentline::agent::speech::{Speech, SpeechChoice, SttKind, TtsKind};
use agentline::agent::turn::FRAME_SAMPLES;

/// Generous: the machine may be busy.
const WAIT: Duration = Duration::from_secs(10);

const OPENAI_KEY: &str = "sk-test-openai-0123";
const BAD_KEY: &str = "sk-bad-key-4567";
const DEEPGRAM_KEY: &str = "dg-test-key-89ab";
const CARTESIA_KEY: &str = "sk_car_test_cdef";

/// Sets the keys once, before any test reads the environment (every test
/// calls this first, so no thread reads it while it changes).
fn keys() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // The keys reach the code as a real deployment's do, by name.
        #[allow(unsafe_code, clippy::disallowed_methods)]
        // SAFETY: runs once, before any test reads the environment.
        unsafe {
            std::env::set_var("VENDORS_TEST_OPENAI_KEY", OPENAI_KEY);
            std::env::set_var("VENDORS_TEST_BAD_KEY", BAD_KEY);
            std::env::set_var("VENDORS_TEST_DEEPGRAM_KEY", DEEPGRAM_KEY);
            std::env::set_var("VENDORS_TEST_CARTESIA_KEY", CARTESIA_KEY);
        }
        // The stand-ins listen on loopback, which the outbound policy
        // opens only when told; the keys go only to the hosts bound here.
        let hosts: Vec<String> = ["127.0.0.1", "localhost", "192.0.2.10"]
            .map(String::from)
            .to_vec();
        let env = [
            "VENDORS_TEST_OPENAI_KEY",
            "VENDORS_TEST_BAD_KEY",
            "VENDORS_TEST_DEEPGRAM_KEY",
            "VENDORS_TEST_CARTESIA_KEY",
        ]
        .map(|n| {
            (
                n.to_string(),
                agentline::net::EnvBinding {
                    hosts: hosts.clone(),
                },
            )
        })
        .into_iter()
        .collect();
        let net = agentline::net::NetConfig {
            allowed_networks: vec!["127.0.0.0/8".parse().unwrap(), "::1/128".parse().unwrap()],
            ..Default::default()
        };
        assert!(agentline::net::install(
            agentline::net::Outbound::new(&net, &[], false, env).unwrap()
        ));
    });
}

fn choice<K: Default>(provider: K, base_url: &str, key_env: &str) -> SpeechChoice<K> {
    SpeechChoice {
        provider,
        base_url: Some(base_url.into()),
        api_key_env: Some(key_env.into()),
        ..SpeechChoice::default()
    }
}

/// A tone at `rate`, `len` samples long.
fn tone(hz: f32, rate: u32, len: usize, from: usize) -> Vec<i16> {
    (from..from + len)
        .map(|i| {
            let t = i as f32 / rate as f32;
            ((2.0 * std::f32::consts::PI * hz * t).sin() * 8000.0) as i16
        })
        .collect()
}

/// Power of `hz` in `x` relative to the signal's total power (Goertzel).
fn share_at(x: &[i16], hz: f64, rate: u32) -> f64 {
    let w = 2.0 * std::f64::consts::PI * hz / f64::from(rate);
    let coeff = 2.0 * w.cos();
    let (mut s1, mut s2) = (0.0, 0.0);
    for &v in x {
        let s0 = f64::from(v) + coeff * s1 - s2;
        s2 = s1;
        s1 = s0;
    }
    let power = s1 * s1 + s2 * s2 - coeff * s1 * s2;
    let total: f64 = x.iter().map(|&v| f64::from(v).powi(2)).sum();
    2.0 * power / (x.len() as f64 * total)
}

fn le_bytes(samples: &[i16]) -> Vec<u8> {
    samples.iter().flat_map(|s| s.to_le_bytes()).collect()
}

/// Serves `router` on a free port of 127.0.0.1; returns its base URL.
async fn serve(router: axum::Router) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await });
    format!("http://{addr}")
}

/// The parts of a multipart/form-data body: (headers, content).
fn form_parts(headers: &HeaderMap, body: &[u8]) -> Vec<(String, Vec<u8>)> {
    let ctype = headers["content-type"].to_str().unwrap();
    let boundary = ctype
        .split("boundary=")
        .nth(1)
        .expect("multipart without a boundary")
        .trim_matches('"');
    let delimiter = format!("--{boundary}").into_bytes();
    let mut parts = Vec::new();
    let mut at = 0;
    let find = |from: usize, pat: &[u8]| {
        body[from..]
            .windows(pat.len())
            .position(|w| w == pat)
            .map(|p| p + from)
    };
    while let Some(start) = find(at, &delimiter) {
        let after = start + delimiter.len();
        if body[after..].starts_with(b"--") {
            break;
        }
        let head_end = find(after, b"\r\n\r\n").expect("part without headers");
        let next = find(head_end, &delimiter).expect("part without an end");
        let head = String::from_utf8_lossy(&body[after..head_end]).into_owned();
        // The content ends with the CRLF before the next delimiter.
        parts.push((head, body[head_end + 4..next - 2].to_vec()));
        at = next;
    }
    parts
}

fn field<'a>(parts: &'a [(String, Vec<u8>)], name: &str) -> &'a (String, Vec<u8>) {
    let tag = format!("name=\"{name}\"");
    parts
        .iter()
        .find(|(h, _)| h.contains(&tag))
        .unwrap_or_else(|| panic!("no form field {name}"))
}

/// What an HTTP stand-in saw: headers and body.
type Seen = Arc<Mutex<Vec<(HeaderMap, Bytes)>>>;

/// The stream's next transcript, within [`WAIT`].
async fn next_transcript(stream: &mut Box<dyn SttStream>) -> Transcript {
    tokio::time::timeout(WAIT, stream.next())
        .await
        .expect("a transcript in time")
        .expect("the stream is open")
        .expect("a transcript, not an error")
}
#[tokio::test]
async fn openai_stt_posts_each_turn_as_a_wav_and_yields_its_text() {
    keys();
    let seen: Seen = Arc::default();
    let log = seen.clone();
    let router = axum::Router::new().route(
        "/v1/audio/transcriptions",
        post(move |headers: HeaderMap, body: Bytes| {
            let log = log.clone();
            async move {
                log.lock().unwrap().push((headers, body));
                axum::Json(json!({"text": " I would like to book an appointment. "}))
            }
        }),
    );
    let base = serve(router).await;
    let mut stt_choice = choice(SttKind::Openai, &base, "VENDORS_TEST_OPENAI_KEY");
    stt_choice.model = Some("whisper-large-v3".into());
    stt_choice.language = Some("en-US".into());
    let stt = Speech::default().stt(Some(&stt_choice)).unwrap();
    let mut stream = stt.open().await.unwrap();

    // One second of silence (the agent was talking), then the caller.
    let silence = vec![0i16; 50 * FRAME_SAMPLES];
    let voice = tone(440.0, 8000, 50 * FRAME_SAMPLES, 0);
    for frame in silence
        .chunks(FRAME_SAMPLES)
        .chain(voice.chunks(FRAME_SAMPLES))
    {
        stream.push(frame).await.unwrap();
    }
    stream.end_of_turn().await.unwrap();
    let t = next_transcript(&mut stream).await;
    assert_eq!(
        t,
        Transcript {
            text: "I would like to book an appointment.".into(),
            is_final: true
        }
    );

    // A turn with no voice is answered at once, with no request.
    for _ in 0..20 {
        stream.push(&[0; FRAME_SAMPLES]).await.unwrap();
    }
    stream.end_of_turn().await.unwrap();
    let t = stream.next().await.unwrap().unwrap();
    assert!(t.is_final && t.text.is_empty(), "{t:?}");

    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 1, "one request per turn with audio");
    let (headers, body) = &seen[0];
    assert_eq!(headers["authorization"], format!("Bearer {OPENAI_KEY}"));
    let parts = form_parts(headers, body);
    let (file_head, wav) = field(&parts, "file");
    assert!(file_head.contains("filename=\"turn.wav\""), "{file_head}");
    assert!(
        file_head.to_ascii_lowercase().contains("audio/wav"),
        "{file_head}"
    );
    assert_eq!(&wav[0..4], b"RIFF");
    assert_eq!(&wav[8..16], b"WAVEfmt ");
    assert_eq!(u16::from_le_bytes([wav[22], wav[23]]), 1, "mono");
    assert_eq!(
        u32::from_le_bytes([wav[24], wav[25], wav[26], wav[27]]),
        8000
    );
    assert_eq!(u16::from_le_bytes([wav[34], wav[35]]), 16, "16-bit");
    assert_eq!(&wav[36..40], b"data");
    // The upload starts 300 ms before the voice.
    let mut sent = vec![0i16; 15 * FRAME_SAMPLES];
    sent.extend_from_slice(&voice);
    assert_eq!(&wav[44..], &le_bytes(&sent)[..], "the turn's samples");
    assert_eq!(field(&parts, "model").1, b"whisper-large-v3");
    assert_eq!(field(&parts, "language").1, b"en");
    assert_eq!(field(&parts, "response_format").1, b"json");
}

#[tokio::test]
async fn openai_tts_plays_the_first_frames_before_the_body_ends() {
    keys();
    let seen: Arc<Mutex<Vec<(HeaderMap, Value)>>> = Arc::default();
    let log = seen.clone();
    // The body: half a second of a 1 kHz tone at 24 kHz, then a pause held
    // until the test releases it, then another half second.
    let (release_tx, release_rx) = oneshot::channel::<()>();
    let release = Arc::new(Mutex::new(Some(release_rx)));
    let router = axum::Router::new().route(
        "/v1/audio/speech",
        post(move |headers: HeaderMap, body: axum::Json<Value>| {
            let (log, release) = (log.clone(), release.clone());
            async move {
                log.lock().unwrap().push((headers, body.0));
                let release = release.lock().unwrap().take().expect("one request");
                let (tx, rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(4);
                tokio::spawn(async move {
                    let first = le_bytes(&tone(1000.0, 24_000, 12_000, 0));
                    // Cut mid-sample: the client must carry the odd byte.
                    tx.send(Ok(Bytes::copy_from_slice(&first[..10_001])))
                        .await
                        .unwrap();
                    tx.send(Ok(Bytes::copy_from_slice(&first[10_001..])))
                        .await
                        .unwrap();
                    let _ = release.await;
                    let second = le_bytes(&tone(1000.0, 24_000, 12_000, 12_000));
                    tx.send(Ok(Bytes::from(second))).await.unwrap();
                });
                let stream = futures_util::stream::unfold(rx, |mut rx| async move {
                    rx.recv().await.map(|item| (item, rx))
                });
                axum::response::Response::builder()
                    .header("content-type", "application/octet-stream")
                    .body(Body::from_stream(stream))
                    .unwrap()
            }
        }),
    );
    let base = serve(router).await;
    let mut tts_choice = choice(
        TtsKind::Openai,
        &format!("{base}/v1"),
        "VENDORS_TEST_OPENAI_KEY",
    );
    tts_choice.voice = Some("nova".into());
    tts_choice.model = Some("gpt-4o-mini-tts".into());
    let tts = Speech::default().tts(Some(&tts_choice)).unwrap();
    let mut audio = tts.speak("Hello there.").await.unwrap();

    // 0.4 s of frames arrive while the server still holds the rest.
    let mut frames = Vec::new();
    while frames.len() < 20 {
        let f = tokio::time::timeout(WAIT, audio.recv())
            .await
            .expect("no frame before the body ended")
            .expect("the stream ended early")
            .unwrap();
        frames.push(f);
    }
    release_tx.send(()).unwrap();
    while let Some(f) = tokio::time::timeout(WAIT, audio.recv()).await.unwrap() {
        frames.push(f.unwrap());
    }
    assert!(frames.iter().all(|f| f.len() == FRAME_SAMPLES));
    assert_eq!(frames.len(), 50, "one second of 20 ms frames");
    let pcm: Vec<i16> = frames.concat();
    let share = share_at(&pcm[800..7200], 1000.0, 8000);
    assert!(
        share > 0.9,
        "the tone holds {share:.3} of the power at 8 kHz"
    );

    let seen = seen.lock().unwrap();
    let (headers, body) = &seen[0];
    assert_eq!(headers["authorization"], format!("Bearer {OPENAI_KEY}"));
    assert_eq!(
        body,
        &json!({"model": "gpt-4o-mini-tts", "voice": "nova", "input": "Hello there.",
                "response_format": "pcm"})
    );
}

#[tokio::test]
async fn openai_refusals_name_the_status_and_hide_the_key() {
    keys();
    async fn refuse() -> (StatusCode, axum::Json<Value>) {
        (
            StatusCode::UNAUTHORIZED,
            axum::Json(json!({"error": {
                "message": format!("Incorrect API key provided: {BAD_KEY}."),
                "type": "invalid_request_error", "code": "invalid_api_key"}})),
        )
    }
    let router = axum::Router::new()
        .route("/v1/audio/speech", post(refuse))
        .route("/v1/audio/transcriptions", post(refuse));
    let base = serve(router).await;
    let speech = Speech::default();

    let tts = speech
        .tts(Some(&choice(
            TtsKind::Openai,
            &base,
            "VENDORS_TEST_BAD_KEY",
        )))
        .unwrap();
    let e = tts.speak("Hello.").await.expect_err("a 401 is an error");
    let text = e.to_string();
    assert!(matches!(e, ProviderError::Refused(_)), "{e:?}");
    assert!(
        text.contains("401") && text.contains("Incorrect API key"),
        "{text}"
    );
    assert!(!text.contains(BAD_KEY), "the key leaked: {text}");

    let stt = speech
        .stt(Some(&choice(
            SttKind::Openai,
            &base,
            "VENDORS_TEST_BAD_KEY",
        )))
        .unwrap();
    let mut stream = stt.open().await.unwrap();
    stream
        .push(&tone(440.0, 8000, FRAME_SAMPLES, 0))
        .await
        .unwrap();
    stream.end_of_turn().await.unwrap();
    let e = tokio::time::timeout(WAIT, stream.next())
        .await
        .unwrap()
        .unwrap()
        .expect_err("a 401 is an error");
    assert!(matches!(e, ProviderError::Refused(_)), "{e:?}");
    assert!(!e.to_string().contains(BAD_KEY), "the key leaked: {e}");

    // A named variable that is not set is a configuration error naming it.
    let e = speech
        .tts(Some(&choice(TtsKind::Openai, &base, "VENDORS_TEST_UNSET")))
        .err()
        .unwrap();
    assert!(e.to_string().contains("VENDORS_TEST_UNSET"), "{e}");
}

/// What a WebSocket stand-in was asked for.
#[derive(Debug, Default, Clone)]
struct Handshake {
    uri: String,
    authorization: Option<String>,
}

type ServerWs = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

/// Accepts one WebSocket on `listener`, or refuses its handshake with
/// `refuse` (status and body).
#[allow(clippy::result_large_err)] // tungstenite's callback returns its own ErrorResponse
async fn accept(
    listener: &TcpListener,
    refuse: Option<(u16, &str)>,
) -> (Option<ServerWs>, Handshake) {
    let (tcp, _) = listener.accept().await.unwrap();
    let mut seen = Handshake::default();
    let ws = tokio_tungstenite::accept_hdr_async(tcp, |req: &Request, resp: Response| {
        seen.uri = req.uri().to_string();
        seen.authorization = req
            .headers()
            .get("authorization")
            .map(|v| v.to_str().unwrap().to_string());
        match refuse {
            None => Ok(resp),
            Some((status, body)) => {
                let mut e = ErrorResponse::new(Some(body.to_string()));
                *e.status_mut() = StatusCode::from_u16(status).unwrap();
                e.headers_mut()
                    .insert("content-type", "application/json".parse().unwrap());
                Err(e)
            }
        }
    })
    .await
    .ok();
    (ws, seen)
}

fn query(uri: &str) -> Vec<(String, String)> {
    let q = uri.split_once('?').map(|(_, q)| q).unwrap_or_default();
    url::form_urlencoded::parse(q.as_bytes())
        .into_owned()
        .collect()
}

/// What the Deepgram stand-in received, in order.
#[derive(Debug, PartialEq)]
enum Up {
    Audio(Vec<u8>),
    Control(String),
}

fn results(transcript: &str, is_final: bool, speech_final: bool, from_finalize: bool) -> Message {
    // The shape of Deepgram's `Results` message.
    Message::text(
        json!({
            "type": "Results", "channel_index": [0, 1], "duration": 0.5, "start": 0.0,
            "is_final": is_final, "speech_final": speech_final, "from_finalize": from_finalize,
            "channel": {"alternatives": [{"transcript": transcript, "confidence": 0.98,
                                          "words": []}]},
            "metadata": {"request_id": "req-1", "model_info": {"name": "general"}},
        })
        .to_string(),
    )
}

#[tokio::test]
async fn deepgram_streams_audio_and_turns_results_into_one_final_per_turn() {
    keys();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("ws://{}", listener.local_addr().unwrap());
    let (up_tx, mut up) = mpsc::unbounded_channel::<Up>();
    let server = tokio::spawn(async move {
        let (ws, seen) = accept(&listener, None).await;
        let mut ws = ws.unwrap();
        let mut audio_frames = 0;
        while let Some(Ok(msg)) = ws.next().await {
            match msg {
                Message::Binary(b) => {
                    audio_frames += 1;
                    up_tx.send(Up::Audio(b.to_vec())).unwrap();
                    if audio_frames == 10 {
                        ws.send(results("book an", false, false, false))
                            .await
                            .unwrap();
                    }
                    if audio_frames == 25 {
                        ws.send(results("book an appointment", true, false, false))
                            .await
                            .unwrap();
                    }
                    if audio_frames == 31 {
                        ws.send(results("thank you", true, true, false))
                            .await
                            .unwrap();
                    }
                }
                Message::Text(t) => {
                    let v: Value = serde_json::from_str(&t).unwrap();
                    up_tx.send(Up::Control(t.to_string())).unwrap();
                    match v["type"].as_str() {
                        Some("Finalize") if audio_frames == 30 => {
                            ws.send(results("for Tuesday", true, true, true))
                                .await
                                .unwrap();
                        }
                        // Deepgram does not promise an answer to every
                        // Finalize: none for the second turn.
                        Some("Finalize") if audio_frames == 31 => {}
                        Some("Finalize") => {
                            ws.send(results("", true, false, true)).await.unwrap();
                        }
                        Some("CloseStream") => {
                            let meta = json!({"type": "Metadata", "transaction_key": "deprecated",
                                "request_id": "req-1", "duration": 0.7, "channels": 1});
                            ws.send(Message::text(meta.to_string())).await.unwrap();
                            ws.close(None).await.unwrap();
                            break;
                        }
                        _ => {}
                    }
                }
                _ => {}
            }
        }
        seen
    });

    let mut dg = choice(SttKind::Deepgram, &base, "VENDORS_TEST_DEEPGRAM_KEY");
    dg.model = Some("nova-2-phonecall".into());
    dg.language = Some("en-US".into());
    let stt = Speech::default().stt(Some(&dg)).unwrap();
    let mut stream = stt.open().await.unwrap();
    let audio = tone(440.0, 8000, 30 * FRAME_SAMPLES, 0);
    for frame in audio.chunks(FRAME_SAMPLES) {
        stream.push(frame).await.unwrap();
    }
    stream.end_of_turn().await.unwrap();
    let mut got = Vec::new();
    // Bounded: the stand-in sends three results for this turn.
    for _ in 0..3 {
        let t = next_transcript(&mut stream).await;
        let done = t.is_final;
        got.push(t);
        if done {
            break;
        }
    }
    assert_eq!(
        got,
        vec![
            Transcript {
                text: "book an".into(),
                is_final: false
            },
            Transcript {
                text: "book an appointment for Tuesday".into(),
                is_final: true
            }
        ]
    );

    // Idle past the keep-alive period: the client keeps the stream open
    // with a KeepAlive (the stand-in reports what came up, in order).
    let mut ups = Vec::new();
    loop {
        let u = tokio::time::timeout(WAIT, up.recv())
            .await
            .expect("a KeepAlive while idle")
            .expect("stand-in running");
        let keep_alive = matches!(&u, Up::Control(t) if t.contains("KeepAlive"));
        ups.push(u);
        if keep_alive {
            break;
        }
    }
    // A second turn whose Finalize goes unanswered: its final pieces stand.
    stream.push(&[0; FRAME_SAMPLES]).await.unwrap();
    stream.end_of_turn().await.unwrap();
    let t = next_transcript(&mut stream).await;
    assert_eq!(
        t,
        Transcript {
            text: "thank you".into(),
            is_final: true
        }
    );
    // A third turn that said nothing gives an empty final.
    stream.push(&[0; FRAME_SAMPLES]).await.unwrap();
    stream.end_of_turn().await.unwrap();
    let t = next_transcript(&mut stream).await;
    assert_eq!(
        t,
        Transcript {
            text: String::new(),
            is_final: true
        }
    );
    drop(stream);
    let seen = tokio::time::timeout(WAIT, server).await.unwrap().unwrap();

    assert_eq!(
        seen.authorization.as_deref(),
        Some(format!("Token {DEEPGRAM_KEY}").as_str())
    );
    assert!(seen.uri.starts_with("/v1/listen?"), "{}", seen.uri);
    let q = query(&seen.uri);
    for (k, v) in [
        ("encoding", "linear16"),
        ("sample_rate", "8000"),
        ("channels", "1"),
        ("model", "nova-2-phonecall"),
        ("interim_results", "true"),
        ("endpointing", "300"),
        ("language", "en-US"),
    ] {
        assert!(
            q.contains(&(k.into(), v.into())),
            "{k}={v} missing in {q:?}"
        );
    }

    while let Ok(u) = up.try_recv() {
        ups.push(u);
    }
    let frames: Vec<&Vec<u8>> = ups
        .iter()
        .filter_map(|u| match u {
            Up::Audio(b) => Some(b),
            Up::Control(_) => None,
        })
        .collect();
    assert_eq!(frames.len(), 32);
    assert!(
        frames.iter().all(|f| f.len() == 2 * FRAME_SAMPLES),
        "320 bytes a frame"
    );
    assert_eq!(frames[0], &le_bytes(&audio[..FRAME_SAMPLES]), "linear16 LE");
    let controls: Vec<&str> = ups
        .iter()
        .filter_map(|u| match u {
            Up::Control(t) => Some(t.as_str()),
            Up::Audio(_) => None,
        })
        .collect();
    let ty = |t: &str| serde_json::from_str::<Value>(t).unwrap()["type"].clone();
    assert_eq!(ty(controls[0]), "Finalize");
    assert_eq!(ty(controls[1]), "KeepAlive", "{controls:?}");
    assert_eq!(ty(controls[2]), "Finalize");
    assert_eq!(ty(controls[3]), "Finalize");
    assert_eq!(ty(controls[4]), "CloseStream");
    assert_eq!(controls.len(), 5, "{controls:?}");
    // The audio of the first turn went up before its Finalize.
    let first_control = ups
        .iter()
        .position(|u| matches!(u, Up::Control(_)))
        .unwrap();
    assert_eq!(first_control, 30);
}

#[tokio::test]
async fn deepgram_refusals_are_clear_and_keys_are_required() {
    keys();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("ws://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        accept(
            &listener,
            Some((
                401,
                r#"{"err_code":"INVALID_AUTH","err_msg":"Invalid credentials.","request_id":"r"}"#,
            )),
        )
        .await
    });
    let speech = Speech::default();
    let stt = speech
        .stt(Some(&choice(
            SttKind::Deepgram,
            &base,
            "VENDORS_TEST_DEEPGRAM_KEY",
        )))
        .unwrap();
    let e = stt.open().await.err().expect("a 401 is an error");
    let text = e.to_string();
    assert!(matches!(e, ProviderError::Refused(_)), "{e:?}");
    assert!(
        text.contains("401") && text.contains("Invalid credentials"),
        "{text}"
    );
    assert!(!text.contains(DEEPGRAM_KEY), "the key leaked: {text}");

    let mut no_key = choice(SttKind::Deepgram, &base, "VENDORS_TEST_UNSET");
    let e = speech.stt(Some(&no_key)).err().unwrap();
    assert!(matches!(e, ProviderError::Config(_)), "{e:?}");
    assert!(e.to_string().contains("VENDORS_TEST_UNSET"), "{e}");
    // Plain ws:// leaves the machine only encrypted.
    no_key.base_url = Some("ws://192.0.2.10".into());
    no_key.api_key_env = Some("VENDORS_TEST_DEEPGRAM_KEY".into());
    let e = speech.stt(Some(&no_key)).err().unwrap();
    assert!(e.to_string().contains("loopback"), "{e}");
}

/// Reads the client's generation request from a Cartesia stand-in.
async fn request(ws: &mut ServerWs) -> Value {
    loop {
        match ws.next().await.unwrap().unwrap() {
            Message::Text(t) => return serde_json::from_str(&t).unwrap(),
            _ => continue,
        }
    }
}

fn chunk(context_id: &Value, pcm: &[u8]) -> Message {
    let data = base64::engine::general_purpose::STANDARD.encode(pcm);
    Message::text(
        json!({"type": "chunk", "data": data, "done": false, "status_code": 206,
               "step_time": 12.5, "context_id": context_id})
        .to_string(),
    )
}

#[tokio::test]
async fn cartesia_turns_chunks_into_frames_and_cancels_on_drop() {
    keys();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("ws://{}", listener.local_addr().unwrap());
    let pcm = le_bytes(&tone(700.0, 8000, 4000, 0));
    let sent = pcm.clone();
    let (cancel_tx, cancel_rx) = oneshot::channel::<Value>();
    let server = tokio::spawn(async move {
        // First connection: a whole generation in chunks cut mid-sample.
        let (ws, seen) = accept(&listener, None).await;
        let mut ws = ws.unwrap();
        let req = request(&mut ws).await;
        let ctx = req["context_id"].clone();
        ws.send(chunk(&ctx, &sent[..3001])).await.unwrap();
        let ts = json!({"type": "timestamps", "done": false, "status_code": 206,
            "context_id": ctx, "word_timestamps": {"words": ["Hello"], "start": [0.0], "end": [0.4]}});
        ws.send(Message::text(ts.to_string())).await.unwrap();
        ws.send(chunk(&ctx, &sent[3001..6000])).await.unwrap();
        ws.send(chunk(&ctx, &sent[6000..])).await.unwrap();
        let done = json!({"type": "done", "done": true, "status_code": 206, "context_id": ctx});
        ws.send(Message::text(done.to_string())).await.unwrap();

        // The next piece of text on the same socket: chunks every 10 ms
        // (at most 500) until the client cancels.
        let req2 = request(&mut ws).await;
        let mut cancel = None;
        for _ in 0..500 {
            ws.send(chunk(&req2["context_id"], &sent[..320]))
                .await
                .unwrap();
            tokio::select! {
                m = ws.next() => {
                    if let Some(Ok(Message::Text(t))) = m {
                        cancel = Some(serde_json::from_str::<Value>(&t).unwrap());
                        break;
                    }
                }
                () = tokio::time::sleep(Duration::from_millis(10)) => {}
            }
        }
        cancel_tx.send(cancel.expect("no cancel")).unwrap();
        // No second socket was opened.
        let again = tokio::time::timeout(Duration::from_millis(300), listener.accept()).await;
        assert!(again.is_err(), "a second connection for the second piece");
        (seen, req, req2)
    });

    let mut c = choice(TtsKind::Cartesia, &base, "VENDORS_TEST_CARTESIA_KEY");
    c.voice = Some("a0e99841-438c-4a64-b679-ae501e7d6091".into());
    c.model = Some("sonic-2".into());
    let tts = Speech::default().tts(Some(&c)).unwrap();
    let audio = tts.speak("Hello there.").await.unwrap();
    let frames = collect(audio).await;
    assert_eq!(frames.len(), 25, "4000 samples are 25 frames");
    assert!(frames.iter().all(|f| f.len() == FRAME_SAMPLES));
    assert_eq!(
        le_bytes(&frames.concat()),
        pcm,
        "8 kHz PCM passes unchanged"
    );

    // A barge-in drops the audio after its first frame.
    let mut audio = tts.speak("A long answer.").await.unwrap();
    let first = tokio::time::timeout(WAIT, audio.recv()).await.unwrap();
    assert!(matches!(first, Some(Ok(_))));
    drop(audio);
    let cancel = tokio::time::timeout(WAIT, cancel_rx)
        .await
        .unwrap()
        .unwrap();

    let (seen, req, req2) = tokio::time::timeout(WAIT, server).await.unwrap().unwrap();
    assert!(seen.uri.starts_with("/tts/websocket?"), "{}", seen.uri);
    let q = query(&seen.uri);
    assert!(
        q.contains(&("api_key".into(), CARTESIA_KEY.into())),
        "{q:?}"
    );
    assert!(
        q.iter()
            .any(|(k, v)| k == "cartesia_version" && !v.is_empty()),
        "{q:?}"
    );
    assert_eq!(req["model_id"], "sonic-2");
    assert_eq!(req["transcript"], "Hello there.");
    assert_eq!(
        req["voice"],
        json!({"mode": "id", "id": "a0e99841-438c-4a64-b679-ae501e7d6091"})
    );
    assert_eq!(
        req["output_format"],
        json!({"container": "raw", "encoding": "pcm_s16le", "sample_rate": 8000})
    );
    assert_eq!(req["continue"], false);
    assert!(req["context_id"].as_str().is_some_and(|s| !s.is_empty()));
    assert_ne!(
        req["context_id"], req2["context_id"],
        "a context per request"
    );
    assert_eq!(
        cancel,
        json!({"context_id": req2["context_id"], "cancel": true})
    );
}

async fn collect(mut audio: Audio) -> Vec<Vec<i16>> {
    let mut out = Vec::new();
    while let Some(f) = tokio::time::timeout(WAIT, audio.recv()).await.unwrap() {
        out.push(f.unwrap());
    }
    out
}

#[tokio::test]
async fn cartesia_errors_and_unsupported_vendors_are_clear() {
    keys();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("ws://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let (ws, _) = accept(&listener, None).await;
        let mut ws = ws.unwrap();
        let req = request(&mut ws).await;
        let err = json!({"type": "error", "done": true, "title": "Invalid voice",
            "message": "Voice not found.", "error_code": "voice_not_found",
            "status_code": 400, "context_id": req["context_id"]});
        ws.send(Message::text(err.to_string())).await.unwrap();
        // The error ends only its context: the next one is answered.
        let req = request(&mut ws).await;
        ws.send(chunk(&req["context_id"], &[0; 320])).await.unwrap();
        let done = json!({"type": "done", "done": true, "status_code": 206,
            "context_id": req["context_id"]});
        ws.send(Message::text(done.to_string())).await.unwrap();
        // Keep the socket until the client hangs up.
        while let Some(Ok(_)) = ws.next().await {}
    });
    let speech = Speech::default();
    let mut c = choice(TtsKind::Cartesia, &base, "VENDORS_TEST_CARTESIA_KEY");
    c.voice = Some("no-such-voice".into());
    let tts = speech.tts(Some(&c)).unwrap();
    let mut audio = tts.speak("Hello.").await.unwrap();
    let e = tokio::time::timeout(WAIT, audio.recv())
        .await
        .unwrap()
        .expect("the error arrives on the stream")
        .expect_err("an error, not audio");
    assert!(matches!(e, ProviderError::Refused(_)), "{e:?}");
    assert!(e.to_string().contains("Voice not found"), "{e}");
    assert!(!e.to_string().contains(CARTESIA_KEY), "the key leaked: {e}");
    let frames = collect(tts.speak("Hello again.").await.unwrap()).await;
    assert_eq!(frames.len(), 1);

    c.voice = None;
    let e = speech.tts(Some(&c)).err().unwrap();
    assert!(e.to_string().contains("voice"), "{e}");

    let eleven = choice(TtsKind::Elevenlabs, &base, "VENDORS_TEST_CARTESIA_KEY");
    let e = speech.tts(Some(&eleven)).err().unwrap();
    assert!(matches!(e, ProviderError::Config(_)), "{e:?}");
    assert!(e.to_string().contains("not supported"), "{e}");
}

#[tokio::test]
async fn wss_speaks_tls_and_a_failed_handshake_is_an_error() {
    keys();
    // A TCP server that reads the first record and hangs up: the client must
    // open with a TLS handshake record (RFC 8446 section 5.1: type 22).
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = tokio::spawn(async move {
        use tokio::io::AsyncReadExt;
        let (mut tcp, _) = listener.accept().await.unwrap();
        let mut first = [0u8; 1];
        tcp.read_exact(&mut first).await.unwrap();
        first[0]
    });
    let stt = Speech::default()
        .stt(Some(&choice(
            SttKind::Deepgram,
            &format!("wss://localhost:{port}"),
            "VENDORS_TEST_DEEPGRAM_KEY",
        )))
        .unwrap();
    let e = stt.open().await.err().expect("no TLS server there");
    assert!(matches!(e, ProviderError::Unreachable(_)), "{e:?}");
    assert!(!e.to_string().contains(DEEPGRAM_KEY), "the key leaked: {e}");
    assert_eq!(
        tokio::time::timeout(WAIT, server).await.unwrap().unwrap(),
        0x16
    );
}
