"""Benchmark: the UI's Jobs page with 10,000 jobs in PostgreSQL (issue 12; aim: full load under 300 ms).

What it does:

1. creates a scratch PostgreSQL database on 127.0.0.1:5432 (`modelops_bench_ui_<random>`, as role `postgres`,
   dropped at the end, also when something fails) and migrates it;
2. starts the real server (`modelops serve`, open mode: no tokens, loopback) on a free port, deploys three small
   pipelines through the API, then creates 10,000 jobs through `JobStore.create_job` (the store's own insert,
   with their first event), spread over the pipelines and over the last 10,000 minutes. Their backend is
   `bench`, which this server does not run, so nothing starts them; one UPDATE then gives them the mix of end
   states a busy server has (70% SUCCEEDED, 20% FAILED with a reason and message, 10% CANCELLED; 1 job in
   1,000 failed on a "timeout", the rare word searched for), with times and record counters;
3. measures `/ui/jobs` in headless Debian chromium through Playwright (Navigation Timing of the page:
   `responseStart` = first byte, `loadEventEnd` = full load, both from the start of the navigation), with the
   UI's 404 page first as the baseline (the same layout, scripts and styles, no rows: what any page costs): one
   warm-up, then the median of 10 loads, for the first page and for filters (a state, a pipeline, a common word,
   a rare word, a word no job has: the worst case, every row looked at), and the server alone (httpx, median
   of 20);
4. prints `EXPLAIN (ANALYZE, BUFFERS)` of the list query the page runs (captured from the store, parameters
   included) without a filter and with `q`.

Usage:
    .venv/bin/python bench/ui_jobs.py [--jobs 10000] [--loads 10]

Needs PostgreSQL (make services) and /usr/bin/chromium (make browser). Never fails on a slow result.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import random
import secrets
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
# bench/scheduler.py would shadow the `scheduler` package: this script's folder is not where it imports from
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
ADMIN_URL = os.environ.get("MODELOPS_BENCH_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
AIM_MS = 300.0
PIPELINES = ("bench-alpha", "bench-beta", "bench-gamma")

PIPELINE_IR = """
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

# The end states the jobs get (one UPDATE): 7 of 10 succeeded, 2 failed (1 job in 1,000 on a timeout), 1
# cancelled; times and counters from the row's position, so the figures do not depend on a random seed.
END_STATES_SQL = """
WITH ranked AS (SELECT id, row_number() OVER (ORDER BY created_at, id) AS n FROM jobs)
UPDATE jobs SET
  state = CASE WHEN mod(r.n, 10) < 7 THEN 'SUCCEEDED' WHEN mod(r.n, 10) < 9 THEN 'FAILED' ELSE 'CANCELLED' END,
  task = 'uninstall',
  reason = CASE WHEN mod(r.n, 10) < 7 THEN 'Completed' WHEN mod(r.n, 10) < 9 THEN
    CASE WHEN mod(r.n, 1000) = 7 THEN 'WaitTimeout' ELSE 'ScoringFailed' END ELSE 'Cancelled' END,
  message = CASE WHEN mod(r.n, 10) < 7 THEN NULL WHEN mod(r.n, 10) < 9 THEN
    CASE WHEN mod(r.n, 1000) = 7 THEN 'the flows did not finish before the timeout'
    ELSE 'flow ' || r.n || ': the scoring service answered 503 three times' END
    ELSE 'cancelled by ci' END,
  started_at = jobs.created_at + interval '2 seconds',
  finished_at = jobs.created_at + interval '2 seconds' + (mod(r.n, 600)) * interval '1 second',
  records_read = mod(r.n * 7919, 1000000),
  records_written = mod(r.n * 7919, 1000000) - (mod(r.n, 13)),
  records_failed = mod(r.n, 13)
FROM ranked r WHERE jobs.id = r.id
"""


