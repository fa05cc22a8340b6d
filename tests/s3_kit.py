"""A real S3 HTTP server for tests: moto's `moto_server` on a free loopback port, recording every request.

`running_s3(folder)` starts it (waiting until it answers), yields an `S3Server` and stops it. Its recorder
(MOTO_ENABLE_RECORDING) appends each request (method, url, headers) as a JSON line to a file the tests read:
which credentials signed a request, and how many requests a fetch made.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import boto3
import httpx

if TYPE_CHECKING:
    from mypy_boto3_s3.client import S3Client

ACCESS_KEY_ID = "AKIATESTMODELSTORE01"
SECRET_ACCESS_KEY = "test-secret-access-key-do-not-log"


@dataclass
class S3Server:
    endpoint: str
    recording: Path

    def client(self) -> S3Client:
        return boto3.session.Session().client(
            "s3",
            endpoint_url=self.endpoint,
            region_name="us-east-1",
            aws_access_key_id="admin",
            aws_secret_access_key="admin-secret",
        )

    def requests(self) -> list[dict[str, Any]]:
        """Every request recorded so far (moto-api calls excepted)."""
        if not self.recording.exists():
            return []
        return [json.loads(line) for line in self.recording.read_text().splitlines() if line.strip()]

    def secret_env(self, name: str) -> dict[str, str]:
        """The `MODELOPS_SECRET_<NAME>_*` variables of a Secret naming this server and the test credentials."""
        prefix = f"MODELOPS_SECRET_{name.upper().replace('-', '_')}_"
        return {
            f"{prefix}ENDPOINT": self.endpoint,
            f"{prefix}REGION": "us-east-1",
            f"{prefix}ACCESS_KEY_ID": ACCESS_KEY_ID,
            f"{prefix}SECRET_ACCESS_KEY": SECRET_ACCESS_KEY,
        }


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def running_s3(folder: Path) -> Iterator[S3Server]:
    folder.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    recording = folder / "requests.jsonl"
    env = {
        **os.environ,
        "MOTO_ENABLE_RECORDING": "True",
        "MOTO_RECORDER_FILEPATH": str(recording),
        "AWS_ACCESS_KEY_ID": "unused",
        "AWS_SECRET_ACCESS_KEY": "unused",
    }
    moto = Path(sys.executable).with_name("moto_server")
    log = (folder / "moto.log").open("wb")
    process = subprocess.Popen(
        [str(moto), "-H", "127.0.0.1", "-p", str(port)], env=env, stdout=log, stderr=subprocess.STDOUT
    )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"moto_server exited with {process.returncode}: {(folder / 'moto.log').read_text()}")
            try:
                httpx.get(f"{endpoint}/moto-api/", timeout=1, trust_env=False)
                break
            except httpx.HTTPError:
                if time.monotonic() > deadline:
                    raise RuntimeError("moto_server did not answer within 30 s") from None
                time.sleep(0.05)
        yield S3Server(endpoint, recording)
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()
