"""tekton/*.yaml against the strict Tekton v1 schemas (../shared/schemas/tekton.dev).

The API server would prune a misspelt field silently; these schemas reject it. Embedded specs, which Tekton's own
schema leaves open, are validated by `tekton_kit.tekton_errors` against the Task/Pipeline schemas.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
from tekton_kit import (
    PIPELINE_NAME,
    ROOT,
    RUNNER_NAMESPACES,
    RUNNER_SERVICE_ACCOUNT,
    SCHEMAS,
    TASK_NAMES,
    Manifest,
    all_objects,
    task,
    tekton_errors,
)

TEKTON_OBJECTS = [(path, doc) for path, doc in all_objects() if str(doc.get("apiVersion")).startswith("tekton.dev/")]


def _id(item: tuple[Path, Manifest]) -> str:
    path, doc = item
    return f"{path.relative_to(ROOT)}:{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"


def test_tekton_folder_holds_the_pipeline_its_three_tasks_and_the_runner_rbac() -> None:
    found = sorted((doc.get("kind"), doc.get("metadata", {}).get("name")) for _, doc in all_objects())
    assert found == sorted(
        [("Pipeline", PIPELINE_NAME)]
        + [("Task", name) for name in TASK_NAMES.values()]
        + [("ServiceAccount", RUNNER_SERVICE_ACCOUNT)]
        + [(kind, RUNNER_SERVICE_ACCOUNT) for kind in ("Role", "RoleBinding") for _ in RUNNER_NAMESPACES]
    )


@pytest.mark.parametrize("item", TEKTON_OBJECTS, ids=[_id(item) for item in TEKTON_OBJECTS])
def test_every_tekton_object_is_valid_against_the_strict_v1_schema(item: tuple[Path, Manifest]) -> None:
    _, doc = item
    assert tekton_errors(doc) == []


def test_the_strict_schema_rejects_a_misspelt_step_field() -> None:
    broken = copy.deepcopy(task("install"))
    broken["spec"]["steps"][0]["scirpt"] = broken["spec"]["steps"][0].pop("script")
    errors = tekton_errors(broken)
    assert any("scirpt" in error for error in errors), errors


def test_an_embedded_task_spec_is_validated_against_the_task_schema() -> None:
    install = task("install")
    spec = copy.deepcopy(install["spec"])
    spec["steps"][0]["computeResource"] = spec["steps"][0].pop("computeResources")
    inline = {
        "apiVersion": "tekton.dev/v1",
        "kind": "Pipeline",
        "metadata": {"name": "inline"},
        "spec": {"tasks": [{"name": "install", "taskSpec": spec}]},
    }
    errors = tekton_errors(inline)
    assert any("Pipeline.spec.tasks.0.taskSpec" in e and "computeResource" in e for e in errors), errors


def test_an_embedded_pipeline_spec_in_a_pipelinerun_is_validated_down_to_its_task_specs() -> None:
    spec = copy.deepcopy(task("wait")["spec"])
    spec["stepz"] = spec.pop("steps")
    run = {
        "apiVersion": "tekton.dev/v1",
        "kind": "PipelineRun",
        "metadata": {"generateName": "modelops-"},
        "spec": {"pipelineSpec": {"tasks": [{"name": "wait", "taskSpec": spec}]}},
    }
    errors = tekton_errors(run)
    assert any("pipelineSpec.tasks.0.taskSpec" in e and "stepz" in e for e in errors), errors


def test_the_copy_of_the_schemas_equals_the_shared_folder_where_it_exists() -> None:
    shared = ROOT.parent / "shared" / "schemas"
    if not shared.is_dir():
        return  # a checkout away from the workplace: the copy is all there is (tests/schemas/README.md)
    upstream = {p.relative_to(shared).as_posix(): p.read_bytes() for p in shared.rglob("*.json")}
    ours = {p.relative_to(SCHEMAS).as_posix(): p.read_bytes() for p in SCHEMAS.rglob("*.json")}
    assert ours == upstream
    assert (SCHEMAS / "UPSTREAM-README.md").read_bytes() == (shared / "README.md").read_bytes()
