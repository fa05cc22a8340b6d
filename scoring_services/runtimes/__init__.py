"""Runtimes by the IR's `Model.runtime` name. Each lives in its own module, imported only when a model uses it,
so a service needs only the extra (`modelops[onnx]`, `[torch]`, ...) of the runtimes it serves."""

from __future__ import annotations

import importlib
from typing import Final

from scoring_services.errors import ModelLoadError
from scoring_services.runtimes.base import ModelRuntime

__all__ = ["RUNTIMES", "ModelRuntime", "runtime_class"]

#: runtime name -> (module, class, the pip extra that brings its dependencies)
RUNTIMES: Final[dict[str, tuple[str, str, str]]] = {
    "sklearn": ("scoring_services.runtimes.sklearn", "SklearnRuntime", "modelops"),
    "onnx": ("scoring_services.runtimes.onnx", "OnnxRuntime", "modelops[onnx]"),
    "torch": ("scoring_services.runtimes.torch", "TorchRuntime", "modelops[torch]"),
    "transformers": ("scoring_services.runtimes.transformers", "TransformersRuntime", "modelops[transformers]"),
    "pmml": ("scoring_services.runtimes.pmml", "PmmlRuntime", "modelops[pmml]"),
    "python": ("scoring_services.runtimes.python", "PythonRuntime", "modelops"),
    "mlflow": ("scoring_services.runtimes.mlflow", "MlflowRuntime", "modelops[mlflow]"),
}


def runtime_class(name: str) -> type[ModelRuntime]:
    """The runtime class registered under `name`; `ModelLoadError` if unknown or its extra is not installed."""
    entry = RUNTIMES.get(name)
    if entry is None:
        raise ModelLoadError(f"unknown runtime '{name}' (known: {', '.join(RUNTIMES)})")
    module_name, class_name, extra = entry
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ModelLoadError(
            f"runtime '{name}' needs {exc.name or 'a missing package'}: pip install '{extra}'"
        ) from exc
    cls: type[ModelRuntime] = getattr(module, class_name)
    return cls
