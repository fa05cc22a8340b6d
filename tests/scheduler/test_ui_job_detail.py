"""The job page `/ui/jobs/{id}` over HTTP (no browser), on SQLite and PostgreSQL with the fake backend: what it
shows for jobs in several states, escaping, who may cancel (read token, CSRF), the cancel flow followed live,
the page's SSE stream ending at the terminal state, and the log stream's escaped, numbered, batched lines.

The streams are read with a small ASGI client (`sse_events`) that hands over each event as the app sends it:
httpx's ASGI transport returns a response only once the app has finished it."""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from api_kit import READ, READ_TOKEN, WRITE, WRITE_TOKEN, Api, running, settings_for
from fastapi import FastAPI

from scheduler.changes import drain_feeds
from scheduler.sessions import CSRF_HEADER, SESSION_COOKIE, SessionSigner
from scheduler.states import JobState, Task
from scheduler.store import Job
from scheduler.ui.charts import RatePoint, line_chart, rates
from scheduler.ui.job_detail import eta_seconds, log_line_html, phases

HX = {"HX-Request": "true"}


@pytest.fixture
async def api(api_database_url: str, tmp_path: Path) -> AsyncIterator[Api]:
    async with running(settings_for(tmp_path / "home", api_database_url)) as started:
        await started.deploy()
        yield started


@pytest.fixture
async def idle(api_database_url: str, tmp_path: Path) -> AsyncIterator[Api]:
    """The fake backend moves no job: the test moves it through the store, step by step."""
    async with running(settings_for(tmp_path / "home", api_database_url), drive=False) as started:
        await started.deploy()
        yield started


async def _sign_in(api: Api, token: str) -> str:
    """A session for `token`; returns its CSRF token."""
    response = await api.client.post("/ui/login", data={"token": token, "next": "/ui/jobs"})
    assert response.status_code == 303, response.text
    signer: SessionSigner = api.app.state.auth.sessions
    session = signer.verify(api.client.cookies[SESSION_COOKIE])
    assert session is not None
    return session.csrf


def _phase_items(html: str) -> list[str]:
    return re.findall(r'<li class="phase phase-[a-z]+"[^>]*>.*?</li>', html, re.S)


# ------------------------------------------------------------------------------------------------ SSE client


@asynccontextmanager
async def sse_events(
    app: FastAPI, path: str, headers: dict[str, str] | None = None
) -> AsyncIterator[tuple[int, AsyncIterator[tuple[str, str, str | None]]]]:
    """Call the app like a browser's EventSource; gives the status and the events `(event, data, id)` as sent."""
    query = ""
    if "?" in path:
        path, query = path.split("?", 1)
    raw_headers = [(b"host", b"scheduler.test"), (b"accept", b"text/event-stream")]
    raw_headers += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    scope: dict[str, Any] = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": query.encode(),
        "headers": raw_headers,
        "client": ("127.0.0.1", 50000),
        "server": ("scheduler.test", 80),
        "root_path": "",
    }
    chunks: asyncio.Queue[bytes | None] = asyncio.Queue()
    started: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    gone = asyncio.Event()
    sent_request = False

    async def receive() -> dict[str, Any]:
        nonlocal sent_request
        if not sent_request:
            sent_request = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await gone.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start" and not started.done():
            started.set_result(message["status"])
        elif message["type"] == "http.response.body":
            await chunks.put(message.get("body", b""))
            if not message.get("more_body", False):
                await chunks.put(None)

    task = asyncio.create_task(app(scope, receive, send))  # type: ignore[arg-type]

    async def events() -> AsyncIterator[tuple[str, str, str | None]]:
        buffer = ""
        while True:
            chunk = await asyncio.wait_for(chunks.get(), 10)
            if chunk is None:
                return
            buffer += chunk.decode()
            while "\n\n" in buffer:
                block, buffer = buffer.split("\n\n", 1)
                name, data, event_id = "message", [], None
                for line in block.split("\n"):
                    if line.startswith("event: "):
                        name = line[7:]
                    elif line.startswith("data: "):
                        data.append(line[6:])
                    elif line.startswith("id: "):
                        event_id = line[4:]
                if data or name != "message":
                    yield name, "\n".join(data), event_id

    try:
        status = await asyncio.wait_for(started, 10)
        yield status, events()
    finally:
        gone.set()
        try:
            await asyncio.wait_for(task, 5)
        except TimeoutError:
            task.cancel()


