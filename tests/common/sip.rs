//! SIP test helpers: running SIPp with a timeout, and a
//! scripted inbound handler that reports what happened on a channel.

use agentline::sip::{
    Admission, DialogEvent, InboundHandler, IncomingInvite, Rejection, RequestSource, SipConfig,
    SipStack,
};
use bytes::Bytes;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// An SDP for peers that never look at RTP. Its media port is the discard
/// port (9): the daemon sends silence from the answer on, and that must not
/// land on a port a parallel test's daemon may own.
pub const SDP: &str = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 9 RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:101 telephone-event/8000\r\n";

pub fn scenario(name: &str) -> String {
    let path: PathBuf = [env!("CARGO_MANIFEST_DIR"), "tests", "sipp", name]
        .iter()
        .collect();
    assert!(path.exists(), "missing scenario {}", path.display());
    path.display().to_string()
}

/// Fails the test loudly when SIPp is missing (never a silent skip).
pub fn require_sipp() {
    let found = std::process::Command::new("sipp")
        .arg("-v")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    assert!(
        found,
        "sipp is not installed: apt-get install -y --no-install-recommends sip-tester"
    );
}

/// Whether a socket is bound to UDP `port` (any address), as the kernel's
/// socket tables say: reading them takes nothing from the peer, where a
/// probe bind could take the port before the peer does.
fn udp_bound(port: u16) -> bool {
    ["/proc/net/udp", "/proc/net/udp6"].iter().any(|table| {
        std::fs::read_to_string(table)
            .unwrap_or_default()
            .lines()
            .skip(1)
            .filter_map(|line| line.split_whitespace().nth(1)?.rsplit_once(':'))
            .any(|(_, p)| u16::from_str_radix(p, 16) == Ok(port))
    })
}

