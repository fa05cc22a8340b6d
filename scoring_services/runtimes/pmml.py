"""PMML runtime on pypmml (the PMML4S evaluator on the machine's Java, reached over py4j).

Why the Java evaluator rather than a pure-Python one: PMML is a large standard (trees, regressions, neural
networks, SVMs, clustering, ensembles/segmentation, transformations, missing-value strategies, output
post-processing) and an evaluator that covers a subset fails, or worse answers differently, on the documents
real tools (SAS, KNIME, sklearn2pmml, R) write. PMML4S implements nearly all of it and is the evaluator other
platforms test against. Its cost is a JVM (started once per process, ~1 s, ~100 MB) and a py4j round trip per
call, which is why every batch goes over in one call (the split-JSON form, no per-row calls).

Signature: one input tensor per PMML input field (shape [-1]) and one output per output field; or, when the
model declares a single input of shape [-1, n] and the document has n input fields, that matrix, columns in
the document's field order.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

import numpy as np
import orjson
from pypmml import Model  # type: ignore[import-untyped]

from scoring_services.artifacts import read_verified
from scoring_services.errors import InferenceError, InvalidRequest, ModelLoadError
from scoring_services.runtimes.base import ModelRuntime
from scoring_services.types import Array, Batch, TensorSpec

__all__ = ["PmmlRuntime"]

_TYPES: Final = {
    "double": "FP64",
    "float": "FP64",
    "real": "FP64",
    "integer": "INT64",
    "int": "INT64",
    "long": "INT64",
    "string": "BYTES",
    "boolean": "BOOL",
}


def _datatype(field: Any) -> str:
    return _TYPES.get(str(getattr(field, "dataType", "string")).lower(), "BYTES")


def _column(values: Array) -> list[Any]:
    if values.dtype.kind == "O":
        return [v.decode("utf-8", "replace") if isinstance(v, bytes) else v for v in values.tolist()]
    return values.tolist()  # type: ignore[no-any-return]


class PmmlRuntime(ModelRuntime):
    name = "pmml"

    def _load(self) -> None:
        cfg = self.config
        data = read_verified(self.path, cfg.sha256)
        try:
            self.model: Any = Model.fromString(data.decode("utf-8"))
        except Exception as exc:  # py4j errors, Java parse errors, UnicodeDecodeError
            raise ModelLoadError(f"model '{cfg.name}': pypmml cannot load {self.path.name}: {exc}") from exc
        self.fields = [str(f.name) for f in self.model.inputFields]
        field_types = [_datatype(f) for f in self.model.inputFields]
        self._matrix = len(cfg.inputs) == 1 and len(cfg.inputs[0].shape) == 2 and len(self.fields) > 1
        if self._matrix:
            width = cfg.inputs[0].shape[1]
            if width not in (-1, len(self.fields)):
                raise ModelLoadError(
                    f"model '{cfg.name}': input '{cfg.inputs[0].name}' has {width} columns; "
                    f"the PMML document has {len(self.fields)} input fields ({', '.join(self.fields)})"
                )
        else:
            self.inputs = tuple(
                TensorSpec(name, kind, (-1,)) for name, kind in zip(self.fields, field_types, strict=True)
            )
        self.outputs = tuple(TensorSpec(str(f.name), _datatype(f), (-1,)) for f in self.model.outputFields)
        self._types = {spec.name: spec.datatype for spec in self.outputs}

    def _predict(self, batch: Batch) -> Mapping[str, Any]:
        rows = batch.rows
        if self._matrix:
            matrix = next(iter(batch.inputs.values()))
            columns = [_column(matrix[:, i]) for i in range(matrix.shape[1])]
        else:
            columns = [_column(batch.inputs[name].reshape(rows)) for name in self.fields]
        records = [list(row) for row in zip(*columns, strict=True)]
        request = orjson.dumps({"columns": self.fields, "data": records}).decode()
        try:
            answer = orjson.loads(self.model.call("predict", request))
        except Exception as exc:  # py4j.protocol.Py4JJavaError carries the Java exception
            raise InvalidRequest(f"the PMML model rejected the input: {exc}") from exc
        names: list[str] = answer.get("columns", [])
        table: list[list[Any]] = answer.get("data", [])
        if len(table) != rows:
            raise InferenceError(f"model '{self.config.name}' answered {len(table)} rows for {rows}")
        result: dict[str, Any] = {}
        for index, name in enumerate(names):
            if name not in batch.outputs:
                continue
            values = [row[index] for row in table]
            kind = self._types.get(name, "BYTES")
            if kind == "BYTES":
                result[name] = np.array([b"" if v is None else str(v).encode() for v in values], dtype=np.object_)
            else:
                result[name] = np.array([np.nan if v is None else v for v in values], dtype=np.float64)
        return result

    def _unload(self) -> None:
        self.model = None
