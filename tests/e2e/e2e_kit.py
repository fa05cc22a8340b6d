"""Helpers of the end-to-end tests: the digits example's IR with test models, jobs followed to their end."""

from __future__ import annotations

import shutil
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from flow_kit import REPO, Digits, sha256_of

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
        time.sleep(0.2)


def job_logs(client: SchedulerClient, job_id: uuid.UUID) -> str:
    return "\n".join(client.logs(job_id))
