"""The job page, `/ui/jobs/{id}`: phases, state, parameters, progress with a rows/s chart, flows, events, live
logs and Cancel.

Everything comes from `SchedulerService`, like the REST API. The page is rendered whole once; while the job
runs, `/ui/jobs/{id}/stream` (server-sent events, followed by htmx's SSE extension) sends the parts that
changed as named events (`head`, `facts`, `phases`, `progress`, `chart`, `flows`, `events`), each the same
fragment template the page included, so a part never looks different live from on reload. The stream follows
`service.watch_job(id)` and ends with an `end` event once the job is terminal. The chart is re-rendered at most
twice a second (`CHART_INTERVAL`); the counters go out at every change.

Logs: `/ui/jobs/{id}/logs/stream?component=` wraps `service.logs(id, [component], follow=True)` and sends the
lines, escaped and numbered (`log-<n>`), in batches (`LOG_BATCH_LINES` lines or `LOG_BATCH_SECONDS`), each
batch an SSE event whose `id` is its last line number: a reconnecting EventSource sends it back
(`Last-Event-ID`) and gets only the lines after it; a stream reopened by the page after a pause in a hidden tab
(static/streams.js) asks with `?after=<n>` instead. static/job_detail.js appends them, keeps at most 5,000
lines in the page, and scrolls only when the reader asked to follow and was already at the bottom.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, Final, TypeVar

from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response, StreamingResponse
from markupsafe import Markup, escape

from ir.logformat import line_timestamp
from scheduler.api.models import FlowProgressOut, ProgressOut
from scheduler.changes import FeedLagged
from scheduler.errors import Conflict, InvalidInput, NotFound, SchedulerError
from scheduler.service import SchedulerService
from scheduler.states import JobState, Task
from scheduler.store import Job, JobEvent
from scheduler.ui.charts import RatePoint, line_chart, rates
from scheduler.ui.deps import UI_PREFIX, UiReader, UiWriter, layout_context
from scheduler.ui.templating import TEMPLATES, render

__all__ = ["router"]

log = logging.getLogger(__name__)

router = APIRouter(prefix=UI_PREFIX)

CHART_INTERVAL: Final = 0.5
"""Seconds between two re-renders of the chart on a stream (at most 2/s: it is the largest fragment)."""
KEEPALIVE_SECONDS: Final = 15.0
"""An SSE comment after this long without an event, so proxies keep the connection open."""
LOG_BATCH_LINES: Final = 100
LOG_BATCH_SECONDS: Final = 0.1
"""A log batch goes out at 100 lines or 100 ms after its first line: a fast log is not one event per line."""
HISTORY_POINTS: Final = 300
"""Progress samples the chart draws (the store thins them evenly)."""

_ID_PREFIX: Final = re.compile(r"^[0-9A-Fa-f][0-9A-Fa-f-]{3,35}$")
_PREFIXED: Final = re.compile(r"^\[([^\]]+)\] ?(.*)$", re.S)
_T = TypeVar("_T")
_INTERNAL: Final = "internal error (see the server log)"
_DRAINED: Final = object()
"""Put in a log stream's queue when the server shuts down."""


def _service(request: Request) -> SchedulerService:
    service = request.app.state.service
    assert isinstance(service, SchedulerService)
    return service


# ------------------------------------------------------------------------------------------------ views


@dataclass(frozen=True)
class PhaseView:
    """One of the three phases as the strip shows it."""

    task: Task
    label: str
    status: str
    """`running`, `done`, `failed`, `stopped` (interrupted by a cancel), `waiting` (not yet) or `skipped`."""
    started: datetime | None
    ended: datetime | None

    @property
    def seconds(self) -> float | None:
        if self.started is None:
            return None
        end = self.ended or datetime.now(UTC)
        return max(0.0, (_aware(end) - _aware(self.started)).total_seconds())

    @property
    def marker(self) -> str:
        """The status in words with its symbol (never colour alone)."""
        return _PHASE_MARKERS[self.status]


