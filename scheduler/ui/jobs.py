"""The UI's Jobs list: `/ui/jobs` (filters, text search and cursor pages, all in the URL) and its live stream.

The page is a GET form over `SchedulerService.list_jobs` (one query of 51 rows, plus the pipeline names for the
filter), so it works without JavaScript and a reload or a shared URL keeps its filters and page. htmx enhances
it: the form and the pager fetch only the results fragment (`#jobs-results`) and push the canonical URL.

Live updates come by server push, never by polling the rows: the fragment opens ONE server-sent event stream,
`/ui/jobs/stream?<the same filters>`, fed by `SchedulerService.watch_jobs()` (one shared poll of the change index
per process). For each changed job on the visible page it sends `event: job-<id>` with the re-rendered
`<tr id="job-<id>">` (the row swaps itself: `sse-swap="job-<id>"`). On the first page a job created after the page
was listed that matches the filters is inserted at the top (`event: new-job`) and counted in a polite live region
(`event: new-count`): the newest jobs are what the first page is for, and a "show N new" button would only add a
click; later pages are left alone (their cursor stays valid: new jobs sort before them). A row whose job no
longer matches the filter (a RUNNING job that ended, under `state=RUNNING`) is updated in place, not removed:
rows never vanish under the reader's eyes; a reload lists the filter anew. A subscriber that fell too far behind
(`FeedLagged`) gets `event: stale`, on which the page fetches its results again.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Annotated, Final, Generic, TypeVar
from urllib.parse import urlencode

import anyio
from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse, StreamingResponse
from markupsafe import escape

from scheduler.api.deps import Service
from scheduler.changes import FeedLagged
from scheduler.errors import InvalidInput
from scheduler.service import SchedulerService
from scheduler.states import JobState
from scheduler.store import TEXT_SEARCH_MAX, Job, job_matches_text
from scheduler.ui.deps import UI_PREFIX, UiReader
from scheduler.ui.templating import TEMPLATES, render

__all__ = ["PAGE_SIZE", "JobFilters", "router"]

router = APIRouter(prefix=UI_PREFIX)

PAGE_SIZE: Final = 50
BACK_MAX: Final = 50
"""How many previous pages the URL remembers for "Previous" (older ones fall off; "Newest" always works)."""
KEEPALIVE_SECONDS: Final = 15.0
"""A comment line this often keeps proxies from closing an idle stream."""
PIPELINE_NAME_MAX: Final = 63
CURSOR_MAX: Final = 512
RESULTS_ID: Final = "jobs-results"
EMPTY_PAGE_MARGIN: Final = timedelta(seconds=30)
"""On an empty first page, jobs created this long before its stream connected still count as new."""
_MIN_ID: Final = uuid.UUID(int=0)

T = TypeVar("T")


@dataclass(frozen=True)
class JobFilters:
    """What the list shows: the URL's query, blanks already dropped. `back` holds the cursors of the previous
    pages, oldest first ('' is the first page)."""

    state: JobState | None = None
    pipeline: str | None = None
    q: str | None = None
    cursor: str | None = None
    back: tuple[str, ...] = ()

    @classmethod
    def parse(
        cls, state: str | None, pipeline: str | None, q: str | None, cursor: str | None, back: Sequence[str] = ()
    ) -> JobFilters:
        """The filters of a request, refusing (422 page) what the list cannot take."""
        found_state: JobState | None = None
        if state and state.strip():
            try:
                found_state = JobState(state.strip().upper())
            except ValueError:
                raise InvalidInput(
                    f"unknown job state {state!r}", details={"allowed": [s.value for s in JobState]}
                ) from None
        text = q.strip() if q else ""
        if len(text) > TEXT_SEARCH_MAX:
            raise InvalidInput(f"the search text is longer than {TEXT_SEARCH_MAX} characters")
        name = pipeline.strip() if pipeline else ""
        if len(name) > PIPELINE_NAME_MAX:
            raise InvalidInput(f"not a pipeline name: {name[:80]!r}")
        cursors = [c for c in (cursor, *back) if c]
        if any(len(c) > CURSOR_MAX for c in cursors):
            raise InvalidInput("invalid cursor: use the page's Next and Previous links", code="invalid_cursor")
        return cls(found_state, name or None, text or None, cursor or None, tuple(back)[-BACK_MAX:])

    def params(self, *, cursor: str | None = None, back: Sequence[str] = ()) -> list[tuple[str, str]]:
        """The query parameters of this filter at another page (no cursor: the first page)."""
        pairs: list[tuple[str, str]] = []
        if self.state is not None:
            pairs.append(("state", self.state.value))
        if self.pipeline is not None:
            pairs.append(("pipeline", self.pipeline))
        if self.q is not None:
            pairs.append(("q", self.q))
        if cursor:
            pairs.append(("cursor", cursor))
            pairs.extend(("back", c) for c in back)
        return pairs

    def url(self, *, cursor: str | None = None, back: Sequence[str] = ()) -> str:
        query = urlencode(self.params(cursor=cursor, back=back))
        return f"{UI_PREFIX}/jobs" + (f"?{query}" if query else "")

    @property
    def here(self) -> str:
        """The canonical URL of what is shown (what htmx pushes into the address bar)."""
        return self.url(cursor=self.cursor, back=self.back)

    @property
    def stream_url(self) -> str:
        query = urlencode(self.params(cursor=self.cursor))
        return f"{UI_PREFIX}/jobs/stream" + (f"?{query}" if query else "")

    @property
    def filtered(self) -> bool:
        return self.state is not None or self.pipeline is not None or self.q is not None

    def matches(self, job: Job) -> bool:
        """Whether `job` belongs in this list (what `list_jobs` would decide, for jobs the feed delivers)."""
        if self.state is not None and job.state is not self.state:
            return False
        if self.pipeline is not None and job.pipeline != self.pipeline:
            return False
        return self.q is None or job_matches_text(job, self.q)

    def empty_message(self) -> str:
        """What an empty page says, naming the filters."""
        if self.cursor is not None:
            return "No more jobs."
        if not self.filtered:
            return "No jobs yet. Deploy a pipeline, then start a job from its page."
        what = "No jobs"
        if self.state is not None:
            what = f"No {self.state.value} jobs"
        if self.pipeline is not None:
            what += f" of pipeline {self.pipeline}"
        if self.q is not None:
            what += f" matching \u201c{self.q}\u201d"
        return what + "."


@dataclass(frozen=True)
class Pager:
    """The links under the table; None where there is no such page."""

    page: int
    newest: str | None
    previous: str | None
    next: str | None


def _pager(filters: JobFilters, next_cursor: str | None) -> Pager:
    newest = filters.url() if filters.cursor is not None else None
    previous: str | None = None
    if filters.cursor is not None:
        before = filters.back[:-1]
        previous = filters.url(cursor=filters.back[-1], back=before) if filters.back else filters.url()
    following = None
    if next_cursor is not None:
        following = filters.url(cursor=next_cursor, back=(*filters.back, filters.cursor or "")[-BACK_MAX:])
    return Pager(len(filters.back) + 1 if filters.cursor else 1, newest, previous, following)


def _filters(
    state: str | None, pipeline: str | None, q: str | None, cursor: str | None, back: list[str] | None
) -> JobFilters:
    return JobFilters.parse(state, pipeline, q, cursor, back or ())


StateQuery = Annotated[str | None, Query(max_length=32)]
PipelineQuery = Annotated[str | None, Query(max_length=PIPELINE_NAME_MAX)]
TextQuery = Annotated[str | None, Query(max_length=TEXT_SEARCH_MAX)]
CursorQuery = Annotated[str | None, Query(max_length=CURSOR_MAX)]
BackQuery = Annotated[list[str] | None, Query(max_length=CURSOR_MAX)]


def _is_fragment_request(request: Request) -> bool:
    """htmx asking for the results only (the filter form, the pager); a history restore wants the whole page."""
    headers = request.headers
    return (
        headers.get("hx-request") == "true"
        and headers.get("hx-target") == RESULTS_ID
        and headers.get("hx-history-restore-request") != "true"
    )


@router.get("/jobs", response_class=HTMLResponse)
async def jobs_page(
    request: Request,
    service: Service,
    principal: UiReader,
    state: StateQuery = None,
    pipeline: PipelineQuery = None,
    q: TextQuery = None,
    cursor: CursorQuery = None,
    back: BackQuery = None,
) -> HTMLResponse:
    """The jobs, newest first, 50 a page, filtered by state, pipeline and text."""
    filters = _filters(state, pipeline, q, cursor, back)
    page = await service.list_jobs(
        state=filters.state, pipeline=filters.pipeline, q=filters.q, cursor=filters.cursor, limit=PAGE_SIZE
    )
    context = {
        "nav": "jobs",
        "filters": filters,
        "jobs": page.items,
        "pager": _pager(filters, page.next_cursor),
        "states": [s.value for s in JobState],
        "now": _now(),
    }
    if _is_fragment_request(request):
        answer = render(request, "jobs/_results.html", context)
        answer.headers["HX-Push-Url"] = filters.here
    else:
        pipelines = await service.list_pipelines()
        names = sorted(p.name for p in pipelines)
        if filters.pipeline is not None and filters.pipeline not in names:
            names.append(filters.pipeline)  # a deleted or mistyped name stays selectable, so the filter shows
        answer = render(request, "jobs/list.html", {**context, "pipelines": names})
    answer.headers["Vary"] = "HX-Request, HX-Target"
    answer.headers["Cache-Control"] = "no-store"
    return answer


# ---------------------------------------------------------------------------------------------- the stream


def _now() -> datetime:
    return datetime.now(UTC)


def render_row(job: Job, now: datetime | None = None) -> str:
    """The `<tr id="job-<id>">` of `job`, as the table and the stream show it (autoescaped)."""
    return TEMPLATES.get_template("jobs/_row.html").render(job=job, now=now or _now())


def sse_event(name: str, data: str) -> str:
    """One server-sent event: `data` split into `data:` lines (an HTML fragment spans several)."""
    lines = data.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    return f"event: {name}\n" + "".join(f"data: {line}\n" for line in lines) + "\n"


class KeepAlive(Generic[T]):
    """The items of `source`, and None whenever `seconds` pass without one (the caller writes a keep-alive).

    The source's first step starts at once (a change feed subscribes on it), before the caller does anything
    else. A pending step is never cancelled by the timer (that would finish an async generator): it is one
    task, awaited again after each keep-alive, and cancelled only by `aclose`, which also closes the source.
    """

    def __init__(self, source: AsyncIterator[T], seconds: float) -> None:
        self._source = source
        self._seconds = seconds
        self._pending: asyncio.Future[T] | None = asyncio.ensure_future(anext(source))

    def __aiter__(self) -> KeepAlive[T]:
        return self

    async def __anext__(self) -> T | None:
        if self._pending is None:
            self._pending = asyncio.ensure_future(anext(self._source))
        done, _ = await asyncio.wait({self._pending}, timeout=self._seconds)
        if not done:
            return None
        step, self._pending = self._pending, None
        return step.result()  # StopAsyncIteration of the source ends this iterator too

    async def aclose(self) -> None:
        with anyio.CancelScope(shield=True):  # also when the stream was cancelled (the client went away)
            step, self._pending = self._pending, None
            if step is not None and not step.done():
                step.cancel()
                with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration):
                    await step
            closer = getattr(self._source, "aclose", None)
            if closer is not None:
                await closer()


@dataclass
class _Shown:
    """What the browser shows: the ids on the page, and (first page) the newest listed job's sort key."""

    ids: set[uuid.UUID]
    first_page: bool
    top: tuple[datetime, uuid.UUID]
    new: int = 0

    def is_new(self, job: Job) -> bool:
        return self.first_page and (job.created_at, job.id) > self.top


