//! Media helpers the call tests share: tones made with sox, a SIPp caller
//! that streams one (and may press a key), a tshark capture of the
//! loopback (and what tshark decodes of it), and the PCMU audio a
//! capture holds.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// `seconds` of a `hz` tone as raw 8 kHz µ-law, after `lead` s of silence.
pub fn tone_ulaw(dir: &Path, hz: u32, lead: f32, seconds: f32) -> PathBuf {
    let ul = dir.join(format!("tone{hz}-{lead}-{seconds}.ul"));
    let ok = Command::new("sox")
        .args(["-n", "-r", "8000", "-c", "1", "-t", "ul"])
        .arg(&ul)
        .args(["synth", &seconds.to_string(), "sine", &hz.to_string()])
        .args(["vol", "0.5", "pad", &lead.to_string(), "0"])
        .status()
        .expect("sox is installed by scripts/test")
        .success();
    assert!(ok, "sox failed");
    ul
}

/// A SIPp caller scenario (written to `dir`) that streams `audio` (raw
/// µ-law) from the answer, presses 2 (RFC 4733) `dtmf_after_ms` after the
/// answer (none when `None`), and hangs up `call_ms` after the answer.
pub fn tone_caller(dir: &Path, audio: &Path, dtmf_after_ms: Option<u32>, call_ms: u32) -> String {
    let head =
        std::fs::read_to_string(super::scenario("uac-invite-dtmf-expect-200-bye.xml")).unwrap();
    let cut = head.find("  <nop>").unwrap();
    let bye = head
        .find("  <send retrans=\"500\">\n    <![CDATA[\n      BYE")
        .unwrap();
    let key = match dtmf_after_ms {
        Some(at) => format!(
            "  <pause milliseconds=\"{at}\"/>\n  <nop>\n    <action>\n      \
             <exec play_pcap_audio=\"/usr/share/sip-tester/dtmf_2833_2.pcap\"/>\n    </action>\n  </nop>\n  \
             <pause milliseconds=\"{}\"/>\n",
            call_ms - at
        ),
        None => format!("  <pause milliseconds=\"{call_ms}\"/>\n"),
    };
    let xml = format!(
        "{}  <nop>\n    <action>\n      <exec rtp_stream=\"{},1,0\"/>\n    </action>\n  </nop>\n{key}{}",
        &head[..cut],
        audio.display(),
        &head[bye..]
    );
    let name = match dtmf_after_ms {
        Some(at) => format!("uac-tone-{call_ms}-dtmf-{at}.xml"),
        None => format!("uac-tone-{call_ms}.xml"),
    };
    let path = dir.join(name);
    std::fs::write(&path, xml).unwrap();
    path.display().to_string()
}

/// A tshark capture of the loopback until stopped (at most 150 s).
pub struct Capture {
    child: Child,
    path: PathBuf,
}

impl Capture {
    /// Captures UDP to and from `port` into `dir`.
    pub fn start(dir: &Path, port: u16) -> Capture {
        Capture::start_filter(
            &dir.join(format!("udp-{port}.pcapng")),
            &format!("udp port {port}"),
        )
    }