_PHASE_LABELS: Final = {Task.INSTALL: "install", Task.WAIT: "wait", Task.UNINSTALL: "uninstall (finally)"}
_PHASE_MARKERS: Final = {
    "running": "▶ running",
    "done": "✓ done",
    "failed": "✕ failed",
    "stopped": "◼ stopped",
    "waiting": "○ waiting",
    "skipped": "- not run",
}


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def phases(job: Job) -> list[PhaseView]:
    """The strip `install → wait → uninstall (finally)` from the job's events.

    A phase starts at the first event that names its task and ends where the next phase starts (the last one
    that ran ends when the job finished). The running one is the job's task while it is not terminal. When a
    job failed or was cancelled, the last phase that ran before uninstall is `failed` or `stopped`.
    """
    order = list(Task)
    starts: dict[Task, datetime] = {}
    for event in job.events or ():
        if event.task is not None and event.task not in starts:
            starts[event.task] = event.at
    if job.task is not None and job.task not in starts:  # events not loaded: at least mark where it is
        starts[job.task] = job.started_at or job.created_at
    started = [task for task in order if task in starts]
    interrupted: Task | None = None
    if job.state in (JobState.FAILED, JobState.CANCELLED, JobState.CANCELLING):
        before = [task for task in started if task is not Task.UNINSTALL]
        if before and (job.terminal or job.task is Task.UNINSTALL):
            interrupted = before[-1]
    views: list[PhaseView] = []
    for task in order:
        start = starts.get(task)
        later = [starts[t] for t in order[order.index(task) + 1 :] if t in starts]
        end: datetime | None = later[0] if later else (job.finished_at if job.terminal else None)
        if start is None:
            # without events (not loaded), the phases before the current one must have run
            passed = job.events is None and job.task is not None and order.index(task) < order.index(job.task)
            status = "done" if passed else "skipped" if job.terminal else "waiting"
        elif not job.terminal and job.task is task:
            status, end = "running", None
        elif task is interrupted:
            status = "failed" if job.state is JobState.FAILED else "stopped"
        else:
            status = "done"
        views.append(PhaseView(task, _PHASE_LABELS[task], status, start, end))
    return views


@dataclass(frozen=True)
class ProgressView:
    """The counters, rates, percentage and ETA the page shows."""

    progress: ProgressOut
    percent: float | None
    average_rate: float | None
    """Records read per second since the flows began reading: the sum of the rates they report."""
    current_rate: float | None
    """Over the latest interval between two progress samples."""
    eta_seconds: float | None


def percent(done: int | None, total: int | None) -> float | None:
    """How much of `total` is `done`, in percent (at most 100); None when the size is unknown (as the CLI)."""
    if done is None or not total:
        return None
    return min(100.0, 100.0 * done / total)


def eta_seconds(done: int | None, total: int | None, reading_seconds: float | None) -> float | None:
    """Seconds left at the pace so far: `done` of `total` took `reading_seconds`; None when unknown.

    The pace is the job's own fraction per second (not rows/s), so it holds whether the size is in records or
    in bytes of the input files.
    """
    if done is None or not total or not reading_seconds or reading_seconds <= 0 or done <= 0 or done >= total:
        return None
    return reading_seconds * (total - done) / done


def progress_view(job: Job, points: Sequence[RatePoint]) -> ProgressView:
    progress = ProgressOut.of(job)
    reported = [flow.rate for flow in progress.flows.values() if flow.rate is not None]
    wait_start = next((p.started for p in phases(job) if p.task is Task.WAIT), None)
    eta = None
    if not job.terminal and wait_start is not None:
        reading = (datetime.now(UTC) - _aware(wait_start)).total_seconds()
        eta = eta_seconds(progress.done, progress.total, reading)
    return ProgressView(
        progress=progress,
        percent=percent(progress.done, progress.total),
        average_rate=sum(reported) if reported else None,
        current_rate=points[-1].rate if points and not job.terminal else None,
        eta_seconds=eta,
    )


@dataclass(frozen=True)
class FlowRow:
    """One flow on the page: its latest progress report (None before its first) and its completion report."""

    name: str
    progress: FlowProgressOut | None
    percent: float | None
    completion: str
    """`✓ succeeded`, `✕ failed: <message>` (symbol and word), or '' before the flow reported its end."""


