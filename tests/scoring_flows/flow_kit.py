"""Helpers of the flow tests: tiny real digits models, IR bundles written from dicts, real scoring-service
processes, a stub scheduler that records reports, and the expected predictions computed in-process."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import joblib
import numpy as np
import orjson
import uvicorn
import yaml
from sklearn.datasets import load_digits
from sklearn.ensemble import RandomForestClassifier

import ir

REPO = Path(__file__).resolve().parents[2]
MODELOPS = str(Path(sys.executable).with_name("modelops"))
PIXELS = [f"p{i}" for i in range(64)]
IN_FIELDS = [{"name": "id", "type": "integer", "format": "int64"}] + [
    {"name": p, "type": "integer", "format": "int32"} for p in PIXELS
]
OUT_FIELDS = [
    {"name": "id", "type": "integer", "format": "int64"},
    {"name": "label", "type": "integer", "format": "int64"},
    {"name": "probability", "type": "number", "format": "double"},
    {"name": "onnx_label", "type": "integer", "format": "int64"},
]
SCORE_STEPS: list[dict[str, Any]] = [
    {
        "name": "score_sklearn",
        "score": {
            "model": "digits-rf",
            "inputs": [{"input": "input", "fields": PIXELS}],
            "outputs": [
                {"output": "predict", "field": "label"},
                {"output": "predict_proba", "field": "probability", "reduce": "max"},
            ],
        },
    },
    {
        "name": "score_onnx",
        "score": {
            "model": "digits-rf-onnx",
            "inputs": [{"input": "input", "fields": PIXELS}],
            "outputs": [{"output": "label", "field": "onnx_label"}],
        },
    },
]


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@dataclass(frozen=True)
class Digits:
    """A 10-tree forest on sklearn's digits as joblib and ONNX, and the digit images."""

    folder: Path
    images: np.ndarray
    forest: RandomForestClassifier

    @property
    def joblib_path(self) -> Path:
        return self.folder / "digits-rf.joblib"

    @property
    def onnx_path(self) -> Path:
        return self.folder / "digits-rf.onnx"


def train_digits(folder: Path) -> Digits:
    from skl2onnx import to_onnx

    data = load_digits()
    features = data.data.astype(np.float32)
    forest = RandomForestClassifier(n_estimators=10, max_depth=8, random_state=0, n_jobs=1)
    forest.fit(features, data.target)
    folder.mkdir(parents=True, exist_ok=True)
    joblib.dump(forest, folder / "digits-rf.joblib")
    model = to_onnx(forest, features[:1], options={id(forest): {"zipmap": False}}, target_opset=17)
    graph = model.graph
    old = graph.input[0].name
    graph.input[0].name = "input"
    for node in graph.node:
        node.input[:] = ["input" if name == old else name for name in node.input]
    (folder / "digits-rf.onnx").write_bytes(model.SerializeToString())
    return Digits(folder, data.data.astype(np.int64), forest)


def digits_rows(digits: Digits, count: int, seed: int = 7) -> np.ndarray:
    """`count` rows (id, p0..p63) drawn from the digit images."""
    picks = np.random.default_rng(seed).integers(0, len(digits.images), size=count)
    return np.hstack([np.arange(count).reshape(-1, 1), digits.images[picks]])


