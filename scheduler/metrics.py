"""Prometheus metrics of the scheduling server, in a registry of its own per app.

- `modelops_scheduler_jobs{state}`: jobs in each state, counted in the database at scrape time, so the figure
  is right across restarts and with several replicas sharing one database;
- `modelops_scheduler_job_transitions_total{from,to}`: state transitions, read from the append-only
  `job_events` table at scrape time (`from="none"` counts job creations); a counter, since events are never
  removed. Both are one GROUP BY each, cheap next to a 15-60 s scrape interval;
- `modelops_scheduler_token_active_jobs{token}`, `modelops_scheduler_token_rows_today{token}`: each configured
  API token's unfinished jobs and the rows its jobs created today (UTC) have written, and
  `modelops_scheduler_token_quota{token,quota}` its limits (`max_concurrent_jobs`, `max_rows_per_day`; only those
  set): what `GET /api/v1/usage` shows, read from the database at scrape time like the job figures;
- `modelops_scheduler_store_up`: 1 when the scrape could read the database, else 0 (the figures above are then
  left out rather than failing the scrape);
- `modelops_scheduler_leader`: 1 when this server's lifecycle engine runs the jobs (on PostgreSQL: holds the
  leader lock, `scheduler.leader`, asked of the database at scrape time), else 0;
- `modelops_scheduler_http_request_duration_seconds{method,route,status}`: request latency by route
  *template* (`/api/v1/jobs/{job_id}`), never the raw path, so ids do not explode the label space.

A registry per app (not prometheus_client's global one) keeps apps built in one process, as tests do,
independent.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from typing import Final

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy.engine import Engine as SqlEngine
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from scheduler.errors import StoreUnavailable
from scheduler.leader import current_leader
from scheduler.settings import TokenSpec
from scheduler.store import JobStore, TokenUsage

__all__ = ["CONTENT_TYPE", "Metrics", "RequestMetricsMiddleware"]

log = logging.getLogger(__name__)

CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"
_METHODS: Final = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
# Latency buckets from 1 ms to 10 s: API calls are a few ms; deploys of large bundles take seconds.
_BUCKETS: Final = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class _StoreCollector(Collector):
    """Jobs by state and transition counts, read from the store at each scrape."""

    def __init__(self) -> None:
        self.store: JobStore | None = None
        self.tokens: tuple[TokenSpec, ...] = ()

    def describe(self) -> Iterable[Metric]:
        # Declared without samples so registering does not query the database.
        yield GaugeMetricFamily("modelops_scheduler_jobs", "Jobs by state.", labels=["state"])
        yield CounterMetricFamily("modelops_scheduler_job_transitions", "Job state transitions.", labels=["from", "to"])
        yield GaugeMetricFamily("modelops_scheduler_store_up", "1 if the database answered the scrape.")

    def collect(self) -> Iterable[Metric]:
        store = self.store
        up = GaugeMetricFamily("modelops_scheduler_store_up", "1 if the database answered the scrape.")
        if store is None:
            up.add_metric([], 0)
            yield up
            return
        try:
            states = store.count_jobs_by_state()
            transitions = store.count_transitions()
            usage = store.token_usage([token.name for token in self.tokens]) if self.tokens else {}
        except StoreUnavailable as exc:
            log.warning("metrics: %s", exc.message)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        jobs = GaugeMetricFamily("modelops_scheduler_jobs", "Jobs by state.", labels=["state"])
        for state, count in sorted(states.items()):
            jobs.add_metric([state.value], count)
        yield jobs
        counter = CounterMetricFamily(
            "modelops_scheduler_job_transitions", "Job state transitions.", labels=["from", "to"]
        )
        for (from_state, to_state), count in sorted(
            transitions.items(), key=lambda item: (item[0][0] or "", item[0][1])
        ):
            counter.add_metric([from_state.value if from_state is not None else "none", to_state.value], count)
        yield counter
        if self.tokens:
            yield from self._token_metrics(usage)

    def _token_metrics(self, usage: dict[str, TokenUsage]) -> Iterable[Metric]:
        active = GaugeMetricFamily(
            "modelops_scheduler_token_active_jobs", "Unfinished jobs created by each API token.", labels=["token"]
        )
        rows = GaugeMetricFamily(
            "modelops_scheduler_token_rows_today",
            "Rows written today (UTC) by the jobs each API token created today.",
            labels=["token"],
        )
        quotas = GaugeMetricFamily(
            "modelops_scheduler_token_quota", "The quotas of each API token.", labels=["token", "quota"]
        )
        for token in self.tokens:
            found = usage.get(token.name)
            active.add_metric([token.name], found.active_jobs if found else 0)
            rows.add_metric([token.name], found.rows_today if found else 0)
            for quota, limit in (
                ("max_concurrent_jobs", token.max_concurrent_jobs),
                ("max_rows_per_day", token.max_rows_per_day),
            ):
                if limit is not None:
                    quotas.add_metric([token.name, quota], limit)
        yield active
        yield rows
        yield quotas


class _LeaderCollector(Collector):
    """`modelops_scheduler_leader`: whether this server's engine is the one running the jobs."""

    _HELP: Final = "1 if this server's lifecycle engine runs the jobs (holds the leader lock), else 0."

    def __init__(self) -> None:
        self.database: SqlEngine | None = None
        self.identity: str | None = None

    def describe(self) -> Iterable[Metric]:
        yield GaugeMetricFamily("modelops_scheduler_leader", self._HELP)

    def collect(self) -> Iterable[Metric]:
        gauge = GaugeMetricFamily("modelops_scheduler_leader", self._HELP)
        if self.database is None:
            gauge.add_metric([], 0)
        elif self.identity is None:
            gauge.add_metric([], 1)  # the app's own backend runs the jobs
        else:
            gauge.add_metric([], 1 if current_leader(self.database) == self.identity else 0)
        yield gauge


class Metrics:
    """The metrics of one app: its registry, the request histogram, and the store-backed collector."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.request_duration = Histogram(
            "modelops_scheduler_http_request_duration_seconds",
            "Time to answer an API request, by method, route template and status.",
            labelnames=("method", "route", "status"),
            buckets=_BUCKETS,
            registry=self.registry,
        )
        self._store_collector = _StoreCollector()
        self.registry.register(self._store_collector)
        self._leader_collector = _LeaderCollector()
        self.registry.register(self._leader_collector)

    def attach(self, store: JobStore | None, tokens: Iterable[TokenSpec] = ()) -> None:
        """Read job figures from `store` (None: the app is not started, report the store as down), and the
        usage of each of `tokens`."""
        self._store_collector.store = store
        self._store_collector.tokens = tuple(tokens)

    def lead(self, database: SqlEngine | None, engine_identity: str | None) -> None:
        """Say whether this server leads: its own backend runs the jobs (`engine_identity` None), or the engine
        `engine_identity` must hold `database`'s leader lock (`scheduler.leader`). `database` None: stopped."""
        self._leader_collector.database = database
        self._leader_collector.identity = engine_identity

    def render(self) -> bytes:
        """The Prometheus text exposition (queries the database: call it from a worker thread)."""
        return generate_latest(self.registry)

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        self.request_duration.labels(method if method in _METHODS else "OTHER", route, str(status)).observe(seconds)


class RequestMetricsMiddleware:
    """Pure ASGI middleware timing every HTTP request (streamed responses until their last byte)."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_and_note(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None)
            self.metrics.observe(
                str(scope.get("method", "")),
                template if isinstance(template, str) else "<unmatched>",
                status,
                time.perf_counter() - started,
            )
