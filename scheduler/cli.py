"""The `modelops` command line: one typer app with a sub-command group per area.

- `modelops ir validate|render|schema` work on IR files directly, without a server;
- `modelops serve`, `db upgrade|check` and `token new|hash` run or configure a scheduling server on this machine;
- `modelops pipeline ...`, `job ...` and `run` talk to a scheduler over its REST API (`scheduler.client`):
  `--server`/`MODELOPS_SERVER` (default http://127.0.0.1:8787) and `--token`/`MODELOPS_TOKEN`. Without a
  server configured, `modelops run` starts an embedded one (`scheduler.embedded`).

Errors are one line on stderr that names what failed; the exit code is 0 only on success, 2 for a bad command
line, 130 after Ctrl-C.
"""

from __future__ import annotations

import json
import signal
import sys
import time
import uuid
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn
from urllib.parse import urlsplit

import typer
from rich import box
from rich.console import Console
from rich.live import Live
from rich.markup import escape
from rich.spinner import Spinner
from rich.table import Table
from rich.text import Text

import ir
from ir.schema import dumps, ir_schema, values_schema
from scheduler.client import (
    DEFAULT_SERVER,
    ApiError,
    ClientError,
    Job,
    JobDetail,
    SchedulerClient,
    SchedulerUnreachable,
)
from scheduler.joblogs import run_dir
from scheduler.states import JobState, Task

if TYPE_CHECKING:
    from scheduler.app import BackendFactory
    from scheduler.embedded import EmbeddedServer
    from scheduler.settings import SchedulerSettings