@contextlib.contextmanager
def fresh_database(admin_url: str) -> Iterator[str]:
    """A PostgreSQL database created for this run and dropped (with its connections) at the end."""
    import sqlalchemy
    from sqlalchemy.engine import make_url

    name = f"modelops_bench_ui_{secrets.token_hex(4)}"
    admin = sqlalchemy.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    try:
        yield make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def server(database_url: str, home: Path) -> Iterator[str]:
    """`modelops serve` on a free port, open mode; its base URL. Stopped with SIGTERM at the end."""
    import httpx

    port = free_port()
    env = {
        **os.environ,
        "MODELOPS_SCHEDULER_HOME": str(home),
        "MODELOPS_SCHEDULER_DATABASE_URL": database_url,
        "MODELOPS_SCHEDULER_PORT": str(port),
        "MODELOPS_SCHEDULER_HOST": "127.0.0.1",
        "MODELOPS_SCHEDULER_LOG_LEVEL": "warning",
    }
    env.pop("MODELOPS_SCHEDULER_TOKENS", None)
    log_path = home / "server.log"
    modelops = str(Path(sys.executable).with_name("modelops"))
    with log_path.open("wb") as log:
        process = subprocess.Popen([modelops, "serve"], env=env, stdout=log, stderr=log, cwd=ROOT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                    break
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the server did not start:\n{log_path.read_text()}")
            time.sleep(0.1)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def create_jobs(database_url: str, count: int) -> None:
    """`count` jobs through the store, over the last `count` minutes, then their end states (one UPDATE)."""
    from scheduler.db import create_engine
    from scheduler.settings import hash_token
    from scheduler.store import JobStore

    engine = create_engine(database_url)
    start = datetime.now(UTC) - timedelta(minutes=count)
    try:
        versions = {name: JobStore(engine).get_version(name) for name in PIPELINES}
        creators = ("ci", "nightly", "alice", "bob")

        def make(i: int) -> None:
            minute = start + timedelta(minutes=i)
            store = JobStore(engine, clock=lambda: minute)
            store.create_job(
                versions[PIPELINES[i % len(PIPELINES)]],
                parameters={"threshold": round(random.random(), 3)},
                backend="bench",
                token_hash=hash_token(secrets.token_urlsafe(8)),
                created_by=creators[i % len(creators)],
            )

        with ThreadPoolExecutor(4) as pool:
            list(pool.map(make, range(count)))
        with engine.begin() as conn:
            conn.exec_driver_sql(END_STATES_SQL)
            conn.exec_driver_sql("ANALYZE jobs")
    finally:
        engine.dispose()


def explain(database_url: str) -> list[tuple[str, str]]:
    """EXPLAIN (ANALYZE, BUFFERS) of the store's list query as the page runs it: no filter, and with `q`."""
    import sqlalchemy

    from scheduler.db import create_engine
    from scheduler.store import JobStore

    engine = create_engine(database_url)
    captured: list[tuple[str, Any]] = []

    def capture(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, many: bool) -> None:
        if "FROM jobs JOIN pipeline_versions" in statement:
            captured.append((statement, parameters))

    sqlalchemy.event.listen(engine, "before_cursor_execute", capture)
    plans = []
    try:
        store = JobStore(engine)
        queries = (("first page, no filter", None), ("q=503", "503"), ("q=timeout", "timeout"), ("q=zzz", "zzz"))
        for label, q in queries:
            captured.clear()
            store.list_jobs(limit=50, q=q)
            statement, parameters = captured[0]
            with engine.connect() as conn:
                rows = conn.exec_driver_sql("EXPLAIN (ANALYZE, BUFFERS) " + statement, parameters).all()
            plans.append((label, "\n".join(row[0] for row in rows)))
    finally:
        engine.dispose()
    return plans


def measure(url: str, paths: list[tuple[str, str]], loads: int) -> list[dict[str, Any]]:
    """Median first byte and full load of each path in headless chromium, and the server's own time (httpx)."""
    import httpx
    from playwright.sync_api import sync_playwright

    results = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(viewport={"width": 1280, "height": 800})
            page = context.new_page()
            for label, path in paths:
                first_byte, full = [], []
                rows = 0
                for i in range(loads + 1):
                    page.goto(url + path, wait_until="load")
                    timing = page.evaluate(
                        "() => { const t = performance.getEntriesByType('navigation')[0];"
                        " return [t.responseStart - t.startTime, t.loadEventEnd - t.startTime]; }"
                    )
                    rows = page.locator("#jobs-rows > tr").count()
                    if i == 0:
                        continue  # the warm-up: static assets into the cache, the server's statements prepared
                    first_byte.append(timing[0])
                    full.append(timing[1])
                server_ms = []
                with httpx.Client(base_url=url) as client:
                    for _ in range(20):
                        began = time.perf_counter()
                        answer = client.get(path)
                        assert answer.status_code in (200, 404), answer.status_code
                        server_ms.append((time.perf_counter() - began) * 1000)
                results.append(
                    {
                        "label": label,
                        "path": path,
                        "rows": rows,
                        "first_byte": statistics.median(first_byte),
                        "full": statistics.median(full),
                        "full_max": max(full),
                        "server": statistics.median(server_ms),
                    }
                )
        finally:
            browser.close()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--loads", type=int, default=10)
    options = parser.parse_args()
    if not Path(CHROMIUM).exists():
        sys.exit(f"{CHROMIUM} is missing: apt-get install -y chromium (or make browser)")
    import httpx

    from scheduler.db import upgrade

    with fresh_database(ADMIN_URL) as database_url, tempfile.TemporaryDirectory(prefix="modelops-bench-ui-") as tmp:
        upgrade(database_url)
        home = Path(tmp)
        with server(database_url, home) as url:
            for name in PIPELINES:
                answer = httpx.post(
                    f"{url}/api/v1/pipelines",
                    content=PIPELINE_IR.replace("NAME", name).encode(),
                    headers={"Content-Type": "application/yaml"},
                    timeout=30,
                )
                answer.raise_for_status()
            began = time.monotonic()
            create_jobs(database_url, options.jobs)
            print(f"{options.jobs:,} jobs created in {time.monotonic() - began:.1f} s")
            paths = [
                ("layout alone (a 404)", "/ui/no-such-page"),
                ("first page", "/ui/jobs"),
                ("state=FAILED", "/ui/jobs?state=FAILED"),
                ("pipeline=bench-beta", "/ui/jobs?pipeline=bench-beta"),
                ("q=503 (1 job in 5)", "/ui/jobs?q=503"),
                ("q=timeout (rare)", "/ui/jobs?q=timeout"),
                ("q=zzz (no match)", "/ui/jobs?q=zzz"),
            ]
            results = measure(url, paths, options.loads)
        plans = explain(database_url)

    load = os.getloadavg()
    print(
        f"\n/ui/jobs with {options.jobs:,} jobs in PostgreSQL, headless chromium, median of {options.loads} loads; "
        f"{os.cpu_count()} cores, {platform.python_implementation()} {platform.python_version()}, "
        f"load average {load[0]:.2f}"
    )
    header = f"{'page':<22} {'rows':>4} {'first byte':>11} {'full load':>10} {'(max)':>8} {'server':>8}  aim"
    print(header)
    print("-" * len(header))
    for r in results:
        verdict = "ok" if r["full"] < AIM_MS else f"over {AIM_MS:.0f} ms"
        print(
            f"{r['label']:<22} {r['rows']:>4} {r['first_byte']:>8.1f} ms {r['full']:>7.1f} ms "
            f"{r['full_max']:>5.0f} ms {r['server']:>5.1f} ms  {verdict}"
        )
    for label, plan in plans:
        print(f"\nEXPLAIN ANALYZE, {label}:\n{plan}")


if __name__ == "__main__":
    main()