def write_digits_csv(path: Path, rows: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    header = ",".join(["id", *PIXELS])
    np.savetxt(path, rows, fmt="%d", delimiter=",", header=header, comments="")
    return path


def expected(digits: Digits, rows: np.ndarray) -> dict[str, np.ndarray]:
    """What the flow must write, computed in-process: label, max probability, ONNX label per row."""
    import onnxruntime as ort

    features = rows[:, 1:].astype(np.float32)
    proba = digits.forest.predict_proba(features)
    session = ort.InferenceSession(str(digits.onnx_path), providers=["CPUExecutionProvider"])
    return {
        "id": rows[:, 0],
        "label": digits.forest.classes_[proba.argmax(axis=1)],
        "probability": proba.max(axis=1),
        "onnx_label": session.run(["label"], {"input": features})[0],
    }


# ---------------------------------------------------------------------------------------------- bundles


def _doc(kind: str, name: str, spec: Mapping[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "modelops/v1", "kind": kind, "metadata": {"name": name}, "spec": dict(spec)}


def channel(
    direction: str, type_: str, options: Mapping[str, Any], fields: Sequence[Mapping[str, Any]]
) -> dict[str, Any]:
    return {"direction": direction, "type": type_, type_: dict(options), "schema": {"fields": list(fields)}}


def write_bundle(
    folder: Path,
    digits: Digits,
    *,
    channels: Mapping[str, Mapping[str, Any]],
    source: str = "in",
    sinks: Sequence[str] = ("out",),
    steps: Sequence[Mapping[str, Any]] = SCORE_STEPS,
    error_policy: Mapping[str, Any] | None = None,
    batch_size: int = 500,
    mode: str = "batch",
    parameters: Sequence[Mapping[str, Any]] = (),
    flow: str = "digits-flow",
) -> Path:
    """A bundle folder: the two digits models, the given channels, one flow, one pipeline."""
    folder.mkdir(parents=True, exist_ok=True)
    models = [
        _doc(
            "Model",
            "digits-rf",
            {
                "runtime": "sklearn",
                "uri": digits.joblib_path.as_uri(),
                "sha256": sha256_of(digits.joblib_path),
                "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 64]}],
                "outputs": [
                    {"name": "predict", "datatype": "INT64", "shape": [-1]},
                    {"name": "predict_proba", "datatype": "FP64", "shape": [-1, 10]},
                ],
            },
        ),
        _doc(
            "Model",
            "digits-rf-onnx",
            {
                "runtime": "onnx",
                "uri": digits.onnx_path.as_uri(),
                "sha256": sha256_of(digits.onnx_path),
                "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 64]}],
                "outputs": [
                    {"name": "label", "datatype": "INT64", "shape": [-1]},
                    {"name": "probabilities", "datatype": "FP32", "shape": [-1, 10]},
                ],
                "options": {"intraOpThreads": 1},
            },
        ),
    ]
    (folder / "models.yaml").write_text(yaml.safe_dump_all(models, sort_keys=False))
    (folder / "channels.yaml").write_text(
        yaml.safe_dump_all([_doc("DataChannel", name, spec) for name, spec in channels.items()], sort_keys=False)
    )
    flow_spec: dict[str, Any] = {"source": source, "sinks": list(sinks), "steps": list(steps), "batchSize": batch_size}
    if error_policy is not None:
        flow_spec["errorPolicy"] = dict(error_policy)
    (folder / "flow.yaml").write_text(yaml.safe_dump(_doc("ScoringFlow", flow, flow_spec), sort_keys=False))
    pipeline = _doc("ScoringPipeline", "digits-test", {"mode": mode, "flows": [flow], "parameters": list(parameters)})
    (folder / "pipeline.yaml").write_text(yaml.safe_dump(pipeline, sort_keys=False))
    return folder


def render_values(
    bundle: Path,
    out: Path,
    params: Mapping[str, Any] | None = None,
    *,
    job_id: str = "",
    scheduler_url: str | None = None,
    token: str | None = None,
) -> Path:
    """Validate and render a bundle into a values file (as install would)."""
    loaded = ir.load_bundle(bundle)
    settings: dict[str, Any] = {"jobId": job_id}
    if scheduler_url is not None:
        settings["scheduler"] = {"url": scheduler_url, "token": token}
    values = ir.render(loaded, params or {}, ir.make_globals(settings))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(ir.to_yaml(values))
    return out


# ---------------------------------------------------------------------------------------------- processes


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Services:
    """Real `modelops scoring-service` processes, one per scoring service of a values file."""

    values: Path
    logs: Path
    ports: dict[str, int] = field(default_factory=dict)
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def urls(self) -> dict[str, str]:
        return {name: f"http://127.0.0.1:{port}" for name, port in self.ports.items()}

    def start(self, name: str, port: int | None = None) -> None:
        self.ports[name] = port or self.ports.get(name) or free_port()
        self.logs.mkdir(parents=True, exist_ok=True)
        log = open(self.logs / f"{name}.log", "ab")  # noqa: SIM115 - the child owns it from here
        self.procs[name] = subprocess.Popen(
            [
                MODELOPS,
                "scoring-service",
                "--values",
                str(self.values),
                "--service",
                name,
                "--port",
                str(self.ports[name]),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, "MODELOPS_SCORING_INFERENCE_THREADS": "2"},
        )
        log.close()

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        with httpx.Client(trust_env=False, timeout=1.0) as client:
            for name, url in self.urls.items():
                while True:
                    with contextlib.suppress(httpx.HTTPError):
                        if client.get(f"{url}/v2/models/{name}/ready").status_code == 200:
                            break
                    proc = self.procs[name]
                    if proc.poll() is not None or time.monotonic() > deadline:
                        raise AssertionError(f"{name} not ready: {(self.logs / f'{name}.log').read_text()[-2000:]}")
                    time.sleep(0.05)

    def kill(self, name: str) -> None:
        proc = self.procs[name]
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)

    def stop(self) -> None:
        for proc in self.procs.values():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)


