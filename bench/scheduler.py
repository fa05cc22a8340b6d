"""Benchmark: the scheduling server on PostgreSQL (issue 3; targets >= 300 job creations/s, GET p99 < 20 ms).

Three processes, so the load generator never shares an interpreter with the server:

1. this script (the orchestrator) creates a fresh PostgreSQL database on 127.0.0.1:5432 as role `postgres`,
   migrates it with `modelops db upgrade`, starts the server, deploys two small pipelines, runs the load, stops
   the server and drops the database (also when something fails);
2. the server: `run_server()`, the function behind `modelops serve` (uvicorn, `create_app`, the local backend),
   started as `python bench/scheduler.py _serve`. The only difference from `modelops serve` is the command
   factory of the `LocalProcessDeployer` (the injection point the local backend offers; `modelops serve` has
   no option for it): it runs the test programs of `tests/scheduler/procs` instead of `modelops
   scoring-service` / `modelops flow`, and for the pipeline `bench-create` a program that does not exist;
3. the load generator: `wrk` (if installed; C, one thread, so it takes little CPU from the server) or an
   asyncio + httpx client (`--loadgen httpx`), with 32 concurrent connections.

What is measured:

- creations/s: `POST /api/v1/jobs {"pipeline": "bench-create"}` for `--duration` seconds. Every job created
  really starts: the local backend renders its values, tries to start its scoring service, fails at once
  (the program does not exist), uninstalls and ends the job FAILED (`InstallFailed`). So the figure includes
  that background work, as in production, but not the cost of a real process per job (at 300 jobs/s the
  machine would measure fork+exec of Python, not the scheduler). No setting or flag disables the start.
- `GET /api/v1/jobs/{id}` p50/p99 over the jobs just created (each with its 5 events), once the backend has
  finished all of them.
- on the local backend, with the fake scoring service and flow as real processes: the time from `POST /jobs`
  to RUNNING (render, start two processes, readiness) and from `POST /jobs/{id}/cancel` to CANCELLED (SIGTERM,
  reap, uninstall, final state), polled every 5 ms, for `--lifecycle-jobs` sequential jobs.

- with `--list-jobs N` (issue 14): N more jobs in end states bulk-inserted in one statement (a third of them of
  each pipeline, and 10 of a pipeline `bench-rare`; 70% SUCCEEDED, ~20% FAILED with a message holding "503",
  10% CANCELLED, 10 FAILED on a "timeout"), then `GET /api/v1/jobs` (the first page, 50 jobs) for each filter
  the API offers, each for `--list-duration` seconds with `--list-clients` connections (wrk).

Usage:
    .venv/bin/python bench/scheduler.py [--duration 10] [--clients 32] [--loadgen auto|wrk|httpx]
                                        [--lifecycle-jobs 10] [--profile DIR [--profile-gil]]
                                        [--list-jobs 100000 [--list-clients 1] [--list-duration 5]] [--skip-load]

`--profile DIR` records the server with py-spy (`pip install py-spy`) during the creation and GET phases and
writes the flame graphs plus the hottest functions (`*-top.txt`) there. Never fails on a slow result.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PROCS = ROOT / "tests" / "scheduler" / "procs"
ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
TARGET_CREATIONS = 300.0
TARGET_P99_MS = 20.0
MISSING_PROGRAM = "/nonexistent/modelops-bench/no-such-scoring-service"

CREATE_PIPELINE = """
apiVersion: modelops/v1
kind: ScoringPipeline
metadata: {name: NAME}
spec:
  mode: batch
  flows: [NAME-f]
  parameters:
    - {name: threshold, type: number, default: 0.5}
---
apiVersion: modelops/v1
kind: DataChannel
metadata: {name: NAME-in}
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
metadata: {name: NAME-out}
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
metadata: {name: NAME-f}
spec:
  source: NAME-in
  sinks: [NAME-out]
  steps:
    - name: score_it
      score:
        model: NAME-m
        inputs: [{input: features, fields: [x]}]
        outputs: [{output: score, field: score}]
    - {name: keep, filter: {field: score, op: ge, value: "${params.threshold}"}}
