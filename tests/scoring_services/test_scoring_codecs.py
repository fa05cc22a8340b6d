"""V2 tensors on the wire <-> numpy: every datatype in JSON and in binary, and what is refused."""

from __future__ import annotations

import struct
from typing import Any

import numpy as np
import orjson
import pytest

from scoring_services import codecs
from scoring_services.codecs import (
    DATATYPES,
    EncodedOutput,
    datatype_of,
    decode_infer_request,
    encode_infer_response,
)
from scoring_services.errors import InvalidRequest


@pytest.fixture(autouse=True, params=["orjson", "simdjson"])
def parser(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every test runs with both JSON paths: orjson (small bodies) and simdjson (large ones), forced by size."""
    if request.param == "simdjson":
        pytest.importorskip("simdjson")
        monkeypatch.setattr(codecs, "_SIMDJSON_FROM", 0)
    else:
        monkeypatch.setattr(codecs, "_SIMDJSON_FROM", 1 << 60)
    return str(request.param)


SAMPLES: dict[str, list[Any]] = {
    "BOOL": [True, False, True, True],
    "UINT8": [0, 1, 200, 255],
    "UINT16": [0, 1, 60000, 65535],
    "UINT32": [0, 1, 4_000_000_000, 7],
    "UINT64": [0, 1, 2**63 - 1, 9],
    "INT8": [-128, -1, 0, 127],
    "INT16": [-32768, -1, 0, 32767],
    "INT32": [-(2**31), -1, 0, 2**31 - 1],
    "INT64": [-(2**63), -1, 0, 2**63 - 1],
    "FP16": [0.5, -1.25, 65504.0, 0.0009765625],
    "FP32": [0.1, -1.5, 3.4e38, 1e-30],
    "FP64": [0.1, -1.5, 1.7e308, 5e-324],
    "BYTES": ["a", "", "héllo", "zz"],
}


def json_request(datatype: str, data: list[Any], shape: list[int]) -> bytes:
    return orjson.dumps({"inputs": [{"name": "x", "datatype": datatype, "shape": shape, "data": data}]})


def binary_request(datatype: str, blob: bytes, shape: list[int]) -> tuple[bytes, int]:
    head = orjson.dumps(
        {"inputs": [{"name": "x", "datatype": datatype, "shape": shape, "parameters": {"binary_data_size": len(blob)}}]}
    )
    return head + blob, len(head)


def expected(datatype: str) -> np.ndarray:
    values = SAMPLES[datatype]
    if datatype == "BYTES":
        return np.array([v.encode() for v in values], dtype=object).reshape(2, 2)
    return np.array(values, dtype=DATATYPES[datatype]).reshape(2, 2)


def wire_bytes(datatype: str) -> bytes:
    if datatype == "BYTES":
        return b"".join(struct.pack("<I", len(v.encode())) + v.encode() for v in SAMPLES[datatype])
    return expected(datatype).astype(DATATYPES[datatype].newbyteorder("<")).tobytes()


@pytest.mark.parametrize("datatype", list(SAMPLES))
def test_every_datatype_decodes_from_json_data(datatype: str) -> None:
    request = decode_infer_request(json_request(datatype, SAMPLES[datatype], [2, 2]))
    array = request.inputs["x"]
    assert array.shape == (2, 2)
    assert request.datatypes["x"] == datatype
    assert array.dtype == DATATYPES[datatype]
    np.testing.assert_array_equal(array, expected(datatype))


@pytest.mark.parametrize("datatype", list(SAMPLES))
def test_every_datatype_decodes_from_binary_data(datatype: str) -> None:
    body, length = binary_request(datatype, wire_bytes(datatype), [2, 2])
    array = decode_infer_request(body, length).inputs["x"]
    assert array.shape == (2, 2)
    np.testing.assert_array_equal(array, expected(datatype))


@pytest.mark.parametrize("datatype", list(SAMPLES))
@pytest.mark.parametrize("binary", [False, True])
def test_every_datatype_encodes_in_json_and_binary(datatype: str, binary: bool) -> None:
    array = expected(datatype)
    body, length = encode_infer_response("m", "1", None, [EncodedOutput("y", datatype, array, binary)])
    head = orjson.loads(body[:length] if length is not None else body)
    (out,) = head["outputs"]
    assert out["shape"] == [2, 2]
    assert out["datatype"] == datatype
    if binary:
        assert length is not None
        assert out["parameters"]["binary_data_size"] == len(body) - length
        assert body[length:] == wire_bytes(datatype)
    else:
        assert length is None
        want = SAMPLES[datatype]
        assert out["data"] == (pytest.approx(want, rel=1e-6) if datatype == "FP32" else want)


def test_nested_json_data_is_flattened_row_major() -> None:
    array = decode_infer_request(json_request("INT32", [[1, 2, 3], [4, 5, 6]], [3, 2])).inputs["x"]
    np.testing.assert_array_equal(array, [[1, 2], [3, 4], [5, 6]])


def test_nested_bytes_data_is_flattened() -> None:
    array = decode_infer_request(json_request("BYTES", [["a", "b"], ["c", "d"]], [4])).inputs["x"]
    assert array.tolist() == [b"a", b"b", b"c", b"d"]


def test_the_request_id_parameters_and_requested_outputs_are_kept() -> None:
    body = orjson.dumps(
        {
            "id": "abc",
            "parameters": {"max_new_tokens": 4, "binary_data_output": True},
            "inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1.0]}],
            "outputs": [{"name": "a"}, {"name": "b", "parameters": {"binary_data": False}}],
        }
    )
    request = decode_infer_request(body)
    assert request.id == "abc"
    assert request.parameters == {"max_new_tokens": 4}
    assert [(o.name, o.binary) for o in request.outputs or []] == [("a", True), ("b", False)]


@pytest.mark.parametrize(
    ("datatype", "data", "fragment"),
    [
        ("INT8", [128], "out of the range of INT8"),
        ("UINT8", [-1], "out of the range of UINT8"),
        ("UINT16", [1.5], "integer data"),
        ("INT64", [True], "integer data"),
        ("BOOL", [1], "true/false"),
        ("BYTES", [1], "must be strings"),
        ("FP32", ["x"], "does not fit"),
        ("INT32", [[1], [2, 3]], "input 'x'"),  # ragged: refused, by numpy or by the element count
    ],
)
def test_data_that_does_not_fit_its_datatype_is_refused(datatype: str, data: list[Any], fragment: str) -> None:
    with pytest.raises(InvalidRequest, match=fragment):
        decode_infer_request(json_request(datatype, data, [len(data)]))


@pytest.mark.parametrize("datatype", ["BYTES", "INT32", "UINT64", "FP32"])
def test_data_nested_a_thousand_levels_deep_is_refused_or_flattened_never_a_crash(datatype: str) -> None:
    nested = "[" * 1000 + "1" + "]" * 1000
    body = f'{{"inputs": [{{"name": "x", "datatype": "{datatype}", "shape": [1], "data": {nested}}}]}}'
    try:
        array = decode_infer_request(body.encode()).inputs["x"]
    except InvalidRequest:
        return
    assert array.shape == (1,)  # simdjson flattens numbers row-major whatever the nesting


def test_a_truncated_binary_bytes_element_is_refused() -> None:
    body, length = binary_request("BYTES", struct.pack("<I", 10) + b"abc", [1])
    with pytest.raises(InvalidRequest, match="runs past"):
        decode_infer_request(body, length)


def test_binary_bytes_with_too_few_elements_is_refused() -> None:
    body, length = binary_request("BYTES", struct.pack("<I", 1) + b"a", [2])
    with pytest.raises(InvalidRequest, match="needs 2 elements"):
        decode_infer_request(body, length)


def test_data_and_binary_data_size_together_are_refused() -> None:
    head = orjson.dumps(
        {
            "inputs": [
                {"name": "x", "datatype": "FP32", "shape": [1], "data": [1], "parameters": {"binary_data_size": 4}}
            ]
        }
    )
    with pytest.raises(InvalidRequest, match="not both"):
        decode_infer_request(head + b"\0" * 4, len(head))


def test_an_input_given_twice_is_refused() -> None:
    tensor = {"name": "x", "datatype": "FP32", "shape": [1], "data": [1]}
    with pytest.raises(InvalidRequest, match="given twice"):
        decode_infer_request(orjson.dumps({"inputs": [tensor, tensor]}))


def test_mixed_ints_and_floats_decode_like_numpy_would() -> None:
    array = decode_infer_request(json_request("FP32", [1, 2.5, 3, 1e-3], [4])).inputs["x"]
    np.testing.assert_array_equal(array, np.array([1, 2.5, 3, 1e-3], dtype=np.float32))


def test_uint64_beyond_int64_decodes_exactly() -> None:
    array = decode_infer_request(json_request("UINT64", [2**64 - 1, 0], [2])).inputs["x"]
    assert array.tolist() == [2**64 - 1, 0]


def test_invalid_json_is_refused() -> None:
    for body in (b"{", b"", b'{"inputs": [1,', b"\xff\xfe"):
        with pytest.raises(InvalidRequest, match="not valid JSON"):
            decode_infer_request(body)


def test_numpy_dtypes_map_to_v2_datatypes() -> None:
    assert datatype_of(np.dtype(np.float16)) == "FP16"
    assert datatype_of(np.dtype(">i4")) == "INT32"
    assert datatype_of(np.dtype("U5")) == "BYTES"
    assert datatype_of(np.dtype(object)) == "BYTES"
    with pytest.raises(InvalidRequest):
        datatype_of(np.dtype(np.complex64))


# ---------------------------------------------------------------------------------------------- input hygiene

NON_FINITE_REFUSED = (
    "not a finite number; NaN and infinities are refused unless the model's option allowNonFinite is true"
)


@pytest.mark.parametrize("datatype", ["FP16", "FP32", "FP64"])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf], ids=["nan", "inf", "-inf"])
def test_a_non_finite_value_in_a_binary_tensor_is_refused_naming_the_input_and_its_place(
    datatype: str, bad: float
) -> None:
    values = np.array([[1.0, 2.0, 3.0], [4.0, bad, bad]], dtype=DATATYPES[datatype].newbyteorder("<"))
    body, length = binary_request(datatype, values.tobytes(), [2, 3])
    with pytest.raises(InvalidRequest) as caught:
        decode_infer_request(body, length)
    assert caught.value.message == f"input 'x': the value at [1, 1] is {float(bad)}, {NON_FINITE_REFUSED}"


@pytest.mark.parametrize(
    ("token", "shown"), [("NaN", "nan"), ("Infinity", "inf"), ("-Infinity", "-inf"), ("1e999", "inf")]
)
def test_json_nan_infinity_and_numbers_beyond_a_double_meet_the_same_policy(token: str, shown: str) -> None:
    body = f'{{"inputs": [{{"name": "x", "datatype": "FP64", "shape": [3], "data": [1.5, 2, {token}]}}]}}'.encode()
    with pytest.raises(InvalidRequest) as caught:
        decode_infer_request(body)
    assert caught.value.message == f"input 'x': the value at [2] is {shown}, {NON_FINITE_REFUSED}"


def test_non_finite_values_reach_the_model_when_it_allows_them() -> None:
    values = np.array([np.nan, np.inf, -np.inf, 1.0], dtype="<f4")
    body, length = binary_request("FP32", values.tobytes(), [4])
    binary = decode_infer_request(body, length, allow_non_finite=True).inputs["x"]
    np.testing.assert_array_equal(binary, values)
    json_body = b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [4], "data": [NaN, Infinity, -Infinity, 1]}]}'
    np.testing.assert_array_equal(decode_infer_request(json_body, allow_non_finite=True).inputs["x"], values)


@pytest.mark.parametrize("allow", [False, True], ids=["default", "allowNonFinite"])
@pytest.mark.parametrize(
    ("datatype", "data", "message"),
    [
        ("FP32", [1.0, 1e39], "input 'x': 1e+39 at [1] is out of the range of FP32 (±3.4028235e+38)"),
        ("FP32", [-3.5e38, 0.0], "input 'x': -3.5e+38 at [0] is out of the range of FP32 (±3.4028235e+38)"),
        ("FP32", [0.0, 1e40], "input 'x': 1e+40 at [1] is out of the range of FP32 (±3.4028235e+38)"),
        ("FP16", [70000.0, 1.0], "input 'x': 70000.0 at [0] is out of the range of FP16 (±65504)"),
    ],
)
def test_a_json_number_beyond_a_narrow_float_is_refused_naming_it_not_made_infinite(
    datatype: str, data: list[float], message: str, allow: bool
) -> None:
    with pytest.raises(InvalidRequest) as caught:
        decode_infer_request(json_request(datatype, data, [2]), allow_non_finite=allow)
    assert caught.value.message == message


def test_the_largest_fp32_value_is_accepted() -> None:
    largest = float(np.finfo(np.float32).max)
    decoded = decode_infer_request(json_request("FP32", [largest, -largest], [2])).inputs["x"]
    assert decoded.tolist() == [largest, -largest]


def test_a_json_body_nested_too_deep_is_reported_as_nested_too_deep() -> None:
    deep = b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": ' + b"[" * 1100 + b"1" + b"]" * 1100
    with pytest.raises(InvalidRequest) as caught:
        decode_infer_request(deep + b"}]}")
    assert caught.value.message == ("the request body is nested too deep (more than 1024 levels of arrays and objects)")


def test_data_nested_deeper_than_a_tensor_can_be_is_reported_as_such() -> None:
    body = json_request("FP32", [[[[1.0]]]], [1])
    nested = body.replace(b"[[[[1.0]]]]", b"[" * 100 + b"1.0" + b"]" * 100)
    with pytest.raises(InvalidRequest) as caught:
        decode_infer_request(nested)
    assert caught.value.message == "input 'x': 'data' is nested more than 64 levels deep"


def test_a_shape_with_more_dimensions_than_a_tensor_can_have_is_refused() -> None:
    with pytest.raises(InvalidRequest) as caught:
        decode_infer_request(json_request("FP32", [1.0], [1] * 100))
    assert caught.value.message == "input 'x': 'shape' has 100 dimensions; at most 64 are supported"