/// Waits (at most 10 s) until a peer started on UDP `port`, such as SIPp,
/// has bound it: from then on a request sent to it waits in its socket.
///
/// Panics after that, with what SIPp printed if a run on that port ended.
pub async fn wait_for_udp_listener(port: u16) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !udp_bound(port) {
        if tokio::time::Instant::now() >= deadline {
            let exit = exits()
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(&port)
                .cloned()
                .unwrap_or_else(|| "no SIPp run on it has ended".to_owned());
            panic!("nothing bound UDP port {port} within 10 s; the last SIPp there: {exit}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The outcome of one SIPp run.
pub struct SippRun {
    pub success: bool,
    pub output: String,
}

/// Runs SIPp for one call with `scenario` on 127.0.0.1:`local_port`,
/// `remote` as target if given, killed after `limit`.
pub async fn run_sipp(
    scenario_name: &str,
    local_port: u16,
    remote: Option<SocketAddr>,
    extra: &[&str],
    limit: Duration,
) -> SippRun {
    require_sipp();
    let mut extra: Vec<String> = extra.iter().map(|a| (*a).to_owned()).collect();
    let mut tries = 0;
    loop {
        tries += 1;
        let run = run_sipp_once(scenario_name, local_port, remote, &extra, limit).await;
        // SIPp exits at once when its media port or the one two above is
        // taken (a parallel test's peer got there between the pick and
        // SIPp's bind): that run never began, so it runs again on another.
        let media_taken =
            run.output.contains("Unable to bind") && run.output.contains("RTP socket");
        let media_arg = extra.iter().position(|a| a == "-mp");
        match media_arg {
            Some(i) if media_taken && tries < 3 && i + 1 < extra.len() => {
                extra[i + 1] = super::free_udp_port().to_string();
            }
            _ => {
                exits()
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(local_port, run.output.clone());
                return run;
            }
        }
    }
}

/// What the last SIPp run on each local port printed, for the wait on its
/// bind to say why the port never came up.
fn exits() -> &'static std::sync::Mutex<std::collections::HashMap<u16, String>> {
    static EXITS: std::sync::OnceLock<std::sync::Mutex<std::collections::HashMap<u16, String>>> =
        std::sync::OnceLock::new();
    EXITS.get_or_init(Default::default)
}

async fn run_sipp_once(
    scenario_name: &str,
    local_port: u16,
    remote: Option<SocketAddr>,
    extra: &[String],
    limit: Duration,
) -> SippRun {
    let mut command = tokio::process::Command::new("sipp");
    if let Some(remote) = remote {
        command.arg(remote.to_string());
    }
    command
        .args(["-sf", &scenario(scenario_name)])
        .args(["-i", "127.0.0.1", "-p", &local_port.to_string()])
        .args(["-m", "1", "-nostdin", "-timeout"])
        .arg(format!("{}s", limit.as_secs().max(1)))
        .arg("-timeout_error")
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let child = command.spawn().expect("spawn sipp");
    match tokio::time::timeout(limit + Duration::from_secs(5), child.wait_with_output()).await {
        Ok(Ok(out)) => SippRun {
            success: out.status.success(),
            output: format!(
                "exit {:?}\n{}\n{}",
                out.status.code(),
                String::from_utf8_lossy(&out.stdout)
                    .lines()
                    .rev()
                    .take(40)
                    .collect::<Vec<_>>()
                    .into_iter()
                    .rev()
                    .collect::<Vec<_>>()
                    .join("\n"),
                String::from_utf8_lossy(&out.stderr)
            ),
        },
        Ok(Err(e)) => panic!("sipp failed to run: {e}"),
        Err(_) => SippRun {
            success: false,
            output: "sipp did not exit in time (killed)".to_owned(),
        },
    }
}

/// Inbound handler driven by the dialled user (Request-URI):
/// - `blocked*` rejected 403 (the decision the call layer makes for a
///   source no trunk allows when it answers rather than drops)
/// - `ring*` rings and waits for CANCEL
/// - `+*` rings, answers and serves the call until BYE, answering
///   re-INVITEs with the same SDP
/// - anything else is an unknown number: 404.
///
/// With `drop_all`, no request is admitted (silence).
pub struct ScriptedHandler {
    pub events: mpsc::UnboundedSender<String>,
    pub drop_all: bool,
}

impl InboundHandler for ScriptedHandler {
    fn admit(&self, _source: &RequestSource) -> Admission {
        if self.drop_all {
            Admission::Drop
        } else {
            Admission::Admit
        }
    }

    fn on_invite(&self, mut invite: IncomingInvite) {
        let events = self.events.clone();
        tokio::spawn(async move {
            let user = invite.info().request_user.clone().unwrap_or_default();
            let _ = events.send(format!("invite {user}"));
            if user.starts_with("blocked") {
                invite.reject(Rejection::new(403)).await.expect("reject");
                return;
            }
            if !user.starts_with('+') && !user.starts_with("ring") {
                invite.reject(Rejection::new(404)).await.expect("reject");
                return;
            }
            invite.ring(None).await.expect("ring");
            if user.starts_with("ring") {
                invite.cancelled().await;
                let _ = events.send("cancelled".to_owned());
                return;
            }
            let mut call = match invite.accept(Bytes::from_static(SDP.as_bytes())).await {
                Ok((call, _)) => call,
                Err(e) => {
                    let _ = events.send(format!("accept failed: {e}"));
                    return;
                }
            };
            let _ = events.send("answered".to_owned());
            loop {
                match call.next_event().await {
                    Ok(DialogEvent::Bye) => {
                        let _ = events.send("bye".to_owned());
                        return;
                    }
                    Ok(DialogEvent::ReInvite(re)) => {
                        let _ = events.send(format!("reinvite offer={}", re.sdp_offer.is_some()));
                        call.answer_reinvite(re, Bytes::from_static(SDP.as_bytes()))
                            .await
                            .expect("answer re-INVITE");
                        let _ = events.send("reinvite answered".to_owned());
                    }
                    Ok(DialogEvent::Info { .. }) => {
                        let _ = events.send("info".to_owned());
                    }
                    Ok(DialogEvent::ReferProgress(code)) => {
                        let _ = events.send(format!("refer progress {code}"));
                    }
                    Ok(DialogEvent::SessionExpired) => {
                        let _ = events.send("session expired".to_owned());
                        return;
                    }
                    Ok(DialogEvent::Terminated) | Err(_) => {
                        let _ = events.send("terminated".to_owned());
                        return;
                    }
                }
            }
        });
    }
}

/// A stack on 127.0.0.1:0 with a [`ScriptedHandler`].
pub async fn start_stack() -> (SipStack, mpsc::UnboundedReceiver<String>) {
    start_stack_with(false).await
}

pub async fn start_stack_with(drop_all: bool) -> (SipStack, mpsc::UnboundedReceiver<String>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let config = SipConfig::new("127.0.0.1:0".parse().expect("addr"));
    let stack = SipStack::start(
        config,
        Arc::new(ScriptedHandler {
            events: tx,
            drop_all,
        }),
    )
    .await
    .expect("start stack");
    (stack, rx)
}

/// A stack with `config` (e.g. a short T1) and a [`ScriptedHandler`].
pub async fn start_stack_config(config: SipConfig) -> (SipStack, mpsc::UnboundedReceiver<String>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let stack = SipStack::start(
        config,
        Arc::new(ScriptedHandler {
            events: tx,
            drop_all: false,
        }),
    )
    .await
    .expect("start stack");
    (stack, rx)
}

/// Collect events until `last` is seen or the time is up.
pub async fn events_until(
    rx: &mut mpsc::UnboundedReceiver<String>,
    last: &str,
    limit: Duration,
) -> Vec<String> {
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + limit;
    while let Ok(Some(event)) = tokio::time::timeout_at(deadline, rx.recv()).await {
        let done = event == last;
        seen.push(event);
        if done {
            break;
        }
    }
    seen
}
