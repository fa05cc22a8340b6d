"""Admission (`scheduler.admission`): at most `max_running_jobs` jobs run, the others wait PENDING in order.

The same limit on every path that starts a job: the local backend in one process (real fake processes from
tests/scheduler/procs), the multi-worker engine (`scheduler.dispatch`, PostgreSQL) and the tekton backend
(against fake_k8s.py). A queued job's cancel goes through the service and never reaches the backend.
"""

from __future__ import annotations

import asyncio
import itertools
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from fake_k8s import FakeKube
from lifecycle_kit import (
    SECRET,
    FakeCommands,
    add_pipeline,
    create_job,
    events,
    settings_for,
    wait_for,
    wait_until,
)
from store_kit import wipe_postgres

from scheduler.auth import Principal
from scheduler.backends.local import LocalBackend
from scheduler.backends.tekton import JOB_LABEL, TektonBackend
from scheduler.db import create_engine, upgrade
from scheduler.deployers.local import LocalProcessDeployer
from scheduler.dispatch import Engine
from scheduler.k8s import K8sError
from scheduler.service import SchedulerService
from scheduler.settings import SchedulerSettings, default_max_running_jobs
from scheduler.states import JobState, Task
from scheduler.store import Job, JobStore, PipelineVersion
from scheduler.tokens import job_token_hash

FINAL = {JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED}
USER = Principal("alice", "write")


@pytest.fixture
def sqlite_store(tmp_path: Path) -> Iterator[JobStore]:
    url = f"sqlite:///{tmp_path / 'admission.db'}"
    upgrade(url)
    engine = create_engine(url)
    yield JobStore(engine)
    engine.dispose()


class Local:
    """A local backend over real (fake) processes, cleaned up at the end of the test."""

    def __init__(self, store: JobStore, home: Path) -> None:
        self.store = store
        self.home = home
        self.version: PipelineVersion = add_pipeline(store)
        self.commands = FakeCommands()
        self.deployer = LocalProcessDeployer(home / "jobs", self.commands)
        self.backends: list[LocalBackend] = []

    def backend(self, **settings: Any) -> LocalBackend:
        backend = LocalBackend(self.store, settings_for(self.home, **settings), SECRET, self.deployer)
        self.backends.append(backend)
        return backend

    def jobs(self, count: int) -> list[Job]:
        return [create_job(self.store, self.version) for _ in range(count)]

    async def cleanup(self) -> None:
        for backend in self.backends:
            await backend.close()
        for folder in (self.home / "jobs").glob("*"):
            recorded = self.deployer.recorded(folder.name)
            if recorded is not None:
                await self.deployer.teardown(recorded, 0, lambda _: None)


@pytest.fixture
async def local(sqlite_store: JobStore, tmp_path: Path) -> AsyncIterator[Local]:
    kit = Local(sqlite_store, tmp_path / "home")
    yield kit
    await kit.cleanup()


async def current(store: JobStore, jobs: list[Job]) -> list[Job]:
    return [await asyncio.to_thread(store.get_job, job.id) for job in jobs]


async def positions(store: JobStore, jobs: list[Job]) -> list[int | None]:
    return [job.queue_position for job in await current(store, jobs)]


async def complete(store: JobStore, backend: LocalBackend, job: Job) -> Job:
    """What a flow's `/complete` report does: record it, wake the backend; then wait for the job's end."""
    await asyncio.to_thread(store.record_completion, job.id, True, "all scored")
    await backend.completed(job.id)
    finished = await wait_for(store, job.id, FINAL)
    await backend.join(job.id)
    return finished


def components_started(commands: FakeCommands) -> set[str]:
    """The jobs (their run folders) whose processes were started."""
    return {component.job_id for component in commands.seen}


def test_the_default_limit_is_the_cpu_count_and_at_least_two(tmp_path: Path) -> None:
    assert default_max_running_jobs() >= 2
    assert SchedulerSettings(home=tmp_path).max_running_jobs == default_max_running_jobs()
    assert SchedulerSettings(home=tmp_path, max_running_jobs=0).max_running_jobs == 0


