"""Benchmark: how fast a failed install reaches FAILED (issue 10; aim: within 3 s of the failure).

Generates, in a temporary folder, a pipeline of one scoring flow (CSV in, CSV out) and one ONNX scoring service
whose artifact is not an ONNX model (its sha256 matches, so the IR accepts it, and onnxruntime refuses it when
the service loads it). Then runs `modelops run` on it `--repeat` times, each on an embedded scheduler (real
`modelops scoring-service` and `modelops flow` processes, the local backend), under a fresh `MODELOPS_HOME`.
Every run ends FAILED with `InstallFailed`: the service exits with code 1 while the flow, already started,
waits for it; uninstall then stops the flow.

Measured per run, from the timestamps of the job's own logs (one clock, milliseconds):

- service end: the last line the service wrote (it exits right after), i.e. the failure;
- known: the install log's `install: failed ...` line (the scheduler has seen the service exit);
- FAILED: the uninstall log's last line (`uninstall: done ...; the job is FAILED (InstallFailed)`), written
  just before the FAILED transition is stored;

and printed: service end -> FAILED (against the 3 s aim), known -> FAILED (the teardown), and the lines that
say how the flow was stopped. Never fails on a slow result.

Usage:
    .venv/bin/python bench/teardown.py [--repeat 5] [--keep DIR]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

MODELOPS = str(Path(sys.executable).with_name("modelops"))
AIM_SECONDS = 3.0

PIPELINE = """
apiVersion: modelops/v1
kind: ScoringPipeline
metadata: {name: teardown-bench}
spec:
  mode: batch
  flows: [f1]
  timeouts: {install: 5m, wait: 1h, uninstall: 5m}
---
apiVersion: modelops/v1
kind: DataChannel
metadata: {name: rows-in}
spec:
  direction: source
  type: file
  file: {path: data/in.csv, format: csv}
  schema:
    fields:
      - {name: id, type: integer, format: int64}
      - {name: x, type: number, format: double}
---
apiVersion: modelops/v1
kind: DataChannel
metadata: {name: rows-out}
spec:
  direction: sink
  type: file
  file: {path: out/scored.csv, format: csv}
  schema:
    fields:
      - {name: id, type: integer, format: int64}
      - {name: score, type: number, format: double}
---
apiVersion: modelops/v1
kind: ScoringFlow
metadata: {name: f1}
spec:
  source: rows-in
  sinks: [rows-out]
  steps:
    - name: score_it
      score:
        model: m1
        inputs: [{input: features, fields: [x]}]
        outputs: [{output: score, field: score}]
---
apiVersion: modelops/v1
kind: Model
metadata: {name: m1}
spec:
  runtime: onnx
  uri: artifacts/m1.onnx
  sha256: SHA256
  inputs: [{name: features, datatype: FP32, shape: [-1, 1]}]
  outputs: [{name: score, datatype: FP32, shape: [-1]}]
"""

_STAMP = re.compile(r"^(\d{4}-\d\d-\d\d)[T ](\d\d:\d\d:\d\d)[.,](\d{3})")


def stamp(line: str) -> float | None:
    """Seconds since the epoch of a log line's leading timestamp (ISO 8601 UTC, or `YYYY-MM-DD HH:MM:SS,mmm`)."""
    match = _STAMP.match(line)
    if match is None:
        return None
    day, clock, millis = match.groups()
    return datetime.fromisoformat(f"{day}T{clock}.{millis}+00:00").astimezone(UTC).timestamp()


def last_stamped(lines: list[str], contains: str = "") -> tuple[float, str] | None:
    for line in reversed(lines):
        at = stamp(line)
        if at is not None and contains in line:
            return at, line
    return None


def write_bundle(folder: Path) -> None:
    (folder / "data").mkdir(parents=True)
    (folder / "artifacts").mkdir()
    (folder / "data" / "in.csv").write_text("id,x\n" + "".join(f"{i},{i / 10}\n" for i in range(100)))
    artifact = folder / "artifacts" / "m1.onnx"
    artifact.write_bytes(b"this is not an ONNX model\n")
    sha = hashlib.sha256(artifact.read_bytes()).hexdigest()
    (folder / "pipeline.yaml").write_text(PIPELINE.replace("SHA256", sha))