async def job_list_events(service: SchedulerService, filters: JobFilters) -> AsyncIterator[str]:
    """The stream of the page listed with `filters`: row updates, new jobs on the first page, keep-alives."""
    # subscribed before the page is listed: every change committed after the listing is in a batch
    changes = KeepAlive(await service.follow_jobs(), KEEPALIVE_SECONDS)
    try:
        page = await service.list_jobs(
            state=filters.state, pipeline=filters.pipeline, q=filters.q, cursor=filters.cursor, limit=PAGE_SIZE
        )
        # New is what sorts before the newest listed job; on an empty page, what was created since just before
        # the page was served (the browser connects within moments): an old job that changes into the filter
        # (a state filter) is not news, the next reload lists it.
        top = (page.items[0].created_at, page.items[0].id) if page.items else (_now() - EMPTY_PAGE_MARGIN, _MIN_ID)
        shown = _Shown({job.id for job in page.items}, filters.cursor is None, top)
        yield "retry: 3000\n: connected\n\n"
        while True:
            try:
                batch = await anext(changes)
            except StopAsyncIteration:
                return  # the server is stopping: the browser reconnects (retry) to the next one
            except FeedLagged:
                yield sse_event("stale", "")  # too far behind to patch rows: the page reloads its results
                return
            if batch is None:
                yield ": keep-alive\n\n"
                continue
            now = _now()
            for job in sorted(batch, key=lambda j: (j.created_at, j.id)):
                if job.id in shown.ids:
                    yield sse_event(f"job-{job.id}", render_row(job, now))
                elif shown.is_new(job) and filters.matches(job):
                    shown.ids.add(job.id)
                    shown.new += 1
                    yield sse_event("new-job", render_row(job, now))
                    count = f"{shown.new} new job{'s' if shown.new != 1 else ''} since this page was loaded."
                    yield sse_event("new-count", str(escape(count)))
    finally:
        await changes.aclose()


@router.get("/jobs/stream")
async def jobs_stream(
    service: Service,
    principal: UiReader,
    state: StateQuery = None,
    pipeline: PipelineQuery = None,
    q: TextQuery = None,
    cursor: CursorQuery = None,
) -> StreamingResponse:
    """Server-sent events for the Jobs page (see the module docstring)."""
    filters = replace(_filters(state, pipeline, q, cursor, None), back=())
    return StreamingResponse(
        job_list_events(service, filters),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
