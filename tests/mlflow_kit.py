"""A real MLflow tracking server and model registry for tests: `mlflow server` on a free loopback port.

`running_mlflow(folder)` starts it with a SQLite backend store and proxied artifacts (`--serve-artifacts`,
stored under `folder/artifacts`), waits until `/health` answers, yields an `MlflowServer` and stops it
(its whole process group: the server forks uvicorn/gunicorn workers). Its output goes to `folder/mlflow.log`,
quoted when it does not come up.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

_START_TIMEOUT_S = 60.0


@dataclass
class MlflowServer:
    tracking_uri: str
    folder: Path
    process: subprocess.Popen[bytes]

    @property
    def log(self) -> str:
        return (self.folder / "mlflow.log").read_text(errors="replace")

    def secret_env(self, name: str) -> dict[str, str]:
        """The `MODELOPS_SECRET_<NAME>_TRACKING_URI` variable of a Secret naming this server."""
        return {f"MODELOPS_SECRET_{name.upper().replace('-', '_').replace('.', '_')}_TRACKING_URI": self.tracking_uri}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


@contextlib.contextmanager
def running_mlflow(folder: Path) -> Iterator[MlflowServer]:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "artifacts").mkdir(exist_ok=True)
    port = free_port()
    mlflow = Path(sys.executable).with_name("mlflow")
    command = [
        str(mlflow), "server",
        "--backend-store-uri", f"sqlite:///{folder / 'mlflow.db'}",
        "--serve-artifacts", "--artifacts-destination", str(folder / "artifacts"),
        "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
    ]  # fmt: skip
    # The server's own environment: no tracking uri or credentials of the caller's, no telemetry.
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env["MLFLOW_DISABLE_TELEMETRY"] = "true"
    env["DO_NOT_TRACK"] = "true"
    with (folder / "mlflow.log").open("wb") as log:
        process = subprocess.Popen(
            command, env=env, cwd=folder, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    server = MlflowServer(f"http://127.0.0.1:{port}", folder, process)
    try:
        deadline = time.monotonic() + _START_TIMEOUT_S
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"mlflow server exited with {process.returncode}:\n{server.log}")
            try:
                if httpx.get(f"{server.tracking_uri}/health", timeout=1, trust_env=False).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"mlflow server did not answer /health within {_START_TIMEOUT_S:.0f} s:\n{server.log}"
                )
            time.sleep(0.1)
        yield server
    finally:
        _stop(process)
