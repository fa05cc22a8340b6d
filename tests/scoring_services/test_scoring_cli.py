"""`modelops scoring-service`: model arguments, values documents, and a real process started and stopped."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import yaml
from conftest import Digits
from scoring_kit import free_port, infer_body

from ir.models import Autoscaling, Batching, ModelSpec, Resources
from ir.render import ScoringServiceValues
from scoring_services.config import ConfigError, configs_from_values, parse_model_arg, parse_option_args
from scoring_services.settings import ScoringSettings
from scoring_services.types import TensorSpec

SHA = "ab" * 32
MODELOPS = Path(sys.executable).parent / "modelops"


def write_values(path: Path, digits: Digits, sha256: str | None = None) -> Path:
    """A values document as `modelops ir render` writes it, with one scoring service for the digits forest."""
    spec = ModelSpec.model_validate(
        {
            "runtime": "sklearn",
            "uri": digits.joblib_path.as_uri(),
            "sha256": sha256 or digits.joblib_sha,
            "version": "2",
            "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 64]}],
            "outputs": [
                {"name": "predict", "datatype": "INT64", "shape": [-1]},
                {"name": "predict_proba", "datatype": "FP64", "shape": [-1, 10]},
            ],
            "batching": {"enabled": True, "maxBatchSize": 32, "maxLatencyMs": 2},
        }
    )
    service = ScoringServiceValues(
        name="digits-rf",
        model=spec,
        replicas=1,
        autoscaling=Autoscaling(),
        batching=Batching(enabled=True, max_batch_size=32, max_latency_ms=2),
        resources=Resources(),
    )
    document = {
        "global": {"logLevel": "info"},
        "scoringServices": {"digits-rf": service.model_dump(mode="json", by_alias=True, exclude_none=True)},
    }
    path.write_text(yaml.safe_dump(document))
    return path


def test_a_model_argument_takes_runtime_uri_and_an_optional_sha256() -> None:
    settings = ScoringSettings(default_max_batch_size=16)
    plain = parse_model_arg("digits=onnx:models/digits.onnx", settings)
    assert (plain.name, plain.runtime, plain.uri, plain.sha256) == ("digits", "onnx", "models/digits.onnx", None)
    assert plain.batching.max_batch_size == 16
    pinned = parse_model_arg(f"rf=sklearn:https://store.example/rf.joblib:{SHA}", settings, {"rf": {"nJobs": 2}})
    assert (pinned.uri, pinned.sha256) == ("https://store.example/rf.joblib", SHA)
    assert pinned.options == {"nJobs": 2}
    assert parse_model_arg("lm=transformers:file:///models/lm", settings).uri == "file:///models/lm"


@pytest.mark.parametrize(
    ("argument", "fragment"),
    [("digits", "NAME=RUNTIME:URI"), ("digits=onnx", "NAME=RUNTIME:URI"), ("d=tensorflow:m", "unknown runtime")],
)
def test_a_malformed_model_argument_says_what_is_expected(argument: str, fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        parse_model_arg(argument, ScoringSettings())


def test_options_are_typed() -> None:
    assert parse_option_args(["m.intraOpThreads=2", "m.task=text-generation", "m.fast=true", "n.x=0.5"]) == {
        "m": {"intraOpThreads": 2, "task": "text-generation", "fast": True},
        "n": {"x": 0.5},
    }
    with pytest.raises(ConfigError, match=r"MODEL\.KEY=VALUE"):
        parse_option_args(["intraOpThreads=2"])


def test_a_values_document_gives_the_services_model(tmp_path: Path, digits: Digits) -> None:
    values = write_values(tmp_path / "values.yaml", digits)
    (config,), globals_ = configs_from_values(values, ["digits-rf"])
    assert config.name == "digits-rf"
    assert config.version == "2"
    assert config.sha256 == digits.joblib_sha
    assert config.inputs == (TensorSpec("input", "FP32", (-1, 64)),)
    assert (config.batching.max_batch_size, config.batching.max_latency_ms) == (32, 2)
    assert globals_ == {"logLevel": "info"}


def test_an_unknown_service_or_a_non_values_file_is_reported(tmp_path: Path, digits: Digits) -> None:
    values = write_values(tmp_path / "values.yaml", digits)
    with pytest.raises(ConfigError, match="no scoring service 'other' \\(it has: digits-rf\\)"):
        configs_from_values(values, ["other"])
    (tmp_path / "bad.yaml").write_text("just: text\n")
    with pytest.raises(ConfigError, match="no 'scoringServices'"):
        configs_from_values(tmp_path / "bad.yaml", [])


def wait_ready(port: int, process: subprocess.Popen[str], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(
                f"the server exited with {process.returncode}: {process.stdout.read() if process.stdout else ''}"
            )
        try:
            if httpx.get(f"http://127.0.0.1:{port}/v2/health/ready", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise AssertionError("the server did not become ready")


@pytest.mark.slow
@pytest.mark.skipif(not MODELOPS.exists(), reason="the modelops console script is not installed")
def test_the_local_backend_form_serves_a_values_service_and_stops_on_sigterm(tmp_path: Path, digits: Digits) -> None:
    values = write_values(tmp_path / "values.yaml", digits)
    port = free_port()
    env = {**os.environ, "MODELOPS_SCORING_PORT": str(port), "MODELOPS_SCORING_CACHE_DIR": str(tmp_path / "cache")}
    process = subprocess.Popen(
        [str(MODELOPS), "scoring-service", "--values", str(values), "--service", "digits-rf"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    try:
        wait_ready(port, process)
        rows = digits.features[:3]
        answer = httpx.post(
            f"http://127.0.0.1:{port}/v2/models/digits-rf/infer", json=infer_body("input", rows, "FP32")
        ).json()
        assert answer["outputs"][0]["data"] == digits.forest.predict(rows).tolist()
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0
    assert f"loaded model 'digits-rf' (runtime sklearn, version 2) from {digits.joblib_path}" in output
    assert "unloaded model 'digits-rf'" in output


@pytest.mark.slow
@pytest.mark.skipif(not MODELOPS.exists(), reason="the modelops console script is not installed")
def test_a_model_that_fails_to_load_at_startup_stops_the_process_with_exit_code_1(
    tmp_path: Path, digits: Digits
) -> None:
    values = write_values(tmp_path / "values.yaml", digits, sha256="c" * 64)
    result = subprocess.run(
        [
            str(MODELOPS),
            "scoring-service",
            "--values",
            str(values),
            "--service",
            "digits-rf",
            "--port",
            str(free_port()),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "MODELOPS_SCORING_CACHE_DIR": str(tmp_path / "cache")},
    )
    assert result.returncode == 1
    assert "sha256 mismatch" in result.stderr


@pytest.mark.slow
@pytest.mark.skipif(not MODELOPS.exists(), reason="the modelops console script is not installed")
@pytest.mark.parametrize("how", ["option", "env", "values"])
def test_with_the_json_log_format_every_log_line_is_one_object_with_our_timestamp(
    tmp_path: Path, digits: Digits, how: str
) -> None:
    values = write_values(tmp_path / "values.yaml", digits, sha256="c" * 64)  # fails to load: a short run
    env = {**os.environ, "MODELOPS_SCORING_CACHE_DIR": str(tmp_path / "cache")}
    extra = ["--log-format", "json"] if how == "option" else []
    if how == "env":
        env["MODELOPS_SCORING_LOG_FORMAT"] = "json"
    if how == "values":  # global.logFormat, as the scheduler renders it from its own log format
        document = yaml.safe_load(values.read_text())
        document["global"]["logFormat"] = "json"
        values.write_text(yaml.safe_dump(document))
        env.pop("MODELOPS_SCORING_LOG_FORMAT", None)
    command = [str(MODELOPS), "scoring-service", "--values", str(values), "--service", "digits-rf"]
    result = subprocess.run(
        [*command, "--port", str(free_port()), *extra], capture_output=True, text=True, timeout=60, env=env
    )
    assert result.returncode == 1
    documents = [json.loads(line) for line in result.stderr.splitlines()]
    assert documents, result.stderr
    for document in documents:
        assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$", document["ts"]), document
        assert {"level", "logger", "message"} <= set(document)
    assert any("sha256 mismatch" in (d["message"] + d.get("exception", "")) for d in documents)


def test_the_command_refuses_to_start_with_nothing_to_serve() -> None:
    from typer.testing import CliRunner

    from scheduler.cli import app

    result = CliRunner().invoke(app, ["scoring-service"])
    assert result.exit_code == 2
    assert "nothing to serve" in result.output


def test_a_model_arg_serves_in_process_with_numpy_rows(digits: Digits) -> None:
    config = parse_model_arg(f"d=sklearn:{digits.joblib_path.as_uri()}:{digits.joblib_sha}", ScoringSettings())
    assert config.sha256 == digits.joblib_sha
    assert np.asarray(digits.features[:1]).shape == (1, 64)


@pytest.mark.slow
@pytest.mark.skipif(not MODELOPS.exists(), reason="the modelops console script is not installed")
def test_the_model_form_serves_artifacts_given_on_the_command_line(tmp_path: Path, digits: Digits) -> None:
    port = free_port()
    process = subprocess.Popen(
        [
            str(MODELOPS),
            "scoring-service",
            "--model",
            f"rf=onnx:{digits.onnx_path.as_uri()}:{digits.onnx_sha}",
            "--option",
            "rf.intraOpThreads=1",
            "--port",
            str(port),
            "--no-batching",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "MODELOPS_SCORING_CACHE_DIR": str(tmp_path / "cache")},
    )
    try:
        wait_ready(port, process)
        metadata = httpx.get(f"http://127.0.0.1:{port}/v2/models/rf").json()
        rows = digits.features[:2]
        answer = httpx.post(f"http://127.0.0.1:{port}/v2/models/rf/infer", json=infer_body("X", rows, "FP32")).json()
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert metadata["platform"] == "onnx"
    assert answer["outputs"][0]["data"] == digits.forest.predict(rows).tolist()
    assert process.returncode == 0
    assert "no batching" in output


@pytest.mark.slow
@pytest.mark.skipif(not MODELOPS.exists(), reason="the modelops console script is not installed")
def test_a_service_stopped_while_a_model_loads_exits_without_waiting_for_the_load(tmp_path: Path) -> None:
    module = tmp_path / "slow.py"
    started = tmp_path / "load-started"
    module.write_text(
        "import pathlib, time\n"
        f"def load(path):\n    pathlib.Path({str(started)!r}).touch()\n    time.sleep(600)\n"
        "def predict(batch):\n    return batch\n"
    )
    port = free_port()
    process = subprocess.Popen(
        [str(MODELOPS), "scoring-service", "--model", f"slow=python:{module}", "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "MODELOPS_SCORING_CACHE_DIR": str(tmp_path / "cache")},
    )
    try:
        deadline = time.monotonic() + 60
        while not started.exists():
            assert process.poll() is None and time.monotonic() < deadline, "the model load did not start"
            time.sleep(0.05)
        process.send_signal(signal.SIGTERM)
        # The load sleeps 600s: a service that waited for it would outlast this net.
        output, _ = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0, output
    assert "exiting without waiting for 1 busy thread(s) (a model load or an inference)" in output
