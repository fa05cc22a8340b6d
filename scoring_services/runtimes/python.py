"""Python runtime: a user module with `load(path)` and `predict(batch)`, in the artifact folder.

The artifact is a folder holding `model.py` (option `module` names another file) or a single `.py` file.
`load(path)` is called once with the folder; `predict(batch)` gets a dict of numpy arrays (inputs by declared
name, rows along axis 0) and returns a dict of array-likes (outputs by name, same rows). The module may state
its signature as `INPUTS` and `OUTPUTS`, lists of `{"name", "datatype", "shape"}`; the model's declared
signature wins. `BATCHABLE = False` in the module turns batching off for it (outputs that are not per row).
The module is imported under a private name, so two models may both ship a `model.py`. `predict` may run on
two threads at once (two full batches in flight, `MODELOPS_SCORING_BATCH_CONCURRENCY`): keep it free of
unguarded shared mutable state, or set that to 1.
"""

from __future__ import annotations

import importlib.util
import itertools
from collections.abc import Mapping
from types import ModuleType
from typing import Any

from scoring_services.artifacts import verify
from scoring_services.errors import InferenceError, ModelLoadError
from scoring_services.runtimes.base import ModelRuntime, option
from scoring_services.types import Batch, TensorSpec

__all__ = ["PythonRuntime"]

_counter = itertools.count()


def _specs(raw: object, where: str) -> tuple[TensorSpec, ...]:
    if raw is None:
        return ()
    try:
        return tuple(TensorSpec(str(t["name"]), str(t["datatype"]), tuple(int(d) for d in t["shape"])) for t in raw)  # type: ignore[attr-defined]
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelLoadError(f"{where} must be a list of {{'name', 'datatype', 'shape'}}: {exc}") from exc


class PythonRuntime(ModelRuntime):
    name = "python"

    def _load(self) -> None:
        cfg = self.config
        verify(self.path, cfg.sha256)
        if self.path.is_dir():
            folder = self.path
            source = folder / f"{option(cfg, 'module', 'model', str)}.py"
        else:
            folder, source = self.path.parent, self.path
        if not source.is_file():
            raise ModelLoadError(f"model '{cfg.name}': {source} does not exist")
        spec = importlib.util.spec_from_file_location(f"modelops_user_model_{next(_counter)}", source)
        if spec is None or spec.loader is None:
            raise ModelLoadError(f"model '{cfg.name}': cannot import {source}")
        module = importlib.util.module_from_spec(spec)
        try:
            spec.loader.exec_module(module)
        except Exception as exc:
            raise ModelLoadError(f"model '{cfg.name}': importing {source.name} failed: {exc!r}") from exc
        for function in ("load", "predict"):
            if not callable(getattr(module, function, None)):
                raise ModelLoadError(f"model '{cfg.name}': {source.name} has no function {function}()")
        try:
            module.load(str(folder))
        except Exception as exc:
            raise ModelLoadError(f"model '{cfg.name}': {source.name}: load() failed: {exc!r}") from exc
        self.module: ModuleType | None = module
        self.inputs = _specs(getattr(module, "INPUTS", None), f"{source.name}: INPUTS")
        self.outputs = _specs(getattr(module, "OUTPUTS", None), f"{source.name}: OUTPUTS")
        self.batchable = bool(getattr(module, "BATCHABLE", True))

    def _predict(self, batch: Batch) -> Mapping[str, Any]:
        if self.module is None:
            raise InferenceError(f"model '{self.config.name}' is unloaded")
        result = self.module.predict(dict(batch.inputs))
        if not isinstance(result, Mapping):
            raise InferenceError(
                f"model '{self.config.name}': predict() returned {type(result).__name__}, not a dict of outputs"
            )
        return result

    def _unload(self) -> None:
        self.module = None
