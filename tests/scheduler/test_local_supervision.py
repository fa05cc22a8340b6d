"""Supervision on the local backend: a scoring service or flow that dies while the job runs is restarted (after a
back-off, up to the job's restart limit), each restart an event of the job; a flow that failed is not.

Real processes: the fake scoring service `m1` and the fake flow `f1` (tests/scheduler/procs), on SQLite and
PostgreSQL (the conftest's `store`). The real services and flow are in tests/e2e/test_e2e_supervision.py.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from lifecycle_kit import (
    SECRET,
    CompletionReceiver,
    FakeCommands,
    add_pipeline,
    any_running,
    create_job,
    processes_of,
    settings_for,
    wait_for,
    wait_until,
)

from scheduler.backends.local import LocalBackend
from scheduler.deployers.local import LocalProcessDeployer
from scheduler.states import JobState
from scheduler.store import Job, JobStore

FINAL = {JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED}


class Supervised:
    """A backend with fast restarts whose flows report to a completion receiver; nothing is left running."""

    def __init__(self, store: JobStore, home: Path) -> None:
        self.store = store
        self.home = home
        self.version = add_pipeline(store)
        self.backends: list[LocalBackend] = []
        self.deployers: list[LocalProcessDeployer] = []

    def backend(self, commands: FakeCommands, public_url: str, **settings: Any) -> LocalBackend:
        deployer = LocalProcessDeployer(self.home / "jobs", commands)
        options: dict[str, Any] = {"restart_backoff_seconds": 0.05, "public_url": public_url, **settings}
        backend = LocalBackend(self.store, settings_for(self.home, **options), SECRET, deployer)
        self.backends.append(backend)
        self.deployers.append(deployer)
        return backend

    async def start(self, backend: LocalBackend) -> Job:
        job = create_job(self.store, self.version)
        await backend.start(job.id)
        return await wait_for(self.store, job.id, JobState.RUNNING)

    async def finished(self, backend: LocalBackend, job: Job) -> Job:
        await wait_for(self.store, job.id, FINAL)
        await backend.join(job.id)
        return await asyncio.to_thread(self.store.get_job, job.id)

    async def events_with(self, job: Job, reason: str, count: int) -> list[str]:
        """Wait until the job has `count` events of `reason`; their messages."""

        def found() -> list[str]:
            current = self.store.get_job(job.id)
            return [e.message or "" for e in current.events or () if e.reason == reason]

        await wait_until(lambda: len(found()) >= count, what=f"{count} {reason} event(s)")
        return found()

    async def cleanup(self) -> None:
        for backend in self.backends:
            await backend.close()
        for folder in (self.home / "jobs").glob("*"):
            for deployer in self.deployers:
                recorded = deployer.recorded(folder.name)
                if recorded is not None:
                    await deployer.teardown(recorded, 0, lambda _: None)


@pytest.fixture
async def kit(store: JobStore, tmp_path: Path) -> AsyncIterator[Supervised]:
    supervised = Supervised(store, tmp_path / "home")
    yield supervised
    await supervised.cleanup()


@pytest.fixture
async def receiver(store: JobStore, kit: Supervised) -> AsyncIterator[CompletionReceiver]:
    loop = asyncio.get_running_loop()

    def completed(job_id: Any) -> None:
        for backend in kit.backends:
            asyncio.run_coroutine_threadsafe(backend.completed(job_id), loop).result()

    completion = CompletionReceiver(store, completed)
    with completion.running():
        yield completion


def process(job: Job, name: str) -> dict[str, Any]:
    return next(p for p in processes_of(job) if p["name"] == name)


async def test_a_scoring_service_killed_while_the_job_runs_is_restarted_on_its_port_and_the_job_succeeds(
    kit: Supervised, receiver: CompletionReceiver, tmp_path: Path
) -> None:
    done = tmp_path / "done"
    commands = FakeCommands(flow=["--complete", "succeeded", "--complete-when-file", str(done)])
    backend = kit.backend(commands, receiver.url)
    job = await kit.start(backend)
    first = process(job, "m1")
    os.kill(first["pid"], signal.SIGKILL)

    (message,) = await kit.events_with(job, "ServiceRestarted", 1)
    assert message == "service m1 was killed by SIGKILL; restarted after 0.05s (restart 1 of at most 3 for this job)"
    restarted = process(await asyncio.to_thread(kit.store.get_job, job.id), "m1")
    assert restarted["pid"] != first["pid"] and restarted["port"] == first["port"]  # where the flows call it
    assert any_running([restarted]) == ["m1"]
    done.touch()
    job = await kit.finished(backend, job)

    assert (job.state, job.reason) == (JobState.SUCCEEDED, "Completed")
    assert any_running(processes_of(job)) == []  # uninstall stopped the restarted service, not the dead one
    wait_log = (kit.home / "jobs" / str(job.id) / "wait.log").read_text()
    assert "service m1 was killed by SIGKILL; restarting it in 0.05s (restart 1 of at most 3 for this job)" in wait_log


async def test_a_flow_killed_by_a_signal_is_restarted_and_its_second_run_completes_the_job(
    kit: Supervised, receiver: CompletionReceiver, tmp_path: Path
) -> None:
    done = tmp_path / "done"
    commands = FakeCommands(flow=["--complete", "succeeded", "--complete-when-file", str(done)])
    backend = kit.backend(commands, receiver.url)
    job = await kit.start(backend)
    flow_log = kit.home / "jobs" / str(job.id) / "flows" / "f1.log"
    await wait_until(lambda: "fake flow f1 pid " in flow_log.read_text(), what="the flow to start")
    os.killpg(process(job, "f1")["pid"], signal.SIGKILL)

    (message,) = await kit.events_with(job, "FlowRestarted", 1)
    assert message == "flow f1 was killed by SIGKILL; restarted after 0.05s (restart 1 of at most 3 for this job)"
    done.touch()
    job = await kit.finished(backend, job)

    assert (job.state, job.reason) == (JobState.SUCCEEDED, "Completed")
    assert flow_log.read_text().count("fake flow f1 pid ") == 2  # the restarted flow reported the completion
    assert any_running(processes_of(job)) == []


@pytest.mark.parametrize("code", [137, 75])
async def test_restarts_stop_at_the_jobs_limit_and_the_job_fails_naming_the_component_and_its_restarts(
    kit: Supervised, receiver: CompletionReceiver, tmp_path: Path, code: int
) -> None:
    crash = tmp_path / "crash"
    # Once `crash` exists the flow exits with `code`, every run of it: 137, what a shell reports for a SIGKILLed
    # child; 75, what `modelops flow` exits with when the scheduler did not accept its completion report.
    commands = FakeCommands(flow=["--until-file", str(crash), "--exit-code", str(code)])
    backend = kit.backend(commands, receiver.url, restart_limit=2)
    job = await kit.start(backend)
    crash.touch()
    job = await kit.finished(backend, job)

    assert (job.state, job.reason) == (JobState.FAILED, "FlowFailed")
    assert job.message is not None
    assert job.message.splitlines()[0] == (
        f"flow f1 exited with code {code}; not restarted: the job's restarts are used up (2 of at most 2: flow f1 2; "
        "MODELOPS_SCHEDULER_RESTART_LIMIT)"
    )
    assert f"fake flow f1 exits with code {code}" in job.message  # its log tail follows
    restarts = [e.message for e in job.events or () if e.reason == "FlowRestarted"]
    assert restarts == [  # the back-off doubles with each restart of the component
        f"flow f1 exited with code {code}; restarted after 0.05s (restart 1 of at most 2 for this job)",
        f"flow f1 exited with code {code}; restarted after 0.1s (restart 2 of at most 2 for this job)",
    ]
    assert any_running(processes_of(job)) == []


@pytest.mark.parametrize("code", [1, 2])
async def test_a_flow_that_exits_with_a_failure_code_is_not_restarted_and_fails_the_job(
    kit: Supervised, receiver: CompletionReceiver, tmp_path: Path, code: int
) -> None:
    stop = tmp_path / "stop"
    commands = FakeCommands(flow=["--until-file", str(stop), "--exit-code", str(code)])
    backend = kit.backend(commands, receiver.url)
    job = await kit.start(backend)
    stop.touch()
    job = await kit.finished(backend, job)

    assert (job.state, job.reason) == (JobState.FAILED, "FlowFailed")
    assert job.message is not None and job.message.startswith(f"flow f1 exited with code {code}\n")
    assert not [e for e in job.events or () if e.reason in ("FlowRestarted", "ServiceRestarted")]


async def test_with_a_restart_limit_of_zero_a_killed_service_fails_the_job_at_once(
    kit: Supervised, receiver: CompletionReceiver
) -> None:
    backend = kit.backend(FakeCommands(), receiver.url, restart_limit=0)
    job = await kit.start(backend)
    os.kill(process(job, "m1")["pid"], signal.SIGKILL)
    job = await kit.finished(backend, job)

    assert (job.state, job.reason) == (JobState.FAILED, "FlowFailed")
    assert job.message is not None
    assert job.message.startswith("service m1 was killed by SIGKILL while the flows were running")
    assert not [e for e in job.events or () if e.reason == "ServiceRestarted"]


async def test_a_cancel_during_a_restarts_back_off_ends_the_job_cancelled_without_restarting(
    kit: Supervised, receiver: CompletionReceiver
) -> None:
    backend = kit.backend(FakeCommands(), receiver.url, restart_backoff_seconds=3600, restart_backoff_max_seconds=3600)
    job = await kit.start(backend)
    os.kill(process(job, "m1")["pid"], signal.SIGKILL)
    wait_log = kit.home / "jobs" / str(job.id) / "wait.log"
    await wait_until(lambda: "restarting it in 3600s" in wait_log.read_text(), what="the restart to be scheduled")
    await asyncio.to_thread(kit.store.transition, job.id, JobState.CANCELLING, reason="CancelRequested")
    await backend.cancel(job.id)
    job = await kit.finished(backend, job)

    assert (job.state, job.reason) == (JobState.CANCELLED, "Cancelled")
    assert not [e for e in job.events or () if e.reason == "ServiceRestarted"]
    assert any_running(processes_of(job)) == []
