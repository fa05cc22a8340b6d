"""Several API worker processes, one lifecycle engine: how jobs travel from the workers to the engine.

One Python process serves about a thousand small requests a second on one core; a busy scheduler wants every
core for its API. But the lifecycle engine (the backend: runners, local processes, the Tekton reconciler) must
run exactly once, or two engines would start the same job twice. So `modelops serve --workers N` (PostgreSQL
only) runs:

- N uvicorn worker processes serving the REST API, each with a `DispatchBackend`: it stores nothing itself (the
  service has already written the job's new state) and only wakes the engine with a PostgreSQL notification
  (`start:<id>`, `cancel:<id>`, `completed:<id>`); logs are read as the real backend reads them;
- one `Engine` in the supervising process, in its own thread and event loop: it recovers the jobs a previous
  run left, then LISTENs, acts on each notification at once, and every `sweep_seconds` reads the jobs that need
  it (`JobStore.engine_work`) so a notification lost while it reconnected costs seconds, not a stuck job.

The database stays the only record: a notification says "look at this job", never what to do beyond that.

On PostgreSQL every server runs this way, one worker or several (`modelops serve`), so several servers
(replicas) may share one database: each serves the API, and only the one whose engine holds the leader lock
(`scheduler.leader`: a PostgreSQL advisory lock on a connection of its own) runs the backend. The others' engines
wait as followers and try the lock every `leader_retry_seconds` (2 s by default); when the leader dies, the first to
get the lock recovers its jobs (`Backend.recover`: re-attach, resume or fail them, as after a restart). A leader
checks its lock every `CHECK_SECONDS` and stops its backend at once when the check fails (`LeadershipLost`).
A local-backend leader also holds the home (`HomeLock`) while it leads, as a single server does.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import threading
import uuid
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Final

import anyio
import psycopg
from sqlalchemy.engine import make_url

from scheduler.admission import START_FAILED_REASON
from scheduler.backends.base import Backend
from scheduler.db import create_engine
from scheduler.errors import IllegalTransition, NotFound
from scheduler.joblogs import LogItem
from scheduler.leader import CHECK_SECONDS, LeaderLock, engine_identity
from scheduler.settings import SchedulerSettings
from scheduler.states import JobState, Task
from scheduler.store import ENGINE_CHANNEL, JobStore
from scheduler.tokens import load_secret

if TYPE_CHECKING:
    from scheduler.embedded import HomeLock

__all__ = ["DispatchBackend", "Engine", "dispatching"]

log = logging.getLogger(__name__)

BackendFactory = Callable[[JobStore, SchedulerSettings, bytes], Backend]

ENGINE_POOL_SIZE: Final = 8
"""Database connections of the engine: its store calls run in the default executor's threads, a few at a time
(the API workers hold the bulk of the connections, `worker_threads` shared out between them)."""

_STOP_CHECK_SECONDS: Final = 0.25
"""How long a wait for notifications lasts at most, so `stop()` takes effect within about that long."""

_RECONNECT_SECONDS: Final = (0.5, 1.0, 2.0, 5.0, 10.0)
"""Back-off between attempts when the engine loses the database (the last value repeats)."""


class DispatchBackend:
    """The `Backend` of an API worker: hands start/cancel/completion to the engine, reads logs itself."""

    def __init__(self, inner: Backend, store: JobStore) -> None:
        self.name = inner.name
        self._inner = inner
        self._store = store

    async def start(self, job_id: uuid.UUID) -> None:
        await anyio.to_thread.run_sync(self._store.notify_engine, "start", job_id)

    async def cancel(self, job_id: uuid.UUID) -> None:
        await anyio.to_thread.run_sync(self._store.notify_engine, "cancel", job_id)

    async def completed(self, job_id: uuid.UUID) -> None:
        await anyio.to_thread.run_sync(self._store.notify_engine, "completed", job_id)

    def logs(self, job_id: uuid.UUID, task: Task | None, follow: bool) -> AsyncIterator[str]:
        return self._inner.logs(job_id, task, follow)

    def component_logs(self, job_id: uuid.UUID, component: str, follow: bool) -> AsyncIterator[LogItem]:
        return self._inner.component_logs(job_id, component, follow)

    async def recover(self) -> None:
        """Nothing: the engine recovers the jobs, once, for every worker."""

    async def close(self) -> None:
        """Nothing runs here to stop (the inner backend never started anything)."""


def dispatching(factory: BackendFactory) -> BackendFactory:
    """A backend factory for API workers: `factory`'s backend (for its logs) behind a `DispatchBackend`."""

    def build(store: JobStore, settings: SchedulerSettings, secret: bytes) -> Backend:
        return DispatchBackend(factory(store, settings, secret), store)

    return build


