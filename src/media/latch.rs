//! RTP source pinning: which inbound packets belong to the call.
//!
//! Owns: the decision, per packet, to latch, accept or reject, from the
//! packet's source address, SSRC and marker bit and the address the SDP
//! signalled; and what a renegotiation re-opens. A sans-IO core: no
//! sockets, no clock, no metrics (the session counts the rejections).
//!
//! Must not: read the payload or decide anything about the call.
//!
//! Rules (symmetric RTP, RFC 4961 §3, hardened against RTP injection and
//! "RTP bleed", as in Asterisk CVE-2017-14099):
//! - Until latched, a packet latches the session if its source passes the
//!   [`LatchPolicy`]: its IP must be the signalled one
//!   ([`LatchPolicy::SignalledHost`], any port, as NATs rewrite ports), or
//!   anything ([`LatchPolicy::AnySource`]).
//! - Once latched, the session is pinned to that exact address and port and
//!   to that SSRC (RFC 3550 §8: one source, one SSRC). Packets from any
//!   other address or port are rejected, and so are packets from the pinned
//!   address with another SSRC, unless they carry the marker bit, which
//!   starts a new talkspurt (RFC 3551 §4.1): a stream restarted by the far
//!   end, as after a re-INVITE or a transfer behind a B2BUA.
//! - Silence does not re-open latching: there is no re-latch to another
//!   source after a quiet spell (the injection window of the CVE above).
//! - Only signalling re-opens it: a renegotiation that changes the remote
//!   address unlatches (the next packet passing the policy latches again);
//!   one that keeps it lets the pinned source start a new SSRC with its
//!   next packet, marked or not.
//!
//! A host that can forge the pinned address and port can still switch the
//! SSRC with a marked packet; against such an on-path attacker only SRTP
//! helps.

use std::net::SocketAddr;

/// Which sources may latch the session, before it is pinned. Once pinned,
/// only the pinned address and port is accepted, whatever the policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LatchPolicy {
    /// Only packets from the IP address signalled in SDP, from any port.
    #[default]
    SignalledHost,
    /// Packets from any address (callers behind NATs that signal private
    /// addresses). Weaker: the first packet from anyone wins the race.
    AnySource,
}

/// Why a packet was rejected; the `reason` label of
/// `agentline_rtp_packets_rejected_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    /// Not the pinned address and port, or not allowed to latch.
    Source,
    /// The pinned address and port, another SSRC, no marker.
    Ssrc,
}

impl Rejection {
    pub fn label(self) -> &'static str {
        match self {
            Rejection::Source => "source",
            Rejection::Ssrc => "ssrc",
        }
    }
}

/// What to do with one inbound packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The session is now pinned to this source: send there from now on.
    Latched(SocketAddr),
    /// From the pinned source and SSRC.
    Accepted,
    /// From the pinned source, which started a new SSRC, now pinned.
    NewSsrc(u32),
    Rejected(Rejection),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Pinned {
    source: SocketAddr,
    ssrc: u32,
    /// A renegotiation kept the address: the next packet may bring a new
    /// SSRC without a marker.
    ssrc_open: bool,
}

/// The pinning state of one RTP session.
#[derive(Debug, Clone)]
pub struct Latch {
    policy: LatchPolicy,
    signalled: Option<SocketAddr>,
    pinned: Option<Pinned>,
}

impl Latch {
    /// An unlatched session whose SDP names `signalled` (none for a late
    /// offer not answered yet).
    pub fn new(policy: LatchPolicy, signalled: Option<SocketAddr>) -> Self {
        Latch {
            policy,
            signalled,
            pinned: None,
        }
    }

    /// The pinned source, where our packets go.
    pub fn source(&self) -> Option<SocketAddr> {
        self.pinned.map(|p| p.source)
    }

    /// Judges one well-formed RTP packet (RFC 3550 §5.1 header fields).
    pub fn on_packet(&mut self, from: SocketAddr, ssrc: u32, marker: bool) -> Verdict {
        let Some(pinned) = &mut self.pinned else {
            let allowed = match self.policy {
                LatchPolicy::AnySource => true,
                LatchPolicy::SignalledHost => self.signalled.is_some_and(|s| s.ip() == from.ip()),
            };
            if !allowed {
                return Verdict::Rejected(Rejection::Source);
            }
            self.pinned = Some(Pinned {
                source: from,
                ssrc,
                ssrc_open: false,
            });
            return Verdict::Latched(from);
        };
        if from != pinned.source {
            return Verdict::Rejected(Rejection::Source);
        }
        let open = std::mem::take(&mut pinned.ssrc_open);
        if ssrc == pinned.ssrc {
            return Verdict::Accepted;
        }
        if marker || open {
            pinned.ssrc = ssrc;
            return Verdict::NewSsrc(ssrc);
        }
        Verdict::Rejected(Rejection::Ssrc)
    }

