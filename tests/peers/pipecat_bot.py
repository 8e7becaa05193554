"""A real Pipecat bot for tests/stream_agent.rs: Pipecat's own
FastAPIWebsocketTransport and TwilioFrameSerializer (unmodified, auto
hang-up off), with a pipeline that answers the caller's 700 Hz tone with
10 s of a 1200 Hz tone, and stops talking when the caller presses a key:
it pushes Pipecat's InterruptionFrame, which the serializer sends as
`clear`. No cloud service is reachable in tests, so the "agent" is a
FrameProcessor.

Usage: pipecat_bot.py PORT REPORT
Writes one JSON object per line to REPORT: the `start` message it got,
"tone" when the caller's tone arrived, each DTMF digit with the Unix
time it interrupted at, "disconnected".
"""

import json
import math
import struct
import sys
import time

import uvicorn
from fastapi import FastAPI, WebSocket
from pipecat.frames.frames import (
    Frame,
    InputAudioRawFrame,
    InputDTMFFrame,
    InterruptionFrame,
    OutputAudioRawFrame,
)
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.runner import PipelineRunner
from pipecat.pipeline.task import PipelineParams, PipelineTask
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.serializers.twilio import TwilioFrameSerializer
from pipecat.transports.websocket.fastapi import (
    FastAPIWebsocketParams,
    FastAPIWebsocketTransport,
)

PORT = int(sys.argv[1])
REPORT = sys.argv[2]
RATE = 8000


def report(obj):
    with open(REPORT, "a") as f:
        f.write(json.dumps(obj) + "\n")


def power(samples, hz):
    """Goertzel power of `hz`, normalised by the frame's length."""
    coeff = 2 * math.cos(2 * math.pi * hz / RATE)
    s1 = s2 = 0.0
    for x in samples:
        s0 = x + coeff * s1 - s2
        s2, s1 = s1, s0
    return (s1 * s1 + s2 * s2 - coeff * s1 * s2) / max(len(samples), 1) ** 2


def tone(hz, seconds):
    n = int(RATE * seconds)
    return struct.pack(
        f"<{n}h", *(int(8000 * math.sin(2 * math.pi * hz * i / RATE)) for i in range(n))
    )


class ToneAnswer(FrameProcessor):
    """Answers the caller's 700 Hz tone with a 1200 Hz one; reports keys."""

    def __init__(self):
        super().__init__()
        self.heard = 0
        self.answered = False

    async def process_frame(self, frame: Frame, direction: FrameDirection):
        await super().process_frame(frame, direction)
        if isinstance(frame, InputAudioRawFrame):
            n = len(frame.audio) // 2
            samples = struct.unpack(f"<{n}h", frame.audio[: 2 * n])
            # A steady tone: 700 Hz holds most of the frame's energy.
            energy = sum(x * x for x in samples) / max(n, 1)
            if energy > 1e5 and power(samples, 700) > 0.2 * energy:
                self.heard += 1
                if self.heard == 5 and not self.answered:
                    self.answered = True
                    report({"event": "tone", "hz": 700})
                    await self.push_frame(
                        OutputAudioRawFrame(audio=tone(1200, 10.0), sample_rate=RATE, num_channels=1)
                    )
            return
        if isinstance(frame, InputDTMFFrame):
            # Barge-in: the bot stops talking (the serializer sends `clear`).
            at = time.time()
            await self.push_frame(InterruptionFrame())
            report({"event": "dtmf", "digit": frame.button.value, "interrupted_at": at})
            return
        await self.push_frame(frame, direction)


app = FastAPI()


@app.websocket("/ws")
async def ws(websocket: WebSocket):
    await websocket.accept()
    # Twilio's first two messages: `connected`, then `start`.
    messages = websocket.iter_text()
    connected = json.loads(await messages.__anext__())
    start = json.loads(await messages.__anext__())
    report({"event": "start", "connected": connected, "start": start})
    serializer = TwilioFrameSerializer(
        stream_sid=start["start"]["streamSid"],
        call_sid=start["start"]["callSid"],
        params=TwilioFrameSerializer.InputParams(auto_hang_up=False),
    )
    transport = FastAPIWebsocketTransport(
        websocket=websocket,
        params=FastAPIWebsocketParams(
            audio_in_enabled=True,
            audio_out_enabled=True,
            add_wav_header=False,
            serializer=serializer,
        ),
    )
    task = PipelineTask(
        Pipeline([transport.input(), ToneAnswer(), transport.output()]),
        params=PipelineParams(audio_in_sample_rate=RATE, audio_out_sample_rate=RATE),
    )

    @transport.event_handler("on_client_disconnected")
    async def on_client_disconnected(transport, client):
        report({"event": "disconnected"})
        await task.cancel()

    await PipelineRunner(handle_sigint=False).run(task)


if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=PORT, log_level="warning")
