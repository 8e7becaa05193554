//! A classic pcap file (the libpcap format, microsecond timestamps) of SIP
//! messages, each wrapped in synthetic IPv4 or IPv6 and UDP headers built
//! from the real transport addresses, so Wireshark, tshark and sngrep read
//! it as if it had been captured on the wire.
//!
//! Link type LINKTYPE_RAW (101): each record starts with the IP header, the
//! version nibble telling v4 from v6. Headers follow RFC 791 (IPv4), RFC
//! 8200 (IPv6) and RFC 768 (UDP), checksums included.
//!
//! Must not: do IO; it builds bytes.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{SystemTime, UNIX_EPOCH};

/// LINKTYPE_RAW: raw IPv4 or IPv6, no link-layer header.
const LINKTYPE_RAW: u32 = 101;
/// Longest capture record we claim to hold.
const SNAPLEN: u32 = 262_144;
/// Most payload a UDP datagram can carry inside IPv4 (65535 - 20 - 8).
const MAX_UDP_PAYLOAD: usize = 65_507;

/// The 24-byte global header.
pub fn header() -> Vec<u8> {
    let mut out = Vec::with_capacity(24);
    out.extend_from_slice(&0xa1b2_c3d4_u32.to_le_bytes());
    out.extend_from_slice(&2u16.to_le_bytes());
    out.extend_from_slice(&4u16.to_le_bytes());
    out.extend_from_slice(&0i32.to_le_bytes()); // thiszone: UTC
    out.extend_from_slice(&0u32.to_le_bytes()); // sigfigs
    out.extend_from_slice(&SNAPLEN.to_le_bytes());
    out.extend_from_slice(&LINKTYPE_RAW.to_le_bytes());
    out
}

/// Appends one record: `payload` sent from `from` to `to` at `at`.
pub fn record(out: &mut Vec<u8>, at: SystemTime, from: SocketAddr, to: SocketAddr, payload: &[u8]) {
    let payload = &payload[..payload.len().min(MAX_UDP_PAYLOAD)];
    let packet = match (v4(from.ip()), v4(to.ip())) {
        (Some(src), Some(dst)) => ipv4_udp(src, from.port(), dst, to.port(), payload),
        _ => ipv6_udp(v6(from.ip()), from.port(), v6(to.ip()), to.port(), payload),
    };
    let since = at.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = u32::try_from(since.as_secs()).unwrap_or(u32::MAX);
    let len = u32::try_from(packet.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&secs.to_le_bytes());
    out.extend_from_slice(&since.subsec_micros().to_le_bytes());
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&packet);
}

fn v4(ip: IpAddr) -> Option<Ipv4Addr> {
    match ip {
        IpAddr::V4(ip) => Some(ip),
        IpAddr::V6(ip) => ip.to_ipv4_mapped(),
    }
}

fn v6(ip: IpAddr) -> Ipv6Addr {
    match ip {
        IpAddr::V4(ip) => ip.to_ipv6_mapped(),
        IpAddr::V6(ip) => ip,
    }
}

/// RFC 1071 one's-complement sum, folded, not yet inverted.
fn sum(mut acc: u32, bytes: &[u8]) -> u32 {
    let mut chunks = bytes.chunks_exact(2);
    for pair in &mut chunks {
        acc += u32::from(u16::from_be_bytes([pair[0], pair[1]]));
    }
    if let [last] = chunks.remainder() {
        acc += u32::from(*last) << 8;
    }
    acc
}

fn fold(mut acc: u32) -> u16 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    // The folded sum fits in 16 bits.
    !(u16::try_from(acc).unwrap_or(0xffff))
}

