"""Shared loading and validation for the tests of tekton/ (the Pipeline, Tasks, RBAC and runner image).

Test modules import this file as `tekton_kit` (pytest puts `tests/tekton` on sys.path: like `tests/ir`, the
test folders are not packages).

The strict Tekton v1 schemas are a copy of `../shared/schemas/tekton.dev` in `tests/schemas` (converted from the
tektoncd/pipeline CRDs, with `additionalProperties: false` wherever the CRD lists properties). Tekton leaves
embedded `taskSpec`/`pipelineSpec` open, so `tekton_errors` validates those against the Task/Pipeline schemas
itself: otherwise a misspelt field inside an embedded spec would pass unnoticed.
"""

from __future__ import annotations

import copy
import functools
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import yaml

ROOT = Path(__file__).resolve().parents[2]
TEKTON = ROOT / "tekton"
SCHEMAS = ROOT / "tests" / "schemas"  # a copy of ../shared/schemas (tests/schemas/README.md)
TEKTON_SCHEMAS = SCHEMAS / "tekton.dev"
CHART_COPIES = ROOT / "charts" / "modelops" / "charts" / "scheduler" / "files" / "tekton"

PIPELINE_NAME = "modelops-scoring"
RUNNER_SERVICE_ACCOUNT = "modelops-runner"
#: Where tekton/rbac.yaml gives the runner a Role: the PipelineRuns' namespace and the examples' one.
RUNNER_NAMESPACES = ("modelops", "modelops-examples")
PIPELINE_PARAMS = ("job-id", "scheduler-url", "release-name", "namespace", "chart", "token-secret")
TASK_NAMES = {"install": "modelops-install", "wait": "modelops-wait", "uninstall": "modelops-uninstall"}

Manifest = dict[str, Any]


def tekton_files() -> list[Path]:
    """Every YAML file under tekton/, sorted (what tekton-lint and the schema tests look at)."""
    return sorted(p for p in TEKTON.rglob("*") if p.suffix in {".yaml", ".yml"} and p.is_file())


def load_documents(path: Path) -> list[Manifest]:
    """The non-empty YAML documents of a file; anything that is not a mapping is an error naming the file."""
    docs: list[Manifest] = []
    with path.open(encoding="utf-8") as fh:
        for index, doc in enumerate(yaml.safe_load_all(fh)):
            if doc is None:
                continue
            if not isinstance(doc, dict):
                what = type(doc).__name__
                raise AssertionError(f"{path.relative_to(ROOT)}: document {index} is a {what}, not a mapping")
            docs.append(doc)
    return docs


def all_objects() -> Iterator[tuple[Path, Manifest]]:
    """(file, object) for every object in every YAML file under tekton/."""
    for path in tekton_files():
        for doc in load_documents(path):
            yield path, doc


def tekton_object(kind: str, name: str) -> Manifest:
    """The one object of this kind and name under tekton/."""
    found = [doc for _, doc in all_objects() if doc.get("kind") == kind and doc.get("metadata", {}).get("name") == name]
    if len(found) != 1:
        raise AssertionError(f"expected exactly one {kind} {name!r} under tekton/, found {len(found)}")
    return found[0]


def pipeline() -> Manifest:
    return tekton_object("Pipeline", PIPELINE_NAME)


def task(short: str) -> Manifest:
    """The Task behind a pipeline task name: install, wait or uninstall."""
    return tekton_object("Task", TASK_NAMES[short])


@functools.cache
def tekton_schema(kind: str) -> dict[str, Any]:
    """The strict schema for a tekton.dev/v1 kind (Task, Pipeline, PipelineRun, TaskRun)."""
    path = TEKTON_SCHEMAS / f"{kind.lower()}_v1.json"
    if not path.is_file():
        raise AssertionError(
            f"no strict schema for tekton.dev/v1 {kind}: {path} is missing (see tests/schemas/README.md)"
        )
    schema: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    jsonschema.Draft7Validator.check_schema(schema)
    return schema


