"""A stand-in scoring service for the lifecycle tests: answers `GET /v2/health/ready` like a real one would.

Standard library only, so it starts in a few tens of milliseconds. Options make it misbehave on purpose:
become ready late, never, exit early, or ignore SIGTERM (so teardown has to SIGKILL it).
"""

from __future__ import annotations

import argparse
import builtins
import os
import signal
import sys
import threading
import time
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=int(os.environ.get("MODELOPS_SCORING_PORT", "0")))
    parser.add_argument("--ready-after", type=float, default=0.0, help="seconds before /ready answers 200")
    parser.add_argument("--never-ready", action="store_true")
    parser.add_argument("--exit-after", type=float, default=None, help="exit by itself after this many seconds")
    parser.add_argument("--exit-code", type=int, default=0)
    parser.add_argument("--ignore-sigterm", action="store_true")
    parser.add_argument("--say", action="append", default=[], help="a line to print at start")
    parser.add_argument("--stamp", action="store_true", help="start each line with the time, as real components do")
    args = parser.parse_args()
    if args.stamp:
        globals()["print"] = _stamped_print

    name = os.environ.get("MODELOPS_COMPONENT", "?")
    started = time.monotonic()
    for line in args.say:
        print(line, flush=True)
    print(f"fake service {name} pid {os.getpid()} listening on 127.0.0.1:{args.port}", flush=True)

    if args.ignore_sigterm:
        signal.signal(signal.SIGTERM, lambda *_: print("SIGTERM ignored", flush=True))
    else:

        def stop(*_: object) -> None:
            print("SIGTERM: stopping", flush=True)
            os._exit(0)

        signal.signal(signal.SIGTERM, stop)

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            ready = not args.never_ready and time.monotonic() - started >= args.ready_after
            status = 200 if self.path == "/v2/health/ready" and ready else 503
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *_: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    if args.exit_after is not None:

        def leave() -> None:
            time.sleep(args.exit_after)
            print(f"fake service {name} exits with code {args.exit_code}", flush=True)
            os._exit(args.exit_code)

        threading.Thread(target=leave, daemon=True).start()
    server.serve_forever()


def _stamped_print(*values: object, flush: bool = False) -> None:
    """`print`, with the line starting with the time in ISO 8601 UTC milliseconds (ir.logformat's format)."""
    now = datetime.now(UTC)
    builtins.print(now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}Z", *values, flush=flush)


if __name__ == "__main__":
    sys.exit(main())
