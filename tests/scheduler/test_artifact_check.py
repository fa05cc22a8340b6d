"""`modelops ir validate` checks model artifacts: they exist, match their sha256, and have the declared signature.

Artifacts are real: an ONNX graph written by skl2onnx, a torch.export program, a transformers config.json, and
pickles that would leave a marker file behind if anything unpickled them.
"""

from __future__ import annotations

import hashlib
import json
import pickle
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from scheduler.artifact_check import artifact_path
from scheduler.cli import app
from scoring_services.artifacts import directory_sha256

PIPELINE = """\
apiVersion: modelops/v1
kind: ScoringPipeline
metadata: {name: check}
spec: {mode: batch, flows: [score]}
---
apiVersion: modelops/v1
kind: DataChannel
metadata: {name: rows-in}
spec:
  direction: source
  type: file
  file: {path: in.csv, format: csv}
  schema:
    fields:
      - {name: x0, type: number, format: float}
      - {name: x1, type: number, format: float}
      - {name: x2, type: number, format: float}
      - {name: x3, type: number, format: float}
      - {name: x4, type: number, format: float}
      - {name: x5, type: number, format: float}
      - {name: x6, type: number, format: float}
      - {name: x7, type: number, format: float}
      - {name: text, type: string}
"""
_FIELD_TYPES = {
    "INT64": {"type": "integer", "format": "int64"},
    "INT32": {"type": "integer", "format": "int32"},
    "FP32": {"type": "number", "format": "float"},
    "FP64": {"type": "number", "format": "double"},
    "BYTES": {"type": "string"},
}


def write_bundle(folder: Path, models: dict[str, dict[str, Any]]) -> Path:
    """A bundle in `folder` (pipeline.yaml + models.yaml) whose flow scores with every model in `models`."""
    folder.mkdir(parents=True, exist_ok=True)
    steps: list[dict[str, Any]] = []
    sink_fields: list[dict[str, Any]] = []
    for i, (name, spec) in enumerate(models.items()):
        first, source = spec["outputs"][0], spec["inputs"][0]
        width = source["shape"][1] if len(source["shape"]) > 1 else 1
        fields = ["text"] if source["datatype"] == "BYTES" else [f"x{j}" for j in range(width)]
        output: dict[str, Any] = {"output": first["name"], "field": f"y{i}"}
        if len(first["shape"]) > 1:
            output["reduce"] = "max"
        steps.append(
            {
                "name": f"score_{i}",
                "score": {
                    "model": name,
                    "inputs": [{"input": source["name"], "fields": fields}],
                    "outputs": [output],
                },
            }
        )
        sink_fields.append({"name": f"y{i}", **_FIELD_TYPES[first["datatype"]]})
    sink = {
        "apiVersion": "modelops/v1",
        "kind": "DataChannel",
        "metadata": {"name": "rows-out"},
        "spec": {
            "direction": "sink",
            "type": "file",
            "file": {"path": "out.csv", "format": "csv"},
            "schema": {"fields": sink_fields},
        },
    }
    flow = {
        "apiVersion": "modelops/v1",
        "kind": "ScoringFlow",
        "metadata": {"name": "score"},
        "spec": {"source": "rows-in", "sinks": ["rows-out"], "steps": steps},
    }
    (folder / "pipeline.yaml").write_text(PIPELINE + "---\n" + json.dumps(sink) + "\n---\n" + json.dumps(flow) + "\n")
    documents = [
        json.dumps({"apiVersion": "modelops/v1", "kind": "Model", "metadata": {"name": name}, "spec": spec})
        for name, spec in models.items()
    ]
    (folder / "models.yaml").write_text("\n---\n".join(documents) + "\n")
    return folder


def tensor(name: str, datatype: str, *shape: int) -> dict[str, Any]:
    return {"name": name, "datatype": datatype, "shape": list(shape)}


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def validate(*args: str) -> Any:
    return CliRunner().invoke(app, ["ir", "validate", *args])


def errors(result: Any) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("error ")]


