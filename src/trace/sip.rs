//! The SIP messages of each call, both directions, with timestamps and
//! transport addresses, kept in memory for `[sip] trace_retain_seconds`
//! and rendered as text or pcap for `GET /v1/calls/{id}/sip-trace`.
//!
//! Where messages come from: what we receive, from a one-line call in the
//! UDP reader of `sip` (after the edge admitted the datagram, so a
//! stranger's flood is not kept); what we send, from the `log` records of
//! ezk-sip-core, which writes every message it sends (requests, responses,
//! ACKs and retransmissions) at trace level with its destination, and has
//! no other hook. The logger installed here takes only that target.
//!
//! Bounds: a message is kept only when it belongs to a dialog-forming or
//! in-dialog method (not OPTIONS, REGISTER and the like); a call keeps at
//! most [`PER_CALL_BYTES`] (later messages are dropped and counted), and
//! all calls together [`TOTAL_BYTES`] (the oldest call is forgotten first).
//!
//! Credentials: the `response` of an `Authorization` or
//! `Proxy-Authorization` header (RFC 3261 §22, RFC 2617 §3.2.2) is replaced
//! before a message is kept. With the nonce, realm and username beside it,
//! it is what an offline guess of the trunk's password needs, and the trace
//! is readable by `read` keys.
//!
//! Must not: block or fail the SIP path; a message that does not fit is
//! dropped.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use super::pcap;

/// Most bytes of SIP kept for one call.
pub const PER_CALL_BYTES: usize = 256 * 1024;
/// Most bytes of SIP kept for all calls together.
pub const TOTAL_BYTES: usize = 64 * 1024 * 1024;
/// The module ezk-sip-core logs every sent message from.
const EZK_SEND_TARGET: &str = "ezk_sip_core::endpoint";

/// Which way a message went, seen from us.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Received,
    Sent,
}

/// One SIP message as it crossed our transport.
#[derive(Debug, Clone)]
pub struct Message {
    pub at: SystemTime,
    pub direction: Direction,
    pub transport: &'static str,
    pub from: SocketAddr,
    pub to: SocketAddr,
    pub bytes: Vec<u8>,
}

#[derive(Debug, Default)]
struct CallTrace {
    last: Option<Instant>,
    messages: Vec<Message>,
    bytes: usize,
    dropped: u64,
}

#[derive(Debug, Default)]
struct Inner {
    calls: HashMap<String, CallTrace>,
    /// SIP Call-IDs in the order they were first seen: the eviction order.
    order: VecDeque<String>,
    total: usize,
}

/// The trace store of this process.
#[derive(Debug)]
pub struct SipTraces {
    /// Our SIP address as seen by peers, for the side of each message that
    /// is us.
    local: SocketAddr,
    retain: Duration,
    per_call: usize,
    total: usize,
    inner: Mutex<Inner>,
}

static TRACES: OnceLock<SipTraces> = OnceLock::new();

/// The store, when `[sip] trace` is on.
pub fn traces() -> Option<&'static SipTraces> {
    TRACES.get()
}

/// Turns tracing on for this process: from now on the SIP messages of
/// calls are kept. `local` is our SIP address as peers see it. A second
/// call changes nothing (one process, one store).
pub fn install(local: SocketAddr, retain: Duration) {
    if TRACES
        .set(SipTraces::new(local, retain, PER_CALL_BYTES, TOTAL_BYTES))
        .is_err()
    {
        return;
    }
    // Nothing else in the daemon installs a `log` logger (it writes through
    // tracing); if something did, sent messages are not traced and we say so.
    if log::set_logger(&SEND_HOOK).is_ok() {
        log::set_max_level(log::LevelFilter::Trace);
    } else {
        tracing::warn!("a log logger is already installed: sent SIP messages are not traced");
    }
}

/// Keeps a message received on `transport` from `from` (the one line the
/// SIP readers call). Does nothing when tracing is off.
pub fn received(transport: &'static str, from: SocketAddr, raw: &[u8]) {
    if let Some(traces) = traces() {
        traces.record(Direction::Received, transport, from, traces.local, raw);
    }
}

impl SipTraces {
    pub fn new(local: SocketAddr, retain: Duration, per_call: usize, total: usize) -> Self {
        SipTraces {
            local,
            retain,
            per_call,
            total,
            inner: Mutex::new(Inner::default()),
        }
    }

