"""Adaptive batching: concurrent requests to one model are coalesced into one model call and split back.

Per model, at most `concurrency` calls are in flight, and a second one starts only for a full batch (at least
`max_batch_size` rows waiting). Requests that arrive while a call runs wait in a queue, and the next call takes
as many of them as fit in `max_batch_size` rows; large requests still get several cores. So under load batches
grow by themselves, and an idle model answers a lone request at once: no timer holds it back. Before a call
starts, the batcher yields to the event loop for as long as requests keep arriving (requests already in socket
buffers reach the queue within a few loop turns), at most `max_latency_ms`: that catches a burst that arrives
together without taxing a request that arrives alone.

Only requests with the same trailing shapes, dtypes and parameters are coalesced (a request with a different
row width or `max_new_tokens` waits for its own call). A request larger than `max_batch_size` runs alone, whole.
A runtime may cap `max_batch_size` (`ModelRuntime.max_batch_rows`), and may ask that a coalesced call that fails
be retried request by request (`ModelRuntime.isolate_failures`), so a bad request fails alone.
Model calls run on the service's thread pool (see `ModelRuntime`), never on the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Hashable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from scoring_services.errors import InferenceError, InvalidRequest, ModelNotReady, ScoringError
from scoring_services.metrics import ModelMetrics
from scoring_services.runtimes.base import ModelRuntime
from scoring_services.types import Array, Batch, as_array

__all__ = ["Batcher", "DirectCaller", "Predictor"]

log = logging.getLogger(__name__)
#: Loop turns without a new request after which a burst is taken to be over.
_QUIET_TURNS = 3

Outputs = dict[str, Array]


def _params_key(parameters: Mapping[str, Any]) -> Hashable:
    if not parameters:
        return None
    try:
        return orjson.dumps(parameters, option=orjson.OPT_SORT_KEYS)
    except TypeError:
        return repr(sorted(parameters.items()))


async def _call(runtime: ModelRuntime, batch: Batch, model: str) -> Outputs:
    """One model call, its errors sorted into the protocol's: the client's fault (400) or the model's (500)."""
    try:
        result = await runtime.predict(batch)
    except ScoringError:
        raise
    except (ValueError, TypeError) as exc:
        raise InvalidRequest(f"the model rejected the input: {exc}") from exc
    except Exception as exc:
        log.exception("model '%s' failed on a batch of %d rows", model, batch.rows)
        raise InferenceError(f"model '{model}' failed: {type(exc).__name__}: {exc}") from exc
    return {name: as_array(value) for name, value in result.items()}


class Predictor:
    """What the data plane submits requests to: a `Batcher`, or a `DirectCaller` when batching is off."""

    async def submit(
        self, inputs: dict[str, Array], outputs: frozenset[str], parameters: Mapping[str, Any], rows: int
    ) -> Outputs:
        raise NotImplementedError

    def start(self) -> None:
        """Start background work (called on the event loop)."""

    async def stop(self) -> None:
        """Fail what is queued and stop."""


class DirectCaller(Predictor):
    """No batching: every request is one model call (still off the event loop)."""

    def __init__(self, runtime: ModelRuntime, model: str, metrics: ModelMetrics) -> None:
        self.runtime = runtime
        self.model = model
        self.metrics = metrics

    async def submit(
        self, inputs: dict[str, Array], outputs: frozenset[str], parameters: Mapping[str, Any], rows: int
    ) -> Outputs:
        self.metrics.batch_size.observe(rows)
        return await _call(self.runtime, Batch(inputs, outputs, parameters), self.model)


@dataclass(slots=True)
class _Item:
    key: Hashable
    inputs: dict[str, Array]
    outputs: frozenset[str]
    parameters: Mapping[str, Any]
    rows: int
    future: asyncio.Future[Outputs]


