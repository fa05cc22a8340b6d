"""`GET /api/v1/jobs/{id}` from the body cache (`scheduler.jobcache`) on SQLite and PostgreSQL: after every kind of
job write, made by another store (as another API worker or the lifecycle engine would, with a clock that does not
move), the answer is byte for byte what the job renders to uncached; a job that did not change is served from the
cache; a queued job follows its queue; a dropped connection of the check costs nothing but the cache hit."""

from __future__ import annotations

import secrets
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import httpx
import pytest
import sqlalchemy
from api_kit import READ, Api, running, settings_for
from store_kit import FrozenClock

from scheduler.api.jobs import detail_body
from scheduler.db import create_engine
from scheduler.jobcache import JobBodyCache
from scheduler.settings import hash_token
from scheduler.states import JobState, Task
from scheduler.store import Job, JobStore

JOBS = "/api/v1/jobs"


@pytest.fixture
async def api(api_database_url: str, tmp_path: Path) -> AsyncIterator[Api]:
    async with running(settings_for(tmp_path / "home", api_database_url), drive=False) as started:
        await started.deploy()
        yield started


@pytest.fixture
def clock() -> FrozenClock:
    return FrozenClock()


@pytest.fixture
def other(api_database_url: str, clock: FrozenClock) -> Iterator[JobStore]:
    """Another store on the same database, with a clock that moves only when told: the writes of another
    process, which a clock cannot tell apart."""
    engine = create_engine(api_database_url)
    yield JobStore(engine, clock=clock)
    engine.dispose()


def _bodies(api: Api) -> JobBodyCache:
    bodies = api.app.state.job_bodies
    assert isinstance(bodies, JobBodyCache)
    return bodies


def _new_job(store: JobStore) -> Job:
    job, created = store.create_job(
        store.get_version("tiny"),
        parameters={},
        environment={"namespace": "scoring"},
        backend="fake",
        token_hash=hash_token(secrets.token_urlsafe(16)),
    )
    assert created
    return job


async def _get(client: httpx.AsyncClient, job_id: uuid.UUID) -> bytes:
    response = await client.get(f"{JOBS}/{job_id}", headers=READ)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    return response.content


async def _assert_fresh(api: Api, store: JobStore, job_id: uuid.UUID) -> None:
    """The answer is what the job renders to now, and a second GET of the unchanged job is a cache hit."""
    body = await _get(api.client, job_id)
    assert body == detail_body(store.get_job(job_id))
    hits = _bodies(api).hits
    assert await _get(api.client, job_id) == body
    assert _bodies(api).hits == hits + 1


async def test_every_kind_of_job_write_by_another_process_shows_in_the_next_get(api: Api, other: JobStore) -> None:
    job = _new_job(other)
    writes: list[tuple[str, Callable[[], object]]] = [
        ("admission", lambda: other.admit_queued("fake", 10)),
        ("transition", lambda: other.transition(job.id, JobState.INSTALLING, task=Task.INSTALL)),
        ("backend ref", lambda: other.set_backend_ref(job.id, {"release": "r-1"})),
        ("event", lambda: other.add_event(job.id, "ServiceRestarted", "digits restarted")),
        ("phase", lambda: other.record_phase(job.id, Task.INSTALL, "succeeded")),
        ("progress", lambda: other.update_progress(job.id, 10, 9, 1)),
        ("progress of a flow", lambda: other.update_progress(job.id, 20, 19, 1, flow="f", report={"state": "running"})),
        ("completion", lambda: other.record_completion(job.id, True, "done")),
        ("task", lambda: other.set_task(job.id, Task.UNINSTALL)),
        ("cancel", lambda: other.transition(job.id, JobState.CANCELLING, reason="Cancelled")),
        ("end", lambda: other.transition(job.id, JobState.CANCELLED)),
    ]
    assert await _get(api.client, job.id) == detail_body(other.get_job(job.id))  # queued: not cached
    for what, write in writes:
        before = await _get(api.client, job.id)
        write()
        after = await _get(api.client, job.id)
        assert after != before, f"the GET after the {what} shows the job as before it"
        assert after == detail_body(other.get_job(job.id)), what
        await _assert_fresh(api, other, job.id)


async def test_a_queued_job_follows_its_queue_while_its_row_stays_the_same(
    api: Api, other: JobStore, clock: FrozenClock
) -> None:
    first = _new_job(other)
    clock.advance()  # the queue is in creation order
    second = _new_job(other)
    assert (await api.client.get(f"{JOBS}/{second.id}", headers=READ)).json()["queue_position"] == 2
    other.cancel_queued(first.id, reason="Cancelled", message=None)
    assert (await api.client.get(f"{JOBS}/{second.id}", headers=READ)).json()["queue_position"] == 1
    assert await _get(api.client, second.id) == detail_body(other.get_job(second.id))


async def test_reads_still_need_a_read_token_and_an_unknown_job_is_still_a_404(api: Api, other: JobStore) -> None:
    job = _new_job(other)
    other.admit_queued("fake", 10)
    await _assert_fresh(api, other, job.id)
    assert (await api.client.get(f"{JOBS}/{job.id}")).status_code == 401
    assert (await api.client.get(f"{JOBS}/{job.id}", headers={"Authorization": "Bearer nope"})).status_code == 401
    missing = await api.client.get(f"{JOBS}/{uuid.uuid4()}", headers=READ)
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "job_not_found"


@pytest.mark.postgres
async def test_a_check_connection_killed_by_the_server_costs_one_full_read(
    api: Api, other: JobStore, api_database_url: str
) -> None:
    if not api_database_url.startswith("postgresql"):
        pytest.skip("the check has its own connections only on PostgreSQL")
    job = _new_job(other)
    other.admit_queued("fake", 10)
    await _assert_fresh(api, other, job.id)
    admin = sqlalchemy.create_engine(api_database_url)
    try:
        with admin.connect() as conn:
            killed = conn.exec_driver_sql(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE datname = current_database() AND query LIKE 'SELECT updated_at, state, admitted_at%%'"
            ).scalar_one()
    finally:
        admin.dispose()
    assert killed >= 1
    other.update_progress(job.id, 5, 5, 0)
    failures = _bodies(api).check_failures
    assert await _get(api.client, job.id) == detail_body(other.get_job(job.id))
    assert _bodies(api).check_failures == failures + 1
    await _assert_fresh(api, other, job.id)  # a new connection
