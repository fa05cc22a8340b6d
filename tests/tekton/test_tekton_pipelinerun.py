"""A PipelineRun of modelops-scoring built the way the TektonBackend creates one, checked against the Pipeline.

The contract (issue 6): generateName `modelops-`, label `modelops.io/job-id`, pipelineRef `modelops-scoring`,
the six params, `taskRunTemplate.serviceAccountName: modelops-runner`, and timeouts set by the run:
`timeouts.tasks` for install + wait, `timeouts.finally` for uninstall, and `timeouts.pipeline` = their sum
(unset, Tekton bounds the whole run by its default timeout and checks tasks and finally against it).
The run must validate against the strict pipelinerun_v1 schema, pass every param the Pipeline declares and no
other, and use the ServiceAccount that tekton/rbac.yaml defines. The same holds for the body the TektonBackend
really builds (`scheduler.backends.tekton.pipelinerun_body`), checked at the end.
"""

from __future__ import annotations

import copy
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
from tekton_kit import (
    PIPELINE_NAME,
    PIPELINE_PARAMS,
    RUNNER_SERVICE_ACCOUNT,
    TEKTON,
    go_duration_seconds,
    load_documents,
    pipeline,
    tekton_errors,
)

JOB_ID = str(uuid.UUID("6f1c2d3e-4b5a-4c6d-8e7f-9a0b1c2d3e4f"))
HELM_RELEASE_NAME_MAX = 53


def pipeline_run(job_id: str, *, tasks_timeout: str = "6h0m0s", finally_timeout: str = "15m0s") -> dict[str, Any]:
    release = f"modelops-{job_id}"
    total = go_duration_seconds(tasks_timeout) + go_duration_seconds(finally_timeout)
    return {
        "apiVersion": "tekton.dev/v1",
        "kind": "PipelineRun",
        "metadata": {
            "generateName": "modelops-",
            "namespace": "modelops",
            "labels": {"modelops.io/job-id": job_id, "app.kubernetes.io/part-of": "modelops"},
        },
        "spec": {
            "pipelineRef": {"name": PIPELINE_NAME},
            "params": [
                {"name": "job-id", "value": job_id},
                {"name": "scheduler-url", "value": "http://modelops-scheduler.modelops:8787"},
                {"name": "release-name", "value": release},
                {"name": "namespace", "value": "modelops"},
                {"name": "chart", "value": "/opt/modelops/charts/modelops"},
                {"name": "token-secret", "value": f"modelops-job-token-{job_id}"},
            ],
            "timeouts": {"pipeline": f"{int(total)}s", "tasks": tasks_timeout, "finally": finally_timeout},
            "taskRunTemplate": {"serviceAccountName": RUNNER_SERVICE_ACCOUNT},
        },
    }


def test_the_pipelinerun_is_valid_against_the_strict_v1_schema() -> None:
    assert tekton_errors(pipeline_run(JOB_ID)) == []


def test_the_strict_schema_rejects_a_pipelinerun_with_a_v1beta1_field() -> None:
    run = pipeline_run(JOB_ID)
    run["spec"]["serviceAccountName"] = run["spec"].pop("taskRunTemplate")["serviceAccountName"]
    assert any("serviceAccountName" in error for error in tekton_errors(run))


def test_the_pipelinerun_passes_exactly_the_params_the_pipeline_declares() -> None:
    passed = [p["name"] for p in pipeline_run(JOB_ID)["spec"]["params"]]
    declared = [p["name"] for p in pipeline()["spec"]["params"]]
    assert len(passed) == len(set(passed))
    assert set(passed) == set(declared) == set(PIPELINE_PARAMS)


def test_the_pipelinerun_references_the_pipeline_and_runs_as_the_rbac_service_account() -> None:
    spec = pipeline_run(JOB_ID)["spec"]
    assert spec["pipelineRef"]["name"] == pipeline()["metadata"]["name"]
    (sa,) = [d for d in load_documents(TEKTON / "rbac.yaml") if d["kind"] == "ServiceAccount"]
    assert spec["taskRunTemplate"]["serviceAccountName"] == sa["metadata"]["name"]


def test_the_pipelinerun_timeouts_give_finally_its_own_budget_within_the_pipeline_timeout() -> None:
    timeouts = pipeline_run(JOB_ID)["spec"]["timeouts"]
    tasks, final, whole = (go_duration_seconds(timeouts[k]) for k in ("tasks", "finally", "pipeline"))
    assert tasks > 0 and final > 0
    assert tasks + final <= whole


def test_the_release_name_fits_helms_limit() -> None:
    release = next(p["value"] for p in pipeline_run(JOB_ID)["spec"]["params"] if p["name"] == "release-name")
    assert len(release) == 45 <= HELM_RELEASE_NAME_MAX


@pytest.mark.parametrize("bad", ["6 hours", "1d", "", "1h-5m"])
def test_a_timeout_that_is_no_go_duration_is_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="not a Go duration"):
        go_duration_seconds(bad)


def test_a_pipelinerun_without_the_pipeline_ref_name_is_invalid() -> None:
    run = copy.deepcopy(pipeline_run(JOB_ID))
    run["spec"]["pipelineRef"] = {"nmae": PIPELINE_NAME}
    assert tekton_errors(run) != []


def test_the_tekton_backends_own_pipelinerun_fits_the_pipeline_the_schema_and_the_rbac() -> None:
    tekton = pytest.importorskip("scheduler.backends.tekton", reason="the TektonBackend is not there yet")
    from scheduler.settings import SchedulerSettings
    from scheduler.states import JobState
    from scheduler.store import Job

    job_id = uuid.UUID(JOB_ID)
    job = Job(
        id=job_id,
        pipeline="digits",
        pipeline_version=1,
        pipeline_version_id=1,
        state=JobState.PENDING,
        task=None,
        parameters={},
        environment={},
        backend="tekton",
        backend_ref=None,
        idempotency_key=None,
        token_hash="-",
        created_at=datetime.now(UTC),
        started_at=None,
        finished_at=None,
        reason=None,
        message=None,
        records_read=0,
        records_written=0,
        records_failed=0,
    )
    run = tekton.pipelinerun_body(
        job,
        SchedulerSettings(),
        target_namespace="scoring",
        timeouts={"install": 600, "wait": 7200, "uninstall": 300},
        secret_name=tekton.token_secret_name(job_id),
    )
    assert tekton_errors(run) == []
    spec = run["spec"]
    assert {p["name"] for p in spec["params"]} == {p["name"] for p in pipeline()["spec"]["params"]}
    assert spec["pipelineRef"] == {"name": PIPELINE_NAME}
    assert spec["taskRunTemplate"]["serviceAccountName"] == RUNNER_SERVICE_ACCOUNT
    assert run["metadata"]["generateName"] == "modelops-"
    assert run["metadata"]["labels"]["modelops.io/job-id"] == JOB_ID
    timeouts = {k: go_duration_seconds(v) for k, v in spec["timeouts"].items()}
    assert timeouts["tasks"] >= 600 + 7200 and timeouts["finally"] >= 300
    assert timeouts["tasks"] + timeouts["finally"] <= timeouts["pipeline"]
