"""What a model artifact says about its inputs and outputs, read without running any code it carries.

`modelops ir validate` uses this to compare a model's declared signature with its artifact before anything is
deployed. Each runtime's artifact is read as the runtime itself would name its tensors, or not at all:

- `onnx`: the graph's inputs and outputs, from an onnxruntime session (graph optimisations off), typed and
  filtered as `runtimes.onnx` does (sequence and map outputs are left out);
- `torch` with format `export` (`.pt2`): the program's JSON schema (`models/<name>.json` in the archive),
  parsed as JSON. `torch.export.load` is not used: it unpickles the archive's sample inputs and constants,
  which can run code. Names are those `runtimes.torch` serves: placeholder names in, `output` or `output_0`,
  `output_1`... out;
- `mlflow`: the folder's `MLmodel` (YAML), its signature turned into tensors as `runtimes.mlflow` serves them
  (`mlflow_schema`); the model itself is not loaded (pyfunc loading imports and unpickles);
- `transformers`: `config.json` only (architectures, labels, hidden size), turned into the task's signature as
  `runtimes.transformers` serves it. No weights, tokenizer or remote code are loaded;
- `sklearn`, `torch` TorchScript and `python`: not opened (unpickling or importing runs code); `pmml`: not
  read (its fields are what the PMML evaluator derives). Their artifacts are only checked for their sha256.

Binding a declared signature to the artifact's follows the scoring service's rule (`bind`, which
`repository` uses when a model loads): names match, or both sides have exactly one tensor.
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import yaml

from ir.archive import ArchiveError, ArchiveLimits, check_zip_directory
from scoring_services.errors import ModelLoadError
from scoring_services.types import Scalar, TensorSpec

__all__ = [
    "MLFLOW_COLUMN_TYPES",
    "TRANSFORMERS_TASKS",
    "Mismatch",
    "MlflowSchema",
    "Signature",
    "bind",
    "compare",
    "mlflow_schema",
    "read_signature",
    "transformers_task",
    "unread_reason",
]

TRANSFORMERS_TASKS: Final = ("text-classification", "feature-extraction", "text-generation")

#: torch.export's serialized ScalarType codes (torch/_export/serde/schema.py, part of the file format) -> V2
_TORCH_TYPES: Final = {
    1: "UINT8",
    2: "INT8",
    3: "INT16",
    4: "INT32",
    5: "INT64",
    6: "FP16",
    7: "FP32",
    8: "FP64",
    12: "BOOL",
}
_MAX_SCHEMA_BYTES: Final = 256 * 2**20
#: A `.pt2` is a zip whose central directory `zipfile` loads whole: bounded before it is opened (`ir.archive`).
_PROGRAM_ARCHIVE: Final = ArchiveLimits(_MAX_SCHEMA_BYTES, 100_000, "a torch.export archive", 32 * 2**20)


@dataclass(frozen=True)
class Signature:
    """The tensors an artifact has, by the runtime's names; an empty side means the artifact does not tell."""

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    #: What was read, for messages: "the ONNX graph", "the exported program", "config.json".
    source: str
    #: Outputs the artifact has but the runtime does not serve (not tensors, e.g. skl2onnx's zipmap).
    unserved: tuple[str, ...] = ()


@dataclass(frozen=True)
class Mismatch:
    """One way a declared tensor disagrees with the artifact: `kind` is "input" or "output", `index` its place
    in the declared list, `field` the declared field at fault ("name", "datatype" or "shape")."""

    kind: str
    index: int
    field: str
    message: str


def unread_reason(runtime: str, path: Path, options: Mapping[str, Scalar]) -> str | None:
    """Why this artifact's signature is not read (None when `read_signature` reads it)."""
    if runtime == "sklearn":
        return "sklearn artifacts are not opened: unpickling runs code"
    if runtime == "python":
        return "python artifacts are not imported: that runs their code"
    if runtime == "torch" and _torch_format(path, options) == "torchscript":
        return "TorchScript is not opened: loading it unpickles, which runs code"
    if runtime == "pmml":
        return "PMML fields are only known to its evaluator"
    return None


