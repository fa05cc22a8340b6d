"""Rendering: the digits example against a golden values file, and values against the published JSON Schema.

The golden file is regenerated with `UPDATE_GOLDEN=1 .venv/bin/pytest tests/ir/test_ir_render.py`. Model
sha256s and the pipeline digest are masked before comparing: `examples/digits/train.py` rewrites the sha256s
on every machine, and the digest covers them.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from bundle_kit import BundleData, generated_documents

import ir
from ir.schema import ir_schema, values_schema

ROOT = Path(__file__).resolve().parents[2]
DIGITS = ROOT / "examples" / "digits"
GOLDEN = Path(__file__).parent / "golden" / "digits-values.yaml"
_MACHINE_SPECIFIC = re.compile(r"^(\s*(?:sha256|digest): )'?[0-9a-f]{64}'?$", re.MULTILINE)


def mask(text: str) -> str:
    return _MACHINE_SPECIFIC.sub(r"\1<masked>", text)


def render_digits() -> str:
    values = ir.render(
        ir.load_bundle(DIGITS),
        {"scorer": "golden"},
        ir.make_globals({"jobId": "00000000-0000-0000-0000-000000000001", "modelStore": "file:///models"}),
    )
    return ir.to_yaml(values)


def test_masking_hides_exactly_the_two_sha256s_and_the_digest() -> None:
    text = render_digits()
    masked = mask(text)
    assert masked.count("<masked>") == 3
    assert masked.count("sha256: <masked>") == 2 and masked.count("digest: <masked>") == 1
    assert mask(masked) == masked


def test_the_digits_values_equal_the_golden_file() -> None:
    text = render_digits()
    if os.environ.get("UPDATE_GOLDEN") == "1":
        GOLDEN.parent.mkdir(parents=True, exist_ok=True)
        GOLDEN.write_text(text)
    assert GOLDEN.exists(), f"{GOLDEN} is missing: run with UPDATE_GOLDEN=1 to create it"
    assert mask(text) == mask(GOLDEN.read_text()), "rendered values drifted: rerun with UPDATE_GOLDEN=1 and review"


def test_the_golden_values_carry_the_job_parameters_and_globals() -> None:
    text = GOLDEN.read_text()
    assert "jobId: 00000000-0000-0000-0000-000000000001" in text
    assert "uri: file:///models/artifacts/digits-rf.joblib" in text
    assert "uri: file:///models/artifacts/digits-rf.onnx" in text
    assert "scorer: golden" in text
    assert "namespace: modelops-examples" in text


def test_rendering_the_digits_example_is_byte_identical_twice() -> None:
    assert render_digits() == render_digits()


# ---------------------------------------------------------------------------------------------- JSON Schema


def values_validator() -> jsonschema.Draft7Validator:
    schema = values_schema()
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema)


def schema_errors(document: dict[str, Any]) -> list[str]:
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in values_validator().iter_errors(document)]


def test_the_values_schema_is_a_valid_draft7_schema() -> None:
    jsonschema.Draft7Validator.check_schema(values_schema())
    assert values_schema()["$schema"] == "http://json-schema.org/draft-07/schema#"


def test_the_ir_schema_is_a_valid_2020_12_schema() -> None:
    jsonschema.Draft202012Validator.check_schema(ir_schema())


def test_rendered_digits_values_validate_against_the_values_schema() -> None:
    values = ir.render(ir.load_bundle(DIGITS), {}, ir.make_globals({"jobId": "j", "sizeProfile": "large"}))
    assert schema_errors(ir.to_document(values)) == []


def test_rendered_values_of_the_small_bundle_validate_against_the_values_schema(bundle: BundleData) -> None:
    bundle.flow["spec"]["errorPolicy"] = {"mode": "deadLetter", "sink": "txns-out"}
    bundle.model["spec"]["resources"] = {"requests": {"cpu": "500m"}, "limits": {"memory": "1Gi"}}
    settings = ir.parse_sets(["logLevel=debug", "tracing.enabled=true", "tracing.endpoint=http://otel:4317"])
    values = ir.render(bundle.load(), {"limit": "3"}, settings)
    assert schema_errors(ir.to_document(values)) == []


@pytest.mark.parametrize(("models", "flows", "sinks"), [(1, 1, 1), (3, 2, 2), (2, 3, 1)])
def test_rendered_values_of_generated_bundles_validate_against_the_values_schema(
    models: int, flows: int, sinks: int
) -> None:
    documents = generated_documents(models, flows, sinks, [("alpha", "integer", 3), ("beta", "boolean", True)])
    files = {f"d{i}.yaml": yaml.safe_dump(doc) for i, doc in enumerate(documents)}
    values = ir.render(ir.load_bundle_files(files))
    assert schema_errors(ir.to_document(values)) == []


def test_the_values_schema_rejects_a_broken_values_document(bundle: BundleData) -> None:
    document = ir.to_document(ir.render(bundle.load()))
    del document["pipeline"]["digest"]
    document["global"]["logLevel"] = "loud"
    document["scoringServices"]["fraud-rf"]["replicas"] = "two"
    errors = schema_errors(document)
    assert any("'digest' is a required property" in e for e in errors)
    assert any(e.startswith("global/logLevel:") for e in errors)
    assert any(e.startswith("scoringServices/fraud-rf/replicas:") for e in errors)


def test_relative_file_paths_resolve_against_the_data_root_and_absolute_or_home_paths_are_kept() -> None:
    bundle = ir.load_bundle(DIGITS)
    root = ir.make_globals({"dataRoot": "/srv/data"})
    values = ir.render(bundle, {"input": "./in/*.csv", "output": "out/scored.csv"}, root)
    assert values.data_channels["digits-in"].spec.file is not None
    assert values.data_channels["digits-in"].spec.file.path == "/srv/data/in/*.csv"
    assert values.scoring_flows["digits-batch"].sinks[0].spec.file.path == "/srv/data/out/scored.csv"  # type: ignore[union-attr]
    kept = ir.render(bundle, {"input": "/abs/in.csv", "output": "~/out.csv"}, root)
    assert kept.data_channels["digits-in"].spec.file.path == "/abs/in.csv"  # type: ignore[union-attr]
    assert kept.data_channels["digits-out"].spec.file.path == "~/out.csv"  # type: ignore[union-attr]
    unrooted = ir.render(bundle, {"input": "in.csv"}, ir.Globals())
    assert unrooted.data_channels["digits-in"].spec.file.path == "in.csv"  # type: ignore[union-attr]
    with pytest.raises(ir.IRValidationError, match="dataRoot must be an absolute path"):
        ir.make_globals({"dataRoot": "relative/data"})


def test_a_stored_artifact_uri_resolves_against_the_artifact_store_and_takes_its_digest_as_sha256() -> None:
    digest = "ab" * 32
    assert ir.artifact_uri(digest) == f"modelops-artifact:sha256:{digest}"
    assert ir.artifact_digest(f"modelops-artifact:sha256:{digest}") == digest
    assert ir.artifact_digest("artifacts/m.onnx") is None and ir.artifact_digest("modelops-artifact:sha256:ab") is None
    assert ir.is_relative_uri("artifacts/m.onnx") and not ir.is_relative_uri(ir.artifact_uri(digest))
    store = ir.make_globals({"artifactStore": "http://scheduler:8787/api/v1/jobs/j/artifacts/", "modelStore": "/m"})
    assert (
        ir.resolve_model_uri(ir.artifact_uri(digest), store)
        == f"http://scheduler:8787/api/v1/jobs/j/artifacts/{digest}"
    )
    assert ir.resolve_model_uri("artifacts/m.onnx", store) == "file:///m/artifacts/m.onnx"
    assert ir.resolve_model_uri(ir.artifact_uri(digest), ir.Globals()) == ir.artifact_uri(digest)