async def _until(events: AsyncIterator[tuple[str, str, str | None]], name: str, text: str = "") -> str:
    """The data of the next `name` event containing `text` (others are skipped)."""
    async for event, data, _ in events:
        if event == name and text in data:
            return data
    raise AssertionError(f"the stream ended before a {name!r} event with {text!r}")


# ------------------------------------------------------------------------------------------------ the page


async def test_a_running_job_shows_its_phases_state_parameters_version_and_a_cancel_button(api: Api) -> None:
    job = await api.start_job(parameters={"threshold": 0.7})
    api.store.set_backend_ref(job["id"], {"pipelinerun": "modelops-run-abc"})
    page = await api.client.get(f"/ui/jobs/{job['id']}", headers=WRITE)
    assert page.status_code == 200, page.text
    html = page.text
    assert '<span class="state state-RUNNING" id="job-state">RUNNING</span>' in html
    install, wait, uninstall = _phase_items(html)
    assert "phase-done" in install and "✓ done" in install and "aria-current" not in install
    assert 'aria-current="step"' in wait and "▶ running" in wait
    assert "uninstall (finally)" in uninstall and "○ waiting" in uninstall
    assert '<a href="/ui/pipelines/tiny/versions/1">tiny version 1</a>' in html
    assert "modelops-run-abc" in html and "pipelinerun" in html
    assert '<th scope="row" class="mono">threshold</th><td class="mono">0.7</td>' in html
    assert f'sse-connect="/ui/jobs/{job["id"]}/stream"' in html
    assert 'id="cancel-open"' in html and '<dialog id="cancel-dialog"' in html
    assert "created Cancelled" not in html and "PENDING → INSTALLING" in html  # the event history
    # the log tabs: every component, the selected one in the URL, the download link of the API
    for name in ("all", "install", "wait", "uninstall", "service/tiny-rf", "flow/tiny-batch"):
        assert f">{name}</a>" in html
    chosen = await api.client.get(f"/ui/jobs/{job['id']}?log=flow/tiny-batch", headers=READ)
    assert f'href="/api/v1/jobs/{job["id"]}/logs?component=flow/tiny-batch"' in chosen.text
    assert 'href="?log=flow/tiny-batch" aria-current="page"' in chosen.text
    unknown = await api.client.get(f"/ui/jobs/{job['id']}?log=flow/nope", headers=READ)
    assert unknown.status_code == 422 and "flow/nope" in unknown.text


async def test_a_succeeded_job_shows_every_phase_done_and_nothing_live(api: Api) -> None:
    job = await api.start_job()
    report = {
        "flow": "tiny-batch",
        "read": 300,
        "written": 290,
        "failed": 10,
        "state": "done",
        "rate": 150.0,
        "total": 300,
        "unit": "records",
        "done": 300,
        "services": {"tiny-rf": {"requests": 3, "rows": 300, "latency_ms": {"mean": 2, "p50": 1.5, "p99": 9.25}}},
    }
    assert (await api.client.post(f"/api/v1/jobs/{job['id']}/progress", json=report, headers=WRITE)).status_code == 200
    completion = {"succeeded": True, "flow": "tiny-batch", "message": "300 rows <ok>"}
    done = await api.client.post(f"/api/v1/jobs/{job['id']}/complete", json=completion, headers=WRITE)
    assert done.status_code == 202, done.text
    html = (await api.client.get(f"/ui/jobs/{job['id']}", headers=WRITE)).text
    assert "state-SUCCEEDED" in html
    assert all("✓ done" in item for item in _phase_items(html))
    assert 'aria-current="step"' not in html
    assert "sse-connect" not in html and 'id="cancel-open"' not in html and "<dialog" not in html
    assert '<dd id="count-read">300</dd>' in html and '<dd id="count-failed">10</dd>' in html
    assert "100.0% of 300 records" in html
    assert '<th scope="row">tiny-batch</th>' in html and "150 rows/s" in html
    assert '<td class="message">✓ succeeded: 300 rows &lt;ok&gt;</td>' in html  # the flow's completion
    assert '<td class="num">1.5</td>' in html and '<td class="num">9.2</td>' in html  # p50, p99 of tiny-rf