    fn inner(&self) -> MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Keeps one message if it belongs to a call and fits.
    pub fn record(
        &self,
        direction: Direction,
        transport: &'static str,
        from: SocketAddr,
        to: SocketAddr,
        raw: &[u8],
    ) {
        let Some((call_id, method)) = call_id_and_method(raw) else {
            return;
        };
        if !traced_method(method) {
            return;
        }
        let now = Instant::now();
        let message = Message {
            at: SystemTime::now(),
            direction,
            transport,
            from,
            to,
            bytes: redact_credentials(raw),
        };
        let mut inner = self.inner();
        self.expire(&mut inner, now);
        let size = raw.len();
        if !inner.calls.contains_key(call_id) {
            inner.order.push_back(call_id.to_owned());
        }
        let call = inner.calls.entry(call_id.to_owned()).or_default();
        call.last = Some(now);
        if call.bytes + size > self.per_call {
            call.dropped += 1;
            return;
        }
        call.bytes += size;
        call.messages.push(message);
        inner.total += size;
        // Forget the oldest calls until the whole fits again; the one just
        // recorded goes last, so only when it alone exceeds the total.
        while inner.total > self.total {
            let Some(oldest) = inner.order.pop_front() else {
                break;
            };
            if let Some(gone) = inner.calls.remove(&oldest) {
                inner.total -= gone.bytes;
            }
        }
    }

    /// Drops the calls not heard of for longer than the retention.
    fn expire(&self, inner: &mut Inner, now: Instant) {
        while let Some(oldest) = inner.order.front() {
            let stale = inner
                .calls
                .get(oldest)
                .is_none_or(|c| c.last.is_none_or(|l| now.duration_since(l) > self.retain));
            if !stale {
                // Order is by first sight, not last: a live old call stops
                // the sweep; the total cap still bounds what is kept.
                break;
            }
            if let Some(gone) = inner.calls.remove(oldest) {
                inner.total -= gone.bytes;
            }
            inner.order.pop_front();
        }
    }

    /// The messages of the call with this SIP Call-ID, oldest first, and
    /// how many were dropped over the cap.
    pub fn get(&self, sip_call_id: &str) -> Option<(Vec<Message>, u64)> {
        let mut inner = self.inner();
        self.expire(&mut inner, Instant::now());
        inner
            .calls
            .get(sip_call_id)
            .map(|c| (c.messages.clone(), c.dropped))
    }
}

/// Methods whose messages belong to a call (by CSeq).
fn traced_method(method: &str) -> bool {
    matches!(
        method,
        "INVITE" | "ACK" | "BYE" | "CANCEL" | "PRACK" | "UPDATE" | "INFO" | "REFER" | "NOTIFY"
    )
}

/// The Call-ID and the CSeq method of a SIP message (RFC 3261 §20.8 and
/// §20.16; `i` is Call-ID's compact form), read from its header lines.
pub fn call_id_and_method(raw: &[u8]) -> Option<(&str, &str)> {
    let head_end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or(raw.len());
    let head = std::str::from_utf8(&raw[..head_end]).ok()?;
    let mut call_id = None;
    let mut method = None;
    for line in head.split("\r\n").skip(1) {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let name = name.trim();
        if name.eq_ignore_ascii_case("call-id") || name.eq_ignore_ascii_case("i") {
            call_id = Some(value.trim());
        } else if name.eq_ignore_ascii_case("cseq") {
            method = value.split_whitespace().nth(1);
        }
    }
    Some((call_id.filter(|c| !c.is_empty())?, method?))
}

/// What is written instead of a digest response.
const REDACTED: &str = "\"redacted\"";

/// The message with the `response` parameter of each `Authorization` and
/// `Proxy-Authorization` header replaced; folded header lines (RFC 3261
/// §7.3.1) count as part of the header above them. In the body, only SDES
/// keys are overwritten.
fn redact_credentials(raw: &[u8]) -> Vec<u8> {
    let head_end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or(raw.len());
    let Ok(head) = std::str::from_utf8(&raw[..head_end]) else {
        // Not text: nothing we could parse as a credential, and no header
        // reader would either. Kept as received.
        return raw.to_vec();
    };
    let mut out = String::with_capacity(head.len());
    let mut in_credentials = false;
    for (i, line) in head.split("\r\n").enumerate() {
        if i > 0 {
            out.push_str("\r\n");
        }
        let folded = line.starts_with([' ', '\t']);
        if !folded {
            in_credentials = line.split_once(':').is_some_and(|(name, _)| {
                let name = name.trim();
                name.eq_ignore_ascii_case("authorization")
                    || name.eq_ignore_ascii_case("proxy-authorization")
            });
        }
        if in_credentials {
            out.push_str(&redact_response(line));
        } else {
            out.push_str(line);
        }
    }
    let mut bytes = out.into_bytes();
    bytes.extend_from_slice(&redact_sdes_keys(&raw[head_end..]));
    bytes
}

