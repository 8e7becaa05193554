//! RTP pinning end to end (issue 14 item 5): a live echo call from SIPp,
//! its media from the caller's own socket, and RTP injected with raw UDP
//! sockets: from another port of the caller's host, from another host,
//! and from the caller's own port with another SSRC. None of it is echoed,
//! the caller's echo is untouched, and `/metrics` counts every rejection.

// A test's unwrap, expect or panic is its failure report: the daemon's bans
// (Cargo.toml `[lints]`) do not apply here.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::f64::consts::PI;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use agentline::media::Codec;
use common::{TestDaemon, free_udp_port, run_sipp};
use rtp_rs::{RtpPacketBuilder, RtpReader, Seq};
use serde_json::Value;
use tokio::net::UdpSocket;

const NUMBER: &str = "+14155552671";
const LIMIT: Duration = Duration::from_secs(30);
const CALLER_SSRC: u32 = 0x0CA1_1E55;
/// Frames of 20 ms the caller sends; injection starts once its echo is
/// heard and goes on alongside it.
const FRAMES: u16 = 150;
const CALLER_HZ: f64 = 1000.0;
const INJECTED_HZ: f64 = 2500.0;

fn tone(hz: f64, frame: u16) -> Vec<u8> {
    let start = usize::from(frame) * 160;
    let samples: Vec<i16> = (start..start + 160)
        .map(|n| (8000.0 * (2.0 * PI * hz * n as f64 / 8000.0).sin()) as i16)
        .collect();
    let mut payload = Vec::new();
    Codec::Pcmu.encode_into(&samples, &mut payload);
    payload
}

fn rtp(ssrc: u32, frame: u16, marker: bool, payload: &[u8]) -> Vec<u8> {
    RtpPacketBuilder::new()
        .payload_type(0)
        .ssrc(ssrc)
        .sequence(Seq::from(frame.wrapping_add(7000)))
        .timestamp(u32::from(frame) * 160 + 90_000)
        .marked(marker)
        .payload(payload)
        .build()
        .expect("an RTP packet")
}

/// Share of the power of `samples` at `hz` (Goertzel), 1 for a pure tone.
fn power_share(samples: &[i16], hz: f64) -> f64 {
    let coeff = 2.0 * (2.0 * PI * hz / 8000.0).cos();
    let (mut s1, mut s2, mut total) = (0.0f64, 0.0f64, 0.0f64);
    for &x in samples {
        let x = f64::from(x);
        total += x * x;
        let s0 = x + coeff * s1 - s2;
        s2 = s1;
        s1 = s0;
    }
    let power = s1 * s1 + s2 * s2 - coeff * s1 * s2;
    2.0 * power / (samples.len() as f64 * total.max(1.0))
}

