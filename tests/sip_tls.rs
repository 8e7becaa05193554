//! SIP over TLS with real peers: baresip calls the echo agent over TLS
//! (and a capture shows no plain SIP), the daemon registers over TLS to
//! Kamailio's TLS listener and receives a call through it, a stranger's
//! TLS connections meet the TCP edge's rules, a bad certificate file stops
//! the start with a clear error, SIGHUP swaps the certificate, and an
//! OPTIONS probe to a TLS trunk names our TLS port in Via.
//!
//! Certificates are made per test with the openssl CLI (`common::tls`):
//! no private key is committed.

// A test's unwrap, expect or panic is its failure report: the daemon's bans
// (Cargo.toml `[lints]`) do not apply here.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{
    Capture, Certs, TestDaemon, free_port, free_udp_port, make_certs, run_sipp, tls_keys,
    tshark_count,
};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const NUMBER: &str = "+14155552671";

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
    let capture = Capture::start_filter(
        &dir.path().join("sip.pcapng"),
        &format!("port {} or port {tls_port}", d.sip_port),
    );
    let how = common::Baresip {
        tls_ca: Some(&certs.ca),
        ..common::Baresip::default()
    };
    let common::BaresipCall { log, heard } =
        common::baresip_call_with(dir.path(), &tone, NUMBER, tls_port, 10, &how).await;
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

/// A stand-in trunk: a TLS server with `certs`' leaf that answers every
/// OPTIONS 200 and hands each request to the test, with whether the
/// client showed a certificate. With `client_ca`, it asks for a client
/// certificate signed by that CA and refuses a handshake without one.
async fn tls_trunk(
    certs: &Certs,
    client_ca: Option<&Path>,
) -> (
    u16,
    tokio::sync::mpsc::UnboundedReceiver<(String, bool)>,
    tokio::task::JoinHandle<()>,
) {
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&certs.cert)
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let key = PrivateKeyDer::from_pem_file(&certs.key).unwrap();
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap();
    let server = match client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in CertificateDer::pem_file_iter(ca).unwrap() {
                roots.add(cert.unwrap()).unwrap();
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .build()
            .unwrap();
            builder.with_client_cert_verifier(verifier)
        }
    }
    .with_single_cert(chain, key)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (probes, probed) = tokio::sync::mpsc::unbounded_channel::<(String, bool)>();
    let trunk = tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let Ok(mut tls) = acceptor.accept(tcp).await else {
                continue;
            };
            let client_cert = tls.get_ref().1.peer_certificates().is_some();
            let probes = probes.clone();
            tokio::spawn(async move {
                let mut pending = String::new();
                let mut buf = [0u8; 2048];
                while let Ok(n) = tls.read(&mut buf).await {
                    if n == 0 {
                        return;
                    }
                    pending.push_str(&String::from_utf8_lossy(&buf[..n]));
                    // Requests without a body, each ending at an empty line.
                    while let Some(end) = pending.find("\r\n\r\n") {
                        let request = pending[..end].trim_start().to_owned();
                        pending.drain(..end + 4);
                        if request.is_empty() {
                            continue;
                        }
                        let echoed: String = request
                            .lines()
                            .filter(|l| {
                                ["via:", "from:", "to:", "call-id:", "cseq:"]
                                    .iter()
                                    .any(|h| l.to_ascii_lowercase().starts_with(h))
                            })
                            .map(|l| format!("{l}\r\n"))
                            .collect();
                        let answer = format!("SIP/2.0 200 OK\r\n{echoed}Content-Length: 0\r\n\r\n");
                        if tls.write_all(answer.as_bytes()).await.is_err() {
                            return;
                        }
                        let _ = probes.send((request, client_cert));
                    }
                }
            });
        }
    });
    (port, probed, trunk)
}

/// The profile of a TLS trunk at `port` trusting `ca`, probed each second.
fn tls_trunk_profile(port: u16, ca: &Path) -> String {
    format!(
        "name = \"tlstrunk\"\ntransport = \"tls\"\ntls_ca_file = \"{}\"\n\
         [outbound]\nproxy = \"127.0.0.1:{port}\"\nping_seconds = 1\n",
        ca.display()
    )
}

