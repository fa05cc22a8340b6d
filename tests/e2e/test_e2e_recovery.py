"""Processes killed mid-batch: a flow SIGKILLed and started again writes every record exactly once (file and
PostgreSQL sinks); a scoring service SIGKILLed and started again on its port costs retries, not records.

Real `modelops flow` and `modelops scoring-service` processes; the scheduler is a stub that records reports,
and these tests restart the processes by hand, as Kubernetes does for pods (the local backend's supervision
does it for its jobs: tests/e2e/test_e2e_supervision.py)."""

from __future__ import annotations

import json
import secrets
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
from flow_kit import (
    IN_FIELDS,
    OUT_FIELDS,
    PIXELS,
    SCORE_STEPS,
    Digits,
    Services,
    StubScheduler,
    channel,
    digits_rows,
    expected,
    flow_env,
    render_values,
    services,
    start_flow,
    write_bundle,
    write_digits_csv,
)

pytestmark = pytest.mark.slow

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
ROWS = 12_000
PACE = '''
import time


def pace(batch):
    """Slow the flow down so a kill lands in the middle of it."""
    time.sleep(0.01)
    return batch
'''
PACE_STEP = {"name": "pace", "python": {"module": "pacing", "function": "pace"}}


def checkpoint_ordinal(path: Path) -> int:
    try:
        return int(json.loads(path.read_text())["ordinal"])
    except (FileNotFoundError, ValueError, KeyError):
        return 0


def wait_for(
    condition: Callable[[], bool], what: str, proc: subprocess.Popen[bytes] | None, log: Path, timeout: float = 60
) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the flow exited ({proc.returncode}) before {what}: {log.read_text()[-3000:]}")
        assert time.monotonic() < deadline, f"timed out waiting for {what}: {log.read_text()[-3000:]}"
        time.sleep(0.01)


def run_to_end(proc: subprocess.Popen[bytes], log: Path, timeout: float = 120) -> None:
    assert proc.wait(timeout) == 0, log.read_text()[-4000:]


