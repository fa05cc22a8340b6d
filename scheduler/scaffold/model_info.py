"""What `modelops init` learns from a model artifact: its runtime, its sha256, its inputs and outputs.

The runtime comes from the artifact's shape (a folder with `MLmodel` is MLflow, with `config.json` a
transformers model; `.onnx`, `.pmml`, `.pt2` (torch.export), a TorchScript zip (`.pt`/`.pth` holding
`constants.pkl` or `code/`), and `.joblib`/`.pkl`/`.pickle` (scikit-learn)). Inputs and outputs come from the
model itself: the ONNX graph, the exported program's schema and a transformers config through
`scoring_services.signatures` (read without running the artifact's code), and for scikit-learn the
estimator's `n_features_in_`, `feature_names_in_` and `classes_`: that needs unpickling, which runs code, so
it is done only for a file the user named on their own command line (the user's own trust, not an IR's).
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scoring_services.artifacts import directory_sha256, file_sha256
from scoring_services.errors import ModelLoadError
from scoring_services.signatures import mlflow_schema, read_signature
from scoring_services.types import TensorSpec

__all__ = ["ModelInfo", "ScaffoldError", "detect_runtime", "inspect_model"]

_SKLEARN_SUFFIXES = (".joblib", ".pkl", ".pickle")


class ScaffoldError(Exception):
    """`modelops init` cannot decide something it must: the message says what and how to fix it."""


@dataclass
class ModelInfo:
    """A model as `init` writes it into the IR."""

    path: Path
    runtime: str
    sha256: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    feature_names: list[str] | None = None
    """Input column names the model was fitted with (sklearn's `feature_names_in_`), in order."""
    classifier: bool = False
    todos: list[str] = field(default_factory=list)
    options: dict[str, Any] = field(default_factory=dict)


def detect_runtime(path: Path) -> str:
    """The IR runtime serving `path`; `ScaffoldError` naming what was seen when none fits."""
    if path.is_dir():
        if (path / "MLmodel").is_file():
            return "mlflow"
        if (path / "config.json").is_file():
            return "transformers"
        raise ScaffoldError(f"{path}: a folder without MLmodel (MLflow) or config.json (transformers)")
    name = path.name.lower()
    if name.endswith(".onnx"):
        return "onnx"
    if name.endswith((".pmml", ".xml")):
        return "pmml"
    if name.endswith(".pt2"):
        return "torch"
    if name.endswith((".pt", ".pth", ".zip")) and zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
        if any(n.endswith("constants.pkl") or "/code/" in n for n in names):
            return "torch"
    if name.endswith(_SKLEARN_SUFFIXES):
        return "sklearn"
    raise ScaffoldError(
        f"{path}: cannot tell which runtime serves this file (known: .joblib/.pkl/.pickle scikit-learn, .onnx, "
        ".pmml, .pt2 torch.export, a TorchScript .pt, an MLflow or transformers folder)"
    )


def _sha256(path: Path) -> str:
    return directory_sha256(path) if path.is_dir() else file_sha256(path)


def inspect_model(path: Path) -> ModelInfo:
    """Runtime, sha256, inputs and outputs of the artifact at `path`."""
    if not path.exists():
        raise ScaffoldError(f"{path}: no such file or folder")
    runtime = detect_runtime(path)
    info = ModelInfo(path=path, runtime=runtime, sha256=_sha256(path), inputs=[], outputs=[])
    if runtime == "sklearn":
        _sklearn(info)
    elif runtime == "mlflow":
        _mlflow(info)
    elif runtime == "pmml":
        _pmml(info)
    else:
        try:
            signature = read_signature(runtime, path, {})
        except (ModelLoadError, ImportError) as exc:
            raise ScaffoldError(f"{path}: cannot read the model's signature: {exc}") from exc
        if signature is None or not signature.inputs:
            raise ScaffoldError(
                f"{path}: the {runtime} artifact does not say its inputs (a TorchScript file never does: "
                "export it with torch.export to a .pt2)"
            )
        info.inputs, info.outputs = list(signature.inputs), list(signature.outputs)
        if runtime == "torch":
            info.options["format"] = "export"
    return info


def _sklearn(info: ModelInfo) -> None:
    import joblib
    import numpy as np

    try:
        model = joblib.load(info.path)
    except Exception as exc:
        raise ScaffoldError(
            f"{info.path}: cannot load it as a scikit-learn model: {type(exc).__name__}: {exc}"
        ) from exc
    if not hasattr(model, "predict"):
        raise ScaffoldError(f"{info.path}: {type(model).__name__} has no predict method")
    width = getattr(model, "n_features_in_", None)
    names = getattr(model, "feature_names_in_", None)
    if names is not None:
        info.feature_names = [str(n) for n in names]
        width = len(info.feature_names)
    if not isinstance(width, int | np.integer):
        raise ScaffoldError(f"{info.path}: {type(model).__name__} does not say how many features it takes")
    info.inputs = [TensorSpec("input", "FP64", (-1, int(width)))]
    classes = getattr(model, "classes_", None)
    if isinstance(classes, np.ndarray) and classes.ndim == 1:
        info.classifier = True
        label = "BYTES" if classes.dtype.kind in "OUS" else ("INT64" if classes.dtype.kind in "iub" else "FP64")
        info.outputs = [TensorSpec("predict", label, (-1,))]
        if hasattr(model, "predict_proba"):
            info.outputs.append(TensorSpec("predict_proba", "FP64", (-1, len(classes))))
    else:
        info.outputs = [TensorSpec("predict", "FP64", (-1,))]


def _mlflow(info: ModelInfo) -> None:
    """An MLflow model folder: its MLmodel signature, read as the mlflow runtime serves it
    (`signatures.mlflow_schema`: column-based inputs are one `input` tensor of the columns in order)."""
    try:
        schema = mlflow_schema(info.path)
    except ModelLoadError as exc:
        raise ScaffoldError(str(exc)) from exc
    if schema.columns:
        names = [name for name, _ in schema.columns]
        if all(name is not None for name in names):
            info.feature_names = [str(name) for name in names]
    info.inputs = list(schema.signature.inputs)
    info.outputs = list(schema.signature.outputs)
    if not info.outputs:
        info.outputs = [TensorSpec("predict", "FP64", (-1,))]
        info.todos.append(
            "the MLflow model has no output schema: its output is assumed FP64 [-1] ('predict'); check it"
        )


def _pmml(info: ModelInfo) -> None:
    """A PMML file: its MiningSchema's active fields in, the target out (read as XML, nothing executed)."""
    import xml.etree.ElementTree as ET

    try:
        root = ET.parse(info.path).getroot()
    except ET.ParseError as exc:
        raise ScaffoldError(f"{info.path}: not readable as PMML: {exc}") from exc
    namespace = root.tag.split("}", 1)[0] + "}" if root.tag.startswith("{") else ""
    mining = root.find(f".//{namespace}MiningSchema")
    if mining is None:
        raise ScaffoldError(f"{info.path}: no MiningSchema: which fields the model reads is unknown")
    active, target = [], None
    for mining_field in mining.findall(f"{namespace}MiningField"):
        usage = mining_field.get("usageType", "active")
        if usage == "active":
            active.append(str(mining_field.get("name")))
        elif usage in ("target", "predicted"):
            target = mining_field.get("name")
    info.feature_names = active
    info.inputs = [TensorSpec("input", "FP64", (-1, len(active)))]
    numeric = {"double", "float", "integer"}
    declared = [
        TensorSpec(str(out.get("name")), "FP64" if out.get("dataType", "double") in numeric else "BYTES", (-1,))
        for out in root.iter(f"{namespace}OutputField")
        if out.get("name")
    ]
    if declared:
        info.outputs = declared
    else:
        name = f"predicted_{target}" if target else "predicted"
        info.outputs = [TensorSpec(name, "FP64", (-1,))]
        info.todos.append(
            f"the PMML document declares no OutputField: the output is assumed to be '{name}' (FP64); check the "
            "scoring service's metadata (GET /v2/models/<name>) and adjust"
        )
