#!/usr/bin/env python3
"""Load for bench/srtp-cpu.sh: CALLS calls to NUMBER at the daemon's SIP
port (UDP, loopback), each streaming 20 ms PCMU frames of a tone for the
echo agent to send back, plain RTP or SRTP (SDES, AES_CM_128_HMAC_SHA1_80,
protected by libsrtp through pylibsrtp). Prints "ready" once every call is
up and streaming, "done" after SECONDS more, then hangs up. The echo is not
read (the kernel drops it): the daemon does the same work either way.
Usage: srtp-load.py SIP_PORT NUMBER CALLS SECONDS plain|srtp [CPS]"""
import base64
import math
import os
import socket
import sys
import time

sip_port, number, calls, seconds, mode = (
    int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), sys.argv[5])
cps = int(sys.argv[6]) if len(sys.argv) > 6 else 50
daemon = ("127.0.0.1", sip_port)
if mode == "srtp":
    from pylibsrtp import Policy, Session

def ulaw(sample):
    sign = 0x80 if sample < 0 else 0
    sample = min(abs(sample), 32635) + 132
    exponent = max(0, sample.bit_length() - 8)
    mantissa = (sample >> (exponent + 3)) & 0x0F
    return ~(sign | (min(exponent, 7) << 4) | mantissa) & 0xFF

TONE = [bytes(ulaw(int(8000 * math.sin(2 * math.pi * 1000 * (f * 160 + n) / 8000)))
              for n in range(160)) for f in range(50)]

sip = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sip.bind(("127.0.0.1", 0))
sip.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
me = "127.0.0.1:%d" % sip.getsockname()[1]

class Call:
    pass

def header(text, name):
    for line in text.split("\r\n"):
        k, _, v = line.partition(":")
        if k.strip().lower() == name.lower():
            return v.strip()
    return None

def invite(i):
    c = Call()
    c.id = "%s-%d@srtp-load" % (os.urandom(6).hex(), i)
    c.tag = os.urandom(6).hex()
    c.media = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    c.media.bind(("127.0.0.1", 0))
    c.media.setblocking(False)
    port = c.media.getsockname()[1]
    c.ssrc = int.from_bytes(os.urandom(4), "big")
    c.seq = 0
    if mode == "srtp":
        c.key = os.urandom(30)
        media = ("m=audio %d RTP/SAVP 0\r\na=rtpmap:0 PCMU/8000\r\n"
                 "a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:%s\r\n"
                 % (port, base64.b64encode(c.key).decode()))
    else:
        media = "m=audio %d RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n" % port
    sdp = ("v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
           + media + "a=ptime:20\r\n")
    msg = ("INVITE sip:%s@127.0.0.1:%d SIP/2.0\r\nVia: SIP/2.0/UDP %s;branch=z9hG4bK%s;rport\r\n"
           "Max-Forwards: 70\r\nFrom: <sip:+15550001@%s>;tag=%s\r\nTo: <sip:%s@127.0.0.1:%d>\r\n"
           "Call-ID: %s\r\nCSeq: 1 INVITE\r\nContact: <sip:load@%s>\r\n"
           "Content-Type: application/sdp\r\nContent-Length: %d\r\n\r\n%s"
           % (number, sip_port, me, os.urandom(6).hex(), me, c.tag, number, sip_port,
              c.id, me, len(sdp), sdp))
    sip.sendto(msg.encode(), daemon)
    c.up = False
    return c

def request(c, method, cseq):
    msg = ("%s %s SIP/2.0\r\nVia: SIP/2.0/UDP %s;branch=z9hG4bK%s;rport\r\n"
           "Max-Forwards: 70\r\nFrom: <sip:+15550001@%s>;tag=%s\r\nTo: %s\r\n"
           "Call-ID: %s\r\nCSeq: %d %s\r\nContent-Length: 0\r\n\r\n"
           % (method, c.contact, me, os.urandom(6).hex(), me, c.tag, c.to, c.id, cseq, method))
    sip.sendto(msg.encode(), daemon)

def on_sip(by_id):
    sip.setblocking(False)
    while True:
        try:
            data = sip.recv(65535).decode(errors="replace")
        except BlockingIOError:
            return
        c = by_id.get(header(data, "Call-ID"))
        if c is None or not data.startswith("SIP/2.0 200") or "INVITE" not in (header(data, "CSeq") or ""):
            continue
        c.to = header(data, "To")
        contact = header(data, "Contact") or ""
        c.contact = contact[contact.find("<") + 1:contact.find(">")] if "<" in contact else "sip:%s@127.0.0.1:%d" % (number, sip_port)
        request(c, "ACK", 1)
        if c.up:
            continue
        body = data.split("\r\n\r\n", 1)[1]
        for line in body.split("\r\n"):
            if line.startswith("m=audio "):
                c.remote = ("127.0.0.1", int(line.split()[1]))
        if mode == "srtp":
            c.srtp = Session(policy=Policy(key=c.key, ssrc_type=Policy.SSRC_ANY_OUTBOUND,
                                           srtp_profile=Policy.SRTP_PROFILE_AES128_CM_SHA1_80))
        c.up = True

def send_frame(c):
    c.seq += 1
    head = bytes([0x80, 0]) + (c.seq & 0xFFFF).to_bytes(2, "big") + \
        ((c.seq * 160) & 0xFFFFFFFF).to_bytes(4, "big") + c.ssrc.to_bytes(4, "big")
    packet = head + TONE[c.seq % 50]
    if mode == "srtp":
        packet = c.srtp.protect(packet)
    try:
        c.media.sendto(packet, c.remote)
    except (BlockingIOError, OSError):
        pass

by_id = {}
tick = time.monotonic()
next_invite = tick
ready_at = None
end = None
while True:
    now = time.monotonic()
    while len(by_id) < calls and next_invite <= now:
        c = invite(len(by_id))
        by_id[c.id] = c
        next_invite += 1.0 / cps
    on_sip(by_id)
    for c in by_id.values():
        if c.up:
            send_frame(c)
    up = sum(1 for c in by_id.values() if c.up)
    if ready_at is None and up == calls:
        # One more second so that every jitter buffer is in its steady state.
        ready_at = now + 1.0
    if ready_at is not None and end is None and now >= ready_at:
        print("ready", flush=True)
        end = now + seconds
    if end is not None and now >= end:
        print("done", flush=True)
        break
    if ready_at is None and now - tick > 120:
        print("only %d of %d calls up" % (up, calls), file=sys.stderr, flush=True)
        sys.exit(1)
    tick += 0.020
    time.sleep(max(0.0, tick - time.monotonic()))
for c in by_id.values():
    request(c, "BYE", 2)
time.sleep(1)
