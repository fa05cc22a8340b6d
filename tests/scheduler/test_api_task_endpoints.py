"""`/api/v1/jobs/{id}/spec|phase|status` (what `modelops task install|wait|uninstall` use) through httpx on SQLite
and PostgreSQL, the jobs left where the API puts them (the fake backend does not drive them)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from api_kit import READ, WRITE, Api, assert_error, bearer, running, settings_for

import ir
from scheduler.states import JobState, Task
from scheduler.taskcmd import render_spec
from scheduler.values import render_values

JOBS = "/api/v1/jobs"


@pytest.fixture
async def api(api_database_url: str, tmp_path: Path) -> AsyncIterator[Api]:
    async with running(settings_for(tmp_path / "home", api_database_url), drive=False) as started:
        await started.deploy()
        yield started


async def _job(api: Api, **body: Any) -> tuple[str, dict[str, str]]:
    """A new PENDING job and the headers carrying its own token."""
    job = await api.start_job(**body)
    return job["id"], bearer(api.service.job_token(uuid.UUID(job["id"])))


async def _phase(api: Api, job_id: str, headers: dict[str, str], **body: Any) -> dict[str, Any]:
    response = await api.client.post(f"{JOBS}/{job_id}/phase", json=body, headers=headers)
    assert response.status_code == 202, response.text
    job: dict[str, Any] = response.json()
    return job


def _events(api: Api, job_id: str) -> list[tuple[str | None, str, str | None, str | None]]:
    job = api.store.get_job(job_id)
    return [
        (e.from_state.value if e.from_state else None, e.to_state.value, e.task.value if e.task else None, e.reason)
        for e in job.events or ()
    ]


# ------------------------------------------------------------------------------------------------ spec


async def test_the_spec_holds_the_ir_parameters_environment_and_globals_with_the_job_token(api: Api) -> None:
    job_id, headers = await _job(api, parameters={"threshold": 0.7}, environment={"namespace": "scoring"})
    response = await api.client.get(f"{JOBS}/{job_id}/spec", headers=headers)
    assert response.status_code == 200, response.text
    spec = response.json()
    stored = api.store.get_version("tiny", 1)
    assert spec["jobId"] == job_id
    assert (spec["pipeline"], spec["version"], spec["digest"]) == ("tiny", 1, stored.digest)
    assert spec["parameters"] == {"threshold": 0.7}
    assert spec["environment"] == {"namespace": "scoring"}
    assert spec["globals"]["jobId"] == job_id
    assert spec["globals"]["namespace"] == "scoring"
    assert spec["globals"]["scheduler"] == {
        "url": api.settings.public_url,
        "token": api.service.job_token(uuid.UUID(job_id)),
    }
    assert ir.load_bundle_files(spec["files"]).digest() == stored.digest


async def test_rendering_the_spec_gives_the_values_the_server_renders_for_the_same_job(api: Api) -> None:
    job_id, headers = await _job(api, parameters={"threshold": 0.7, "limit": 3}, environment={"namespace": "scoring"})
    spec = (await api.client.get(f"{JOBS}/{job_id}/spec", headers=headers)).json()
    job = api.store.get_job(job_id)
    expected = render_values(
        api.store.get_version("tiny", 1).ir,
        job.parameters,
        api.settings,
        job.id,
        api.service.job_token(job.id),
        job.environment,
    )
    assert ir.to_yaml(render_spec(spec)) == ir.to_yaml(expected)


async def test_a_write_api_token_may_read_the_spec_too(api: Api) -> None:
    job_id, _ = await _job(api)
    response = await api.client.get(f"{JOBS}/{job_id}/spec", headers=WRITE)
    assert response.status_code == 200, response.text


@pytest.mark.parametrize("path", ["spec", "status"])
async def test_another_jobs_token_a_missing_token_and_a_read_token_are_refused(api: Api, path: str) -> None:
    job_id, _ = await _job(api)
    _, other = await _job(api)
    assert_error(await api.client.get(f"{JOBS}/{job_id}/{path}", headers=other), 401, "invalid_job_token")
    assert_error(await api.client.get(f"{JOBS}/{job_id}/{path}"), 401)
    assert_error(await api.client.get(f"{JOBS}/{job_id}/{path}", headers=READ), 403, "insufficient_scope")


async def test_a_phase_report_with_another_jobs_token_is_refused_and_changes_nothing(api: Api) -> None:
    job_id, _ = await _job(api)
    _, other = await _job(api)
    response = await api.client.post(
        f"{JOBS}/{job_id}/phase", json={"task": "install", "status": "started"}, headers=other
    )
    assert_error(response, 401, "invalid_job_token")
    assert api.store.get_job(job_id).state is JobState.PENDING


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [("GET", "spec", None), ("GET", "status", None), ("POST", "phase", {"task": "install", "status": "started"})],
)
async def test_an_unknown_job_is_404_and_an_id_that_is_no_uuid_is_422(
    api: Api, method: str, path: str, body: dict[str, Any] | None
) -> None:
    unknown = uuid.uuid4()
    response = await api.client.request(method, f"{JOBS}/{unknown}/{path}", json=body, headers=WRITE)
    assert_error(response, 404, "job_not_found")
    response = await api.client.request(method, f"{JOBS}/not-a-job/{path}", json=body, headers=WRITE)
    assert_error(response, 422, "invalid_request")


# ------------------------------------------------------------------------------------------------ phase


async def test_install_started_then_succeeded_moves_the_job_to_installing_then_running(api: Api) -> None:
    job_id, headers = await _job(api)
    job = await _phase(api, job_id, headers, task="install", status="started")
    assert (job["state"], job["task"], job["reason"]) == ("INSTALLING", "install", "Installing")
    assert job["started_at"] is not None
    job = await _phase(
        api, job_id, headers, task="install", status="succeeded", message="release modelops-x revision 1 deployed"
    )
    assert (job["state"], job["task"], job["reason"]) == ("RUNNING", "wait", "Ready")
    assert job["message"] == "release modelops-x revision 1 deployed"
    assert _events(api, job_id)[1:] == [
        ("PENDING", "INSTALLING", "install", "Installing"),
        ("INSTALLING", "RUNNING", "wait", "Ready"),
    ]


async def test_a_report_the_state_has_moved_past_is_an_event_only(api: Api) -> None:
    job_id, headers = await _job(api)
    await _phase(api, job_id, headers, task="install", status="started")
    job = await _phase(api, job_id, headers, task="install", status="started")  # a Tekton retry of install
    assert (job["state"], job["task"]) == ("INSTALLING", "install")
    job = await _phase(api, job_id, headers, task="wait", status="started")
    assert (job["state"], job["task"]) == ("INSTALLING", "install")
    events = api.store.get_job(job_id).events or ()
    assert [(e.from_state, e.to_state, e.message) for e in events[-2:]] == [
        (JobState.INSTALLING, JobState.INSTALLING, "task install started"),
        (JobState.INSTALLING, JobState.INSTALLING, "task wait started"),
    ]


async def test_a_failure_records_its_reason_and_message_without_a_state_change(api: Api) -> None:
    job_id, headers = await _job(api)
    await _phase(api, job_id, headers, task="install", status="started")
    job = await _phase(
        api,
        job_id,
        headers,
        task="install",
        status="failed",
        reason="InstallFailed",
        message="helm upgrade --install failed: Kubernetes cluster unreachable",
    )
    assert (job["state"], job["reason"]) == ("INSTALLING", "InstallFailed")
    assert job["message"] == "helm upgrade --install failed: Kubernetes cluster unreachable"
    assert _events(api, job_id)[-1] == ("INSTALLING", "INSTALLING", "install", "InstallFailed")


async def test_uninstall_started_sets_the_task_to_uninstall(api: Api) -> None:
    job_id, headers = await _job(api)
    await _phase(api, job_id, headers, task="install", status="started")
    job = await _phase(api, job_id, headers, task="uninstall", status="started")
    assert (job["state"], job["task"]) == ("INSTALLING", "uninstall")
    assert _events(api, job_id)[-1] == ("INSTALLING", "INSTALLING", "uninstall", None)


async def test_reports_about_a_finished_job_are_accepted_and_change_nothing(api: Api) -> None:
    job_id, headers = await _job(api)
    api.store.transition(job_id, JobState.FAILED, reason="InternalError", message="gone")
    before = _events(api, job_id)
    for body in (
        {"task": "install", "status": "started"},
        {"task": "uninstall", "status": "started"},
        {"task": "wait", "status": "failed", "reason": "ScoringFailed", "message": "late"},
    ):
        job = await _phase(api, job_id, headers, **body)
        assert (job["state"], job["task"], job["reason"], job["message"]) == ("FAILED", None, "InternalError", "gone")
    assert _events(api, job_id) == before


async def test_a_cancelling_job_ignores_install_and_wait_reports_but_records_its_uninstall(api: Api) -> None:
    job_id, headers = await _job(api)
    await _phase(api, job_id, headers, task="install", status="started")
    assert (await api.client.post(f"{JOBS}/{job_id}/cancel", headers=WRITE)).status_code == 202
    before = _events(api, job_id)
    job = await _phase(api, job_id, headers, task="install", status="succeeded")
    assert (job["state"], job["task"]) == ("CANCELLING", "install")
    assert _events(api, job_id) == before
    job = await _phase(api, job_id, headers, task="uninstall", status="started")
    assert (job["state"], job["task"]) == ("CANCELLING", "uninstall")


@pytest.mark.parametrize(
    "body",
    [
        {"task": "install", "status": "done"},
        {"task": "deploy", "status": "started"},
        {"task": "install", "status": "failed"},
        {"task": "install", "status": "failed", "reason": "NotAReason"},
        {"task": "install", "status": "started", "reason": "InstallFailed"},
        {"task": "install", "status": "started", "extra": 1},
        {"status": "started"},
    ],
)
async def test_a_malformed_phase_report_is_422_and_changes_nothing(api: Api, body: dict[str, Any]) -> None:
    job_id, headers = await _job(api)
    response = await api.client.post(f"{JOBS}/{job_id}/phase", json=body, headers=headers)
    assert_error(response, 422, "invalid_request")
    assert api.store.get_job(job_id).state is JobState.PENDING
    assert len(_events(api, job_id)) == 1


# ------------------------------------------------------------------------------------------------ status


async def test_the_status_shows_state_task_reason_and_the_flows_completion(api: Api) -> None:
    job_id, headers = await _job(api)
    response = await api.client.get(f"{JOBS}/{job_id}/status", headers=headers)
    assert response.json() == {
        "state": "PENDING",
        "task": None,
        "completion": None,
        "completionMessage": None,
        "completionReason": None,
        "reason": None,
    }
    await _phase(api, job_id, headers, task="install", status="started")
    await _phase(api, job_id, headers, task="install", status="succeeded")
    complete = await api.client.post(
        f"{JOBS}/{job_id}/complete", json={"succeeded": False, "message": "sink unreachable"}, headers=headers
    )
    assert complete.status_code == 202, complete.text
    response = await api.client.get(f"{JOBS}/{job_id}/status", headers=headers)
    assert response.json() == {
        "state": "RUNNING",
        "task": Task.WAIT.value,
        "completion": "failed",
        "completionMessage": "sink unreachable",
        "completionReason": "ScoringFailed",
        "reason": "Ready",
    }


async def test_the_openapi_document_declares_the_task_endpoints_with_examples_and_errors(api: Api) -> None:
    document = (await api.client.get("/openapi.json")).json()
    paths = document["paths"]
    for path, method in (("spec", "get"), ("phase", "post"), ("status", "get")):
        operation = paths[f"{JOBS}/{{job_id}}/{path}"][method]
        assert {"401", "403", "404", "422"} <= set(operation["responses"])
    schemas = document["components"]["schemas"]
    for name in ("SpecOut", "PhaseIn", "StatusOut"):
        assert schemas[name]["examples"], name


async def test_a_flow_failing_for_a_missing_input_makes_the_completion_reason_invalid_input(api: Api) -> None:
    job_id, headers = await _job(api)
    await _phase(api, job_id, headers, task="install", status="started")
    await _phase(api, job_id, headers, task="install", status="succeeded")
    no_flow = {"succeeded": False, "message": "gone", "reason": "InvalidInput"}
    assert_error(await api.client.post(f"{JOBS}/{job_id}/complete", json=no_flow, headers=headers), 422)
    succeeded = {"succeeded": True, "flow": "tiny-batch", "reason": "InvalidInput"}
    assert_error(await api.client.post(f"{JOBS}/{job_id}/complete", json=succeeded, headers=headers), 422)
    report = {"succeeded": False, "flow": "tiny-batch", "message": "in.csv does not exist", "reason": "InvalidInput"}
    complete = await api.client.post(f"{JOBS}/{job_id}/complete", json=report, headers=headers)
    assert complete.status_code == 202, complete.text
    status = (await api.client.get(f"{JOBS}/{job_id}/status", headers=headers)).json()
    assert (status["completion"], status["completionReason"]) == ("failed", "InvalidInput")
    job = await api.service.get_job(uuid.UUID(job_id))
    assert job.flow_completions == {
        "tiny-batch": {"succeeded": False, "message": "in.csv does not exist", "reason": "InvalidInput"}
    }
