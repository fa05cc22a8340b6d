"""A flow's log lines: ISO 8601 UTC milliseconds first (text), or one JSON object per line (`--log-format json`)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from flow_kit import render_values

from ir.logformat import line_timestamp
from scoring_flows.cli import load_values
from scoring_flows.runtime import Flow
from scoring_flows.settings import FlowSettings

DIGITS = Path(__file__).resolve().parents[2] / "examples" / "digits"
MODELOPS = Path(sys.executable).parent / "modelops"
STAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


def _flow(tmp_path: Path, settings: FlowSettings, lines: list[str]) -> Flow:
    values = render_values(
        DIGITS,
        tmp_path / "values.yaml",
        job_id="0d9f6a3c-5b1e-4c1e-9a7b-2f0c8e1d4a55",
        scheduler_url="http://127.0.0.1:9",
    )
    return Flow(load_values(values), "digits-batch", settings=settings, workdir=tmp_path, log=lines.append)


def test_a_text_line_starts_with_the_utc_millisecond_timestamp_and_names_the_flow(tmp_path: Path) -> None:
    lines: list[str] = []
    _flow(tmp_path, FlowSettings(), lines).log("1000 records read")
    stamp, rest = lines[0].split(" ", 1)
    assert STAMP.match(stamp)
    assert rest == "flow digits-batch: 1000 records read"


def test_a_json_line_is_one_object_with_ts_level_logger_and_message(tmp_path: Path) -> None:
    lines: list[str] = []
    _flow(tmp_path, FlowSettings(log_format="json"), lines).log("failed:\nTraceback (most recent call last):")
    assert len(lines) == 1 and "\n" not in lines[0]
    document = json.loads(lines[0])
    assert STAMP.match(document["ts"]) and line_timestamp(lines[0]) == document["ts"]
    assert document["level"] == "INFO"
    assert document["logger"] == "scoring_flows.digits-batch"
    assert document["message"] == "failed:\nTraceback (most recent call last):"


def test_the_log_format_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODELOPS_FLOW_LOG_FORMAT", "json")
    assert FlowSettings().log_format == "json"


@pytest.mark.slow
@pytest.mark.skipif(not MODELOPS.exists(), reason="the modelops console script is not installed")
def test_a_flow_writes_json_lines_when_its_values_say_so(tmp_path: Path) -> None:
    values = render_values(
        DIGITS,
        tmp_path / "values.yaml",
        job_id="0d9f6a3c-5b1e-4c1e-9a7b-2f0c8e1d4a55",
        scheduler_url="http://127.0.0.1:9",
    )
    document = yaml.safe_load(values.read_text())
    document["global"]["logFormat"] = "json"
    values.write_text(yaml.safe_dump(document))
    env = {k: v for k, v in os.environ.items() if k != "MODELOPS_FLOW_LOG_FORMAT"}
    env.update(
        MODELOPS_FLOW_READY_TIMEOUT_SECONDS="0.2",  # no scoring service runs: it fails at once
        MODELOPS_FLOW_COMPLETE_TIMEOUT_SECONDS="0.2",
        MODELOPS_SERVICE_URLS='{"digits-rf": "http://127.0.0.1:9", "digits-rf-onnx": "http://127.0.0.1:9"}',
    )
    result = subprocess.run(
        [str(MODELOPS), "flow", "--values", str(values), "--flow", "digits-batch"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=tmp_path,
    )
    assert result.returncode == 1, result.stdout + result.stderr
    documents = [json.loads(line) for line in result.stdout.splitlines()]
    assert documents and all(STAMP.match(d["ts"]) for d in documents)
    assert {d["logger"] for d in documents} == {"scoring_flows.digits-batch"}
