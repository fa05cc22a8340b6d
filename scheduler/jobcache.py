"""`GET /jobs/{id}` from a body serialised once per state of the job, checked against the database per request.

Why: the read path through the worker-thread hop, SQLAlchemy (the job left-joined with its events) and pydantic
costs ~0.5 ms of CPU per GET, about twice what a p99 under 20 ms at 32 clients allows (bench/README.md,
"Scheduler (issue 3)"). Here a hit costs one prepared statement of one small row, on an asynchronous psycopg
connection of this module's own (PostgreSQL; no thread hop, no SQLAlchemy), and a dictionary look-up.

Why it is never stale: every write to a job (a transition, task, progress, completion, backend reference, event,
admission, cancel) sets the job's `updated_at` to a value strictly greater than the one before, under the row's
lock (`JobStore._next_updated_at`, `_ADMIT_JOB`); a job's events and pipeline never change without that. A body
is kept with the `updated_at` of the snapshot it was rendered from, and served only when the row's `updated_at`,
read after the request arrived, is the same: a write that returned before the GET (from any process: another API
worker, the engine) has committed, so the read sees its `updated_at`. No notification can promise that: a
`NOTIFY` sent in the writer's transaction reaches another worker's listener some time after the writer's client
has its answer, and knowing that a listener is "caught up" takes a round trip to the database, the same price as
this check. Entries of jobs that changed are replaced by the next read; the cache holds at most `size` jobs.

Not cached: a queued job (PENDING, not admitted): its `queue_position` moves with other jobs' admissions.
SQLite (one process) checks the row through the store in a worker thread. If the check cannot run (the
connection dropped, PostgreSQL restarts) the request takes the full path, which reports the outage as before.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Final

import anyio.to_thread
import psycopg
from sqlalchemy.engine import URL

from scheduler.db.session import POSTGRES_CONNECT_TIMEOUT_SECONDS
from scheduler.states import JobState
from scheduler.store import Job, JobStamp, JobStore

log = logging.getLogger(__name__)

DEFAULT_SIZE: Final = 4096
"""Jobs whose body is kept (a detail body is 1-3 kB: a few MB per process at most)."""
DEFAULT_CONNECTIONS: Final = 4
"""Asynchronous connections of the check per process: one statement of ~0.1 ms each, on one event loop."""

_STAMP_SQL: Final = "SELECT updated_at, state, admitted_at FROM jobs WHERE id = %s"


class _PostgresStamps:
    """`JobStamp`s read with one prepared statement on a few autocommit connections (opened when first needed)."""

    def __init__(self, url: URL, connections: int) -> None:
        query = dict(url.query)
        query.setdefault("connect_timeout", str(POSTGRES_CONNECT_TIMEOUT_SECONDS))
        self._conninfo = url.set(drivername="postgresql", query=query).render_as_string(hide_password=False)
        self._idle: list[psycopg.AsyncConnection[tuple[object, ...]]] = []
        self._slots = asyncio.Semaphore(connections)
        self._closed = False

    async def stamp(self, job_id: uuid.UUID) -> JobStamp | None:
        async with self._slots:
            conn = self._idle.pop() if self._idle else None
            if conn is None or conn.closed:
                conn = await psycopg.AsyncConnection.connect(self._conninfo, autocommit=True)
            try:
                cursor = await conn.execute(_STAMP_SQL, (job_id,), prepare=True)
                row = await cursor.fetchone()
            except BaseException:
                await conn.close()  # a failed or cancelled statement leaves the connection in doubt
                raise
            if self._closed:
                await conn.close()
            else:
                self._idle.append(conn)
        if row is None:
            return None
        updated_at, state, admitted_at = row
        if not isinstance(updated_at, datetime) or not isinstance(state, str):
            raise TypeError(f"unexpected jobs row for {job_id}: {row!r}")
        return JobStamp(updated_at=updated_at, state=JobState(state), admitted=admitted_at is not None)

    async def close(self) -> None:
        self._closed = True
        idle, self._idle = self._idle, []
        for conn in idle:
            await conn.close()


class JobBodyCache:
    """The bodies of `GET /jobs/{id}`: `body(job_id)` is `render(await fetch(job_id))` with the same bytes, from
    memory while the job has not changed (see the module doc). Use from one event loop."""

    def __init__(
        self,
        store: JobStore,
        fetch: Callable[[uuid.UUID], Awaitable[Job]],
        render: Callable[[Job], bytes],
        *,
        url: URL | None = None,
        size: int = DEFAULT_SIZE,
        connections: int = DEFAULT_CONNECTIONS,
    ) -> None:
        """`fetch` reads the job in full (raising `NotFound` for an unknown one); `url` is the database's (None or
        SQLite: the check goes through `store` in a worker thread)."""
        if size < 1:
            raise ValueError(f"JobBodyCache size must be at least 1, not {size}")
        self._store = store
        self._fetch = fetch
        self._render = render
        self._size = size
        self._entries: OrderedDict[uuid.UUID, tuple[datetime, bytes]] = OrderedDict()
        self._postgres = (
            _PostgresStamps(url, connections) if url is not None and url.get_backend_name() == "postgresql" else None
        )
        self.hits = 0
        self.misses = 0
        self.check_failures = 0

    def __len__(self) -> int:
        return len(self._entries)

    async def _stamp(self, job_id: uuid.UUID) -> JobStamp | None:
        if self._postgres is not None:
            return await self._postgres.stamp(job_id)
        return await anyio.to_thread.run_sync(self._store.job_stamp, job_id)

    async def body(self, job_id: uuid.UUID) -> bytes:
        """The JSON body of the job as it is now. Raises what `fetch` raises (`NotFound`, `StoreUnavailable`)."""
        entry = self._entries.get(job_id)
        if entry is not None:
            try:
                stamp = await self._stamp(job_id)
            except Exception as exc:  # the full path below reports the outage in the API's terms
                self.check_failures += 1
                log.debug("job %s: the cached body's check failed (%s); reading it in full", job_id, exc)
                stamp = None
            if stamp is not None and stamp.cacheable and stamp.updated_at == entry[0]:
                self.hits += 1
                self._entries.move_to_end(job_id)
                return entry[1]
        self.misses += 1
        job = await self._fetch(job_id)
        body = self._render(job)
        if job.updated_at is not None and (job.state is not JobState.PENDING or job.admitted_at is not None):
            self._entries[job_id] = (job.updated_at, body)
            self._entries.move_to_end(job_id)
            while len(self._entries) > self._size:
                self._entries.popitem(last=False)
        else:
            self._entries.pop(job_id, None)
        return body

    async def close(self) -> None:
        """Close the check's connections and drop every body."""
        self._entries.clear()
        if self._postgres is not None:
            await self._postgres.close()