def flow_rows(job: Job, progress: ProgressOut) -> list[FlowRow]:
    """Every flow that reported progress or its completion, by name."""
    completions = job.flow_completions or {}
    rows: list[FlowRow] = []
    for name in sorted({*progress.flows, *completions}):
        flow = progress.flows.get(name)
        report = completions.get(name)
        completion = ""
        if isinstance(report, dict):
            ok = bool(report.get("succeeded"))
            completion = "✓ succeeded" if ok else "✕ failed"
            detail = report.get("message") or (report.get("reason") if not ok else None)
            completion += f": {detail}" if detail else ""
        rows.append(FlowRow(name, flow, percent(flow.done, flow.total) if flow else None, completion))
    return rows


def event_change(event: JobEvent, previous_task: Task | None) -> str:
    """What an event changed, in words (as `modelops job show` says it)."""
    if event.from_state is None:
        return f"created {event.to_state.value}"
    if event.from_state == event.to_state:
        return "task change" if event.task != previous_task else "event"
    return f"{event.from_state.value} → {event.to_state.value}"


def event_rows(job: Job) -> list[tuple[JobEvent, str]]:
    rows: list[tuple[JobEvent, str]] = []
    previous: Task | None = None
    for event in job.events or ():
        rows.append((event, event_change(event, previous)))
        previous = event.task
    return rows


def backend_ref_rows(job: Job) -> list[tuple[str, str]]:
    """The backend's reference to the run, one row per key (e.g. `pipelinerun: modelops-2b1e…`)."""
    return [(str(key), _plain(value)) for key, value in sorted((job.backend_ref or {}).items())]


def _plain(value: Any) -> str:
    if isinstance(value, list) and value and all(isinstance(item, dict) and "name" in item for item in value):
        return "; ".join(_process(item) for item in value)  # the local backend's processes: one phrase each
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True)


def _process(item: dict[str, Any]) -> str:
    """`service digits-rf (pid 13196, port 40477)` for one of the local backend's processes."""
    what = " ".join(str(item[key]) for key in ("kind", "name") if item.get(key) is not None)
    where = ", ".join(f"{key} {item[key]}" for key in ("pid", "port") if item.get(key) is not None)
    return f"{what} ({where})" if where else what


def chart_svg(job: Job, points: Sequence[RatePoint]) -> Markup:
    return line_chart(points, title=f"Rows read per second, job {str(job.id)[:8]}", chart_id="rate-chart")


# ------------------------------------------------------------------------------------------------ samples


async def history_points(service: SchedulerService, job: Job) -> list[tuple[datetime, int]]:
    """`(time, rows read)` samples of the job so far, from the samples stored with its progress reports."""
    samples = await service.progress_history(job.id, points=HISTORY_POINTS)
    return [(sample.at, sample.read) for sample in samples]


def _add_sample(samples: list[tuple[datetime, int]], job: Job) -> None:
    """A live sample from a job the stream received, when its counters moved (thinned to `HISTORY_POINTS`)."""
    if samples and samples[-1][1] >= job.records_read:
        return
    at = job.updated_at or datetime.now(UTC)
    if samples and _aware(at) <= _aware(samples[-1][0]):
        return  # the stored history already holds this report
    samples.append((at, job.records_read))
    if len(samples) > 2 * HISTORY_POINTS:
        del samples[1:-1:2]


# ------------------------------------------------------------------------------------------------ rendering

FRAGMENTS: Final = ("head", "facts", "phases", "progress", "chart", "flows", "events")
"""The parts of the page the stream replaces, each `templates/job_detail/_<name>.html`."""


def _context(request: Request, job: Job, samples: Sequence[tuple[datetime, int]]) -> dict[str, Any]:
    points = rates(samples)
    view = progress_view(job, points)
    return {
        **layout_context(request),
        "job": job,
        "short_id": str(job.id)[:8],
        "phases": phases(job),
        "view": view,
        "flows": flow_rows(job, view.progress),
        "events": event_rows(job),
        "backend_ref": backend_ref_rows(job),
        "parameters": [(name, _plain(value)) for name, value in sorted(job.parameters.items())],
        "chart": chart_svg(job, points),
        "points": points,
        "now": datetime.now(UTC),
    }


