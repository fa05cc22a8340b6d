"""HTTP channels for real-time scoring: clients POST records to the flow and get the scored records back.

One small HTTP server per flow process (`HttpExchange`, uvicorn) serves every http channel of the flow:

- `POST <http.path>` of an http **source**, with a JSON body: one record (an object) or several (an array of
  objects). The request waits until its records have gone through the steps and every sink has committed them,
  then gets `200 {"records": [...], "errors": [...]}`: `records` are what the flow's http **sink** received for
  this request (in order; absent without an http sink, where `accepted` counts the records that got through),
  `errors` one `{index, field, step, message}` per record that failed (its index in the request). Under the
  `fail` error policy a request with a failed record is answered `422` with the same `errors`: the request
  fails, the flow goes on serving others. A body that is not JSON is a `400`; a flow that stops before
  answering says `503`; an answer that takes longer than `REQUEST_TIMEOUT_SECONDS` is a `504`.
- `GET /healthz`: `200 {"ready": true}` once the flow reads requests.

Concurrent requests are coalesced into one batch (up to the flow's `batchSize` records), so a burst of small
requests costs one model call, like the scoring services' adaptive batching.

The address is `MODELOPS_FLOW_HTTP_HOST`:`MODELOPS_FLOW_HTTP_PORT` from the flow's environment (default
127.0.0.1:8080; port 0 picks a free one, see `HttpExchange.port`).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import socket
from collections.abc import Awaitable, Callable, Generator, Mapping, MutableMapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Final

import numpy as np
import orjson
import pyarrow as pa
import uvicorn

from data_channel.base import ChannelContext, ChannelError, Sink, Source, SourceBatch
from data_channel.schema import RecordError, from_values, to_json_values
from ir.models import DataChannelSpec, HttpOptions

__all__ = ["REQUEST_TIMEOUT_SECONDS", "HttpExchange", "HttpSink", "HttpSource"]

REQUEST_TIMEOUT_SECONDS: Final = 60.0
MAX_BODY_BYTES: Final = 64 * 1024 * 1024
_WAIT_SECONDS: Final = 0.5

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


def _options(spec: DataChannelSpec) -> HttpOptions:
    if spec.http is None:
        raise ChannelError("an http channel needs 'http' options")
    return spec.http


@dataclass
class _Request:
    records: list[Any]
    answer: asyncio.Future[tuple[int, bytes]]
    start: int = 0


class _Server(uvicorn.Server):
    """uvicorn, leaving the process's signal handlers alone: the flow decides what SIGTERM means."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


