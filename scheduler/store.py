"""`JobStore`: every read and write of scheduler data, each operation one short database transaction.

The API (through the service layer), the lifecycle engine and the reconciler call this class and nothing
below it. It returns frozen dataclasses, never live ORM objects, so callers never hold a session, never
trigger lazy loads from another thread, and can pass results across threads freely.

Concurrency rules, which make the operations safe with several server threads or processes:

- A job's state only changes in `transition`, which locks the job row first (`SELECT ... FOR UPDATE` on
  PostgreSQL; `BEGIN IMMEDIATE` on SQLite, which takes the database write lock up front), re-reads the state,
  checks it against `scheduler.states.ALLOWED`, applies it and appends the `job_events` row in the same
  transaction. Two racing callers are serialised: the second sees the first one's result and, if its change is
  no longer allowed, gets `IllegalTransition` with nothing changed. Pessimistic locking was chosen over a
  version column because the loser then gets a meaningful answer (the real current state) rather than a retry.
- New versions of one pipeline are numbered under a lock on the pipeline row. Creating a pipeline, or a job
  with an idempotency key, relies on unique constraints: the loser of a race hits `IntegrityError`, rolls
  back, and finds the winner's row.

Database failures (server down, connection lost, SQLite file unreachable, lock wait exhausted) surface as
`StoreUnavailable` (HTTP 503) with the driver's exception chained; unknown ids and names as `NotFound`.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import re
import threading
import uuid
from collections import OrderedDict
from collections.abc import Callable, Collection, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Final, cast

from sqlalchemy import ColumnElement, Select, String, Table, and_, bindparam, func, insert, or_, select, update
from sqlalchemy.engine import Connection, Engine, RowMapping
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.orm import Session, defer

from scheduler.db.models import JobEventRow, JobProgressSampleRow, JobRow, PipelineRow, PipelineVersionRow
from scheduler.db.session import SQLITE_BEGIN_OPTION, make_sessionmaker
from scheduler.errors import Conflict, InvalidInput, NotFound, QuotaExceeded, StoreUnavailable
from scheduler.states import TERMINAL, JobState, Task, check_transition

__all__ = [
    "DEFAULT_PAGE_SIZE",
    "ENGINE_CHANNEL",
    "MAX_PAGE_SIZE",
    "MAX_PROGRESS_POINTS",
    "TEXT_SEARCH_MAX",
    "Job",
    "JobEvent",
    "JobPage",
    "JobStamp",
    "JobStore",
    "Pipeline",
    "PipelineVersion",
    "ProgressSample",
    "Quota",
    "TokenUsage",
    "VersionInfo",
    "job_matches_text",
]

log = logging.getLogger(__name__)

DEFAULT_PAGE_SIZE: Final = 50
MAX_PAGE_SIZE: Final = 500
MAX_REPORTING_FLOWS: Final = 64
"""A job keeps the progress of at most this many flows: a bound on what reports can make the row hold."""

# Attempts before a race on a unique constraint is reported as a conflict. Versions of one pipeline are
# numbered under a row lock, so only the creation of a new pipeline races, and one retry settles it (the retry
# finds the winner's committed row); the spare attempts are a safety margin.
_RACE_ATTEMPTS: Final = 5

_SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")
_PIPELINE_NAME_MAX = 253
_IDEMPOTENCY_KEY_MAX = 255
_BACKEND_MAX = 32
_REASON_MAX = 64
_TASK_ORDER: Final = {Task.INSTALL: 0, Task.WAIT: 1, Task.UNINSTALL: 2}
QUOTA_RETRY_SECONDS: Final = 30
"""`Retry-After` of a start refused by the concurrent-jobs quota: when a slot frees is not knowable, and a job
rarely ends sooner than this (its install alone takes seconds)."""
PROGRESS_SAMPLE_SECONDS: Final = 0.5
"""A job's progress is sampled (`job_progress_samples`) at most this often per store: reports come every 0.5-1 s
per flow, and a chart of rows/s needs no more."""
MAX_PROGRESS_POINTS: Final = 5000
"""The most samples `progress_samples` returns (each is thinned to at most what is asked)."""
_SAMPLED_JOBS_KEPT: Final = 10_000
"""Jobs whose last sample time a store remembers (the oldest forgotten first): a bound on that memory."""
CHANGE_KEYS_PAGE: Final = 5000
"""`job_changes_since` reads at most this many (id, updated_at) keys per call."""
_VERSION_CACHE_SIZE: Final = 256
"""Pipeline versions (with their IR) kept in memory per store: versions are immutable once stored."""

CREATED_REASON: Final = "Created"
"""The reason recorded on the event that creates a job (`from_state` None, `to_state` PENDING)."""
_PHASE_STATUSES: Final = frozenset({"started", "succeeded", "failed"})
"""What `record_phase` accepts as a task's status."""
_INSTALLING_REASON: Final = "Installing"
_READY_REASON: Final = "Ready"
"""The reasons of PENDING -> INSTALLING and INSTALLING -> RUNNING (as `scheduler.lifecycle` records them)."""


# ---------------------------------------------------------------------------------------------------------
# What the store returns


@dataclass(frozen=True)
class VersionInfo:
    """A pipeline version without its IR document (for listings)."""

    id: int
    number: int
    digest: str
    created_at: datetime
    created_by: str | None
    jobs: int = 0
    """How many jobs ran (or run) this version."""


@dataclass(frozen=True)
class PipelineVersion:
    """One stored, immutable IR document of a pipeline."""

    id: int
    pipeline: str
    number: int
    digest: str
    ir: dict[str, Any]
    created_at: datetime
    created_by: str | None


@dataclass(frozen=True)
class Pipeline:
    """A pipeline and its versions, oldest first (IR documents not included)."""

    name: str
    created_at: datetime
    versions: tuple[VersionInfo, ...]

    @property
    def latest(self) -> VersionInfo:
        """The newest version (a pipeline exists only once it has one)."""
        return self.versions[-1]

    @property
    def jobs(self) -> int:
        """How many jobs ran (or run) any version of this pipeline."""
        return sum(version.jobs for version in self.versions)


@dataclass(frozen=True)
class JobEvent:
    """One entry in a job's history: a state change, or a task change (then `from_state == to_state`), or an
    event of the run with neither (`add_event`: e.g. `ServiceRestarted`)."""

    id: int
    at: datetime
    from_state: JobState | None
    to_state: JobState
    task: Task | None
    reason: str | None
    message: str | None


@dataclass(frozen=True)
class Job:
    """A job as stored. `events` is None unless the call says it loads them (`get_job`)."""

    id: uuid.UUID
    pipeline: str
    pipeline_version: int
    pipeline_version_id: int
    state: JobState
    task: Task | None
    parameters: dict[str, Any]
    environment: dict[str, Any]
    backend: str
    backend_ref: dict[str, Any] | None
    idempotency_key: str | None
    token_hash: str
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    reason: str | None
    message: str | None
    records_read: int
    records_written: int
    records_failed: int
    completion: str | None = None
    """`succeeded` or `failed` once the scoring flows reported the end of their work; None before."""
    completion_message: str | None = None
    flow_completions: dict[str, Any] | None = None
    """Per-flow reports so far, `{flow: {"succeeded": bool, "message": str | None}}` (None: none, or the flows
    reported as a whole)."""
    flow_progress: dict[str, Any] | None = None
    """The latest progress report of each flow that reports by name (see `JobStore.update_progress`)."""
    admitted_at: datetime | None = None
    """When admission let the job start (`scheduler.admission`); None while it is queued (or never was)."""
    created_by: str | None = None
    """The name of the API token (or the open-mode local user) that created the job."""
    updated_at: datetime | None = None
    """When the job's row last changed (any store write); strictly increasing per job: what the change feed
    (`scheduler.changes`) compares."""
    queue_position: int | None = field(default=None, compare=False)
    """1 for the next job admission starts, 2 for the one after, ...: only for a queued job (PENDING, not yet
    admitted), and only as `get_job` and `list_jobs` return it; None otherwise. A view of the queue when read, so
    not part of a job's equality."""
    events: tuple[JobEvent, ...] | None = None

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL


@dataclass(frozen=True)
class JobStamp:
    """What says whether a job changed: its `updated_at` (strictly increasing with every write) and whether its
    body depends on other jobs (a queued job's `queue_position`). See `scheduler.jobcache`."""

    updated_at: datetime
    state: JobState
    admitted: bool

    @property
    def cacheable(self) -> bool:
        """False for a queued job (PENDING, not admitted): its queue position moves while its row does not."""
        return self.state is not JobState.PENDING or self.admitted


@dataclass(frozen=True)
class Quota:
    """What one API token may have at once (`max_concurrent_jobs`: jobs not yet finished, queued ones included)
    and per UTC day (`max_rows_per_day`: rows written by its jobs created that day); None: no limit."""

    max_concurrent_jobs: int | None = None
    max_rows_per_day: int | None = None


@dataclass(frozen=True)
class TokenUsage:
    """What one creator (an API token's name) uses now: unfinished jobs, and rows written by its jobs created
    since the start of the current UTC day."""

    name: str
    active_jobs: int
    rows_today: int


@dataclass(frozen=True)
class ProgressSample:
    """The job's counters at `at`, as a progress report left them (`JobStore.progress_samples`)."""

    at: datetime
    read: int
    written: int
    failed: int


@dataclass(frozen=True)
class JobPage:
    """One page of `list_jobs`, newest first; pass `next_cursor` back to get the next page (None: no more)."""

    items: tuple[Job, ...]
    next_cursor: str | None


# ---------------------------------------------------------------------------------------------------------
# Input checks


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _check_sha256(value: str, what: str) -> str:
    if not isinstance(value, str) or not _SHA256_HEX.match(value):
        raise InvalidInput(f"{what} must be a lowercase SHA-256 hex digest (64 characters)", details={what: value})
    return value


