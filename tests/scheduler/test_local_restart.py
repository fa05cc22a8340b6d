"""A scheduler killed with SIGKILL mid-job, and what `LocalBackend.recover()` makes of it afterwards.

A driver process (procs/restart_driver.py) runs a job until it is RUNNING and is then SIGKILLed: its scoring
service and flow keep running, orphaned. A new backend, as after a server restart, either re-attaches to them
(they still run, and are really the ones started: pid and start time) or, when they are gone, uninstalls and
fails the job with `SchedulerRestarted`. Either way no process is left behind. On SQLite and PostgreSQL.
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
    PROCS,
    SECRET,
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

from scheduler.backends.local import LocalBackend
from scheduler.deployers.local import LocalProcessDeployer
from scheduler.states import JobState
from scheduler.store import Job, JobStore

FINAL = {JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED}


class Crash:
    """Runs the driver until its job is RUNNING, then SIGKILLs it."""

    def __init__(self, database_url: str, store: JobStore, home: Path) -> None:
        self.database_url = database_url
        self.store = store
        self.home = home
        self.orphans: list[dict[str, Any]] = []

    async def run_and_kill(self) -> Job:
        job = create_job(self.store, add_pipeline(self.store))
        driver = subprocess.Popen(
            [sys.executable, str(PROCS / "restart_driver.py"), self.database_url, str(self.home), str(job.id)],
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


async def recovered(store: JobStore, home: Path) -> LocalBackend:
    backend = LocalBackend(store, settings_for(home), SECRET, LocalProcessDeployer(home / "jobs", FakeCommands()))
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


async def test_after_a_crash_a_job_whose_processes_died_too_is_uninstalled_and_failed(crash: Crash) -> None:
    job = await crash.run_and_kill()
    flow = next(p for p in crash.orphans if p["name"] == "f1")
    os.killpg(flow["pid"], signal.SIGKILL)  # the flow died while no scheduler was watching
    await wait_until(lambda: "f1" not in any_running(crash.orphans), what="the flow to die")

    backend = await recovered(crash.store, crash.home)
    try:
        job = await wait_for(crash.store, job.id, FINAL)
        await backend.join(job.id)
    finally:
        await backend.close()

    assert (job.state, job.reason) == (JobState.FAILED, "SchedulerRestarted")
    assert any_running(crash.orphans) == []  # the surviving service was stopped by uninstall
    uninstall_log = (crash.home / "jobs" / str(job.id) / "uninstall.log").read_text()
    assert "sent SIGTERM to service m1" in uninstall_log