@pytest.fixture(scope="module")
def onnx_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A logistic regression on 4 features, 3 classes, exported by skl2onnx with zipmap off (label, probabilities)."""
    pytest.importorskip("skl2onnx")
    from skl2onnx import to_onnx
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    features = rng.normal(size=(60, 4)).astype(np.float32)
    model = LogisticRegression(max_iter=200).fit(features, np.arange(60) % 3)
    exported = to_onnx(model, features[:1], options={id(model): {"zipmap": False}}, target_opset=17)
    path = tmp_path_factory.mktemp("onnx") / "m.onnx"
    path.write_bytes(exported.SerializeToString())
    return path


@pytest.fixture(scope="module")
def zipmap_onnx_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same kind of model with skl2onnx's defaults: output_label and a zipmap output_probability (not a tensor)."""
    pytest.importorskip("skl2onnx")
    from skl2onnx import to_onnx
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(1)
    features = rng.normal(size=(60, 4)).astype(np.float32)
    model = LogisticRegression(max_iter=200).fit(features, np.arange(60) % 3)
    path = tmp_path_factory.mktemp("onnx") / "zipmap.onnx"
    path.write_bytes(to_onnx(model, features[:1], target_opset=17).SerializeToString())
    return path


def onnx_model(uri: str, sha256: str | None, outputs: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "runtime": "onnx",
        "uri": uri,
        "inputs": [tensor("input", "FP32", -1, 4)],
        "outputs": outputs or [tensor("label", "INT64", -1), tensor("probabilities", "FP32", -1, 3)],
    }
    if sha256 is not None:
        spec["sha256"] = sha256
    return spec


