//! Measures the embedded speech engines as a call uses them; run by
//! `bench/stt-accuracy.sh`, which prints the tables for BENCHMARKS.md.
//!
//! Each voice and codec is one call: one recognizer stream for all its
//! sentences. Every sentence is synthesised by flite and goes through a
//! codec as a call carries it:
//! - G.711: as the daemon's TTS path makes it (8 kHz frames), µ-law, then
//!   pushed as 8 kHz frames (upsampled to 16 kHz inside the recognizer);
//! - G.722: flite's own WAV at 16 kHz (kal, an 8 kHz voice, brought up),
//!   encoded as an HD phone does (the full 16 kHz G.722 encoder), then
//!   decoded by the daemon's two decoders: the 8 kHz frame for the gate and
//!   the 16 kHz frame the recognizer hears, as on a wideband call.
//!
//! Each is pushed in real time (20 ms frames, paced) after half a second of
//! silence and followed by 600 ms of it, as the turn-taker would end the
//! turn; then the end of turn and the wait for the final text. A second,
//! unpaced pass gives the recognizer's real-time factor (wall time from the
//! first frame to the final text over the audio's length).
//!
//! Usage: `stt_accuracy [--fast] [--voice NAME] [--codec g711|g722]`
//! (`--fast` skips pacing; latencies then include the recognizer's
//! backlog).

// A bench tool: it prints its report and stops at the first failure; the
// daemon's bans (Cargo.toml `[lints]`) do not apply here.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stdout,
    clippy::print_stderr
)]

use std::time::{Duration, Instant};

use agentline::agent::engines::flite::Framer;
use agentline::agent::providers::SttStream;
use agentline::agent::speech::{Speech, SpeechChoice, SpeechConfig, TtsKind};
use agentline::agent::turn::FRAME_SAMPLES;
use agentline::media::codec::{Decoder, WIDE_RATE};
use agentline::media::g711::Codec;
use ezk_g722::libg722::{Bitrate, encoder::Encoder as G722Encoder};

const SENTENCES: [&str; 15] = [
    "I would like to book an appointment for Tuesday",
    "Cancel my order",
    "What are your opening hours",
    "I want to speak to a human",
    "My account number is four five six seven",
    "Can you call me back tomorrow morning",
    "I need to change my address",
    "Yes please",
    "No thank you",
    "How much does it cost",
    "I would like to pay my bill",
    "Is the store open on Sunday",
    "Please repeat that",
    "My phone number is five five five one two three four",
    "I lost my credit card",
];

const VOICES: [&str; 4] = ["kal", "awb", "rms", "slt"];

fn words(s: &str) -> Vec<String> {
    s.split_whitespace()
        .map(|w| {
            w.chars()
                .filter(|c| c.is_alphanumeric() || *c == '\'')
                .collect::<String>()
                .to_lowercase()
        })
        .filter(|w| !w.is_empty())
        .collect()
}

/// Word-level edit distance (substitutions, insertions, deletions).
fn word_errors(reference: &[String], hypothesis: &[String]) -> usize {
    let mut prev: Vec<usize> = (0..=hypothesis.len()).collect();
    for (i, r) in reference.iter().enumerate() {
        let mut row = vec![i + 1; hypothesis.len() + 1];
        for (j, h) in hypothesis.iter().enumerate() {
            row[j + 1] = (prev[j] + usize::from(r != h))
                .min(prev[j + 1] + 1)
                .min(row[j] + 1);
        }
        prev = row;
    }
    prev[hypothesis.len()]
}

fn g711(frame: &[i16]) -> Vec<i16> {
    let mut wire = Vec::new();
    Codec::Pcmu.encode_into(frame, &mut wire);
    let mut back = Vec::new();
    Codec::Pcmu.decode_into(&wire, &mut back);
    back
}

