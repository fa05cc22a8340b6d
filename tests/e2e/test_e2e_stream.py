"""The streaming example end to end: examples/digits-stream runs under the local backend until cancelled, and a
cancel moves it through uninstall to CANCELLED with every record it consumed scored and acknowledged."""

from __future__ import annotations

import secrets
import shutil
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import redis
import yaml
from e2e_kit import wait_terminal
from flow_kit import PIXELS, REPO, Digits, digits_rows, expected

from scheduler.client import SchedulerClient
from scheduler.states import JobState

pytestmark = pytest.mark.slow

REDIS_URL = "redis://127.0.0.1:6379/0"
EXAMPLE = REPO / "examples" / "digits-stream"


def stream_example(folder: Path, digits: Digits) -> Path:
    """examples/digits-stream as it is, its ONNX model pointing at the test artifact."""
    bundle = folder / "digits-stream"
    shutil.copytree(EXAMPLE, bundle, ignore=shutil.ignore_patterns("*.py", "*.md"))
    model_file = bundle / "models" / "digits-rf-onnx.yaml"
    model = yaml.safe_load(model_file.read_text())
    model["spec"]["uri"] = digits.onnx_path.as_uri()
    model_file.write_text(yaml.safe_dump(model, sort_keys=False))
    return bundle


def send(client: redis.Redis, stream: str, rows: np.ndarray) -> None:
    pipe = client.pipeline(transaction=False)
    for row in rows.tolist():
        pipe.xadd(stream, dict(zip(["id", *PIXELS], map(str, row), strict=True)))
    pipe.execute()


def scored(client: redis.Redis, stream: str) -> pa.Table:
    entries = [fields for _, fields in client.xrange(stream)]
    return pa.table(
        {
            "id": [int(e[b"id"]) for e in entries],
            "label": [int(e[b"label"]) for e in entries],
            "probability": [float(e[b"probability"]) for e in entries],
        }
    )


def test_the_stream_example_scores_until_cancelled_and_ends_cancelled_with_all_it_consumed_scored(
    tmp_path: Path, digits: Digits, scheduler: SchedulerClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MODELOPS_SECRET_REDIS_URL", REDIS_URL)  # the flow process inherits it
    tag = secrets.token_hex(3)
    params = {"input": f"test:digits:in:{tag}", "output": f"test:digits:scored:{tag}", "group": "scorers"}
    client = redis.Redis.from_url(REDIS_URL)
    try:
        deployment = scheduler.deploy(stream_example(tmp_path, digits))
        job = scheduler.create_job(deployment.name, version=deployment.version, parameters=params)
        first = digits_rows(digits, 3000)
        send(client, params["input"], first)
        deadline = time.monotonic() + 120
        while client.xlen(params["output"]) < len(first):
            detail = scheduler.get_job(job.id)
            assert not detail.terminal, f"{detail.state} {detail.reason}: {detail.message}"
            assert time.monotonic() < deadline, "the first records were not scored in time"
            time.sleep(0.1)
        assert scheduler.get_job(job.id).state is JobState.RUNNING

        more = digits_rows(digits, 4000, seed=3)
        more[:, 0] += len(first)
        send(client, params["input"], more)  # still arriving while the job is cancelled
        time.sleep(0.05)
        scheduler.cancel_job(job.id)
        final = wait_terminal(scheduler, job.id, 120)
        assert final.state is JobState.CANCELLED, f"{final.reason}: {final.message}"
        assert list(dict.fromkeys(e.task for e in final.events if e.task))[-1] == "uninstall"

        group = next(g for g in client.xinfo_groups(params["input"]) if g["name"] == b"scorers")
        assert group["pending"] == 0  # nothing consumed was left unacknowledged
        consumed = len(client.xrange(params["input"], max=group["last-delivered-id"]))
        table = scored(client, params["output"])
        assert table.num_rows == consumed >= len(first)  # every record consumed is scored, once
        rows = np.vstack([first, more])[:consumed]
        want = expected(digits, rows)
        assert np.array_equal(table.column("id").to_numpy(), want["id"])
        assert np.array_equal(table.column("label").to_numpy(), want["onnx_label"])
    finally:
        client.delete(params["input"], params["output"])
        client.close()