async def test_a_job_that_failed_in_install_marks_install_failed_and_wait_not_run(idle: Api) -> None:
    job = await idle.start_job()
    idle.store.transition(job["id"], JobState.INSTALLING, task=Task.INSTALL, reason="Installing")
    idle.store.set_task(job["id"], Task.UNINSTALL)
    idle.store.transition(job["id"], JobState.FAILED, reason="InstallFailed", message="helm: release failed")
    html = (await idle.client.get(f"/ui/jobs/{job['id']}", headers=READ)).text
    install, wait, uninstall = _phase_items(html)
    assert "✕ failed" in install and "- not run" in wait and "✓ done" in uninstall
    assert "InstallFailed" in html and "helm: release failed" in html


async def test_a_pending_job_has_every_phase_waiting(idle: Api) -> None:
    job = await idle.start_job()
    html = (await idle.client.get(f"/ui/jobs/{job['id']}", headers=READ)).text
    assert "state-PENDING" in html
    assert all("○ waiting" in item for item in _phase_items(html))


async def test_what_a_user_typed_is_shown_as_text(idle: Api) -> None:
    job = await idle.start_job(parameters={"input": "<img src=x onerror=alert(1)>"})
    idle.store.transition(
        job["id"], JobState.INSTALLING, task=Task.INSTALL, reason="Installing", message="<script>alert(1)</script>"
    )
    html = (await idle.client.get(f"/ui/jobs/{job['id']}", headers=READ)).text
    assert "<script>alert(1)</script>" not in html and "<img src=x" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert '<td class="mono">&lt;img src=x onerror=alert(1)&gt;</td>' in html


async def test_an_unknown_job_is_a_404_page_and_an_id_prefix_finds_the_job(api: Api) -> None:
    missing = await api.client.get(f"/ui/jobs/{uuid.uuid4()}", headers=READ)
    assert missing.status_code == 404 and "text/html" in missing.headers["content-type"]
    assert "no job" in missing.text
    job = await api.start_job()
    short = await api.client.get(f"/ui/jobs/{job['id'][:8]}?log=install", headers=READ)
    assert short.status_code == 307 and short.headers["location"] == f"/ui/jobs/{job['id']}?log=install"
    assert (await api.client.get("/ui/jobs/not-an-id", headers=READ)).status_code == 404


async def test_without_a_session_the_page_and_its_streams_redirect_to_sign_in(api: Api) -> None:
    job = await api.start_job()
    for path in ("", "/stream", "/logs/stream"):
        response = await api.client.get(f"/ui/jobs/{job['id']}{path}")
        assert response.status_code == 303 and response.headers["location"].startswith("/ui/login?next="), path


# ------------------------------------------------------------------------------------------------ cancel


async def test_a_read_token_sees_no_cancel_button_and_its_cancel_is_refused(api: Api) -> None:
    job = await api.start_job()
    csrf = await _sign_in(api, READ_TOKEN)
    html = (await api.client.get(f"/ui/jobs/{job['id']}")).text
    assert "state-RUNNING" in html and 'id="cancel-open"' not in html and "<dialog" not in html
    refused = await api.client.post(f"/ui/jobs/{job['id']}/cancel", headers={CSRF_HEADER: csrf})
    assert refused.status_code == 403 and "insufficient_scope" in refused.text
    assert api.backend.called("cancel") == []


async def test_a_cancel_without_the_csrf_token_is_refused(api: Api) -> None:
    job = await api.start_job()
    await _sign_in(api, WRITE_TOKEN)
    for headers, data in (({}, {}), ({CSRF_HEADER: "guess"}, {}), ({}, {"csrf_token": "guess"})):
        refused = await api.client.post(f"/ui/jobs/{job['id']}/cancel", headers=headers, data=data)
        assert refused.status_code == 403 and "csrf_failed" in refused.text
    assert api.backend.called("cancel") == []
    assert api.store.get_job(job["id"]).state is JobState.RUNNING


