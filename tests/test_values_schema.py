"""charts/modelops/values.schema.json: generated, current, draft-07, strict, and right about rendered values.

Helm validates the values of an install against this file (JSON Schema draft-07). It is generated from the
`Values` model of `ir/render.py`; regenerate it with `scripts/gen-schema.sh`, which runs
`modelops ir schema values > charts/modelops/values.schema.json`.
"""

from __future__ import annotations

import copy
import difflib
import json
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

import ir
from ir.render import PROFILES
from ir.schema import CHART_KEYS, ChartSettings, dumps, values_schema

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "charts" / "modelops"
SCHEMA_FILE = CHART / "values.schema.json"
DIGITS = ROOT / "examples" / "digits"
REGENERATE = "scripts/gen-schema.sh (or: modelops ir schema values > charts/modelops/values.schema.json)"


@pytest.fixture(scope="module")
def schema() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(SCHEMA_FILE.read_text())
    return loaded


@pytest.fixture(scope="module")
def digits_values() -> dict[str, Any]:
    """The values `modelops ir render examples/digits` gives; render reads no artifacts, so no training."""
    bundle = ir.load_bundle(DIGITS)
    values = ir.render(bundle, {}, ir.parse_sets([f"modelStore={DIGITS.resolve().as_uri()}", "jobId=job-1"]))
    return ir.to_document(values)


def test_the_checked_in_schema_is_the_generated_one() -> None:
    expected = dumps(values_schema())
    actual = SCHEMA_FILE.read_text() if SCHEMA_FILE.exists() else ""
    if actual != expected:
        diff = "".join(
            list(
                difflib.unified_diff(
                    actual.splitlines(keepends=True),
                    expected.splitlines(keepends=True),
                    "charts/modelops/values.schema.json (checked in)",
                    "generated from ir/render.py",
                )
            )[:60]
        )
        pytest.fail(f"charts/modelops/values.schema.json is out of date; regenerate it with {REGENERATE}\n{diff}")


def test_the_schema_is_valid_draft_07(schema: dict[str, Any]) -> None:
    assert schema["$schema"] == "http://json-schema.org/draft-07/schema#"
    jsonschema.Draft7Validator.check_schema(schema)


