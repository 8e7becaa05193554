//! Real peers the call tests run against: Kamailio as a registrar and proxy,
//! baresip as a softphone, and audio helpers (a tone as 8 kHz WAV, and a Goertzel detector to find it
//! in what a softphone recorded).

use std::net::UdpSocket;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{free_port_run, free_udp_port};

/// A running Kamailio with digest-authenticated users; stopped, with all its
/// worker processes, when dropped.
pub struct Kamailio {
    pub port: u16,
    child: Child,
    dir: tempfile::TempDir,
}

/// Kamailio's text database (db_text) under `dir` with `users` as
/// (username, password) subscribers of 127.0.0.1; returns its directory.
pub fn kamailio_db(dir: &Path, users: &[(&str, &str)]) -> PathBuf {
    let db = dir.join("db");
    std::fs::create_dir_all(&db).unwrap();
    std::fs::write(
        db.join("version"),
        "table_name(string) table_version(int)\nsubscriber:7\nlocation:9\n",
    )
    .unwrap();
    let mut subscribers = String::from(
        "id(int,auto) username(string) domain(string) password(string) ha1(string,null) ha1b(string,null)\n",
    );
    for (i, (user, pass)) in users.iter().enumerate() {
        subscribers.push_str(&format!("{}:{user}:127.0.0.1:{pass}:::\n", i + 1));
    }
    std::fs::write(db.join("subscriber"), subscribers).unwrap();
    db
}

/// Where Debian installs Kamailio's modules.
pub fn kamailio_modules() -> &'static str {
    [
        "/usr/lib/x86_64-linux-gnu/kamailio/modules/",
        "/usr/lib/kamailio/modules/",
    ]
    .into_iter()
    .find(|p| Path::new(p).join("tm.so").exists())
    .expect("kamailio modules are installed by scripts/test")
}

impl Kamailio {
    /// Starts Kamailio on 127.0.0.1 and a free port, with `users` as
    /// (username, password) in its user table.
    pub fn start(users: &[(&str, &str)]) -> Kamailio {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = kamailio_db(dir.path(), users);
        let port = free_udp_port();
        let mpath = kamailio_modules();
        let cfg = include_str!("../peers/kamailio.cfg")
            .replace("@PORT@", &port.to_string())
            .replace("@DBDIR@", &db.display().to_string())
            .replace("@MPATH@", mpath);
        let cfg_path = dir.path().join("kamailio.cfg");
        std::fs::write(&cfg_path, cfg).unwrap();
        let log = std::fs::File::create(dir.path().join("kamailio.log")).unwrap();
        // -m 512: the default 64 MB of shared memory runs out near 1,000
        // calls a second and calls fail.
        let child = Command::new("kamailio")
            .arg("-f")
            .arg(&cfg_path)
            .args(["-DD", "-E", "-m", "512", "-M", "16", "-Y"])
            .arg(dir.path())
            .arg("-P")
            .arg(dir.path().join("kamailio.pid"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            // Its own process group, so that the workers it forks can be
            // stopped with it.
            .process_group(0)
            .spawn()
            .expect("kamailio is installed by scripts/test");
        let k = Kamailio { port, child, dir };
        k.wait_answering();
        k
    }

    /// Waits until Kamailio answers an OPTIONS.
    fn wait_answering(&self) {
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let me = sock.local_addr().unwrap();
        let deadline = Instant::now() + Duration::from_secs(15);
        let mut buf = [0u8; 4096];
        while Instant::now() < deadline {
            let msg = format!(
                "OPTIONS sip:127.0.0.1:{p} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bK{n}\r\n\
                 Max-Forwards: 70\r\nFrom: <sip:probe@{me}>;tag=1\r\nTo: <sip:127.0.0.1:{p}>\r\n\
                 Call-ID: probe-{n}@test\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n",
                p = self.port,
                n = Instant::now().elapsed().as_nanos()
            );
            let _ = sock.send_to(msg.as_bytes(), ("127.0.0.1", self.port));
            if let Ok(n) = sock.recv(&mut buf)
                && buf[..n].starts_with(b"SIP/2.0 200")
            {
                return;
            }
        }
        panic!("kamailio did not answer:\n{}", self.log());
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("kamailio.log")).unwrap_or_default()
    }
}

impl Drop for Kamailio {
    /// SIGTERM to the group: Kamailio's main process then stops its
    /// workers. A SIGKILL to the main process alone would leave the workers
    /// running, holding the port. Whatever is left after 5 s gets SIGKILL.
    fn drop(&mut self) {
        let group = format!("-{}", self.child.id());
        let signal = |name: &str| {
            let _ = Command::new("kill")
                .args([name, "--", &group])
                .stderr(Stdio::null())
                .status();
        };
        signal("-TERM");
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline && matches!(self.child.try_wait(), Ok(None)) {
            std::thread::sleep(Duration::from_millis(20));
        }
        signal("-KILL");
        let _ = self.child.wait();
    }
}

/// What a baresip call left: its output, and the recording of what it heard
/// (`None` when it recorded nothing).
pub struct BaresipCall {
    pub log: String,
    pub heard: Option<PathBuf>,
}

/// baresip, configured in `dir`, calls `number` at the daemon's SIP port on
/// loopback, plays `source` (a WAV file, converted to the codec's rate and
/// channels) into the call, records what it hears, and quits after
/// `seconds` (or when `source` ends).
pub async fn baresip_call(
    dir: &Path,
    source: &Path,
    number: &str,
    sip_port: u16,
    seconds: u32,
) -> BaresipCall {
    baresip_call_with_codec(dir, source, number, sip_port, seconds, "PCMU").await
}

/// [`baresip_call`] offering only `codec`: `PCMU`, `G722` or `opus`
/// (its recording is at that codec's rate: 8, 16 or 48 kHz, and in
/// stereo for Opus).
pub async fn baresip_call_with_codec(
    dir: &Path,
    source: &Path,
    number: &str,
    sip_port: u16,
    seconds: u32,
    codec: &str,
) -> BaresipCall {
    let how = Baresip {
        codec,
        ..Baresip::default()
    };
    baresip_call_with(dir, source, number, sip_port, seconds, &how).await
}

/// How baresip places its call: the one codec it offers, SIP over TLS,
/// SRTP.
pub struct Baresip<'a> {
    /// baresip's name of the only codec offered: `PCMU`, `G722` or `opus`.
    pub codec: &'a str,
    /// SIP over TLS (`transport=tls`) to the port dialled, trusting this
    /// CA file.
    pub tls_ca: Option<&'a Path>,
    /// The account's media encryption (its `srtp` module), e.g.
    /// `srtp-mand`: RTP/SAVP with `a=crypto`, SRTP required.
    pub mediaenc: Option<&'a str>,
}

