//! SIP over TLS with real peers: baresip calls the echo agent over TLS
//! (and a capture shows no plain SIP), the daemon registers over TLS to
//! Kamailio's TLS listener and receives a call through it, a stranger's
//! TLS connections meet the TCP edge's rules, a bad certificate file stops
//! the start with a clear error, and SIGHUP swaps the certificate.
//!
//! Certificates are made per test with the openssl CLI (a CA and a leaf
//! for 127.0.0.1): no private key is committed.

// A test's unwrap, expect or panic is its failure report: the daemon's bans
// (Cargo.toml `[lints]`) do not apply here.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{TestDaemon, free_port, free_port_run, free_udp_port, run_sipp};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const NUMBER: &str = "+14155552671";

/// A test CA and a leaf certificate for 127.0.0.1 signed by it (PEM files).
struct Certs {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("openssl is installed by scripts/test");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA, and a leaf named `name` (`cn`) for 127.0.0.1 signed by it.
fn make_certs(dir: &Path, name: &str) -> Certs {
    let ca = dir.join("ca.pem");
    if !ca.exists() {
        openssl(
            dir,
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
                "-days",
                "2",
                "-subj",
                "/CN=agentline test CA",
            ],
        );
    }
    std::fs::write(
        dir.join(format!("{name}.ext")),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n\
         keyUsage=digitalSignature\nextendedKeyUsage=serverAuth,clientAuth\n",
    )
    .unwrap();
    let (key, csr, pem, ext) = (
        format!("{name}.key"),
        format!("{name}.csr"),
        format!("{name}.pem"),
        format!("{name}.ext"),
    );
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            &key,
            "-out",
            &csr,
            "-subj",
            &format!("/CN={name}"),
        ],
    );
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            &pem,
            "-days",
            "2",
            "-extfile",
            &ext,
        ],
    );
    Certs {
        ca,
        cert: dir.join(pem),
        key: dir.join(key),
    }
}

/// `[sip]` keys for TLS on `port` with `certs`.
fn tls_keys(port: u16, certs: &Certs) -> String {
    format!(
        "tls_listen = \"127.0.0.1:{port}\"\ntls_cert_file = \"{}\"\ntls_key_file = \"{}\"",
        certs.cert.display(),
        certs.key.display()
    )
}

async fn provision_echo(d: &TestDaemon, trunk: &str) {
    d.provision_echo(NUMBER, trunk, 30).await;
}

async fn latest_call(d: &TestDaemon) -> Value {
    let page: Value = d
        .get("/v1/calls?limit=1")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    page["items"][0].clone()
}

/// Captures TCP and UDP on the loopback to and from `ports` until stopped.
struct Capture {
    child: Child,
    path: PathBuf,
}

