"""The API's server-sent event streams (`GET /api/v1/jobs/events`, `/jobs/{id}/events`) and the progress history
(`GET /jobs/{id}/progress/history`), on SQLite and PostgreSQL with the fake backend.

httpx's ASGI transport hands a response over only once the app has finished it, which an endless stream never
does; `EventStream` below drives the app directly (as uvicorn would): it reads the body as it is sent, parses
the SSE frames, and disconnects like a browser closing its tab.
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
from collections.abc import AsyncIterator
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx
import pytest
from api_kit import READ, READ_TOKEN, WRITE, Api, assert_error, running, settings_for

import scheduler.api.jobs as jobs_api
from scheduler.changes import FeedLagged
from scheduler.sessions import SESSION_COOKIE
from scheduler.states import JobState, Task
from scheduler.store import Job

JOBS = "/api/v1/jobs"
Frame = tuple[str, str]
"""(event, data) of one server-sent event; comments come as ("comment", text)."""


class EventStream:
    """A GET on the app read as a stream of SSE frames; leaving the `async with` disconnects."""

    def __init__(self, api: Api, path: str, headers: dict[str, str] | None = None) -> None:
        self.api = api
        self.path, _, self.query = path.partition("?")
        self.headers = {"accept": "text/event-stream", **(headers or {})}
        self.status = 0
        self.response_headers: dict[str, str] = {}
        self.body = b""
        self._chunks: asyncio.Queue[bytes | None] = asyncio.Queue()
        self._started: asyncio.Future[None] | None = None
        self._gone = asyncio.Event()
        self._buffer = ""
        self.task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> EventStream:
        cookies = "; ".join(f"{name}={value}" for name, value in self.api.client.cookies.items())
        raw = [(b"host", b"scheduler.test")] + [(k.lower().encode(), v.encode()) for k, v in self.headers.items()]
        if cookies:
            raw.append((b"cookie", cookies.encode()))
        scope: dict[str, Any] = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": "1.1",
            "method": "GET",
            "scheme": "http",
            "path": self.path,
            "raw_path": self.path.encode(),
            "query_string": self.query.encode(),
            "headers": raw,
            "client": ("127.0.0.1", 50000),
            "server": ("scheduler.test", 80),
            "root_path": "",
        }
        self._started = asyncio.get_running_loop().create_future()
        asked = False

        async def receive() -> dict[str, Any]:
            nonlocal asked
            if not asked:
                asked = True
                return {"type": "http.request", "body": b"", "more_body": False}
            await self._gone.wait()
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            assert self._started is not None
            if message["type"] == "http.response.start":
                self.status = message["status"]
                self.response_headers = {k.decode().lower(): v.decode() for k, v in message.get("headers", [])}
                self._started.set_result(None)
            elif message["type"] == "http.response.body":
                await self._chunks.put(message.get("body", b""))
                if not message.get("more_body", False):
                    await self._chunks.put(None)

        self.task = asyncio.create_task(self.api.app(scope, receive, send))  # type: ignore[arg-type]
        await asyncio.wait_for(asyncio.shield(self._started), 5)
        return self

    async def frames(self, timeout: float = 5.0) -> AsyncIterator[Frame]:
        """The frames as they arrive; ends when the response ends."""
        while True:
            while "\n\n" not in self._buffer:
                chunk = await asyncio.wait_for(self._chunks.get(), timeout)
                if chunk is None:
                    return
                self.body += chunk
                self._buffer += chunk.decode()
            block, self._buffer = self._buffer.split("\n\n", 1)
            event, data = "message", []
            for line in block.split("\n"):
                if line.startswith(":"):
                    yield "comment", line[1:].strip()
                elif line.startswith("event: "):
                    event = line[len("event: ") :]
                elif line.startswith("data: "):
                    data.append(line[len("data: ") :])
                elif line.startswith("retry: "):
                    yield "retry", line[len("retry: ") :]
            if data:
                yield event, "\n".join(data)

    async def next(self, *events: str, timeout: float = 5.0) -> Frame:
        """The next frame that is one of `events` (others skipped)."""
        async for frame in self.frames(timeout):
            if frame[0] in events:
                return frame
        raise AssertionError(f"the stream ended before any of {events}")

    async def job_until(self, wanted: Any, timeout: float = 5.0) -> dict[str, Any]:
        """The first `event: job` whose data satisfies `wanted` (earlier ones skipped)."""
        async for name, data in self.frames(timeout):
            if name == "job" and wanted(json.loads(data)):
                found: dict[str, Any] = json.loads(data)
                return found
        raise AssertionError("the stream ended before the job frame looked for")

    async def rest(self, timeout: float = 5.0) -> list[Frame]:
        return [frame async for frame in self.frames(timeout)]

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self._gone.set()
        if self.task is not None:
            await asyncio.wait_for(self.task, 5)


@pytest.fixture
async def idle(api_database_url: str, tmp_path: Path) -> AsyncIterator[Api]:
    """An app whose fake backend moves no job: the tests move them through the store."""
    async with running(settings_for(tmp_path / "home", api_database_url), drive=False) as started:
        await started.deploy()
        yield started


async def db(function: Any, *args: Any, **kwargs: Any) -> Any:
    return await asyncio.to_thread(lambda: function(*args, **kwargs))


def parsed(frame: Frame) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(frame[1])
    return body


# ------------------------------------------------------------------------------------------- one job


async def test_a_job_stream_sends_the_job_at_once_then_each_change_and_ends_at_the_terminal_state(idle: Api) -> None:
    job = await idle.start_job()
    job_id = uuid.UUID(job["id"])
    async with EventStream(idle, f"{JOBS}/{job_id}/events", READ) as stream:
        assert stream.status == 200
        assert stream.response_headers["content-type"].startswith("text/event-stream")
        assert stream.response_headers["cache-control"] == "no-cache"
        assert stream.response_headers["x-accel-buffering"] == "no"
        first = parsed(await stream.next("job"))
        assert first["id"] == str(job_id) and first["state"] == "PENDING"
        assert [e["reason"] for e in first["events"]] == ["Created"]
        await db(idle.store.transition, job_id, JobState.INSTALLING, task=Task.INSTALL, reason="Installing")
        installing = parsed(await stream.next("job"))
        assert installing["state"] == "INSTALLING" and len(installing["events"]) == 2
        await db(idle.store.transition, job_id, JobState.RUNNING, task=Task.WAIT, reason="Ready")
        assert parsed(await stream.next("job"))["state"] == "RUNNING"
        await db(idle.store.update_progress, job_id, 40, 39, 1)
        progressed = parsed(await stream.next("job"))
        assert progressed["progress"]["read"] == 40 and progressed["progress"]["failed"] == 1
        await db(idle.store.set_task, job_id, Task.UNINSTALL)
        await db(idle.store.transition, job_id, JobState.SUCCEEDED, reason="Completed")
        frames = await stream.rest()
        jobs = [parsed(f) for f in frames if f[0] == "job"]
        assert jobs[-1]["state"] == "SUCCEEDED"
        assert frames[-1][0] == "end" and parsed(frames[-1]) == {"id": str(job_id), "state": "SUCCEEDED"}
    # a client reconnecting after the end gets the final job and `end` at once
    async with EventStream(idle, f"{JOBS}/{job_id}/events", READ) as again:
        assert [name for name, _ in await again.rest() if name != "retry"] == ["job", "end"]


async def test_a_stream_frame_is_one_line_of_json_even_when_a_message_has_newlines(idle: Api) -> None:
    job = await idle.start_job()
    async with EventStream(idle, f"{JOBS}/{job['id']}/events", READ) as stream:
        await stream.next("job")
        await db(idle.store.transition, uuid.UUID(job["id"]), JobState.FAILED, reason="Boom", message="a\nb\n\nc")
        frames = await stream.rest()
    failed = next(parsed(f) for f in frames if f[0] == "job")
    assert failed["message"] == "a\nb\n\nc"
    assert b"data: " in stream.body and stream.body.count(b"event: job\ndata: {") == 2


async def test_an_unknown_job_stream_is_a_404_and_a_bad_id_a_422(idle: Api) -> None:
    missing = await idle.client.get(f"{JOBS}/{uuid.uuid4()}/events", headers=READ)
    assert_error(missing, 404, "job_not_found")
    assert_error(await idle.client.get(f"{JOBS}/not-a-uuid/events", headers=READ), 422)
    assert idle.service.feed.subscribers == 0


async def test_the_streams_need_a_read_credential_and_take_the_session_cookie(idle: Api) -> None:
    job = await idle.start_job()
    for path in (f"{JOBS}/events", f"{JOBS}/{job['id']}/events"):
        assert_error(await idle.client.get(path), 401)
    signed = await idle.client.post("/ui/login", data={"token": READ_TOKEN, "next": "/ui/jobs"})
    assert signed.status_code == 303 and SESSION_COOKIE in idle.client.cookies
    async with EventStream(idle, f"{JOBS}/{job['id']}/events") as stream:  # as EventSource: cookie, no header
        assert stream.status == 200
        assert parsed(await stream.next("job"))["id"] == job["id"]


# ------------------------------------------------------------------------------------------- all jobs


async def test_the_jobs_stream_sends_every_change_as_the_listed_job(idle: Api) -> None:
    async with EventStream(idle, f"{JOBS}/events", READ) as stream:
        assert (await stream.next("retry"))[1] == str(jobs_api.RETRY_MILLISECONDS)
        created = await idle.start_job()
        event = parsed(await stream.next("job"))
        assert event["id"] == created["id"] and event["state"] == "PENDING"
        assert "events" not in event  # the list's shape, not the detail's
        listed = (await idle.client.get(JOBS, headers=READ)).json()["items"][0]
        assert set(event) == set(listed)
        await db(idle.store.update_progress, uuid.UUID(created["id"]), 5, 5, 0)
        assert (await stream.job_until(lambda job: job["progress"]["written"] > 0))["progress"]["written"] == 5


async def test_the_jobs_stream_filters_by_state_and_pipeline_and_says_when_a_job_leaves_the_filter(
    idle: Api,
) -> None:
    one, two = await idle.start_job(), await idle.start_job()
    await db(idle.store.transition, uuid.UUID(one["id"]), JobState.INSTALLING, task=Task.INSTALL)
    async with EventStream(idle, f"{JOBS}/events?state=RUNNING&pipeline=tiny", READ) as stream:
        await db(idle.store.transition, uuid.UUID(two["id"]), JobState.INSTALLING, task=Task.INSTALL)  # no match
        await db(idle.store.transition, uuid.UUID(one["id"]), JobState.RUNNING, task=Task.WAIT)
        entered = parsed(await stream.next("job"))
        assert (entered["id"], entered["state"]) == (one["id"], "RUNNING")
        await db(idle.store.transition, uuid.UUID(one["id"]), JobState.FAILED, reason="Boom")
        left = parsed(await stream.next("job"))
        assert (left["id"], left["state"]) == (one["id"], "FAILED")  # once more, as it leaves
        await db(idle.store.transition, uuid.UUID(two["id"]), JobState.FAILED, reason="Boom")  # never matched
        await db(idle.store.update_progress, uuid.UUID(one["id"]), 1, 1, 0)  # left already: not sent again
        sentinel = await idle.start_job()
        await db(idle.store.transition, uuid.UUID(sentinel["id"]), JobState.INSTALLING, task=Task.INSTALL)
        await db(idle.store.transition, uuid.UUID(sentinel["id"]), JobState.RUNNING, task=Task.WAIT)
        assert parsed(await stream.next("job"))["id"] == sentinel["id"]
    other = await idle.client.get(f"{JOBS}/events?pipeline=Not_A_Name", headers=READ)
    assert_error(other, 422)
    assert_error(await idle.client.get(f"{JOBS}/events?state=SLEEPING", headers=READ), 422)


async def test_an_idle_stream_sends_keep_alive_comments(idle: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(jobs_api, "KEEP_ALIVE_SECONDS", 0.05)
    async with EventStream(idle, f"{JOBS}/events", READ) as stream:
        assert await stream.next("comment") == ("comment", "keep-alive")
        assert await stream.next("comment") == ("comment", "keep-alive")
        job = await idle.start_job()
        assert parsed(await stream.next("job"))["id"] == job["id"]


async def test_a_client_that_leaves_leaves_no_subscriber_and_no_poller(idle: Api) -> None:
    feed = idle.service.feed
    job = await idle.start_job()
    async with EventStream(idle, f"{JOBS}/events", READ) as everything, EventStream(
        idle, f"{JOBS}/{job['id']}/events", READ
    ) as one:
        await one.next("job")
        await asyncio.sleep(0.05)
        assert feed.subscribers == 2 and feed.running
        assert everything.status == 200
    assert everything.task is not None and everything.task.done() and one.task is not None and one.task.done()
    assert feed.subscribers == 0
    for _ in range(50):
        if not feed.running:
            break
        await asyncio.sleep(0.02)
    assert not feed.running


async def test_the_streams_end_when_the_app_stops(api_database_url: str, tmp_path: Path) -> None:
    async with running(settings_for(tmp_path / "home", api_database_url), drive=False) as api:
        await api.deploy()
        job = await api.start_job()
        everything = await EventStream(api, f"{JOBS}/events", READ).__aenter__()
        one = await EventStream(api, f"{JOBS}/{job['id']}/events", READ).__aenter__()
        await one.next("job")
        await asyncio.sleep(0.05)
        feed = api.service.feed
    # the lifespan has ended: both responses finished without a disconnect, and nothing is left running
    assert everything.task is not None and one.task is not None
    await asyncio.wait_for(asyncio.gather(everything.task, one.task), 5)
    assert [name for name, _ in await one.rest()] == []  # no `end`: the job is not finished, a client reconnects
    assert not feed.running and feed.closed
    assert not [t for t in asyncio.all_tasks() if "job-change-feed" in t.get_name()]


async def test_a_lagging_client_is_told_to_resync() -> None:
    async def lagging() -> AsyncIterator[list[Job]]:
        raise FeedLagged("too slow")
        yield []  # pragma: no cover - makes this an async generator

    frames = [frame async for frame in jobs_api._job_frames(lagging(), None, None)]  # type: ignore[arg-type]
    assert frames == [b"event: resync\ndata: {}\n\n"]


async def test_report_to_event_delay(idle: Api) -> None:
    """Not a test of speed (nothing asserted on time): prints the delay from a progress report's answer to the
    event on a follower, which the job page's bench (bench/README.md) quotes."""
    job = await idle.start_job()
    job_id = uuid.UUID(job["id"])
    await db(idle.store.transition, job_id, JobState.INSTALLING, task=Task.INSTALL)
    await db(idle.store.transition, job_id, JobState.RUNNING, task=Task.WAIT)
    delays: list[float] = []
    async with EventStream(idle, f"{JOBS}/{job_id}/events", READ) as stream:
        await stream.next("job")
        for n in range(1, 11):
            started = time.perf_counter()
            report = await idle.client.post(
                f"{JOBS}/{job_id}/progress", json={"read": n, "written": n, "failed": 0}, headers=WRITE
            )
            assert report.status_code == 200, report.text
            while parsed(await stream.next("job"))["progress"]["read"] < n:
                pass
            delays.append(time.perf_counter() - started)
            await asyncio.sleep(0.1)
    delays.sort()
    print(f"\nprogress report -> event: median {delays[5] * 1000:.0f} ms, max {delays[-1] * 1000:.0f} ms")


