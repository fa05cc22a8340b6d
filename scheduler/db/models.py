"""The scheduler's tables as SQLAlchemy 2 typed declarative models: the schema the migrations must produce.

Five tables: `pipelines` (a name), `pipeline_versions` (an immutable, content-addressed IR document per
deploy), `jobs` (one run of a version through install -> wait -> uninstall), `job_events` (the append-only
history of every state and task change) and `job_progress_samples` (the job's counters over time). The same
models serve SQLite (the embedded default) and PostgreSQL, so only portable types are used: `Uuid` (native
`uuid` on PostgreSQL, `CHAR(32)` on SQLite), `JSON`, and `UTCDateTime`, which stores UTC and always hands
back timezone-aware datetimes (SQLite has no time zones).

These classes are the store's private business: `scheduler.store` returns frozen dataclasses, never these
live ORM objects. Every change to them needs a new Alembic revision in `migrations/versions/`; a test compares
the migrated schema with this metadata and fails on drift.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, ClassVar, Final

from sqlalchemy import (
    JSON,
    BigInteger,
    CheckConstraint,
    DateTime,
    Dialect,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    Uuid,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator

from scheduler.states import JobState, Task

__all__ = [
    "Base",
    "JobEventRow",
    "JobProgressSampleRow",
    "JobRow",
    "PipelineRow",
    "PipelineVersionRow",
    "UTCDateTime",
]

# Deterministic constraint names, identical on both databases, so migrations can refer to them.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

STATE_LENGTH = 16
TASK_LENGTH = 16


def _in_list(column: str, values: list[str]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


STATE_VALUES = [s.value for s in JobState]
TASK_VALUES = [t.value for t in Task]


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp stored in UTC and always returned timezone-aware.

    PostgreSQL keeps `timestamptz` natively; SQLite stores text without an offset, so values are converted to
    UTC on the way in and marked UTC on the way out. Naive datetimes are refused: they are a bug at the caller.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError(f"naive datetime {value!r}: the scheduler stores timezone-aware UTC times only")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


class Base(DeclarativeBase):
    """Declarative base carrying the naming convention and the portable JSON type for `dict` columns."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    # none_as_null: a Python None in a nullable JSON column is SQL NULL, not the JSON text `null`.
    type_annotation_map: ClassVar[dict[Any, Any]] = {dict[str, Any]: JSON(none_as_null=True), datetime: UTCDateTime}


class PipelineRow(Base):
    """A named scoring pipeline; its content lives in its versions."""

    __tablename__ = "pipelines"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(253), unique=True)
    created_at: Mapped[datetime]

    versions: Mapped[list[PipelineVersionRow]] = relationship(
        back_populates="pipeline", order_by="PipelineVersionRow.number"
    )


