"""A stand-in scoring flow for the lifecycle tests: reads its values, prints, and ends as told.

Standard library and PyYAML only. It can run until stopped, exit with a chosen code, and report completion to the
scheduler named in its values (`global.scheduler.url`, with the job token), the way a batch flow will.
"""

from __future__ import annotations

import argparse
import builtins
import json
import os
import signal
import sys
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime

import yaml


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--values", default=os.environ.get("MODELOPS_VALUES"))
    parser.add_argument("--lines", type=int, default=0, help="numbered log lines to print first")
    parser.add_argument("--run-for", type=float, default=None, help="seconds to run; default: until stopped")
    parser.add_argument("--until-file", default=None, help="run until this file exists")
    parser.add_argument("--exit-code", type=int, default=0)
    parser.add_argument("--complete", choices=["succeeded", "failed"], default=None, help="report this first")
    parser.add_argument("--message", default="all records scored")
    parser.add_argument("--ignore-sigterm", action="store_true")
    parser.add_argument("--per-flow", action="store_true", help="report completion with this flow's name")
    parser.add_argument(
        "--complete-when-file", default=None, help="report completion once this file exists ({job}: the job's id)"
    )
    parser.add_argument("--starts-file", default=None, help="append the job's id to this file at start")
    parser.add_argument(
        "--report-retry-seconds", type=float, default=0.0, help="retry a completion report that finds no server"
    )
    parser.add_argument("--stamp", action="store_true", help="start each line with the time, as real components do")
    parser.add_argument(
        "--progress", type=int, default=None, help="report this many records done, as a named flow, before completing"
    )
    args = parser.parse_args()
    if args.stamp:
        globals()["print"] = _stamped_print

    if args.ignore_sigterm:
        signal.signal(signal.SIGTERM, lambda *_: print("SIGTERM ignored", flush=True))
    name = os.environ.get("MODELOPS_COMPONENT", "?")
    with open(args.values, encoding="utf-8") as handle:
        text = handle.read()
    print(f"fake flow {name} pid {os.getpid()} read {len(text)} bytes of values", flush=True)
    if args.starts_file is not None:
        with open(args.starts_file, "a", encoding="utf-8") as starts:
            starts.write(f"{_scheduler(text)[2]} {name} {os.getpid()}\n")
    print(f"services: {os.environ.get('MODELOPS_SERVICE_URLS', '{}')}", flush=True)
    leaked = sorted(k for k in os.environ if k.startswith("MODELOPS_SCHEDULER_"))
    print(f"scheduler variables seen: {leaked}", flush=True)
    for i in range(args.lines):
        print(f"{name} line {i + 1}", flush=True)

    if args.progress is not None:
        url, token, job_id = _scheduler(text)
        report = {
            "flow": name,
            "state": "done",
            "read": args.progress,
            "written": args.progress,
            "total": args.progress,
            "unit": "records",
            "done": args.progress,
            "rate": 100.0,
            "outputs": [f"file sink 'out' (/data/{name}-scored.csv)"],
            "services": {"m1": {"requests": 3, "rows": args.progress, "latency_ms": {"mean": 2, "p50": 2, "p99": 5}}},
        }
        request = urllib.request.Request(
            f"{url}/api/v1/jobs/{job_id}/progress",
            data=json.dumps(report).encode(),
            method="POST",
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            print(f"reported progress: HTTP {response.status}", flush=True)

    if args.complete is not None:
        url, token, job_id = _scheduler(text)
        gate = args.complete_when_file.replace("{job}", job_id) if args.complete_when_file is not None else None
        while gate is not None and not os.path.exists(gate):
            time.sleep(0.02)
        report = {"succeeded": args.complete == "succeeded", "message": args.message}
        if args.per_flow:
            report["flow"] = name
        body = json.dumps(report).encode()
        request = urllib.request.Request(
            f"{url}/api/v1/jobs/{job_id}/complete",
            data=body,
            method="POST",
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        )
        deadline = time.monotonic() + args.report_retry_seconds
        while True:
            try:
                with urllib.request.urlopen(request, timeout=10) as response:
                    print(f"reported completion: HTTP {response.status}", flush=True)
                break
            except (urllib.error.URLError, ConnectionError) as exc:
                if isinstance(exc, urllib.error.HTTPError) or time.monotonic() > deadline:
                    raise
                print(f"completion report failed ({exc}); trying again", flush=True)
                time.sleep(0.2)

    if args.until_file is not None:
        while not os.path.exists(args.until_file):
            time.sleep(0.02)
    elif args.run_for is None:
        while True:
            time.sleep(3600)
    else:
        time.sleep(args.run_for)
    print(f"fake flow {name} exits with code {args.exit_code}", flush=True)
    return args.exit_code


def _scheduler(values_yaml: str) -> tuple[str, str, str]:
    """`global.scheduler.url`, `.token` and `global.jobId` from the values."""
    values = yaml.safe_load(values_yaml)
    return values["global"]["scheduler"]["url"], values["global"]["scheduler"]["token"], values["global"]["jobId"]


def _stamped_print(*values: object, flush: bool = False) -> None:
    """`print`, with the line starting with the time in ISO 8601 UTC milliseconds (ir.logformat's format)."""
    now = datetime.now(UTC)
    builtins.print(now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}Z", *values, flush=flush)


if __name__ == "__main__":
    sys.exit(main())