    /// Captures what the capture filter `filter` (pcap syntax) lets
    /// through into `path`.
    pub fn start_filter(path: &Path, filter: &str) -> Capture {
        let mut child = Command::new("tshark")
            .args(["-q", "-i", "lo", "-f", filter, "-w"])
            .arg(path)
            .args(["-a", "duration:150"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("tshark is installed by scripts/test");
        // tshark says "Capturing on 'Loopback: lo'" once it listens.
        let mut stderr = std::io::BufReader::new(child.stderr.take().unwrap());
        let mut line = String::new();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            line.clear();
            if std::io::BufRead::read_line(&mut stderr, &mut line).unwrap_or(0) == 0
                || line.contains("Capturing on")
            {
                break;
            }
        }
        assert!(
            line.contains("Capturing on"),
            "tshark did not start: {line}"
        );
        // The pipe stays read to the end: closed, tshark's next message
        // (a warning, its closing count) would kill it with SIGPIPE, and
        // the capture would stop early or lose its last packets.
        std::thread::spawn(move || {
            let _ = std::io::copy(&mut stderr, &mut std::io::sink());
        });
        Capture {
            child,
            path: path.to_owned(),
        }
    }

    /// Stops the capture cleanly (SIGINT) and returns the file.
    pub fn stop(mut self) -> PathBuf {
        // Let the last packets reach the file before SIGINT.
        std::thread::sleep(Duration::from_millis(500));
        let _ = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
        self.path.clone()
    }
}

/// How many packets of `capture` match the display filter `filter`, with
/// `decode_as` (tshark `-d`, e.g. `tcp.port==5061,tls`).
pub fn tshark_count(capture: &Path, decode_as: &str, filter: &str) -> usize {
    let out = Command::new("tshark")
        .arg("-r")
        .arg(capture)
        .args(["-d", decode_as, "-Y", filter])
        .output()
        .expect("tshark is installed by scripts/test");
    String::from_utf8_lossy(&out.stdout).lines().count()
}

/// (source port, destination port, UDP payload) of every UDP packet in
/// `capture`.
pub fn udp_packets(capture: &Path) -> Vec<(u16, u16, Vec<u8>)> {
    let out = Command::new("tshark")
        .arg("-r")
        .arg(capture)
        .args(["-n", "-Y", "udp", "-T", "fields"])
        .args([
            "-e",
            "udp.srcport",
            "-e",
            "udp.dstport",
            "-e",
            "udp.payload",
        ])
        .output()
        .expect("tshark is installed by scripts/test");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let mut f = l.split('\t');
            let src = f.next()?.parse().ok()?;
            let dst = f.next()?.parse().ok()?;
            let payload = hex::decode(f.next()?.replace(':', "")).ok()?;
            Some((src, dst, payload))
        })
        .collect()
}

/// When the caller's speech starts, from its packets in order as (time,
/// level in dBFS): the first of three packets in a row above -40 dBFS
/// (60 ms of speech). A shorter burst is a click or a codec's start-up
/// transient, not speech, and shorter than any barge-in threshold.
pub fn speech_onset(caller: &[(f64, f64)]) -> Option<f64> {
    caller
        .windows(3)
        .find(|w| w.iter().all(|(_, dbfs)| *dbfs > -40.0))
        .map(|w| w[0].0)
}

/// G.711 µ-law to linear (ITU-T G.711 §3.2).
pub fn ulaw(b: u8) -> i16 {
    let b = !b;
    let exponent = (b >> 4) & 0x07;
    let mantissa = i32::from(b & 0x0f);
    let magnitude = (((mantissa << 3) + 0x84) << exponent) - 0x84;
    (if b & 0x80 != 0 { -magnitude } else { magnitude }) as i16
}

/// The PCMU packets sent to the caller's media port in `capture`: (Unix
/// time, samples).
pub fn to_caller(capture: &Path, caller_port: u16) -> Vec<(f64, Vec<i16>)> {
    let out = Command::new("tshark")
        .arg("-r")
        .arg(capture)
        .args(["-d", &format!("udp.port=={caller_port},rtp")])
        .args([
            "-Y",
            &format!("rtp.p_type == 0 && udp.dstport == {caller_port}"),
        ])
        .args([
            "-T",
            "fields",
            "-e",
            "frame.time_epoch",
            "-e",
            "rtp.payload",
        ])
        .output()
        .expect("tshark is installed by scripts/test");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| {
            let (at, hex) = line.split_once('\t')?;
            let hex = hex.replace(':', "");
            let samples = (0..hex.len() / 2)
                .filter_map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok())
                .map(ulaw)
                .collect();
            Some((at.parse().ok()?, samples))
        })
        .collect()
}