# ------------------------------------------------------------------------------------------- history


async def test_the_progress_history_lists_the_samples_oldest_first(idle: Api) -> None:
    job = await idle.start_job()
    job_id = uuid.UUID(job["id"])
    path = f"{JOBS}/{job_id}/progress/history"
    empty = await idle.client.get(path, headers=READ)
    assert empty.status_code == 200 and empty.json() == {"samples": []}
    for n in (10, 20, 30):
        await db(idle.store.update_progress, job_id, n, n - 1, 1)
    body = (await idle.client.get(path, headers=READ)).json()
    samples = body["samples"]
    assert samples and samples[-1] | {"at": None} == {"at": None, "read": 30, "written": 29, "failed": 1}
    assert [s["at"] for s in samples] == sorted(s["at"] for s in samples)
    assert len((await idle.client.get(f"{path}?points=2", headers=READ)).json()["samples"]) <= 2
    assert_error(await idle.client.get(f"{path}?points=1", headers=READ), 422)
    assert_error(await idle.client.get(f"{JOBS}/{uuid.uuid4()}/progress/history", headers=READ), 404)
    assert_error(await idle.client.get(path), 401)


async def test_the_openapi_document_describes_the_streams_and_the_history(idle: Api) -> None:
    paths = (await idle.client.get("/openapi.json")).json()["paths"]
    for path in (f"{JOBS}/events", f"{JOBS}/{{job_id}}/events"):
        operation = paths[path]["get"]
        assert operation["summary"] and operation["description"]
        content = operation["responses"]["200"]["content"]
        assert "event: " in content["text/event-stream"]["example"]
        assert {"401", "422", "503"} <= set(operation["responses"])
    history = paths[f"{JOBS}/{{job_id}}/progress/history"]["get"]
    assert history["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "ProgressHistoryOut"
    )
    assert "404" in history["responses"]