    /// A renegotiation (re-INVITE, UPDATE, the ACK of a late offer) now
    /// signals `remote`. See the module documentation.
    pub fn resignal(&mut self, remote: Option<SocketAddr>) {
        if remote != self.signalled {
            self.pinned = None;
        } else if let Some(pinned) = &mut self.pinned {
            pinned.ssrc_open = true;
        }
        self.signalled = remote;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SSRC: u32 = 0x1234_5678;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn latched() -> Latch {
        let mut latch = Latch::new(LatchPolicy::SignalledHost, Some(addr("10.0.0.1:4000")));
        // A NAT rewrote the port: the signalled host latches from any.
        assert_eq!(
            latch.on_packet(addr("10.0.0.1:5000"), SSRC, true),
            Verdict::Latched(addr("10.0.0.1:5000"))
        );
        latch
    }

    #[test]
    fn the_signalled_host_latches_and_others_cannot() {
        let mut latch = Latch::new(LatchPolicy::SignalledHost, Some(addr("10.0.0.1:4000")));
        assert_eq!(
            latch.on_packet(addr("10.0.0.2:4000"), SSRC, false),
            Verdict::Rejected(Rejection::Source)
        );
        assert_eq!(latch.source(), None);
        assert_eq!(
            latch.on_packet(addr("10.0.0.1:4000"), SSRC, false),
            Verdict::Latched(addr("10.0.0.1:4000"))
        );
        assert_eq!(latch.source(), Some(addr("10.0.0.1:4000")));
        // Nothing signalled yet (late offer): nobody latches.
        let mut late = Latch::new(LatchPolicy::SignalledHost, None);
        assert_eq!(
            late.on_packet(addr("10.0.0.1:4000"), SSRC, false),
            Verdict::Rejected(Rejection::Source)
        );
        // AnySource: the first packet from anywhere.
        let mut any = Latch::new(LatchPolicy::AnySource, None);
        assert_eq!(
            any.on_packet(addr("192.0.2.9:7000"), SSRC, false),
            Verdict::Latched(addr("192.0.2.9:7000"))
        );
    }

    #[test]
    fn the_pinned_source_and_ssrc_are_accepted() {
        let mut latch = latched();
        for _ in 0..3 {
            assert_eq!(
                latch.on_packet(addr("10.0.0.1:5000"), SSRC, false),
                Verdict::Accepted
            );
        }
    }

    #[test]
    fn another_port_of_the_same_host_is_rejected() {
        let mut latch = latched();
        for marker in [false, true] {
            assert_eq!(
                latch.on_packet(addr("10.0.0.1:5002"), SSRC, marker),
                Verdict::Rejected(Rejection::Source)
            );
        }
        assert_eq!(latch.source(), Some(addr("10.0.0.1:5000")));
    }

    #[test]
    fn another_ssrc_from_the_pinned_source_is_rejected_without_a_marker() {
        let mut latch = latched();
        assert_eq!(
            latch.on_packet(addr("10.0.0.1:5000"), SSRC + 1, false),
            Verdict::Rejected(Rejection::Ssrc)
        );
        // The pinned stream goes on.
        assert_eq!(
            latch.on_packet(addr("10.0.0.1:5000"), SSRC, false),
            Verdict::Accepted
        );
    }

    #[test]
    fn a_marked_new_ssrc_from_the_pinned_source_takes_over() {
        let mut latch = latched();
        assert_eq!(
            latch.on_packet(addr("10.0.0.1:5000"), 77, true),
            Verdict::NewSsrc(77)
        );
        assert_eq!(
            latch.on_packet(addr("10.0.0.1:5000"), 77, false),
            Verdict::Accepted
        );
        // The old stream is now the foreign one.
        assert_eq!(
            latch.on_packet(addr("10.0.0.1:5000"), SSRC, false),
            Verdict::Rejected(Rejection::Ssrc)
        );
    }

    #[test]
    fn silence_does_not_unpin() {
        // The core has no clock: however long the pinned source is quiet,
        // nothing but signalling changes the pin.
        let mut latch = latched();
        for _ in 0..1000 {
            assert_eq!(
                latch.on_packet(addr("10.0.0.1:6000"), SSRC, true),
                Verdict::Rejected(Rejection::Source)
            );
        }
        assert_eq!(latch.source(), Some(addr("10.0.0.1:5000")));
    }

    #[test]
    fn a_renegotiation_to_a_new_address_reopens_latching() {
        let mut latch = latched();
        latch.resignal(Some(addr("10.0.0.7:4000")));
        assert_eq!(latch.source(), None);
        // The old host may no longer latch; the new one may.
        assert_eq!(
            latch.on_packet(addr("10.0.0.1:5000"), SSRC, false),
            Verdict::Rejected(Rejection::Source)
        );
        assert_eq!(
            latch.on_packet(addr("10.0.0.7:4100"), 9, false),
            Verdict::Latched(addr("10.0.0.7:4100"))
        );
    }

    #[test]
    fn a_renegotiation_to_the_same_address_keeps_the_pin_and_opens_the_ssrc() {
        let mut latch = latched();
        latch.resignal(Some(addr("10.0.0.1:4000")));
        assert_eq!(latch.source(), Some(addr("10.0.0.1:5000")));
        // Another port is still refused, and does not use up the window.
        assert_eq!(
            latch.on_packet(addr("10.0.0.1:5002"), 9, false),
            Verdict::Rejected(Rejection::Source)
        );
        // The pinned source's next packet may bring a new SSRC unmarked.
        assert_eq!(
            latch.on_packet(addr("10.0.0.1:5000"), 9, false),
            Verdict::NewSsrc(9)
        );
        // Once only.
        assert_eq!(
            latch.on_packet(addr("10.0.0.1:5000"), 10, false),
            Verdict::Rejected(Rejection::Ssrc)
        );
        // Kept SSRC after a renegotiation closes the window too.
        latch.resignal(Some(addr("10.0.0.1:4000")));
        assert_eq!(
            latch.on_packet(addr("10.0.0.1:5000"), 9, false),
            Verdict::Accepted
        );
        assert_eq!(
            latch.on_packet(addr("10.0.0.1:5000"), 11, false),
            Verdict::Rejected(Rejection::Ssrc)
        );
    }
}
