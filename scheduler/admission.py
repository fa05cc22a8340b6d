"""Admission: at most `max_running_jobs` jobs run at once; the others wait PENDING, in order, with a position.

Without it a burst of jobs starts every one at once (20 local jobs were 60 processes; 200 on a 2-core machine
would be 600). Every backend starts jobs through one `Admission` (its `start` calls `submit`), and that is the
only way a job starts: the single-process server's service, the multi-worker engine's notifications and sweeps
(`scheduler.dispatch`) and a backend's own recovery all call the backend's `start`. So the limit holds on every
path, for the local backend's processes as for the tekton backend's PipelineRuns (admission comes before the
PipelineRun is created).

The store is the record (`JobStore.admit_queued`): admitting a job stamps `admitted_at` in the same transaction
that counts the slots held (every admitted, unfinished job), so the count never misses a job whose start is
under way, and a restarted server or engine knows which PENDING jobs were admitted and which are queued. A
queued job's position is its rank among the queued jobs by creation time (`Job.queue_position`); a cancel of a
queued job ends it at once (`JobStore.cancel_queued`: nothing was deployed, nothing to tear down).

Slots free when a run ends: the backend calls `released()`, which admits the next jobs in the background. A
start that fails fails its job (`BackendStartFailed`) and frees its slot the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Awaitable, Callable
from typing import Final

from scheduler.errors import IllegalTransition, NotFound, StoreUnavailable
from scheduler.states import JobState
from scheduler.store import JobStore

__all__ = ["START_FAILED_REASON", "Admission"]

log = logging.getLogger(__name__)

START_FAILED_REASON: Final = "BackendStartFailed"
"""The reason of a job its backend could not start."""

_RETRY_SECONDS: Final = 2.0
"""How soon admission tries again when the database was unavailable as a slot freed."""

Launch = Callable[[uuid.UUID], Awaitable[None]]


class Admission:
    """Admits `backend`'s queued jobs into at most `limit` slots (0: no limit) and starts each with `launch`.

    `launch(job_id)` starts an admitted, PENDING job (idempotent: a job already started is left alone).
    """

    def __init__(self, store: JobStore, backend: str, limit: int, launch: Launch) -> None:
        self.store = store
        self.backend = backend
        self.limit = limit
        self._launch = launch
        self._lock = asyncio.Lock()
        self._dirty = False
        self._pumper: asyncio.Task[None] | None = None
        self._closed = False

    async def submit(self, job_id: uuid.UUID) -> None:
        """A PENDING job asks to start: admit whatever fits (oldest first) and start it; the job stays queued
        when there is no free slot. Raises what `launch` raised for this job (the job is FAILED then)."""
        await self.pump(requested=job_id)

    async def pump(self, requested: uuid.UUID | None = None) -> None:
        """Admit queued jobs into the free slots and start them, in creation order.

        `requested` is also started if it was admitted before (a start repeated after a restart); its start
        failure is raised after the others were started.
        """
        async with self._lock:
            chosen = list(await asyncio.to_thread(self.store.admit_queued, self.backend, self.limit))
            if requested is not None and requested not in chosen:
                with contextlib.suppress(NotFound):
                    job = await asyncio.to_thread(self.store.get_job, requested)
                    if job.state is JobState.PENDING and job.admitted_at is not None:
                        chosen.append(requested)
                    elif job.queue_position is not None:
                        log.info("job %s: queued at position %d", requested, job.queue_position)
            failure: BaseException | None = None
            for job_id in chosen:
                try:
                    await self._launch(job_id)
                except Exception as exc:
                    log.exception("job %s: the %s backend could not start it", job_id, self.backend)
                    await self._fail(job_id, exc)
                    if job_id == requested:
                        failure = exc
            if failure is not None:
                raise failure

    def released(self) -> None:
        """A slot may have freed (a run ended): admit the next jobs in the background."""
        if self._closed or self.limit == 0:
            return
        self._dirty = True
        if self._pumper is None or self._pumper.done():
            self._pumper = asyncio.get_running_loop().create_task(self._pump_while_dirty(), name="admission")

    async def close(self) -> None:
        """Stop admitting (server shutdown): queued jobs stay queued for the next start."""
        self._closed = True
        if self._pumper is not None:
            self._pumper.cancel()
            await asyncio.gather(self._pumper, return_exceptions=True)

    async def _pump_while_dirty(self) -> None:
        while self._dirty and not self._closed:
            self._dirty = False
            try:
                await self.pump()
            except StoreUnavailable as exc:
                log.warning("admission: %s; trying again in %.0f s", exc, _RETRY_SECONDS)
                self._dirty = True
                await asyncio.sleep(_RETRY_SECONDS)
            except Exception:
                log.exception("admission: could not admit the next jobs; the next ended job tries again")

    async def _fail(self, job_id: uuid.UUID, exc: BaseException) -> None:
        message = f"the {self.backend} backend could not start the job: {exc}"
        try:
            await asyncio.to_thread(
                self.store.transition, job_id, JobState.FAILED, reason=START_FAILED_REASON, message=message
            )
        except (IllegalTransition, NotFound):
            return  # the backend got further than it said, or someone else ended the job
        except StoreUnavailable:
            log.warning("job %s: could not record that its start failed (database unavailable)", job_id)
            return
        self.released()
