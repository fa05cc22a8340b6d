"""File channels: CSV, JSON Lines and Parquet, one file or a glob, plain or gzip, read and written in order.

**Paths.** The scheduler resolves a job's relative paths against its data root before a flow sees them
(docs/scheduler.md, "Paths"); a path that is still relative resolves against the flow's working directory
(`ChannelContext.workdir`). `~` is expanded. An input file that is not there (or no longer) is `InputMissing`:
the job fails as `InvalidInput`. A source path may be a glob (`*`, `?`,
`[...]`, `**` for any depth): the matching files are read one after the other in sorted order of their paths,
and a batch never spans two files. A sink path is one file; its parent folders are created.

**Compression.** `gzip` always, `none` never, `auto` (the default) when the name ends in `.gz`.

**Formats.**
- CSV (pyarrow's streaming reader): with `csv.header` the columns are found by name (extra columns are
  ignored, a missing one is an error before any record is read); without it they are the schema's fields in
  order. Values are read as text and cast to the schema (`schema.from_text`); texts in `csv.nullValues` are
  null. A line with the wrong number of columns is a record error. Written with a header line; arrays are
  written as JSON text, `bytes` as base64.
- JSON Lines: one JSON object per line (blank lines are skipped), fields by name, cast by
  `schema.from_values`; an unparsable line is a record error. Written the same way.
- Parquet: columns by name, cast to the schema. A sink writes one part file per commit into `<path>.parts/`
  and merges them into `<path>` at the end (a Parquet file cannot be appended to after a crash).

**Delivery.** A sink writes `<path>.partial` (Parquet: `<path>.parts/`) and moves it to `<path>` only when the
flow has read its whole source (`finish`), so a reader never sees half an output. Every commit appends the
buffered records (gzip: as one more gzip member; concatenated members are a valid gzip file), `fsync`s, and
returns `{bytes, watermark}`; opened again with that state after a crash, the sink cuts the file back to
`bytes`, so what was written after the last checkpoint is written again exactly once. A source records the
files it found (path, size, modification time, rows once known): a resumed flow refuses to continue over
input files that changed, and skips whole files without reading them again.
"""

from __future__ import annotations

import asyncio
import base64
import bisect
import contextlib
import csv
import glob as globlib
import gzip
import io
import os
import shutil
import sys
import threading
from collections.abc import Callable, Generator, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from data_channel.base import ChannelContext, ChannelError, InputMissing, Sink, Source, SourceBatch, SourceSize
from data_channel.schema import RecordError, SchemaError, conform, from_text, from_values, to_json_values
from ir.models import CsvDialect, DataChannelSpec, FileOptions, RecordSchema

__all__ = ["FileSink", "FileSource", "resolve_path"]

_CSV_BLOCK_BYTES = 1 << 20
"""pyarrow CSV block size: big enough to amortise per-block costs, small enough to keep memory flat."""
_GLOB_CHARS = frozenset("*?[")
COUNT_LINES_BYTES = 64 << 20
"""Uncompressed CSV and JSON Lines inputs up to this size in all get their lines counted at open, for a progress
bar in records (about 30 ms for 64 MiB); bigger or gzipped ones are measured in bytes read instead."""


def resolve_path(path: str, workdir: Path) -> Path:
    """`~` expanded; a relative path joined to the flow's working directory."""
    expanded = Path(os.path.expanduser(path))
    return expanded if expanded.is_absolute() else workdir / expanded


def _gzipped(options: FileOptions, path: Path) -> bool:
    if options.compression == "gzip":
        return True
    return options.compression == "auto" and path.name.endswith(".gz")


def _options(spec: DataChannelSpec) -> FileOptions:
    if spec.file is None:
        raise ChannelError("a file channel needs 'file' options")
    return spec.file


# ---------------------------------------------------------------------------------------------- source


@dataclass
class _FileInfo:
    path: str
    size: int
    mtime: int
    rows: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "size": self.size, "mtime": self.mtime, "rows": self.rows}


