"""File channels against real files: CSV, JSON Lines and Parquet, globs and gzip, record errors, resuming."""

from __future__ import annotations

import datetime as dt
import gzip
import os
from pathlib import Path

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from channel_kit import context, fields, read_all, sink, source, write_all

from data_channel import ChannelError, InputMissing

SCHEMA = fields("id:integer/int64", "x:integer/int32", "y:number", "name:string?")


def write_csv(path: Path, rows: list[str], header: str = "id,x,y,name") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "\n".join([header, *rows]) + "\n"
    if path.name.endswith(".gz"):
        path.write_bytes(gzip.compress(text.encode()))
    else:
        path.write_text(text)
    return path


def rows(start: int, stop: int) -> list[str]:
    return [f"{i},{i * 2},{i / 4},n{i}" for i in range(start, stop)]


async def test_a_csv_file_is_read_in_batches_of_the_asked_size_with_the_schema_types(tmp_path: Path) -> None:
    write_csv(tmp_path / "in.csv", rows(0, 10))
    table, ordinals, errors, ranges = await read_all(
        source({"path": str(tmp_path / "in.csv"), "format": "csv"}, SCHEMA, "file", context()), size=4
    )
    assert ranges == [(0, 4), (4, 8), (8, 10)]
    assert errors == []
    assert ordinals == list(range(10))
    assert table.schema.types == [pa.int64(), pa.int32(), pa.float64(), pa.string()]
    assert table.column("x").to_pylist() == [i * 2 for i in range(10)]
    assert table.column("y").to_pylist() == [i / 4 for i in range(10)]


async def test_records_that_do_not_fit_are_errors_naming_the_record_and_the_field(tmp_path: Path) -> None:
    path = write_csv(
        tmp_path / "in.csv",
        ["0,1,0.5,a", "1,one,0.5,b", "2,3,,c", "3,4", "4,5,2.5,", "5,99999999999,1,x", "6,3.0,1,y", "7,7,7,z"],
    )
    table, ordinals, errors, _ = await read_all(source({"path": str(path), "format": "csv"}, SCHEMA, "file", context()))
    assert table.column("id").to_pylist() == [0, 4, 7]
    assert table.column("name").to_pylist() == ["a", None, "z"]  # an empty text is null in a nullable field
    assert ordinals == [0, 4, 7]  # a line with the wrong number of columns is a record too
    messages = {(e.field, e.where): e.message for e in errors}
    where = f"of {path}"
    assert ("x", f"record 2 (line 3) {where}") in messages  # the header is line 1
    assert "cannot read 'one' as integer (int32)" in messages[("x", f"record 2 (line 3) {where}")]
    assert "not nullable" in messages[("y", f"record 3 (line 4) {where}")]
    assert "out of range for int32" in messages[("x", f"record 6 (line 7) {where}")]
    assert "'3.0'" in messages[("x", f"record 7 (line 8) {where}")]
    short = [e for e in errors if e.field is None]
    assert len(short) == 1 and "expected 4 columns" in short[0].message and short[0].record == {"line": "3,4"}
    assert (short[0].ordinal, short[0].where) == (3, f"record 4 (line 5) {where}")
    assert [e.ordinal for e in errors] == [1, 2, 3, 5, 6]
    bad = next(e for e in errors if e.field == "x" and "one" in e.message)
    assert bad.record == {"id": "1", "x": "one", "y": "0.5", "name": "b"}
    assert len(errors) == 5


async def test_a_glob_reads_files_in_sorted_order_plain_and_gzip_and_batches_never_span_two(tmp_path: Path) -> None:
    write_csv(tmp_path / "parts" / "b.csv.gz", rows(3, 6))
    write_csv(tmp_path / "parts" / "a.csv", rows(0, 3))
    write_csv(tmp_path / "parts" / "sub" / "c.csv", rows(6, 8))
    table, ordinals, errors, ranges = await read_all(
        source({"path": "parts/**/*.csv*", "format": "csv"}, SCHEMA, "file", context(tmp_path)), size=4
    )
    assert errors == []
    assert table.column("id").to_pylist() == list(range(8))
    assert ordinals == list(range(8))
    assert ranges == [(0, 3), (3, 6), (6, 8)]


async def test_a_relative_path_resolves_against_the_working_directory_and_a_missing_file_is_an_error(
    tmp_path: Path,
) -> None:
    write_csv(tmp_path / "data" / "in.csv", rows(0, 2))
    table, *_ = await read_all(source({"path": "data/in.csv", "format": "csv"}, SCHEMA, "file", context(tmp_path)))
    assert table.num_rows == 2
    with pytest.raises(ChannelError, match="does not exist"):
        await read_all(source({"path": "data/nope.csv", "format": "csv"}, SCHEMA, "file", context(tmp_path)))
    with pytest.raises(ChannelError, match="no file matches"):
        await read_all(source({"path": "data/*.tsv", "format": "csv"}, SCHEMA, "file", context(tmp_path)))