def _fragment(name: str, context: dict[str, Any]) -> str:
    return TEMPLATES.env.get_template(f"job_detail/_{name}.html").render(context)


async def _resolve(service: SchedulerService, ref: str) -> uuid.UUID:
    """A job id, or the first hex digits of one (at least 4, like `modelops job show`)."""
    try:
        return uuid.UUID(ref)
    except ValueError:
        pass
    if not _ID_PREFIX.match(ref):
        raise NotFound(f"no job {ref!r}: give a job id or its first hex digits", code="job_not_found")
    page = await service.list_jobs(id_prefix=ref, limit=2)
    if not page.items:
        raise NotFound(f"no job whose id starts with {ref}", code="job_not_found", details={"id_prefix": ref})
    if len(page.items) > 1:
        raise Conflict(
            f"more than one job's id starts with {ref}: give more digits",
            code="ambiguous_id_prefix",
            details={"id_prefix": ref},
        )
    return page.items[0].id


@router.get("/jobs/{job_ref}", response_class=HTMLResponse)
async def job_page(
    request: Request,
    job_ref: str,
    principal: UiReader,
    log_component: Annotated[str | None, Query(alias="log", max_length=300)] = None,
) -> Response:
    service = _service(request)
    job_id = await _resolve(service, job_ref)
    if str(job_id) != job_ref:
        query = f"?{request.url.query}" if request.url.query else ""
        return RedirectResponse(f"{UI_PREFIX}/jobs/{job_id}{query}", status_code=307)
    job = await service.get_job(job_id)
    components = await service.log_components(job_id)
    selected = log_component or "all"
    if selected != "all" and selected not in components:
        raise InvalidInput(
            f"job {job_id} has no log component {selected!r}; its components: all, {', '.join(components)}",
            code="unknown_component",
            details={"component": selected, "components": components},
        )
    samples = await history_points(service, job)
    context = _context(request, job, samples)
    context.update(
        nav="jobs",
        components=["all", *components],
        log_selected=selected,
        fragments=FRAGMENTS,
    )
    return render(request, "job_detail/page.html", context)


# ------------------------------------------------------------------------------------------------ streams


def sse(event: str | None, data: str, event_id: str | None = None) -> str:
    """One server-sent event; every line of `data` gets its `data:` field (a CR would end a line too)."""
    lines = [f"id: {event_id}"] if event_id is not None else []
    if event is not None:
        lines.append(f"event: {event}")
    text = data.replace("\r\n", "\n").replace("\r", "\n")
    lines.extend(f"data: {line}" for line in text.split("\n"))
    return "\n".join(lines) + "\n\n"


async def _pump(source: AsyncIterator[_T], queue: asyncio.Queue[tuple[bool, _T | BaseException | None]]) -> None:
    """Feed `source` into `queue` as `(False, item)`, then `(True, None)` at its end or `(True, error)`.

    The stream reads the queue with timeouts (keep-alives, batching): waiting on the iterator itself with a
    timeout would cancel, and so close, the iterator.
    """
    try:
        async for item in source:
            await queue.put((False, item))
    except Exception as exc:  # handed to the stream, which reports it
        await queue.put((True, exc))
        return
    finally:
        close = getattr(source, "aclose", None)
        if close is not None:
            with contextlib.suppress(Exception):
                await close()
    await queue.put((True, None))


async def _watch(service: SchedulerService, job_id: uuid.UUID) -> AsyncIterator[Job]:
    """The job now and at each change until terminal (`service.watch_job`). A stream that fell behind the
    change feed (`FeedLagged`: its reader was too slow) starts again from the job as it is now."""
    while True:
        try:
            async for job in service.watch_job(job_id):
                yield job
            return
        except FeedLagged:
            log.info("job %s: its page stream fell behind the change feed; reading the job again", job_id)


STREAM_HEADERS: Final = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