/// The body with the key of every SDP `a=crypto` line (RFC 4568 §6.1,
/// `inline:` key and salt) overwritten with `X`s of the same length, so
/// that Content-Length stays true: with the key and a capture, a `read`
/// key could decrypt the call's SRTP.
fn redact_sdes_keys(body: &[u8]) -> std::borrow::Cow<'_, [u8]> {
    const INLINE: &[u8] = b"inline:";
    if !body.windows(INLINE.len()).any(|w| w == INLINE) {
        return std::borrow::Cow::Borrowed(body);
    }
    let mut out = body.to_vec();
    let mut line_start = 0;
    while line_start < out.len() {
        let line_end = out[line_start..]
            .iter()
            .position(|&b| b == b'\n')
            .map_or(out.len(), |n| line_start + n);
        if out[line_start..line_end].starts_with(b"a=crypto:") {
            let mut at = line_start;
            while let Some(found) = out[at..line_end]
                .windows(INLINE.len())
                .position(|w| w == INLINE)
            {
                at += found + INLINE.len();
                while at < line_end
                    && (out[at].is_ascii_alphanumeric() || matches!(out[at], b'+' | b'/' | b'='))
                {
                    out[at] = b'X';
                    at += 1;
                }
            }
        }
        line_start = line_end + 1;
    }
    std::borrow::Cow::Owned(out)
}

/// One header line with every `response=` value (quoted string or token)
/// replaced by [`REDACTED`].
fn redact_response(line: &str) -> String {
    let lower = line.to_ascii_lowercase();
    let mut out = String::with_capacity(line.len());
    let mut at = 0;
    while let Some(found) = lower[at..].find("response") {
        let start = at + found;
        // A parameter name starts after a separator, not inside a word or
        // a quoted value (`x-response`, `cnonce="response=..."`).
        let boundary = lower[..start]
            .chars()
            .next_back()
            .is_none_or(|c| c == ',' || c == ' ' || c == '\t' || c == ':');
        let after = start + "response".len();
        let rest = &line[after..];
        let eq = rest.len() - rest.trim_start().len();
        if !boundary || !rest[eq..].starts_with('=') {
            out.push_str(&line[at..after]);
            at = after;
            continue;
        }
        let value_start = after + eq + 1;
        let value = &line[value_start..];
        let lead = value.len() - value.trim_start().len();
        let value = &value[lead..];
        let len = if let Some(quoted) = value.strip_prefix('"') {
            quoted.find('"').map_or(value.len(), |end| end + 2)
        } else {
            value.find([',', ' ', '\t']).unwrap_or(value.len())
        };
        out.push_str(&line[at..value_start + lead]);
        out.push_str(REDACTED);
        at = value_start + lead + len;
    }
    out.push_str(&line[at..]);
    out
}

/// The messages as text: a line per message saying when, which way and
/// between which addresses, then the message as it was on the wire.
pub fn render_text(messages: &[Message], dropped: u64) -> String {
    let mut out = String::new();
    for m in messages {
        let at = chrono::DateTime::<chrono::Utc>::from(m.at)
            .format("%Y-%m-%dT%H:%M:%S%.6fZ")
            .to_string();
        let way = match m.direction {
            Direction::Received => "received",
            Direction::Sent => "sent",
        };
        out.push_str(&format!(
            "{at} {way} {} {} -> {}\n",
            m.transport, m.from, m.to
        ));
        out.push_str(&String::from_utf8_lossy(&m.bytes));
        if !m.bytes.ends_with(b"\n") {
            out.push('\n');
        }
        out.push('\n');
    }
    if dropped > 0 {
        out.push_str(&format!(
            "({dropped} more messages over the per-call cap were not kept)\n"
        ));
    }
    out
}

