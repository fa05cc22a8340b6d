"""The record schema of a data file (CSV, JSON Lines, Parquet) read from the file itself, with pyarrow.

The building block of `infer: true` source schemas (issue 13): whoever calls it has already resolved and
trust-checked `path` (this module opens what it is given and nothing else). A CSV or JSON Lines file is read
from its first `sample_rows` records; a Parquet file's types come from its footer and its nulls from its first
`sample_rows` rows. Types map back onto the IR as `data_channel.schema.arrow_type` maps the IR onto Arrow, so
a schema inferred here reads the same file back without casts. A field is `nullable` when the sample holds a
null in it. `ir` stays pure: the pyarrow reading lives here, in `data_channel`.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.json as pa_json
import pyarrow.parquet as pq

from ir.models import CsvDialect, RecordSchema

__all__ = ["INFER_FORMATS", "SchemaInferenceError", "infer_schema", "ir_field_type"]

INFER_FORMATS = frozenset({"csv", "jsonl", "parquet"})
_MAX_FIELDS = 10_000  # RecordSchema's own limit


class SchemaInferenceError(ValueError):
    """A file whose schema cannot be read: missing, unreadable, not in its format, or without columns."""


def ir_field_type(arrow: pa.DataType) -> dict[str, Any]:
    """The IR field type (`type`, `format`, `items`) of an Arrow type; what has no IR type of its own (a
    struct, a map, a decimal) becomes a string."""
    if pa.types.is_boolean(arrow):
        return {"type": "boolean"}
    if pa.types.is_integer(arrow):
        return {"type": "integer", "format": "int32" if arrow.bit_width <= 32 else "int64"}
    if pa.types.is_floating(arrow):
        return {"type": "number", "format": "float" if arrow.bit_width <= 32 else "double"}
    if pa.types.is_date(arrow):
        return {"type": "string", "format": "date"}
    if pa.types.is_timestamp(arrow):
        return {"type": "string", "format": "date-time"}
    if pa.types.is_binary(arrow) or pa.types.is_large_binary(arrow) or pa.types.is_fixed_size_binary(arrow):
        return {"type": "string", "format": "bytes"}
    if pa.types.is_list(arrow) or pa.types.is_large_list(arrow) or pa.types.is_fixed_size_list(arrow):
        return {"type": "array", "items": ir_field_type(arrow.value_type)}
    return {"type": "string"}


def _head_lines(path: Path, count: int) -> bytes:
    """The first `count` lines of the file (decompressed when its name says gzip or bz2)."""
    lines: list[bytes] = []
    with pa.input_stream(str(path), compression="detect") as stream, io.BufferedReader(stream) as text:
        for line in text:
            lines.append(line if line.endswith(b"\n") else line + b"\n")
            if len(lines) >= count:
                break
    return b"".join(lines)


def _csv_sample(path: Path, sample_rows: int, dialect: CsvDialect) -> pa.Table:
    # Lines, not records: a quoted field holding a newline makes the sample a few records shorter.
    head = _head_lines(path, sample_rows + (1 if dialect.header else 0))
    parse = pa_csv.ParseOptions(delimiter=dialect.delimiter, quote_char=dialect.quote_char)
    read = pa_csv.ReadOptions(autogenerate_column_names=not dialect.header)
    convert = pa_csv.ConvertOptions(null_values=dialect.null_values, strings_can_be_null=True)
    return pa_csv.read_csv(pa.py_buffer(head), read_options=read, parse_options=parse, convert_options=convert)


def _jsonl_sample(path: Path, sample_rows: int) -> pa.Table:
    lines = [line for line in _head_lines(path, sample_rows).splitlines(keepends=True) if line.strip()]
    return pa_json.read_json(pa.py_buffer(b"".join(lines)))


def _parquet_sample(path: Path, sample_rows: int) -> pa.Table:
    parquet = pq.ParquetFile(path)
    for batch in parquet.iter_batches(batch_size=sample_rows):
        return pa.Table.from_batches([batch], schema=parquet.schema_arrow)
    return parquet.schema_arrow.empty_table()


def infer_schema(path: Path, format: str, sample_rows: int = 1000, csv: CsvDialect | None = None) -> RecordSchema:
    """The record schema of the data file at `path` (already resolved and trust-checked by the caller), in the
    file's column order. `format` is the channel's (`csv`, `jsonl`, `parquet`); `csv` its dialect (the IR's
    defaults when None). Raises `SchemaInferenceError` naming the path and the reason."""
    if format not in INFER_FORMATS:
        raise SchemaInferenceError(f"{path}: cannot infer a schema from format '{format}' (csv, jsonl or parquet)")
    if sample_rows < 1:
        raise SchemaInferenceError(f"{path}: sample_rows must be at least 1 (got {sample_rows})")
    if not path.is_file():
        raise SchemaInferenceError(f"{path}: no such file")
    try:
        if format == "csv":
            table = _csv_sample(path, sample_rows, csv or CsvDialect())
        elif format == "jsonl":
            table = _jsonl_sample(path, sample_rows)
        else:
            table = _parquet_sample(path, sample_rows)
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise SchemaInferenceError(f"{path}: cannot read it as {format}: {exc}") from exc
    if table.num_columns == 0:
        raise SchemaInferenceError(f"{path}: no columns found in the file")
    if table.num_columns > _MAX_FIELDS:
        raise SchemaInferenceError(f"{path}: {table.num_columns} columns, more than a schema holds ({_MAX_FIELDS})")
    fields = [
        {"name": name, **ir_field_type(column.type), "nullable": column.null_count > 0}
        for name, column in zip(table.column_names, table.columns, strict=True)
    ]
    try:
        return RecordSchema.model_validate({"fields": fields})
    except ValueError as exc:  # a column name the IR refuses, or one named twice
        raise SchemaInferenceError(f"{path}: its columns do not make a record schema: {exc}") from exc
