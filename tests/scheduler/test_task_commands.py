"""`modelops task install|wait|uninstall` end to end: a real scheduler on a real port (uvicorn in a thread, SQLite)
whose backend leaves jobs where the task commands put them, the real helm binary, and no cluster (a kubeconfig
pointing at https://127.0.0.1:1, or a stand-in API server that holds no release)."""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from api_kit import FakeBackend
from click.testing import Result
from helm_kit import cluster_without_releases, kubeconfig
from typer.testing import CliRunner

from scheduler import taskcmd
from scheduler.cli import app
from scheduler.client import SchedulerClient
from scheduler.embedded import EmbeddedServer
from scheduler.settings import SchedulerSettings
from scheduler.store import JobStore
from scheduler.taskcmd import parse_duration, render_spec

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "modelops"
DIGITS = ROOT / "examples" / "digits"
JOBS = "/api/v1/jobs"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedServer]:
    """A scheduler whose backend moves no job (the task commands do, through /phase); `digits` deployed."""

    def factory(store: JobStore, _settings: SchedulerSettings, _secret: bytes) -> FakeBackend:
        return FakeBackend(store, drive=False)

    home = tmp_path_factory.mktemp("home")
    embedded = EmbeddedServer(SchedulerSettings(home=home), backend_factory=factory)
    embedded.start()
    try:
        with SchedulerClient(embedded.url) as client:
            client.deploy(DIGITS)
        yield embedded
    finally:
        embedded.stop(cancel_active=False)


@pytest.fixture
def job(server: EmbeddedServer) -> tuple[str, str]:
    """A new PENDING job of `digits` and its token."""
    with SchedulerClient(server.url) as client:
        created = client.create_job("digits", parameters={"scorer": "task-test"})
    from scheduler.tokens import job_token, load_secret

    assert server.settings is not None
    return str(created.id), job_token(load_secret(server.settings.home), created.id)


@pytest.fixture
def env(tmp_path: Path, server: EmbeddedServer, job: tuple[str, str]) -> dict[str, str | None]:
    """What the Tekton steps set: the job, the scheduler, the token; the real helm; an unreachable cluster."""
    job_id, token = job
    return {
        "MODELOPS_JOB_ID": job_id,
        "MODELOPS_SCHEDULER_URL": server.url,
        "MODELOPS_JOB_TOKEN": token,
        "MODELOPS_CHART": str(CHART),
        "MODELOPS_RELEASE": None,
        "MODELOPS_NAMESPACE": None,
        "PATH": f"{ROOT / '.tools' / 'bin'}:{os.environ['PATH']}",
        "HELM_CACHE_HOME": str(tmp_path / "helm-cache"),
        "HELM_CONFIG_HOME": str(tmp_path / "helm-config"),
        "HELM_DATA_HOME": str(tmp_path / "helm-data"),
        "KUBECONFIG": str(kubeconfig(tmp_path, "https://127.0.0.1:1")),
    }


def invoke(env: dict[str, str | None], *args: str) -> Result:
    return CliRunner(env=env).invoke(app, ["task", *args])


def job_of(server: EmbeddedServer, job_id: str) -> Any:
    with SchedulerClient(server.url) as client:
        return client.get_job(job_id)


def post(server: EmbeddedServer, job_id: str, token: str, path: str, body: dict[str, Any]) -> None:
    response = httpx.post(
        f"{server.url}{JOBS}/{job_id}/{path}", json=body, headers={"Authorization": f"Bearer {token}"}
    )
    assert response.status_code in (200, 202), response.text


def running(server: EmbeddedServer, job_id: str, token: str) -> None:
    """The job as install leaves it on success: RUNNING, task wait."""
    post(server, job_id, token, "phase", {"task": "install", "status": "started"})
    post(server, job_id, token, "phase", {"task": "install", "status": "succeeded"})


def no_token_in(result: Result, token: str) -> None:
    assert token not in result.stdout
    assert token not in result.stderr


# ------------------------------------------------------------------------------------------------ install


def test_a_dry_run_prints_the_manifests_of_the_job_and_reports_nothing(
    server: EmbeddedServer, job: tuple[str, str], env: dict[str, str | None]
) -> None:
    job_id, token = job
    result = invoke(env, "install", "--dry-run")
    assert result.exit_code == 0, result.stderr
    objects = [doc for doc in yaml.safe_load_all(result.stdout) if doc]
    assert objects
    assert {obj["metadata"]["labels"]["modelops.io/job-id"] for obj in objects} == {job_id}
    assert all(obj["metadata"].get("namespace", "modelops-examples") == "modelops-examples" for obj in objects)
    assert "task-test" in result.stdout  # the job's parameter reached helm
    assert f"release modelops-{job_id}" in result.stderr
    assert "in namespace modelops-examples" in result.stderr
    assert "helm template" in result.stderr and "done in" in result.stderr
    no_token_in(result, token)
    found = job_of(server, job_id)
    assert (found.state.value, len(found.events)) == ("PENDING", 1)


