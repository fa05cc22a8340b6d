"""RabbitMQ channels (aio-pika): a source consuming a durable queue, a sink publishing to it with confirms.

**Connection.** `rabbitmq.url` is a `secretRef` whose value is an AMQP URL (`amqp://guest:guest@host:5672/`).

**Messages.** One message is one record: a JSON object (fields by name; dates in ISO 8601, `bytes` in base64).
A body that is not a JSON object is a record error. The queue is declared durable; a sink publishes persistent
messages to the default exchange with the queue's name as routing key, and a commit returns only once the
broker has confirmed every message (publisher confirms).

**Delivery: at least once.** A source holds at most `prefetch` unacknowledged messages. A batch is acknowledged
(`basic.ack`, `multiple` up to its last delivery tag: batches are committed in order) only after every sink has
committed it; a flow that dies before that leaves the messages to be delivered again. Offsets in messages are
`message <delivery tag> of queue <name>`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping
from typing import Any, ClassVar, Final

import aio_pika
import numpy as np
import orjson
import pyarrow as pa
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractQueue, AbstractRobustConnection
from aiormq.exceptions import AMQPError

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
from data_channel.schema import RecordError, from_values, to_json_values
from ir.models import DataChannelSpec, RabbitmqOptions

__all__ = ["RabbitmqSink", "RabbitmqSource"]

_WAIT_SECONDS: Final = 0.5
"""How long `read` waits for a first message before looking at `stop()` again."""
_LINGER_SECONDS: Final = 0.005
"""After the first message, how long to wait for more before the batch is handed out (a burst arrives together)."""


def _options(spec: DataChannelSpec) -> RabbitmqOptions:
    if spec.rabbitmq is None:
        raise ChannelError("a rabbitmq channel needs 'rabbitmq' options")
    return spec.rabbitmq


async def _connect(url: str, what: str) -> AbstractRobustConnection:
    try:
        return await aio_pika.connect_robust(url, timeout=10)
    except (TimeoutError, OSError, AMQPError) as exc:
        raise ChannelUnavailable(f"{what}: cannot connect: {exc}") from exc


class RabbitmqSource(Source):
    """Consumes a durable queue (see the module docstring)."""

    type: ClassVar[str] = "rabbitmq"
    finite: ClassVar[bool] = False

    def __init__(self, name: str, spec: DataChannelSpec, context: ChannelContext) -> None:
        super().__init__(name, spec, context)
        self.options = _options(spec)
        self._connection: AbstractRobustConnection | None = None
        self._channel: AbstractChannel | None = None
        self._queue: AbstractQueue | None = None
        self._tag: str | None = None
        self._inbox: asyncio.Queue[AbstractIncomingMessage] = asyncio.Queue()
        self._counter = 0
        self._sizing: AbstractChannel | None = None
        """A channel of its own for `size`: a failed passive declare closes its channel, never the consuming one."""

    def describe(self) -> str:
        return f"rabbitmq source '{self.name}' (queue {self.options.queue})"

    async def size(self) -> SourceSize | None:
        """The backlog: the queue's ready messages (a passive declare) plus those delivered but not read yet."""
        if self._connection is None:
            return None
        try:
            if self._sizing is None or self._sizing.is_closed:
                self._sizing = await self._connection.channel()
            queue = await self._sizing.declare_queue(self.options.queue, passive=True)
        except (AMQPError, OSError, RuntimeError):
            return None  # a progress figure is not worth failing or even warning about
        ready = queue.declaration_result.message_count or 0
        return SourceSize(int(ready) + self._inbox.qsize(), backlog=True)

    async def open(self, start: int = 0, state: Mapping[str, Any] | None = None) -> None:
        url = secret_value(self.options.url.secret_ref, self.context.environ)
        self._connection = await _connect(url, self.describe())
        try:
            self._channel = await self._connection.channel()
            await self._channel.set_qos(prefetch_count=self.options.prefetch)
            self._queue = await self._channel.declare_queue(self.options.queue, durable=True)
            self._tag = await self._queue.consume(self._inbox.put, no_ack=False)
        except AMQPError as exc:
            raise ChannelError(f"{self.describe()}: {exc}") from exc

    async def read(self, max_records: int) -> SourceBatch | None:
        messages: list[AbstractIncomingMessage] = []
        while not messages:
            if self._stopping:
                return None
            with contextlib.suppress(asyncio.TimeoutError):
                messages.append(await asyncio.wait_for(self._inbox.get(), _WAIT_SECONDS))
        deadline = asyncio.get_running_loop().time() + _LINGER_SECONDS
        while len(messages) < max_records:
            if not self._inbox.empty():
                messages.append(self._inbox.get_nowait())
                continue
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                break
            try:
                messages.append(await asyncio.wait_for(self._inbox.get(), left))
            except TimeoutError:
                break
        return self._batch(messages)

    def _batch(self, messages: list[AbstractIncomingMessage]) -> SourceBatch:
        start = self._counter
        count = len(messages)
        self._counter += count
        names = [f.name for f in self.schema.fields]
        queue = self.options.queue
        good_rows: list[int] = []
        raw: list[dict[str, Any]] = []
        errors: list[RecordError] = []
        for i, message in enumerate(messages):
            where = f"message {message.delivery_tag} of queue {queue}"
            try:
                obj = orjson.loads(message.body)
            except orjson.JSONDecodeError as exc:
                errors.append(RecordError(start + i, where, f"not JSON: {exc}", record={"body": _body(message)}))
                continue
            if not isinstance(obj, dict):
                errors.append(
                    RecordError(
                        start + i, where, f"expected a JSON object, got {type(obj).__name__}", record={"body": obj}
                    )
                )
                continue
            good_rows.append(i)
            raw.append(obj)
        columns = {name: [obj.get(name) for obj in raw] for name in names}
        ordinals = np.array([start + i for i in good_rows], dtype=np.int64)

        def locate(row: int) -> str:
            return f"message {messages[good_rows[row]].delivery_tag} of queue {queue}"

        good, kept, more = from_values(columns, len(raw), self.schema, ordinals, locate, lambda row: raw[row])
        errors = sorted(errors + more, key=lambda e: e.ordinal)

        def describe(ordinal: int) -> str:
            return f"message {messages[ordinal - start].delivery_tag} of queue {queue}"

        return SourceBatch(good, kept, start, start + count, errors, token=messages[-1], where=describe)

    async def ack(self, batch: SourceBatch) -> None:
        message = batch.token
        if message is None:
            return
        try:
            await message.ack(multiple=True)
        except AMQPError as exc:
            raise ChannelUnavailable(f"{self.describe()}: cannot acknowledge: {exc}") from exc

    async def close(self) -> None:
        if self._queue is not None and self._tag is not None:
            with contextlib.suppress(AMQPError, RuntimeError):
                await self._queue.cancel(self._tag)
        if self._connection is not None:
            connection, self._connection = self._connection, None
            await connection.close()


