//! The embedded speech engines, through the library's speech seam: real
//! flite synthesises, the audio goes through G.711 µ-law as on a call, and
//! real PocketSphinx 5 (a Python worker) recognises it. Needs Debian's
//! flite and `pip install pocketsphinx==5.1.1` (scripts/test installs both).

// A test's unwrap, expect or panic is its failure report: the daemon's bans
// (Cargo.toml `[lints]`) do not apply here.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::time::Duration;

use agentline::agent::providers::{Audio, ProviderError, SttStream, Transcript};
use agentline::agent::speech::{Speech, SpeechChoice, SpeechConfig, TtsKind};
use agentline::agent::turn::{EnergyVad, FRAME_SAMPLES};
use agentline::media::g711::Codec;

/// Generous: the worker loads a model and the machine may be busy.
const WAIT: Duration = Duration::from_secs(30);

fn speech(config: SpeechConfig) -> Speech {
    Speech::new(SpeechConfig {
        warm_workers: 0,
        ..config
    })
}

fn voice(name: &str) -> SpeechChoice<TtsKind> {
    SpeechChoice {
        voice: Some(name.into()),
        ..SpeechChoice::default()
    }
}

async fn frames(mut audio: Audio) -> Vec<Vec<i16>> {
    let mut out = Vec::new();
    while let Some(f) = tokio::time::timeout(WAIT, audio.recv())
        .await
        .expect("flite stalled")
    {
        out.push(f.expect("flite failed"));
    }
    out
}

/// Through a µ-law encoder and decoder, as on the wire.
fn g711(frame: &[i16]) -> Vec<i16> {
    let mut wire = Vec::new();
    Codec::Pcmu.encode_into(frame, &mut wire);
    let mut back = Vec::new();
    Codec::Pcmu.decode_into(&wire, &mut back);
    back
}

async fn say(speech: &Speech, voice_name: &str, text: &str) -> Vec<Vec<i16>> {
    let tts = speech.tts(Some(&voice(voice_name))).unwrap();
    frames(tts.speak(text).await.unwrap())
        .await
        .iter()
        .map(|f| g711(f))
        .collect()
}

/// Feeds one turn as a call would: silence, the speech, the silence that
/// ends the turn.
async fn turn(stream: &mut dyn SttStream, speech: &[Vec<i16>]) {
    let silence = vec![0i16; FRAME_SAMPLES];
    for _ in 0..25 {
        stream.push(&silence).await.unwrap();
    }
    for f in speech {
        stream.push(f).await.unwrap();
    }
    for _ in 0..30 {
        stream.push(&silence).await.unwrap();
    }
}

async fn next(stream: &mut dyn SttStream) -> Option<Result<Transcript, ProviderError>> {
    tokio::time::timeout(WAIT, stream.next())
        .await
        .expect("the recognizer stalled")
}

async fn final_text(stream: &mut dyn SttStream) -> String {
    loop {
        let t = next(stream).await.expect("stream ended").unwrap();
        if t.is_final {
            return t.text;
        }
    }
}

#[tokio::test]
async fn flite_speech_through_g711_is_recognised_with_partials_then_a_final() {
    let speech = speech(SpeechConfig::default());
    let audio = say(
        &speech,
        "kal",
        "I would like to book an appointment for Tuesday.",
    )
    .await;
    let mut stream = speech.stt(None).unwrap().open().await.unwrap();
    turn(stream.as_mut(), &audio).await;
    let partial = next(stream.as_mut()).await.unwrap().unwrap();
    assert!(
        !partial.is_final && !partial.text.is_empty(),
        "text while the caller speaks: {partial:?}"
    );
    stream.end_of_turn().await.unwrap();
    let text = final_text(stream.as_mut()).await;
    for word in ["book", "appointment", "tuesday"] {
        assert!(text.contains(word), "{word:?} not in {text:?}");
    }

    // A second turn on the same call, in another voice.
    let audio = say(&speech, "rms", "What are your opening hours?").await;
    turn(stream.as_mut(), &audio).await;
    stream.end_of_turn().await.unwrap();
    let text = final_text(stream.as_mut()).await;
    assert!(text.contains("opening hours"), "{text:?}");

    // A turn that was only silence gives an empty final at once.
    turn(stream.as_mut(), &[]).await;
    stream.end_of_turn().await.unwrap();
    assert_eq!(final_text(stream.as_mut()).await, "");
}