class Marker:
    """Unpickling it creates the file it names: proof that something unpickled the artifact."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (Path.touch, (str(self.path),))  # type: ignore[return-value]


# ---------------------------------------------------------------------------------------------- resolution


def test_a_relative_artifact_resolves_against_the_folder_of_the_bundle_whatever_the_working_directory(
    tmp_path: Path, onnx_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bundle = write_bundle(tmp_path / "bundle", {"m": onnx_model("models/m.onnx", sha256_of(onnx_file))})
    (bundle / "models").mkdir()
    (bundle / "models" / "m.onnx").write_bytes(onnx_file.read_bytes())
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    result = validate(str(bundle))
    assert result.exit_code == 0, result.output
    assert "model m: models/m.onnx: exists, sha256 matches, inputs and outputs match the ONNX graph" in result.stdout


def test_artifact_paths_are_relative_to_the_bundle_folder_or_taken_as_given(tmp_path: Path) -> None:
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "bundle.yaml").write_text("")
    assert artifact_path("a/m.onnx", tmp_path / "b") == tmp_path / "b" / "a" / "m.onnx"
    assert artifact_path("a/m.onnx", tmp_path / "b" / "bundle.yaml") == tmp_path / "b" / "a" / "m.onnx"
    assert artifact_path("file:///srv/models/m%20x.onnx", tmp_path / "b") == Path("/srv/models/m x.onnx")
    assert artifact_path("/srv/m.onnx", tmp_path / "b") == Path("/srv/m.onnx")
    assert artifact_path("https://example.com/m.onnx", tmp_path / "b") is None
    assert artifact_path("s3://bucket/m.onnx", tmp_path / "b") is None
    assert artifact_path("models:/digits/3", tmp_path / "b") is None  # an MLflow registry, no '://'
    assert artifact_path("models:/digits@champion", tmp_path / "b") is None
    assert artifact_path("modelops-artifact:sha256:" + "a" * 64, tmp_path / "b") is None  # in the scheduler's store


def test_a_file_uri_artifact_is_checked_where_it_points(tmp_path: Path, onnx_file: Path) -> None:
    bundle = write_bundle(tmp_path / "bundle", {"m": onnx_model(onnx_file.as_uri(), "0" * 64)})
    result = validate(str(bundle))
    assert result.exit_code == 1
    assert errors(result) == [
        f"error models.yaml: Model m: spec.sha256: sha256 mismatch: the artifact {onnx_file} has "
        f"{sha256_of(onnx_file)} (line 1)"
    ]


# ---------------------------------------------------------------------------------------------- exists, sha256


def test_missing_artifacts_are_all_reported_at_once_in_the_ir_error_style(tmp_path: Path) -> None:
    bundle = write_bundle(
        tmp_path / "bundle",
        {"first": onnx_model("first.onnx", None), "second": onnx_model("nested/second.onnx", None)},
    )
    result = validate(str(bundle))
    assert result.exit_code == 1
    assert result.stdout == ""
    assert errors(result) == [
        f"error models.yaml: Model first: spec.uri: the artifact {bundle / 'first.onnx'} does not exist (line 1)",
        f"error models.yaml: Model second: spec.uri: the artifact {bundle / 'nested/second.onnx'} does not exist "
        "(line 3)",
    ]
    assert result.stderr.splitlines()[-1] == "2 problems found."


def test_a_sha256_mismatch_names_the_sha256_the_artifact_has(tmp_path: Path, onnx_file: Path) -> None:
    bundle = write_bundle(tmp_path / "bundle", {"m": onnx_model("m.onnx", "a" * 64)})
    (bundle / "m.onnx").write_bytes(onnx_file.read_bytes())
    result = validate(str(bundle))
    assert result.exit_code == 1
    assert errors(result) == [
        f"error models.yaml: Model m: spec.sha256: sha256 mismatch: the artifact {bundle / 'm.onnx'} has "
        f"{sha256_of(onnx_file)} (line 1)"
    ]


def test_no_artifacts_checks_the_documents_only(tmp_path: Path) -> None:
    bundle = write_bundle(tmp_path / "bundle", {"m": onnx_model("missing.onnx", None)})
    result = validate("--no-artifacts", str(bundle))
    assert result.exit_code == 0, result.output
    assert "pipeline 'check' is valid" in result.stdout
    assert "model m" not in result.stdout


def test_a_remote_artifact_is_noted_as_not_checked_and_is_no_error(tmp_path: Path) -> None:
    bundle = write_bundle(tmp_path / "bundle", {"m": onnx_model("https://models.invalid/m.onnx", None)})
    result = validate(str(bundle))
    assert result.exit_code == 0, result.output
    assert "model m: https://models.invalid/m.onnx: remote artifact, not checked" in result.stdout


# ---------------------------------------------------------------------------------------------- onnx


def test_a_declared_onnx_output_the_graph_lacks_is_reported_with_the_outputs_it_has(
    tmp_path: Path, onnx_file: Path
) -> None:
    outputs = [tensor("label", "INT64", -1), tensor("predict_proba", "FP32", -1, 3)]
    bundle = write_bundle(tmp_path / "bundle", {"m": onnx_model("m.onnx", None, outputs)})
    (bundle / "m.onnx").write_bytes(onnx_file.read_bytes())
    result = validate(str(bundle))
    assert result.exit_code == 1
    assert errors(result) == [
        "error models.yaml: Model m: spec.outputs[1].name: declared output predict_proba not found; "
        "the artifact has label, probabilities (line 1)"
    ]


def test_outputs_that_are_not_tensors_are_named_as_not_served(tmp_path: Path, zipmap_onnx_file: Path) -> None:
    outputs = [tensor("output_label", "INT64", -1), tensor("predict_proba", "FP32", -1, 3)]
    bundle = write_bundle(tmp_path / "bundle", {"m": onnx_model("m.onnx", None, outputs)})
    (bundle / "m.onnx").write_bytes(zipmap_onnx_file.read_bytes())
    result = validate(str(bundle))
    assert result.exit_code == 1
    assert errors(result) == [
        "error models.yaml: Model m: spec.outputs[1].name: declared output predict_proba not found; "
        "the artifact has output_label (output_probability is not a tensor, so not served) (line 1)"
    ]


def test_onnx_datatype_and_fixed_dimension_mismatches_are_reported_each(tmp_path: Path, onnx_file: Path) -> None:
    spec = onnx_model("m.onnx", None, [tensor("label", "INT32", -1), tensor("probabilities", "FP32", -1, 10)])
    spec["inputs"] = [tensor("features", "FP32", -1, 8)]
    bundle = write_bundle(tmp_path / "bundle", {"m": spec})
    (bundle / "m.onnx").write_bytes(onnx_file.read_bytes())
    result = validate(str(bundle))
    assert result.exit_code == 1
    assert errors(result) == [
        "error models.yaml: Model m: spec.inputs[0].shape: "
        "declared input features (bound to the artifact's X) has shape [-1, 8]; "
        "the ONNX graph has [-1, 4] (line 1)",
        "error models.yaml: Model m: spec.outputs[0].datatype: declared output label is INT32; "
        "the ONNX graph has INT64 (line 1)",
        "error models.yaml: Model m: spec.outputs[1].shape: declared output probabilities has shape [-1, 10]; "
        "the ONNX graph has [-1, 3] (line 1)",
    ]


def test_a_file_that_is_not_onnx_is_reported_as_unreadable(tmp_path: Path) -> None:
    bundle = write_bundle(tmp_path / "bundle", {"m": onnx_model("m.onnx", None)})
    (bundle / "m.onnx").write_bytes(b"not a protobuf at all")
    result = validate(str(bundle))
    assert result.exit_code == 1
    [line] = errors(result)
    assert line.startswith("error models.yaml: Model m: spec.uri: the artifact cannot be read as onnx: ")


# ---------------------------------------------------------------------------------------------- pickles


def test_a_sklearn_pickle_is_checked_for_its_sha256_but_never_unpickled(tmp_path: Path) -> None:
    marker = tmp_path / "unpickled"
    bundle = write_bundle(
        tmp_path / "bundle",
        {
            "m": {
                "runtime": "sklearn",
                "uri": "m.joblib",
                "sha256": "0" * 64,
                "inputs": [tensor("input", "FP32", -1, 4)],
                "outputs": [tensor("predict", "INT64", -1)],
            }
        },
    )
    artifact = bundle / "m.joblib"
    artifact.write_bytes(pickle.dumps(Marker(marker)))
    text = (bundle / "models.yaml").read_text().replace("0" * 64, sha256_of(artifact))
    (bundle / "models.yaml").write_text(text)
    result = validate(str(bundle))
    assert result.exit_code == 0, result.output
    assert (
        "model m: m.joblib: exists, sha256 matches, signature not read "
        "(sklearn artifacts are not opened: unpickling runs code)" in result.stdout
    )
    assert not marker.exists()
    pickle.loads(artifact.read_bytes())  # the artifact does leave the marker when unpickled
    assert marker.exists()


# ---------------------------------------------------------------------------------------------- torch.export


@pytest.fixture(scope="module")
def program_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A torch.export program: input x FP32 [batch, 4] -> (logits FP32 [batch, 3], argmax INT64 [batch])."""
    torch = pytest.importorskip("torch")

    class Net(torch.nn.Module):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self.linear = torch.nn.Linear(4, 3)

        def forward(self, x: Any) -> Any:
            logits = self.linear(x)
            return logits, torch.argmax(logits, dim=1)

    batch = torch.export.Dim("batch")
    program = torch.export.export(Net(), (torch.randn(2, 4),), dynamic_shapes={"x": {0: batch}})
    path = tmp_path_factory.mktemp("torch") / "net.pt2"
    torch.export.save(program, path)
    return path


