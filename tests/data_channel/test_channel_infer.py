"""`data_channel.infer.infer_schema`: the record schema of a CSV, JSON Lines or Parquet file, and its errors."""

from __future__ import annotations

import gzip
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from data_channel.infer import SchemaInferenceError, infer_schema
from ir.models import CsvDialect


def _types(path: Path, fmt: str, **kwargs: object) -> list[tuple[str, str, str | None, bool]]:
    schema = infer_schema(path, fmt, **kwargs)  # type: ignore[arg-type]
    return [(f.name, f.type, f.format, f.nullable) for f in schema.fields]


def test_a_csv_file_gives_its_columns_in_order_with_ir_types_and_nulls(tmp_path: Path) -> None:
    path = tmp_path / "rows.csv"
    path.write_text("id,x,label,ok\n1,2.5,a,true\n2,,b,false\n")
    assert _types(path, "csv") == [
        ("id", "integer", "int64", False),
        ("x", "number", "double", True),
        ("label", "string", None, False),
        ("ok", "boolean", None, False),
    ]


def test_a_csv_file_is_read_with_its_dialect_and_through_gzip(tmp_path: Path) -> None:
    path = tmp_path / "rows.csv.gz"
    path.write_bytes(gzip.compress(b"id;name\n1;NA\n2;b\n"))
    dialect = CsvDialect(delimiter=";", null_values=["NA"])
    assert _types(path, "csv", csv=dialect) == [("id", "integer", "int64", False), ("name", "string", None, True)]


def test_only_the_first_sample_rows_decide_the_types(tmp_path: Path) -> None:
    path = tmp_path / "rows.csv"
    path.write_text("n\n1\n2\nthree\n")
    assert _types(path, "csv", sample_rows=2) == [("n", "integer", "int64", False)]
    assert _types(path, "csv") == [("n", "string", None, False)]


def test_a_json_lines_file_gives_arrays_and_nullable_fields(tmp_path: Path) -> None:
    path = tmp_path / "rows.jsonl"
    path.write_text('{"id": 1, "v": [1.0, 2.0], "ok": true}\n\n{"id": 2, "v": [3.0], "ok": null}\n')
    schema = infer_schema(path, "jsonl")
    assert [f.name for f in schema.fields] == ["id", "v", "ok"]
    v = schema.fields[1]
    assert v.type == "array" and v.items is not None and (v.items.type, v.items.format) == ("number", "double")
    assert (schema.fields[2].type, schema.fields[2].nullable) == ("boolean", True)


def test_a_parquet_file_gives_its_footer_types(tmp_path: Path) -> None:
    path = tmp_path / "rows.parquet"
    table = pa.table({"a": pa.array([1, 2], pa.int32()), "f": pa.array([0.5, 1.5], pa.float32()), "b": ["x", None]})
    pq.write_table(table, path)
    assert _types(path, "parquet") == [
        ("a", "integer", "int32", False),
        ("f", "number", "float", False),
        ("b", "string", None, True),
    ]


def test_a_missing_file_a_file_not_in_its_format_and_an_unknown_format_are_errors_naming_the_path(
    tmp_path: Path,
) -> None:
    with pytest.raises(SchemaInferenceError, match=r"missing\.csv: no such file"):
        infer_schema(tmp_path / "missing.csv", "csv")
    broken = tmp_path / "broken.parquet"
    broken.write_bytes(b"not parquet at all")
    with pytest.raises(SchemaInferenceError, match=r"broken\.parquet: cannot read it as parquet"):
        infer_schema(broken, "parquet")
    with pytest.raises(SchemaInferenceError, match=r"cannot infer a schema from format 'avro'"):
        infer_schema(broken, "avro")


def test_a_column_name_the_ir_refuses_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "rows.csv"
    path.write_text("a,a\n1,2\n")
    with pytest.raises(SchemaInferenceError, match=r"rows\.csv: (its columns do not make a record schema|cannot read)"):
        infer_schema(path, "csv")