def kill_twice_and_finish(values: Path, urls: dict[str, str], workdir: Path, env_extra: dict[str, str]) -> str:
    """Run the flow, SIGKILL it mid-run twice (each after a further checkpoint), then let a third run finish."""
    env = flow_env(urls, MODELOPS_FLOW_COMMIT_INTERVAL_SECONDS="0.05", **env_extra)
    log = workdir / "flow.log"
    checkpoint = values.parent / "checkpoints" / "digits-flow.json"
    for stop_after in (ROWS // 4, ROWS // 2):
        proc = start_flow(values, "digits-flow", env, log, workdir)
        wait_for(
            lambda at=stop_after: checkpoint_ordinal(checkpoint) >= at, f"a checkpoint past {stop_after}", proc, log
        )
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        assert checkpoint_ordinal(checkpoint) < ROWS, "the flow finished before it could be killed"
    proc = start_flow(values, "digits-flow", env, log, workdir)
    run_to_end(proc, log)
    text = log.read_text()
    assert text.count("resuming at record") == 2
    return text


def _served(digits: Digits, tmp_path_factory: pytest.TempPathFactory) -> Any:
    folder = tmp_path_factory.mktemp("recovery-services")
    bundle = write_bundle(
        folder / "bundle",
        digits,
        channels={
            "in": channel("source", "file", {"path": "in.csv", "format": "csv"}, IN_FIELDS),
            "out": channel("sink", "file", {"path": "out.csv", "format": "csv"}, OUT_FIELDS),
        },
    )
    values = render_values(bundle, folder / "values.yaml")
    with services(values, ["digits-rf", "digits-rf-onnx"], folder / "logs") as running:
        yield running


@pytest.fixture(scope="module")
def served(digits: Digits, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """Both digits services, shared by the tests that only score through them."""
    yield from _served(digits, tmp_path_factory)


@pytest.fixture
def own_served(digits: Digits, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """Both digits services for one test alone (one that kills and restarts them)."""
    yield from _served(digits, tmp_path_factory)


def assert_exact(table: pa.Table, digits: Digits, rows: np.ndarray) -> None:
    ids = table.column("id").to_numpy()
    assert len(ids) == len(np.unique(ids)) == len(rows), "duplicated or lost records"
    want = expected(digits, rows)
    for name, values in want.items():
        assert np.array_equal(table.column(name).to_numpy(), values), name


@pytest.mark.parametrize("out", ["scored.csv", "scored.csv.gz", "scored.parquet"])
def test_a_flow_killed_mid_run_twice_resumes_without_duplicating_or_losing_a_record(
    tmp_path: Path, digits: Digits, served: Services, out: str
) -> None:
    workdir = tmp_path / "work"
    (workdir / "data").mkdir(parents=True)
    (workdir / "pacing.py").write_text(PACE)
    rows = digits_rows(digits, ROWS)
    write_digits_csv(workdir / "data" / "in.csv", rows)
    fmt = "parquet" if out.endswith("parquet") else "csv"
    channels = {
        "in": channel("source", "file", {"path": "data/in.csv", "format": "csv"}, IN_FIELDS),
        "out": channel("sink", "file", {"path": f"out/{out}", "format": fmt}, OUT_FIELDS),
    }
    bundle = write_bundle(
        tmp_path / "bundle", digits, channels=channels, steps=[*SCORE_STEPS, PACE_STEP], batch_size=200
    )
    with StubScheduler() as scheduler:
        values = render_values(
            bundle,
            tmp_path / "run" / "values.yaml",
            job_id=scheduler.job_id,
            scheduler_url=scheduler.url,
            token=scheduler.token,
        )
        kill_twice_and_finish(values, served.urls, workdir, {})
    table = pq.read_table(workdir / "out" / out) if fmt == "parquet" else pacsv.read_csv(workdir / "out" / out)
    assert_exact(table, digits, rows)
    assert len(scheduler.completions) == 1 and scheduler.completions[0]["succeeded"] is True
    assert f"{ROWS:,} records written" in scheduler.completions[0]["message"]
    last = scheduler.progress[-1]
    assert (last["read"], last["written"], last["failed"], last["state"]) == (ROWS, ROWS, 0, "done")


@pytest.mark.postgres
def test_a_postgresql_flow_killed_mid_run_twice_resumes_from_the_watermarks_in_its_database(
    tmp_path: Path, digits: Digits, served: Services
) -> None:
    database = f"modelops_e2e_{secrets.token_hex(4)}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{database}"')
    url = PG_ADMIN.rsplit("/", 1)[0] + f"/{database}"
    try:
        rows = digits_rows(digits, ROWS)
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(f"CREATE TABLE digits (id bigint PRIMARY KEY, {', '.join(f'{p} integer' for p in PIXELS)})")
            with conn.cursor().copy(f"COPY digits (id, {', '.join(PIXELS)}) FROM STDIN") as copy:
                for row in rows.tolist():
                    copy.write_row(row)
        secret = {"secretRef": {"name": "warehouse", "key": "url"}}
        channels = {
            "in": channel(
                "source",
                "sql",
                {"connection": secret, "query": "SELECT * FROM digits ORDER BY id", "fetchSize": 500},
                IN_FIELDS,
            ),
            # no primary key on purpose: a duplicated row would be stored, and counted below
            "out": channel("sink", "sql", {"connection": secret, "table": "scored", "createTable": True}, OUT_FIELDS),
        }
        workdir = tmp_path / "work"
        workdir.mkdir()
        (workdir / "pacing.py").write_text(PACE)
        bundle = write_bundle(
            tmp_path / "bundle", digits, channels=channels, steps=[*SCORE_STEPS, PACE_STEP], batch_size=200
        )
        values = render_values(bundle, tmp_path / "run" / "values.yaml", job_id="6f1c2d3e-0000-4000-8000-000000000001")
        kill_twice_and_finish(values, served.urls, workdir, {"MODELOPS_SECRET_WAREHOUSE_URL": url})
        with psycopg.connect(url) as conn:
            got = conn.execute("SELECT id, label, probability, onnx_label FROM scored ORDER BY id").fetchall()
        table = pa.table(
            {name: [r[i] for r in got] for i, name in enumerate(["id", "label", "probability", "onnx_label"])}
        )
        assert_exact(table, digits, rows)
    finally:
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')


def test_a_scoring_service_killed_mid_run_and_restarted_costs_retries_not_records(
    tmp_path: Path, digits: Digits, own_served: Services
) -> None:
    served = own_served
    workdir = tmp_path / "work"
    (workdir / "data").mkdir(parents=True)
    (workdir / "pacing.py").write_text(PACE)
    rows = digits_rows(digits, ROWS)
    write_digits_csv(workdir / "data" / "in.csv", rows)
    channels = {
        "in": channel("source", "file", {"path": "data/in.csv", "format": "csv"}, IN_FIELDS),
        "out": channel("sink", "file", {"path": "out/scored.csv", "format": "csv"}, OUT_FIELDS),
    }
    bundle = write_bundle(
        tmp_path / "bundle", digits, channels=channels, steps=[*SCORE_STEPS, PACE_STEP], batch_size=200
    )
    values = render_values(bundle, tmp_path / "run" / "values.yaml")
    log = workdir / "flow.log"
    checkpoint = values.parent / "checkpoints" / "digits-flow.json"
    proc = start_flow(
        values, "digits-flow", flow_env(served.urls, MODELOPS_FLOW_COMMIT_INTERVAL_SECONDS="0.05"), log, workdir
    )
    wait_for(lambda: checkpoint_ordinal(checkpoint) >= ROWS // 4, "a quarter of the records", proc, log)
    served.kill("digits-rf")
    time.sleep(1.0)
    served.start("digits-rf")  # the same port, as a restarted pod behind its Service
    run_to_end(proc, log)
    text = log.read_text()
    assert "scoring service digits-rf:" in text and "retrying" in text
    assert_exact(pacsv.read_csv(workdir / "out" / "scored.csv"), digits, rows)
