"""A client nobody here wrote (Triton's `tritonclient.http`) talks to a real uvicorn server: JSON and binary."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from conftest import Digits
from scoring_kit import model_config, real_server, spec

from scoring_services.settings import ScoringSettings

tritonhttp = pytest.importorskip("tritonclient.http")


ECHO = """
import numpy as np

INPUTS = [
    {"name": "text", "datatype": "BYTES", "shape": [-1]},
    {"name": "half", "datatype": "FP16", "shape": [-1, 2]},
    {"name": "flag", "datatype": "BOOL", "shape": [-1]},
]
OUTPUTS = [
    {"name": "upper", "datatype": "BYTES", "shape": [-1]},
    {"name": "doubled", "datatype": "FP16", "shape": [-1, 2]},
    {"name": "negated", "datatype": "BOOL", "shape": [-1]},
]


def load(path):
    pass


def predict(batch):
    return {
        "upper": np.array([t.upper() for t in batch["text"]], dtype=object),
        "doubled": batch["half"] * 2,
        "negated": ~batch["flag"],
    }
"""


def echo_folder(folder: Path) -> Path:
    (folder / "model.py").write_text(ECHO)
    return folder


@pytest.fixture(scope="module")
def server(digits: Digits, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    from scoring_kit import settings

    configs = [
        model_config(
            "digits",
            "sklearn",
            digits.joblib_path,
            sha256=digits.joblib_sha,
            inputs=[spec("input", "FP32", -1, 64)],
            outputs=[spec("predict", "INT64", -1), spec("predict_proba", "FP64", -1, 10)],
        ),
        model_config("digits-onnx", "onnx", digits.onnx_path, sha256=digits.onnx_sha),
        model_config("echo", "python", echo_folder(tmp_path_factory.mktemp("echo"))),
    ]
    config: ScoringSettings = settings(tmp_path_factory.mktemp("client"))
    with real_server(configs, config) as url:
        yield url


@pytest.fixture
def client(server: str) -> Iterator[tritonhttp.InferenceServerClient]:
    triton = tritonhttp.InferenceServerClient(url=server)
    try:
        yield triton
    finally:
        triton.close()


def test_the_triton_client_sees_a_live_ready_server_and_model(client: tritonhttp.InferenceServerClient) -> None:
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready("digits")
    assert not client.is_model_ready("missing")
    metadata = client.get_model_metadata("digits")
    assert metadata["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 64]}]
    assert client.get_server_metadata()["name"] == "modelops-scoring"


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_the_triton_client_gets_the_right_answer(
    client: tritonhttp.InferenceServerClient, digits: Digits, binary: bool
) -> None:
    rows = np.ascontiguousarray(digits.features[:32])
    tensor = tritonhttp.InferInput("input", list(rows.shape), "FP32")
    tensor.set_data_from_numpy(rows, binary_data=binary)
    outputs = [
        tritonhttp.InferRequestedOutput("predict", binary_data=binary),
        tritonhttp.InferRequestedOutput("predict_proba", binary_data=binary),
    ]
    result = client.infer("digits", [tensor], outputs=outputs, request_id="r1")
    np.testing.assert_array_equal(result.as_numpy("predict"), digits.forest.predict(rows))
    np.testing.assert_allclose(result.as_numpy("predict_proba"), digits.forest.predict_proba(rows))
    assert result.get_response()["id"] == "r1"


def test_the_triton_client_drives_an_onnx_model_with_names_from_the_graph(
    client: tritonhttp.InferenceServerClient, digits: Digits
) -> None:
    rows = np.ascontiguousarray(digits.features[:5])
    tensor = tritonhttp.InferInput("X", list(rows.shape), "FP32")
    tensor.set_data_from_numpy(rows, binary_data=True)
    result = client.infer("digits-onnx", [tensor])
    np.testing.assert_array_equal(result.as_numpy("label"), digits.forest.predict(rows))


def test_the_triton_client_gets_protocol_errors_as_exceptions(
    client: tritonhttp.InferenceServerClient, digits: Digits
) -> None:
    from tritonclient.utils import InferenceServerException

    tensor = tritonhttp.InferInput("input", [1, 63], "FP32")
    tensor.set_data_from_numpy(np.zeros((1, 63), dtype=np.float32))
    with pytest.raises(InferenceServerException, match=r"\[-1, 64\]"):
        client.infer("digits", [tensor])
    with pytest.raises(InferenceServerException, match="not served"):
        client.infer("missing", [tensor])


def test_the_triton_client_unloads_and_loads_over_the_repository_extension(
    client: tritonhttp.InferenceServerClient,
) -> None:
    client.unload_model("digits-onnx")
    assert not client.is_model_ready("digits-onnx")
    states = {m["name"]: m["state"] for m in client.get_model_repository_index()}
    assert states == {"digits": "READY", "digits-onnx": "UNAVAILABLE", "echo": "READY"}
    client.load_model("digits-onnx")
    assert client.is_model_ready("digits-onnx")


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_the_triton_client_round_trips_bytes_fp16_and_bool(
    client: tritonhttp.InferenceServerClient, binary: bool
) -> None:
    text = np.array(["héllo".encode(), b"", b"abc"], dtype=object)
    half = np.array([[0.5, -1.25], [2.0, 30000.0], [0.0, 1e-3]], dtype=np.float16)
    flag = np.array([True, False, True])
    tensors = [
        tritonhttp.InferInput("text", [3], "BYTES"),
        tritonhttp.InferInput("half", [3, 2], "FP16"),
        tritonhttp.InferInput("flag", [3], "BOOL"),
    ]
    for tensor, array in zip(tensors, (text, half, flag), strict=True):
        tensor.set_data_from_numpy(array, binary_data=binary)
    outputs = [tritonhttp.InferRequestedOutput(n, binary_data=binary) for n in ("upper", "doubled", "negated")]
    result = client.infer("echo", tensors, outputs=outputs)
    upper = [v.encode() if isinstance(v, str) else v for v in result.as_numpy("upper").tolist()]  # JSON gives str
    assert upper == ["héllo".encode().upper(), b"", b"ABC"]  # bytes.upper changes ASCII only
    np.testing.assert_array_equal(result.as_numpy("doubled"), half * 2)
    np.testing.assert_array_equal(result.as_numpy("negated"), ~flag)
