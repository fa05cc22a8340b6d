"""MLflow runtime: an MLflow model folder (`MLmodel` beside the flavour's files), served through its pyfunc
flavour, whichever library logged it (`mlflow.sklearn`, `mlflow.pyfunc` with a Python model, ...).

The signature in `MLmodel` gives the V2 tensors (`signatures.mlflow_schema`), so a model logged with
`signature=infer_signature(X, y)` needs no `inputs`/`outputs` in the IR:
- column-based inputs (a DataFrame's columns) are one `input` tensor [-1, n], columns in the signature's order
  (or, when text columns sit beside number columns, one [-1] tensor per column, named by it); each batch
  becomes a DataFrame with the signature's column names and types, which pyfunc checks as it would in
  `mlflow models serve`;
- tensor-based inputs are their tensors by name (one unnamed tensor is `input` and goes in as an array);
- outputs are the output schema's tensors or columns; a single unnamed one, or no output schema, is `predict`.
  A DataFrame answer gives one output per column, in order.

Loading a pyfunc model imports the flavour's loader module and unpickles what it saved (cloudpickle for
Python models), which runs code: the folder is verified against its sha256 (the manifest digest of
`artifacts.directory_sha256`) first, and the scheduler counts the runtime among those that need the `code`
scope. Loading never installs anything: the model's `requirements.txt` / `conda.yaml` are not read; the
service's environment must hold the libraries the model needs (`modelops[mlflow]` brings mlflow and sklearn).
Batches are one `predict` call each.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import mlflow.pyfunc
import numpy as np
import pandas as pd  # type: ignore[import-untyped]
from mlflow.exceptions import MlflowException

from scoring_services.artifacts import verify
from scoring_services.errors import InferenceError, InvalidRequest, ModelLoadError
from scoring_services.runtimes.base import ModelRuntime
from scoring_services.signatures import MLFLOW_COLUMN_TYPES, mlflow_schema
from scoring_services.types import Array, Batch

__all__ = ["MlflowRuntime"]

log = logging.getLogger(__name__)


def _column(values: Array, kind: str) -> Array:
    """One column of the input matrix as the signature's type (bytes decoded for strings)."""
    if kind in ("string", "binary"):
        if kind == "string":
            return np.array(
                [v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in values.tolist()],
                dtype=np.object_,
            )
        return values.astype(np.object_)
    dtype = MLFLOW_COLUMN_TYPES[kind][1]
    if values.dtype.kind == "O":
        values = np.array([v.decode() if isinstance(v, bytes) else v for v in values.tolist()])
    return values.astype(dtype, copy=False)


class MlflowRuntime(ModelRuntime):
    name = "mlflow"
    requires_sha256 = True

    def _load(self) -> None:
        cfg = self.config
        schema = mlflow_schema(self.path)  # raises ModelLoadError for a folder without MLmodel or signature
        verify(self.path, cfg.sha256)
        try:
            self.model: Any = mlflow.pyfunc.load_model(str(self.path))
        except (MlflowException, ImportError, OSError, ValueError, TypeError, AttributeError) as exc:
            raise ModelLoadError(f"model '{cfg.name}': mlflow cannot load {self.path}: {exc}") from exc
        self.columns = schema.columns
        self._names: list[str | int] = [
            name if name is not None else index for index, (name, _) in enumerate(self.columns)
        ]
        self.inputs = schema.signature.inputs
        self.outputs = schema.signature.outputs
        #: the outputs answers are returned under: the signature's, else the configuration's, else `predict`
        self._output_names = [spec.name for spec in (self.outputs or cfg.outputs)] or ["predict"]
        log.info(
            "model '%s': MLflow %s model, %s",
            cfg.name,
            ", ".join(k for k in self.model.metadata.flavors if k != "python_function") or "pyfunc",
            f"{len(self.columns)} columns" if self.columns else f"{len(self.inputs)} tensor input(s)",
        )

    def _model_input(self, batch: Batch) -> Any:
        if self.columns and len(self.inputs) > 1:  # a tensor per column
            try:
                data = {
                    spec.name: _column(batch.inputs[spec.name].reshape(-1), kind)
                    for spec, (_, kind) in zip(self.inputs, self.columns, strict=True)
                }
            except (ValueError, TypeError, UnicodeDecodeError) as exc:
                raise InvalidRequest(f"model '{self.config.name}': an input column does not convert: {exc}") from exc
            return pd.DataFrame(data, copy=False)
        if self.columns:
            matrix = next(iter(batch.inputs.values()))
            if matrix.ndim != 2 or matrix.shape[1] != len(self.columns):
                raise InvalidRequest(
                    f"model '{self.config.name}' takes {len(self.columns)} columns per row; got shape "
                    f"{list(matrix.shape)}"
                )
            try:
                table: dict[str | int, Array] = {
                    name: _column(matrix[:, index], kind)
                    for index, (name, (_, kind)) in enumerate(zip(self._names, self.columns, strict=True))
                }
            except (ValueError, TypeError, UnicodeDecodeError) as exc:
                raise InvalidRequest(f"model '{self.config.name}': an input column does not convert: {exc}") from exc
            return pd.DataFrame(table, copy=False)
        if len(self.inputs) == 1 and self.inputs[0].name == "input":
            return next(iter(batch.inputs.values()))
        return {spec.name: batch.inputs[spec.name] for spec in self.inputs}

    def _predict(self, batch: Batch) -> Mapping[str, Any]:
        try:
            answer = self.model.predict(self._model_input(batch))
        except MlflowException as exc:  # the signature check: a missing column, a type that does not convert
            raise InvalidRequest(f"model '{self.config.name}': {exc.message}") from exc
        return self._outputs(answer, batch.rows)

    def _outputs(self, answer: Any, rows: int) -> dict[str, Any]:
        names = self._output_names
        if isinstance(answer, pd.DataFrame):
            if answer.shape[1] != len(names) and len(names) != 1:
                raise InferenceError(
                    f"model '{self.config.name}' answered {answer.shape[1]} columns for {len(names)} outputs"
                )
            if len(names) == 1 and answer.shape[1] != 1:
                result = {names[0]: answer.to_numpy()}
            else:
                result = {name: answer.iloc[:, i].to_numpy() for i, name in enumerate(names)}
        elif isinstance(answer, Mapping):
            result = {str(key): np.asarray(value) for key, value in answer.items()}
            if len(result) == 1 and len(names) == 1:
                result = {names[0]: next(iter(result.values()))}
        elif len(names) == 1:
            result = {names[0]: answer.to_numpy() if isinstance(answer, pd.Series) else np.asarray(answer)}
        else:
            raise InferenceError(f"model '{self.config.name}' answered one array for {len(names)} outputs")
        for name, values in result.items():
            if values.ndim == 0 or values.shape[0] != rows:
                raise InferenceError(
                    f"model '{self.config.name}' answered {values.shape[0] if values.ndim else 0} rows of "
                    f"'{name}' for {rows}"
                )
        return result

    def _unload(self) -> None:
        self.model = None
