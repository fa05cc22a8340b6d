"""`modelops scoring-service`: start a scoring service (uvicorn + uvloop + httptools) for some models.

Two ways to say which models:
- `--values <run dir>/values.yaml --service NAME [--port P]`: the scoring service of a rendered values
  document, as the local backend and the Helm chart start it (the port may also come from
  `MODELOPS_SCORING_PORT`);
- `--model NAME=RUNTIME:URI[:SHA256]` (repeatable), with `--option NAME.KEY=VALUE` for runtime options.
Startup logs say what was loaded, from where, and how long it took; SIGTERM and Ctrl-C shut down gracefully
(in-flight requests finish, models unload; exit code 0 after SIGTERM), without waiting for a model load
still running in a thread (it cannot be interrupted; the process exits past it). A model that fails to load at startup
stops the process with exit code 1, so whoever launched it sees the failure instead of waiting for a readiness
that never comes.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path
from types import FrameType
from typing import Annotated

import typer
import uvicorn

from ir.logformat import configure_logging
from scoring_services.app import create_app
from scoring_services.config import ConfigError, configs_from_values, parse_model_arg, parse_option_args
from scoring_services.settings import ScoringSettings
from scoring_services.types import ModelConfig

__all__ = ["run_server", "serve_command"]

log = logging.getLogger("scoring_services")


class _Server(uvicorn.Server):
    """uvicorn's server, except that a SIGTERM that ends in a graceful shutdown exits 0.

    uvicorn re-raises a captured signal once it has shut down, so the process would die "by SIGTERM"; but
    SIGTERM is how Kubernetes and the local backend ask a service to stop, and a clean stop is a success.
    """

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        super().handle_exit(sig, frame)
        if sig == signal.SIGTERM:
            self._captured_signals = [s for s in self._captured_signals if s != signal.SIGTERM]


def run_server(configs: list[ModelConfig], settings: ScoringSettings) -> int:
    """Serve until SIGTERM/SIGINT; the exit code (1 when a model failed to load at startup)."""
    failures: list[Exception] = []
    server: _Server | None = None

    def on_load_failure(exc: Exception) -> None:
        failures.append(exc)
        if settings.exit_on_load_failure and server is not None:
            log.error("stopping: a model failed to load")
            server.should_exit = True

    app = create_app(configs, settings, on_load_failure=on_load_failure)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        loop="uvloop" if importlib.util.find_spec("uvloop") else "asyncio",
        http="httptools" if importlib.util.find_spec("httptools") else "h11",
        lifespan="on",
        access_log=settings.access_log,
        log_level=settings.log_level,
        log_config=None,
        server_header=False,
        timeout_graceful_shutdown=30,
        backlog=2048,
    )
    server = _Server(config)
    log.info(
        "scoring service starting on %s:%d with %d model(s): %s; %d inference thread(s)",
        settings.host,
        settings.port,
        len(configs),
        ", ".join(f"{c.name} ({c.runtime})" for c in configs),
        settings.inference_threads,
    )
    server.run()
    return 1 if failures and settings.exit_on_load_failure else 0


def serve_command(
    model: Annotated[
        list[str], typer.Option("--model", "-m", help="A model to serve: NAME=RUNTIME:URI[:SHA256] (repeatable).")
    ] = [],  # noqa: B006
    option: Annotated[
        list[str], typer.Option("--option", help="A runtime option of a --model: NAME.KEY=VALUE (repeatable).")
    ] = [],  # noqa: B006
    values: Annotated[
        Path | None, typer.Option("--values", help="A values document from 'modelops ir render'.")
    ] = None,
    service: Annotated[
        list[str], typer.Option("--service", help="The scoring service(s) of --values to serve (default: all).")
    ] = [],  # noqa: B006
    host: Annotated[str | None, typer.Option(help="Listen address (env MODELOPS_SCORING_HOST).")] = None,
    port: Annotated[int | None, typer.Option(help="TCP port (env MODELOPS_SCORING_PORT, default 8080).")] = None,
    threads: Annotated[
        int | None, typer.Option(help="Inference threads (env MODELOPS_SCORING_INFERENCE_THREADS).")
    ] = None,
    batching: Annotated[
        bool | None, typer.Option("--batching/--no-batching", help="Adaptive batching (on unless a model says no).")
    ] = None,
    max_batch_size: Annotated[int | None, typer.Option(help="maxBatchSize of --model models (default 64).")] = None,
    max_latency_ms: Annotated[float | None, typer.Option(help="maxLatencyMs of --model models (default 5).")] = None,
    log_level: Annotated[str | None, typer.Option(help="debug, info, warning or error.")] = None,
    log_format: Annotated[
        str | None,
        typer.Option("--log-format", metavar="text|json", help="text or json lines (env MODELOPS_SCORING_LOG_FORMAT)."),
    ] = None,
) -> None:
    """Serve models over the Open Inference Protocol (KServe V2 REST)."""
    overrides: dict[str, object] = {
        key: value
        for key, value in {
            "host": host,
            "port": port,
            "inference_threads": threads,
            "batching": batching,
            "default_max_batch_size": max_batch_size,
            "default_max_latency_ms": max_latency_ms,
            "log_level": log_level,
            "log_format": log_format,
        }.items()
        if value is not None
    }
    try:
        settings = ScoringSettings(**overrides)  # type: ignore[arg-type]
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    configs: list[ModelConfig] = []
    try:
        if values is not None:
            found, globals_ = configs_from_values(values, service)
            configs.extend(found)
            if log_level is None and globals_.get("logLevel") in ("debug", "info", "warning", "error"):
                settings = settings.model_copy(update={"log_level": globals_["logLevel"]})
            # The values' format unless the command line or MODELOPS_SCORING_LOG_FORMAT chose one.
            told = log_format is not None or "MODELOPS_SCORING_LOG_FORMAT" in os.environ
            if not told and globals_.get("logFormat") in ("text", "json"):
                settings = settings.model_copy(update={"log_format": globals_["logFormat"]})
        elif service:
            raise ConfigError("--service needs --values")
        options = parse_option_args(option)
        configs.extend(parse_model_arg(item, settings, options) for item in model)
        unknown = set(options) - {c.name for c in configs}
        if unknown:
            raise ConfigError(f"--option names model(s) not served: {', '.join(sorted(unknown))}")
    except ConfigError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    if not configs:
        typer.echo("error: nothing to serve: give --values FILE [--service NAME] or --model NAME=RUNTIME:URI", err=True)
        raise typer.Exit(2)
    configure_logging(settings.log_level, settings.log_format)
    code = run_server(configs, settings)
    _exit_now_if_threads_are_busy(code)
    if code:
        raise typer.Exit(code)


_THREADS_SETTLE_SECONDS = 0.5
"""After the server stopped, how long idle worker threads get to end before busy ones are left behind."""


def _exit_now_if_threads_are_busy(code: int) -> None:
    """Exit at once, with `code`, if a thread still works once the server has stopped.

    A model load (or a long inference) in a worker thread cannot be interrupted, and Python joins such threads
    before the process ends: a service stopped by SIGTERM while it loads a model would otherwise stay until
    the load is done, and be killed after the grace. Everything worth keeping (models unloaded, logs) is done.
    """
    deadline = time.monotonic() + _THREADS_SETTLE_SECONDS
    others = [t for t in threading.enumerate() if t is not threading.current_thread() and not t.daemon]
    for thread in others:
        thread.join(max(0.0, deadline - time.monotonic()))
    busy = [t.name for t in others if t.is_alive()]
    if not busy:
        return
    log.warning(
        "exiting without waiting for %d busy thread(s) (a model load or an inference): %s", len(busy), ", ".join(busy)
    )
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
