"""Credentials are checked before the body: a forged token with a malformed body is 401, never 422.

FastAPI parses a JSON body before it resolves a route's dependencies, so without `scheduler.auth.AuthFirstRoute`
an unauthenticated caller would learn what the body should look like (and make the server parse it).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from api_kit import (
    UNKNOWN_TOKEN,
    WRITE,
    Api,
    assert_error,
    bearer,
    running,
    settings_for,
)

FORGED_JOB_TOKEN = "mjt_" + "3f2b6c1e8f7d4c529d8e2a1b0c9d8e7f" + "_" + "q" * 24
REPORTS = ["progress", "complete", "phase"]
BAD_BODIES = [b"{not json", b'{"read": "many", "task": 7}', b"[]"]


@pytest.fixture
async def api(api_database_url: str, tmp_path: Path) -> AsyncIterator[Api]:
    async with running(settings_for(tmp_path / "home", api_database_url)) as started:
        await started.deploy()
        yield started


async def _post(api: Api, path: str, body: bytes, headers: dict[str, str]) -> int:
    response = await api.client.post(path, content=body, headers={"Content-Type": "application/json", **headers})
    if response.status_code >= 400:
        assert_error(response, response.status_code)
    return response.status_code


@pytest.mark.parametrize("report", REPORTS)
async def test_a_forged_job_token_with_a_malformed_body_is_401_on_every_reporter_route(api: Api, report: str) -> None:
    job = await api.start_job(parameters={"input": "data/in.csv"})
    for body in BAD_BODIES:
        status = await _post(api, f"/api/v1/jobs/{job['id']}/{report}", body, bearer(FORGED_JOB_TOKEN))
        assert status == 401, (report, body)


@pytest.mark.parametrize("report", REPORTS)
async def test_another_jobs_token_with_a_malformed_body_is_401(api: Api, report: str) -> None:
    job = await api.start_job(parameters={"input": "data/in.csv"})
    other = api.service.job_token(uuid.uuid4())
    assert await _post(api, f"/api/v1/jobs/{job['id']}/{report}", b"{not json", bearer(other)) == 401


@pytest.mark.parametrize("report", REPORTS)
async def test_an_unknown_api_token_or_none_with_a_malformed_body_is_401(api: Api, report: str) -> None:
    job = await api.start_job(parameters={"input": "data/in.csv"})
    for headers in (bearer(UNKNOWN_TOKEN), {}):
        assert await _post(api, f"/api/v1/jobs/{job['id']}/{report}", b"{not json", headers) == 401


@pytest.mark.parametrize("report", REPORTS)
async def test_the_jobs_own_token_with_a_malformed_body_is_still_422(api: Api, report: str) -> None:
    job = await api.start_job(parameters={"input": "data/in.csv"})
    token = api.service.job_token(uuid.UUID(job["id"]))
    assert await _post(api, f"/api/v1/jobs/{job['id']}/{report}", b"{not json", bearer(token)) == 422


async def test_the_write_routes_check_the_token_before_the_body_too(api: Api) -> None:
    assert await _post(api, "/api/v1/jobs", b"{not json", bearer(UNKNOWN_TOKEN)) == 401
    assert await _post(api, "/api/v1/jobs", b"{not json", {}) == 401
    assert await _post(api, "/api/v1/jobs", b"{not json", WRITE) == 422
