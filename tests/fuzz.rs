//! The fuzz targets of `agentline::fuzz`, bounded for CI: each one replays
//! its committed seed corpus (`tests/data/fuzz/<target>/`, and for SIP the
//! RFC 4475 torture messages), then runs mutations of it that proptest
//! draws, for at most `AGENTLINE_FUZZ_CASES` inputs (default 4,000) and
//! `AGENTLINE_FUZZ_SECONDS` seconds (default 3). A panic fails the test
//! with the smallest input proptest shrinks it to; such an input becomes
//! a corpus file and a unit test next to the fix. The coverage-guided,
//! longer run of the same targets is `bench/fuzz.sh`.
//!
//! The SIP corpus and its mutations also go, as datagrams, to a live
//! daemon's SIP port: the real receive path, ending with the daemon still
//! answering.

// A test's unwrap, expect or panic is its failure report, and the inputs
// each target ran go to stderr: the daemon's bans (Cargo.toml `[lints]`)
// do not apply here.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stderr
)]

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use common::TestDaemon;
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config, TestRunner};
use tokio::net::UdpSocket;

/// Fragments that parsers split on or choke on, spliced in by the mutator.
const TOKENS: &[&[u8]] = &[
    b"\r\n",
    b"\r\n\r\n",
    b"\n",
    b" ",
    b"\t",
    b";",
    b":",
    b",",
    b"=",
    b"\"",
    b"\\",
    b"<",
    b">",
    b"%",
    b"\0",
    b"\xff",
    b"\xc3",
    b"0",
    b"-1",
    b"65536",
    b"4294967296",
    b"18446744073709551615",
    b"99999999999999999999999",
    b"Content-Length: 18446744073709551615\r\n",
    b"Content-Length: 0\r\n",
    b"Via: SIP/2.0/UDP [::1];branch=z9hG4bK\r\n",
    b"sip:",
    b"SIP/2.0",
    b"m=audio 0 RTP/AVP 0 101\r\n",
    b"c=IN IP6 ::\r\n",
    b"a=rtpmap:101 telephone-event/0\r\n",
    b"a=fmtp:101 0-16\r\n",
    b"data: ",
    b"data: [DONE]\n",
    b"{\"choices\":[{\"delta\":{\"tool_calls\":[{\"index\":64}]}}]}",
    b"RIFF",
    b"WAVE",
    b"fmt ",
    b"data",
    b"\x80\x65",
    b"\x80\x00",
];

#[derive(Debug, Clone)]
enum Edit {
    Set(Index, u8),
    Insert(Index, Vec<u8>),
    Token(Index, Index),
    Remove(Index, usize),
    Duplicate(Index, usize),
    Truncate(Index),
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        (any::<Index>(), any::<u8>()).prop_map(|(at, b)| Edit::Set(at, b)),
        (
            any::<Index>(),
            proptest::collection::vec(any::<u8>(), 1..16)
        )
            .prop_map(|(at, bytes)| Edit::Insert(at, bytes)),
        (any::<Index>(), any::<Index>()).prop_map(|(at, t)| Edit::Token(at, t)),
        (any::<Index>(), 1usize..64).prop_map(|(at, n)| Edit::Remove(at, n)),
        (any::<Index>(), 1usize..256).prop_map(|(at, n)| Edit::Duplicate(at, n)),
        any::<Index>().prop_map(Edit::Truncate),
    ]
}

fn apply(mut input: Vec<u8>, edits: Vec<Edit>) -> Vec<u8> {
    for edit in edits {
        let len = input.len();
        let at = |i: &Index| if len == 0 { 0 } else { i.index(len + 1) };
        match edit {
            Edit::Set(i, b) if len > 0 => {
                let i = i.index(len);
                input[i] = b;
            }
            Edit::Set(..) => input.push(0),
            Edit::Insert(i, bytes) => {
                let i = at(&i);
                input.splice(i..i, bytes);
            }
            Edit::Token(i, t) => {
                let i = at(&i);
                input.splice(i..i, TOKENS[t.index(TOKENS.len())].iter().copied());
            }
            Edit::Remove(i, n) => {
                let i = at(&i);
                input.drain(i..(i + n).min(len));
            }
            Edit::Duplicate(i, n) => {
                let i = at(&i);
                let piece = input[i..(i + n).min(len)].to_vec();
                input.splice(i..i, piece);
            }
            Edit::Truncate(i) => input.truncate(at(&i)),
        }
    }
    input
}

/// A seed with a few edits, or now and then bytes from nowhere.
fn mutated(seeds: Vec<Vec<u8>>) -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        9 => (
            proptest::sample::select(seeds),
            proptest::collection::vec(edit(), 1..8)
        )
            .prop_map(|(seed, edits)| apply(seed, edits)),
        1 => proptest::collection::vec(any::<u8>(), 0..512),
    ]
}