class FileSource(Source):
    """Reads CSV, JSON Lines or Parquet files (see the module docstring)."""

    type: ClassVar[str] = "file"
    resumable: ClassVar[bool] = True
    finite: ClassVar[bool] = True

    def __init__(self, name: str, spec: DataChannelSpec, context: ChannelContext) -> None:
        super().__init__(name, spec, context)
        self.options = _options(spec)
        self.dialect = self.options.csv or CsvDialect()
        self.files: list[_FileInfo] = []
        self._iterator: Iterator[SourceBatch] | None = None
        self._max_records = 0
        self._size: SourceSize | None = None
        self._bytes_before = 0
        """Bytes of the input files before the one being read (for a size in bytes)."""
        self._raw: Any = None
        """The raw file being read (its position is how far into it the reader got), None between files."""

    def _find(self) -> list[_FileInfo]:
        pattern = resolve_path(self.options.path, self.context.workdir)
        text = str(pattern)
        if any(c in _GLOB_CHARS for c in text):
            paths = sorted(p for p in globlib.glob(text, recursive=True) if os.path.isfile(p))
            if not paths:
                raise InputMissing(f"{self.describe()}: no file matches {text}")
        else:
            if not pattern.is_file():
                raise InputMissing(f"{self.describe()}: {text} does not exist or is not a file")
            paths = [text]
        infos = []
        for path in paths:
            stat = os.stat(path)
            infos.append(_FileInfo(path, stat.st_size, stat.st_mtime_ns))
        return infos

    async def open(self, start: int = 0, state: Mapping[str, Any] | None = None) -> None:
        self.files = await asyncio.to_thread(self._find)
        if state and state.get("files"):
            saved = [(f["path"], f["size"], f["mtime"]) for f in state["files"]]
            found = [(f.path, f.size, f.mtime) for f in self.files]
            if saved != found:
                raise ChannelError(
                    f"{self.describe()}: the input files changed since the checkpoint was taken (then {len(saved)} "
                    f"file(s), now {len(found)}, or different sizes or times): a resumed flow would mix two inputs. "
                    "Delete the flow's checkpoint to start again from the beginning."
                )
            for info, saved_info in zip(self.files, state["files"], strict=True):
                info.rows = saved_info.get("rows")
        self._start = start
        self._size = await asyncio.to_thread(self._measure)

    def _measure(self) -> SourceSize | None:
        """Records from Parquet footers, or counted lines of small plain text files; else the files' bytes."""
        if self.options.format == "parquet":
            try:
                return SourceSize(sum(pq.ParquetFile(f.path).metadata.num_rows for f in self.files))
            except (pa.ArrowException, OSError):
                return None  # reading it will say what is wrong
        total_bytes = sum(f.size for f in self.files)
        plain = not any(_gzipped(self.options, Path(f.path)) for f in self.files)
        if not plain or total_bytes > COUNT_LINES_BYTES:
            return SourceSize(total_bytes, "bytes", done=0)
        header = 1 if self.options.format == "csv" and self.dialect.header else 0
        rows = 0
        try:
            for info in self.files:
                lines, last = 0, b"\n"
                with open(info.path, "rb") as handle:
                    while block := handle.read(_CSV_BLOCK_BYTES):
                        lines += block.count(b"\n")
                        last = block[-1:]
                rows += max(0, lines + (0 if last == b"\n" else 1) - header)
        except OSError:
            return None
        return SourceSize(rows)

    async def size(self) -> SourceSize | None:
        """Counted records (an estimate for CSV with quoted line breaks or blank lines), or bytes read so far."""
        size = self._size
        if size is None or size.unit != "bytes":
            return size
        raw = self._raw
        try:
            within = int(raw.tell()) if raw is not None else 0
        except (OSError, ValueError):  # closed meanwhile: the next file, or the end
            within = 0
        return SourceSize(size.total, "bytes", done=min(size.total, self._bytes_before + within))

    def state(self) -> dict[str, Any]:
        return {"files": [f.to_json() for f in self.files]}

    async def read(self, max_records: int) -> SourceBatch | None:
        if self._stopping:
            return None
        if self._iterator is None:
            self._max_records = max_records
            self._iterator = self._batches(self._start, max_records)
        return await asyncio.to_thread(next, self._iterator, None)

    def describe(self) -> str:
        return f"file source '{self.name}' ({self.options.path})"

    # -- the synchronous core (runs in a worker thread, one call at a time) ----------------------------

    def _batches(self, start: int, max_records: int) -> Iterator[SourceBatch]:
        skip = start
        base = 0
        self._bytes_before = 0
        for info in self.files:
            if info.rows is not None and info.rows <= skip:
                skip -= info.rows
                base += info.rows
                self._bytes_before += info.size
                continue
            counted = 0
            reader = self._file_batches(info, base, skip, max_records)
            while True:
                try:
                    batch = next(reader)
                except StopIteration as stop:
                    counted = int(stop.value)
                    break
                yield batch
            info.rows = counted
            skip = max(0, skip - counted)
            base += counted
            self._raw = None
            self._bytes_before += info.size

    def _file_batches(
        self, info: _FileInfo, base: int, skip: int, max_records: int
    ) -> Generator[SourceBatch, None, int]:
        """Batches of one file from its record `skip`; returns (StopIteration.value) the file's record count."""
        fmt = self.options.format
        if fmt == "csv":
            return (yield from self._csv(info, base, skip, max_records))
        if fmt == "jsonl":
            return (yield from self._jsonl(info, base, skip, max_records))
        return (yield from self._parquet(info, base, skip, max_records))

    def _locate(self, info: _FileInfo, first_in_file: int, lines: Callable[[int], int | None] | None = None) -> Any:
        """Words for the record at `row` of a batch whose first record is the file's `first_in_file`."""
        name = info.path

        def locate(row: int) -> str:
            return _record_words(first_in_file + row, name, lines)

        return locate

    def _header_lacks(self, info: _FileInfo, names: list[str]) -> str:
        """Our words for a CSV header without a field of the schema (pyarrow only says "include_columns")."""
        try:
            with _open_text(info.path, _gzipped(self.options, Path(info.path))) as handle:
                header = next(_csv_reader(handle, self.dialect), [])
        except (OSError, EOFError, UnicodeDecodeError, csv.Error):
            header = []
        missing = [name for name in names if name not in header]
        listed = ", ".join(repr(name) for name in missing) if missing else "a field of the schema"
        return (
            f"{self.describe()}: the header (line 1) of {info.path} has no column {listed} of the channel's schema "
            f"(its columns: {', '.join(header) or 'none'}); rename the column, or set csv.header: false if the file "
            "has no header line"
        )

    def _cannot_read(self, info: _FileInfo, exc: Exception) -> ChannelError:
        """The error for an input file that cannot be opened: `InputMissing` when it is gone (deleted since
        the flow found it), so the job fails as `InvalidInput` rather than as a scoring failure."""
        if isinstance(exc, FileNotFoundError):
            return InputMissing(f"{self.describe()}: {info.path} does not exist (any more)")
        return ChannelError(f"{self.describe()}: cannot read {info.path}: {exc}")

    @staticmethod
    def _where(info: _FileInfo, base: int, lines: Callable[[int], int | None] | None = None) -> Callable[[int], str]:
        """Words for the record at a source ordinal, the file's records starting at ordinal `base`;
        `lines(index)` is the file line the record at an index of the file (from 0) starts on, when known."""
        name = info.path

        def where(ordinal: int) -> str:
            return _record_words(ordinal - base, name, lines)

        return where

    def _stream(self, info: _FileInfo) -> Any:
        path = Path(info.path)
        self._raw = pa.OSFile(info.path, "rb")
        if _gzipped(self.options, path):
            return pa.CompressedInputStream(self._raw, "gzip")
        return self._raw

    def _csv(self, info: _FileInfo, base: int, skip: int, max_records: int) -> Generator[SourceBatch, None, int]:
        """CSV records from record `skip` on. A line with the wrong number of columns is a record too (an error),
        placed by its line number, so ordinals stay those of the file's records whatever fails."""
        names = [f.name for f in self.schema.fields]
        header_lines = 1 if self.dialect.header else 0
        invalid: list[tuple[int | None, str]] = []

        def on_invalid(row: Any) -> str:
            invalid.append((row.number, row.text))
            return "skip"

        read_options = pacsv.ReadOptions(
            block_size=_CSV_BLOCK_BYTES,
            # One thread: it keeps memory flat, is as fast for this text-only parse, and gives line numbers.
            use_threads=False,
            column_names=None if self.dialect.header else names,
        )
        parse_options = pacsv.ParseOptions(
            delimiter=self.dialect.delimiter,
            quote_char=self.dialect.quote_char,
            newlines_in_values=True,
            invalid_row_handler=on_invalid,
        )
        convert_options = pacsv.ConvertOptions(
            column_types=dict.fromkeys(names, pa.string()),
            include_columns=names,
            null_values=self.dialect.null_values,
            strings_can_be_null=True,
            quoted_strings_can_be_null=False,
        )
        try:
            reader = pacsv.open_csv(
                self._stream(info),
                read_options=read_options,
                parse_options=parse_options,
                convert_options=convert_options,
            )
        except pa.ArrowKeyError as exc:  # a column of include_columns is not in the header
            raise ChannelError(self._header_lacks(info, names)) from exc
        except (pa.ArrowInvalid, OSError) as exc:
            raise self._cannot_read(info, exc) from exc
        lines_of = _CsvLines(info.path, _gzipped(self.options, Path(info.path)), self.dialect)
        where = self._where(info, base, lines_of)
        next_index = 0  # record index in the file of the next record the reader gives
        cursor = skip  # record index where the next batch starts
        pending: list[pa.RecordBatch] = []
        pending_index: list[np.ndarray] = []
        pending_rows = 0
        bad: list[tuple[int, str]] = []  # (record index, line text) of lines with the wrong number of columns

        def flush(rows: int, end: int | None) -> SourceBatch:
            """A batch of the first `rows` pending good records; it ends at record `end` (None: after them)."""
            nonlocal pending, pending_index, pending_rows, cursor, bad
            table = pa.Table.from_batches(pending).combine_chunks() if pending else None
            indices = np.concatenate(pending_index) if pending_index else np.zeros(0, np.int64)
            stop = end if end is not None else int(indices[rows - 1]) + 1
            ordinals = base + indices[:rows]
            if table is not None and rows:
                try:
                    good, kept, errors = from_text(
                        table.slice(0, rows), self.schema, ordinals, lambda row: where(int(ordinals[row]))
                    )
                except SchemaError as exc:
                    raise ChannelError(f"{self.describe()}: {info.path}: {exc}") from exc
            else:
                good, kept, errors = _empty_batch(self.arrow_schema), np.zeros(0, np.int64), []
            lines = [
                RecordError(
                    base + index,
                    where(base + index),
                    f"expected {len(names)} columns: {_clip(text)}",
                    record={"line": text},
                )
                for index, text in bad
                if index < stop
            ]
            bad = [(index, text) for index, text in bad if index >= stop]
            if table is not None and rows < table.num_rows:
                rest = table.slice(rows)
                pending, pending_index, pending_rows = rest.to_batches(), [indices[rows:]], rest.num_rows
            else:
                pending, pending_index, pending_rows = [], [], 0
            batch = SourceBatch(
                good, kept, base + cursor, base + stop, sorted(lines + errors, key=lambda e: e.ordinal), where=where
            )
            cursor = stop
            return batch

        try:
            while True:
                try:
                    block = reader.read_next_batch()
                except StopIteration:
                    break
                except (pa.ArrowInvalid, OSError, EOFError) as exc:
                    raise ChannelError(f"{self.describe()}: cannot read {info.path}: {exc}") from exc
                if self._stopping:
                    return next_index
                count = block.num_rows + len(invalid)
                # Place the bad lines by their line numbers; the good rows fill the other record indices in order.
                placed = sorted(
                    min(max((number or 0) - 1 - header_lines, next_index), next_index + count - 1)
                    if number is not None
                    else next_index + count - 1
                    for number, _ in invalid
                )
                taken = np.zeros(count, dtype=bool)
                for index in placed:
                    position = index - next_index
                    while taken[position]:
                        position += 1 if position + 1 < count else -count + 1
                    taken[position] = True
                indices = np.flatnonzero(~taken) + next_index
                for (_, text), index in zip(
                    sorted(invalid, key=lambda item: item[0] or 0), np.flatnonzero(taken) + next_index, strict=True
                ):
                    if index >= skip:
                        bad.append((int(index), text))
                invalid.clear()
                next_index += count
                keep = indices >= skip
                if not keep.all():
                    block = block.filter(pa.array(keep))
                    indices = indices[keep]
                if block.num_rows:
                    pending.append(block)
                    pending_index.append(indices.astype(np.int64))
                    pending_rows += block.num_rows
                while pending_rows >= max_records:
                    yield flush(max_records, None)
            if pending_rows or bad or cursor < next_index:
                yield flush(pending_rows, max(next_index, cursor))
            return next_index
        finally:
            lines_of.close()  # its file; `where` still works later, opening it per call

    def _jsonl(self, info: _FileInfo, base: int, skip: int, max_records: int) -> Generator[SourceBatch, None, int]:
        names = [f.name for f in self.schema.fields]
        record = skip
        seen = 0
        try:
            handle: Any = (
                gzip.open(info.path, "rb") if _gzipped(self.options, Path(info.path)) else open(info.path, "rb")  # noqa: SIM115
            )
        except OSError as exc:
            raise self._cannot_read(info, exc) from exc
        self._raw = getattr(handle, "fileobj", None) or handle  # gzip: the compressed file's position
        with handle:
            lines: list[bytes] = []
            numbers: dict[int, int] = {}  # record index in the file -> its line, for the batch being read

            def flush() -> SourceBatch:
                nonlocal record, numbers
                rows = len(lines)
                batch_lines = numbers.get  # blank lines are skipped, so a record's line is not its index + 1
                numbers = {}
                columns: dict[str, list[Any]] = {name: [None] * rows for name in names}
                raw: list[dict[str, Any]] = []
                broken: dict[int, str] = {}
                for i, line in enumerate(lines):
                    try:
                        obj = orjson.loads(line)
                    except orjson.JSONDecodeError as exc:
                        broken[i] = f"not JSON: {exc}"
                        raw.append({"line": line.decode(errors="replace")})
                        continue
                    if not isinstance(obj, dict):
                        broken[i] = f"expected a JSON object, got {type(obj).__name__}"
                        raw.append({"line": line.decode(errors="replace")})
                        continue
                    raw.append(obj)
                    for name in names:
                        columns[name][i] = obj.get(name)
                ordinals = np.arange(base + record, base + record + rows, dtype=np.int64)
                locate = self._locate(info, record, batch_lines)
                if broken:
                    keep = np.array([i not in broken for i in range(rows)])
                    sub = {name: [v for v, k in zip(vals, keep, strict=True) if k] for name, vals in columns.items()}
                    kept_raw = [r for r, k in zip(raw, keep, strict=True) if k]
                    index = np.flatnonzero(keep)
                    good, kept, errors = from_values(
                        sub,
                        int(keep.sum()),
                        self.schema,
                        ordinals[keep],
                        lambda row: locate(int(index[row])),
                        lambda row: kept_raw[row],
                    )
                    errors += [
                        RecordError(int(ordinals[i]), locate(i), message, record=raw[i])
                        for i, message in broken.items()
                    ]
                    errors.sort(key=lambda e: e.ordinal)
                else:
                    good, kept, errors = from_values(columns, rows, self.schema, ordinals, locate, lambda row: raw[row])
                batch = SourceBatch(
                    good, kept, base + record, base + record + rows, errors, where=self._where(info, base, batch_lines)
                )
                record += rows
                lines.clear()
                return batch

            try:
                for number, line in enumerate(handle, 1):
                    if not line.strip():
                        continue
                    seen += 1
                    if seen <= skip:
                        continue
                    lines.append(line)
                    numbers[seen - 1] = number
                    if len(lines) >= max_records:
                        yield flush()
                        if self._stopping:
                            return seen
            except (OSError, EOFError) as exc:
                raise ChannelError(f"{self.describe()}: cannot read {info.path}: {exc}") from exc
            if lines:
                yield flush()
        return seen

    def _parquet(self, info: _FileInfo, base: int, skip: int, max_records: int) -> Generator[SourceBatch, None, int]:
        names = [f.name for f in self.schema.fields]
        try:
            if _gzipped(self.options, Path(info.path)):
                with gzip.open(info.path, "rb") as handle:
                    parquet = pq.ParquetFile(io.BytesIO(handle.read()))
            else:
                parquet = pq.ParquetFile(info.path)
        except (pa.ArrowInvalid, OSError) as exc:
            raise self._cannot_read(info, exc) from exc
        missing = [n for n in names if n not in parquet.schema_arrow.names]
        if missing:
            raise ChannelError(
                f"{self.describe()}: {info.path} has no column {', '.join(repr(m) for m in missing)} "
                f"(columns: {', '.join(parquet.schema_arrow.names)})"
            )
        total = int(parquet.metadata.num_rows)
        groups: list[int] = []
        offset = 0
        first_group_start = 0
        for index in range(parquet.num_row_groups):
            rows = parquet.metadata.row_group(index).num_rows
            if offset + rows > skip:
                if not groups:
                    first_group_start = offset
                groups.append(index)
            offset += rows
        record = skip
        if not groups:
            return total
        drop = skip - first_group_start
        pending: list[pa.RecordBatch] = []
        pending_rows = 0

        def flush(rows: int) -> SourceBatch:
            nonlocal pending, pending_rows, record
            table = pa.Table.from_batches(pending).combine_chunks()
            chunk = table.slice(0, rows)
            rest = table.slice(rows)
            pending = rest.to_batches() if rest.num_rows else []
            pending_rows = rest.num_rows
            ordinals = np.arange(base + record, base + record + rows, dtype=np.int64)
            chunk_batch = chunk.to_batches()[0] if chunk.num_rows else pa.RecordBatch.from_pylist([], chunk.schema)
            good, kept, errors = conform(chunk_batch, self.schema, ordinals, self._locate(info, record))
            batch = SourceBatch(good, kept, base + record, base + record + rows, errors, where=self._where(info, base))
            record += rows
            return batch

        for block in parquet.iter_batches(batch_size=max(max_records, 1024), row_groups=groups, columns=names):
            if self._stopping:
                return total
            if drop:
                cut = min(drop, block.num_rows)
                block = block.slice(cut)
                drop -= cut
                if not block.num_rows:
                    continue
            pending.append(block)
            pending_rows += block.num_rows
            while pending_rows >= max_records:
                yield flush(max_records)
        if pending_rows:
            yield flush(pending_rows)
        return total


