"""Helpers shared by the REST API tests: a tiny IR bundle in three wire forms, API tokens, a fake backend, and a
running app with an httpx client.

The fake backend is our own boundary (the `Backend` protocol): it records every call and, when `drive` is on,
moves jobs through the store like a backend would (start -> INSTALLING/install -> RUNNING/wait; cancel ->
uninstall -> CANCELLED; completed -> uninstall -> SUCCEEDED/FAILED), at once, so API tests are deterministic.

Imported as `api_kit` (tests/scheduler is on sys.path; see store_kit.py for why there is no package). Test
modules import the fixtures they use from here (`from api_kit import api_database_url  # noqa: F401`).
"""

from __future__ import annotations

import asyncio
import copy
import io
import json
import shutil
import tarfile
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio.to_thread
import httpx
import pytest
import sqlalchemy
import yaml
from fastapi import FastAPI

from scheduler.app import create_app
from scheduler.db import head_revision, upgrade
from scheduler.joblogs import PHASES, LogItem
from scheduler.service import SchedulerService
from scheduler.settings import SchedulerSettings, TokenSpec, hash_token
from scheduler.states import JobState, Task
from scheduler.store import JobStore

# ------------------------------------------------------------------------------------------------ tokens

READ_TOKEN = "rd-4f1c2a9e7b3d48a0b6c1e5f2d9a8b7c6"
WRITE_TOKEN = "wr-8e2d1b7c4a9f46e3b2c0d5a1f8e7d6c5"
ADMIN_TOKEN = "ad-1a9b8c7d6e5f44a3b2c1d0e9f8a7b6c5"
UNKNOWN_TOKEN = "xx-0f9e8d7c6b5a44d3c2b1a0f9e8d7c6b5"

TOKENS = [
    TokenSpec(name="reader", scope="read", sha256=hash_token(READ_TOKEN)),
    TokenSpec(name="ci", scope="write", sha256=hash_token(WRITE_TOKEN)),
    TokenSpec(name="root", scope="admin", sha256=hash_token(ADMIN_TOKEN)),
]


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


READ = bearer(READ_TOKEN)
WRITE = bearer(WRITE_TOKEN)
ADMIN = bearer(ADMIN_TOKEN)

# ------------------------------------------------------------------------------------------------ the bundle


def tiny_documents(name: str = "tiny") -> list[dict[str, Any]]:
    """A valid pipeline shaped like examples/digits, but small: one flow, one model, CSV in and out."""
    return [
        {
            "apiVersion": "modelops/v1",
            "kind": "ScoringPipeline",
            "metadata": {"name": name},
            "spec": {
                "mode": "batch",
                "flows": ["tiny-batch"],
                "parameters": [
                    {"name": "input", "type": "string", "default": "data/in.csv"},
                    {"name": "threshold", "type": "number", "default": 0.5},
                    {"name": "limit", "type": "integer", "default": 10},
                ],
            },
        },
        {
            "apiVersion": "modelops/v1",
            "kind": "DataChannel",
            "metadata": {"name": "tiny-in"},
            "spec": {
                "direction": "source",
                "type": "file",
                "file": {"path": "${params.input}", "format": "csv"},
                "schema": {
                    "fields": [
                        {"name": "id", "type": "integer", "format": "int64"},
                        {"name": "x", "type": "number", "format": "double"},
                    ]
                },
            },
        },
        {
            "apiVersion": "modelops/v1",
            "kind": "DataChannel",
            "metadata": {"name": "tiny-out"},
            "spec": {
                "direction": "sink",
                "type": "file",
                "file": {"path": "out/scored.csv", "format": "csv"},
                "schema": {
                    "fields": [
                        {"name": "id", "type": "integer", "format": "int64"},
                        {"name": "score", "type": "number", "format": "double"},
                    ]
                },
            },
        },
        {
            "apiVersion": "modelops/v1",
            "kind": "ScoringFlow",
            "metadata": {"name": "tiny-batch"},
            "spec": {
                "source": "tiny-in",
                "sinks": ["tiny-out"],
                "steps": [
                    {
                        "name": "score_it",
                        "score": {
                            "model": "tiny-rf",
                            "inputs": [{"input": "features", "fields": ["x"]}],
                            "outputs": [{"output": "proba", "field": "score"}],
                        },
                    },
                    {"name": "keep", "filter": {"field": "score", "op": "ge", "value": "${params.threshold}"}},
                ],
            },
        },
        {
            "apiVersion": "modelops/v1",
            "kind": "Model",
            "metadata": {"name": "tiny-rf"},
            "spec": {
                "runtime": "sklearn",
                "uri": "artifacts/tiny-rf.joblib",
                "sha256": "ab" * 32,
                "inputs": [{"name": "features", "datatype": "FP32", "shape": [-1, 1]}],
                "outputs": [{"name": "proba", "datatype": "FP64", "shape": [-1]}],
            },
        },
    ]


