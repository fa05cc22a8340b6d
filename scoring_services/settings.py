"""Configuration of a scoring service, read from `MODELOPS_SCORING_*` environment variables.

Defaults run on a laptop: listen on 127.0.0.1:8080 (the KServe port), inference on a small thread pool,
downloads cached under `~/.cache/modelops/models`. The CLI builds `ScoringSettings()` when it starts and
overrides fields from its options; tests pass values directly. Nothing is created at import time.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["ScoringSettings", "default_threads"]


def default_threads() -> int:
    """Inference threads when none are configured: one per core, at least 2 and at most 8."""
    return max(2, min(8, os.cpu_count() or 2))


class ScoringSettings(BaseSettings):
    """Settings of one scoring-service process."""

    model_config = SettingsConfigDict(env_prefix="MODELOPS_SCORING_", extra="ignore")

    host: str = Field(default="127.0.0.1", description="Address to listen on (0.0.0.0 in a container).")
    port: int = Field(default=8080, ge=0, le=65535, description="TCP port (0 picks a free one).")
    inference_threads: int = Field(
        default_factory=default_threads,
        ge=1,
        le=256,
        description="Threads that run model calls, so the event loop keeps answering health and metadata.",
    )
    batch_concurrency: int = Field(
        default=2,
        ge=1,
        le=64,
        description=(
            "Model calls of one batched model in flight at once; a second one starts only for a full batch, so "
            "small requests queue (and coalesce) behind the running call while large ones use more cores."
        ),
    )
    max_body_bytes: int = Field(
        default=64 * 1024 * 1024, ge=1024, description="Largest request body accepted; larger ones get 413."
    )
    cache_dir: Path = Field(
        default_factory=lambda: Path("~/.cache/modelops/models").expanduser(),
        description="Where artifacts downloaded from http(s)://, s3:// and models:/ URIs are kept, by their sha256.",
    )
    model_store: str | None = Field(
        default=None,
        description="Base (a folder or file:// URI) that relative model URIs resolve against; default: the cwd.",
    )
    download_timeout_s: float = Field(default=120.0, gt=0, description="Timeout of one artifact download.")
    max_unpacked_bytes: int = Field(
        default=16 * 2**30,
        ge=1,
        description="What a downloaded model archive (.tar.gz, .zip, a stored folder) may decompress to; "
        "past it the model fails to load, naming the limit.",
    )
    batching: bool = Field(
        default=True, description="Master switch: false turns adaptive batching off for every model."
    )
    default_max_batch_size: int = Field(
        default=64, ge=1, description="maxBatchSize for models given on the command line without one."
    )
    default_max_latency_ms: float = Field(
        default=5.0, ge=0, description="maxLatencyMs for models given on the command line without one."
    )
    exit_on_load_failure: bool = Field(
        default=True, description="Stop the process when a model configured at startup fails to load."
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field(default="info", description="Log level.")
    log_format: Literal["text", "json"] = Field(
        default="text",
        description="Log lines (`ir.logformat`): text, `<ISO 8601 UTC ms> LEVEL logger: message`, or json, one "
        "object per line with ts, level, logger and message.",
    )
    access_log: bool = Field(default=False, description="Log every request (costs throughput).")