def _empty_batch(schema: pa.Schema) -> pa.RecordBatch:
    return pa.RecordBatch.from_arrays([pa.array([], type=f.type) for f in schema], schema=schema)


def _clip(text: str, limit: int = 120) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


# ---------------------------------------------------------------------------------------------- sink


def text_ready(batch: pa.RecordBatch, schema: RecordSchema) -> pa.RecordBatch:
    """Columns CSV cannot hold as they are, as text: arrays as JSON, `bytes` as base64."""
    columns = []
    changed = False
    for spec, column in zip(schema.fields, batch.columns, strict=True):
        if spec.type == "array":
            column = pa.array(
                [None if v is None else orjson.dumps(v).decode() for v in column.to_pylist()], type=pa.string()
            )
            changed = True
        elif spec.format == "bytes":
            column = pa.array(
                [None if v is None else base64.b64encode(v).decode() for v in column.to_pylist()], type=pa.string()
            )
            changed = True
        columns.append(column)
    if not changed:
        return batch
    return pa.RecordBatch.from_arrays(columns, names=batch.schema.names)


def encode_csv(batch: pa.RecordBatch, schema: RecordSchema, dialect: CsvDialect, header: bool) -> bytes:
    sink = pa.BufferOutputStream()
    options = pacsv.WriteOptions(include_header=header, delimiter=dialect.delimiter)
    pacsv.write_csv(text_ready(batch, schema), sink, write_options=options)
    return bytes(sink.getvalue())