@dataclass(frozen=True)
class Result:
    exit_code: int
    wall: float
    to_failed: float
    """From the service's last line (the failure) to the FAILED line."""
    teardown: float
    """From the install log's failure line to the FAILED line: uninstall, teardown and the final state."""
    known_after: float
    """From the service's last line to the install log's failure line: the service's exit and its detection."""
    why: str
    flow: list[str]
    stops: list[str]
    final: str


def one_run(bundle: Path, home: Path) -> Result:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MODELOPS_", "HTTP_PROXY", "http_proxy"))}
    env["MODELOPS_HOME"] = str(home)
    started = time.monotonic()
    done = subprocess.run([MODELOPS, "run", str(bundle)], capture_output=True, text=True, env=env, timeout=300)
    wall = time.monotonic() - started
    jobs = sorted((home / "jobs").iterdir())
    if len(jobs) != 1:
        raise SystemExit(f"expected one job under {home / 'jobs'}, found {len(jobs)}:\n{done.stdout}{done.stderr}")
    run = jobs[0]
    install = (run / "install.log").read_text().splitlines()
    uninstall = (run / "uninstall.log").read_text().splitlines()
    service = (run / "services" / "m1.log").read_text().splitlines()
    flow = (run / "flows" / "f1.log").read_text().splitlines()
    service_end = last_stamped(service)
    # Older versions logged only `wait for readiness: failed after ...s`, without the reason.
    known = last_stamped(install, "install: failed") or last_stamped(install, ": failed after")
    failed = last_stamped(uninstall, "the job is FAILED")
    if service_end is None or known is None or failed is None:
        raise SystemExit(f"the run did not fail as planned (exit {done.returncode}):\n{done.stdout}{done.stderr}")
    return Result(
        exit_code=done.returncode,
        wall=wall,
        to_failed=failed[0] - service_end[0],
        teardown=failed[0] - known[0],
        known_after=known[0] - service_end[0],
        why=known[1].split(" with ", 1)[-1],
        flow=[line.split(": ", 1)[-1] for line in flow if "stopped" in line] or ["(no stop line)"],
        stops=[line.split(" ", 1)[1] for line in uninstall if "SIGTERM" in line or "already" in line],
        final=failed[1].split(" ", 1)[1],
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--keep", type=Path, default=None, help="keep the bundle and the homes in this folder")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="modelops-teardown-") as scratch:
        root = args.keep or Path(scratch)
        bundle = root / "bundle"
        write_bundle(bundle)
        print(f"python {sys.version.split()[0]}, {os.cpu_count()} cores; load average {os.getloadavg()[0]:.2f}")
        results = []
        for index in range(args.repeat):
            result = one_run(bundle, root / f"home-{index}")
            results.append(result)
            print(
                f"run {index + 1}: exit {result.exit_code}; failure -> FAILED {result.to_failed:.2f}s "
                f"(seen after {result.known_after:.2f}s, then teardown + final state {result.teardown:.2f}s); "
                f"`modelops run` took {result.wall:.1f}s"
            )
            if index == 0:
                print(f"  install log: ... with {result.why}")
                for line in result.flow:
                    print(f"  flow log:    {line}")
                for line in result.stops:
                    print(f"  uninstall:   {line}")
                print(f"  uninstall:   {result.final}")
        to_failed = [r.to_failed for r in results]
        median = statistics.median(to_failed)
        print(
            f"failure -> FAILED over {len(results)} runs: median {median:.2f}s, max {max(to_failed):.2f}s; "
            f"aim {AIM_SECONDS:g}s: {'met' if max(to_failed) <= AIM_SECONDS else 'NOT met'} "
            f"(median {median / AIM_SECONDS:.2f} of the budget)"
        )
        print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
