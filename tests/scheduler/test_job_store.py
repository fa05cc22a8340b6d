"""`JobStore` against real databases: what the API and the lifecycle engine may rely on.

Every test runs on SQLite and on PostgreSQL (see the `store` fixture in conftest).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, timedelta
from pathlib import Path

import pytest
import sqlalchemy
from sqlalchemy.engine import Engine
from store_kit import DIGITS_IR, FrozenClock, digest_of

from scheduler.db import create_engine
from scheduler.errors import Conflict, IllegalTransition, InvalidInput, NotFound, StoreUnavailable
from scheduler.settings import hash_token
from scheduler.states import ALLOWED, TERMINAL, JobState, Task
from scheduler.store import CREATED_REASON, MAX_REPORTING_FLOWS, Job, JobStore, PipelineVersion

NewJob = Callable[..., Job]

# How to bring a fresh PENDING job into each state through allowed transitions.
PATH_TO: dict[JobState, list[JobState]] = {
    JobState.PENDING: [],
    JobState.INSTALLING: [JobState.INSTALLING],
    JobState.RUNNING: [JobState.INSTALLING, JobState.RUNNING],
    JobState.CANCELLING: [JobState.CANCELLING],
    JobState.SUCCEEDED: [JobState.INSTALLING, JobState.RUNNING, JobState.SUCCEEDED],
    JobState.FAILED: [JobState.FAILED],
    JobState.CANCELLED: [JobState.CANCELLING, JobState.CANCELLED],
}
ALLOWED_PAIRS = [(a, b) for a, targets in ALLOWED.items() for b in sorted(targets)]
REFUSED_SAMPLE = [
    (JobState.PENDING, JobState.RUNNING),
    (JobState.PENDING, JobState.SUCCEEDED),
    (JobState.PENDING, JobState.CANCELLED),
    (JobState.INSTALLING, JobState.SUCCEEDED),
    (JobState.INSTALLING, JobState.PENDING),
    (JobState.RUNNING, JobState.INSTALLING),
    (JobState.RUNNING, JobState.CANCELLED),
    (JobState.CANCELLING, JobState.CANCELLING),
    (JobState.CANCELLING, JobState.RUNNING),
    (JobState.CANCELLING, JobState.SUCCEEDED),
    (JobState.SUCCEEDED, JobState.FAILED),
    (JobState.SUCCEEDED, JobState.CANCELLING),
    (JobState.FAILED, JobState.RUNNING),
    (JobState.CANCELLED, JobState.CANCELLING),
    (JobState.CANCELLED, JobState.PENDING),
]


def bring_to(store: JobStore, job: Job, state: JobState) -> Job:
    for step in PATH_TO[state]:
        job = store.transition(job.id, step)
    return job


# -- pipelines and versions --------------------------------------------------------------------------------


def test_the_first_version_of_a_new_pipeline_is_number_one(store: JobStore) -> None:
    version, created = store.add_pipeline_version("digits", DIGITS_IR, digest_of("v1"), created_by="alice")
    assert created
    assert (version.pipeline, version.number, version.digest) == ("digits", 1, digest_of("v1"))
    assert version.ir == DIGITS_IR
    assert version.created_by == "alice"
    assert version.created_at.tzinfo is not None and version.created_at.utcoffset() == timedelta(0)


def test_deploying_the_same_digest_again_returns_the_existing_version(store: JobStore) -> None:
    first, _ = store.add_pipeline_version("digits", DIGITS_IR, digest_of("v1"))
    again, created = store.add_pipeline_version("digits", {"other": "doc"}, digest_of("v1"), created_by="bob")
    assert not created
    assert again == first
    assert len(store.get_pipeline("digits").versions) == 1


def test_a_new_digest_gets_the_next_number_and_becomes_the_latest(store: JobStore) -> None:
    store.add_pipeline_version("digits", DIGITS_IR, digest_of("v1"))
    second, created = store.add_pipeline_version("digits", {**DIGITS_IR, "spec": {}}, digest_of("v2"))
    assert created and second.number == 2
    assert store.get_version("digits").number == 2
    assert store.get_version("digits", 1).digest == digest_of("v1")
    assert store.get_pipeline("digits").latest.number == 2


def test_the_same_digest_in_two_pipelines_makes_two_versions(store: JobStore) -> None:
    a, _ = store.add_pipeline_version("a", DIGITS_IR, digest_of("same"))
    b, created = store.add_pipeline_version("b", DIGITS_IR, digest_of("same"))
    assert created and a.id != b.id and b.number == 1


def test_pipelines_are_listed_by_name_with_their_versions(store: JobStore) -> None:
    store.add_pipeline_version("zeta", DIGITS_IR, digest_of("z1"))
    store.add_pipeline_version("alpha", DIGITS_IR, digest_of("a1"))
    store.add_pipeline_version("alpha", DIGITS_IR, digest_of("a2"))
    listed = store.list_pipelines()
    assert [p.name for p in listed] == ["alpha", "zeta"]
    assert [v.number for v in listed[0].versions] == [1, 2]
    assert [v.digest for v in listed[0].versions] == [digest_of("a1"), digest_of("a2")]


def test_unknown_pipelines_and_versions_are_not_found(store: JobStore, version: PipelineVersion) -> None:
    with pytest.raises(NotFound) as caught:
        store.get_pipeline("nope")
    assert caught.value.http_status == 404 and caught.value.code == "pipeline_not_found"
    with pytest.raises(NotFound):
        store.get_version("nope")
    with pytest.raises(NotFound):
        store.get_version("digits", 2)


@pytest.mark.parametrize("digest", ["abc", "A" * 64, "g" * 64, ""])
def test_a_digest_that_is_not_sha256_hex_is_invalid_input(store: JobStore, digest: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        store.add_pipeline_version("digits", DIGITS_IR, digest)
    assert caught.value.http_status == 422


def test_an_ir_that_is_not_json_is_invalid_input(store: JobStore) -> None:
    with pytest.raises(InvalidInput):
        store.add_pipeline_version("digits", {"when": object()}, digest_of("v1"))
    with pytest.raises(InvalidInput):
        store.add_pipeline_version("digits", {"x": float("nan")}, digest_of("v1"))


def test_the_stored_ir_is_a_copy_that_later_changes_to_the_input_do_not_reach(store: JobStore) -> None:
    document = {"spec": {"flows": ["a"]}}
    store.add_pipeline_version("digits", document, digest_of("v1"))
    document["spec"]["flows"].append("b")
    assert store.get_version("digits").ir == {"spec": {"flows": ["a"]}}


# -- creating and reading jobs -----------------------------------------------------------------------------


def test_a_new_job_is_pending_with_a_creation_event(store: JobStore, new_job: NewJob) -> None:
    job = new_job()
    assert job.state is JobState.PENDING and job.task is None
    assert (job.pipeline, job.pipeline_version) == ("digits", 1)
    assert (job.records_read, job.records_written, job.records_failed) == (0, 0, 0)
    assert job.started_at is None and job.finished_at is None
    stored = store.get_job(job.id)
    assert stored.parameters == {"batch_size": 64} and stored.environment == {"namespace": "scoring"}
    assert stored.events is not None and len(stored.events) == 1
    created = stored.events[0]
    assert (created.from_state, created.to_state, created.reason) == (None, JobState.PENDING, CREATED_REASON)
    assert created.at == job.created_at


def test_a_job_can_be_found_by_its_id_as_text(store: JobStore, new_job: NewJob) -> None:
    job = new_job()
    assert store.get_job(str(job.id)).id == job.id


@pytest.mark.parametrize("job_id", [str(uuid.uuid4()), "not-a-uuid", uuid.uuid4()])
def test_an_unknown_job_is_not_found(store: JobStore, job_id: str | uuid.UUID) -> None:
    with pytest.raises(NotFound) as caught:
        store.get_job(job_id)
    assert caught.value.code == "job_not_found"
    with pytest.raises(NotFound):
        store.transition(job_id, JobState.INSTALLING)


def test_the_same_idempotency_key_returns_the_existing_job(
    store: JobStore, version: PipelineVersion, new_job: NewJob
) -> None:
    first = new_job(idempotency_key="deploy-42")
    again, created = store.create_job(
        version,
        parameters={"batch_size": 64},
        environment={"namespace": "scoring"},
        backend="local",
        token_hash=hash_token("a-different-token"),
        idempotency_key="deploy-42",
    )
    assert not created
    assert again.id == first.id and again.token_hash == first.token_hash
    assert store.list_jobs().items == (first,)


def test_reusing_an_idempotency_key_for_a_different_request_is_a_conflict(
    store: JobStore, version: PipelineVersion, new_job: NewJob
) -> None:
    first = new_job(idempotency_key="deploy-42")
    with pytest.raises(Conflict) as caught:
        store.create_job(
            version,
            parameters={"batch_size": 128},
            backend="local",
            token_hash=hash_token("t"),
            idempotency_key="deploy-42",
        )
    assert caught.value.code == "idempotency_key_reused"
    assert caught.value.details["job_id"] == str(first.id)
    assert set(caught.value.details["differs"]) == {"parameters", "environment"}


def test_jobs_without_an_idempotency_key_are_always_new(new_job: NewJob) -> None:
    assert new_job().id != new_job().id


def test_a_job_for_a_version_that_does_not_exist_is_not_found(store: JobStore, version: PipelineVersion) -> None:
    ghost = PipelineVersion(
        id=version.id + 1000,
        pipeline="ghost",
        number=1,
        digest=version.digest,
        ir={},
        created_at=version.created_at,
        created_by=None,
    )
    with pytest.raises(NotFound):
        store.create_job(ghost, backend="local", token_hash=hash_token("t"))


def test_a_job_token_must_be_given_as_its_hash(store: JobStore, version: PipelineVersion) -> None:
    with pytest.raises(InvalidInput):
        store.create_job(version, backend="local", token_hash="plaintext-token")


# -- transitions -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("from_state", "to_state"), ALLOWED_PAIRS)
def test_every_allowed_transition_is_applied_and_recorded(
    store: JobStore, new_job: NewJob, from_state: JobState, to_state: JobState
) -> None:
    job = bring_to(store, new_job(), from_state)
    before = store.get_job(job.id).events
    assert before is not None

    moved = store.transition(job.id, to_state, reason="Because", message=f"{from_state} to {to_state}")

    assert moved.state is to_state
    after = store.get_job(job.id)
    assert after.state is to_state
    assert after.events is not None and after.events[: len(before)] == before
    (event,) = after.events[len(before) :]
    assert (event.from_state, event.to_state) == (from_state, to_state)
    assert (event.reason, event.message) == ("Because", f"{from_state} to {to_state}")
    assert (after.reason, after.message) == ("Because", f"{from_state} to {to_state}")
    assert (after.finished_at is not None) == (to_state in TERMINAL)


@pytest.mark.parametrize(("from_state", "to_state"), REFUSED_SAMPLE)
def test_a_refused_transition_changes_neither_the_job_nor_its_events(
    store: JobStore, new_job: NewJob, from_state: JobState, to_state: JobState
) -> None:
    job = bring_to(store, new_job(), from_state)
    before = store.get_job(job.id)

    with pytest.raises(IllegalTransition) as caught:
        store.transition(job.id, to_state, task=Task.UNINSTALL, reason="Nope", message="must not stick")

    assert (caught.value.from_state, caught.value.to_state) == (from_state, to_state)
    assert caught.value.job_id == str(job.id)
    assert store.get_job(job.id) == before


def test_a_run_records_its_timeline_with_tasks(store: JobStore, frozen_clock: FrozenClock, engine: Engine) -> None:
    clocked = JobStore(engine, clock=frozen_clock)
    version, _ = clocked.add_pipeline_version("digits", DIGITS_IR, digest_of("v1"))
    job, _ = clocked.create_job(version, backend="local", token_hash=hash_token("t"))
    created_at = frozen_clock.now
    frozen_clock.advance(1)
    clocked.transition(job.id, JobState.INSTALLING, task=Task.INSTALL, reason="Scheduled")
    started_at = frozen_clock.now
    frozen_clock.advance(5)
    clocked.transition(job.id, JobState.RUNNING, task=Task.WAIT)
    frozen_clock.advance(60)
    clocked.set_task(job.id, Task.UNINSTALL, reason="SourceExhausted")
    frozen_clock.advance(2)
    done = clocked.transition(job.id, JobState.SUCCEEDED, reason="Completed", message="10000 records scored")

    assert done.state is JobState.SUCCEEDED and done.task is Task.UNINSTALL
    assert (done.created_at, done.started_at, done.finished_at) == (created_at, started_at, frozen_clock.now)
    assert (done.reason, done.message) == ("Completed", "10000 records scored")
    events = clocked.get_job(job.id).events
    assert events is not None
    assert [(e.from_state, e.to_state, e.task, e.reason) for e in events] == [
        (None, JobState.PENDING, None, CREATED_REASON),
        (JobState.PENDING, JobState.INSTALLING, Task.INSTALL, "Scheduled"),
        (JobState.INSTALLING, JobState.RUNNING, Task.WAIT, None),
        (JobState.RUNNING, JobState.RUNNING, Task.UNINSTALL, "SourceExhausted"),
        (JobState.RUNNING, JobState.SUCCEEDED, Task.UNINSTALL, "Completed"),
    ]
    assert [e.at for e in events] == sorted(e.at for e in events)
    assert all(e.at.utcoffset() == timedelta(0) for e in events)


def test_a_job_cancelled_before_it_started_has_no_start_time(store: JobStore, new_job: NewJob) -> None:
    job = bring_to(store, new_job(), JobState.CANCELLED)
    assert job.started_at is None and job.finished_at is not None


def test_a_transition_without_a_reason_keeps_the_current_one(store: JobStore, new_job: NewJob) -> None:
    job = new_job()
    store.transition(job.id, JobState.CANCELLING, reason="UserCancelled", message="by alice")
    done = store.transition(job.id, JobState.CANCELLED)
    assert (done.reason, done.message) == ("UserCancelled", "by alice")


def test_an_unknown_target_state_is_invalid_input(store: JobStore, new_job: NewJob) -> None:
    with pytest.raises(InvalidInput):
        store.transition(new_job().id, "PAUSED")


# -- tasks, progress, backend reference --------------------------------------------------------------------


def test_setting_the_task_it_already_has_records_nothing(store: JobStore, new_job: NewJob) -> None:
    job = store.transition(new_job().id, JobState.INSTALLING, task=Task.INSTALL)
    store.set_task(job.id, Task.INSTALL)
    events = store.get_job(job.id).events
    assert events is not None and len(events) == 2


def test_tasks_only_move_forward(store: JobStore, new_job: NewJob) -> None:
    job = store.transition(new_job().id, JobState.INSTALLING, task=Task.INSTALL)
    store.set_task(job.id, Task.UNINSTALL)
    with pytest.raises(Conflict) as caught:
        store.set_task(job.id, Task.WAIT)
    assert caught.value.code == "illegal_task_change"
    with pytest.raises(Conflict):
        store.transition(job.id, JobState.RUNNING, task=Task.INSTALL)
    assert store.get_job(job.id).state is JobState.INSTALLING


def test_a_finished_job_task_cannot_change(store: JobStore, new_job: NewJob) -> None:
    job = bring_to(store, new_job(), JobState.FAILED)
    with pytest.raises(Conflict) as caught:
        store.set_task(job.id, Task.UNINSTALL)
    assert caught.value.code == "job_finished"


def test_progress_counters_never_go_down(store: JobStore, new_job: NewJob) -> None:
    job = new_job()
    assert store.update_progress(job.id, 100, 90, 1).records_read == 100
    late = store.update_progress(job.id, 50, 95, 0)
    assert (late.records_read, late.records_written, late.records_failed) == (100, 95, 1)
    stored = store.get_job(job.id)
    assert (stored.records_read, stored.records_written, stored.records_failed) == (100, 95, 1)


def test_progress_counters_hold_more_than_32_bits(store: JobStore, new_job: NewJob) -> None:
    job = store.update_progress(new_job().id, 2**40, 2**40 - 1, 0)
    assert store.get_job(job.id).records_read == 2**40


def test_flow_progress_is_kept_per_flow_and_the_job_counts_the_sum(store: JobStore, new_job: NewJob) -> None:
    job = new_job()
    store.update_progress(job.id, 30, 28, 2, flow="a", report={"state": "running", "total": 100, "unit": "records"})
    both = store.update_progress(job.id, 10, 10, 0, flow="b", report={"state": "starting"})
    assert (both.records_read, both.records_written, both.records_failed) == (40, 38, 2)
    assert both.flow_progress is not None
    assert both.flow_progress["a"]["total"] == 100 and both.flow_progress["a"]["read"] == 30
    assert both.flow_progress["b"]["state"] == "starting" and "at" in both.flow_progress["b"]
    stored = store.get_job(job.id)
    assert stored.flow_progress == both.flow_progress


def test_a_job_keeps_the_progress_of_a_bounded_number_of_flows(store: JobStore, new_job: NewJob) -> None:
    job = new_job()
    for index in range(MAX_REPORTING_FLOWS):
        store.update_progress(job.id, 1, 1, 0, flow=f"f{index}", report={})
    store.update_progress(job.id, 2, 2, 0, flow="f0", report={})  # a known flow is still updated
    with pytest.raises(InvalidInput, match="one too many"):
        store.update_progress(job.id, 1, 1, 0, flow="one-more", report={})
    assert store.get_job(job.id).records_read == MAX_REPORTING_FLOWS + 1


@pytest.mark.parametrize("counts", [(-1, 0, 0), (0, -5, 0), (True, 0, 0), (1.5, 0, 0)])
def test_negative_or_non_integer_progress_is_invalid_input(
    store: JobStore, new_job: NewJob, counts: tuple[int, int, int]
) -> None:
    with pytest.raises(InvalidInput):
        store.update_progress(new_job().id, *counts)


def test_the_backend_reference_is_stored_and_can_be_cleared(store: JobStore, new_job: NewJob) -> None:
    job = new_job()
    assert store.set_backend_ref(job.id, {"pipelinerun": "modelops-7x2kq"}).backend_ref == {
        "pipelinerun": "modelops-7x2kq"
    }
    assert store.get_job(job.id).backend_ref == {"pipelinerun": "modelops-7x2kq"}
    store.set_backend_ref(job.id, None)
    assert store.get_job(job.id).backend_ref is None


def test_an_event_of_the_run_is_recorded_with_its_new_reference_and_changes_neither_state_nor_reason(
    store: JobStore, new_job: NewJob
) -> None:
    job = bring_to(store, new_job(), JobState.RUNNING)
    before = store.get_job(job.id)
    ref = {"kind": "local-processes", "processes": [{"name": "m1", "pid": 4242}]}
    store.add_event(job.id, "ServiceRestarted", "service m1 was killed by SIGKILL; restarted", backend_ref=ref)
    after = store.get_job(job.id)
    assert (after.state, after.task, after.reason, after.message) == (
        before.state,
        before.task,
        before.reason,
        before.message,
    )
    assert after.backend_ref == ref
    assert after.events is not None and before.events is not None
    (event,) = after.events[len(before.events) :]
    assert (event.from_state, event.to_state, event.task) == (JobState.RUNNING, JobState.RUNNING, before.task)
    assert (event.reason, event.message) == ("ServiceRestarted", "service m1 was killed by SIGKILL; restarted")


def test_a_finished_job_takes_no_more_events_of_its_run(store: JobStore, new_job: NewJob) -> None:
    job = bring_to(store, new_job(), JobState.SUCCEEDED)
    with pytest.raises(Conflict):
        store.add_event(job.id, "FlowRestarted", "too late", backend_ref={"kind": "local-processes"})
    assert store.get_job(job.id).backend_ref != {"kind": "local-processes"}


def test_non_terminal_jobs_are_the_ones_left_to_reconcile_oldest_first(store: JobStore, new_job: NewJob) -> None:
    jobs = {state: bring_to(store, new_job(), state) for state in PATH_TO}
    active = store.non_terminal_jobs()
    assert {j.id for j in active} == {jobs[s].id for s in JobState if s not in TERMINAL}
    assert [j.created_at for j in active] == sorted(j.created_at for j in active)


# -- listing -----------------------------------------------------------------------------------------------


def test_paging_through_jobs_created_at_the_same_instant_returns_each_once_newest_first(
    engine: Engine, frozen_clock: FrozenClock
) -> None:
    clocked = JobStore(engine, clock=frozen_clock)
    version, _ = clocked.add_pipeline_version("digits", DIGITS_IR, digest_of("v1"))
    created = []
    for batch in range(3):
        for _ in range(4):  # four jobs share each timestamp
            created.append(clocked.create_job(version, backend="local", token_hash=hash_token("t"))[0])
        if batch < 2:
            frozen_clock.advance(0.000001)
    expected = sorted(created, key=lambda j: (j.created_at, j.id.int), reverse=True)

    seen: list[Job] = []
    cursor = None
    pages = 0
    while True:
        page = clocked.list_jobs(cursor=cursor, limit=5)
        seen.extend(page.items)
        pages += 1
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert [j.id for j in seen] == [j.id for j in expected]
    assert pages == 3


def test_a_page_that_exactly_ends_the_list_has_no_next_cursor(store: JobStore, new_job: NewJob) -> None:
    for _ in range(4):
        new_job()
    page = store.list_jobs(limit=4)
    assert len(page.items) == 4 and page.next_cursor is None


def test_jobs_created_after_the_first_page_do_not_appear_in_later_pages(store: JobStore, new_job: NewJob) -> None:
    old = [new_job() for _ in range(4)]
    first = store.list_jobs(limit=2)
    newer = new_job()
    assert first.next_cursor is not None
    second = store.list_jobs(cursor=first.next_cursor, limit=10)
    assert newer.id not in {j.id for j in second.items}
    assert {j.id for j in first.items + second.items} == {j.id for j in old}


def test_jobs_can_be_listed_by_state_and_by_pipeline(store: JobStore, new_job: NewJob) -> None:
    other, _ = store.add_pipeline_version("iris", DIGITS_IR, digest_of("iris-1"))
    running = bring_to(store, new_job(), JobState.RUNNING)
    pending = new_job()
    iris = new_job(version=other)
    assert [j.id for j in store.list_jobs(state=JobState.RUNNING).items] == [running.id]
    assert {j.id for j in store.list_jobs(state="PENDING").items} == {pending.id, iris.id}
    assert [j.id for j in store.list_jobs(pipeline="iris").items] == [iris.id]
    assert [j.id for j in store.list_jobs(pipeline="digits", state=JobState.PENDING).items] == [pending.id]
    assert store.list_jobs(pipeline="nope").items == ()


def test_a_pipeline_filter_and_a_search_by_its_name_find_the_jobs_of_all_its_versions(
    store: JobStore, new_job: NewJob
) -> None:
    second, _ = store.add_pipeline_version("digits", DIGITS_IR, digest_of("digits-v2"))
    other, _ = store.add_pipeline_version("iris", DIGITS_IR, digest_of("iris-1"))
    jobs = [new_job(), new_job(version=second), new_job(version=other), new_job(version=second), new_job()]
    digits = [job.id for job in reversed(jobs) if job.pipeline == "digits"]
    for found in (lambda **kw: store.list_jobs(pipeline="digits", **kw), lambda **kw: store.list_jobs(q="IGIT", **kw)):
        first = found(limit=3)
        assert [j.id for j in first.items] == digits[:3]
        assert [j.id for j in found(limit=3, cursor=first.next_cursor).items] == digits[3:]
    assert store.list_jobs(q="dig%").items == ()  # % is a character, not a pattern
    assert store.list_jobs(q="d_g").items == ()
    quoted = store.transition(jobs[0].id, JobState.FAILED, reason="Quoted", message="o'brien's 100%\\ /path")
    for text in ("o'brien", "100%\\", "s 100%\\ /pa"):
        assert [j.id for j in store.list_jobs(q=text).items] == [quoted.id], text


def test_listed_jobs_come_without_events(store: JobStore, new_job: NewJob) -> None:
    new_job()
    assert store.list_jobs().items[0].events is None


@pytest.mark.parametrize("cursor", ["garbage", "", "eyJhIjogMX0", "W10"])
def test_a_cursor_that_was_not_issued_by_the_store_is_invalid_input(store: JobStore, cursor: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        store.list_jobs(cursor=cursor)
    assert caught.value.code == "invalid_cursor"


@pytest.mark.parametrize("limit", [0, -1, 501])
def test_a_page_size_out_of_range_is_invalid_input(store: JobStore, limit: int) -> None:
    with pytest.raises(InvalidInput):
        store.list_jobs(limit=limit)


def test_an_unknown_state_filter_is_invalid_input(store: JobStore) -> None:
    with pytest.raises(InvalidInput):
        store.list_jobs(state="SLEEPING")


# -- results are plain values ------------------------------------------------------------------------------


def test_results_are_frozen_values_detached_from_the_database(store: JobStore, new_job: NewJob) -> None:
    job = new_job()
    with pytest.raises(AttributeError):
        job.state = JobState.RUNNING  # type: ignore[misc]
    assert job.created_at.tzinfo is not None and job.created_at.astimezone(UTC) == job.created_at
    assert isinstance(job.id, uuid.UUID)


def test_a_naive_clock_is_refused(engine: Engine, version: PipelineVersion) -> None:
    from datetime import datetime

    naive = JobStore(engine, clock=lambda: datetime(2025, 1, 1))
    with pytest.raises(ValueError, match="timezone-aware"):
        naive.create_job(version, backend="local", token_hash=hash_token("t"))


# -- an unavailable database -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        pytest.param("postgresql+psycopg://postgres@127.0.0.1:1/modelops?connect_timeout=2", id="postgresql"),
        pytest.param("sqlite-directory", id="sqlite"),
    ],
)
def test_a_dead_database_makes_every_operation_report_the_store_unavailable(url: str, tmp_path: Path) -> None:
    if url == "sqlite-directory":
        url = f"sqlite:///{tmp_path}"  # a directory: SQLite cannot open it
    engine = create_engine(url)
    dead = JobStore(engine)
    operations: list[Callable[[], object]] = [
        lambda: dead.get_job(uuid.uuid4()),
        lambda: dead.list_jobs(),
        lambda: dead.list_pipelines(),
        lambda: dead.add_pipeline_version("digits", DIGITS_IR, digest_of("v1")),
        lambda: dead.transition(uuid.uuid4(), JobState.INSTALLING),
        lambda: dead.non_terminal_jobs(),
    ]
    try:
        for operation in operations:
            with pytest.raises(StoreUnavailable) as caught:
                operation()
            assert caught.value.http_status == 503
            assert isinstance(caught.value.__cause__, sqlalchemy.exc.OperationalError)
    finally:
        engine.dispose()


def test_the_first_completion_report_wins_and_the_state_does_not_change(store: JobStore, new_job: NewJob) -> None:
    job = bring_to(store, new_job(), JobState.RUNNING)
    first = store.record_completion(job.id, True, "source exhausted")
    assert (first.state, first.completion, first.completion_message) == (
        JobState.RUNNING,
        "succeeded",
        "source exhausted",
    )
    again = store.record_completion(job.id, False, "late failure")
    assert (again.completion, again.completion_message) == ("succeeded", "source exhausted")
    assert store.get_job(job.id).completion == "succeeded"


def test_a_pipeline_is_complete_once_every_flow_reported_success(store: JobStore, new_job: NewJob) -> None:
    job = bring_to(store, new_job(), JobState.RUNNING)
    first = store.record_completion(job.id, True, "1,000 rows", flow="score", flows=["score", "audit"])
    assert first.completion is None
    assert first.flow_completions == {"score": {"succeeded": True, "message": "1,000 rows"}}
    last = store.record_completion(job.id, True, "12 alerts", flow="audit", flows=["score", "audit"])
    assert (last.completion, last.completion_message) == ("succeeded", "flow audit: 12 alerts; flow score: 1,000 rows")
    late = store.record_completion(job.id, False, "late", flow="audit", flows=["score", "audit"])
    assert (late.completion, late.flow_completions) == ("succeeded", last.flow_completions)
    assert store.get_job(job.id).flow_completions == last.flow_completions


def test_the_first_failed_flow_fails_the_completion_at_once(store: JobStore, new_job: NewJob) -> None:
    job = bring_to(store, new_job(), JobState.RUNNING)
    store.record_completion(job.id, True, None, flow="score", flows=["score", "audit", "export"])
    failed = store.record_completion(
        job.id, False, "flow audit: sink down", flow="audit", flows=["score", "audit", "export"]
    )
    assert (failed.completion, failed.completion_message) == ("failed", "flow audit: sink down")


def test_a_flow_reports_only_once(store: JobStore, new_job: NewJob) -> None:
    job = bring_to(store, new_job(), JobState.RUNNING)
    store.record_completion(job.id, True, "first", flow="score", flows=["score", "audit"])
    again = store.record_completion(job.id, False, "second", flow="score", flows=["score", "audit"])
    assert (again.completion, again.flow_completions) == (None, {"score": {"succeeded": True, "message": "first"}})


def test_a_report_from_a_flow_the_pipeline_does_not_have_is_refused(store: JobStore, new_job: NewJob) -> None:
    job = bring_to(store, new_job(), JobState.RUNNING)
    with pytest.raises(InvalidInput, match="has no scoring flow 'nope' \\(its flows: audit, score\\)"):
        store.record_completion(job.id, True, flow="nope", flows=["score", "audit"])
    assert store.get_job(job.id).flow_completions is None


def test_a_completion_may_arrive_while_installing(store: JobStore, new_job: NewJob) -> None:
    job = bring_to(store, new_job(), JobState.INSTALLING)
    assert store.record_completion(job.id, False, "flow crashed").completion == "failed"


@pytest.mark.parametrize("state", [JobState.PENDING, JobState.CANCELLING, JobState.SUCCEEDED])
def test_a_completion_is_refused_when_the_job_is_not_installing_or_running(
    store: JobStore, new_job: NewJob, state: JobState
) -> None:
    job = bring_to(store, new_job(), state)
    with pytest.raises(Conflict):
        store.record_completion(job.id, True)
    assert store.get_job(job.id).completion is None