class PipelineVersionRow(Base):
    """One immutable IR document of a pipeline, numbered 1, 2, ... and deduplicated by its SHA-256 digest."""

    __tablename__ = "pipeline_versions"
    __table_args__ = (
        UniqueConstraint("pipeline_id", "number"),
        UniqueConstraint("pipeline_id", "digest"),
        CheckConstraint("number >= 1", name="number_positive"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    pipeline_id: Mapped[int] = mapped_column(ForeignKey("pipelines.id", ondelete="RESTRICT"))
    number: Mapped[int]
    digest: Mapped[str] = mapped_column(String(64))
    """SHA-256 hex digest of the normalised IR document."""
    ir: Mapped[dict[str, Any]]
    """The normalised IR document."""
    created_at: Mapped[datetime]
    created_by: Mapped[str | None] = mapped_column(String(255))

    pipeline: Mapped[PipelineRow] = relationship(back_populates="versions")


TRIGRAM_COLUMNS: Final = ("created_by", "reason", "message")
"""The job columns the text search (`q`) looks into: on PostgreSQL each has a trigram index (pg_trgm, migration
0006), so a word in few jobs is found without reading every row."""
_TRIGRAM_INDEXES: Final = tuple(
    Index(
        f"ix_jobs_{name}_trgm",
        name,
        postgresql_using="gin",
        postgresql_ops={name: "gin_trgm_ops"},
        postgresql_with={"gin_pending_list_limit": 64},  # see migration 0006
    ).ddl_if(dialect="postgresql")
    for name in TRIGRAM_COLUMNS
)

POSTGRESQL_ONLY_INDEXES: Final = frozenset(f"ix_jobs_{name}_trgm" for name in TRIGRAM_COLUMNS)


def schema_filter(dialect: str) -> Callable[[object, str | None, str, bool, object | None], bool]:
    """Alembic's `include_object` for a database of `dialect`: every object of the models, except the indexes that
    exist only on PostgreSQL (`ddl_if`, which Alembic's comparison does not read) anywhere else."""

    def include(_obj: object, name: str | None, type_: str, _reflected: bool, _compare_to: object | None) -> bool:
        return not (type_ == "index" and dialect != "postgresql" and name in POSTGRESQL_ONLY_INDEXES)

    return include


class JobRow(Base):
    """One run of a pipeline version. Its state only changes through `JobStore.transition`."""

    __tablename__ = "jobs"
    __table_args__ = (
        Index(None, "created_at", "id"),
        Index(None, "state"),
        Index(None, "pipeline_version_id", "created_at", "id"),
        Index(None, "created_by", "created_at"),
        Index(None, "updated_at", "id"),
        *_TRIGRAM_INDEXES,
        CheckConstraint(_in_list("state", STATE_VALUES), name="state_known"),
        CheckConstraint(f"task IS NULL OR {_in_list('task', TASK_VALUES)}", name="task_known"),
        CheckConstraint(
            "records_read >= 0 AND records_written >= 0 AND records_failed >= 0", name="counters_non_negative"
        ),
        CheckConstraint("completion IS NULL OR completion IN ('succeeded', 'failed')", name="completion_known"),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    pipeline_version_id: Mapped[int] = mapped_column(ForeignKey("pipeline_versions.id", ondelete="RESTRICT"))
    state: Mapped[str] = mapped_column(String(STATE_LENGTH))
    task: Mapped[str | None] = mapped_column(String(TASK_LENGTH))
    parameters: Mapped[dict[str, Any]]
    """Job parameters applied over the IR's global parameters."""
    environment: Mapped[dict[str, Any]]
    """Environment the job runs with (e.g. namespace, image overrides); backend-specific."""
    backend: Mapped[str] = mapped_column(String(32))
    backend_ref: Mapped[dict[str, Any] | None]
    """How the backend finds the run again, e.g. `{"pipelinerun": "job-abc12"}` or local process info."""
    idempotency_key: Mapped[str | None] = mapped_column(String(255), unique=True)
    token_hash: Mapped[str] = mapped_column(String(64))
    """SHA-256 hex of the per-job token the runners use to report progress and completion."""
    created_at: Mapped[datetime]
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    reason: Mapped[str | None] = mapped_column(String(64))
    message: Mapped[str | None] = mapped_column(Text)
    records_read: Mapped[int] = mapped_column(BigInteger, default=0)
    records_written: Mapped[int] = mapped_column(BigInteger, default=0)
    records_failed: Mapped[int] = mapped_column(BigInteger, default=0)
    completion: Mapped[str | None] = mapped_column(String(16))
    """What the scoring flows reported at the end of their work (`succeeded`/`failed`); ends the wait phase."""
    completion_message: Mapped[str | None] = mapped_column(Text)
    flow_completions: Mapped[dict[str, Any] | None]
    """Reports of the pipeline's flows one by one (`{flow: {"succeeded": bool, "message": str | None}}`); the
    job's `completion` is set once every flow succeeded, or at the first failure."""
    flow_progress: Mapped[dict[str, Any] | None]
    """The latest progress report of each flow that reports by name (`{flow: {state, read, written, failed,
    filtered, total, unit, done, rate, outputs, services, at}}`, see `JobStore.update_progress`)."""
    admitted_at: Mapped[datetime | None]
    """When admission let the job start (`scheduler.admission`); a PENDING job without it is queued."""
    created_by: Mapped[str | None] = mapped_column(String(255))
    """The name of the API token that created the job (what the per-token quotas count); None in open mode."""
    updated_at: Mapped[datetime]
    """When the row last changed (any write: state, task, progress, completion, admission, backend_ref, an
    event); strictly increasing per job. The job change feed (`scheduler.changes`) polls its index."""

    version: Mapped[PipelineVersionRow] = relationship()
    events: Mapped[list[JobEventRow]] = relationship(
        back_populates="job", order_by="JobEventRow.id", passive_deletes=True
    )


class JobEventRow(Base):
    """One entry of a job's history: a state change, or a task change within the same state."""

    __tablename__ = "job_events"
    __table_args__ = (
        Index(None, "job_id", "id"),
        CheckConstraint(f"from_state IS NULL OR {_in_list('from_state', STATE_VALUES)}", name="from_state_known"),
        CheckConstraint(_in_list("to_state", STATE_VALUES), name="to_state_known"),
        CheckConstraint(f"task IS NULL OR {_in_list('task', TASK_VALUES)}", name="task_known"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    at: Mapped[datetime]
    from_state: Mapped[str | None] = mapped_column(String(STATE_LENGTH))
    """None for the event that records the job's creation."""
    to_state: Mapped[str] = mapped_column(String(STATE_LENGTH))
    task: Mapped[str | None] = mapped_column(String(TASK_LENGTH))
    reason: Mapped[str | None] = mapped_column(String(64))
    message: Mapped[str | None] = mapped_column(Text)

    job: Mapped[JobRow] = relationship(back_populates="events")


class JobProgressSampleRow(Base):
    """The job's counters at one moment: written by `JobStore.update_progress` (at most one per job every
    `PROGRESS_SAMPLE_SECONDS`), read as the job's progress over time (rows/s chart, ETA)."""

    __tablename__ = "job_progress_samples"
    __table_args__ = (
        Index(None, "job_id", "at"),
        CheckConstraint("read >= 0 AND written >= 0 AND failed >= 0", name="counters_non_negative"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    at: Mapped[datetime]
    read: Mapped[int] = mapped_column(BigInteger)
    written: Mapped[int] = mapped_column(BigInteger)
    failed: Mapped[int] = mapped_column(BigInteger)