app = typer.Typer(
    name="modelops",
    help="Scoring pipelines for machine-learning models: validate IR, run the scheduler, deploy pipelines, run jobs.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
ir_app = typer.Typer(help="Validate and render pipeline IR bundles.", no_args_is_help=True)
app.add_typer(ir_app, name="ir")

# The scoring service (issue 4) lives in scoring_services; its command is only mounted here.
from scoring_services.cli import serve_command  # noqa: E402

app.command("scoring-service")(serve_command)

# The flow runtime (issue 5) lives in scoring_flows; its command is only mounted here.
from scoring_flows.cli import flow_command  # noqa: E402

app.command("flow")(flow_command)

# The pipeline tasks of a job on Kubernetes (issue 6): `modelops task install|wait|uninstall`.
from scheduler.taskcmd import task_app  # noqa: E402

app.add_typer(task_app, name="task")

# markup off: messages quote user input (paths, keys, values), and '[/x]' in them must print as it is
err = Console(stderr=True, highlight=False, soft_wrap=True, markup=False)
out = Console(highlight=False, soft_wrap=True, markup=False)


def _fail_ir(exc: ir.IRValidationError) -> NoReturn:
    count = len(exc.issues)
    for issue in exc.issues:
        err.print(f"[red]error[/red] {escape(str(issue))}", markup=True)
    err.print(f"{count} problem{'s' if count != 1 else ''} found.")
    raise typer.Exit(1)


def _pairs(items: list[str], option: str) -> dict[str, str]:
    pairs: dict[str, str] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name:
            err.print(f"error: {option} expects NAME=VALUE, got {item!r}")
            raise typer.Exit(2)
        pairs[name] = value
    return pairs


PathArg = Annotated[
    Path, typer.Argument(help="A folder of IR files, one multi-document YAML/JSON file, or a .tar.gz bundle.")
]


@ir_app.command("validate")
def ir_validate(
    path: PathArg,
    no_artifacts: Annotated[
        bool, typer.Option("--no-artifacts", help="Check the documents only, not the model artifacts they name.")
    ] = False,
) -> None:
    """Check an IR bundle and its local model artifacts; print every problem with its file, document and path.

    Artifacts (relative paths resolve against the bundle's folder): each exists, matches its sha256, and has the
    declared inputs and outputs where the runtime tells them without running code (ONNX graphs, torch.export
    programs, transformers' config.json; pickles are never opened). Remote artifacts are not checked.
    """
    try:
        bundle = ir.load_bundle(path)
    except ir.IRValidationError as exc:
        _fail_ir(exc)
    lines: list[str] = []
    if not no_artifacts:
        from scheduler.artifact_check import check_artifacts

        report = check_artifacts(bundle, path)
        if report.issues:
            _fail_ir(ir.IRValidationError(report.issues))
        lines = report.lines
    out.print(
        f"{path}: pipeline '{bundle.name}' is valid: {len(bundle.pipeline.spec.flows)} flow(s), "
        f"{len(bundle.used_models())} model(s), {len(bundle.used_channels())} data channel(s); "
        f"digest {bundle.digest()[:12]}"
    )
    for line in lines:
        out.print(f"  {line}")


@ir_app.command("render")
def ir_render(
    path: PathArg,
    param: Annotated[list[str], typer.Option("--param", "-p", help="A pipeline parameter, NAME=VALUE.")] = [],  # noqa: B006
    set_: Annotated[
        list[str], typer.Option("--set", help="A global setting, KEY=VALUE, e.g. logLevel=debug, image.tag=1.2.")
    ] = [],  # noqa: B006
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Write here instead of stdout.")] = None,
) -> None:
    """Render the one Helm values document `install` would deploy."""
    params = _pairs(param, "--param")
    try:
        bundle = ir.load_bundle(path)
        sets = list(set_)
        if not any(s.startswith("modelStore=") for s in sets):
            base = path if path.is_dir() else path.parent
            sets.append(f"modelStore={base.resolve().as_uri()}")
        values = ir.render(bundle, params, ir.parse_sets(sets))
    except ir.IRValidationError as exc:
        _fail_ir(exc)
    text = ir.to_yaml(values)
    if output is None:
        sys.stdout.write(text)
        return
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(text)
    except OSError as exc:
        err.print(f"error: cannot write {output}: {exc.strerror}")
        raise typer.Exit(1) from None
    err.print(
        f"wrote {output} ({len(values.scoring_services)} scoring service(s), {len(values.scoring_flows)} flow(s))"
    )


@ir_app.command("schema")
def ir_schema_command(
    kind: Annotated[str, typer.Argument(help="'ir' for the IR documents, 'values' for the rendered values.")] = "ir",
) -> None:
    """Print a JSON Schema: of the IR documents, or of the rendered values."""
    if kind not in ("ir", "values"):
        err.print(f"error: unknown schema {kind!r}: choose 'ir' or 'values'")
        raise typer.Exit(2)
    sys.stdout.write(dumps(ir_schema() if kind == "ir" else values_schema()))


# ================================================================================================ the scheduler
#
# `serve`, `db` and `token` work on this machine's configuration (MODELOPS_SCHEDULER_*); `pipeline`, `job` and
# `run` talk to a scheduler over its REST API through `scheduler.client`. The server side (FastAPI, SQLAlchemy)
# is imported inside the commands that need it, so `modelops job list` starts fast.

pipeline_app = typer.Typer(help="Deploy pipelines to a scheduler.", no_args_is_help=True)
job_app = typer.Typer(help="Start, list, inspect and cancel jobs; read their logs.", no_args_is_help=True)
db_app = typer.Typer(help="The scheduler's database.", no_args_is_help=True)
token_app = typer.Typer(help="API tokens for the scheduler.", no_args_is_help=True)
app.add_typer(pipeline_app, name="pipeline")
app.add_typer(job_app, name="job")
app.add_typer(db_app, name="db")
app.add_typer(token_app, name="token")

SERVER_ENV = "MODELOPS_SERVER"
TOKEN_ENV = "MODELOPS_TOKEN"
POLL_SECONDS = 0.5
"""How often `modelops run` asks for the job's state: twice a second is live enough, and light on the server."""
RATE_WINDOW_SECONDS = 5.0
"""The records rate shown by `modelops run` is averaged over this window."""
EXIT_INTERRUPTED = 130
"""Exit status after Ctrl-C, as shells report a SIGINT death (128 + 2)."""

_STATE_STYLE = {
    "PENDING": "dim",
    "INSTALLING": "cyan",
    "RUNNING": "blue",
    "SUCCEEDED": "green",
    "FAILED": "red",
    "CANCELLING": "yellow",
    "CANCELLED": "yellow",
}

ServerOption = Annotated[
    str | None,
    typer.Option(
        "--server",
        envvar=SERVER_ENV,
        show_default=False,
        help=f"Scheduler URL (env {SERVER_ENV}; default {DEFAULT_SERVER}).",
    ),
]
TokenOption = Annotated[
    str | None,
    typer.Option("--token", envvar=TOKEN_ENV, show_default=False, help=f"API bearer token (env {TOKEN_ENV})."),
]
ParamOption = Annotated[list[str], typer.Option("--param", "-p", help="A pipeline parameter, NAME=VALUE (repeatable).")]
JsonOption = Annotated[bool, typer.Option("--json", help="Print the API's JSON instead of a table.")]


def _fail(message: str, code: int = 1) -> NoReturn:
    """Print `error: message` as one line (a driver's multi-line text joined) and exit with `code`."""
    one_line = " ".join(part.strip() for part in message.splitlines() if part.strip())
    err.print(f"error: {one_line}")
    raise typer.Exit(code)


def _print_api_error(exc: ApiError, what: str) -> None:
    """One line naming what failed and the server's message; for 422 every problem on its own line first."""
    lines = exc.detail_lines() if exc.status == 422 else []
    for line in lines:
        err.print(line)
    hint = ""
    if exc.status == 401:
        hint = f" (give a token with --token or {TOKEN_ENV})"
    elif exc.status == 403:
        hint = " (use a token with the needed scope)"
    err.print(f"error: {what}: {exc.message}{hint}")


@contextmanager
def _api(server: str | None, token: str | None, what: str) -> Iterator[SchedulerClient]:
    """A client of the configured scheduler; any failure becomes one error line on stderr and exit code 1."""
    url = server or DEFAULT_SERVER
    client = SchedulerClient(url, token)
    try:
        yield client
    except SchedulerUnreachable as exc:
        if server is None:
            _fail(f"no scheduler at {url}: start one with `modelops serve` or set {SERVER_ENV}")
        _fail(exc.message)
    except ApiError as exc:
        _print_api_error(exc, what)
        raise typer.Exit(1) from None
    except ClientError as exc:
        _fail(f"{what}: {exc.message}")
    finally:
        client.close()


def _print_table(table: Table) -> None:
    """On a terminal, fit the table to its width; elsewhere (a pipe, a file) never cut a column."""
    if out.is_terminal:
        out.print(table)
    else:  # `print(width=)` cannot widen a console beyond its width, so a wide one of our own
        Console(file=sys.stdout, width=1000, highlight=False, markup=False, color_system=None).print(table)


def _when(moment: datetime | None) -> str:
    return moment.astimezone().strftime("%Y-%m-%d %H:%M:%S") if moment is not None else "-"


def _state(state: str) -> Text:
    return Text(state, style=_STATE_STYLE.get(state, ""))


def _duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60:02d}:{rest % 60:02d}"


