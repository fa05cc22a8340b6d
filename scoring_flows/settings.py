"""Settings of a flow process, from `MODELOPS_FLOW_*` environment variables (the command line overrides some).

Defaults suit a laptop; the Helm chart sets the same variables on Kubernetes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["FlowSettings"]


class FlowSettings(BaseSettings):
    """How one flow process runs."""

    model_config = SettingsConfigDict(env_prefix="MODELOPS_FLOW_", extra="ignore")

    ready_timeout_seconds: float = Field(
        default=300.0, gt=0, description="How long to wait for the scoring services to be ready before failing."
    )
    score_retry_seconds: float = Field(
        default=120.0,
        gt=0,
        description="How long one score request is retried (connection errors, 502/503/504) before the flow fails.",
    )
    request_timeout_seconds: float = Field(default=120.0, gt=0, description="Timeout of one score request.")
    in_flight: int = Field(default=4, ge=1, le=256, description="Batches going through the steps at the same time.")
    commit_interval_seconds: float | None = Field(
        default=None,
        ge=0,
        description="Least time between two commits of the sinks (and checkpoints); default 1s for batch sources, "
        "0 (every batch) for queues, whose acknowledgements wait for the commit.",
    )
    progress_interval_seconds: float = Field(
        default=2.0, gt=0, description="How often progress goes to the scheduler and the log."
    )
    checkpoint_dir: Path | None = Field(
        default=None, description="Where checkpoints are kept; default: `checkpoints/` next to the values file."
    )
    metrics_port: int | None = Field(
        default=None, ge=0, le=65535, description="Serve Prometheus metrics on this port (none: not served)."
    )
    metrics_host: str = Field(default="127.0.0.1", description="Address of the metrics server.")
    complete_timeout_seconds: float = Field(
        default=600.0,
        gt=0,
        description="How long a completion report, and the last progress report (the final counts), are retried "
        "while the scheduler does not answer or answers 5xx: longer than a scheduler restart takes, so a flow "
        "that finishes while the scheduler is away is still recorded once it is back.",
    )
    stop_timeout_seconds: float = Field(
        default=20.0,
        ge=0,
        description="After SIGTERM, how long the batches in flight may take to finish and commit before they are "
        "given up (uncommitted: a restart reads them again); keep it below the scheduler's uninstall grace (30s).",
    )
    logged_errors: int = Field(
        default=20, ge=0, description="Record errors logged one by one under the skip policy; then only counted."
    )
    log_format: Literal["text", "json"] = Field(
        default="text",
        description="Log lines (`ir.logformat`): text, `<ISO 8601 UTC ms> flow <name>: message`, or json, one "
        "object per line with ts, level, logger (`scoring_flows.<name>`) and message.",
    )