/// `text` in flite's `voice` as an HD phone sends it: flite's WAV at
/// 16 kHz, G.722-encoded at full band, then decoded by the daemon's 8 kHz
/// and 16 kHz decoders: (8 kHz frame, 16 kHz frame) pairs.
fn g722_frames(voice: &str, text: &str) -> Vec<(Vec<i16>, Option<Vec<i16>>)> {
    let out = std::process::Command::new("flite")
        .args(["-voice", voice, "-o", "/dev/stdout", "-t", text])
        .output()
        .expect("flite");
    let header = agentline::media::wav::parse_header(&out.stdout)
        .expect("flite's WAV")
        .expect("a whole header");
    let data = &out.stdout[header.data_start..];
    let native: Vec<i16> = data
        .chunks_exact(2 * usize::from(header.format.channels))
        .map(|c| i16::from_le_bytes([c[0], c[1]]))
        .collect();
    let wide = agentline::media::resample::resample(&native, header.format.rate, WIDE_RATE)
        .expect("resample");
    let mut encoder = G722Encoder::new(Bitrate::Mode1_64000, false, false);
    let mut narrow_dec = Decoder::new(Codec::G722).expect("G.722");
    let mut wide_dec = Decoder::wideband(Codec::G722)
        .expect("G.722")
        .expect("wideband");
    let mut frames = Vec::new();
    for chunk in wide.chunks(2 * FRAME_SAMPLES) {
        let mut chunk = chunk.to_vec();
        chunk.resize(2 * FRAME_SAMPLES, 0);
        let payload = encoder.encode(&chunk);
        let (mut narrow, mut wide) = (Vec::new(), Vec::new());
        narrow_dec.decode_into(&payload, &mut narrow);
        wide_dec.decode_into(&payload, &mut wide);
        frames.push((narrow, Some(wide)));
    }
    frames
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i]
}

async fn final_text(stream: &mut dyn SttStream) -> String {
    // Bounded: a final comes within 30 s or the run is broken.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        match tokio::time::timeout_at(deadline, stream.next()).await {
            Ok(Some(Ok(t))) if t.is_final => return t.text,
            Ok(Some(Ok(_))) => continue,
            Ok(Some(Err(e))) => panic!("recognizer failed: {e}"),
            Ok(None) => panic!("recognizer stream ended"),
            Err(_) => panic!("no final text within 30 s"),
        }
    }
}

struct Utterance {
    text: &'static str,
    /// 8 kHz frames, each with its 16 kHz form on a wideband codec.
    frames: Vec<(Vec<i16>, Option<Vec<i16>>)>,
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let fast = args.iter().any(|a| a == "--fast");
    // `--voice NAME` measures one voice only.
    let only = args
        .iter()
        .position(|a| a == "--voice")
        .and_then(|i| args.get(i + 1));
    let only_codec = args
        .iter()
        .position(|a| a == "--codec")
        .and_then(|i| args.get(i + 1));
    let speech = Speech::new(SpeechConfig {
        warm_workers: 1,
        ..SpeechConfig::default()
    });
    speech.warm_up();
    let silence = vec![0i16; FRAME_SAMPLES];
    let wide_silence = vec![0i16; 2 * FRAME_SAMPLES];
    let mut push_costs = Vec::new();
    let mut rows = Vec::new();
    let mut all_latencies = Vec::new();
    let mut misheard = Vec::new();
    for (voice, codec) in VOICES.iter().flat_map(|v| [(*v, "g711"), (*v, "g722")]) {
        if only.is_some_and(|o| o != voice) || only_codec.is_some_and(|c| c != codec) {
            continue;
        }
        let choice = SpeechChoice {
            provider: TtsKind::Embedded,
            voice: Some(voice.into()),
            ..SpeechChoice::default()
        };
        let tts = speech.tts(Some(&choice)).expect("flite");
        let mut utterances = Vec::new();
        let (mut synth_time, mut audio_time) = (Duration::ZERO, Duration::ZERO);
        for text in SENTENCES {
            let started = Instant::now();
            let mut frames = Vec::new();
            if codec == "g722" {
                frames = g722_frames(voice, text);
            } else {
                let mut audio = tts.speak(text).await.expect("flite");
                while let Some(f) = audio.recv().await {
                    frames.push((g711(&f.expect("flite")), None));
                }
            }
            synth_time += started.elapsed();
            audio_time += Duration::from_millis(20 * frames.len() as u64);
            utterances.push(Utterance { text, frames });
        }

        // Paced: as a call.
        let mut stream = speech.stt(None).unwrap().open().await.expect("stt");
        let (mut errors, mut total_words) = (0, 0);
        let mut latencies = Vec::new();
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        let quiet = (
            silence.clone(),
            (codec == "g722").then(|| wide_silence.clone()),
        );
        for u in &utterances {
            let turn = std::iter::repeat_n(&quiet, 25)
                .chain(&u.frames)
                .chain(std::iter::repeat_n(&quiet, 30));
            for (f, wide) in turn {
                if !fast {
                    tick.tick().await;
                }
                let t = Instant::now();
                stream.push_frame(f, wide.as_deref()).await.expect("push");
                push_costs.push(t.elapsed());
            }
            let t = Instant::now();
            stream.end_of_turn().await.expect("end of turn");
            let heard = final_text(stream.as_mut()).await;
            latencies.push(t.elapsed());
            let reference = words(u.text);
            let e = word_errors(&reference, &words(&heard));
            if e > 0 {
                misheard.push(format!("{voice} {codec}: {:?} heard as {heard:?}", u.text));
            }
            errors += e;
            total_words += reference.len();
        }
        drop(stream);

        // Unpaced: how fast the recognizer works through audio.
        let mut stream = speech.stt(None).unwrap().open().await.expect("stt");
        let mut busy = Duration::ZERO;
        for u in &utterances {
            let t = Instant::now();
            for (f, wide) in &u.frames {
                stream.push_frame(f, wide.as_deref()).await.expect("push");
            }
            stream.end_of_turn().await.expect("end of turn");
            final_text(stream.as_mut()).await;
            busy += t.elapsed();
        }
        drop(stream);

        latencies.sort();
        all_latencies.extend(latencies.iter().copied());
        let codec = if codec == "g722" {
            "G.722 16 kHz"
        } else {
            "G.711 8 kHz"
        };
        rows.push(format!(
            "| {voice} | {codec} | {} | {total_words} | {errors} | {:.1}% | {} | {} | {:.3} | {:.3} |",
            utterances.len(),
            100.0 * errors as f64 / total_words as f64,
            percentile(&latencies, 0.5).as_millis(),
            latencies.last().copied().unwrap_or_default().as_millis(),
            busy.as_secs_f64() / audio_time.as_secs_f64(),
            synth_time.as_secs_f64() / audio_time.as_secs_f64(),
        ));
    }

