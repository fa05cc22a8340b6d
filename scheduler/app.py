"""The scheduling server's app factory: `create_app(settings)` builds a FastAPI app; its lifespan starts it.

Nothing is created at import time. `create_app` checks what can be checked without I/O (API tokens versus the
bound host) and wires routes, error handlers and metrics; the lifespan, when the server starts:

1. creates the database engine and refuses to start unless the schema is exactly the one this code knows
   (the message says to run `modelops db upgrade`);
2. builds the `JobStore`, loads the job-token secret and the backend (`local` by default), and the service;
3. `await backend.recover()`: re-attach to or clean up the jobs a previous run left non-terminal;

and when it stops: `await backend.close()` (job states untouched: the next start recovers them), then disposes
of the engine.
"""

from __future__ import annotations

import gc
import importlib
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, cast

import anyio.to_thread
from fastapi import FastAPI
from sqlalchemy.engine import Engine

from scheduler.api import artifacts, health, jobs, pipelines, tasks, usage
from scheduler.api.docs import install_docs
from scheduler.api.errors import install_error_handlers
from scheduler.auth import OPEN_MODE_WARNING, Authenticator, OpenModeRefused
from scheduler.backends.base import Backend
from scheduler.db import check_schema, create_engine
from scheduler.errors import StoreUnavailable
from scheduler.jobcache import JobBodyCache
from scheduler.metrics import Metrics, RequestMetricsMiddleware
from scheduler.service import SchedulerService
from scheduler.sessions import SessionSigner, derive_key
from scheduler.settings import SchedulerSettings
from scheduler.store import JobStore
from scheduler.tokens import load_secret
from scheduler.ui import install_ui

__all__ = [
    "ENGINE_IDENTITY_ENV",
    "WORKER_SETTINGS_ENV",
    "BackendFactory",
    "StartupRefused",
    "create_app",
    "create_worker_app",
    "default_backend",
]

log = logging.getLogger(__name__)

BackendFactory = Callable[[JobStore, SchedulerSettings, bytes], Backend]
"""Builds the backend from the store, the settings and the job-token secret (tests pass a fake one)."""


class StartupRefused(RuntimeError):
    """The server must not start as configured; the message says why and what to do."""


def default_backend(store: JobStore, settings: SchedulerSettings, secret: bytes) -> Backend:
    """The backend `settings.backend` names. Imported here, at start, not when this module is imported."""
    if settings.backend == "local":
        module: Any = importlib.import_module("scheduler.backends.local")
        runas: Any = importlib.import_module("scheduler.runas")
        try:
            return cast(Backend, module.LocalBackend(store, settings, secret))
        except runas.RunAsRefused as exc:
            raise StartupRefused(f"cannot start the local backend: {exc}") from exc
    if settings.backend == "tekton":
        tekton: Any = importlib.import_module("scheduler.backends.tekton")
        try:
            return cast(Backend, tekton.TektonBackend(store, settings, secret))
        except tekton.K8sError as exc:
            raise StartupRefused(f"cannot start the tekton backend: {exc}") from exc
    raise StartupRefused(f"the {settings.backend!r} backend is not available in this version: use 'local'")