def read_signature(runtime: str, path: Path, options: Mapping[str, Scalar]) -> Signature | None:
    """The artifact's signature; None when this runtime's artifacts are not read (`unread_reason` says why).

    Raises `ModelLoadError` when the artifact cannot be read as the runtime would (which would fail the load too),
    and `ImportError` when reading needs a package that is not installed (onnxruntime).
    """
    if unread_reason(runtime, path, options) is not None:
        return None
    if runtime == "onnx":
        return _onnx_signature(path)
    if runtime == "torch":
        return _export_signature(path)
    if runtime == "transformers":
        return _transformers_signature(path, options)
    if runtime == "mlflow":
        return mlflow_schema(path).signature
    return None


def bind(declared: tuple[TensorSpec, ...], found: tuple[TensorSpec, ...]) -> dict[str, str] | None:
    """Declared name -> the artifact's name, or None when they cannot be bound.

    Either side empty binds as is (the artifact does not tell, or nothing is declared); every declared name
    present in the artifact binds by name; one tensor on each side binds whatever the names.
    """
    if not declared:
        return {spec.name: spec.name for spec in found}
    if not found:
        return {spec.name: spec.name for spec in declared}
    names = {spec.name for spec in found}
    if all(spec.name in names for spec in declared):
        return {spec.name: spec.name for spec in declared}
    if len(declared) == 1 and len(found) == 1:
        return {declared[0].name: found[0].name}
    return None


def compare(inputs: tuple[TensorSpec, ...], outputs: tuple[TensorSpec, ...], signature: Signature) -> list[Mismatch]:
    """Every disagreement between a declared signature and the artifact's: names, datatypes, fixed dimensions."""
    problems: list[Mismatch] = []
    for kind, declared, found in (("input", inputs, signature.inputs), ("output", outputs, signature.outputs)):
        if not found:
            continue
        has = ", ".join(spec.name for spec in found)
        if kind == "output" and signature.unserved:
            verb = "is not a tensor" if len(signature.unserved) == 1 else "are not tensors"
            has += f" ({', '.join(signature.unserved)} {verb}, so not served)"
        binding = bind(declared, found)
        if binding is None:
            names = {spec.name for spec in found}
            for index, spec in enumerate(declared):
                if spec.name not in names:
                    problems.append(
                        Mismatch(kind, index, "name", f"declared {kind} {spec.name} not found; the artifact has {has}")
                    )
            continue
        by_name = {spec.name: spec for spec in found}
        for index, spec in enumerate(declared):
            actual = by_name[binding[spec.name]]
            called = f"{kind} {spec.name}"
            if actual.name != spec.name:
                called += f" (bound to the artifact's {actual.name})"
            if spec.datatype != actual.datatype:
                problems.append(
                    Mismatch(
                        kind,
                        index,
                        "datatype",
                        f"declared {called} is {spec.datatype}; {signature.source} has {actual.datatype}",
                    )
                )
            if not _shapes_agree(spec.shape, actual.shape):
                problems.append(
                    Mismatch(
                        kind,
                        index,
                        "shape",
                        f"declared {called} has shape {list(spec.shape)}; {signature.source} has {list(actual.shape)}",
                    )
                )
    return problems


def _shapes_agree(declared: tuple[int, ...], actual: tuple[int, ...]) -> bool:
    """Equal rank and no two fixed dimensions that differ; ranks may differ by unit dimensions only ([-1] and
    [-1, 1]), which the service reshapes."""
    if len(declared) != len(actual):
        squeeze_d = [d for d in declared[1:] if d != 1]
        squeeze_a = [d for d in actual[1:] if d != 1]
        if len(squeeze_d) != len(squeeze_a):
            return False
        declared, actual = tuple(squeeze_d), tuple(squeeze_a)
    return all(d == -1 or a == -1 or d == a for d, a in zip(declared, actual, strict=True))


# ---------------------------------------------------------------------------------------------- onnx