---
apiVersion: modelops/v1
kind: Model
metadata: {name: NAME-m}
spec:
  runtime: onnx
  uri: artifacts/m.onnx
  inputs: [{name: features, datatype: FP32, shape: [-1, 1]}]
  outputs: [{name: score, datatype: FP32, shape: [-1]}]
"""


# ================================================================================================ the server


def bench_commands(component: Any) -> list[str]:
    """The deployer's command factory: `bench-create-*` components cannot start, `bench-life-*` are the fakes."""
    if component.name.startswith("bench-create"):
        return [MISSING_PROGRAM]
    if component.kind == "service":
        return [sys.executable, str(PROCS / "fake_service.py"), "--port", str(component.port)]
    return [sys.executable, str(PROCS / "fake_flow.py"), "--values", str(component.values_path)]


def serve_main() -> None:
    """`_serve`: `modelops serve` with the bench command factory (settings from MODELOPS_SCHEDULER_*)."""
    import typer

    from scheduler.backends.local import LocalBackend
    from scheduler.cli import _settings, run_server
    from scheduler.deployers.local import LocalProcessDeployer
    from scheduler.settings import SchedulerSettings
    from scheduler.store import JobStore

    def factory(store: JobStore, settings: SchedulerSettings, secret: bytes) -> LocalBackend:
        return LocalBackend(store, settings, secret, LocalProcessDeployer(settings.home / "jobs", bench_commands))

    try:
        run_server(_settings(), backend_factory=factory)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)


# ================================================================================================ the load


WRK_CREATE = """
wrk.method = "POST"
wrk.body = '{"pipeline": "bench-create"}'
wrk.headers["Content-Type"] = "application/json"
"""

WRK_GET = """
local ids = {}
local n = 0
local i = 0
init = function(args)
  for line in io.lines(args[1]) do n = n + 1; ids[n] = line end
  i = math.random(n)
end
request = function()
  i = (i % n) + 1
  return wrk.format("GET", "/api/v1/jobs/" .. ids[i])
end
"""

WRK_PLAIN = """
"""

WRK_REPORT = """
done = function(summary, latency, requests)
  local out = string.format(
    '{"requests": %d, "duration_us": %d, "errors_status": %d, "errors_connect": %d, "errors_read": %d, '
    .. '"errors_timeout": %d, "p50_us": %d, "p90_us": %d, "p99_us": %d, "max_us": %d, "mean_us": %f}',
    summary.requests, summary.duration, summary.errors.status, summary.errors.connect, summary.errors.read,
    summary.errors.timeout, latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency.max, latency.mean)
  io.stderr:write("WRK-RESULT " .. out .. "\\n")
end
"""


def run_wrk(url: str, script: str, clients: int, duration: float, args: list[str]) -> dict[str, Any]:
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as handle:
        handle.write(script + WRK_REPORT)
        path = handle.name
    try:
        command = ["wrk", "-t1", f"-c{clients}", f"-d{duration:g}s", "--timeout", "10s", "-s", path, url]
        done = subprocess.run(command + (["--", *args] if args else []), capture_output=True, text=True, check=True)
    finally:
        os.unlink(path)
    line = next(x for x in done.stderr.splitlines() if x.startswith("WRK-RESULT "))
    raw = json.loads(line.removeprefix("WRK-RESULT "))
    seconds = raw["duration_us"] / 1e6
    errors = raw["errors_status"] + raw["errors_connect"] + raw["errors_read"] + raw["errors_timeout"]
    return {
        "requests": raw["requests"],
        "seconds": seconds,
        "ok": raw["requests"] - raw["errors_status"],
        "errors": errors,
        "per_second": (raw["requests"] - raw["errors_status"]) / seconds,
        "p50_ms": raw["p50_us"] / 1000,
        "p90_ms": raw["p90_us"] / 1000,
        "p99_ms": raw["p99_us"] / 1000,
        "max_ms": raw["max_us"] / 1000,
    }