    println!(
        "| voice | codec | sentences | words | word errors | WER | end of turn→final p50 ms | max ms | recognizer RTF | synthesizer RTF |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for r in &rows {
        println!("{r}");
    }

    // The daemon's own share of the TTS path: WAV samples as read from the
    // pipe, resampled and cut into frames (16 kHz voices, the costlier case).
    let mut framer_costs = Vec::new();
    for rate in [16000u32, 22050, 24000] {
        let mut framer = Framer::new(rate).expect("framer");
        let tone: Vec<i16> = (0..rate as usize * 10)
            .map(|i| ((i as f32 * 0.05).sin() * 8000.0) as i16)
            .collect();
        // flite's pipe hands over 8 KiB reads: 4096 samples.
        for chunk in tone.chunks(4096) {
            let t = Instant::now();
            let frames = framer.push(chunk).expect("framer");
            let per = t.elapsed() / frames.len().max(1) as u32;
            framer_costs.extend(std::iter::repeat_n(per, frames.len()));
        }
    }
    push_costs.sort();
    framer_costs.sort();
    all_latencies.sort();
    println!();
    println!("| daemon's share per 20 ms frame | frames | p50 µs | p99 µs | max µs |");
    println!("|---|---|---|---|---|");
    for (name, costs) in [
        (
            "RTP in → STT (VAD gate, 8→16 kHz, queue to the worker)",
            &push_costs,
        ),
        (
            "TTS → RTP (WAV samples → 8 kHz → 20 ms frames)",
            &framer_costs,
        ),
    ] {
        println!(
            "| {name} | {} | {} | {} | {} |",
            costs.len(),
            percentile(costs, 0.5).as_micros(),
            percentile(costs, 0.99).as_micros(),
            costs.last().copied().unwrap_or_default().as_micros(),
        );
    }
    println!();
    println!(
        "End of turn → final text over all {} turns: p50 {} ms, p95 {} ms.",
        all_latencies.len(),
        percentile(&all_latencies, 0.5).as_millis(),
        percentile(&all_latencies, 0.95).as_millis()
    );
    for m in misheard {
        eprintln!("{m}");
    }
}