/// The newest call once it has ended (and is not `not`), within `timeout`.
pub async fn newest_ended_call(
    d: &super::TestDaemon,
    not: Option<&str>,
    timeout: Duration,
) -> serde_json::Value {
    let deadline = Instant::now() + timeout;
    loop {
        let (_, page) = super::json_of(d.get("/v1/calls?limit=1").send().await.unwrap()).await;
        if let Some(call) = page["items"].get(0)
            && !call["ended_at"].is_null()
            && call["id"].as_str() != not
        {
            return call.clone();
        }
        assert!(
            Instant::now() < deadline,
            "no ended call: {page}\n{}",
            d.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every call once all have ended, newest first.
pub async fn ended_calls(d: &super::TestDaemon, count: usize) -> Vec<serde_json::Value> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, page) = super::json_of(d.get("/v1/calls?limit=10").send().await.unwrap()).await;
        let items = page["items"].as_array().cloned().unwrap_or_default();
        if items.len() >= count && items.iter().all(|c| !c["ended_at"].is_null()) {
            return items;
        }
        assert!(
            Instant::now() < deadline,
            "calls not ended: {page}\n{}",
            d.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The dual WAV of call `id` (recorded once the call ended): caller
/// (inbound) and agent (outbound) tracks.
pub async fn dual_recording(d: &super::TestDaemon, id: &str) -> (Vec<i16>, Vec<i16>) {
    let deadline = Instant::now() + Duration::from_secs(20);
    let wav = loop {
        let r = d
            .get(&format!("/v1/calls/{id}/recording"))
            .send()
            .await
            .unwrap();
        if r.status() == 200 {
            break r.bytes().await.unwrap().to_vec();
        }
        assert!(Instant::now() < deadline, "no recording of {id}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(&wav[0..4], b"RIFF");
    let (mut inbound, mut outbound) = (Vec::new(), Vec::new());
    for (i, s) in wav[44..].chunks_exact(2).enumerate() {
        let v = i16::from_le_bytes([s[0], s[1]]);
        if i % 2 == 0 {
            inbound.push(v);
        } else {
            outbound.push(v);
        }
    }
    (inbound, outbound)
}

/// Seconds (of 100 ms windows) of `samples` that carry `hz`.
pub fn tone_seconds(samples: &[i16], hz: f64) -> f64 {
    samples
        .chunks_exact(800)
        .filter(|w| super::tone_power(w, 8000, hz) > 0.2)
        .count() as f64
        / 10.0
}

/// The turns of call `id`'s transcript.
pub async fn transcript_turns(d: &super::TestDaemon, id: &str) -> Vec<serde_json::Value> {
    let (s, t) = super::json_of(
        d.get(&format!("/v1/calls/{id}/transcript"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s, 200, "{t}");
    t["turns"].as_array().cloned().unwrap_or_default()
}

/// A daemon for the transfer tests: a trunk `carrier` that takes the
/// caller in and sends consult calls to the person's SIPp on
/// `human_port`, recordings in `rec_dir`, and a recorded voice agent on the
/// stand-in LLM at `llm_url` that may transfer to `human`, bound to
/// `number`.
pub async fn transfer_desk(
    backend: super::Backend,
    human_port: u16,
    rec_dir: &Path,
    llm_url: &str,
    human: &str,
    number: &str,
) -> super::TestDaemon {
    let trunk = format!(
        "name = \"carrier\"\n[inbound]\nallow = [\"127.0.0.1/32\"]\n\
         [outbound]\nproxy = \"127.0.0.1:{human_port}\"\n[limits]\nmax_calls = 10\n"
    );
    let d = super::TestDaemon::builder()
        .backend(backend)
        .profile("carrier", &trunk)
        .config(&format!("[recordings]\ndir = \"{}\"\n", rec_dir.display()))
        .allow_loopback()
        .start()
        .await;
    let (s, agent) = super::json_of(
        d.post("/v1/agents")
            .json(&serde_json::json!({
                "name": "desk", "kind": "voice", "max_duration_seconds": 90,
                "greeting": "Front desk.",
                // The caller's tone must not cut the agent short.
                "turn": {"barge_in_min_ms": 3000},
                "recording": {"enabled": true, "channels": "dual"},
                "tts": {"provider": "embedded", "voice": "slt"},
                "llm": {"provider": "openai", "base_url": format!("{llm_url}/v1"), "model": "stand-in"},
                "transfer_targets": [human]
            }))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s, 201, "{agent}");
    let r = d
        .post("/v1/phone-numbers")
        .json(&serde_json::json!({"number": number, "agent_id": agent["id"], "trunk_id": "trk_carrier"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    d
}
