"""The job change feed: `jobs.updated_at` on every write, progress samples, and `scheduler.changes`.

Run on SQLite and PostgreSQL (the `store` fixture). "Another process" is another `JobStore` on another engine
of the same database: it shares nothing in memory with the feed's store, only the database.
"""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy
from sqlalchemy import text
from sqlalchemy.engine import Engine
from store_kit import FrozenClock

from scheduler.changes import FeedLagged, JobChangeFeed, drain_feeds
from scheduler.db import create_engine, upgrade
from scheduler.db.migrate import downgrade
from scheduler.db.models import JobRow
from scheduler.errors import InvalidInput, NotFound, StoreUnavailable
from scheduler.states import JobState, Task
from scheduler.store import CHANGE_KEYS_PAGE, Job, JobStore, PipelineVersion, ProgressSample

# -------------------------------------------------------------------------------------------------- helpers


@pytest.fixture
def other_store(database_url: str) -> Iterator[JobStore]:
    """A second store on its own engine: what another process (an API worker, a replica) would write with."""
    engine = create_engine(database_url)
    yield JobStore(engine)
    engine.dispose()


def updated(store: JobStore, job_id: uuid.UUID) -> datetime:
    stamp = store.get_job(job_id).updated_at
    assert stamp is not None
    return stamp


async def next_batch(iterator: AsyncIterator[list[Job]], timeout: float = 5.0) -> list[Job]:
    return await asyncio.wait_for(anext(iterator), timeout)


async def collect_until(
    iterator: AsyncIterator[list[Job]], done: Callable[[list[Job]], bool], timeout: float = 5.0
) -> list[Job]:
    seen: list[Job] = []
    deadline = time.monotonic() + timeout
    while not done(seen):
        seen.extend(await next_batch(iterator, max(0.01, deadline - time.monotonic())))
    return seen


# ------------------------------------------------------------------------------------------ updated_at


def test_every_kind_of_job_write_moves_updated_at_forward(
    store: JobStore, new_job: Callable[..., Job]
) -> None:
    job = new_job()
    assert job.updated_at is not None and job.updated_at == job.created_at
    stamps = [job.updated_at]

    def moved(label: str, result: Job | None = None) -> None:
        now = updated(store, job.id)
        assert now > stamps[-1], label
        if result is not None:
            assert result.updated_at == now, label
        stamps.append(now)

    admitted = store.admit_queued("local", 0)
    assert admitted == (job.id,)
    moved("admission")
    moved("transition", store.transition(job.id, JobState.INSTALLING, task=Task.INSTALL, reason="Installing"))
    moved("backend_ref", store.set_backend_ref(job.id, {"pid": 1}))
    moved("add_event", store.add_event(job.id, "ServiceRestarted", "digits restarted"))
    moved("record_phase", store.record_phase(job.id, Task.INSTALL, "succeeded"))
    moved("set_task(uninstall) later; progress now", store.update_progress(job.id, 10, 9, 1))
    moved("record_phase event only", store.record_phase(job.id, Task.WAIT, "started"))
    moved("completion", store.record_completion(job.id, True, "done"))
    moved("set_task", store.set_task(job.id, Task.UNINSTALL))
    moved("terminal transition", store.transition(job.id, JobState.SUCCEEDED, reason="Succeeded"))


def test_writes_that_change_nothing_leave_updated_at_alone(store: JobStore, new_job: Callable[..., Job]) -> None:
    job = new_job()
    store.transition(job.id, JobState.INSTALLING, task=Task.INSTALL)
    store.transition(job.id, JobState.RUNNING, task=Task.WAIT)
    store.update_progress(job.id, 5, 5, 0)
    before = updated(store, job.id)
    store.update_progress(job.id, 3, 2, 0)  # lower counters: ignored
    store.set_task(job.id, Task.WAIT)  # the task it has
    assert updated(store, job.id) == before


def test_a_queued_cancel_and_a_fixed_clock_still_give_increasing_stamps(
    engine: Engine, version: PipelineVersion, new_job: Callable[..., Job]
) -> None:
    clock = FrozenClock(datetime.now(UTC))
    fixed = JobStore(engine, clock=clock)
    job = new_job()
    first = updated(fixed, job.id)
    fixed.cancel_queued(job.id, reason="Cancelled", message="by test")
    second = updated(fixed, job.id)
    fixed.update_progress(job.id, 1, 1, 0)
    assert first < second < updated(fixed, job.id)