async def test_with_a_limit_of_two_five_jobs_run_two_at_a_time_in_order_and_all_succeed(local: Local) -> None:
    backend = local.backend(max_running_jobs=2)
    jobs = local.jobs(5)
    for job in jobs:
        await backend.start(job.id)
    for job in jobs[:2]:
        await wait_for(local.store, job.id, JobState.RUNNING)

    now = await current(local.store, jobs)
    assert [job.state for job in now[2:]] == [JobState.PENDING] * 3
    assert [job.queue_position for job in now] == [None, None, 1, 2, 3]
    assert all(job.backend_ref is None for job in now[2:]), "a queued job has nothing deployed"
    assert components_started(local.commands) == {str(jobs[0].id), str(jobs[1].id)}
    assert await asyncio.to_thread(local.store.running_count, "local") == 2

    # Each end lets the oldest queued job in; the others move up one place.
    expected = [[None, 1, 2], [None, 1], [None]]
    for index in range(3):
        assert (await complete(local.store, backend, jobs[index])).state is JobState.SUCCEEDED
        await wait_for(local.store, jobs[index + 2].id, JobState.RUNNING)
        assert await positions(local.store, jobs[index + 2 :]) == expected[index]
        running = [job for job in await current(local.store, jobs) if job.state not in FINAL | {JobState.PENDING}]
        assert len(running) == 2, "never more than the limit at once"
    for job in jobs[3:]:
        assert (await complete(local.store, backend, job)).state is JobState.SUCCEEDED

    ended = await current(local.store, jobs)
    assert [job.state for job in ended] == [JobState.SUCCEEDED] * 5
    # Admitted in creation order: none before the one created before it.
    admitted = [job.admitted_at for job in ended]
    assert all(a is not None and b is not None and a <= b for a, b in itertools.pairwise(admitted))
    assert admitted[1] is not None and admitted[2] is not None and admitted[1] < admitted[2]
    assert all(job.queue_position is None for job in ended)


async def test_a_queued_job_s_cancel_is_immediate_and_never_starts_a_process(local: Local) -> None:
    backend = local.backend(max_running_jobs=1)
    service = SchedulerService(local.store, backend, backend.settings, SECRET)
    first, queued, last = local.jobs(3)
    for job in (first, queued, last):
        await backend.start(job.id)
    await wait_for(local.store, first.id, JobState.RUNNING)
    assert await positions(local.store, [queued, last]) == [1, 2]

    cancelled = await service.cancel_job(queued.id, USER)

    assert (cancelled.state, cancelled.reason, cancelled.message) == (
        JobState.CANCELLED,
        "Cancelled",
        "cancelled by alice",
    )
    assert cancelled.task is Task.UNINSTALL and cancelled.queue_position is None
    recorded = await asyncio.to_thread(local.store.get_job, queued.id)
    assert events(recorded) == [
        (None, "PENDING", None, "Created"),
        ("PENDING", "CANCELLING", None, "Cancelled"),
        ("CANCELLING", "CANCELLING", "uninstall", "Cancelled"),
        ("CANCELLING", "CANCELLED", "uninstall", "Cancelled"),
    ]
    assert await positions(local.store, [last]) == [1], "the jobs behind it move up"

    await complete(local.store, backend, first)
    await wait_for(local.store, last.id, JobState.RUNNING)
    await complete(local.store, backend, last)
    assert str(queued.id) not in components_started(local.commands), "the cancelled job never started"
    assert not (local.home / "jobs" / str(queued.id)).exists()


async def test_a_restarted_server_starts_admitted_jobs_and_keeps_the_queue_in_order(local: Local) -> None:
    first_backend = local.backend(max_running_jobs=1)
    jobs = local.jobs(3)
    for job in jobs:
        await first_backend.start(job.id)
    await wait_for(local.store, jobs[0].id, JobState.RUNNING)
    await first_backend.close()  # a restart: the running job's processes live on

    backend = local.backend(max_running_jobs=1)
    await backend.recover()
    assert await positions(local.store, jobs) == [None, 1, 2]
    assert [job.state for job in await current(local.store, jobs)][1:] == [JobState.PENDING] * 2
    for index, job in enumerate(jobs):
        assert (await complete(local.store, backend, job)).state is JobState.SUCCEEDED
        if index + 1 < len(jobs):
            await wait_for(local.store, jobs[index + 1].id, JobState.RUNNING)


