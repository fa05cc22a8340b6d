"""The record schema of a sample file (CSV, JSON Lines, Parquet), read with pyarrow, and which of its columns
feed a model: by name when the model knows its feature names, else the numeric columns in order without an
id-like column."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.json as pa_json
import pyarrow.parquet as pq

from scheduler.scaffold.model_info import ScaffoldError

__all__ = ["FORMATS", "Column", "choose_features", "file_format", "id_column", "read_sample"]

FORMATS = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl", ".parquet": "parquet"}
_SAMPLE_BYTES = 4 << 20
_ID = re.compile(r"^(id|.*[_-]id|.*Id|key|uuid|row|index)$", re.IGNORECASE)


@dataclass(frozen=True)
class Column:
    name: str
    type: str
    format: str | None

    @property
    def numeric(self) -> bool:
        return self.type in ("integer", "number", "boolean")

    def to_ir(self) -> dict[str, str]:
        field = {"name": self.name, "type": self.type}
        if self.format:
            field["format"] = self.format
        return field


def file_format(path: Path) -> str:
    name = path.name.lower()
    for suffix in (".gz", ".zst", ".bz2"):
        name = name.removesuffix(suffix)
    for suffix, fmt in FORMATS.items():
        if name.endswith(suffix):
            return fmt
    raise ScaffoldError(f"{path}: unknown data format (use .csv, .jsonl or .parquet)")


def _ir_type(arrow: pa.DataType) -> tuple[str, str | None]:
    if pa.types.is_boolean(arrow):
        return "boolean", None
    if pa.types.is_integer(arrow):
        return "integer", "int32" if arrow.bit_width <= 32 else "int64"
    if pa.types.is_floating(arrow):
        return "number", "float" if arrow.bit_width <= 32 else "double"
    if pa.types.is_date(arrow):
        return "string", "date"
    if pa.types.is_timestamp(arrow):
        return "string", "date-time"
    return "string", None


def read_sample(path: Path) -> tuple[str, list[Column], int]:
    """The file's format, its columns with IR types, and the rows looked at (a CSV or JSON Lines file is read
    from its first 4 MiB; a Parquet file's schema is its footer's)."""
    if not path.is_file():
        raise ScaffoldError(f"{path}: no such file")
    fmt = file_format(path)
    try:
        if fmt == "parquet":
            schema = pq.read_schema(path)
            rows = pq.ParquetFile(path).metadata.num_rows
        else:
            with path.open("rb") as handle:
                head = handle.read(_SAMPLE_BYTES)
            if len(head) == _SAMPLE_BYTES:
                head = head[: head.rfind(b"\n") + 1]
            table = pa_csv.read_csv(pa.py_buffer(head)) if fmt == "csv" else pa_json.read_json(pa.py_buffer(head))
            schema, rows = table.schema, table.num_rows
    except (pa.ArrowInvalid, OSError) as exc:
        raise ScaffoldError(f"{path}: cannot read it as {fmt}: {exc}") from exc
    columns = [Column(f.name, *_ir_type(f.type)) for f in schema]
    if not columns:
        raise ScaffoldError(f"{path}: no columns")
    return fmt, columns, rows


def id_column(columns: list[Column]) -> Column | None:
    """The column that names a record rather than describing it: `id`, `*_id`, `key`... (integer or string)."""
    for column in columns:
        if _ID.match(column.name) and column.type in ("integer", "string"):
            return column
    return None


def choose_features(
    columns: list[Column], width: int, names: list[str] | None, source: Path
) -> tuple[list[str], list[str]]:
    """The columns feeding a model input of `width` values per record, and TODO notes for what was guessed."""
    by_name = {c.name: c for c in columns}
    if names is not None:
        missing = [n for n in names if n not in by_name]
        if missing:
            shown = ", ".join(missing[:8]) + (", ..." if len(missing) > 8 else "")
            raise ScaffoldError(
                f"{source}: the model was fitted on {len(names)} named features, {len(missing)} of which are not "
                f"columns of the sample: {shown}"
            )
        wrong = [n for n in names if not by_name[n].numeric]
        if wrong:
            raise ScaffoldError(f"{source}: feature column(s) {', '.join(wrong)} are not numeric in the sample")
        return list(names), []
    ident = id_column(columns)
    numeric = [c.name for c in columns if c.numeric and c is not ident]
    if len(numeric) == width:
        return numeric, []
    if len(numeric) > width:
        return numeric[:width], [
            f"the model takes {width} features and the sample has {len(numeric)} numeric columns besides the id: "
            f"the first {width} in order were taken ({numeric[0]} .. {numeric[width - 1]}); check them"
        ]
    raise ScaffoldError(
        f"{source}: the model takes {width} features per record, but the sample has only {len(numeric)} numeric "
        f"column(s) besides {'the id ' + repr(ident.name) if ident else 'no id column'}: "
        f"{', '.join(numeric) or 'none'}"
    )
