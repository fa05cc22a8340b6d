"""The `processes` model option: model calls run in worker processes that loaded the same artifact."""

from __future__ import annotations

import asyncio
import os
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
from scoring_kit import infer_body, model_config, served, sha256_of

from scoring_services.artifacts import directory_sha256
from scoring_services.settings import ScoringSettings
from scoring_services.types import BatchingConfig, ModelConfig

MODULE = """
import multiprocessing
import os
import time

import numpy as np

INPUTS = [{"name": "x", "datatype": "FP64", "shape": [-1, 2]}]
OUTPUTS = [{"name": "total", "datatype": "FP64", "shape": [-1]}, {"name": "pid", "datatype": "INT64", "shape": [-1]}]


def load(path):
    if os.path.exists(path + "/fail-in-workers") and multiprocessing.parent_process() is not None:
        raise RuntimeError("no licence in this process")


def predict(batch):
    x = batch["x"]
    if x[0, 0] < 0:
        os._exit(3)  # a crash: the worker dies without answering
    if x[0, 0] == 999:
        raise ValueError("999 is not a feature value")
    time.sleep(0.05)
    return {"total": x.sum(axis=1), "pid": np.full(len(x), os.getpid(), dtype=np.int64)}
"""


def _folder(tmp_path: Path, *, fail_in_workers: bool = False) -> Path:
    folder = tmp_path / "pid-model"
    folder.mkdir(exist_ok=True)
    (folder / "model.py").write_text(textwrap.dedent(MODULE))
    if fail_in_workers:
        (folder / "fail-in-workers").write_text("")
    return folder


def _config(folder: Path, processes: Any) -> ModelConfig:
    return model_config(
        "pid",
        "python",
        folder,
        sha256=directory_sha256(folder),
        options={"processes": processes},
        batching=BatchingConfig(enabled=False),
    )


def _outputs(body: dict[str, Any]) -> dict[str, list[Any]]:
    return {o["name"]: o["data"] for o in body["outputs"]}


async def test_calls_run_in_the_worker_processes_at_once_and_a_dead_worker_fails_only_its_call(
    tmp_path: Path, scoring_settings: ScoringSettings
) -> None:
    async with served([_config(_folder(tmp_path), 2)], scoring_settings) as (app, http):
        runtime = app.plane.repository.get("pid").runtime
        assert runtime is not None and runtime.workers is not None and runtime.workers.count == 2

        async def call(value: float) -> Any:
            return await http.post("/v2/models/pid/infer", json=infer_body("x", np.array([[value, 1.0]]), "FP64"))

        answers = await asyncio.gather(*(call(float(i)) for i in range(12)))
        assert all(a.status_code == 200 for a in answers), [a.text for a in answers]
        pids = {_outputs(a.json())["pid"][0] for a in answers}
        assert os.getpid() not in pids
        assert len(pids) == 2  # each call sleeps 50 ms: two run at once, one per worker
        assert [_outputs(a.json())["total"][0] for a in answers] == [i + 1.0 for i in range(12)]

        refused = await call(999.0)
        assert refused.status_code == 400
        assert "999 is not a feature value" in refused.json()["error"]

        crashed = await call(-1.0)
        assert crashed.status_code == 500
        assert "model 'pid': a worker process died during the call" in crashed.json()["error"]
        again = await call(2.0)  # a new pool, new workers
        assert again.status_code == 200, again.text
        assert _outputs(again.json())["pid"][0] not in pids


async def test_a_model_that_cannot_load_in_its_workers_is_unavailable_with_the_reason(
    tmp_path: Path, scoring_settings: ScoringSettings
) -> None:
    async with served([_config(_folder(tmp_path, fail_in_workers=True), 1)], scoring_settings) as (_, http):
        index = (await http.post("/v2/repository/index")).json()
    assert index[0]["state"] == "UNAVAILABLE"
    assert index[0]["reason"] == (
        "model 'pid': model.py: load() failed: RuntimeError('no licence in this process') (in a worker process)"
    )


async def test_a_processes_option_out_of_range_fails_the_load_naming_it(
    tmp_path: Path, scoring_settings: ScoringSettings
) -> None:
    async with served([_config(_folder(tmp_path), -1)], scoring_settings) as (_, http):
        index = (await http.post("/v2/repository/index")).json()
    assert index[0]["state"] == "UNAVAILABLE"
    assert "option 'processes' must be 0 to 64 (got -1)" in index[0]["reason"]


async def test_gradient_boosting_in_worker_processes_answers_as_in_process(
    tmp_path: Path, scoring_settings: ScoringSettings
) -> None:
    import joblib
    from sklearn.datasets import load_wine
    from sklearn.ensemble import GradientBoostingClassifier

    features, labels = load_wine(return_X_y=True)
    model = GradientBoostingClassifier(n_estimators=20, random_state=0).fit(features, labels)
    joblib.dump(model, tmp_path / "gb.joblib")
    config = model_config(
        "gb", "sklearn", tmp_path / "gb.joblib", sha256=sha256_of(tmp_path / "gb.joblib"), options={"processes": 1}
    )
    async with served([config], scoring_settings) as (_, http):
        response = await http.post("/v2/models/gb/infer", json=infer_body("input", features, "FP64"))
    assert response.status_code == 200, response.text
    outputs = _outputs(response.json())
    np.testing.assert_array_equal(np.array(outputs["predict"]), model.predict(features))
    np.testing.assert_array_equal(np.array(outputs["predict_proba"]).reshape(-1, 3), model.predict_proba(features))