@pytest.mark.parametrize("format_", ["csv", "jsonl", "parquet"])
async def test_an_input_missing_at_open_or_deleted_before_it_is_read_is_input_missing(
    tmp_path: Path, format_: str
) -> None:
    with pytest.raises(InputMissing, match="does not exist"):
        await read_all(source({"path": "gone.csv", "format": format_}, SCHEMA, "file", context(tmp_path)))
    path = tmp_path / f"in.{format_}"
    if format_ == "parquet":
        pq.write_table(pa.table({"id": [1], "x": [1.0], "y": [2.0], "name": ["a"]}), path)
    else:
        path.write_text("id,x,y,name\n1,1.0,2.0,a\n" if format_ == "csv" else '{"id": 1, "x": 1.0}\n')
    found = source({"path": str(path), "format": format_}, SCHEMA, "file", context(tmp_path))
    await found.open()
    path.unlink()  # found at open, gone when the first batch is read
    try:
        with pytest.raises(InputMissing, match=f"{path} does not exist"):
            await found.read(10)
    finally:
        await found.close()


async def test_a_csv_without_a_needed_column_fails_before_any_record_in_our_words(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "in.csv", ["1,2,3"], header="id,x,y")
    with pytest.raises(ChannelError) as caught:
        await read_all(source({"path": str(path), "format": "csv"}, SCHEMA, "file", context()))
    assert str(caught.value) == (
        f"file source 'in' ({path}): the header (line 1) of {path} has no column 'name' of the channel's schema "
        "(its columns: id, x, y); rename the column, or set csv.header: false if the file has no header line"
    )


async def test_a_csv_record_names_the_line_it_starts_on_past_values_on_several_lines_and_blank_lines(
    tmp_path: Path,
) -> None:
    path = tmp_path / "in.csv"
    path.write_text('id,x,y,name\n0,1,0.5,"two\nlines"\n\n1,one,0.5,b\n2,2,0.5,"a\r\nb"\n3,x,1,c\n')
    _, ordinals, errors, _ = await read_all(source({"path": str(path), "format": "csv"}, SCHEMA, "file", context()))
    assert ordinals == [0, 2]
    assert [e.where for e in errors] == [f"record 2 (line 5) of {path}", f"record 4 (line 8) of {path}"]
    gz = tmp_path / "in.csv.gz"
    gz.write_bytes(gzip.compress(path.read_bytes()))
    _, _, errors, _ = await read_all(source({"path": str(gz), "format": "csv"}, SCHEMA, "file", context()), size=1)
    assert [e.where for e in errors] == [f"record 2 (line 5) of {gz}", f"record 4 (line 8) of {gz}"]


async def test_a_csv_dialect_without_header_with_its_own_delimiter_and_null_texts(tmp_path: Path) -> None:
    path = tmp_path / "in.txt"
    path.write_text("1;2;0.5;NA\n2;3;1.5;bob\n")
    options = {"path": str(path), "format": "csv", "csv": {"delimiter": ";", "header": False, "nullValues": ["NA"]}}
    table, _, errors, _ = await read_all(source(options, SCHEMA, "file", context()))
    assert errors == []
    assert table.column("name").to_pylist() == [None, "bob"]


async def test_resuming_at_an_ordinal_reads_exactly_the_rest_and_skips_whole_files_it_knows(tmp_path: Path) -> None:
    write_csv(tmp_path / "a.csv", rows(0, 5))
    write_csv(tmp_path / "b.csv", rows(5, 9))
    options = {"path": str(tmp_path / "*.csv"), "format": "csv"}
    first = source(options, SCHEMA, "file", context())
    _, _, _, _ = await read_all(first, size=3)
    state = first.state()
    assert [f["rows"] for f in state["files"]] == [5, 4]
    for start in (0, 2, 5, 7, 9):
        table, ordinals, _, _ = await read_all(source(options, SCHEMA, "file", context()), 3, start, state)
        assert table.column("id").to_pylist() == list(range(start, 9))
        assert ordinals == list(range(start, 9))
    # Without the state the source still resumes exactly, by reading past what it skips.
    table, *_ = await read_all(source(options, SCHEMA, "file", context()), 3, 6)
    assert table.column("id").to_pylist() == [6, 7, 8]