#[tokio::test]
async fn flite_gives_20_ms_frames_of_speech_at_8_khz_in_each_voice() {
    let speech = speech(SpeechConfig::default());
    for v in ["kal", "slt", "awb"] {
        let tts = speech.tts(Some(&voice(v))).unwrap();
        let frames = frames(tts.speak("Your appointment is booked.").await.unwrap()).await;
        assert!(frames.iter().all(|f| f.len() == FRAME_SAMPLES), "{v}");
        // About 1.5 s of speech at 8 kHz whatever the voice's own rate.
        let seconds = frames.len() as f64 * 0.02;
        assert!((0.8..4.0).contains(&seconds), "{v}: {seconds} s");
        let loud = frames
            .iter()
            .filter(|f| EnergyVad::level_dbfs(f) > -35.0)
            .count();
        assert!(
            loud * 2 > frames.len(),
            "{v}: only {loud} of {} frames at speech level",
            frames.len()
        );
        let peak = frames.iter().flatten().map(|s| s.unsigned_abs()).max();
        assert!(
            peak.is_some_and(|p| (3000..32767).contains(&p)),
            "{v}: peak {peak:?}"
        );
    }
    // Nothing to say is no audio, not an error.
    let tts = speech.tts(None).unwrap();
    assert!(frames(tts.speak("  ").await.unwrap()).await.is_empty());
}

/// The pids of processes whose command line holds `marker`.
fn processes_with(marker: &str) -> Vec<u32> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        if String::from_utf8_lossy(&cmdline).contains(marker) {
            pids.push(pid);
        }
    }
    pids
}