def _schema_errors(instance: Any, schema: dict[str, Any], where: str) -> list[str]:
    validator = jsonschema.Draft7Validator(schema)
    return [
        f"{where}.{'.'.join(str(p) for p in err.absolute_path)}: {err.message}"
        for err in sorted(validator.iter_errors(instance), key=lambda e: list(map(str, e.absolute_path)))
    ]


def _spec_schema(kind: str) -> dict[str, Any]:
    spec: dict[str, Any] = tekton_schema(kind)["properties"]["spec"]
    return spec


def _embedded_task_spec_errors(task_spec: Any, where: str) -> list[str]:
    # An embedded taskSpec is a TaskSpec plus an optional `metadata` (labels/annotations for the TaskRun).
    if not isinstance(task_spec, dict):
        return [f"{where}: an embedded taskSpec must be a mapping"]
    body = copy.deepcopy(task_spec)
    metadata = body.pop("metadata", None)
    errors = _schema_errors(body, _spec_schema("Task"), where)
    if metadata is not None and (not isinstance(metadata, dict) or set(metadata) - {"labels", "annotations"}):
        errors.append(f"{where}.metadata: only labels and annotations are allowed in an embedded taskSpec")
    return errors


def _embedded_pipeline_spec_errors(pipeline_spec: Any, where: str) -> list[str]:
    errors = _schema_errors(pipeline_spec, _spec_schema("Pipeline"), where)
    if isinstance(pipeline_spec, dict):
        errors += _pipeline_task_spec_errors(pipeline_spec, where)
    return errors


def _pipeline_task_spec_errors(spec: dict[str, Any], where: str) -> list[str]:
    errors: list[str] = []
    for section in ("tasks", "finally"):
        for index, pipeline_task in enumerate(spec.get(section) or []):
            if not isinstance(pipeline_task, dict):
                continue
            if "taskSpec" in pipeline_task:
                errors += _embedded_task_spec_errors(pipeline_task["taskSpec"], f"{where}.{section}.{index}.taskSpec")
            if "pipelineSpec" in pipeline_task:
                errors += _embedded_pipeline_spec_errors(
                    pipeline_task["pipelineSpec"], f"{where}.{section}.{index}.pipelineSpec"
                )
    return errors


def tekton_errors(obj: Manifest) -> list[str]:
    """Strict-schema errors of a tekton.dev/v1 object, embedded specs included; [] when it is valid."""
    kind = obj.get("kind")
    if obj.get("apiVersion") != "tekton.dev/v1":
        return [f"apiVersion is {obj.get('apiVersion')!r}, expected tekton.dev/v1"]
    if kind not in {"Task", "Pipeline", "PipelineRun", "TaskRun"}:
        return [f"no strict schema for kind {kind!r}"]
    errors = _schema_errors(obj, tekton_schema(kind), kind)
    spec = obj.get("spec")
    if not isinstance(spec, dict):
        return errors
    if kind == "Pipeline":
        errors += _pipeline_task_spec_errors(spec, "Pipeline.spec")
    elif kind == "PipelineRun" and "pipelineSpec" in spec:
        errors += _embedded_pipeline_spec_errors(spec["pipelineSpec"], "PipelineRun.spec.pipelineSpec")
    elif kind == "TaskRun" and "taskSpec" in spec:
        errors += _embedded_task_spec_errors(spec["taskSpec"], "TaskRun.spec.taskSpec")
    return errors


_GO_DURATION = re.compile(r"(\d+(?:\.\d+)?)(h|ms|m|s)")
_UNIT_SECONDS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}


def go_duration_seconds(text: str) -> float:
    """Seconds in a Go duration string as Tekton parses timeouts ("1h30m", "90s", "0"); ValueError otherwise."""
    if text == "0":
        return 0.0
    parts = _GO_DURATION.findall(text)
    if not parts or "".join(number + unit for number, unit in parts) != text:
        raise ValueError(f"{text!r} is not a Go duration (e.g. 1h30m0s)")
    return sum(float(number) * _UNIT_SECONDS[unit] for number, unit in parts)