def encode_jsonl(batch: pa.RecordBatch, schema: RecordSchema) -> bytes:
    rows = to_json_values(batch, schema)
    return b"".join(orjson.dumps(row, option=orjson.OPT_APPEND_NEWLINE) for row in rows)


class FileSink(Sink):
    """Writes one CSV, JSON Lines or Parquet file (see the module docstring)."""

    type: ClassVar[str] = "file"

    def __init__(self, name: str, spec: DataChannelSpec, context: ChannelContext) -> None:
        super().__init__(name, spec, context)
        self.options = _options(spec)
        self.dialect = self.options.csv or CsvDialect()
        self.path = resolve_path(self.options.path, context.workdir)
        self.gzip = _gzipped(self.options, self.path)
        self.partial = self.path.with_name(self.path.name + ".partial")
        self.parts = self.path.with_name(self.path.name + ".parts")
        self._pending: list[bytes] = []
        self._tables: list[pa.RecordBatch] = []
        self._bytes = 0
        self._parts = 0
        self._header_needed = self.dialect.header
        self._finished = False

    def describe(self) -> str:
        return f"file sink '{self.name}' ({self.path})"

    async def open(self, key: str, state: Mapping[str, Any] | None) -> int:
        return await asyncio.to_thread(self._open, state)

    def _open(self, state: Mapping[str, Any] | None) -> int:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ChannelError(f"{self.describe()}: cannot create {self.path.parent}: {exc}") from exc
        if state and (state.get("finished") or self._moved_into_place(state)):
            # The output was finished (moved into place) before the process died: nothing is left to write.
            self._finished = True
            return int(state.get("watermark", 0))
        if self.options.format == "parquet":
            self._parts = int(state.get("parts", 0)) if state else 0
            if self.parts.exists():
                for part in self.parts.iterdir():
                    if not _part_number(part.name) or _part_number(part.name) > self._parts:
                        part.unlink()
            elif self._parts:
                raise ChannelError(
                    f"{self.describe()}: {self.parts} is gone, but the checkpoint says it had parts: start the flow "
                    "again with --fresh (or delete its checkpoint)"
                )
            self.parts.mkdir(exist_ok=True)
            return int(state.get("watermark", 0)) if state else 0
        self._bytes = int(state.get("bytes", 0)) if state else 0
        try:
            if self._bytes:
                size = self.partial.stat().st_size if self.partial.exists() else -1
                if size < self._bytes:
                    raise ChannelError(
                        f"{self.describe()}: {self.partial} has {max(size, 0)} bytes, but the checkpoint says "
                        f"{self._bytes} were written: the output was changed or removed; start the flow again "
                        "with --fresh (or delete its checkpoint)"
                    )
                with open(self.partial, "r+b") as handle:
                    handle.truncate(self._bytes)
                    os.fsync(handle.fileno())
                self._header_needed = False
            else:
                with open(self.partial, "wb") as handle:
                    os.fsync(handle.fileno())
        except OSError as exc:
            raise ChannelError(f"{self.describe()}: cannot write {self.partial}: {exc}") from exc
        return int(state.get("watermark", 0)) if state else 0

    def output_gone(self, state: Mapping[str, Any] | None) -> str | None:
        if not state or not any(state.get(key) for key in ("finished", "bytes", "parts", "watermark")):
            return None  # nothing written yet
        if self.path.exists():
            return None
        in_progress = self.parts if self.options.format == "parquet" else self.partial
        if in_progress.exists() and not state.get("finished"):
            return None
        return f"{self.path} does not exist"

    def _moved_into_place(self, state: Mapping[str, Any]) -> bool:
        """Whether `finish` already ran for this state: no partial output left, the final one complete."""
        if not self.path.exists():
            return False
        if self.options.format == "parquet":
            return not self.parts.exists()
        return not self.partial.exists() and self.path.stat().st_size == int(state.get("bytes", -1))

    async def write(self, records: pa.RecordBatch, ordinals: np.ndarray, token: Any = None) -> None:
        if self._finished:
            return
        if records.num_rows == 0 and not self._header_needed:
            return
        if self.options.format == "parquet":
            self._tables.append(records)
            return
        data = await asyncio.to_thread(self._encode, records)
        self._pending.append(data)

    def _encode(self, records: pa.RecordBatch) -> bytes:
        if self.options.format == "csv":
            data = encode_csv(records, self.schema, self.dialect, self._header_needed)
            self._header_needed = False
            return data
        return encode_jsonl(records, self.schema)

    async def commit(self, watermark: int) -> dict[str, Any]:
        if self._finished:
            return {"finished": True, "watermark": watermark}
        return await asyncio.to_thread(self._commit, watermark)

    def _commit(self, watermark: int) -> dict[str, Any]:
        try:
            if self.options.format == "parquet":
                if self._tables:
                    self._parts += 1
                    part = self.parts / f"part-{self._parts:08d}.parquet"
                    table = pa.Table.from_batches(self._tables, schema=self.arrow_schema)
                    temporary = part.with_suffix(".tmp")
                    pq.write_table(table, temporary)
                    _fsync_file(temporary)
                    temporary.replace(part)
                    _fsync_dir(self.parts)
                    self._tables = []
                return {"parts": self._parts, "watermark": watermark}
            if self._pending:
                data = b"".join(self._pending)
                self._pending = []
                if self.gzip:
                    data = gzip.compress(data, compresslevel=6, mtime=0)
                with open(self.partial, "ab") as handle:
                    handle.write(data)
                    handle.flush()
                    os.fsync(handle.fileno())
                self._bytes += len(data)
            return {"bytes": self._bytes, "watermark": watermark}
        except OSError as exc:
            raise ChannelError(f"{self.describe()}: cannot write {self.partial}: {exc}") from exc

    async def finish(self) -> None:
        if not self._finished:
            await asyncio.to_thread(self._finish)
            self._finished = True

    def _finish(self) -> None:
        try:
            if self.options.format == "parquet":
                temporary = self.path.with_name(self.path.name + ".partial")
                parts = sorted(p for p in self.parts.iterdir() if _part_number(p.name))
                with pq.ParquetWriter(temporary, self.arrow_schema) as writer:
                    for part in parts:
                        writer.write_table(pq.read_table(part, schema=self.arrow_schema))
                if self.gzip:
                    _gzip_in_place(temporary)
                _fsync_file(temporary)
                temporary.replace(self.path)
                shutil.rmtree(self.parts, ignore_errors=True)
            else:
                if self._header_needed and self.options.format == "csv":
                    # No record at all: still write the header line, so the output says what it would hold.
                    header = encode_csv(_empty(self), self.schema, self.dialect, True)
                    data = gzip.compress(header, mtime=0) if self.gzip else header
                    with open(self.partial, "ab") as handle:
                        handle.write(data)
                    self._header_needed = False
                _fsync_file(self.partial)
                self.partial.replace(self.path)
            _fsync_dir(self.path.parent)
        except OSError as exc:
            raise ChannelError(f"{self.describe()}: cannot move the output into place: {exc}") from exc


