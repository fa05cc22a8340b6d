"""The flow's client of the scoring services: Open Inference Protocol (KServe V2) REST over one pooled connection set.

- **Readiness.** `wait_ready` polls `GET /v2/health/ready` and `GET /v2/models/<model>/ready` of every service
  the flow calls until all answer 200, for at most the given time; then `ServicesNotReady` says which did not
  and what they last answered. `GET /v2` tells whether a service speaks the binary tensor extension.
- **Binary tensors.** Where the server lists `binary_tensor_data` among its extensions, inputs travel as raw
  little-endian bytes after a JSON header (`Inference-Header-Content-Length`) and outputs come back the same
  way: no number is ever printed or parsed as text. Otherwise the JSON form is used.
- **Retries.** A connection refused or dropped, a timeout, and the answers 502, 503 and 504 are retried with
  exponential backoff (0.1 s doubling up to 5 s, with jitter) until `retry_seconds` have passed since the first
  attempt; then `ScoringUnavailable` names the service, its URL and the last problem. Inference is idempotent,
  so retrying a request the service may have seen is safe. Once the flow stops (`stop()`), a failed request is
  not retried and a back-off sleep ends at once.
- **Other errors.** Any other 4xx or a 500 is `ScoreRejected` at once, with the service's message: the caller
  decides whether a record is to blame (see `scoring_flows.steps`).

Large batches are split into requests of at most `MAX_REQUEST_BYTES` of tensor data, sent concurrently.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import struct
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import httpx
import numpy as np
import orjson

from scoring_flows.metrics import ServiceFigures

__all__ = [
    "DATATYPES",
    "MAX_REQUEST_BYTES",
    "ScoreRejected",
    "ScoringUnavailable",
    "ServicesNotReady",
    "TensorIn",
    "V2Client",
]

MAX_REQUEST_BYTES: Final = 16 * 1024 * 1024
"""Tensor bytes per request at most: well under the services' 64 MiB body limit, big enough to amortise a call."""
_RETRY_STATUSES: Final = frozenset({502, 503, 504})
_POLL_SECONDS: Final = 0.2

DATATYPES: Final[dict[str, np.dtype[Any]]] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
    "BYTES": np.dtype(np.object_),
}


class ScoringUnavailable(Exception):
    """A scoring service did not answer usefully within the retry time: the flow cannot go on."""


class ServicesNotReady(ScoringUnavailable):
    """Some scoring services were not ready within the readiness timeout."""


