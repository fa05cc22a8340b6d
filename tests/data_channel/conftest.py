"""Fixtures of the data-channel tests: a PostgreSQL database of their own, unique Redis streams and queues."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Iterator

import psycopg
import pytest
import redis.asyncio as aioredis
from channel_kit import AMQP_URL, POSTGRES_ADMIN_URL, REDIS_URL


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """A PostgreSQL database created for this session (dropped at its end); its libpq URL."""
    name = f"modelops_dc_{secrets.token_hex(4)}"
    try:
        with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
    except psycopg.OperationalError as exc:
        raise RuntimeError(f"PostgreSQL is not reachable at {POSTGRES_ADMIN_URL}") from exc
    base = POSTGRES_ADMIN_URL.rsplit("/", 1)[0]
    try:
        yield f"{base}/{name}"
    finally:
        with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
async def stream() -> AsyncIterator[str]:
    """A Redis stream name of its own, deleted afterwards."""
    name = f"modelops-test-{secrets.token_hex(4)}"
    yield name
    client = aioredis.from_url(REDIS_URL)
    await client.delete(name)
    await client.aclose()


@pytest.fixture
async def queue() -> AsyncIterator[str]:
    """A RabbitMQ queue name of its own, deleted afterwards."""
    import aio_pika

    name = f"modelops-test-{secrets.token_hex(4)}"
    yield name
    connection = await aio_pika.connect_robust(AMQP_URL)
    async with connection:
        channel = await connection.channel()
        await channel.queue_delete(name)
