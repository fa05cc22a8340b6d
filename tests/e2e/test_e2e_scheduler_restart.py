"""A scheduler SIGKILLed mid-job and started again after its flow finished: the job ends SUCCEEDED with its
counters right, from what the flow reported once the scheduler was back (its last progress report and its
completion are retried until accepted), and nothing is scored twice.

A real `modelops serve` process (SQLite, the local backend) running real `modelops scoring-service` and
`modelops flow` processes on the digits models; a pacing step slows the flow so that the kill lands mid-job.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pyarrow.csv as pacsv
import pytest
from e2e_kit import wait_terminal
from flow_kit import (
    IN_FIELDS,
    OUT_FIELDS,
    REPO,
    SCORE_STEPS,
    Digits,
    channel,
    digits_rows,
    expected,
    write_bundle,
    write_digits_csv,
)
from test_e2e_supervision import PACE, PACE_STEP, checkpoint_ordinal

from scheduler.client import SchedulerClient
from scheduler.states import JobState

pytestmark = pytest.mark.slow

ROWS = 12_000


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 120.0) -> None:
    """Poll `condition`; `timeout` is a safety net against a hanging test, not a timing assertion."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


class Server:
    """`modelops serve` on one port and home, which can be SIGKILLed and started again on the same port."""

    def __init__(self, home: Path, env: dict[str, str]) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.home = home
        self.env = env
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log = open(self.home.parent / "server.log", "ab")  # noqa: SIM115 (the process owns it)
        self.process = subprocess.Popen(
            [sys.executable, "-c", "from scheduler.cli import app; app()", "serve", "--port", str(self.port)],
            cwd=REPO,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        wait_for(self._ready, "the server to be ready", timeout=60)

    def _ready(self) -> bool:
        assert self.process is not None and self.process.poll() is None, (self.home.parent / "server.log").read_text()
        try:
            return httpx.get(f"{self.url}/readyz", timeout=1).status_code == 200
        except httpx.TransportError:
            return False

    def kill(self) -> None:
        assert self.process is not None
        self.process.kill()  # SIGKILL: no shutdown, no cleanup
        self.process.wait(10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()


@pytest.fixture
def server(tmp_path: Path, digits: Digits) -> Iterator[Server]:
    modules = tmp_path / "modules"
    modules.mkdir()
    (modules / "pacing_supervision.py").write_text(PACE)
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELOPS_")}
    env.update(
        MODELOPS_HOME=str(home),
        MODELOPS_SCHEDULER_DATA_ROOT=str(tmp_path),
        MODELOPS_SCHEDULER_ARTIFACT_ROOTS=str(digits.joblib_path.parent),  # where the test models are
        MODELOPS_SCHEDULER_POLL_INTERVAL_SECONDS="0.2",
        MODELOPS_SCHEDULER_READINESS_TIMEOUT_SECONDS="120",
        MODELOPS_FLOW_IN_FLIGHT="1",
        MODELOPS_FLOW_COMMIT_INTERVAL_SECONDS="0.05",
        PYTHONPATH=str(modules),
    )
    running = Server(home, env)
    try:
        yield running
    finally:
        running.stop()


def processes(client: SchedulerClient, job_id: uuid.UUID) -> list[dict[str, Any]]:
    ref = client.get_job(job_id).backend_ref
    assert ref is not None
    found: list[dict[str, Any]] = ref["processes"]
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state not in (b"Z", b"X")


def test_a_scheduler_killed_mid_job_and_restarted_after_the_flow_finished_ends_the_job_succeeded_with_its_counts(
    tmp_path: Path, digits: Digits, server: Server
) -> None:
    rows = digits_rows(digits, ROWS)
    source = write_digits_csv(tmp_path / "data" / "in.csv", rows)
    output = tmp_path / "out" / "scored.csv"
    channels = {
        "in": channel("source", "file", {"path": str(source), "format": "csv"}, IN_FIELDS),
        "out": channel("sink", "file", {"path": str(output), "format": "csv"}, OUT_FIELDS),
    }
    bundle = write_bundle(
        tmp_path / "bundle", digits, channels=channels, steps=[*SCORE_STEPS, PACE_STEP], batch_size=200
    )
    server.start()
    with SchedulerClient(server.url) as client:
        deployment = client.deploy(bundle)
        job = client.create_job(deployment.name, version=deployment.version)
        run = server.home / "jobs" / str(job.id)
        wait_for(lambda: checkpoint_ordinal(run / "checkpoints" / "digits-flow.json") >= ROWS // 4, "a quarter")
        pids = [p["pid"] for p in processes(client, job.id)]
    server.kill()
    flow_log = run / "flows" / "digits-flow.log"
    # The flow finishes while no scheduler listens, and keeps offering its last reports.
    wait_for(lambda: "cannot send the last progress report" in flow_log.read_text(), "the flow to finish")
    assert checkpoint_ordinal(run / "checkpoints" / "digits-flow.json") == ROWS

    server.start()
    with SchedulerClient(server.url) as client:
        detail = wait_terminal(client, job.id, timeout=120)
        assert (detail.state, detail.reason) == (JobState.SUCCEEDED, "Completed"), detail.message
        assert (detail.progress.read, detail.progress.written, detail.progress.failed) == (ROWS, ROWS, 0)
        assert detail.message is not None and f"{ROWS:,} records written" in detail.message
    text = flow_log.read_text()
    assert "the scheduler accepted the last progress report after" in text
    assert "did not record its completion" not in text  # the completion went through once the scheduler was back
    table = pacsv.read_csv(output)
    ids = table.column("id").to_numpy()
    assert len(ids) == len(np.unique(ids)) == ROWS, "duplicated or lost rows"
    for name, values in expected(digits, rows).items():
        assert np.array_equal(table.column(name).to_numpy(), values), name
    assert [pid for pid in pids if alive(pid)] == []  # the re-attached run was torn down