async def test_a_cancel_is_followed_live_through_uninstall_to_cancelled(idle: Api) -> None:
    job = await idle.start_job()
    job_id = job["id"]
    idle.store.transition(job_id, JobState.INSTALLING, task=Task.INSTALL, reason="Installing")
    idle.store.transition(job_id, JobState.RUNNING, task=Task.WAIT, reason="Ready")
    csrf = await _sign_in(idle, WRITE_TOKEN)
    cookie = f"{SESSION_COOKIE}={idle.client.cookies[SESSION_COOKIE]}"
    async with sse_events(idle.app, f"/ui/jobs/{job_id}/stream", {"cookie": cookie}) as (status, events):
        assert status == 200
        assert "state-RUNNING" in await _until(events, "head")
        answer = await idle.client.post(f"/ui/jobs/{job_id}/cancel", headers={**HX, CSRF_HEADER: csrf})
        assert answer.status_code == 200 and "Cancel requested" in answer.text and 'role="status"' in answer.text
        assert idle.backend.called("cancel") == [uuid.UUID(job_id)]
        head = await _until(events, "head", "CANCELLING")
        assert 'id="cancel-open"' not in head  # no second cancel
        idle.store.set_task(job_id, Task.UNINSTALL)
        strip = await _until(events, "phases", "◼ stopped")
        _, wait, uninstall = _phase_items(strip)
        assert "◼ stopped" in wait and "▶ running" in uninstall and 'aria-current="step"' in uninstall
        idle.store.transition(job_id, JobState.CANCELLED, reason="Cancelled")
        assert "state-CANCELLED" in await _until(events, "head", "CANCELLED")
        await _until(events, "end")
        assert [event async for event in events] == []  # the stream is over
    again = await idle.client.post(f"/ui/jobs/{job_id}/cancel", headers={**HX, CSRF_HEADER: csrf})
    assert again.status_code == 200 and 'role="alert"' in again.text and "cannot be cancelled" in again.text
    plain = await idle.client.post(f"/ui/jobs/{job_id}/cancel", data={"csrf_token": csrf})
    assert plain.status_code == 409 and "text/html" in plain.headers["content-type"]


async def test_a_plain_form_cancel_goes_back_to_the_page(api: Api) -> None:
    job = await api.start_job()
    csrf = await _sign_in(api, WRITE_TOKEN)
    answer = await api.client.post(f"/ui/jobs/{job['id']}/cancel", data={"csrf_token": csrf})
    assert answer.status_code == 303 and answer.headers["location"] == f"/ui/jobs/{job['id']}"
    assert api.store.get_job(job["id"]).state is JobState.CANCELLED  # the fake backend ran uninstall at once


# ------------------------------------------------------------------------------------------------ streams


async def test_the_page_stream_sends_progress_and_ends_at_the_terminal_state(api: Api) -> None:
    job = await api.start_job()
    async with sse_events(api.app, f"/ui/jobs/{job['id']}/stream", READ) as (status, events):
        assert status == 200
        first = {name: await _until(events, name) for name in ("head", "facts", "phases", "progress")}
        assert '<dd id="count-read">0</dd>' in first["progress"]
        report = {"flow": "tiny-batch", "read": 1234, "written": 1200, "failed": 34, "state": "running"}
        await api.client.post(f"/api/v1/jobs/{job['id']}/progress", json=report, headers=WRITE)
        progress = await _until(events, "progress", "1,234")
        assert '<dd id="count-failed">34</dd>' in progress
        flows = await _until(events, "flows", "tiny-batch")
        assert "1,200" in flows
        await api.client.post(f"/api/v1/jobs/{job['id']}/complete", json={"succeeded": True}, headers=WRITE)
        assert "state-SUCCEEDED" in await _until(events, "head", "SUCCEEDED")
        await _until(events, "end")
        assert [event async for event in events] == []


async def test_a_finished_job_stream_sends_it_once_and_ends(api: Api) -> None:
    job = await api.start_job()
    await api.client.post(f"/api/v1/jobs/{job['id']}/complete", json={"succeeded": True}, headers=WRITE)
    async with sse_events(api.app, f"/ui/jobs/{job['id']}/stream", READ) as (_, events):
        names = [name async for name, _, _ in events]
    assert names[-1] == "end" and names.count("head") == 1 and "chart" in names