def test_jobs_changed_since_lists_the_changed_jobs_oldest_change_first(
    store: JobStore, new_job: Callable[..., Job]
) -> None:
    a, b, c = new_job(), new_job(), new_job()
    mark = updated(store, c.id)
    store.update_progress(a.id, 1, 1, 0)
    store.transition(b.id, JobState.INSTALLING, task=Task.INSTALL)
    changed = store.jobs_changed_since(mark + timedelta(microseconds=1))
    assert [job.id for job in changed] == [a.id, b.id]
    assert all(job.events is None for job in changed)
    assert [job.id for job in store.jobs_changed_since(mark)] == [c.id, a.id, b.id]
    assert [job.id for job in store.jobs_changed_since(mark, limit=1)] == [c.id]
    keys = store.job_changes_since(mark)
    assert [key[0] for key in keys] == [c.id, a.id, b.id]
    assert store.job_changes_since(keys[0][1], after_id=keys[0][0]) == keys[1:]
    assert store.latest_change() == keys[-1][1]
    with pytest.raises(ValueError, match="timezone-aware"):
        store.jobs_changed_since(datetime(2026, 1, 1))


# ------------------------------------------------------------------------------------- progress samples


def test_progress_reports_leave_samples_at_most_twice_a_second(
    engine: Engine, version: PipelineVersion, new_job: Callable[..., Job]
) -> None:
    clock = FrozenClock(datetime.now(UTC))
    timed = JobStore(engine, clock=clock)
    job = new_job()
    for step in range(1, 11):  # 10 reports 0.2 s apart: 2 s, so 4 or 5 samples and the last counters
        timed.update_progress(job.id, step * 10, step * 9, step)
        clock.advance(0.2)
    samples = timed.progress_samples(job.id)
    assert 4 <= len(samples) <= 6
    assert samples[0] == ProgressSample(samples[0].at, 10, 9, 1)
    assert (samples[-1].read, samples[-1].written, samples[-1].failed) == (100, 90, 10)
    assert [s.at for s in samples] == sorted(s.at for s in samples)
    timed.update_progress(job.id, 100, 90, 10)  # unchanged counters: no sample
    assert len(timed.progress_samples(job.id)) == len(samples)


def test_progress_samples_are_thinned_evenly_keeping_the_first_and_the_last(
    engine: Engine, version: PipelineVersion, new_job: Callable[..., Job]
) -> None:
    clock = FrozenClock(datetime.now(UTC))
    timed = JobStore(engine, clock=clock)
    job = new_job()
    for step in range(1, 101):
        timed.update_progress(job.id, step, step, 0)
        clock.advance(1)
    everything = timed.progress_samples(job.id, points=500)
    assert [s.read for s in everything] == list(range(1, 101))
    thinned = timed.progress_samples(job.id, points=10)
    assert len(thinned) == 10
    assert thinned[0].read == 1 and thinned[-1].read == 100
    gaps = {b.read - a.read for a, b in itertools.pairwise(thinned)}
    assert gaps <= {11, 12}
    assert len(timed.progress_samples(job.id, points=2)) == 2


def test_progress_samples_refuse_bad_points_and_unknown_jobs(store: JobStore, new_job: Callable[..., Job]) -> None:
    job = new_job()
    assert store.progress_samples(job.id) == []
    with pytest.raises(InvalidInput, match="points"):
        store.progress_samples(job.id, points=1)
    with pytest.raises(NotFound):
        store.progress_samples(uuid.uuid4())


# ------------------------------------------------------------------------------------------ the feed


async def test_two_subscribers_see_a_change_written_by_another_process(
    store: JobStore, other_store: JobStore, version: PipelineVersion
) -> None:
    feed = JobChangeFeed(store)
    try:
        first, second = await feed.subscribe(), await feed.subscribe()
        assert feed.running and feed.subscribers == 2
        job, _ = await asyncio.to_thread(
            other_store.create_job, version, backend="local", token_hash="0" * 64, parameters={"n": 1}
        )
        for subscription in (first, second):
            batch = await collect_until(subscription, lambda seen: any(j.id == job.id for j in seen))
            assert [j.state for j in batch if j.id == job.id] == [JobState.PENDING]
        await asyncio.to_thread(other_store.update_progress, job.id, 7, 7, 0)
        batch = await collect_until(first, lambda seen: any(j.records_read == 7 for j in seen))
        assert batch[-1].id == job.id and batch[-1].events is None
        first.close()
        second.close()
        await asyncio.sleep(0.1)
        assert not feed.running  # the last subscriber left: no poller
    finally:
        await feed.close()