def _settings(**overrides: Any) -> SchedulerSettings:
    """`SchedulerSettings()` from the environment plus the given options; a bad setting is one line, exit 1."""
    from pydantic import ValidationError

    from scheduler.settings import SchedulerSettings

    given = {key: value for key, value in overrides.items() if value is not None}
    try:
        return SchedulerSettings(**given)
    except ValidationError as exc:
        for error in exc.errors(include_url=False):
            if error["type"] == "default_factory_not_called":
                continue  # a default computed from another setting that is itself wrong: that one is reported
            message = str(error["msg"]).removeprefix("Value error, ")
            field = ".".join(str(part) for part in error["loc"])
            if not field:  # a rule across settings (e.g. workers and the database)
                err.print(f"error: invalid settings: {message}")
                continue
            source = f"--{field}" if field in given else f"MODELOPS_SCHEDULER_{field.upper()}"
            err.print(f"error: invalid setting {source}: {message}")
        raise typer.Exit(1) from None


# ------------------------------------------------------------------------------------------------ serve


@app.command("serve")
def serve(
    host: Annotated[
        str | None, typer.Option(help="Interface to listen on (env MODELOPS_SCHEDULER_HOST, default 127.0.0.1).")
    ] = None,
    port: Annotated[int | None, typer.Option(help="TCP port (env MODELOPS_SCHEDULER_PORT, default 8787).")] = None,
    access_log: Annotated[bool, typer.Option("--access-log/--no-access-log", help="Log every request.")] = False,
    workers: Annotated[
        int | None,
        typer.Option(
            help="API worker processes (env MODELOPS_SCHEDULER_WORKERS, default 1); more than 1 needs PostgreSQL."
        ),
    ] = None,
) -> None:
    """Run the scheduling server (REST API and the lifecycle engine) until Ctrl-C or SIGTERM."""
    run_server(_settings(host=host, port=port, workers=workers), access_log=access_log)


