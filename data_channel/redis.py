"""Redis Streams channels: a source reading through a consumer group, a sink appending with XADD.

**Connection.** `redis.url` is a `secretRef` whose value is a Redis URL (`redis://host:6379/0`).

**Messages.** One stream entry is one record: the entry's fields are the record's fields, their values text
(as in CSV: `true`/`false`, numbers as written, dates in ISO 8601, `bytes` in base64, arrays and objects as
JSON). A field missing from an entry is null. A sink writes records the same way, leaving out null fields,
with `MAXLEN ~ maxLen` when the channel sets `maxLen`.

**Delivery: at least once.** A source creates its consumer group when missing (`XGROUP CREATE ... MKSTREAM`,
from the start of the stream) and reads as consumer `ChannelContext.consumer`, which stays the same when the
flow restarts: it first reads the entries it was given before and never acknowledged, then new ones. Entries
other consumers left pending for longer than `CLAIM_IDLE_MS` are claimed (`XAUTOCLAIM`). An entry is
acknowledged (`XACK`) only after every sink has committed the batch it came in; a flow that dies before that
gets it again. Offsets in messages are `message <entry id> of stream <name>`.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Mapping
from typing import Any, ClassVar, Final

import numpy as np
import orjson
import pyarrow as pa
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from data_channel.base import (
    ChannelContext,
    ChannelError,
    ChannelUnavailable,
    Sink,
    Source,
    SourceBatch,
    SourceSize,
    secret_value,
)
from data_channel.schema import RecordError, from_text, to_json_values
from ir.models import DataChannelSpec, RedisOptions

__all__ = ["CLAIM_IDLE_MS", "RedisSink", "RedisSource", "record_text"]

CLAIM_IDLE_MS: Final = 60_000
"""Entries pending this long at another consumer are taken over: that consumer is presumed dead."""
_BLOCK_MS: Final = 500
"""How long one XREADGROUP waits for new entries: the bound on how late a stop is noticed."""
_CLAIM_EVERY_SECONDS: Final = 10.0


def _options(spec: DataChannelSpec) -> RedisOptions:
    if spec.redis is None:
        raise ChannelError("a redis channel needs 'redis' options")
    return spec.redis


def record_text(value: Any) -> str:
    """A JSON-ready value as stream entry text."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        if math.isfinite(value):
            return repr(value)
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, str):
        return value
    if isinstance(value, int):
        return str(value)
    return orjson.dumps(value).decode()


