"""Helpers of the scoring-service tests: build tiny real models, serve them in-process or on a real port."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import uvicorn

from scoring_services.app import ScoringApp, create_app
from scoring_services.settings import ScoringSettings
from scoring_services.types import BatchingConfig, ModelConfig, TensorSpec


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def spec(name: str, datatype: str, *shape: int) -> TensorSpec:
    return TensorSpec(name, datatype, tuple(shape))


def model_config(
    name: str,
    runtime: str,
    path: Path | str,
    *,
    sha256: str | None = None,
    inputs: Sequence[TensorSpec] = (),
    outputs: Sequence[TensorSpec] = (),
    options: dict[str, Any] | None = None,
    batching: BatchingConfig | None = None,
    version: str = "1",
) -> ModelConfig:
    uri = path if isinstance(path, str) else path.as_uri()
    return ModelConfig(
        name=name,
        runtime=runtime,
        uri=uri,
        sha256=sha256,
        version=version,
        inputs=tuple(inputs),
        outputs=tuple(outputs),
        options=options or {},
        batching=batching or BatchingConfig(),
    )


def settings(tmp: Path, **overrides: Any) -> ScoringSettings:
    values: dict[str, Any] = {"cache_dir": tmp / "cache", "inference_threads": 2, "exit_on_load_failure": False}
    values.update(overrides)
    return ScoringSettings(**values)


@contextlib.asynccontextmanager
async def served(
    configs: Sequence[ModelConfig], config: ScoringSettings, *, wait: bool = True
) -> AsyncIterator[tuple[ScoringApp, httpx.AsyncClient]]:
    """The app with its models loaded (lifespan run by hand) and an httpx client talking ASGI to it."""
    app = create_app(configs, config)
    await app.startup()
    if wait:
        await app.wait_loaded()
    transport = httpx.ASGITransport(app=app)
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://scoring") as client:
            yield app, client
    finally:
        await app.shutdown()


def infer_body(name: str, array: np.ndarray, datatype: str, **extra: Any) -> dict[str, Any]:
    data = [v.decode() if isinstance(v, bytes) else v for v in array.ravel().tolist()]
    return {"inputs": [{"name": name, "datatype": datatype, "shape": list(array.shape), "data": data}], **extra}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextlib.contextmanager
def real_server(configs: Sequence[ModelConfig], config: ScoringSettings) -> Iterator[str]:
    """A real uvicorn server (uvloop + httptools) in a thread; yields its `host:port` once ready."""
    port = free_port()
    config = config.model_copy(update={"port": port})
    app = create_app(configs, config)
    server = uvicorn.Server(
        uvicorn.Config(
            app, host="127.0.0.1", port=port, loop="uvloop", http="httptools", lifespan="on", log_config=None
        )
    )
    thread = threading.Thread(target=server.run, name="scoring-server", daemon=True)
    thread.start()
    url = f"127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    try:
        while True:
            try:
                if httpx.get(f"http://{url}/v2/health/ready", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError("the scoring server did not become ready")
            time.sleep(0.05)
        yield url
    finally:
        server.should_exit = True
        thread.join(timeout=15)


async def gather_limited(*coroutines: Any) -> list[Any]:
    return list(await asyncio.gather(*coroutines))