def run_server(
    settings: SchedulerSettings, *, backend_factory: BackendFactory | None = None, access_log: bool = False
) -> None:
    """What `modelops serve` does: check the schema, hold the home, serve with uvicorn until stopped.

    `backend_factory` is for the benchmark (the local backend deploying test programs); errors exit like
    every command (one line, exit code 1).
    """
    import uvicorn

    from scheduler.app import StartupRefused, create_app
    from scheduler.embedded import EmbeddedServerError, HomeLock, prepare_database
    from scheduler.tokens import load_secret

    try:
        prepare_database(settings, migrate=False)
        load_secret(settings.home)  # the lifespan loads it too; checked here to fail with one line, not a trace
        application = create_app(settings, backend_factory=backend_factory)
    except (OSError, ValueError) as exc:
        _fail(f"cannot start: the job-token secret is unusable: {exc}")
    except EmbeddedServerError as exc:
        _fail(f"cannot start: {exc}")
    except StartupRefused as exc:
        _fail(str(exc) if str(exc).startswith("cannot start") else f"cannot start: {exc}")
    lock = HomeLock(settings.home) if settings.backend == "local" else None
    if lock is not None:
        try:
            lock.acquire(settings.public_url)
        except EmbeddedServerError as exc:
            _fail(f"cannot start: {exc}")
    try:
        if settings.workers > 1:
            del application  # built above only to refuse a bad configuration with one line
            _serve_with_workers(settings, backend_factory, access_log)
        else:
            uvicorn.run(
                application,
                host=settings.host,
                port=settings.port,
                log_config=_serve_logging(settings.log_level.upper()),
                access_log=access_log,
                lifespan="on",
                timeout_graceful_shutdown=10,
            )
    finally:
        if lock is not None:
            lock.release()


def _serve_with_workers(settings: SchedulerSettings, backend_factory: BackendFactory | None, access_log: bool) -> None:
    """`--workers N`: the lifecycle engine in this process, N uvicorn API workers beside it (scheduler.dispatch)."""
    import json
    import logging.config
    import os

    import uvicorn

    from scheduler.app import WORKER_SETTINGS_ENV, default_backend
    from scheduler.dispatch import Engine

    log_config = _serve_logging(settings.log_level.upper())
    logging.config.dictConfig(log_config)
    engine = Engine(settings, backend_factory or default_backend)
    engine.start()
    os.environ[WORKER_SETTINGS_ENV] = json.dumps(settings.model_dump(mode="json"))
    try:
        uvicorn.run(
            "scheduler.app:create_worker_app",
            factory=True,
            workers=settings.workers,
            host=settings.host,
            port=settings.port,
            log_config=log_config,
            access_log=access_log,
            lifespan="on",
            timeout_graceful_shutdown=10,
        )
    finally:
        engine.stop()


def _serve_logging(level: str) -> dict[str, Any]:
    """uvicorn's logging configuration, with the scheduler's own loggers printed the same way."""
    import copy

    from uvicorn.config import LOGGING_CONFIG

    config: dict[str, Any] = copy.deepcopy(LOGGING_CONFIG)
    for name in ("scheduler", "ir"):
        config["loggers"][name] = {"handlers": ["default"], "level": level, "propagate": False}
    return config


# ------------------------------------------------------------------------------------------------ db


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Migrate the configured database (MODELOPS_SCHEDULER_DATABASE_URL) to this version's schema."""
    from scheduler.db import create_engine, current_revision, head_revision, upgrade
    from scheduler.errors import StoreUnavailable

    settings = _settings()
    engine = create_engine(settings.database_url)
    where = engine.url.render_as_string(hide_password=True)
    try:
        before = current_revision(engine)
        head = head_revision()
        if before == head:
            out.print(f"{where}: already at revision {head}")
            return
        upgrade(settings.database_url)
        after = current_revision(engine)
    except StoreUnavailable as exc:
        _fail(exc.message)
    except Exception as exc:  # alembic and the driver raise many types; the user needs the first line only
        _fail(f"upgrading {where} failed: {type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc) else ''}")
    finally:
        engine.dispose()
    out.print(f"{where}: upgraded from {before or 'an empty database'} to {after}")


@db_app.command("check")
def db_check() -> None:
    """Say whether the configured database is at this version's schema (exit code 1 if not)."""
    from scheduler.db import check_schema, create_engine
    from scheduler.errors import StoreUnavailable

    engine = create_engine(_settings().database_url)
    try:
        check = check_schema(engine)
    except StoreUnavailable as exc:
        _fail(exc.message)
    finally:
        engine.dispose()
    if not check.ok:
        _fail(check.message)
    out.print(check.message)


# ------------------------------------------------------------------------------------------------ tokens


@token_app.command("new")
def token_new(
    name: Annotated[str, typer.Argument(help="Who the token is for, e.g. ci or alice (recorded as created_by).")],
    scope: Annotated[str, typer.Option(help="read, write or admin.")] = "write",
) -> None:
    """Make a random API token: prints it (for the client) and its hashed entry (for the server's settings)."""
    import secrets

    from scheduler.settings import TokenSpec, hash_token

    plaintext = f"mo_{secrets.token_urlsafe(32)}"
    try:
        spec = TokenSpec.model_validate({"name": name, "scope": scope, "sha256": hash_token(plaintext)})
    except ValueError as exc:
        _fail(f"invalid token: {_first_error(exc)}", 2)
    out.print(f"{TOKEN_ENV}={plaintext}")
    out.print(f"MODELOPS_SCHEDULER_TOKENS={spec}")
    err.print(
        f"Give {TOKEN_ENV} to the client; add the MODELOPS_SCHEDULER_TOKENS entry to the server's "
        "(comma-separated). The plaintext is not stored anywhere: keep it now."
    )


