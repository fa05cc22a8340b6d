"""ONNX runtime: an onnxruntime `InferenceSession` on CPU; inputs and outputs come from the graph.

Options (all optional):
- `intraOpThreads` (int, default 1): threads inside one operator. One by default because the service already
  runs model calls on its own thread pool and batches requests: a session that spins a pool of its own per
  call on a small machine takes the cores the event loop needs to parse requests.
- `interOpThreads` (int, default 1), `parallelExecution` (bool, default false): parallelism across operators.
- `graphOptimizationLevel`: `disable`, `basic`, `extended` or `all` (default `all`).
Only tensor inputs and outputs are served; sequence and map outputs (e.g. skl2onnx's zipmap) are left out of
the signature (export with `zipmap: False`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

import numpy as np
import onnxruntime as ort

from scoring_services.artifacts import read_verified
from scoring_services.codecs import DATATYPES
from scoring_services.errors import InvalidRequest, ModelLoadError
from scoring_services.runtimes.base import ModelRuntime, option
from scoring_services.types import Batch, TensorSpec

__all__ = ["OnnxRuntime"]

_TYPES: Final = {
    "tensor(bool)": "BOOL",
    "tensor(uint8)": "UINT8",
    "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64",
    "tensor(int8)": "INT8",
    "tensor(int16)": "INT16",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(float16)": "FP16",
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
    "tensor(string)": "BYTES",
}
_LEVELS: Final = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


def _shape(dims: list[Any]) -> tuple[int, ...]:
    return tuple(d if isinstance(d, int) and d > 0 else -1 for d in dims) or (-1,)


class OnnxRuntime(ModelRuntime):
    name = "onnx"

    def _load(self) -> None:
        cfg = self.config
        data = read_verified(self.path, cfg.sha256)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = option(cfg, "intraOpThreads", 1, int)
        opts.inter_op_num_threads = option(cfg, "interOpThreads", 1, int)
        if option(cfg, "parallelExecution", False, bool):
            opts.execution_mode = ort.ExecutionMode.ORT_PARALLEL
        level = option(cfg, "graphOptimizationLevel", "all", str)
        if level not in _LEVELS:
            raise ModelLoadError(f"model '{cfg.name}': graphOptimizationLevel must be one of {', '.join(_LEVELS)}")
        opts.graph_optimization_level = _LEVELS[level]
        opts.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(data, sess_options=opts, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own pybind exception types
            raise ModelLoadError(f"model '{cfg.name}': onnxruntime cannot load {self.path.name}: {exc}") from exc
        self.inputs = tuple(
            TensorSpec(i.name, _TYPES[i.type], _shape(i.shape)) for i in self.session.get_inputs() if i.type in _TYPES
        )
        if len(self.inputs) != len(self.session.get_inputs()):
            raise ModelLoadError(f"model '{cfg.name}': the graph has inputs that are not tensors")
        self.outputs = tuple(
            TensorSpec(o.name, _TYPES[o.type], _shape(o.shape)) for o in self.session.get_outputs() if o.type in _TYPES
        )
        self._dtypes = {spec.name: DATATYPES[spec.datatype] for spec in self.inputs}
        self._order = [spec.name for spec in self.outputs]

    def _predict(self, batch: Batch) -> Mapping[str, Any]:
        feed: dict[str, Any] = {}
        for name, array in batch.inputs.items():
            dtype = self._dtypes.get(name)
            if dtype is not None and dtype.kind == "O":
                feed[name] = np.array(
                    [b.decode("utf-8", "replace") if isinstance(b, bytes) else b for b in array.ravel()],
                    dtype=np.object_,
                ).reshape(array.shape)
            elif dtype is not None and array.dtype != dtype:
                feed[name] = array.astype(dtype)
            else:
                feed[name] = array
        names = [name for name in self._order if name in batch.outputs]
        try:
            results = self.session.run(names, feed)
        except (ort.capi.onnxruntime_pybind11_state.InvalidArgument, ValueError) as exc:
            raise InvalidRequest(f"the model rejected the input: {exc}") from exc
        return dict(zip(names, results, strict=True))

    def _unload(self) -> None:
        del self.session
