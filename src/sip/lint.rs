//! Grammar checks on a request's raw bytes, in two places.
//!
//! - Before ezk parses (the receive path, [`super::udp::screen`]):
//!   [`normalize`] makes what RFC 3261 allows but ezk's parser refuses
//!   readable (folded lines, escaped quotes, RFC 2543 requests), and
//!   [`screen`] picks the requests ezk would drop but RFC 3261 answers
//!   (400, 416, 505), to be answered statelessly.
//! - After ezk parsed, before any layer acts ([`guard`](super::guard)):
//!   [`check`] refuses RFC 3261 §25 breaches ezk is lenient about, which
//!   RFC 4475 §3.1.2 says must not be acted on (400).
//!
//! What neither can answer (no Via, a start line ezk cannot read, a To
//! that does not parse) gets silence, which RFC 4475 allows where no
//! response can be routed.
//!
//! Must not: allocate per header line, reject what RFC 4475 §3.1.1 calls
//! valid (line folding, odd spacing around `:`, `;` and `=`, escaped
//! quotes, compact names, unknown headers), change a well-formed RFC 3261
//! message, or look at the body beyond its length.

use std::borrow::Cow;

/// Why a request is refused with 400, as the reason phrase.
pub(crate) type Violation = &'static str;

/// Headers whose value is a name-addr or addr-spec with parameters
/// (RFC 3261 §20.10, §20.20, §20.39, §20.42), long and compact names.
const ADDRESS_HEADERS: &[&str] = &["from", "f", "to", "t", "contact", "m"];

/// Headers that may appear once (RFC 3261 §7.3.1: only comma-separated
/// list headers may repeat).
const SINGLE_HEADERS: &[&[&str]] = &[
    &["from", "f"],
    &["to", "t"],
    &["call-id", "i"],
    &["cseq"],
    &["max-forwards"],
];

/// Checks a request; `Err` carries the reason phrase for the 400.
pub(crate) fn check(raw: &[u8]) -> Result<(), Violation> {
    let head_end = find(raw, b"\r\n\r\n").unwrap_or(raw.len());
    let head = &raw[..head_end];
    let line_end = find(head, b"\r\n").unwrap_or(head.len());
    check_request_line(&head[..line_end])?;

    let mut seen = [0u8; SINGLE_HEADERS.len()];
    // Unfolded already on the receive path (`normalize`): then borrowed.
    let headers = unfold_head(head.get(line_end + 2..).unwrap_or_default());
    for line in headers.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some((name, value)) = split_header(line) else {
            continue;
        };
        if let Some(i) = SINGLE_HEADERS.iter().position(|names| named(name, names)) {
            seen[i] += 1;
            if seen[i] > 1 {
                // RFC 4475 §3.3.4 `multi01`.
                return Err("Repeated single-value header");
            }
        }
        if named(name, ADDRESS_HEADERS) {
            check_address(value)?;
        }
        if named(name, &["via", "v"]) {
            // RFC 3261 §20.42: via-params are `;` token, never empty
            // (RFC 4475 §3.1.2.1 `badinv01`).
            check_params(value, true)?;
        }
        if named(name, &["date"]) && !trim(value).ends_with(b" GMT") {
            // RFC 3261 §20.17: rfc1123-date in GMT only (RFC 4475
            // §3.1.2.12 `baddate`).
            return Err("Date not in GMT");
        }
    }
    Ok(())
}

/// RFC 3261 §25.1: `Method SP Request-URI SP SIP-Version`, single spaces
/// (RFC 4475 §3.1.2.9 `lwsruri`, §3.1.2.10 `lwsstart`, §3.1.2.8 `trws`),
/// and no headers in a SIP Request-URI (§19.1.1 table, RFC 4475 §3.1.2.11
/// `escruri`).
fn check_request_line(line: &[u8]) -> Result<(), Violation> {
    let parts: Vec<&[u8]> = line.split(|&b| b == b' ').collect();
    let [method, uri, version] = parts.as_slice() else {
        return Err("Bad Request-Line");
    };
    if method.is_empty() || uri.is_empty() || *version != b"SIP/2.0".as_slice() {
        return Err("Bad Request-Line");
    }
    if line.contains(&b'\t') {
        return Err("Bad Request-Line");
    }
    let sip = uri.len() > 4 && uri[..4].eq_ignore_ascii_case(b"sip:")
        || uri.len() > 5 && uri[..5].eq_ignore_ascii_case(b"sips:");
    // The user part may hold `?` (§25.1 user-unreserved); headers follow
    // the host.
    let host_on = uri.iter().rposition(|&b| b == b'@').unwrap_or(0);
    if sip && uri[host_on..].contains(&b'?') {
        return Err("Headers in Request-URI");
    }
    Ok(())
}

