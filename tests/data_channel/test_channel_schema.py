"""The casts every channel shares: text and Python values to the schema's Arrow types, one error per record."""

from __future__ import annotations

from decimal import Decimal

import numpy as np
import pyarrow as pa
from channel_kit import fields

from data_channel.base import ChannelContext, secret_env_name, secret_value
from data_channel.schema import arrow_schema, conform, from_text, from_values
from ir.models import RecordSchema, SecretRef


def schema(*items: str) -> RecordSchema:
    return RecordSchema.model_validate({"fields": fields(*items)})


def where(row: int) -> str:
    return f"row {row}"


def test_the_arrow_types_follow_the_field_types_and_formats() -> None:
    got = arrow_schema(
        schema("a:integer/int32", "b:integer", "c:number/float", "d:number", "e:string/date", "f:array/integer")
    )
    assert got.types == [pa.int32(), pa.int64(), pa.float32(), pa.float64(), pa.date32(), pa.list_(pa.int64())]


def test_python_values_never_lose_meaning_on_the_way_in() -> None:
    values = {"i": [1, 2.0, Decimal(3), True, 1.5, 2**40], "n": [1, 2.5, Decimal("0.5"), False, "1", None]}
    good, kept, errors = from_values(values, 6, schema("i:integer/int32", "n:number?"), np.arange(6), where)
    assert good.column("i").to_pylist() == [1, 2, 3]
    assert good.column("n").to_pylist() == [1.0, 2.5, 0.5]
    assert kept.tolist() == [0, 1, 2]
    assert [(e.ordinal, e.field) for e in errors] == [(3, "i"), (4, "i"), (5, "i")]
    assert "boolean" in errors[0].message and "out of range for int32" in errors[2].message


def test_text_values_are_parsed_strictly_and_the_first_bad_field_is_named() -> None:
    table = pa.table({"b": ["true", "FALSE", "yes", "1"], "i": ["1", "2", "3", " 4"]})
    good, _, errors = from_text(table, schema("b:boolean", "i:integer"), np.arange(10, 14), where)
    assert good.to_pylist() == [{"b": True, "i": 1}, {"b": False, "i": 2}]
    assert [(e.ordinal, e.field, e.where) for e in errors] == [(12, "b", "row 2"), (13, "i", "row 3")]
    assert errors[0].record == {"b": "yes", "i": "3"}


def test_a_sink_takes_its_own_fields_widened_and_reports_what_does_not_fit() -> None:
    batch = pa.RecordBatch.from_pydict(
        {"extra": ["x", "y"], "b": pa.array([1, None], pa.int32()), "a": pa.array([0.5, 1.5], pa.float32())}
    )
    good, kept, errors = conform(batch, schema("a:number", "b:integer"), np.array([7, 8]), where)
    assert good.schema.names == ["a", "b"] and good.schema.types == [pa.float64(), pa.int64()]
    assert good.to_pylist() == [{"a": 0.5, "b": 1}]
    assert kept.tolist() == [7]
    assert [(e.ordinal, e.field) for e in errors] == [(8, "b")]


def test_secrets_come_from_an_environment_variable_named_after_the_secret_and_key() -> None:
    ref = SecretRef(name="pg-main", key="url.local")
    assert secret_env_name(ref) == "MODELOPS_SECRET_PG_MAIN_URL_LOCAL"
    assert secret_value(ref, {"MODELOPS_SECRET_PG_MAIN_URL_LOCAL": "postgresql://x"}) == "postgresql://x"
    assert ChannelContext().workdir.is_absolute()