def _check_text(value: str | None, what: str, max_length: int, *, required: bool = False) -> str | None:
    if value is None:
        if required:
            raise InvalidInput(f"{what} is required")
        return None
    if not isinstance(value, str) or (required and not value.strip()) or len(value) > max_length:
        raise InvalidInput(f"{what} must be a non-empty string of at most {max_length} characters")
    return value


def _json_document(value: Mapping[str, Any] | None, what: str) -> dict[str, Any]:
    """A detached, JSON-clean copy of `value`: what the database will store, byte for byte."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise InvalidInput(f"{what} must be a JSON object")
    try:
        copied = json.loads(json.dumps(value, allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise InvalidInput(f"{what} is not JSON-serialisable: {exc}") from exc
    if not isinstance(copied, dict):  # pragma: no cover - a Mapping always serialises to an object
        raise InvalidInput(f"{what} must be a JSON object")
    return copied


def _parse_job_id(job_id: uuid.UUID | str) -> uuid.UUID:
    if isinstance(job_id, uuid.UUID):
        return job_id
    try:
        return uuid.UUID(str(job_id))
    except ValueError:
        raise NotFound(f"no job {job_id!r}", code="job_not_found", details={"job_id": str(job_id)}) from None


def _id_range(prefix: str) -> tuple[uuid.UUID, uuid.UUID]:
    """The lowest and highest ids that start with `prefix`: a range both databases compare in id order
    (PostgreSQL's uuid bytes, SQLite's 32 hex digits), so the primary key's index serves it."""
    digits = prefix.replace("-", "").lower()
    if not 1 <= len(digits) <= 32 or any(c not in "0123456789abcdef" for c in digits):
        raise InvalidInput(f"not a job id prefix: {prefix!r} (hex digits of a job id)", details={"id_prefix": prefix})
    return uuid.UUID(hex=digits.ljust(32, "0")), uuid.UUID(hex=digits.ljust(32, "f"))


TEXT_SEARCH_MAX: Final = 200
"""The longest text `list_jobs(q=...)` searches for (a longer one is refused)."""


def _text_match(text: str, named_versions: Collection[int]) -> ColumnElement[bool]:
    """The jobs `text` finds: id starting with it (when it is hex digits, hyphens as in the id), or pipeline
    name, creator, reason or message containing it, case-insensitively (`%` and `_` match themselves).
    `named_versions` are the ids of the versions of the pipelines whose name contains it (`_named_versions`).

    One condition on the jobs' own columns, each of which an index can answer on PostgreSQL (the versions by
    `(pipeline_version_id, created_at, id)`, the texts by the trigram indexes of migration 0006, the id by the
    primary key): a rare word is a bitmap of its few rows, a common one about one page of the `(created_at, id)`
    index walked newest first (measured in bench/README.md, issue 14). SQLite looks at every row for a rare word."""
    if len(text) > TEXT_SEARCH_MAX:
        raise InvalidInput(f"the search text is longer than {TEXT_SEARCH_MAX} characters", details={"q": text[:50]})
    # The pattern is written into the statement (`literal_execute`, quoted by the dialect), not sent as a
    # parameter: psycopg prepares a statement run 5 times, and PostgreSQL's generic plan, blind to the word, then
    # walks the whole (created_at, id) index for a rare one (105 ms at 100,000 jobs instead of 0.1 ms).
    escaped = text.replace("/", "//").replace("%", "/%").replace("_", "/_")
    pattern = bindparam(None, f"%{escaped}%", type_=String, literal_execute=True)
    found: list[ColumnElement[bool]] = [
        column.ilike(pattern, escape="/") for column in (_JOBS.c.created_by, _JOBS.c.reason, _JOBS.c.message)
    ]
    if named_versions:
        found.append(_JOBS.c.pipeline_version_id.in_(sorted(named_versions)))
    digits = text.replace("-", "").lower()
    if 1 <= len(digits) <= 32 and all(c in "0123456789abcdef" for c in digits):
        low, high = _id_range(digits)
        found.append(_JOBS.c.id.between(low, high))
    return or_(*found)


def job_matches_text(job: Job, text: str) -> bool:
    """Whether `list_jobs(q=text)` would find `job` (`_text_match` in Python: for jobs seen by a change feed)."""
    needle = text.strip().lower()
    if not needle:
        return True
    digits = needle.replace("-", "")
    if digits and len(digits) <= 32 and job.id.hex.startswith(digits):
        return True
    return any(needle in (value or "").lower() for value in (job.pipeline, job.created_by, job.reason, job.message))


def _state(value: JobState | str) -> JobState:
    try:
        return JobState(value)
    except ValueError:
        raise InvalidInput(f"unknown job state {value!r}", details={"allowed": [s.value for s in JobState]}) from None


def _task(value: Task | str) -> Task:
    try:
        return Task(value)
    except ValueError:
        raise InvalidInput(f"unknown task {value!r}", details={"allowed": [t.value for t in Task]}) from None


def _check_task_order(job_id: uuid.UUID, current: str | None, new: Task) -> None:
    """Tasks only move forward (install -> wait -> uninstall; skipping is fine, going back is not)."""
    if current is not None and _TASK_ORDER[new] < _TASK_ORDER[Task(current)]:
        raise Conflict(
            f"job {job_id}: task cannot go back from {current} to {new}",
            code="illegal_task_change",
            details={"job_id": str(job_id), "from": current, "to": new.value},
        )


