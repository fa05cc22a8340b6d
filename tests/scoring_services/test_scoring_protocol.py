"""Open Inference Protocol conformance over the ASGI app: routes, metadata, errors, binary tensors, repository."""

from __future__ import annotations

import json
import struct
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
import pytest
from conftest import Digits
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scoring_kit import infer_body, model_config, served, spec

from scoring_services import codecs
from scoring_services.app import ScoringApp
from scoring_services.settings import ScoringSettings
from scoring_services.types import ModelConfig

INPUT = spec("input", "FP32", -1, 64)
OUTPUTS = (spec("predict", "INT64", -1), spec("predict_proba", "FP64", -1, 10))


def digits_config(digits: Digits, **overrides: Any) -> ModelConfig:
    values: dict[str, Any] = {"sha256": digits.joblib_sha, "inputs": [INPUT], "outputs": OUTPUTS, "version": "3"}
    values.update(overrides)
    return model_config("digits", "sklearn", digits.joblib_path, **values)


@pytest.fixture
async def client(digits: Digits, scoring_settings: ScoringSettings) -> AsyncIterator[httpx.AsyncClient]:
    async with served([digits_config(digits)], scoring_settings) as (_, http):
        yield http


@pytest.fixture
async def app_and_client(
    digits: Digits, scoring_settings: ScoringSettings
) -> AsyncIterator[tuple[ScoringApp, httpx.AsyncClient]]:
    async with served([digits_config(digits)], scoring_settings) as pair:
        yield pair


# ---------------------------------------------------------------------------------------------- health, metadata


async def test_live_and_ready_answer_200_once_models_are_loaded(client: httpx.AsyncClient) -> None:
    assert (await client.get("/v2/health/live")).status_code == 200
    response = await client.get("/v2/health/ready")
    assert response.status_code == 200
    assert response.json() == {"ready": True}


async def test_server_is_not_ready_while_a_model_fails_to_load(
    digits: Digits, scoring_settings: ScoringSettings
) -> None:
    bad = digits_config(digits, sha256="0" * 64)
    async with served([bad], scoring_settings) as (_, http):
        assert (await http.get("/v2/health/live")).status_code == 200
        ready = await http.get("/v2/health/ready")
        assert ready.status_code == 503
        assert ready.json() == {"ready": False}


async def test_server_metadata_names_the_extensions(client: httpx.AsyncClient) -> None:
    body = (await client.get("/v2")).json()
    assert body["name"] == "modelops-scoring"
    assert {"binary_tensor_data", "model_repository"} <= set(body["extensions"])


async def test_model_metadata_matches_the_model(client: httpx.AsyncClient) -> None:
    body = (await client.get("/v2/models/digits")).json()
    assert body == {
        "name": "digits",
        "versions": ["3"],
        "platform": "sklearn",
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 64]}],
        "outputs": [
            {"name": "predict", "datatype": "INT64", "shape": [-1]},
            {"name": "predict_proba", "datatype": "FP64", "shape": [-1, 10]},
        ],
    }
    assert (await client.get("/v2/models/digits/versions/3")).json() == body


async def test_metadata_of_an_undeclared_model_comes_from_the_artifact(
    digits: Digits, scoring_settings: ScoringSettings
) -> None:
    config = model_config("digits", "sklearn", digits.joblib_path, sha256=digits.joblib_sha)
    async with served([config], scoring_settings) as (_, http):
        body = (await http.get("/v2/models/digits")).json()
    assert body["inputs"] == [{"name": "input", "datatype": "FP64", "shape": [-1, 64]}]
    assert [o["name"] for o in body["outputs"]] == ["predict", "predict_proba"]


async def test_model_ready_is_200_when_loaded_and_503_after_unload(client: httpx.AsyncClient) -> None:
    ready = await client.get("/v2/models/digits/ready")
    assert ready.status_code == 200
    assert ready.json() == {"name": "digits", "ready": True}
    assert (await client.post("/v2/repository/models/digits/unload")).status_code == 200
    assert (await client.get("/v2/models/digits/versions/3/ready")).status_code == 503


# ---------------------------------------------------------------------------------------------- inference


async def test_inference_answers_equal_the_in_process_predictions(digits: Digits, client: httpx.AsyncClient) -> None:
    rows = digits.features[:25]
    response = await client.post("/v2/models/digits/infer", json=infer_body("input", rows, "FP32", id="req-1"))
    assert response.status_code == 200
    body = response.json()
    assert body["model_name"] == "digits"
    assert body["model_version"] == "3"
    assert body["id"] == "req-1"
    outputs = {o["name"]: o for o in body["outputs"]}
    assert outputs["predict"]["datatype"] == "INT64"
    assert outputs["predict"]["shape"] == [25]
    assert outputs["predict"]["data"] == digits.forest.predict(rows).tolist()
    assert outputs["predict_proba"]["shape"] == [25, 10]
    np.testing.assert_array_equal(
        np.array(outputs["predict_proba"]["data"]).reshape(25, 10), digits.forest.predict_proba(rows)
    )


