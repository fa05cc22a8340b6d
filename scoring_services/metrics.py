"""Prometheus metrics of a scoring service, per model: requests, errors, latency, batch sizes, queue depth.

Each app owns its registry (no global state, so tests can run several apps in one process); the label children
of a model are looked up once and kept, because `metric.labels(...)` costs more than the observation itself.
Served at `GET /metrics`.
"""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)

__all__ = ["CONTENT_TYPE", "ModelMetrics", "ScoringMetrics"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096, 16384, 65536)


@dataclass(frozen=True, slots=True)
class ModelMetrics:
    """The label children of one model."""

    requests: Counter
    latency: Histogram
    batch_size: Histogram
    queue_depth: Gauge
    metrics: ScoringMetrics
    model: str

    def error(self, status: int) -> None:
        self.metrics.errors.labels(self.model, str(status)).inc()


class ScoringMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        if registry is None:
            ProcessCollector(registry=self.registry)
            PlatformCollector(registry=self.registry)
        r = self.registry
        self.requests = Counter("modelops_scoring_requests", "Inference requests received.", ["model"], registry=r)
        self.errors = Counter(
            "modelops_scoring_errors", "Inference requests answered with an error.", ["model", "code"], registry=r
        )
        self.latency = Histogram(
            "modelops_scoring_request_duration_seconds",
            "Time from a complete request body to the response body, per inference request.",
            ["model"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "modelops_scoring_batch_size",
            "Rows per model call (requests coalesced by adaptive batching add up).",
            ["model"],
            buckets=_BATCH_BUCKETS,
            registry=r,
        )
        self.queue_depth = Gauge(
            "modelops_scoring_queue_depth", "Requests waiting for a model call.", ["model"], registry=r
        )
        self._models: dict[str, ModelMetrics] = {}

    def model(self, name: str) -> ModelMetrics:
        children = self._models.get(name)
        if children is None:
            children = ModelMetrics(
                requests=self.requests.labels(name),
                latency=self.latency.labels(name),
                batch_size=self.batch_size.labels(name),
                queue_depth=self.queue_depth.labels(name),
                metrics=self,
                model=name,
            )
            self._models[name] = children
        return children

    def render(self) -> bytes:
        return generate_latest(self.registry)