def test_install_on_an_unreachable_cluster_reports_install_failed_with_helms_error(
    server: EmbeddedServer, job: tuple[str, str], env: dict[str, str | None]
) -> None:
    job_id, token = job
    result = invoke(env, "install", "--timeout", "30s")
    assert result.exit_code == 1, result.stdout
    lines = result.stdout.splitlines()
    assert lines[0].split(" ", 1)[1].startswith(f"install: job {job_id}, release modelops-{job_id}, chart {CHART}")
    assert any("reported install started" in line for line in lines)
    assert any("helm upgrade --install" in line and "namespace modelops-examples" in line for line in lines)
    assert any("reported install failed (InstallFailed)" in line for line in lines)
    assert lines[-1].split(" ", 1)[1].startswith("failed in ")
    no_token_in(result, token)
    found = job_of(server, job_id)
    assert (found.state.value, found.task.value, found.reason) == ("INSTALLING", "install", "InstallFailed")
    assert "Kubernetes cluster unreachable" in found.message
    assert f"helm upgrade --install modelops-{job_id}" in found.message


def test_install_uses_the_given_release_and_namespace(
    server: EmbeddedServer, job: tuple[str, str], env: dict[str, str | None]
) -> None:
    result = invoke({**env, "MODELOPS_RELEASE": "scoring-1", "MODELOPS_NAMESPACE": "team-a"}, "install", "--dry-run")
    assert result.exit_code == 0, result.stderr
    assert "release scoring-1 in namespace team-a" in result.stderr
    objects = [doc for doc in yaml.safe_load_all(result.stdout) if doc]
    assert {obj["metadata"]["labels"]["app.kubernetes.io/instance"] for obj in objects} == {"scoring-1"}


def test_a_wrong_token_stops_install_at_once_with_the_schedulers_refusal(
    server: EmbeddedServer, job: tuple[str, str], env: dict[str, str | None]
) -> None:
    job_id, _ = job
    with SchedulerClient(server.url) as client:
        other = client.create_job("digits")
    from scheduler.tokens import job_token, load_secret

    assert server.settings is not None
    result = invoke({**env, "MODELOPS_JOB_TOKEN": job_token(load_secret(server.settings.home), other.id)}, "install")
    assert result.exit_code == 1
    assert "HTTP 401: invalid_job_token" in result.stdout
    assert "retrying" not in result.stdout
    assert job_of(server, job_id).state.value == "PENDING"


def test_a_bad_timeout_is_a_usage_error(env: dict[str, str | None]) -> None:
    result = invoke(env, "install", "--timeout", "soon")
    assert result.exit_code == 2
    assert "not a duration" in result.stderr


# ------------------------------------------------------------------------------------------------ wait


def test_wait_exits_0_once_the_flows_report_success(
    server: EmbeddedServer, job: tuple[str, str], env: dict[str, str | None]
) -> None:
    job_id, token = job
    running(server, job_id, token)
    post(server, job_id, token, "complete", {"succeeded": True, "message": "1797 rows"})
    result = invoke(env, "wait", "--interval", "0.05")
    assert result.exit_code == 0, result.stdout
    assert "the scoring flows reported success: 1797 rows" in result.stdout
    assert "reported wait succeeded" in result.stdout
    no_token_in(result, token)


def test_wait_polls_until_the_flows_report_failure_and_exits_1_with_scoring_failed(
    server: EmbeddedServer, job: tuple[str, str], env: dict[str, str | None]
) -> None:
    job_id, token = job
    running(server, job_id, token)
    outcome: list[Result] = []
    waiting = threading.Thread(target=lambda: outcome.append(invoke(env, "wait", "--interval", "0.05")))
    waiting.start()
    # the wait task has started (its report is recorded) before the flows report
    while not any(e.message == "task wait started" for e in job_of(server, job_id).events):
        assert waiting.is_alive()
        time.sleep(0.02)
    post(server, job_id, token, "complete", {"succeeded": False, "message": "sink unreachable"})
    waiting.join(60)
    result = outcome[0]
    assert result.exit_code == 1, result.stdout
    assert "the scoring flows reported failure: sink unreachable" in result.stdout
    found = job_of(server, job_id)
    assert (found.state.value, found.reason, found.message) == ("RUNNING", "ScoringFailed", "sink unreachable")


