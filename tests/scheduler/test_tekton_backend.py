"""The Tekton backend against the fake cluster (fake_k8s.py) and the real store, on SQLite and PostgreSQL.

Each test replays what the Tekton controller writes for one story (success, a failed install, a cancel during
wait, a tasks timeout, a missing parameter, a run deleted behind our back, a compacted watch history, a
scheduler restart) and checks what the store says after the reconciler has applied each step:
`backend.wait_applied(rv)` waits for the event with that resourceVersion, so no test depends on timing.
"""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
from fake_k8s import FakeKube
from lifecycle_kit import SECRET, add_pipeline, settings_for, wait_until

from scheduler.app import StartupRefused, default_backend
from scheduler.backends.tekton import (
    CANCEL_STATUS,
    JOB_LABEL,
    PIPELINE_RUN_FAILED,
    RUN_DELETED,
    TektonBackend,
    token_secret_name,
)
from scheduler.k8s import K8sError
from scheduler.lifecycle import INSTALL_FAILED
from scheduler.service import SchedulerService
from scheduler.settings import SchedulerSettings
from scheduler.states import JobState, Task
from scheduler.store import Job, JobStore, PipelineVersion
from scheduler.tokens import job_token, job_token_hash

SCHEMAS = Path(__file__).resolve().parents[1] / "schemas"  # a copy of ../shared/schemas (tests/schemas/README.md)
NS = "modelops"


@pytest.fixture
def settings(tmp_path: Path) -> SchedulerSettings:
    return settings_for(
        tmp_path, backend="tekton", public_url="http://modelops-scheduler.modelops.svc:8787", poll_interval_seconds=0.02
    )


@pytest.fixture
def kube() -> FakeKube:
    return FakeKube()


@pytest.fixture
def version(store: JobStore) -> PipelineVersion:
    return add_pipeline(store, wait="2h")


@pytest.fixture
async def backend(store: JobStore, settings: SchedulerSettings, kube: FakeKube) -> AsyncIterator[TektonBackend]:
    backend = TektonBackend(store, settings, SECRET, kube=kube)
    await backend.recover()
    yield backend
    await backend.close()


def new_job(store: JobStore, version: PipelineVersion, **environment: Any) -> Job:
    job_id = uuid.uuid4()
    job, _ = store.create_job(
        version,
        parameters={},
        environment=environment,
        backend="tekton",
        token_hash=job_token_hash(SECRET, job_id),
        job_id=job_id,
    )
    return job


async def started(backend: TektonBackend, store: JobStore, version: PipelineVersion, kube: FakeKube) -> tuple[Job, str]:
    """A job whose PipelineRun was created and started by the controller; (job, run name)."""
    job = await asyncio.to_thread(new_job, store, version)
    await backend.start(job.id)
    ref = (await job_of(store, job.id)).backend_ref
    assert ref is not None
    name = ref["pipelinerun"]
    kube.start_run(name)
    await synced(backend, kube)
    return job, name


async def synced(backend: TektonBackend, kube: FakeKube) -> None:
    """Wait until the reconciler has applied every PipelineRun event so far."""
    await asyncio.wait_for(backend.wait_applied(kube.last_event_version), 30)


async def job_of(store: JobStore, job_id: uuid.UUID) -> Job:
    return await asyncio.to_thread(store.get_job, job_id)


def params_of(run: dict[str, Any]) -> dict[str, str]:
    return {p["name"]: p["value"] for p in run["spec"]["params"]}


# ---------------------------------------------------------------------------------------------------------
# What start creates


