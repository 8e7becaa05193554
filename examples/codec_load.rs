//! Concurrent calls with media in one codec, for `bench/codec-cpu.sh`:
//! SIPp plays only G.711 from a pcap, so this caller speaks G.722 and Opus
//! (and PCMU, for the same harness on each codec).
//!
//! Each call: INVITE over UDP offering only the codec, 200, ACK, then a
//! 20 ms RTP stream of a tone encoded by the daemon's own encoders, and the
//! echo read back; after `--seconds` a BYE. Once every call is up it reads
//! the daemon's CPU ticks (`/proc/PID/stat`) over a window of
//! `--window` seconds and prints one markdown table row.
//!
//! Usage: `codec_load --sip 127.0.0.1:5060 --number +1415... --pid PID
//! --codec pcmu|g722|opus --calls 500 [--seconds 40] [--window 20]`.
//! Bounded: the calls, their length and a 30 s wait for answers; loopback
//! only (the daemon's address given).

// A bench tool: it prints its report and stops at the first failure; the
// daemon's bans (Cargo.toml `[lints]`) do not apply here.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stdout,
    clippy::print_stderr
)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use agentline::media::codec::Encoder;
use agentline::media::g711::Codec;
use rtp_rs::{RtpPacketBuilder, Seq};
use tokio::net::UdpSocket;

struct Args {
    sip: SocketAddr,
    number: String,
    pid: u32,
    codec: Codec,
    calls: usize,
    seconds: u64,
    window: u64,
}

fn args() -> Args {
    let argv: Vec<String> = std::env::args().collect();
    let get = |name: &str| {
        argv.iter()
            .position(|a| a == name)
            .and_then(|i| argv.get(i + 1))
            .cloned()
    };
    let codec = match get("--codec").as_deref().unwrap_or("pcmu") {
        "pcmu" => Codec::Pcmu,
        "g722" => Codec::G722,
        "opus" => Codec::Opus,
        other => panic!("unknown codec {other}"),
    };
    Args {
        sip: get("--sip").expect("--sip").parse().expect("--sip addr"),
        number: get("--number").expect("--number"),
        pid: get("--pid").expect("--pid").parse().expect("--pid"),
        codec,
        calls: get("--calls").map_or(500, |c| c.parse().expect("--calls")),
        seconds: get("--seconds").map_or(40, |c| c.parse().expect("--seconds")),
        window: get("--window").map_or(20, |c| c.parse().expect("--window")),
    }
}

/// The SDP offer of one call: only `codec`, and telephone-event at its
/// clock.
fn offer(codec: Codec, rtp: SocketAddr) -> String {
    let pt = codec.offered_payload_type();
    let clock = codec.clock_rate();
    let channels = codec
        .rtpmap_channels()
        .map_or(String::new(), |c| format!("/{c}"));
    format!(
        "v=0\r\no=load 1 1 IN IP4 {ip}\r\ns=-\r\nc=IN IP4 {ip}\r\nt=0 0\r\n\
         m=audio {port} RTP/AVP {pt} 101\r\na=rtpmap:{pt} {name}/{clock}{channels}\r\n\
         a=rtpmap:101 telephone-event/{clock}\r\na=fmtp:101 0-15\r\na=ptime:20\r\n",
        ip = rtp.ip(),
        port = rtp.port(),
        name = codec.encoding_name(),
    )
}

fn header<'a>(msg: &'a str, name: &str) -> Option<&'a str> {
    msg.lines().find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// The RTP address in the 200's SDP.
fn answer_rtp(msg: &str) -> Option<SocketAddr> {
    let ip = msg
        .lines()
        .find_map(|l| l.trim().strip_prefix("c=IN IP4 "))?
        .trim();
    let port = msg
        .lines()
        .find_map(|l| l.trim().strip_prefix("m=audio "))?
        .split(' ')
        .next()?;
    format!("{ip}:{port}").parse().ok()
}

