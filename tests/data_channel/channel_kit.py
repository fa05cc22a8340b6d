"""Helpers of the data-channel tests: channel specs in a line, read a whole source, write and commit to a sink."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from data_channel import ChannelContext, RecordError, Sink, Source, make_sink, make_source
from ir.models import DataChannelSpec

POSTGRES_ADMIN_URL = os.environ.get(
    "MODELOPS_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
).replace("+psycopg", "")
REDIS_URL = os.environ.get("MODELOPS_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
AMQP_URL = os.environ.get("MODELOPS_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")

Field = dict[str, Any]


def fields(*items: str) -> list[Field]:
    """`"id:integer/int64"`, `"name:string"`, `"score:number?"` (trailing ? = nullable) -> schema fields."""
    out: list[Field] = []
    for item in items:
        name, _, kind = item.partition(":")
        nullable = kind.endswith("?")
        kind = kind.rstrip("?")
        type_, _, fmt = kind.partition("/")
        entry: Field = {"name": name, "type": type_, "nullable": nullable}
        if type_ == "array":
            entry["items"] = {"type": fmt or "number"}
        elif fmt:
            entry["format"] = fmt
        out.append(entry)
    return out


def spec(direction: str, type_: str, options: Mapping[str, Any], schema: Sequence[Field]) -> DataChannelSpec:
    return DataChannelSpec.model_validate(
        {"direction": direction, "type": type_, type_: dict(options), "schema": {"fields": list(schema)}}
    )


def context(tmp_path: Path | None = None, **env: str) -> ChannelContext:
    environ = dict(os.environ)
    environ.update(env)
    return ChannelContext(workdir=tmp_path or Path.cwd(), environ=environ, consumer="test-consumer")


def source(direction_options: Mapping[str, Any], schema: Sequence[Field], type_: str, ctx: ChannelContext) -> Source:
    return make_source("in", spec("source", type_, direction_options, schema), ctx)


def sink(options: Mapping[str, Any], schema: Sequence[Field], type_: str, ctx: ChannelContext) -> Sink:
    return make_sink("out", spec("sink", type_, options, schema), ctx)


async def read_all(
    src: Source, size: int = 1000, start: int = 0, state: Mapping[str, Any] | None = None, limit: int | None = None
) -> tuple[pa.Table, list[int], list[RecordError], list[tuple[int, int]]]:
    """Open, read to the end (or `limit` batches), close: (records, their ordinals, errors, batch ranges)."""
    await src.open(start, state)
    batches: list[pa.RecordBatch] = []
    ordinals: list[int] = []
    errors: list[RecordError] = []
    ranges: list[tuple[int, int]] = []
    try:
        while limit is None or len(ranges) < limit:
            batch = await src.read(size)
            if batch is None:
                break
            batches.append(batch.records)
            ordinals.extend(batch.ordinals.tolist())
            errors.extend(batch.errors)
            ranges.append((batch.start, batch.end))
    finally:
        await src.close()
    table = pa.Table.from_batches(batches, schema=src.arrow_schema)
    return table, ordinals, errors, ranges


async def write_all(
    dst: Sink, table: pa.Table, key: str = "k", state: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """Open, write every batch with its ordinals, commit once, finish, close; the commit's state."""
    await dst.open(key, state)
    start = 0
    for batch in table.to_batches():
        await dst.write(batch, np.arange(start, start + batch.num_rows, dtype=np.int64))
        start += batch.num_rows
    saved = await dst.commit(start)
    await dst.finish()
    await dst.close()
    return saved