def _body(message: AbstractIncomingMessage) -> str:
    return message.body.decode("utf-8", errors="replace")


class RabbitmqSink(Sink):
    """Publishes one persistent JSON message per record, with publisher confirms (see the module docstring)."""

    type: ClassVar[str] = "rabbitmq"

    def __init__(self, name: str, spec: DataChannelSpec, context: ChannelContext) -> None:
        super().__init__(name, spec, context)
        self.options = _options(spec)
        self._connection: AbstractRobustConnection | None = None
        self._channel: AbstractChannel | None = None
        self._pending: list[bytes] = []

    def describe(self) -> str:
        return f"rabbitmq sink '{self.name}' (queue {self.options.queue})"

    async def open(self, key: str, state: Mapping[str, Any] | None) -> int:
        url = secret_value(self.options.url.secret_ref, self.context.environ)
        self._connection = await _connect(url, self.describe())
        try:
            self._channel = await self._connection.channel(publisher_confirms=True)
            await self._channel.declare_queue(self.options.queue, durable=True)
        except AMQPError as exc:
            raise ChannelError(f"{self.describe()}: {exc}") from exc
        return int(state.get("watermark", 0)) if state else 0

    async def write(self, records: pa.RecordBatch, ordinals: np.ndarray, token: Any = None) -> None:
        self._pending.extend(orjson.dumps(row) for row in to_json_values(records, self.schema))

    async def commit(self, watermark: int) -> dict[str, Any]:
        if self._channel is None:
            raise ChannelError(f"{self.describe()}: not open")
        pending, self._pending = self._pending, []
        exchange = self._channel.default_exchange
        try:
            await asyncio.gather(
                *(
                    exchange.publish(
                        aio_pika.Message(
                            body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT, content_type="application/json"
                        ),
                        routing_key=self.options.queue,
                    )
                    for body in pending
                )
            )
        except (TimeoutError, AMQPError) as exc:
            raise ChannelUnavailable(f"{self.describe()}: a publish was not confirmed: {exc}") from exc
        return {"watermark": watermark}

    async def close(self) -> None:
        if self._connection is not None:
            connection, self._connection = self._connection, None
            await connection.close()