@dataclass
class HttpExchange:
    """The flow's HTTP server and the meeting point of its http source and http sink."""

    host: str = "127.0.0.1"
    requested_port: int = 8080
    fail_requests: bool = False
    """Set by the flow under the `fail` error policy: a request with a failed record is answered 422."""
    port: int = 0
    routes: dict[str, HttpSource] = field(default_factory=dict)
    outputs: dict[int, list[dict[str, Any]]] = field(default_factory=dict)
    """Records an http sink received, by source ordinal, until the request they belong to is answered."""
    has_sink: bool = False
    _server: _Server | None = None
    _task: asyncio.Task[None] | None = None

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> HttpExchange:
        return cls(
            host=environ.get("MODELOPS_FLOW_HTTP_HOST", "127.0.0.1"),
            requested_port=int(environ.get("MODELOPS_FLOW_HTTP_PORT", "8080")),
        )

    async def start(self) -> None:
        if self._task is not None:
            return
        sock = socket.socket(socket.AF_INET6 if ":" in self.host else socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self.host, self.requested_port))
        except OSError as exc:
            sock.close()
            raise ChannelError(f"cannot listen on {self.host}:{self.requested_port}: {exc}") from exc
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(
            self._app, interface="asgi3", lifespan="off", log_level="warning", access_log=False, ws="none"
        )
        self._server = _Server(config)
        self._task = asyncio.get_running_loop().create_task(self._server.serve(sockets=[sock]), name="http-exchange")
        while not self._server.started:
            if self._task.done():
                await self._task
                raise ChannelError(f"the HTTP server on {self.host}:{self.port} did not start")
            await asyncio.sleep(0.01)

    async def stop(self) -> None:
        if self._server is not None and self._task is not None:
            self._server.should_exit = True
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._server = None
        self._task = None

    async def _app(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        path = scope["path"]
        method = scope["method"]
        if path == "/healthz" and method in ("GET", "HEAD"):
            ready = bool(self.routes) and all(source.reading for source in self.routes.values())
            await _respond(send, 200 if ready else 503, orjson.dumps({"ready": ready}))
            return
        source = self.routes.get(path)
        if source is None:
            await _respond(send, 404, orjson.dumps({"error": f"no records are accepted at {path}"}))
            return
        if method != "POST":
            await _respond(send, 405, orjson.dumps({"error": "use POST"}))
            return
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            if len(body) > MAX_BODY_BYTES:
                await _respond(send, 413, orjson.dumps({"error": f"the body is larger than {MAX_BODY_BYTES} bytes"}))
                return
            if not message.get("more_body"):
                break
        status, payload = await source.submit(bytes(body))
        await _respond(send, status, payload)


async def _respond(send: Send, status: int, body: bytes) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


def _exchange(context: ChannelContext) -> HttpExchange:
    if not isinstance(context.exchange, HttpExchange):
        raise ChannelError("http channels need the flow's HttpExchange (ChannelContext.exchange)")
    return context.exchange


class HttpSource(Source):
    """Records POSTed by clients, answered once committed (see the module docstring)."""

    type: ClassVar[str] = "http"
    finite: ClassVar[bool] = False
    answers_errors: ClassVar[bool] = True

    def __init__(self, name: str, spec: DataChannelSpec, context: ChannelContext) -> None:
        super().__init__(name, spec, context)
        self.options = _options(spec)
        self.exchange = _exchange(context)
        self._inbox: collections.deque[_Request] = collections.deque()
        self._arrived = asyncio.Event()
        self._counter = 0
        self.reading = False

    def describe(self) -> str:
        return f"http source '{self.name}' (POST {self.options.path})"

    async def open(self, start: int = 0, state: Mapping[str, Any] | None = None) -> None:
        self.exchange.routes[self.options.path] = self
        await self.exchange.start()
        self.reading = True

    async def submit(self, body: bytes) -> tuple[int, bytes]:
        if self._stopping:
            return 503, orjson.dumps({"error": "the flow is stopping"})
        try:
            document = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            return 400, orjson.dumps({"error": f"the body is not JSON: {exc}"})
        records = document if isinstance(document, list) else [document]
        if not records:
            return 200, orjson.dumps({"records": [], "errors": []})
        request = _Request(records, asyncio.get_running_loop().create_future())
        self._inbox.append(request)
        self._arrived.set()
        try:
            return await asyncio.wait_for(asyncio.shield(request.answer), REQUEST_TIMEOUT_SECONDS)
        except TimeoutError:
            return 504, orjson.dumps({"error": f"no answer within {REQUEST_TIMEOUT_SECONDS:g}s"})

    async def read(self, max_records: int) -> SourceBatch | None:
        while not self._inbox:
            if self._stopping:
                return None
            self._arrived.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), _WAIT_SECONDS)
        # Coalesce the requests waiting now, up to `max_records` records (the first one whatever its size).
        requests = [self._inbox.popleft()]
        total = len(requests[0].records)
        while self._inbox and total + len(self._inbox[0].records) <= max_records:
            request = self._inbox.popleft()
            requests.append(request)
            total += len(request.records)
        return self._batch(requests)

    def _batch(self, requests: list[_Request]) -> SourceBatch:
        start = self._counter
        names = [f.name for f in self.schema.fields]
        positions: list[int] = []
        objects: list[dict[str, Any]] = []
        errors: list[RecordError] = []
        ordinal = start
        for request in requests:
            request.start = ordinal
            for index, obj in enumerate(request.records):
                where = f"record {index} of a request to {self.options.path}"
                if isinstance(obj, dict):
                    positions.append(ordinal)
                    objects.append(obj)
                else:
                    errors.append(RecordError(ordinal, where, f"expected a JSON object, got {type(obj).__name__}"))
                ordinal += 1
        self._counter = ordinal
        by_ordinal = {p: (r, p - r.start) for r in requests for p in range(r.start, r.start + len(r.records))}

        def locate(row: int) -> str:
            _, index = by_ordinal[positions[row]]
            return f"record {index} of a request to {self.options.path}"

        columns = {name: [obj.get(name) for obj in objects] for name in names}
        good, kept, more = from_values(
            columns, len(objects), self.schema, np.array(positions, dtype=np.int64), locate, lambda row: objects[row]
        )
        path = self.options.path

        def describe(at: int) -> str:
            found = by_ordinal.get(at)
            return f"record {found[1]} of a request to {path}" if found else f"a request to {path}"

        errors = sorted(errors + more, key=lambda e: e.ordinal)
        return SourceBatch(good, kept, start, ordinal, errors, token=requests, where=describe)

    async def ack(self, batch: SourceBatch) -> None:
        requests: list[_Request] = batch.token or []
        for request in requests:
            end = request.start + len(request.records)
            errors = [
                {"index": e.ordinal - request.start, "field": e.field, "step": e.step, "message": e.message}
                for e in batch.errors
                if request.start <= e.ordinal < end
            ]
            if errors and self.exchange.fail_requests:
                status, body = 422, {"error": errors[0]["message"], "errors": errors}
            elif self.exchange.has_sink:
                rows = [row for p in range(request.start, end) for row in self.exchange.outputs.pop(p, [])]
                status, body = 200, {"records": rows, "errors": errors}
            else:
                status, body = 200, {"accepted": len(request.records) - len(errors), "errors": errors}
            for p in range(request.start, end):
                self.exchange.outputs.pop(p, None)
            if not request.answer.done():
                request.answer.set_result((status, orjson.dumps(body)))

    def reject(self, batch: SourceBatch, message: str) -> None:
        """Answer the requests of a batch the flow could not process (503)."""
        for request in batch.token or []:
            if not request.answer.done():
                request.answer.set_result((503, orjson.dumps({"error": message})))

    def stop(self) -> None:
        super().stop()
        self.reading = False

    async def close(self) -> None:
        self.reading = False
        while self._inbox:
            request = self._inbox.popleft()
            if not request.answer.done():
                request.answer.set_result((503, orjson.dumps({"error": "the flow stopped"})))
        self.exchange.routes.pop(self.options.path, None)
        if not self.exchange.routes:
            await self.exchange.stop()


class HttpSink(Sink):
    """Hands the scored records back to the requests they came in (see the module docstring)."""

    type: ClassVar[str] = "http"

    def __init__(self, name: str, spec: DataChannelSpec, context: ChannelContext) -> None:
        super().__init__(name, spec, context)
        self.options = _options(spec)
        self.exchange = _exchange(context)
        self.exchange.has_sink = True

    def describe(self) -> str:
        return f"http sink '{self.name}' (answers to requests)"

    async def open(self, key: str, state: Mapping[str, Any] | None) -> int:
        return 0

    async def write(self, records: pa.RecordBatch, ordinals: np.ndarray, token: Any = None) -> None:
        for ordinal, row in zip(ordinals.tolist(), to_json_values(records, self.schema), strict=True):
            self.exchange.outputs.setdefault(ordinal, []).append(row)

    async def commit(self, watermark: int) -> dict[str, Any]:
        return {"watermark": watermark}
