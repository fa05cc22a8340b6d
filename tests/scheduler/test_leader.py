"""Several scheduler replicas on one PostgreSQL database: one engine leads (`scheduler.leader`), the others follow.

The engines are tested with the recording backend of test_dispatch.py, to see which of them recovers and starts
jobs; the whole thing (two real servers, the leader SIGKILLed again and again while jobs run) through the REST
API, behind a small TCP proxy that plays the part of a Kubernetes Service in front of the replicas.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy
from cli_kit import wait_job
from fake_k8s import FakeKube
from lifecycle_kit import (
    PIPELINE_YAML,
    add_pipeline,
    create_job,
    settings_for,
    wait_for,
    wait_until,
    write_input,
)
from store_kit import wipe_postgres
from test_dispatch import RecordingBackend

from scheduler.app import create_app
from scheduler.backends.tekton import JOB_LABEL, TektonBackend
from scheduler.client import SchedulerClient
from scheduler.db import create_engine, upgrade
from scheduler.dispatch import Engine, dispatching
from scheduler.embedded import HomeLock
from scheduler.leader import APPLICATION_PREFIX, current_leader
from scheduler.settings import SchedulerSettings
from scheduler.states import JobState
from scheduler.store import JobStore
from scheduler.tokens import job_token_hash, load_secret

pytestmark = pytest.mark.postgres

PROCS = Path(__file__).resolve().parent / "procs"


@pytest.fixture
def pg_url(postgres_database: str) -> str:
    wipe_postgres(postgres_database)
    upgrade(postgres_database)
    return postgres_database


@pytest.fixture
def pg_store(pg_url: str) -> Iterator[JobStore]:
    engine = create_engine(pg_url)
    yield JobStore(engine)
    engine.dispose()


@pytest.fixture
def engines() -> Iterator[list[Engine]]:
    """Engines a test starts; all stopped at its end."""
    started: list[Engine] = []
    yield started
    for engine in started:
        engine.stop()


def _engine(settings: SchedulerSettings, backend: RecordingBackend, identity: str, started: list[Engine]) -> Engine:
    engine = Engine(settings, lambda store, settings, secret: backend, sweep_seconds=0.1, identity=identity)
    engine.start(start_timeout=30)
    started.append(engine)
    return engine


def _terminate_lock_session(pg_url: str, identity: str) -> int:
    """End the database session of `identity`'s leader lock, as a database restart or a network cut would."""
    admin = sqlalchemy.create_engine(pg_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            ended = conn.execute(
                sqlalchemy.text(
                    "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE application_name = :name"
                ),
                {"name": APPLICATION_PREFIX + identity},
            ).scalar()
    finally:
        admin.dispose()
    return int(ended or 0)


async def test_of_two_engines_on_one_database_one_leads_and_the_other_takes_over_when_it_stops(
    tmp_path: Path, pg_url: str, pg_store: JobStore, engines: list[Engine]
) -> None:
    settings = settings_for(tmp_path, database_url=pg_url)  # one home for both, as replicas on one host
    first, second = RecordingBackend(), RecordingBackend()
    a = await asyncio.to_thread(_engine, settings, first, "replica-a", engines)
    b = await asyncio.to_thread(_engine, settings, second, "replica-b", engines)  # returns once it follows
    assert (a.leading, b.leading) == (True, False)
    assert first.calls == [("recover", None)] and second.calls == []  # a follower builds no backend
    assert await asyncio.to_thread(current_leader, pg_store._engine) == "replica-a"
    assert (HomeLock.holder(tmp_path) or "").startswith(f"pid {os.getpid()}")  # the leader holds the home

    job = create_job(pg_store, add_pipeline(pg_store))
    pg_store.notify_engine("start", job.id)
    await wait_until(lambda: first.count("start", job.id) == 1, what="the leader to start the job")

    await asyncio.to_thread(a.stop)
    await wait_until(lambda: b.leading and ("recover", None) in second.calls, what="the follower to take over")
    assert await asyncio.to_thread(current_leader, pg_store._engine) == "replica-b"
    later = create_job(pg_store, add_pipeline(pg_store))
    pg_store.notify_engine("start", later.id)
    await wait_until(lambda: second.count("start", later.id) == 1, what="the new leader to start a new job")
    assert first.count("start", later.id) == 0


async def test_a_leader_whose_lock_session_ends_stops_its_backend_before_it_leads_again(
    tmp_path: Path, pg_url: str, pg_store: JobStore, engines: list[Engine], caplog: pytest.LogCaptureFixture
) -> None:
    backend = RecordingBackend()
    with caplog.at_level("ERROR", logger="scheduler.dispatch"):
        engine = await asyncio.to_thread(_engine, settings_for(tmp_path, database_url=pg_url), backend, "solo", engines)
        assert backend.calls == [("recover", None)]
        assert _terminate_lock_session(pg_url, "solo") == 1
        await wait_until(lambda: backend.calls.count(("recover", None)) == 2, what="the engine to lead again")
    # It closed its backend (no runner left) before it took the lock again and recovered the jobs anew.
    assert backend.calls == [("recover", None), ("close", None), ("recover", None)]
    assert any("LeadershipLost" in record.getMessage() for record in caplog.records)
    assert engine.leading


async def test_a_local_backend_engine_waits_for_a_home_another_scheduler_holds(
    tmp_path: Path, pg_url: str, engines: list[Engine], caplog: pytest.LogCaptureFixture
) -> None:
    other = HomeLock(tmp_path)
    other.acquire("http://127.0.0.1:1")  # e.g. a `modelops run` with its own server on this home
    backend = RecordingBackend()
    try:
        with caplog.at_level("ERROR", logger="scheduler.dispatch"):
            engine = Engine(settings_for(tmp_path, database_url=pg_url), lambda store, settings, secret: backend)
            engine.start(start_timeout=1.0)
            engines.append(engine)
            await wait_until(
                lambda: any("another modelops scheduler is using" in r.getMessage() for r in caplog.records),
                what="the engine to say who holds the home",
            )
        assert backend.calls == [] and not engine.leading  # no job of this home touched meanwhile
    finally:
        other.release()
    await wait_until(lambda: backend.calls == [("recover", None)], what="the engine to lead once the home is free")


async def test_metrics_say_whether_this_server_leads(tmp_path: Path, pg_url: str, engines: list[Engine]) -> None:
    settings = settings_for(tmp_path, database_url=pg_url)
    await asyncio.to_thread(_engine, settings, RecordingBackend(), "replica-a", engines)

    async def leader_gauge(identity: str | None) -> str:
        app = create_app(settings, backend_factory=dispatching(lambda *_: RecordingBackend()), engine_identity=identity)
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app)
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
                body = (await client.get("/metrics")).text
        return next(line for line in body.splitlines() if line.startswith("modelops_scheduler_leader "))

    assert await leader_gauge("replica-a") == "modelops_scheduler_leader 1.0"
    assert await leader_gauge("replica-b") == "modelops_scheduler_leader 0.0"


