"""The catalog conventions of tekton/ (tektoncd/catalog `task/git-clone/0.10/git-clone.yaml`) and the contract.

Each Task: labels and annotations as the catalog writes them, a minimum Tekton version of 0.70, a description,
params with descriptions, params reaching the script only through `env` (a `$(params.x)` pasted into a script is
a shell-injection hole), `set -euo pipefail`, a non-root restricted securityContext, the job token from a Secret,
requests and limits. The Pipeline: install -> wait, finally uninstall with the same params as install, no
timeouts (the PipelineRun sets them) and no retries on wait.
"""

from __future__ import annotations

import re
import tomllib
from typing import Any

import pytest
from tekton_kit import PIPELINE_PARAMS, ROOT, TASK_NAMES, Manifest, all_objects, pipeline, task

VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["version"]
DEFAULT_IMAGE = f"ghcr.io/modelops/modelops:{VERSION}"
MIN_TEKTON = (0, 70, 0)

TEKTON_OBJECTS = [doc for _, doc in all_objects() if doc.get("apiVersion") == "tekton.dev/v1"]
TASKS = list(TASK_NAMES)

# The env each task's step gets (contract: params via env, token from a secretKeyRef).
TASK_ENV = {
    "install": {
        "MODELOPS_JOB_ID": "job-id",
        "MODELOPS_SCHEDULER_URL": "scheduler-url",
        "MODELOPS_RELEASE": "release-name",
        "MODELOPS_NAMESPACE": "namespace",
        "MODELOPS_CHART": "chart",
    },
    "wait": {"MODELOPS_JOB_ID": "job-id", "MODELOPS_SCHEDULER_URL": "scheduler-url"},
    "uninstall": {
        "MODELOPS_JOB_ID": "job-id",
        "MODELOPS_SCHEDULER_URL": "scheduler-url",
        "MODELOPS_RELEASE": "release-name",
        "MODELOPS_NAMESPACE": "namespace",
        "MODELOPS_CHART": "chart",
    },
}


def _name(doc: Manifest) -> str:
    return f"{doc['kind']}/{doc['metadata']['name']}"


def _steps(doc: Manifest) -> list[dict[str, Any]]:
    steps: list[dict[str, Any]] = doc["spec"]["steps"]
    return steps


def _strings(node: Any) -> list[str]:
    if isinstance(node, str):
        return [node]
    if isinstance(node, dict):
        return [s for value in node.values() for s in _strings(value)]
    if isinstance(node, list):
        return [s for value in node for s in _strings(value)]
    return []


@pytest.mark.parametrize("doc", TEKTON_OBJECTS, ids=_name)
def test_every_tekton_object_carries_the_catalog_labels_and_annotations(doc: Manifest) -> None:
    meta = doc["metadata"]
    assert meta["labels"]["app.kubernetes.io/version"] == VERSION
    annotations = meta["annotations"]
    for key in ("tekton.dev/categories", "tekton.dev/tags", "tekton.dev/displayName"):
        assert annotations.get(key, "").strip(), f"{_name(doc)}: annotation {key} is missing or empty"
    min_version = annotations["tekton.dev/pipelines.minVersion"]
    assert re.fullmatch(r"\d+\.\d+\.\d+", min_version), min_version
    assert tuple(int(part) for part in min_version.split(".")) >= MIN_TEKTON


@pytest.mark.parametrize("doc", TEKTON_OBJECTS, ids=_name)
def test_every_tekton_object_has_a_description_and_every_param_one_too(doc: Manifest) -> None:
    spec = doc["spec"]
    assert len(spec.get("description", "").strip()) > 40, f"{_name(doc)}: spec.description is missing or too short"
    assert spec["params"], f"{_name(doc)} declares no params"
    for param in spec["params"]:
        assert param.get("description", "").strip(), f"{_name(doc)}: param {param['name']} has no description"
        assert param.get("type") == "string", f"{_name(doc)}: param {param['name']} should say type: string"


@pytest.mark.parametrize("short", TASKS)
def test_no_script_pastes_a_param_or_any_other_substitution(short: str) -> None:
    for step in _steps(task(short)):
        assert "$(" not in step["script"], f"{TASK_NAMES[short]} step {step['name']}: substitution inside script"


@pytest.mark.parametrize("short", TASKS)
def test_each_script_is_bash_with_set_euo_pipefail_before_any_command(short: str) -> None:
    for step in _steps(task(short)):
        lines = [line.strip() for line in step["script"].splitlines() if line.strip()]
        assert lines[0] == "#!/usr/bin/env bash"
        assert lines[1] == "set -euo pipefail"


@pytest.mark.parametrize("short", TASKS)
def test_each_task_runs_its_modelops_task_command_with_the_flags_from_env(short: str) -> None:
    (step,) = _steps(task(short))
    command = [line.strip() for line in step["script"].splitlines() if line.strip()][-1]
    assert command == (
        f'exec modelops task {short} --job-id "${{MODELOPS_JOB_ID}}" --scheduler-url "${{MODELOPS_SCHEDULER_URL}}"'
    )


