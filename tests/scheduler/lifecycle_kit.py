"""Helpers shared by the lifecycle tests: a small valid pipeline, fake components, and polling helpers.

The pipeline `scoring` has one scoring flow `f1` that scores with one model `m1`, so a job deploys two real
processes: the fake scoring service `procs/fake_service.py` (as `m1`) and the fake flow `procs/fake_flow.py`
(as `f1`). `FakeCommands` says how each of them behaves in a test.

Imported as `lifecycle_kit` (tests/scheduler is on sys.path; see store_kit.py for why there is no package).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import yaml

import ir
from scheduler.deployers.local import Component, process_start_time
from scheduler.settings import SchedulerSettings
from scheduler.states import JobState
from scheduler.store import Job, JobStore, PipelineVersion
from scheduler.tokens import job_token_hash, verify_job_token

PROCS = Path(__file__).parent / "procs"
SECRET = b"lifecycle-tests-secret-0123456789abcdef"

PIPELINE_YAML = """
apiVersion: modelops/v1
kind: ScoringPipeline
metadata: {name: scoring}
spec:
  mode: batch
  flows: [f1]
  parameters:
    - {name: threshold, type: number, default: 0.5}
    - {name: limit, type: integer, default: 10}
  timeouts: {install: 5m, wait: WAIT, uninstall: 5m}
---
apiVersion: modelops/v1
kind: DataChannel
metadata: {name: rows-in}
spec:
  direction: source
  type: file
  file: {path: data/in.csv, format: csv}
  schema:
    fields:
      - {name: id, type: integer, format: int64}
      - {name: x, type: number, format: double}
---
apiVersion: modelops/v1
kind: DataChannel
metadata: {name: rows-out}
spec:
  direction: sink
  type: file
  file: {path: out/scored.csv, format: csv}
  schema:
    fields:
      - {name: id, type: integer, format: int64}
      - {name: score, type: number, format: double}
---
apiVersion: modelops/v1
kind: ScoringFlow
metadata: {name: f1}
spec:
  source: rows-in
  sinks: [rows-out]
  steps:
    - name: score_it
      score:
        model: m1
        inputs: [{input: features, fields: [x]}]
        outputs: [{output: score, field: score}]
    - {name: keep, filter: {field: score, op: ge, value: "${params.threshold}"}}
---
apiVersion: modelops/v1
kind: Model
metadata: {name: m1}
spec:
  runtime: onnx
  uri: artifacts/m1.onnx
  inputs: [{name: features, datatype: FP32, shape: [-1, 1]}]
  outputs: [{name: score, datatype: FP32, shape: [-1]}]
"""


def pipeline_bundle(*, wait: str = "1h") -> ir.Bundle:
    return ir.load_bundle_files({"pipeline.yaml": PIPELINE_YAML.replace("WAIT", wait)})


def add_pipeline(store: JobStore, *, wait: str = "1h") -> PipelineVersion:
    """Store the pipeline (as the service layer does: `{"documents": canonical IR}`); `wait` is its wait timeout."""
    bundle = pipeline_bundle(wait=wait)
    version, _ = store.add_pipeline_version(bundle.name, {"documents": bundle.canonical()}, bundle.digest())
    return version


def create_job(
    store: JobStore,
    version: PipelineVersion,
    *,
    parameters: dict[str, Any] | None = None,
    environment: dict[str, Any] | None = None,
) -> Job:
    job_id = uuid.uuid4()
    job, _ = store.create_job(
        version,
        parameters=parameters or {},
        environment=environment or {},
        backend="local",
        token_hash=job_token_hash(SECRET, job_id),
        job_id=job_id,
    )
    return job


INPUT_CSV = "id,x\n1,0.5\n2,0.25\n"
"""What the pipeline's source `data/in.csv` holds in a test (the job-start check wants it to exist)."""


def write_input(folder: Path) -> Path:
    """`folder/data/in.csv`, the input of `PIPELINE_YAML` relative to `folder`."""
    path = folder / "data" / "in.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(INPUT_CSV)
    return path


def settings_for(home: Path, **overrides: Any) -> SchedulerSettings:
    """Settings for a test: everything under `home` (also the data root, holding the pipeline's input), short
    timeouts, fast polling."""
    values: dict[str, Any] = {
        "home": home,
        "data_root": home,
        "readiness_timeout_seconds": 20.0,
        "uninstall_grace_seconds": 5.0,
        "poll_interval_seconds": 0.05,
        "leader_retry_seconds": 0.2,
    }
    values.update(overrides)
    if values["data_root"] == home:
        write_input(home)
    return SchedulerSettings(**values)


