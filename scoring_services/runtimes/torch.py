"""PyTorch runtime: TorchScript modules (`torch.jit.save`) and `torch.export` programs (`.pt2`), on CPU.

Calls run under `torch.inference_mode()`, with the inputs passed positionally in declared order. An exported
program tells its signature (dtypes, static and dynamic dimensions; outputs are named `output`, or `output_0`,
`output_1`... for several); a TorchScript module does not, so its inputs and outputs must be declared.
A tensor result is the first declared output, a tuple/list maps positionally, a dict by name.

Options: `format` (`torchscript` or `export`; default by file suffix, `.pt2` meaning export), `threads` (int:
`torch.set_num_threads`, which is process-wide in PyTorch).
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from typing import Any, Final

import numpy as np
import torch

from scoring_services.artifacts import read_verified
from scoring_services.errors import InferenceError, ModelLoadError
from scoring_services.runtimes.base import ModelRuntime, option
from scoring_services.types import Batch, TensorSpec

__all__ = ["TorchRuntime"]

_TYPES: Final[dict[torch.dtype, str]] = {
    torch.bool: "BOOL",
    torch.uint8: "UINT8",
    torch.int8: "INT8",
    torch.int16: "INT16",
    torch.int32: "INT32",
    torch.int64: "INT64",
    torch.float16: "FP16",
    torch.float32: "FP32",
    torch.float64: "FP64",
}


def _output_names(count: int) -> list[str]:
    return ["output"] if count == 1 else [f"output_{i}" for i in range(count)]


class TorchRuntime(ModelRuntime):
    name = "torch"
    requires_sha256 = True

    def _load(self) -> None:
        cfg = self.config
        if any(spec.datatype == "BYTES" for spec in cfg.inputs):
            raise ModelLoadError(f"model '{cfg.name}': torch models take numeric tensors, not BYTES")
        data = read_verified(self.path, cfg.sha256)
        fmt = option(cfg, "format", "export" if self.path.suffix == ".pt2" else "torchscript", str)
        threads = option(cfg, "threads", 0, int)
        if threads:
            torch.set_num_threads(threads)
        try:
            if fmt == "export":
                program = torch.export.load(io.BytesIO(data))
                self.module: Any = program.module()
                self._describe(program)
            elif fmt == "torchscript":
                self.module = torch.jit.load(io.BytesIO(data), map_location="cpu")  # type: ignore[no-untyped-call]
                self.module.eval()
            else:
                raise ModelLoadError(f"model '{cfg.name}': option format must be 'torchscript' or 'export'")
        except ModelLoadError:
            raise
        except Exception as exc:  # torch raises RuntimeError, pickle errors, zip errors...
            raise ModelLoadError(f"model '{cfg.name}': torch cannot load {self.path.name} as {fmt}: {exc}") from exc
        # the runtime's own names where the program tells them (the repository binds declared names to them)
        self._output_order = [spec.name for spec in (self.outputs or cfg.outputs)] or ["output"]
        self._input_order = [spec.name for spec in self.inputs]

    def _describe(self, program: Any) -> None:
        from torch.export.graph_signature import InputKind, OutputKind

        nodes = {node.name: node for node in program.graph.nodes}
        inputs: list[TensorSpec] = []
        for spec in program.graph_signature.input_specs:
            if spec.kind != InputKind.USER_INPUT:
                continue
            value = nodes[spec.arg.name].meta.get("val")
            if not isinstance(value, torch.Tensor) or value.dtype not in _TYPES:
                self.inputs = ()
                return
            shape = tuple(d if isinstance(d, int) else -1 for d in value.shape)
            inputs.append(TensorSpec(spec.arg.name, _TYPES[value.dtype], shape))
        outputs: list[TensorSpec] = []
        user = [spec for spec in program.graph_signature.output_specs if spec.kind == OutputKind.USER_OUTPUT]
        for spec, name in zip(user, _output_names(len(user)), strict=True):
            value = nodes[spec.arg.name].meta.get("val") if spec.arg.name in nodes else None
            if isinstance(value, torch.Tensor) and value.dtype in _TYPES:
                shape = tuple(d if isinstance(d, int) else -1 for d in value.shape)
                outputs.append(TensorSpec(name, _TYPES[value.dtype], shape))
        self.inputs = tuple(inputs)
        self.outputs = tuple(outputs) if len(outputs) == len(user) else ()

    def _predict(self, batch: Batch) -> Mapping[str, Any]:
        arrays = [batch.inputs[name] for name in self._input_order] if self._input_order else batch.inputs.values()
        args = [torch.from_numpy(a if a.flags.writeable else np.array(a)) for a in arrays]
        with torch.inference_mode():
            result = self.module(*args)
        names = self._output_order
        if isinstance(result, torch.Tensor):
            return {names[0]: result.numpy()}
        if isinstance(result, tuple | list):
            if len(result) != len(names):
                raise InferenceError(
                    f"model '{self.config.name}' returned {len(result)} tensors; {len(names)} outputs are declared"
                )
            return {name: value.numpy() for name, value in zip(names, result, strict=True)}
        if isinstance(result, dict):
            return {str(name): value.numpy() for name, value in result.items()}
        raise InferenceError(f"model '{self.config.name}' returned {type(result).__name__}, not tensors")

    def _unload(self) -> None:
        self.module = None