@router.get("/jobs/{job_id}/stream")
async def job_stream(request: Request, job_id: uuid.UUID, principal: UiReader) -> StreamingResponse:
    """The page's parts as they change, then `end` once the job is terminal."""
    service = _service(request)
    job = await service.get_job(job_id)  # 404 before the stream starts
    samples = await history_points(service, job)
    return StreamingResponse(
        _job_events(request, service, job_id, samples), media_type="text/event-stream", headers=STREAM_HEADERS
    )


async def _job_events(
    request: Request, service: SchedulerService, job_id: uuid.UUID, samples: list[tuple[datetime, int]]
) -> AsyncIterator[str]:
    queue: asyncio.Queue[tuple[bool, Any]] = asyncio.Queue(maxsize=64)
    pump = asyncio.create_task(_pump(_watch(service, job_id), queue))
    sent: dict[str, str] = {}
    chart_due = 0.0
    chart_pending = False
    latest: Job | None = None
    try:
        while True:
            now = time.monotonic()
            timeout = max(0.0, chart_due - now) if chart_pending else KEEPALIVE_SECONDS
            try:
                finished, item = await asyncio.wait_for(queue.get(), timeout)
            except TimeoutError:
                if chart_pending and latest is not None:
                    for chunk in _changed("chart", _fragment("chart", _context(request, latest, samples)), sent):
                        yield chunk
                    chart_pending, chart_due = False, time.monotonic() + CHART_INTERVAL
                else:
                    yield ": keep-alive\n\n"
                continue
            if finished:
                if isinstance(item, BaseException):
                    message = item.message if isinstance(item, SchedulerError) else _INTERNAL
                    if not isinstance(item, SchedulerError):
                        log.error("job %s: its page stream failed", job_id, exc_info=item)
                    yield sse("stream-error", str(escape(f"live updates stopped: {message}")))
                elif latest is None or not latest.terminal:
                    return  # the server is shutting down: the browser reconnects (to the next one) by itself
                yield sse("end", "")
                return
            latest = item
            _add_sample(samples, item)
            context = _context(request, item, samples)
            for name in FRAGMENTS:
                if name == "chart":
                    continue
                for chunk in _changed(name, _fragment(name, context), sent):
                    yield chunk
            if item.terminal or time.monotonic() >= chart_due:
                for chunk in _changed("chart", _fragment("chart", context), sent):
                    yield chunk
                chart_pending, chart_due = False, time.monotonic() + CHART_INTERVAL
            else:
                chart_pending = True
    finally:
        pump.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await pump


def _changed(name: str, html: str, sent: dict[str, str]) -> list[str]:
    """The SSE event for fragment `name`, or none when the page already shows exactly this."""
    if sent.get(name) == html:
        return []
    sent[name] = html
    return [sse(name, html)]


def log_line_html(number: int, line: str) -> str:
    """One log line as the page shows it: number (a link to its anchor), component, time, text; all escaped."""
    text = line.rstrip("\n").replace("\r", "")
    component = ""
    found = _PREFIXED.match(text)
    if found:
        component, text = found.group(1), found.group(2)
    stamp = line_timestamp(text)
    if stamp is not None and text.startswith(stamp):
        text = text[len(stamp) :].lstrip(" ")
    anchor = f"log-{number}"
    # the numbers are links (the anchor goes into the URL) but not tab stops: 5,000 of them would trap the Tab key;
    # the log box itself is focusable and scrolls with the keyboard
    parts = [f'<div class="line" id="{anchor}"><a class="ln" href="#{anchor}" tabindex="-1">{number}</a>']
    if stamp is not None:
        parts.append(f'<time datetime="{escape(stamp)}">{escape(stamp[11:23])}</time>')
    else:
        parts.append('<time class="none"></time>')
    if component:
        parts.append(f'<span class="comp">[{escape(component)}]</span>')
    parts.append(f'<span class="msg">{escape(text)}</span></div>')
    return "".join(parts)


