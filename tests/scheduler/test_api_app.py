"""The app as a whole: start-up checks and shutdown, probes, metrics, the one error body for everything, no
500 for malformed requests, and an OpenAPI document that declares what the routes answer."""

from __future__ import annotations

import json
import logging
import secrets
import shutil
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy
from api_kit import (
    ADMIN,
    READ,
    WRITE,
    YAML,
    Api,
    FakeBackend,
    as_yaml,
    assert_error,
    running,
    settings_for,
    tiny_documents,
)
from conftest import POSTGRES_ADMIN_URL
from sqlalchemy.engine import make_url

from scheduler.app import StartupRefused, create_app
from scheduler.db import upgrade
from scheduler.store import JobStore

JOBS = "/api/v1/jobs"


@pytest.fixture
async def api(api_database_url: str, tmp_path: Path) -> AsyncIterator[Api]:
    async with running(settings_for(tmp_path / "home", api_database_url)) as started:
        await started.deploy()
        yield started


# ------------------------------------------------------------------------------------------------ lifespan


async def test_the_backend_recovers_at_start_and_closes_at_stop(api_database_url: str, tmp_path: Path) -> None:
    async with running(settings_for(tmp_path / "home", api_database_url)) as api:
        assert api.backend.calls == [("recover", None)]
        backend = api.backend
    assert backend.calls[-1] == ("close", None)
    assert api.app.state.service is None


async def test_an_unmigrated_database_is_refused_with_the_command_to_run(
    empty_database_url: str, tmp_path: Path
) -> None:
    app = create_app(settings_for(tmp_path / "home", empty_database_url))
    with pytest.raises(StartupRefused, match="modelops db upgrade"):
        async with app.router.lifespan_context(app):
            pytest.fail("the app started on an unmigrated database")


async def test_an_unreachable_database_is_refused_at_start(tmp_path: Path) -> None:
    url = "postgresql+psycopg://nobody@127.0.0.1:1/none?connect_timeout=1"
    app = create_app(settings_for(tmp_path / "home", url))
    with pytest.raises(StartupRefused, match="cannot start"):
        async with app.router.lifespan_context(app):
            pytest.fail("the app started without its database")