impl Default for Baresip<'_> {
    fn default() -> Self {
        Baresip {
            codec: "PCMU",
            tls_ca: None,
            mediaenc: None,
        }
    }
}

/// [`baresip_call`] placed as `how` says.
pub async fn baresip_call_with(
    dir: &Path,
    source: &Path,
    number: &str,
    sip_port: u16,
    seconds: u32,
    how: &Baresip<'_>,
) -> BaresipCall {
    // baresip's full codec name (the account's `audio_codecs` needs it:
    // `opus` alone means opus/8000/1, which does not exist), and the rate
    // and channels its audio runs at on that codec, which its aufile
    // source must have (Opus runs at 48 kHz stereo; a mono source fails
    // and the call carries no audio at all).
    let (module, codec, rate, channels) = match how.codec {
        "G722" => ("g722.so", "G722/16000/1", 16_000, 1),
        "opus" => ("opus.so", "opus/48000/2", 48_000, 2),
        _ => ("g711.so", "PCMU", 8_000, 1),
    };
    let converted = dir.join("baresip-source.wav");
    let ok = Command::new("sox")
        .arg(source)
        .args(["-r", &rate.to_string(), "-c", &channels.to_string()])
        .args(["-b", "16", "-e", "signed"])
        .arg(&converted)
        .status()
        .expect("sox is installed by scripts/test")
        .success();
    assert!(ok, "sox could not convert {}", source.display());
    let source = converted.as_path();
    let mut modules = vec![module];
    let mut account = String::from("<sip:caller@127.0.0.1");
    let mut target = format!("sip:{number}@127.0.0.1:{sip_port}");
    let mut extra = String::new();
    if let Some(ca) = how.tls_ca {
        account.push_str(";transport=tls");
        target.push_str(";transport=tls");
        extra.push_str(&format!("sip_cafile\t{}\n", ca.display()));
    }
    account.push_str(&format!(">;regint=0;audio_codecs={codec}"));
    if let Some(mediaenc) = how.mediaenc {
        account.push_str(&format!(";mediaenc={mediaenc}"));
        modules.push("srtp.so");
    }
    let rec = dir.join("rec");
    std::fs::create_dir_all(&rec).unwrap();
    std::fs::write(dir.join("accounts"), format!("{account}\n")).unwrap();
    std::fs::write(dir.join("contacts"), "").unwrap();
    for module in modules {
        extra.push_str(&format!("module\t{module}\n"));
    }
    // baresip binds UDP and TCP on its SIP port, TLS on the next one, and
    // RTP in its range: all of them come from one probed run of free ports.
    // A port taken between the probe and baresip's bind shows in its log as
    // "Address already in use"; then the call is tried again on other ports.
    let mut log = String::new();
    for _ in 0..3 {
        let own_port = free_port_run(12);
        let rtp_low = own_port + 2;
        std::fs::write(
            dir.join("config"),
            format!(
                "poll_method\tepoll\nsip_listen\t127.0.0.1:{own_port}\nnet_interface\t127.0.0.1\n\
                 audio_source\taufile,{source}\naudio_player\taufile,{play}\naudio_alert\taufile,{play}\n\
                 rtp_ports\t{rtp_low}-{rtp_high}\nmodule_path\t/usr/lib/baresip/modules\n\
                 {extra}module\taufile.so\nmodule\tsndfile.so\n\
                 module_app\taccount.so\nmodule_app\tmenu.so\nsnd_path\t{rec}\n",
                source = source.display(),
                play = dir.join("played.wav").display(),
                rtp_high = rtp_low + 9,
                rec = rec.display(),
            ),
        )
        .unwrap();
        let out = tokio::process::Command::new("baresip")
            .arg("-f")
            .arg(dir)
            .args(["-e", &format!("/dial {target}")])
            .args(["-t", &seconds.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .output();
        let out = tokio::time::timeout(Duration::from_secs(u64::from(seconds) + 20), out)
            .await
            .expect("baresip quits by itself (-t)")
            .expect("baresip is installed by scripts/test");
        log = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        if !log.contains("Address already in use") {
            break;
        }
    }
    let heard = std::fs::read_dir(&rec)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.to_string_lossy().ends_with("-dec.wav"));
    BaresipCall { log, heard }
}

/// Writes a mono 16-bit WAV at `rate` Hz: `silence_ms` of silence, then a
/// sine of `hz` for `tone_ms`, then silence again.
pub fn write_tone_wav(path: &Path, rate: u32, hz: f64, silence_ms: u32, tone_ms: u32) {
    let n_sil = (rate * silence_ms / 1000) as usize;
    let n_tone = (rate * tone_ms / 1000) as usize;
    let mut samples = vec![0i16; n_sil];
    for i in 0..n_tone {
        let t = i as f64 / f64::from(rate);
        samples.push((8000.0 * (2.0 * std::f64::consts::PI * hz * t).sin()) as i16);
    }
    samples.extend(std::iter::repeat_n(0i16, n_sil));
    let data_len = (samples.len() * 2) as u32;
    let mut out = Vec::with_capacity(44 + data_len as usize);
    out.extend_from_slice(b"RIFF");
    out.extend_from_slice(&(36 + data_len).to_le_bytes());
    out.extend_from_slice(b"WAVEfmt ");
    out.extend_from_slice(&16u32.to_le_bytes());
    out.extend_from_slice(&1u16.to_le_bytes());
    out.extend_from_slice(&1u16.to_le_bytes());
    out.extend_from_slice(&rate.to_le_bytes());
    out.extend_from_slice(&(rate * 2).to_le_bytes());
    out.extend_from_slice(&2u16.to_le_bytes());
    out.extend_from_slice(&16u16.to_le_bytes());
    out.extend_from_slice(b"data");
    out.extend_from_slice(&data_len.to_le_bytes());
    for s in samples {
        out.extend_from_slice(&s.to_le_bytes());
    }
    std::fs::write(path, out).unwrap();
}

/// Reads the samples and rate of a 16-bit PCM WAV (first channel).
pub fn read_wav(path: &Path) -> (u32, Vec<i16>) {
    let bytes = std::fs::read(path).unwrap();
    assert!(
        bytes.len() > 44 && &bytes[..4] == b"RIFF",
        "not a WAV: {}",
        path.display()
    );
    let mut pos = 12;
    let (mut rate, mut channels) = (8000u32, 1usize);
    while pos + 8 <= bytes.len() {
        let id = &bytes[pos..pos + 4];
        let len = u32::from_le_bytes(bytes[pos + 4..pos + 8].try_into().unwrap()) as usize;
        let body = &bytes[pos + 8..(pos + 8 + len).min(bytes.len())];
        if id == b"fmt " {
            channels = u16::from_le_bytes([body[2], body[3]]) as usize;
            rate = u32::from_le_bytes(body[4..8].try_into().unwrap());
        } else if id == b"data" {
            let samples = body
                .chunks_exact(2 * channels)
                .map(|c| i16::from_le_bytes([c[0], c[1]]))
                .collect();
            return (rate, samples);
        }
        pos += 8 + len + (len & 1);
    }
    panic!("no data chunk in {}", path.display());
}

/// Relative power of `hz` in `samples` (Goertzel), normalized by the
/// window's total energy: near 0.5 for a pure tone at `hz`, near 0 without.
pub fn tone_power(samples: &[i16], rate: u32, hz: f64) -> f64 {
    let n = samples.len();
    if n == 0 {
        return 0.0;
    }
    let w = 2.0 * std::f64::consts::PI * hz / f64::from(rate);
    let coeff = 2.0 * w.cos();
    let (mut s1, mut s2) = (0.0f64, 0.0f64);
    let mut energy = 0.0f64;
    for &x in samples {
        let x = f64::from(x);
        energy += x * x;
        let s0 = x + coeff * s1 - s2;
        s2 = s1;
        s1 = s0;
    }
    let power = s1 * s1 + s2 * s2 - coeff * s1 * s2;
    if energy == 0.0 {
        0.0
    } else {
        power / (energy * n as f64)
    }
}

/// The best `tone_power` of `hz` over 100 ms windows of the recording.
pub fn strongest_window(samples: &[i16], rate: u32, hz: f64) -> f64 {
    let win = (rate / 10) as usize;
    samples
        .chunks(win)
        .filter(|c| c.len() == win)
        .map(|c| tone_power(c, rate, hz))
        .fold(0.0, f64::max)
}
