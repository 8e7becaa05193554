//! Media helpers the call tests share: tones made with sox, a SIPp caller
//! that streams one (and may press a key), a tshark capture of the
//! loopback, and the PCMU audio a capture holds.

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

/// Captures UDP on the loopback to and from `port` until stopped (at
/// most 150 s).
pub struct Capture {
    child: Child,
    path: PathBuf,
}

impl Capture {
    pub fn start(dir: &Path, port: u16) -> Capture {
        let path = dir.join(format!("udp-{port}.pcapng"));
        let mut child = Command::new("tshark")
            .args(["-q", "-i", "lo", "-f", &format!("udp port {port}"), "-w"])
            .arg(&path)
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
        Capture { child, path }
    }

    /// Stops the capture cleanly (SIGINT) and returns the file.
    pub fn stop(mut self) -> PathBuf {
        let _ = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
        self.path.clone()
    }
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