async def test_start_creates_a_labelled_pipelinerun_with_the_contract_params_and_a_token_secret_it_owns(
    backend: TektonBackend, store: JobStore, version: PipelineVersion, kube: FakeKube
) -> None:
    job = await asyncio.to_thread(new_job, store, version, namespace="scoring-team")
    await backend.start(job.id)

    run = kube.only_run()
    assert run["metadata"]["generateName"] == "modelops-"
    assert run["metadata"]["labels"][JOB_LABEL] == str(job.id)
    assert "status" not in run["spec"], "the run was left pending"
    assert run["spec"]["pipelineRef"] == {"name": "modelops-scoring"}
    assert run["spec"]["taskRunTemplate"] == {"serviceAccountName": "modelops-runner"}
    secret_name = token_secret_name(job.id)
    assert params_of(run) == {
        "job-id": str(job.id),
        "scheduler-url": "http://modelops-scheduler.modelops.svc:8787",
        "release-name": f"modelops-{job.id}",
        "namespace": "scoring-team",
        "chart": "/opt/modelops/charts/modelops",
        "token-secret": secret_name,
    }
    # install 5m + wait 2h + 300s margin; uninstall 5m + 300s margin; pipeline = both
    assert run["spec"]["timeouts"] == {"tasks": "7800s", "finally": "600s", "pipeline": "8400s"}

    secret = kube.secrets[(NS, secret_name)]
    assert secret["stringData"] == {"token": job_token(SECRET, job.id)}
    assert secret["metadata"]["ownerReferences"] == [
        {
            "apiVersion": "tekton.dev/v1",
            "kind": "PipelineRun",
            "name": run["metadata"]["name"],
            "uid": run["metadata"]["uid"],
        }
    ]
    stored = await job_of(store, job.id)
    assert (stored.state, stored.task) == (JobState.INSTALLING, Task.INSTALL)
    assert stored.backend_ref == {"kind": "tekton", "namespace": NS, "pipelinerun": run["metadata"]["name"]}


async def test_the_target_namespace_defaults_to_the_pipelines_environment_namespace(
    backend: TektonBackend, store: JobStore, version: PipelineVersion, kube: FakeKube
) -> None:
    job = await asyncio.to_thread(new_job, store, version)
    await backend.start(job.id)
    assert params_of(kube.only_run())["namespace"] == "default"


async def test_the_pipelinerun_body_validates_against_the_strict_tekton_v1_schema(
    backend: TektonBackend, store: JobStore, version: PipelineVersion, kube: FakeKube
) -> None:
    job = await asyncio.to_thread(new_job, store, version)
    await backend.start(job.id)
    _, body = next(args for method, args in kube.calls if method == "create_pipelinerun")
    schema = json.loads((SCHEMAS / "tekton.dev" / "pipelinerun_v1.json").read_text())
    jsonschema.validate(body, schema)
    assert body["spec"]["status"] == "PipelineRunPending", "created pending, started once its Secret exists"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**body, "spec": {**body["spec"], "timeout": "1h"}}, schema)


async def test_the_token_secret_validates_against_the_kubernetes_schema(
    backend: TektonBackend, store: JobStore, version: PipelineVersion, kube: FakeKube
) -> None:
    job = await asyncio.to_thread(new_job, store, version)
    await backend.start(job.id)
    secret = kube.secrets[(NS, token_secret_name(job.id))]
    body = {**secret, "metadata": {k: v for k, v in secret["metadata"].items() if k != "uid"}}
    kubernetes_validate.validate(body, "1.30.0", strict=True)
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate({**body, "stringdata": {"token": "x"}}, "1.30.0", strict=True)


async def test_a_secret_that_cannot_be_created_leaves_no_pipelinerun_and_no_token_behind(
    backend: TektonBackend, store: JobStore, version: PipelineVersion, kube: FakeKube
) -> None:
    job = await asyncio.to_thread(new_job, store, version)
    kube.fail_next("create_secret", K8sError("secrets is forbidden", 403))
    with pytest.raises(K8sError, match="forbidden"):
        await backend.start(job.id)
    assert kube.pipelineruns == {}
    assert kube.secrets == {}
    assert ("delete_pipelinerun", (NS, "modelops-00001")) in kube.calls


async def test_a_run_that_cannot_be_started_is_deleted_and_takes_its_secret_along(
    backend: TektonBackend, store: JobStore, version: PipelineVersion, kube: FakeKube
) -> None:
    job = await asyncio.to_thread(new_job, store, version)
    kube.fail_next("patch_pipelinerun_merge", K8sError("connection reset", None))
    with pytest.raises(K8sError):
        await backend.start(job.id)
    assert kube.pipelineruns == {}
    assert kube.secrets == {}


async def test_a_job_created_under_another_job_token_secret_fails_instead_of_running_unable_to_report(
    backend: TektonBackend, store: JobStore, version: PipelineVersion, kube: FakeKube
) -> None:
    job_id = uuid.uuid4()
    job, _ = await asyncio.to_thread(
        lambda: store.create_job(
            version,
            parameters={},
            environment={},
            backend="tekton",
            token_hash=job_token_hash(b"the-secret-of-a-previous-server-process!", job_id),
            job_id=job_id,
        )
    )
    await backend.start(job.id)
    current = await job_of(store, job.id)
    assert (current.state, current.reason) == (JobState.FAILED, "SchedulerRestarted")
    assert "MODELOPS_SCHEDULER_JOB_TOKEN_SECRET" in (current.message or "")
    assert kube.pipelineruns == {}