@token_app.command("hash")
def token_hash() -> None:
    """Print the SHA-256 under which a token is configured; reads the token from stdin (one line)."""
    from scheduler.settings import hash_token

    plaintext = sys.stdin.readline().strip()
    if not plaintext:
        _fail('give the token on stdin, e.g. `printf %s "$TOKEN" | modelops token hash`', 2)
    out.print(hash_token(plaintext))


def _first_error(exc: Exception) -> str:
    errors = getattr(exc, "errors", None)
    if callable(errors):
        found = errors()
        if found:
            return f"{'.'.join(str(p) for p in found[0]['loc'])}: {found[0]['msg']}"
    return str(exc).splitlines()[0]


# ------------------------------------------------------------------------------------------------ pipeline


@pipeline_app.command("deploy")
def pipeline_deploy(
    path: PathArg,
    server: ServerOption = None,
    token: TokenOption = None,
    as_json: JsonOption = False,
) -> None:
    """Send an IR bundle to the scheduler; it is stored as the next version (or the same one, if unchanged)."""
    with _api(server, token, f"deploying {path}") as client:
        deployment = client.deploy(path)
    if as_json:
        out.print_json(deployment.model_dump_json())
        return
    status = "created" if deployment.created else "existing (same IR already deployed)"
    out.print(f"pipeline {deployment.name} version {deployment.version}: {status}; digest {deployment.digest}")


@pipeline_app.command("list")
def pipeline_list(server: ServerOption = None, token: TokenOption = None, as_json: JsonOption = False) -> None:
    """The deployed pipelines and their versions."""
    with _api(server, token, "listing pipelines") as client:
        pipelines = client.list_pipelines()
    if as_json:
        out.print_json(json.dumps([p.model_dump(mode="json") for p in pipelines]))
        return
    if not pipelines:
        err.print("no pipelines deployed yet: `modelops pipeline deploy PATH`")
        return
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False)
    for column in ("PIPELINE", "LATEST", "VERSIONS", "DIGEST", "DEPLOYED", "BY"):
        table.add_column(column, no_wrap=True)
    for pipeline in pipelines:
        latest = pipeline.versions[-1]
        table.add_row(
            pipeline.name,
            str(pipeline.latest_version),
            str(len(pipeline.versions)),
            latest.digest[:12],
            _when(latest.created_at),
            latest.created_by or "-",
        )
    _print_table(table)


# ------------------------------------------------------------------------------------------------ job


@job_app.command("start")
def job_start(
    pipeline: Annotated[str, typer.Argument(help="The pipeline's name.")],
    version: Annotated[int | None, typer.Option(min=1, help="The version to run (default: the latest).")] = None,
    param: ParamOption = [],  # noqa: B006
    idempotency_key: Annotated[
        str | None, typer.Option(help="Retrying with the same key returns the same job instead of a new one.")
    ] = None,
    server: ServerOption = None,
    token: TokenOption = None,
) -> None:
    """Start a job; prints its id only (so `JOB=$(modelops job start digits)` works)."""
    parameters = _pairs(param, "--param")
    with _api(server, token, f"starting a job of {pipeline}") as client:
        job = client.create_job(pipeline, version=version, parameters=parameters, idempotency_key=idempotency_key)
    out.print(str(job.id))


@job_app.command("list")
def job_list(
    state: Annotated[
        JobState | None, typer.Option(case_sensitive=False, help="Only jobs in this state.", show_default=False)
    ] = None,
    pipeline: Annotated[str | None, typer.Option(help="Only jobs of this pipeline.")] = None,
    limit: Annotated[int, typer.Option(min=1, help="At most this many jobs (newest first).")] = 20,
    cursor: Annotated[str | None, typer.Option(help="Continue after a previous page (its printed cursor).")] = None,
    server: ServerOption = None,
    token: TokenOption = None,
    as_json: JsonOption = False,
) -> None:
    """Jobs, newest first, as a table."""
    with _api(server, token, "listing jobs") as client:
        page = client.list_jobs(state=state, pipeline=pipeline, limit=limit, cursor=cursor)
    if as_json:
        out.print_json(page.model_dump_json())
        return
    if not page.items:
        err.print("no jobs" + (" match" if state or pipeline or cursor else " yet"))
        return
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False)
    table.add_column("ID", no_wrap=True, min_width=36)
    table.add_column("PIPELINE", overflow="fold")
    table.add_column("STATE", no_wrap=True)
    table.add_column("TASK")
    table.add_column("CREATED")
    table.add_column("REASON", overflow="fold")
    for job in page.items:
        table.add_row(
            str(job.id),
            f"{job.pipeline} v{job.version}",
            _state(job.state.value),
            job.task.value if job.task else "-",
            job.created_at.astimezone().strftime("%m-%d %H:%M:%S"),
            job.reason or "-",
        )
    _print_table(table)
    if page.next_cursor:
        err.print(f"more: --cursor {page.next_cursor}")


