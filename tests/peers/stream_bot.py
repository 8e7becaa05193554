"""A raw Twilio Media Streams bot for tests/stream_agent.rs, for what
Pipecat's serializer never sends on its own: marks, and a `clear` at a
known instant. Built on the `websockets` library.

Usage: stream_bot.py PORT REPORT [listen]
With `listen`, it only records every message it gets (a media payload as
its decoded length) until the daemon closes, then writes them to REPORT.
Otherwise the script, per connection:
  1. after `start`, send 1 s of a 1000 Hz tone (in uneven chunks), then
     mark "one"; wait for "one" to come back (it must wait for playback);
  2. send 6 s more, then mark "two"; 1 s later send `clear` (its wall
     time is reported); wait for "two" to come back;
  3. a second later, close the WebSocket (the agent's hang-up).
Writes one JSON object to REPORT when done (times are Unix seconds).
"""

import asyncio
import base64
import json
import math
import sys
import time

from websockets.asyncio.server import serve

PORT = int(sys.argv[1])
REPORT = sys.argv[2]
LISTEN = sys.argv[3:] == ["listen"]


def ulaw(sample):
    """G.711 µ-law encoding of one 16-bit sample."""
    sign = 0x80 if sample < 0 else 0
    mag = min(abs(sample), 32635) + 0x84
    exp = 7
    while exp > 0 and not mag & (0x4000 >> (7 - exp)):
        exp -= 1
    mant = (mag >> (exp + 3)) & 0x0F
    return ~(sign | (exp << 4) | mant) & 0xFF


def tone(seconds, hz=1000):
    n = int(8000 * seconds)
    return bytes(ulaw(int(8000 * math.sin(2 * math.pi * hz * i / 8000))) for i in range(n))


async def media(ws, sid, audio, sizes=(160, 333, 1000, 7)):
    i = k = 0
    while i < len(audio):
        step = sizes[k % len(sizes)]
        k += 1
        chunk = audio[i : i + step]
        i += step
        await ws.send(json.dumps({"event": "media", "streamSid": sid,
                                  "media": {"payload": base64.b64encode(chunk).decode()}}))


async def wait_mark(ws, name, seen):
    while True:
        msg = json.loads(await ws.recv())
        seen.append(msg["event"])
        if msg["event"] == "mark" and msg["mark"]["name"] == name:
            return time.time()


async def listen(ws):
    got = []
    try:
        async for text in ws:
            msg = json.loads(text)
            if msg.get("event") == "media":
                msg["media"]["payload"] = len(base64.b64decode(msg["media"]["payload"]))
            got.append(msg)
    except Exception as e:  # the report says how it ended
        got.append({"error": str(e)})
    got.append({"closed": True})
    with open(REPORT, "w") as f:
        json.dump(got, f)


async def handler(ws):
    if LISTEN:
        return await listen(ws)
    out = {"events": []}
    connected = json.loads(await ws.recv())
    start = json.loads(await ws.recv())
    out["connected"], out["start"] = connected, start
    sid = start["streamSid"]
    # Garbage first: it must be counted and ignored, not end the call.
    await ws.send("not json")
    await ws.send(json.dumps({"event": "media", "streamSid": sid, "media": {"payload": "%%%"}}))
    await media(ws, sid, tone(1.0))
    out["one_sent"] = time.time()
    await ws.send(json.dumps({"event": "mark", "streamSid": sid, "mark": {"name": "one"}}))
    out["one_back"] = await wait_mark(ws, "one", out["events"])
    await media(ws, sid, tone(6.0))
    await ws.send(json.dumps({"event": "mark", "streamSid": sid, "mark": {"name": "two"}}))
    await asyncio.sleep(1.0)
    out["clear_at"] = time.time()
    await ws.send(json.dumps({"event": "clear", "streamSid": sid}))
    out["two_back"] = await wait_mark(ws, "two", out["events"])
    await asyncio.sleep(1.0)
    out["closed_at"] = time.time()
    with open(REPORT, "w") as f:
        json.dump(out, f)
    await ws.close()


async def main():
    async with serve(handler, "127.0.0.1", PORT):
        await asyncio.Future()


asyncio.run(main())
