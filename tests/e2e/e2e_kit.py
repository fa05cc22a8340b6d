"""Helpers of the end-to-end tests: the digits example's IR with test models, jobs followed to their end."""

from __future__ import annotations

import shutil
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from flow_kit import REPO, Digits, digits_rows, sha256_of, write_digits_csv

from scheduler.client import JobDetail, SchedulerClient

EXAMPLE = REPO / "examples" / "digits"


def digits_example(folder: Path, digits: Digits) -> Path:
    """examples/digits as it is (pipeline, channels, flow), with its two models pointing at the test artifacts."""
    bundle = folder / "digits"
    bundle.mkdir(parents=True)
    shutil.copy(EXAMPLE / "pipeline.yaml", bundle / "pipeline.yaml")
    shutil.copytree(EXAMPLE / "channels", bundle / "channels")
    shutil.copytree(EXAMPLE / "flows", bundle / "flows")
    models = list(yaml.safe_load_all((EXAMPLE / "models" / "digits-rf.yaml").read_text()))
    for model in models:
        path = digits.joblib_path if model["spec"]["runtime"] == "sklearn" else digits.onnx_path
        model["spec"]["uri"] = path.as_uri()
        model["spec"]["sha256"] = sha256_of(path)
    (bundle / "models.yaml").write_text(yaml.safe_dump_all(models, sort_keys=False))
    return bundle


def run_job(client: SchedulerClient, bundle: Path, params: Mapping[str, Any], timeout: float = 180.0) -> JobDetail:
    """Deploy the bundle, start a job, wait until it is terminal."""
    deployment = client.deploy(bundle)
    job = client.create_job(deployment.name, version=deployment.version, parameters=dict(params))
    return wait_terminal(client, job.id, timeout)


def wait_terminal(client: SchedulerClient, job_id: uuid.UUID, timeout: float = 180.0) -> JobDetail:
    deadline = time.monotonic() + timeout
    while True:
        detail = client.get_job(job_id)
        if detail.terminal:
            return detail
        assert time.monotonic() < deadline, f"job {job_id} still {detail.state} after {timeout}s"
        time.sleep(0.05)


def job_logs(client: SchedulerClient, job_id: uuid.UUID) -> str:
    return "\n".join(client.logs(job_id))


def relative_digits_example(folder: Path, digits: Digits, rows: int) -> Path:
    """examples/digits laid out as it is in the repository after `train.py`: its models' relative uris
    (`artifacts/digits-rf.joblib`, `.onnx`) and its input (`data/digits.csv`, the `input` default) inside the
    bundle folder, with the test models and `rows` rows."""
    bundle = folder / "digits"
    bundle.mkdir(parents=True)
    for part in ("pipeline.yaml", "channels", "flows", "models"):
        source = EXAMPLE / part
        if source.is_dir():
            shutil.copytree(source, bundle / part)
        else:
            shutil.copy(source, bundle / part)
    (bundle / "artifacts").mkdir()
    shutil.copy(digits.joblib_path, bundle / "artifacts" / "digits-rf.joblib")
    shutil.copy(digits.onnx_path, bundle / "artifacts" / "digits-rf.onnx")
    models_file = bundle / "models" / "digits-rf.yaml"
    models = list(yaml.safe_load_all(models_file.read_text()))
    for model in models:
        model["spec"]["sha256"] = sha256_of(bundle / model["spec"]["uri"])
    models_file.write_text(yaml.safe_dump_all(models, sort_keys=False))
    write_digits_csv(bundle / "data" / "digits.csv", digits_rows(digits, rows))
    return bundle