async def test_a_versioned_infer_route_serves_the_same_model(digits: Digits, client: httpx.AsyncClient) -> None:
    body = infer_body("input", digits.features[:2], "FP32")
    response = await client.post("/v2/models/digits/versions/3/infer", json=body)
    assert response.status_code == 200


async def test_nested_row_major_data_is_accepted(digits: Digits, client: httpx.AsyncClient) -> None:
    rows = digits.features[:3]
    body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [3, 64], "data": rows.tolist()}]}
    response = await client.post("/v2/models/digits/infer", json=body)
    assert response.status_code == 200
    assert response.json()["outputs"][0]["data"] == digits.forest.predict(rows).tolist()


async def test_requested_outputs_are_the_only_ones_returned(digits: Digits, client: httpx.AsyncClient) -> None:
    body = infer_body("input", digits.features[:4], "FP32", outputs=[{"name": "predict_proba"}])
    outputs = (await client.post("/v2/models/digits/infer", json=body)).json()["outputs"]
    assert [o["name"] for o in outputs] == ["predict_proba"]


async def test_binary_inputs_and_outputs_round_trip(digits: Digits, client: httpx.AsyncClient) -> None:
    rows = np.ascontiguousarray(digits.features[:7])
    blob = rows.astype("<f4").tobytes()
    header = orjson.dumps(
        {
            "inputs": [
                {"name": "input", "datatype": "FP32", "shape": [7, 64], "parameters": {"binary_data_size": len(blob)}}
            ],
            "outputs": [{"name": "predict", "parameters": {"binary_data": True}}, {"name": "predict_proba"}],
        }
    )
    response = await client.post(
        "/v2/models/digits/infer",
        content=header + blob,
        headers={"Inference-Header-Content-Length": str(len(header)), "Content-Type": "application/octet-stream"},
    )
    assert response.status_code == 200
    length = int(response.headers["inference-header-content-length"])
    head = orjson.loads(response.content[:length])
    predict, proba = head["outputs"]
    assert predict["parameters"] == {"binary_data_size": 7 * 8}
    assert "data" not in predict
    labels = np.frombuffer(response.content[length:], dtype="<i8")
    np.testing.assert_array_equal(labels, digits.forest.predict(rows))
    assert np.array(proba["data"]).reshape(7, 10) == pytest.approx(digits.forest.predict_proba(rows))


async def test_binary_data_output_parameter_makes_every_output_binary(
    digits: Digits, client: httpx.AsyncClient
) -> None:
    body = infer_body("input", digits.features[:2], "FP32", parameters={"binary_data_output": True})
    response = await client.post("/v2/models/digits/infer", json=body)
    length = int(response.headers["inference-header-content-length"])
    head = orjson.loads(response.content[:length])
    sizes = [o["parameters"]["binary_data_size"] for o in head["outputs"]]
    assert sizes == [2 * 8, 2 * 10 * 8]
    assert len(response.content) == length + sum(sizes)


# ---------------------------------------------------------------------------------------------- errors