async def test_a_new_tekton_leader_resumes_the_runs_the_old_one_started_and_starts_what_waited(
    tmp_path: Path, pg_url: str, pg_store: JobStore, engines: list[Engine]
) -> None:
    settings = settings_for(tmp_path, database_url=pg_url, backend="tekton", poll_interval_seconds=0.02)
    kube = FakeKube()  # one cluster for both replicas
    backends: dict[str, TektonBackend] = {}

    def engine(identity: str) -> Engine:
        def build(store: JobStore, settings: SchedulerSettings, secret: bytes) -> TektonBackend:
            backends[identity] = TektonBackend(store, settings, secret, kube=kube)
            return backends[identity]

        started = Engine(settings, build, sweep_seconds=0.1, identity=identity)
        started.start(start_timeout=30)
        engines.append(started)
        return started

    def tekton_job() -> uuid.UUID:
        job_id = uuid.uuid4()
        version = add_pipeline(pg_store, wait="2h")
        secret = load_secret(tmp_path)
        job, _ = pg_store.create_job(
            version, parameters={}, backend="tekton", token_hash=job_token_hash(secret, job_id), job_id=job_id
        )
        pg_store.notify_engine("start", job.id)
        return job.id

    def runs_of(job_id: uuid.UUID) -> list[dict[str, Any]]:
        items, _ = kube.list_pipelineruns("modelops", f"{JOB_LABEL}={job_id}")
        return items

    a = await asyncio.to_thread(engine, "replica-a")
    b = await asyncio.to_thread(engine, "replica-b")
    assert (a.leading, b.leading) == (True, False) and set(backends) == {"replica-a"}
    live = await asyncio.to_thread(tekton_job)
    await wait_until(lambda: len(runs_of(live)) == 1, what="the leader to create the job's PipelineRun")
    name = runs_of(live)[0]["metadata"]["name"]
    kube.start_run(name)
    kube.start_task(name, "install")
    kube.finish_task(name, "install", succeeded=True)
    kube.start_task(name, "wait")
    await wait_for(pg_store, live, JobState.RUNNING)  # the leader's reconciler followed the run

    await asyncio.to_thread(a.stop)  # the run goes on in the cluster; a job comes while nobody leads
    waiting = await asyncio.to_thread(tekton_job)
    await wait_until(lambda: b.leading and "replica-b" in backends, what="the follower to take over")
    await wait_until(lambda: len(runs_of(waiting)) == 1, what="the new leader to start the waiting job")

    for task in ("wait", "uninstall"):
        if task != "wait":
            kube.start_task(name, task)
        kube.finish_task(name, task, succeeded=True)
    kube.set_run_condition(name, "True", "Succeeded", "Tasks Completed: 3 (Failed: 0, Cancelled 0), Skipped: 0")
    done = await wait_for(pg_store, live, {JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED})
    assert (done.state, done.reason) == (JobState.SUCCEEDED, "Completed")
    assert len(runs_of(live)) == 1 and len(runs_of(waiting)) == 1  # each job run once