def test_the_tekton_backend_refuses_to_start_without_a_usable_cluster_configuration(
    store: JobStore, tmp_path: Path
) -> None:
    settings = settings_for(tmp_path, backend="tekton", kube_config="kubeconfig", kubeconfig=tmp_path / "missing")
    with pytest.raises(StartupRefused, match="cannot start the tekton backend: cannot load the Kubernetes"):
        default_backend(store, settings, SECRET)


# ---------------------------------------------------------------------------------------------------------
# The stories


async def test_a_successful_run_goes_installing_running_uninstall_succeeded(
    backend: TektonBackend, store: JobStore, version: PipelineVersion, kube: FakeKube
) -> None:
    job, name = await started(backend, store, version, kube)

    kube.start_task(name, "install")
    await synced(backend, kube)
    current = await job_of(store, job.id)
    assert (current.state, current.task) == (JobState.INSTALLING, Task.INSTALL)

    kube.finish_task(name, "install", succeeded=True)
    kube.start_task(name, "wait")
    await synced(backend, kube)
    current = await job_of(store, job.id)
    assert (current.state, current.task, current.reason) == (JobState.RUNNING, Task.WAIT, "Ready")

    await asyncio.to_thread(store.record_completion, job.id, True, "1000 rows scored")
    kube.finish_task(name, "wait", succeeded=True)
    kube.start_task(name, "uninstall")
    await synced(backend, kube)
    current = await job_of(store, job.id)
    assert (current.state, current.task) == (JobState.RUNNING, Task.UNINSTALL)

    kube.finish_task(name, "uninstall", succeeded=True)
    kube.set_run_condition(name, "True", "Succeeded", "Tasks Completed: 3 (Failed: 0, Cancelled 0), Skipped: 0")
    await synced(backend, kube)
    current = await job_of(store, job.id)
    assert (current.state, current.task, current.reason) == (JobState.SUCCEEDED, Task.UNINSTALL, "Completed")
    assert current.message == "1000 rows scored"
    assert (NS, token_secret_name(job.id)) not in kube.secrets, "the token goes when the job ends"


async def test_a_failed_install_ends_failed_with_the_reason_the_task_reported(
    backend: TektonBackend, store: JobStore, version: PipelineVersion, kube: FakeKube
) -> None:
    job, name = await started(backend, store, version, kube)
    kube.start_task(name, "install")
    await synced(backend, kube)
    await asyncio.to_thread(
        store.record_phase, job.id, Task.INSTALL, "failed", reason=INSTALL_FAILED, message="helm: timed out"
    )
    kube.finish_task(name, "install", succeeded=False)
    kube.start_task(name, "uninstall")
    await synced(backend, kube)
    current = await job_of(store, job.id)
    assert (current.state, current.task) == (JobState.INSTALLING, Task.UNINSTALL), "not final while finally runs"

    kube.finish_task(name, "uninstall", succeeded=True)
    kube.set_run_condition(name, "False", "Failed", "Tasks Completed: 2 (Failed: 1, Cancelled 0), Skipped: 1")
    await synced(backend, kube)
    current = await job_of(store, job.id)
    assert (current.state, current.reason, current.message) == (JobState.FAILED, INSTALL_FAILED, "helm: timed out")


async def test_a_failed_install_without_a_report_ends_failed_with_pipelinerunfailed_and_the_condition(
    backend: TektonBackend, store: JobStore, version: PipelineVersion, kube: FakeKube
) -> None:
    job, name = await started(backend, store, version, kube)
    kube.start_task(name, "install")
    kube.finish_task(name, "install", succeeded=False)
    kube.start_task(name, "uninstall")
    kube.finish_task(name, "uninstall", succeeded=True)
    kube.set_run_condition(name, "False", "Failed", "Tasks Completed: 2 (Failed: 1, Cancelled 0), Skipped: 1")
    await synced(backend, kube)
    current = await job_of(store, job.id)
    assert (current.state, current.task, current.reason) == (JobState.FAILED, Task.UNINSTALL, PIPELINE_RUN_FAILED)
    assert current.message == f"PipelineRun {NS}/{name} Failed: Tasks Completed: 2 (Failed: 1, Cancelled 0), Skipped: 1"


