"""A pipeline with two scoring flows ends `wait` only once both reported success, or at the first failure.

A real scheduler (uvicorn in a thread, SQLite, the local backend) runs the fake flow of `procs/` for each flow;
each reports `/complete` with its own name, one of them only once the test lets it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cli_kit import Server, running_server, wait_job
from lifecycle_kit import PIPELINE_YAML

from scheduler.states import JobState

_ONE_FLOW = PIPELINE_YAML.replace("WAIT", "1h")
_F1 = next(doc for doc in _ONE_FLOW.split("---\n") if "kind: ScoringFlow" in doc)
TWO_FLOWS = _ONE_FLOW.replace("flows: [f1]", "flows: [f1, f2]") + "---\n" + _F1.replace("{name: f1}", "{name: f2}")
"""The lifecycle tests' pipeline with a second flow `f2`, a copy of `f1`."""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with running_server(tmp_path_factory.mktemp("home")) as running:
        with running.client() as client:
            client.deploy_bytes(TWO_FLOWS.encode(), "application/yaml")
        yield running


def test_the_job_waits_for_every_flow_then_succeeds_with_both_messages(server: Server, tmp_path: Path) -> None:
    gate = tmp_path / "let-f2-report"
    server.commands.by_name = {
        "f1": ["--complete", "succeeded", "--per-flow", "--message", "f1 scored 10 rows"],
        "f2": [
            "--complete",
            "succeeded",
            "--per-flow",
            "--message",
            "f2 scored 20 rows",
            "--complete-when-file",
            str(gate),
        ],
    }
    with server.client() as client:
        job = client.create_job("scoring")
        deadline = time.monotonic() + 30
        while not client.get_job(job.id).flow_completions:
            assert time.monotonic() < deadline, "flow f1 never reported"
            time.sleep(0.05)
        halfway = client.get_job(job.id)
        # f1 may report while install still waits for readiness: either way the job goes on, unfinished.
        assert halfway.state in (JobState.INSTALLING, JobState.RUNNING) and halfway.completion is None
        running = wait_job(client, job.id, JobState.RUNNING)
        assert running.completion is None
        assert list(halfway.flow_completions) == ["f1"]
        gate.touch()
        done = wait_job(client, job.id, {JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED})
    assert (done.state, done.reason) == (JobState.SUCCEEDED, "Completed")
    assert done.message == "flow f1: f1 scored 10 rows; flow f2: f2 scored 20 rows"
    assert set(done.flow_completions) == {"f1", "f2"}


def test_the_first_failed_flow_ends_the_job_without_waiting_for_the_others(server: Server, tmp_path: Path) -> None:
    server.commands.by_name = {
        "f1": ["--complete", "failed", "--per-flow", "--message", "flow f1: sink unreachable"],
        "f2": ["--complete", "succeeded", "--per-flow", "--complete-when-file", str(tmp_path / "never")],
    }
    with server.client() as client:
        job = client.create_job("scoring")
        done = wait_job(client, job.id, {JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED})
    assert (done.state, done.reason, done.message) == (JobState.FAILED, "ScoringFailed", "flow f1: sink unreachable")
    assert list(done.flow_completions) == ["f1"]
