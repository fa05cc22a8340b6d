"""The one base class every runtime implements: `load()`, `predict(batch)`, `unload()`, all async.

The async methods run the runtime's blocking work (`_load`, `_predict`, `_unload`) on the service's inference
thread pool, so the event loop keeps answering health checks and metadata while a model computes. A runtime
states the signature it found in its artifact (`inputs`, `outputs`; empty when the artifact does not say, as
with a TorchScript module) and whether a batch of concatenated requests gives the same answers as the requests
one by one (`batchable`), and may cap the rows of a coalesced call (`max_batch_rows`) or ask for a failed
coalesced call to be retried request by request (`isolate_failures`).
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from concurrent.futures import Executor
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from scoring_services.errors import ModelLoadError
from scoring_services.runtimes.processes import MAX_PROCESSES, PROCESSES, WorkerProcesses
from scoring_services.types import Array, Batch, ModelConfig, Scalar, TensorSpec

__all__ = ["ModelRuntime", "option"]

_T = TypeVar("_T")


def option(config: ModelConfig, name: str, default: _T, kind: type[_T]) -> _T:
    """An option of the model's `options` map, type-checked (ints are accepted where floats are expected)."""
    value: Scalar | None = config.options.get(name)
    if value is None:
        return default
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return kind(value)  # type: ignore[call-arg]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ModelLoadError(f"model '{config.name}': option '{name}' must be a {kind.__name__} (got {value!r})")
    return value


class ModelRuntime(ABC):
    """Serves one model. Subclasses implement the blocking `_load` and `_predict` (and `_unload` if needed)."""

    #: The IR's `Model.runtime` name.
    name: ClassVar[str]
    #: Pickle-based formats run code when loaded: they refuse to load without a sha256 to check first.
    requires_sha256: ClassVar[bool] = False

    def __init__(self, config: ModelConfig, path: Path, executor: Executor) -> None:
        self.config = config
        self.path = path
        self.executor = executor
        #: The signature found in the artifact (set by `_load`); empty means "as the configuration declares".
        self.inputs: tuple[TensorSpec, ...] = ()
        self.outputs: tuple[TensorSpec, ...] = ()
        #: Whether requests may be concatenated along axis 0 into one call and the result split back.
        self.batchable = True
        #: The most rows one coalesced call may hold (None: the model's `maxBatchSize` alone decides).
        self.max_batch_rows: int | None = None
        #: Whether a coalesced call that fails is retried request by request, so one bad request fails alone.
        self.isolate_failures = False
        #: The worker processes of the `processes` option, once loaded (None: calls run on the threads).
        self.workers: WorkerProcesses | None = None

    async def _run(self, fn: Callable[..., _T], *args: Any) -> _T:
        loop = asyncio.get_running_loop()
        context = contextvars.copy_context()
        return await loop.run_in_executor(self.executor, functools.partial(context.run, fn, *args))

    async def load(self) -> None:
        if self.requires_sha256 and self.config.sha256 is None:
            raise ModelLoadError(
                f"model '{self.config.name}': runtime '{self.name}' unpickles its artifact, which runs code; "
                "give its sha256 so it can be checked first"
            )
        count = option(self.config, PROCESSES, 0, int)
        if not 0 <= count <= MAX_PROCESSES:
            raise ModelLoadError(
                f"model '{self.config.name}': option '{PROCESSES}' must be 0 to {MAX_PROCESSES} (got {count})"
            )
        if count and type(self).predict is not ModelRuntime.predict:
            raise ModelLoadError(
                f"model '{self.config.name}': runtime '{self.name}' cannot run its calls in worker processes "
                f"(option '{PROCESSES}')"
            )
        await self._run(self._load)
        if count:
            workers = WorkerProcesses(self, count)
            try:
                await workers.start()
            except BaseException:
                await self._run(self._unload)
                raise
            self.workers = workers

    async def predict(self, batch: Batch) -> Mapping[str, Any]:
        """Outputs by the runtime's names, each with the batch's rows along axis 0."""
        if self.workers is not None:
            return await self.workers.predict(batch)
        return await self._run(self._predict, batch)

    async def unload(self) -> None:
        workers, self.workers = self.workers, None
        if workers is not None:
            await workers.stop()
        await self._run(self._unload)

    def check(self, inputs: Mapping[str, Array], parameters: Mapping[str, Any]) -> None:  # noqa: B027
        """Refuse a request before it is queued (raise `InvalidRequest`); runs on the event loop, keep it cheap."""

    @abstractmethod
    def _load(self) -> None: ...

    @abstractmethod
    def _predict(self, batch: Batch) -> Mapping[str, Any]: ...

    def _unload(self) -> None:  # noqa: B027
        """Drop references to the model; the default is enough for in-process Python objects."""