async def test_a_flow_whose_input_is_missing_ends_the_job_failed_with_invalid_input(
    backend: TektonBackend, store: JobStore, version: PipelineVersion, kube: FakeKube
) -> None:
    job, name = await started(backend, store, version, kube)
    kube.start_task(name, "install")
    kube.finish_task(name, "install", succeeded=True)
    kube.start_task(name, "wait")
    await synced(backend, kube)
    message = "flow f1: file source 'rows-in': /data/in.csv does not exist"
    await asyncio.to_thread(
        store.record_completion, job.id, False, message, flow="f1", flows=["f1"], reason="InvalidInput"
    )
    kube.finish_task(name, "wait", succeeded=False)
    kube.start_task(name, "uninstall")
    kube.finish_task(name, "uninstall", succeeded=True)
    kube.set_run_condition(name, "False", "Failed", "Tasks Completed: 3 (Failed: 1, Cancelled 0), Skipped: 0")
    await synced(backend, kube)
    current = await job_of(store, job.id)
    assert (current.state, current.reason, current.message) == (JobState.FAILED, "InvalidInput", message)


async def test_a_cancel_during_wait_patches_cancelledrunfinally_and_ends_cancelled_after_finally(
    backend: TektonBackend, store: JobStore, version: PipelineVersion, kube: FakeKube
) -> None:
    job, name = await started(backend, store, version, kube)
    kube.start_task(name, "install")
    kube.finish_task(name, "install", succeeded=True)
    kube.start_task(name, "wait")
    await synced(backend, kube)

    await asyncio.to_thread(
        store.transition, job.id, JobState.CANCELLING, reason="Cancelled", message="cancelled by alice"
    )
    await backend.cancel(job.id)
    patches = [args for method, args in kube.calls if method == "patch_pipelinerun_merge"]
    assert patches[-1] == (NS, name, {"spec": {"status": CANCEL_STATUS}})
    await synced(backend, kube)

    kube.finish_task(
        name, "wait", succeeded=False, reason="TaskRunCancelled", message=f'TaskRun "{name}-wait" was cancelled'
    )
    kube.start_task(name, "uninstall")
    await synced(backend, kube)
    current = await job_of(store, job.id)
    assert (current.state, current.task) == (JobState.CANCELLING, Task.UNINSTALL), "finally still runs"

    kube.finish_task(name, "uninstall", succeeded=True)
    kube.set_run_condition(name, "False", "Cancelled", f'PipelineRun "{name}" was cancelled')
    await synced(backend, kube)
    current = await job_of(store, job.id)
    assert (current.state, current.reason, current.message) == (JobState.CANCELLED, "Cancelled", "cancelled by alice")


async def test_cancelling_a_job_whose_run_is_gone_ends_it_cancelled(
    backend: TektonBackend, store: JobStore, version: PipelineVersion, kube: FakeKube
) -> None:
    job, name = await started(backend, store, version, kube)
    await backend.close()  # nobody watches: the deletion goes unseen
    kube.delete_pipelinerun(NS, name)
    await asyncio.to_thread(store.transition, job.id, JobState.CANCELLING, reason="Cancelled")
    await backend.cancel(job.id)
    current = await job_of(store, job.id)
    assert (current.state, current.reason) == (JobState.CANCELLED, "Cancelled")
    assert "no longer exists" in (current.message or "")


async def test_a_tasks_timeout_keeps_the_job_running_while_finally_runs_then_fails_it(
    backend: TektonBackend, store: JobStore, version: PipelineVersion, kube: FakeKube
) -> None:
    job, name = await started(backend, store, version, kube)
    kube.start_task(name, "install")
    kube.finish_task(name, "install", succeeded=True)
    kube.start_task(name, "wait")
    kube.finish_task(
        name, "wait", succeeded=False, reason="TaskRunTimeout", message='TaskRun "x" failed to finish within "2h5m0s"'
    )
    kube.set_run_condition(
        name, "Unknown", "StoppedRunningFinally", "Tasks Completed: 2 (Failed: 1, Cancelled 0), Skipped: 0"
    )
    kube.start_task(name, "uninstall")
    await synced(backend, kube)
    current = await job_of(store, job.id)
    assert (current.state, current.task) == (JobState.RUNNING, Task.UNINSTALL)

    kube.finish_task(name, "uninstall", succeeded=True)
    kube.set_run_condition(
        name, "False", "PipelineRunTimeout", f'PipelineRun "{name}" failed to finish within "2h10m0s"'
    )
    await synced(backend, kube)
    current = await job_of(store, job.id)
    assert (current.state, current.reason) == (JobState.FAILED, PIPELINE_RUN_FAILED)
    assert "failed to finish within" in (current.message or "")