class ScoreRejected(Exception):
    """The service refused or failed a request (a 4xx other than 408/429, or a 500): maybe one record's fault."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class TensorIn:
    """One input tensor of a request: its name, V2 datatype and values (first dimension = rows)."""

    name: str
    datatype: str
    array: np.ndarray


def _bytes_blob(array: np.ndarray) -> bytes:
    parts: list[bytes] = []
    for item in array.ravel():
        data = item if isinstance(item, bytes) else str(item).encode()
        parts.append(struct.pack("<I", len(data)))
        parts.append(data)
    return b"".join(parts)


def _decode_bytes(blob: memoryview, count: int) -> np.ndarray:
    out = np.empty(count, dtype=np.object_)
    offset = 0
    for i in range(count):
        (length,) = struct.unpack_from("<I", blob, offset)
        offset += 4
        out[i] = bytes(blob[offset : offset + length])
        offset += length
    return out


def _problem(response: httpx.Response) -> str:
    try:
        body = response.json()
        if isinstance(body, dict) and "error" in body:
            return str(body["error"])
    except ValueError:
        pass
    return response.text[:300] or response.reason_phrase


class V2Client:
    """Calls the flow's scoring services (see the module docstring). One instance per flow process."""

    def __init__(
        self,
        urls: Mapping[str, str],
        *,
        retry_seconds: float = 120.0,
        request_timeout: float = 120.0,
        max_connections: int = 32,
        on_retry: Callable[[str, str], None] | None = None,
        on_request: Callable[[str, float], None] | None = None,
    ) -> None:
        self.urls = {name: url.rstrip("/") for name, url in urls.items()}
        self.retry_seconds = retry_seconds
        self.binary: dict[str, bool] = {}
        self.stopping = False
        """Set when the flow stops: a failing request is not retried any more (the flow is going away)."""
        self._stopped = asyncio.Event()
        """Set with `stopping` (by `stop`): ends a back-off sleep between retries at once."""
        self._on_retry = on_retry
        self._on_request = on_request
        self.figures: dict[str, ServiceFigures] = {name: ServiceFigures() for name in self.urls}
        """What this flow saw of each service (requests, rows, errors, retries, latency) for its progress reports."""
        # trust_env=False: a proxy from HTTP_PROXY must not stand between the flow and its services.
        self._http = httpx.AsyncClient(
            timeout=httpx.Timeout(request_timeout, connect=5.0),
            limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections),
            trust_env=False,
        )

    def stop(self) -> None:
        """The flow stops: requests that fail are not retried, and a retry waiting for its turn gives up now."""
        self.stopping = True
        self._stopped.set()

    async def close(self) -> None:
        await self._http.aclose()

    def url(self, service: str) -> str:
        try:
            return self.urls[service]
        except KeyError:
            raise ScoringUnavailable(
                f"no URL for scoring service '{service}' (known: {', '.join(sorted(self.urls)) or 'none'}; the "
                "local backend passes them in MODELOPS_SERVICE_URLS)"
            ) from None

    # -- readiness ------------------------------------------------------------------------------------

    async def wait_ready(self, services: Sequence[str], timeout: float, log: Callable[[str], None]) -> None:
        """Wait until every service and its model answer ready, at most `timeout` seconds."""
        started = time.monotonic()
        deadline = started + timeout
        last: dict[str, str] = {name: "no answer yet" for name in services}
        pending = list(services)
        log(f"waiting for scoring service(s) {', '.join(services)} to be ready (at most {timeout:g}s)")
        while pending:
            for name in list(pending):
                state = await self._ready(name)
                if state is None:
                    pending.remove(name)
                    kind = "binary tensors" if self.binary.get(name) else "JSON tensors"
                    took = time.monotonic() - started
                    log(f"scoring service {name} is ready at {self.url(name)} ({kind}) after {took:.1f}s")
                else:
                    last[name] = state
            if not pending:
                return
            if time.monotonic() >= deadline:
                details = "; ".join(f"{name} at {self.urls.get(name, '?')}: {last[name]}" for name in pending)
                raise ServicesNotReady(f"scoring services not ready after {timeout:g}s: {details}")
            await asyncio.sleep(_POLL_SECONDS)

    async def _ready(self, service: str) -> str | None:
        """None when ready; else what is wrong."""
        base = self.url(service)
        try:
            health = await self._http.get(f"{base}/v2/health/ready", timeout=2.0)
            if health.status_code != 200:
                return f"GET /v2/health/ready answered {health.status_code}"
            model = await self._http.get(f"{base}/v2/models/{service}/ready", timeout=2.0)
            if model.status_code != 200:
                return f"GET /v2/models/{service}/ready answered {model.status_code}: {_problem(model)}"
            if service not in self.binary:
                meta = await self._http.get(f"{base}/v2", timeout=2.0)
                extensions = meta.json().get("extensions", []) if meta.status_code == 200 else []
                self.binary[service] = "binary_tensor_data" in extensions
        except httpx.HTTPError as exc:
            return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        except ValueError:
            self.binary[service] = False
        return None

    # -- inference ------------------------------------------------------------------------------------

    async def infer(self, service: str, inputs: Sequence[TensorIn], outputs: Sequence[str]) -> dict[str, np.ndarray]:
        """Outputs by name for the rows of `inputs`, split into several requests when large."""
        rows = len(inputs[0].array)
        width = sum(max(1, t.array.nbytes // max(rows, 1)) for t in inputs)
        per_request = max(1, MAX_REQUEST_BYTES // max(width, 1))
        if rows <= per_request:
            return await self._infer_one(service, inputs, outputs)
        pieces = [
            [TensorIn(t.name, t.datatype, t.array[start : start + per_request]) for t in inputs]
            for start in range(0, rows, per_request)
        ]
        results = await asyncio.gather(*(self._infer_one(service, piece, outputs) for piece in pieces))
        return {name: np.concatenate([r[name] for r in results]) for name in outputs}

    async def _infer_one(
        self, service: str, inputs: Sequence[TensorIn], outputs: Sequence[str]
    ) -> dict[str, np.ndarray]:
        base = self.url(service)
        url = f"{base}/v2/models/{service}/infer"
        binary = self.binary.get(service, False)
        body, headers = _encode(inputs, outputs, binary)
        started = time.monotonic()
        deadline = started + self.retry_seconds
        delay = 0.1
        figures = self.figures.setdefault(service, ServiceFigures())
        while True:
            problem: str
            try:
                response = await self._http.post(url, content=body, headers=headers)
            except httpx.TransportError as exc:
                problem = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            else:
                if response.status_code == 200:
                    took = time.monotonic() - started
                    if self._on_request is not None:
                        self._on_request(service, took)
                    try:
                        decoded = _decode(response, outputs, len(inputs[0].array))
                    except ScoreRejected:
                        figures.errors += 1
                        raise
                    figures.answered(took, len(inputs[0].array))
                    return decoded
                if response.status_code not in _RETRY_STATUSES:
                    figures.errors += 1
                    raise ScoreRejected(
                        response.status_code, f"{service}: HTTP {response.status_code}: {_problem(response)}"
                    )
                problem = f"HTTP {response.status_code}: {_problem(response)}"
            now = time.monotonic()
            if self.stopping:
                figures.errors += 1
                raise ScoringUnavailable(f"scoring service {service} at {base} failed while the flow stops: {problem}")
            if now >= deadline:
                figures.errors += 1
                raise ScoringUnavailable(
                    f"scoring service {service} at {base} did not answer within {self.retry_seconds:g}s of retries; "
                    f"last problem: {problem}"
                )
            figures.retries += 1
            if self._on_retry is not None:
                self._on_retry(service, problem)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopped.wait(), min(delay * (0.5 + random.random() / 2), deadline - now))
            delay = min(delay * 2, 5.0)


def _encode(inputs: Sequence[TensorIn], outputs: Sequence[str], binary: bool) -> tuple[bytes, dict[str, str]]:
    if binary:
        blobs: list[bytes] = []
        entries = []
        for tensor in inputs:
            if tensor.datatype == "BYTES":
                blob = _bytes_blob(tensor.array)
            else:
                blob = np.ascontiguousarray(tensor.array, dtype=DATATYPES[tensor.datatype]).tobytes()
            blobs.append(blob)
            entries.append(
                {
                    "name": tensor.name,
                    "datatype": tensor.datatype,
                    "shape": list(tensor.array.shape),
                    "parameters": {"binary_data_size": len(blob)},
                }
            )
        header = orjson.dumps(
            {"inputs": entries, "outputs": [{"name": name, "parameters": {"binary_data": True}} for name in outputs]}
        )
        return header + b"".join(blobs), {
            "Content-Type": "application/octet-stream",
            "Inference-Header-Content-Length": str(len(header)),
        }
    document = {
        "inputs": [
            {
                "name": t.name,
                "datatype": t.datatype,
                "shape": list(t.array.shape),
                "data": [x.decode() if isinstance(x, bytes) else x for x in t.array.ravel().tolist()]
                if t.datatype in ("BYTES", "FP16")
                else np.ascontiguousarray(t.array).ravel(),
            }
            for t in inputs
        ],
        "outputs": [{"name": name} for name in outputs],
    }
    return orjson.dumps(document, option=orjson.OPT_SERIALIZE_NUMPY), {"Content-Type": "application/json"}


def _decode(response: httpx.Response, outputs: Sequence[str], rows: int) -> dict[str, np.ndarray]:
    content = response.content
    header_length = response.headers.get("inference-header-content-length")
    try:
        if header_length is not None:
            size = int(header_length)
            document = orjson.loads(content[:size])
            tail = memoryview(content)[size:]
        else:
            document = orjson.loads(content)
            tail = memoryview(b"")
        found: dict[str, np.ndarray] = {}
        offset = 0
        for entry in document.get("outputs", []):
            name = entry["name"]
            datatype = entry["datatype"]
            shape = tuple(int(d) for d in entry["shape"])
            count = int(np.prod(shape)) if shape else 1
            blob_size = (entry.get("parameters") or {}).get("binary_data_size")
            if blob_size is not None:
                blob = tail[offset : offset + int(blob_size)]
                offset += int(blob_size)
                if datatype == "BYTES":
                    array = _decode_bytes(blob, count)
                else:
                    array = np.frombuffer(blob, dtype=DATATYPES[datatype]).copy()
            else:
                data = entry.get("data", [])
                if datatype == "BYTES":
                    array = np.array([d.encode() if isinstance(d, str) else d for d in data], dtype=np.object_)
                else:
                    array = np.asarray(data, dtype=DATATYPES[datatype])
            found[name] = array.reshape(shape)
    except (ValueError, KeyError, TypeError) as exc:
        raise ScoreRejected(response.status_code, f"an answer that is not a valid V2 response: {exc}") from exc
    missing = [name for name in outputs if name not in found]
    if missing:
        raise ScoreRejected(200, f"the answer lacks output {', '.join(repr(m) for m in missing)}")
    for name in outputs:
        if not found[name].shape or found[name].shape[0] != rows:
            raise ScoreRejected(200, f"output '{name}' has shape {list(found[name].shape)} for {rows} rows")
    return {name: found[name] for name in outputs}