@router.get("/jobs/{job_id}/logs/stream")
async def log_stream(
    request: Request,
    job_id: uuid.UUID,
    principal: UiReader,
    component: Annotated[str | None, Query(max_length=300)] = None,
    last_event_id: Annotated[str | None, Header(alias="Last-Event-ID", max_length=20)] = None,
    after: Annotated[int | None, Query(ge=0, le=10**15)] = None,
) -> StreamingResponse:
    """The job's log lines (one component, or all) as batches of escaped HTML lines, following until it ends.

    The lines after number `Last-Event-ID` (sent by an EventSource reconnecting by itself) or else `after` (a new
    EventSource cannot send that header: static/job_detail.js reopens a stream paused in a hidden tab with it)."""
    service = _service(request)
    wanted = None if component in (None, "", "all") else [component]
    lines = await service.logs(job_id, wanted, follow=True)  # unknown job or component: an error page, no stream
    skip = int(last_event_id) if last_event_id and last_event_id.isdigit() else (after or 0)
    events = _log_events(service, job_id, lines, skip)
    return StreamingResponse(events, media_type="text/event-stream", headers=STREAM_HEADERS)


async def _log_events(
    service: SchedulerService, job_id: uuid.UUID, lines: AsyncIterator[str], skip: int
) -> AsyncIterator[str]:
    queue: asyncio.Queue[tuple[bool, Any]] = asyncio.Queue(maxsize=4 * LOG_BATCH_LINES)
    pump = asyncio.create_task(_pump(lines, queue))
    drain = asyncio.create_task(_end_on_drain(service, job_id, queue))
    number = 0
    try:
        while True:
            try:
                finished, item = await asyncio.wait_for(queue.get(), KEEPALIVE_SECONDS)
            except TimeoutError:
                yield ": keep-alive\n\n"
                continue
            batch: list[str] = []
            deadline = time.monotonic() + LOG_BATCH_SECONDS
            while not finished:
                number += 1
                if number > skip:
                    batch.append(log_line_html(number, item))
                if len(batch) >= LOG_BATCH_LINES:
                    break
                try:
                    finished, item = await asyncio.wait_for(queue.get(), max(0.0, deadline - time.monotonic()))
                except TimeoutError:
                    break
            if batch:
                yield sse("lines", "".join(batch), str(number))
            if finished:
                if isinstance(item, BaseException):
                    message = item.message if isinstance(item, SchedulerError) else _INTERNAL
                    if not isinstance(item, SchedulerError):
                        log.error("job %s: its log stream failed", job_id, exc_info=item)
                    yield sse("stream-error", str(escape(f"the log stream ended with an error: {message}")))
                elif item is _DRAINED:
                    return  # the server is shutting down: the browser reconnects after the last id it has
                yield sse("end", "", str(number))
                return
    finally:
        for task in (pump, drain):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


async def _end_on_drain(service: SchedulerService, job_id: uuid.UUID, queue: asyncio.Queue[tuple[bool, Any]]) -> None:
    """End a log stream when the server shuts down (`scheduler.serving` drains the change feeds, which ends
    `watch_job` before the job is terminal): a backend's followed log would otherwise hold the shutdown."""
    last: Job | None = None
    async for job in _watch(service, job_id):
        last = job
    if last is None or not last.terminal:
        await queue.put((True, _DRAINED))


# ------------------------------------------------------------------------------------------------ cancel


@router.post("/jobs/{job_id}/cancel", response_class=HTMLResponse)
async def cancel(request: Request, job_id: uuid.UUID, principal: UiWriter) -> Response:
    """Cancel the job (`service.cancel_job`); htmx gets a message for `#flash`, a plain form goes back to the page.

    A finished job (409) is said as a message beside the page rather than an error page: the reader only lost
    a race with the job's end, and the page shows how it ended.
    """
    service = _service(request)
    htmx = request.headers.get("hx-request") == "true"
    try:
        job = await service.cancel_job(job_id, principal)
    except Conflict as exc:
        if not htmx:
            raise
        return render(request, "job_detail/cancel_result.html", {"ok": False, "message": exc.message})
    if not htmx:
        return RedirectResponse(f"{UI_PREFIX}/jobs/{job_id}", status_code=303)
    message = (
        f"Cancel requested: the job is {job.state.value}; the uninstall phase runs, then it ends CANCELLED."
        if job.state is JobState.CANCELLING
        else f"The job is {job.state.value}."
    )
    return render(request, "job_detail/cancel_result.html", {"ok": True, "message": message})