async def test_parameter_missing_fails_the_job_at_once_without_taskruns(
    backend: TektonBackend, store: JobStore, version: PipelineVersion, kube: FakeKube
) -> None:
    job = await asyncio.to_thread(new_job, store, version)
    await backend.start(job.id)
    name = kube.only_run()["metadata"]["name"]
    kube.set_run_condition(
        name,
        "False",
        "ParameterMissing",
        f"PipelineRun {NS}/{name} is missing some parameters required by Pipeline modelops-scoring: [chart]",
    )
    await synced(backend, kube)
    current = await job_of(store, job.id)
    assert (current.state, current.task, current.reason) == (JobState.FAILED, Task.INSTALL, PIPELINE_RUN_FAILED)
    assert "ParameterMissing" in (current.message or "")


async def test_a_pipelinerun_deleted_behind_our_back_fails_the_job_with_rundeleted(
    backend: TektonBackend, store: JobStore, version: PipelineVersion, kube: FakeKube
) -> None:
    job, name = await started(backend, store, version, kube)
    kube.start_task(name, "install")
    await synced(backend, kube)
    kube.delete_pipelinerun(NS, name)
    await synced(backend, kube)
    current = await job_of(store, job.id)
    assert (current.state, current.reason) == (JobState.FAILED, RUN_DELETED)
    assert f"modelops-{job.id}" in (current.message or "")


async def test_a_watch_410_gone_relists_and_sees_what_the_expired_history_held(
    backend: TektonBackend, store: JobStore, version: PipelineVersion, kube: FakeKube
) -> None:
    first, first_name = await started(backend, store, version, kube)
    second, second_name = await started(backend, store, version, kube)

    kube.expire_history()  # the open watch answers 410 Gone: nothing from here on comes through it
    kube.start_task(second_name, "install")
    kube.finish_task(second_name, "install", succeeded=True)
    kube.start_task(second_name, "wait")
    kube.delete_pipelinerun(NS, first_name)
    listed_at = str(kube.resource_version)
    await asyncio.wait_for(backend.wait_applied(listed_at), 30)

    gone = await job_of(store, first.id)
    assert (gone.state, gone.reason) == (JobState.FAILED, RUN_DELETED)
    moved = await job_of(store, second.id)
    assert (moved.state, moved.task) == (JobState.RUNNING, Task.WAIT)

    kube.start_task(second_name, "uninstall")  # and the watch goes on from the new list
    await synced(backend, kube)
    assert (await job_of(store, second.id)).task is Task.UNINSTALL


async def test_a_restarted_scheduler_reattaches_to_live_runs_and_ends_finished_ones(
    store: JobStore, settings: SchedulerSettings, version: PipelineVersion, kube: FakeKube
) -> None:
    before = TektonBackend(store, settings, SECRET, kube=kube)
    await before.recover()
    live, live_name = await started(before, store, version, kube)
    done, done_name = await started(before, store, version, kube)
    await before.close()

    # While the scheduler is down: one run moves on, the other finishes.
    kube.start_task(live_name, "install")
    kube.finish_task(live_name, "install", succeeded=True)
    kube.start_task(live_name, "wait")
    for task in ("install", "wait", "uninstall"):
        kube.start_task(done_name, task)
        kube.finish_task(done_name, task, succeeded=True)
    kube.set_run_condition(done_name, "True", "Succeeded", "Tasks Completed: 3 (Failed: 0, Cancelled 0), Skipped: 0")
    pending = await asyncio.to_thread(new_job, store, version)  # created while no backend ran

    after = TektonBackend(store, settings, SECRET, kube=kube)
    await after.recover()
    try:
        current = await job_of(store, live.id)
        assert (current.state, current.task) == (JobState.RUNNING, Task.WAIT)
        finished = await job_of(store, done.id)
        assert (finished.state, finished.task, finished.reason) == (JobState.SUCCEEDED, Task.UNINSTALL, "Completed")
        started_now = await job_of(store, pending.id)
        assert started_now.state is JobState.INSTALLING
        assert started_now.backend_ref is not None

        # and it keeps watching from where its list left off
        kube.finish_task(live_name, "wait", succeeded=True)
        kube.start_task(live_name, "uninstall")
        await asyncio.wait_for(after.wait_applied(kube.last_event_version), 30)
        assert (await job_of(store, live.id)).task is Task.UNINSTALL
    finally:
        await after.close()