async def test_a_subscriber_sees_only_changes_made_after_it_joined_and_each_job_once_per_batch(
    store: JobStore, new_job: Callable[..., Job]
) -> None:
    old = new_job()
    feed = JobChangeFeed(store, interval=0.2)
    try:
        subscription = await feed.subscribe()
        job = new_job()
        for n in range(1, 6):
            store.update_progress(job.id, n, n, 0)
        await asyncio.sleep(0.3)
        batch = await next_batch(subscription)
        assert [j.id for j in batch] == [job.id]  # five writes, one entry, the newest state
        assert batch[0].records_read == 5
        assert old.id not in {j.id for j in batch}
    finally:
        await feed.close()


async def test_a_local_write_wakes_the_poller_at_once(store: JobStore, new_job: Callable[..., Job]) -> None:
    feed = JobChangeFeed(store, interval=30)  # no tick would come in time: only the poke can deliver
    try:
        subscription = await feed.subscribe()
        await asyncio.sleep(0.1)
        job = new_job()
        started = time.perf_counter()
        await asyncio.to_thread(store.update_progress, job.id, 3, 3, 0)
        batch = await collect_until(subscription, lambda seen: any(j.records_read == 3 for j in seen), timeout=3)
        print(f"\nlocal write -> subscriber: {(time.perf_counter() - started) * 1000:.1f} ms")
        assert batch
    finally:
        await feed.close()


async def test_a_row_committed_late_with_an_earlier_updated_at_is_not_missed(
    store: JobStore, engine: Engine, new_job: Callable[..., Job]
) -> None:
    a, b = new_job(), new_job()
    feed = JobChangeFeed(store, interval=0.05)
    try:
        subscription = await feed.subscribe()
        late = JobStore(engine, clock=lambda: datetime.now(UTC) - timedelta(seconds=2))
        await asyncio.to_thread(store.update_progress, b.id, 2, 2, 0)  # committed first, newer stamp
        await collect_until(subscription, lambda seen: any(j.id == b.id for j in seen))
        await asyncio.sleep(0.2)  # polls go by with `high` past a's coming stamp
        await asyncio.to_thread(late.update_progress, a.id, 1, 1, 0)  # stamped 2 s ago, committed now
        batch = await collect_until(subscription, lambda seen: any(j.id == a.id for j in seen))
        assert [j.records_read for j in batch if j.id == a.id] == [1]
    finally:
        await feed.close()


async def test_a_slow_subscriber_is_dropped_to_resync_while_the_others_go_on(
    store: JobStore, new_job: Callable[..., Job]
) -> None:
    feed = JobChangeFeed(store, interval=0.05, max_pending=3)
    try:
        slow, quick = await feed.subscribe(), await feed.subscribe()
        jobs = {new_job().id for _ in range(5)}  # one batch larger than max_pending: taken by both
        assert await collect_until(quick, lambda got: {j.id for j in got} >= jobs)
        job = new_job()  # slow has not read the first batch: now it holds too much
        assert await collect_until(quick, lambda got: any(j.id == job.id for j in got))
        with pytest.raises(FeedLagged):
            await next_batch(slow)
        another = new_job()
        assert await collect_until(quick, lambda got: any(j.id == another.id for j in got))
    finally:
        await feed.close()


async def test_a_subscription_to_one_job_sees_that_job_only(store: JobStore, new_job: Callable[..., Job]) -> None:
    mine, other = new_job(), new_job()
    feed = JobChangeFeed(store, interval=0.05)
    try:
        subscription = await feed.subscribe([mine.id])
        store.update_progress(other.id, 1, 1, 0)
        store.update_progress(mine.id, 2, 2, 0)
        batch = await collect_until(subscription, lambda seen: bool(seen))
        assert {j.id for j in batch} == {mine.id}
    finally:
        await feed.close()


async def test_closing_the_feed_ends_every_iterator_and_the_poller(store: JobStore) -> None:
    feed = JobChangeFeed(store)
    subscriptions = [await feed.subscribe() for _ in range(3)]
    waiting = [asyncio.ensure_future(anext(s, "ended")) for s in subscriptions]
    await asyncio.sleep(0.05)
    await feed.close()
    assert await asyncio.wait_for(asyncio.gather(*waiting), 2) == ["ended"] * 3
    assert not feed.running
    with pytest.raises(RuntimeError, match="closed"):
        await feed.subscribe()