class FakeCommands:
    """A `CommandFactory` running the fake service and flow with the given extra arguments.

    `service` / `flow` are the arguments for every service / flow; `by_name` overrides them per component.
    """

    def __init__(
        self,
        *,
        service: Sequence[str] = (),
        flow: Sequence[str] = (),
        by_name: dict[str, Sequence[str]] | None = None,
    ) -> None:
        self.service = list(service)
        self.flow = list(flow)
        self.by_name = dict(by_name or {})
        self.seen: list[Component] = []

    def __call__(self, component: Component) -> list[str]:
        self.seen.append(component)
        if component.kind == "service":
            args = self.by_name.get(component.name, self.service)
            return [sys.executable, str(PROCS / "fake_service.py"), "--port", str(component.port), *args]
        args = self.by_name.get(component.name, self.flow)
        return [sys.executable, str(PROCS / "fake_flow.py"), "--values", str(component.values_path), *args]


async def wait_for(
    store: JobStore, job_id: uuid.UUID, states: set[JobState] | JobState, *, within: float = 30.0
) -> Job:
    """Poll the store until the job is in one of `states`; fail (with the job) after `within` seconds.

    `within` is a safety net against a hanging test, not a timing assertion: jobs get there much sooner.
    """
    wanted = {states} if isinstance(states, JobState) else states
    deadline = time.monotonic() + within
    while True:
        job = await asyncio.to_thread(store.get_job, job_id)
        if job.state in wanted:
            return job
        if time.monotonic() > deadline:
            raise AssertionError(f"job stayed {job.state} (task {job.task}): {job.reason}: {job.message}")
        await asyncio.sleep(0.02)


async def wait_until(check: Callable[[], bool], *, within: float = 30.0, what: str = "condition") -> None:
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


def processes_of(job: Job) -> list[dict[str, Any]]:
    assert job.backend_ref is not None, "the job has no deployment reference"
    processes: list[dict[str, Any]] = job.backend_ref["processes"]
    return processes


def running(pid: int, start_time: int) -> bool:
    """Whether the process (pid *and* start time) still runs; zombies count as gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except FileNotFoundError:
        return False
    state = stat[stat.rindex(b")") + 2 :].split()[0]
    return state not in (b"Z", b"X") and process_start_time(pid) == start_time


def any_running(processes: list[dict[str, Any]]) -> list[str]:
    return [p["name"] for p in processes if running(p["pid"], p["startTime"])]


def kill_processes(processes: list[dict[str, Any]]) -> None:
    """SIGKILL what is still running (test cleanup: never leave processes behind)."""
    for p in processes:
        if running(p["pid"], p["startTime"]):
            with suppress(ProcessLookupError):
                os.killpg(p["pid"], signal.SIGKILL)


def events(job: Job) -> list[tuple[str | None, str, str | None, str | None]]:
    """(from, to, task, reason) of each event."""
    return [
        (e.from_state.value if e.from_state else None, e.to_state.value, e.task.value if e.task else None, e.reason)
        for e in job.events or ()
    ]


def task_order(job: Job) -> list[str]:
    """The tasks the job went through, in order, each once."""
    seen: list[str] = []
    for event in job.events or ():
        if event.task is not None and (not seen or seen[-1] != event.task.value):
            seen.append(event.task.value)
    return seen


def read_values(home: Path, job_id: uuid.UUID) -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((home / "jobs" / str(job_id) / "values.yaml").read_text())
    return loaded


class CompletionReceiver:
    """A minimal stand-in for the scheduler's `/complete` route, for flows to report to over real HTTP.

    It checks the bearer token against the job's stored token hash, records the completion in the store and
    wakes the backend, like the real route does (in the test's event loop, via `on_complete`).
    """

    def __init__(self, store: JobStore, on_complete: Callable[[uuid.UUID], None], *, flows: Sequence[str] = ()) -> None:
        self.store = store
        self.on_complete = on_complete
        self.flows = list(flows)
        """The pipeline's flows, for reports that name their flow (`--per-flow`)."""
        self.reports: list[tuple[str, int]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                parts = self.path.strip("/").split("/")
                status = 404
                if len(parts) == 5 and parts[:3] == ["api", "v1", "jobs"] and parts[4] == "complete":
                    job_id = uuid.UUID(parts[3])
                    body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                    token = self.headers.get("Authorization", "").removeprefix("Bearer ")
                    if verify_job_token(receiver.store.get_job(job_id).token_hash, token):
                        receiver.store.record_completion(
                            job_id,
                            body["succeeded"],
                            body.get("message"),
                            flow=body.get("flow") if receiver.flows else None,
                            flows=receiver.flows,
                        )
                        receiver.on_complete(job_id)
                        status = 200
                    else:
                        status = 401
                receiver.reports.append((self.path, status))
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *_: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @contextmanager
    def running(self) -> Iterator[CompletionReceiver]:
        self._thread.start()
        try:
            yield self
        finally:
            self.server.shutdown()
            self.server.server_close()
            self._thread.join()