async def expect_error(response: httpx.Response, status: int, *fragments: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    assert isinstance(body["error"], str)
    for fragment in fragments:
        assert fragment in body["error"]


async def test_an_unknown_model_is_404(client: httpx.AsyncClient) -> None:
    await expect_error(await client.post("/v2/models/nope/infer", json={}), 404, "nope")
    await expect_error(await client.get("/v2/models/nope"), 404)
    await expect_error(await client.get("/v2/models/nope/ready"), 404)


async def test_an_unknown_version_is_404(client: httpx.AsyncClient) -> None:
    await expect_error(await client.get("/v2/models/digits/versions/9"), 404, "version '9'")
    await expect_error(
        await client.post("/v2/models/digits/versions/9/infer", json=infer_body("input", np.zeros((1, 64)), "FP32")),
        404,
    )


async def test_an_unknown_route_is_404_and_a_wrong_method_405(client: httpx.AsyncClient) -> None:
    await expect_error(await client.get("/v3/anything"), 404)
    await expect_error(await client.get("/v2/models/digits/infer"), 405, "POST")


async def test_a_wrong_shape_is_400_naming_the_expected_shape(client: httpx.AsyncClient) -> None:
    response = await client.post("/v2/models/digits/infer", json=infer_body("input", np.zeros((2, 63)), "FP32"))
    await expect_error(response, 400, "[2, 63]", "[-1, 64]")


async def test_a_wrong_datatype_is_400(client: httpx.AsyncClient) -> None:
    response = await client.post("/v2/models/digits/infer", json=infer_body("input", np.zeros((2, 64)), "FP64"))
    await expect_error(response, 400, "FP64", "FP32")
    response = await client.post("/v2/models/digits/infer", json=infer_body("input", np.full((2, 64), "a"), "BYTES"))
    await expect_error(response, 400, "BYTES", "FP32")


async def test_a_datatype_that_widens_without_loss_is_accepted(digits: Digits, client: httpx.AsyncClient) -> None:
    rows = digits.features[:3].astype(np.uint8)
    response = await client.post("/v2/models/digits/infer", json=infer_body("input", rows, "UINT8"))
    assert response.status_code == 200
    assert response.json()["outputs"][0]["data"] == digits.forest.predict(rows.astype(np.float32)).tolist()


async def test_data_that_does_not_fill_the_shape_is_400(client: httpx.AsyncClient) -> None:
    body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [2, 64], "data": [1.0, 2.0]}]}
    await expect_error(await client.post("/v2/models/digits/infer", json=body), 400, "128 elements")


async def test_a_missing_or_unknown_input_is_400(client: httpx.AsyncClient) -> None:
    body = infer_body("pixels", np.zeros((1, 64)), "FP32")
    body["inputs"].append(infer_body("other", np.zeros((1, 64)), "FP32")["inputs"][0])
    await expect_error(await client.post("/v2/models/digits/infer", json=body), 400, "'input' is missing")
    body["inputs"][1]["name"] = "input"
    await expect_error(await client.post("/v2/models/digits/infer", json=body), 400, "unknown input(s) pixels")


async def test_a_single_input_under_another_name_feeds_the_models_single_input(
    client: httpx.AsyncClient, digits: Digits
) -> None:
    """As MLServer and KServe's sklearn server do: clients written for them name the input as they like."""
    rows = digits.features[:3].astype(np.float32)
    named = await client.post("/v2/models/digits/infer", json=infer_body("input", rows, "FP32"))
    renamed = await client.post("/v2/models/digits/infer", json=infer_body("predict-0", rows, "FP32"))
    assert named.status_code == renamed.status_code == 200, renamed.text
    assert renamed.json()["outputs"] == named.json()["outputs"]
    metadata = (await client.get("/v2/models/digits")).json()
    assert [tensor["name"] for tensor in metadata["inputs"]] == ["input"]
    wrong_shape = infer_body("predict-0", np.zeros((1, 63), dtype=np.float32), "FP32")
    await expect_error(await client.post("/v2/models/digits/infer", json=wrong_shape), 400, "input 'input' has shape")


async def test_an_unknown_requested_output_is_400(client: httpx.AsyncClient) -> None:
    body = infer_body("input", np.zeros((1, 64)), "FP32", outputs=[{"name": "logits"}])
    await expect_error(await client.post("/v2/models/digits/infer", json=body), 400, "logits")


async def test_a_model_that_is_not_ready_is_503(client: httpx.AsyncClient) -> None:
    await client.post("/v2/repository/models/digits/unload")
    response = await client.post("/v2/models/digits/infer", json=infer_body("input", np.zeros((1, 64)), "FP32"))
    await expect_error(response, 503, "not ready")


async def test_an_oversized_body_is_413(digits: Digits, tmp_path: Any) -> None:
    from scoring_kit import settings as make_settings

    async with served([digits_config(digits)], make_settings(tmp_path, max_body_bytes=4096)) as (_, http):
        body = infer_body("input", np.zeros((100, 64)), "FP32")
        await expect_error(await http.post("/v2/models/digits/infer", json=body), 413, "4096")


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (b"", "not valid JSON"),
        (b"{", "not valid JSON"),
        (b"[]", "JSON object"),
        (b'{"inputs": 3}', "'inputs'"),
        (b'{"inputs": []}', "'inputs'"),
        (b'{"inputs": [7]}', "inputs[0]"),
        (b'{"inputs": [{"name": "input"}]}', "datatype"),
        (b'{"inputs": [{"name": "input", "datatype": "FP32", "shape": "x", "data": []}]}', "shape"),
        (b'{"inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 64], "data": []}]}', "shape"),
        (b'{"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 64]}]}', "'data' is missing"),
        (b'{"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 2], "data": [[1], [2, 3]]}]}', "input"),
        (b'{"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 1], "data": ["a"]}]}', "FP32"),
        (b'{"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 1], "data": [{}]}]}', "FP32"),
        (b'{"inputs": [{"name": "input", "datatype": "FP32", "shape": [1], "data": [1]}], "outputs": 1}', "outputs"),
        (b'{"id": 5, "inputs": [{"name": "input", "datatype": "FP32", "shape": [1], "data": [1]}]}', "'id'"),
        (b'{"inputs": [{"name": "input", "datatype": "FP32", "shape": [99999999999, 99999999], "data": []}]}', "shape"),
    ],
)
async def test_malformed_requests_are_400_with_a_reason(client: httpx.AsyncClient, body: bytes, fragment: str) -> None:
    response = await client.post("/v2/models/digits/infer", content=body)
    await expect_error(response, 400, fragment)