@contextlib.contextmanager
def services(values: Path, names: Sequence[str], logs: Path) -> Iterator[Services]:
    running = Services(values, logs)
    try:
        for name in names:
            running.start(name)
        running.wait_ready()
        yield running
    finally:
        running.stop()


def flow_env(urls: Mapping[str, str], **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELOPS_FLOW_")}
    env["MODELOPS_SERVICE_URLS"] = json.dumps(dict(urls))
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def start_flow(values: Path, flow: str, env: Mapping[str, str], log: Path, cwd: Path) -> subprocess.Popen[bytes]:
    handle = open(log, "ab")  # noqa: SIM115 - the child owns it from here
    try:
        return subprocess.Popen(
            [MODELOPS, "flow", "--values", str(values), "--flow", flow],
            stdout=handle,
            stderr=subprocess.STDOUT,
            env=dict(env),
            cwd=cwd,
            start_new_session=True,
        )
    finally:
        handle.close()


# ---------------------------------------------------------------------------------------------- scheduler stub

Scope = MutableMapping[str, Any]


@dataclass
class StubScheduler:
    """Records `/progress` and `/complete` reports of one job (and checks the bearer token)."""

    token: str = "mjt_test-token"
    job_id: str = "0d9f6a3c-5b1e-4c1e-9a7b-2f0c8e1d4a55"
    progress: list[dict[str, Any]] = field(default_factory=list)
    completions: list[dict[str, Any]] = field(default_factory=list)
    final_outage: int = 0
    """Answer this many attempts of each final report (the `done`/`failed` progress, the completion) with 503,
    as a scheduler that restarts while the flow finishes."""
    refused: list[str] = field(default_factory=list)
    """What was answered 503 (`progress` or `complete`), in order."""
    url: str = ""
    _server: uvicorn.Server | None = None
    _thread: threading.Thread | None = None

    async def app(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = dict(scope["headers"])
        status = 202
        if headers.get(b"authorization") != f"Bearer {self.token}".encode():
            status = 401
        elif scope["path"] == f"/api/v1/jobs/{self.job_id}/progress":
            report = orjson.loads(body)
            if report.get("state") in ("done", "failed") and self.refused.count("progress") < self.final_outage:
                self.refused.append("progress")
                status = 503
            else:
                self.progress.append(report)
                status = 200
        elif scope["path"] == f"/api/v1/jobs/{self.job_id}/complete":
            if self.refused.count("complete") < self.final_outage:
                self.refused.append("complete")
                status = 503
            else:
                self.completions.append(orjson.loads(body))
        else:
            status = 404
        await send(
            {"type": "http.response.start", "status": status, "headers": [(b"content-type", b"application/json")]}
        )
        await send({"type": "http.response.body", "body": b"{}"})

    def __enter__(self) -> StubScheduler:
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        config = uvicorn.Config(self.app, interface="asgi3", lifespan="off", log_level="warning", ws="none")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [sock]}, daemon=True)
        self._thread.start()
        while not self._server.started:
            time.sleep(0.01)
        return self

    def __exit__(self, *_: object) -> None:
        assert self._server is not None and self._thread is not None
        self._server.should_exit = True
        self._thread.join(10)
