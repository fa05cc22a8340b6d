"""What the routers share: the API prefix, and the service of the running app as a dependency."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from scheduler.api.errors import ServiceUnavailable
from scheduler.service import SchedulerService

API_PREFIX = "/api/v1"
"""Where the versioned resources (pipelines, jobs) live. The routers carry it in full, so a route's `path`
is its whole template (what the latency histogram is labelled with)."""


async def _service(request: Request) -> SchedulerService:
    # async: a sync dependency would cost a worker-thread hop on every request
    service = getattr(request.app.state, "service", None)
    if not isinstance(service, SchedulerService):
        raise ServiceUnavailable("the scheduler is starting or stopping: try again shortly", code="not_started")
    return service


Service = Annotated[SchedulerService, Depends(_service)]
"""A route parameter giving the `SchedulerService` started by the app's lifespan."""