async def test_the_log_stream_sends_escaped_numbered_lines_in_batches_and_resumes_after_the_last_id(api: Api) -> None:
    job = await api.start_job()
    job_id = uuid.UUID(job["id"])
    api.backend.lines[(job_id, Task.INSTALL)] = [
        "2026-12-03T13:55:01.123Z INFO install: rendering <values> & more",
        "2026-12-03T13:55:02.000Z INFO install: <script>alert(1)</script>",
        "a line without a time",
    ]
    queue = api.backend.follow_queue(job_id)
    path = f"/ui/jobs/{job_id}/logs/stream?component=install"
    async with sse_events(api.app, path, READ) as (status, events):
        assert status == 200
        name, data, event_id = await anext(events)
        assert name == "lines" and event_id == "3"  # the three lines went out as one batch
        assert data.count('<div class="line"') == 3
        assert '<div class="line" id="log-1"><a class="ln" href="#log-1" tabindex="-1">1</a>' in data
        assert '<time datetime="2026-12-03T13:55:01.123Z">13:55:01.123</time>' in data
        assert '<span class="comp">[install]</span>' in data
        assert "rendering &lt;values&gt; &amp; more" in data
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in data and "<script>" not in data
        for n in range(250):
            await queue.put(f"2026-12-03T13:56:00.000Z live line {n}")
        batches = []
        while sum(b.count('class="line"') for b in batches) < 250:
            name, data, event_id = await anext(events)
            assert name == "lines"
            batches.append(data)
        assert 3 <= len(batches) <= 10 and all(b.count('class="line"') <= 100 for b in batches)
        assert event_id == "253" and 'id="log-253"' in batches[-1]
        await queue.put(None)
        name, _, event_id = await anext(events)
        assert (name, event_id) == ("end", "253")
    # a reconnecting EventSource sends the last id it saw: the lines after it come, not the ones it has
    await queue.put(None)  # (the fake backend's live lines end there again)
    resumed = await api.client.get(path, headers={**READ, "Last-Event-ID": "2"})
    assert 'id="log-3"' in resumed.text and 'id="log-1"' not in resumed.text


async def test_the_log_stream_of_an_unknown_component_is_refused_before_it_starts(api: Api) -> None:
    job = await api.start_job()
    response = await api.client.get(f"/ui/jobs/{job['id']}/logs/stream?component=flow/nope", headers=READ)
    assert response.status_code == 422 and "flow/nope" in response.text


# ------------------------------------------------------------------------------------------------ pieces


def test_a_log_line_keeps_its_time_component_and_text_apart() -> None:
    html = log_line_html(7, '[flow/f] {"ts": "2026-12-03T13:55:01.123Z", "message": "<b>"}\n')
    assert '<time datetime="2026-12-03T13:55:01.123Z">' in html and "&lt;b&gt;" in html
    assert log_line_html(1, "[x] plain\r\n").endswith('<span class="msg">plain</span></div>')


def test_the_rate_chart_draws_rows_per_second_with_a_text_alternative() -> None:
    t0 = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)
    at = [t0 + timedelta(seconds=s) for s in (0, 2, 2, 4)]
    samples = [(at[0], 0), (at[1], 2000), (at[2], 2100), (at[3], 6000)]  # the third: no time passed, skipped
    points = rates(samples)
    assert [round(p.rate) for p in points] == [1000, 2000]
    svg = str(line_chart(points, title="rows/s of <job>", chart_id="c1"))
    assert svg.startswith("<svg") and 'role="img"' in svg and 'aria-labelledby="c1-title c1-desc"' in svg
    assert '<title id="c1-title">rows/s of &lt;job&gt;</title>' in svg
    assert "latest 2,000, peak 2,000, mean 1,500" in svg
    assert "<polyline" in svg
    empty = str(line_chart([], title="t", chart_id="c2"))
    assert "<polyline" not in empty and "No rows/s yet" in empty
    assert "<circle" in str(line_chart([RatePoint(t0, 0.0, 5.0)], title="t", chart_id="c3"))


def test_the_eta_follows_the_pace_so_far() -> None:
    assert eta_seconds(250, 1000, 10.0) == pytest.approx(30.0)
    assert eta_seconds(None, 1000, 10.0) is None
    assert eta_seconds(1000, 1000, 10.0) is None
    assert eta_seconds(0, 1000, 10.0) is None


def test_phases_without_events_still_mark_the_current_task() -> None:
    now = datetime.now(UTC)
    job = Job(
        id=uuid.uuid4(),
        pipeline="p",
        pipeline_version=1,
        pipeline_version_id=1,
        state=JobState.RUNNING,
        task=Task.WAIT,
        parameters={},
        environment={},
        backend="fake",
        backend_ref=None,
        idempotency_key=None,
        token_hash="x",
        created_at=now,
        started_at=now,
        finished_at=None,
        reason=None,
        message=None,
        records_read=0,
        records_written=0,
        records_failed=0,
    )
    assert [p.status for p in phases(job)] == ["done", "running", "waiting"]


