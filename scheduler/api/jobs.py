"""`/api/v1/jobs`: start, list, inspect and cancel jobs; progress and completion reports; logs.

Job ids in paths are UUIDs: anything else is refused with 422 (the standard error body, never a 500).
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections import OrderedDict
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Annotated, Final

import anyio
from fastapi import APIRouter, Depends, Header, Path, Query, Request, Response, status
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, StringConstraints
from starlette.background import BackgroundTask

from scheduler.api.deps import API_PREFIX, Service
from scheduler.api.errors import ServiceUnavailable, error_responses
from scheduler.api.models import (
    LOG_COMPONENT_PATTERN,
    NAME_MAX,
    NAME_PATTERN,
    CompleteIn,
    JobCreate,
    JobDetail,
    JobOut,
    JobPageOut,
    LogComponentsOut,
    ProgressHistoryOut,
    ProgressIn,
    ProgressSampleOut,
)
from scheduler.auth import AuthFirstRoute, ReadPrincipal, Reporter, WritePrincipal
from scheduler.changes import FeedLagged, Subscription
from scheduler.errors import SchedulerError
from scheduler.jobcache import JobBodyCache
from scheduler.states import JobState, Task
from scheduler.store import DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE, MAX_PROGRESS_POINTS, TEXT_SEARCH_MAX, Job

log = logging.getLogger(__name__)

router = APIRouter(prefix=f"{API_PREFIX}/jobs", tags=["jobs"], route_class=AuthFirstRoute)

IDEMPOTENCY_KEY_PATTERN: Final = r"^[\x21-\x7e]{1,255}$"
CURSOR_PATTERN: Final = r"^[A-Za-z0-9_-]+$"
ID_PREFIX_MIN: Final = 4
"""The shortest job id prefix accepted: fewer digits would match too many jobs to be worth a request."""
ID_PREFIX_PATTERN: Final = r"^[0-9A-Fa-f][0-9A-Fa-f-]*$"

JobIdPath = Annotated[uuid.UUID, Path(description="The job's id (a UUID).")]

KEEP_ALIVE_SECONDS: Final = 15.0
"""How often an idle event stream sends a comment: proxies and load balancers close silent connections."""
RETRY_MILLISECONDS: Final = 3000
"""What the stream tells `EventSource` to wait before it reconnects (the `retry:` field)."""
_FOLLOWED_IDS_KEPT: Final = 10_000
"""Jobs a filtered stream remembers having sent (to send a job once more when it leaves the filter)."""
_SSE_HEADERS: Final = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}

SSE_EVENT_SCHEMA: Final = {
    "type": "object",
    "description": "One server-sent event (OpenAPI 3.1: the schema of a `text/event-stream` is each event's): "
    "`job` (data: the job as JSON), `end` (data: `{id, state}`), `resync` or `error` (data: the error body).",
    "properties": {
        "event": {"type": "string", "enum": ["job", "end", "resync", "error"]},
        "data": {"type": "string", "contentMediaType": "application/json"},
        "retry": {"type": "integer"},
    },
    "required": ["data"],
}
JOBS_STREAM_EXAMPLE: Final = (
    "retry: 3000\n\n"
    'event: job\ndata: {"id": "3f2b6c1e-8f7d-4c52-9d8e-2a1b0c9d8e7f", "pipeline": "digits", "state": "RUNNING", '
    '...}\n\n'
    ": keep-alive\n\n"
)
JOB_STREAM_EXAMPLE: Final = (
    "retry: 3000\n\n"
    'event: job\ndata: {"id": "3f2b6c1e-8f7d-4c52-9d8e-2a1b0c9d8e7f", "state": "RUNNING", "events": [...], ...}\n\n'
    'event: job\ndata: {"id": "3f2b6c1e-8f7d-4c52-9d8e-2a1b0c9d8e7f", "state": "SUCCEEDED", ...}\n\n'
    'event: end\ndata: {"id": "3f2b6c1e-8f7d-4c52-9d8e-2a1b0c9d8e7f", "state": "SUCCEEDED"}\n\n'
)


def detail_body(job: Job) -> bytes:
    """The body of `GET /jobs/{id}` for `job`: what `_json(JobDetail.of(job))` sends."""
    return JobDetail.of(job).model_dump_json(by_alias=True).encode()


async def _job_bodies(request: Request) -> JobBodyCache:
    bodies = getattr(request.app.state, "job_bodies", None)
    if not isinstance(bodies, JobBodyCache):
        raise ServiceUnavailable("the scheduler is starting or stopping: try again shortly", code="not_started")
    return bodies


JobBodies = Annotated[JobBodyCache, Depends(_job_bodies)]


def _json(model: BaseModel, status_code: int = status.HTTP_200_OK) -> Response:
    """`model` as the JSON body FastAPI would send for it, serialised once: a route that returns a `Response`
    is not validated again against its `response_model` (which still declares the body in the OpenAPI)."""
    return Response(model.model_dump_json(by_alias=True), status_code=status_code, media_type="application/json")


@router.post(
    "",
    summary="Start a job",
    description="Create a job of a pipeline version (the latest unless `version` is given) and start it. "
    "Parameters are checked first: a bad request creates nothing. With an `Idempotency-Key`, retrying the "
    "same request returns the same job (200); the key with a different request is a 409. A token over one of "
    "its quotas gets 429 with `Retry-After` (seconds) and the quota, its limit and the usage in the details. "
    "When every running slot is taken (`max_running_jobs`) the job is created PENDING with its "
    "`queue_position`.",
    status_code=status.HTTP_201_CREATED,
    response_model=JobOut,
    responses={
        200: {"model": JobOut, "description": "The Idempotency-Key replayed an earlier request: its job."},
        **error_responses(401, 403, 404, 409, 422, 429, 503),
    },
)
async def create_job(
    body: JobCreate,
    service: Service,
    principal: WritePrincipal,
    idempotency_key: Annotated[
        str | None,
        Header(
            alias="Idempotency-Key",
            pattern=IDEMPOTENCY_KEY_PATTERN,
            description="Makes retries safe: the same key and request return the same job.",
        ),
    ] = None,
) -> Response:
    job, created = await service.create_job(
        body.pipeline, body.version, body.parameters, body.environment, idempotency_key, principal
    )
    return _json(JobOut.of(job), status.HTTP_201_CREATED if created else status.HTTP_200_OK)


@router.get(
    "",
    summary="List jobs",
    description="Newest first, filtered by state, pipeline, id prefix and text, one page at a time. `id_prefix` is "
    "how a short id such as `274541d4` is resolved: no item means no such job, more than one means it is ambiguous. "
    "`q` searches: the jobs whose id starts with it, or whose pipeline name, creator, reason or message contains "
    "it, in any case.",
    response_model=JobPageOut,
    responses=error_responses(401, 403, 422, 503),
)
async def list_jobs(
    service: Service,
    _: ReadPrincipal,
    state: Annotated[JobState | None, Query(description="Only jobs in this state.")] = None,
    pipeline: Annotated[
        str | None, Query(max_length=NAME_MAX, pattern=NAME_PATTERN, description="Only jobs of this pipeline.")
    ] = None,
    cursor: Annotated[
        str | None,
        Query(max_length=512, pattern=CURSOR_PATTERN, description="The `next_cursor` of the previous page."),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE_SIZE, description="Jobs per page.")] = DEFAULT_PAGE_SIZE,
    id_prefix: Annotated[
        str | None,
        Query(
            min_length=ID_PREFIX_MIN,
            max_length=36,
            pattern=ID_PREFIX_PATTERN,
            description=f"Only jobs whose id starts with these hex digits (at least {ID_PREFIX_MIN}; hyphens as in "
            "the id are allowed).",
            examples=["274541d4"],
        ),
    ] = None,
    q: Annotated[
        str | None,
        Query(
            max_length=TEXT_SEARCH_MAX,
            description="Text search: jobs whose id starts with it, or whose pipeline name, creator (token name), "
            "reason or message contains it; case-insensitive; blank is no filter.",
            examples=["timeout"],
        ),
    ] = None,
) -> Response:
    page = await service.list_jobs(state=state, pipeline=pipeline, cursor=cursor, limit=limit, id_prefix=id_prefix, q=q)
    return _json(JobPageOut(items=[JobOut.of(job) for job in page.items], next_cursor=page.next_cursor))


@router.get(
    "/events",
    summary="Follow job changes (server-sent events)",
    description="A `text/event-stream` of the jobs that change from now on: created, a state or task change, a "
    "progress report, a completion, an event. Each change is an `event: job` whose `data` is the job as `GET "
    "/jobs` lists it (one line of JSON); a burst of changes to one job sends its newest state once. With `state` "
    "and `pipeline`, only the jobs that match, and once more a job that matched and no longer does (its new "
    "state: a filtered list can drop it). A `: keep-alive` comment comes every 15 s. A client that reads too "
    "slowly gets `event: resync` and the stream ends: load the list again and reconnect. The stream ends when "
    "the server stops. Authenticated like every read (the session cookie works, so `EventSource` can open it).",
    response_class=StreamingResponse,
    responses={
        200: {
            "description": "The stream of job changes.",
            "content": {"text/event-stream": {"schema": SSE_EVENT_SCHEMA, "example": JOBS_STREAM_EXAMPLE}},
        },
        **error_responses(401, 403, 422, 503),
    },
)
async def job_events(
    service: Service,
    _: ReadPrincipal,
    state: Annotated[JobState | None, Query(description="Only jobs in this state (and those leaving it).")] = None,
    pipeline: Annotated[
        str | None, Query(max_length=NAME_MAX, pattern=NAME_PATTERN, description="Only jobs of this pipeline.")
    ] = None,
) -> StreamingResponse:
    batches = await service.follow_jobs()  # subscribed before the answer starts: nothing after it is missed
    return _event_stream(_job_frames(batches, state, pipeline), batches)


@router.get(
    "/{job_id}",
    summary="Get a job",
    description="State, current task, reason and message, timestamps, progress, completion, the backend's "
    "reference to the run, and every event.",
    response_model=JobDetail,
    responses=error_responses(401, 403, 404, 422, 503),
)
async def get_job(job_id: JobIdPath, bodies: JobBodies, _: ReadPrincipal) -> Response:
    # Served from the body serialised once per state of the job (scheduler.jobcache), checked per request.
    return Response(await bodies.body(job_id), media_type="application/json")


@router.post(
    "/{job_id}/cancel",
    summary="Cancel a job",
    description="Moves the job to CANCELLING; the backend stops it, runs uninstall and ends it CANCELLED. "
    "Cancelling a job that is already CANCELLING returns it unchanged; a finished job is a 409.",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=JobOut,
    responses=error_responses(401, 403, 404, 409, 422, 503),
)
async def cancel_job(job_id: JobIdPath, service: Service, principal: WritePrincipal) -> Response:
    return _json(JobOut.of(await service.cancel_job(job_id, principal)), status.HTTP_202_ACCEPTED)


@router.post(
    "/{job_id}/progress",
    summary="Report progress",
    description="For the scoring flows: record counters as totals so far; a flow that names itself (`flow`) also "
    "gives its state, its source's size when known, its rate, its outputs and what it saw of its scoring services, "
    "which `GET /jobs/{id}` shows under `progress.flows`. Authenticated with the job's own token "
    "(`Bearer mjt_...`) or an API token with the write scope.",
    response_model=JobOut,
    responses=error_responses(401, 403, 404, 422, 503),
)
async def report_progress(job_id: JobIdPath, body: ProgressIn, service: Service, credential: Reporter) -> Response:
    report = body.flow_report() if body.flow is not None else None
    job = await service.report_progress(
        job_id, credential, body.read, body.written, body.failed, flow=body.flow, report=report
    )
    return _json(JobOut.of(job))


@router.post(
    "/{job_id}/complete",
    summary="Report completion",
    description="For the scoring flows: the work is done (a batch source is exhausted), well or not. Each flow "
    "reports for itself (`flow`): the wait phase ends once every flow of the pipeline succeeded, or at the first "
    "failure, and uninstall follows; a report without `flow` speaks for all the flows. Once the job's completion "
    "is known, later reports change nothing. Authenticated like progress reports.",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=JobOut,
    responses=error_responses(401, 403, 404, 409, 422, 503),
)
async def complete_job(job_id: JobIdPath, body: CompleteIn, service: Service, credential: Reporter) -> Response:
    return _json(
        JobOut.of(await service.complete_job(
            job_id, credential, body.succeeded, body.message, body.flow, body.reason
        )),
        status.HTTP_202_ACCEPTED,
    )


@router.get(
    "/{job_id}/events",
    summary="Follow one job (server-sent events)",
    description="A `text/event-stream`: an `event: job` whose `data` is the job as `GET /jobs/{id}` returns it "
    "(one line of JSON, events included) at once, then again each time it changes (state, task, progress, "
    "completion, an event). Once the job is in a terminal state, `event: end` (data: its id and state) and the "
    "stream closes: a client reconnecting after that gets the final job and `end` at once. A `: keep-alive` "
    "comment comes every 15 s. Authenticated like every read (the session cookie works for `EventSource`).",
    response_class=StreamingResponse,
    responses={
        200: {
            "description": "The stream of the job's states.",
            "content": {"text/event-stream": {"schema": SSE_EVENT_SCHEMA, "example": JOB_STREAM_EXAMPLE}},
        },
        **error_responses(401, 403, 404, 422, 503),
    },
)
async def one_job_events(job_id: JobIdPath, service: Service, _: ReadPrincipal) -> StreamingResponse:
    states = service.watch_job(job_id)
    try:
        first = await anext(states)  # an unknown job is a 404 here, before the stream starts
    except BaseException:
        await states.aclose()
        raise
    return _event_stream(_one_job_frames(first, states), states)


@router.get(
    "/{job_id}/progress/history",
    summary="Get a job's progress over time",
    description="The job's counters as its progress reports left them, oldest first (at most about two samples a "
    "second are kept), thinned evenly to at most `points` samples, the first and the last always included: what "
    "a chart of rows/s over time and an ETA need. A job without progress reports has no samples.",
    response_model=ProgressHistoryOut,
    responses=error_responses(401, 403, 404, 422, 503),
)
async def progress_history(
    job_id: JobIdPath,
    service: Service,
    _: ReadPrincipal,
    points: Annotated[
        int, Query(ge=2, le=MAX_PROGRESS_POINTS, description="The most samples to return (evenly thinned).")
    ] = 300,
) -> Response:
    samples = await service.progress_history(job_id, points=points)
    return _json(ProgressHistoryOut(samples=[ProgressSampleOut.of(sample) for sample in samples]))


@router.get(
    "/{job_id}/logs",
    summary="Read a job's logs",
    description="Plain text, like `tkn pipelinerun logs`: the lines of every log component of the job (its "
    "phases install, wait and uninstall, each scoring service and each scoring flow), interleaved by the "
    "timestamp each line starts with, each prefixed with `[component]`. `component` (repeatable) selects some: "
    "`install`, `service/<name>`, `flow/<name>`, or a bare service or flow name; `GET .../logs/components` lists "
    "them. With `follow`, the response streams new lines as they are written until the job has ended.",
    response_class=StreamingResponse,
    responses={
        200: {
            "content": {
                "text/plain": {
                    "schema": {"type": "string"},
                    "example": "[install] 2026-12-03T13:55:01.123Z job 2b1e...: rendering values\n"
                    "[service/digits] 2026-12-03T13:55:02.480Z INFO scoring_services: model digits loaded\n",
                }
            }
        },
        **error_responses(401, 403, 404, 422, 503),
    },
)
async def job_logs(
    job_id: JobIdPath,
    service: Service,
    _: ReadPrincipal,
    component: Annotated[
        list[Annotated[str, StringConstraints(max_length=NAME_MAX + 8, pattern=LOG_COMPONENT_PATTERN)]] | None,
        Query(description="Only these components (repeatable); all when omitted and no `task` is given."),
    ] = None,
    task: Annotated[
        Task | None, Query(description="Only this phase's log (the same as `component=<task>`; kept for old clients).")
    ] = None,
    follow: Annotated[bool, Query(description="Keep streaming new lines until the job has ended.")] = False,
) -> StreamingResponse:
    wanted = [*(component or []), *([task.value] if task is not None else [])]
    lines = await service.logs(job_id, wanted or None, follow)
    return StreamingResponse(
        _guarded(job_id, lines), media_type="text/plain; charset=utf-8", headers={"Cache-Control": "no-cache"}
    )


@router.get(
    "/{job_id}/logs/components",
    summary="List a job's log components",
    description="The names `GET /jobs/{id}/logs?component=` takes: the phases, then `service/<name>` and "
    "`flow/<name>` for the scoring services and flows of the job's pipeline version.",
    response_model=LogComponentsOut,
    responses=error_responses(401, 403, 404, 422, 503),
)
async def job_log_components(job_id: JobIdPath, service: Service, _: ReadPrincipal) -> Response:
    return _json(LogComponentsOut(components=await service.log_components(job_id)))


# -- server-sent events ---------------------------------------------------------------------------------------

def _frame(event: str, data: str) -> bytes:
    """One server-sent event; `data` is one line (JSON as pydantic writes it escapes newlines)."""
    return f"event: {event}\ndata: {data}\n\n".encode()


def _event_stream(
    frames: AsyncIterator[bytes], source: Subscription | AsyncGenerator[Job, None]
) -> StreamingResponse:
    """The SSE response; `source` is closed when the response ends, also one whose body was never read (the
    client left before the first byte)."""
    response = StreamingResponse(_with_keep_alive(frames), media_type="text/event-stream", headers=_SSE_HEADERS)
    response.background = BackgroundTask(source.aclose)
    return response


async def _with_keep_alive(frames: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """`frames`, after the `retry:` field, with a keep-alive comment whenever none came for `KEEP_ALIVE_SECONDS`;
    `frames` is closed however the stream ends (the client left, the server stops)."""
    pending: asyncio.Future[bytes] | None = None
    try:
        yield f"retry: {RETRY_MILLISECONDS}\n\n".encode()
        while True:
            if pending is None:
                pending = asyncio.ensure_future(anext(frames))
            done, _ = await asyncio.wait({pending}, timeout=KEEP_ALIVE_SECONDS)
            if not done:
                yield b": keep-alive\n\n"
                continue
            finished, pending = pending, None
            try:
                frame = finished.result()
            except StopAsyncIteration:
                return
            yield frame
    finally:
        with anyio.CancelScope(shield=True):  # the client left: the stream's task is being cancelled
            if pending is not None:
                pending.cancel()
                await asyncio.gather(pending, return_exceptions=True)
            close = getattr(frames, "aclose", None)
            if close is not None:
                await close()


def _error_frame(exc: SchedulerError) -> bytes:
    body = {"error": {"code": exc.code, "message": exc.message, "details": exc.details}}
    return _frame("error", json.dumps(body, default=str, separators=(",", ":")))


async def _job_frames(
    batches: Subscription, state: JobState | None, pipeline: str | None
) -> AsyncIterator[bytes]:
    followed: OrderedDict[uuid.UUID, None] = OrderedDict()
    filtered = state is not None or pipeline is not None
    try:
        async for batch in batches:
            for job in batch:
                matches = (state is None or job.state is state) and (pipeline is None or job.pipeline == pipeline)
                if filtered:
                    if not matches and job.id not in followed:
                        continue
                    if matches:
                        followed[job.id] = None
                        followed.move_to_end(job.id)
                        while len(followed) > _FOLLOWED_IDS_KEPT:
                            followed.popitem(last=False)
                    else:
                        del followed[job.id]  # sent once more, as it leaves the filter
                yield _frame("job", JobOut.of(job).model_dump_json(by_alias=True))
    except FeedLagged:
        yield _frame("resync", "{}")
    except SchedulerError as exc:
        yield _error_frame(exc)
    finally:
        await batches.aclose()


async def _one_job_frames(first: Job, states: AsyncGenerator[Job, None]) -> AsyncIterator[bytes]:
    job = first
    try:
        yield _frame("job", JobDetail.of(job).model_dump_json(by_alias=True))
        async for job in states:
            yield _frame("job", JobDetail.of(job).model_dump_json(by_alias=True))
        if job.terminal:
            yield _frame("end", json.dumps({"id": str(job.id), "state": job.state.value}))
    except SchedulerError as exc:
        yield _error_frame(exc)
    finally:
        await states.aclose()


async def _guarded(job_id: uuid.UUID, lines: AsyncIterator[str]) -> AsyncIterator[bytes]:
    """The lines as UTF-8; once the status line is sent an error can only end the text, so it says why."""
    try:
        async for line in lines:
            yield line.encode("utf-8", errors="replace")
    except SchedulerError as exc:
        yield f"[modelops] the log stream ended with an error: {exc.message}\n".encode(errors="replace")
    except Exception:
        log.exception("job %s: reading its logs failed", job_id)
        yield b"[modelops] the log stream ended with an internal error (see the server log)\n"
