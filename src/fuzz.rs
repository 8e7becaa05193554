//! Fuzz entries: one function per parser that takes bytes from outside,
//! each taking arbitrary bytes and returning nothing. A panic (or an abort,
//! a hang, a runaway allocation) is the only failure.
//!
//! Owns: driving each parser the way the daemon does, from raw input, with
//! no IO and no clock (time is made up from the input). Shared by the
//! bounded CI run (`tests/fuzz.rs`) and the coverage-guided one (`fuzz/`,
//! `bench/fuzz.sh`), so both exercise the same paths.
//!
//! Must not: open sockets, files or tasks, or hold state between calls.
//! Not part of the daemon's interface: hidden from the docs.

use std::time::{Duration, Instant};

use ezk_sip_types::header::typed::{
    CSeq, CallID, Contact, ContentLength, ContentType, FromTo, MaxForwards, Require, Via,
};
use ezk_sip_types::msg::{Line, MessageLine, PullParser};
use ezk_sip_types::parse::Parse;
use ezk_sip_types::print::AppendCtx;
use ezk_sip_types::{Headers, Method, Name};
use rtp_rs::RtpReader;

use crate::agent::brain::openai::Assembler;
use crate::agent::chunker::{Chunker, ChunkerConfig};
use crate::campaign::csv::{ContactColumns, CsvStream};
use crate::media::jitter::{JitterBuffer, JitterConfig, Playout, RtpPacket};
use crate::media::latch::{Latch, LatchPolicy, Verdict};
use crate::media::{Codec, Digit, Direction, LocalSdp, dtmf::DtmfDecoder};

/// A fuzz target: takes any bytes, panics only on a bug.
pub type Target = fn(&[u8]);

/// Every target by name, for the harnesses.
pub const TARGETS: &[(&str, Target)] = &[
    ("sip_datagram", sip_datagram),
    ("sdp", sdp),
    ("rtp_dtmf", rtp_dtmf),
    ("sip_info", sip_info),
    ("contact_csv", contact_csv),
    ("chunker", chunker),
    ("llm_stream", llm_stream),
    ("wav", wav),
];

/// A SIP datagram as the UDP receive path takes it: our normalising and
/// screening (`sip::lint`), ezk's message parser
/// (request or status line, header lines, Content-Length and the body, as
/// ezk's UDP transport frames it), the base headers every transaction
/// needs (RFC 3261 §8.1.1), the headers `sip::guard` vets before any
/// transaction (§8.2), and for a new INVITE what `sip::inbound` reads: the
/// URIs' users and the SDP offer, answered as the call would answer it;
/// for INFO, the DTMF body.
pub fn sip_datagram(data: &[u8]) {
    // The receive path's own steps first (normalise, screen, a stateless
    // answer never larger than the request), then what ezk parses.
    let normalized = crate::sip::receive_path_for_fuzzing(data);
    let data = normalized.as_slice();
    let buffer = bytes::Bytes::copy_from_slice(data);
    let mut parser = PullParser::new(&buffer, 0);
    let mut first: Option<MessageLine> = None;
    let mut headers = Headers::new();
    for item in &mut parser {
        let Ok(line) = item else { return };
        let Ok(line) = std::str::from_utf8(line) else {
            return;
        };
        if first.is_none() {
            let Ok((_, parsed)) = MessageLine::parse(&buffer)(line) else {
                return;
            };
            first = Some(parsed);
        } else {
            let Ok((_, header)) = Line::parse(&buffer, line) else {
                return;
            };
            headers.insert(header.name, header.value);
        }
    }
    let Some(MessageLine::Request(request_line)) = first else {
        return;
    };
    let head_end = parser.head_end();
    // The body: Content-Length bytes after the head, or the rest of the
    // datagram without a usable Content-Length (RFC 3261 §18.3). Checked:
    // ezk-sip-core 0.9.2's own UDP reader adds unchecked and panics on a
    // Content-Length near `usize::MAX`, which ends its receive task.
    let body = match headers.get_named::<ContentLength>() {
        Ok(length) => match head_end.checked_add(length.0) {
            Some(end) if end <= buffer.len() => buffer.slice(head_end..end),
            _ => return,
        },
        Err(_) => buffer.slice(head_end.min(buffer.len())..),
    };
    let (Ok(_via), Ok(from), Ok(to), Ok(call_id), Ok(cseq)) = (
        headers.get_named::<Vec<Via>>(),
        headers.get::<FromTo>(Name::FROM),
        headers.get::<FromTo>(Name::TO),
        headers.get_named::<CallID>(),
        headers.get_named::<CSeq>(),
    ) else {
        return;
    };
    let _ = call_id.0.len();
    let _ = cseq.method == request_line.method;
    let _ = headers.try_get_named::<MaxForwards>();
    let _ = headers.try_get_named::<Vec<Require>>();
    let content_type = headers.try_get_named::<ContentType>();
    let _ = headers.get_raw(&Name::CONTENT_LENGTH).count();
    if request_line.method == Method::INVITE {
        let _ = headers.try_get_named::<Contact>();
        let _ = from.tag.is_some() && to.tag.is_none();
        for uri in [&from.uri.uri, &to.uri.uri, &request_line.uri] {
            let _ = uri.default_print_ctx().to_string();
        }
        for (name, value) in headers.iter() {
            let _ = (name.as_print_str().len(), value.len());
        }
        if let Some(Ok(_)) = &content_type {
            answer(&body);
        }
    } else if request_line.method == Method::INFO
        && let Some(Ok(ct)) = &content_type
    {
        let _ = Digit::from_sip_info(&ct.0, &body);
    }
}

