#!/usr/bin/env python3
"""A webhook receiver for agentline's black-box tests.

Verifies every request with the `standardwebhooks` package (a verifier
nobody here wrote), records what arrived to a JSONL file, and misbehaves on
request as the control file says. It binds 127.0.0.1 only, on a free port
that it writes to --port-file.

Control file (JSON, re-read on every request; all keys optional):
  secrets        list of whsec_ secrets; each request records which verify
  fail_first     answer the first N attempts of each webhook-id with fail_status
  fail_status    status for those attempts (default 500)
  retry_after    value of a Retry-After header on failed answers
  status         status for every other request (default 200)
  hang_seconds   sleep this long before answering (bounded by 60)

Each record: id, timestamp, signature, verified (one bool per secret),
attempt (per id, from 1), status (what was answered), received_at (Unix
seconds, float), body (the raw body text).
"""

import argparse
import os
import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from standardwebhooks.webhooks import Webhook, WebhookVerificationError

LOCK = threading.Lock()
ATTEMPTS = {}


def load_control(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def make_handler(control_path, log_path):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def do_POST(self):
            received_at = time.time()
            length = int(self.headers.get("content-length", "0"))
            body = self.rfile.read(length)
            control = load_control(control_path)
            headers = {k.lower(): v for k, v in self.headers.items()}
            verified = []
            for secret in control.get("secrets", []):
                try:
                    Webhook(secret).verify(body, headers)
                    verified.append(True)
                except WebhookVerificationError:
                    verified.append(False)
            msg_id = headers.get("webhook-id", "")
            with LOCK:
                ATTEMPTS[msg_id] = ATTEMPTS.get(msg_id, 0) + 1
                attempt = ATTEMPTS[msg_id]
            hang = min(float(control.get("hang_seconds", 0)), 60.0)
            if hang > 0:
                time.sleep(hang)
            extra = {}
            if attempt <= int(control.get("fail_first", 0)):
                status = int(control.get("fail_status", 500))
                if control.get("retry_after") is not None:
                    extra["Retry-After"] = str(control["retry_after"])
            else:
                status = int(control.get("status", 200))
            record = {
                "id": msg_id,
                "timestamp": headers.get("webhook-timestamp"),
                "signature": headers.get("webhook-signature"),
                "verified": verified,
                "attempt": attempt,
                "status": status,
                "received_at": received_at,
                "body": body.decode("utf-8", "replace"),
            }
            with LOCK:
                with open(log_path, "a") as f:
                    f.write(json.dumps(record) + "\n")
            self.send_response(status)
            for k, v in extra.items():
                self.send_header(k, v)
            self.send_header("content-length", "0")
            self.end_headers()

    return Handler


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--control", required=True)
    p.add_argument("--log", required=True)
    p.add_argument("--port-file", required=True)
    args = p.parse_args()
    server = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(args.control, args.log))
    server.daemon_threads = True
    with open(args.port_file + ".tmp", "w") as f:
        f.write(str(server.server_address[1]))


    os.rename(args.port_file + ".tmp", args.port_file)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