def create_app(
    settings: SchedulerSettings | None = None,
    *,
    backend_factory: BackendFactory | None = None,
    engine_identity: str | None = None,
) -> FastAPI:
    """The scheduling server as an ASGI app; serve it with uvicorn (the lifespan must run).

    `settings` default to `SchedulerSettings()` (the environment). Raises `StartupRefused` when no API token is
    configured and the server would listen beyond loopback. `engine_identity`: the app hands its jobs to a
    lifecycle engine elected among replicas (`scheduler.leader`), this one's; /metrics then says whether it
    leads (without it, the app's own backend runs the jobs: it always leads).
    """
    settings = settings if settings is not None else SchedulerSettings()
    try:
        auth = Authenticator(settings)
    except OpenModeRefused as exc:
        raise StartupRefused(str(exc)) from None
    factory = backend_factory or default_backend
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if auth.open_mode:
            log.warning(OPEN_MODE_WARNING)
        anyio.to_thread.current_default_thread_limiter().total_tokens = settings.worker_threads
        engine = create_engine(settings.database_url, pool_size=settings.worker_threads)
        try:
            store = await _open_store(engine)
            try:
                secret = await anyio.to_thread.run_sync(load_secret, settings.home)
            except (OSError, ValueError) as exc:
                raise StartupRefused(f"cannot start: the job-token secret is unusable: {exc}") from exc
            auth.sessions = SessionSigner(derive_key(secret), settings)
            backend = factory(store, settings, secret)
            try:
                await backend.recover()
                metrics.lead(engine, engine_identity)
                app.state.engine = engine
                service = SchedulerService(store, backend, settings, secret)
                app.state.job_bodies = JobBodyCache(store, service.get_job, jobs.detail_body, url=engine.url)
                app.state.service = service
                metrics.attach(store, settings.tokens)
                if settings.gc_freeze:
                    # What exists now (modules, the app, the routes' models) lives as long as the server: keep
                    # it out of the collector's later full passes, which otherwise walk it all again each time.
                    gc.collect()
                    gc.freeze()
                log.info(
                    "scheduler ready: %s backend, database %s",
                    backend.name,
                    engine.url.render_as_string(hide_password=True),
                )
                yield
            finally:
                metrics.attach(None)
                metrics.lead(None, None)
                service = app.state.service
                bodies = app.state.job_bodies
                app.state.service = None
                app.state.job_bodies = None
                app.state.engine = None
                if isinstance(bodies, JobBodyCache):
                    await bodies.close()
                if isinstance(service, SchedulerService):
                    await service.close()  # ends the job change feed and with it every event stream
                await backend.close()
        finally:
            await anyio.to_thread.run_sync(engine.dispose)

    app = FastAPI(
        title="ModelOps scheduler",
        version="1",
        summary="Deploys scoring-pipeline IR and runs it as jobs: install, wait, uninstall.",
        description="Pipelines are deployed as IR bundles and stored as immutable versions; jobs run a version "
        "through `install -> wait -> uninstall`. Every error has the body "
        '`{"error": {"code", "message", "details"}}`. Authenticate with `Authorization: Bearer <token>`.',
        lifespan=lifespan,
        docs_url=None,  # served by scheduler.api.docs, with the assets on this server (offline)
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.auth = auth
    app.state.metrics = metrics
    app.state.service = None
    app.state.job_bodies = None
    app.state.engine = None
    install_error_handlers(app)
    app.include_router(pipelines.router)
    app.include_router(jobs.router)
    app.include_router(tasks.router)
    app.include_router(artifacts.router)
    app.include_router(usage.router)
    app.include_router(health.router)
    install_docs(app)
    install_ui(app)
    app.add_middleware(RequestMetricsMiddleware, metrics=metrics)
    return app


async def _open_store(engine: Engine) -> JobStore:
    """A store on `engine` once the schema is known to be current; `StartupRefused` otherwise."""
    try:
        check = await anyio.to_thread.run_sync(check_schema, engine)
    except StoreUnavailable as exc:
        raise StartupRefused(f"cannot start: {exc.message}") from exc
    if not check.ok:
        raise StartupRefused(f"cannot start: {check.message}")
    return JobStore(engine)


MIN_WORKER_THREADS = 4
"""The fewest request threads (and pooled connections) an API worker of a multi-worker server gets."""

WORKER_SETTINGS_ENV = "MODELOPS_WORKER_SETTINGS"
"""Where `modelops serve --workers N` puts its settings (JSON) for the API worker processes it spawns."""
ENGINE_IDENTITY_ENV = "MODELOPS_ENGINE_IDENTITY"
"""Where it puts its lifecycle engine's identity in the leader election (`scheduler.leader`), for /metrics."""


def create_worker_app() -> FastAPI:
    """uvicorn's app factory in each API worker of a multi-worker server (`scheduler.dispatch`).

    The settings are the supervisor's, passed as JSON in `MODELOPS_WORKER_SETTINGS`; the backend hands jobs to
    the supervisor's lifecycle engine instead of running them.
    """
    import json
    import os

    from scheduler.dispatch import dispatching

    raw = os.environ.get(WORKER_SETTINGS_ENV)
    if raw is None:
        raise StartupRefused(f"cannot start an API worker: {WORKER_SETTINGS_ENV} is not set (use `modelops serve`)")
    settings = SchedulerSettings(**json.loads(raw))
    # The threads (and so the database connections) are shared out between the workers: N workers with the
    # full count each would open N times the connections one server is meant to use.
    share = max(MIN_WORKER_THREADS, settings.worker_threads // settings.workers)
    settings = settings.model_copy(update={"worker_threads": share})
    return create_app(
        settings, backend_factory=dispatching(default_backend), engine_identity=os.environ.get(ENGINE_IDENTITY_ENV)
    )