class RedisSource(Source):
    """Reads a stream through a consumer group (see the module docstring)."""

    type: ClassVar[str] = "redis"
    finite: ClassVar[bool] = False

    def __init__(self, name: str, spec: DataChannelSpec, context: ChannelContext) -> None:
        super().__init__(name, spec, context)
        self.options = _options(spec)
        self.group = self.options.consumer_group or "modelops"
        self._client: aioredis.Redis | None = None
        self._own_pending = True
        self._next_claim = 0.0
        self._counter = 0

    def describe(self) -> str:
        return f"redis source '{self.name}' (stream {self.options.stream}, group {self.group})"

    async def size(self) -> SourceSize | None:
        """The backlog: the stream's entries not yet delivered to the group (`XINFO GROUPS` lag, Redis 7+)."""
        client = self._client
        if client is None:
            return None
        try:
            groups = await client.xinfo_groups(self.options.stream)
        except RedisError:
            return None  # a progress figure is not worth failing or even warning about
        for group in groups:
            info = {(k.decode() if isinstance(k, bytes) else str(k)): v for k, v in group.items()}
            name = info.get("name")
            if (name.decode() if isinstance(name, bytes) else name) == self.group:
                lag = info.get("lag")
                return SourceSize(int(lag), backlog=True) if lag is not None else None
        return None

    async def open(self, start: int = 0, state: Mapping[str, Any] | None = None) -> None:
        url = secret_value(self.options.url.secret_ref, self.context.environ)
        self._client = aioredis.from_url(url, decode_responses=False, socket_timeout=_BLOCK_MS / 1000 + 10)
        try:
            await self._client.xgroup_create(self.options.stream, self.group, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise ChannelError(f"{self.describe()}: {exc}") from exc
        except (RedisConnectionError, RedisTimeoutError) as exc:
            raise ChannelUnavailable(f"{self.describe()}: cannot connect: {exc}") from exc
        except RedisError as exc:
            raise ChannelError(f"{self.describe()}: {exc}") from exc

    async def read(self, max_records: int) -> SourceBatch | None:
        client = self._client
        if client is None:
            raise ChannelError(f"{self.describe()}: not open")
        stream = self.options.stream
        consumer = self.context.consumer
        while not self._stopping:
            try:
                entries: list[tuple[bytes, dict[bytes, bytes] | None]] = []
                if self._own_pending:
                    reply = await client.xreadgroup(self.group, consumer, {stream: "0"}, count=max_records)
                    entries = _entries(reply)
                    if not entries:
                        self._own_pending = False
                        continue
                else:
                    loop = asyncio.get_running_loop()
                    if loop.time() >= self._next_claim:
                        self._next_claim = loop.time() + _CLAIM_EVERY_SECONDS
                        claimed = await client.xautoclaim(
                            stream, self.group, consumer, min_idle_time=CLAIM_IDLE_MS, start_id="0-0", count=max_records
                        )
                        entries = [(i, f) for i, f in claimed[1]] if claimed and len(claimed) > 1 else []
                    if not entries:
                        reply = await client.xreadgroup(
                            self.group, consumer, {stream: ">"}, count=max_records, block=_BLOCK_MS
                        )
                        entries = _entries(reply)
            except (RedisConnectionError, RedisTimeoutError) as exc:
                raise ChannelUnavailable(f"{self.describe()}: lost the connection: {exc}") from exc
            except RedisError as exc:
                raise ChannelError(f"{self.describe()}: {exc}") from exc
            if entries:
                return self._batch(entries)
        return None

    def _batch(self, entries: list[tuple[bytes, dict[bytes, bytes] | None]]) -> SourceBatch:
        start = self._counter
        count = len(entries)
        self._counter += count
        ids = [entry_id.decode() for entry_id, _ in entries]
        names = [f.name for f in self.schema.fields]
        keys = {name: name.encode() for name in names}
        deleted = [i for i, (_, fields) in enumerate(entries) if fields is None]
        live = [i for i in range(count) if entries[i][1] is not None]
        columns = {
            name: pa.array(
                [_text(entries[i][1], key) for i in live],  # type: ignore[arg-type]  # live entries have fields
                type=pa.string(),
            )
            for name, key in keys.items()
        }
        table = pa.table(columns) if names else pa.table({})
        ordinals = np.arange(start, start + count, dtype=np.int64)[live]

        def locate(row: int) -> str:
            return f"message {ids[live[row]]} of stream {self.options.stream}"

        good, kept, errors = from_text(table, self.schema, ordinals, locate)
        errors += [
            RecordError(start + i, f"message {ids[i]} of stream {self.options.stream}", "the entry was deleted")
            for i in deleted
        ]
        stream = self.options.stream

        def where(ordinal: int) -> str:
            return f"message {ids[ordinal - start]} of stream {stream}"

        return SourceBatch(good, kept, start, start + count, errors, token=ids, where=where)

    async def ack(self, batch: SourceBatch) -> None:
        if self._client is None or not batch.token:
            return
        try:
            await self._client.xack(self.options.stream, self.group, *batch.token)
        except RedisError as exc:
            raise ChannelUnavailable(f"{self.describe()}: cannot acknowledge: {exc}") from exc

    async def close(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            await client.aclose()


def _entries(reply: Any) -> list[tuple[bytes, dict[bytes, bytes] | None]]:
    if not reply:
        return []
    out: list[tuple[bytes, dict[bytes, bytes] | None]] = []
    for _stream, items in reply:
        out.extend((entry_id, fields or None) for entry_id, fields in items)
    return out


def _text(fields: dict[bytes, bytes], key: bytes) -> str | None:
    value = fields.get(key)
    return None if value is None else value.decode("utf-8", errors="replace")


class RedisSink(Sink):
    """Appends one stream entry per record (see the module docstring)."""

    type: ClassVar[str] = "redis"

    def __init__(self, name: str, spec: DataChannelSpec, context: ChannelContext) -> None:
        super().__init__(name, spec, context)
        self.options = _options(spec)
        self._client: aioredis.Redis | None = None
        self._pending: list[dict[str, str]] = []

    def describe(self) -> str:
        return f"redis sink '{self.name}' (stream {self.options.stream})"

    async def open(self, key: str, state: Mapping[str, Any] | None) -> int:
        url = secret_value(self.options.url.secret_ref, self.context.environ)
        self._client = aioredis.from_url(url, decode_responses=False)
        try:
            await self._client.ping()
        except (RedisConnectionError, RedisTimeoutError) as exc:
            raise ChannelUnavailable(f"{self.describe()}: cannot connect: {exc}") from exc
        return int(state.get("watermark", 0)) if state else 0

    async def write(self, records: pa.RecordBatch, ordinals: np.ndarray, token: Any = None) -> None:
        for row in to_json_values(records, self.schema):
            self._pending.append({k: record_text(v) for k, v in row.items() if v is not None})

    async def commit(self, watermark: int) -> dict[str, Any]:
        if self._client is None:
            raise ChannelError(f"{self.describe()}: not open")
        pending, self._pending = self._pending, []
        if pending:
            try:
                async with self._client.pipeline(transaction=False) as pipe:
                    for fields in pending:
                        pipe.xadd(
                            self.options.stream,
                            fields,  # type: ignore[arg-type]  # str -> str is a valid field mapping
                            maxlen=self.options.max_len,
                            approximate=True,
                        )
                    await pipe.execute()
            except (RedisConnectionError, RedisTimeoutError) as exc:
                raise ChannelUnavailable(f"{self.describe()}: lost the connection: {exc}") from exc
            except RedisError as exc:
                raise ChannelError(f"{self.describe()}: {exc}") from exc
        return {"watermark": watermark}

    async def close(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            await client.aclose()