async fn wait_trunk_up(d: &TestDaemon) {
    common::wait_until(Duration::from_secs(10), "the TLS trunk up", || async {
        let t: Value = d
            .get("/v1/trunks/trk_tlstrunk")
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        t["health"]["state"] == "up"
    })
    .await;
}

/// RFC 3261 §18.1.1: an OPTIONS probe to a trunk over TLS names our TLS
/// port in Via (and From), not the UDP one; the stand-in trunk (a TLS
/// server with a certificate from the test CA) answers 200 and the trunk's
/// health turns up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_options_probe_over_tls_names_our_tls_port_in_via() {
    let dir = tempfile::tempdir().unwrap();
    let trunk_certs = make_certs(dir.path(), "trunk");
    let our_certs = make_certs(dir.path(), "daemon");
    let (trunk_port, mut probed, trunk) = tls_trunk(&trunk_certs, None).await;
    let tls_port = free_port();
    let d = TestDaemon::builder()
        .sip(&tls_keys(tls_port, &our_certs))
        .profile("tlstrunk", &tls_trunk_profile(trunk_port, &trunk_certs.ca))
        .start()
        .await;
    let (request, _) = tokio::time::timeout(Duration::from_secs(15), probed.recv())
        .await
        .unwrap_or_else(|_| panic!("no OPTIONS over TLS\n{}", d.log()))
        .unwrap();
    assert!(request.starts_with("OPTIONS "), "{request}");
    let via = request
        .lines()
        .find(|l| l.to_ascii_lowercase().starts_with("via:"))
        .unwrap_or_else(|| panic!("no Via: {request}"));
    assert!(
        via.contains(&format!("SIP/2.0/TLS 127.0.0.1:{tls_port}")),
        "Via names our TLS port {tls_port}: {via}"
    );
    wait_trunk_up(&d).await;
    trunk.abort();
}

/// A trunk that requires a client certificate (mutual TLS, as carriers'
/// SBCs do): the daemon's `[sip] tls_client_cert_file` is offered and the
/// trunk comes up; a daemon without one cannot connect, and its trunk
/// never does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trunk_requiring_a_client_certificate_gets_ours() {
    let dir = tempfile::tempdir().unwrap();
    let trunk_certs = make_certs(dir.path(), "trunk");
    let our_certs = make_certs(dir.path(), "daemon");
    let (trunk_port, mut probed, trunk) = tls_trunk(&trunk_certs, Some(&trunk_certs.ca)).await;
    let profile = tls_trunk_profile(trunk_port, &trunk_certs.ca);

    // Without a client certificate: the handshake is refused.
    let bare = TestDaemon::builder()
        .sip(&tls_keys(free_port(), &our_certs))
        .profile("tlstrunk", &profile)
        .start()
        .await;
    let nothing = tokio::time::timeout(Duration::from_secs(4), probed.recv()).await;
    assert!(
        nothing.is_err(),
        "a probe got through without a client certificate"
    );
    let t: Value = bare
        .get("/v1/trunks/trk_tlstrunk")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_ne!(t["health"]["state"], "up", "{t}");
    drop(bare);

    // With ours: the trunk sees it, answers, and the trunk is up.
    let keys = format!(
        "{}\ntls_client_cert_file = \"{}\"\ntls_client_key_file = \"{}\"",
        tls_keys(free_port(), &our_certs),
        our_certs.cert.display(),
        our_certs.key.display()
    );
    let d = TestDaemon::builder()
        .sip(&keys)
        .profile("tlstrunk", &profile)
        .start()
        .await;
    let (request, client_cert) = tokio::time::timeout(Duration::from_secs(15), probed.recv())
        .await
        .unwrap_or_else(|_| panic!("no OPTIONS over mutual TLS\n{}", d.log()))
        .unwrap();
    assert!(request.starts_with("OPTIONS "), "{request}");
    assert!(client_cert, "the trunk saw no client certificate");
    wait_trunk_up(&d).await;
    trunk.abort();
}