def _encode_cursor(created_at: datetime, job_id: uuid.UUID) -> str:
    raw = json.dumps([created_at.isoformat(), job_id.hex]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        at_text, id_hex = json.loads(raw)
        at = datetime.fromisoformat(at_text)
        if at.tzinfo is None:
            raise ValueError("naive timestamp")
        return at, uuid.UUID(hex=id_hex)
    except (binascii.Error, ValueError, TypeError, UnicodeDecodeError) as exc:
        raise InvalidInput(
            "invalid cursor: pass back a next_cursor exactly as returned", code="invalid_cursor"
        ) from exc


# ---------------------------------------------------------------------------------------------------------
# Row -> dataclass


def _version_info(row: PipelineVersionRow, jobs: int = 0) -> VersionInfo:
    return VersionInfo(row.id, row.number, row.digest, row.created_at, row.created_by, jobs)


def _versions_with_jobs(session: Session, pipeline_id: int | None = None) -> list[tuple[PipelineVersionRow, int]]:
    """Versions (without IR), by pipeline then number, each with its number of jobs: one query, the jobs counted
    per version in one GROUP BY (on the `pipeline_version_id` index), however many pipelines and jobs there are."""
    counts = (
        select(JobRow.pipeline_version_id.label("version_id"), func.count().label("jobs"))
        .group_by(JobRow.pipeline_version_id)
        .subquery()
    )
    query = (
        select(PipelineVersionRow, func.coalesce(counts.c.jobs, 0))
        .outerjoin(counts, counts.c.version_id == PipelineVersionRow.id)
        .options(defer(PipelineVersionRow.ir, raiseload=True))
        .order_by(PipelineVersionRow.pipeline_id, PipelineVersionRow.number)
    )
    if pipeline_id is not None:
        query = query.where(PipelineVersionRow.pipeline_id == pipeline_id)
    return [(row, int(jobs)) for row, jobs in session.execute(query).all()]


def _version(row: PipelineVersionRow, pipeline: str) -> PipelineVersion:
    return PipelineVersion(
        id=row.id,
        pipeline=pipeline,
        number=row.number,
        digest=row.digest,
        ir=row.ir,
        created_at=row.created_at,
        created_by=row.created_by,
    )


def _event(row: JobEventRow) -> JobEvent:
    return JobEvent(
        id=row.id,
        at=row.at,
        from_state=JobState(row.from_state) if row.from_state is not None else None,
        to_state=JobState(row.to_state),
        task=Task(row.task) if row.task is not None else None,
        reason=row.reason,
        message=row.message,
    )


def _job(row: JobRow, pipeline: str, version_number: int, events: tuple[JobEvent, ...] | None = None) -> Job:
    return Job(
        id=row.id,
        pipeline=pipeline,
        pipeline_version=version_number,
        pipeline_version_id=row.pipeline_version_id,
        state=JobState(row.state),
        task=Task(row.task) if row.task is not None else None,
        parameters=row.parameters,
        environment=row.environment,
        backend=row.backend,
        backend_ref=row.backend_ref,
        idempotency_key=row.idempotency_key,
        token_hash=row.token_hash,
        created_at=row.created_at,
        started_at=row.started_at,
        finished_at=row.finished_at,
        reason=row.reason,
        message=row.message,
        records_read=row.records_read,
        records_written=row.records_written,
        records_failed=row.records_failed,
        completion=row.completion,
        completion_message=row.completion_message,
        flow_completions=row.flow_completions,
        flow_progress=row.flow_progress,
        admitted_at=row.admitted_at,
        created_by=row.created_by,
        updated_at=row.updated_at,
        events=events,
    )


def _job_select() -> Select[JobRow, str, int]:
    return (
        select(JobRow, PipelineRow.name, PipelineVersionRow.number)
        .join(PipelineVersionRow, JobRow.pipeline_version_id == PipelineVersionRow.id)
        .join(PipelineRow, PipelineVersionRow.pipeline_id == PipelineRow.id)
    )


# Core (no ORM unit of work) for the hot paths: the job reads and the per-job writes of the lifecycle.

_JOBS: Final = cast(Table, JobRow.__table__)
_EVENTS: Final = cast(Table, JobEventRow.__table__)
_VERSIONS: Final = cast(Table, PipelineVersionRow.__table__)
_PIPELINES: Final = cast(Table, PipelineRow.__table__)
_PIPELINE_NAME: Final = "modelops_pipeline_name"
_VERSION_NUMBER: Final = "modelops_version_number"


def _core_job_select() -> Select[Any]:
    return select(
        *_JOBS.c, _PIPELINES.c.name.label(_PIPELINE_NAME), _VERSIONS.c.number.label(_VERSION_NUMBER)
    ).select_from(
        _JOBS.join(_VERSIONS, _JOBS.c.pipeline_version_id == _VERSIONS.c.id).join(
            _PIPELINES, _VERSIONS.c.pipeline_id == _PIPELINES.c.id
        )
    )


_EVENT_PREFIX: Final = "modelops_event_"


def _job_with_events_select(job_id: Any) -> Select[Any]:
    """The job (one row per event, oldest first; one row with NULL event columns if it has none): one
    statement, so the job and its events come from one snapshot in one round trip."""
    return (
        _core_job_select()
        .add_columns(*(column.label(_EVENT_PREFIX + column.name) for column in _EVENTS.c))
        .outerjoin(_EVENTS, _EVENTS.c.job_id == _JOBS.c.id)
        .where(_JOBS.c.id == job_id)
        .order_by(_EVENTS.c.id)
    )


# Statements built once (building and hashing a statement costs more than running it): values are parameters.
_WANTED: Final = "modelops_wanted_id"
_SELECT_JOB_WITH_EVENTS: Final = _job_with_events_select(bindparam(_WANTED))
_PIPELINE_VERSION_IDS: Final = (
    select(_VERSIONS.c.id)
    .join(_PIPELINES, _VERSIONS.c.pipeline_id == _PIPELINES.c.id)
    .where(_PIPELINES.c.name == bindparam("modelops_pipeline"))
)


def _named_versions(text: str) -> Select[Any]:
    """The versions of the pipelines whose name contains `text` (as `_text_match` matches): read first, like the
    versions of a `pipeline` filter (`_PIPELINE_VERSION_IDS`), so that the jobs' query filters its own column with a
    list of ids, which PostgreSQL's planner can estimate and an index can answer (a join or a subquery on the name
    hid how many jobs match: a pipeline holding half the jobs was sorted in full, 41 ms at 100,000 jobs)."""
    return (
        select(_VERSIONS.c.id)
        .join(_PIPELINES, _VERSIONS.c.pipeline_id == _PIPELINES.c.id)
        .where(_PIPELINES.c.name.icontains(text, autoescape=True))
    )

_JOB_STAMP: Final = select(_JOBS.c.updated_at, _JOBS.c.state, _JOBS.c.admitted_at).where(
    _JOBS.c.id == bindparam(_WANTED)
)
_LOCK_JOB: Final = _core_job_select().where(_JOBS.c.id == bindparam(_WANTED)).with_for_update(of=_JOBS)
_UPDATE_JOB: Final = update(_JOBS).where(_JOBS.c.id == bindparam(_WANTED))
_INSERT_JOB: Final = insert(_JOBS)
_INSERT_EVENT: Final = insert(_EVENTS)
_SAMPLES: Final = cast(Table, JobProgressSampleRow.__table__)
_INSERT_SAMPLE: Final = insert(_SAMPLES)
_SAMPLES_OF_JOB: Final = (
    select(_SAMPLES.c.at, _SAMPLES.c.read, _SAMPLES.c.written, _SAMPLES.c.failed)
    .where(_SAMPLES.c.job_id == bindparam(_WANTED))
    .order_by(_SAMPLES.c.at, _SAMPLES.c.id)
)
_COUNT_SAMPLES: Final = select(func.count()).select_from(_SAMPLES).where(_SAMPLES.c.job_id == bindparam(_WANTED))
_ONE_MICROSECOND: Final = timedelta(microseconds=1)
_NOTIFY: Final = select(func.pg_notify(bindparam("channel"), bindparam("payload")))

ENGINE_CHANNEL: Final = "modelops_jobs"
"""The PostgreSQL notification channel on which API workers wake the lifecycle engine (`scheduler.dispatch`)."""
_VERSION_NAMES: Final = (
    select(_VERSIONS.c.number, _PIPELINES.c.name)
    .select_from(_VERSIONS.join(_PIPELINES, _VERSIONS.c.pipeline_id == _PIPELINES.c.id))
    .where(_VERSIONS.c.id == bindparam(_WANTED))
)
_VERSION_KEY_QUERY: Final = (
    select(_VERSIONS.c.id, _VERSIONS.c.number, _VERSIONS.c.digest, _VERSIONS.c.created_at)
    .select_from(_VERSIONS.join(_PIPELINES, _VERSIONS.c.pipeline_id == _PIPELINES.c.id))
    .where(_PIPELINES.c.name == bindparam("modelops_pipeline"))
)
_LATEST_VERSION_KEY: Final = _VERSION_KEY_QUERY.order_by(_VERSIONS.c.number.desc()).limit(1)
_NUMBERED_VERSION_KEY: Final = _VERSION_KEY_QUERY.where(_VERSIONS.c.number == bindparam("modelops_number"))
_VERSION_ROW: Final = select(*_VERSIONS.c).where(_VERSIONS.c.id == bindparam(_WANTED))

_QUEUED: Final = and_(_JOBS.c.state == JobState.PENDING.value, _JOBS.c.admitted_at.is_(None))
"""A queued job: PENDING and not yet admitted (`scheduler.admission`)."""
_ADMITTED_ACTIVE: Final = and_(
    _JOBS.c.state.not_in([s.value for s in TERMINAL]),
    or_(_JOBS.c.state != JobState.PENDING.value, _JOBS.c.admitted_at.is_not(None)),
)
"""A job that holds one of admission's slots: admitted (or started before admission existed) and unfinished."""
_QUEUE_RANKS: Final = (
    select(
        _JOBS.c.id,
        func.row_number().over(partition_by=_JOBS.c.backend, order_by=(_JOBS.c.created_at, _JOBS.c.id)).label("rank"),
    )
    .where(_QUEUED)
    .subquery()
)
"""Each queued job's position in its backend's queue, oldest first."""
_ADMITTED_REASON: Final = "Admitted"
_ADMIT_JOB: Final = (
    update(_JOBS)
    .where(_JOBS.c.id == bindparam("modelops_id"))
    .values(admitted_at=bindparam("modelops_at"), updated_at=bindparam("modelops_updated"))
)
_QUEUED_CANCEL_MESSAGE: Final = "nothing to tear down: the job was still queued"


def _day_start(now: datetime) -> datetime:
    return now.replace(hour=0, minute=0, second=0, microsecond=0)


def _seconds_to_next_day(now: datetime) -> int:
    return max(1, int((_day_start(now) + timedelta(days=1) - now).total_seconds()) + 1)


def _event_of(row: RowMapping) -> JobEvent:
    p = _EVENT_PREFIX
    from_state = row[p + "from_state"]
    task = row[p + "task"]
    return JobEvent(
        id=row[p + "id"],
        at=row[p + "at"],
        from_state=JobState(from_state) if from_state is not None else None,
        to_state=JobState(row[p + "to_state"]),
        task=Task(task) if task is not None else None,
        reason=row[p + "reason"],
        message=row[p + "message"],
    )


def _joined_messages(reports: Mapping[str, Any], flows: Collection[str]) -> str | None:
    """The completion message of several flows: `flow a: ...; flow b: ...` (the message alone for one flow)."""
    if len(flows) == 1:
        only: str | None = reports[next(iter(flows))]["message"]
        return only
    parts = [f"flow {name}: {reports[name]['message']}" for name in sorted(flows) if reports[name]["message"]]
    return "; ".join(parts) or None


def _picked(count: int, points: int) -> list[int]:
    """The positions (0-based) of at most `points` of `count` items, evenly spaced, the first and the last."""
    if count <= points:
        return list(range(count))
    last = count - 1
    return sorted({round(i * last / (points - 1)) for i in range(points)})


def _thinned(samples: list[ProgressSample], points: int) -> list[ProgressSample]:
    """At most `points` of `samples`, evenly spaced by position, the first and the last always included."""
    return samples if len(samples) <= points else [samples[i] for i in _picked(len(samples), points)]


def _ranked_samples(ranks: list[int]) -> Select[Any]:
    """The job's samples whose rank (1 = the oldest) is one of `ranks`, oldest first."""
    ranked = select(
        _SAMPLES.c.at,
        _SAMPLES.c.read,
        _SAMPLES.c.written,
        _SAMPLES.c.failed,
        func.row_number().over(order_by=(_SAMPLES.c.at, _SAMPLES.c.id)).label("rank"),
    ).where(_SAMPLES.c.job_id == bindparam(_WANTED)).subquery()
    return (
        select(ranked.c.at, ranked.c.read, ranked.c.written, ranked.c.failed)
        .where(ranked.c.rank.in_(ranks))
        .order_by(ranked.c.rank)
    )


def _log_transition(job: Job, *, started: bool) -> None:
    """The server log's record of each job: `job <id> started (<pipeline> v<n>)` once, when it first leaves
    PENDING, and `job <id> ended <STATE> reason <reason>: <first line of the message>`."""
    if started:
        log.info("job %s started (%s v%d)", job.id, job.pipeline, job.pipeline_version)
    if job.state in TERMINAL:
        first = (job.message or "").strip().splitlines()
        detail = f": {first[0]}" if first else ""
        log.info("job %s ended %s reason %s%s", job.id, job.state.value, job.reason or "-", detail)


def _job_of(row: Mapping[str, Any] | RowMapping, events: tuple[JobEvent, ...] | None = None) -> Job:
    task = row["task"]
    return Job(
        id=row["id"],
        pipeline=row[_PIPELINE_NAME],
        pipeline_version=row[_VERSION_NUMBER],
        pipeline_version_id=row["pipeline_version_id"],
        state=JobState(row["state"]),
        task=Task(task) if task is not None else None,
        parameters=row["parameters"],
        environment=row["environment"],
        backend=row["backend"],
        backend_ref=row["backend_ref"],
        idempotency_key=row["idempotency_key"],
        token_hash=row["token_hash"],
        created_at=row["created_at"],
        started_at=row["started_at"],
        finished_at=row["finished_at"],
        reason=row["reason"],
        message=row["message"],
        records_read=row["records_read"],
        records_written=row["records_written"],
        records_failed=row["records_failed"],
        completion=row["completion"],
        completion_message=row["completion_message"],
        flow_completions=row.get("flow_completions"),
        flow_progress=row.get("flow_progress"),
        admitted_at=row.get("admitted_at"),
        created_by=row.get("created_by"),
        updated_at=row.get("updated_at"),
        events=events,
    )


# ---------------------------------------------------------------------------------------------------------
# The store


class JobStore:
    """Pipelines, versions, jobs and job events in the scheduler database. Thread-safe; share one instance.

    The engine (see `scheduler.db.session.create_engine`) is owned by the caller, who disposes it.
    `clock` returns the current time (timezone-aware); tests pass a fixed one.
    """

    def __init__(self, engine: Engine, *, clock: Callable[[], datetime] = _utcnow) -> None:
        self._engine = engine
        self._sessions = make_sessionmaker(engine)
        self._sqlite = engine.dialect.name == "sqlite"
        self._clock = clock
        self._versions: OrderedDict[int, PipelineVersion] = OrderedDict()
        self._versions_lock = threading.Lock()
        # Reads on PostgreSQL: the same pool, connections in autocommit while checked out.
        self._autocommit: Engine | None = (
            None if self._sqlite else engine.execution_options(isolation_level="AUTOCOMMIT")
        )
        self._sampled: OrderedDict[uuid.UUID, datetime] = OrderedDict()
        """When each job was last sampled by this store (`PROGRESS_SAMPLE_SECONDS`)."""
        self._sampled_lock = threading.Lock()
        self._listeners: list[Callable[[], None]] = []

    def add_change_listener(self, listener: Callable[[], None]) -> None:
        """Call `listener()` after each write transaction of this store commits (from the writing thread): how
        the change feed of this process hears of a local write at once (`scheduler.changes`). It must be quick
        and thread-safe; what it raises is logged and ignored."""
        self._listeners.append(listener)

    def remove_change_listener(self, listener: Callable[[], None]) -> None:
        """Stop calling `listener` (nothing if it is not registered)."""
        with suppress(ValueError):
            self._listeners.remove(listener)

    def _committed(self) -> None:
        for listener in tuple(self._listeners):
            try:
                listener()
            except Exception:
                log.exception("a change listener of the job store failed")

    # -- plumbing ---------------------------------------------------------------------------------------

    def _now(self) -> datetime:
        now = self._clock()
        if now.tzinfo is None:
            raise ValueError("the store's clock must return timezone-aware datetimes")
        return now.astimezone(UTC)

    @contextmanager
    def _tx(self, *, write: bool) -> Iterator[Session]:
        """One transaction; commits on success, rolls back on any exception. DB outages -> StoreUnavailable."""
        with self._unavailable(), self._sessions.begin() as session:
            if write and self._sqlite:
                # Take SQLite's write lock now, not at the first write: the read-check-write of a
                # transition must not interleave with another writer (see scheduler.db.session).
                session.connection(execution_options={SQLITE_BEGIN_OPTION: "IMMEDIATE"})
            yield session

    @contextmanager
    def _conn(self, *, write: bool) -> Iterator[Connection]:
        """Like `_tx`, but a Core connection in one transaction: no ORM session, identity map or flush."""
        with self._unavailable(), self._engine.connect() as conn:
            if write and self._sqlite:
                conn.execution_options(**{SQLITE_BEGIN_OPTION: "IMMEDIATE"})
            with conn.begin():
                yield conn
        if write and self._listeners:
            self._committed()

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        """A connection for a read of one statement (or several that need no common snapshot).

        PostgreSQL: in autocommit, so no BEGIN and COMMIT round trips (one statement is one snapshot anyway).
        SQLite: a deferred transaction, as `_conn(write=False)`.
        """
        if self._autocommit is None:
            with self._conn(write=False) as conn:
                yield conn
            return
        with self._unavailable(), self._autocommit.connect() as conn:
            yield conn

    @contextmanager
    def _unavailable(self) -> Iterator[None]:
        """Database outages (and lost connections) -> StoreUnavailable, with the driver's exception chained."""
        try:
            yield
        except (OperationalError, PoolTimeout) as exc:
            cause = getattr(exc, "orig", None) or exc
            where = self._engine.url.render_as_string(hide_password=True)
            raise StoreUnavailable(
                f"the scheduler database is unavailable ({where}): {cause}",
                details={"database": where},
            ) from exc
        except DBAPIError as exc:
            if exc.connection_invalidated:
                where = self._engine.url.render_as_string(hide_password=True)
                raise StoreUnavailable(
                    f"lost the connection to the scheduler database ({where})", details={"database": where}
                ) from exc
            raise

    def _locked_row(self, conn: Connection, job_id: uuid.UUID) -> dict[str, Any]:
        """The job's row (with its pipeline name and version number), locked until the transaction ends."""
        found = conn.execute(_LOCK_JOB, {_WANTED: job_id}).mappings().one_or_none()
        if found is None:
            raise NotFound(f"no job {job_id}", code="job_not_found", details={"job_id": str(job_id)})
        return dict(found)

    def _next_updated_at(self, previous: datetime | None) -> datetime:
        """Now, or just after `previous` when the clock has not moved past it: a job's `updated_at` strictly
        increases with each write, which is what the change feed compares (also with a fixed test clock)."""
        now = self._now()
        return now if previous is None or now > previous else previous + _ONE_MICROSECOND

    def _update_row(self, conn: Connection, row: dict[str, Any], **values: Any) -> None:
        """Apply `values` to the locked job `row` (and to the dict), with a new `updated_at`; with no values,
        only `updated_at` changes (a job event was added)."""
        values["updated_at"] = self._next_updated_at(row.get("updated_at"))
        conn.execute(_UPDATE_JOB, {**values, _WANTED: row["id"]})
        row.update(values)

    @staticmethod
    def _insert_event(
        conn: Connection,
        row: Mapping[str, Any],
        at: datetime,
        from_state: str | None,
        reason: str | None,
        message: str | None,
    ) -> None:
        conn.execute(
            _INSERT_EVENT,
            {
                "job_id": row["id"],
                "at": at,
                "from_state": from_state,
                "to_state": row["state"],
                "task": row["task"],
                "reason": reason,
                "message": message,
            },
        )

    def _locked_job(self, session: Session, job_id: uuid.UUID) -> tuple[JobRow, str, int]:
        """The job row, locked until the transaction ends, with its pipeline name and version number."""
        found = session.execute(_job_select().where(JobRow.id == job_id).with_for_update(of=JobRow)).one_or_none()
        if found is None:
            raise NotFound(f"no job {job_id}", code="job_not_found", details={"job_id": str(job_id)})
        row, pipeline, number = found
        return row, pipeline, number

    def _record_event(
        self,
        session: Session,
        row: JobRow,
        at: datetime,
        from_state: str | None,
        reason: str | None,
        message: str | None,
    ) -> None:
        session.add(
            JobEventRow(
                job_id=row.id,
                at=at,
                from_state=from_state,
                to_state=row.state,
                task=row.task,
                reason=reason,
                message=message,
            )
        )

    # -- pipelines --------------------------------------------------------------------------------------

    def add_pipeline_version(
        self,
        name: str,
        ir_doc: Mapping[str, Any],
        digest: str,
        created_by: str | None = None,
    ) -> tuple[PipelineVersion, bool]:
        """Store `ir_doc` as the next version of pipeline `name` (created on first use).

        Returns `(version, created)`. If this pipeline already has a version with the same `digest` (the
        SHA-256 of the normalised IR), that version is returned with `created=False` and nothing is written,
        so re-deploying the same IR is a no-op. Safe under concurrent calls.
        """
        _check_text(name, "pipeline name", _PIPELINE_NAME_MAX, required=True)
        _check_sha256(digest, "digest")
        _check_text(created_by, "created_by", 255)
        document = _json_document(ir_doc, "ir")
        last_error: IntegrityError | None = None
        for _attempt in range(_RACE_ATTEMPTS):
            try:
                with self._tx(write=True) as session:
                    return self._add_version(session, name, document, digest, created_by)
            except IntegrityError as exc:  # lost a race on a unique constraint: retry, the winner is visible
                last_error = exc
        raise Conflict(
            f"pipeline {name!r}: could not store the version after {_RACE_ATTEMPTS} attempts under contention",
            code="contention",
        ) from last_error

    def _add_version(
        self, session: Session, name: str, document: dict[str, Any], digest: str, created_by: str | None
    ) -> tuple[PipelineVersion, bool]:
        now = self._now()
        # Locking the pipeline row serialises version numbering per pipeline (SQLite: BEGIN IMMEDIATE already
        # does). Only the creation of a new pipeline can still race; its loser retries and finds the winner's.
        pipeline = session.scalar(select(PipelineRow).where(PipelineRow.name == name).with_for_update())
        if pipeline is None:
            pipeline = PipelineRow(name=name, created_at=now)
            session.add(pipeline)
            session.flush()
        existing = session.scalar(
            select(PipelineVersionRow).where(
                PipelineVersionRow.pipeline_id == pipeline.id, PipelineVersionRow.digest == digest
            )
        )
        if existing is not None:
            return _version(existing, name), False
        latest = session.scalar(
            select(func.max(PipelineVersionRow.number)).where(PipelineVersionRow.pipeline_id == pipeline.id)
        )
        row = PipelineVersionRow(
            pipeline_id=pipeline.id,
            number=(latest or 0) + 1,
            digest=digest,
            ir=document,
            created_at=now,
            created_by=created_by,
        )
        session.add(row)
        session.flush()
        return _version(row, name), True

    def list_pipelines(self) -> tuple[Pipeline, ...]:
        """Every pipeline, by name, with its versions (without IR documents) and their job counts."""
        with self._tx(write=False) as session:
            pipelines = session.scalars(select(PipelineRow).order_by(PipelineRow.name)).all()
            by_pipeline: dict[int, list[VersionInfo]] = {}
            for version, jobs in _versions_with_jobs(session):
                by_pipeline.setdefault(version.pipeline_id, []).append(_version_info(version, jobs))
            return tuple(Pipeline(p.name, p.created_at, tuple(by_pipeline.get(p.id, ()))) for p in pipelines)

    def get_pipeline(self, name: str) -> Pipeline:
        """The pipeline `name` with its versions (without IR documents); NotFound if there is none."""
        with self._tx(write=False) as session:
            pipeline = session.scalar(select(PipelineRow).where(PipelineRow.name == name))
            if pipeline is None:
                raise NotFound(f"no pipeline {name!r}", code="pipeline_not_found", details={"pipeline": name})
            versions = _versions_with_jobs(session, pipeline.id)
            return Pipeline(pipeline.name, pipeline.created_at, tuple(_version_info(v, n) for v, n in versions))

    def get_version(self, name: str, number: int | None = None) -> PipelineVersion:
        """Version `number` of pipeline `name`, with its IR; the latest one when `number` is None.

        Versions are immutable, so their IR documents are kept in memory once read: a call costs one small
        query (which version), and the IR is read and parsed only the first time.
        """
        with self._read() as conn:
            if number is None:
                found = conn.execute(_LATEST_VERSION_KEY, {"modelops_pipeline": name}).one_or_none()
            else:
                found = conn.execute(
                    _NUMBERED_VERSION_KEY, {"modelops_pipeline": name, "modelops_number": number}
                ).one_or_none()
            if found is None:
                what = f"pipeline {name!r}" if number is None else f"version {number} of pipeline {name!r}"
                raise NotFound(
                    f"no {what}",
                    code="pipeline_version_not_found",
                    details={"pipeline": name, "version": number},
                )
            version_id, found_number, digest, created_at = found
            with self._versions_lock:
                cached = self._versions.get(version_id)
                if cached is not None:
                    self._versions.move_to_end(version_id)
            if cached is not None and (cached.pipeline, cached.number, cached.digest, cached.created_at) == (
                name,
                found_number,
                digest,
                created_at,
            ):
                return cached
            row = conn.execute(_VERSION_ROW, {_WANTED: version_id}).mappings().one()
        version = PipelineVersion(
            id=row["id"],
            pipeline=name,
            number=row["number"],
            digest=row["digest"],
            ir=row["ir"],
            created_at=row["created_at"],
            created_by=row["created_by"],
        )
        with self._versions_lock:
            self._versions[version.id] = version
            while len(self._versions) > _VERSION_CACHE_SIZE:
                self._versions.popitem(last=False)
        return version

    # -- jobs -------------------------------------------------------------------------------------------

    def create_job(
        self,
        version: PipelineVersion,
        *,
        parameters: Mapping[str, Any] | None = None,
        environment: Mapping[str, Any] | None = None,
        backend: str,
        token_hash: str,
        idempotency_key: str | None = None,
        job_id: uuid.UUID | None = None,
        created_by: str | None = None,
        quota: Quota | None = None,
    ) -> tuple[Job, bool]:
        """Create a PENDING job for `version` and its first event; returns `(job, created)`.

        `created_by` names who creates it (an API token's name). With a `quota`, the creator's unfinished jobs
        and today's rows (`token_usage`) are checked in the same transaction as the insert (on PostgreSQL under
        an advisory lock per creator, so parallel requests cannot both take the last slot): over a limit is
        `QuotaExceeded` (HTTP 429) naming the quota, and nothing is written.

        `job_id` is the new job's id; a random UUID when None. Callers pass it when something derives from
        the id before the job exists (the per-job token whose hash is `token_hash`). An id that is already
        taken is a `Conflict`.

        With an `idempotency_key` that an earlier job already used, that job is returned with
        `created=False` and nothing is written, provided the request is the same one (same version,
        parameters, environment and backend); a different request reusing the key is a `Conflict`. The
        `token_hash` (and `job_id`) of a replayed request are ignored: the job keeps what it was created with.
        """
        if job_id is not None and not isinstance(job_id, uuid.UUID):
            raise InvalidInput("job_id must be a UUID", details={"job_id": str(job_id)})
        _check_text(backend, "backend", _BACKEND_MAX, required=True)
        _check_sha256(token_hash, "token_hash")
        _check_text(idempotency_key, "idempotency_key", _IDEMPOTENCY_KEY_MAX, required=idempotency_key is not None)
        _check_text(created_by, "created_by", 255)
        params = _json_document(parameters, "parameters")
        env = _json_document(environment, "environment")
        if idempotency_key is not None:
            replay = self._replay(idempotency_key, version, params, env, backend)
            if replay is not None:
                return replay, False
        try:
            with self._conn(write=True) as conn:
                if quota is not None and created_by is not None:
                    self._check_quota(conn, created_by, quota)
                return self._insert_job(
                    conn, version, params, env, backend, token_hash, idempotency_key, job_id or uuid.uuid4(), created_by
                )
        except IntegrityError as exc:
            # Either another caller committed a job with this idempotency key between the replay check and
            # the insert (the unique constraint made us wait for, then see, its commit), or the version row
            # does not exist.
            if idempotency_key is not None:
                replay = self._replay(idempotency_key, version, params, env, backend)
                if replay is not None:
                    return replay, False
            if job_id is not None and self._job_exists(job_id):
                raise Conflict(
                    f"a job with id {job_id} already exists", code="job_exists", details={"job_id": str(job_id)}
                ) from exc
            raise NotFound(
                f"no version {version.number} of pipeline {version.pipeline!r} (id {version.id})",
                code="pipeline_version_not_found",
                details={"pipeline": version.pipeline, "version": version.number},
            ) from exc

    def _replay(
        self, key: str, version: PipelineVersion, params: dict[str, Any], env: dict[str, Any], backend: str
    ) -> Job | None:
        with self._tx(write=False) as session:
            found = session.execute(_job_select().where(JobRow.idempotency_key == key)).one_or_none()
            if found is None:
                return None
            row, pipeline, number = found
            differences = [
                name
                for name, stored, asked in (
                    ("pipeline version", row.pipeline_version_id, version.id),
                    ("parameters", row.parameters, params),
                    ("environment", row.environment, env),
                    ("backend", row.backend, backend),
                )
                if stored != asked
            ]
            if differences:
                raise Conflict(
                    f"idempotency key {key!r} was used for a different request (job {row.id}): "
                    f"{', '.join(differences)} differ",
                    code="idempotency_key_reused",
                    details={"job_id": str(row.id), "differs": differences},
                )
            return _job(row, pipeline, number)

    def _job_exists(self, job_id: uuid.UUID) -> bool:
        with self._tx(write=False) as session:
            return session.scalar(select(JobRow.id).where(JobRow.id == job_id)) is not None

    def _insert_job(
        self,
        conn: Connection,
        version: PipelineVersion,
        params: dict[str, Any],
        env: dict[str, Any],
        backend: str,
        token_hash: str,
        idempotency_key: str | None,
        job_id: uuid.UUID,
        created_by: str | None = None,
    ) -> tuple[Job, bool]:
        now = self._now()
        row: dict[str, Any] = dict(
            id=job_id,
            pipeline_version_id=version.id,
            state=JobState.PENDING.value,
            task=None,
            parameters=params,
            environment=env,
            backend=backend,
            backend_ref=None,
            idempotency_key=idempotency_key,
            token_hash=token_hash,
            created_at=now,
            started_at=None,
            finished_at=None,
            reason=None,
            message=None,
            records_read=0,
            records_written=0,
            records_failed=0,
            completion=None,
            completion_message=None,
            admitted_at=None,
            created_by=created_by,
            updated_at=now,
        )
        conn.execute(_INSERT_JOB, row)
        self._insert_event(conn, row, now, None, CREATED_REASON, None)
        # Read the pipeline name and number from the database, not from `version`: the row is the truth.
        number, pipeline = conn.execute(_VERSION_NAMES, {_WANTED: version.id}).one()
        return _job_of({**row, _PIPELINE_NAME: pipeline, _VERSION_NUMBER: number}), True

    def get_job(self, job_id: uuid.UUID | str) -> Job:
        """The job with its events, oldest first; NotFound if there is none."""
        uid = _parse_job_id(job_id)
        with self._read() as conn:
            rows = conn.execute(_SELECT_JOB_WITH_EVENTS, {_WANTED: uid}).mappings().all()
            if not rows:
                raise NotFound(f"no job {uid}", code="job_not_found", details={"job_id": str(uid)})
            events = tuple(_event_of(row) for row in rows if row[_EVENT_PREFIX + "id"] is not None)
            job = _job_of(rows[0], events)
            if job.state is JobState.PENDING and job.admitted_at is None:
                job = replace(job, queue_position=self._positions(conn, [job.id]).get(job.id))
        return job

    def job_stamp(self, job_id: uuid.UUID | str) -> JobStamp | None:
        """The job's `JobStamp` (None if there is no such job): one small row, what `scheduler.jobcache` checks."""
        uid = _parse_job_id(job_id)
        with self._read() as conn:
            row = conn.execute(_JOB_STAMP, {_WANTED: uid}).one_or_none()
        if row is None:
            return None
        return JobStamp(updated_at=row.updated_at, state=JobState(row.state), admitted=row.admitted_at is not None)

    def list_jobs(
        self,
        *,
        state: JobState | str | None = None,
        pipeline: str | None = None,
        cursor: str | None = None,
        limit: int = DEFAULT_PAGE_SIZE,
        id_prefix: str | None = None,
        q: str | None = None,
    ) -> JobPage:
        """Jobs newest first (by creation time, then id), optionally filtered, `limit` per page.

        `id_prefix` keeps the jobs whose id starts with these hex digits (hyphens ignored, any case), as
        `modelops job show 274541d4` needs. `q` is a text search (see `_text_match`): the jobs whose id starts
        with it, or whose pipeline name, creator, reason or message contains it, in any case; blank is no filter.
        The cursor is opaque: pass back `next_cursor` unchanged. Pages are
        stable under inserts (new jobs appear before the first page, never inside a later one) and jobs created
        at the same instant are neither skipped nor repeated.
        """
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_PAGE_SIZE:
            raise InvalidInput(f"limit must be between 1 and {MAX_PAGE_SIZE}", details={"limit": limit})
        query = _core_job_select()
        if state is not None:
            query = query.where(_JOBS.c.state == _state(state).value)
        if id_prefix is not None:
            low, high = _id_range(id_prefix)
            query = query.where(_JOBS.c.id.between(low, high))
        text = q.strip() if q is not None else ""
        if len(text) > TEXT_SEARCH_MAX:
            raise InvalidInput(f"the search text is longer than {TEXT_SEARCH_MAX} characters", details={"q": text[:50]})
        if cursor is not None:
            at, last_id = _decode_cursor(cursor)
            query = query.where(or_(_JOBS.c.created_at < at, and_(_JOBS.c.created_at == at, _JOBS.c.id < last_id)))
        query = query.order_by(_JOBS.c.created_at.desc(), _JOBS.c.id.desc()).limit(limit + 1)
        with self._read() as conn:
            if pipeline is not None:
                versions = conn.execute(_PIPELINE_VERSION_IDS, {"modelops_pipeline": pipeline}).scalars().all()
                if not versions:
                    return JobPage((), None)
                query = query.where(_JOBS.c.pipeline_version_id.in_(sorted(versions)))
            if text:
                named = conn.execute(_named_versions(text)).scalars().all()
                query = query.where(_text_match(text, named))
            rows = conn.execute(query).mappings().all()
            jobs = tuple(_job_of(row) for row in rows[:limit])
            queued = [job.id for job in jobs if job.state is JobState.PENDING and job.admitted_at is None]
            if queued:
                positions = self._positions(conn, queued)
                jobs = tuple(replace(job, queue_position=positions.get(job.id)) for job in jobs)
        next_cursor = _encode_cursor(jobs[-1].created_at, jobs[-1].id) if len(rows) > limit else None
        return JobPage(jobs, next_cursor)

    def non_terminal_jobs(self) -> tuple[Job, ...]:
        """Every job not yet in a terminal state, oldest first: what the reconciler re-syncs at start."""
        query = (
            _core_job_select()
            .where(_JOBS.c.state.not_in([s.value for s in TERMINAL]))
            .order_by(_JOBS.c.created_at, _JOBS.c.id)
        )
        with self._read() as conn:
            return tuple(_job_of(row) for row in conn.execute(query).mappings().all())

    # -- the job change feed (scheduler.changes) and progress history ----------------------------------

    def latest_change(self) -> datetime | None:
        """The newest `updated_at` of any job (None: no jobs): where a change feed starts."""
        with self._read() as conn:
            found: datetime | None = conn.execute(select(func.max(_JOBS.c.updated_at))).scalar_one()
            return found

    def job_changes_since(
        self, since: datetime, limit: int = CHANGE_KEYS_PAGE, *, after_id: uuid.UUID | None = None
    ) -> list[tuple[uuid.UUID, datetime]]:
        """`(id, updated_at)` of the jobs changed at or after `since`, oldest change first, at most `limit`: read
        from the `(updated_at, id)` index alone, so a poll that finds nothing new costs little. With `after_id`,
        the keys after `(since, after_id)` (the next page)."""
        if since.tzinfo is None:
            raise ValueError("since must be timezone-aware")
        jobs = _JOBS.c
        query = select(jobs.id, jobs.updated_at)
        if after_id is None:
            query = query.where(jobs.updated_at >= since)
        else:
            query = query.where(or_(jobs.updated_at > since, and_(jobs.updated_at == since, jobs.id > after_id)))
        query = query.order_by(jobs.updated_at, jobs.id).limit(limit)
        with self._read() as conn:
            return [(job_id, updated_at) for job_id, updated_at in conn.execute(query).all()]

    def jobs_by_id(self, job_ids: Collection[uuid.UUID]) -> list[Job]:
        """The jobs with these ids that exist (without events), in `updated_at` order."""
        wanted = list(dict.fromkeys(job_ids))
        found: list[Job] = []
        with self._read() as conn:
            for start in range(0, len(wanted), MAX_PAGE_SIZE):
                chunk = wanted[start : start + MAX_PAGE_SIZE]
                rows = conn.execute(_core_job_select().where(_JOBS.c.id.in_(chunk))).mappings().all()
                found.extend(_job_of(row) for row in rows)
        return sorted(found, key=lambda job: (job.updated_at or job.created_at, job.id))

    def jobs_changed_since(self, since: datetime, limit: int = MAX_PAGE_SIZE) -> list[Job]:
        """The jobs (without events) whose row changed at or after `since`, oldest change first, at most `limit`:
        one query on the `(updated_at, id)` index."""
        if since.tzinfo is None:
            raise ValueError("since must be timezone-aware")
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise InvalidInput("limit must be a positive integer", details={"limit": limit})
        query = (
            _core_job_select()
            .where(_JOBS.c.updated_at >= since)
            .order_by(_JOBS.c.updated_at, _JOBS.c.id)
            .limit(limit)
        )
        with self._read() as conn:
            return [_job_of(row) for row in conn.execute(query).mappings().all()]

    def progress_samples(self, job_id: uuid.UUID | str, points: int = 300) -> list[ProgressSample]:
        """The job's progress over time, oldest first: its stored samples, thinned evenly to at most `points`
        (the first and the last always kept), ending with the job's current counters when they are newer than
        the last sample (a report the sampling rate skipped). NotFound for an unknown job."""
        uid = _parse_job_id(job_id)
        if isinstance(points, bool) or not isinstance(points, int) or not 2 <= points <= MAX_PROGRESS_POINTS:
            raise InvalidInput(f"points must be between 2 and {MAX_PROGRESS_POINTS}", details={"points": points})
        with self._read() as conn:
            current = conn.execute(
                select(_JOBS.c.updated_at, _JOBS.c.records_read, _JOBS.c.records_written, _JOBS.c.records_failed)
                .where(_JOBS.c.id == uid)
            ).one_or_none()
            if current is None:
                raise NotFound(f"no job {uid}", code="job_not_found", details={"job_id": str(uid)})
            stored = int(conn.execute(_COUNT_SAMPLES, {_WANTED: uid}).scalar_one())
            if stored <= points:
                rows = conn.execute(_SAMPLES_OF_JOB, {_WANTED: uid}).all()
            else:  # a long job: the database picks the rows (by rank), only `points` of them travel
                ranks = [rank + 1 for rank in _picked(stored, points)]
                rows = conn.execute(_ranked_samples(ranks), {_WANTED: uid}).all()
            samples = [ProgressSample(*row) for row in rows]
        updated_at, read, written, failed = current
        last = samples[-1] if samples else None
        if (read, written, failed) != ((last.read, last.written, last.failed) if last else (0, 0, 0)):
            samples.append(ProgressSample(max(updated_at, last.at) if last else updated_at, read, written, failed))
        return _thinned(samples, points)

    # -- admission (scheduler.admission) and per-token quotas -------------------------------------------

    @staticmethod
    def _positions(conn: Connection, job_ids: list[uuid.UUID]) -> dict[uuid.UUID, int]:
        """The queue position of each of `job_ids` that is queued."""
        query = select(_QUEUE_RANKS.c.id, _QUEUE_RANKS.c.rank).where(_QUEUE_RANKS.c.id.in_(job_ids))
        return {row.id: int(row.rank) for row in conn.execute(query).all()}

    def admit_queued(self, backend: str, limit: int) -> tuple[uuid.UUID, ...]:
        """Admit the oldest queued jobs of `backend` into the free slots, in creation order; their ids.

        A slot is held by every admitted job that has not finished (PENDING ones included: admitted, their start
        is on its way); `limit` 0 means no limit. One transaction, with the queued rows locked on PostgreSQL, so
        two callers never admit the same job. Each admitted job gets `admitted_at` and stays PENDING: the
        backend's start moves it on.
        """
        with self._conn(write=True) as conn:
            free: int | None = None
            if limit > 0:
                held = conn.execute(
                    select(func.count()).select_from(_JOBS).where(_JOBS.c.backend == backend, _ADMITTED_ACTIVE)
                ).scalar_one()
                free = limit - int(held)
                if free <= 0:
                    return ()
            query = (
                select(_JOBS.c.id, _JOBS.c.updated_at)
                .where(_JOBS.c.backend == backend, _QUEUED)
                .order_by(_JOBS.c.created_at, _JOBS.c.id)
                .limit(free)
                .with_for_update()
            )
            found = conn.execute(query).all()
            chosen = tuple(job_id for job_id, _ in found)
            if found:
                now = self._now()
                conn.execute(
                    _ADMIT_JOB,
                    [
                        {"modelops_id": job_id, "modelops_at": now, "modelops_updated": self._next_updated_at(updated)}
                        for job_id, updated in found
                    ],
                )
        for job_id in chosen:
            log.debug("job %s: admitted", job_id)
        return chosen

    def running_count(self, backend: str) -> int:
        """How many of `backend`'s jobs hold an admission slot (admitted and unfinished)."""
        with self._read() as conn:
            query = select(func.count()).select_from(_JOBS).where(_JOBS.c.backend == backend, _ADMITTED_ACTIVE)
            return int(conn.execute(query).scalar_one())

    def cancel_queued(self, job_id: uuid.UUID | str, *, reason: str, message: str | None) -> Job | None:
        """Cancel a job that is still queued at once: PENDING -> CANCELLING, task uninstall (nothing to tear
        down), -> CANCELLED, three events in one transaction; None (nothing changed) when it is not queued.

        Safe against admission: both lock the row, so the job is either admitted first (None here: the backend
        cancels it) or cancelled first (admission no longer sees it).
        """
        uid = _parse_job_id(job_id)
        _check_text(reason, "reason", _REASON_MAX)
        with self._conn(write=True) as conn:
            row = self._locked_row(conn, uid)
            if row["state"] != JobState.PENDING.value or row["admitted_at"] is not None:
                return None
            now = self._now()
            self._update_row(conn, row, state=JobState.CANCELLING.value, reason=reason, message=message)
            self._insert_event(conn, row, now, JobState.PENDING.value, reason, message)
            self._update_row(conn, row, task=Task.UNINSTALL.value)
            self._insert_event(conn, row, now, JobState.CANCELLING.value, reason, _QUEUED_CANCEL_MESSAGE)
            self._update_row(conn, row, state=JobState.CANCELLED.value, finished_at=now)
            self._insert_event(conn, row, now, JobState.CANCELLING.value, reason, message)
            job = _job_of(row)
        _log_transition(job, started=False)
        return job

    def _usage_rows(self, conn: Connection, names: Collection[str] | None) -> dict[str, TokenUsage]:
        since = _day_start(self._now())
        jobs = _JOBS.c
        active = select(jobs.created_by, func.count()).where(
            jobs.created_by.is_not(None), jobs.state.not_in([s.value for s in TERMINAL])
        )
        rows = select(jobs.created_by, func.coalesce(func.sum(jobs.records_written), 0)).where(
            jobs.created_by.is_not(None), jobs.created_at >= since
        )
        if names is not None:
            active = active.where(jobs.created_by.in_(list(names)))
            rows = rows.where(jobs.created_by.in_(list(names)))
        counts = {name: int(n) for name, n in conn.execute(active.group_by(jobs.created_by)).all()}
        sums = {name: int(n) for name, n in conn.execute(rows.group_by(jobs.created_by)).all()}
        return {
            name: TokenUsage(name, counts.get(name, 0), sums.get(name, 0))
            for name in sorted(set(counts) | set(sums) | set(names or ()))
        }

    def token_usage(self, names: Collection[str] | None = None) -> dict[str, TokenUsage]:
        """Usage per creator name (`TokenUsage`): of `names` (each present, zeros included), or of every creator
        that has unfinished jobs or jobs created today (None)."""
        with self._read() as conn:
            return self._usage_rows(conn, names)

    def _check_quota(self, conn: Connection, name: str, quota: Quota) -> None:
        if quota.max_concurrent_jobs is None and quota.max_rows_per_day is None:
            return
        if not self._sqlite:  # SQLite: the write transaction (BEGIN IMMEDIATE) already serialises creators
            conn.execute(select(func.pg_advisory_xact_lock(func.hashtext(f"modelops-quota:{name}"))))
        usage = self._usage_rows(conn, [name])[name]
        if quota.max_concurrent_jobs is not None and usage.active_jobs >= quota.max_concurrent_jobs:
            raise QuotaExceeded(
                f"token {name!r} has {usage.active_jobs} unfinished job(s), its limit of concurrent jobs is "
                f"{quota.max_concurrent_jobs}: start again once one has finished",
                quota="max_concurrent_jobs",
                limit=quota.max_concurrent_jobs,
                usage=usage.active_jobs,
                token=name,
                retry_after=QUOTA_RETRY_SECONDS,
            )
        if quota.max_rows_per_day is not None and usage.rows_today >= quota.max_rows_per_day:
            retry = _seconds_to_next_day(self._now())
            raise QuotaExceeded(
                f"token {name!r} has scored {usage.rows_today} rows today (UTC), its limit of rows per day is "
                f"{quota.max_rows_per_day}: the count starts again at 00:00 UTC, in {retry} s",
                quota="max_rows_per_day",
                limit=quota.max_rows_per_day,
                usage=usage.rows_today,
                token=name,
                retry_after=retry,
            )

    # -- the hand-off from API workers to the lifecycle engine (scheduler.dispatch) ---------------------

    def notify_engine(self, action: str, job_id: uuid.UUID) -> None:
        """Wake the lifecycle engine (`NOTIFY modelops_jobs, '<action>:<job id>'`); nothing on SQLite.

        A notification is a hint, not the record: the job's state in the database is. A notification lost (the
        engine was reconnecting) is made up for by the engine's periodic sweep over `engine_work`.
        """
        if self._autocommit is None:
            return
        with self._unavailable(), self._autocommit.connect() as conn:
            conn.execute(_NOTIFY, {"channel": ENGINE_CHANNEL, "payload": f"{action}:{job_id}"})

    def engine_work(self, backend: str) -> tuple[tuple[uuid.UUID, JobState, str | None], ...]:
        """`backend`'s jobs the engine may have to act on: (id, state, completion) of every PENDING or
        CANCELLING job and of every INSTALLING or RUNNING job whose flows reported completion."""
        jobs = _JOBS.c
        query = (
            select(jobs.id, jobs.state, jobs.completion)
            .where(jobs.backend == backend)
            .where(
                or_(
                    jobs.state.in_([JobState.PENDING.value, JobState.CANCELLING.value]),
                    and_(
                        jobs.state.in_([JobState.INSTALLING.value, JobState.RUNNING.value]),
                        jobs.completion.is_not(None),
                    ),
                )
            )
            .order_by(jobs.created_at, jobs.id)
        )
        with self._read() as conn:
            return tuple((row.id, JobState(row.state), row.completion) for row in conn.execute(query).all())

    def count_jobs_by_state(self) -> dict[JobState, int]:
        """How many jobs are in each state (every state present, zero included): the jobs-by-state gauge."""
        counts = dict.fromkeys(JobState, 0)
        with self._tx(write=False) as session:
            for state, count in session.execute(select(JobRow.state, func.count()).group_by(JobRow.state)).all():
                counts[JobState(state)] = int(count)
        return counts

    def count_transitions(self) -> dict[tuple[JobState | None, JobState], int]:
        """How many recorded events went from one state to another (`None`: job creation).

        Task changes within a state (`from_state == to_state`) are not transitions and are left out. Events
        are append-only, so each count only grows: it is a Prometheus counter read from the database, right
        across restarts and replicas.
        """
        counts: dict[tuple[JobState | None, JobState], int] = {}
        query = (
            select(JobEventRow.from_state, JobEventRow.to_state, func.count())
            .where(or_(JobEventRow.from_state.is_(None), JobEventRow.from_state != JobEventRow.to_state))
            .group_by(JobEventRow.from_state, JobEventRow.to_state)
        )
        with self._tx(write=False) as session:
            for from_state, to_state, count in session.execute(query).all():
                key = (JobState(from_state) if from_state is not None else None, JobState(to_state))
                counts[key] = int(count)
        return counts

    # -- job changes ------------------------------------------------------------------------------------

    def transition(
        self,
        job_id: uuid.UUID | str,
        to_state: JobState | str,
        *,
        task: Task | str | None = None,
        reason: str | None = None,
        message: str | None = None,
    ) -> Job:
        """Move the job to `to_state` (and `task`, if given), atomically, and record the event.

        Raises `IllegalTransition` (nothing changed) when `scheduler.states.ALLOWED` refuses the change
        from the job's current state, as read under the row lock. Entering INSTALLING or RUNNING sets
        `started_at` once; entering a terminal state sets `finished_at`. `reason`/`message`, when given,
        also become the job's current reason and message.
        """
        uid = _parse_job_id(job_id)
        target = _state(to_state)
        new_task = _task(task) if task is not None else None
        _check_text(reason, "reason", _REASON_MAX)
        with self._conn(write=True) as conn:
            row = self._locked_row(conn, uid)
            current = JobState(row["state"])
            check_transition(current, target, job_id=str(uid))
            changes: dict[str, Any] = {}
            if new_task is not None:
                _check_task_order(uid, row["task"], new_task)
                changes["task"] = new_task.value
            now = self._now()
            changes["state"] = target.value
            if target in (JobState.INSTALLING, JobState.RUNNING) and row["started_at"] is None:
                changes["started_at"] = now
            if target in TERMINAL:
                changes["finished_at"] = now
            if reason is not None or message is not None:
                changes["reason"], changes["message"] = reason, message
            self._update_row(conn, row, **changes)
            self._insert_event(conn, row, now, current.value, reason, message)
            job = _job_of(row)
        _log_transition(job, started="started_at" in changes)  # once committed
        return job

    def set_task(
        self,
        job_id: uuid.UUID | str,
        task: Task | str,
        *,
        reason: str | None = None,
        message: str | None = None,
    ) -> Job:
        """Record that the job's pipeline task is now `task`, as an event with `from_state == to_state`.

        Setting the task it already has changes nothing. Tasks only move forward (install, wait,
        uninstall); a finished job's task cannot change. Both refusals are `Conflict`s.
        """
        uid = _parse_job_id(job_id)
        new_task = _task(task)
        _check_text(reason, "reason", _REASON_MAX)
        with self._conn(write=True) as conn:
            row = self._locked_row(conn, uid)
            if row["task"] == new_task.value:
                return _job_of(row)
            if JobState(row["state"]) in TERMINAL:
                raise Conflict(
                    f"job {uid} is {row['state']}: its task can no longer change",
                    code="job_finished",
                    details={"job_id": str(uid), "state": row["state"]},
                )
            _check_task_order(uid, row["task"], new_task)
            self._update_row(conn, row, task=new_task.value)
            self._insert_event(conn, row, self._now(), row["state"], reason, message)
            return _job_of(row)

    def update_progress(
        self,
        job_id: uuid.UUID | str,
        read: int,
        written: int,
        failed: int,
        *,
        flow: str | None = None,
        report: Mapping[str, Any] | None = None,
    ) -> Job:
        """Raise the job's record counters to the reported values; counters never go down.

        Reports may arrive out of order (retries, several flow replicas), so a lower value than the stored
        one is ignored rather than refused. Accepted for finished jobs too: the last report can race the end.

        With `flow`, the report is that flow's: `report` (its state, source size, rate, outputs, services: what
        `ProgressIn` accepts besides the counters) is kept with the counters as the flow's latest entry, stamped
        `at`, unless the stored entry counted more (a late retry); the job's counters are then the sums over its
        flows. A job keeps at most `MAX_REPORTING_FLOWS` flows' entries (more is `InvalidInput`).
        """
        uid = _parse_job_id(job_id)
        counts = {"read": read, "written": written, "failed": failed}
        for name, value in counts.items():
            if isinstance(value, bool) or not isinstance(value, int) or value < 0 or value >= 2**63:
                raise InvalidInput(f"records {name} must be a non-negative integer", details={name: value})
        entry = _json_document(report or {}, "progress report") if flow is not None else None
        with self._conn(write=True) as conn:
            row = self._locked_row(conn, uid)
            changes: dict[str, Any] = {}
            if flow is not None and entry is not None:
                flows = dict(row["flow_progress"] or {})
                if flow not in flows and len(flows) >= MAX_REPORTING_FLOWS:
                    raise InvalidInput(
                        f"job {uid} already has progress of {len(flows)} flows: a report of flow {flow!r} is one "
                        "too many",
                        details={"flow": flow},
                    )
                before = flows.get(flow) or {}
                if all(value >= int(before.get(name, 0)) for name, value in counts.items()):
                    flows[flow] = {**entry, **counts, "at": self._now().isoformat()}
                    changes["flow_progress"] = flows
                totals = {name: sum(int(e.get(name, 0)) for e in flows.values()) for name in counts}
                read, written, failed = totals["read"], totals["written"], totals["failed"]
            changes.update(
                {
                    column: value
                    for column, value in (
                        ("records_read", read),
                        ("records_written", written),
                        ("records_failed", failed),
                    )
                    if value > row[column]
                }
            )
            counted = any(column in changes for column in ("records_read", "records_written", "records_failed"))
            if changes:
                self._update_row(conn, row, **changes)
            if counted:
                self._sample(conn, row)
            return _job_of(row)

    def _sample(self, conn: Connection, row: Mapping[str, Any]) -> None:
        """Keep the job's counters as a progress sample, unless this store sampled it less than
        `PROGRESS_SAMPLE_SECONDS` ago (called under the job's row lock, after its counters changed)."""
        job_id: uuid.UUID = row["id"]
        at: datetime = row["updated_at"]
        with self._sampled_lock:
            last = self._sampled.get(job_id)
            if last is not None and timedelta(0) <= at - last < timedelta(seconds=PROGRESS_SAMPLE_SECONDS):
                return
            self._sampled[job_id] = at
            self._sampled.move_to_end(job_id)
            while len(self._sampled) > _SAMPLED_JOBS_KEPT:
                self._sampled.popitem(last=False)
        conn.execute(
            _INSERT_SAMPLE,
            {
                "job_id": job_id,
                "at": at,
                "read": row["records_read"],
                "written": row["records_written"],
                "failed": row["records_failed"],
            },
        )

    def record_completion(
        self,
        job_id: uuid.UUID | str,
        succeeded: bool,
        message: str | None = None,
        *,
        flow: str | None = None,
        flows: Collection[str] = (),
        reason: str | None = None,
    ) -> Job:
        """Record a completion report (`/complete`); once the job's completion is known, later reports change nothing.

        A flow's failure `reason` (`InvalidInput`) is kept in its report (`flow_completions[flow]["reason"]`).

        Without `flow`, the report speaks for all the job's flows: it is the job's completion at once. With
        `flow` (one of `flows`, the pipeline's flow names), it is that flow's report: the job's completion is
        `failed` at the first failed flow, `succeeded` once every flow of `flows` succeeded, unknown until then;
        a flow's second report changes nothing. A flow name not in `flows` is `InvalidInput`.

        Accepted while the job is INSTALLING or RUNNING (a fast batch flow can finish before install has seen
        it ready). The job's state does not change here: the lifecycle engine ends `wait`, runs uninstall and
        only then enters the terminal state. Refused with `Conflict` on a job that is cancelling or finished.
        """
        uid = _parse_job_id(job_id)
        if flow is not None and flow not in flows:
            known = ", ".join(sorted(flows)) or "none"
            raise InvalidInput(
                f"job {uid} has no scoring flow {flow!r} (its flows: {known})",
                details={"flow": flow, "flows": sorted(flows)},
            )
        with self._conn(write=True) as conn:
            row = self._locked_row(conn, uid)
            if row["completion"] is None:
                if JobState(row["state"]) not in (JobState.INSTALLING, JobState.RUNNING):
                    raise Conflict(
                        f"job {uid} is {row['state']}: it no longer accepts a completion report",
                        code="job_not_running",
                        details={"job_id": str(uid), "state": row["state"]},
                    )
                if flow is None:
                    self._update_row(
                        conn, row, completion="succeeded" if succeeded else "failed", completion_message=message
                    )
                else:
                    reports = dict(row["flow_completions"] or {})
                    if flow not in reports:
                        reports[flow] = {"succeeded": succeeded, "message": message}
                        if reason is not None:
                            reports[flow]["reason"] = reason
                        changes: dict[str, Any] = {"flow_completions": reports}
                        if not succeeded:
                            changes["completion"] = "failed"
                            changes["completion_message"] = message or f"flow {flow} failed"
                        elif set(flows) <= reports.keys():
                            changes["completion"] = "succeeded"
                            changes["completion_message"] = _joined_messages(reports, flows)
                        self._update_row(conn, row, **changes)
            return _job_of(row)

    def set_backend_ref(self, job_id: uuid.UUID | str, backend_ref: Mapping[str, Any] | None) -> Job:
        """Store how the backend finds this job's run again (e.g. `{"pipelinerun": "modelops-abc12"}`)."""
        uid = _parse_job_id(job_id)
        ref = _json_document(backend_ref, "backend_ref") if backend_ref is not None else None
        with self._conn(write=True) as conn:
            row = self._locked_row(conn, uid)
            self._update_row(conn, row, backend_ref=ref)
            return _job_of(row)

    def add_event(
        self,
        job_id: uuid.UUID | str,
        reason: str,
        message: str | None = None,
        *,
        backend_ref: Mapping[str, Any] | None = None,
    ) -> Job:
        """Record something that happened to the job's run without changing its state, task, reason or message
        (e.g. `ServiceRestarted`: the local backend restarted a dead component), as an event with `from_state ==
        to_state`; with `backend_ref`, store the run's new reference in the same transaction. `Conflict` for a
        finished job."""
        uid = _parse_job_id(job_id)
        _check_text(reason, "reason", _REASON_MAX, required=True)
        ref = _json_document(backend_ref, "backend_ref") if backend_ref is not None else None
        with self._conn(write=True) as conn:
            row = self._locked_row(conn, uid)
            if JobState(row["state"]) in TERMINAL:
                raise Conflict(
                    f"job {uid} is {row['state']}: no more events of its run",
                    code="job_finished",
                    details={"job_id": str(uid), "state": row["state"]},
                )
            self._update_row(conn, row, **({"backend_ref": ref} if ref is not None else {}))
            self._insert_event(conn, row, self._now(), row["state"], reason, message)
            return _job_of(row)

    def record_phase(
        self,
        job_id: uuid.UUID | str,
        task: Task | str,
        status: str,
        *,
        reason: str | None = None,
        message: str | None = None,
    ) -> Job:
        """Record what a pipeline task (a Tekton step running `modelops task ...`) reports about itself.

        `status` is `started`, `succeeded` or `failed`. The effect, atomically under the row lock:

        - install started: PENDING -> INSTALLING (task install) when the job is still PENDING;
        - install succeeded: INSTALLING -> RUNNING (task wait, reason Ready) when the job is INSTALLING;
        - uninstall started: the task becomes uninstall (an event with `from_state == to_state`);
        - failed (any task): `reason` and `message` become the job's, without a state change (an event);
        - anything else (a report the state has already moved past): an event only.

        A report about a finished job, or about install or wait of a CANCELLING job, changes nothing and
        records nothing: it raced the end of the run, which is not the reporter's fault, so it is no error.
        """
        uid = _parse_job_id(job_id)
        phase = _task(task)
        if status not in _PHASE_STATUSES:
            raise InvalidInput(f"unknown phase status {status!r}", details={"allowed": sorted(_PHASE_STATUSES)})
        _check_text(reason, "reason", _REASON_MAX)
        with self._conn(write=True) as conn:
            row = self._locked_row(conn, uid)
            current = JobState(row["state"])
            if current in TERMINAL or (current is JobState.CANCELLING and phase is not Task.UNINSTALL):
                return _job_of(row)
            now = self._now()
            note = f"task {phase.value} {status}" + (f": {message}" if message else "")
            if phase is Task.INSTALL and status == "started" and current is JobState.PENDING:
                changes: dict[str, Any] = {"state": JobState.INSTALLING.value, "task": phase.value}
                changes.update(reason=_INSTALLING_REASON, message=message)
                if row["started_at"] is None:
                    changes["started_at"] = now
                self._update_row(conn, row, **changes)
                self._insert_event(conn, row, now, current.value, _INSTALLING_REASON, message)
            elif phase is Task.INSTALL and status == "succeeded" and current is JobState.INSTALLING:
                _check_task_order(uid, row["task"], Task.WAIT)
                self._update_row(
                    conn, row, state=JobState.RUNNING.value, task=Task.WAIT.value, reason=_READY_REASON, message=message
                )
                self._insert_event(conn, row, now, current.value, _READY_REASON, message)
            elif phase is Task.UNINSTALL and status == "started" and row["task"] != Task.UNINSTALL.value:
                self._update_row(conn, row, task=Task.UNINSTALL.value)
                self._insert_event(conn, row, now, current.value, reason, note)
            elif status == "failed":
                self._update_row(conn, row, reason=reason, message=message)
                self._insert_event(conn, row, now, current.value, reason, message)
            else:
                self._update_row(conn, row)  # an event only: the job's history changed
                self._insert_event(conn, row, now, current.value, None, note)
            return _job_of(row)
