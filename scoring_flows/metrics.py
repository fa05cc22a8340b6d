"""Prometheus metrics of a flow process: records read, written, failed and filtered, batches, score requests.

The flow owns its registry; `serve` exposes it on `MODELOPS_FLOW_METRICS_PORT` (the Helm chart's scrape port).
"""

from __future__ import annotations

import math
from collections import deque
from typing import Any, Final

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

__all__ = ["FlowMetrics", "ServiceFigures"]

LATENCY_WINDOW: Final = 1024
"""The latency figures a flow reports are over its last this many requests to a service: recent enough to show
a service slowing down, and a sort of 1024 floats per report costs nothing."""

_BATCH_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class FlowMetrics:
    def __init__(self, flow: str) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        labels = ["flow"]
        self.read = Counter("modelops_flow_records_read", "Records read from the source.", labels, registry=r).labels(
            flow
        )
        self.written = Counter(
            "modelops_flow_records_written", "Records written to the sinks.", labels, registry=r
        ).labels(flow)
        self.failed = Counter(
            "modelops_flow_records_failed", "Records that failed (skipped or dead-lettered).", labels, registry=r
        ).labels(flow)
        self.filtered = Counter(
            "modelops_flow_records_filtered", "Records a filter step left out.", labels, registry=r
        ).labels(flow)
        self.batches = Histogram(
            "modelops_flow_batch_seconds",
            "Time of one batch through the steps.",
            labels,
            buckets=_BATCH_BUCKETS,
            registry=r,
        ).labels(flow)
        self.in_flight = Gauge(
            "modelops_flow_batches_in_flight", "Batches in the steps now.", labels, registry=r
        ).labels(flow)
        self.commits = Counter("modelops_flow_commits", "Commits of the sinks.", labels, registry=r).labels(flow)
        self.score_seconds = Histogram(
            "modelops_flow_score_request_seconds",
            "Time of one score request, retries included.",
            ["flow", "service"],
            buckets=_BATCH_BUCKETS,
            registry=r,
        )
        self.score_retries = Counter(
            "modelops_flow_score_retries", "Score requests retried.", ["flow", "service"], registry=r
        )
        self.flow = flow

    def serve(self, port: int, host: str) -> int:
        """Serve the metrics over HTTP in a daemon thread; the port (a free one when `port` is 0)."""
        server, _thread = start_http_server(port, addr=host, registry=self.registry)
        return int(server.server_address[1])


class ServiceFigures:
    """What a flow saw of one scoring service, for its progress reports: requests answered, rows in them, errors,
    retries, and the latency of the last `LATENCY_WINDOW` requests (retries included)."""

    def __init__(self) -> None:
        self.requests = 0
        self.rows = 0
        self.errors = 0
        self.retries = 0
        self._latencies: deque[float] = deque(maxlen=LATENCY_WINDOW)

    def answered(self, seconds: float, rows: int) -> None:
        self.requests += 1
        self.rows += rows
        self._latencies.append(seconds)

    def report(self) -> dict[str, Any]:
        """The figures as `POST /jobs/{id}/progress` takes them (latencies in milliseconds)."""
        figures: dict[str, Any] = {
            "requests": self.requests,
            "rows": self.rows,
            "errors": self.errors,
            "retries": self.retries,
            "latency_ms": None,
        }
        if self._latencies:
            ordered = sorted(self._latencies)
            figures["latency_ms"] = {
                "mean": round(1000 * sum(ordered) / len(ordered), 3),
                "p50": round(1000 * _quantile(ordered, 0.50), 3),
                "p99": round(1000 * _quantile(ordered, 0.99), 3),
            }
        return figures


def _quantile(ordered: list[float], q: float) -> float:
    """The nearest-rank quantile of sorted values (the value at or above a fraction `q` of them)."""
    rank = max(0, min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1))
    return ordered[rank]