async def _httpx_load(
    url: str, clients: int, duration: float, method: str, paths: list[str], body: bytes | None
) -> dict[str, Any]:
    import httpx

    latencies: list[float] = []
    statuses: Counter[int] = Counter()
    errors = 0
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=10.0, trust_env=False) as client:
        start = time.perf_counter()
        stop = start + duration

        async def worker(offset: int) -> None:
            nonlocal errors
            index = offset
            headers = {"Content-Type": "application/json"} if body is not None else None
            while time.perf_counter() < stop:
                path = paths[index % len(paths)]
                index += clients
                began = time.perf_counter()
                try:
                    response = await client.request(method, path, content=body, headers=headers)
                except httpx.HTTPError:
                    errors += 1
                    continue
                latencies.append(time.perf_counter() - began)
                statuses[response.status_code] += 1

        await asyncio.gather(*(worker(i) for i in range(clients)))
        seconds = time.perf_counter() - start
    latencies.sort()
    ok = sum(count for status, count in statuses.items() if status < 400)

    def pct(q: float) -> float:
        return latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000 if latencies else float("nan")

    return {
        "requests": len(latencies) + errors,
        "seconds": seconds,
        "ok": ok,
        "errors": errors + sum(count for status, count in statuses.items() if status >= 400),
        "per_second": ok / seconds,
        "p50_ms": pct(0.50),
        "p90_ms": pct(0.90),
        "p99_ms": pct(0.99),
        "max_ms": latencies[-1] * 1000 if latencies else float("nan"),
    }


def lifecycle(url: str, jobs: int) -> dict[str, list[float]]:
    """Sequential jobs of `bench-life`: seconds from POST to RUNNING and from cancel to CANCELLED."""
    import httpx

    to_running: list[float] = []
    to_cancelled: list[float] = []
    with httpx.Client(base_url=url, timeout=30.0, trust_env=False) as client:

        def until(job_id: str, states: set[str], limit: float = 60.0) -> str:
            deadline = time.perf_counter() + limit
            while True:
                state: str = client.get(f"/api/v1/jobs/{job_id}").json()["state"]
                if state in states or time.perf_counter() > deadline:
                    return state
                time.sleep(0.005)

        for _ in range(jobs):
            began = time.perf_counter()
            created = client.post("/api/v1/jobs", json={"pipeline": "bench-life"})
            if created.status_code != 201:
                raise RuntimeError(f"POST /api/v1/jobs answered {created.status_code}: {created.text}")
            job_id = created.json()["id"]
            state = until(job_id, {"RUNNING", "FAILED", "CANCELLED", "SUCCEEDED"})
            if state != "RUNNING":
                raise RuntimeError(
                    f"job {job_id} of bench-life ended {state}: {client.get(f'/api/v1/jobs/{job_id}').text}"
                )
            to_running.append(time.perf_counter() - began)
            began = time.perf_counter()
            client.post(f"/api/v1/jobs/{job_id}/cancel").raise_for_status()
            state = until(job_id, {"CANCELLED", "FAILED"})
            if state != "CANCELLED":
                raise RuntimeError(f"job {job_id} ended {state} after its cancel")
            to_cancelled.append(time.perf_counter() - began)
    return {"to_running": to_running, "to_cancelled": to_cancelled}


def load_main(argv: list[str]) -> None:
    """`_load URL PHASE ...`: one phase of load against the server; prints its result as JSON on stdout."""
    parser = argparse.ArgumentParser(prog="scheduler.py _load")
    parser.add_argument("url")
    parser.add_argument("phase", choices=["create", "get", "lifecycle", "list"])
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--loadgen", choices=["wrk", "httpx"], default="wrk")
    parser.add_argument("--ids", type=Path, help="get: a file of job ids, one a line")
    parser.add_argument("--jobs", type=int, default=10)
    parser.add_argument("--path", default="/api/v1/jobs", help="list: the path and query to GET")
    args = parser.parse_args(argv)
    if args.phase == "lifecycle":
        result: dict[str, Any] = lifecycle(args.url, args.jobs)
    elif args.loadgen == "wrk":
        if args.phase == "create":
            result = run_wrk(f"{args.url}/api/v1/jobs", WRK_CREATE, args.clients, args.duration, [])
        elif args.phase == "list":
            result = run_wrk(f"{args.url}{args.path}", WRK_PLAIN, args.clients, args.duration, [])
        else:
            result = run_wrk(args.url, WRK_GET, args.clients, args.duration, [str(args.ids)])
    elif args.phase == "create":
        body = b'{"pipeline": "bench-create"}'
        result = asyncio.run(_httpx_load(args.url, args.clients, args.duration, "POST", ["/api/v1/jobs"], body))
    elif args.phase == "list":
        result = asyncio.run(_httpx_load(args.url, args.clients, args.duration, "GET", [args.path], None))
    else:
        ids = args.ids.read_text().split()
        paths = [f"/api/v1/jobs/{job_id}" for job_id in ids]
        result = asyncio.run(_httpx_load(args.url, args.clients, args.duration, "GET", paths, None))
    json.dump(result, sys.stdout)