@pytest.mark.parametrize(
    ("header_length", "fragment"),
    [("abc", "not an integer"), ("999999", "Inference-Header-Content-Length"), ("-1", "Inference-Header")],
)
async def test_a_bad_inference_header_length_is_400(
    client: httpx.AsyncClient, header_length: str, fragment: str
) -> None:
    body = orjson.dumps(infer_body("input", np.zeros((1, 64)), "FP32"))
    response = await client.post(
        "/v2/models/digits/infer", content=body, headers={"Inference-Header-Content-Length": header_length}
    )
    await expect_error(response, 400, fragment)


async def test_binary_sizes_that_do_not_add_up_are_400(client: httpx.AsyncClient) -> None:
    header = orjson.dumps(
        {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 64], "parameters": {"binary_data_size": 256}}]}
    )
    for tail, fragment in ((b"\0" * 100, "runs past"), (b"\0" * 300, "no input's binary_data_size")):
        response = await client.post(
            "/v2/models/digits/infer",
            content=header + tail,
            headers={"Inference-Header-Content-Length": str(len(header))},
        )
        await expect_error(response, 400, fragment)
    header = orjson.dumps(
        {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 64], "parameters": {"binary_data_size": 8}}]}
    )
    response = await client.post(
        "/v2/models/digits/infer",
        content=header + b"\0" * 8,
        headers={"Inference-Header-Content-Length": str(len(header))},
    )
    await expect_error(response, 400, "needs 256 bytes")


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=5),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4),
    max_leaves=12,
)
tensors = st.fixed_dictionaries(
    {},
    optional={
        "name": st.sampled_from(["input", "x", ""]) | json_values,
        "datatype": st.sampled_from(["FP32", "INT8", "BYTES", "BOOL", "FP16", "nope"]) | json_values,
        "shape": st.lists(st.integers(-2, 70), max_size=3) | json_values,
        "data": st.lists(st.integers(-300, 300) | st.floats(allow_nan=False) | st.text(max_size=2), max_size=70)
        | json_values,
        "parameters": st.dictionaries(st.sampled_from(["binary_data_size", "x"]), json_values, max_size=2),
    },
)
requests = st.fixed_dictionaries(
    {},
    optional={
        "id": json_values,
        "inputs": st.lists(tensors, max_size=3) | json_values,
        "outputs": st.lists(st.fixed_dictionaries({"name": json_values}), max_size=2) | json_values,
        "parameters": st.dictionaries(st.sampled_from(["binary_data_output", "y"]), json_values, max_size=2),
    },
)


@pytest.mark.parametrize("parser", ["orjson", "simdjson"])
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(document=requests, header=st.none() | st.integers(-5, 400))
async def test_no_request_body_produces_a_500(
    app_and_client: tuple[ScoringApp, httpx.AsyncClient],
    monkeypatch: pytest.MonkeyPatch,
    parser: str,
    document: dict[str, Any],
    header: int | None,
) -> None:
    monkeypatch.setattr(codecs, "_SIMDJSON_FROM", 0 if parser == "simdjson" else 1 << 60)
    _, client = app_and_client
    headers = {} if header is None else {"Inference-Header-Content-Length": str(header)}
    text = json.dumps(document).encode()  # the stdlib: it writes integers beyond 64 bits too
    body = text + struct.pack("<I", 3) + b"abc" if header is not None else text
    response = await client.post("/v2/models/digits/infer", content=body, headers=headers)
    assert response.status_code in (200, 400), response.text
    assert (await client.get("/v2/health/live")).status_code == 200


# ---------------------------------------------------------------------------------------------- repository


async def test_repository_index_lists_models_with_their_state(client: httpx.AsyncClient) -> None:
    index = (await client.post("/v2/repository/index")).json()
    assert index == [{"name": "digits", "version": "3", "state": "READY", "reason": ""}]
    await client.post("/v2/repository/models/digits/unload")
    index = (await client.post("/v2/repository/index", json={})).json()
    assert index[0]["state"] == "UNAVAILABLE"
    assert (await client.post("/v2/repository/index", json={"ready": True})).json() == []