def _onnx_signature(path: Path) -> Signature:
    import onnxruntime as ort

    from scoring_services.runtimes.onnx import _TYPES, _shape

    if not path.is_file():
        raise ModelLoadError(f"{path} is not a file")
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.log_severity_level = 3
    try:
        session = ort.InferenceSession(path.read_bytes(), sess_options=opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own pybind exception types
        raise ModelLoadError(f"onnxruntime cannot load {path.name}: {exc}") from exc
    not_tensors = [i.name for i in session.get_inputs() if i.type not in _TYPES]
    if not_tensors:
        raise ModelLoadError(f"the graph has inputs that are not tensors: {', '.join(not_tensors)}")
    inputs = tuple(TensorSpec(i.name, _TYPES[i.type], _shape(i.shape)) for i in session.get_inputs())
    outputs = tuple(
        TensorSpec(o.name, _TYPES[o.type], _shape(o.shape)) for o in session.get_outputs() if o.type in _TYPES
    )
    unserved = tuple(o.name for o in session.get_outputs() if o.type not in _TYPES)
    return Signature(inputs, outputs, "the ONNX graph", unserved)


# ---------------------------------------------------------------------------------------------- torch.export


def _torch_format(path: Path, options: Mapping[str, Scalar]) -> str:
    value = options.get("format", "export" if path.suffix == ".pt2" else "torchscript")
    if value not in ("export", "torchscript"):
        raise ModelLoadError(f"option format must be 'torchscript' or 'export' (got {value!r})")
    return str(value)


def _output_names(count: int) -> list[str]:
    return ["output"] if count == 1 else [f"output_{i}" for i in range(count)]


def _program_json(path: Path) -> dict[str, Any]:
    """The exported program's schema document from a `.pt2` archive, parsed as JSON (no unpickling)."""
    try:
        check_zip_directory(path, _PROGRAM_ARCHIVE)
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            # torch >= 2.8 writes <archive>/models/<name>.json; 2.7 wrote serialized_exported_program.json
            candidates = [n for n in names if n.endswith("/models/model.json") or n == "models/model.json"]
            candidates += [n for n in names if n.rsplit("/", 1)[-1] == "serialized_exported_program.json"]
            if not candidates:
                raise ModelLoadError(f"{path.name} is not a torch.export archive (no models/model.json in it)")
            info = archive.getinfo(candidates[0])
            if info.file_size > _MAX_SCHEMA_BYTES:
                raise ModelLoadError(f"{path.name}: the program's schema is larger than 256 MiB")
            document = json.loads(archive.read(info))
    except (OSError, zipfile.BadZipFile, ArchiveError) as exc:
        raise ModelLoadError(f"cannot read {path.name} as a torch.export archive: {exc}") from exc
    except (ValueError, UnicodeDecodeError) as exc:
        raise ModelLoadError(f"{path.name}: the program's schema is not JSON: {exc}") from exc
    if not isinstance(document, dict):
        raise ModelLoadError(f"{path.name}: the program's schema is not a JSON object")
    return document


def _torch_tensor(values: Mapping[str, Any], arg: Any) -> tuple[str, str, tuple[int, ...]] | None:
    """(name, datatype, shape) of a serialized tensor argument; None when it is not a tensor of a served type."""
    tensor = arg.get("as_tensor") if isinstance(arg, dict) else None
    if not isinstance(tensor, dict) or "name" not in tensor:
        return None
    name = str(tensor["name"])
    meta = values.get(name)
    if not isinstance(meta, dict) or meta.get("dtype") not in _TORCH_TYPES:
        return None
    shape = tuple(
        int(size["as_int"]) if isinstance(size, dict) and "as_int" in size else -1 for size in meta.get("sizes", [])
    )
    return name, _TORCH_TYPES[meta["dtype"]], shape


def _export_signature(path: Path) -> Signature:
    if not path.is_file():
        raise ModelLoadError(f"{path} is not a file")
    document = _program_json(path)
    try:
        module = document["graph_module"]
        values = module["graph"]["tensor_values"]
        signature = module["signature"]
        input_specs, output_specs = signature["input_specs"], signature["output_specs"]
    except (KeyError, TypeError) as exc:
        raise ModelLoadError(f"{path.name}: the program's schema lacks {exc}") from exc
    source = "the exported program"
    inputs: list[TensorSpec] = []
    for spec in input_specs:
        if not isinstance(spec, dict) or "user_input" not in spec:
            continue
        tensor = _torch_tensor(values, spec["user_input"].get("arg"))
        if tensor is None:  # a non-tensor input: the runtime serves the declared inputs as they are
            inputs = []
            break
        inputs.append(TensorSpec(*tensor))
    user = [spec["user_output"] for spec in output_specs if isinstance(spec, dict) and "user_output" in spec]
    outputs: list[TensorSpec] = []
    for spec, name in zip(user, _output_names(len(user)), strict=True):
        tensor = _torch_tensor(values, spec.get("arg"))
        if tensor is not None:
            outputs.append(TensorSpec(name, tensor[1], tensor[2]))
    return Signature(tuple(inputs), tuple(outputs) if len(outputs) == len(user) else (), source)


# ---------------------------------------------------------------------------------------------- transformers


def transformers_task(architectures: list[str]) -> str:
    """The task a transformers model serves by default, from its config's architectures."""
    if any(a.endswith("ForSequenceClassification") for a in architectures):
        return "text-classification"
    if any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in architectures):
        return "text-generation"
    return "feature-extraction"