# ------------------------------------------------------------------------------------------- a real server


def test_a_real_server_stops_at_once_with_event_streams_open(tmp_path: Path) -> None:
    """`modelops serve` with two streams open stops on SIGTERM without waiting for its graceful-shutdown timeout
    (10 s): the streams end as it begins to shut down (`scheduler.serving.Server`)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    unset = ("MODELOPS_SCHEDULER_HOME", "MODELOPS_SCHEDULER_DATABASE_URL", "MODELOPS_SCHEDULER_TOKENS")
    env = {k: v for k, v in os.environ.items() if k not in unset and k != "MODELOPS_SCHEDULER_PORT"}
    env["MODELOPS_HOME"] = str(tmp_path / "home")
    process = subprocess.Popen(
        [sys.executable, "-c", "from scheduler.cli import app; app()", "serve", "--port", str(port)],
        cwd=Path(__file__).resolve().parents[2],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30  # a safety net, not a timing assertion
        while True:
            try:
                if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert process.poll() is None, process.communicate()[1].decode()
            assert time.monotonic() < deadline, "the server did not become ready"
            time.sleep(0.1)
        with httpx.Client(base_url=url, timeout=10) as client:
            with client.stream("GET", "/api/v1/jobs/events") as stream:
                lines = stream.iter_lines()
                assert next(lines) == f"retry: {jobs_api.RETRY_MILLISECONDS}"
                started = time.monotonic()
                process.send_signal(signal.SIGTERM)
                rest = list(lines)  # ends when the server ends the stream
            _, stderr = process.communicate(timeout=30)
            took = time.monotonic() - started
    finally:
        process.kill()
    log = stderr.decode()
    assert [line for line in rest if line] == [], rest
    assert "Application shutdown complete." in log
    assert "timeout graceful shutdown exceeded" not in log, log
    assert took < 8, f"the server took {took:.1f} s to stop: it waited for the stream"


def test_the_client_and_job_show_watch_follow_a_job_through_its_event_stream(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`SchedulerClient.job_events` against a real (embedded) server running a job on the local backend, and
    `modelops job show --watch` reading it: no poll of `GET /jobs/{id}` happens."""
    from cli_kit import running_server, write_bundle
    from typer.testing import CliRunner

    from scheduler.cli import app
    from scheduler.client import ApiError, SchedulerClient

    with running_server(tmp_path / "home") as server:
        server.commands.flow = ["--run-for", "1.0", "--progress", "40", "--complete", "succeeded"]
        bundle = write_bundle(tmp_path / "b", name="followed")
        with server.client() as client:
            client.deploy(bundle)
            job = client.create_job("followed")
            seen = list(client.job_events(job.id))
            assert seen[0].id == job.id and seen[-1].state is JobState.SUCCEEDED
            assert all(not j.terminal for j in seen[:-1]) and len(seen) >= 3
            assert seen[-1].progress.read > 0
            with pytest.raises(ApiError) as missing:
                list(client.job_events(uuid.uuid4()))
            assert missing.value.status == 404
            second = client.create_job("followed")
        polled: list[str] = []
        original = SchedulerClient.get_job

        def counting(self: SchedulerClient, job_id: uuid.UUID | str) -> Any:
            polled.append(str(job_id))
            return original(self, job_id)

        monkeypatch.setattr(SchedulerClient, "get_job", counting)
        result = CliRunner().invoke(app, ["job", "show", str(second.id), "--watch", "--server", server.url])
        assert result.exit_code == 0, result.output
        assert f"job {second.id} SUCCEEDED in " in result.stdout
        assert polled == [str(second.id)]  # `job show` reads it once; the watch follows the stream
