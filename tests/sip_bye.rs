//! The peer's BYE of an established call is answered without an ezk server
//! transaction (`sip::finished`): 200 at once, the call told once, and a
//! retransmitted BYE answered again from the kept response bytes (RFC 3261
//! §17.2.2, Timer J), byte for byte, where the dialog is already gone.

// A test's unwrap, expect or panic is its failure report: the daemon's bans
// (Cargo.toml `[lints]`) do not apply here.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{SDP, events_until, start_stack};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::UdpSocket;

/// The next response whose status is not 1xx, within `wait`.
async fn final_response(socket: &UdpSocket, wait: Duration) -> Option<String> {
    let mut buf = vec![0u8; 65536];
    let deadline = tokio::time::Instant::now() + wait;
    while let Ok(Ok((len, _))) = tokio::time::timeout_at(deadline, socket.recv_from(&mut buf)).await
    {
        let text = String::from_utf8_lossy(&buf[..len]).into_owned();
        if text.starts_with("SIP/2.0 1") {
            continue;
        }
        return Some(text);
    }
    None
}

fn header<'a>(message: &'a str, name: &str) -> Option<&'a str> {
    message.lines().find_map(|line| {
        let (n, v) = line.split_once(':')?;
        n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

fn request(
    method: &str,
    local: SocketAddr,
    target: SocketAddr,
    branch: &str,
    cseq: u32,
    to_tag: Option<&str>,
    body: &str,
) -> String {
    let to_tag = to_tag.map(|t| format!(";tag={t}")).unwrap_or_default();
    let content_type = if body.is_empty() {
        String::new()
    } else {
        "Content-Type: application/sdp\r\n".to_owned()
    };
    format!(
        "{method} sip:+4930111@{target} SIP/2.0\r\n\
         Via: SIP/2.0/UDP {local};branch={branch};rport\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:caller@{local}>;tag=caller1\r\n\
         To: <sip:+4930111@{target}>{to_tag}\r\n\
         Call-ID: bye-without-transaction@test\r\n\
         CSeq: {cseq} {method}\r\n\
         Contact: <sip:caller@{local}>\r\n\
         {content_type}Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

#[tokio::test]
async fn a_bye_is_answered_once_and_its_retransmission_from_the_kept_bytes() {
    let (stack, mut events) = start_stack().await;
    let target = stack.local_addr();
    let socket = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    let local = socket.local_addr().expect("addr");

    let invite = request("INVITE", local, target, "z9hG4bKinv1", 1, None, SDP);
    socket
        .send_to(invite.as_bytes(), target)
        .await
        .expect("send INVITE");
    let ok = final_response(&socket, Duration::from_secs(10))
        .await
        .expect("200 to the INVITE");
    assert!(ok.starts_with("SIP/2.0 200"), "{ok}");
    let to = header(&ok, "To").expect("To");
    let tag = to.split(";tag=").nth(1).expect("To tag").to_owned();
    let ack = request("ACK", local, target, "z9hG4bKack1", 1, Some(&tag), "");
    socket
        .send_to(ack.as_bytes(), target)
        .await
        .expect("send ACK");
    let seen = events_until(&mut events, "answered", Duration::from_secs(10)).await;
    assert_eq!(
        seen.last().map(String::as_str),
        Some("answered"),
        "{seen:?}"
    );

    let bye = request("BYE", local, target, "z9hG4bKbye1", 2, Some(&tag), "");
    socket
        .send_to(bye.as_bytes(), target)
        .await
        .expect("send BYE");
    let first = final_response(&socket, Duration::from_secs(5))
        .await
        .expect("200 to the BYE");
    assert!(first.starts_with("SIP/2.0 200"), "{first}");
    assert!(first.contains("branch=z9hG4bKbye1"), "{first}");
    let seen = events_until(&mut events, "bye", Duration::from_secs(5)).await;
    assert_eq!(seen, ["bye"]);

    // The dialog is gone now: only the kept response can answer this.
    socket
        .send_to(bye.as_bytes(), target)
        .await
        .expect("resend BYE");
    let again = final_response(&socket, Duration::from_secs(5))
        .await
        .expect("200 to the retransmitted BYE");
    assert_eq!(again, first);

    // A new BYE (another branch) for the ended dialog is not ours any more.
    let late = request("BYE", local, target, "z9hG4bKbye2", 3, Some(&tag), "");
    socket
        .send_to(late.as_bytes(), target)
        .await
        .expect("send late BYE");
    let answer = final_response(&socket, Duration::from_secs(5))
        .await
        .expect("answer to the late BYE");
    assert!(answer.starts_with("SIP/2.0 481"), "{answer}");

    // The call heard of the hang-up once.
    let more = events_until(&mut events, "never", Duration::from_millis(300)).await;
    assert!(more.is_empty(), "{more:?}");
}
