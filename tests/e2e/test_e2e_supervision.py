"""A job that survives its components: the local backend restarts a SIGKILLed scoring service and then a
SIGKILLed flow mid-job, as Kubernetes would, and the job succeeds with every input row scored exactly once.

A real scheduler (the local backend, SQLite) running real `modelops scoring-service` and `modelops flow`
processes on the digits models; a pacing step slows the flow down so that each kill lands mid-job.
"""

from __future__ import annotations

import json
import os
import signal
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.csv as pacsv
import pytest
from e2e_kit import wait_terminal
from flow_kit import (
    IN_FIELDS,
    OUT_FIELDS,
    SCORE_STEPS,
    Digits,
    channel,
    digits_rows,
    expected,
    write_bundle,
    write_digits_csv,
)

from scheduler.client import SchedulerClient
from scheduler.embedded import EmbeddedServer
from scheduler.settings import SchedulerSettings
from scheduler.states import JobState

pytestmark = pytest.mark.slow

ROWS = 12_000
PACE = '''
import time


def pace(batch):
    """Slow the flow down so a kill lands in the middle of it."""
    time.sleep(0.05)
    return batch
'''
PACE_STEP = {"name": "pace", "python": {"module": "pacing_supervision", "function": "pace"}}


@pytest.fixture
def supervising(
    tmp_path: Path, digits: Digits, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[SchedulerClient, Path]]:
    """A scheduler with fast restarts; its flows run one batch at a time, checkpoint often and find the pacing
    step's module on PYTHONPATH (the components inherit the server's environment)."""
    modules = tmp_path / "modules"
    modules.mkdir()
    (modules / "pacing_supervision.py").write_text(PACE)
    monkeypatch.setenv("PYTHONPATH", str(modules))
    monkeypatch.setenv("MODELOPS_FLOW_IN_FLIGHT", "1")
    monkeypatch.setenv("MODELOPS_FLOW_COMMIT_INTERVAL_SECONDS", "0.05")
    monkeypatch.setenv("MODELOPS_SCHEDULER_ARTIFACT_ROOTS", str(digits.joblib_path.parent))  # the test models
    home = tmp_path / "home"
    settings = SchedulerSettings(
        home=home,
        data_root=tmp_path,
        readiness_timeout_seconds=120.0,
        uninstall_grace_seconds=15.0,
        poll_interval_seconds=0.2,
        restart_backoff_seconds=0.2,
    )
    server = EmbeddedServer(settings)
    server.start()
    try:
        with SchedulerClient(server.url) as client:
            yield client, home
    finally:
        server.stop()


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 120.0) -> None:
    """Poll `condition`; `timeout` is a safety net against a hanging test, not a timing assertion."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def checkpoint_ordinal(path: Path) -> int:
    try:
        return int(json.loads(path.read_text())["ordinal"])
    except (FileNotFoundError, ValueError, KeyError):
        return 0


def pid_of(client: SchedulerClient, job_id: uuid.UUID, name: str) -> int:
    ref: dict[str, Any] | None = client.get_job(job_id).backend_ref
    assert ref is not None
    return int(next(p["pid"] for p in ref["processes"] if p["name"] == name))


def restart_events(client: SchedulerClient, job_id: uuid.UUID) -> list[tuple[str | None, str | None]]:
    return [(e.reason, e.message) for e in client.get_job(job_id).events if e.reason and e.reason.endswith("Restarted")]


def test_a_job_whose_service_and_then_flow_are_sigkilled_mid_job_succeeds_with_every_row_scored_exactly_once(
    tmp_path: Path, digits: Digits, supervising: tuple[SchedulerClient, Path]
) -> None:
    client, home = supervising
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
    deployment = client.deploy(bundle)
    job = client.create_job(deployment.name, version=deployment.version)
    checkpoint = home / "jobs" / str(job.id) / "checkpoints" / "digits-flow.json"

    wait_for(lambda: checkpoint_ordinal(checkpoint) >= ROWS // 5, "a fifth of the rows")
    os.kill(pid_of(client, job.id, "digits-rf"), signal.SIGKILL)
    wait_for(lambda: len(restart_events(client, job.id)) == 1, "the service's restart")
    at_service_kill = checkpoint_ordinal(checkpoint)
    wait_for(lambda: checkpoint_ordinal(checkpoint) >= max(ROWS // 2, at_service_kill + 1000), "half of the rows")
    flow_pid = pid_of(client, job.id, "digits-flow")
    os.killpg(flow_pid, signal.SIGKILL)
    assert checkpoint_ordinal(checkpoint) < ROWS, "the flow finished before it could be killed"
    detail = wait_terminal(client, job.id, timeout=300)

    assert (detail.state, detail.reason) == (JobState.SUCCEEDED, "Completed"), detail.message
    assert restart_events(client, job.id) == [
        (
            "ServiceRestarted",
            "service digits-rf was killed by SIGKILL; restarted after 0.2s (restart 1 of at most 3 for this job)",
        ),
        (
            "FlowRestarted",
            "flow digits-flow was killed by SIGKILL; restarted after 0.2s (restart 2 of at most 3 for this job)",
        ),
    ]
    table = pacsv.read_csv(output)
    ids = table.column("id").to_numpy()
    assert len(ids) == len(np.unique(ids)) == ROWS, "duplicated or lost rows"
    for name, values in expected(digits, rows).items():
        assert np.array_equal(table.column(name).to_numpy(), values), name
    assert (detail.progress.read, detail.progress.written, detail.progress.failed) == (ROWS, ROWS, 0)
    flow_log = (home / "jobs" / str(job.id) / "flows" / "digits-flow.log").read_text()
    assert "resuming at record" in flow_log
    assert "scoring service digits-rf:" in flow_log and "retrying" in flow_log