impl Capture {
    fn start(dir: &Path, ports: &[u16]) -> Capture {
        let path = dir.join("sip.pcapng");
        let filter = ports
            .iter()
            .map(|p| format!("port {p}"))
            .collect::<Vec<_>>()
            .join(" or ");
        let mut child = Command::new("tshark")
            .args(["-q", "-i", "lo", "-f", &filter, "-w"])
            .arg(&path)
            .args(["-a", "duration:120"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("tshark is installed by scripts/test");
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

    fn stop(mut self) -> PathBuf {
        // Let the last packets reach the file before SIGINT.
        std::thread::sleep(Duration::from_millis(500));
        let _ = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
        self.path.clone()
    }
}

fn tshark_count(capture: &Path, decode_as: &str, filter: &str) -> usize {
    let out = Command::new("tshark")
        .arg("-r")
        .arg(capture)
        .args(["-d", decode_as, "-Y", filter])
        .output()
        .expect("tshark is installed by scripts/test");
    String::from_utf8_lossy(&out.stdout).lines().count()
}

/// baresip (its TLS transport, trusting the test CA) calls the echo agent
/// over TLS and plays a 700 Hz tone; what it hears back holds the tone. A
/// capture of the daemon's SIP ports shows TLS and not one plain SIP
/// message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn baresip_calls_over_tls_and_no_plain_sip_is_on_the_wire() {
    let dir = tempfile::tempdir().unwrap();
    let certs = make_certs(dir.path(), "daemon");
    let tls_port = free_port();
    let d = TestDaemon::builder()
        .sip(&tls_keys(tls_port, &certs))
        .profile(
            "local",
            "name = \"local\"\n[inbound]\nallow = [\"127.0.0.1/32\"]\n",
        )
        .start()
        .await;
    provision_echo(&d, "trk_local").await;

    let tone = dir.path().join("tone.wav");
    common::write_tone_wav(&tone, 8000, 700.0, 600, 2500);
    let capture = Capture::start(dir.path(), &[d.sip_port, tls_port]);
    let (log, heard) = baresip_tls_call(dir.path(), &certs.ca, &tone, tls_port, 10).await;
    let capture = capture.stop();

    let heard = heard.unwrap_or_else(|| panic!("baresip recorded nothing:\n{log}\n{}", d.log()));
    let (rate, samples) = common::read_wav(&heard);
    let at_700 = common::strongest_window(&samples, rate, 700.0);
    assert!(
        at_700 > 0.3,
        "the tone came back: 700 Hz {at_700}\n{log}\n{}",
        d.log()
    );
    let call = latest_call(&d).await;
    assert_eq!(call["to"], NUMBER, "{call}");

    let decode = format!("tcp.port=={tls_port},tls");
    let segments = tshark_count(
        &capture,
        &decode,
        &format!("tcp.port == {tls_port} && tcp.len > 0"),
    );
    let records = tshark_count(&capture, &decode, "tls.app_data");
    assert!(
        segments > 0 && records >= 4,
        "TLS captured: {segments} segments, {records} application data records"
    );
    assert_eq!(
        tshark_count(&capture, &decode, "sip"),
        0,
        "no plain SIP on the daemon's ports"
    );
    let raw = std::fs::read(&capture).unwrap();
    for needle in [&b"SIP/2.0"[..], b"INVITE sip:", NUMBER.as_bytes()] {
        assert!(
            !raw.windows(needle.len()).any(|w| w == needle),
            "{:?} in clear in the capture",
            String::from_utf8_lossy(needle)
        );
    }
}

/// baresip over TLS (trusting `ca`) calls the number at `tls_port`, plays
/// `source`, records what it hears, quits after `seconds`.
async fn baresip_tls_call(
    dir: &Path,
    ca: &Path,
    source: &Path,
    tls_port: u16,
    seconds: u32,
) -> (String, Option<PathBuf>) {
    let rec = dir.join("rec");
    std::fs::create_dir_all(&rec).unwrap();
    std::fs::write(
        dir.join("accounts"),
        "<sip:caller@127.0.0.1;transport=tls>;regint=0;audio_codecs=PCMU\n",
    )
    .unwrap();
    std::fs::write(dir.join("contacts"), "").unwrap();
    let mut log = String::new();
    for _ in 0..3 {
        let own_port = free_port_run(12);
        let rtp_low = own_port + 2;
        std::fs::write(
            dir.join("config"),
            format!(
                "poll_method\tepoll\nsip_listen\t127.0.0.1:{own_port}\nnet_interface\t127.0.0.1\n\
                 sip_cafile\t{ca}\n\
                 audio_source\taufile,{source}\naudio_player\taufile,{play}\naudio_alert\taufile,{play}\n\
                 rtp_ports\t{rtp_low}-{rtp_high}\nmodule_path\t/usr/lib/baresip/modules\n\
                 module\tg711.so\nmodule\taufile.so\nmodule\tsndfile.so\n\
                 module_app\taccount.so\nmodule_app\tmenu.so\nsnd_path\t{rec}\n",
                ca = ca.display(),
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
            .args([
                "-e",
                &format!("/dial sip:{NUMBER}@127.0.0.1:{tls_port};transport=tls"),
            ])
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
    (log, heard)
}

/// Kamailio with its TLS module: UDP for SIPp, TLS for us, its server
/// certificate from the test CA, a registrar with digest users.
struct KamailioTls {
    udp_port: u16,
    tls_port: u16,
    child: Child,
    dir: tempfile::TempDir,
}

impl KamailioTls {
    fn start(certs: &Certs, users: &[(&str, &str)]) -> KamailioTls {
        let dir = tempfile::tempdir().unwrap();
        let db = common::kamailio_db(dir.path(), users);
        let udp_port = free_udp_port();
        let tls_port = free_port();
        let mpath = common::kamailio_modules();
        assert!(
            Path::new(mpath).join("tls.so").exists(),
            "kamailio-tls-modules is installed by scripts/test"
        );
        let tls_cfg = dir.path().join("tls.cfg");
        std::fs::write(
            &tls_cfg,
            format!(
                "[server:default]\nmethod = TLSv1.2+\nverify_certificate = no\nrequire_certificate = no\n\
                 private_key = {key}\ncertificate = {cert}\n\n\
                 [client:default]\nmethod = TLSv1.2+\nverify_certificate = no\nrequire_certificate = no\n",
                key = certs.key.display(),
                cert = certs.cert.display(),
            ),
        )
        .unwrap();
        // The shared test config, with a TLS listener and the TLS module
        // (loaded first, as Kamailio's TLS module asks).
        let cfg = include_str!("peers/kamailio.cfg")
            .replace(
                "listen=udp:127.0.0.1:@PORT@\n",
                "listen=udp:127.0.0.1:@PORT@\nlisten=tls:127.0.0.1:@TLSPORT@\nenable_tls=yes\n\
                 alias=\"127.0.0.1:@TLSPORT@\"\n",
            )
            .replace(
                "loadmodule \"kex.so\"\n",
                "loadmodule \"tls.so\"\nmodparam(\"tls\", \"config\", \"@TLSCFG@\")\nloadmodule \"kex.so\"\n",
            )
            .replace("@TLSPORT@", &tls_port.to_string())
            .replace("@TLSCFG@", &tls_cfg.display().to_string())
            .replace("@PORT@", &udp_port.to_string())
            .replace("@DBDIR@", &db.display().to_string())
            .replace("@MPATH@", mpath);
        assert!(
            cfg.contains("listen=tls:"),
            "the shared kamailio.cfg changed"
        );
        let cfg_path = dir.path().join("kamailio.cfg");
        std::fs::write(&cfg_path, cfg).unwrap();
        let log = std::fs::File::create(dir.path().join("kamailio.log")).unwrap();
        let child = Command::new("kamailio")
            .arg("-f")
            .arg(&cfg_path)
            .args(["-DD", "-E", "-m", "128", "-M", "16", "-Y"])
            .arg(dir.path())
            .arg("-P")
            .arg(dir.path().join("kamailio.pid"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .process_group(0)
            .spawn()
            .expect("kamailio is installed by scripts/test");
        let k = KamailioTls {
            udp_port,
            tls_port,
            child,
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(15);
        while std::net::TcpStream::connect(("127.0.0.1", k.tls_port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "kamailio TLS not listening:\n{}",
                k.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        k
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("kamailio.log")).unwrap_or_default()
    }
}

impl Drop for KamailioTls {
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

/// The daemon registers over TLS (`transport = "tls"`, Kamailio's
/// certificate verified against the trunk's `tls_ca_file`) to Kamailio's
/// TLS listener; a call from SIPp to Kamailio for the registered user
/// reaches the daemon over TLS (Kamailio connects to our `tls_listen`,
/// the Contact we registered) and is answered and ended.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registers_over_tls_to_kamailio_and_receives_a_call_through_it() {
    let dir = tempfile::tempdir().unwrap();
    let kam_certs = make_certs(dir.path(), "kamailio");
    let our_certs = make_certs(dir.path(), "daemon");
    let kamailio = KamailioTls::start(&kam_certs, &[("1001", "s3cret-pw")]);

    // A trunk whose CA did not sign Kamailio's certificate: the
    // registration fails with no answer (the handshake is refused), and
    // nothing goes in clear instead.
    let other = tempfile::tempdir().unwrap();
    let other_ca = make_certs(other.path(), "other").ca;
    let untrusted = format!(
        "name = \"kam\"\ntransport = \"tls\"\ntls_ca_file = \"{}\"\n[registration]\n\
         registrar = \"127.0.0.1:{}\"\nusername = \"1001\"\n\
         password_env = \"KAM_TEST_PASSWORD\"\nexpires = 60\n",
        other_ca.display(),
        kamailio.tls_port
    );
    let d = TestDaemon::builder()
        .profile("kam", &untrusted)
        .env("KAM_TEST_PASSWORD", "s3cret-pw")
        .start()
        .await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let t: Value = d
            .get("/v1/trunks/trk_kam")
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if t["registration"]["state"] == "failing" {
            assert!(t["registration"]["last_status"].is_null(), "{t}");
            break;
        }
        assert_ne!(t["registration"]["state"], "registered", "{t}");
        assert!(
            Instant::now() < deadline,
            "untrusted registrar not failing: {t}\n{}",
            d.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(d);

    let tls_port = free_port();
    let profile = format!(
        "name = \"kam\"\ntransport = \"tls\"\ntls_ca_file = \"{}\"\n[registration]\n\
         registrar = \"127.0.0.1:{}\"\nusername = \"1001\"\n\
         password_env = \"KAM_TEST_PASSWORD\"\nexpires = 60\n[inbound]\nallow = [\"127.0.0.1/32\"]\n",
        kam_certs.ca.display(),
        kamailio.tls_port
    );
    let d = TestDaemon::builder()
        .sip(&tls_keys(tls_port, &our_certs))
        .profile("kam", &profile)
        .env("KAM_TEST_PASSWORD", "s3cret-pw")
        .start()
        .await;
    provision_echo(&d, "trk_kam").await;

    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let t: Value = d
            .get("/v1/trunks/trk_kam")
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if t["registration"]["state"] == "registered" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not registered over TLS: {t}\n{}\n{}",
            d.log(),
            kamailio.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let run = run_sipp(
        "uac-invite-via-registrar-expect-200-bye.xml",
        free_udp_port(),
        Some(([127, 0, 0, 1], kamailio.udp_port).into()),
        &["-s", "1001", "-key", "number", NUMBER, "-d", "500"],
        Duration::from_secs(25),
    )
    .await;
    assert!(
        run.success,
        "{}\n{}\n{}",
        run.output,
        d.log(),
        kamailio.log()
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    let call = loop {
        let c = latest_call(&d).await;
        if !c["ended_at"].is_null() {
            break c;
        }
        assert!(Instant::now() < deadline, "call not ended: {c}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(call["status"], "completed", "{call}");
    assert_eq!(call["to"], NUMBER);
    assert_eq!(call["trunk_id"], "trk_kam");
    // The INVITE came in over TLS (Kamailio connected to our TLS port).
    let log = d.log();
    assert!(
        log.lines()
            .any(|l| l.contains("inbound INVITE") && l.contains("transport=TLS")),
        "{log}"
    );
}

/// A TLS client trusting `ca` only, for the edge tests.
fn client(ca: &Path) -> tokio_rustls::TlsConnector {
    use rustls::pki_types::{CertificateDer, pem::PemObject};
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let mut config = config;
    // Every handshake a full one: a resumed session would report the
    // certificate of the session it resumed.
    config.resumption = rustls::client::Resumption::disabled();
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

async fn handshake(
    connector: &tokio_rustls::TlsConnector,
    port: u16,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(("127.0.0.1", port)).await?;
    let name =
        rustls::pki_types::ServerName::IpAddress(std::net::IpAddr::from([127, 0, 0, 1]).into());
    tokio::time::timeout(Duration::from_secs(10), connector.connect(name, tcp))
        .await
        .map_err(|_| std::io::Error::other("handshake timed out"))?
}

/// Whether the daemon closes `stream` within `within`.
async fn closed_within(stream: &mut (impl AsyncReadExt + Unpin), within: Duration) -> bool {
    let mut buf = [0u8; 512];
    matches!(
        tokio::time::timeout(within, stream.read(&mut buf)).await,
        Ok(Ok(0) | Err(_))
    )
}

/// The TLS door keeps the TCP edge's rules: a stranger is closed at
/// accept, before any handshake; an admitted source gets at most
/// `max_connections_per_source`; a connection that never finishes its
/// handshake is closed after `message_timeout_seconds`; an OPTIONS over
/// an established TLS connection is answered, over TLS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_connections_are_held_to_the_tcp_edge_rules() {
    let dir = tempfile::tempdir().unwrap();
    let certs = make_certs(dir.path(), "daemon");
    let tls_port = free_port();

    // 127.0.0.1 is a stranger here.
    let d = TestDaemon::builder()
        .sip(&tls_keys(tls_port, &certs))
        .profile(
            "far",
            "name = \"far\"\n[inbound]\nallow = [\"10.9.8.0/24\"]\n",
        )
        .start()
        .await;
    let connector = client(&certs.ca);
    assert!(
        handshake(&connector, tls_port).await.is_err(),
        "a stranger gets no TLS handshake"
    );
    let metrics = d.metrics().await;
    assert!(metrics.contains("reason=\"tcp_refused\""), "{metrics}");
    drop(d);

    let tls_port = free_port();
    let d = TestDaemon::builder()
        .sip(&tls_keys(tls_port, &certs))
        .sip("[sip.tcp]\nmax_connections_per_source = 2\nmessage_timeout_seconds = 2")
        .profile(
            "local",
            "name = \"local\"\n[inbound]\nallow = [\"127.0.0.1/32\"]\n",
        )
        .start()
        .await;
    // Admitted: an OPTIONS over TLS is answered over TLS.
    let mut first = handshake(&connector, tls_port).await.unwrap();
    let options = format!(
        "OPTIONS sip:127.0.0.1:{tls_port};transport=tls SIP/2.0\r\n\
         Via: SIP/2.0/TLS 127.0.0.1:5999;branch=z9hG4bK-tls-1;rport\r\nMax-Forwards: 70\r\n\
         From: <sip:probe@127.0.0.1>;tag=1\r\nTo: <sip:127.0.0.1>\r\nCall-ID: tls-options-1\r\n\
         CSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
    );
    first.write_all(options.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    // (Leading CRLFs are the stack's keepalives, RFC 5626 §4.4.1.)
    while !String::from_utf8_lossy(&answer)
        .trim_start()
        .contains("\r\n\r\n")
    {
        let mut buf = [0u8; 2048];
        let n = tokio::time::timeout_at(deadline.into(), first.read(&mut buf))
            .await
            .expect("an answer to OPTIONS over TLS")
            .unwrap();
        assert!(n > 0, "closed: {}", String::from_utf8_lossy(&answer));
        answer.extend_from_slice(&buf[..n]);
    }
    let answer = String::from_utf8_lossy(&answer);
    let answer = answer.trim_start();
    assert!(answer.starts_with("SIP/2.0 200"), "{answer}");
    assert!(answer.contains("SIP/2.0/TLS 127.0.0.1:5999"), "{answer}");

    // The second connection is admitted, the third is over the cap.
    let _second = handshake(&connector, tls_port).await.unwrap();
    assert!(
        handshake(&connector, tls_port).await.is_err(),
        "a third connection from one source is refused"
    );

    // A silent connection (no ClientHello) is closed by the handshake
    // timeout once a slot is free.
    drop(_second);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut silent = TcpStream::connect(("127.0.0.1", tls_port)).await.unwrap();
    let started = Instant::now();
    assert!(
        closed_within(&mut silent, Duration::from_secs(15)).await,
        "a stalled handshake is closed"
    );
    assert!(
        started.elapsed() >= Duration::from_millis(1500),
        "{:?}",
        started.elapsed()
    );
    let metrics = d.metrics().await;
    assert!(metrics.contains("reason=\"tls_handshake\""), "{metrics}");
    assert!(
        metrics.contains("agentline_sip_tls_connections"),
        "{metrics}"
    );
}

/// A certificate file that is not one stops the start with an error that
/// names the key and the file; SIGHUP with a new certificate serves it to
/// new connections while an established one stays up; a broken file at
/// SIGHUP keeps the old certificate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_errors_are_clear_and_sighup_swaps_the_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let certs = make_certs(dir.path(), "daemon");
    let bad = dir.path().join("not-a-cert.pem");
    std::fs::write(&bad, "this is not PEM\n").unwrap();
    let broken = Certs {
        ca: certs.ca.clone(),
        cert: bad.clone(),
        key: certs.key.clone(),
    };
    let mut d = TestDaemon::builder()
        .sip(&tls_keys(free_port(), &broken))
        .prepare()
        .await;
    d.spawn();
    let status = d.wait_exit(Duration::from_secs(30)).await;
    assert!(!status.success(), "started with a bad certificate");
    let log = d.log();
    assert!(log.contains("sip.tls_cert_file"), "{log}");
    assert!(log.contains("not-a-cert.pem"), "{log}");

    // Certificate and key that do not belong together.
    let other = make_certs(dir.path(), "other");
    let mismatched = Certs {
        ca: certs.ca.clone(),
        cert: certs.cert.clone(),
        key: other.key.clone(),
    };
    let mut d = TestDaemon::builder()
        .sip(&tls_keys(free_port(), &mismatched))
        .prepare()
        .await;
    d.spawn();
    let status = d.wait_exit(Duration::from_secs(30)).await;
    assert!(
        !status.success(),
        "started with a key of another certificate"
    );
    assert!(d.log().contains("other.key"), "{}", d.log());

    // SIGHUP: the files now hold the "other" certificate.
    let served = dir.path().join("served");
    std::fs::create_dir_all(&served).unwrap();
    let live = Certs {
        ca: certs.ca.clone(),
        cert: served.join("cert.pem"),
        key: served.join("key.pem"),
    };
    std::fs::copy(&certs.cert, &live.cert).unwrap();
    std::fs::copy(&certs.key, &live.key).unwrap();
    let tls_port = free_port();
    let d = TestDaemon::builder()
        .sip(&tls_keys(tls_port, &live))
        .profile(
            "local",
            "name = \"local\"\n[inbound]\nallow = [\"127.0.0.1/32\"]\n",
        )
        .start()
        .await;
    let connector = client(&certs.ca);
    let peer_cn = |s: &tokio_rustls::client::TlsStream<TcpStream>| {
        let der = s.get_ref().1.peer_certificates().unwrap()[0].to_vec();
        let pem = dir.path().join("peer.der");
        std::fs::write(&pem, der).unwrap();
        let out = Command::new("openssl")
            .args(["x509", "-inform", "DER", "-noout", "-subject", "-in"])
            .arg(&pem)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    let mut before = handshake(&connector, tls_port).await.unwrap();
    assert!(peer_cn(&before).contains("daemon"), "{}", peer_cn(&before));
    std::fs::copy(&other.cert, &live.cert).unwrap();
    std::fs::copy(&other.key, &live.key).unwrap();
    d.signal("HUP");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let after = handshake(&connector, tls_port).await.unwrap();
        if peer_cn(&after).contains("other") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the new certificate is not served\n{}",
            d.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The connection from before the reload is still served.
    before
        .write_all(b"\r\n\r\n")
        .await
        .expect("the old connection is still open");
    assert!(!closed_within(&mut before, Duration::from_millis(500)).await);

    // A broken file at SIGHUP: the running certificate stays.
    std::fs::write(&live.cert, "garbage").unwrap();
    d.signal("HUP");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let still = handshake(&connector, tls_port).await.unwrap();
    assert!(peer_cn(&still).contains("other"), "{}", peer_cn(&still));
    assert!(
        d.log().contains("SIP TLS certificates not reloaded"),
        "{}",
        d.log()
    );
}