def torch_model(uri: str, inputs: list[dict[str, Any]], outputs: list[dict[str, Any]]) -> dict[str, Any]:
    return {"runtime": "torch", "uri": uri, "sha256": "0" * 64, "inputs": inputs, "outputs": outputs}


def with_sha256(bundle: Path, artifact: Path) -> None:
    text = (bundle / "models.yaml").read_text().replace("0" * 64, sha256_of(artifact))
    (bundle / "models.yaml").write_text(text)


def test_an_exported_program_matching_its_declaration_passes(tmp_path: Path, program_file: Path) -> None:
    spec = torch_model(
        "net.pt2",
        [tensor("x", "FP32", -1, 4)],
        [tensor("output_0", "FP32", -1, 3), tensor("output_1", "INT64", -1)],
    )
    bundle = write_bundle(tmp_path / "bundle", {"m": spec})
    (bundle / "net.pt2").write_bytes(program_file.read_bytes())
    with_sha256(bundle, bundle / "net.pt2")
    result = validate(str(bundle))
    assert result.exit_code == 0, result.output
    assert "model m: net.pt2: exists, sha256 matches, inputs and outputs match the exported program" in result.stdout


def test_an_exported_program_is_read_without_unpickling_anything_in_it(tmp_path: Path, program_file: Path) -> None:
    marker = tmp_path / "unpickled"
    bundle = write_bundle(
        tmp_path / "bundle",
        {"m": torch_model("net.pt2", [tensor("x", "FP32", -1, 4)], [tensor("logits", "FP32", -1, 3)])},
    )
    artifact = bundle / "net.pt2"
    # every member but the JSON schema replaced by a pickle that leaves the marker when unpickled
    with zipfile.ZipFile(program_file) as source, zipfile.ZipFile(artifact, "w") as target:
        for info in source.infolist():
            json_member = info.filename.endswith(".json")
            target.writestr(info, source.read(info) if json_member else pickle.dumps(Marker(marker)))
    with_sha256(bundle, artifact)
    result = validate(str(bundle))
    assert result.exit_code == 1
    assert errors(result) == [
        "error models.yaml: Model m: spec.outputs[0].name: declared output logits not found; "
        "the artifact has output_0, output_1 (line 1)"
    ]
    assert not marker.exists()


