"""Adaptive batching: concurrent requests coalesce into fewer model calls and each gets its own rows back.

The model is a python-runtime module that answers, for every row, the number of rows of the call it was in,
so coalescing is asserted from the answers and the batch-size metric, never from timing.
"""

from __future__ import annotations

import asyncio
import textwrap
from pathlib import Path

import httpx
import numpy as np
import pytest
from scoring_kit import infer_body, model_config, served, settings, spec

from scoring_services.settings import ScoringSettings
from scoring_services.types import BatchingConfig, ModelConfig

COUNTING = """
import threading
import time

import numpy as np

calls = []
gate = threading.Event()


def load(path):
    pass


def predict(batch):
    x = batch["x"]
    calls.append(len(x))
    if len(calls) == 1:
        gate.wait(0.3)  # hold the first call so the other requests queue behind it
    return {"echo": x.sum(axis=1), "rows": np.full(len(x), len(x), dtype=np.int64)}
"""


def counting_model(tmp_path: Path, batching: BatchingConfig, name: str = "counter") -> ModelConfig:
    folder = tmp_path / name
    folder.mkdir()
    (folder / "model.py").write_text(textwrap.dedent(COUNTING))
    return model_config(
        name,
        "python",
        folder,
        inputs=[spec("x", "FP64", -1, -1)],
        outputs=[spec("echo", "FP64", -1), spec("rows", "INT64", -1)],
        batching=batching,
    )


async def fire(http: httpx.AsyncClient, model: str, count: int, width: int = 3) -> list[dict[str, list[float]]]:
    async def one(i: int) -> dict[str, list[float]]:
        x = np.full((1, width), float(i))
        response = await http.post(f"/v2/models/{model}/infer", json=infer_body("x", x, "FP64"))
        assert response.status_code == 200, response.text
        return {o["name"]: o["data"] for o in response.json()["outputs"]}

    return list(await asyncio.gather(*(one(i) for i in range(count))))


def metric(text: str, name: str, model: str) -> float:
    prefix = f'{name}{{model="{model}"}} '
    return float(next(line for line in text.splitlines() if line.startswith(prefix))[len(prefix) :])


async def test_concurrent_requests_are_coalesced_into_fewer_model_calls(
    tmp_path: Path, scoring_settings: ScoringSettings
) -> None:
    config = counting_model(tmp_path, BatchingConfig(True, max_batch_size=64, max_latency_ms=5))
    async with served([config], scoring_settings) as (_, http):
        answers = await fire(http, "counter", 20)
        metrics = (await http.get("/metrics")).text
    assert [a["echo"] for a in answers] == [[3.0 * i] for i in range(20)]  # each got its own row back
    assert max(a["rows"][0] for a in answers) > 1
    calls = metric(metrics, "modelops_scoring_batch_size_count", "counter")
    assert calls < 20
    assert metric(metrics, "modelops_scoring_batch_size_sum", "counter") == 20
    assert metric(metrics, "modelops_scoring_queue_depth", "counter") == 0


async def test_answers_stay_per_request_with_two_calls_in_flight(tmp_path: Path) -> None:
    config = counting_model(tmp_path, BatchingConfig(True, max_batch_size=4, max_latency_ms=5))
    async with served([config], settings(tmp_path, batch_concurrency=2)) as (_, http):
        answers = await fire(http, "counter", 17)
        metrics = (await http.get("/metrics")).text
    assert [a["echo"] for a in answers] == [[3.0 * i] for i in range(17)]
    assert max(a["rows"][0] for a in answers) == 4
    assert metric(metrics, "modelops_scoring_batch_size_sum", "counter") == 17


async def test_batches_never_exceed_max_batch_size(tmp_path: Path, scoring_settings: ScoringSettings) -> None:
    config = counting_model(tmp_path, BatchingConfig(True, max_batch_size=4, max_latency_ms=5))
    async with served([config], scoring_settings) as (_, http):
        answers = await fire(http, "counter", 17)
    sizes = [a["rows"][0] for a in answers]
    assert max(sizes) == 4
    assert [a["echo"] for a in answers] == [[3.0 * i] for i in range(17)]


async def test_requests_of_different_row_widths_are_not_mixed(
    tmp_path: Path, scoring_settings: ScoringSettings
) -> None:
    config = counting_model(tmp_path, BatchingConfig(True, max_batch_size=64, max_latency_ms=5))
    async with served([config], scoring_settings) as (_, http):
        narrow, wide = await asyncio.gather(fire(http, "counter", 8, width=2), fire(http, "counter", 8, width=5))
    assert [a["echo"] for a in narrow] == [[2.0 * i] for i in range(8)]
    assert [a["echo"] for a in wide] == [[5.0 * i] for i in range(8)]


