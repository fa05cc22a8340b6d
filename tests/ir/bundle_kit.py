"""A small valid IR bundle, built in memory, that tests mutate one thing at a time.

The bundle (pipeline `fraud`, flow `f1`, channels `txns-in`/`txns-out`, model `fraud-rf`) is kept as plain
data, file name -> documents, so a test can change one value and serialise it with `files()`:

    pipeline.yaml        ScoringPipeline fraud      parameters input, threshold, limit, tag
    channels.yaml        DataChannel txns-in        file source: id, amount, age, country, day
                         DataChannel txns-out       file sink: id, score, tag
    flows/f1.yaml        ScoringFlow f1             [0] map set tag, [1] score fraud-rf, [2] filter score
    models/fraud-rf.yaml Model fraud-rf             sklearn; input features FP32 [-1, 2], output proba FP64 [-1]

Test modules import this file as `bundle_kit` (pytest puts `tests/ir` on sys.path: there is deliberately no
`__init__.py` here, since `tests/ir` as a package would be imported as `ir` and shadow the package under test).
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterator, Mapping
from typing import Any

import pytest
import yaml

import ir

SHA = "ab" * 32


def pipeline_doc() -> dict[str, Any]:
    return {
        "apiVersion": "modelops/v1",
        "kind": "ScoringPipeline",
        "metadata": {"name": "fraud"},
        "spec": {
            "mode": "batch",
            "flows": ["f1"],
            "parameters": [
                {"name": "input", "type": "string", "default": "data/in.csv"},
                {"name": "threshold", "type": "number", "default": 0.5},
                {"name": "limit", "type": "integer", "default": 10},
                {"name": "tag", "type": "string", "default": "v1"},
            ],
        },
    }


def source_doc() -> dict[str, Any]:
    return {
        "apiVersion": "modelops/v1",
        "kind": "DataChannel",
        "metadata": {"name": "txns-in"},
        "spec": {
            "direction": "source",
            "type": "file",
            "file": {"path": "${params.input}", "format": "csv"},
            "schema": {
                "fields": [
                    {"name": "id", "type": "integer", "format": "int64"},
                    {"name": "amount", "type": "number", "format": "double"},
                    {"name": "age", "type": "integer", "format": "int32"},
                    {"name": "country", "type": "string"},
                    {"name": "day", "type": "string", "format": "date"},
                ]
            },
        },
    }


def sink_doc() -> dict[str, Any]:
    return {
        "apiVersion": "modelops/v1",
        "kind": "DataChannel",
        "metadata": {"name": "txns-out"},
        "spec": {
            "direction": "sink",
            "type": "file",
            "file": {"path": "out/scored.csv", "format": "csv"},
            "schema": {
                "fields": [
                    {"name": "id", "type": "integer", "format": "int64"},
                    {"name": "score", "type": "number", "format": "double"},
                    {"name": "tag", "type": "string"},
                ]
            },
        },
    }


def flow_doc() -> dict[str, Any]:
    return {
        "apiVersion": "modelops/v1",
        "kind": "ScoringFlow",
        "metadata": {"name": "f1"},
        "spec": {
            "source": "txns-in",
            "sinks": ["txns-out"],
            "steps": [
                {"name": "tag_rows", "map": {"set": {"tag": "${params.tag}"}}},
                {
                    "name": "score_rf",
                    "score": {
                        "model": "fraud-rf",
                        "inputs": [{"input": "features", "fields": ["amount", "age"]}],
                        "outputs": [{"output": "proba", "field": "score"}],
                    },
                },
                {"name": "keep_risky", "filter": {"field": "score", "op": "ge", "value": "${params.threshold}"}},
            ],
        },
    }


def model_doc(name: str = "fraud-rf") -> dict[str, Any]:
    return {
        "apiVersion": "modelops/v1",
        "kind": "Model",
        "metadata": {"name": name},
        "spec": {
            "runtime": "sklearn",
            "uri": f"artifacts/{name}.joblib",
            "sha256": SHA,
            "inputs": [{"name": "features", "datatype": "FP32", "shape": [-1, 2]}],
            "outputs": [{"name": "proba", "datatype": "FP64", "shape": [-1]}],
        },
    }


class BundleData:
    """File name -> list of documents (plain data), with lookups by kind and name for mutations."""

    def __init__(self, files: dict[str, list[Any]]) -> None:
        self.layout = files

    def doc(self, kind: str, name: str) -> dict[str, Any]:
        for docs in self.layout.values():
            for doc in docs:
                if isinstance(doc, dict) and doc.get("kind") == kind and doc.get("metadata", {}).get("name") == name:
                    return doc
        raise KeyError((kind, name))

    @property
    def pipeline(self) -> dict[str, Any]:
        return self.doc("ScoringPipeline", "fraud")

    @property
    def flow(self) -> dict[str, Any]:
        return self.doc("ScoringFlow", "f1")

    @property
    def model(self) -> dict[str, Any]:
        return self.doc("Model", "fraud-rf")

    @property
    def source(self) -> dict[str, Any]:
        return self.doc("DataChannel", "txns-in")

    @property
    def sink(self) -> dict[str, Any]:
        return self.doc("DataChannel", "txns-out")

    def steps(self) -> list[dict[str, Any]]:
        steps: list[dict[str, Any]] = self.flow["spec"]["steps"]
        return steps

    def add(self, file: str, doc: dict[str, Any]) -> None:
        self.layout.setdefault(file, []).append(doc)

    def remove(self, kind: str, name: str) -> None:
        target = self.doc(kind, name)
        for file, docs in list(self.layout.items()):
            docs[:] = [d for d in docs if d is not target]
            if not docs:
                del self.layout[file]

    def documents(self) -> Iterator[dict[str, Any]]:
        for docs in self.layout.values():
            yield from docs

    def files(self) -> dict[str, str]:
        """Serialise: `.json` files as one document or a list, everything else as multi-document YAML."""
        out: dict[str, str] = {}
        for name, docs in self.layout.items():
            if name.endswith(".json"):
                out[name] = json.dumps(docs[0] if len(docs) == 1 else docs, indent=2)
            else:
                out[name] = yaml.safe_dump_all(docs, sort_keys=False)
        return out

    def load(self) -> ir.Bundle:
        return ir.load_bundle_files(self.files())


def base_layout() -> dict[str, list[Any]]:
    return {
        "pipeline.yaml": [pipeline_doc()],
        "channels.yaml": [source_doc(), sink_doc()],
        "flows/f1.yaml": [flow_doc()],
        "models/fraud-rf.yaml": [model_doc()],
    }


def fresh() -> BundleData:
    """A new, independent copy of the small valid bundle."""
    return BundleData(copy.deepcopy(base_layout()))


def issues_of(files: Mapping[str, str | bytes]) -> list[ir.Issue]:
    """The issues `load_bundle_files` reports; fails the test when the bundle is accepted."""
    with pytest.raises(ir.IRValidationError) as caught:
        ir.load_bundle_files(files)
    return caught.value.issues


_PART = re.compile(r"([^.\[\]]+)|\[(\d+)\]")


def _parts(path: str) -> list[str | int]:
    """`spec.steps[1].score` -> `["spec", "steps", 1, "score"]` (the notation of `Issue.path`)."""
    return [int(index) if index else key for key, index in _PART.findall(path)]


def put(doc: Any, path: str, value: Any) -> None:
    """Set the value at `path` inside `doc`, creating mappings on the way."""
    *parents, last = _parts(path)
    target = doc
    for part in parents:
        target = target.setdefault(part, {}) if isinstance(part, str) else target[part]
    target[last] = value


def delete(doc: Any, path: str) -> None:
    *parents, last = _parts(path)
    target = doc
    for part in parents:
        target = target[part]
    del target[last]


def get(doc: Any, path: str) -> Any:
    target = doc
    for part in _parts(path):
        target = target[part]
    return target


# ---------------------------------------------------------------------------------------------- generated bundles


def generated_documents(
    models: int, flows: int, sinks_per_flow: int, params: list[tuple[str, str, Any]]
) -> list[dict[str, Any]]:
    """A valid bundle of any size: every flow scores with every model, writes to its own sinks.

    `params` are (name, type, default); the first one, when there is one, is referenced from a channel
    option and from a map step, so substitution takes part in rendering.
    """
    pipeline = pipeline_doc()
    pipeline["spec"]["flows"] = [f"flow-{i}" for i in range(flows)]
    pipeline["spec"]["parameters"] = [{"name": n, "type": t, "default": d} for n, t, d in params]
    ref = f"${{params.{params[0][0]}}}" if params else "none"
    docs: list[dict[str, Any]] = [pipeline]
    for j in range(models):
        model = model_doc(f"model-{j}")
        if j % 2:
            model["spec"]["runtime"] = "onnx"
            model["spec"]["uri"] = f"https://models.example/model-{j}.onnx"
            del model["spec"]["sha256"]
        docs.append(model)
    for i in range(flows):
        source = source_doc()
        source["metadata"]["name"] = f"in-{i}"
        source["spec"]["file"]["path"] = f"data/{ref}/in-{i}.csv"
        docs.append(source)
        sink_names = [f"out-{i}-{k}" for k in range(sinks_per_flow)]
        for name in sink_names:
            sink = sink_doc()
            sink["metadata"]["name"] = name
            sink["spec"]["schema"]["fields"] = [
                {"name": "id", "type": "integer", "format": "int64"},
                {"name": "tag", "type": "string"},
                *({"name": f"score_{j}", "type": "number"} for j in range(models)),
            ]
            docs.append(sink)
        flow = flow_doc()
        flow["metadata"]["name"] = f"flow-{i}"
        flow["spec"]["source"] = f"in-{i}"
        flow["spec"]["sinks"] = sink_names
        flow["spec"]["steps"] = [
            {"map": {"set": {"tag": f"run {ref}"}}},
            *(
                {
                    "score": {
                        "model": f"model-{j}",
                        "inputs": [{"input": "features", "fields": ["amount", "age"]}],
                        "outputs": [{"output": "proba", "field": f"score_{j}"}],
                    }
                }
                for j in range(models)
            ),
            {"filter": {"field": "country", "op": "in", "value": ["DE", "FR"]}},
        ]
        docs.append(flow)
    return docs
