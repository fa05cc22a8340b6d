"""A channel's record schema as Arrow types, and the casts that make records fit it, one error per bad record.

Every source hands out Arrow record batches whose columns have exactly the types of its channel's schema, and
every sink receives its own fields in its own types. The mapping (`arrow_type`):

| field type                  | Arrow type                      |
| --------------------------- | ------------------------------- |
| `boolean`                   | `bool`                          |
| `integer` (`int32`)         | `int32`                         |
| `integer` (`int64`, none)   | `int64`                         |
| `number` (`float`)          | `float32`                       |
| `number` (`double`, none)   | `float64`                       |
| `string`                    | `string`                        |
| `string` (`date`)           | `date32`                        |
| `string` (`date-time`)      | `timestamp[us, UTC]`            |
| `string` (`bytes`)          | `binary` (base64 in text and JSON) |
| `array` of T                | `list<T>`                       |
| `object`                    | `string` holding the JSON text  |

Two ways in, both vectorised with a per-row fallback that runs only when the fast path fails:

- `from_text`: columns of text (CSV fields, Redis stream values), cast by Arrow's parsers, strictly: `'3.0'`
  is not an integer, `' 3'` neither;
- `from_values`: Python values (JSON Lines, RabbitMQ and HTTP JSON, SQL rows), where a float is never
  silently truncated into an integer and a boolean is never an integer.

A record that does not fit becomes a `RecordError` naming the record (its row number or offset, from the
caller) and the first field that failed; the record is left out of the batch.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import datetime as dt
import math
from collections.abc import Callable, Mapping, Sequence
from decimal import Decimal
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc

from ir.models import FieldType, RecordField, RecordSchema

__all__ = [
    "RecordError",
    "arrow_schema",
    "arrow_type",
    "conform",
    "from_text",
    "from_values",
    "to_json_values",
]

Locate = Callable[[int], str]
"""Describes the record at a row index of the batch being built ("record 17 of a.csv", "message 1-0")."""


@dataclasses.dataclass
class RecordError:
    """One record that did not fit (or failed in a step): where it came from, which field, and why."""

    ordinal: int
    """The record's position in its source (row number from 0 for files and SQL; a local counter for queues)."""
    where: str
    """Human words for the position: `record 17 of /data/in.csv`, `row 17 of the query`, `message 1700-0`."""
    message: str
    field: str | None = None
    step: str | None = None
    record: dict[str, Any] | None = dataclasses.field(default=None, repr=False)
    """The record's values as read (text or JSON values), for dead-letter sinks; None when unknown."""

    def describe(self) -> str:
        parts = [self.where]
        if self.step:
            parts.append(f"step '{self.step}'")
        if self.field:
            parts.append(f"field '{self.field}'")
        return ", ".join(parts) + f": {self.message}"


class SchemaError(ValueError):
    """Records cannot be made to fit a schema at all (a missing column, for instance)."""


# ---------------------------------------------------------------------------------------------- types


def arrow_type(ftype: FieldType) -> pa.DataType:
    """The Arrow type of a field type (see the table in the module docstring)."""
    t, f = ftype.type, ftype.format
    if t == "boolean":
        return pa.bool_()
    if t == "integer":
        return pa.int32() if f == "int32" else pa.int64()
    if t == "number":
        return pa.float32() if f == "float" else pa.float64()
    if t == "string":
        if f == "date":
            return pa.date32()
        if f == "date-time":
            return pa.timestamp("us", tz="UTC")
        if f == "bytes":
            return pa.binary()
        return pa.string()
    if t == "array":
        assert ftype.items is not None
        return pa.list_(arrow_type(ftype.items))
    return pa.string()  # object: its JSON text


def arrow_schema(schema: RecordSchema) -> pa.Schema:
    """The Arrow schema of a record schema. Every Arrow field is nullable: `nullable: false` is checked per record
    (a null is a record error), and one Arrow schema for all batches of a channel keeps them concatenable."""
    return pa.schema([pa.field(f.name, arrow_type(f)) for f in schema.fields])


def _describe(ftype: FieldType) -> str:
    return ftype.describe()


# ---------------------------------------------------------------------------------------------- building


def _null_mask(column: pa.Array) -> np.ndarray:
    if column.null_count == 0:
        return np.zeros(len(column), dtype=bool)
    return np.asarray(column.is_null().to_numpy(zero_copy_only=False), dtype=bool)


