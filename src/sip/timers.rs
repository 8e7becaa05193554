//! Session timers (RFC 4028) for inbound calls: what an INVITE's
//! Session-Expires and Min-SE ask for (422 below our Min-SE, §8.1), the
//! interval and refresher we answer (§9), and the clock of an established
//! call: when we refresh (half the interval, §7.2/§9), or when the peer's
//! refresh is overdue (the interval minus min(32 s, interval/3), §10) and
//! the call ends with BYE.
//!
//! ezk-sip-ua 0.9.1 has a session timer, but it ignores the Session-Expires
//! the INVITE offers (it always answers its own 1800 s), never answers 422,
//! refreshes by a re-INVITE without SDP (our ACK would then owe an answer)
//! and sends BYE only at the full interval. Its timer is parked (see
//! [`park_ezk_timer`]); the headers it writes into our 200 are the ones
//! computed here.
//!
//! Must not: send anything; the call (`sip::call`) sends refreshes and BYE.

use ezk_sip_types::Headers;
use ezk_sip_types::header::typed::{MinSe, Refresher, SessionExpires, Supported};
use ezk_sip_ua::invite::session::InviteSession;
use std::time::Duration;
use tokio::time::Instant;

/// RFC 4028 §4: no Min-SE may be below 90 seconds.
pub const MIN_SE_FLOOR: u32 = 90;

/// `[sip] session_expires` and `min_se`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionTimerConfig {
    /// The interval we ask for (outbound) or accept at most (inbound).
    pub session_expires: u32,
    /// The smallest interval we accept (422 below it).
    pub min_se: u32,
}

impl Default for SessionTimerConfig {
    fn default() -> Self {
        Self {
            session_expires: 1800,
            min_se: MIN_SE_FLOOR,
        }
    }
}

/// The session timer of a dialog, as agreed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Agreed {
    /// Session interval in seconds.
    pub(crate) interval: u32,
    /// We send the refreshes (else the peer does and we watch).
    pub(crate) we_refresh: bool,
    /// The peer listed `timer` in Supported (then our 2xx carries
    /// `Require: timer`, §9).
    pub(crate) peer_supports: bool,
    /// We are the UAS of the dialog (the refresher parameter names roles).
    pub(crate) we_are_uas: bool,
}

impl Agreed {
    /// The `Session-Expires` value for our 2xx or refresh.
    pub(crate) fn header(&self) -> SessionExpires {
        let refresher = if self.we_refresh == self.we_are_uas {
            Refresher::Uas
        } else {
            Refresher::Uac
        };
        SessionExpires {
            delta_secs: self.interval,
            refresher,
        }
    }

    /// When to act next, counted from `from` (the last refresh): our
    /// refresh at half the interval, or the BYE when the peer's refresh is
    /// overdue (§10: the interval minus min(32 s, interval/3)).
    pub(crate) fn deadline(&self, from: Instant) -> Instant {
        let interval = u64::from(self.interval);
        let secs = if self.we_refresh {
            Duration::from_millis(interval * 500)
        } else {
            Duration::from_secs(interval - (interval / 3).min(32))
        };
        from + secs
    }
}

/// What an inbound INVITE (or a refresh inside the dialog) asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Inbound {
    /// No session timer (neither Session-Expires nor Supported: timer).
    None,
    /// Answer 422 with this Min-SE (§8.1).
    TooBrief { min_se: u32 },
    /// Run this timer.
    Timer(Agreed),
}

/// The peer listed `tag` in Supported.
pub(crate) fn supports(headers: &Headers, tag: &str) -> bool {
    headers
        .get_named::<Vec<Supported>>()
        .unwrap_or_default()
        .iter()
        .any(|s| s.0.eq_ignore_ascii_case(tag))
}

/// RFC 4028 §9 for a request we answer as UAS (`we_are_uas` false for a
/// refresh that reaches us inside a dialog we started).
pub(crate) fn negotiate(
    headers: &Headers,
    config: &SessionTimerConfig,
    we_are_uas: bool,
) -> Inbound {
    let peer_supports = supports(headers, "timer");
    // A malformed Session-Expires is treated as absent rather than failing
    // the call (§4 gives it no other meaning).
    let offered = headers.get_named::<SessionExpires>().ok();
    let peer_min = headers
        .get_named::<MinSe>()
        .map(|m| m.0)
        .unwrap_or(MIN_SE_FLOOR)
        // A hostile Min-SE cannot push our clock past a day.
        .clamp(MIN_SE_FLOOR, 86_400);
    let floor = peer_min.max(config.min_se);
    let Some(offered) = offered else {
        if !peer_supports {
            return Inbound::None;
        }
        // §9: the UAS may add a timer of its own; the UAC supports it, so
        // it refreshes.
        return Inbound::Timer(Agreed {
            interval: config.session_expires.max(floor),
            we_refresh: !we_are_uas,
            peer_supports,
            we_are_uas,
        });
    };
    if offered.delta_secs < config.min_se.max(MIN_SE_FLOOR) {
        return Inbound::TooBrief {
            min_se: config.min_se.max(MIN_SE_FLOOR),
        };
    }
    // §9: we may shorten the interval, never below either Min-SE.
    let interval = offered.delta_secs.min(config.session_expires).max(floor);
    // §9: a refresher the request names is kept; otherwise the UAC
    // refreshes when it supports timers, else we do.
    let uas_refreshes = match offered.refresher {
        Refresher::Uas => true,
        Refresher::Uac => false,
        Refresher::Unspecified => !peer_supports,
    };
    // Without `timer` support the peer cannot refresh: we do (§9).
    let uas_refreshes = uas_refreshes || !peer_supports;
    Inbound::Timer(Agreed {
        interval,
        we_refresh: uas_refreshes == we_are_uas,
        peer_supports,
        we_are_uas,
    })
}