/// The messages as a pcap file.
pub fn render_pcap(messages: &[Message]) -> Vec<u8> {
    let mut out = pcap::header();
    for m in messages {
        pcap::record(&mut out, m.at, m.from, m.to, &m.bytes);
    }
    out
}

/// Takes the messages ezk-sip-core logs as it sends them.
struct SendHook;

static SEND_HOOK: SendHook = SendHook;

impl log::Log for SendHook {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        metadata.level() == log::Level::Trace && metadata.target() == EZK_SEND_TARGET
    }

    fn log(&self, record: &log::Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let Some(traces) = traces() else {
            return;
        };
        let text = record.args().to_string();
        if let Some((to, bytes)) = parse_send_record(&text) {
            traces.record(Direction::Sent, "UDP", traces.local, to, &bytes);
        }
    }

    fn flush(&self) {}
}

/// Reads ezk's "Sending request to ADDR\n<message>" record back into the
/// destination and the exact bytes (undoing its `BytesPrint` escapes).
fn parse_send_record(text: &str) -> Option<(SocketAddr, Vec<u8>)> {
    let rest = text
        .strip_prefix("Sending request to ")
        .or_else(|| text.strip_prefix("Sending response to "))?;
    let (addr, printed) = rest.split_once('\n')?;
    let to: SocketAddr = addr.trim().parse().ok()?;
    Some((to, unescape(printed)?))
}