async def test_a_resumed_source_refuses_input_files_that_changed(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "a.csv", rows(0, 5))
    first = source({"path": str(path), "format": "csv"}, SCHEMA, "file", context())
    await read_all(first)
    write_csv(path, rows(0, 6))
    with pytest.raises(ChannelError, match="changed since the checkpoint"):
        await read_all(source({"path": str(path), "format": "csv"}, SCHEMA, "file", context()), 10, 2, first.state())


async def test_json_lines_are_read_strictly_with_an_error_per_bad_line(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl.gz"
    lines = [
        {"id": 0, "x": 1, "y": 0.5, "name": "a"},
        "not json",
        {"id": 2, "x": 1.5, "y": 1, "name": "c"},
        [1, 2],
        {"id": 4, "x": True, "y": 1},
        {"id": 5, "x": 2.0, "y": 2, "extra": "ignored"},
        {"id": 6, "x": 3, "y": "7"},
    ]
    text = b"\n".join(item.encode() if isinstance(item, str) else orjson.dumps(item) for item in lines) + b"\n\n"
    path.write_bytes(gzip.compress(text))
    table, ordinals, errors, _ = await read_all(
        source({"path": str(path), "format": "jsonl"}, SCHEMA, "file", context())
    )
    assert table.column("id").to_pylist() == [0, 5]
    assert table.column("x").to_pylist() == [1, 2]
    assert ordinals == [0, 5]
    by_record = {e.ordinal: e for e in errors}
    assert sorted(by_record) == [1, 2, 3, 4, 6]
    assert "not JSON" in by_record[1].message
    assert by_record[2].field == "x" and "1.5" in by_record[2].message
    assert "JSON object" in by_record[3].message
    assert by_record[4].field == "x" and "boolean" in by_record[4].message
    assert by_record[6].field == "y" and "'7'" in by_record[6].message
    assert by_record[6].where == f"record 7 (line 7) of {path}"


async def test_a_csv_records_line_is_still_found_once_the_source_is_read_and_closed(tmp_path: Path) -> None:
    # A step may fail a record after its source moved on, or ended: the line is found all the same.
    path = tmp_path / "in.csv.gz"
    path.write_bytes(gzip.compress(b'id,x,y,name\n0,1,1,"a\nb"\n1,1,1,c\n\n2,1,1,d\n'))
    src = source({"path": str(path), "format": "csv"}, SCHEMA, "file", context())
    await src.open(0)
    batches = []
    while (batch := await src.read(2)) is not None:
        batches.append(batch)
    await src.close()
    assert [b.where(o) for b, o in ((batches[1], 2), (batches[0], 0), (batches[0], 1))] == [
        f"record 3 (line 6) of {path}",
        f"record 1 (line 2) of {path}",
        f"record 2 (line 4) of {path}",
    ]


async def test_a_json_lines_record_names_its_line_past_blank_lines(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    path.write_bytes(b'{"id": 0, "x": 1, "y": 1}\n\n\n{"id": 1, "x": "one", "y": 1}\n')
    _, _, errors, _ = await read_all(source({"path": str(path), "format": "jsonl"}, SCHEMA, "file", context()))
    assert [(e.ordinal, e.where) for e in errors] == [(1, f"record 2 (line 4) of {path}")]


async def test_parquet_columns_are_cast_to_the_schema_and_values_that_do_not_fit_are_errors(tmp_path: Path) -> None:
    path = tmp_path / "in.parquet"
    table = pa.table(
        {
            "id": pa.array(range(6), pa.int64()),
            "x": pa.array([1, 2, 2**40, 4, 5, 6], pa.int64()),
            "y": pa.array([0.5] * 6, pa.float32()),
            "name": ["a", None, "c", "d", "e", "f"],
            "other": [1] * 6,
        }
    )
    pq.write_table(table, path, row_group_size=2)
    got, ordinals, errors, ranges = await read_all(
        source({"path": str(path), "format": "parquet"}, SCHEMA, "file", context()), size=4
    )
    assert got.column("id").to_pylist() == [0, 1, 3, 4, 5]
    assert ordinals == [0, 1, 3, 4, 5]
    assert got.schema.field("x").type == pa.int32()
    assert [e.ordinal for e in errors] == [2] and errors[0].field == "x"
    assert ranges == [(0, 4), (4, 6)]
    resumed, *_ = await read_all(source({"path": str(path), "format": "parquet"}, SCHEMA, "file", context()), 4, 3)
    assert resumed.column("id").to_pylist() == [3, 4, 5]


RICH = fields(
    "id:integer/int64",
    "when:string/date-time",
    "day:string/date",
    "blob:string/bytes",
    "tags:array/number",
    "meta:object?",
    "ok:boolean",
)


def rich_table() -> pa.Table:
    return pa.table(
        {
            "id": pa.array([1, 2], pa.int64()),
            "when": pa.array(
                [dt.datetime(2024, 5, 1, 12, 30, tzinfo=dt.UTC), dt.datetime(2024, 5, 2, tzinfo=dt.UTC)],
                pa.timestamp("us", tz="UTC"),
            ),
            "day": pa.array([dt.date(2024, 5, 1), dt.date(2024, 5, 2)]),
            "blob": pa.array([b"\x00\x01", b"hi"], pa.binary()),
            "tags": pa.array([[1.0, 2.5], []], pa.list_(pa.float64())),
            "meta": pa.array(['{"a":1}', None], pa.string()),
            "ok": [True, False],
        }
    )


@pytest.mark.parametrize("name", ["out.csv", "out.csv.gz", "out.jsonl", "out.jsonl.gz", "out.parquet"])
async def test_a_sink_file_round_trips_every_field_type(tmp_path: Path, name: str) -> None:
    fmt = name.split(".")[1]
    options = {"path": str(tmp_path / "deep" / name), "format": fmt}
    await write_all(sink(options, RICH, "file", context()), rich_table())
    assert sorted(os.listdir(tmp_path / "deep")) == [name]
    got, _, errors, _ = await read_all(source(options, RICH, "file", context()))
    assert errors == []
    assert got.to_pylist() == rich_table().to_pylist()


async def test_a_sink_output_appears_only_when_finished_in_the_order_written(tmp_path: Path) -> None:
    path = tmp_path / "out.csv"
    out = sink({"path": str(path), "format": "csv"}, SCHEMA, "file", context())
    assert await out.open("k", None) == 0
    table = pa.table(
        {"id": pa.array([1, 2], pa.int64()), "x": pa.array([1, 2], pa.int32()), "y": [0.5, 1.5], "name": ["a", None]}
    )
    await out.write(table.to_batches()[0], np.array([0, 1]))
    state = await out.commit(2)
    assert state["watermark"] == 2 and state["bytes"] > 0
    assert not path.exists() and (tmp_path / "out.csv.partial").exists()
    await out.finish()
    await out.close()
    assert path.read_text() == '"id","x","y","name"\n1,1,0.5,"a"\n2,2,1.5,\n'


async def test_an_empty_output_still_has_its_header_line(tmp_path: Path) -> None:
    path = tmp_path / "out.csv"
    out = sink({"path": str(path), "format": "csv"}, SCHEMA, "file", context())
    await out.open("k", None)
    await out.commit(0)
    await out.finish()
    assert path.read_text() == '"id","x","y","name"\n'


@pytest.mark.parametrize("name", ["out.csv", "out.csv.gz", "out.jsonl", "out.parquet"])
async def test_a_sink_reopened_with_its_last_checkpoint_drops_what_came_after_it(tmp_path: Path, name: str) -> None:
    """A crash after a commit whose state was not checkpointed: the rows of that commit are written once."""
    fmt = name.split(".")[1]
    options = {"path": str(tmp_path / name), "format": fmt}
    data = pa.table(
        {
            "id": pa.array(range(6), pa.int64()),
            "x": pa.array(range(6), pa.int32()),
            "y": [0.0] * 6,
            "name": list("abcdef"),
        }
    )
    first = sink(options, SCHEMA, "file", context())
    await first.open("k", None)
    await first.write(data.slice(0, 2).to_batches()[0], np.arange(0, 2))
    checkpoint = await first.commit(2)
    await first.write(data.slice(2, 2).to_batches()[0], np.arange(2, 4))
    await first.commit(4)  # durable, but the process dies before the checkpoint records it
    await first.close()

    second = sink(options, SCHEMA, "file", context())
    assert await second.open("k", checkpoint) == 2
    await second.write(data.slice(2, 4).to_batches()[0], np.arange(2, 6))
    await second.commit(6)
    await second.finish()
    got, _, errors, _ = await read_all(source(options, SCHEMA, "file", context()))
    assert errors == []
    assert got.column("id").to_pylist() == list(range(6))


async def test_a_sink_refuses_a_checkpoint_its_partial_output_does_not_match(tmp_path: Path) -> None:
    options = {"path": str(tmp_path / "out.csv"), "format": "csv"}
    with pytest.raises(ChannelError, match="checkpoint says 100"):
        await sink(options, SCHEMA, "file", context()).open("k", {"bytes": 100, "watermark": 5})
