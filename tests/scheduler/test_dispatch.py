"""A multi-worker server: API workers hand jobs to the one lifecycle engine (`scheduler.dispatch`).

PostgreSQL only (the hand-off is LISTEN/NOTIFY). The engine is tested with a recording backend, to see exactly
which calls it makes for notifications and for its sweeps; the whole thing (`run_server` with two uvicorn workers
and the real `LocalBackend` deploying the fake components) is tested through its REST API.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from cli_kit import wait_job
from lifecycle_kit import PIPELINE_YAML, add_pipeline, create_job, settings_for, wait_for, wait_until, write_input
from pydantic import ValidationError
from store_kit import wipe_postgres

from scheduler.client import SchedulerClient
from scheduler.db import create_engine, upgrade
from scheduler.dispatch import DispatchBackend, Engine, _libpq_url
from scheduler.joblogs import LogItem
from scheduler.settings import SchedulerSettings
from scheduler.states import JobState, Task
from scheduler.store import ENGINE_CHANNEL, JobStore

pytestmark = pytest.mark.postgres

PROCS = Path(__file__).resolve().parent / "procs"


class RecordingBackend:
    """A `Backend` that records the calls the engine makes (and can refuse to start)."""

    name = "local"

    def __init__(self, *, refuse_start: bool = False) -> None:
        self.calls: list[tuple[str, uuid.UUID | None]] = []
        self.refuse_start = refuse_start

    async def start(self, job_id: uuid.UUID) -> None:
        self.calls.append(("start", job_id))
        if self.refuse_start:
            raise RuntimeError("no capacity left")

    async def cancel(self, job_id: uuid.UUID) -> None:
        self.calls.append(("cancel", job_id))

    async def completed(self, job_id: uuid.UUID) -> None:
        self.calls.append(("completed", job_id))

    async def logs(self, job_id: uuid.UUID, task: Task | None, follow: bool) -> AsyncIterator[str]:
        yield f"log of {job_id} {task} {follow}"

    async def component_logs(self, job_id: uuid.UUID, component: str, follow: bool) -> AsyncIterator[LogItem]:
        yield f"log of {job_id} {component} {follow}"

    async def recover(self) -> None:
        self.calls.append(("recover", None))

    async def close(self) -> None:
        self.calls.append(("close", None))

    def count(self, action: str, job_id: uuid.UUID | None = None) -> int:
        return sum(1 for call in self.calls if call == (action, job_id))


@pytest.fixture
def pg_url(postgres_database: str) -> str:
    """The session's PostgreSQL database, wiped and migrated."""
    wipe_postgres(postgres_database)
    upgrade(postgres_database)
    return postgres_database


@pytest.fixture
def pg_store(pg_url: str) -> Iterator[JobStore]:
    engine = create_engine(pg_url)
    yield JobStore(engine)
    engine.dispose()


@pytest.fixture
def run_engine(pg_url: str, tmp_path: Path) -> Iterator[Any]:
    """Start an `Engine` over `backend` (sweeping every `sweep` seconds); stopped at the end of the test."""
    engines: list[Engine] = []

    def start(backend: RecordingBackend, *, sweep: float = 60.0) -> Engine:
        settings = settings_for(tmp_path, database_url=pg_url)
        engine = Engine(settings, lambda store, settings, secret: backend, sweep_seconds=sweep)
        engine.start(start_timeout=30)
        engines.append(engine)
        return engine

    yield start
    for engine in engines:
        engine.stop()


def test_more_than_one_worker_is_refused_on_sqlite(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="workers=2 needs PostgreSQL"):
        SchedulerSettings(home=tmp_path, workers=2)


def test_a_multi_worker_server_shares_its_database_connections_out(tmp_path: Path, pg_url: str) -> None:
    from scheduler.app import WORKER_SETTINGS_ENV, create_worker_app

    settings = settings_for(tmp_path, database_url=pg_url, workers=4, worker_threads=40)
    os.environ[WORKER_SETTINGS_ENV] = json.dumps(settings.model_dump(mode="json"))
    try:
        app = create_worker_app()
    finally:
        del os.environ[WORKER_SETTINGS_ENV]
    assert app.state.settings.worker_threads == 10
    assert app.state.settings.workers == 4


