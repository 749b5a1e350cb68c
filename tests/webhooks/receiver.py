"""A webhook receiver for the tests: an HTTP server on 127.0.0.1 that records
every request it gets as one JSON line on stdout, and verifies signatures.

    receiver.py serve [--port N] [--fail-first N] [--status CODE] [--delay-ms MS]
        Prints `listening <port>`, then one line per request:
        {"at": <unix float>, "headers": {...}, "body": "...", "answered": <status>}.
        --fail-first N answers 500 to the first N attempts of each event id
        (X-Tidings-Event-Id), then 204; --status answers CODE to everything.

    receiver.py verify SECRET < lines
        Checks each recorded request (a line as `serve` prints them) twice:
        with the Standard Webhooks library (webhook-id, webhook-timestamp,
        webhook-signature) and with the recipe of Tidings' README for
        X-Tidings-Signature. Prints `verified <n>`; exits 1 on the first
        request that fails either check.
"""

import hashlib
import hmac
import json
import sys
import threading
import time
from base64 import b64decode
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

TOLERANCE_SECONDS = 300


def tidings_verify(secret: str, headers: dict, body: bytes) -> None:
    """The README's recipe for X-Tidings-Signature."""
    fields = dict(part.split("=", 1) for part in headers["x-tidings-signature"].split(","))
    timestamp = int(fields["t"])
    if abs(time.time() - timestamp) > TOLERANCE_SECONDS:
        raise ValueError("timestamp outside the replay window")
    key = b64decode(secret.removeprefix("whsec_"))
    expected = hmac.new(key, f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected, fields["v1"]):
        raise ValueError("X-Tidings-Signature does not match")


def serve(args):
    fail_first = int(args.get("--fail-first", 0))
    status = int(args["--status"]) if "--status" in args else None
    delay = int(args.get("--delay-ms", 0)) / 1000
    attempts = {}
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            length = int(self.headers.get("Content-Length", 0))
            body = self.rfile.read(length)
            event = self.headers.get("X-Tidings-Event-Id", "")
            with lock:
                attempts[event] = attempts.get(event, 0) + 1
                n = attempts[event]
            if delay:
                time.sleep(delay)
            answer = status if status is not None else (500 if n <= fail_first else 204)
            self.send_response(answer)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")
            line = {
                "at": time.time(),
                "headers": {k.lower(): v for k, v in self.headers.items()},
                "body": body.decode(),
                "answered": answer,
            }
            with lock:
                sys.stdout.write(json.dumps(line) + "\n")
                sys.stdout.flush()

        def log_message(self, *_):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", int(args.get("--port", 0))), Handler)
    print(f"listening {server.server_address[1]}", flush=True)
    server.serve_forever()


def verify(secret):
    from standardwebhooks.webhooks import Webhook

    standard = Webhook(secret)
    n = 0
    for line in sys.stdin:
        if not line.strip():
            continue
        request = json.loads(line)
        headers, body = request["headers"], request["body"]
        standard.verify(body, headers)
        tidings_verify(secret, headers, body.encode())
        n += 1
    print(f"verified {n}")


def main():
    command, rest = sys.argv[1], sys.argv[2:]
    if command == "serve":
        serve(dict(zip(rest[::2], rest[1::2])))
    elif command == "verify":
        verify(rest[0])
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