# ================================================================================================ orchestration

RARE_PIPELINE = "bench-rare"
SEED_SQL = """
WITH v AS (
    SELECT max(pv.id) FILTER (WHERE p.name = 'bench-create') AS create_id,
           max(pv.id) FILTER (WHERE p.name = 'bench-life') AS life_id,
           max(pv.id) FILTER (WHERE p.name = 'bench-rare') AS rare_id
    FROM pipeline_versions pv JOIN pipelines p ON p.id = pv.pipeline_id
), g AS (
    SELECT i, now() - interval '30 days' + i * interval '10 seconds' AS at,
           CASE WHEN i %% 10000 = 5 THEN 'timeout' WHEN i %% 10 IN (7, 8) THEN 'failed'
                WHEN i %% 10 = 9 THEN 'cancelled' ELSE 'succeeded' END AS outcome
    FROM generate_series(1, %(n)s) AS i
)
INSERT INTO jobs (id, pipeline_version_id, state, task, parameters, environment, backend, backend_ref,
                  idempotency_key, token_hash, created_at, started_at, finished_at, reason, message, records_read,
                  records_written, records_failed, completion, completion_message, flow_completions,
                  flow_progress, admitted_at, created_by, updated_at)
SELECT gen_random_uuid(),
       CASE WHEN i %% 10000 = 0 THEN v.rare_id WHEN i %% 2 = 0 THEN v.create_id ELSE v.life_id END,
       CASE outcome WHEN 'succeeded' THEN 'SUCCEEDED' WHEN 'cancelled' THEN 'CANCELLED' ELSE 'FAILED' END,
       'uninstall', '{"threshold": 0.5}', '{"namespace": "scoring"}', 'local', NULL, NULL, repeat('0', 64),
       at, at + interval '1 second', at + interval '60 seconds',
       CASE outcome WHEN 'succeeded' THEN 'Completed' WHEN 'cancelled' THEN 'Cancelled'
                    WHEN 'timeout' THEN 'Timeout' ELSE 'ScoringFailed' END,
       CASE outcome WHEN 'failed' THEN 'scoring service m answered HTTP 503 (Service Unavailable) 3 times'
                    WHEN 'timeout' THEN 'the wait phase timed out after 3600 s' END,
       1000, 1000, 0, NULL, NULL, NULL, NULL, at, 'ci', at + interval '60 seconds'
FROM g CROSS JOIN v
"""


def seed_jobs(database_url: str, count: int) -> tuple[float, str]:
    """Insert `count` jobs in end states in one statement, then ANALYZE; the seconds it took and the first four
    hex digits of a seeded job's id (an `id_prefix` filter that matches one or two jobs)."""
    import sqlalchemy

    engine = sqlalchemy.create_engine(database_url)
    try:
        started = time.perf_counter()
        with engine.begin() as conn:
            conn.exec_driver_sql(SEED_SQL, {"n": count})
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.exec_driver_sql("ANALYZE jobs")
            prefix = str(conn.exec_driver_sql("SELECT id FROM jobs WHERE reason = 'Timeout' LIMIT 1").scalar_one())
        return time.perf_counter() - started, prefix[:4]
    finally:
        engine.dispose()


