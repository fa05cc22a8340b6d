"""SQL channels against a real PostgreSQL: a server-side cursor source, a COPY sink with its watermark."""

from __future__ import annotations

import datetime as dt
import secrets
from collections.abc import Iterator

import numpy as np
import psycopg
import pyarrow as pa
import pytest
from channel_kit import context, fields, read_all, sink, source, write_all

from data_channel import ChannelError
from data_channel.sql import WATERMARK_TABLE

pytestmark = pytest.mark.postgres

SECRET = {"secretRef": {"name": "pg-test", "key": "url"}}
ENV = "MODELOPS_SECRET_PG_TEST_URL"
SCHEMA = fields("id:integer/int64", "x:integer/int32", "y:number", "name:string?")


@pytest.fixture
def table(pg_url: str) -> Iterator[str]:
    """A fresh table name (dropped afterwards)."""
    name = f"t_{secrets.token_hex(4)}"
    yield name
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(f'DROP TABLE IF EXISTS "{name}"')


def fill(pg_url: str, table: str, count: int) -> None:
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(f'CREATE TABLE "{table}" (id bigint PRIMARY KEY, x integer, y numeric, name text, extra text)')
        with conn.cursor().copy(f'COPY "{table}" (id, x, y, name) FROM STDIN') as copy:
            for i in range(count):
                copy.write_row((i, i * 2, i / 4, f"n{i}" if i % 3 else None))


async def test_a_query_is_read_in_batches_through_a_server_side_cursor(pg_url: str, table: str) -> None:
    fill(pg_url, table, 25)
    options = {"connection": SECRET, "query": f'SELECT * FROM "{table}" ORDER BY id', "fetchSize": 7}
    src = source(options, SCHEMA, "sql", context(**{ENV: pg_url}))
    got, ordinals, errors, ranges = await read_all(src, size=10)
    assert errors == []
    assert ranges == [(0, 7), (7, 14), (14, 21), (21, 25)]  # fetchSize bounds a batch too
    assert got.column("id").to_pylist() == list(range(25))
    assert got.column("y").to_pylist() == [i / 4 for i in range(25)]  # numeric -> double
    assert ordinals == list(range(25))


async def test_the_source_holds_a_named_cursor_not_the_whole_result(pg_url: str, table: str) -> None:
    fill(pg_url, table, 10)
    src = source({"connection": SECRET, "table": table}, SCHEMA, "sql", context(**{ENV: pg_url}))
    await src.open()
    try:
        with psycopg.connect(pg_url, autocommit=True) as conn:
            names = [r[0] for r in conn.execute("SELECT name FROM pg_cursors").fetchall()]
        # pg_cursors shows only the current session's cursors: look from the source's own connection
        own = await src._conn.execute("SELECT name FROM pg_cursors")  # type: ignore[union-attr]
        assert [r[0] for r in await own.fetchall()] == ["modelops_source"]
        assert names == []
        batch = await src.read(4)
        assert batch is not None and batch.records.num_rows == 4
    finally:
        await src.close()


async def test_resuming_moves_the_cursor_forward_on_the_server(pg_url: str, table: str) -> None:
    fill(pg_url, table, 12)
    options = {"connection": SECRET, "query": f'SELECT * FROM "{table}" ORDER BY id'}
    for start in (0, 5, 12, 20):
        got, ordinals, _, ranges = await read_all(source(options, SCHEMA, "sql", context(**{ENV: pg_url})), 5, start)
        assert got.column("id").to_pylist() == list(range(start, 12))
        assert ordinals == list(range(start, 12))
        if start < 12:
            assert ranges[0][0] == start


async def test_rows_that_do_not_fit_are_errors_and_missing_columns_fail_at_open(pg_url: str, table: str) -> None:
    fill(pg_url, table, 4)
    strict = fields("id:integer/int64", "x:integer/int32", "y:number", "name:string")
    options = {"connection": SECRET, "query": f'SELECT * FROM "{table}" ORDER BY id'}
    got, _, errors, _ = await read_all(source(options, strict, "sql", context(**{ENV: pg_url})))
    assert got.column("id").to_pylist() == [1, 2]
    assert [(e.ordinal, e.field, e.where) for e in errors] == [
        (0, "name", "row 1 of the query"),
        (3, "name", "row 4 of the query"),
    ]
    with pytest.raises(ChannelError, match="no column 'nope'"):
        await read_all(source(options, [*SCHEMA, *fields("nope:string")], "sql", context(**{ENV: pg_url})))
    with pytest.raises(ChannelError, match="syntax error"):
        await read_all(source({"connection": SECRET, "query": "SELEC 1"}, SCHEMA, "sql", context(**{ENV: pg_url})))


async def test_a_missing_secret_names_the_environment_variable_and_not_a_value(pg_url: str) -> None:
    env = {ENV: ""}
    with pytest.raises(ChannelError, match=f"environment variable {ENV}"):
        await read_all(source({"connection": SECRET, "table": "t"}, SCHEMA, "sql", context(**env)))


RICH = fields(
    "id:integer/int64",
    "small:integer/int32",
    "f:number/float",
    "d:number",
    "s:string?",
    "when:string/date-time",
    "day:string/date",
    "blob:string/bytes",
    "tags:array/number",
    "meta:object?",
    "ok:boolean",
)


