# The PocketSphinx 5 recognizer worker that agentline runs as a child process
# (src/agent/engines/pocketsphinx.rs embeds this file and runs it with
# `python -c`). One worker serves one call.
#
# argv[1]: JSON object of extra Decoder options.
# stdin: frames of 1 kind byte + 4-byte little-endian length + payload:
#   b"A": 16 kHz mono signed 16-bit little-endian audio, fed to the decoder;
#   b"E": the caller's turn ended: finish the utterance and start the next.
# stdout: one JSON object a line:
#   {"ready": true} once the model is loaded;
#   {"partial": TEXT} while the caller speaks, when the best guess changes;
#   {"final": TEXT} after each b"E";
#   {"error": TEXT} before exiting on a problem.
# Decoder log lines go to stderr, which agentline logs.
import json
import struct
import sys


def main():
    out = sys.stdout

    def send(**msg):
        out.write(json.dumps(msg) + "\n")
        out.flush()

    try:
        options = json.loads(sys.argv[1]) if len(sys.argv) > 1 else {}
        from pocketsphinx import Decoder
    except ImportError as e:
        send(error="the Python module pocketsphinx is missing "
             "(pip install pocketsphinx==5.1.1): %s" % e)
        return 2
    except ValueError as e:
        send(error="bad decoder options: %s" % e)
        return 2
    decoder = Decoder(loglevel="ERROR", **options)
    send(ready=True)
    stdin = sys.stdin.buffer
    decoder.start_utt()
    frames = 0
    last = ""
    while True:
        head = stdin.read(5)
        if len(head) < 5:
            return 0
        kind = head[:1]
        size = struct.unpack("<I", head[1:])[0]
        payload = stdin.read(size) if size else b""
        if len(payload) < size:
            return 0
        if kind == b"A":
            decoder.process_raw(payload, False, False)
            frames += 1
            # A partial every 10 frames (200 ms) keeps the search cheap.
            if frames % 10 == 0:
                hyp = decoder.hyp()
                text = hyp.hypstr if hyp else ""
                if text and text != last:
                    last = text
                    send(partial=text)
        elif kind == b"E":
            decoder.end_utt()
            hyp = decoder.hyp()
            send(final=hyp.hypstr if hyp else "")
            decoder.start_utt()
            frames = 0
            last = ""
        else:
            send(error="unknown frame kind %r" % kind)
            return 2


sys.exit(main())