async def test_a_dispatching_backend_wakes_the_engine_once_per_action(pg_url: str, pg_store: JobStore) -> None:
    inner = RecordingBackend()
    backend = DispatchBackend(inner, pg_store)
    job_id = uuid.uuid4()
    async with await psycopg.AsyncConnection.connect(_libpq_url(pg_url), autocommit=True) as listener:
        await listener.execute(f"LISTEN {ENGINE_CHANNEL}")
        await backend.start(job_id)
        await backend.cancel(job_id)
        await backend.completed(job_id)
        payloads = [note.payload async for note in listener.notifies(timeout=10, stop_after=3)]
    assert payloads == [f"start:{job_id}", f"cancel:{job_id}", f"completed:{job_id}"]
    assert inner.calls == []  # nothing runs in an API worker
    assert [line async for line in backend.logs(job_id, Task.WAIT, False)] == [f"log of {job_id} wait False"]


async def test_the_engine_recovers_then_acts_on_each_notification(pg_store: JobStore, run_engine: Any) -> None:
    backend = RecordingBackend()
    await asyncio.to_thread(run_engine, backend)  # sweeps only every minute: notifications do the work
    assert backend.calls == [("recover", None)]
    job = create_job(pg_store, add_pipeline(pg_store))
    pg_store.notify_engine("start", job.id)
    await wait_until(lambda: backend.count("start", job.id) == 1, what="the engine to start the job")
    pg_store.transition(job.id, JobState.CANCELLING)
    pg_store.notify_engine("cancel", job.id)
    await wait_until(lambda: backend.count("cancel", job.id) == 1, what="the engine to cancel the job")
    pg_store.notify_engine("start", job.id)  # a repeated start of a job already handed over is ignored
    pg_store.notify_engine("completed", job.id)
    await wait_until(lambda: backend.count("completed", job.id) == 1, what="the engine to pass on the completion")
    assert backend.count("start", job.id) == 1


async def test_the_engine_sweep_finds_work_no_notification_announced(pg_store: JobStore, run_engine: Any) -> None:
    backend = RecordingBackend()
    version = add_pipeline(pg_store)
    waiting = create_job(pg_store, version)  # created while no engine listened
    await asyncio.to_thread(run_engine, backend, sweep=0.1)
    await wait_until(lambda: backend.count("start", waiting.id) == 1, what="the sweep to start the job")

    running = create_job(pg_store, version)
    pg_store.transition(running.id, JobState.INSTALLING, task=Task.INSTALL)
    pg_store.transition(running.id, JobState.RUNNING, task=Task.WAIT)
    pg_store.record_completion(running.id, True, "all scored")
    await wait_until(lambda: backend.count("completed", running.id) == 1, what="the sweep to end the wait")

    pg_store.transition(waiting.id, JobState.CANCELLING)
    await wait_until(lambda: backend.count("cancel", waiting.id) == 1, what="the sweep to cancel the job")
    await asyncio.sleep(0.5)  # several more sweeps: each job was handed over once
    assert (backend.count("start", waiting.id), backend.count("completed", running.id)) == (1, 1)
    assert backend.count("cancel", waiting.id) == 1


async def test_a_job_the_backend_cannot_start_fails_with_the_reason(pg_store: JobStore, run_engine: Any) -> None:
    backend = RecordingBackend(refuse_start=True)
    await asyncio.to_thread(run_engine, backend)
    job = create_job(pg_store, add_pipeline(pg_store))
    pg_store.notify_engine("start", job.id)
    failed = await wait_for(pg_store, job.id, JobState.FAILED)
    assert failed.reason == "BackendStartFailed"
    assert failed.message is not None and "no capacity left" in failed.message


async def test_stopping_the_engine_closes_its_backend(run_engine: Any) -> None:
    backend = RecordingBackend()
    engine = await asyncio.to_thread(run_engine, backend)
    await asyncio.to_thread(engine.stop)
    assert backend.calls == [("recover", None), ("close", None)]