async def test_without_batching_every_request_is_its_own_model_call(
    tmp_path: Path, scoring_settings: ScoringSettings
) -> None:
    config = counting_model(tmp_path, BatchingConfig(enabled=False))
    async with served([config], scoring_settings) as (_, http):
        answers = await fire(http, "counter", 6)
        metrics = (await http.get("/metrics")).text
    assert {a["rows"][0] for a in answers} == {1}
    assert metric(metrics, "modelops_scoring_batch_size_count", "counter") == 6


async def test_a_lone_request_runs_at_once_as_a_batch_of_one(tmp_path: Path, scoring_settings: ScoringSettings) -> None:
    config = counting_model(tmp_path, BatchingConfig(True, max_batch_size=64, max_latency_ms=60_000))
    async with served([config], scoring_settings) as (_, http):
        # a max wait of a minute: the request must not wait for company that is not coming
        answer = await asyncio.wait_for(fire(http, "counter", 1), timeout=20)
    assert answer[0]["rows"] == [1]


SLOW = """
import threading

release = threading.Event()


def load(path):
    pass


def predict(batch):
    release.wait(10)
    return {"y": batch["x"]}
"""


@pytest.mark.parametrize("batching", [True, False])
async def test_health_and_metadata_answer_while_the_model_computes(
    tmp_path: Path, scoring_settings: ScoringSettings, batching: bool
) -> None:
    folder = tmp_path / "slow"
    folder.mkdir()
    (folder / "model.py").write_text(textwrap.dedent(SLOW))
    config = model_config(
        "slow",
        "python",
        folder,
        inputs=[spec("x", "FP64", -1)],
        outputs=[spec("y", "FP64", -1)],
        batching=BatchingConfig(enabled=batching),
    )
    async with served([config], scoring_settings) as (app, http):
        pending = asyncio.ensure_future(http.post("/v2/models/slow/infer", json=infer_body("x", np.ones(2), "FP64")))
        await asyncio.sleep(0.05)
        assert (await http.get("/v2/health/ready")).status_code == 200
        assert (await http.get("/v2/models/slow")).status_code == 200
        assert not pending.done()  # the model call holds a thread, not the event loop
        runtime = app.plane.repository.get("slow").runtime
        assert runtime is not None
        runtime.module.release.set()  # type: ignore[attr-defined]
        response = await pending
    assert response.json()["outputs"][0]["data"] == [1.0, 1.0]


NOT_PER_ROW = """
BATCHABLE = False
INPUTS = [{"name": "x", "datatype": "FP64", "shape": [-1]}]
OUTPUTS = [{"name": "total", "datatype": "FP64", "shape": [1]}]


def load(path):
    pass


def predict(batch):
    return {"total": [float(batch["x"].sum())]}
"""


async def test_a_module_that_is_not_batchable_gets_each_request_alone(
    tmp_path: Path, scoring_settings: ScoringSettings
) -> None:
    folder = tmp_path / "totals"
    folder.mkdir()
    (folder / "model.py").write_text(textwrap.dedent(NOT_PER_ROW))
    config = model_config("totals", "python", folder)
    async with served([config], scoring_settings) as (_, http):

        async def total(values: list[float]) -> list[float]:
            body = {"inputs": [{"name": "x", "datatype": "FP64", "shape": [len(values)], "data": values}]}
            data: list[float] = (await http.post("/v2/models/totals/infer", json=body)).json()["outputs"][0]["data"]
            return data

        answers = await asyncio.gather(total([1.0, 2.0]), total([10.0]), total([5.0, 5.0, 5.0]))
    assert answers == [[3.0], [10.0], [15.0]]


async def test_unloading_fails_queued_requests_with_503_and_finishes_the_running_call(tmp_path: Path) -> None:
    config = counting_model(tmp_path, BatchingConfig(True, max_batch_size=1, max_latency_ms=0))
    async with served([config], settings(tmp_path, batch_concurrency=1)) as (_, http):

        async def one(i: int) -> int:
            body = infer_body("x", np.full((1, 2), float(i)), "FP64")
            return (await http.post("/v2/models/counter/infer", json=body)).status_code

        pending = [asyncio.ensure_future(one(i)) for i in range(5)]
        await asyncio.sleep(0.1)  # the first call holds its gate; the others queue (max 1 row per call)
        await http.post("/v2/repository/models/counter/unload")
        statuses = await asyncio.gather(*pending)
    assert statuses[0] == 200
    assert set(statuses[1:]) <= {200, 503}
    assert 503 in statuses