/// The inverse of ezk-sip-types' `BytesPrint`: `\n` (followed by a real
/// newline it adds for readability), `\r`, `\t`, `\\`, `\"`, `\0` and
/// `\xHH`; everything else is printable ASCII as is.
fn unescape(printed: &str) -> Option<Vec<u8>> {
    let bytes = printed.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        i += 1;
        if b == b'\n' {
            // The readability newline after an escaped `\n`.
            continue;
        }
        if b != b'\\' {
            out.push(b);
            continue;
        }
        let escape = *bytes.get(i)?;
        i += 1;
        out.push(match escape {
            b'n' => b'\n',
            b'r' => b'\r',
            b't' => b'\t',
            b'0' => 0,
            b'\\' | b'"' => escape,
            b'x' => {
                let hex = printed.get(i..i + 2)?;
                i += 2;
                u8::from_str_radix(hex, 16).ok()?
            }
            _ => return None,
        });
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const INVITE: &[u8] = b"INVITE sip:a@b SIP/2.0\r\nVia: SIP/2.0/UDP x\r\nCall-ID: abc@h\r\nCSeq: 1 INVITE\r\n\r\nv=0\r\n";

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn sdes_keys_are_overwritten_and_the_length_kept() {
        let raw = b"INVITE sip:a@b SIP/2.0\r\nContent-Length: 99\r\n\r\nv=0\r\n\
            a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz|2^20\r\n\
            a=x-inline:keep\r\n";
        let out = redact_credentials(raw);
        let text = String::from_utf8(out.clone()).unwrap();
        assert_eq!(out.len(), raw.len());
        assert!(
            text.contains(&format!("inline:{}|2^20\r\n", "X".repeat(40))),
            "{text}"
        );
        assert!(!text.contains("WVNf"));
        assert!(text.contains("a=x-inline:keep"));
    }

    #[test]
    fn reads_call_id_and_method_in_either_form() {
        assert_eq!(call_id_and_method(INVITE), Some(("abc@h", "INVITE")));
        let compact = b"SIP/2.0 200 OK\r\ni: z\r\nCSeq: 2 BYE\r\n\r\n";
        assert_eq!(call_id_and_method(compact), Some(("z", "BYE")));
        assert_eq!(call_id_and_method(b"garbage"), None);
    }

    #[test]
    fn undoes_bytes_print() {
        let printed = "A\\r\\n\nB\\t\\\"\\\\\\x01\\0";
        assert_eq!(unescape(printed).unwrap(), b"A\r\nB\t\"\\\x01\0");
        let (to, bytes) =
            parse_send_record("Sending response to 10.0.0.1:5070\nSIP/2.0 200 OK\\r\\n\n").unwrap();
        assert_eq!(to, addr("10.0.0.1:5070"));
        assert_eq!(bytes, b"SIP/2.0 200 OK\r\n");
        assert!(parse_send_record("Something else").is_none());
    }

    #[test]
    fn caps_per_call_and_total_and_skips_options() {
        // INVITE is 88 bytes, each BYE below 53.
        let traces = SipTraces::new(addr("10.0.0.1:5060"), Duration::from_secs(60), 100, 150);
        let peer = addr("10.0.0.2:5060");
        traces.record(Direction::Received, "UDP", peer, traces.local, INVITE);
        traces.record(Direction::Received, "UDP", peer, traces.local, INVITE);
        let (messages, dropped) = traces.get("abc@h").unwrap();
        assert_eq!(messages.len(), 1);
        assert_eq!(dropped, 1);
        let options = b"OPTIONS sip:a SIP/2.0\r\nCall-ID: o\r\nCSeq: 1 OPTIONS\r\n\r\n";
        traces.record(Direction::Received, "UDP", peer, traces.local, options);
        assert!(traces.get("o").is_none());
        let second = b"BYE sip:a SIP/2.0\r\nCall-ID: second\r\nCSeq: 2 BYE\r\n\r\n";
        traces.record(Direction::Sent, "UDP", traces.local, peer, second);
        assert!(traces.get("abc@h").is_some());
        // A third call over the total forgets the oldest.
        let third = b"BYE sip:a SIP/2.0\r\nCall-ID: third\r\nCSeq: 2 BYE\r\n\r\n";
        traces.record(Direction::Sent, "UDP", traces.local, peer, third);
        assert!(traces.get("abc@h").is_none());
        assert_eq!(traces.get("second").unwrap().0.len(), 1);
        assert_eq!(traces.get("third").unwrap().0.len(), 1);
    }

    #[test]
    fn forgets_calls_after_the_retention() {
        let traces = SipTraces::new(addr("10.0.0.1:5060"), Duration::ZERO, 1000, 1000);
        traces.record(
            Direction::Received,
            "UDP",
            addr("10.0.0.2:1"),
            traces.local,
            INVITE,
        );
        std::thread::sleep(Duration::from_millis(2));
        assert!(traces.get("abc@h").is_none());
    }

    #[test]
    fn digest_responses_are_not_kept() {
        let raw = b"INVITE sip:a@b SIP/2.0\r\nCall-ID: c1\r\nCSeq: 2 INVITE\r\n\
Authorization: Digest username=\"u\", realm=\"r\", nonce=\"n\", cnonce=\"response=x\",\r\n \
response=\"0123456789abcdef\", qop=auth\r\n\
proxy-authorization: Digest response = deadbeef,username=\"u\"\r\n\
X-Note: response=\"kept\"\r\n\r\nresponse=\"body\"";
        let traces = SipTraces::new(addr("10.0.0.1:5060"), Duration::from_secs(60), 4096, 4096);
        traces.record(
            Direction::Sent,
            "UDP",
            traces.local,
            addr("10.0.0.2:5060"),
            raw,
        );
        let (messages, _) = traces.get("c1").unwrap();
        let kept = String::from_utf8(messages[0].bytes.clone()).unwrap();
        assert!(!kept.contains("0123456789abcdef"), "{kept}");
        assert!(!kept.contains("deadbeef"), "{kept}");
        assert!(kept.contains(" response=\"redacted\", qop=auth"), "{kept}");
        assert!(
            kept.contains("Digest response = \"redacted\",username=\"u\""),
            "{kept}"
        );
        assert!(kept.contains("cnonce=\"response=x\""), "{kept}");
        assert!(kept.contains("X-Note: response=\"kept\""), "{kept}");
        assert!(kept.ends_with("\r\n\r\nresponse=\"body\""), "{kept}");
    }

    #[test]
    fn text_names_direction_and_addresses() {
        let traces = SipTraces::new(addr("10.0.0.1:5060"), Duration::from_secs(60), 1000, 1000);
        traces.record(
            Direction::Received,
            "UDP",
            addr("10.0.0.2:5070"),
            traces.local,
            INVITE,
        );
        let (messages, dropped) = traces.get("abc@h").unwrap();
        let text = render_text(&messages, dropped);
        assert!(text.contains("received UDP 10.0.0.2:5070 -> 10.0.0.1:5060\nINVITE sip:a@b"));
        let pcap = render_pcap(&messages);
        assert_eq!(pcap.len(), 24 + 16 + 28 + INVITE.len());
    }
}