/// From, To and Contact: balanced quotes (RFC 4475 §3.1.2.6 `quotbal`),
/// no empty parameter (`badinv01`), and in addr-spec form (no angle
/// brackets) no `?`, which would need them (RFC 3261 §20.10, RFC 4475
/// §3.1.2.15 `regbadct`).
fn check_address(value: &[u8]) -> Result<(), Violation> {
    let bare = strip_quoted(value).ok_or("Unbalanced quotes")?;
    let (uri_part, params) = match bare.iter().position(|&b| b == b'<') {
        Some(open) => {
            let close = bare[open..]
                .iter()
                .position(|&b| b == b'>')
                .ok_or("Unbalanced angle brackets")?;
            (&bare[open..open + close], &bare[open + close + 1..])
        }
        None => {
            let end = bare.iter().position(|&b| b == b';').unwrap_or(bare.len());
            let uri = &bare[..end];
            if uri.contains(&b'?') {
                return Err("URI with headers needs angle brackets");
            }
            (uri, &bare[end..])
        }
    };
    if uri_part.is_empty() {
        return Err("Empty address");
    }
    check_params(params, false)
}

/// No empty element in a `;` parameter list or a `,` value list: each
/// separator must be followed by a token. `list` allows `,` between
/// values (Via); elsewhere a comma is left to the typed parser.
fn check_params(value: &[u8], list: bool) -> Result<(), Violation> {
    let bare = strip_quoted(value).ok_or("Unbalanced quotes")?;
    let mut expect_token = false;
    for &b in &bare {
        match b {
            b';' | b',' if expect_token => return Err("Empty header parameter"),
            b';' => expect_token = true,
            b',' if list => expect_token = true,
            b' ' | b'\t' => {}
            _ => expect_token = false,
        }
    }
    if expect_token {
        return Err("Empty header parameter");
    }
    Ok(())
}

/// The value with every quoted string (RFC 3261 §25.1, with `\` escapes)
/// replaced by `""`; `None` if a quote is left open.
fn strip_quoted(value: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(value.len());
    let mut bytes = value.iter();
    while let Some(&b) = bytes.next() {
        if b != b'"' {
            out.push(b);
            continue;
        }
        loop {
            match bytes.next()? {
                b'\\' => {
                    bytes.next()?;
                }
                b'"' => break,
                _ => {}
            }
        }
        out.extend_from_slice(b"\"\"");
    }
    Some(out)
}

/// The message as ezk's parser can take it, the body untouched: header
/// lines unfolded ([`unfold_head`]); in From, To and Contact an escaped
/// quote inside a display name (`\"`, RFC 3261 §25.1 quoted-pair) made
/// `\'`, because ezk's quoted-string parser ends at any `"`; and for a
/// request in RFC 2543 form (no magic cookie in the top Via branch, RFC
/// 3261 §8.1.1.7) the two things ezk cannot do without: a From tag
/// (derived from the Call-ID and From, so that retransmissions, the ACK
/// and a later BYE get the same one and land in the same transaction and
/// dialog) and, for an INVITE without Contact, the From URI as Contact
/// (RFC 2543 §6.13: the caller is then reached at its From address).
/// Borrowed when there is nothing to do, which is every message of a
/// well-behaved RFC 3261 peer.
pub(crate) fn normalize(raw: &[u8]) -> Cow<'_, [u8]> {
    let mut message = unfold_head(raw);
    if find(head_of(&message), b"\\\"").is_some() {
        message = Cow::Owned(requote(&message));
    }
    if let Some(fixed) = rfc2543_compatible(&message) {
        message = Cow::Owned(fixed);
    }
    message
}

