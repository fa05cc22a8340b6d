"""`/api/v1/usage`: what API tokens use of their quotas (`max_concurrent_jobs`, `max_rows_per_day`).

A `read` token sees its own usage; an `admin` token every token's. The same figures are Prometheus gauges per
token name (`scheduler.metrics`).
"""

from __future__ import annotations

from datetime import UTC, datetime

from fastapi import APIRouter

from scheduler.api.deps import API_PREFIX, Service
from scheduler.api.errors import error_responses
from scheduler.api.models import TokenUsageOut, UsageOut
from scheduler.auth import ReadPrincipal

router = APIRouter(prefix=API_PREFIX, tags=["usage"])


@router.get(
    "/usage",
    summary="Quota usage per token",
    description="Unfinished jobs and rows written today (UTC) by each token's jobs, with the token's limits "
    "(null: none). A `read` token gets its own entry; an `admin` token every configured token's, and any other "
    "creator's with unfinished jobs or jobs today.",
    response_model=UsageOut,
    responses=error_responses(401, 403, 503),
)
async def usage(service: Service, principal: ReadPrincipal) -> UsageOut:
    entries = await service.usage(principal)
    day = datetime.now(UTC).date().isoformat()
    return UsageOut(day=day, tokens=[TokenUsageOut.of(entry) for entry in entries])