fn udp(src_port: u16, dst_port: u16, payload: &[u8], pseudo: u32) -> Vec<u8> {
    let len = u16::try_from(8 + payload.len()).unwrap_or(u16::MAX);
    let mut out = Vec::with_capacity(8 + payload.len());
    out.extend_from_slice(&src_port.to_be_bytes());
    out.extend_from_slice(&dst_port.to_be_bytes());
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&[0, 0]);
    out.extend_from_slice(payload);
    // RFC 768: a computed zero is sent as all ones.
    let checksum = match fold(sum(pseudo + u32::from(len), &out)) {
        0 => 0xffff,
        c => c,
    };
    out[6..8].copy_from_slice(&checksum.to_be_bytes());
    out
}

fn ipv4_udp(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16, payload: &[u8]) -> Vec<u8> {
    let pseudo = sum(sum(17, &src.octets()), &dst.octets());
    let datagram = udp(sport, dport, payload, pseudo);
    let total = u16::try_from(20 + datagram.len()).unwrap_or(u16::MAX);
    let mut ip = vec![0x45, 0];
    ip.extend_from_slice(&total.to_be_bytes());
    ip.extend_from_slice(&[0, 0, 0x40, 0]); // id 0, don't fragment
    ip.extend_from_slice(&[64, 17, 0, 0]); // TTL, UDP, checksum below
    ip.extend_from_slice(&src.octets());
    ip.extend_from_slice(&dst.octets());
    let checksum = fold(sum(0, &ip));
    ip[10..12].copy_from_slice(&checksum.to_be_bytes());
    ip.extend_from_slice(&datagram);
    ip
}

fn ipv6_udp(src: Ipv6Addr, sport: u16, dst: Ipv6Addr, dport: u16, payload: &[u8]) -> Vec<u8> {
    let pseudo = sum(sum(17, &src.octets()), &dst.octets());
    let datagram = udp(sport, dport, payload, pseudo);
    let len = u16::try_from(datagram.len()).unwrap_or(u16::MAX);
    let mut ip = vec![0x60, 0, 0, 0];
    ip.extend_from_slice(&len.to_be_bytes());
    ip.extend_from_slice(&[17, 64]); // next header UDP, hop limit
    ip.extend_from_slice(&src.octets());
    ip.extend_from_slice(&dst.octets());
    ip.extend_from_slice(&datagram);
    ip
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_record_has_valid_checksums_and_lengths() {
        let mut out = header();
        let from: SocketAddr = "192.0.2.1:5060".parse().unwrap();
        let to: SocketAddr = "198.51.100.7:5070".parse().unwrap();
        record(
            &mut out,
            UNIX_EPOCH,
            from,
            to,
            b"OPTIONS sip:x SIP/2.0\r\n\r\n",
        );
        assert_eq!(&out[..4], &[0xd4, 0xc3, 0xb2, 0xa1]);
        assert_eq!(
            u32::from_le_bytes([out[20], out[21], out[22], out[23]]),
            101
        );
        let rec = &out[24..];
        let incl = u32::from_le_bytes([rec[8], rec[9], rec[10], rec[11]]) as usize;
        let packet = &rec[16..];
        assert_eq!(packet.len(), incl);
        assert_eq!(packet.len(), 20 + 8 + 25);
        // A header with its checksum in place sums to all ones.
        assert_eq!(fold(sum(0, &packet[..20])), 0);
        let pseudo = sum(sum(17, &[192, 0, 2, 1]), &[198, 51, 100, 7]) + 33;
        assert_eq!(fold(sum(pseudo, &packet[20..])), 0);
        assert_eq!(&packet[20..22], &5060u16.to_be_bytes());
    }

    #[test]
    fn ipv6_addresses_get_an_ipv6_header() {
        let mut out = Vec::new();
        let from: SocketAddr = "[2001:db8::1]:5060".parse().unwrap();
        let to: SocketAddr = "192.0.2.9:5060".parse().unwrap();
        record(&mut out, UNIX_EPOCH, from, to, b"x");
        assert_eq!(out[16] >> 4, 6);
        assert_eq!(out.len(), 16 + 40 + 8 + 1);
    }
}
