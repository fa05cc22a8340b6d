"""Queue channels against the real brokers: Redis Streams with a consumer group, RabbitMQ; ack after commit."""

from __future__ import annotations

import asyncio

import aio_pika
import numpy as np
import orjson
import pyarrow as pa
import pytest
import redis.asyncio as aioredis
from channel_kit import AMQP_URL, REDIS_URL, context, fields, sink, source

from data_channel import ChannelError

SCHEMA = fields("id:integer/int64", "x:number", "tags:array/number?", "name:string?")
REDIS = {"url": {"secretRef": {"name": "redis", "key": "url"}}}
REDIS_ENV = {"MODELOPS_SECRET_REDIS_URL": REDIS_URL}
AMQP = {"url": {"secretRef": {"name": "amqp", "key": "url"}}}
AMQP_ENV = {"MODELOPS_SECRET_AMQP_URL": AMQP_URL}


async def test_a_redis_source_reads_entries_as_records_and_acknowledges_only_what_it_is_told(stream: str) -> None:
    client = aioredis.from_url(REDIS_URL)
    ids = [await client.xadd(stream, {"id": str(i), "x": str(i / 2), "tags": "[1, 2]"}) for i in range(5)]
    await client.xadd(stream, {"id": "five", "x": "1"})
    options = {**REDIS, "stream": stream, "consumerGroup": "g"}
    src = source(options, SCHEMA, "redis", context(**REDIS_ENV))
    await src.open()
    first = await src.read(4)
    assert first is not None
    assert first.records.column("id").to_pylist() == [0, 1, 2, 3]
    assert first.records.column("tags").to_pylist() == [[1.0, 2.0]] * 4
    assert first.records.column("name").to_pylist() == [None] * 4
    second = await src.read(4)
    assert second is not None and second.records.column("id").to_pylist() == [4]
    assert [(e.field, e.where) for e in second.errors] == [
        ("id", f"message {(await client.xrange(stream))[-1][0].decode()} of stream {stream}")
    ]
    await src.ack(first)  # the second batch is never acknowledged: the flow "dies"
    await src.close()
    pending = await client.xpending(stream, "g")
    assert pending["pending"] == 2

    again = source(options, SCHEMA, "redis", context(**REDIS_ENV))  # same consumer name: it gets its own back
    await again.open()
    redelivered = await again.read(10)
    assert redelivered is not None
    assert redelivered.token == [ids[4].decode(), (await client.xrange(stream))[-1][0].decode()]
    await again.ack(redelivered)
    again.stop()
    assert await again.read(10) is None
    await again.close()
    assert (await client.xpending(stream, "g"))["pending"] == 0
    await client.aclose()


async def test_a_redis_source_waits_for_new_entries_until_stopped(stream: str) -> None:
    src = source({**REDIS, "stream": stream, "consumerGroup": "g"}, SCHEMA, "redis", context(**REDIS_ENV))
    await src.open()
    reader = asyncio.create_task(src.read(10))
    await asyncio.sleep(0.3)
    assert not reader.done()
    client = aioredis.from_url(REDIS_URL)
    await client.xadd(stream, {"id": "7", "x": "1.5"})
    batch = await asyncio.wait_for(reader, 5)
    assert batch is not None and batch.records.column("id").to_pylist() == [7]
    await src.ack(batch)
    reader = asyncio.create_task(src.read(10))
    await asyncio.sleep(0.1)
    src.stop()
    assert await asyncio.wait_for(reader, 5) is None
    await src.close()
    await client.aclose()