/// Answers `offer` as an inbound call does, then reads it back as the
/// answer to our own offer, as an outbound call does.
fn answer(offer: &[u8]) {
    let mut local = LocalSdp::new(
        std::net::Ipv4Addr::LOCALHOST.into(),
        20_000,
        vec![Codec::Pcmu, Codec::Pcma],
    );
    if let Ok((ours, negotiated)) = local.answer(offer, Direction::SendRecv) {
        // What we write must read back.
        assert!(
            LocalSdp::new(
                std::net::Ipv4Addr::LOCALHOST.into(),
                20_002,
                vec![Codec::Pcmu, Codec::Pcma]
            )
            .answer(ours.as_bytes(), Direction::SendRecv)
            .is_ok(),
            "our answer does not parse: {ours}"
        );
        let _ = negotiated.direction.sends();
    }
    let mut outbound = LocalSdp::new(
        std::net::Ipv4Addr::LOCALHOST.into(),
        20_004,
        vec![Codec::Pcma],
    );
    let _ = outbound.offer(Direction::SendRecv);
    let _ = outbound.accept_answer(offer);
}

/// An SDP body, as an offer (inbound call, re-INVITE) and as an answer to
/// our offer (outbound call, late offer) (RFC 3264).
pub fn sdp(data: &[u8]) {
    answer(data);
}

/// A stream of RTP datagrams through the session's receive path: the RTP
/// header (RFC 3550 §5.1), source pinning, RFC 4733 events to the DTMF
/// decoder, audio through the jitter buffer and G.711 decode, playout.
///
/// Input: records of `[length][source][arrival step in ms][datagram]`;
/// `source` picks one of four addresses, the ms step advances the clock.
pub fn rtp_dtmf(data: &[u8]) {
    const SOURCES: [&str; 4] = [
        "127.0.0.1:4000",
        "127.0.0.1:4002",
        "127.0.0.2:4000",
        "[::1]:4000",
    ];
    let signalled = SOURCES[0].parse().ok();
    let mut latch = Latch::new(LatchPolicy::SignalledHost, signalled);
    let mut jitter = JitterBuffer::new(JitterConfig::default());
    let mut dtmf = DtmfDecoder::new();
    let start = Instant::now();
    let mut now = start;
    let mut rest = data;
    let mut pcm = Vec::new();
    while let [length, source, step, tail @ ..] = rest {
        let length = usize::from(*length).min(tail.len());
        let (datagram, tail) = tail.split_at(length);
        rest = tail;
        now += Duration::from_millis(u64::from(*step));
        let Ok(from) = SOURCES[usize::from(*source) % SOURCES.len()].parse() else {
            continue;
        };
        let Ok(rtp) = RtpReader::new(datagram) else {
            continue;
        };
        if matches!(
            latch.on_packet(from, rtp.ssrc(), rtp.mark()),
            Verdict::Rejected(_)
        ) {
            continue;
        }
        let sequence: u16 = rtp.sequence_number().into();
        if rtp.payload_type() == 101 {
            let _ = dtmf.push(rtp.ssrc(), rtp.timestamp(), rtp.payload(), now);
            jitter.push_non_audio(rtp.ssrc(), sequence, now);
        } else if Codec::from_static_payload_type(rtp.payload_type()).is_some() {
            jitter.push(
                RtpPacket {
                    ssrc: rtp.ssrc(),
                    sequence,
                    timestamp: rtp.timestamp(),
                    payload_type: rtp.payload_type(),
                    payload: rtp.payload().to_vec(),
                },
                now,
            );
        } else {
            jitter.push_non_audio(rtp.ssrc(), sequence, now);
        }
        // Play out what is due, bounded as the session's 20 ms tick is.
        for _ in 0..64 {
            match jitter.pop(now) {
                Playout::Frame(frame) => {
                    if let Some(codec) = Codec::from_static_payload_type(frame.payload_type) {
                        pcm.clear();
                        codec.decode_into(&frame.payload, &mut pcm);
                    }
                }
                Playout::Missing { samples } => {
                    assert!(samples <= 8000 * 60, "a minute of concealment at once");
                }
                Playout::NonAudio => {}
                Playout::Idle => break,
            }
        }
    }
    let _ = jitter.stats();
}