async def test_an_unusable_job_token_secret_is_refused_at_start(
    api_database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MODELOPS_SCHEDULER_JOB_TOKEN_SECRET", "too-short")
    app = create_app(settings_for(tmp_path / "home", api_database_url))
    with pytest.raises(StartupRefused, match="job-token secret"):
        async with app.router.lifespan_context(app):
            pytest.fail("the app started with a weak job-token secret")


async def test_requests_before_the_start_are_503(tmp_path: Path) -> None:
    app = create_app(settings_for(tmp_path / "home", "sqlite:///never.db"))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://t") as client:
        assert_error(await client.get(JOBS, headers=READ), 503, "not_started")
        assert_error(await client.get("/readyz"), 503, "not_ready")
        assert (await client.get("/healthz")).status_code == 200


def test_creating_the_app_touches_nothing(tmp_path: Path) -> None:
    create_app(settings_for(tmp_path / "home", f"sqlite:///{tmp_path / 'db' / 'm.db'}"))
    assert list(tmp_path.iterdir()) == []


async def test_the_default_backend_is_the_local_one(api_database_url: str, tmp_path: Path) -> None:
    app = create_app(settings_for(tmp_path / "home", api_database_url))
    async with app.router.lifespan_context(app):
        assert type(app.state.service.backend).__name__ == "LocalBackend"


# ------------------------------------------------------------------------------------------------ probes


async def test_health_and_readiness_answer_ok(api: Api) -> None:
    assert (await api.client.get("/healthz")).json() == {"status": "ok"}
    assert (await api.client.get("/readyz")).json() == {"status": "ready", "database": "ok"}


@pytest.fixture
def doomed_database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, Any]]:
    """A migrated database the test may destroy, and how to destroy it."""
    kind = request.param
    if kind == "sqlite":
        folder = tmp_path / "doomed"
        url = f"sqlite:///{folder / 'modelops.db'}"
        upgrade(url)
        yield url, lambda: shutil.rmtree(folder)
        return
    name = f"modelops_doomed_{secrets.token_hex(4)}"
    admin = sqlalchemy.create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    url = make_url(POSTGRES_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    upgrade(url)

    def drop() -> None:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    try:
        yield url, drop
    finally:
        drop()
        admin.dispose()


@pytest.mark.parametrize(
    "doomed_database_url",
    [pytest.param("sqlite"), pytest.param("postgresql", marks=pytest.mark.postgres)],
    indirect=True,
)
async def test_readiness_is_503_with_the_error_body_once_the_database_is_gone(
    doomed_database_url: tuple[str, Any], tmp_path: Path
) -> None:
    url, destroy = doomed_database_url
    async with running(settings_for(tmp_path / "home", url)) as api:
        assert (await api.client.get("/readyz")).status_code == 200
        destroy()
        api.app.state.engine.dispose()  # SQLite: pooled connections would still see the deleted file
        error = assert_error(await api.client.get("/readyz"), 503, "database_unavailable")
        assert "database" in error["details"]
        assert (await api.client.get("/healthz")).status_code == 200
        assert_error(await api.client.get(JOBS, headers=READ), 503, "store_unavailable")
        metrics = (await api.client.get("/metrics")).text
        assert "modelops_scheduler_store_up 0.0" in metrics


# ------------------------------------------------------------------------------------------------ metrics


async def test_metrics_expose_jobs_by_state_transitions_and_request_latency(api: Api) -> None:
    job = await api.start_job()
    await api.client.post(f"{JOBS}/{job['id']}/cancel", headers=WRITE)
    await api.client.get(f"{JOBS}/{job['id']}", headers=READ)
    response = await api.client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    assert 'modelops_scheduler_jobs{state="CANCELLED"} 1.0' in text
    assert 'modelops_scheduler_jobs{state="RUNNING"} 0.0' in text
    assert 'modelops_scheduler_job_transitions_total{from="none",to="PENDING"} 1.0' in text
    assert 'modelops_scheduler_job_transitions_total{from="RUNNING",to="CANCELLING"} 1.0' in text
    assert "modelops_scheduler_store_up 1.0" in text
    assert (
        'modelops_scheduler_http_request_duration_seconds_count{method="GET",route="/api/v1/jobs/{job_id}",'
        'status="200"} 1.0'
    ) in text
    assert 'route="/api/v1/jobs/{job_id}/cancel",status="202"' in text
    assert str(job["id"]) not in text


async def test_unmatched_paths_share_one_latency_label(api: Api) -> None:
    for n in range(3):
        await api.client.get(f"/nothing/here/{n}")
    text = (await api.client.get("/metrics")).text
    assert 'route="<unmatched>",status="404"} 3.0' in text
    assert "/nothing/here" not in text


async def test_two_apps_in_one_process_keep_their_own_metrics(api_database_url: str, tmp_path: Path) -> None:
    async with (
        running(settings_for(tmp_path / "a", api_database_url)) as first,
        running(settings_for(tmp_path / "b", api_database_url)) as second,
    ):
        await first.client.get("/healthz")
        assert 'route="/healthz"' not in (await second.client.get("/metrics")).text


# ------------------------------------------------------------------------------------------------ errors


async def test_unknown_routes_and_methods_get_the_error_body(api: Api) -> None:
    assert_error(await api.client.get("/api/v1/nothing"), 404, "not_found")
    response = await api.client.delete(JOBS, headers=ADMIN)
    assert_error(response, 405, "method_not_allowed")
    assert response.headers["allow"]


async def test_an_unexpected_error_is_a_500_in_the_same_shape(
    api_database_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with running(settings_for(tmp_path / "home", api_database_url), drive=False) as api:
        await api.deploy()
        job = await api.start_job()

        async def broken(job_id: uuid.UUID) -> None:
            raise RuntimeError("the backend fell over")

        api.backend.cancel = broken  # type: ignore[method-assign]
        transport = httpx.ASGITransport(api.app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            with caplog.at_level(logging.ERROR):
                response = await client.post(f"{JOBS}/{job['id']}/cancel", headers=WRITE)
        error = assert_error(response, 500, "internal_error")
        assert "fell over" not in error["message"]
        assert "the backend fell over" in caplog.text


J = {"Content-Type": "application/json"}
MALFORMED: list[tuple[str, str, bytes | None, dict[str, str]]] = [
    ("POST", JOBS, b"{not json", J),
    ("POST", JOBS, b"", J),
    ("POST", JOBS, b"[]", J),
    ("POST", JOBS, b"null", J),
    ("POST", JOBS, b'{"pipeline": 5}', J),
    ("POST", JOBS, b'{"pipeline": "tiny", "version": "one"}', J),
    ("POST", JOBS, b'{"pipeline": "tiny", "version": 1e400}', J),
    ("POST", JOBS, b'{"pipeline": "tiny", "version": 99999999999999999999999}', J),
    ("POST", JOBS, b'{"pipeline": "tiny", "version": 1' + b"0" * 5000 + b"}", J),
    ("POST", JOBS, b'{"pipeline": "tiny", "parameters": {"limit": 1' + b"0" * 40 + b"}}", J),
    ("POST", JOBS, b'{"pipeline": "tiny", "parameters": {"threshold": NaN}}', J),
    ("POST", JOBS, b'{"pipeline": "tiny", "parameters": {"threshold": Infinity}}', J),
    ("POST", JOBS, b'{"pipeline": "tiny", "parameters": {"input": "\\u0000"}}', J),
    ("POST", JOBS, b'{"pipeline": "tiny", "parameters": {"input": "\\ud800"}}', J),
    ("POST", JOBS, b'{"pipeline": "tiny", "parameters": {"\\udfff": 1}}', J),
    ("POST", JOBS, b'{"pipeline": "tiny", "parameters": [1, 2]}', J),
    ("POST", JOBS, b'{"pipeline": "tiny", "environment": {"a": "\\u0000"}}', J),
    ("POST", JOBS, b'{"pipeline": "tiny", "environment": {"n": 1' + b"0" * 30 + b"}}", J),
    ("POST", JOBS, b'{"pipeline": "tiny", "environment": ' + b'{"a": ' * 500 + b"1" + b"}" * 501, J),
    ("POST", JOBS, b'{"pipeline": "tiny", "environment": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", J),
    ("POST", JOBS, b'{"pipeline": "tiny", "extra": true}', J),
    ("POST", JOBS, '{"pipeline": "t\u00efny\u2603"}'.encode(), J),
    ("POST", JOBS, b'{"pipeline": "\xff\xfe"}', J),
    ("POST", JOBS, b"pipeline=tiny", {"Content-Type": "application/x-www-form-urlencoded"}),
    ("POST", JOBS, b'{"pipeline": "tiny"}', {"Content-Type": "text/plain"}),
    ("GET", f"{JOBS}?limit=99999999999999999999999", None, {}),
    ("GET", f"{JOBS}?limit=-1&state=%00", None, {}),
    ("GET", f"{JOBS}?pipeline=%00&cursor=%F0%9F%92%A9", None, {}),
    ("GET", f"{JOBS}?cursor=" + "A" * 600, None, {}),
    ("GET", "/api/v1/pipelines/tiny/versions/1/values?param=%00%00=%FF", None, {}),
    ("GET", "/api/v1/pipelines/tiny/versions/1/values?param=limit=1" + "0" * 5000, None, {}),
    ("GET", "/api/v1/pipelines/tiny/versions/1/values?param=threshold=1e999", None, {}),
    ("GET", "/api/v1/pipelines/%F0%9F%92%A9", None, {}),
    ("GET", "/api/v1/pipelines/tiny/versions/-1", None, {}),
    ("GET", f"{JOBS}/{'9' * 40}", None, {}),
]


async def test_malformed_requests_are_refused_without_a_500(api: Api) -> None:
    for method, path, content, headers in MALFORMED:
        response = await api.client.request(method, path, content=content, headers={**ADMIN, **headers})
        assert 400 <= response.status_code < 500, (method, path, content and content[:80], response.text)
        assert_error(response, response.status_code)


async def test_malformed_progress_and_completion_reports_are_422(api: Api) -> None:
    job = await api.start_job()
    bad = [
        ("progress", {"read": -1}),
        ("progress", {"read": 2**63}),
        ("progress", {"read": "5"}),
        ("progress", {"read": 5.0}),
        ("progress", {"read": True}),
        ("progress", {"reads": 1}),
        ("complete", {}),
        ("complete", {"succeeded": "yes"}),
        ("complete", {"succeeded": 1}),
        ("complete", {"succeeded": True, "message": "x" * 20_000}),
        ("complete", {"succeeded": True, "message": "\x00"}),
    ]
    for route, body in bad:
        response = await api.client.post(f"{JOBS}/{job['id']}/{route}", json=body, headers=WRITE)
        error = assert_error(response, 422, "invalid_request")
        assert error["details"][0]["loc"][0] == "body", (route, body)
    assert api.store.get_job(job["id"]).completion is None


async def test_validation_errors_name_the_field_without_echoing_the_input(api: Api) -> None:
    response = await api.client.post(JOBS, json={"pipeline": "tiny", "version": "secret-ish"}, headers=WRITE)
    error = assert_error(response, 422, "invalid_request")
    assert error["details"][0]["loc"][:2] == ["body", "version"]
    assert "secret-ish" not in response.text


async def test_a_deploy_with_lone_surrogates_in_file_names_is_answered_in_json(api: Api) -> None:
    body = b'{"files": {"\\ud800.yaml": "a: 1"}}'
    response = await api.client.post(
        "/api/v1/pipelines", content=body, headers={"Content-Type": "application/json", **WRITE}
    )
    assert_error(response, 422)
    json.loads(response.content)  # valid JSON, whatever was echoed


async def test_the_store_is_never_asked_to_hold_what_it_cannot(api: Api) -> None:
    deployed = await api.client.post(
        "/api/v1/pipelines", content=as_yaml(tiny_documents("nul-free")), headers={**YAML, **WRITE}
    )
    assert deployed.status_code == 201
    store: JobStore = api.store
    assert {p.name for p in store.list_pipelines()} == {"tiny", "nul-free"}


# ------------------------------------------------------------------------------------------------ OpenAPI


async def test_every_operation_declares_its_responses_with_models_and_error_bodies(api: Api) -> None:
    schema = (await api.client.get("/openapi.json")).json()
    assert "ErrorBody" in schema["components"]["schemas"]
    operations = [
        (path, method, operation) for path, item in schema["paths"].items() for method, operation in item.items()
    ]
    assert len(operations) >= 14
    for path, method, operation in operations:
        responses = operation["responses"]
        success = [code for code in responses if code.startswith("2")]
        assert success, (path, method)
        assert all(responses[code].get("content") for code in success), (path, method)
        if path.startswith("/api/v1"):
            assert {"401", "403"} <= set(responses), (path, method)
            for code, response in responses.items():
                if code.startswith(("4", "5")):
                    ref = response["content"]["application/json"]["schema"]["$ref"]
                    assert ref.endswith("/ErrorBody"), (path, method, code)
            assert operation.get("security"), (path, method)
    for name in ("JobOut", "JobDetail", "DeploymentOut", "PipelineOut", "JobCreate", "ErrorBody"):
        assert schema["components"]["schemas"][name].get("examples"), name
    deploy = schema["paths"]["/api/v1/pipelines"]["post"]["requestBody"]["content"]
    assert set(deploy) == {"application/yaml", "application/json", "application/gzip"}


def test_the_fake_backend_satisfies_the_protocol() -> None:
    from scheduler.backends.base import Backend

    backend: Backend = FakeBackend(store=None)  # type: ignore[arg-type]
    assert backend.name == "fake"