def _record_words(index: int, name: str, lines: Callable[[int], int | None] | None) -> str:
    """`record 17 (line 18) of /data/in.csv`: the record's number in its file (from 1) and the line it starts on."""
    line = lines(index) if lines is not None else None
    return f"record {index + 1}" + (f" (line {line})" if line is not None else "") + f" of {name}"


def _open_text(path: str, gzipped: bool) -> Any:
    if gzipped:
        return gzip.open(path, "rt", encoding="utf-8", errors="replace", newline="")
    return open(path, encoding="utf-8", errors="replace", newline="")


def _csv_reader(lines: Iterator[str], dialect: CsvDialect) -> Iterator[list[str]]:
    return csv.reader(lines, delimiter=dialect.delimiter, quotechar=dialect.quote_char, strict=False)


class _CsvLines:
    """The line of a CSV file each record starts on, for error messages. pyarrow's reader does not say (a value
    may span lines, blank lines are skipped), so it is found when a record fails: a plain `csv` read of the file
    up to that record, going on from the last one found (records fail in order, mostly), or from the nearest
    record found before it (remembered by its byte offset). Callable: `lines(index)` is the line of the record
    at `index` (from 0, the header not counted), None if the file cannot be read.

    The file stays open between calls (a gzip file cannot seek cheaply) until `close()`; a call after it opens
    and closes the file itself."""

    def __init__(self, path: str, gzipped: bool, dialect: CsvDialect) -> None:
        self.path = path
        self.gzipped = gzipped
        self.dialect = dialect
        # (record index, byte offset, line) of records whose start is known; the header is record -1
        self._marks: list[tuple[int, int, int]] = [(-1 if dialect.header else 0, 0, 1)]
        self._handle: Any = None
        self._rows: Iterator[list[str]] | None = None
        self._next = 0  # the record index the open reader gives next
        self._position = [0, 0]  # bytes and lines the open reader has consumed
        self._open = True
        self._lock = threading.Lock()  # the reading thread and the flow's loop (step errors) both ask

    def close(self) -> None:
        with self._lock:
            self._open = False
            self._drop()

    def _drop(self) -> None:
        if self._handle is not None:
            self._handle.close()
        self._handle, self._rows = None, None

    def _start(self, index: int) -> None:
        """Open the file at the nearest known record at or before `index`."""
        self._drop()
        current, offset, line = self._marks[bisect.bisect_right(self._marks, (index, sys.maxsize, sys.maxsize)) - 1]
        handle = gzip.open(self.path, "rb") if self.gzipped else open(self.path, "rb")  # noqa: SIM115 - see _drop
        self._handle = handle
        handle.seek(offset)
        self._position = [offset, line - 1]
        position = self._position

        def text() -> Iterator[str]:
            for raw in handle:
                position[0] += len(raw)
                position[1] += 1
                yield raw.decode("utf-8", errors="replace")

        self._rows = _csv_reader(text(), self.dialect)
        self._next = current

    def __call__(self, index: int) -> int | None:
        with self._lock:
            return self._line_of(index)

    def _line_of(self, index: int) -> int | None:
        try:
            if self._rows is None or index < self._next:
                self._start(index)
            assert self._rows is not None
            while True:
                start = (self._position[0], self._position[1] + 1)
                row = next(self._rows, None)
                if row is None:
                    return None
                if not row:  # a blank line: pyarrow skips it too, it is no record
                    continue
                found = self._next
                self._next += 1
                if found == index:
                    bisect.insort(self._marks, (index, *start))
                    return start[1]
        except (OSError, EOFError, csv.Error):
            self._drop()
            return None
        finally:
            if not self._open:
                self._drop()


def _empty(sink: FileSink) -> pa.RecordBatch:
    return pa.RecordBatch.from_arrays([pa.array([], type=f.type) for f in sink.arrow_schema], schema=sink.arrow_schema)


def _part_number(name: str) -> int:
    if not (name.startswith("part-") and name.endswith(".parquet")):
        return 0
    with contextlib.suppress(ValueError):
        return int(name[5:-8])
    return 0


def _gzip_in_place(path: Path) -> None:
    zipped = path.with_name(path.name + ".gz-tmp")
    with open(path, "rb") as source, gzip.open(zipped, "wb") as target:
        shutil.copyfileobj(source, target, 1 << 20)
    zipped.replace(path)


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
