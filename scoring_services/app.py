"""The HTTP face of a scoring service: Open Inference Protocol REST routes on a raw ASGI application.

Thin routes: each one parses the path, reads the body (with the size limit) and delegates to `DataPlane`.
There is no framework request/response object per call: a single-row inference costs a few hundred
microseconds of Python in total, and a router and request wrapper would be a good part of that. Errors are
`ScoringError`s turned into their status and the protocol's body `{"error": "..."}` in one place; anything
unexpected is logged and answered 500, and the server keeps serving.

Routes (`{v}` optional everywhere: `/v2/models/{name}[/versions/{v}]/...`):
  GET  /v2/health/live, /v2/health/ready, /v2
  GET  /v2/models/{name}, /v2/models/{name}/ready
  POST /v2/models/{name}/infer
  POST /v2/repository/index, /v2/repository/models/{name}/load, /v2/repository/models/{name}/unload
  GET  /metrics
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Final

import orjson

from scoring_services.dataplane import DataPlane
from scoring_services.errors import InvalidRequest, MethodNotAllowed, ModelNotFound, PayloadTooLarge, ScoringError
from scoring_services.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from scoring_services.settings import ScoringSettings
from scoring_services.types import ModelConfig

__all__ = ["ScoringApp", "create_app"]

log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

_JSON: Final = b"application/json"
_BINARY: Final = b"application/octet-stream"
_HEADER_LENGTH: Final = b"inference-header-content-length"
_READY: Final = orjson.dumps({"ready": True})
_NOT_READY: Final = orjson.dumps({"ready": False})
_LIVE: Final = orjson.dumps({"live": True})
_EMPTY: Final = b"{}"


class _Disconnected(Exception):
    """The client went away before sending its whole body."""


def _error_body(message: str) -> bytes:
    return orjson.dumps({"error": message})


class ScoringApp:
    """An ASGI application serving one `DataPlane`."""

    def __init__(
        self,
        plane: DataPlane,
        settings: ScoringSettings,
        executor: ThreadPoolExecutor,
        on_load_failure: Callable[[Exception], None] | None = None,
    ) -> None:
        self.plane = plane
        self.settings = settings
        self.executor = executor
        self.on_load_failure = on_load_failure
        self._loading: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------ lifespan

    async def startup(self) -> None:
        """Start loading the configured models in the background: the port answers `live` meanwhile."""
        self._loading = asyncio.get_running_loop().create_task(self._load_all(), name="load-models")

    async def _load_all(self) -> None:
        try:
            await self.plane.load_all()
        except Exception as exc:
            if self.on_load_failure is not None:
                self.on_load_failure(exc)

    async def wait_loaded(self) -> None:
        if self._loading is not None:
            await asyncio.shield(self._loading)

    async def shutdown(self) -> None:
        if self._loading is not None and not self._loading.done():
            self._loading.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loading
        await self.plane.close()
        self.executor.shutdown(wait=False, cancel_futures=True)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.startup()
                except Exception as exc:
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return

    # ------------------------------------------------------------------ HTTP

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers: list[tuple[bytes, bytes]]
        try:
            status, body, content_type, header_length = await self._route(scope, receive)
        except ScoringError as exc:
            status, body, content_type, header_length = exc.http_status, _error_body(exc.message), _JSON, None
        except _Disconnected:
            return
        except Exception:
            log.exception("unexpected error on %s %s", scope.get("method"), scope.get("path"))
            status, body, content_type, header_length = 500, _error_body("internal server error"), _JSON, None
        headers = [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]
        if header_length is not None:
            headers.append((_HEADER_LENGTH, str(header_length).encode()))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def _route(self, scope: Scope, receive: Receive) -> tuple[int, bytes, bytes, int | None]:
        method: str = scope["method"]
        parts: list[str] = scope["path"].rstrip("/").split("/")[1:]
        plane = self.plane
        if len(parts) >= 2 and parts[0] == "v2" and parts[1] == "models" and len(parts) >= 3:
            name = parts[2]
            rest = parts[3:]
            version: str | None = None
            if len(rest) >= 2 and rest[0] == "versions":
                version, rest = rest[1], rest[2:]
            action = rest[0] if len(rest) == 1 else ("" if not rest else None)
            if action == "infer":
                self._method(method, "POST")
                header_length = self._header_length(scope)
                body = await self._body(scope, receive)
                result = await plane.infer(name, version, body, header_length)
                content_type = _JSON if result.header_length is None else _BINARY
                return 200, result.body, content_type, result.header_length
            if action == "ready":
                self._method(method, "GET")
                ready = plane.model_ready(name, version)
                body = orjson.dumps({"name": name, "ready": ready})
                return (200 if ready else 503), body, _JSON, None
            if action == "":
                self._method(method, "GET")
                return 200, orjson.dumps(plane.model_metadata(name, version)), _JSON, None
            raise ModelNotFound(f"no route {scope['path']}")
        route = "/".join(parts)
        if route == "v2/health/ready":
            self._method(method, "GET")
            return (200, _READY, _JSON, None) if plane.ready() else (503, _NOT_READY, _JSON, None)
        if route == "v2/health/live":
            self._method(method, "GET")
            return 200, _LIVE, _JSON, None
        if route == "v2":
            self._method(method, "GET")
            return 200, orjson.dumps(plane.server_metadata()), _JSON, None
        if route == "metrics":
            self._method(method, "GET")
            return 200, plane.metrics.render(), METRICS_CONTENT_TYPE.encode(), None
        if route == "v2/repository/index":
            self._method(method, "POST")
            body = await self._body(scope, receive)
            ready_only = False
            if body.strip():
                document = self._json(body)
                ready_only = document.get("ready", False) is True
            return 200, orjson.dumps(plane.repository_index(ready_only)), _JSON, None
        if len(parts) == 5 and parts[:3] == ["v2", "repository", "models"] and parts[4] in ("load", "unload"):
            self._method(method, "POST")
            body = await self._body(scope, receive)
            if body.strip():
                self._json(body)
            if parts[4] == "load":
                await plane.load_model(parts[3])
            else:
                await plane.unload_model(parts[3])
            return 200, _EMPTY, _JSON, None
        raise ModelNotFound(f"no route {scope['path']}")

    @staticmethod
    def _method(method: str, allowed: str) -> None:
        if method != allowed:
            raise MethodNotAllowed(f"method {method} is not allowed here; use {allowed}")

    @staticmethod
    def _json(body: bytes) -> dict[str, Any]:
        try:
            document = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise InvalidRequest(f"the request body is not valid JSON: {exc}") from None
        if not isinstance(document, dict):
            raise InvalidRequest("the request body must be a JSON object")
        return document

    @staticmethod
    def _header_length(scope: Scope) -> int | None:
        for key, value in scope["headers"]:
            if key == _HEADER_LENGTH:
                try:
                    return int(value)
                except ValueError:
                    raise InvalidRequest(f"Inference-Header-Content-Length {value!r} is not an integer") from None
        return None

    async def _body(self, scope: Scope, receive: Receive) -> bytes:
        limit = self.settings.max_body_bytes
        for key, value in scope["headers"]:
            if key == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    raise InvalidRequest("Content-Length is not an integer") from None
                if declared > limit:
                    raise PayloadTooLarge(f"the request body has {declared} bytes; the limit is {limit}")
                break
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _Disconnected
        body: bytes = message.get("body", b"")
        if len(body) > limit:
            raise PayloadTooLarge(f"the request body has more than {limit} bytes, the limit")
        if not message.get("more_body", False):
            return body
        chunks = [body]
        size = len(body)
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise _Disconnected
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise PayloadTooLarge(f"the request body has more than {limit} bytes, the limit")
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)


def create_app(
    configs: Iterable[ModelConfig],
    settings: ScoringSettings | None = None,
    *,
    on_load_failure: Callable[[Exception], None] | None = None,
) -> ScoringApp:
    """Build the app: its settings, thread pool, metrics and data plane (models load at lifespan startup)."""
    settings = settings or ScoringSettings()
    executor = ThreadPoolExecutor(max_workers=settings.inference_threads, thread_name_prefix="inference")
    plane = DataPlane(configs, settings, executor)
    return ScoringApp(plane, settings, executor, on_load_failure)
