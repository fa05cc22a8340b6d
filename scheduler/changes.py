"""The job change feed: which jobs changed, pushed to every subscriber within a fraction of a second.

The web UI's pages and the API's server-sent event streams (`GET /api/v1/jobs/events`, `/jobs/{id}/events`)
follow jobs through `SchedulerService.watch_jobs` and `watch_job`, which read from one `JobChangeFeed` per
process. The feed polls the `jobs.updated_at` index (set by every store write) once for everybody, never once
per subscriber, so a hundred open pages cost one cheap query every `interval`. Polling the database, rather
than being told by the writers, is what makes writes of other processes visible too: the API workers and the
lifecycle engine of a multi-worker server, a second replica. A write of this process wakes the poller at once
(`JobStore.add_change_listener` -> `poke`), so the local case does not wait for the next tick.

How a poll finds every change exactly once:

- it reads the `(id, updated_at)` keys changed since `high - overlap`, where `high` is the newest change it
  has seen; a key already delivered (same id, same or older `updated_at`) is skipped, the others are read in
  full and delivered. `updated_at` strictly increases per job (`JobStore._next_updated_at`), so a new write
  is always a new key.
- the overlap window is for commit order: a transaction can take its `updated_at` before another one and
  commit after it (or come from a replica whose clock is a little behind). Rescanning the last `overlap`
  seconds finds such a row once it is committed; only a commit later than `overlap` could be missed.

Each subscriber has its own pending map (job id -> newest job): a batch holds each job at most once, in its
newest state, however slowly the subscriber reads. It is bounded: a subscriber that has not read the last
batch yet when more changes would make it hold over `max_pending` jobs is dropped to "resync" (one poll's
batch, however large, is always taken): its iterator raises `FeedLagged` (the SSE stream tells the client to
reload) instead of the feed holding ever more memory for it.

The poller is an asyncio task started with the first subscriber and ended with the last one; the store runs
in a worker thread (`anyio.to_thread`). A database outage is logged and retried with back-off, without ending
the subscriptions. `close()` (the app's lifespan end) ends every subscription's iterator and the task.

uvicorn waits for open responses to finish before it runs the lifespan's end, and an event stream never
finishes by itself: `drain_feeds()`, called as the server begins to shut down (`scheduler.serving.Server`),
ends every subscription of the feeds of this event loop first, so the streams end and the server stops at
once rather than after its graceful-shutdown timeout.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import uuid
import weakref
from collections.abc import Collection
from contextlib import suppress
from datetime import UTC, datetime, timedelta
from types import TracebackType
from typing import Final

import anyio.to_thread

from scheduler.errors import StoreUnavailable
from scheduler.store import CHANGE_KEYS_PAGE, Job, JobStore

__all__ = ["FeedLagged", "JobChangeFeed", "Subscription", "drain_feeds"]

log = logging.getLogger(__name__)

POLL_INTERVAL: Final = 0.25
"""Seconds between two polls when nothing wakes the poller (what a write of another process waits at most)."""
MIN_POLL_GAP: Final = 0.05
"""The least time between two polls, however often writes poke the feed: 20 progress reports a second from
20 jobs are one poll per 50 ms, not 20."""
OVERLAP: Final = timedelta(seconds=5)
"""How far back each poll looks again for rows committed out of `updated_at` order (see the module docstring)."""
MAX_PENDING: Final = 5000
"""The most jobs a subscriber may have waiting for it to read before it is dropped to resync."""
MAX_BACKOFF: Final = 10.0
"""The longest wait between two attempts while the database is unavailable."""
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_FEEDS: Final[weakref.WeakSet[JobChangeFeed]] = weakref.WeakSet()
"""Every feed of this process, for `drain_feeds`."""


def drain_feeds() -> int:
    """End the subscriptions of every feed bound to the running event loop, now and from now on (the server
    is shutting down: its event streams must end); how many feeds that was. Call it in that loop."""
    loop = asyncio.get_running_loop()
    drained = [feed for feed in tuple(_FEEDS) if feed._loop is loop]
    for feed in drained:
        feed.drain()
    return len(drained)


class FeedLagged(Exception):
    """The subscriber read too slowly: more than `max_pending` jobs changed since it last read. It lost track
    and must start again from the current state (a page reloads its list)."""


class _Subscriber:
    __slots__ = ("closed", "job_ids", "lagged", "pending", "wake")

    def __init__(self, job_ids: frozenset[uuid.UUID] | None) -> None:
        self.job_ids = job_ids
        self.pending: dict[uuid.UUID, Job] = {}
        self.wake = asyncio.Event()
        self.lagged = False
        self.closed = False


class Subscription:
    """One subscriber's view of the feed: an async iterator of batches (`list[Job]`, each job once, newest
    state, without events), also an async context manager that closes it. Ends when it or the feed is closed;
    raises `FeedLagged` when it fell too far behind."""

    def __init__(self, feed: JobChangeFeed, subscriber: _Subscriber) -> None:
        self._feed = feed
        self._subscriber = subscriber

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> list[Job]:
        subscriber = self._subscriber
        while True:
            if subscriber.closed or self._feed.closed or self._feed.draining:
                raise StopAsyncIteration
            if subscriber.lagged:
                raise FeedLagged(f"more than {self._feed.max_pending} jobs changed before the subscriber read them")
            if subscriber.pending:
                batch = list(subscriber.pending.values())
                subscriber.pending.clear()
                return batch
            subscriber.wake.clear()
            await subscriber.wake.wait()

    def close(self) -> None:
        """Leave the feed (idempotent); the poller stops when its last subscriber has left."""
        self._feed._leave(self._subscriber)

    async def aclose(self) -> None:
        """`close`, as async iterators that hold resources spell it."""
        self.close()

    async def __aenter__(self) -> Subscription:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.close()


class JobChangeFeed:
    """The jobs that changed in `store`'s database, polled once per process and fanned out to subscribers.

    Use it from one event loop (the server's). `subscribe()` joins, `poke()` (any thread) asks for a poll now,
    `close()` ends everything.
    """

    def __init__(
        self,
        store: JobStore,
        *,
        interval: float = POLL_INTERVAL,
        min_gap: float = MIN_POLL_GAP,
        overlap: timedelta = OVERLAP,
        max_pending: int = MAX_PENDING,
        max_backoff: float = MAX_BACKOFF,
    ) -> None:
        self.store = store
        self.interval = interval
        self.min_gap = min_gap
        self.overlap = overlap
        self.max_pending = max_pending
        self.max_backoff = max_backoff
        self.closed = False
        self.draining = False
        """Set by `drain`: subscriptions end at once (the server is stopping)."""
        self.polls = 0
        """Polls made so far (what the tests and the bench count)."""
        self._subscribers: set[_Subscriber] = set()
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        self._wake: asyncio.Event | None = None
        self._ready_lock: asyncio.Lock | None = None
        # What the poller knows; touched by one poll at a time (the poller's, or the baseline under the lock).
        self._baselined = False
        self._high = _EPOCH
        self._seen: dict[uuid.UUID, datetime] = {}
        _FEEDS.add(self)

    @property
    def running(self) -> bool:
        """Whether the poller task is alive."""
        return self._task is not None and not self._task.done()

    @property
    def subscribers(self) -> int:
        return len(self._subscribers)

    async def subscribe(self, job_ids: Collection[uuid.UUID] | None = None) -> Subscription:
        """Join the feed: the returned subscription sees every change committed from now on (of the jobs
        `job_ids`, or of all). Raises `StoreUnavailable` when the database cannot be read to start from."""
        if self.closed:
            raise RuntimeError("the job change feed is closed")
        self._bind()
        assert self._ready_lock is not None
        async with self._ready_lock:
            if not self._baselined:
                await anyio.to_thread.run_sync(self._baseline)
        subscriber = _Subscriber(frozenset(job_ids) if job_ids is not None else None)
        self._subscribers.add(subscriber)
        if self._task is None or self._task.done():
            self.store.add_change_listener(self.poke)
            self._task = asyncio.get_running_loop().create_task(self._run(), name="modelops-job-change-feed")
        return Subscription(self, subscriber)

    def poke(self) -> None:
        """Poll now rather than at the next tick (a write of this process committed). Safe from any thread."""
        loop, wake = self._loop, self._wake
        if loop is None or wake is None or self.closed:
            return
        if threading.get_ident() == self._loop_thread:
            wake.set()
            return
        with suppress(RuntimeError):  # the loop is closed: nobody is listening any more
            loop.call_soon_threadsafe(wake.set)

    def drain(self) -> None:
        """End every subscription's iterator, and those of later subscriptions at once: the server is stopping
        and its streams must end (`close` still ends the poller, at the lifespan's end)."""
        self.draining = True
        for subscriber in tuple(self._subscribers):
            subscriber.wake.set()

    async def close(self) -> None:
        """End every subscription (their iterators stop) and the poller; the feed cannot be used again."""
        self.closed = True
        for subscriber in tuple(self._subscribers):
            subscriber.closed = True
            subscriber.wake.set()
        self._subscribers.clear()
        task, self._task = self._task, None
        if task is not None and not task.done():
            if self._wake is not None:
                self._wake.set()
            try:
                await asyncio.wait_for(asyncio.shield(task), timeout=5)
            except TimeoutError:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        self.store.remove_change_listener(self.poke)

    # -- internals ----------------------------------------------------------------------------------------

    def _bind(self) -> None:
        loop = asyncio.get_running_loop()
        if self._loop is not loop:  # first use (or a new loop, in tests): the events belong to a loop
            self._loop, self._loop_thread = loop, threading.get_ident()
            self._wake = asyncio.Event()
            self._ready_lock = asyncio.Lock()

    def _leave(self, subscriber: _Subscriber) -> None:
        subscriber.closed = True
        subscriber.pending.clear()
        self._subscribers.discard(subscriber)
        if not self._subscribers and self._wake is not None:
            self._wake.set()  # the poller sees nobody left and ends

    def _baseline(self) -> None:
        """Start from now: what is in the database already counts as seen (in a worker thread)."""
        latest = self.store.latest_change()
        self._high = latest if latest is not None else _EPOCH
        self._seen = dict(self._keys_since(self._high - self.overlap))
        self._baselined = True

    def _keys_since(self, since: datetime) -> list[tuple[uuid.UUID, datetime]]:
        keys = self.store.job_changes_since(since)
        page = keys
        while len(page) >= CHANGE_KEYS_PAGE:  # more changed in the window than one page holds
            page = self.store.job_changes_since(page[-1][1], after_id=page[-1][0])
            keys.extend(page)
        return keys

    def _poll(self) -> list[Job]:
        """One poll (in a worker thread): the jobs changed since the last one, newest state."""
        self.polls += 1
        keys = self._keys_since(self._high - self.overlap)
        fresh = {job_id for job_id, at in keys if job_id not in self._seen or at > self._seen[job_id]}
        if keys:
            self._high = max(self._high, keys[-1][1])
        jobs = self.store.jobs_by_id(fresh) if fresh else []
        for job in jobs:
            at = job.updated_at or job.created_at
            self._seen[job.id] = max(at, self._seen.get(job.id, at))
        horizon = self._high - self.overlap
        self._seen = {job_id: at for job_id, at in self._seen.items() if at >= horizon}
        return jobs

    def _publish(self, jobs: list[Job]) -> None:
        for subscriber in tuple(self._subscribers):
            if subscriber.lagged:
                continue
            wanted = jobs if subscriber.job_ids is None else [job for job in jobs if job.id in subscriber.job_ids]
            if not wanted:
                continue
            behind = bool(subscriber.pending)  # it has not read the previous batch yet
            for job in wanted:
                subscriber.pending.pop(job.id, None)
                subscriber.pending[job.id] = job
            if behind and len(subscriber.pending) > self.max_pending:
                subscriber.lagged = True
                subscriber.pending.clear()
                log.warning("a job change subscriber fell more than %d jobs behind: it must resync", self.max_pending)
            subscriber.wake.set()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        wake = self._wake
        assert wake is not None and self._ready_lock is not None
        backoff = self.interval
        try:
            while self._subscribers and not self.closed:
                started = loop.time()
                wake.clear()
                try:
                    async with self._ready_lock:
                        if not self._baselined:
                            await anyio.to_thread.run_sync(self._baseline)
                        jobs = await anyio.to_thread.run_sync(self._poll)
                except StoreUnavailable as exc:  # a dead database must not end the feed: say so, wait, try again
                    log.warning("job change feed: %s (retrying in %.1f s)", exc.message, backoff)
                    await self._pause(wake, backoff)
                    backoff = min(backoff * 2, self.max_backoff)
                    continue
                except Exception:
                    log.exception("job change feed: a poll failed (retrying in %.1f s)", backoff)
                    await self._pause(wake, backoff)
                    backoff = min(backoff * 2, self.max_backoff)
                    continue
                backoff = self.interval
                if jobs:
                    self._publish(jobs)
                gap = started + self.min_gap - loop.time()
                if gap > 0:
                    await asyncio.sleep(gap)
                await self._pause(wake, started + self.interval - loop.time())
        finally:
            self.store.remove_change_listener(self.poke)
            self._baselined = False  # a later start begins from its own now
            self._seen = {}

    async def _pause(self, wake: asyncio.Event, seconds: float) -> None:
        if seconds <= 0 or wake.is_set():
            return
        with suppress(TimeoutError):
            await asyncio.wait_for(wake.wait(), timeout=seconds)