class _Builder:
    """Collects the converted columns and the first error of each bad row."""

    def __init__(self, rows: int, ordinals: np.ndarray, locate: Locate, raw: Callable[[int], dict[str, Any]]):
        self.rows = rows
        self.ordinals = ordinals
        self.locate = locate
        self.raw = raw
        self.bad = np.zeros(rows, dtype=bool)
        self.errors: dict[int, RecordError] = {}

    def fail(self, row: int, name: str, message: str) -> None:
        if row in self.errors:
            return
        self.bad[row] = True
        self.errors[row] = RecordError(
            int(self.ordinals[row]), self.locate(row), message, field=name, record=self.raw(row)
        )

    def check_nulls(self, spec: RecordField, column: pa.Array, how: str) -> None:
        if spec.nullable or column.null_count == 0:
            return
        for row in np.flatnonzero(_null_mask(column)):
            self.fail(int(row), spec.name, f"{how}, but the field is not nullable")

    def finish(
        self, schema: pa.Schema, columns: list[pa.Array]
    ) -> tuple[pa.RecordBatch, np.ndarray, list[RecordError]]:
        batch = pa.RecordBatch.from_arrays(columns, schema=schema.with_metadata(None)) if columns else None
        if batch is None:
            batch = pa.RecordBatch.from_pylist([{} for _ in range(self.rows)], schema=schema)
        if not self.errors:
            return batch, self.ordinals, []
        keep = ~self.bad
        good = batch.filter(pa.array(keep))
        errors = [self.errors[row] for row in sorted(self.errors)]
        return good, self.ordinals[keep], errors


# ---------------------------------------------------------------------------------------------- from text

_TRUE = frozenset({"true", "1"})
_FALSE = frozenset({"false", "0"})


def _parse_text(text: str, ftype: FieldType) -> Any:
    """One text value as the Python value of `ftype`; ValueError with a short reason when it does not fit."""
    t, f = ftype.type, ftype.format
    if t == "boolean":
        low = text.lower()
        if low in _TRUE:
            return True
        if low in _FALSE:
            return False
        raise ValueError("expected true or false")
    if t == "integer":
        if text.strip() != text or not text.lstrip("+-").isdigit():
            raise ValueError("expected an integer")
        value = int(text)
        bits = 31 if f == "int32" else 63
        if not -(2**bits) <= value < 2**bits:
            raise ValueError(f"out of range for {f or 'int64'}")
        return value
    if t == "number":
        number = float(text)  # raises ValueError
        if f == "float" and math.isfinite(number) and abs(number) > 3.4028234663852886e38:
            raise ValueError("out of range for float")
        return number
    if t == "string":
        if f == "date":
            return dt.date.fromisoformat(text)
        if f == "date-time":
            return _timestamp(dt.datetime.fromisoformat(text.replace("Z", "+00:00")))
        if f == "bytes":
            try:
                return base64.b64decode(text, validate=True)
            except binascii.Error:
                raise ValueError("expected base64 text") from None
        return text
    if t == "array":
        return _coerce(orjson.loads(text), ftype)
    parsed = orjson.loads(text)
    if not isinstance(parsed, dict):
        raise ValueError("expected a JSON object")
    return orjson.dumps(parsed).decode()


def _timestamp(value: dt.datetime) -> dt.datetime:
    if value.tzinfo is None:
        return value.replace(tzinfo=dt.UTC)
    return value.astimezone(dt.UTC)


def _cast_text(column: pa.Array, ftype: FieldType, target: pa.DataType) -> pa.Array | None:
    """The vectorised cast of a text column; None when some value does not fit (the caller goes row by row)."""
    if ftype.type == "string" and ftype.format is None:
        return column
    if ftype.type in ("array", "object") or ftype.format == "bytes":
        return None
    try:
        if ftype.type == "boolean":
            lowered = pc.utf8_lower(column)
            ok = pc.or_(pc.is_in(lowered, value_set=pa.array(["true", "false", "1", "0"])), pc.is_null(lowered))
            if not pc.all(ok).as_py():
                return None
            return pc.cast(lowered, target)
        return pc.cast(column, target, safe=True)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
        return None


