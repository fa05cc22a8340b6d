"""Data channels: where a scoring flow's records come from and go to, moved as typed Arrow record batches.

`base` defines `Source` and `Sink` (and the delivery rules built on record ordinals and sink watermarks),
`schema` the Arrow types of a channel's record schema and the casts with one error per bad record; one module
per channel type: `file` (CSV, JSON Lines, Parquet), `sql` (PostgreSQL), `redis` (Streams), `rabbitmq`,
`http` (request/response). `make_source` and `make_sink` pick the class for a channel's `type`; the queue
modules are imported only when used (their clients are the optional `queues` extra).

This package does not import the scheduler (an import-linter contract checks it).
"""

from __future__ import annotations

import importlib

from data_channel.base import (
    ChannelContext,
    ChannelError,
    ChannelUnavailable,
    InputMissing,
    Sink,
    Source,
    SourceBatch,
    SourceSize,
    secret_env_name,
    secret_value,
)
from data_channel.schema import RecordError, arrow_schema, arrow_type, conform
from ir.models import DataChannelSpec

__all__ = [
    "ChannelContext",
    "ChannelError",
    "ChannelUnavailable",
    "InputMissing",
    "RecordError",
    "Sink",
    "Source",
    "SourceBatch",
    "SourceSize",
    "arrow_schema",
    "arrow_type",
    "conform",
    "make_sink",
    "make_source",
    "secret_env_name",
    "secret_value",
]

_CLASSES: dict[str, tuple[str, str, str]] = {
    "file": ("data_channel.file", "FileSource", "FileSink"),
    "sql": ("data_channel.sql", "SqlSource", "SqlSink"),
    "redis": ("data_channel.redis", "RedisSource", "RedisSink"),
    "rabbitmq": ("data_channel.rabbitmq", "RabbitmqSource", "RabbitmqSink"),
    "http": ("data_channel.http", "HttpSource", "HttpSink"),
}


def _module(kind: str) -> object:
    module, _, _ = _CLASSES[kind]
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ChannelError(f"{kind} channels need {exc.name}: install modelops[queues]") from exc


def make_source(name: str, spec: DataChannelSpec, context: ChannelContext) -> Source:
    """The source of a channel (`direction: source`), not yet opened."""
    if spec.direction != "source":
        raise ChannelError(f"data channel '{name}' is a sink, not a source")
    cls: type[Source] = getattr(_module(spec.type), _CLASSES[spec.type][1])
    return cls(name, spec, context)


def make_sink(name: str, spec: DataChannelSpec, context: ChannelContext) -> Sink:
    """The sink of a channel (`direction: sink`), not yet opened."""
    if spec.direction != "sink":
        raise ChannelError(f"data channel '{name}' is a source, not a sink")
    cls: type[Sink] = getattr(_module(spec.type), _CLASSES[spec.type][2])
    return cls(name, spec, context)