async def test_a_phase_report_ahead_of_the_reconciler_is_not_undone(
    backend: TektonBackend, store: JobStore, version: PipelineVersion, kube: FakeKube
) -> None:
    job, name = await started(backend, store, version, kube)
    await asyncio.to_thread(store.record_phase, job.id, Task.INSTALL, "succeeded")
    await asyncio.to_thread(store.record_phase, job.id, Task.UNINSTALL, "started")
    kube.start_task(name, "install")  # a late view of the cluster: install only
    await synced(backend, kube)
    current = await job_of(store, job.id)
    assert (current.state, current.task) == (JobState.RUNNING, Task.UNINSTALL)


# ---------------------------------------------------------------------------------------------------------
# Logs


async def collect(lines: AsyncIterator[str]) -> list[str]:
    return [line async for line in lines]


async def test_logs_come_from_each_tasks_step_containers_in_order(
    backend: TektonBackend, store: JobStore, version: PipelineVersion, kube: FakeKube
) -> None:
    job, name = await started(backend, store, version, kube)
    kube.start_task(name, "install", steps=("render", "helm"))
    kube.log(name, "install", "rendering values", step="render")
    kube.log(name, "install", "helm upgrade --install", "deployed", step="helm")
    kube.finish_task(name, "install", succeeded=True)
    kube.start_task(name, "wait")
    kube.log(name, "wait", "waiting for completion")

    assert await collect(backend.logs(job.id, Task.INSTALL, False)) == [
        "rendering values",
        "helm upgrade --install",
        "deployed",
    ]
    assert await collect(backend.logs(job.id, None, False)) == [
        "rendering values",
        "helm upgrade --install",
        "deployed",
        "waiting for completion",
    ]
    assert await collect(backend.logs(job.id, Task.UNINSTALL, False)) == []


async def test_following_logs_waits_for_the_task_and_ends_with_it(
    backend: TektonBackend, store: JobStore, version: PipelineVersion, kube: FakeKube
) -> None:
    job, name = await started(backend, store, version, kube)
    follower = asyncio.create_task(collect(backend.logs(job.id, Task.INSTALL, True)))
    kube.start_task(name, "install")
    kube.log(name, "install", "first")
    kube.log(name, "install", "second")
    kube.finish_task(name, "install", succeeded=True)
    assert await asyncio.wait_for(follower, 30) == ["first", "second"]


def component_pod(kube: FakeKube, namespace: str, job: Job, label: str, pod: str, container: str) -> None:
    """A pod of the job's Helm release, labelled as charts/modelops labels it."""
    labels = {"modelops.io/job-id": str(job.id), "app.kubernetes.io/component": label}
    kube.add_pod(namespace, pod, labels, (container,))