def list_filters(prefix: str) -> list[tuple[str, str]]:
    """(what, query) of the first page of each filter `GET /api/v1/jobs` offers, common and rare cases."""
    return [
        ("no filter", ""),
        ("state=FAILED (1 in 5)", "state=FAILED"),
        ("state=CANCELLED (1 in 10)", "state=CANCELLED"),
        ("state=RUNNING (none)", "state=RUNNING"),
        ("pipeline=bench-life (half)", "pipeline=bench-life"),
        ("pipeline=bench-rare (10 jobs)", f"pipeline={RARE_PIPELINE}"),
        ("pipeline=bench-rare&state=FAILED", f"pipeline={RARE_PIPELINE}&state=FAILED"),
        (f"id_prefix={prefix} (1-2 jobs)", f"id_prefix={prefix}"),
        ("q=503 (1 in 5)", "q=503"),
        ("q=timeout (10 jobs)", "q=timeout"),
        ("q=bench-rare (pipeline name)", f"q={RARE_PIPELINE}"),
        ("q=zzz (none)", "q=zzz"),
        ("state=FAILED&q=timeout", "state=FAILED&q=timeout"),
    ]


def list_phase(url: str, database_url: str, options: argparse.Namespace) -> list[dict[str, Any]]:
    """Seed `--list-jobs` jobs, then load the first page of each filter; one result per filter."""
    import httpx

    seconds, prefix = seed_jobs(database_url, options.list_jobs)
    print(f"list: {options.list_jobs:,} jobs inserted in {seconds:.1f}s; first page of each filter ...")
    results = []
    for what, query in list_filters(prefix):
        path = "/api/v1/jobs" + (f"?{query}" if query else "")
        rows = len(httpx.get(url + path, timeout=30, trust_env=False).raise_for_status().json()["items"])
        listed = _load(
            url, "list", options, f"--path={path}", clients=options.list_clients, duration=options.list_duration
        )
        results.append({"what": what, "path": path, "rows": rows, **listed})
    return results


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextlib.contextmanager
def fresh_database(admin_url: str) -> Iterator[str]:
    """A PostgreSQL database created for this run and dropped (with its connections) at the end."""
    import sqlalchemy
    from sqlalchemy.engine import make_url

    name = f"modelops_bench_{secrets.token_hex(4)}"
    admin = sqlalchemy.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    try:
        yield make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


def _load(
    url: str,
    phase: str,
    options: argparse.Namespace,
    *extra: str,
    clients: int | None = None,
    duration: float | None = None,
) -> dict[str, Any]:
    command = [sys.executable, __file__, "_load", url, phase, f"--clients={clients or options.clients}"]
    command += [f"--duration={duration or options.duration}", f"--loadgen={options.loadgen}", *extra]
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    if done.returncode != 0:
        raise RuntimeError(f"the load generator failed ({phase}):\n{done.stderr}")
    result: dict[str, Any] = json.loads(done.stdout)
    return result