#[tokio::test]
async fn dropping_a_tts_stream_mid_way_kills_flite() {
    let speech = speech(SpeechConfig::default());
    let marker = format!("zanzibar{}", std::process::id());
    let text = format!(
        "{marker}. {}",
        "This sentence is long enough to keep flite busy. ".repeat(40)
    );
    let tts = speech.tts(Some(&voice("kal"))).unwrap();
    let mut audio = tts.speak(&text).await.unwrap();
    let first = tokio::time::timeout(WAIT, audio.recv()).await.unwrap();
    assert!(matches!(first, Some(Ok(_))));
    assert_eq!(
        processes_with(&marker).len(),
        1,
        "flite is still writing its minute of audio"
    );
    drop(audio);
    // Bounded: 100 looks, 50 ms apart.
    for _ in 0..100 {
        if processes_with(&marker).is_empty() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("flite still runs after its stream was dropped");
}

#[tokio::test]
async fn missing_engines_give_errors_that_say_what_to_install() {
    let speech = speech(SpeechConfig {
        python: "/nonexistent/python3".into(),
        flite: "/nonexistent/flite".into(),
        ..SpeechConfig::default()
    });
    let e = speech.stt(None).unwrap().open().await.err().unwrap();
    let msg = e.to_string();
    assert!(msg.contains("/nonexistent/python3"), "{msg}");
    assert!(msg.contains("pip install pocketsphinx==5.1.1"), "{msg}");

    let e = speech
        .tts(None)
        .unwrap()
        .speak("hello")
        .await
        .err()
        .unwrap();
    let msg = e.to_string();
    assert!(
        msg.contains("/nonexistent/flite") && msg.contains("apt-get install flite"),
        "{msg}"
    );

    // Not flite at all.
    let not_flite = self::speech(SpeechConfig {
        flite: "/bin/echo".into(),
        ..SpeechConfig::default()
    });
    let e = not_flite
        .tts(None)
        .unwrap()
        .speak("hi")
        .await
        .err()
        .unwrap();
    assert!(e.to_string().contains("is it flite?"), "{e}");

    // Not a Python at all: it exits before the recognizer starts.
    let speech = speech_with_python("/bin/false");
    let e = speech.stt(None).unwrap().open().await.err().unwrap();
    assert!(e.to_string().contains("exited before"), "{e}");

    // A voice flite does not have, or one that would be loaded from a path.
    let speech = self::speech(SpeechConfig::default());
    let e = speech
        .tts(Some(&voice("nosuch")))
        .unwrap()
        .speak("hi")
        .await
        .err()
        .unwrap();
    assert!(e.to_string().contains("no voice \"nosuch\""), "{e}");
    assert!(speech.tts(Some(&voice("/tmp/x.flitevox"))).is_err());
    let lang = SpeechChoice {
        language: Some("fr".into()),
        ..SpeechChoice::default()
    };
    assert!(speech.stt(Some(&lang)).is_err());
}

fn speech_with_python(python: &str) -> Speech {
    speech(SpeechConfig {
        python: python.into(),
        ..SpeechConfig::default()
    })
}

#[tokio::test]
async fn a_crashed_recognizer_is_an_error_for_its_call_only() {
    // A wrapper that records the worker's pid, then becomes the worker.
    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("pid");
    let wrapper = dir.path().join("python");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\necho $$ > {}\nexec python3 \"$@\"\n",
            pid_file.display()
        ),
    )
    .unwrap();
    make_executable(&wrapper);
    let speech = speech_with_python(wrapper.to_str().unwrap());
    let stt = speech.stt(None).unwrap();
    let mut stream = stt.open().await.unwrap();
    let pid = std::fs::read_to_string(&pid_file).unwrap();
    let status = std::process::Command::new("kill")
        .args(["-9", pid.trim()])
        .status()
        .unwrap();
    assert!(status.success());
    let audio = say(&speech, "rms", "Cancel my order.").await;
    // Pushing may or may not notice yet; the end of the turn must.
    for f in &audio {
        if stream.push(f).await.is_err() {
            break;
        }
    }
    let _ = stream.end_of_turn().await;
    let got = next(stream.as_mut()).await;
    assert!(
        matches!(got, Some(Err(ProviderError::Unreachable(_))) | None),
        "{got:?}"
    );
    // The next call gets a fresh worker that works.
    let mut other = stt.open().await.unwrap();
    turn(other.as_mut(), &audio).await;
    other.end_of_turn().await.unwrap();
    assert!(final_text(other.as_mut()).await.contains("order"));
}

fn make_executable(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// Waits (bounded: 30 s) until `speech` has `n` loaded spares.
async fn until_warm(speech: &Speech, n: usize) {
    for _ in 0..300 {
        if speech.warm_recognizers() == n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{} warm recognizers, not {n}", speech.warm_recognizers());
}

#[tokio::test]
async fn a_call_takes_a_warm_recognizer_and_the_pool_refills() {
    let speech = Speech::new(SpeechConfig {
        warm_workers: 1,
        ..SpeechConfig::default()
    });
    assert_eq!(speech.warm_recognizers(), 0, "nothing before warm_up");
    speech.warm_up();
    until_warm(&speech, 1).await;
    let stt = speech.stt(None).unwrap();
    let mut stream = stt.open().await.unwrap();
    assert_eq!(speech.warm_recognizers(), 0, "the call took the spare");
    until_warm(&speech, 1).await;
    // The spare it took works.
    let audio = say(&speech, "rms", "Cancel my order.").await;
    turn(stream.as_mut(), &audio).await;
    stream.end_of_turn().await.unwrap();
    assert!(final_text(stream.as_mut()).await.contains("order"));
}
