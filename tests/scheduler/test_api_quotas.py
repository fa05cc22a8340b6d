"""Per-token quotas: a token may carry `max_concurrent_jobs` and `max_rows_per_day`; a start over one is 429 with
`Retry-After` naming the quota, usage is `GET /api/v1/usage` and Prometheus gauges. SQLite and PostgreSQL.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from api_kit import ADMIN, READ, TOKENS, WRITE, Api, assert_error, bearer, running, settings_for
from typer.testing import CliRunner

from scheduler.cli import app as cli
from scheduler.settings import SchedulerSettings, TokenSpec, hash_token
from scheduler.states import JobState

JOBS = "/api/v1/jobs"
BATCH_TOKEN = "bt-5d4c3b2a1f0e49d8c7b6a5f4e3d2c1b0"
BATCH = bearer(BATCH_TOKEN)


def quota_tokens() -> list[TokenSpec]:
    """The api_kit tokens, `ci` (write) limited to 2 concurrent jobs, plus `batch` (write) with 100 rows a day."""
    tokens = [token.model_copy(update={"max_concurrent_jobs": 2}) if token.name == "ci" else token for token in TOKENS]
    return [*tokens, TokenSpec(name="batch", scope="write", sha256=hash_token(BATCH_TOKEN), max_rows_per_day=100)]


@pytest.fixture
async def api(api_database_url: str, tmp_path: Path) -> AsyncIterator[Api]:
    """Jobs stay where the API put them (the fake backend does not move them): they count as unfinished."""
    settings = settings_for(tmp_path / "home", api_database_url, tokens=quota_tokens())
    async with running(settings, drive=False) as started:
        await started.deploy()
        yield started


async def start(api: Api, headers: dict[str, str]) -> tuple[int, dict[str, str], dict[str, object]]:
    response = await api.client.post(JOBS, json={"pipeline": "tiny"}, headers=headers)
    return response.status_code, dict(response.headers), response.json()


async def test_a_start_over_the_concurrent_jobs_quota_is_429_with_retry_after_naming_the_quota(api: Api) -> None:
    first = await api.start_job()
    await api.start_job()

    response = await api.client.post(JOBS, json={"pipeline": "tiny"}, headers=WRITE)

    error = assert_error(response, 429, "quota_exceeded")
    assert response.headers["Retry-After"] == "30"
    assert error["details"] == {
        "quota": "max_concurrent_jobs",
        "limit": 2,
        "usage": 2,
        "token": "ci",
        "retry_after_seconds": 30,
    }
    assert "token 'ci' has 2 unfinished job(s), its limit of concurrent jobs is 2" in error["message"]
    listed = (await api.client.get(JOBS, headers=READ)).json()["items"]
    assert len(listed) == 2, "a refused start creates nothing"
    # Other tokens are not held back by ci's quota.
    assert (await api.client.post(JOBS, json={"pipeline": "tiny"}, headers=ADMIN)).status_code == 201

    # Once a job of ci's has finished, ci may start again.
    await asyncio.to_thread(api.store.transition, first["id"], JobState.FAILED, reason="Done")
    assert (await api.client.post(JOBS, json={"pipeline": "tiny"}, headers=WRITE)).status_code == 201


async def test_parallel_starts_never_take_more_than_the_quota(api: Api) -> None:
    answers = await asyncio.gather(*(start(api, WRITE) for _ in range(6)))
    assert sorted(status for status, _, _ in answers) == [201, 201, 429, 429, 429, 429]


async def test_a_start_once_today_s_rows_reach_the_quota_is_429_until_midnight_utc(api: Api) -> None:
    status, _, job = await start(api, BATCH)
    assert status == 201
    job_id = uuid.UUID(str(job["id"]))
    await asyncio.to_thread(api.store.update_progress, job_id, 150, 100, 0)
    await asyncio.to_thread(api.store.transition, job_id, JobState.FAILED, reason="Done")

    status, headers, body = await start(api, BATCH)

    assert status == 429
    error = body["error"]
    assert isinstance(error, dict)
    assert error["code"] == "quota_exceeded"
    details = error["details"]
    assert {key: details[key] for key in ("quota", "limit", "usage", "token")} == {
        "quota": "max_rows_per_day",
        "limit": 100,
        "usage": 100,
        "token": "batch",
    }
    retry = int(headers["retry-after"])
    assert 1 <= retry <= 86_401 and details["retry_after_seconds"] == retry
    assert "the count starts again at 00:00 UTC" in str(error["message"])


async def test_usage_shows_a_token_its_own_figures_and_an_admin_every_token_s(api: Api) -> None:
    await api.start_job()
    status, _, job = await start(api, BATCH)
    assert status == 201
    await asyncio.to_thread(api.store.update_progress, uuid.UUID(str(job["id"])), 40, 40, 0)

    own = (await api.client.get("/api/v1/usage", headers=WRITE)).json()
    assert own["tokens"] == [
        {"name": "ci", "active_jobs": 1, "rows_today": 0, "max_concurrent_jobs": 2, "max_rows_per_day": None}
    ]
    assert len(own["day"]) == 10
    reader = (await api.client.get("/api/v1/usage", headers=READ)).json()["tokens"]
    assert reader == [
        {"name": "reader", "active_jobs": 0, "rows_today": 0, "max_concurrent_jobs": None, "max_rows_per_day": None}
    ]

    everyone = (await api.client.get("/api/v1/usage", headers=ADMIN)).json()["tokens"]
    assert [entry["name"] for entry in everyone] == ["batch", "ci", "reader", "root"]
    batch = next(entry for entry in everyone if entry["name"] == "batch")
    assert batch == {
        "name": "batch",
        "active_jobs": 1,
        "rows_today": 40,
        "max_concurrent_jobs": None,
        "max_rows_per_day": 100,
    }
    assert_error(await api.client.get("/api/v1/usage"), 401)


async def test_the_metrics_give_each_token_s_usage_and_quotas(api: Api) -> None:
    await api.start_job()
    text = (await api.client.get("/metrics")).text
    assert 'modelops_scheduler_token_active_jobs{token="ci"} 1.0' in text
    assert 'modelops_scheduler_token_active_jobs{token="reader"} 0.0' in text
    assert 'modelops_scheduler_token_rows_today{token="batch"} 0.0' in text
    assert 'modelops_scheduler_token_quota{quota="max_concurrent_jobs",token="ci"} 2.0' in text
    assert 'modelops_scheduler_token_quota{quota="max_rows_per_day",token="batch"} 100.0' in text


async def test_jobs_record_the_token_that_created_them(api: Api) -> None:
    job = await api.start_job()
    stored = await asyncio.to_thread(api.store.get_job, job["id"])
    assert stored.created_by == "ci"


# ------------------------------------------------------------------------------------------- configuration


def test_a_token_entry_carries_its_quotas_after_its_hash_and_prints_them_back() -> None:
    digest = hash_token(BATCH_TOKEN)
    settings = SchedulerSettings(tokens=f"ci:write:{digest}:max_concurrent_jobs=3:max_rows_per_day=5000")
    (token,) = settings.tokens
    assert (token.max_concurrent_jobs, token.max_rows_per_day) == (3, 5000)
    assert str(token) == f"ci:write:{digest}:max_concurrent_jobs=3:max_rows_per_day=5000"
    assert str(TokenSpec.parse(f"ci:write:{digest}")) == f"ci:write:{digest}"


@pytest.mark.parametrize(
    ("suffix", "message"),
    [
        (":jobs=3", "'jobs=3' is not a quota; known: max_concurrent_jobs=N, max_rows_per_day=N"),
        (":max_concurrent_jobs=0", "greater than or equal to 1"),
        (":max_rows_per_day=2:max_rows_per_day=3", "quota max_rows_per_day is given twice"),
    ],
)
def test_a_bad_quota_in_a_token_entry_is_refused_naming_it(suffix: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        TokenSpec.parse(f"ci:write:{hash_token(BATCH_TOKEN)}{suffix}")


def test_token_new_prints_an_entry_with_the_quotas_it_was_given() -> None:
    result = CliRunner().invoke(cli, ["token", "new", "ci", "--max-concurrent-jobs", "4", "--max-rows-per-day", "1000"])
    assert result.exit_code == 0, result.stderr
    entry = next(line for line in result.stdout.splitlines() if line.startswith("MODELOPS_SCHEDULER_TOKENS="))
    spec = TokenSpec.parse(entry.partition("=")[2])
    assert (spec.name, spec.scope, spec.max_concurrent_jobs, spec.max_rows_per_day) == ("ci", "write", 4, 1000)
