"""The `JobStore` additions the REST API relies on: a caller-chosen job id, and counts for the metrics.

Runs on SQLite and PostgreSQL like the rest of the store tests (see conftest).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable

import pytest

from scheduler.errors import Conflict, InvalidInput
from scheduler.settings import hash_token
from scheduler.states import JobState, Task
from scheduler.store import Job, JobStore, PipelineVersion

NewJob = Callable[..., Job]


def test_a_job_can_be_created_with_the_id_the_caller_chose(store: JobStore, version: PipelineVersion) -> None:
    chosen = uuid.uuid4()
    job, created = store.create_job(version, backend="local", token_hash=hash_token("t"), job_id=chosen)
    assert created
    assert job.id == chosen
    assert store.get_job(chosen).id == chosen


def test_a_job_id_that_is_already_taken_is_a_conflict(store: JobStore, version: PipelineVersion) -> None:
    chosen = uuid.uuid4()
    store.create_job(version, backend="local", token_hash=hash_token("t"), job_id=chosen)
    with pytest.raises(Conflict) as caught:
        store.create_job(version, backend="local", token_hash=hash_token("u"), job_id=chosen)
    assert caught.value.code == "job_exists"


def test_a_replayed_idempotency_key_keeps_the_first_job_id(store: JobStore, version: PipelineVersion) -> None:
    first, _ = store.create_job(
        version, backend="local", token_hash=hash_token("t"), idempotency_key="k", job_id=uuid.uuid4()
    )
    again, created = store.create_job(
        version, backend="local", token_hash=hash_token("u"), idempotency_key="k", job_id=uuid.uuid4()
    )
    assert not created
    assert again.id == first.id


def test_jobs_are_counted_by_state_with_every_state_present(store: JobStore, new_job: NewJob) -> None:
    assert store.count_jobs_by_state() == dict.fromkeys(JobState, 0)
    new_job()
    running = new_job()
    store.transition(running.id, JobState.INSTALLING, task=Task.INSTALL)
    counts = store.count_jobs_by_state()
    assert counts[JobState.PENDING] == 1
    assert counts[JobState.INSTALLING] == 1
    assert sum(counts.values()) == 2


def test_transitions_are_counted_from_the_events_without_task_changes(store: JobStore, new_job: NewJob) -> None:
    job = new_job()
    store.transition(job.id, JobState.INSTALLING, task=Task.INSTALL)
    store.set_task(job.id, Task.WAIT)  # a task change, not a transition
    store.transition(job.id, JobState.CANCELLING)
    assert store.count_transitions() == {
        (None, JobState.PENDING): 1,
        (JobState.PENDING, JobState.INSTALLING): 1,
        (JobState.INSTALLING, JobState.CANCELLING): 1,
    }


def test_jobs_are_found_by_the_start_of_their_id_in_any_case_with_or_without_hyphens(
    store: JobStore, version: PipelineVersion
) -> None:
    ids = [
        uuid.UUID("274541d4-0000-4000-8000-000000000001"),
        uuid.UUID("274541d4-ffff-4000-8000-000000000002"),
        uuid.UUID("27454200-0000-4000-8000-000000000003"),
        uuid.UUID("ffffffff-ffff-4fff-bfff-ffffffffffff"),
    ]
    for chosen in ids:
        store.create_job(version, backend="local", token_hash=hash_token(str(chosen)), job_id=chosen)

    def found(prefix: str) -> set[uuid.UUID]:
        return {job.id for job in store.list_jobs(id_prefix=prefix).items}

    assert found("274541d4") == set(ids[:2])
    assert found("2745") == set(ids[:3])
    assert found("274541D4-FFFF") == {ids[1]}
    assert found("274541d4ffff") == {ids[1]}
    assert found("ffffffff-ffff-4fff-bfff-ffffffffffff") == {ids[3]}
    assert found("0000") == set()


def test_a_job_id_prefix_that_is_not_hex_is_invalid_input(store: JobStore) -> None:
    with pytest.raises(InvalidInput, match="not a job id prefix: 'xyz1'"):
        store.list_jobs(id_prefix="xyz1")
