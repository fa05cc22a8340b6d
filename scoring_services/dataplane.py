"""The transport-neutral core of the Open Inference Protocol: what every route delegates to.

`DataPlane` answers health, metadata and readiness, runs inference (decode, check against the served signature,
submit to the model's batcher, encode) and the repository extension. Whatever the runtime, NaN and infinities
are refused unless the model's option `allowNonFinite` is true, and an empty batch (0 rows) is answered 200
with empty outputs of the declared shapes without calling the model. It knows nothing about HTTP beyond
returning bodies and raising `ScoringError`s that carry their status; tests call it directly.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import logging
import math
import time
from collections.abc import Iterable
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any

import numpy as np

from scoring_services.codecs import (
    DATATYPES,
    EncodedOutput,
    RequestedOutput,
    decode_infer_request,
    encode_infer_response,
)
from scoring_services.errors import (
    InferenceError,
    InvalidRequest,
    ModelLoadError,
    ModelNotFound,
    ModelNotReady,
    ScoringError,
)
from scoring_services.metrics import ScoringMetrics
from scoring_services.repository import ALLOW_NON_FINITE, UNLOADED, ModelEntry, ModelRepository, ModelState
from scoring_services.settings import ScoringSettings
from scoring_services.types import Array, ModelConfig, TensorSpec

__all__ = ["SERVER_NAME", "DataPlane", "InferResult"]

log = logging.getLogger(__name__)
SERVER_NAME = "modelops-scoring"


def _version() -> str:
    try:
        return importlib.metadata.version("modelops")
    except importlib.metadata.PackageNotFoundError:  # run from a source tree that is not installed
        return "0.0.0"


SERVER_VERSION = _version()
EXTENSIONS = ["binary_tensor_data", "model_repository"]


@dataclass(frozen=True, slots=True)
class InferResult:
    body: bytes
    #: Length of the JSON header when binary outputs follow it, else None.
    header_length: int | None


def _shape_fits(shape: tuple[int, ...], declared: tuple[int, ...]) -> bool:
    if len(shape) != len(declared):
        return False
    return all(want == -1 or want == got for got, want in zip(shape, declared, strict=True))


def _widen(array: Array, datatype: str, spec: TensorSpec) -> Array:
    """An input of another datatype than declared, converted where no value can change (INT32 -> INT64,
    FP32 -> FP64, UINT8 -> FP32...); anything else (narrowing, BYTES <-> numbers) is a 400."""
    source, target = DATATYPES[datatype], DATATYPES[spec.datatype]
    if "O" in (source.kind, target.kind) or not np.can_cast(source, target, "safe"):
        raise InvalidRequest(f"input '{spec.name}' has datatype {datatype}; the model expects {spec.datatype}")
    return array.astype(target)


def _output_shape(array: Array, spec: TensorSpec, model: str) -> Array:
    """The output in its declared shape: as it is, or reshaped when only unit dimensions differ ((n, 1) for
    [-1]); anything else means the model and its metadata disagree, which the client must not see as data."""
    if _shape_fits(array.shape, spec.shape):
        return array
    rows = array.shape[0] if array.ndim else 1
    trailing = list(spec.shape[1:])
    units_only = [d for d in array.shape[1:] if d != 1] == [d for d in trailing if d != 1]
    if -1 not in trailing and units_only and array.size == rows * math.prod(trailing):
        return array.reshape((rows, *trailing))
    raise InferenceError(
        f"model '{model}' returned output '{spec.name}' with shape {list(array.shape)}; "
        f"its metadata declares {list(spec.shape)}"
    )


def _empty_output(spec: TensorSpec) -> Array:
    """The answer to an empty batch: no rows, the declared trailing dimensions (a variable one is 0)."""
    shape = (0, *(max(dim, 0) for dim in spec.shape[1:]))
    return np.empty(shape, dtype=DATATYPES[spec.datatype])


def _output_array(array: Array, spec: TensorSpec, model: str) -> Array:
    array = _output_shape(array, spec, model)
    if spec.datatype == "BYTES":
        if array.dtype.kind != "O":
            if array.dtype.kind not in "SU":
                raise InferenceError(f"model '{model}' returned {array.dtype} for BYTES output '{spec.name}'")
            array = array.astype(np.object_)
        return array
    dtype = DATATYPES[spec.datatype]
    if array.dtype != dtype:
        try:
            array = array.astype(dtype)
        except (ValueError, TypeError) as exc:
            raise InferenceError(
                f"model '{model}' returned {array.dtype} for output '{spec.name}', not convertible to {spec.datatype}"
            ) from exc
    return array


class DataPlane:
    def __init__(
        self,
        configs: Iterable[ModelConfig],
        settings: ScoringSettings,
        executor: Executor,
        metrics: ScoringMetrics | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = metrics or ScoringMetrics()
        self.repository = ModelRepository(configs, settings, executor, self.metrics)
        self.started = False

    # ------------------------------------------------------------------ lifecycle

    async def load_all(self) -> None:
        """Load every configured model (at startup); raises the first `ModelLoadError` after trying them all."""
        failures: list[ModelLoadError] = []
        for name in list(self.repository.entries):
            try:
                await self.repository.load(name)
            except ModelLoadError as exc:
                failures.append(exc)
        self.started = True
        if failures:
            raise failures[0]

    async def close(self) -> None:
        await self.repository.unload_all()

    # ------------------------------------------------------------------ health and metadata

    def live(self) -> bool:
        return True

    def ready(self) -> bool:
        """Startup loading is over and every model is loaded, except those unloaded on purpose."""
        return self.started and all(
            entry.ready or (entry.state is ModelState.UNAVAILABLE and entry.reason == UNLOADED)
            for entry in self.repository.entries.values()
        )

    def server_metadata(self) -> dict[str, Any]:
        return {"name": SERVER_NAME, "version": SERVER_VERSION, "extensions": EXTENSIONS}

    def entry(self, name: str, version: str | None = None) -> ModelEntry:
        entry = self.repository.get(name)
        if version is not None and version != entry.config.version:
            raise ModelNotFound(
                f"model '{name}' has no version '{version}' (it serves version '{entry.config.version}')"
            )
        return entry

    def model_metadata(self, name: str, version: str | None = None) -> dict[str, Any]:
        entry = self.entry(name, version)
        inputs, outputs = entry.signature()
        return {
            "name": name,
            "versions": [entry.config.version],
            "platform": entry.config.runtime,
            "inputs": [spec.to_json() for spec in inputs],
            "outputs": [spec.to_json() for spec in outputs],
        }

    def model_ready(self, name: str, version: str | None = None) -> bool:
        return self.entry(name, version).ready

    # ------------------------------------------------------------------ repository extension

    def repository_index(self, ready_only: bool = False) -> list[dict[str, str]]:
        return [
            {"name": e.name, "version": e.config.version, "state": e.state.value, "reason": e.reason}
            for e in self.repository.entries.values()
            if not ready_only or e.state is ModelState.READY
        ]

    async def load_model(self, name: str) -> None:
        await self.repository.load(name)

    async def unload_model(self, name: str) -> None:
        await self.repository.unload(name)

    # ------------------------------------------------------------------ inference

    async def infer(self, name: str, version: str | None, body: bytes, header_length: int | None = None) -> InferResult:
        entry = self.entry(name, version)
        metrics = entry.metrics
        metrics.requests.inc()
        started = time.perf_counter()
        try:
            result = await self._infer(entry, body, header_length)
        except ScoringError as exc:
            metrics.error(exc.http_status)
            if exc.http_status >= 500:
                log.error("inference on model '%s' failed: %s", name, exc.message)
            raise
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            # the last line of defence: log it, answer 500, keep serving
            metrics.error(500)
            log.exception("inference on model '%s' failed", name)
            raise InferenceError(f"inference on model '{name}' failed: {type(exc).__name__}") from exc
        metrics.latency.observe(time.perf_counter() - started)
        return result

    async def _infer(self, entry: ModelEntry, body: bytes, header_length: int | None) -> InferResult:
        if not entry.ready:
            raise ModelNotReady(f"model '{entry.name}' is not ready ({entry.state.value.lower()})")
        allow_non_finite = entry.config.options.get(ALLOW_NON_FINITE) is True
        request = decode_infer_request(body, header_length, allow_non_finite=allow_non_finite)
        given = request.inputs
        inputs: dict[str, Array] = {}
        rows = -1
        if len(entry.inputs) == 1 and len(given) == 1 and entry.inputs[0].name not in given:
            # One input each side: the request's name is taken for the model's (as MLServer and KServe's
            # sklearn server do), so their clients work unchanged; metadata still names the declared input.
            (client_name,) = given
            declared = entry.inputs[0].name
            given = {declared: given[client_name]}
            request.datatypes[declared] = request.datatypes[client_name]
        for spec in entry.inputs:
            array = given.get(spec.name)
            if array is None:
                raise InvalidRequest(
                    f"input '{spec.name}' is missing (model '{entry.name}' takes "
                    f"{', '.join(s.name for s in entry.inputs)})"
                )
            datatype = request.datatypes[spec.name]
            if datatype != spec.datatype:
                array = _widen(array, datatype, spec)
            if not _shape_fits(array.shape, spec.shape):
                raise InvalidRequest(
                    f"input '{spec.name}' has shape {list(array.shape)}; the model expects {list(spec.shape)} "
                    "(-1: any size)"
                )
            count = int(array.shape[0]) if array.ndim else 1
            if rows not in (-1, count):
                raise InvalidRequest(f"input '{spec.name}' has {count} rows; the other inputs have {rows}")
            rows = count
            inputs[entry.input_names[spec.name]] = array
        if len(given) != len(entry.inputs):
            known = {spec.name for spec in entry.inputs}
            unknown = ", ".join(name for name in given if name not in known)
            raise InvalidRequest(f"unknown input(s) {unknown} (model '{entry.name}' takes {', '.join(sorted(known))})")

        wanted: list[tuple[TensorSpec, bool]]
        if request.outputs is None:
            wanted = [(spec, request.binary_outputs) for spec in entry.outputs]
        else:
            wanted = self._requested(entry, request.outputs)
        names = frozenset(entry.output_names[spec.name] for spec, _ in wanted)

        runtime, predictor = entry.runtime, entry.predictor
        if runtime is None or predictor is None:
            raise ModelNotReady(f"model '{entry.name}' is not ready")
        if rows == 0:  # an empty batch: every runtime answers it alike, without calling (or checking) the model
            result = {entry.output_names[spec.name]: _empty_output(spec) for spec, _ in wanted}
        else:
            runtime.check(inputs, request.parameters)
            result = await predictor.submit(inputs, names, request.parameters, rows)

        encoded: list[EncodedOutput] = []
        for spec, binary in wanted:
            array = result.get(entry.output_names[spec.name])
            if array is None:
                raise InferenceError(f"model '{entry.name}' did not return output '{spec.name}'")
            encoded.append(EncodedOutput(spec.name, spec.datatype, _output_array(array, spec, entry.name), binary))
        body_out, length = encode_infer_response(entry.name, entry.config.version, request.id, encoded)
        return InferResult(body_out, length)

    @staticmethod
    def _requested(entry: ModelEntry, outputs: list[RequestedOutput]) -> list[tuple[TensorSpec, bool]]:
        by_name = {spec.name: spec for spec in entry.outputs}
        wanted: list[tuple[TensorSpec, bool]] = []
        for out in outputs:
            spec = by_name.get(out.name)
            if spec is None:
                raise InvalidRequest(f"unknown output '{out.name}' (model '{entry.name}' has {', '.join(by_name)})")
            wanted.append((spec, out.binary))
        if not wanted:
            raise InvalidRequest("'outputs' is empty: leave it out to get every output")
        return wanted
