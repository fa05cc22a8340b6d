"""Running the real helm on charts/modelops and validating what it renders, for tests/charts.

helm comes from `.tools/bin` (what `make tools` installs), else from PATH; without it the tests fail and say so.
Core Kubernetes kinds are validated with kubernetes-validate (strict, Kubernetes 1.30); Tekton, KEDA
(ScaledObject, TriggerAuthentication) and Prometheus Operator kinds with the strict JSON Schemas of
../shared/schemas (`<group>/<kind>_<version>.json`).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterable, Iterator
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "modelops"
SUBCHART = CHART / "charts" / "scheduler"
SCHEMAS = ROOT / "tests" / "schemas"  # a copy of ../shared/schemas (tests/schemas/README.md)
KUBERNETES_VERSION = "1.30.0"
#: A per-job release name as the install task makes it: `modelops-<job uuid>`, 45 characters.
RELEASE = "modelops-6f1c2a9e-0b7d-4c55-9a3e-2d8f4b1c7e10"
NAMESPACE = "modelops-jobs"
#: API groups whose kinds kubernetes-validate knows (the built-in ones).
_BUILTIN_GROUP_SUFFIX = ".k8s.io"
_BUILTIN_GROUPS = frozenset({"", "apps", "batch", "autoscaling", "policy"})


@cache
def helm_binary() -> str:
    local = ROOT / ".tools" / "bin" / "helm"
    if local.is_file():
        return str(local)
    found = shutil.which("helm")
    if found is None:
        pytest.fail("helm is not installed: run `make tools` (it puts helm in .tools/bin)", pytrace=False)
    return found


def helm(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([helm_binary(), *args], capture_output=True, text=True, timeout=120)
    if check and result.returncode != 0:
        pytest.fail(f"helm {' '.join(args)} failed ({result.returncode}):\n{result.stdout}{result.stderr}")
    return result


def template(
    chart: Path = CHART,
    values: Iterable[Path] = (),
    sets: Iterable[str] = (),
    release: str = RELEASE,
    namespace: str = NAMESPACE,
) -> list[dict[str, Any]]:
    """`helm template` -> the rendered objects (empty documents dropped)."""
    args = ["template", release, str(chart), "--namespace", namespace, "--kube-version", KUBERNETES_VERSION]
    for path in values:
        args += ["-f", str(path)]
    for assignment in sets:
        args += ["--set", assignment]
    text = helm(*args).stdout
    return [doc for doc in yaml.safe_load_all(text) if doc]


def template_text(chart: Path = CHART, values: Iterable[Path] = (), release: str = RELEASE) -> str:
    args = ["template", release, str(chart), "--namespace", NAMESPACE, "--kube-version", KUBERNETES_VERSION]
    for path in values:
        args += ["-f", str(path)]
    return helm(*args).stdout


def _group_version(obj: dict[str, Any]) -> tuple[str, str]:
    api_version: str = obj["apiVersion"]
    group, _, version = api_version.rpartition("/")
    return group, version


@cache
def _custom_schema(group: str, kind: str, version: str) -> dict[str, Any] | None:
    path = SCHEMAS / group / f"{kind.lower()}_{version}.json"
    if not path.is_file():
        return None
    loaded: dict[str, Any] = json.loads(path.read_text())
    return loaded


def validate(obj: dict[str, Any]) -> None:
    """Validate one rendered object; an object no schema covers is a failure, never skipped."""
    group, version = _group_version(obj)
    kind = obj["kind"]
    where = f"{kind} {obj.get('metadata', {}).get('name')}"
    if group in _BUILTIN_GROUPS or group.endswith(_BUILTIN_GROUP_SUFFIX):
        try:
            kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            path = ".".join(str(p) for p in exc.path)
            pytest.fail(f"{where} is not a valid Kubernetes {KUBERNETES_VERSION} object: {path}: {exc.message}")
        return
    schema = _custom_schema(group, kind, version)
    if schema is None:
        pytest.fail(f"{where}: no schema for {group}/{version} {kind} in {SCHEMAS}")
    validator_class = jsonschema.validators.validator_for(schema, default=jsonschema.Draft7Validator)
    errors = sorted(validator_class(schema).iter_errors(obj), key=lambda e: list(e.absolute_path))
    if errors:
        first = errors[0]
        path = ".".join(str(p) for p in first.absolute_path)
        pytest.fail(f"{where} does not match {group}/{kind.lower()}_{version}.json: {path}: {first.message}")


def of_kind(objects: Iterable[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [obj for obj in objects if obj["kind"] == kind]


def by_name(objects: Iterable[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    matches = [obj for obj in objects if obj["kind"] == kind and obj["metadata"]["name"] == name]
    assert len(matches) == 1, f"expected one {kind} {name}, found {len(matches)}"
    return matches[0]


def pod_specs(objects: Iterable[dict[str, Any]]) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    """(owner, pod template) of every Deployment and Job."""
    for obj in objects:
        if obj["kind"] in ("Deployment", "Job"):
            yield obj, obj["spec"]["template"]


def containers(pod_template: dict[str, Any]) -> list[dict[str, Any]]:
    spec = pod_template["spec"]
    return [*spec.get("initContainers", []), *spec["containers"]]


def env_of(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {entry["name"]: entry for entry in container.get("env", [])}
