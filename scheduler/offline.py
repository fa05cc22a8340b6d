"""Read a scheduler home without its server: what `modelops job list|show|logs` and `pipeline list` fall back to.

After `modelops run` (whose embedded scheduler stops with it) no server answers, yet the jobs it ran are in the
home's SQLite database and their logs under `<home>/jobs/`. When no server is configured (no `--server`, no
`MODELOPS_SERVER`) and nothing answers at the default address, the CLI reads them here: through the same
service and store code the server uses, on a read-only SQLite connection (`mode=ro`), so it can neither change a
job nor migrate the database. The answers are the API's own response models, parsed into the client's, so a
command prints the same thing either way.

A home whose database is PostgreSQL is never read this way: that database belongs to a server.
"""

from __future__ import annotations

import asyncio
import sqlite3
import uuid
from collections.abc import AsyncIterator, Coroutine, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

import sqlalchemy
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from scheduler.api.models import JobDetail as JobDetailOut
from scheduler.api.models import JobOut, JobPageOut, PipelineOut
from scheduler.backends.local import LocalBackend
from scheduler.client import AMBIGUOUS_SHOWN, ApiError, ClientError, JobDetail, JobPage, Pipeline, resolve_job_id
from scheduler.db import check_schema
from scheduler.errors import SchedulerError
from scheduler.service import SchedulerService
from scheduler.settings import SchedulerSettings
from scheduler.states import JobState, Task
from scheduler.store import DEFAULT_PAGE_SIZE, JobStore

__all__ = ["HomeReader", "home_database"]

_T = TypeVar("_T")

SQLITE_BUSY_TIMEOUT_SECONDS = 5.0
"""How long a read waits for a writer's lock (a `modelops run` finishing meanwhile) before giving up."""


def home_database(settings: SchedulerSettings) -> Path | None:
    """The SQLite file of the configured database when it exists, else None (PostgreSQL, or never created)."""
    url = make_url(settings.database_url)
    if url.get_backend_name() != "sqlite" or not url.database or url.database == ":memory:":
        return None
    path = Path(url.database).expanduser()
    return path if path.is_file() else None


class HomeReader:
    """The read commands' API over a home's SQLite database, read-only. `close()` it (or use `with`).

    Raises `ClientError` when the database cannot be read (not a scheduler database, an older schema), and
    `ApiError` with the API's status and code for what the API would refuse (an unknown job: 404).
    """

    def __init__(self, settings: SchedulerSettings, database: Path) -> None:
        self.database = database
        uri = f"file:{quote(str(database.resolve()))}?mode=ro"
        self._engine = sqlalchemy.create_engine(
            "sqlite://",
            creator=lambda: sqlite3.connect(
                uri, uri=True, check_same_thread=False, timeout=SQLITE_BUSY_TIMEOUT_SECONDS
            ),
            # A connection per use: the service reads from worker threads, and the pool "sqlite://" would get
            # (one connection per thread, closed from other threads) is not safe for that.
            poolclass=NullPool,
        )
        try:
            check = check_schema(self._engine)
        except SchedulerError as exc:
            self._engine.dispose()
            raise ClientError(f"cannot read {database}: {exc.message}") from None
        if not check.ok:
            self._engine.dispose()
            raise ClientError(check.message)
        store = JobStore(self._engine)
        # The backend only reads here (logs); it is never started, so it runs and recovers nothing.
        self._service = SchedulerService(store, LocalBackend(store, settings, b""), settings, b"")

    def __enter__(self) -> HomeReader:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        self._engine.dispose()

    def _call(self, work: Coroutine[Any, Any, _T]) -> _T:
        try:
            return asyncio.run(work)
        except SchedulerError as exc:
            raise ApiError(exc.http_status, exc.code, exc.message, exc.details) from None

    def list_jobs(
        self,
        *,
        state: JobState | None = None,
        pipeline: str | None = None,
        limit: int | None = None,
        cursor: str | None = None,
        id_prefix: str | None = None,
        q: str | None = None,
    ) -> JobPage:
        page = self._call(
            self._service.list_jobs(
                state=state,
                pipeline=pipeline,
                cursor=cursor,
                limit=limit or DEFAULT_PAGE_SIZE,
                id_prefix=id_prefix,
                q=q,
            )
        )
        out = JobPageOut(items=[JobOut.of(job) for job in page.items], next_cursor=page.next_cursor)
        return JobPage.model_validate_json(out.model_dump_json(by_alias=True))

    def resolve_job_id(self, job_id: uuid.UUID | str) -> uuid.UUID:
        return resolve_job_id(job_id, lambda prefix: self.list_jobs(id_prefix=prefix, limit=AMBIGUOUS_SHOWN))

    def get_job(self, job_id: uuid.UUID | str) -> JobDetail:
        job = self._call(self._service.get_job(self.resolve_job_id(job_id)))
        return JobDetail.model_validate_json(JobDetailOut.of(job).model_dump_json(by_alias=True))

    def list_pipelines(self) -> list[Pipeline]:
        pipelines = self._call(self._service.list_pipelines())
        return [Pipeline.model_validate_json(PipelineOut.of(p).model_dump_json()) for p in pipelines]

    def log_components(self, job_id: uuid.UUID | str) -> list[str]:
        return self._call(self._service.log_components(self.resolve_job_id(job_id)))

    def logs(
        self,
        job_id: uuid.UUID | str,
        *,
        task: Task | None = None,
        components: Sequence[str] = (),
        follow: bool = False,
    ) -> Iterator[str]:
        """The job's log as it is on disk, as `GET /jobs/{id}/logs` gives it. `follow` is ignored: without a
        server, no job moves on."""
        del follow
        wanted_id = self.resolve_job_id(job_id)
        wanted = [*components, *([task.value] if task is not None else [])]

        async def read() -> list[str]:
            lines: AsyncIterator[str] = await self._service.logs(wanted_id, wanted or None, False)
            return [line async for line in lines]

        yield from self._call(read())