def _libpq_url(database_url: str) -> str:
    """`postgresql+psycopg://...` (SQLAlchemy's form) as a libpq connection string for psycopg."""
    return make_url(database_url).set(drivername="postgresql").render_as_string(hide_password=False)


class Engine:
    """The lifecycle engine of a PostgreSQL server: a backend driven by notifications and sweeps, run while this
    engine holds the leader lock (`scheduler.leader`).

    `start()` runs it in a daemon thread with its own event loop and returns once the backend has recovered
    the jobs a previous run left, or the engine found another leader and follows it (or `start_timeout`
    passed: the engine keeps trying in the background);
    `stop()` ends the loop, closes the backend (job states untouched, like a single-process server's shutdown)
    and joins the thread.
    """

    def __init__(
        self,
        settings: SchedulerSettings,
        backend_factory: BackendFactory,
        *,
        sweep_seconds: float = 2.0,
        identity: str | None = None,
    ) -> None:
        if not settings.database_url.startswith("postgresql"):
            raise ValueError("the multi-worker engine needs PostgreSQL (LISTEN/NOTIFY)")
        self.identity = identity or engine_identity()
        """Who this engine is in the leader lock (`scheduler.leader.engine_identity`)."""
        self.leading = False
        """True while this engine holds the leader lock and runs the backend."""
        self._leader: str | None = None
        """The last leader this engine saw while following (logged when it changes)."""
        self._settings = settings
        self._factory = backend_factory
        self._sweep_seconds = sweep_seconds
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping = asyncio.Event()
        self._ready = threading.Event()
        self._attempt = 0
        """Failed starts in a row: the index into `_RECONNECT_SECONDS` (back to 0 once the engine is ready)."""
        self._started: set[uuid.UUID] = set()
        self._cancelled: set[uuid.UUID] = set()
        self._completed: set[uuid.UUID] = set()

    # -- thread -----------------------------------------------------------------------------------------

    def start(self, start_timeout: float = 60.0) -> None:
        self._thread = threading.Thread(target=self._run, name="modelops-engine", daemon=True)
        self._thread.start()
        if not self._ready.wait(start_timeout):
            log.warning("engine: not ready after %.0f s; it keeps trying in the background", start_timeout)

    def stop(self, timeout: float = 60.0) -> None:
        loop = self._loop
        if loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop already ended
                loop.call_soon_threadsafe(self._stopping.set)
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.error("engine: still stopping after %.0f s; leaving it to the process exit", timeout)

    def _run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        try:
            while not self._stopping.is_set():
                try:
                    await self._lead()
                except Exception as exc:
                    delay = _RECONNECT_SECONDS[min(self._attempt, len(_RECONNECT_SECONDS) - 1)]
                    self._attempt += 1
                    log.error("engine: %s: %s; starting again in %.1f s", type(exc).__name__, exc, delay)
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._stopping.wait(), delay)
            log.info("engine: stopped")
        finally:
            self._ready.set()

    # -- leadership -------------------------------------------------------------------------------------

    async def _lead(self) -> None:
        """Wait for the leader lock, then run the backend until stopped or the lock is lost (`LeadershipLost`)."""
        lock = LeaderLock(
            _libpq_url(self._settings.database_url),
            self.identity,
            retry_seconds=self._settings.leader_retry_seconds,
        )
        try:
            if not await lock.acquire(self._stopping, following=self._following):
                return
            log.info("engine: leading as %s (took the leader lock)", self.identity)
            self._leader = None
            home = self._hold_home()
            try:
                self.leading = True
                await self._serve(lock)
            finally:
                self.leading = False
                if home is not None:
                    home.release()
        finally:
            await lock.release()

    def _following(self, leader: str | None) -> None:
        if leader != self._leader:
            log.info("engine: following; %s leads", leader or "another scheduler")
            self._leader = leader
        self._attempt = 0
        self._ready.set()  # a follower is as ready as it will be: its API serves

    def _hold_home(self) -> HomeLock | None:
        """A local-backend leader holds the home, as a single server does (`scheduler.embedded.HomeLock`):
        nothing else (`modelops run`, a server on SQLite) may run jobs on it meanwhile."""
        if self._settings.backend != "local":
            return None
        from scheduler.embedded import HomeLock

        home = HomeLock(self._settings.home)
        home.acquire(self._settings.public_url)  # HomeLocked: the caller backs off and tries again
        return home

    # -- the engine proper ------------------------------------------------------------------------------

    async def _serve(self, lock: LeaderLock) -> None:
        settings = self._settings
        engine = create_engine(settings.database_url, pool_size=ENGINE_POOL_SIZE, max_overflow=ENGINE_POOL_SIZE)
        try:
            store = JobStore(engine)
            secret = await asyncio.to_thread(load_secret, settings.home)
            backend = self._factory(store, settings, secret)
            try:
                async with await psycopg.AsyncConnection.connect(
                    _libpq_url(settings.database_url), autocommit=True
                ) as listener:
                    # LISTEN before recovering: a job created meanwhile is either seen by recover or notified.
                    await listener.execute(f"LISTEN {ENGINE_CHANNEL}")
                    self._started.clear()
                    self._cancelled.clear()
                    self._completed.clear()
                    await backend.recover()
                    if settings.gc_freeze:
                        # As the API workers do (scheduler.app): what lives now lives as long as the engine, so
                        # keep it out of later full collections, which otherwise walk it all again each time.
                        gc.collect()
                        gc.freeze()
                    log.info("engine: %s backend ready", backend.name)
                    self._attempt = 0
                    self._ready.set()
                    loop = asyncio.get_running_loop()
                    next_sweep = next_check = loop.time()
                    while not self._stopping.is_set():
                        if loop.time() >= next_check:  # fencing: stop at once when the lock is gone
                            await lock.check()
                            next_check = loop.time() + CHECK_SECONDS
                        if loop.time() >= next_sweep:
                            await self._sweep(store, backend)
                            next_sweep = loop.time() + self._sweep_seconds
                        # Wake for notifications at once; look at `_stopping` at least every _STOP_CHECK_SECONDS.
                        wait = min(_STOP_CHECK_SECONDS, max(min(next_sweep, next_check) - loop.time(), 0.0))
                        async for note in listener.notifies(timeout=wait):
                            await self._on_notification(store, backend, note.payload)
            finally:
                await backend.close()
        finally:
            await asyncio.to_thread(engine.dispose)

    async def _on_notification(self, store: JobStore, backend: Backend, payload: str) -> None:
        action, _, raw = payload.partition(":")
        try:
            job_id = uuid.UUID(raw)
        except ValueError:
            log.warning("engine: ignored a notification it cannot read: %r", payload)
            return
        if action == "start":
            await self._start(store, backend, job_id)
        elif action == "cancel":
            await self._cancel(backend, job_id)
        elif action == "completed":
            await self._complete(backend, job_id)
        else:
            log.warning("engine: ignored unknown notification %r", payload)

    async def _sweep(self, store: JobStore, backend: Backend) -> None:
        """Act on every job that needs it (what notifications may have missed); forget jobs that moved on."""
        work = await asyncio.to_thread(store.engine_work, backend.name)
        pending = {job_id for job_id, state, _ in work if state == JobState.PENDING}
        cancelling = {job_id for job_id, state, _ in work if state == JobState.CANCELLING}
        completed = {job_id for job_id, state, completion in work if completion is not None}
        self._started &= pending
        self._cancelled &= cancelling
        self._completed &= completed
        for job_id in sorted(pending - self._started):
            await self._start(store, backend, job_id)
        for job_id in sorted(cancelling - self._cancelled):
            await self._cancel(backend, job_id)
        for job_id in sorted(completed - self._completed - cancelling):
            await self._complete(backend, job_id)

    async def _start(self, store: JobStore, backend: Backend, job_id: uuid.UUID) -> None:
        if job_id in self._started:
            return
        self._started.add(job_id)
        try:
            await backend.start(job_id)
        except Exception as exc:
            log.exception("job %s: the %s backend could not start it", job_id, backend.name)
            message = f"the {backend.name} backend could not start the job: {exc}"
            with contextlib.suppress(IllegalTransition, NotFound):
                await asyncio.to_thread(
                    store.transition, job_id, JobState.FAILED, reason=START_FAILED_REASON, message=message
                )

    async def _cancel(self, backend: Backend, job_id: uuid.UUID) -> None:
        self._cancelled.add(job_id)
        try:
            await backend.cancel(job_id)
        except NotFound:
            pass
        except Exception:
            log.exception("job %s: the %s backend could not cancel it; the next sweep retries", job_id, backend.name)
            self._cancelled.discard(job_id)

    async def _complete(self, backend: Backend, job_id: uuid.UUID) -> None:
        self._completed.add(job_id)
        try:
            await backend.completed(job_id)
        except Exception:
            log.exception("job %s: the %s backend could not end its wait; the next sweep retries", job_id, backend.name)
            self._completed.discard(job_id)


def _implements_backend(backend: DispatchBackend) -> Backend:
    return backend  # mypy checks here that DispatchBackend implements the Backend protocol