/// The head of a message: start line and header lines with their CRLFs,
/// without the blank line.
fn head_of(raw: &[u8]) -> &[u8] {
    &raw[..find(raw, b"\r\n\r\n").map_or(raw.len(), |end| end + 2)]
}

/// The header name (trimmed) and the value of one (unfolded) header line.
fn split_header(line: &[u8]) -> Option<(&[u8], &[u8])> {
    let colon = line.iter().position(|&b| b == b':')?;
    Some((line[..colon].trim_ascii(), &line[colon + 1..]))
}

/// Whether a header name is one of `names` (lower case), in any case.
fn named(name: &[u8], names: &[&str]) -> bool {
    names
        .iter()
        .any(|candidate| name.eq_ignore_ascii_case(candidate.as_bytes()))
}

/// `\"` inside quoted strings of From, To and Contact made `\'`.
fn requote(raw: &[u8]) -> Vec<u8> {
    let head = head_of(raw);
    let mut out = Vec::with_capacity(raw.len());
    for line in head.split_inclusive(|&b| b == b'\n') {
        let is_address = split_header(line).is_some_and(|(name, _)| named(name, ADDRESS_HEADERS));
        if !is_address {
            out.extend_from_slice(line);
            continue;
        }
        let mut quoted = false;
        let mut bytes = line.iter();
        while let Some(&b) = bytes.next() {
            match b {
                b'"' => quoted = !quoted,
                b'\\' if quoted => {
                    out.push(b);
                    match bytes.next() {
                        Some(b'"') => out.push(b'\''),
                        Some(&next) => out.push(next),
                        None => {}
                    }
                    continue;
                }
                _ => {}
            }
            out.push(b);
        }
    }
    out.extend_from_slice(&raw[head.len()..]);
    out
}

/// For a request in RFC 2543 form without a From tag: the message with a
/// derived From tag, and a Contact for an INVITE without one. `None` when
/// nothing is to be added.
fn rfc2543_compatible(raw: &[u8]) -> Option<Vec<u8>> {
    let head = head_of(raw);
    let mut lines = head.split_inclusive(|&b| b == b'\n');
    let start = lines.next()?;
    let method = start.split(|&b| b == b' ').next()?;
    if method.starts_with(b"SIP/") {
        return None;
    }
    let (mut via, mut from, mut call_id, mut contact) = (None, None, None, false);
    let mut offset = start.len();
    for line in lines {
        let line_start = offset;
        offset += line.len();
        let line = line.strip_suffix(b"\n").unwrap_or(line);
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some((name, value)) = split_header(line) else {
            continue;
        };
        if named(name, &["via", "v"]) && via.is_none() {
            via = Some(value);
        } else if named(name, &["from", "f"]) {
            // Where the From line's value ends, and the value.
            from = Some((line_start + line.len(), value));
        } else if named(name, &["call-id", "i"]) {
            call_id = Some(trim(value));
        } else if named(name, &["contact", "m"]) {
            contact = true;
        }
    }
    let top_via = via?.split(|&b| b == b',').next()?;
    if top_via
        .windows(14)
        .any(|w| w.eq_ignore_ascii_case(b"branch=z9hG4bK"))
    {
        return None;
    }
    let (from_end, from_value) = from?;
    let bare = strip_quoted(from_value)?;
    let params_at = bare.iter().position(|&b| b == b'>').unwrap_or(0);
    let has_tag = bare[params_at..]
        .split(|&b| b == b';')
        .skip(1)
        .any(|param| trim(param).to_ascii_lowercase().starts_with(b"tag"));
    if has_tag {
        return None;
    }
    let tag = fnv1a(&[call_id.unwrap_or_default(), trim(from_value)]);
    let mut extra = Vec::new();
    if method == b"INVITE" && !contact {
        let uri = match (
            from_value.iter().position(|&b| b == b'<'),
            from_value.iter().position(|&b| b == b'>'),
        ) {
            (Some(open), Some(close)) if open < close => &from_value[open + 1..close],
            _ => trim(from_value.split(|&b| b == b';').next().unwrap_or_default()),
        };
        extra.extend_from_slice(b"Contact: <");
        extra.extend_from_slice(uri);
        extra.extend_from_slice(b">\r\n");
    }
    // The tag goes right after the From value.
    let mut out = Vec::with_capacity(raw.len() + extra.len() + 32);
    out.extend_from_slice(&raw[..from_end]);
    out.extend_from_slice(format!(";tag=2543-{tag:016x}").as_bytes());
    out.extend_from_slice(&raw[from_end..head.len()]);
    out.extend_from_slice(&extra);
    out.extend_from_slice(&raw[head.len()..]);
    Some(out)
}