def as_yaml(documents: list[dict[str, Any]]) -> bytes:
    return yaml.safe_dump_all(documents, sort_keys=False).encode()


def as_files(documents: list[dict[str, Any]]) -> dict[str, str]:
    """One file per document, named like a bundle folder; the pipeline as JSON, the rest as YAML."""
    files: dict[str, str] = {}
    for doc in documents:
        kind, name = doc["kind"], doc["metadata"]["name"]
        if kind == "ScoringPipeline":
            files["pipeline.json"] = json.dumps(doc)
        else:
            files[f"{kind.lower()}s/{name}.yaml"] = yaml.safe_dump(doc, sort_keys=False)
    return files


def as_tarball(files: dict[str, str]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(f"bundle/{name}")
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def changed(documents: list[dict[str, Any]], default_input: str) -> list[dict[str, Any]]:
    """The same pipeline with another default for `input`: a different IR, so a new version."""
    docs = copy.deepcopy(documents)
    docs[0]["spec"]["parameters"][0]["default"] = default_input
    return docs


YAML = {"Content-Type": "application/yaml"}

# ------------------------------------------------------------------------------------------------ fake backend


@dataclass
class FakeBackend:
    """A `Backend` that records calls and (with `drive`) moves jobs through the store at once."""

    store: JobStore
    drive: bool = True
    name: str = "fake"
    fail_start: bool = False
    calls: list[tuple[str, uuid.UUID | None]] = field(default_factory=list)
    lines: dict[tuple[uuid.UUID, Task], list[str]] = field(default_factory=dict)
    live: dict[uuid.UUID, asyncio.Queue[str | None]] = field(default_factory=dict)

    def called(self, what: str) -> list[uuid.UUID | None]:
        return [job_id for name, job_id in self.calls if name == what]

    async def _db(self, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return await anyio.to_thread.run_sync(lambda: function(*args, **kwargs))

    async def start(self, job_id: uuid.UUID) -> None:
        self.calls.append(("start", job_id))
        # As a real backend's admission does with no limit: the job is no longer queued (`scheduler.admission`).
        await self._db(self.store.admit_queued, self.name, 0)
        if self.fail_start:
            raise RuntimeError("no capacity left")
        self.lines[(job_id, Task.INSTALL)] = ["rendering values", "deploying 1 service, 1 flow"]
        if self.drive:
            await self._db(self.store.transition, job_id, JobState.INSTALLING, task=Task.INSTALL, reason="Installing")
            await self._db(self.store.transition, job_id, JobState.RUNNING, task=Task.WAIT, reason="Ready")

    async def cancel(self, job_id: uuid.UUID) -> None:
        self.calls.append(("cancel", job_id))
        if self.drive:
            await self._db(self.store.set_task, job_id, Task.UNINSTALL)
            await self._db(self.store.transition, job_id, JobState.CANCELLED, reason="Cancelled")

    async def completed(self, job_id: uuid.UUID) -> None:
        self.calls.append(("completed", job_id))
        if not self.drive:
            return
        job = await self._db(self.store.get_job, job_id)
        if job.state in (JobState.INSTALLING, JobState.RUNNING) and job.completion is not None:
            await self._db(self.store.set_task, job_id, Task.UNINSTALL)
            final = JobState.SUCCEEDED if job.completion == "succeeded" else JobState.FAILED
            await self._db(self.store.transition, job_id, final, reason="Completed", message=job.completion_message)

    def follow_queue(self, job_id: uuid.UUID) -> asyncio.Queue[str | None]:
        return self.live.setdefault(job_id, asyncio.Queue())

    async def logs(self, job_id: uuid.UUID, task: Task | None, follow: bool) -> AsyncIterator[str]:
        self.calls.append(("logs", job_id))
        for each in [task] if task is not None else list(Task):
            for line in self.lines.get((job_id, each), []):
                yield f"{each.value}: {line}"
        if follow:
            async for line in self._follow(job_id):
                yield line

    async def component_logs(self, job_id: uuid.UUID, component: str, follow: bool) -> AsyncIterator[LogItem]:
        """A phase's lines as `logs` gives them (without the task prefix); the live queue feeds `install`."""
        self.calls.append(("logs", job_id))
        phase = Task(component) if component in PHASES else None
        for line in self.lines.get((job_id, phase), []) if phase is not None else []:
            yield line
        if follow and phase is Task.INSTALL:
            async for line in self._follow(job_id):
                yield line

    async def _follow(self, job_id: uuid.UUID) -> AsyncIterator[str]:
        """The live queue's lines until the test sends None, or the job has finished (as a real backend would)."""
        queue = self.follow_queue(job_id)
        while True:
            try:
                line = await asyncio.wait_for(queue.get(), timeout=0.05)
            except TimeoutError:
                if (await self._db(self.store.get_job, job_id)).terminal:
                    return
                continue
            if line is None:
                return
            yield line

    async def recover(self) -> None:
        self.calls.append(("recover", None))

    async def close(self) -> None:
        self.calls.append(("close", None))


# ------------------------------------------------------------------------------------------------ databases

_TABLES_SQL = "SELECT tablename FROM pg_tables WHERE schemaname = 'public' AND tablename <> 'alembic_version'"


@pytest.fixture(scope="session")
def migrated_sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An SQLite database migrated once per session; each test gets a copy (migrating per test is slow)."""
    path = tmp_path_factory.mktemp("template") / "modelops.db"
    upgrade(f"sqlite:///{path}")
    return path


def _reset_postgres(url: str) -> None:
    """Empty every table when the schema is current (fast), else rebuild it from the migrations."""
    engine = sqlalchemy.create_engine(url)
    try:
        with engine.begin() as conn:
            current = None
            if conn.exec_driver_sql("SELECT to_regclass('public.alembic_version')").scalar() is not None:
                current = conn.exec_driver_sql("SELECT version_num FROM alembic_version").scalar()
            if current == head_revision():
                tables = ", ".join(f'public."{name}"' for name in conn.exec_driver_sql(_TABLES_SQL).scalars())
                if tables:
                    conn.exec_driver_sql(f"TRUNCATE {tables} RESTART IDENTITY CASCADE")
                return
            conn.exec_driver_sql("DROP SCHEMA public CASCADE")
            conn.exec_driver_sql("CREATE SCHEMA public")
    finally:
        engine.dispose()
    upgrade(url)


def migrated_database(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """For a fixture parametrized `sqlite`/`postgresql`: the URL of a migrated, empty database, either a copy of
    the session's migrated SQLite template or the session's PostgreSQL database emptied (migrating per test is
    slow)."""
    if request.param == "sqlite":
        template: Path = request.getfixturevalue("migrated_sqlite_template")
        target = tmp_path / "db" / "modelops.db"
        target.parent.mkdir()
        shutil.copyfile(template, target)
        return f"sqlite:///{target}"
    url: str = request.getfixturevalue("postgres_database")
    _reset_postgres(url)
    return url


@pytest.fixture(params=[pytest.param("sqlite"), pytest.param("postgresql", marks=pytest.mark.postgres)])
def api_database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A migrated, empty database: a copy of the SQLite template, or the session's PostgreSQL database."""
    return migrated_database(request, tmp_path)


# ------------------------------------------------------------------------------------------------ running app


@dataclass
class Api:
    """A started app: its httpx client (no credentials by default), the fake backend, the service."""

    app: FastAPI
    client: httpx.AsyncClient
    backend: FakeBackend
    settings: SchedulerSettings

    @property
    def service(self) -> SchedulerService:
        service = self.app.state.service
        assert isinstance(service, SchedulerService)
        return service

    @property
    def store(self) -> JobStore:
        return self.service.store

    async def deploy(self, documents: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        response = await self.client.post(
            "/api/v1/pipelines", content=as_yaml(documents or tiny_documents()), headers={**YAML, **WRITE}
        )
        assert response.status_code in (200, 201), response.text
        body: dict[str, Any] = response.json()
        return body

    async def start_job(self, **body: Any) -> dict[str, Any]:
        response = await self.client.post("/api/v1/jobs", json={"pipeline": "tiny", **body}, headers=WRITE)
        assert response.status_code == 201, response.text
        job: dict[str, Any] = response.json()
        return job


def settings_for(home: Path, database_url: str, **overrides: Any) -> SchedulerSettings:
    # The tiny pipeline's model is an sklearn pickle, which the write token may deploy only with this setting
    # (docs/security.md); tests of the setting itself pass allow_code_runtimes=False.
    values: dict[str, Any] = {"home": home, "database_url": database_url, "tokens": TOKENS, "allow_code_runtimes": True}
    values.update(overrides)
    return SchedulerSettings(**values)


@asynccontextmanager
async def running(settings: SchedulerSettings, *, drive: bool = True) -> AsyncIterator[Api]:
    """Build the app with a fake backend, run its lifespan, and give an httpx client on it."""
    backends: list[FakeBackend] = []

    def factory(store: JobStore, _settings: SchedulerSettings, _secret: bytes) -> FakeBackend:
        backends.append(FakeBackend(store, drive=drive))
        return backends[-1]

    app = create_app(settings, backend_factory=factory)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app)
        async with httpx.AsyncClient(transport=transport, base_url="http://scheduler.test") as client:
            yield Api(app, client, backends[0], settings)


def assert_error(response: httpx.Response, status: int, code: str | None = None) -> dict[str, Any]:
    """The response is an error in the one body shape, with this status (and code); returns `error`."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"}, body
    error: dict[str, Any] = body["error"]
    assert set(error) == {"code", "message", "details"}, error
    assert isinstance(error["message"], str) and error["message"]
    assert isinstance(error["details"], dict | list)
    if code is not None:
        assert error["code"] == code, error
    return error