class Batcher(Predictor):
    def __init__(
        self,
        runtime: ModelRuntime,
        model: str,
        metrics: ModelMetrics,
        *,
        max_batch_size: int,
        max_latency_ms: float,
        concurrency: int = 1,
    ) -> None:
        self.runtime = runtime
        self.model = model
        self.metrics = metrics
        # A runtime may hold coalesced calls to fewer rows (text generation: its `generationBatchSize`).
        cap = runtime.max_batch_rows
        self.max_batch_size = max_batch_size if cap is None else max(1, min(max_batch_size, cap))
        self.max_wait = max_latency_ms / 1000.0
        self._queue: deque[_Item] = deque()
        self._wake = asyncio.Event()
        self._slots = asyncio.Semaphore(concurrency)
        self._worker: asyncio.Task[None] | None = None
        self._calls: set[asyncio.Task[None]] = set()
        self._queued_rows = 0

    def start(self) -> None:
        if self._worker is None:
            self._worker = asyncio.get_running_loop().create_task(self._run(), name=f"batcher-{self.model}")

    async def stop(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
            self._worker = None
        if self._calls:
            await asyncio.gather(*self._calls, return_exceptions=True)
        self._queued_rows = 0
        while self._queue:
            item = self._queue.popleft()
            self.metrics.queue_depth.dec()
            if not item.future.done():
                item.future.set_exception(ModelNotReady(f"model '{self.model}' was unloaded"))

    async def submit(
        self, inputs: dict[str, Array], outputs: frozenset[str], parameters: Mapping[str, Any], rows: int
    ) -> Outputs:
        if self._worker is None:
            raise ModelNotReady(f"model '{self.model}' is not ready")
        key = (tuple((name, a.dtype.str, a.shape[1:]) for name, a in inputs.items()), _params_key(parameters))
        future: asyncio.Future[Outputs] = asyncio.get_running_loop().create_future()
        self._queue.append(_Item(key, inputs, outputs, parameters, rows, future))
        self._queued_rows += rows
        self.metrics.queue_depth.inc()
        self._wake.set()
        return await future

    async def _run(self) -> None:
        queue = self._queue
        while True:
            if not queue:
                self._wake.clear()
                await self._wake.wait()
            await self._slots.acquire()
            try:
                # A second call in flight only for a full batch: partial batches wait for the running call,
                # so small requests keep coalescing while large ones use more cores.
                while self._calls and queue and self._queued_rows < self.max_batch_size:
                    self._wake.clear()
                    await self._wake.wait()
                if self.max_wait > 0 and len(queue) < self.max_batch_size:
                    await self._collect()
                items = self._take()
            except BaseException:
                self._slots.release()
                raise
            if not items:
                self._slots.release()
                continue
            task = asyncio.get_running_loop().create_task(self._call(items))
            self._calls.add(task)
            task.add_done_callback(self._call_done)

    def _call_done(self, task: asyncio.Task[None]) -> None:
        self._calls.discard(task)
        self._wake.set()

    async def _collect(self) -> None:
        """Let requests that have already arrived reach the queue; stop when they stop coming or time is up."""
        queue = self._queue
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.max_wait
        quiet = 0
        while quiet < _QUIET_TURNS and len(queue) < self.max_batch_size:
            before = len(queue)
            await asyncio.sleep(0)
            quiet = quiet + 1 if len(queue) == before else 0
            if loop.time() >= deadline:
                break

    def _take(self) -> list[_Item]:
        queue = self._queue
        if not queue:
            return []
        head = queue.popleft()
        items = [head]
        rows = head.rows
        skipped: list[_Item] = []
        while queue and rows < self.max_batch_size:
            item = queue[0]
            if item.key != head.key:
                skipped.append(queue.popleft())
                continue
            if rows + item.rows > self.max_batch_size:
                break
            items.append(queue.popleft())
            rows += item.rows
        queue.extendleft(reversed(skipped))
        self._queued_rows -= rows
        self.metrics.queue_depth.dec(len(items))
        return items

    async def _call_alone(self, items: list[_Item]) -> None:
        """After a coalesced call failed: each request in a call of its own, so only the bad ones fail."""
        for it in items:
            if it.future.done():
                continue
            self.metrics.batch_size.observe(it.rows)
            try:
                result = await _call(self.runtime, Batch(it.inputs, it.outputs, it.parameters), self.model)
            except Exception as exc:
                if not it.future.done():
                    it.future.set_exception(exc)
            else:
                if not it.future.done():
                    it.future.set_result(result)

    async def _call(self, items: list[_Item]) -> None:
        try:
            first = items[0]
            if len(items) == 1:
                inputs = first.inputs
                outputs = first.outputs
            else:
                inputs = {name: np.concatenate([it.inputs[name] for it in items]) for name in first.inputs}
                outputs = frozenset().union(*(it.outputs for it in items))
            rows = sum(it.rows for it in items)
            self.metrics.batch_size.observe(rows)
            try:
                result = await _call(self.runtime, Batch(inputs, outputs, first.parameters), self.model)
            except Exception:
                if len(items) == 1 or not self.runtime.isolate_failures:
                    raise
                await self._call_alone(items)
                return
            if len(items) == 1:
                if not first.future.done():
                    first.future.set_result(result)
                return
            for name, array in result.items():
                if array.ndim == 0 or array.shape[0] != rows:
                    raise InferenceError(
                        f"model '{self.model}' returned output '{name}' with shape {list(array.shape)} for a batch "
                        f"of {rows} rows: its first dimension must be the rows (turn batching off for this model)"
                    )
            offset = 0
            for it in items:
                end = offset + it.rows
                if not it.future.done():
                    it.future.set_result({name: array[offset:end] for name, array in result.items()})
                offset = end
        except BaseException as exc:
            for it in items:
                if not it.future.done():
                    it.future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
        finally:
            self._slots.release()