/// FNV-1a over the parts: stable across runs and processes, which is all a
/// derived tag needs (it is no secret).
fn fnv1a(parts: &[&[u8]]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for &b in *part {
            hash ^= u64::from(b);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
        hash ^= 0xff;
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

/// What a request gets from the receive path itself, before ezk parses it
/// (which would drop it): the status code and reason phrase. Only for
/// requests ezk cannot take and whose answer RFC 3261 gives:
/// - 416 for a Request-URI scheme other than `sip`/`sips` (§8.2.2.1; RFC
///   4475 §3.3.2 `unkscm`, §3.3.3 `novelsc`);
/// - 400 when From, To, Call-ID or CSeq is missing (§8.1.1, RFC 4475
///   §3.3.1 `insuf`), or when From or To is not a SIP or SIPS URI, which
///   we cannot read (RFC 4475 §3.3.4 `unksm2`: "a registrar would reject
///   this request with a 400");
/// - 505 for a SIP version other than 2.0 (§21.5.6, RFC 4475
///   §3.1.2.16 `badvers`);
/// - 400 for a CSeq number of 2**31 or more (§8.1.1.5, RFC 4475 §3.1.2.4
///   `scalar02`) and for a body shorter than its Content-Length (§18.3,
///   RFC 4475 §3.1.2.2 `clerr`).
///
/// Without a Via nothing can be answered: left to ezk, which drops it.
pub(crate) fn screen(raw: &[u8]) -> Result<(), (u16, &'static str)> {
    let head = head_of(raw);
    let mut lines = head.split(|&b| b == b'\n');
    let start = lines.next().unwrap_or_default();
    let start = start.strip_suffix(b"\r").unwrap_or(start);
    let mut parts = start.split(|&b| b == b' ');
    let method = parts.next().unwrap_or_default();
    if method.starts_with(b"SIP/") || method.is_empty() {
        return Ok(());
    }
    let mut seen = [false; 5];
    let mut foreign_address = false;
    let mut cseq_too_large = false;
    let mut content_length = None;
    for line in lines {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some((name, value)) = split_header(line) else {
            continue;
        };
        if named(name, &["content-length", "l"]) {
            content_length = std::str::from_utf8(trim(value))
                .ok()
                .and_then(|v| v.parse::<usize>().ok());
        }
        const SLOTS: [&[&str]; 5] = [
            &["via", "v"],
            &["from", "f"],
            &["to", "t"],
            &["call-id", "i"],
            &["cseq"],
        ];
        let Some(slot) = SLOTS.iter().position(|names| named(name, names)) else {
            continue;
        };
        seen[slot] = true;
        if (slot == 1 || slot == 2) && !address_is_sip(value) {
            foreign_address = true;
        }
        if slot == 4 {
            let number = trim(value)
                .split(|b| b.is_ascii_whitespace())
                .next()
                .unwrap_or_default();
            // 2**31 - 1 has 10 digits; a longer run of digits overflows.
            cseq_too_large = !number.is_empty()
                && number.iter().all(u8::is_ascii_digit)
                && (number.len() > 10
                    || std::str::from_utf8(number)
                        .ok()
                        .and_then(|n| n.parse::<u64>().ok())
                        .is_some_and(|n| n >= 1 << 31));
        }
    }
    if !seen[0] {
        return Ok(());
    }
    let uri = parts.next();
    if let Some(version) = parts.next()
        && parts.next().is_none()
        && version.len() > 4
        && version[..4].eq_ignore_ascii_case(b"SIP/")
        && !version.eq_ignore_ascii_case(b"SIP/2.0")
    {
        return Err((505, "Version Not Supported"));
    }
    if let Some(uri) = uri
        && let Some(scheme) = scheme_of(uri)
        && !is_sip_scheme(scheme)
    {
        return Err((416, "Unsupported URI Scheme"));
    }
    let body = raw.len() - (head.len() + 2).min(raw.len());
    if content_length.is_some_and(|length| length > body) {
        return Err((400, "Body Shorter Than Content-Length"));
    }
    if cseq_too_large {
        return Err((400, "CSeq Out of Range"));
    }
    if seen[1..].contains(&false) {
        return Err((400, "Missing Required Header"));
    }
    if foreign_address {
        return Err((400, "From and To Must Be SIP URIs"));
    }
    Ok(())
}

/// The scheme of an absolute URI (RFC 3986 §3.1: ALPHA *( ALPHA / DIGIT /
/// "+" / "-" / "." ) before a colon), or `None` when `uri` does not start
/// with one (left to the parser).
fn scheme_of(uri: &[u8]) -> Option<&[u8]> {
    let colon = uri.iter().position(|&b| b == b':')?;
    let scheme = &uri[..colon];
    let valid = scheme.first().is_some_and(u8::is_ascii_alphabetic)
        && scheme
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'));
    valid.then_some(scheme)
}

fn is_sip_scheme(scheme: &[u8]) -> bool {
    scheme.eq_ignore_ascii_case(b"sip") || scheme.eq_ignore_ascii_case(b"sips")
}

/// Whether a From or To value's URI is `sip:` or `sips:` (or unreadable:
/// left to the parser).
fn address_is_sip(value: &[u8]) -> bool {
    let Some(bare) = strip_quoted(value) else {
        return true;
    };
    let uri = match bare.iter().position(|&b| b == b'<') {
        Some(open) => &bare[open + 1..],
        None => {
            // addr-spec, or a display name made of tokens before `<`.
            let start = bare
                .iter()
                .position(|b| !b.is_ascii_whitespace())
                .unwrap_or(bare.len());
            &bare[start..]
        }
    };
    let start = uri
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(uri.len());
    scheme_of(&uri[start..]).is_none_or(is_sip_scheme)
}

/// The message with its header lines unfolded (RFC 3261 §7.3.1: a line
/// starting with SP or HT continues the previous one; the CRLF and the
/// leading white space become one SP), the body untouched. Borrowed when
/// nothing was folded, which is every message of a well-behaved peer.
pub(crate) fn unfold_head(raw: &[u8]) -> Cow<'_, [u8]> {
    let head_end = find(raw, b"\r\n\r\n").map_or(raw.len(), |end| end + 2);
    let folded = |at: usize| {
        raw[at..head_end].starts_with(b"\r\n") && matches!(raw.get(at + 2), Some(b' ' | b'\t'))
    };
    if !(0..head_end).any(|at| raw[at] == b'\r' && folded(at)) {
        return Cow::Borrowed(raw);
    }
    let mut out = Vec::with_capacity(raw.len());
    let mut at = 0;
    while at < head_end {
        if raw[at] == b'\r' && folded(at) {
            at += 2;
            while matches!(raw.get(at), Some(b' ' | b'\t')) && at < head_end {
                at += 1;
            }
            out.push(b' ');
        } else {
            out.push(raw[at]);
            at += 1;
        }
    }
    out.extend_from_slice(&raw[head_end..]);
    Cow::Owned(out)
}

fn trim(value: &[u8]) -> &[u8] {
    let start = value
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(value.len());
    let end = value
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(start, |e| e + 1);
    &value[start..end]
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::{Cow, check, normalize, screen};

    fn torture(name: &str) -> Vec<u8> {
        let path = format!(
            "{}/tests/data/rfc4475/{name}.dat",
            env!("CARGO_MANIFEST_DIR")
        );
        std::fs::read(path).expect("torture file")
    }

    /// RFC 4475 §3.1.1: the valid requests pass, folding and all.
    #[test]
    fn valid_torture_requests_pass() {
        for name in [
            "wsinv",
            "wsinvFixed",
            "intmeth",
            "esc01",
            "escnull",
            "esc02",
            "lwsdisp",
            "longreq",
            "dblreq",
            "semiuri",
            "transports",
            "mpart01",
            "inv2543",
            "bext01",
            "invut",
            "zeromf",
            "cparam01",
            "cparam02",
            "regescrt",
            "sdp01",
        ] {
            assert_eq!(check(&torture(name)), Ok(()), "{name}");
        }
    }

    /// RFC 4475 §3.1.2 and §3.3.4: the invalid requests ezk parses are
    /// refused, each for its own reason.
    #[test]
    fn invalid_torture_requests_are_refused() {
        for (name, reason) in [
            ("badinv01", "Empty header parameter"),
            ("quotbal", "Unbalanced quotes"),
            ("lwsruri", "Bad Request-Line"),
            ("lwsstart", "Bad Request-Line"),
            ("trws", "Bad Request-Line"),
            ("escruri", "Headers in Request-URI"),
            ("baddate", "Date not in GMT"),
            ("regbadct", "URI with headers needs angle brackets"),
            ("multi01", "Repeated single-value header"),
        ] {
            assert_eq!(check(&torture(name)), Err(reason), "{name}");
        }
    }

    /// What the receive path answers itself, before ezk: RFC 4475 §3.3.1
    /// to §3.3.4, §3.1.2.2, §3.1.2.4, §3.1.2.16; every other message goes
    /// on.
    #[test]
    fn screen_answers_what_ezk_would_drop() {
        for (name, code) in [
            ("insuf", 400),
            ("unkscm", 416),
            ("novelsc", 416),
            ("unksm2", 400),
            ("badvers", 505),
            ("clerr", 400),
            ("scalar02", 400),
        ] {
            let raw = torture(name);
            assert_eq!(
                screen(&normalize(&raw)).map_err(|(code, _)| code),
                Err(code),
                "{name}"
            );
        }
        for name in ["wsinv", "inv2543", "esc01", "dblreq", "badbranch", "mcl01"] {
            assert_eq!(screen(&normalize(&torture(name))), Ok(()), "{name}");
        }
    }

    /// Folding and escaped quotes (`wsinv`) and the RFC 2543 form
    /// (`inv2543`) are made readable for ezk; the tag is the same for
    /// every copy, and a 3261 request is left alone.
    #[test]
    fn normalize_makes_valid_requests_readable() {
        let wsinv = normalize(&torture("wsinv")).into_owned();
        let text = String::from_utf8_lossy(&wsinv);
        assert!(text.contains("from   : \"J Rosenberg \\\\\\'\"       <sip:jdrosen@example.com> ; tag = 98asjd8\r\n"), "{text}");
        assert!(
            !text[..text.find("\r\n\r\n").unwrap()].contains("\r\n "),
            "{text}"
        );

        let inv = normalize(&torture("inv2543")).into_owned();
        let text = String::from_utf8_lossy(&inv);
        assert!(
            text.contains("From: <sip:+13035551111@ift.client.example.net;user=phone>;tag=2543-"),
            "{text}"
        );
        assert!(
            text.contains(
                "\r\nContact: <sip:+13035551111@ift.client.example.net;user=phone>\r\n\r\nv=0"
            ),
            "{text}"
        );
        assert_eq!(normalize(&torture("inv2543")).into_owned(), inv);

        let plain = b"INVITE sip:a@b SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\nFrom: <sip:c@d>\r\n\r\n";
        assert!(matches!(normalize(plain), Cow::Borrowed(_)));
    }

    #[test]
    fn escaped_quote_inside_a_display_name_is_balanced() {
        let raw = b"OPTIONS sip:a@b SIP/2.0\r\nFrom: \"x \\\" y\" <sip:c@d>;tag=1\r\n\r\n";
        assert_eq!(check(raw), Ok(()));
        let raw = b"OPTIONS sip:a@b SIP/2.0\r\nFrom: \"x \\\" y <sip:c@d>;tag=1\r\n\r\n";
        assert_eq!(check(raw), Err("Unbalanced quotes"));
    }

    #[test]
    fn garbage_never_panics() {
        for raw in [
            &b""[..],
            b"\r\n\r\n",
            b"INVITE",
            b"INVITE sip:a SIP/2.0\r\nFrom: \"",
            b"INVITE sip:a SIP/2.0\r\nTo: <",
            b"INVITE sip:a SIP/2.0\r\n \r\n:\r\n",
        ] {
            let _ = check(raw);
        }
    }
}