/// The sum of the samples of metric `name` whose labels hold `label`.
async fn metric_sum(d: &TestDaemon, name: &str, label: &str) -> u64 {
    d.metrics()
        .await
        .lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) && l.contains(label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

async fn newest_call(d: &TestDaemon, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let page: Value = d
            .get("/v1/calls?limit=1")
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if let Some(call) = page["items"].get(0)
            && done(call)
        {
            return call.clone();
        }
        assert!(Instant::now() < deadline, "{page}\n{}", d.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Datagrams received, in order.
type Received = Arc<Mutex<Vec<Vec<u8>>>>;

/// Collects what arrives on `socket` until the test aborts the task.
fn record(socket: Arc<UdpSocket>) -> (Received, tokio::task::JoinHandle<()>) {
    let got = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&got);
    let task = tokio::spawn(async move {
        let mut buf = [0u8; 2048];
        while let Ok((len, _)) = socket.recv_from(&mut buf).await {
            sink.lock().unwrap().push(buf[..len].to_vec());
        }
    });
    (got, task)
}

#[tokio::test]
async fn injected_rtp_is_not_echoed_and_is_counted() {
    // One even RTP port in the range: the daemon's media address is known.
    let rtp_port = common::free_port_run(2);
    let d = TestDaemon::builder()
        .profile(
            "carrier",
            "name = \"carrier\"\n[inbound]\nallow = [\"127.0.0.1/32\"]\n",
        )
        .env(
            "AGENTLINE_SIP__RTP_PORTS",
            &format!("{rtp_port}-{}", rtp_port + 1),
        )
        .start()
        .await;
    d.provision_echo(NUMBER, "trk_carrier", 60).await;

    // SIPp signals media on 127.0.0.1 and sends none; the caller's RTP
    // comes from `caller`, on the signalled host.
    let media_port = free_udp_port().to_string();
    let sip = Some(SocketAddr::from(([127, 0, 0, 1], d.sip_port)));
    let sipp = tokio::spawn(async move {
        let args = [
            "-s",
            NUMBER,
            "-d",
            "7000",
            "-mi",
            "127.0.0.1",
            "-mp",
            &media_port,
        ];
        run_sipp(
            "uac-invite-expect-200-bye.xml",
            free_udp_port(),
            sip,
            &args,
            LIMIT,
        )
        .await
    });
    newest_call(&d, |c| c["status"] == "in-progress").await;
    let daemon_rtp = SocketAddr::from(([127, 0, 0, 1], rtp_port));

    let caller = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
    let other_port = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
    let other_host = Arc::new(UdpSocket::bind("127.0.0.2:0").await.unwrap());
    let (echoed, caller_rx) = record(Arc::clone(&caller));
    let (to_other_port, other_port_rx) = record(Arc::clone(&other_port));
    let (to_other_host, other_host_rx) = record(Arc::clone(&other_host));

    let mut clock = tokio::time::interval(Duration::from_millis(20));
    let (mut from_elsewhere, mut foreign_ssrc) = (0u64, 0u64);
    let mut injecting = false;
    for frame in 0..FRAMES {
        clock.tick().await;
        caller
            .send_to(
                &rtp(CALLER_SSRC, frame, frame == 0, &tone(CALLER_HZ, frame)),
                daemon_rtp,
            )
            .await
            .unwrap();
        // Inject only once the caller is latched: its echo is back.
        injecting = injecting || !echoed.lock().unwrap().is_empty();
        if !injecting {
            assert!(frame < 100, "no echo of the caller\n{}", d.log());
            continue;
        }
        let noise = tone(INJECTED_HZ, frame);
        // The caller's SSRC and numbering, marked or not, from elsewhere.
        for socket in [&other_port, &other_host] {
            socket
                .send_to(&rtp(CALLER_SSRC, frame, frame % 2 == 0, &noise), daemon_rtp)
                .await
                .unwrap();
            from_elsewhere += 1;
        }
        // The caller's own port, a foreign SSRC, unmarked.
        caller
            .send_to(&rtp(0xBAD_55C, frame, false, &noise), daemon_rtp)
            .await
            .unwrap();
        foreign_ssrc += 1;
    }
    assert!(from_elsewhere >= 100, "{from_elsewhere} injected");

    // The rejections are counted (metrics are flushed as they happen).
    let deadline = Instant::now() + Duration::from_secs(5);
    let (mut source, mut ssrc);
    loop {
        source = metric_sum(
            &d,
            "agentline_rtp_packets_rejected_total",
            "reason=\"source\"",
        )
        .await;
        ssrc = metric_sum(
            &d,
            "agentline_rtp_packets_rejected_total",
            "reason=\"ssrc\"",
        )
        .await;
        if (source >= from_elsewhere && ssrc >= foreign_ssrc) || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        source >= from_elsewhere,
        "source {source} < {from_elsewhere}"
    );
    assert!(ssrc >= foreign_ssrc, "ssrc {ssrc} < {foreign_ssrc}");

    let run = sipp.await.unwrap();
    assert!(run.success, "{}\n{}", run.output, d.log());
    newest_call(&d, |c| !c["ended_at"].is_null()).await;
    for task in [caller_rx, other_port_rx, other_host_rx] {
        task.abort();
    }

    // Nothing went back to the injectors.
    assert!(to_other_port.lock().unwrap().is_empty());
    assert!(to_other_host.lock().unwrap().is_empty());
    // The caller heard its own tone back, whole, and none of the noise.
    let echoed = echoed.lock().unwrap();
    let mut pcm = Vec::new();
    let mut ssrcs = Vec::new();
    for packet in echoed.iter() {
        let r = RtpReader::new(packet).unwrap();
        ssrcs.push(r.ssrc());
        Codec::Pcmu.decode_into(r.payload(), &mut pcm);
    }
    ssrcs.dedup();
    assert_eq!(ssrcs.len(), 1, "one stream back");
    let audible: Vec<&[i16]> = pcm
        .chunks_exact(160)
        .filter(|c| c.iter().any(|x| x.abs() > 100))
        .collect();
    assert!(
        audible.len() >= usize::from(FRAMES) - 30,
        "{} of {FRAMES} frames echoed\n{}",
        audible.len(),
        d.log()
    );
    let share = |hz| audible.iter().map(|c| power_share(c, hz)).sum::<f64>() / audible.len() as f64;
    let (caller_share, noise_share) = (share(CALLER_HZ), share(INJECTED_HZ));
    assert!(caller_share > 0.9, "caller's tone share {caller_share}");
    assert!(noise_share < 0.01, "injected tone share {noise_share}");
}