async def test_a_model_unloaded_over_rest_can_be_loaded_again(digits: Digits, client: httpx.AsyncClient) -> None:
    assert (await client.post("/v2/repository/models/digits/unload")).status_code == 200
    assert (await client.post("/v2/repository/models/digits/load")).status_code == 200
    response = await client.post("/v2/models/digits/infer", json=infer_body("input", digits.features[:1], "FP32"))
    assert response.status_code == 200
    assert (await client.post("/v2/repository/models/digits/load")).status_code == 200  # a reload


async def test_loading_an_unknown_model_is_404(client: httpx.AsyncClient) -> None:
    await expect_error(await client.post("/v2/repository/models/nope/load"), 404)
    await expect_error(await client.post("/v2/repository/models/nope/unload"), 404)


async def test_a_failed_load_is_400_and_the_index_says_why(digits: Digits, scoring_settings: ScoringSettings) -> None:
    bad = digits_config(digits, sha256="f" * 64)
    async with served([bad], scoring_settings) as (_, http):
        await expect_error(await http.post("/v2/repository/models/digits/load"), 400, "sha256 mismatch")
        entry = (await http.post("/v2/repository/index")).json()[0]
        assert entry["state"] == "UNAVAILABLE"
        assert "sha256 mismatch" in entry["reason"]


async def test_metrics_count_requests_errors_and_batches(digits: Digits, client: httpx.AsyncClient) -> None:
    await client.post("/v2/models/digits/infer", json=infer_body("input", digits.features[:5], "FP32"))
    await client.post("/v2/models/digits/infer", json=infer_body("input", np.zeros((1, 3)), "FP32"))
    text = (await client.get("/metrics")).text
    assert 'modelops_scoring_requests_total{model="digits"} 2.0' in text
    assert 'modelops_scoring_errors_total{code="400",model="digits"} 1.0' in text
    assert 'modelops_scoring_batch_size_sum{model="digits"} 5.0' in text
    assert 'modelops_scoring_request_duration_seconds_count{model="digits"} 1.0' in text
    assert 'modelops_scoring_queue_depth{model="digits"} 0.0' in text


async def test_the_server_becomes_ready_once_a_failed_model_is_loaded_over_rest(
    tmp_path: Path, scoring_settings: ScoringSettings
) -> None:
    folder = tmp_path / "needs-file"
    folder.mkdir()
    (folder / "model.py").write_text(
        "def load(path):\n    open(path + '/weights.txt').close()\n\n\ndef predict(batch):\n    return batch\n"
    )
    config = model_config("late", "python", folder, inputs=[spec("x", "FP64", -1)], outputs=[spec("x", "FP64", -1)])
    async with served([config], scoring_settings) as (_, http):
        assert (await http.get("/v2/health/ready")).status_code == 503
        (folder / "weights.txt").write_text("w")
        assert (await http.post("/v2/repository/models/late/load")).status_code == 200
        assert (await http.get("/v2/health/ready")).status_code == 200
        await http.post("/v2/repository/models/late/unload")
        assert (await http.get("/v2/health/ready")).status_code == 200  # unloaded on purpose


SHAPES = """
import numpy as np


def load(path):
    pass


def predict(batch):
    x = batch["x"]
    return {"column": x.reshape(-1, 1), "wrong": np.zeros((len(x), 3))}
"""


async def test_outputs_are_given_their_declared_shape_or_refused_as_a_model_error(
    tmp_path: Path, scoring_settings: ScoringSettings
) -> None:
    folder = tmp_path / "shapes"
    folder.mkdir()
    (folder / "model.py").write_text(SHAPES)
    config = model_config(
        "shapes",
        "python",
        folder,
        inputs=[spec("x", "FP64", -1)],
        outputs=[spec("column", "FP64", -1), spec("wrong", "FP64", -1, 10)],
    )
    async with served([config], scoring_settings) as (_, http):
        body = infer_body("x", np.array([1.0, 2.0]), "FP64", outputs=[{"name": "column"}])
        column = (await http.post("/v2/models/shapes/infer", json=body)).json()["outputs"][0]
        wrong = await http.post("/v2/models/shapes/infer", json={**body, "outputs": [{"name": "wrong"}]})
    assert (column["shape"], column["data"]) == ([2], [1.0, 2.0])
    await expect_error(wrong, 500, "returned output 'wrong' with shape [2, 3]", "[-1, 10]")