def rich() -> pa.Table:
    return pa.table(
        {
            "id": pa.array([1, 2, 3], pa.int64()),
            "small": pa.array([1, -2, 3], pa.int32()),
            "f": pa.array([0.5, 1.25, -3.0], pa.float32()),
            "d": [0.1, 1e300, -2.5],
            "s": ["a,b", None, 'quote "x"'],
            "when": pa.array([dt.datetime(2024, 5, 1, 12, tzinfo=dt.UTC)] * 3, pa.timestamp("us", tz="UTC")),
            "day": [dt.date(2024, 5, 1)] * 3,
            "blob": pa.array([b"\x00\xff", b"", b"abc"], pa.binary()),
            "tags": pa.array([[1.0], [], [2.0, 3.0]], pa.list_(pa.float64())),
            "meta": ['{"k": [1, 2]}', None, "{}"],
            "ok": [True, False, True],
        }
    )


async def test_the_sink_creates_the_table_from_the_schema_and_copies_every_type(pg_url: str, table: str) -> None:
    options = {"connection": SECRET, "table": table, "createTable": True}
    await write_all(sink(options, RICH, "sql", context(**{ENV: pg_url})), rich())
    with psycopg.connect(pg_url) as conn:
        types = dict(
            conn.execute(
                "SELECT column_name, data_type || CASE WHEN is_nullable = 'NO' THEN ' not null' ELSE '' END "
                "FROM information_schema.columns WHERE table_name = %s",
                [table],
            ).fetchall()
        )
        assert types == {
            "id": "bigint not null",
            "small": "integer not null",
            "f": "real not null",
            "d": "double precision not null",
            "s": "text",
            "when": "timestamp with time zone not null",
            "day": "date not null",
            "blob": "bytea not null",
            "tags": "jsonb not null",
            "meta": "jsonb",
            "ok": "boolean not null",
        }
        row = conn.execute(f'SELECT s, blob, tags, meta FROM "{table}" WHERE id = 3').fetchone()
        assert row == ('quote "x"', b"abc", [2.0, 3.0], {})
    back, _, errors, _ = await read_all(
        source(
            {"connection": SECRET, "query": f'SELECT * FROM "{table}" ORDER BY id'},
            RICH,
            "sql",
            context(**{ENV: pg_url}),
        )
    )
    assert errors == []
    expected = rich().to_pylist()
    for item in expected:
        item["meta"] = None if item["meta"] is None else item["meta"].replace(" ", "")
    got = back.to_pylist()
    for item in got:
        item["meta"] = None if item["meta"] is None else item["meta"].replace(" ", "")
    assert got == expected


async def test_a_sink_without_its_table_says_how_to_create_it(pg_url: str, table: str) -> None:
    out = sink({"connection": SECRET, "table": table}, SCHEMA, "sql", context(**{ENV: pg_url}))
    with pytest.raises(ChannelError, match="createTable: true"):
        await out.open("k", None)
    await out.close()


async def test_each_commit_writes_rows_and_watermark_in_one_transaction(pg_url: str, table: str) -> None:
    options = {"connection": SECRET, "table": table, "createTable": True}
    data = pa.table(
        {
            "id": pa.array(range(4), pa.int64()),
            "x": pa.array(range(4), pa.int32()),
            "y": [1.0] * 4,
            "name": list("abcd"),
        }
    )
    key = f"job/flow/{table}"
    out = sink(options, SCHEMA, "sql", context(**{ENV: pg_url}))
    assert await out.open(key, None) == 0
    await out.write(data.slice(0, 2).to_batches()[0], np.arange(2))
    assert await out.commit(2) == {"watermark": 2}
    await out.write(data.slice(2, 2).to_batches()[0], np.arange(2, 4))
    await out.close()  # dies before the second commit: nothing of it is in the table

    again = sink(options, SCHEMA, "sql", context(**{ENV: pg_url}))
    assert await again.open(key, None) == 2  # the database, not a checkpoint file, knows the watermark
    await again.write(data.slice(2, 2).to_batches()[0], np.arange(2, 4))
    await again.commit(4)
    await again.close()
    with psycopg.connect(pg_url) as conn:
        ids = [r[0] for r in conn.execute(f'SELECT id FROM "{table}" ORDER BY id').fetchall()]
        mark = conn.execute(f"SELECT watermark FROM {WATERMARK_TABLE} WHERE sink_key = %s", [key]).fetchone()
    assert ids == [0, 1, 2, 3]
    assert mark == (4,)


async def test_a_constraint_violation_fails_the_commit_with_the_database_message(pg_url: str, table: str) -> None:
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(f'CREATE TABLE "{table}" (id bigint PRIMARY KEY, x integer, y double precision, name text)')
    options = {"connection": SECRET, "table": table}
    data = pa.table(
        {"id": pa.array([1, 1], pa.int64()), "x": pa.array([1, 2], pa.int32()), "y": [1.0, 2.0], "name": ["a", "b"]}
    )
    out = sink(options, SCHEMA, "sql", context(**{ENV: pg_url}))
    await out.open("k2", None)
    await out.write(data.to_batches()[0], np.arange(2))
    with pytest.raises(ChannelError, match="duplicate key"):
        await out.commit(2)
    await out.close()