def _objects(node: Any, path: str = "#") -> Iterator[tuple[str, dict[str, Any]]]:
    """Every JSON object inside the schema (in `$defs`, `properties`, `items`, `anyOf`, ...), with its path."""
    if isinstance(node, dict):
        yield path, node
        for key, value in node.items():
            yield from _objects(value, f"{path}/{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _objects(value, f"{path}/{i}")


def test_every_object_with_properties_refuses_unknown_keys(schema: dict[str, Any]) -> None:
    with_properties = [
        (path, node)
        for path, node in _objects(schema)
        if isinstance(node.get("properties"), dict) and not path.endswith("/properties")
    ]
    assert len(with_properties) > 20  # the walk does reach into $defs
    loose = [path for path, node in with_properties if node.get("additionalProperties") is not False]
    assert loose == [], f"objects that accept unknown keys: {loose}"


def test_refs_point_into_the_document(schema: dict[str, Any]) -> None:
    """`$ref`s are local JSON pointers into `$defs` (resolvable by draft-07 validators such as Helm's)."""
    refs = [node["$ref"] for _, node in _objects(schema) if isinstance(node.get("$ref"), str)]
    assert refs
    for ref in refs:
        assert ref.startswith("#/$defs/"), ref
        assert ref.removeprefix("#/$defs/") in schema["$defs"], ref


def test_rendered_digits_values_are_valid(schema: dict[str, Any], digits_values: dict[str, Any]) -> None:
    jsonschema.Draft7Validator(schema).validate(digits_values)
    # and the same after a YAML round trip, which is how Helm reads the values file
    jsonschema.Draft7Validator(schema).validate(yaml.safe_load(yaml.safe_dump(digits_values)))


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def mutate(doc: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        target: Any = doc
        for part in parents:
            target = target[int(part)] if isinstance(target, list) else target[part]
        if isinstance(target, list):
            target[int(last)] = value
        else:
            target[last] = value

    return mutate


MUTATIONS: dict[str, Callable[[dict[str, Any]], None]] = {
    "unknown top-level key": _set("extra", 1),
    "unknown global setting": _set("global.logLevl", "debug"),
    "unknown key in a model spec": _set("scoringServices.digits-rf.model.runtme", "sklearn"),
    "unknown key in a flow step": _set("scoringFlows.digits-batch.steps.0.score.modle", "x"),
    "unknown key in a channel schema field": _set("dataChannels.digits-in.spec.schema.fields.0.nulable", True),
    "replicas as text": _set("scoringServices.digits-rf.replicas", "two"),
    "timeout seconds as text": _set("pipeline.timeoutSeconds.install", "ten"),
    "batch size as a list": _set("scoringFlows.digits-batch.batchSize", [5000]),
    "log level outside the enum": _set("global.logLevel", "loud"),
    "mode outside the enum": _set("pipeline.mode", "nightly"),
    "channel direction outside the enum": _set("dataChannels.digits-out.spec.direction", "both"),
    "tensor shape of text": _set("scoringServices.digits-rf-onnx.model.inputs.0.shape", "[-1, 64]"),
    "pipeline without a name": lambda doc: doc["pipeline"].pop("name"),
    "flows as a list": _set("scoringFlows", []),
}


@pytest.mark.parametrize("mutate", list(MUTATIONS.values()), ids=list(MUTATIONS))
def test_mutated_values_are_refused(
    schema: dict[str, Any], digits_values: dict[str, Any], mutate: Callable[[dict[str, Any]], None]
) -> None:
    doc = copy.deepcopy(digits_values)
    mutate(doc)
    errors = list(jsonschema.Draft7Validator(schema).iter_errors(doc))
    assert errors, "the schema accepted the mutated values"


def test_helm_accepts_the_schema_and_applies_it(tmp_path: Path, digits_values: dict[str, Any]) -> None:
    """helm (.tools/bin, or on PATH) reads the schema and checks values with it."""
    local = ROOT / ".tools" / "bin" / "helm"
    helm = str(local) if local.is_file() else shutil.which("helm")
    if helm is None:
        pytest.fail("helm is not installed: run `make tools` (it puts helm in .tools/bin)")
    good = tmp_path / "values.yaml"
    good.write_text(yaml.safe_dump(digits_values))
    ok = subprocess.run([helm, "lint", str(CHART), "-f", str(good)], capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({**digits_values, "extra": 1}))
    refused = subprocess.run([helm, "lint", str(CHART), "-f", str(bad)], capture_output=True, text=True, timeout=120)
    assert refused.returncode != 0
    assert "extra" in refused.stdout + refused.stderr


def test_the_charts_own_values_are_valid_and_pipeline_is_not_required(schema: dict[str, Any]) -> None:
    """`helm lint` with only values.yaml must pass: no `pipeline` there, the chart-only keys allowed."""
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())
    assert "pipeline" not in defaults
    jsonschema.Draft7Validator(schema).validate(defaults)
    chart_only = {key: defaults[key] for key in CHART_KEYS}
    ChartSettings.model_validate(chart_only)  # the same keys, checked by the model the schema comes from
    assert set(defaults) == {"global", "scoringServices", "scoringFlows", "dataChannels", "scheduler", *CHART_KEYS}


def test_the_size_profiles_of_values_yaml_are_the_renderers(schema: dict[str, Any]) -> None:
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())
    assert defaults["sizeProfiles"] == PROFILES


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("keda", {"enabled": True, "pollingIntervall": 5}),
        ("persistence", {"modelCache": {"accessModes": ["ReadWriteSometimes"]}}),
        ("serviceMonitor", {"enabled": "yes"}),
        ("networkPolicy", {"dns": {"port": 0}}),
        ("sizeProfiles", {"huge": {"requests": {"cpu": "64"}}}),
        ("scheduler", "on"),
    ],
)
def test_chart_settings_are_strict(schema: dict[str, Any], digits_values: dict[str, Any], key: str, value: Any) -> None:
    errors = list(jsonschema.Draft7Validator(schema).iter_errors({**digits_values, key: value}))
    assert errors, f"the schema accepted {key}: {value!r}"