def from_text(
    batch: pa.RecordBatch | pa.Table,
    schema: RecordSchema,
    ordinals: np.ndarray,
    locate: Locate,
) -> tuple[pa.RecordBatch, np.ndarray, list[RecordError]]:
    """Text columns (nulls already marked) cast to `schema`: (good records, their ordinals, errors).

    Columns are found by name; a missing column is a `SchemaError` (every record would fail the same way).
    """
    target_schema = arrow_schema(schema)
    names = set(batch.schema.names)
    missing = [f.name for f in schema.fields if f.name not in names]
    if missing:
        raise SchemaError(f"no column {', '.join(repr(m) for m in missing)} (columns: {', '.join(batch.schema.names)})")
    columns_in = {f.name: _combined(batch.column(f.name)) for f in schema.fields}

    def raw(row: int) -> dict[str, Any]:
        return {name: column[row].as_py() for name, column in columns_in.items()}

    builder = _Builder(batch.num_rows, ordinals, locate, raw)
    out: list[pa.Array] = []
    for spec, target in zip(schema.fields, target_schema, strict=True):
        column = columns_in[spec.name]
        if not pa.types.is_string(column.type) and not pa.types.is_large_string(column.type):
            column = pc.cast(column, pa.string())
        builder.check_nulls(spec, column, "it is empty")
        cast = _cast_text(column, spec, target.type)
        if cast is None:
            values: list[Any] = []
            for row, text in enumerate(column.to_pylist()):
                if text is None:
                    values.append(None)
                    continue
                try:
                    values.append(_parse_text(text, spec))
                except (ValueError, OverflowError, orjson.JSONDecodeError) as exc:
                    builder.fail(row, spec.name, f"cannot read {_quote(text)} as {_describe(spec)} ({_reason(exc)})")
                    values.append(None)
            cast = pa.array(values, type=target.type)
        out.append(cast)
    return builder.finish(target_schema, out)


def _combined(column: pa.Array | pa.ChunkedArray) -> pa.Array:
    if isinstance(column, pa.ChunkedArray):
        return column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
    return column


def _quote(text: Any, limit: int = 60) -> str:
    shown = repr(text)
    return shown if len(shown) <= limit else shown[: limit - 3] + "..."


def _reason(exc: BaseException) -> str:
    text = str(exc).split("\n", 1)[0]
    return text or type(exc).__name__


# ---------------------------------------------------------------------------------------------- from values


def _coerce(value: Any, ftype: FieldType) -> Any:
    """One JSON/Python value as the Python value of `ftype`, strictly (ValueError when it does not fit)."""
    t, f = ftype.type, ftype.format
    if value is None:
        return None
    if t == "boolean":
        if isinstance(value, bool | np.bool_):
            return bool(value)
        raise ValueError(f"expected true or false, got {type(value).__name__}")
    if t == "integer":
        if isinstance(value, bool | np.bool_):
            raise ValueError("expected an integer, got a boolean")
        if isinstance(value, float | Decimal) and value == int(value):
            value = int(value)
        if not isinstance(value, int | np.integer):
            raise ValueError(f"expected an integer, got {type(value).__name__}")
        bits = 31 if f == "int32" else 63
        if not -(2**bits) <= int(value) < 2**bits:
            raise ValueError(f"out of range for {f or 'int64'}")
        return int(value)
    if t == "number":
        if isinstance(value, bool | np.bool_):
            raise ValueError("expected a number, got a boolean")
        if isinstance(value, int | float | Decimal | np.integer | np.floating):
            return float(value)
        raise ValueError(f"expected a number, got {type(value).__name__}")
    if t == "string":
        if f == "date":
            if isinstance(value, dt.datetime):
                return value.date()
            if isinstance(value, dt.date):
                return value
            if isinstance(value, str):
                return dt.date.fromisoformat(value)
            raise ValueError(f"expected a date, got {type(value).__name__}")
        if f == "date-time":
            if isinstance(value, dt.datetime):
                return _timestamp(value)
            if isinstance(value, str):
                return _timestamp(dt.datetime.fromisoformat(value.replace("Z", "+00:00")))
            raise ValueError(f"expected a date-time, got {type(value).__name__}")
        if f == "bytes":
            if isinstance(value, bytes | bytearray | memoryview):
                return bytes(value)
            if isinstance(value, str):
                try:
                    return base64.b64decode(value, validate=True)
                except binascii.Error:
                    raise ValueError("expected base64 text") from None
            raise ValueError(f"expected base64 text, got {type(value).__name__}")
        if isinstance(value, str):
            return value
        raise ValueError(f"expected a string, got {type(value).__name__}")
    if t == "array":
        if not isinstance(value, list | tuple):
            raise ValueError(f"expected an array, got {type(value).__name__}")
        assert ftype.items is not None
        return [_coerce(item, ftype.items) for item in value]
    if isinstance(value, dict):
        return orjson.dumps(value).decode()
    if isinstance(value, str):
        parsed = orjson.loads(value)
        if isinstance(parsed, dict):
            return orjson.dumps(parsed).decode()
    raise ValueError(f"expected an object, got {type(value).__name__}")


