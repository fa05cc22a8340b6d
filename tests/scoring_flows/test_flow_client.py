"""The V2 client against real scoring services and a stub that misbehaves on purpose: retries, give-up,
rejections, JSON and binary tensors, large batches split, and records isolated when a service refuses some."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator, MutableMapping
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pytest
import uvicorn
from flow_kit import Digits, Services, free_port

import scoring_flows.client as client_module
from data_channel import SourceBatch
from ir.models import ModelSpec, ScoreStep
from scoring_flows.client import ScoreRejected, ScoringUnavailable, TensorIn, V2Client
from scoring_flows.steps import FlowBatch, ScoreOp

Scope = MutableMapping[str, Any]


def features(digits: Digits, rows: int) -> np.ndarray:
    return digits.images[:rows].astype(np.float32)


async def test_binary_and_json_tensors_give_the_same_answers_as_in_process(
    digits: Digits, digits_services: Services
) -> None:
    x = features(digits, 300)
    client = V2Client(digits_services.urls)
    try:
        await client.wait_ready(["digits-rf"], 10, lambda _: None)
        assert client.binary["digits-rf"] is True
        binary = await client.infer("digits-rf", [TensorIn("input", "FP32", x)], ["predict", "predict_proba"])
        client.binary["digits-rf"] = False
        plain = await client.infer("digits-rf", [TensorIn("input", "FP32", x)], ["predict", "predict_proba"])
    finally:
        await client.close()
    proba = digits.forest.predict_proba(x)
    for answer in (binary, plain):
        assert np.array_equal(answer["predict_proba"], proba)
        assert np.array_equal(answer["predict"], digits.forest.classes_[proba.argmax(axis=1)])


async def test_a_large_batch_is_split_into_requests_and_put_back_together_in_order(
    digits: Digits, digits_services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(client_module, "MAX_REQUEST_BYTES", 64 * 4 * 100)  # 100 rows per request
    x = features(digits, 1000)
    client = V2Client(digits_services.urls)
    calls: list[str] = []
    client._on_request = lambda service, _: calls.append(service)
    try:
        await client.wait_ready(["digits-rf-onnx"], 10, lambda _: None)
        answer = await client.infer("digits-rf-onnx", [TensorIn("input", "FP32", x)], ["label"])
    finally:
        await client.close()
    assert len(calls) == 10
    assert np.array_equal(answer["label"], digits.forest.predict(x))


async def test_a_request_the_service_refuses_is_rejected_at_once_with_its_message(digits_services: Services) -> None:
    client = V2Client(digits_services.urls, retry_seconds=30)
    try:
        started = time.monotonic()
        with pytest.raises(ScoreRejected) as caught:
            await client.infer("digits-rf", [TensorIn("input", "FP32", np.zeros((2, 3), np.float32))], ["predict"])
        assert time.monotonic() - started < 5
    finally:
        await client.close()
    assert caught.value.status == 400
    assert "digits-rf: HTTP 400" in caught.value.message


async def test_connection_errors_are_retried_until_the_service_comes_up(digits: Digits, tmp_path: Path) -> None:
    port = free_port()
    from flow_kit import IN_FIELDS, OUT_FIELDS, channel, render_values, write_bundle

    bundle = write_bundle(
        tmp_path / "bundle",
        digits,
        channels={
            "in": channel("source", "file", {"path": "in.csv", "format": "csv"}, IN_FIELDS),
            "out": channel("sink", "file", {"path": "out.csv", "format": "csv"}, OUT_FIELDS),
        },
    )
    values = render_values(bundle, tmp_path / "values.yaml")
    late = Services(values, tmp_path / "logs")
    retries: list[str] = []
    client = V2Client(
        {"digits-rf": f"http://127.0.0.1:{port}"}, retry_seconds=60, on_retry=lambda s, p: retries.append(p)
    )
    client.binary["digits-rf"] = True
    starter = threading.Timer(0.2, late.start, args=("digits-rf", port))  # the service is not up for a while more
    starter.start()
    try:
        x = features(digits, 50)
        answer = await client.infer("digits-rf", [TensorIn("input", "FP32", x)], ["predict"])
    finally:
        starter.join()
        late.stop()
        await client.close()
    assert np.array_equal(answer["predict"], digits.forest.predict(x))
    assert retries and any("ConnectError" in problem for problem in retries)


async def test_a_service_that_stays_away_gives_a_clear_error_after_the_retry_time() -> None:
    port = free_port()
    client = V2Client({"m": f"http://127.0.0.1:{port}"}, retry_seconds=0.6)
    try:
        started = time.monotonic()
        with pytest.raises(ScoringUnavailable) as caught:
            await client.infer("m", [TensorIn("input", "FP32", np.zeros((1, 2), np.float32))], ["y"])
        assert 0.6 <= time.monotonic() - started < 5
    finally:
        await client.close()
    assert f"scoring service m at http://127.0.0.1:{port} did not answer within 0.6s" in str(caught.value)
    assert "ConnectError" in str(caught.value)


class Stub:
    """A V2 service that answers 503 `busy` times, then doubles x; it refuses (400) any request with x < 0."""

    def __init__(self, busy: int = 0) -> None:
        self.busy = busy
        self.requests = 0

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        if scope["method"] == "GET":  # readiness and metadata
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b'{"ready": true, "extensions": []}'})
            return
        self.requests += 1
        status, answer = 200, b""
        if self.busy > 0:
            self.busy -= 1
            status, answer = 503, orjson.dumps({"error": "model is loading"})
        else:
            request = orjson.loads(body)
            data = np.asarray(request["inputs"][0]["data"], dtype=np.float32)
            if (data < 0).any():
                status, answer = 400, orjson.dumps({"error": "negative input"})
            else:
                shape = request["inputs"][0]["shape"]
                answer = orjson.dumps(
                    {"outputs": [{"name": "y", "datatype": "FP32", "shape": shape, "data": (data * 2).tolist()}]}
                )
        await send(
            {"type": "http.response.start", "status": status, "headers": [(b"content-type", b"application/json")]}
        )
        await send({"type": "http.response.body", "body": answer})


@pytest.fixture
def stub() -> Iterator[tuple[Stub, str]]:
    app = Stub()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, interface="asgi3", lifespan="off", log_level="warning", ws="none"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    yield app, f"http://127.0.0.1:{sock.getsockname()[1]}"
    server.should_exit = True
    thread.join(10)


async def test_503_answers_are_retried(stub: tuple[Stub, str]) -> None:
    app, url = stub
    app.busy = 2
    client = V2Client({"m": url}, retry_seconds=30)
    try:
        answer = await client.infer("m", [TensorIn("x", "FP32", np.array([[1.0], [2.0]], np.float32))], ["y"])
    finally:
        await client.close()
    assert answer["y"].tolist() == [[2.0], [4.0]]
    assert app.requests == 3


async def test_a_score_step_isolates_the_records_a_service_refuses(stub: tuple[Stub, str]) -> None:
    app, url = stub
    client = V2Client({"m": url})
    model = ModelSpec.model_validate(
        {
            "runtime": "onnx",
            "uri": "m.onnx",
            "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 1]}],
            "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 1]}],
        }
    )
    step = ScoreStep.model_validate(
        {"model": "m", "inputs": [{"input": "x", "field": "v"}], "outputs": [{"output": "y", "field": "doubled"}]}
    )
    values = [float(i) for i in range(64)]
    values[5] = -1.0
    values[40] = -2.0
    records = pa.RecordBatch.from_pydict({"v": values})
    ordinals = np.arange(100, 164)
    source = SourceBatch(records, ordinals, 100, 164)
    try:
        result = await ScoreOp("score_it", step, model, client).apply(FlowBatch(records, ordinals, source))
    finally:
        await client.close()
    assert [e.ordinal for e in result.errors] == [105, 140]
    assert result.errors[0].message == "m: HTTP 400: negative input" and result.errors[0].step == "score_it"
    assert result.errors[0].record == {"v": -1.0}
    keep = [v for v in values if v >= 0]
    assert result.records.column("doubled").to_pylist() == [v * 2 for v in keep]
    assert result.ordinals.tolist() == [o for o, v in zip(ordinals.tolist(), values, strict=True) if v >= 0]
    assert app.requests < 30  # halving, not one request per record


async def test_readiness_polls_until_ready_and_names_what_never_was(stub: tuple[Stub, str]) -> None:
    _, url = stub
    client = V2Client({"m": url, "gone": f"http://127.0.0.1:{free_port()}"})
    try:
        with pytest.raises(
            ScoringUnavailable, match=r"not ready after 0.4s: gone at http://127.0.0.1:\d+: ConnectError"
        ):
            await client.wait_ready(["m", "gone"], 0.4, lambda _: None)
    finally:
        await client.close()