# ------------------------------------------------------------------------------------------ the whole server


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def workers_server(pg_url: str, tmp_path: Path) -> Iterator[tuple[SchedulerClient, subprocess.Popen[bytes]]]:
    """`run_server` with two API workers on PostgreSQL; flow `f1` reports success at once, `f9` runs until
    stopped."""
    port = _free_port()
    env = {
        **os.environ,
        "MODELOPS_HOME": str(tmp_path / "home"),
        "MODELOPS_SCHEDULER_DATABASE_URL": pg_url,
        "MODELOPS_SCHEDULER_PORT": str(port),
        "MODELOPS_SCHEDULER_WORKERS": "2",
        "MODELOPS_SCHEDULER_POLL_INTERVAL_SECONDS": "0.05",
        "MODELOPS_SCHEDULER_DATA_ROOT": str(write_input(tmp_path).parent.parent),  # holds the input data/in.csv
        "MODELOPS_TEST_FLOW_ARGS": json.dumps({"f1": ["--complete", "succeeded"], "f9": []}),
    }
    env.pop("MODELOPS_SCHEDULER_TOKENS", None)
    log = (tmp_path / "server.log").open("wb")
    server = subprocess.Popen([sys.executable, str(PROCS / "serve_workers.py")], env=env, stdout=log, stderr=log)
    client = SchedulerClient(f"http://127.0.0.1:{port}")
    try:
        deadline = time.monotonic() + 60
        while not client.ready():
            if server.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"the server did not start:\n{(tmp_path / 'server.log').read_text()}")
            time.sleep(0.1)
        yield client, server
    finally:
        client.close()
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(60)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text().rpartition(")")[2].split()
            except OSError:
                continue
            if int(stat[1]) == pid:
                found.append(int(entry.name))
    return found


def test_a_two_worker_server_runs_cancels_and_logs_jobs(
    workers_server: tuple[SchedulerClient, subprocess.Popen[bytes]],
) -> None:
    client, server = workers_server
    # The supervisor, with uvicorn's two workers beside the engine (plus multiprocessing's resource tracker).
    assert len(_children(server.pid)) >= 2
    # Its engine holds the leader lock, and the API workers (other processes) say so in /metrics.
    for _ in range(4):  # a few requests, so more than one worker is likely to answer
        metrics = httpx.get(f"{client.server}/metrics", timeout=10).text.splitlines()
        assert "modelops_scheduler_leader 1.0" in metrics
    client.deploy_bytes(PIPELINE_YAML.replace("WAIT", "1h").encode(), "application/yaml")

    done = client.create_job("scoring")
    finished = wait_job(client, done.id, {JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED}, within=60)
    assert (finished.state, finished.reason) == (JobState.SUCCEEDED, "Completed")
    assert [event.to_state for event in finished.events][:3] == [
        JobState.PENDING,
        JobState.INSTALLING,
        JobState.RUNNING,
    ]
    install_log = list(client.logs(done.id, task=Task.INSTALL))
    assert any("the job is RUNNING" in line for line in install_log)

    slow_yaml = PIPELINE_YAML.replace("WAIT", "1h").replace("f1", "f9")
    client.deploy_bytes(
        slow_yaml.replace("metadata: {name: scoring}", "metadata: {name: slow}").encode(), "application/yaml"
    )
    slow = client.create_job("slow")
    wait_job(client, slow.id, JobState.RUNNING, within=60)
    client.cancel_job(slow.id)
    cancelled = wait_job(client, slow.id, {JobState.CANCELLED, JobState.FAILED, JobState.SUCCEEDED}, within=60)
    assert (cancelled.state, cancelled.reason) == (JobState.CANCELLED, "Cancelled")
    assert cancelled.task == Task.UNINSTALL


def test_an_engine_that_cannot_reach_its_database_keeps_trying_and_still_stops(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    backend = RecordingBackend()
    unreachable = "postgresql+psycopg://postgres@127.0.0.1:1/nowhere"
    engine = Engine(settings_for(tmp_path, database_url=unreachable), lambda store, settings, secret: backend)
    with caplog.at_level("ERROR", logger="scheduler.dispatch"):
        engine.start(start_timeout=1.5)  # not ready: it logs and keeps trying in the background
        deadline = time.monotonic() + 30
        while sum("starting again in" in r.getMessage() for r in caplog.records) < 2:
            assert time.monotonic() < deadline, "the engine did not retry"
            time.sleep(0.05)
        engine.stop()
    assert engine._thread is not None and not engine._thread.is_alive()
    # No attempt got as far as the leader lock: no backend was built, no job recovered.
    assert backend.calls == []
