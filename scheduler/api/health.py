"""`/healthz`, `/readyz`, `/metrics`: for probes and Prometheus; no token needed.

`/healthz` says the process answers; `/readyz` that it can also reach its database (a `SELECT 1` in a worker
thread, bounded by `READY_TIMEOUT_SECONDS` so a hung connection makes the probe fail rather than hang).
"""

from __future__ import annotations

from typing import Final

import anyio
import anyio.to_thread
from fastapi import APIRouter, Request, Response
from sqlalchemy import text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError

from scheduler.api.errors import ServiceUnavailable, error_responses
from scheduler.api.models import HealthOut, ReadyOut
from scheduler.metrics import CONTENT_TYPE, Metrics

router = APIRouter(tags=["health"])

READY_TIMEOUT_SECONDS: Final = 2.0


def _ping(engine: Engine) -> None:
    with engine.connect() as connection:
        connection.execute(text("SELECT 1"))


@router.get("/healthz", summary="Liveness", response_model=HealthOut)
async def healthz() -> HealthOut:
    return HealthOut(status="ok")


@router.get(
    "/readyz",
    summary="Readiness: the database answers",
    response_model=ReadyOut,
    responses=error_responses(503),
)
async def readyz(request: Request) -> ReadyOut:
    engine = getattr(request.app.state, "engine", None)
    if not isinstance(engine, Engine):
        raise ServiceUnavailable("the scheduler is starting or stopping", code="not_ready")
    where = engine.url.render_as_string(hide_password=True)
    try:
        with anyio.fail_after(READY_TIMEOUT_SECONDS):
            # abandon_on_cancel: on timeout the probe answers at once; the thread finishes on its own.
            await anyio.to_thread.run_sync(_ping, engine, abandon_on_cancel=True)
    except TimeoutError:
        raise ServiceUnavailable(
            f"the database {where} did not answer within {READY_TIMEOUT_SECONDS:g}s",
            code="database_unavailable",
            details={"database": where},
        ) from None
    except (SQLAlchemyError, OSError) as exc:
        cause = getattr(exc, "orig", None) or exc
        raise ServiceUnavailable(
            f"the database {where} is unreachable: {cause}".strip(),
            code="database_unavailable",
            details={"database": where},
        ) from exc
    return ReadyOut(status="ready", database="ok")


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE: {"schema": {"type": "string"}}}, "description": "Text format."}},
)
async def metrics(request: Request) -> Response:
    registry: Metrics = request.app.state.metrics
    body = await anyio.to_thread.run_sync(registry.render)
    return Response(body, media_type=CONTENT_TYPE)
