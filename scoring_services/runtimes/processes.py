"""Model calls in worker processes: the `processes` option, for models whose calls hold the GIL.

A scikit-learn gradient-boosting model, a PMML evaluator or a plain Python model computes in Python or in C
code that keeps the GIL, so the service's inference threads take turns on one core however many there are.
With the model option `processes: N`, N worker processes (started with `spawn`, so no lock or thread of the
service is inherited) each load the same artifact with the same runtime class, and every model call goes to
one of them: N calls compute at once on N cores. The service keeps its own copy of the model too (its
signature and the request checks come from it), so memory is N + 1 copies of the model.

The batch and the outputs cross a pipe pickled (a 1000 x 30 FP64 batch is 240 kB, about 0.1 ms each way), so
this pays for calls that cost milliseconds, not for single rows. An exception raised by the model in a worker
is raised again here as it was (a ValueError stays a 400); a worker that dies (a crash, the OOM killer) fails
the calls it had, and the pool is started again for the next call.
"""

from __future__ import annotations

import asyncio
import dataclasses
import importlib
import logging
import multiprocessing
from collections.abc import Mapping
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from scoring_services.errors import InferenceError, ModelLoadError
from scoring_services.types import Batch, ModelConfig

if TYPE_CHECKING:
    from scoring_services.runtimes.base import ModelRuntime

__all__ = ["MAX_PROCESSES", "PROCESSES", "WorkerProcesses"]

log = logging.getLogger(__name__)

#: The model option that turns worker processes on (0, the default: calls run on the service's threads).
PROCESSES: Final = "processes"
MAX_PROCESSES: Final = 64

# In a worker process: the runtime it loaded, or why it could not.
_runtime: ModelRuntime | None = None
_load_error: str | None = None


def _load_in_worker(module: str, qualname: str, config: ModelConfig, path: Path) -> None:
    """The pool's initializer: load the model once per worker; a failure is kept and reported by every call."""
    global _runtime, _load_error
    try:
        cls = getattr(importlib.import_module(module), qualname)
        runtime: ModelRuntime = cls(config, path, ThreadPoolExecutor(max_workers=1))
        runtime._load()
        _runtime = runtime
    except BaseException as exc:  # reported to the service by every call
        reason = str(exc) if isinstance(exc, ModelLoadError) else f"{type(exc).__name__}: {exc}"
        _load_error = reason if reason.startswith("model '") else f"model '{config.name}': {reason}"


def _loaded() -> str | None:
    return _load_error


def _predict_in_worker(batch: Batch) -> Mapping[str, Any]:
    if _runtime is None:
        raise ModelLoadError(f"{_load_error} (in a worker process)")
    return _runtime._predict(batch)


class WorkerProcesses:
    """N worker processes serving one model's calls (see the module docstring)."""

    def __init__(self, runtime: ModelRuntime, count: int) -> None:
        self.name = runtime.config.name
        self.count = count
        cls = type(runtime)
        # The workers load the same model without starting workers of their own.
        options = {k: v for k, v in runtime.config.options.items() if k != PROCESSES}
        config = dataclasses.replace(runtime.config, options=options)
        self._initargs = (cls.__module__, cls.__qualname__, config, runtime.path)
        self._pool: ProcessPoolExecutor | None = None

    def _new_pool(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(
            max_workers=self.count,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_load_in_worker,
            initargs=self._initargs,
        )

    async def start(self) -> None:
        """Start the workers and wait until they have loaded the model; `ModelLoadError` if they cannot."""
        loop = asyncio.get_running_loop()
        pool = self._new_pool()
        try:
            # As many calls as workers, submitted at once: the pool starts a worker for each.
            errors = await asyncio.gather(*(loop.run_in_executor(pool, _loaded) for _ in range(self.count)))
        except BrokenProcessPool as exc:
            pool.shutdown(wait=False, cancel_futures=True)
            raise ModelLoadError(f"model '{self.name}': its worker processes died while loading it: {exc}") from exc
        error = next((e for e in errors if e is not None), None)
        if error is not None:
            pool.shutdown(wait=False, cancel_futures=True)
            raise ModelLoadError(f"{error} (in a worker process)")
        self._pool = pool
        log.info("model '%s': %d worker processes loaded it", self.name, self.count)

    async def predict(self, batch: Batch) -> Mapping[str, Any]:
        pool = self._pool
        if pool is None:
            pool = self._pool = self._new_pool()
        try:
            return await asyncio.get_running_loop().run_in_executor(pool, _predict_in_worker, batch)
        except BrokenProcessPool as exc:
            if self._pool is pool:
                self._pool = None  # the next call starts a new pool
                pool.shutdown(wait=False, cancel_futures=True)
                log.error("model '%s': a worker process died; its pool starts again on the next call", self.name)
            raise InferenceError(
                f"model '{self.name}': a worker process died during the call (killed, or out of memory)"
            ) from exc

    async def stop(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            await asyncio.to_thread(pool.shutdown, wait=True, cancel_futures=True)
