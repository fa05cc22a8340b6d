"""Benchmark: the scoring service against MLServer 1.7.1 + mlserver-sklearn on the same models (issue 4).

The model is the digits example's: a RandomForest (100 trees, depth 10, random_state 0) trained on sklearn's
bundled `load_digits`, as joblib and as ONNX (skl2onnx, zipmap off). Load comes from `wrk` (a compiled client,
in its own process; `apt-get install wrk`). Both servers run as their own processes on this machine, each with
its best configuration tried:

- A. single-row requests, 16 connections: ours (adaptive batching on, the default) against MLServer with
  adaptive batching (max_batch_size 64, max_batch_time 5 ms) and without, each with parallel_workers 0 and 1;
- B. 1000-row JSON requests, 4 connections: rows/s against MLServer's best and in-process `predict_proba`;
- C. the ONNX model, single-row requests at 16 connections, with 1 request in 50 to /v2/health/ready and
  1 in 100 to /metrics in the mix: req/s and p99;
- D. 10,000-row requests at 2 connections: JSON against binary tensors (request and response), sklearn
  and ONNX, against in-process and MLServer's JSON;
- E. single-row requests from one connection: the latency batching adds (or not) when there is no load.
- F and G, a second model family (issue 14): a gradient-boosting classifier (100 rounds, 3 classes, depth 3)
  on 30 float features (sklearn's `make_classification`, FP64), asked with the DEFAULT outputs (no `outputs`
  in the request: ours answers `predict` and `predict_proba`, MLServer `predict`); F single rows at 16
  connections, G 1000-row JSON at 4 connections, against MLServer's best; G also with the model option
  `processes: 2` (the model's calls in two worker processes: gradient boosting holds the GIL).

All servers are started first and the runs interleaved, round after round (default 3 rounds of 5 s per run,
after a 2 s warm-up), so that load from elsewhere on a shared machine hits every server alike; each figure is
the best of its rounds, in-process figures included. Every request of A to E asks for `predict_proba`
(sklearn) or `probabilities` (ONNX), so both servers do the same work; F and G ask for the defaults.
Figures are printed with the ratio to their peer and written to `<workdir>/results.json`; nothing fails on a
slow figure (benchmarks report, CI does not gate on them).

MLServer lives in its own virtualenv (default `.bench-venv`, made on first use: mlserver==1.7.1,
mlserver-sklearn==1.7.1, uvloop<0.21, which its CLI needs to start, and this venv's scikit-learn version so the
pickle loads). Run this with no test suite or other benchmark going: the machine load is printed.

Usage:
    .venv/bin/python bench/scoring_service.py [--duration S] [--rounds N] [--skip-mlserver] [--workdir DIR]
                                              [--venv DIR]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
MLSERVER_PINS = ["mlserver==1.7.1", "mlserver-sklearn==1.7.1", "uvloop<0.21"]

MIXED_LUA = """
local infer_body = io.open(os.getenv("BODY"), "rb"):read("*all")
local n = 0
request = function()
  n = n + 1
  if n % 100 == 0 then
    return wrk.format("GET", "/metrics")
  elseif n % 50 == 0 then
    return wrk.format("GET", "/v2/health/ready")
  end
  return wrk.format("POST", os.getenv("INFER_PATH"), {["Content-Type"] = "application/json"}, infer_body)
end
"""
POST_LUA = """
local f = io.open(os.getenv("BODY"), "rb")
wrk.method = "POST"
wrk.body = f:read("*all")
f:close()
wrk.headers["Content-Type"] = os.getenv("CONTENT_TYPE") or "application/json"
local header_length = os.getenv("HEADER_LENGTH")
if header_length and header_length ~= "" then
  wrk.headers["Inference-Header-Content-Length"] = header_length
