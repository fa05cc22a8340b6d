"""What a source says of its size, for progress bars: counted records of small files, bytes read of big or
gzipped ones, Parquet footers, a SQL count, a Redis stream's backlog."""

from __future__ import annotations

import asyncio
import gzip
import secrets
from collections.abc import Iterator
from pathlib import Path

import aio_pika
import orjson
import psycopg
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import redis.asyncio as aioredis
from channel_kit import AMQP_URL, REDIS_URL, context, fields, read_all, source

from data_channel import Source, SourceSize
from data_channel import file as file_channel

SCHEMA = fields("id:integer/int64", "x:number")
CSV = {"path": "in.csv", "format": "csv"}


def write_csv(path: Path, count: int, *, trailing_newline: bool = True) -> None:
    text = "id,x\n" + "\n".join(f"{i},{i / 2}" for i in range(count))
    path.write_text(text + ("\n" if trailing_newline else ""))


@pytest.mark.parametrize("trailing_newline", [True, False])
async def test_a_small_csv_file_counts_its_records_without_the_header(tmp_path: Path, trailing_newline: bool) -> None:
    write_csv(tmp_path / "in.csv", 250, trailing_newline=trailing_newline)
    src = source(CSV, SCHEMA, "file", context(tmp_path))
    await src.open()
    try:
        assert await src.size() == SourceSize(250, "records")
    finally:
        await src.close()


async def test_a_glob_of_json_lines_files_counts_the_lines_of_every_file(tmp_path: Path) -> None:
    for part in range(3):
        (tmp_path / f"part-{part}.jsonl").write_text("".join(f'{{"id": {i}, "x": 1.5}}\n' for i in range(10)))
    src = source({"path": "part-*.jsonl", "format": "jsonl"}, SCHEMA, "file", context(tmp_path))
    await src.open()
    try:
        assert await src.size() == SourceSize(30, "records")
    finally:
        await src.close()


async def test_a_gzipped_csv_file_is_measured_in_bytes_read(tmp_path: Path) -> None:
    path = tmp_path / "in.csv.gz"
    with gzip.open(path, "wt") as handle:
        handle.write("id,x\n" + "".join(f"{i},{i / 2}\n" for i in range(20_000)))
    total = path.stat().st_size
    src = source({"path": "in.csv.gz", "format": "csv"}, SCHEMA, "file", context(tmp_path))
    await src.open()
    try:
        assert await src.size() == SourceSize(total, "bytes", done=0)
        while await src.read(1000) is not None:
            pass
        assert await src.size() == SourceSize(total, "bytes", done=total)
    finally:
        await src.close()


async def test_files_bigger_than_the_counting_limit_are_measured_in_bytes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_csv(tmp_path / "in.csv", 1000)
    monkeypatch.setattr(file_channel, "COUNT_LINES_BYTES", 100)
    src = source(CSV, SCHEMA, "file", context(tmp_path))
    size = (tmp_path / "in.csv").stat().st_size
    got, *_ = await read_all(src, size=100, limit=1)
    assert got.num_rows == 100
    measured = await src.size()
    assert measured is not None and (measured.total, measured.unit) == (size, "bytes")


async def test_parquet_files_tell_their_records_from_their_footers(tmp_path: Path) -> None:
    table = pa.table({"id": pa.array(range(123), pa.int64()), "x": pa.array([0.5] * 123)})
    pq.write_table(table, tmp_path / "a.parquet")
    pq.write_table(table.slice(0, 7), tmp_path / "b.parquet")
    src = source({"path": "*.parquet", "format": "parquet"}, SCHEMA, "file", context(tmp_path))
    await src.open()
    try:
        assert await src.size() == SourceSize(130, "records")
    finally:
        await src.close()


# ---------------------------------------------------------------------------------------------- sql

SQL_SECRET = {"secretRef": {"name": "pg-test", "key": "url"}}
SQL_ENV = "MODELOPS_SECRET_PG_TEST_URL"


@pytest.fixture
def table(pg_url: str) -> Iterator[str]:
    name = f"t_{secrets.token_hex(4)}"
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(f'CREATE TABLE "{name}" (id bigint PRIMARY KEY, x double precision)')
        conn.execute(f'INSERT INTO "{name}" SELECT i, i / 2.0 FROM generate_series(0, 41) AS i')
    yield name
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(f'DROP TABLE IF EXISTS "{name}"')


@pytest.mark.postgres
async def test_a_sql_query_counts_its_rows_and_still_reads_them_all(pg_url: str, table: str) -> None:
    options = {"connection": SQL_SECRET, "query": f'SELECT * FROM "{table}" WHERE id >= 10 ORDER BY id'}
    src = source(options, SCHEMA, "sql", context(**{SQL_ENV: pg_url}))
    got, *_ = await read_all(src, size=5)
    assert await src.size() == SourceSize(32, "records")
    assert got.column("id").to_pylist() == list(range(10, 42))


@pytest.mark.postgres
async def test_a_sql_query_that_cannot_be_counted_is_read_without_a_size(pg_url: str, table: str) -> None:
    # A trailing semicolon runs as written but not inside count(*): the source goes on without its size.
    options = {"connection": SQL_SECRET, "query": f'SELECT * FROM "{table}" ORDER BY id;'}
    src = source(options, SCHEMA, "sql", context(**{SQL_ENV: pg_url}))
    got, *_ = await read_all(src, size=50)
    assert await src.size() is None
    assert got.num_rows == 42


# ---------------------------------------------------------------------------------------------- redis


async def test_a_redis_source_tells_the_entries_its_group_has_not_been_given_yet(stream: str) -> None:
    client = aioredis.from_url(REDIS_URL)
    for i in range(12):
        await client.xadd(stream, {"id": str(i), "x": "0.5"})
    await client.aclose()
    options = {"url": {"secretRef": {"name": "redis", "key": "url"}}, "stream": stream, "consumerGroup": "g"}
    src = source(options, SCHEMA, "redis", context(MODELOPS_SECRET_REDIS_URL=REDIS_URL))
    await src.open()
    try:
        assert await src.size() == SourceSize(12, "records", backlog=True)
        batch = await src.read(5)
        assert batch is not None
        assert await src.size() == SourceSize(7, "records", backlog=True)
    finally:
        await src.close()


# ---------------------------------------------------------------------------------------------- rabbitmq


async def settled_size(src: Source, want: int) -> SourceSize | None:
    """The source's size once `want` messages are accounted for (deliveries reach the source asynchronously),
    or the last one seen within 10 s."""
    size = await src.size()
    for _ in range(100):
        if size is not None and size.total == want:
            break
        await asyncio.sleep(0.1)
        size = await src.size()
    return size


async def test_a_rabbitmq_source_tells_the_messages_it_has_not_read_yet(queue: str) -> None:
    connection = await aio_pika.connect_robust(AMQP_URL)
    async with connection:
        channel = await connection.channel()
        await channel.declare_queue(queue, durable=True)
        for i in range(9):
            await channel.default_exchange.publish(aio_pika.Message(orjson.dumps({"id": i, "x": 0.5})), queue)
    options = {"url": {"secretRef": {"name": "amqp", "key": "url"}}, "queue": queue, "prefetch": 3}
    src = source(options, SCHEMA, "rabbitmq", context(MODELOPS_SECRET_AMQP_URL=AMQP_URL))
    await src.open()
    try:
        assert await settled_size(src, 9) == SourceSize(9, "records", backlog=True)
        batch = await src.read(2)
        assert batch is not None and batch.end - batch.start == 2
        assert await settled_size(src, 7) == SourceSize(7, "records", backlog=True)
    finally:
        await src.close()