/// A SIP INFO body with the content type in its first line (RFC 6086
/// `application/dtmf-relay` or `application/dtmf`).
pub fn sip_info(data: &[u8]) {
    let (content_type, body) = match data.iter().position(|&b| b == b'\n') {
        Some(at) => (&data[..at], &data[at + 1..]),
        None => (data, &[][..]),
    };
    let content_type = String::from_utf8_lossy(content_type);
    if let Some(digit) = Digit::from_sip_info(&content_type, body) {
        assert_eq!(Digit::from_char(digit.as_char()), Some(digit));
    }
}

/// A contacts CSV as the import reads it: fed in chunks (the first byte
/// sets their size), the header row, then every row to a contact.
pub fn contact_csv(data: &[u8]) {
    let Some((&size, data)) = data.split_first() else {
        return;
    };
    let size = usize::from(size % 64) + 1;
    let mut stream = CsvStream::new();
    let mut columns: Option<Result<ContactColumns, String>> = None;
    let mut sink = |line: u64, record: crate::campaign::csv::Record<'_>| {
        let Ok(row) = record else { return };
        match &columns {
            None => columns = Some(ContactColumns::from_header(&row)),
            Some(Ok(columns)) => {
                let _ = columns.contact(line, &row);
            }
            Some(Err(_)) => {}
        }
    };
    for chunk in data.chunks(size) {
        stream.feed(chunk, &mut sink);
    }
    stream.finish(&mut sink);
}

/// LLM text deltas through the chunker that cuts them into speakable
/// pieces: the deltas split where the input has a NUL. What comes out is
/// what went in, less whitespace.
pub fn chunker(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let mut chunker = Chunker::new(ChunkerConfig::default());
    let mut out = String::new();
    for delta in text.split('\0') {
        for piece in chunker.push(delta) {
            assert!(!piece.is_empty());
            out.push_str(&piece);
        }
    }
    out.extend(chunker.finish());
    let squeeze = |s: &str| s.chars().filter(|c| !c.is_whitespace()).collect::<String>();
    assert_eq!(squeeze(&out), squeeze(&text.replace('\0', "")));
}

/// An OpenAI-style server-sent event stream, cut into lines as the LLM
/// client cuts the body it streams, and assembled into a reply.
pub fn llm_stream(data: &[u8]) {
    let mut assembler = Assembler::default();
    for line in data.split(|&b| b == b'\n') {
        let line = String::from_utf8_lossy(line);
        if assembler.line(line.trim_end_matches('\r')).is_err() {
            return;
        }
    }
    let _ = assembler.finish();
}

/// A WAV file as a `play` action or a greeting reads it (16-bit PCM RIFF,
/// mixed to mono, resampled to 8 kHz).
pub fn wav(data: &[u8]) {
    if let Ok(samples) = crate::media::wav::read_mono_8k(data) {
        // Bounded by the input: at most 8 kHz out of at least 1 Hz in.
        assert!(samples.len() <= data.len().saturating_mul(8000) + 8000);
    }
}