class _Flaky:
    """A store whose change reads fail while `down` is set (a database outage), otherwise the real one's."""

    def __init__(self, store: JobStore) -> None:
        self._store = store
        self.down = False
        self.failures = 0

    def job_changes_since(self, *args: Any, **kwargs: Any) -> list[tuple[uuid.UUID, datetime]]:
        if self.down:
            self.failures += 1
            raise StoreUnavailable("the scheduler database is unavailable (test)")
        return self._store.job_changes_since(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)


async def test_a_dead_database_does_not_kill_the_feed(
    store: JobStore, new_job: Callable[..., Job], caplog: pytest.LogCaptureFixture
) -> None:
    flaky = _Flaky(store)
    feed = JobChangeFeed(flaky, interval=0.05, max_backoff=0.2)  # type: ignore[arg-type]
    try:
        subscription = await feed.subscribe()
        flaky.down = True
        await asyncio.sleep(0.5)
        assert flaky.failures >= 2 and feed.running
        assert "job change feed" in caplog.text and "unavailable" in caplog.text
        job = new_job()
        flaky.down = False
        batch = await collect_until(subscription, lambda seen: any(j.id == job.id for j in seen))
        assert batch
    finally:
        await feed.close()


async def test_many_changes_at_once_are_read_in_pages(store: JobStore, new_job: Callable[..., Job]) -> None:
    assert CHANGE_KEYS_PAGE > 3
    feed = JobChangeFeed(store, interval=0.05)
    try:
        subscription = await feed.subscribe()
        jobs = {new_job().id for _ in range(12)}
        got = await collect_until(subscription, lambda seen: {j.id for j in seen} >= jobs)
        assert len([j for j in got if j.id in jobs]) == 12
    finally:
        await feed.close()


async def test_draining_ends_the_subscriptions_now_and_later_ones_at_once(store: JobStore) -> None:
    feed = JobChangeFeed(store)
    try:
        open_one = await feed.subscribe()
        waiting = asyncio.ensure_future(anext(open_one, "ended"))
        await asyncio.sleep(0.05)
        assert drain_feeds() >= 1
        assert await asyncio.wait_for(waiting, 2) == "ended"
        later = await feed.subscribe()
        assert await asyncio.wait_for(anext(later, "ended"), 2) == "ended"
    finally:
        await feed.close()


def test_the_migration_gives_existing_jobs_their_latest_time_and_goes_back_down(empty_database_url: str) -> None:
    upgrade(empty_database_url, "0004")
    engine = create_engine(empty_database_url)
    created = datetime(2026, 1, 1, 12, tzinfo=UTC)
    try:
        with engine.begin() as conn:
            conn.execute(text("INSERT INTO pipelines (name, created_at) VALUES ('p', :at)"), {"at": created})
            conn.execute(
                text(
                    "INSERT INTO pipeline_versions (pipeline_id, number, digest, ir, created_at) "
                    "VALUES (1, 1, :digest, '{}', :at)"
                ),
                {"digest": "0" * 64, "at": created},
            )
        jobs = {
            "pending": (None, None),
            "running": (created + timedelta(minutes=1), None),
            "done": (created + timedelta(minutes=1), created + timedelta(minutes=5)),
        }
        ids: dict[str, uuid.UUID] = {}
        with engine.begin() as conn:
            for name, (started, finished) in jobs.items():
                ids[name] = uuid.uuid4()
                conn.execute(
                    sqlalchemy.insert(JobRow).values(
                        id=ids[name], pipeline_version_id=1, state="PENDING", parameters={}, environment={},
                        backend="local", token_hash="0" * 64, created_at=created, started_at=started,
                        finished_at=finished, records_read=0, records_written=0, records_failed=0,
                    )
                )
    finally:
        engine.dispose()
    upgrade(empty_database_url)
    engine = create_engine(empty_database_url)
    try:
        store = JobStore(engine)
        stamps = {name: updated(store, job_id) for name, job_id in ids.items()}
        assert stamps == {
            "pending": created,
            "running": created + timedelta(minutes=1),
            "done": created + timedelta(minutes=5),
        }
    finally:
        engine.dispose()
    downgrade(empty_database_url, "0004")
    engine = create_engine(empty_database_url)
    try:
        inspector = sqlalchemy.inspect(engine)
        assert "updated_at" not in {c["name"] for c in inspector.get_columns("jobs")}
        assert "job_progress_samples" not in inspector.get_table_names()
    finally:
        engine.dispose()