def test_an_exported_program_with_other_dtypes_and_dimensions_is_reported(tmp_path: Path, program_file: Path) -> None:
    spec = torch_model(
        "net.pt2",
        [tensor("x", "FP64", -1, 4)],
        [tensor("output_0", "FP32", -1, 2), tensor("output_1", "INT64", -1)],
    )
    bundle = write_bundle(tmp_path / "bundle", {"m": spec})
    (bundle / "net.pt2").write_bytes(program_file.read_bytes())
    with_sha256(bundle, bundle / "net.pt2")
    result = validate(str(bundle))
    assert errors(result) == [
        "error models.yaml: Model m: spec.inputs[0].datatype: declared input x is FP64; "
        "the exported program has FP32 (line 1)",
        "error models.yaml: Model m: spec.outputs[0].shape: declared output output_0 has shape [-1, 2]; "
        "the exported program has [-1, 3] (line 1)",
    ]


def test_torchscript_is_only_checked_for_its_sha256(tmp_path: Path) -> None:
    marker = tmp_path / "unpickled"
    spec = torch_model("net.pt", [tensor("x", "FP32", -1, 4)], [tensor("y", "FP32", -1, 3)])
    bundle = write_bundle(tmp_path / "bundle", {"m": spec})
    (bundle / "net.pt").write_bytes(pickle.dumps(Marker(marker)))
    with_sha256(bundle, bundle / "net.pt")
    result = validate(str(bundle))
    assert result.exit_code == 0, result.output
    assert "signature not read (TorchScript is not opened: loading it unpickles, which runs code)" in result.stdout
    assert not marker.exists()


# ---------------------------------------------------------------------------------------------- transformers


def transformers_folder(folder: Path, config: dict[str, Any]) -> Path:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "model.safetensors").write_bytes(b"weights are not read")
    return folder


def test_a_transformers_config_gives_the_task_signature_to_compare_with(tmp_path: Path) -> None:
    bundle = tmp_path / "bundle"
    folder = transformers_folder(  # outside the bundle folder: its config.json would be read as an IR file
        tmp_path / "models" / "sentiment",
        {"architectures": ["BertForSequenceClassification"], "id2label": {"0": "neg", "1": "neu", "2": "pos"}},
    )
    spec = {
        "runtime": "transformers",
        "uri": "../models/sentiment",
        "sha256": directory_sha256(folder),
        "inputs": [tensor("text", "BYTES", -1)],
        "outputs": [tensor("label", "BYTES", -1), tensor("logits", "FP32", -1, 2), tensor("proba", "FP32", -1)],
    }
    write_bundle(bundle, {"m": spec})
    result = validate(str(bundle))
    assert result.exit_code == 1
    assert errors(result) == [
        "error models.yaml: Model m: spec.outputs[2].name: declared output proba not found; "
        "the artifact has label, score, logits (line 1)",
    ]
    spec["outputs"] = [tensor("label", "BYTES", -1), tensor("logits", "FP32", -1, 2)]
    write_bundle(bundle, {"m": spec})
    assert errors(validate(str(bundle))) == [
        "error models.yaml: Model m: spec.outputs[1].shape: declared output logits has shape [-1, 2]; "
        "config.json has [-1, 3] (line 1)",
    ]
    spec["outputs"] = [tensor("label", "BYTES", -1), tensor("logits", "FP32", -1, 3)]
    write_bundle(bundle, {"m": spec})
    result = validate(str(bundle))
    assert result.exit_code == 0, result.output
    assert "model m: ../models/sentiment: exists, sha256 matches, inputs and outputs match config.json" in result.stdout


def test_a_transformers_folder_without_config_json_is_reported(tmp_path: Path) -> None:
    bundle = tmp_path / "bundle"
    (bundle / "empty").mkdir(parents=True)
    spec = {
        "runtime": "transformers",
        "uri": "empty",
        "inputs": [tensor("text", "BYTES", -1)],
        "outputs": [tensor("embedding", "FP32", -1, 8)],
    }
    write_bundle(bundle, {"m": spec})
    assert errors(validate(str(bundle))) == [
        f"error models.yaml: Model m: spec.uri: the artifact cannot be read as transformers: the model folder "
        f"{bundle / 'empty'} has no config.json (line 1)"
    ]