async def test_the_merged_logs_interleave_the_task_steps_and_the_component_pods_by_time(
    backend: TektonBackend, store: JobStore, settings: SchedulerSettings, version: PipelineVersion, kube: FakeKube
) -> None:
    job, name = await started(backend, store, version, kube)
    target = params_of(kube.run(name))["namespace"]
    kube.start_task(name, "install")
    kube.log(name, "install", "2026-12-03T13:55:01.000Z install: helm upgrade --install")
    component_pod(kube, target, job, "scoring-service-m1", "modelops-m1-7d9f", "scoring-service")
    component_pod(kube, target, job, "scoring-flow-f1", "modelops-f1-x2x", "flow")
    component_pod(kube, target, job, "scoring-flow-f1", "other-job-f1", "flow")
    kube.pods[(target, "other-job-f1")].labels["modelops.io/job-id"] = str(uuid.uuid4())  # not this job's
    kube.pod_log(target, "modelops-m1-7d9f", "2026-12-03T13:55:02.000Z INFO scoring_services: model m1 loaded")
    kube.pod_log(target, "modelops-f1-x2x", "2026-12-03T13:55:04.000Z flow f1: 10 records read")
    kube.pod_log(target, "other-job-f1", "2026-12-03T13:55:04.500Z flow f1: another job's line")
    kube.log(name, "install", "2026-12-03T13:55:03.000Z install: ready")
    kube.finish_task(name, "install", succeeded=True)
    service = SchedulerService(store, backend, settings, SECRET)

    lines = [line async for line in await service.logs(job.id, None, False)]
    assert lines == [
        "[install] 2026-12-03T13:55:01.000Z install: helm upgrade --install\n",
        "[service/m1] 2026-12-03T13:55:02.000Z INFO scoring_services: model m1 loaded\n",
        "[install] 2026-12-03T13:55:03.000Z install: ready\n",
        "[flow/f1] 2026-12-03T13:55:04.000Z flow f1: 10 records read\n",
    ]
    only = [line async for line in await service.logs(job.id, ["m1"], False)]
    assert only == ["[service/m1] 2026-12-03T13:55:02.000Z INFO scoring_services: model m1 loaded\n"]


async def test_each_replica_of_a_service_is_named_by_its_pod(
    backend: TektonBackend, store: JobStore, version: PipelineVersion, kube: FakeKube
) -> None:
    job, name = await started(backend, store, version, kube)
    target = params_of(kube.run(name))["namespace"]
    for pod, stamp in (("m1-a", "01"), ("m1-b", "02")):
        component_pod(kube, target, job, "scoring-service-m1", pod, "scoring-service")
        kube.pod_log(target, pod, f"2026-12-03T13:55:{stamp}.000Z ready")
    lines = [item async for item in backend.component_logs(job.id, "service/m1", False)]
    assert lines == ["[m1-a] 2026-12-03T13:55:01.000Z ready", "[m1-b] 2026-12-03T13:55:02.000Z ready"]


async def test_following_a_flow_waits_for_its_pod_and_streams_its_lines_until_it_ends(
    backend: TektonBackend, store: JobStore, version: PipelineVersion, kube: FakeKube
) -> None:
    job, name = await started(backend, store, version, kube)
    target = params_of(kube.run(name))["namespace"]
    followed: list[str] = []

    async def follow() -> None:
        async for item in backend.component_logs(job.id, "flow/f1", True):
            if isinstance(item, str):
                followed.append(item)

    follower = asyncio.create_task(follow())
    await asyncio.sleep(0)  # the follower looks for a pod that is not there yet
    component_pod(kube, target, job, "scoring-flow-f1", "modelops-f1-x2x", "flow")
    kube.pod_log(target, "modelops-f1-x2x", "2026-12-03T13:55:04.000Z flow f1: started")
    await wait_until(lambda: followed == ["2026-12-03T13:55:04.000Z flow f1: started"], what="the first line")
    kube.pod_log(target, "modelops-f1-x2x", "2026-12-03T13:55:05.000Z flow f1: done")
    kube.end_pod(target, "modelops-f1-x2x")
    await asyncio.wait_for(follower, 30)
    assert followed[-1] == "2026-12-03T13:55:05.000Z flow f1: done"


async def test_a_component_whose_pods_cannot_be_read_says_why_and_the_other_logs_go_on(
    backend: TektonBackend, store: JobStore, settings: SchedulerSettings, version: PipelineVersion, kube: FakeKube
) -> None:
    job, name = await started(backend, store, version, kube)
    kube.start_task(name, "install")
    kube.log(name, "install", "2026-12-03T13:55:01.000Z install: helm upgrade --install")
    kube.fail_next("list_pods", K8sError('pods is forbidden: User "system:serviceaccount:modelops:x"', 403))
    service = SchedulerService(store, backend, settings, SECRET)
    lines = [line async for line in await service.logs(job.id, ["install", "service/m1"], False)]
    assert lines[0] == "[install] 2026-12-03T13:55:01.000Z install: helm upgrade --install\n"
    assert re.fullmatch(
        r"\[service/m1\] \S+Z \[modelops\] cannot read the logs of service/m1 in namespace \S+: pods is forbidden.*\n",
        lines[1],
    )