def _fast_values(values: Sequence[Any], spec: FieldType, target: pa.DataType) -> pa.Array | None:
    """Arrow's own conversion where it cannot change a value's meaning; None to go row by row."""
    t = spec.type
    try:
        if t in ("integer", "number"):
            inferred = pa.array(values)
            kind = inferred.type
            if pa.types.is_null(kind):
                return pa.nulls(len(values), target)
            if pa.types.is_boolean(kind) or not (pa.types.is_integer(kind) or pa.types.is_floating(kind)):
                return None
            if t == "integer" and pa.types.is_floating(kind):
                return None  # integral floats are accepted row by row; others are errors
            return pc.cast(inferred, target, safe=True)
        if t == "boolean" or (t == "string" and spec.format is None):
            return pa.array(values, type=target)
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, OverflowError):
        return None
    return None


def from_values(
    columns: Mapping[str, Sequence[Any]],
    rows: int,
    schema: RecordSchema,
    ordinals: np.ndarray,
    locate: Locate,
    raw: Callable[[int], dict[str, Any]] | None = None,
) -> tuple[pa.RecordBatch, np.ndarray, list[RecordError]]:
    """Columns of Python values (a missing column is all null) cast to `schema`: (good, ordinals, errors)."""
    target_schema = arrow_schema(schema)

    def raw_default(row: int) -> dict[str, Any]:
        return {name: values[row] for name, values in columns.items()}

    builder = _Builder(rows, ordinals, locate, raw or raw_default)
    out: list[pa.Array] = []
    for spec, target in zip(schema.fields, target_schema, strict=True):
        values = columns.get(spec.name)
        if values is None:
            column = pa.nulls(rows, target.type)
            builder.check_nulls(spec, column, "it is missing")
            out.append(column)
            continue
        column_or_none = _fast_values(values, spec, target.type)
        if column_or_none is None:
            converted: list[Any] = []
            for row, value in enumerate(values):
                try:
                    converted.append(_coerce(value, spec))
                except (ValueError, TypeError, OverflowError, orjson.JSONDecodeError) as exc:
                    builder.fail(row, spec.name, f"cannot read {_quote(value)} as {_describe(spec)} ({_reason(exc)})")
                    converted.append(None)
            column_or_none = pa.array(converted, type=target.type)
        builder.check_nulls(spec, column_or_none, "it is null")
        out.append(column_or_none)
    return builder.finish(target_schema, out)


# ---------------------------------------------------------------------------------------------- to a sink


def conform(
    batch: pa.RecordBatch, schema: RecordSchema, ordinals: np.ndarray, locate: Locate
) -> tuple[pa.RecordBatch, np.ndarray, list[RecordError]]:
    """The sink's fields, in its order and types, from a flow batch; a value that does not fit is an error.

    The record-schema checks of the IR make a missing field or an unassignable type impossible for a validated
    pipeline; they are still reported here, per record, not as a crash.
    """
    target_schema = arrow_schema(schema)
    names = set(batch.schema.names)

    def raw(row: int) -> dict[str, Any]:
        return {name: batch.column(name)[row].as_py() for name in batch.schema.names}

    builder = _Builder(batch.num_rows, ordinals, locate, raw)
    out: list[pa.Array] = []
    for spec, target in zip(schema.fields, target_schema, strict=True):
        if spec.name not in names:
            column = pa.nulls(batch.num_rows, target.type)
            builder.check_nulls(spec, column, "the flow does not provide it")
            out.append(column)
            continue
        column = batch.column(spec.name)
        if column.type != target.type:
            try:
                column = pc.cast(column, target.type, safe=True)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
                column = _cast_rows(builder, spec, column, target.type)
        builder.check_nulls(spec, column, "it is null")
        out.append(column)
    return builder.finish(target_schema, out)


def _cast_rows(builder: _Builder, spec: RecordField, column: pa.Array, target: pa.DataType) -> pa.Array:
    values: list[Any] = []
    for row, value in enumerate(column.to_pylist()):
        try:
            values.append(_coerce(value, spec))
        except (ValueError, TypeError, OverflowError, orjson.JSONDecodeError) as exc:
            builder.fail(row, spec.name, f"cannot write {_quote(value)} as {_describe(spec)} ({_reason(exc)})")
            values.append(None)
    return pa.array(values, type=target)


def to_json_values(batch: pa.RecordBatch, schema: RecordSchema) -> list[dict[str, Any]]:
    """Records as JSON-ready dicts: dates ISO, bytes base64, objects parsed back from their JSON text."""
    rows: list[dict[str, Any]] = batch.to_pylist()
    special = [(f.name, f) for f in schema.fields if f.type == "object" or f.format in ("date", "date-time", "bytes")]
    if not special:
        return rows
    for row in rows:
        for name, spec in special:
            value = row.get(name)
            if value is None:
                continue
            if spec.type == "object":
                row[name] = orjson.loads(value)
            elif spec.format == "bytes":
                row[name] = base64.b64encode(value).decode()
            else:
                row[name] = value.isoformat()
    return rows