# ------------------------------------------------------------------------------- two servers, SIGKILLed


class _Proxy:
    """A TCP proxy on a free loopback port: each connection goes to the first of `ports` that accepts it, as a
    Kubernetes Service sends requests to a ready replica. The jobs' flows report to it."""

    def __init__(self, ports: list[int]) -> None:
        self.ports = ports
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._server.getsockname()[1])
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        self._closed = True
        self._server.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            threading.Thread(target=self._forward, args=(client,), daemon=True).start()

    def _forward(self, client: socket.socket) -> None:
        for port in self.ports:
            try:
                upstream = socket.create_connection(("127.0.0.1", port), timeout=5)
            except OSError:
                continue
            upstream.settimeout(None)
            threading.Thread(target=_pipe, args=(upstream, client), daemon=True).start()
            _pipe(client, upstream)
            return
        client.close()


def _pipe(source: socket.socket, target: socket.socket) -> None:
    with contextlib.suppress(OSError):
        while data := source.recv(65536):
            target.sendall(data)
    for sock in (source, target):
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            sock.close()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class _Replicas:
    """Two `modelops serve` processes (procs/serve_workers.py: the real `run_server`, fake components) on one
    database and one home, behind a `_Proxy`."""

    def __init__(self, tmp_path: Path, pg_url: str) -> None:
        self.tmp_path = tmp_path
        self.gates = tmp_path / "gates"
        self.gates.mkdir()
        self.starts = tmp_path / "starts.log"
        self.ports = [_free_port(), _free_port()]
        self.proxy = _Proxy(self.ports)
        flow = [
            "--complete",
            "succeeded",
            "--complete-when-file",
            str(self.gates / "{job}"),
            "--starts-file",
            str(self.starts),
            "--report-retry-seconds",
            "60",
        ]
        self.env = {
            **os.environ,
            "MODELOPS_HOME": str(tmp_path / "home"),
            "MODELOPS_SCHEDULER_DATABASE_URL": pg_url,
            "MODELOPS_SCHEDULER_PUBLIC_URL": f"http://127.0.0.1:{self.proxy.port}",
            "MODELOPS_SCHEDULER_POLL_INTERVAL_SECONDS": "0.05",
            "MODELOPS_SCHEDULER_LEADER_RETRY_SECONDS": "0.2",  # a quick takeover; still a real wait for the lock
            "MODELOPS_SCHEDULER_DATA_ROOT": str(write_input(tmp_path).parent.parent),
            "MODELOPS_TEST_FLOW_ARGS": json.dumps({"f1": flow}),
        }
        self.env.pop("MODELOPS_SCHEDULER_TOKENS", None)
        self.servers: list[subprocess.Popen[bytes] | None] = [None, None]
        self.clients = [SchedulerClient(f"http://127.0.0.1:{port}") for port in self.ports]
        self.api = SchedulerClient(f"http://127.0.0.1:{self.proxy.port}")
        self.http = httpx.Client(timeout=5)

    def start(self, index: int) -> None:
        log = (self.tmp_path / f"server-{index}.log").open("ab")
        env = {**self.env, "MODELOPS_SCHEDULER_PORT": str(self.ports[index])}
        self.servers[index] = subprocess.Popen(
            [sys.executable, str(PROCS / "serve_workers.py")],
            env=env,
            stdout=log,
            stderr=log,
            start_new_session=True,  # its own process group: killed as a whole, like a pod
        )
        log.close()

    def wait_ready(self, index: int) -> None:
        deadline = time.monotonic() + 60
        server = self.servers[index]
        while not self.clients[index].ready():
            if server is None or server.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"server {index} did not start:\n{self.log(index)}")
            time.sleep(0.05)

    def log(self, index: int) -> str:
        return (self.tmp_path / f"server-{index}.log").read_text(errors="replace")

    def leads(self, index: int) -> bool:
        try:
            body = self.http.get(f"http://127.0.0.1:{self.ports[index]}/metrics").text
        except httpx.HTTPError:
            return False
        return "modelops_scheduler_leader 1.0" in body.splitlines()

    def leader(self, *, within: float = 15.0) -> int:
        """The index of the replica that leads (`within` is a safety net: the issue's takeover bound)."""
        deadline = time.monotonic() + within
        while True:
            leading = [index for index in (0, 1) if self.leads(index)]
            if len(leading) == 1:
                return leading[0]
            assert len(leading) < 2, "two replicas lead at once"
            if time.monotonic() > deadline:
                raise AssertionError(f"no replica leads:\n{self.log(0)}\n{self.log(1)}")
            time.sleep(0.05)

    def kill(self, index: int) -> None:
        server = self.servers[index]
        assert server is not None
        os.killpg(server.pid, signal.SIGKILL)
        server.wait(30)
        # The client's kept-alive connections through the proxy led to the dead server: a client starts anew.
        self.api.close()
        self.api = SchedulerClient(f"http://127.0.0.1:{self.proxy.port}")

    def close(self) -> None:
        for server in self.servers:
            if server is not None and server.poll() is None:
                server.send_signal(signal.SIGTERM)
        for server in self.servers:
            if server is not None:
                try:
                    server.wait(60)
                except subprocess.TimeoutExpired:
                    os.killpg(server.pid, signal.SIGKILL)
                    server.wait()
        for client in (*self.clients, self.api):
            client.close()
        self.http.close()
        self.proxy.close()