# ------------------------------------------------------------------------------------ the multi-worker engine


@pytest.mark.postgres
async def test_the_multi_worker_engine_honours_the_same_limit(postgres_database: str, tmp_path: Path) -> None:
    wipe_postgres(postgres_database)
    upgrade(postgres_database)
    db = create_engine(postgres_database)
    store = JobStore(db)
    home = tmp_path / "home"
    settings = settings_for(home, database_url=postgres_database, max_running_jobs=2)
    commands = FakeCommands()
    deployer = LocalProcessDeployer(home / "jobs", commands)
    built: list[LocalBackend] = []

    def factory(engine_store: JobStore, engine_settings: SchedulerSettings, secret: bytes) -> LocalBackend:
        built.append(LocalBackend(engine_store, engine_settings, secret, deployer))
        return built[-1]

    engine = Engine(settings, factory, sweep_seconds=0.2)
    try:
        engine.start(start_timeout=30)
        version = add_pipeline(store)
        jobs = [create_job(store, version) for _ in range(4)]
        for job in jobs:  # what the API workers' DispatchBackend does
            await asyncio.to_thread(store.notify_engine, "start", job.id)
        for job in jobs[:2]:
            await wait_for(store, job.id, JobState.RUNNING)
        assert await positions(store, jobs) == [None, None, 1, 2]
        assert components_started(commands) == {str(jobs[0].id), str(jobs[1].id)}

        for index, job in enumerate(jobs):
            await asyncio.to_thread(store.record_completion, job.id, True, "all scored")
            await asyncio.to_thread(store.notify_engine, "completed", job.id)
            assert (await wait_for(store, job.id, FINAL)).state is JobState.SUCCEEDED
            if index + 2 < len(jobs):
                await wait_for(store, jobs[index + 2].id, JobState.RUNNING)
                assert len([j for j in await current(store, jobs) if j.state is JobState.RUNNING]) <= 2
    finally:
        engine.stop()
        for folder in (home / "jobs").glob("*"):
            recorded = deployer.recorded(folder.name)
            if recorded is not None:
                await deployer.teardown(recorded, 0, lambda _: None)
        db.dispose()


# ------------------------------------------------------------------------------------------------ tekton


def tekton_job(store: JobStore, version: PipelineVersion) -> Job:
    job_id = uuid.uuid4()
    job, _ = store.create_job(
        version,
        parameters={},
        environment={},
        backend="tekton",
        token_hash=job_token_hash(SECRET, job_id),
        job_id=job_id,
    )
    return job


async def test_the_tekton_backend_creates_no_pipelinerun_past_the_limit(store: JobStore, tmp_path: Path) -> None:
    settings = settings_for(
        tmp_path, backend="tekton", public_url="http://scheduler.modelops.svc:8787", max_running_jobs=2
    )
    kube = FakeKube()
    backend = TektonBackend(store, settings, SECRET, kube=kube)
    await backend.recover()
    try:
        version = add_pipeline(store, wait="2h")
        jobs = [await asyncio.to_thread(tekton_job, store, version) for _ in range(4)]
        for job in jobs:
            await backend.start(job.id)
        assert len(kube.pipelineruns) == 2
        assert await positions(store, jobs) == [None, None, 1, 2]

        service = SchedulerService(store, backend, settings, SECRET)
        cancelled = await service.cancel_job(jobs[3].id, USER)
        assert cancelled.state is JobState.CANCELLED and len(kube.pipelineruns) == 2

        first = await asyncio.to_thread(store.get_job, jobs[0].id)
        assert first.backend_ref is not None
        name = first.backend_ref["pipelinerun"]
        kube.start_run(name)
        await asyncio.to_thread(store.record_completion, jobs[0].id, True, "done")
        kube.set_run_condition(name, "True", "Succeeded", "Tasks Completed: 3")
        await asyncio.wait_for(backend.wait_applied(kube.last_event_version), 30)
        assert (await asyncio.to_thread(store.get_job, jobs[0].id)).state is JobState.SUCCEEDED

        await wait_until(lambda: len(kube.pipelineruns) == 3, what="the queued job's PipelineRun")
        third = await wait_for(store, jobs[2].id, JobState.INSTALLING)
        assert third.queue_position is None
        assert str(jobs[2].id) in {run["metadata"]["labels"][JOB_LABEL] for run in kube.pipelineruns.values()}
    finally:
        await backend.close()