#[derive(Default)]
struct Totals {
    up: AtomicU64,
    failed: AtomicU64,
    sent: AtomicU64,
    received: AtomicU64,
}

async fn call(
    n: usize,
    args: Arc<Args>,
    pcm: Arc<Vec<i16>>,
    totals: Arc<Totals>,
) -> Result<(), String> {
    let sip = UdpSocket::bind("127.0.0.1:0")
        .await
        .map_err(|e| e.to_string())?;
    let rtp = UdpSocket::bind("127.0.0.1:0")
        .await
        .map_err(|e| e.to_string())?;
    let me = sip.local_addr().map_err(|e| e.to_string())?;
    let body = offer(args.codec, rtp.local_addr().map_err(|e| e.to_string())?);
    let call_id = format!("load-{n}-{}@127.0.0.1", std::process::id());
    let uri = format!("sip:{}@{}", args.number, args.sip);
    let common = |method: &str, cseq: u32, branch: &str, to_tag: &str| {
        format!(
            "{method} {uri} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bK{branch};rport\r\n\
             Max-Forwards: 70\r\nFrom: <sip:load@{me}>;tag=l{n}\r\nTo: <{uri}>{to_tag}\r\n\
             Call-ID: {call_id}\r\nCSeq: {cseq} {method}\r\nContact: <sip:load@{me}>\r\n"
        )
    };
    let invite = format!(
        "{}Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{body}",
        common("INVITE", 1, &format!("i{n}"), ""),
        body.len()
    );
    let mut buf = vec![0u8; 4096];
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut next_send = Instant::now();
    let answer = loop {
        if Instant::now() >= deadline {
            return Err("no answer".into());
        }
        if Instant::now() >= next_send {
            sip.send_to(invite.as_bytes(), args.sip)
                .await
                .map_err(|e| e.to_string())?;
            next_send = Instant::now() + Duration::from_secs(2);
        }
        let Ok(Ok((len, _))) =
            tokio::time::timeout(Duration::from_millis(500), sip.recv_from(&mut buf)).await
        else {
            continue;
        };
        let msg = String::from_utf8_lossy(&buf[..len]).to_string();
        if msg.starts_with("SIP/2.0 200") {
            break msg;
        }
        if msg.starts_with("SIP/2.0 ") && !msg.starts_with("SIP/2.0 1") {
            return Err(msg.lines().next().unwrap_or_default().to_owned());
        }
    };
    let to = header(&answer, "To")
        .or_else(|| header(&answer, "t"))
        .unwrap_or_default();
    let to_tag = to
        .split(';')
        .find_map(|p| p.trim().strip_prefix("tag="))
        .map(|t| format!(";tag={t}"))
        .unwrap_or_default();
    let ack = format!(
        "{}Content-Length: 0\r\n\r\n",
        common("ACK", 1, &format!("a{n}"), &to_tag)
    );
    sip.send_to(ack.as_bytes(), args.sip)
        .await
        .map_err(|e| e.to_string())?;
    let remote = answer_rtp(&answer).ok_or("no RTP address in the answer")?;
    totals.up.fetch_add(1, Ordering::Relaxed);

    let mut encoder = Encoder::new(args.codec).map_err(|e| e.to_string())?;
    let step = args.codec.clock_rate() / 50;
    let ssrc = 0x1000_0000 + n as u32;
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    let end = Instant::now() + Duration::from_secs(args.seconds);
    let mut frame_no = 0usize;
    let mut payload = Vec::with_capacity(200);
    let mut rbuf = vec![0u8; 2048];
    while Instant::now() < end {
        tokio::select! {
            _ = tick.tick() => {
                let at = (frame_no * 160) % (pcm.len() - 160);
                payload.clear();
                encoder.encode_into(&pcm[at..at + 160], &mut payload);
                let packet = RtpPacketBuilder::new()
                    .payload_type(args.codec.offered_payload_type())
                    .marked(frame_no == 0)
                    .sequence(Seq::from(frame_no as u16))
                    .ssrc(ssrc)
                    .timestamp((frame_no as u32).wrapping_mul(step))
                    .payload(&payload)
                    .build()
                    .map_err(|e| format!("{e:?}"))?;
                if rtp.send_to(&packet, remote).await.is_ok() {
                    totals.sent.fetch_add(1, Ordering::Relaxed);
                }
                frame_no += 1;
            }
            Ok(_) = rtp.recv_from(&mut rbuf) => {
                totals.received.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    let bye = format!(
        "{}Content-Length: 0\r\n\r\n",
        common("BYE", 2, &format!("b{n}"), &to_tag)
    );
    for _ in 0..3 {
        sip.send_to(bye.as_bytes(), args.sip)
            .await
            .map_err(|e| e.to_string())?;
        if let Ok(Ok((len, _))) =
            tokio::time::timeout(Duration::from_secs(1), sip.recv_from(&mut buf)).await
            && buf[..len].starts_with(b"SIP/2.0 200")
        {
            break;
        }
    }
    Ok(())
}

fn ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("daemon's stat");
    // Fields after the command name (which may hold spaces): utime is
    // field 14, stime 15.
    let rest = &stat[stat.rfind(')').expect("stat") + 2..];
    let f: Vec<&str> = rest.split(' ').collect();
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

#[tokio::main]
async fn main() {
    let args = Arc::new(args());
    // A 700 Hz tone between two pauses: voice-like activity for every codec.
    let pcm: Arc<Vec<i16>> = Arc::new(
        (0..8000 * 2)
            .map(|i| {
                let on = (i / 4000) % 2 == 0;
                let s = (i as f32 * 700.0 * std::f32::consts::TAU / 8000.0).sin();
                if on { (s * 8000.0) as i16 } else { 0 }
            })
            .collect(),
    );
    let totals = Arc::new(Totals::default());
    let mut tasks = Vec::new();
    for n in 0..args.calls {
        let (args, pcm, totals) = (Arc::clone(&args), Arc::clone(&pcm), Arc::clone(&totals));
        tasks.push(tokio::spawn(async move {
            if let Err(e) = call(n, args, pcm, Arc::clone(&totals)).await {
                totals.failed.fetch_add(1, Ordering::Relaxed);
                eprintln!("call {n}: {e}");
            }
        }));
        // 100 calls a second: below the trunk's CPS and the flood guard.
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Every call answered (or failed), then a settling second.
    let wait = Instant::now() + Duration::from_secs(30);
    while totals.up.load(Ordering::Relaxed) + totals.failed.load(Ordering::Relaxed)
        < args.calls as u64
        && Instant::now() < wait
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let hz = 100.0; // CLK_TCK on Linux.
    let (t0, c0) = (Instant::now(), ticks(args.pid));
    let (s0, r0) = (
        totals.sent.load(Ordering::Relaxed),
        totals.received.load(Ordering::Relaxed),
    );
    tokio::time::sleep(Duration::from_secs(args.window)).await;
    let (elapsed, cpu) = (
        t0.elapsed().as_secs_f64(),
        (ticks(args.pid) - c0) as f64 / hz,
    );
    let (sent, received) = (
        totals.sent.load(Ordering::Relaxed) - s0,
        totals.received.load(Ordering::Relaxed) - r0,
    );
    for t in tasks {
        let _ = t.await;
    }
    let up = totals.up.load(Ordering::Relaxed);
    let load = cpu / elapsed;
    println!(
        "| {} | {} | {} | {} | {:.1}% | {:.3}% | {:.3} |",
        args.codec.encoding_name(),
        args.calls,
        up,
        totals.failed.load(Ordering::Relaxed),
        100.0 * load,
        100.0 * load / up.max(1) as f64,
        received as f64 / sent.max(1) as f64,
    );
}