@job_app.command("show")
def job_show(
    job_id: Annotated[str, typer.Argument(metavar="ID", help="The job's id.")],
    server: ServerOption = None,
    token: TokenOption = None,
    as_json: JsonOption = False,
) -> None:
    """A job's state, task, reason and message, timestamps, progress, and its events."""
    with _api(server, token, f"reading job {job_id}") as client:
        job = client.get_job(job_id)
    if as_json:
        out.print_json(job.model_dump_json(by_alias=True))
        return
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column(overflow="fold")
    grid.add_row("job", str(job.id))
    grid.add_row("pipeline", f"{job.pipeline} version {job.version}")
    grid.add_row("state", _state(job.state.value))
    grid.add_row("task", job.task.value if job.task else "-")
    grid.add_row("reason", job.reason or "-")
    grid.add_row("message", Text(job.message or "-"))
    grid.add_row("created", _when(job.created_at))
    grid.add_row("started", _when(job.started_at))
    grid.add_row("finished", _when(job.finished_at))
    if job.started_at is not None:
        end = job.finished_at or datetime.now(UTC)
        grid.add_row("duration", _duration((end - job.started_at).total_seconds()))
    progress = job.progress
    grid.add_row("records", f"read {progress.read:,}  written {progress.written:,}  failed {progress.failed:,}")
    if job.completion is not None:
        verdict = "succeeded" if job.completion.succeeded else "failed"
        grid.add_row("completion", Text(verdict + (f": {job.completion.message}" if job.completion.message else "")))
    for flow, report in job.flow_completions.items():
        verdict = "succeeded" if report.succeeded else "failed"
        grid.add_row(f"  flow {flow}", Text(verdict + (f": {report.message}" if report.message else "")))
    grid.add_row("parameters", Text(json.dumps(job.parameters, sort_keys=True) if job.parameters else "-"))
    grid.add_row("backend", job.backend)
    _print_table(grid)
    events = Table(box=box.SIMPLE_HEAD, title="events", title_justify="left", pad_edge=False)
    events.add_column("AT", no_wrap=True)
    events.add_column("CHANGE", no_wrap=True)
    events.add_column("TASK", no_wrap=True)
    events.add_column("REASON")
    events.add_column("MESSAGE", overflow="fold", ratio=1)
    for event in job.events:
        if event.from_state is None:
            change = Text.assemble("created ", _state(event.to_state.value))
        elif event.from_state == event.to_state:
            change = Text("task change", style="dim")
        else:
            change = Text.assemble(_state(event.from_state.value), " -> ", _state(event.to_state.value))
        events.add_row(
            event.at.astimezone().strftime("%H:%M:%S.%f")[:-4],
            change,
            event.task.value if event.task else "-",
            event.reason or "-",
            Text(_first_line(event.message) if event.message else "-"),
        )
    _print_table(events)


@job_app.command("cancel")
def job_cancel(
    job_id: Annotated[str, typer.Argument(metavar="ID", help="The job's id.")],
    server: ServerOption = None,
    token: TokenOption = None,
) -> None:
    """Ask a job to stop: it goes CANCELLING, runs uninstall, and ends CANCELLED."""
    with _api(server, token, f"cancelling job {job_id}") as client:
        job = client.cancel_job(job_id)
    out.print(f"job {job.id}: {job.state.value} (task {job.task.value if job.task else '-'})")


@job_app.command("logs")
def job_logs(
    job_id: Annotated[str, typer.Argument(metavar="ID", help="The job's id.")],
    task: Annotated[
        Task | None, typer.Option(case_sensitive=False, help="Only this task's log (default: all, in order).")
    ] = None,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing until the task or job ends.")] = False,
    server: ServerOption = None,
    token: TokenOption = None,
) -> None:
    """Print a job's logs (install, wait, uninstall) as plain text."""
    with _api(server, token, f"reading the logs of job {job_id}") as client:
        try:
            for chunk in client.logs(job_id, task=task, follow=follow):
                sys.stdout.write(chunk)
                sys.stdout.flush()
        except KeyboardInterrupt:
            raise typer.Exit(EXIT_INTERRUPTED) from None