@pytest.fixture
def replicas(tmp_path: Path, pg_url: str) -> Iterator[_Replicas]:
    pair = _Replicas(tmp_path, pg_url)
    try:
        for index in (0, 1):
            pair.start(index)
        for index in (0, 1):
            pair.wait_ready(index)
        yield pair
    finally:
        pair.close()


KILLS = 10


@pytest.mark.slow
def test_sigkilling_the_leader_mid_job_ten_times_loses_no_job_and_runs_none_twice(replicas: _Replicas) -> None:
    replicas.api.deploy_bytes(PIPELINE_YAML.replace("WAIT", "1h").encode(), "application/yaml")
    jobs: list[uuid.UUID] = []
    takeovers: list[float] = []
    for _ in range(KILLS):
        leader = replicas.leader()
        running = replicas.api.create_job("scoring").id
        wait_job(replicas.api, running, JobState.RUNNING, within=60)
        replicas.kill(leader)  # mid-job: its flow runs, waiting for its gate
        killed = time.monotonic()
        queued = replicas.api.create_job("scoring").id  # while nobody may lead: the follower's API takes it
        assert replicas.leader() != leader  # the other one took over (the killed one is still down)
        takeovers.append(time.monotonic() - killed)
        replicas.start(leader)  # back as a follower
        for job in (running, queued):
            (replicas.gates / str(job)).touch()
        for job in (running, queued):
            done = wait_job(replicas.api, job, {JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED}, within=60)
            assert (done.state, done.reason) == (JobState.SUCCEEDED, "Completed"), f"{job}: {done.message}"
            assert [event.to_state for event in done.events].count(JobState.INSTALLING) == 1
        jobs += [running, queued]
        replicas.wait_ready(leader)  # two replicas again before the next kill
    started = [line.split()[0] for line in replicas.starts.read_text().splitlines()]
    assert sorted(started) == sorted(str(job) for job in jobs)  # every flow ran, and exactly once
    print(f"takeover after SIGKILL: max {max(takeovers):.2f} s, mean {sum(takeovers) / len(takeovers):.2f} s")