def _transformers_signature(path: Path, options: Mapping[str, Scalar]) -> Signature:
    if not path.is_dir():
        raise ModelLoadError(f"{path} is not a model folder")
    config_file = path / "config.json"
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelLoadError(f"the model folder {path} has no config.json") from None
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot read {config_file}: {exc}") from exc
    if not isinstance(config, dict):
        raise ModelLoadError(f"{config_file} is not a JSON object")
    architectures = [str(a) for a in (config.get("architectures") or [])]
    task = options.get("task", transformers_task(architectures))
    if task not in TRANSFORMERS_TASKS:
        raise ModelLoadError(f"option task must be one of {', '.join(TRANSFORMERS_TASKS)} (got {task!r})")
    inputs = (TensorSpec("text", "BYTES", (-1,)),)
    outputs: tuple[TensorSpec, ...]
    if task == "text-classification":
        labels = config.get("id2label")
        count = len(labels) if isinstance(labels, dict) and labels else config.get("num_labels", 2)
        width = count if isinstance(count, int) and count > 0 else -1
        outputs = (
            TensorSpec("label", "BYTES", (-1,)),
            TensorSpec("score", "FP32", (-1,)),
            TensorSpec("logits", "FP32", (-1, width)),
        )
    elif task == "feature-extraction":
        hidden = config.get("hidden_size")
        outputs = (TensorSpec("embedding", "FP32", (-1, hidden if isinstance(hidden, int) and hidden > 0 else -1)),)
    else:
        outputs = (TensorSpec("generated_text", "BYTES", (-1,)),)
    return Signature(inputs, outputs, "config.json")


# ---------------------------------------------------------------------------------------------- mlflow

#: MLflow column types (mlflow.types.DataType) the mlflow runtime serves -> V2 datatype, numpy dtype
MLFLOW_COLUMN_TYPES: Final = {
    "double": ("FP64", "float64"),
    "float": ("FP32", "float32"),
    "long": ("INT64", "int64"),
    "integer": ("INT32", "int32"),
    "boolean": ("BOOL", "bool"),
    "string": ("BYTES", "object"),
    "binary": ("BYTES", "object"),
}
_NUMPY_TYPES: Final = {
    "float64": "FP64",
    "float32": "FP32",
    "float16": "FP16",
    "int64": "INT64",
    "int32": "INT32",
    "int16": "INT16",
    "int8": "INT8",
    "uint64": "UINT64",
    "uint32": "UINT32",
    "uint16": "UINT16",
    "uint8": "UINT8",
    "bool": "BOOL",
    "object": "BYTES",
    "str": "BYTES",
}
_MAX_MLMODEL_BYTES: Final = 16 * 2**20


@dataclass(frozen=True)
class MlflowSchema:
    """An MLflow model's signature as the mlflow runtime serves it (see `runtimes.mlflow`).

    Column-based inputs (`columns`: name and MLflow type of each, in order) are one `input` tensor [-1, n]
    (FP64 when number types differ), or one [-1] tensor per column, named by it, when text columns sit beside
    number columns; tensor-based inputs are their named tensors (`input`, or `input_0`, `input_1`... when unnamed)."""

    signature: Signature
    columns: tuple[tuple[str | None, str], ...]


def _mlflow_specs(text: object, what: str, mlmodel: Path) -> list[dict[str, Any]]:
    if text is None or text == "":
        return []
    try:
        specs = json.loads(str(text))
    except ValueError as exc:
        raise ModelLoadError(f"{mlmodel}: its signature's {what} are not JSON: {exc}") from exc
    if not isinstance(specs, list) or not all(isinstance(s, dict) for s in specs):
        raise ModelLoadError(f"{mlmodel}: its signature's {what} are not a list of column or tensor specs")
    return specs


