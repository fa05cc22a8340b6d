"""The models a service knows, their states, and loading/unloading them (the repository extension's core).

A model is configured once (from the IR via a values document, or from the command line) and then moves
between UNAVAILABLE, LOADING, READY, UNLOADING and back; a failed load leaves it UNAVAILABLE with the reason.
Loading resolves the URI (downloading http(s) artifacts), instantiates the runtime, lets it load off the event
loop, binds the declared signature to the one the artifact has, and starts the model's batcher.

Binding names: a declared input or output is bound to the artifact's tensor of the same name; when both sides
have exactly one, they are bound whatever their names (an IR input `input` to skl2onnx's `X`). A runtime that
cannot tell its signature (TorchScript, python modules) serves the declared one as is.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Final

from scoring_services.artifacts import resolve_uri
from scoring_services.batching import Batcher, DirectCaller, Predictor
from scoring_services.codecs import DATATYPES
from scoring_services.errors import ModelLoadError, ModelNotFound, ScoringError
from scoring_services.metrics import ModelMetrics, ScoringMetrics
from scoring_services.runtimes import runtime_class
from scoring_services.runtimes.base import ModelRuntime, option
from scoring_services.settings import ScoringSettings
from scoring_services.signatures import bind
from scoring_services.types import ModelConfig, TensorSpec

__all__ = ["ALLOWED", "UNLOADED", "ModelEntry", "ModelRepository", "ModelState", "transition"]

log = logging.getLogger(__name__)
#: The reason of a model unloaded on purpose (it does not make the server unready).
UNLOADED: Final = "unloaded"
ALLOW_NON_FINITE: Final = "allowNonFinite"
"""The model option (any runtime) that lets NaN and infinities reach the model; by default they are a 400."""


class ModelState(StrEnum):
    """The repository extension's model states (the names Triton's index reports)."""

    UNAVAILABLE = "UNAVAILABLE"
    LOADING = "LOADING"
    READY = "READY"
    UNLOADING = "UNLOADING"


#: Every allowed state change; anything else is a bug, not a user error.
ALLOWED: Final[dict[ModelState, frozenset[ModelState]]] = {
    ModelState.UNAVAILABLE: frozenset({ModelState.LOADING}),
    ModelState.LOADING: frozenset({ModelState.READY, ModelState.UNAVAILABLE}),
    ModelState.READY: frozenset({ModelState.UNLOADING}),
    ModelState.UNLOADING: frozenset({ModelState.UNAVAILABLE}),
}


def transition(entry: ModelEntry, state: ModelState, reason: str = "") -> None:
    """Move a model to `state` (with the reason shown by the repository index)."""
    if state not in ALLOWED[entry.state]:
        raise RuntimeError(f"model '{entry.name}': {entry.state.value} -> {state.value} is not a model transition")
    entry.state, entry.reason = state, reason


@dataclass(slots=True)
class ModelEntry:
    config: ModelConfig
    metrics: ModelMetrics
    state: ModelState = ModelState.UNAVAILABLE
    reason: str = ""
    runtime: ModelRuntime | None = None
    predictor: Predictor | None = None
    #: The served signature (declared, else the artifact's) and its binding to the runtime's names.
    inputs: tuple[TensorSpec, ...] = ()
    outputs: tuple[TensorSpec, ...] = ()
    input_names: dict[str, str] = field(default_factory=dict)
    output_names: dict[str, str] = field(default_factory=dict)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def ready(self) -> bool:
        return self.state is ModelState.READY

    def signature(self) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
        if self.ready:
            return self.inputs, self.outputs
        return self.config.inputs, self.config.outputs


def _bind(model: str, kind: str, declared: tuple[TensorSpec, ...], found: tuple[TensorSpec, ...]) -> dict[str, str]:
    binding = bind(declared, found)
    if binding is not None:
        for name, bound in binding.items():
            if name != bound:
                log.info("model '%s': %s '%s' is bound to the artifact's '%s'", model, kind, name, bound)
        return binding
    names = {spec.name for spec in found}
    missing = ", ".join(spec.name for spec in declared if spec.name not in names)
    raise ModelLoadError(
        f"model '{model}': declared {kind}(s) {missing} not found in the artifact, which has {', '.join(sorted(names))}"
    )


def _describe(specs: Iterable[TensorSpec]) -> str:
    return ", ".join(f"{s.name} {s.datatype}{list(s.shape)}" for s in specs)


class ModelRepository:
    def __init__(
        self, configs: Iterable[ModelConfig], settings: ScoringSettings, executor: Executor, metrics: ScoringMetrics
    ) -> None:
        self.settings = settings
        self.executor = executor
        self.entries: dict[str, ModelEntry] = {}
        for config in configs:
            if config.name in self.entries:
                raise ModelLoadError(f"model '{config.name}' is configured twice")
            for spec in (*config.inputs, *config.outputs):
                if spec.datatype not in DATATYPES:
                    raise ModelLoadError(f"model '{config.name}': '{spec.name}' has unknown datatype {spec.datatype}")
            self.entries[config.name] = ModelEntry(config, metrics.model(config.name))

    def get(self, name: str) -> ModelEntry:
        entry = self.entries.get(name)
        if entry is None:
            raise ModelNotFound(f"model '{name}' is not served here")
        return entry

    async def load(self, name: str) -> ModelEntry:
        """Load (or reload) a model; on failure it stays UNAVAILABLE with the reason and `ModelLoadError` is raised."""
        entry = self.get(name)
        async with entry.lock:
            if entry.state is ModelState.READY:
                await self._unload(entry)
            transition(entry, ModelState.LOADING)
            started = time.perf_counter()
            try:
                await self._load(entry)
            except ScoringError as exc:
                transition(entry, ModelState.UNAVAILABLE, exc.message)
                log.error("model '%s' failed to load: %s", name, exc.message)
                raise ModelLoadError(exc.message) from exc
            except Exception as exc:
                transition(entry, ModelState.UNAVAILABLE, f"{type(exc).__name__}: {exc}")
                log.exception("model '%s' failed to load", name)
                raise ModelLoadError(f"model '{name}' failed to load: {entry.reason}") from exc
            transition(entry, ModelState.READY)
            cfg = entry.config
            batching = (
                f"batching up to {entry.predictor.max_batch_size} rows / {cfg.batching.max_latency_ms:g} ms"
                if isinstance(entry.predictor, Batcher)
                else "no batching"
            )
            log.info(
                "loaded model '%s' (runtime %s, version %s) from %s in %.2fs; inputs: %s; outputs: %s; %s",
                name,
                cfg.runtime,
                cfg.version,
                entry.runtime.path if entry.runtime else cfg.uri,
                time.perf_counter() - started,
                _describe(entry.inputs),
                _describe(entry.outputs),
                batching,
            )
            return entry

    async def _load(self, entry: ModelEntry) -> None:
        cfg = entry.config
        cls = runtime_class(cfg.runtime)
        option(cfg, ALLOW_NON_FINITE, False, bool)  # a load error when it is not true or false
        loop = asyncio.get_running_loop()
        path, _ = await loop.run_in_executor(
            self.executor,
            lambda: resolve_uri(
                cfg.uri,
                sha256=cfg.sha256,
                model_store=self.settings.model_store,
                cache_dir=self.settings.cache_dir,
                timeout_s=self.settings.download_timeout_s,
                max_unpacked_bytes=self.settings.max_unpacked_bytes,
                credentials=cfg.credentials,
            ),
        )
        runtime = cls(cfg, path, self.executor)
        await runtime.load()
        try:
            in_map = _bind(cfg.name, "input", cfg.inputs, runtime.inputs)
            out_map = _bind(cfg.name, "output", cfg.outputs, runtime.outputs)
            inputs = cfg.inputs or runtime.inputs
            outputs = cfg.outputs or runtime.outputs
            if not inputs or not outputs:
                raise ModelLoadError(
                    f"model '{cfg.name}': the {cfg.runtime} artifact does not tell its "
                    f"{'inputs' if not inputs else 'outputs'}: declare them"
                )
        except BaseException:
            await runtime.unload()
            raise
        batching = cfg.batching
        predictor: Predictor
        if batching.enabled and self.settings.batching and runtime.batchable:
            predictor = Batcher(
                runtime,
                cfg.name,
                entry.metrics,
                max_batch_size=batching.max_batch_size,
                max_latency_ms=batching.max_latency_ms,
                # With worker processes, one call in flight per worker (each computes on its own core).
                concurrency=max(self.settings.batch_concurrency, runtime.workers.count if runtime.workers else 0),
            )
        else:
            predictor = DirectCaller(runtime, cfg.name, entry.metrics)
        predictor.start()
        entry.runtime, entry.predictor = runtime, predictor
        entry.inputs, entry.outputs = inputs, outputs
        entry.input_names, entry.output_names = in_map, out_map

    async def unload(self, name: str) -> None:
        entry = self.get(name)
        async with entry.lock:
            await self._unload(entry)

    async def _unload(self, entry: ModelEntry) -> None:
        if entry.state is not ModelState.READY:
            return
        transition(entry, ModelState.UNLOADING)
        predictor, runtime = entry.predictor, entry.runtime
        entry.predictor = entry.runtime = None
        try:
            if predictor is not None:
                await predictor.stop()
            if runtime is not None:
                await runtime.unload()
        finally:
            transition(entry, ModelState.UNAVAILABLE, UNLOADED)
        log.info("unloaded model '%s'", entry.name)

    async def unload_all(self) -> None:
        for name in list(self.entries):
            await self.unload(name)
