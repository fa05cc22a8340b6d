"""Racing callers on one job or one key: exactly one wins, the others get a clean answer, history stays true.

These run on both databases. PostgreSQL is the one that matters (several API workers and the lifecycle
engine on one server, or several replicas): the row lock of `transition` must serialise the racers. On SQLite
the same guarantee comes from `BEGIN IMMEDIATE`.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import pytest
from store_kit import DIGITS_IR, digest_of

from scheduler.errors import IllegalTransition
from scheduler.settings import hash_token
from scheduler.states import JobState
from scheduler.store import Job, JobStore, PipelineVersion

T = TypeVar("T")

ROUNDS = 20


def race(calls: list[Callable[[], T]]) -> list[T | BaseException]:
    """Run the calls in parallel threads released together; each one's result or exception, in order."""
    barrier = threading.Barrier(len(calls))

    def run(call: Callable[[], T]) -> T | BaseException:
        barrier.wait()
        try:
            return call()
        except Exception as exc:
            return exc

    with ThreadPoolExecutor(max_workers=len(calls)) as pool:
        return list(pool.map(run, calls))


def running_job(store: JobStore, version: PipelineVersion) -> Job:
    job, _ = store.create_job(version, backend="local", token_hash=hash_token("t"))
    store.transition(job.id, JobState.INSTALLING)
    return store.transition(job.id, JobState.RUNNING)


@pytest.mark.timeout(120)
def test_two_cancels_and_a_completion_racing_on_a_running_job_have_exactly_one_winner(
    store: JobStore, version: PipelineVersion
) -> None:
    winners: Counter[JobState] = Counter()
    for _ in range(ROUNDS):
        job = running_job(store, version)

        def cancel(job: Job = job) -> Job:
            return store.transition(job.id, JobState.CANCELLING, reason="UserCancelled")

        def complete(job: Job = job) -> Job:
            return store.transition(job.id, JobState.SUCCEEDED, reason="Completed")

        outcomes = race([cancel, cancel, complete])

        won = [o for o in outcomes if isinstance(o, Job)]
        lost = [o for o in outcomes if not isinstance(o, Job)]
        assert len(won) == 1, outcomes
        assert len(lost) == 2 and all(isinstance(o, IllegalTransition) for o in lost), lost
        final = store.get_job(job.id)
        assert final.state is won[0].state
        winners[final.state] += 1
        # The losers saw the winner's state, not the RUNNING they started from.
        assert {o.from_state for o in lost if isinstance(o, IllegalTransition)} == {final.state}
        assert final.events is not None
        assert [(e.from_state, e.to_state) for e in final.events] == [
            (None, JobState.PENDING),
            (JobState.PENDING, JobState.INSTALLING),
            (JobState.INSTALLING, JobState.RUNNING),
            (JobState.RUNNING, final.state),
        ]
    assert sum(winners.values()) == ROUNDS
    assert set(winners) <= {JobState.CANCELLING, JobState.SUCCEEDED}


@pytest.mark.timeout(120)
def test_concurrent_deploys_of_the_same_ir_store_one_version(store: JobStore) -> None:
    for round_ in range(5):
        name = f"race-{round_}"

        def deploy(name: str = name) -> tuple[PipelineVersion, bool]:
            return store.add_pipeline_version(name, DIGITS_IR, digest_of("same"))

        outcomes = race([deploy] * 4)
        versions = [o for o in outcomes if isinstance(o, tuple)]
        assert len(versions) == 4, outcomes
        assert len({v.id for v, _ in versions}) == 1
        assert sum(created for _, created in versions) == 1
        assert [v.number for v in store.get_pipeline(name).versions] == [1]


@pytest.mark.timeout(120)
def test_concurrent_deploys_of_different_irs_get_distinct_consecutive_numbers(store: JobStore) -> None:
    def deploy(i: int) -> Callable[[], tuple[PipelineVersion, bool]]:
        return lambda: store.add_pipeline_version("digits", DIGITS_IR, digest_of(f"v{i}"))

    outcomes = race([deploy(i) for i in range(6)])
    assert all(isinstance(o, tuple) for o in outcomes), outcomes
    assert [v.number for v in store.get_pipeline("digits").versions] == [1, 2, 3, 4, 5, 6]


@pytest.mark.timeout(120)
def test_concurrent_starts_with_one_idempotency_key_create_one_job(store: JobStore, version: PipelineVersion) -> None:
    for round_ in range(5):
        key = f"start-{round_}"

        def start(key: str = key) -> tuple[Job, bool]:
            return store.create_job(
                version, parameters={"n": 1}, backend="local", token_hash=hash_token("t"), idempotency_key=key
            )

        outcomes = race([start] * 4)
        results = [o for o in outcomes if isinstance(o, tuple)]
        assert len(results) == 4, outcomes
        assert len({job.id for job, _ in results}) == 1
        assert sum(created for _, created in results) == 1
    assert len(store.list_jobs(limit=100).items) == 5
