"""The interfaces every data channel implements: a `Source` hands out batches, a `Sink` writes and commits them.

A flow (`scoring_flows`) reads `SourceBatch`es from one source, runs its steps, and hands each sink the records
that came through, in source order. Records travel as Arrow record batches typed by the channel's schema
(`data_channel.schema`), together with each record's *ordinal*: its position in the source (the row number from
0 for files and SQL queries, a counter for queues). Ordinals are what delivery guarantees are built on:

- **batch sources** (`file`, `sql`) are `resumable`: `open(start=N)` begins at ordinal N, so a restarted flow
  continues where the sinks' committed data ends;
- **sinks** commit with a *watermark*, the ordinal below which every record has been written, and report it
  again when opened with their saved state: a file sink truncates what was written after its last checkpoint,
  a SQL sink keeps its watermark in its own database, in the transaction that wrote the rows;
- **queue sources** (`redis`, `rabbitmq`, `http`) acknowledge a batch (`ack`) only once every sink has
  committed it: at least once.

Credentials come from `secretRef`s: locally, `secret_value` reads the environment variable
`MODELOPS_SECRET_<NAME>_<KEY>` (see its docstring). This package never imports the scheduler.
"""

from __future__ import annotations

import abc
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import pyarrow as pa

from data_channel.schema import RecordError, arrow_schema
from ir.models import DataChannelSpec, RecordSchema, SecretRef
from ir.secrets import secret_env_var

__all__ = [
    "ChannelContext",
    "ChannelError",
    "ChannelUnavailable",
    "InputMissing",
    "Sink",
    "Source",
    "SourceBatch",
    "SourceSize",
    "secret_env_name",
    "secret_value",
]


class ChannelError(Exception):
    """A data channel cannot do its work: bad options, a missing file, a refused query. Permanent."""


class InputMissing(ChannelError):
    """An input the source must read is not there (a file never created, or deleted since the job started):
    the job's input is invalid, which the flow reports as such (reason `InvalidInput`)."""


class ChannelUnavailable(ChannelError):
    """A service behind a channel does not answer (yet): worth retrying."""


def secret_env_name(ref: SecretRef) -> str:
    """`MODELOPS_SECRET_<NAME>_<KEY>` (`ir.secrets.secret_env_var`): name and key upper-cased, every other
    character than A-Z 0-9 as `_`.

    `{name: pg-main, key: url}` -> `MODELOPS_SECRET_PG_MAIN_URL`. On Kubernetes the chart sets the same variable
    from the Secret's key, so a flow reads its credentials the same way everywhere.
    """
    return secret_env_var(ref.name, ref.key)


def secret_value(ref: SecretRef, environ: Mapping[str, str] | None = None) -> str:
    """The value of a `secretRef`, from the environment; a missing one names the variable, never a value."""
    env = os.environ if environ is None else environ
    name = secret_env_name(ref)
    value = env.get(name)
    if not value:
        raise ChannelError(
            f"secret {ref.name}/{ref.key} is not set: locally it is read from the environment variable {name}"
        )
    return value


@dataclass
class ChannelContext:
    """What a channel needs from the process that runs it."""

    workdir: Path = field(default_factory=Path.cwd)
    """Relative file paths resolve against this folder (the flow's working directory)."""
    environ: Mapping[str, str] = field(default_factory=lambda: dict(os.environ))
    consumer: str = "modelops"
    """This process's name in consumer groups (Redis): stable across restarts, so it finds its own pending."""
    exchange: Any = None
    """The `data_channel.http.HttpExchange` of the process, shared by an http source and an http sink."""


@dataclass
class SourceBatch:
    """Records read together: the good ones typed by the channel's schema, and the errors of the others."""

    records: pa.RecordBatch
    ordinals: np.ndarray
    """int64, one per record of `records`: each record's position in the source."""
    start: int
    end: int
    """The ordinals [start, end) this batch covers, good and bad records alike."""
    errors: list[RecordError] = field(default_factory=list)
    token: Any = None
    """What `Source.ack` needs (message ids, delivery tags, a pending HTTP request); None for batch sources."""
    where: Callable[[int], str] | None = None
    """Describes the record at an ordinal of this batch in the source's words (`record 18 of /data/in.csv`)."""

    def describe(self, ordinal: int) -> str:
        return self.where(ordinal) if self.where is not None else f"record {ordinal + 1}"


@dataclass(frozen=True)
class SourceSize:
    """How much a source holds, as far as it can tell cheaply (for progress bars, never for correctness).

    `unit` "records": `total` records in all (a SQL count, Parquet footers, counted lines of small files), or,
    with `backlog`, records still waiting in a queue (a stream's undelivered entries, a queue's messages).
    `unit` "bytes": the input files are `total` bytes long, and `done` of them are read so far."""

    total: int
    unit: Literal["records", "bytes"] = "records"
    done: int | None = None
    backlog: bool = False