# ------------------------------------------------------------------------------------------------ run


@app.command("run")
def run(
    path: PathArg,
    param: ParamOption = [],  # noqa: B006
    server: ServerOption = None,
    token: TokenOption = None,
) -> None:
    """Deploy a bundle, start a job, and follow it live until it ends (exit code 0 only on SUCCEEDED).

    Without --server (or MODELOPS_SERVER) an embedded scheduler runs inside this command, on SQLite under
    MODELOPS_HOME (default ~/.modelops). Ctrl-C cancels the job and waits for it to be torn down; a second
    Ctrl-C exits at once.
    """
    parameters = _pairs(param, "--param")
    if not path.exists():
        _fail(f"{path}: no such file or directory")
    # CI systems stop a job with SIGTERM: treat it like Ctrl-C, so the scoring job is cancelled, not orphaned.
    previous = signal.signal(signal.SIGTERM, _interrupt)
    embedded: EmbeddedServer | None = None
    code = 1
    try:
        if server is None:
            embedded = _start_embedded()
            server = embedded.url
        code = _run(path, parameters, server, token, embedded)
    except KeyboardInterrupt:  # before the job was followed: nothing to wait for (an embedded server cancels it)
        err.print("interrupted")
        code = EXIT_INTERRUPTED
    finally:
        if embedded is not None:
            if code == _ABANDONED:
                embedded.abandon()
            else:
                embedded.stop()
        signal.signal(signal.SIGTERM, previous)
    raise typer.Exit(EXIT_INTERRUPTED if code == _ABANDONED else code)


_ABANDONED = -1


