#!/usr/bin/env python3
"""Loss in a capture of RTP streams: reads a classic pcap (Ethernet or Linux
cooked, IPv4, UDP), follows each SSRC's sequence numbers (wrap included) and
prints "streams packets expected lost": expected is each stream's span from
its first to its last packet, so a stream cut by the capture's ends counts
no loss, only holes inside it do."""
import struct
import sys


def packets(path):
    with open(path, "rb") as f:
        header = f.read(24)
        magic = struct.unpack("<I", header[:4])[0]
        order = "<" if magic in (0xA1B2C3D4, 0xA1B23C4D) else ">"
        link = struct.unpack(order + "I", header[20:24])[0]
        skip = {1: 14, 113: 16}[link]
        while True:
            record = f.read(16)
            if len(record) < 16:
                return
            caplen = struct.unpack(order + "I", record[8:12])[0]
            frame = f.read(caplen)
            ip = frame[skip:]
            if len(ip) < 20 or ip[0] >> 4 != 4 or ip[9] != 17:
                continue
            udp = ip[(ip[0] & 0x0F) * 4:]
            rtp = udp[8:]
            if len(rtp) >= 12 and rtp[0] >> 6 == 2:
                yield struct.unpack(">I", rtp[8:12])[0], struct.unpack(">H", rtp[2:4])[0]


def main():
    streams = {}
    for ssrc, seq in packets(sys.argv[1]):
        s = streams.get(ssrc)
        if s is None:
            streams[ssrc] = [seq, seq, seq, {seq}]
            continue
        # Unwrap against the last extended sequence number seen.
        last = s[2]
        ext = last + ((seq - last) & 0xFFFF)
        if ext - last > 0x8000:
            ext -= 0x10000
        s[0], s[1], s[2] = min(s[0], ext), max(s[1], ext), ext
        s[3].add(ext)
    got = sum(len(s[3]) for s in streams.values())
    expected = sum(s[1] - s[0] + 1 for s in streams.values())
    print(len(streams), got, expected, expected - got)


main()