async def test_a_redis_sink_appends_one_entry_per_record_on_commit(stream: str) -> None:
    out = sink({**REDIS, "stream": stream, "maxLen": 1000}, SCHEMA, "redis", context(**REDIS_ENV))
    await out.open("k", None)
    records = pa.table(
        {"id": pa.array([1, 2], pa.int64()), "x": [0.5, 2.0], "tags": [[1.0], None], "name": ["a", None]}
    )
    await out.write(records.to_batches()[0], np.arange(2))
    client = aioredis.from_url(REDIS_URL)
    assert await client.xlen(stream) == 0  # nothing before the commit
    await out.commit(2)
    await out.close()
    entries = [fields for _, fields in await client.xrange(stream)]
    assert entries == [
        {b"id": b"1", b"x": b"0.5", b"tags": b"[1.0]", b"name": b"a"},
        {b"id": b"2", b"x": b"2.0"},
    ]
    await client.aclose()
    # and what a sink wrote, a source reads back
    src = source({**REDIS, "stream": stream, "consumerGroup": "g"}, SCHEMA, "redis", context(**REDIS_ENV))
    await src.open()
    batch = await src.read(10)
    assert batch is not None and batch.records.to_pylist() == records.to_pylist()
    await src.close()


async def test_a_redis_source_without_a_server_is_unavailable() -> None:
    src = source(
        {**REDIS, "stream": "s", "consumerGroup": "g"},
        SCHEMA,
        "redis",
        context(MODELOPS_SECRET_REDIS_URL="redis://127.0.0.1:1/0"),
    )
    with pytest.raises(ChannelError, match="cannot connect"):
        await src.open()
    await src.close()


async def publish(queue: str, bodies: list[bytes]) -> None:
    connection = await aio_pika.connect_robust(AMQP_URL)
    async with connection:
        channel = await connection.channel()
        await channel.declare_queue(queue, durable=True)
        for body in bodies:
            await channel.default_exchange.publish(aio_pika.Message(body), routing_key=queue)


async def queue_depth(queue: str) -> int:
    connection = await aio_pika.connect_robust(AMQP_URL)
    async with connection:
        channel = await connection.channel()
        declared = await channel.declare_queue(queue, durable=True, passive=True)
        count: int = declared.declaration_result.message_count or 0
        return count


async def test_a_rabbitmq_source_acknowledges_after_commit_and_gets_unacknowledged_messages_again(queue: str) -> None:
    bodies = [orjson.dumps({"id": i, "x": i / 2}) for i in range(5)] + [b"[1]", b"{oops"]
    await publish(queue, bodies)
    options = {**AMQP, "queue": queue, "prefetch": 100}
    src = source(options, SCHEMA, "rabbitmq", context(**AMQP_ENV))
    await src.open()
    first = await src.read(3)
    assert first is not None and first.records.column("id").to_pylist() == [0, 1, 2]
    rest = await src.read(10)
    assert rest is not None and rest.records.column("id").to_pylist() == [3, 4]
    assert ["JSON object" in e.message or "not JSON" in e.message for e in rest.errors] == [True, True]
    await src.ack(first)
    await src.close()  # the second batch was never acknowledged
    await asyncio.sleep(0.2)
    assert await queue_depth(queue) == 4

    again = source(options, SCHEMA, "rabbitmq", context(**AMQP_ENV))
    await again.open()
    batch = await again.read(10)
    assert batch is not None and batch.records.column("id").to_pylist() == [3, 4] and len(batch.errors) == 2
    await again.ack(batch)
    await again.close()
    await asyncio.sleep(0.2)
    assert await queue_depth(queue) == 0


async def test_a_rabbitmq_sink_publishes_persistent_json_confirmed_on_commit(queue: str) -> None:
    out = sink({**AMQP, "queue": queue}, SCHEMA, "rabbitmq", context(**AMQP_ENV))
    await out.open("k", None)
    records = pa.table(
        {"id": pa.array([1, 2], pa.int64()), "x": [0.5, 2.0], "tags": [[1.0], None], "name": ["a", None]}
    )
    await out.write(records.to_batches()[0], np.arange(2))
    assert await queue_depth(queue) == 0
    await out.commit(2)
    await out.close()
    assert await queue_depth(queue) == 2
    src = source({**AMQP, "queue": queue}, SCHEMA, "rabbitmq", context(**AMQP_ENV))
    await src.open()
    batch = await src.read(10)
    assert batch is not None and batch.records.to_pylist() == records.to_pylist()
    await src.ack(batch)
    await src.close()