def _interrupt(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


EMBEDDED_BACKEND_FACTORY: BackendFactory | None = None
"""The backend the embedded server of `modelops run` uses; None: the default for its settings. Tests set it."""


def _start_embedded() -> EmbeddedServer:
    from scheduler.embedded import EmbeddedServer, EmbeddedServerError

    settings = _settings()
    embedded = EmbeddedServer(settings, backend_factory=EMBEDDED_BACKEND_FACTORY)
    try:
        embedded.start()
    except EmbeddedServerError as exc:
        _fail(f"cannot start the embedded scheduler: {exc}")
    except KeyboardInterrupt:
        raise typer.Exit(EXIT_INTERRUPTED) from None
    migrated = f"; database migrated from {embedded.migrated_from}" if embedded.migrated_from else ""
    err.print(f"embedded scheduler at {embedded.url} (home {settings.home}, log {embedded.log_file}{migrated})")
    try:
        leftovers = embedded.active_jobs()
        if leftovers:
            err.print(
                f"cancelling {len(leftovers)} job(s) an earlier `modelops run` left active: "
                + ", ".join(str(job_id) for job_id in leftovers)
            )
            embedded.cancel_active()
    except (ClientError, KeyboardInterrupt):
        embedded.abandon()
        _fail("cannot clean up after an earlier run: see " + str(embedded.log_file))
    return embedded


def _run(
    path: Path, parameters: dict[str, str], server: str, token: str | None, embedded: EmbeddedServer | None
) -> int:
    """Deploy, start and follow; the exit code (or `_ABANDONED` after a second Ctrl-C)."""
    with _api(server, token, f"running {path}") as client:
        deployment = client.deploy(path)
        state = "new version" if deployment.created else "unchanged"
        err.print(f"pipeline {deployment.name} version {deployment.version} ({state}, {deployment.digest[:12]})")
        # On this machine, relative artifact paths in the IR resolve against the bundle's folder.
        base = path.resolve() if path.is_dir() else path.resolve().parent
        local = embedded is not None or urlsplit(server).hostname in ("127.0.0.1", "localhost", "::1")
        environment = {"modelStore": base.as_uri()} if local else None
        job = client.create_job(
            deployment.name, version=deployment.version, parameters=parameters, environment=environment
        )
        err.print(f"job {job.id} started")
        view = _RunView(job)
        cancelled = False
        while True:
            try:
                final = _follow(client, job.id, view)
                break
            except KeyboardInterrupt:
                if cancelled:
                    view.stop()
                    where = " (the next `modelops run` finishes its cancel)" if embedded is not None else ""
                    err.print(f"exiting without waiting: job {job.id} is left cancelling{where}")
                    return _ABANDONED
                cancelled = True
                view.note("Ctrl-C: cancelling the job (press Ctrl-C again to exit without waiting)")
                try:
                    client.cancel_job(job.id)
                except ApiError as exc:
                    if exc.status != 409:  # 409: it finished meanwhile; following it shows how
                        raise
                except KeyboardInterrupt:
                    view.stop()
                    err.print(f"exiting without waiting: job {job.id} may still be running")
                    return _ABANDONED
        view.stop()
        logs = (
            f"{run_dir(embedded.settings.home, job.id)}/ (install.log, wait.log, uninstall.log, services/, flows/)"
            if embedded is not None and embedded.settings is not None
            else f"modelops job logs {job.id}"
        )
        return _report(final, cancelled, logs)


def _follow(client: SchedulerClient, job_id: uuid.UUID, view: _RunView) -> JobDetail:
    """Poll the job and update the view until it is terminal."""
    view.start()
    while True:
        job = client.get_job(job_id)
        view.update(job)
        if job.terminal:
            return job
        time.sleep(POLL_SECONDS)


def _report(job: JobDetail, cancelled_by_us: bool, logs: str) -> int:
    took = ""
    records = f"read {job.progress.read:,}, written {job.progress.written:,}, failed {job.progress.failed:,}"
    if job.started_at is not None and job.finished_at is not None:
        seconds = (job.finished_at - job.started_at).total_seconds()
        took = f" in {_duration(seconds)}"
        if seconds > 0 and job.progress.written:
            records += f" ({job.progress.written / seconds:,.0f} rows/s over the whole job)"
    if job.state is JobState.SUCCEEDED:
        out.print(f"job {job.id} SUCCEEDED{took}: {records}")
        return 0
    if job.state is JobState.CANCELLED:
        err.print(f"job {job.id} CANCELLED{took}: {job.message or job.reason or 'cancelled'}")
        return EXIT_INTERRUPTED if cancelled_by_us else 1
    err.print(f"job {job.id} {job.state.value}{took}: {job.reason or 'no reason given'}")
    if job.message:
        err.print(job.message)
    err.print(f"error: the job failed ({job.reason}); its logs: {logs}")
    return 1


class _RunView:
    """What `modelops run` shows: a live panel on a terminal, one line per change otherwise (pipes, CI logs)."""

    def __init__(self, job: Job) -> None:
        self.job: Job = job
        self.started = time.monotonic()
        self.samples: deque[tuple[float, int]] = deque()
        self.notes: list[str] = []
        self.live: Live | None = None
        self._last_line: tuple[str, str, str] | None = None
        self._spinner = Spinner("dots")

    def start(self) -> None:
        if self.live is None and out.is_terminal:
            self.live = Live(self, console=out, refresh_per_second=8, transient=False)
            self.live.start()

    def stop(self) -> None:
        if self.live is not None:
            self.live.stop()
            self.live = None

    def note(self, text: str) -> None:
        if self.live is not None:
            self.notes.append(text)
        else:
            err.print(text)

    def update(self, job: Job) -> None:
        self.job = job
        now = time.monotonic()
        self.samples.append((now, job.progress.read))
        while len(self.samples) > 2 and now - self.samples[0][0] > RATE_WINDOW_SECONDS:
            self.samples.popleft()
        if self.live is None:
            line = (job.state.value, job.task.value if job.task else "-", job.reason or "")
            if line != self._last_line:
                self._last_line = line
                out.print(f"{_duration(now - self.started)} {line[0]:<10} task {line[1]:<9} {line[2]}".rstrip())

    def rate(self) -> float:
        if len(self.samples) < 2:
            return 0.0
        (t0, r0), (t1, r1) = self.samples[0], self.samples[-1]
        return (r1 - r0) / (t1 - t0) if t1 > t0 else 0.0

    def __rich__(self) -> Table:
        job = self.job
        grid = Table.grid(padding=(0, 1))
        grid.add_column(no_wrap=True)
        grid.add_column(overflow="fold")
        head = Text.assemble((f"{job.pipeline} v{job.version}", "bold"), f"  job {job.id}  ", _state(job.state.value))
        grid.add_row(self._spinner if not job.terminal else Text(" "), head)
        phase = f"task {job.task.value if job.task else '-'}"
        if job.reason:
            phase += f"  {job.reason}"
        if job.message and not job.terminal:
            phase += f": {_first_line(job.message)}"
        grid.add_row("", Text(phase))
        progress = job.progress
        grid.add_row(
            "",
            Text(
                f"records read {progress.read:,}  written {progress.written:,}  failed {progress.failed:,}  "
                f"rate {self.rate():,.0f} rows/s  elapsed {_duration(time.monotonic() - self.started)}"
            ),
        )
        for note in self.notes:
            grid.add_row("", Text(note, style="yellow"))
        return grid


def _first_line(text: str) -> str:
    stripped = text.strip()
    return stripped.splitlines()[0] if stripped else ""


def main() -> None:  # pragma: no cover - console script entry point
    app()