# ------------------------------------------------------------------------------------------------ the CLI


def test_job_show_job_list_and_the_run_view_give_a_queued_job_s_position(tmp_path: Path) -> None:
    from io import StringIO

    from cli_kit import running_server, wait_job, write_bundle
    from rich.console import Console
    from typer.testing import CliRunner

    from scheduler.cli import _RunView, app

    with running_server(tmp_path / "home", max_running_jobs=1) as server:
        server.commands.flow = ["--until-file", str(tmp_path / "never")]
        runner = CliRunner(env={"MODELOPS_SERVER": server.url, "MODELOPS_TOKEN": None})
        deployed = runner.invoke(app, ["pipeline", "deploy", str(write_bundle(tmp_path / "bundle"))])
        assert deployed.exit_code == 0, deployed.stderr
        with server.client() as client:
            first = client.create_job("scoring")
            wait_job(client, first.id, JobState.RUNNING)
            queued = client.create_job("scoring")
            assert (queued.state, queued.queue_position) == (JobState.PENDING, 1)

            shown = runner.invoke(app, ["job", "show", str(queued.id)])
            assert shown.exit_code == 0, shown.stderr
            assert "position 1: it starts when a running job ends" in shown.stdout
            listed = runner.invoke(app, ["job", "list"])
            assert listed.exit_code == 0, listed.stderr
            row = next(line for line in listed.stdout.splitlines() if line.startswith(str(queued.id)))
            assert "queued: position 1" in row
            as_json = runner.invoke(app, ["job", "show", str(queued.id), "--json"])
            assert '"queue_position": 1' in as_json.stdout

            printed = StringIO()
            view = _RunView(client.get_job(queued.id), console=Console(file=printed, width=200), live=False)
            view.update(client.get_job(queued.id))
            assert "PENDING    task -         queued: position 1" in printed.getvalue()

            cancelled = runner.invoke(app, ["job", "cancel", str(queued.id)])
            assert cancelled.exit_code == 0, cancelled.stderr
            assert client.get_job(queued.id).state is JobState.CANCELLED, "a queued job's cancel is immediate"
            client.cancel_job(first.id)
            wait_job(client, first.id, JobState.CANCELLED)


async def test_a_queued_job_whose_start_fails_frees_its_slot_for_the_next(store: JobStore, tmp_path: Path) -> None:
    settings = settings_for(
        tmp_path, backend="tekton", public_url="http://scheduler.modelops.svc:8787", max_running_jobs=1
    )
    kube = FakeKube()
    backend = TektonBackend(store, settings, SECRET, kube=kube)
    await backend.recover()
    try:
        version = add_pipeline(store, wait="2h")
        first, refused, last = [await asyncio.to_thread(tekton_job, store, version) for _ in range(3)]
        for job in (first, refused, last):
            await backend.start(job.id)
        assert await positions(store, [refused, last]) == [1, 2]

        kube.fail_next("create_pipelinerun", K8sError("pipelineruns is forbidden", 403))
        await asyncio.to_thread(store.transition, first.id, JobState.FAILED, reason="Done")
        backend.admission.released()  # what the reconciler does when a run ends

        failed = await wait_for(store, refused.id, FINAL)
        assert (failed.state, failed.reason) == (JobState.FAILED, "BackendStartFailed")
        assert failed.message is not None and "pipelineruns is forbidden" in failed.message
        started = await wait_for(store, last.id, JobState.INSTALLING)
        assert started.backend_ref is not None, "the next job got the slot the failed start freed"
    finally:
        await backend.close()
