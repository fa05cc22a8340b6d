"""schemathesis against the app's own OpenAPI document: for every operation, generated requests (valid and
invalid) never get a 500 and every response matches what the schema declares (status, content type, body).

The app runs with the fake backend on SQLite and on PostgreSQL, authenticated with a write token, and holds
one deployed pipeline and two jobs. Each operation gets valid requests, invalid ones (which must be refused
with a 4xx), and valid ones about the stored pipeline and a finished job, so success answers are checked
against the schema too. `schemathesis.pytest.from_fixture` does not work with this pytest (it reads a
private `_nodeid`), hence one hypothesis test per operation inside a plain test.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from api_kit import WRITE, WRITE_TOKEN, FakeBackend, as_yaml, settings_for, tiny_documents
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.python.asgi import get_client, shutdown_lifespans
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from scheduler.app import create_app
from scheduler.settings import SchedulerSettings
from scheduler.store import JobStore

ENDLESS_STREAMS = frozenset({"/api/v1/jobs/events"})
"""Operations whose success answer never ends (server-sent events of every job change until the server stops):
a generated request would hang here. `/jobs/{job_id}/events` is fuzzed: for the finished job it ends at once
(`event: end`), for an unknown one it is a 404. test_api_job_events.py tests the endless one."""

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    negative_data_rejection,
]


@pytest.fixture
def app_schema(api_database_url: str, tmp_path: Path) -> Iterator[tuple[Any, dict[str, Any]]]:
    """The schema of a started app (fake backend) holding one pipeline and two jobs, and the path
    parameters that name them."""
    config: SchedulerSettings = settings_for(tmp_path / "home", api_database_url)

    def factory(store: JobStore, _settings: SchedulerSettings, _secret: bytes) -> FakeBackend:
        return FakeBackend(store)

    app = create_app(config, backend_factory=factory)
    try:
        with get_client(app) as client:  # starts the lifespan; schemathesis keeps it until shutdown_lifespans()
            deployed = client.post(
                "/api/v1/pipelines",
                data=as_yaml(tiny_documents()),
                headers={"Content-Type": "application/yaml", **WRITE},
            )
            assert deployed.status_code == 201, deployed.text
            jobs = [client.post("/api/v1/jobs", json={"pipeline": "tiny"}, headers=WRITE) for _ in range(2)]
            assert all(job.status_code == 201 for job in jobs), [job.text for job in jobs]
            finished = jobs[1].json()["id"]  # a finished job: following its logs ends at once
            token = app.state.service.job_token(uuid.UUID(finished))
            done = client.post(
                f"/api/v1/jobs/{finished}/complete",
                json={"succeeded": True},
                headers={"Authorization": f"Bearer {token}"},
            )
            assert done.json()["state"] == "SUCCEEDED", done.text
        known = {"name": "tiny", "version": 1, "job_id": finished}
        yield schemathesis.openapi.from_asgi("/openapi.json", app), known
    finally:
        shutdown_lifespans()


@pytest.mark.slow
def test_no_operation_answers_500_or_outside_its_schema(app_schema: tuple[Any, dict[str, Any]]) -> None:
    schema, known = app_schema
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 14
    for operation in operations:
        if operation.path in ENDLESS_STREAMS:
            continue
        strategies = [operation.as_strategy(GenerationMode.POSITIVE), operation.as_strategy(GenerationMode.NEGATIVE)]
        existing = {name: value for name, value in known.items() if f"{{{name}}}" in operation.path}
        if existing:  # also requests about the stored pipeline and job, to reach the success answers
            strategies.append(operation.as_strategy(GenerationMode.POSITIVE, path_parameters=existing))

        @given(case=st.one_of(strategies))
        @settings(
            max_examples=25,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            derandomize=True,
            phases=[Phase.explicit, Phase.generate],  # no shrinking: bounded time, the first failure as found
        )
        def check(case: schemathesis.Case) -> None:
            case.call_and_validate(headers={"Authorization": f"Bearer {WRITE_TOKEN}"}, checks=CHECKS)

        check()