end
"""


@dataclass
class Run:
    scenario: str
    server: str
    config: str
    connections: int
    requests_per_s: float
    rows_per_request: int
    p50_ms: float
    p99_ms: float
    errors: int

    @property
    def rows_per_s(self) -> float:
        return self.requests_per_s * self.rows_per_request


# ---------------------------------------------------------------------------------------------- setup


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def train(workdir: Path) -> tuple[Any, np.ndarray, Path, Path]:
    import joblib
    from skl2onnx import to_onnx
    from sklearn.datasets import load_digits
    from sklearn.ensemble import RandomForestClassifier

    features = load_digits().data.astype(np.float32)
    target = load_digits().target
    forest = RandomForestClassifier(n_estimators=100, max_depth=10, random_state=0, n_jobs=1).fit(features, target)
    joblib_path = workdir / "digits" / "digits.joblib"
    joblib_path.parent.mkdir(parents=True, exist_ok=True)
    joblib.dump(forest, joblib_path)
    onnx_model = to_onnx(forest, features[:1], options={id(forest): {"zipmap": False}}, target_opset=17)
    graph = onnx_model.graph  # skl2onnx names the input "X"; name it "input" as examples/digits does
    old_name, graph.input[0].name = graph.input[0].name, "input"
    for node in graph.node:
        node.input[:] = ["input" if name == old_name else name for name in node.input]
    onnx_path = workdir / "digits.onnx"
    onnx_path.write_bytes(onnx_model.SerializeToString())
    return forest, features, joblib_path, onnx_path


def train_boosting(workdir: Path) -> tuple[Any, np.ndarray, Path]:
    """The second family: a gradient-boosting classifier on 30 FP64 features."""
    import joblib
    from sklearn.datasets import make_classification
    from sklearn.ensemble import GradientBoostingClassifier

    features, target = make_classification(n_samples=3000, n_features=30, n_informative=12, n_classes=3, random_state=0)
    model = GradientBoostingClassifier(n_estimators=100, max_depth=3, random_state=0).fit(features, target)
    path = workdir / "gb" / "gb.joblib"
    path.parent.mkdir(parents=True, exist_ok=True)
    joblib.dump(model, path)
    return model, features, path


def write_boosting_bodies(workdir: Path, features: np.ndarray) -> dict[str, tuple[Path, int | None]]:
    """Requests without `outputs`: each server answers its defaults."""
    rng = np.random.default_rng(1)
    bodies: dict[str, tuple[Path, int | None]] = {}
    for rows in (1, 1000):
        picked = features[rng.integers(0, len(features), size=rows)]
        document = {
            "inputs": [{"name": "input", "datatype": "FP64", "shape": [rows, 30], "data": picked.ravel().tolist()}]
        }
        path = workdir / f"gb-{rows}.json"
        path.write_text(json.dumps(document))
        bodies[f"gb-{rows}"] = (path, None)
    return bodies


def write_bodies(workdir: Path, features: np.ndarray) -> dict[str, tuple[Path, int | None]]:
    """Request bodies: name -> (file, Inference-Header-Content-Length or None)."""
    rng = np.random.default_rng(0)
    bodies: dict[str, tuple[Path, int | None]] = {}
    for rows in (1, 1000, 10_000):
        picked = features[rng.integers(0, len(features), size=rows)]
        for model, output in (("digits", "predict_proba"), ("onnx", "probabilities")):
            document = {
                "inputs": [{"name": "input", "datatype": "FP32", "shape": [rows, 64], "data": picked.ravel().tolist()}],
                "outputs": [{"name": output}],
            }
            path = workdir / f"{model}-{rows}.json"
            path.write_text(json.dumps(document))
            bodies[f"{model}-{rows}"] = (path, None)
            if rows == 10_000:
                blob = np.ascontiguousarray(picked, dtype="<f4").tobytes()
                header = json.dumps(
                    {
                        "inputs": [
                            {
                                "name": "input",
                                "datatype": "FP32",
                                "shape": [rows, 64],
                                "parameters": {"binary_data_size": len(blob)},
                            }
                        ],
                        "outputs": [{"name": output, "parameters": {"binary_data": True}}],
                    }
                ).encode()
                binary = workdir / f"{model}-{rows}.bin"
                binary.write_bytes(header + blob)
                bodies[f"{model}-{rows}-binary"] = (binary, len(header))
    return bodies


def ensure_mlserver_venv(venv: Path) -> Path:
    mlserver = venv / "bin" / "mlserver"
    if mlserver.exists():
        return mlserver
    import sklearn

    print(f"creating {venv} with {', '.join(MLSERVER_PINS)} (once)", flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet"]
    subprocess.run([*pip, "--upgrade", "pip"], check=True)
    subprocess.run([*pip, *MLSERVER_PINS, f"scikit-learn=={sklearn.__version__}"], check=True)
    return mlserver


# ---------------------------------------------------------------------------------------------- servers


def wait_ready(url: str, process: subprocess.Popen[bytes], timeout: float = 120) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode} before it was ready")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not answer 200 within {timeout:.0f}s")


@contextmanager
def process(command: list[str], ready_url: str, log: Path, cwd: Path | None = None) -> Iterator[None]:
    with log.open("wb") as sink:
        proc = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT, cwd=cwd, start_new_session=True)
        try:
            wait_ready(ready_url, proc)
            time.sleep(0.5)
            yield
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()


@contextmanager
def ours(workdir: Path, joblib_path: Path, onnx_path: Path, gb_path: Path, port: int) -> Iterator[str]:
    modelops = Path(sys.executable).parent / "modelops"
    command = [
        str(modelops),
        "scoring-service",
        "--model",
        f"digits=sklearn:{joblib_path.as_uri()}:{sha256_of(joblib_path)}",
        "--model",
        f"onnx=onnx:{onnx_path.as_uri()}:{sha256_of(onnx_path)}",
        "--model",
        f"gb=sklearn:{gb_path.as_uri()}:{sha256_of(gb_path)}",
        "--model",
        f"gbp=sklearn:{gb_path.as_uri()}:{sha256_of(gb_path)}",
        "--option",
        "gbp.processes=2",
        "--port",
        str(port),
        "--log-level",
        "warning",
    ]
    base = f"http://127.0.0.1:{port}"
    with process(command, f"{base}/v2/health/ready", workdir / "ours.log"):
        yield base


@contextmanager
def mlserver(
    venv: Path, workdir: Path, models: dict[str, Path], port: int, batching: bool, workers: int
) -> Iterator[str]:
    executable = ensure_mlserver_venv(venv)
    folder = workdir / f"mlserver-{'batch' if batching else 'nobatch'}-{workers}"
    shutil.rmtree(folder, ignore_errors=True)
    for name, joblib_path in models.items():
        (folder / name).mkdir(parents=True)
        shutil.copy(joblib_path, folder / name / f"{name}.joblib")
        model: dict[str, Any] = {
            "name": name,
            "implementation": "mlserver_sklearn.SKLearnModel",
            "parameters": {"uri": f"./{name}.joblib", "version": "1"},
        }
        if batching:
            model.update({"max_batch_size": 64, "max_batch_time": 0.005})
        (folder / name / "model-settings.json").write_text(json.dumps(model))
    settings = {
        "http_port": port,
        "grpc_port": free_port(),
        "metrics_port": free_port(),
        "parallel_workers": workers,
        "debug": False,
    }
    (folder / "settings.json").write_text(json.dumps(settings))
    base = f"http://127.0.0.1:{port}"
    last = list(models)[-1]
    with process([str(executable), "start", "."], f"{base}/v2/models/{last}/ready", folder / "mlserver.log", folder):
        yield base


# ---------------------------------------------------------------------------------------------- load


def _ms(text: str) -> float:
    match = re.match(r"([\d.]+)(us|ms|s)", text)
    if not match:
        return float("nan")
    value, unit = float(match.group(1)), match.group(2)
    return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value


def wrk(
    url: str,
    body: tuple[Path, int | None],
    connections: int,
    duration: int,
    workdir: Path,
    *,
    mixed_path: str | None = None,
) -> tuple[float, float, float, int]:
    """(requests/s, p50 ms, p99 ms, non-2xx count) of one wrk run (after a short warm-up)."""
    script = workdir / ("mixed.lua" if mixed_path else "post.lua")
    script.write_text(MIXED_LUA if mixed_path else POST_LUA)
    env = {**os.environ, "BODY": str(body[0]), "HEADER_LENGTH": "" if body[1] is None else str(body[1])}
    if body[1] is not None:
        env["CONTENT_TYPE"] = "application/octet-stream"
    target = url
    if mixed_path:
        env["INFER_PATH"] = mixed_path
        target = url.split("/v2/")[0]
    threads = min(2, connections)
    base = ["wrk", f"-t{threads}", f"-c{connections}", "--latency", "--timeout", "10s", "-s", str(script)]
    subprocess.run([*base, "-d2s", target], env=env, check=True, capture_output=True)  # warm-up
    out = subprocess.run([*base, f"-d{duration}s", target], env=env, check=True, capture_output=True, text=True).stdout
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p50 = _ms(re.search(r"\s50%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    p99 = _ms(re.search(r"\s99%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    errors_match = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    socket_errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    errors = int(errors_match.group(1)) if errors_match else 0
    if socket_errors:
        errors += sum(int(g) for g in socket_errors.groups())
    return rate, p50, p99, errors


def in_process(
    forest: Any, onnx_path: Path, features: np.ndarray, gb: Any, gb_features: np.ndarray
) -> dict[str, float]:
    """Rows/s of the models called directly: sklearn predict_proba on 1000 and 10,000 rows, ONNX on 10,000."""
    import onnxruntime as ort

    def rate(fn: Any, rows: int, seconds: float = 3.0) -> float:
        fn()
        count, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds:
            fn()
            count += 1
        return rows * count / (time.perf_counter() - started)

    rng = np.random.default_rng(0)
    k1 = features[rng.integers(0, len(features), size=1000)]
    k10 = features[rng.integers(0, len(features), size=10_000)]
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    return {
        "sklearn_1000": rate(lambda: forest.predict_proba(k1), 1000),
        "sklearn_10000": rate(lambda: forest.predict_proba(k10), 10_000),
        "onnx_10000": rate(lambda: session.run(["probabilities"], {"input": k10}), 10_000),
        "gb_1000": rate(lambda: gb.predict_proba(gb_features[:1000]), 1000),
    }


# ---------------------------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=int, default=5, help="seconds per measured run (default 5)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; figures are the best (default 3)")
    parser.add_argument("--workdir", type=Path, default=ROOT / ".bench" / "scoring")
    parser.add_argument("--venv", type=Path, default=ROOT / ".bench-venv", help="MLServer's virtualenv")
    parser.add_argument("--skip-mlserver", action="store_true", help="measure only this service")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is needed: apt-get install -y wrk")
    workdir: Path = args.workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    duration: int = args.duration

    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    forest, features, joblib_path, onnx_path = train(workdir)
    gb, gb_features, gb_path = train_boosting(workdir)
    bodies = {**write_bodies(workdir, features), **write_boosting_bodies(workdir, gb_features)}
    local: dict[str, float] = {}
    runs: list[Run] = []

    def record(scenario: str, server: str, config: str, url: str, body: str, conns: int, rows: int, **kw: Any) -> Run:
        rate, p50, p99, errors = wrk(url, bodies[body], conns, duration, workdir, **kw)
        run = Run(scenario, server, config, conns, rate, rows, p50, p99, errors)
        runs.append(run)
        print(
            f"  {scenario} {server:9s} {config:28s} {rate:9.0f} req/s {run.rows_per_s:10.0f} rows/s "
            f"p50 {p50:7.2f} ms p99 {p99:7.2f} ms errors {errors}",
            flush=True,
        )
        return run

    # All servers run at once (idle ones cost nothing) and the runs are interleaved, round after round, so a
    # burst of load from elsewhere on the machine hits every server alike; each figure is the best of its rounds.
    plan: list[tuple[str, str, str, str, str, int, int, dict[str, Any]]] = []
    with ExitStack() as stack:
        base = stack.enter_context(ours(workdir, joblib_path, onnx_path, gb_path, free_port()))
        sk, ox, gbu = f"{base}/v2/models/digits/infer", f"{base}/v2/models/onnx/infer", f"{base}/v2/models/gb/infer"
        gbp = f"{base}/v2/models/gbp/infer"
        mixed = {"mixed_path": "/v2/models/onnx/infer"}
        plan += [
            ("A", "modelops", "batching", sk, "digits-1", 16, 1, {}),
            ("B", "modelops", "batching", sk, "digits-1000", 4, 1000, {}),
            ("C", "modelops", "onnx +health +metrics", ox, "onnx-1", 16, 1, mixed),
            ("D", "modelops", "sklearn json", sk, "digits-10000", 2, 10_000, {}),
            ("D", "modelops", "sklearn binary", sk, "digits-10000-binary", 2, 10_000, {}),
            ("D", "modelops", "onnx json", ox, "onnx-10000", 2, 10_000, {}),
            ("D", "modelops", "onnx binary", ox, "onnx-10000-binary", 2, 10_000, {}),
            ("E", "modelops", "sklearn, 1 connection", sk, "digits-1", 1, 1, {}),
            ("E", "modelops", "onnx, 1 connection", ox, "onnx-1", 1, 1, {}),
            ("F", "modelops", "batching", gbu, "gb-1", 16, 1, {}),
            ("G", "modelops", "batching", gbu, "gb-1000", 4, 1000, {}),
            ("G", "modelops", "batching, processes 2", gbp, "gb-1000", 4, 1000, {}),
        ]
        if not args.skip_mlserver:
            for batching in (True, False):
                for workers in (0, 1):
                    config = f"{'batching' if batching else 'no batching'}, parallel_workers {workers}"
                    models = {"digits": joblib_path, "gb": gb_path}
                    ml = stack.enter_context(mlserver(args.venv, workdir, models, free_port(), batching, workers))
                    url, ml_gb = f"{ml}/v2/models/digits/infer", f"{ml}/v2/models/gb/infer"
                    plan.append(("A", "mlserver", config, url, "digits-1", 16, 1, {}))
                    plan.append(("F", "mlserver", config, ml_gb, "gb-1", 16, 1, {}))
                    plan.append(("G", "mlserver", config, ml_gb, "gb-1000", 4, 1000, {}))
                    plan.append(("E", "mlserver", config + ", 1 connection", url, "digits-1", 1, 1, {}))
                    if batching:
                        plan.append(("B", "mlserver", config, url, "digits-1000", 4, 1000, {}))
                        plan.append(("D", "mlserver", config + " json", url, "digits-10000", 2, 10_000, {}))
        plan.sort(key=lambda entry: entry[0])
        for round_number in range(1, args.rounds + 1):
            print(f"round {round_number}/{args.rounds} (load average {os.getloadavg()[0]:.2f}):", flush=True)
            for scenario, server, config, url, body, conns, rows, extra in plan:
                record(scenario, server, config, url, body, conns, rows, **extra)
            for key, value in in_process(forest, onnx_path, features, gb, gb_features).items():
                local[key] = max(local.get(key, 0.0), value)

    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print("\nin-process (rows/s): " + ", ".join(f"{k} {v:,.0f}" for k, v in local.items()))
    report(runs, local)
    results = {"runs": [asdict(r) for r in runs], "in_process": local, "load_average": os.getloadavg()}
    (workdir / "results.json").write_text(json.dumps(results, indent=2))
    print(f"\nwritten to {workdir / 'results.json'}")


def _best(runs: list[Run], scenario: str, server: str, config_part: str = "") -> Run | None:
    chosen = [r for r in runs if r.scenario == scenario and r.server == server and r.config.startswith(config_part)]
    return max(chosen, key=lambda r: r.requests_per_s, default=None)


def report(runs: list[Run], local: dict[str, float]) -> None:
    print("\nsummary")

    def line(label: str, value: float, unit: str, peer: float | None, peer_name: str, target: str) -> None:
        ratio = f"{value / peer:5.2f}x {peer_name}" if peer else "(no peer measured)"
        print(f"  {label:44s} {value:10,.0f} {unit:7s} {ratio:32s} target {target}")

    a = _best(runs, "A", "modelops")
    a_ml = _best(runs, "A", "mlserver", "batching,")
    a_ml_none = _best(runs, "A", "mlserver", "no batching")
    if a:
        line(
            "A single-row sklearn, 16 conns",
            a.requests_per_s,
            "req/s",
            a_ml and a_ml.requests_per_s,
            "MLServer batching",
            ">= 2x",
        )
        if a_ml_none:
            line("", a.requests_per_s, "req/s", a_ml_none.requests_per_s, "MLServer no batching", "")
    b = _best(runs, "B", "modelops")
    b_ml = _best(runs, "B", "mlserver")
    if b:
        line(
            "B 1000-row JSON sklearn, 4 conns", b.rows_per_s, "rows/s", b_ml and b_ml.rows_per_s, "MLServer", ">= 1.5x"
        )
        line("", b.rows_per_s, "rows/s", local["sklearn_1000"], "in-process", ">= 0.6x")
    c = _best(runs, "C", "modelops")
    if c:
        print(
            f"  {'C single-row ONNX, 16 conns, +health/metrics':44s} {c.requests_per_s:10,.0f} req/s   "
            f"p99 {c.p99_ms:.1f} ms{'':17s}target >= 2,500 req/s, p99 < 20 ms"
        )
    for model, key in (("sklearn", "sklearn_10000"), ("onnx", "onnx_10000")):
        json_run = _best(runs, "D", "modelops", f"{model} json")
        binary_run = _best(runs, "D", "modelops", f"{model} binary")
        if json_run and binary_run:
            line(f"D 10k-row {model} JSON, 2 conns", json_run.rows_per_s, "rows/s", local[key], "in-process", "")
            line(
                f"D 10k-row {model} binary, 2 conns",
                binary_run.rows_per_s,
                "rows/s",
                local[key],
                "in-process",
                ">= 0.8x",
            )
            line("", binary_run.rows_per_s, "rows/s", json_run.rows_per_s, "JSON", "")
    latency: dict[tuple[str, str], Run] = {}
    for run in (r for r in runs if r.scenario == "E"):
        kept = latency.get((run.server, run.config))
        if kept is None or run.requests_per_s > kept.requests_per_s:
            latency[(run.server, run.config)] = run
    for (server, config), run in sorted(latency.items()):
        print(f"  {'E ' + server + ' ' + config:60s} p50 {run.p50_ms:6.2f} ms p99 {run.p99_ms:6.2f} ms")
    f = _best(runs, "F", "modelops")
    f_ml = _best(runs, "F", "mlserver")
    if f:
        line(
            "F single-row boosting, defaults, 16 conns",
            f.requests_per_s,
            "req/s",
            f_ml and f_ml.requests_per_s,
            f"MLServer best ({f_ml.config})" if f_ml else "MLServer",
            ">= 3x",
        )
    g_ml = _best(runs, "G", "mlserver")
    g_runs = {
        "G 1000-row JSON boosting, defaults, 4 conns": [r for r in runs if r.config == "batching"],
        "G  same, model option processes 2": [r for r in runs if r.config == "batching, processes 2"],
    }
    for label, chosen in g_runs.items():
        g = _best(chosen, "G", "modelops")
        if g:
            peer = f"MLServer best ({g_ml.config})" if g_ml else "MLServer"
            line(label, g.rows_per_s, "rows/s", g_ml and g_ml.rows_per_s, peer, ">= 1.5x")
            line("", g.rows_per_s, "rows/s", local["gb_1000"], "in-process predict_proba", "")
    d_ml = _best(runs, "D", "mlserver")
    d_json = _best(runs, "D", "modelops", "sklearn json")
    if d_ml and d_json:
        line("D 10k-row sklearn JSON vs MLServer JSON", d_json.rows_per_s, "rows/s", d_ml.rows_per_s, "MLServer", "")


if __name__ == "__main__":
    main()
