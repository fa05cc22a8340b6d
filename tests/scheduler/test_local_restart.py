"""A scheduler killed with SIGKILL mid-job, and what `LocalBackend.recover()` makes of it afterwards.

A driver process (procs/restart_driver.py) runs a job until it is RUNNING and is then SIGKILLed: its scoring
service and flow keep running, orphaned. A new backend, as after a server restart, re-attaches to them (they
still run, and are really the ones started: pid and start time); when some are gone it re-attaches too and
restarts them (supervision), or, without restarts, uninstalls and fails the job with `SchedulerRestarted`. What
the flows reported meanwhile decides first: a job whose flows all reported success ends SUCCEEDED. Either way
no process is left behind. On SQLite and PostgreSQL.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from lifecycle_kit import (
    PIPELINE_YAML,
    PROCS,
    SECRET,
    CompletionReceiver,
    FakeCommands,
    add_pipeline,
    any_running,
    create_job,
    kill_processes,
    processes_of,
    settings_for,
    wait_for,
    wait_until,
)

import ir
from scheduler.backends.local import LocalBackend
from scheduler.deployers.local import LocalProcessDeployer
from scheduler.lifecycle import Outcome, Run
from scheduler.states import JobState, Task
from scheduler.store import Job, JobStore

FINAL = {JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED}


class Crash:
    """Runs the driver until its job is RUNNING, then SIGKILLs it."""

    def __init__(self, database_url: str, store: JobStore, home: Path) -> None:
        self.database_url = database_url
        self.store = store
        self.home = home
        self.orphans: list[dict[str, Any]] = []

    async def run_and_kill(self, public_url: str | None = None) -> Job:
        job = create_job(self.store, add_pipeline(self.store))
        driver = subprocess.Popen(
            [
                sys.executable,
                str(PROCS / "restart_driver.py"),
                self.database_url,
                str(self.home),
                str(job.id),
                *([public_url] if public_url else []),
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert driver.stdout is not None
            line = await asyncio.wait_for(asyncio.to_thread(driver.stdout.readline), 60)
            assert line.strip() == f"RUNNING {job.id}"
        finally:
            driver.kill()  # SIGKILL: no cleanup of any kind
            driver.wait()
            if driver.stdout is not None:
                driver.stdout.close()
        job = await asyncio.to_thread(self.store.get_job, job.id)
        self.orphans = processes_of(job)
        return job


@pytest.fixture
async def crash(database_url: str, store: JobStore, tmp_path: Path) -> AsyncIterator[Crash]:
    kit = Crash(database_url, store, tmp_path / "home")
    yield kit
    kill_processes(kit.orphans)


async def recovered(store: JobStore, home: Path, commands: FakeCommands | None = None, **settings: Any) -> LocalBackend:
    deployer = LocalProcessDeployer(home / "jobs", commands or FakeCommands())
    backend = LocalBackend(store, settings_for(home, **settings), SECRET, deployer)
    await backend.recover()
    return backend


async def test_after_a_crash_recover_re_attaches_to_live_processes_and_the_job_completes(crash: Crash) -> None:
    job = await crash.run_and_kill()
    assert (job.state, sorted(any_running(crash.orphans))) == (JobState.RUNNING, ["f1", "m1"])

    backend = await recovered(crash.store, crash.home)
    try:
        assert backend.running_jobs() == [job.id]
        assert sorted(any_running(crash.orphans)) == ["f1", "m1"]  # re-attached, not torn down
        await asyncio.to_thread(crash.store.record_completion, job.id, True, "done after the restart")
        await backend.completed(job.id)
        job = await wait_for(crash.store, job.id, FINAL)
        await backend.join(job.id)
    finally:
        await backend.close()

    assert (job.state, job.reason, job.message) == (JobState.SUCCEEDED, "Completed", "done after the restart")
    assert any_running(crash.orphans) == []


async def test_after_a_crash_without_restarts_a_job_whose_processes_died_too_is_uninstalled_and_failed(
    crash: Crash,
) -> None:
    job = await crash.run_and_kill()
    flow = next(p for p in crash.orphans if p["name"] == "f1")
    os.killpg(flow["pid"], signal.SIGKILL)  # the flow died while no scheduler was watching
    await wait_until(lambda: "f1" not in any_running(crash.orphans), what="the flow to die")

    backend = await recovered(crash.store, crash.home, restart_limit=0)
    try:
        job = await wait_for(crash.store, job.id, FINAL)
        await backend.join(job.id)
    finally:
        await backend.close()

    assert (job.state, job.reason) == (JobState.FAILED, "SchedulerRestarted")
    assert any_running(crash.orphans) == []  # the surviving service was stopped by uninstall
    uninstall_log = (crash.home / "jobs" / str(job.id) / "uninstall.log").read_text()
    assert "sent SIGTERM to service m1" in uninstall_log


async def test_after_a_crash_a_flow_that_died_meanwhile_is_restarted_and_its_report_ends_the_job_succeeded(
    crash: Crash,
) -> None:
    loop = asyncio.get_running_loop()
    holder: list[LocalBackend] = []
    receiver = CompletionReceiver(
        crash.store, lambda job_id: asyncio.run_coroutine_threadsafe(holder[0].completed(job_id), loop).result()
    )
    with receiver.running():
        job = await crash.run_and_kill(public_url=receiver.url)
        flow = next(p for p in crash.orphans if p["name"] == "f1")
        # The flow ended while no scheduler listened (say it finished, and its report was never accepted).
        os.killpg(flow["pid"], signal.SIGKILL)
        await wait_until(lambda: "f1" not in any_running(crash.orphans), what="the flow to die")

        # Started again, this flow reports at once, as a real one does from its finished checkpoint.
        again = FakeCommands(flow=["--complete", "succeeded", "--message", "reported again after the restart"])
        backend = await recovered(crash.store, crash.home, again, restart_backoff_seconds=0.05, public_url=receiver.url)
        holder.append(backend)
        try:
            job = await wait_for(crash.store, job.id, FINAL)
            await backend.join(job.id)
        finally:
            await backend.close()

    assert (job.state, job.reason, job.message) == (JobState.SUCCEEDED, "Completed", "reported again after the restart")
    restarts = [e.message for e in job.events or () if e.reason == "FlowRestarted"]
    assert restarts == [
        "flow f1 exited (exit code unknown: it was started before the scheduler restarted); restarted after 0.05s "
        "(restart 1 of at most 3 for this job)"
    ]
    assert any_running(crash.orphans) == []
    assert any_running(processes_of(job)) == []  # the restarted flow too


async def test_after_a_crash_an_installing_job_whose_flows_all_reported_success_ends_succeeded(
    store: JobStore, tmp_path: Path
) -> None:
    # The flow finished (and reported) before install saw the services ready; then the scheduler died.
    job = create_job(store, add_pipeline(store))
    await asyncio.to_thread(store.transition, job.id, JobState.INSTALLING, task=Task.INSTALL, reason="Installing")
    await asyncio.to_thread(store.record_completion, job.id, True, "1,000 records written", flow="f1", flows=["f1"])

    backend = await recovered(store, tmp_path / "home")
    try:
        job = await wait_for(store, job.id, FINAL)
        await backend.join(job.id)
    finally:
        await backend.close()

    assert (job.state, job.reason) == (JobState.SUCCEEDED, "Completed")
    assert job.message is not None and "1,000 records written" in job.message


async def test_an_outcome_that_does_not_fit_the_jobs_state_fails_it_as_an_internal_error_instead_of_hanging(
    store: JobStore, tmp_path: Path
) -> None:
    job = create_job(store, add_pipeline(store))
    await asyncio.to_thread(store.transition, job.id, JobState.INSTALLING, task=Task.INSTALL, reason="Installing")
    backend = LocalBackend(store, settings_for(tmp_path / "home"), SECRET)
    done = await backend.lifecycle.uninstall(Run(job.id), Outcome(JobState.SUCCEEDED, "Completed", "done"))
    assert (done.state, done.reason) == (JobState.FAILED, "InternalError")
    assert done.message == "the run ended with Completed, which a job INSTALLING cannot enter"


def two_flow_pipeline(store: JobStore) -> Any:
    """The lifecycle pipeline with a second flow `f2`, a copy of `f1`: the job completes once both reported."""
    text = PIPELINE_YAML.replace("WAIT", "1h").replace("flows: [f1]", "flows: [f1, f2]")
    flow = text[text.index("kind: ScoringFlow") : text.index("apiVersion: modelops/v1\nkind: Model")]
    text += "---\napiVersion: modelops/v1\n" + flow.replace("name: f1", "name: f2")
    bundle = ir.load_bundle_files({"pipeline.yaml": text})
    version, _ = store.add_pipeline_version(bundle.name, {"documents": bundle.canonical()}, bundle.digest())
    return version


async def test_after_a_restart_a_flow_that_reported_success_and_exited_is_not_restarted(
    store: JobStore, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    loop = asyncio.get_running_loop()
    holder: list[LocalBackend] = []
    receiver = CompletionReceiver(
        store,
        lambda job_id: asyncio.run_coroutine_threadsafe(holder[-1].completed(job_id), loop).result(),
        flows=["f1", "f2"],
    )
    with receiver.running():
        settings = settings_for(home, public_url=receiver.url, restart_backoff_seconds=0.05)
        f2_done = tmp_path / "f2-done"
        commands = FakeCommands(
            by_name={
                "f1": ["--complete", "succeeded", "--per-flow", "--run-for", "0"],
                "f2": ["--complete", "succeeded", "--per-flow", "--complete-when-file", str(f2_done)],
            }
        )
        first = LocalBackend(store, settings, SECRET, LocalProcessDeployer(home / "jobs", commands))
        holder.append(first)
        job = create_job(store, two_flow_pipeline(store))
        await first.start(job.id)
        job = await wait_for(store, job.id, JobState.RUNNING)
        await first.close()  # as a server stop: f1 reports and exits while nobody watches it
        await wait_until(lambda: "f1" not in any_running(processes_of(job)), what="f1 to exit")
        assert "f1" in (store.get_job(job.id).flow_completions or {})

        # A new deployer: the processes are not its children, their exit codes unknown to it.
        second = LocalBackend(store, settings, SECRET, LocalProcessDeployer(home / "jobs", commands))
        holder.append(second)
        await second.recover()
        try:
            f2_done.touch()
            job = await wait_for(store, job.id, FINAL)
            await second.join(job.id)
        finally:
            await second.close()

    assert (job.state, job.reason) == (JobState.SUCCEEDED, "Completed")
    assert not [e for e in job.events or () if e.reason in ("FlowRestarted", "ServiceRestarted")]
    assert any_running(processes_of(job)) == []
