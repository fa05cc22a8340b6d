"""HTTP channels: records POSTed to the flow's server, coalesced into batches, answered after the commit."""

from __future__ import annotations

import asyncio

import httpx
import numpy as np
from channel_kit import fields, spec

from data_channel import ChannelContext, make_sink, make_source
from data_channel.http import HttpExchange, HttpSource

SCHEMA = fields("id:integer/int64", "x:number")
OUT = fields("id:integer/int64", "double:number")


async def serve_once(exchange: HttpExchange, src: HttpSource, with_sink: bool) -> None:
    """Play the flow for one batch: read, 'score' (double x), write to the http sink, commit, ack."""
    batch = await src.read(100)
    assert batch is not None
    if with_sink:
        out = make_sink("answer", spec("sink", "http", {"path": "/score"}, OUT), ChannelContext(exchange=exchange))
        import pyarrow as pa
        import pyarrow.compute as pc

        scored = pa.RecordBatch.from_arrays(
            [batch.records.column("id"), pc.multiply(batch.records.column("x"), 2.0)], names=["id", "double"]
        )
        await out.write(scored, batch.ordinals)
        await out.commit(batch.end)
    await src.ack(batch)


async def test_records_posted_together_are_one_batch_and_each_request_gets_its_own_answer() -> None:
    exchange = HttpExchange(requested_port=0)
    src = make_source("in", spec("source", "http", {"path": "/score"}, SCHEMA), ChannelContext(exchange=exchange))
    assert isinstance(src, HttpSource)
    exchange.has_sink = True
    await src.open()
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{exchange.port}", trust_env=False) as client:
            assert (await client.get("/healthz")).json() == {"ready": True}
            posts = [
                asyncio.create_task(client.post("/score", json={"id": 1, "x": 1.5})),
                asyncio.create_task(client.post("/score", json=[{"id": 2, "x": 2}, {"id": "x", "x": 1}, 7])),
            ]
            await asyncio.sleep(0.2)
            await serve_once(exchange, src, with_sink=True)
            first, second = [await p for p in posts]
            assert first.status_code == 200 and first.json() == {"records": [{"id": 1, "double": 3.0}], "errors": []}
            body = second.json()
            assert second.status_code == 200
            assert body["records"] == [{"id": 2, "double": 4.0}]
            assert [(e["index"], e["field"]) for e in body["errors"]] == [(1, "id"), (2, None)]
            assert (await client.post("/score", content=b"{nope")).status_code == 400
            assert (await client.post("/other", json={})).status_code == 404
    finally:
        await src.close()
    assert exchange.outputs == {}


async def test_under_the_fail_policy_a_request_with_a_bad_record_gets_422_and_others_are_answered() -> None:
    exchange = HttpExchange(requested_port=0, fail_requests=True)
    src = make_source("in", spec("source", "http", {"path": "/p"}, SCHEMA), ChannelContext(exchange=exchange))
    assert isinstance(src, HttpSource)
    await src.open()
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{exchange.port}", trust_env=False) as client:
            posts = [
                asyncio.create_task(client.post("/p", json={"id": 1, "x": 1})),
                asyncio.create_task(client.post("/p", json={"id": 2, "x": "bad"})),
            ]
            await asyncio.sleep(0.2)
            await serve_once(exchange, src, with_sink=False)
            good, bad = [await p for p in posts]
            assert good.status_code == 200 and good.json() == {"accepted": 1, "errors": []}
            assert bad.status_code == 422 and bad.json()["errors"][0]["field"] == "x"
            src.stop()
            late = await client.post("/p", json={"id": 3, "x": 1})
            assert late.status_code == 503
    finally:
        await src.close()
    _ = np
