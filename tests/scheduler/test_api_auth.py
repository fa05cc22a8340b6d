"""Who may call what: bearer tokens and scopes, open mode on loopback only, and the unauthenticated probes."""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from api_kit import (
    ADMIN,
    READ,
    UNKNOWN_TOKEN,
    WRITE,
    YAML,
    Api,
    as_yaml,
    assert_error,
    bearer,
    running,
    settings_for,
    tiny_documents,
)

from scheduler.app import StartupRefused, create_app
from scheduler.auth import OPEN_MODE_WARNING

# (method, path, body) of one request per protected endpoint, and the scope it needs.
JOB = "00000000-0000-4000-8000-000000000001"
READS = [
    ("GET", "/api/v1/pipelines"),
    ("GET", "/api/v1/pipelines/tiny"),
    ("GET", "/api/v1/pipelines/tiny/versions/1"),
    ("GET", "/api/v1/pipelines/tiny/versions/1/values"),
    ("GET", "/api/v1/jobs"),
    ("GET", f"/api/v1/jobs/{JOB}"),
    ("GET", f"/api/v1/jobs/{JOB}/logs"),
]
WRITES = [
    ("POST", "/api/v1/pipelines"),
    ("POST", "/api/v1/jobs"),
    ("POST", f"/api/v1/jobs/{JOB}/cancel"),
]


@pytest.fixture
async def api(api_database_url: str, tmp_path: Path) -> AsyncIterator[Api]:
    async with running(settings_for(tmp_path / "home", api_database_url)) as started:
        await started.deploy()
        yield started


async def _call(api: Api, method: str, path: str, headers: dict[str, str]) -> int:
    if path == "/api/v1/pipelines" and method == "POST":
        response = await api.client.post(path, content=as_yaml(tiny_documents()), headers={**YAML, **headers})
    elif path == "/api/v1/jobs" and method == "POST":
        response = await api.client.post(path, json={"pipeline": "tiny"}, headers=headers)
    else:
        response = await api.client.request(method, path, headers=headers)
    if response.status_code >= 400:
        assert_error(response, response.status_code)
    return response.status_code


async def test_no_token_is_401_with_a_bearer_challenge(api: Api) -> None:
    for method, path in READS + WRITES:
        response = await api.client.request(method, path)
        assert_error(response, 401, "unauthorized")
        assert response.headers["WWW-Authenticate"].startswith("Bearer")


async def test_a_wrong_or_malformed_token_is_401(api: Api) -> None:
    for authorization in [
        f"Bearer {UNKNOWN_TOKEN}",
        "Bearer ",
        "Basic dXNlcjpwYXNz",
        "bearer",
        "Token abc",
        f"Bearer {UNKNOWN_TOKEN} x",
    ]:
        response = await api.client.get("/api/v1/jobs", headers={"Authorization": authorization})
        assert_error(response, 401)
        assert response.headers["WWW-Authenticate"].startswith("Bearer")


async def test_a_read_token_may_read_but_not_change_anything(api: Api) -> None:
    for method, path in READS:
        assert await _call(api, method, path, READ) not in (401, 403), path
    for method, path in WRITES:
        response = await api.client.request(method, path, headers=READ)
        error = assert_error(response, 403, "insufficient_scope")
        assert error["details"] == {"token": "reader", "scope": "read", "needed": "write"}


@pytest.mark.parametrize("token", [WRITE, ADMIN], ids=["write", "admin"])
async def test_write_and_admin_tokens_may_read_and_change(api: Api, token: dict[str, str]) -> None:
    for method, path in READS + WRITES:
        assert await _call(api, method, path, token) not in (401, 403), path


async def test_probes_metrics_and_docs_need_no_token(api: Api) -> None:
    for path in ["/healthz", "/readyz", "/metrics", "/openapi.json", "/docs"]:
        assert (await api.client.get(path)).status_code == 200, path


async def test_the_deployer_token_name_is_recorded_as_created_by(api: Api) -> None:
    docs = tiny_documents("by-admin")
    response = await api.client.post("/api/v1/pipelines", content=as_yaml(docs), headers={**YAML, **ADMIN})
    assert response.json()["created_by"] == "root"


async def test_without_tokens_on_loopback_requests_are_unauthenticated_and_a_warning_is_logged(
    api_database_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = settings_for(tmp_path / "home", api_database_url, tokens=[], host="127.0.0.1")
    with caplog.at_level(logging.WARNING, logger="scheduler.app"):
        async with running(settings) as api:
            assert OPEN_MODE_WARNING in caplog.text
            deployed = await api.client.post("/api/v1/pipelines", content=as_yaml(tiny_documents()), headers=YAML)
            assert deployed.status_code == 201
            assert deployed.json()["created_by"] is None
            job = await api.client.post("/api/v1/jobs", json={"pipeline": "tiny"})
            assert job.status_code == 201
            # a token sent out of habit is ignored ...
            assert (await api.client.get("/api/v1/jobs", headers=bearer(UNKNOWN_TOKEN))).status_code == 200
            # ... but a job token is still checked against its job
            other = bearer(api.service.job_token(uuid.uuid4()))
            report = await api.client.post(f"/api/v1/jobs/{job.json()['id']}/progress", json={"read": 1}, headers=other)
            assert_error(report, 401, "invalid_job_token")
            unauthenticated = await api.client.post(f"/api/v1/jobs/{job.json()['id']}/progress", json={"read": 2})
            assert unauthenticated.json()["progress"]["read"] == 2
            # who cancelled is named as what it is: the local user of a server without tokens
            cancelled = await api.client.post(f"/api/v1/jobs/{job.json()['id']}/cancel")
            assert cancelled.status_code == 202
            detail = (await api.client.get(f"/api/v1/jobs/{job.json()['id']}")).json()
            cancelling = [event for event in detail["events"] if event["to"] == "CANCELLING" != event["from"]]
            assert [event["message"] for event in cancelling] == [
                "cancelled by local user (loopback, no tokens configured)"
            ]


@pytest.mark.parametrize("host", ["::1", "localhost"])
def test_other_loopback_names_allow_running_without_tokens(tmp_path: Path, host: str) -> None:
    create_app(settings_for(tmp_path, "sqlite:///unused.db", tokens=[], host=host))


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "10.1.2.3", "scheduler.example.org"])
def test_without_tokens_a_non_loopback_host_is_refused_at_creation(tmp_path: Path, host: str) -> None:
    with pytest.raises(StartupRefused, match="no API tokens are configured") as caught:
        create_app(settings_for(tmp_path, "sqlite:///unused.db", tokens=[], host=host))
    assert "MODELOPS_SCHEDULER_TOKENS" in str(caught.value)


def test_with_tokens_any_host_is_fine(tmp_path: Path) -> None:
    create_app(settings_for(tmp_path, "sqlite:///unused.db", host="0.0.0.0"))