def test_wait_reports_invalid_input_when_a_flow_says_its_input_is_missing(
    server: EmbeddedServer, job: tuple[str, str], env: dict[str, str | None]
) -> None:
    job_id, token = job
    running(server, job_id, token)
    outcome: list[Result] = []
    waiting = threading.Thread(target=lambda: outcome.append(invoke(env, "wait", "--interval", "0.05")))
    waiting.start()
    while not any(e.message == "task wait started" for e in job_of(server, job_id).events):
        assert waiting.is_alive()
        time.sleep(0.02)
    report = {"succeeded": False, "flow": "digits-batch", "message": "in.csv is gone", "reason": "InvalidInput"}
    post(server, job_id, token, "complete", report)
    waiting.join(60)
    assert outcome[0].exit_code == 1, outcome[0].stdout
    found = job_of(server, job_id)
    assert (found.state.value, found.reason, found.message) == ("RUNNING", "InvalidInput", "in.csv is gone")


def test_wait_exits_1_when_the_job_is_cancelled(
    server: EmbeddedServer, job: tuple[str, str], env: dict[str, str | None]
) -> None:
    job_id, token = job
    running(server, job_id, token)
    with SchedulerClient(server.url) as client:
        client.cancel_job(job_id)
    result = invoke(env, "wait", "--interval", "0.05")
    assert result.exit_code == 1
    assert "the job is CANCELLING: the scoring will not complete, nothing more to wait for" in result.stdout


def test_wait_for_an_unknown_job_fails_at_once(env: dict[str, str | None]) -> None:
    result = invoke({**env, "MODELOPS_JOB_ID": str(uuid.uuid4())}, "wait", "--interval", "0.05")
    assert result.exit_code == 1
    assert "HTTP 404: job_not_found" in result.stdout
    assert "retrying" not in result.stdout


def test_wait_retries_a_scheduler_that_does_not_answer_and_says_so(
    env: dict[str, str | None], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(taskcmd, "RETRY_DELAYS", (0.01, 0.02))
    result = invoke({**env, "MODELOPS_SCHEDULER_URL": "http://127.0.0.1:1"}, "wait")
    assert result.exit_code == 1
    assert "no answer from the scheduler at http://127.0.0.1:1" in result.stdout
    assert "could not report wait started" in result.stdout
    assert "gave up after 3 attempts" in result.stdout


# ------------------------------------------------------------------------------------------------ uninstall


@pytest.fixture
def empty_cluster(tmp_path: Path) -> Iterator[Path]:
    folder = tmp_path / "empty"
    folder.mkdir()
    with cluster_without_releases() as url:
        yield kubeconfig(folder, url)


def test_uninstalling_a_release_that_is_not_there_succeeds_and_says_so(
    server: EmbeddedServer, job: tuple[str, str], env: dict[str, str | None], empty_cluster: Path
) -> None:
    job_id, token = job
    running(server, job_id, token)
    result = invoke({**env, "KUBECONFIG": str(empty_cluster)}, "uninstall")
    assert result.exit_code == 0, result.stdout
    expected = f"release modelops-{job_id} not found in namespace modelops-examples: nothing to uninstall"
    assert expected in result.stdout
    assert "reported uninstall succeeded" in result.stdout
    no_token_in(result, token)
    found = job_of(server, job_id)
    assert (found.state.value, found.task.value) == ("RUNNING", "uninstall")
    assert found.events[-1].message.startswith("task uninstall succeeded: release modelops-")


def test_uninstall_on_an_unreachable_cluster_reports_uninstall_failed(
    server: EmbeddedServer, job: tuple[str, str], env: dict[str, str | None]
) -> None:
    job_id, token = job
    running(server, job_id, token)
    result = invoke({**env, "MODELOPS_NAMESPACE": "team-a"}, "uninstall", "--timeout", "30s")
    assert result.exit_code == 1
    assert "helm uninstall modelops-" in result.stdout and "namespace team-a" in result.stdout
    found = job_of(server, job_id)
    assert (found.task.value, found.reason) == ("uninstall", "UninstallFailed")
    assert "Kubernetes cluster unreachable" in found.message


# ------------------------------------------------------------------------------------------------ pieces


def test_rendering_a_spec_whose_ir_does_not_match_its_digest_is_refused(
    server: EmbeddedServer, job: tuple[str, str]
) -> None:
    job_id, token = job
    spec = httpx.get(f"{server.url}{JOBS}/{job_id}/spec", headers={"Authorization": f"Bearer {token}"}).json()
    assert render_spec(spec).global_.job_id == job_id
    from ir import IRValidationError

    with pytest.raises(IRValidationError, match="does not match its digest"):
        render_spec({**spec, "digest": "0" * 64})


@pytest.mark.parametrize(
    ("text", "seconds"), [("10m", 600), ("90s", 90), ("1h30m", 5400), ("10m0s", 600), ("600", 600), ("1.5m", 90)]
)
def test_durations_are_read_as_helm_and_tekton_write_them(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "soon", "10x", "-5", "0s", "m10"])
def test_anything_else_is_not_a_duration(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)
