//! Trickle ICE for a web call: the SDP fragment a browser `PATCH`es to
//! its WHIP session (RFC 9725 §4.3.1, `application/trickle-ice-sdpfrag`,
//! RFC 8840 §9) with candidates it gathered after its offer.
//!
//! Owns: reading the fragment into the candidates a peer may try. Each
//! candidate is an address the daemon will send STUN checks to, so a
//! fragment is bounded ([`MAX_CANDIDATES`]) and only candidates our one
//! UDP socket can reach are kept: UDP, component 1 (RTP and RTCP are
//! muxed), a unicast address (not unspecified, multicast or broadcast).
//! mDNS (`.local`) and TCP candidates are skipped, not refused: a browser
//! sends them routinely.
//!
//! Must not: touch the peer (it applies what this returns) or know HTTP.

use std::net::IpAddr;

use str0m::Candidate;

/// The most candidates one fragment may carry.
pub const MAX_CANDIDATES: usize = 16;
/// The most trickled candidates one web call takes in all.
pub const MAX_CANDIDATES_PER_CALL: usize = 32;

/// What a fragment says.
#[derive(Debug, Default)]
pub struct SdpFrag {
    /// `a=ice-ufrag`, when present: a different one than the offer's is an
    /// ICE restart (RFC 8838 §4.4).
    pub ufrag: Option<String>,
    pub pwd: Option<String>,
    /// The usable candidates.
    pub candidates: Vec<Candidate>,
    /// Candidates skipped as unusable here (TCP, mDNS, other components).
    pub skipped: usize,
    /// `a=end-of-candidates` (RFC 8840 §9.2).
    pub end: bool,
}

/// Reads a trickle fragment; `Err` says what is malformed.
pub fn parse(text: &str) -> Result<SdpFrag, String> {
    let mut frag = SdpFrag::default();
    let mut seen = 0usize;
    for line in text.lines() {
        let line = line.trim_end_matches('\r');
        if line.is_empty() {
            continue;
        }
        let Some((kind, value)) = line.split_once('=') else {
            return Err(format!("not an SDP line: {line:?}"));
        };
        if kind.len() != 1 {
            return Err(format!("not an SDP line: {line:?}"));
        }
        if kind != "a" {
            // m=, and anything RFC 8840 §9 lets a fragment carry besides.
            continue;
        }
        let (name, arg) = match value.split_once(':') {
            Some((n, a)) => (n, Some(a)),
            None => (value, None),
        };
        match (name, arg) {
            ("ice-ufrag", Some(u)) => frag.ufrag = Some(u.trim().to_owned()),
            ("ice-pwd", Some(p)) => frag.pwd = Some(p.trim().to_owned()),
            ("end-of-candidates", None) => frag.end = true,
            ("candidate", Some(_)) => {
                seen += 1;
                if seen > MAX_CANDIDATES {
                    return Err(format!("at most {MAX_CANDIDATES} candidates per fragment"));
                }
                match candidate(value)? {
                    Some(c) => frag.candidates.push(c),
                    None => frag.skipped += 1,
                }
            }
            _ => {}
        }
    }
    Ok(frag)
}

/// One `candidate:` attribute value (RFC 8839 §5.1): `Ok(None)` for one
/// we cannot use (TCP, mDNS, RTCP's component), `Err` if malformed.
fn candidate(value: &str) -> Result<Option<Candidate>, String> {
    let fields: Vec<&str> = value.split_ascii_whitespace().collect();
    // foundation component transport priority address port "typ" type
    if fields.len() < 8 || fields[6] != "typ" {
        return Err(format!("malformed candidate: {value:?}"));
    }
    if !fields[2].eq_ignore_ascii_case("udp") || fields[1] != "1" {
        return Ok(None);
    }
    let Ok(ip) = fields[4].parse::<IpAddr>() else {
        // A host name: mDNS (`<uuid>.local`), which we do not resolve.
        return Ok(None);
    };
    if ip.is_unspecified() || ip.is_multicast() || ip == IpAddr::from([255, 255, 255, 255]) {
        return Err(format!("candidate address {ip} is not a unicast address"));
    }
    Candidate::from_sdp_string(value)
        .map(Some)
        .map_err(|e| format!("malformed candidate: {e}"))
}

/// The `a=ice-ufrag` of an SDP (the offer's), if any.
pub fn ufrag_of(sdp: &str) -> Option<String> {
    sdp.lines()
        .find_map(|l| l.trim_end_matches('\r').strip_prefix("a=ice-ufrag:"))
        .map(|u| u.trim().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_browsers_fragment_is_read() {
        let frag = parse(
            "a=ice-ufrag:EsAw\r\na=ice-pwd:bP+XJMM09aR8AiX1jdukzR6Y\r\nm=audio 9 UDP/TLS/RTP/SAVPF 0\r\n\
             a=mid:0\r\n\
             a=candidate:1387637174 1 udp 2122260223 192.0.2.1 61764 typ host generation 0 ufrag EsAw\r\n\
             a=candidate:3471623853 1 udp 2122194687 198.51.100.2 61765 typ host\r\n\
             a=candidate:473322822 1 tcp 1518280447 192.0.2.1 9 typ host tcptype active\r\n\
             a=candidate:2 1 udp 2122260223 0c2d2a5e-4c2c-4e2b-9f1e-5c1d7e0a6b1f.local 5000 typ host\r\n\
             a=candidate:3 2 udp 2122260222 192.0.2.1 61766 typ host\r\n\
             a=end-of-candidates\r\n",
        )
        .unwrap();
        assert_eq!(frag.ufrag.as_deref(), Some("EsAw"));
        assert_eq!(frag.pwd.as_deref(), Some("bP+XJMM09aR8AiX1jdukzR6Y"));
        assert_eq!(frag.candidates.len(), 2);
        assert_eq!(
            frag.candidates[0].addr(),
            "192.0.2.1:61764".parse().unwrap()
        );
        assert_eq!(frag.skipped, 3);
        assert!(frag.end);
    }

    #[test]
    fn malformed_or_hostile_fragments_are_refused() {
        for bad in [
            "hello",
            "a=candidate:1 1 udp 1 192.0.2.1\r\n",
            "a=candidate:1 1 udp 1 192.0.2.1 5000 host\r\n",
            "a=candidate:1 1 udp 1 0.0.0.0 5000 typ host\r\n",
            "a=candidate:1 1 udp 1 224.0.0.1 5000 typ host\r\n",
            "a=candidate:1 1 udp 1 192.0.2.1 notaport typ host\r\n",
            "ab=x\r\n",
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
        let many: String = (0..=MAX_CANDIDATES)
            .map(|i| {
                format!(
                    "a=candidate:{i} 1 udp 1 192.0.2.1 {} typ host\r\n",
                    5000 + i
                )
            })
            .collect();
        assert!(parse(&many).is_err());
    }

    #[test]
    fn the_offers_ufrag_is_found() {
        assert_eq!(
            ufrag_of("v=0\r\na=ice-ufrag:abcd\r\na=ice-pwd:x\r\n").as_deref(),
            Some("abcd")
        );
        assert_eq!(ufrag_of("v=0\r\n"), None);
    }
}
