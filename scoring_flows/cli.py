"""`modelops flow --values FILE --flow NAME`: run one scoring flow of a rendered values document.

The local backend starts it with `MODELOPS_VALUES` and `MODELOPS_COMPONENT` (the same two things), and the URLs
of the scoring services in `MODELOPS_SERVICE_URLS` (JSON, name -> URL); `--service-url NAME=URL` adds or
overrides one. Settings come from `MODELOPS_FLOW_*` (`scoring_flows.settings`); `--checkpoint-dir` and
`--metrics-port` override theirs. `--fresh` starts over instead of resuming from the flow's checkpoint. Exit
codes: 0 done (or stopped by SIGTERM/SIGINT), 1 the flow failed (and said so to the scheduler), 2 a bad command
line or values document, 75 done but the scheduler did not accept the completion report (started again, the flow
reports it again from its finished checkpoint).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path
from typing import Annotated

import typer
import yaml
from pydantic import ValidationError

from ir.logformat import configure_logging
from ir.render import Values
from scoring_flows.runtime import Flow, FlowFailed
from scoring_flows.settings import FlowSettings

__all__ = ["flow_command", "load_values", "service_urls_from"]


def _fail(message: str, code: int = 2) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


def load_values(path: Path) -> Values:
    """The values document at `path`, validated; `ValueError` with a readable message when it is not one."""
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror or exc}") from exc
    except yaml.YAMLError as exc:
        raise ValueError(f"{path} is not YAML: {exc}") from exc
    try:
        return Values.model_validate(data)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        where = ".".join(str(part) for part in first["loc"])
        raise ValueError(f"{path} is not a values document: {where}: {first['msg']}") from None


def service_urls_from(environ: dict[str, str] | os._Environ[str], pairs: list[str]) -> dict[str, str]:
    """`MODELOPS_SERVICE_URLS` (JSON object), then `NAME=URL` pairs over it."""
    urls: dict[str, str] = {}
    raw = environ.get("MODELOPS_SERVICE_URLS")
    if raw:
        try:
            parsed = json.loads(raw)
        except ValueError as exc:
            raise ValueError(f"MODELOPS_SERVICE_URLS is not JSON: {exc}") from exc
        if not isinstance(parsed, dict) or not all(isinstance(v, str) for v in parsed.values()):
            raise ValueError("MODELOPS_SERVICE_URLS must be a JSON object of service name -> URL")
        urls.update(parsed)
    for pair in pairs:
        name, sep, url = pair.partition("=")
        if not sep or not name or not url:
            raise ValueError(f"--service-url takes NAME=URL (got {pair!r})")
        urls[name] = url
    return urls


def flow_command(
    values: Annotated[Path | None, typer.Option("--values", help="The values document (env MODELOPS_VALUES).")] = None,
    flow: Annotated[
        str | None, typer.Option("--flow", help="The scoring flow of the values to run (env MODELOPS_COMPONENT).")
    ] = None,
    service_url: Annotated[
        list[str], typer.Option("--service-url", help="NAME=URL of a scoring service (repeatable).")
    ] = [],  # noqa: B006
    checkpoint_dir: Annotated[
        Path | None, typer.Option(help="Where checkpoints are kept (default: checkpoints/ beside the values).")
    ] = None,
    metrics_port: Annotated[int | None, typer.Option(help="Serve Prometheus metrics on this port.")] = None,
    fresh: Annotated[
        bool,
        typer.Option(
            "--fresh",
            help="Start over: remove the flow's checkpoint and write its outputs again, instead of resuming.",
        ),
    ] = False,
    log_format: Annotated[
        str | None,
        typer.Option("--log-format", metavar="text|json", help="text or json lines (env MODELOPS_FLOW_LOG_FORMAT)."),
    ] = None,
) -> None:
    """Run one scoring flow: read its source, run its steps, write its sinks, report to the scheduler."""
    values_path = values or (Path(os.environ["MODELOPS_VALUES"]) if os.environ.get("MODELOPS_VALUES") else None)
    name = flow or os.environ.get("MODELOPS_COMPONENT")
    if values_path is None or not name:
        raise _fail("give --values FILE and --flow NAME (or MODELOPS_VALUES and MODELOPS_COMPONENT)")
    try:
        document = load_values(values_path)
        urls = service_urls_from(os.environ, service_url)
        overrides = {
            key: value
            for key, value in {
                "checkpoint_dir": checkpoint_dir,
                "metrics_port": metrics_port,
                "log_format": log_format,
            }.items()
            if value is not None
        }
        if log_format is None and "MODELOPS_FLOW_LOG_FORMAT" not in os.environ:
            overrides["log_format"] = document.global_.log_format  # the values' unless told otherwise
        settings = FlowSettings(**overrides)  # type: ignore[arg-type]
    except ValueError as exc:
        raise _fail(str(exc)) from None
    # Libraries' warnings (and any logging of the data channels) in the flow's own line format, on stderr.
    configure_logging("warning", settings.log_format)
    try:
        runner = Flow(
            document, name, settings=settings, service_urls=urls, values_path=values_path.resolve(), fresh=fresh
        )
    except FlowFailed as exc:
        raise _fail(str(exc)) from None
    code = asyncio.run(runner.run())
    # The run is over: a SIGTERM now (an uninstall right after the flow reported success) must not turn a clean
    # exit into death by signal. The flow's own handlers cover the time until the event loop closed.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, signal.SIG_IGN)
    sys.stdout.flush()
    if code:
        raise typer.Exit(code)