def _mlflow_tensor(spec: Mapping[str, Any], name: str, mlmodel: Path) -> TensorSpec:
    tensor = spec.get("tensor-spec") or {}
    dtype = str(tensor.get("dtype", ""))
    datatype = _NUMPY_TYPES.get(dtype)
    if datatype is None:
        raise ModelLoadError(f"{mlmodel}: tensor '{name}' has dtype '{dtype}', which has no V2 datatype")
    try:
        shape = tuple(int(d) for d in (tensor.get("shape") or [-1]))
    except (TypeError, ValueError):
        raise ModelLoadError(f"{mlmodel}: tensor '{name}' has a shape that is not a list of ints") from None
    return TensorSpec(str(spec.get("name") or name), datatype, shape)


def _column_type(spec: Mapping[str, Any], index: int, mlmodel: Path) -> str:
    kind = str(spec.get("type", ""))
    if kind not in MLFLOW_COLUMN_TYPES:
        name = spec.get("name") or f"#{index}"
        raise ModelLoadError(
            f"{mlmodel}: column '{name}' has MLflow type '{kind}'; the mlflow runtime serves "
            f"{', '.join(MLFLOW_COLUMN_TYPES)}"
        )
    return kind


def _unnamed(prefix: str, count: int, index: int) -> str:
    return prefix if count == 1 else f"{prefix}_{index}"


def mlflow_schema(path: Path) -> MlflowSchema:
    """The signature in the folder's `MLmodel` (YAML, read as data: nothing the model carries runs).

    Outputs: tensor specs by name (`predict`, or `predict_0`... when unnamed); column specs one [-1] tensor per
    column (named by it, else as tensors); no output schema: none (the runtime answers `predict`)."""
    mlmodel = path / "MLmodel"
    if not path.is_dir() or not mlmodel.is_file():
        raise ModelLoadError(f"{path} is not an MLflow model folder (it has no MLmodel file)")
    if mlmodel.stat().st_size > _MAX_MLMODEL_BYTES:
        raise ModelLoadError(f"{mlmodel} is larger than {_MAX_MLMODEL_BYTES} bytes")
    try:
        meta = yaml.safe_load(mlmodel.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ModelLoadError(f"cannot read {mlmodel}: {exc}") from exc
    signature = meta.get("signature") if isinstance(meta, dict) else None
    if not isinstance(signature, dict):
        raise ModelLoadError(
            f"{mlmodel}: the model has no signature; log it with one (signature=mlflow.models.infer_signature(X, y))"
        )
    inputs = _mlflow_specs(signature.get("inputs"), "inputs", mlmodel)
    outputs = _mlflow_specs(signature.get("outputs"), "outputs", mlmodel)
    if not inputs:
        raise ModelLoadError(f"{mlmodel}: the model's signature has no inputs")
    tensors = [spec.get("type") == "tensor" for spec in inputs]
    columns: tuple[tuple[str | None, str], ...] = ()
    if all(tensors):
        input_specs = tuple(
            _mlflow_tensor(spec, _unnamed("input", len(inputs), i), mlmodel) for i, spec in enumerate(inputs)
        )
    elif not any(tensors):
        columns = tuple(
            (str(spec["name"]) if spec.get("name") is not None else None, _column_type(spec, i, mlmodel))
            for i, spec in enumerate(inputs)
        )
        datatypes = {MLFLOW_COLUMN_TYPES[kind][0] for _, kind in columns}
        if len(datatypes) > 1 and "BYTES" in datatypes:  # text beside numbers: a tensor per column
            if any(name is None for name, _ in columns):
                raise ModelLoadError(f"{mlmodel}: the signature mixes text and number columns without names")
            input_specs = tuple(TensorSpec(str(name), MLFLOW_COLUMN_TYPES[kind][0], (-1,)) for name, kind in columns)
        else:
            datatype = datatypes.pop() if len(datatypes) == 1 else "FP64"
            input_specs = (TensorSpec("input", datatype, (-1, len(columns))),)
    else:
        raise ModelLoadError(f"{mlmodel}: the signature's inputs mix column and tensor specs")
    output_specs: list[TensorSpec] = []
    for i, spec in enumerate(outputs):
        name = _unnamed("predict", len(outputs), i)
        if spec.get("type") == "tensor":
            output_specs.append(_mlflow_tensor(spec, name, mlmodel))
        else:
            kind = _column_type(spec, i, mlmodel)
            output_specs.append(TensorSpec(str(spec.get("name") or name), MLFLOW_COLUMN_TYPES[kind][0], (-1,)))
    return MlflowSchema(Signature(input_specs, tuple(output_specs), "the MLmodel signature"), columns)