@contextlib.contextmanager
def profiling(pid: int, directory: Path | None, name: str, seconds: float, gil: bool = False) -> Iterator[None]:
    """py-spy record of the server while the body runs (nothing without `--profile`)."""
    if directory is None:
        yield
        return
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    directory.mkdir(parents=True, exist_ok=True)
    raw = directory / f"{name}.txt"
    recorder = subprocess.Popen(
        [
            spy,
            "record",
            "--pid",
            str(pid),
            "--duration",
            str(int(seconds)),
            "--rate",
            "200",
            "--format",
            "raw",
            "--output",
            str(raw),
            "--nonblocking",
            "--threads",
            *(["--gil"] if gil else []),
            "--subprocesses",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        yield
    finally:
        _, err = recorder.communicate(timeout=seconds + 60)
        if recorder.returncode != 0:
            print(f"py-spy failed: {err.decode().strip()}", file=sys.stderr)
        elif raw.exists():
            (directory / f"{name}-top.txt").write_text(summarise_profile(raw))


def summarise_profile(raw: Path, top: int = 40) -> str:
    """The functions with the most samples, self and total (inclusive), from py-spy's collapsed stacks."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = [frame for frame in stack.split(";") if not frame.startswith("process ")]
        if frames:
            own[frames[-1]] += count
        for frame in set(frames):
            inclusive[frame] += count
    lines = [f"{total} samples", "", "self %  function"]
    lines += [f"{100 * n / total:6.1f}  {frame}" for frame, n in own.most_common(top)]
    lines += ["", "total %  function"]
    lines += [f"{100 * n / total:6.1f}  {frame}" for frame, n in inclusive.most_common(top)]
    return "\n".join(lines) + "\n"


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def tree_cpu_seconds(pid: int) -> float:
    """CPU time so far of a process and its live descendants (the API workers of `--workers N`), plus what
    its reaped children used (`cutime`/`cstime`)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                parents[int(entry.name)] = int((entry / "stat").read_text().rpartition(")")[2].split()[1])
    tree, grew = {pid}, True
    while grew:
        more = {child for child, parent in parents.items() if parent in tree} - tree
        tree |= more
        grew = bool(more)
    total = 0.0
    for member in tree:
        with contextlib.suppress(OSError):
            total += cpu_seconds(member)
    with contextlib.suppress(OSError):
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        total += (int(fields[13]) + int(fields[14])) / os.sysconf("SC_CLK_TCK")
    return total


def postgres_cpu() -> dict[int, float]:
    """CPU seconds so far of every `postgres` process, by pid (the server's backends, and anyone else's)."""
    found: dict[int, float] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if (entry / "comm").read_text().strip() == "postgres":
                    found[int(entry.name)] = cpu_seconds(int(entry.name))
    return found


def postgres_cpu_since(before: dict[int, float]) -> float:
    """CPU used by postgres processes since `before` (processes that exited meanwhile are not counted)."""
    return sum(seconds - before.get(pid, 0.0) for pid, seconds in postgres_cpu().items())


def sessions_opened(database_url: str) -> int:
    """Connections ever made to the bench database (`pg_stat_database.sessions`, PostgreSQL 14+)."""
    import sqlalchemy

    engine = sqlalchemy.create_engine(database_url, poolclass=sqlalchemy.pool.NullPool)
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql("SELECT pg_stat_clear_snapshot()")
            value = conn.exec_driver_sql(
                "SELECT sessions FROM pg_stat_database WHERE datname = current_database()"
            ).scalar()
            return int(value or 0)
    finally:
        engine.dispose()


def wait_for_drain(url: str, limit: float = 300.0) -> float:
    """Wait until no job is active (the backend finished every job created); returns the seconds waited."""
    import httpx

    began = time.perf_counter()
    with httpx.Client(base_url=url, timeout=30.0, trust_env=False) as client:
        while time.perf_counter() - began < limit:
            active = sum(
                len(client.get("/api/v1/jobs", params={"state": state, "limit": 1}).json()["items"])
                for state in ("PENDING", "INSTALLING", "RUNNING", "CANCELLING")
            )
            if not active:
                break
            time.sleep(0.2)
    return time.perf_counter() - began


def machine() -> dict[str, str]:
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return {"nproc": str(os.cpu_count()), "cpu": cpu, "python": platform.python_version(), "load": load}


def ms(seconds: list[float], q: float) -> float:
    ordered = sorted(seconds)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of load per phase")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--loadgen", choices=["auto", "wrk", "httpx"], default="auto")
    parser.add_argument("--lifecycle-jobs", type=int, default=10)
    parser.add_argument("--workers", type=int, default=2, help="API worker processes (modelops serve --workers)")
    parser.add_argument("--admin-url", default=os.environ.get("MODELOPS_BENCH_POSTGRES_URL", ADMIN_URL))
    parser.add_argument("--profile", type=Path, default=None, help="write py-spy profiles of the server here")
    parser.add_argument(
        "--profile-gil", action="store_true", help="profile only the thread holding the GIL (where the CPU goes)"
    )
    parser.add_argument("--list-jobs", type=int, default=0, help="jobs to insert for the list phase (0: no phase)")
    parser.add_argument("--list-clients", type=int, default=1, help="connections of the list phase")
    parser.add_argument("--list-duration", type=float, default=5.0, help="seconds of load per filter")
    parser.add_argument(
        "--skip-load", action="store_true", help="skip the lifecycle, creation and GET phases (with --list-jobs)"
    )
    options = parser.parse_args()
    if options.loadgen == "auto":
        options.loadgen = "wrk" if shutil.which("wrk") else "httpx"

    sys.path.insert(0, str(ROOT))
    from scheduler.client import SchedulerClient

    before = machine()
    print(f"machine: {before['nproc']} CPUs, {before['cpu']}, Python {before['python']}, load {before['load']}")
    with tempfile.TemporaryDirectory(prefix="modelops-bench-") as home, fresh_database(options.admin_url) as db:
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        env = {
            **os.environ,
            "MODELOPS_HOME": home,
            "MODELOPS_SCHEDULER_DATABASE_URL": db,
            "MODELOPS_SCHEDULER_PORT": str(port),
            "MODELOPS_SCHEDULER_HOST": "127.0.0.1",
            "MODELOPS_SCHEDULER_LOG_LEVEL": "warning",
            "MODELOPS_SCHEDULER_WORKERS": str(options.workers),
            # File sources must exist when a job is created: the pipelines' data/in.csv lives in the home.
            "MODELOPS_SCHEDULER_DATA_ROOT": home,
        }
        (Path(home) / "data").mkdir()
        (Path(home) / "data" / "in.csv").write_text("id,x\n1,0.5\n")
        env.pop("MODELOPS_SCHEDULER_TOKENS", None)
        modelops = str(Path(sys.executable).with_name("modelops"))
        subprocess.run([modelops, "db", "upgrade"], env=env, check=True, capture_output=True)
        server_log = Path(home) / "server.log"
        with server_log.open("wb") as log:
            server = subprocess.Popen([sys.executable, __file__, "_serve"], env=env, stdout=log, stderr=log, cwd=ROOT)
        try:
            with SchedulerClient(url) as client:
                deadline = time.monotonic() + 60
                while not client.ready():
                    if server.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError(f"the server did not start:\n{server_log.read_text()}")
                    time.sleep(0.1)
                for name in ("bench-create", "bench-life", RARE_PIPELINE):
                    client.deploy_bytes(CREATE_PIPELINE.replace("NAME", name).encode(), "application/yaml")

            listed: list[dict[str, Any]] = []
            if not options.skip_load:
                print(f"lifecycle: {options.lifecycle_jobs} sequential jobs with real (fake) processes ...")
                life = _load(url, "lifecycle", options, f"--jobs={options.lifecycle_jobs}")

                print(
                    f"creations: POST /api/v1/jobs, {options.clients} clients, {options.duration:g}s, "
                    f"{options.loadgen} ..."
                )
                cpu, pg_cpu, sessions = tree_cpu_seconds(server.pid), postgres_cpu(), sessions_opened(db)
                with profiling(server.pid, options.profile, "create", options.duration, options.profile_gil):
                    create = _load(url, "create", options)
                create["server_cpu"] = tree_cpu_seconds(server.pid) - cpu
                create["postgres_cpu"] = postgres_cpu_since(pg_cpu)
                create["connections"] = sessions_opened(db) - sessions - 1
                drained = wait_for_drain(url)

                ids_file = Path(home) / "ids.txt"
                with SchedulerClient(url) as client:
                    ids: list[str] = []
                    cursor = None
                    while len(ids) < 2000:
                        page = client.list_jobs(limit=500, cursor=cursor)
                        ids += [str(job.id) for job in page.items]
                        cursor = page.next_cursor
                        if cursor is None:
                            break
                ids_file.write_text("\n".join(ids) + "\n")
                print(f"reads: GET /api/v1/jobs/{{id}} over {len(ids)} jobs, {options.clients} clients ...")
                cpu, pg_cpu, sessions = tree_cpu_seconds(server.pid), postgres_cpu(), sessions_opened(db)
                with profiling(server.pid, options.profile, "get", options.duration, options.profile_gil):
                    get = _load(url, "get", options, f"--ids={ids_file}")
                get["server_cpu"] = tree_cpu_seconds(server.pid) - cpu
                get["postgres_cpu"] = postgres_cpu_since(pg_cpu)
                get["connections"] = sessions_opened(db) - sessions - 1
            if options.list_jobs:
                listed = list_phase(url, db, options)
        finally:
            server.send_signal(signal.SIGTERM)
            try:
                server.wait(30)
            except subprocess.TimeoutExpired:
                server.kill()
    after = machine()
    if not options.skip_load:
        print_load(options, before, after, life, create, get, drained)
    if listed:
        print_list(options, listed)
    print(f"load average before {before['load']}, after {after['load']}; load generator: {options.loadgen}")


def print_load(
    options: argparse.Namespace,
    before: dict[str, str],
    after: dict[str, str],
    life: dict[str, Any],
    create: dict[str, Any],
    get: dict[str, Any],
    drained: float,
) -> None:
    rows = [
        (
            "job creations/s (POST /jobs)",
            f"{create['per_second']:.0f}",
            f">= {TARGET_CREATIONS:.0f}",
            f"{create['per_second'] / TARGET_CREATIONS:.2f}",
        ),
        ("  POST /jobs latency p50 / p99", f"{create['p50_ms']:.1f} / {create['p99_ms']:.1f} ms", "", ""),
        ("GET /jobs/{id} p50", f"{get['p50_ms']:.2f} ms", "", ""),
        (
            "GET /jobs/{id} p99",
            f"{get['p99_ms']:.2f} ms",
            f"< {TARGET_P99_MS:.0f} ms",
            f"{TARGET_P99_MS / get['p99_ms']:.2f}",
        ),
        ("  GET p90 / max", f"{get['p90_ms']:.2f} / {get['max_ms']:.0f} ms", "", ""),
        ("  GET throughput", f"{get['per_second']:.0f} req/s", "", ""),
        (
            "POST /jobs -> RUNNING p50 / max",
            f"{ms(life['to_running'], 0.5):.0f} / {max(life['to_running']) * 1000:.0f} ms",
            "",
            "",
        ),
        (
            "cancel -> CANCELLED p50 / max",
            f"{ms(life['to_cancelled'], 0.5):.0f} / {max(life['to_cancelled']) * 1000:.0f} ms",
            "",
            "",
        ),
    ]
    print()
    print(f"{'figure':<34} {'measured':>22} {'target':>10} {'ratio':>6}")
    for name, value, target, ratio in rows:
        print(f"{name:<34} {value:>22} {target:>10} {ratio:>6}")
    print()
    print(
        f"creation phase: {create['requests']} requests, {create['errors']} errors, {create['seconds']:.1f}s; "
        f"backend finished the {create['ok']} jobs {drained:.1f}s after the load stopped"
    )
    print(f"get phase: {get['requests']} requests, {get['errors']} errors")
    for name, phase in (("creation", create), ("get", get)):
        per = 1000 / max(phase["ok"], 1)
        print(
            f"{name} phase CPU: server {phase['server_cpu']:.1f}s ({phase['server_cpu'] / phase['seconds']:.0%} of a "
            f"core, {phase['server_cpu'] * per:.2f} ms per request), postgres {phase['postgres_cpu']:.1f}s "
            f"({phase['postgres_cpu'] * per:.2f} ms per request); {phase['connections']} new database connections"
        )
    if options.profile is not None:
        print(f"profiles: {options.profile}/create-top.txt, {options.profile}/get-top.txt")


def print_list(options: argparse.Namespace, listed: list[dict[str, Any]]) -> None:
    aim = 50.0
    print()
    print(
        f"GET /api/v1/jobs, first page (50), {options.list_jobs:,} jobs seeded, {options.list_clients} connection(s), "
        f"{options.list_duration:g}s each"
    )
    header = f"{'filter':<34} {'rows':>4} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} {'req/s':>7} {'errors':>6}"
    print(f"{header}  aim p99 <= 50 ms")
    for each in listed:
        verdict = "ok" if each["p99_ms"] <= aim and not each["errors"] else "MISSED"
        print(
            f"{each['what']:<34} {each['rows']:>4} {each['p50_ms']:>8.2f} {each['p99_ms']:>8.2f} "
            f"{each['max_ms']:>8.1f} {each['per_second']:>7.0f} {each['errors']:>6}  {verdict}"
        )


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_serve":
        sys.path.insert(0, str(ROOT))
        serve_main()
    elif len(sys.argv) > 1 and sys.argv[1] == "_load":
        sys.path.insert(0, str(ROOT))
        load_main(sys.argv[2:])
    else:
        main()
