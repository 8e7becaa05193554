//! Grammar checks on a request's raw bytes that ezk's parser is lenient
//! about: RFC 3261 §25 rules whose breach RFC 4475 §3.1.2 says must not be
//! acted on (answer 400). Runs on every request ezk parsed, before any
//! layer acts on it (see [`guard`](super::guard)).
//!
//! Must not: allocate per header beyond one unfolded line, reject what
//! RFC 4475 §3.1.1 calls valid (line folding, odd spacing around `:`, `;`
//! and `=`, escaped quotes, compact names, unknown headers), or look at
//! the body.
//!
//! ezk drops some messages before this runs (a header line without a
//! colon, a URI it cannot parse, a missing Call-ID or Via branch): those
//! get silence, which RFC 4475 allows where no response can be routed. ezk
//! 0.9 owns its sockets and has no pre-parse hook, so those cannot be
//! normalised here.

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
    for line in unfold(head.get(line_end + 2..).unwrap_or_default()) {
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let name = String::from_utf8_lossy(&line[..colon])
            .trim()
            .to_ascii_lowercase();
        let value = &line[colon + 1..];
        if let Some(i) = SINGLE_HEADERS
            .iter()
            .position(|names| names.contains(&name.as_str()))
        {
            seen[i] += 1;
            if seen[i] > 1 {
                // RFC 4475 §3.3.4 `multi01`.
                return Err("Repeated single-value header");
            }
        }
        if ADDRESS_HEADERS.contains(&name.as_str()) {
            check_address(value)?;
        }
        if name == "via" || name == "v" {
            // RFC 3261 §20.42: via-params are `;` token, never empty
            // (RFC 4475 §3.1.2.1 `badinv01`).
            check_params(value, true)?;
        }
        if name == "date" && !trim(value).ends_with(b" GMT") {
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

/// Header lines with continuation lines (starting with SP or HT, RFC 3261
/// §7.3.1) joined to the line they continue.
fn unfold(headers: &[u8]) -> Vec<Vec<u8>> {
    let mut lines: Vec<Vec<u8>> = Vec::new();
    for line in headers.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        match (line.first(), lines.last_mut()) {
            (Some(b' ' | b'\t'), Some(last)) => {
                last.push(b' ');
                last.extend_from_slice(line);
            }
            _ => lines.push(line.to_vec()),
        }
    }
    lines
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
    use super::check;

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
