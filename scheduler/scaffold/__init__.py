"""`modelops init`: a complete, editable pipeline folder from model artifacts and a sample of the data.

`init_pipeline` inspects each model (`model_info`), reads the sample's schema (`sample`), matches the model's
inputs to columns, and writes `pipeline.yaml`, `models/`, `flows/`, `channels/` and a copy of the artifacts
under `artifacts/`, in the layout of `examples/digits`. What it could not decide is written as a `# TODO`
comment where it matters and returned in the report. The folder is loaded back with `ir.load_bundle` before
`init` returns, so what it writes validates.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import ir
from scheduler.scaffold.model_info import ModelInfo, ScaffoldError, inspect_model
from scheduler.scaffold.sample import Column, choose_features, file_format, id_column, read_sample
from scoring_services.types import TensorSpec

__all__ = ["InitReport", "ScaffoldError", "init_pipeline"]

_OUTPUT_TYPES = {
    "BOOL": ("boolean", None),
    "INT8": ("integer", "int32"),
    "INT16": ("integer", "int32"),
    "INT32": ("integer", "int32"),
    "UINT8": ("integer", "int32"),
    "UINT16": ("integer", "int32"),
    "INT64": ("integer", "int64"),
    "UINT32": ("integer", "int64"),
    "UINT64": ("integer", "int64"),
    "FP16": ("number", "float"),
    "FP32": ("number", "float"),
    "FP64": ("number", "double"),
    "BYTES": ("string", None),
}


@dataclass
class InitReport:
    folder: Path
    name: str
    models: list[ModelInfo]
    source_format: str
    sink_format: str
    input_path: Path
    output_path: str
    decisions: list[str] = field(default_factory=list)
    todos: list[str] = field(default_factory=list)


def _label(text: str) -> str:
    """A DNS label from a file name: `Digits_RF.v2` -> `digits-rf-v2`."""
    label = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:40].strip("-")
    return label or "model"


def _field_name(text: str) -> str:
    name = re.sub(r"[^A-Za-z0-9_]", "_", text)
    return name if re.match(r"^[A-Za-z_]", name) else f"f_{name}"


def _flow(items: list[object]) -> str:
    return json.dumps(items, separators=(", ", ": ")).replace('"', "")


def _selector(chosen: list[str], columns: list[Column], ident: Column | None) -> str:
    """The shortest way to write `chosen`: `{from, to}` for a run of the schema, else the list."""
    names = [c.name for c in columns]
    if len(chosen) > 2 and chosen[0] in names:
        start = names.index(chosen[0])
        if names[start : start + len(chosen)] == chosen:
            if ident is not None and [n for n in names if n != ident.name] == chosen:
                return f"{{all: true, except: [{ident.name}]}}"
            return f"{{from: {chosen[0]}, to: {chosen[-1]}}}"
    return "[" + ", ".join(chosen) + "]"


def _tensor(spec: TensorSpec) -> str:
    return f"{{name: {spec.name}, datatype: {spec.datatype}, shape: {list(spec.shape)}}}"


def _width(spec: TensorSpec) -> int | None:
    width = 1
    for dim in spec.shape[1:]:
        if dim == -1:
            return None
        width *= dim
    return width


_VALID_FIELD = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]*$")
"""An IR field name (ir.models' rule)."""


def init_pipeline(
    folder: Path,
    models: list[Path],
    data: Path,
    *,
    sink: Path | None = None,
    force: bool = False,
) -> InitReport:
    """Write the pipeline folder; `ScaffoldError` for what cannot be decided (nothing is written then)."""
    if not models:
        raise ScaffoldError("give at least one --model")
    if folder.exists() and any(folder.iterdir()) and not force:
        raise ScaffoldError(f"{folder}: the folder is not empty (use --force to write into it)")
    source_format, columns, rows = read_sample(data)
    unnamed = [c.name for c in columns if not _VALID_FIELD.match(c.name)]
    if unnamed:
        raise ScaffoldError(
            f"{data}: column(s) {', '.join(repr(n) for n in unnamed)} are not valid IR field names (letters, "
            "digits, '_', '.', '-', starting with a letter or '_'): rename them in the data (and in the model's "
            "feature names)"
        )
    sink_format = file_format(sink) if sink is not None else source_format
    infos = [inspect_model(path) for path in models]
    name = _label(infos[0].path.name.split(".")[0]) if len(infos) == 1 else _label(folder.resolve().name)
    ident = id_column(columns)
    report = InitReport(
        folder=folder,
        name=name,
        models=infos,
        source_format=source_format,
        sink_format=sink_format,
        input_path=data.resolve(),
        output_path=str(sink.resolve()) if sink is not None else f"out/scored.{_suffix(sink_format)}",
    )
    report.decisions.append(
        f"sample {data}: {source_format}, {len(columns)} columns, {rows:,} rows read"
        + (f"; id column '{ident.name}'" if ident else "; no id column")
    )

    model_names: list[str] = []
    steps: list[str] = []
    sink_fields: list[dict[str, str]] = [ident.to_ir()] if ident else []
    taken = {c.name for c in columns}
    for info in infos:
        model_name = _label(info.path.name.split(".")[0])
        while model_name in model_names:
            model_name = f"{model_name}-{len(model_names) + 1}"
        model_names.append(model_name)
        prefix = f"{_field_name(model_name)}_" if len(infos) > 1 else ""
        report.todos.extend(f"model {model_name}: {todo}" for todo in info.todos)
        inputs_yaml: list[str] = []
        for spec in info.inputs:
            width = _width(spec)
            if spec.datatype == "BYTES":
                text = next((c.name for c in columns if c.type == "string" and c is not ident), None)
                if text is None:
                    raise ScaffoldError(
                        f"{data}: model {info.path.name} takes text ('{spec.name}'), the sample has no string column"
                    )
                inputs_yaml.append(f"          - {{input: {spec.name}, field: {text}}}")
                report.decisions.append(f"model {model_name}: text input '{spec.name}' from column '{text}'")
                continue
            if width is None:
                raise ScaffoldError(
                    f"{info.path}: input '{spec.name}' has a variable width {list(spec.shape)}: "
                    "write the pipeline by hand"
                )
            names = info.feature_names if len(info.inputs) == 1 else None
            chosen, todos = choose_features(columns, width, names, data)
            report.todos.extend(f"model {model_name}: {todo}" for todo in todos)
            how = "by the model's feature names" if names else "numeric columns in order, without the id"
            report.decisions.append(
                f"model {model_name} ({info.runtime}): input '{spec.name}' {spec.datatype} {list(spec.shape)} "
                f"from {len(chosen)} columns, {how}"
            )
            todo = "".join(f"          # TODO: {t}\n" for t in todos)
            inputs_yaml.append(
                f"{todo}          - input: {spec.name}\n            fields: {_selector(chosen, columns, ident)}"
            )
        outputs_yaml: list[str] = []
        for spec in info.outputs:
            width = _width(spec)
            element, fmt = _OUTPUT_TYPES[spec.datatype]
            if spec.name == "predict":
                target = f"{prefix}label"
            elif spec.name == "predict_proba":
                target = f"{prefix}probability"
            else:
                target = f"{prefix}{_field_name(spec.name)}"
            while target in taken:
                target = f"{target}_out"
            taken.add(target)
            line = f"          - {{output: {spec.name}, field: {target}}}"
            if width != 1 and spec.name == "predict_proba":
                line = f"          - {{output: {spec.name}, field: {target}, reduce: max}}"
                report.decisions.append(
                    f"model {model_name}: {target} = the largest of predict_proba (its class: label)"
                )
            elif width != 1:
                line = f"          - {{output: {spec.name}, field: {target}, reduce: max}}"
                note = (
                    f"output '{spec.name}' {list(spec.shape)} is reduced to its largest value; use "
                    "'reduce: argmax' for its position, or 'fields: [...]' for one column per value"
                )
                line = f"          # TODO: {note}\n{line}"
                report.todos.append(f"model {model_name}: {note}")
            outputs_yaml.append(line)
            sink_fields.append({"name": target, "type": element, **({"format": fmt} if fmt else {})})
        steps.append(
            f"    - name: score_{_field_name(model_name)}\n"
            f"      score:\n"
            f"        model: {model_name}\n"
            f"        inputs:\n" + "\n".join(inputs_yaml) + "\n"
            "        outputs:\n" + "\n".join(outputs_yaml)
        )

    folder.mkdir(parents=True, exist_ok=True)
    for sub in ("models", "flows", "channels", "artifacts"):
        (folder / sub).mkdir(exist_ok=True)
    for info, model_name in zip(infos, model_names, strict=True):
        _write_model(folder, info, model_name)
    _write(folder / "pipeline.yaml", _pipeline_yaml(report, data))
    _write(folder / "flows" / f"{name}.yaml", _flow_yaml(name, steps))
    _write(
        folder / "channels" / f"{name}-in.yaml",
        _channel_yaml(f"{name}-in", "source", source_format, "${params.input}", [c.to_ir() for c in columns]),
    )
    _write(
        folder / "channels" / f"{name}-out.yaml",
        _channel_yaml(f"{name}-out", "sink", sink_format, "${params.output}", sink_fields),
    )
    try:
        ir.load_bundle(folder)
    except ir.IRValidationError as exc:  # a bug of init: say so, with what the loader said
        raise ScaffoldError(f"the pipeline written to {folder} does not validate (please report it):\n{exc}") from exc
    return report


def _suffix(fmt: str) -> str:
    return {"jsonl": "jsonl", "parquet": "parquet"}.get(fmt, "csv")


def _write(path: Path, text: str) -> None:
    path.write_text(text, encoding="utf-8")


def _write_model(folder: Path, info: ModelInfo, model_name: str) -> None:
    """A file artifact is copied into `artifacts/`; a folder (transformers, MLflow) is referred to where it is,
    by a path relative to the pipeline folder: inside it, its .json/.yaml files would be read as IR."""
    if info.path.is_dir():
        uri = os.path.relpath(info.path.resolve(), folder.resolve())
        where = "referred to where it is"
    else:
        target = folder / "artifacts" / f"{model_name}{''.join(info.path.suffixes)}"
        shutil.copyfile(info.path, target)
        uri = f"artifacts/{target.name}"
        where = "the artifact is copied beside it"
    options = "".join(f"\n  options: {{{k}: {v}}}" for k, v in info.options.items())
    text = (
        f"# {info.runtime} model from {info.path}, written by `modelops init`; {where}.\n"
        "apiVersion: modelops/v1\n"
        "kind: Model\n"
        f"metadata:\n  name: {model_name}\n"
        "spec:\n"
        f"  runtime: {info.runtime}\n"
        f"  uri: {uri}\n"
        f"  sha256: {info.sha256}\n"
        "  inputs:\n"
        + "".join(f"    - {_tensor(s)}\n" for s in info.inputs)
        + "  outputs:\n"
        + "".join(f"    - {_tensor(s)}\n" for s in info.outputs)
        + "  batching: {enabled: true, maxBatchSize: 256, maxLatencyMs: 5}"
        + options
        + "\n"
    )
    _write(folder / "models" / f"{model_name}.yaml", text)


def _pipeline_yaml(report: InitReport, data: Path) -> str:
    input_description = f"The {report.source_format} file (or glob) to score; written by `modelops init` from {data}."
    return (
        f"# Written by `modelops init`: score {report.source_format} with "
        f"{', '.join(m.path.name for m in report.models)}. Edit freely; `modelops ir validate .` checks it.\n"
        "apiVersion: modelops/v1\n"
        "kind: ScoringPipeline\n"
        f"metadata:\n  name: {report.name}\n"
        "spec:\n"
        "  mode: batch\n"
        f"  flows: [{report.name}]\n"
        "  parameters:\n"
        "    - name: input\n"
        "      type: string\n"
        f"      default: {json.dumps(str(report.input_path))}\n"
        f"      description: {json.dumps(input_description)}\n"
        "    - name: output\n"
        "      type: string\n"
        f"      default: {json.dumps(report.output_path)}\n"
        f'      description: "Where the scored {report.sink_format} file is written."\n'
    )


def _flow_yaml(name: str, steps: list[str]) -> str:
    return (
        "apiVersion: modelops/v1\n"
        "kind: ScoringFlow\n"
        f"metadata:\n  name: {name}\n"
        "spec:\n"
        f"  source: {name}-in\n"
        f"  sinks: [{name}-out]\n"
        "  batchSize: 5000\n"
        "  errorPolicy: {mode: fail}\n"
        "  steps:\n" + "\n".join(steps) + "\n"
    )


def _channel_yaml(name: str, direction: str, fmt: str, path: str, fields: list[dict[str, str]]) -> str:
    options = "\n    compression: auto" if direction == "source" and fmt != "parquet" else ""
    return (
        "apiVersion: modelops/v1\n"
        "kind: DataChannel\n"
        f"metadata:\n  name: {name}\n"
        "spec:\n"
        f"  direction: {direction}\n"
        "  type: file\n"
        "  file:\n"
        f"    path: {json.dumps(path)}\n"
        f"    format: {fmt}{options}\n"
        "  schema:\n"
        "    fields:\n" + "".join(f"      - {_flow([f])[1:-1]}\n" for f in fields)
    )


def relative_to_cwd(path: Path) -> str:
    """`path` as the user would type it from here."""
    try:
        return os.path.relpath(path)
    except ValueError:
        return str(path)