/// Stops ezk's own session timer of `session`: it would send BYE at the
/// full interval (or ask for a refresh without SDP). Its fields are public
/// but its type is not nameable, so it is pushed a century out rather than
/// replaced; ezk resets it on each re-INVITE to the same far point.
pub(crate) fn park_ezk_timer(session: &mut InviteSession) {
    session.session_timer.real_delta_secs = u32::MAX;
    session.session_timer.reset();
}

/// `sdp` with the session version of its `o=` line one higher (RFC 4566
/// §5.2, RFC 3264 §8: a new offer of the same session increments it).
/// SDP is opaque bytes in `sip`; this touches that one number only and
/// leaves anything it cannot read as it was.
pub(crate) fn bump_origin_version(sdp: &bytes::Bytes) -> bytes::Bytes {
    let Ok(text) = std::str::from_utf8(sdp) else {
        return sdp.clone();
    };
    let mut out = String::with_capacity(text.len() + 2);
    let mut done = false;
    for line in text.split_inclusive('\n') {
        if !done && let Some(rest) = line.strip_prefix("o=") {
            let body = rest.trim_end_matches(['\r', '\n']);
            let ending = &rest[body.len()..];
            let mut fields: Vec<String> = body.split(' ').map(str::to_owned).collect();
            if fields.len() == 6
                && let Ok(version) = fields[2].parse::<u64>()
                && let Some(next) = version.checked_add(1)
            {
                fields[2] = next.to_string();
                out.push_str("o=");
                out.push_str(&fields.join(" "));
                out.push_str(ending);
                done = true;
                continue;
            }
        }
        out.push_str(line);
    }
    bytes::Bytes::from(out)
}

#[cfg(test)]
mod tests {
    #[test]
    fn origin_version_is_incremented_once() {
        let sdp = bytes::Bytes::from_static(
            b"v=0\r\no=- 42 7 IN IP4 10.0.0.1\r\ns=-\r\nc=IN IP4 10.0.0.1\r\nt=0 0\r\n",
        );
        let bumped = super::bump_origin_version(&sdp);
        assert_eq!(
            &bumped[..],
            b"v=0\r\no=- 42 8 IN IP4 10.0.0.1\r\ns=-\r\nc=IN IP4 10.0.0.1\r\nt=0 0\r\n"
        );
        let odd = bytes::Bytes::from_static(b"v=0\r\no=broken\r\n");
        assert_eq!(super::bump_origin_version(&odd), odd);
    }

    use super::*;
    use ezk_sip_types::Name;

    fn headers(list: &[(&str, &str)]) -> Headers {
        let mut h = Headers::new();
        for (n, v) in list {
            h.insert(Name::from(n.to_string()), v.to_string());
        }
        h
    }

    #[test]
    fn below_min_se_is_too_brief() {
        let h = headers(&[("Supported", "timer"), ("Session-Expires", "60")]);
        assert_eq!(
            negotiate(&h, &SessionTimerConfig::default(), true),
            Inbound::TooBrief { min_se: 90 }
        );
        let config = SessionTimerConfig {
            session_expires: 1800,
            min_se: 300,
        };
        let h = headers(&[("Session-Expires", "120;refresher=uac")]);
        assert_eq!(
            negotiate(&h, &config, true),
            Inbound::TooBrief { min_se: 300 }
        );
    }

    #[test]
    fn offered_interval_and_refresher_are_kept() {
        let h = headers(&[
            ("Supported", "timer, 100rel"),
            ("Session-Expires", "90;refresher=uas"),
        ]);
        let Inbound::Timer(agreed) = negotiate(&h, &SessionTimerConfig::default(), true) else {
            panic!("timer expected");
        };
        assert_eq!(agreed.interval, 90);
        assert!(agreed.we_refresh);
        assert_eq!(agreed.header().refresher, Refresher::Uas);
        let now = Instant::now();
        assert_eq!(agreed.deadline(now) - now, Duration::from_secs(45));

        let h = headers(&[
            ("Supported", "timer"),
            ("Session-Expires", "90;refresher=uac"),
        ]);
        let Inbound::Timer(agreed) = negotiate(&h, &SessionTimerConfig::default(), true) else {
            panic!("timer expected");
        };
        assert!(!agreed.we_refresh);
        // §10: 90 - min(32, 30) = 60 s.
        assert_eq!(agreed.deadline(now) - now, Duration::from_secs(60));
    }

    #[test]
    fn long_offers_are_shortened_and_unsupported_peers_make_us_refresh() {
        let h = headers(&[("Session-Expires", "7200"), ("Min-SE", "120")]);
        let Inbound::Timer(agreed) = negotiate(&h, &SessionTimerConfig::default(), true) else {
            panic!("timer expected");
        };
        assert_eq!(agreed.interval, 1800);
        assert!(
            agreed.we_refresh,
            "a peer without timer support cannot refresh"
        );
        assert!(!agreed.peer_supports);
        assert_eq!(
            negotiate(&headers(&[]), &SessionTimerConfig::default(), true),
            Inbound::None
        );
    }
}