@pytest.mark.parametrize("short", TASKS)
def test_each_step_gets_its_params_through_env_and_the_token_from_the_secret(short: str) -> None:
    (step,) = _steps(task(short))
    env = {item["name"]: item for item in step["env"]}
    for name, param in TASK_ENV[short].items():
        assert env[name] == {"name": name, "value": f"$(params.{param})"}
    assert env["MODELOPS_JOB_TOKEN"] == {
        "name": "MODELOPS_JOB_TOKEN",
        "valueFrom": {"secretKeyRef": {"name": "$(params.token-secret)", "key": "token"}},
    }
    assert env["HOME"] == {"name": "HOME", "value": "/tmp"}
    declared = {p["name"] for p in task(short)["spec"]["params"]}
    used = set(re.findall(r"\$\(params\.([a-z0-9-]+)\)", " ".join(_strings(task(short)["spec"]))))
    assert used == declared, f"{TASK_NAMES[short]}: params declared but unused or used but undeclared"


@pytest.mark.parametrize("short", TASKS)
def test_each_step_runs_non_root_with_a_restricted_security_context(short: str) -> None:
    for step in _steps(task(short)):
        assert step["securityContext"] == {
            "runAsNonRoot": True,
            "runAsUser": 65532,
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        }


@pytest.mark.parametrize("short", TASKS)
def test_the_read_only_root_filesystem_leaves_home_writable_on_an_empty_dir(short: str) -> None:
    spec = task(short)["spec"]
    volumes = {v["name"]: v for v in spec["volumes"]}
    for step in _steps(task(short)):
        mounts = {m["mountPath"]: m["name"] for m in step["volumeMounts"]}
        assert volumes[mounts["/tmp"]] == {"name": mounts["/tmp"], "emptyDir": {}}


@pytest.mark.parametrize("short", TASKS)
def test_each_step_requests_and_limits_cpu_and_memory(short: str) -> None:
    for step in _steps(task(short)):
        resources = step["computeResources"]
        assert set(resources["requests"]) == {"cpu", "memory"}
        assert set(resources["limits"]) == {"cpu", "memory"}


@pytest.mark.parametrize("short", TASKS)
def test_each_step_image_is_the_image_param_defaulting_to_the_released_runner(short: str) -> None:
    params = {p["name"]: p for p in task(short)["spec"]["params"]}
    assert params["image"]["default"] == DEFAULT_IMAGE
    for step in _steps(task(short)):
        assert step["image"] == "$(params.image)"


def test_the_pipeline_runs_install_then_wait_and_uninstall_finally() -> None:
    spec = pipeline()["spec"]
    tasks = {t["name"]: t for t in spec["tasks"]}
    assert list(tasks) == ["install", "wait"]
    assert "runAfter" not in tasks["install"]
    assert tasks["wait"]["runAfter"] == ["install"]
    assert [t["name"] for t in spec["finally"]] == ["uninstall"]
    for pipeline_task in [*spec["tasks"], *spec["finally"]]:
        assert pipeline_task["taskRef"] == {"kind": "Task", "name": TASK_NAMES[pipeline_task["name"]]}


def test_the_pipeline_declares_the_contract_params() -> None:
    assert tuple(p["name"] for p in pipeline()["spec"]["params"]) == PIPELINE_PARAMS


def test_no_pipeline_task_sets_retries_a_timeout_or_a_when_guard() -> None:
    # retries on wait can hang a CancelledRunFinally; timeouts belong to the PipelineRun; a `when` on uninstall
    # could skip it and leak the release.
    spec = pipeline()["spec"]
    for pipeline_task in [*spec["tasks"], *spec["finally"]]:
        assert {"retries", "timeout", "when", "onError"}.isdisjoint(pipeline_task), pipeline_task["name"]


def test_the_pipeline_description_says_the_run_sets_the_timeouts() -> None:
    description = pipeline()["spec"]["description"]
    assert "timeouts.tasks" in description
    assert "timeouts.finally" in description


def test_uninstall_gets_the_same_params_as_install() -> None:
    spec = pipeline()["spec"]
    install = next(t for t in spec["tasks"] if t["name"] == "install")
    (uninstall,) = spec["finally"]
    assert uninstall["params"] == install["params"]


@pytest.mark.parametrize("short", TASKS)
def test_each_pipeline_task_passes_every_required_param_of_its_task_and_nothing_undeclared(short: str) -> None:
    spec = pipeline()["spec"]
    (pipeline_task,) = [t for t in [*spec["tasks"], *spec["finally"]] if t["name"] == short]
    task_params = {p["name"]: p for p in task(short)["spec"]["params"]}
    passed = {p["name"]: p["value"] for p in pipeline_task["params"]}
    assert set(passed) <= set(task_params)
    assert {name for name, p in task_params.items() if "default" not in p} <= set(passed)
    assert all(value == f"$(params.{name})" for name, value in passed.items())
