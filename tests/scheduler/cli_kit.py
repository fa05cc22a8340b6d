"""Helpers shared by the CLI tests: a real scheduler on a real port, and the `modelops` app to invoke.

`running_server` starts `scheduler.embedded.EmbeddedServer` (uvicorn + `create_app` in a thread, SQLite in a
temporary home) with the real `LocalBackend` and `LocalProcessDeployer`, whose command factory runs the small
test programs of `procs/` (see `lifecycle_kit.FakeCommands`); a test sets `server.commands.flow` to say how the
next job's flow behaves. The CLI then talks to it over HTTP exactly as it would to `modelops serve`.

Imported as `cli_kit` (tests/scheduler is on sys.path; see store_kit.py for why there is no package).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from api_kit import TOKENS
from lifecycle_kit import PIPELINE_YAML, FakeCommands, settings_for, write_input

from scheduler.backends.local import LocalBackend
from scheduler.client import JobDetail, SchedulerClient
from scheduler.deployers.local import LocalProcessDeployer
from scheduler.embedded import EmbeddedServer
from scheduler.settings import SchedulerSettings
from scheduler.states import JobState
from scheduler.store import JobStore


@dataclass
class Server:
    """A running scheduler: its URL, the command factory of its deployer, and its home."""

    embedded: EmbeddedServer
    commands: FakeCommands
    home: Path

    @property
    def url(self) -> str:
        return self.embedded.url

    def client(self, token: str | None = None) -> SchedulerClient:
        return SchedulerClient(self.url, token)


def fake_backend_factory(commands: FakeCommands) -> Any:
    """A `BackendFactory`: the real `LocalBackend`, deploying the test programs through `commands`."""

    def factory(store: JobStore, settings: SchedulerSettings, secret: bytes) -> LocalBackend:
        return LocalBackend(store, settings, secret, LocalProcessDeployer(settings.home / "jobs", commands))

    return factory


@contextmanager
def running_server(home: Path, *, tokens: bool = False, **overrides: Any) -> Iterator[Server]:
    """A scheduler with the fake components under `home`; with `tokens`, it requires the api_kit tokens."""
    commands = FakeCommands()
    # with tokens, the write token deploys sklearn pickles: allowed by the setting (docs/security.md)
    guarded = {"tokens": TOKENS, "allow_code_runtimes": True} if tokens else {}
    settings = settings_for(home, **{**guarded, **overrides})
    embedded = EmbeddedServer(settings, backend_factory=fake_backend_factory(commands), keep_tokens=tokens)
    embedded.start()
    try:
        yield Server(embedded, commands, home)
    finally:
        embedded.stop()


def write_bundle(folder: Path, *, wait: str = "1h", name: str = "scoring") -> Path:
    """The lifecycle tests' pipeline (one flow `f1`, one model `m1`) as a bundle folder of one file."""
    folder.mkdir(parents=True, exist_ok=True)
    text = PIPELINE_YAML.replace("WAIT", wait).replace("metadata: {name: scoring}", f"metadata: {{name: {name}}}")
    (folder / "pipeline.yaml").write_text(text)
    write_input(folder)  # `modelops run` reads relative data paths from the bundle's folder
    model = folder / "artifacts" / "m1.onnx"  # uploaded with the bundle (the fake services do not read it)
    model.parent.mkdir(exist_ok=True)
    model.write_bytes(b"m1 " + name.encode())
    return folder


def wait_job(
    client: SchedulerClient, job_id: uuid.UUID | str, states: set[JobState] | JobState, *, within: float = 30.0
) -> JobDetail:
    """Poll the API until the job is in one of `states` (`within` is a safety net, not a timing assertion)."""
    wanted = {states} if isinstance(states, JobState) else states
    deadline = time.monotonic() + within
    while True:
        job = client.get_job(job_id)
        if job.state in wanted:
            return job
        if time.monotonic() > deadline:
            raise AssertionError(f"job stayed {job.state} (task {job.task}): {job.reason}: {job.message}")
        time.sleep(0.05)