async def test_the_chart_is_drawn_from_the_stored_progress_history(api: Api) -> None:
    job = await api.start_job()
    for read in (100, 1100, 3100):  # the store keeps at most one sample per job per 0.5 s
        report = {"flow": "tiny-batch", "read": read, "written": read, "state": "running"}
        assert (await api.client.post(f"/api/v1/jobs/{job['id']}/progress", json=report, headers=WRITE)).is_success
        await asyncio.sleep(0.6)
    html = (await api.client.get(f"/ui/jobs/{job['id']}", headers=READ)).text
    assert '<svg class="chart"' in html and "<polyline" in html
    assert re.search(r"rows/s over \d+ s \(2 intervals\): latest [\d,]+", html)


async def test_the_stream_sends_every_count_but_the_chart_at_most_twice_a_second_and_then_the_last(api: Api) -> None:
    job = await api.start_job()
    loop = asyncio.get_running_loop()
    async with sse_events(api.app, f"/ui/jobs/{job['id']}/stream", READ) as (_, events):
        await _until(events, "chart")  # the first parts
        started = loop.time()
        for read in range(1000, 9000, 1000):
            report = {"flow": "tiny-batch", "read": read, "written": read, "state": "running"}
            assert (await api.client.post(f"/api/v1/jobs/{job['id']}/progress", json=report, headers=WRITE)).is_success
            await asyncio.sleep(0.1)  # each report its own change (the feed coalesces changes closer than this)
        queue: asyncio.Queue[tuple[str, str, str | None]] = asyncio.Queue()

        async def pump() -> None:  # (a timeout on anext itself would close the generator)
            async for event in events:
                await queue.put(event)

        reader = asyncio.create_task(pump())
        received: list[tuple[str, str]] = []
        last_count_at = None
        while last_count_at is None or loop.time() < last_count_at + 1.0:  # 1 s after the last count: no more
            try:
                name, data, _ = await asyncio.wait_for(queue.get(), 0.2)
            except TimeoutError:
                continue
            received.append((name, data))
            if name == "progress" and '<dd id="count-read">8,000</dd>' in data:
                last_count_at = loop.time()
                elapsed = last_count_at - started
                names = [name for name, _ in received]
                charts, counts = names.count("chart"), names.count("progress")
                assert counts >= 6 and charts <= 1 + elapsed / 0.5, (names, elapsed)
        names = [name for name, _ in received]
        final = names.index("progress", max(i for i, (n, d) in enumerate(received) if "8,000" in d and n == "progress"))
        assert "chart" in names[final + 1 :] or names[final - 1] == "chart", names  # the last chart went out too
        reader.cancel()


async def test_the_streams_end_without_end_when_the_server_shuts_down_so_the_browser_reconnects(api: Api) -> None:
    job = await api.start_job()
    api.backend.lines[(uuid.UUID(job["id"]), Task.INSTALL)] = ["2026-12-03T13:55:01.123Z install: one"]
    page = sse_events(api.app, f"/ui/jobs/{job['id']}/stream", READ)
    logs = sse_events(api.app, f"/ui/jobs/{job['id']}/logs/stream?component=install", READ)
    async with page as (_, page_events), logs as (_, log_events):
        await _until(page_events, "head")
        assert (await anext(log_events))[0] == "lines"
        drain_feeds()  # what scheduler.serving.Server does first when it shuts down
        assert "end" not in [name async for name, _, _ in page_events]
        assert "end" not in [name async for name, _, _ in log_events]
    assert api.store.get_job(job["id"]).state is JobState.RUNNING


def test_the_local_backends_processes_read_as_one_phrase_each() -> None:
    from scheduler.ui.job_detail import _plain

    processes = [
        {"kind": "service", "name": "digits-rf", "pid": 13196, "port": 40477, "log": "/home/jobs/x/service.log"},
        {"kind": "flow", "name": "digits-batch", "pid": 13201},
    ]
    assert _plain(processes) == "service digits-rf (pid 13196, port 40477); flow digits-batch (pid 13201)"
    assert _plain("modelops-2b1e") == "modelops-2b1e"
    assert _plain({"a": [1]}) == '{"a": [1]}'