fn corpus(target: &str) -> Vec<Vec<u8>> {
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data");
    let mut dirs = vec![data.join("fuzz").join(target)];
    if target == "sip_datagram" {
        dirs.push(data.join("rfc4475"));
    }
    let mut seeds = Vec::new();
    for dir in dirs {
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|entry| entry.unwrap().path())
            .collect();
        files.sort();
        seeds.extend(files.iter().map(|f| std::fs::read(f).unwrap()));
    }
    seeds
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn fuzz(target: &str) {
    let (_, run) = agentline::fuzz::TARGETS
        .iter()
        .find(|(name, _)| *name == target)
        .unwrap();
    let seeds = corpus(target);
    assert!(seeds.len() >= 2, "{target}: a corpus of {}", seeds.len());
    for seed in &seeds {
        run(seed);
    }
    let budget = Duration::from_secs(env_or("AGENTLINE_FUZZ_SECONDS", 3));
    let mut runner = TestRunner::new(Config {
        cases: env_or("AGENTLINE_FUZZ_CASES", 4000),
        failure_persistence: None,
        ..Config::default()
    });
    let started = Instant::now();
    let executed = std::cell::Cell::new(0u64);
    let result = runner.run(&mutated(seeds), |input| {
        // Past the budget the remaining cases are skipped, not run.
        if started.elapsed() < budget {
            executed.set(executed.get() + 1);
            run(&input);
        }
        Ok(())
    });
    if let Err(e) = result {
        panic!("{target}: {e}");
    }
    eprintln!(
        "{target}: {} inputs in {:.1} s",
        executed.get(),
        started.elapsed().as_secs_f64()
    );
    assert!(executed.get() > 0);
}

#[test]
fn sip_datagram() {
    fuzz("sip_datagram");
}

#[test]
fn sdp() {
    fuzz("sdp");
}

#[test]
fn rtp_dtmf() {
    fuzz("rtp_dtmf");
}

#[test]
fn sip_info() {
    fuzz("sip_info");
}

#[test]
fn contact_csv() {
    fuzz("contact_csv");
}

#[test]
fn chunker() {
    fuzz("chunker");
}

#[test]
fn llm_stream() {
    fuzz("llm_stream");
}

#[test]
fn wav() {
    fuzz("wav");
}

#[test]
fn every_target_has_a_test() {
    let source = include_str!("fuzz.rs");
    for (name, _) in agentline::fuzz::TARGETS {
        assert!(
            source.contains(&format!("fn {name}() {{\n    fuzz(\"{name}\");")),
            "{name} has no test here"
        );
    }
}

fn options(n: usize) -> Vec<u8> {
    format!(
        "OPTIONS sip:127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5999;branch=z9hG4bK-fz{n}\r\n\
         From: <sip:probe@127.0.0.1>;tag=fz\r\nTo: <sip:127.0.0.1>\r\nCall-ID: fz{n}@fuzz\r\n\
         CSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
    )
    .into_bytes()
}

/// Sends OPTIONS until one is answered 200, for up to `limit` (a flood
/// guard may hold the source back for a while).
async fn answers_options(socket: &UdpSocket, to: SocketAddr, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    let mut buf = vec![0u8; 65_536];
    for n in 0.. {
        if Instant::now() > deadline {
            return false;
        }
        socket.send_to(&options(n), to).await.unwrap();
        let wait = Instant::now() + Duration::from_millis(500);
        while let Ok(Ok((len, _))) =
            tokio::time::timeout_at(wait.into(), socket.recv_from(&mut buf)).await
        {
            let text = String::from_utf8_lossy(&buf[..len]);
            if text.starts_with("SIP/2.0 200") && text.contains(&format!("fz{n}@fuzz")) {
                return true;
            }
        }
    }
    unreachable!()
}

// ezk-sip-core 0.9.2's own UDP reader panics on `Content-Length:
// 18446744073709551615` (an unchecked add in its framing) and its receive
// task ends: one datagram would stop SIP over UDP. Our own reader
// (`sip::udp`) frames datagrams in front of ezk; this keeps it so.
#[tokio::test]
async fn sip_datagrams_from_the_corpus_and_mutations_leave_the_daemon_answering() {
    let d = TestDaemon::builder()
        .profile(
            "carrier",
            "name = \"carrier\"\n[inbound]\nallow = [\"127.0.0.1/32\"]\n",
        )
        .start()
        .await;
    let to = SocketAddr::from(([127, 0, 0, 1], d.sip_port));
    let probe = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    assert!(answers_options(&probe, to, Duration::from_secs(5)).await);

    let seeds = corpus("sip_datagram");
    let mut inputs = seeds.clone();
    // One that ezk-sip-core 0.9.2's own UDP reader overflows on.
    inputs.push(
        String::from_utf8_lossy(&options(0))
            .replace("Content-Length: 0", "Content-Length: 18446744073709551615")
            .into_bytes(),
    );
    let strategy = mutated(seeds);
    let mut runner = TestRunner::deterministic();
    let count = env_or("AGENTLINE_FUZZ_CASES", 4000) / 2;
    for _ in 0..count {
        inputs.push(strategy.new_tree(&mut runner).unwrap().current());
    }
    // From a socket of its own, at about 1,000 datagrams a second;
    // whatever comes back is read and dropped.
    let sender = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let mut clock = tokio::time::interval(Duration::from_millis(10));
    let mut buf = vec![0u8; 65_536];
    for batch in inputs.chunks(10) {
        clock.tick().await;
        for input in batch {
            // Larger than a datagram: nothing to send.
            let _ = sender.send_to(input, to).await;
        }
        while let Ok((_, _)) = sender.try_recv_from(&mut buf) {}
    }
    assert!(
        answers_options(&probe, to, Duration::from_secs(15)).await,
        "the daemon stopped answering after {} datagrams\n{}",
        inputs.len(),
        d.log()
    );
    assert!(!d.log().contains("panicked"), "{}", d.log());
}