class Source(abc.ABC):
    """Reads records in batches. `open`, then `read` until it returns None, then `close`."""

    type: ClassVar[str]
    resumable: ClassVar[bool] = False
    """Whether `open(start=N)` can begin at ordinal N (batch sources)."""
    finite: ClassVar[bool] = True
    """Whether the source ends by itself (file, sql) rather than when stopped (queues)."""

    def __init__(self, name: str, spec: DataChannelSpec, context: ChannelContext) -> None:
        self.name = name
        self.spec = spec
        self.schema: RecordSchema = spec.record_schema
        self.arrow_schema: pa.Schema = arrow_schema(spec.record_schema)
        self.context = context
        self._stopping = False

    @abc.abstractmethod
    async def open(self, start: int = 0, state: Mapping[str, Any] | None = None) -> None:
        """Connect, or find the files; begin at ordinal `start` (resumable sources only). `state` is what
        `state()` returned when the checkpoint was taken."""

    @abc.abstractmethod
    async def read(self, max_records: int) -> SourceBatch | None:
        """The next batch of at most `max_records` records; None when the source is exhausted or stopped.

        Queue sources wait for at least one record (checking `stop()` every fraction of a second)."""

    answers_errors: ClassVar[bool] = False
    """Whether record errors go back to whoever sent the records (http) rather than failing the flow under the
    `fail` error policy: a client's bad input is no reason to stop serving the others."""

    async def ack(self, batch: SourceBatch) -> None:  # noqa: B027 - batch sources have nothing to acknowledge
        """Every sink has committed the batch: a queue may forget it. `batch.errors` then holds every error of
        the batch's records (from the source, the steps and the sinks)."""

    def stop(self) -> None:
        """Stop reading: `read` returns None soon (queues), or at once (batch sources: a cancelled job)."""
        self._stopping = True

    def state(self) -> dict[str, Any]:
        """What a resumed `open` needs besides the ordinal (e.g. which files there were); saved in checkpoints."""
        return {}

    async def size(self) -> SourceSize | None:
        """The source's size once opened, when it is cheap to know (see `SourceSize`); None when it is not.

        Asked at every progress report: a batch source works it out once (in `open`), a queue asks its broker."""
        return None

    def describe(self) -> str:
        return f"{self.type} source '{self.name}'"

    async def close(self) -> None:  # noqa: B027 - nothing to release by default
        """Release connections and files."""


class Sink(abc.ABC):
    """Writes records: `open`, then `write` and `commit` in turns, `finish` when a batch source is done, `close`."""

    type: ClassVar[str]
    keeps_watermark: ClassVar[bool] = False
    """Whether the sink stores its watermark itself, atomically with its data (SQL); else the checkpoint does."""

    def __init__(self, name: str, spec: DataChannelSpec, context: ChannelContext) -> None:
        self.name = name
        self.spec = spec
        self.schema: RecordSchema = spec.record_schema
        self.arrow_schema: pa.Schema = arrow_schema(spec.record_schema)
        self.context = context

    @abc.abstractmethod
    async def open(self, key: str, state: Mapping[str, Any] | None) -> int:
        """Prepare to write; return the watermark of what is already committed (0 for a fresh start).

        `key` names this sink of this run (stable across restarts of the same job); `state` is what the last
        checkpointed `commit` returned, None when there is none (then the sink starts afresh)."""

    @abc.abstractmethod
    async def write(self, records: pa.RecordBatch, ordinals: np.ndarray, token: Any = None) -> None:
        """Buffer records (the sink's own fields and types, see `schema.conform`); nothing is durable yet.

        `ordinals` are the records' source positions and `token` the source batch's token: an http sink uses
        them to answer the requests the records came in."""

    @abc.abstractmethod
    async def commit(self, watermark: int) -> dict[str, Any]:
        """Make everything written so far durable, with `watermark`; return the state a restart needs."""

    async def finish(self) -> None:  # noqa: B027 - most sinks have nothing to finalise
        """The source is exhausted and the last commit is done: finalise (e.g. move a file into place)."""

    def output_gone(self, state: Mapping[str, Any] | None) -> str | None:
        """Why the output a checkpoint's `state` (what `commit` returned) says was written is no longer there
        (a file deleted since), or None when it is, or the sink cannot tell. A flow checks this before it
        trusts a checkpoint, so it never resumes, or reports success, on top of output that is gone."""
        del state
        return None

    def describe(self) -> str:
        return f"{self.type} sink '{self.name}'"

    async def close(self) -> None:  # noqa: B027 - nothing to release by default
        """Release connections and files (without committing)."""
