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

import errno
import json
import signal
import socket
import sys
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn, Protocol

import typer
from rich import box, filesize
from rich.console import Console, Group
from rich.live import Live
from rich.markup import escape
from rich.padding import Padding
from rich.progress import BarColumn, Progress, TaskID, TaskProgressColumn, TextColumn, TimeRemainingColumn
from rich.spinner import Spinner
from rich.table import Table
from rich.text import Text

import ir
from ir.logformat import format_line
from ir.schema import dumps, ir_schema, values_schema
from scheduler.artifact_upload import LocalArtifact, MissingArtifact, bundle_folder
from scheduler.client import (
    DEFAULT_SERVER,
    ApiError,
    ClientError,
    FlowProgress,
    Job,
    JobDetail,
    JobPage,
    Pipeline,
    SchedulerClient,
    SchedulerUnreachable,
    ServiceProgress,
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
    context_settings={"help_option_names": ["-h", "--help"]},  # inherited by every sub-command
)


def _print_version(given: bool) -> None:
    if given:
        from importlib.metadata import PackageNotFoundError, version

        try:
            number = version("modelops")
        except PackageNotFoundError:  # running from a source tree that was never installed
            number = "unknown (not installed)"
        print(f"modelops {number}")
        raise typer.Exit()


@app.callback()
def _main(
    _version: Annotated[
        bool,
        typer.Option("--version", is_eager=True, callback=_print_version, help="Print the version and exit."),
    ] = False,
) -> None:
    """Scoring pipelines for machine-learning models: validate IR, run the scheduler, deploy pipelines, run jobs."""


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
WATCH_SECONDS = 1.0
"""How often `job list --watch` asks for the list again."""


class OutputFormat(StrEnum):
    """`-o` of the list commands, as kubectl's: the API's data, names only, or a table with more columns."""

    JSON = "json"
    YAML = "yaml"
    NAME = "name"
    WIDE = "wide"


OutputOption = Annotated[
    OutputFormat | None,
    typer.Option(
        "--output",
        "-o",
        case_sensitive=False,
        show_default=False,
        help="json or yaml (the API's data), name (ids or names only, one a line), wide (more columns).",
    ),
]
NoHeadersOption = Annotated[bool, typer.Option("--no-headers", help="Print the table without its header line.")]


def _output_of(output: OutputFormat | None, as_json: bool) -> OutputFormat | None:
    """The chosen format: `--json` is `-o json`; None is the default table."""
    return OutputFormat.JSON if as_json and output is None else output


def _print_data(data: Any, output: OutputFormat) -> None:
    """JSON-ready `data` as JSON (indented, like the API's) or YAML, to stdout."""
    if output is OutputFormat.YAML:
        import yaml

        sys.stdout.write(yaml.safe_dump(data, sort_keys=False, allow_unicode=True))
    else:
        out.print_json(json.dumps(data))


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
        with _reported(what, url if server is None else None):
            yield client
    finally:
        client.close()


@contextmanager
def _reported(what: str, default_url: str | None) -> Iterator[None]:
    """Any client failure in the block as one error line on stderr and exit code 1; `default_url`: no server
    was configured, and this is the default address that did not answer."""
    try:
        yield
    except SchedulerUnreachable as exc:
        if default_url is not None:
            _fail(f"no scheduler at {default_url}: start one with `modelops serve` or set {SERVER_ENV}")
        _fail(exc.message)
    except ApiError as exc:
        _print_api_error(exc, what)
        raise typer.Exit(1) from None
    except ClientError as exc:
        _fail(f"{what}: {exc.message}")


class _Reader(Protocol):
    """What the read commands need: a `SchedulerClient`, or a `scheduler.offline.HomeReader` of the home."""

    def list_jobs(
        self,
        *,
        state: JobState | None = None,
        pipeline: str | None = None,
        limit: int | None = None,
        cursor: str | None = None,
        id_prefix: str | None = None,
        q: str | None = None,
    ) -> JobPage: ...

    def get_job(self, job_id: uuid.UUID | str) -> JobDetail: ...

    def resolve_job_id(self, job_id: uuid.UUID | str) -> uuid.UUID: ...

    def list_pipelines(self) -> list[Pipeline]: ...

    def log_components(self, job_id: uuid.UUID | str) -> list[str]: ...

    def logs(
        self,
        job_id: uuid.UUID | str,
        *,
        task: Task | None = None,
        components: Sequence[str] = (),
        follow: bool = False,
    ) -> Iterator[str]: ...


def _answers(client: SchedulerClient) -> bool:
    """Whether a scheduler answers at the client's address (ready or not: if not, the command says why)."""
    try:
        client.check()
    except SchedulerUnreachable:
        return False
    except ApiError:
        return True
    return True


@contextmanager
def _reader(server: str | None, token: str | None, what: str) -> Iterator[_Reader]:
    """For the read commands: the configured scheduler, as `_api`; with none configured and none answering at
    the default address, the scheduler that holds this machine's home (a `modelops run` in progress), else the
    home's SQLite database read directly (after `modelops run`, nothing serves it). Says which on stderr."""
    if server is not None:
        with _api(server, token, what) as client:
            yield client
        return
    with _api(None, token, what) as client:
        if _answers(client):
            yield client
            return
    from scheduler.embedded import HomeLock
    from scheduler.offline import HomeReader, home_database

    settings = _settings()
    holder = HomeLock.holder(settings.home) or ""
    url = holder.split()[-1] if holder.startswith("pid ") else ""
    if url.startswith("http"):
        err.print(f"no scheduler at {DEFAULT_SERVER}: using the one that holds {settings.home} ({holder})")
        with _api(url, token, what) as client:
            yield client
        return
    database = home_database(settings)
    if database is None:
        _fail(f"no scheduler at {DEFAULT_SERVER}: start one with `modelops serve` or set {SERVER_ENV}")
    with _reported(what, None):
        home = HomeReader(settings, database)
    err.print(f"no scheduler at {DEFAULT_SERVER}: reading {database} directly (read-only)")
    try:
        with _reported(what, None):
            yield home
    finally:
        home.close()


def _print_table(table: Table) -> None:
    """On a terminal, fit the table to its width; elsewhere (a pipe, a file) never cut a column, and print it
    plain: no lines drawn, no colours, columns apart by spaces (as kubectl does, for `awk` and `grep`)."""
    if out.is_terminal:
        out.print(table)
    else:  # `print(width=)` cannot widen a console beyond its width, so a wide one of our own
        table.box = None
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
    migrate: Annotated[
        bool,
        typer.Option(
            "--migrate",
            help="Upgrade a PostgreSQL database to this version's schema first (an SQLite one always is).",
        ),
    ] = False,
    log_format: Annotated[
        str | None,
        typer.Option(
            "--log-format",
            metavar="text|json",
            help="The server's log lines: text or json, one object per line (env MODELOPS_SCHEDULER_LOG_FORMAT).",
        ),
    ] = None,
) -> None:
    """Run the scheduling server (REST API and the lifecycle engine) until Ctrl-C or SIGTERM."""
    settings = _settings(host=host, port=port, workers=workers, log_format=log_format)
    run_server(settings, access_log=access_log, migrate=migrate)


def run_server(
    settings: SchedulerSettings,
    *,
    backend_factory: BackendFactory | None = None,
    access_log: bool = False,
    migrate: bool = False,
) -> None:
    """What `modelops serve` does: take the port, hold the home, prepare the schema, serve with uvicorn until
    stopped.

    On PostgreSQL the lifecycle engine runs under the leader lock (`scheduler.leader`), so several servers may
    share the database: `_serve_with_engine`; a local-backend engine then holds the home only while it leads.
    The port is bound first, so a busy one is refused before anything else happens (no migration, no
    recovery of jobs). An SQLite database is this server's own: created and migrated here, as `modelops run`
    does; a PostgreSQL one is shared, so only checked unless `migrate` (`modelops db upgrade` otherwise).
    `backend_factory` is for the benchmark (the local backend deploying test programs); errors exit like
    every command (one line, exit code 1).
    """
    from scheduler.app import StartupRefused, create_app
    from scheduler.embedded import EmbeddedServerError, HomeLock, prepare_database
    from scheduler.tokens import load_secret

    listener = _listen(settings.host, settings.port)
    elected = settings.database_url.startswith("postgresql")  # the engine leads or follows (scheduler.leader)
    lock = HomeLock(settings.home) if settings.backend == "local" and not elected else None
    try:
        if lock is not None:
            try:
                lock.acquire(settings.public_url)
            except EmbeddedServerError as exc:
                _fail(f"cannot start: {exc}")
        try:
            application = create_app(settings, backend_factory=backend_factory)  # refuses open mode beyond loopback
            load_secret(settings.home)  # the lifespan loads it too; checked here to fail with one line, not a trace
            own = settings.database_url.startswith("sqlite")
            migrated_from = prepare_database(settings, migrate=migrate or own)
        except (OSError, ValueError) as exc:
            _fail(f"cannot start: the job-token secret is unusable: {exc}")
        except EmbeddedServerError as exc:
            _fail(f"cannot start: {exc}")
        except StartupRefused as exc:
            _fail(str(exc) if str(exc).startswith("cannot start") else f"cannot start: {exc}")
        if migrated_from is not None:  # before uvicorn sets up logging: a line in the same format, by hand
            note = f"migrated the database from {migrated_from} to this version's schema"
            sys.stderr.write(format_line(note, settings.log_format, logger="scheduler.cli") + "\n")
        if elected:
            del application  # built above only to refuse a bad configuration with one line
            _serve_with_engine(settings, backend_factory, access_log, listener)
        else:
            _serve_one(application, settings, access_log, listener)
    finally:
        listener.close()
        if lock is not None:
            lock.release()


def _listen(host: str, port: int) -> socket.socket:
    """A socket bound to `host:port`, as uvicorn binds one; a port in use is one error line, exit code 1."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind((host.strip("[]"), port))
    except OSError as exc:
        listener.close()
        if exc.errno == errno.EADDRINUSE:
            _fail(
                f"cannot start: port {port} on {host} is in use (another `modelops serve`?): stop it, or choose "
                "another port with --port or MODELOPS_SCHEDULER_PORT"
            )
        _fail(f"cannot start: cannot listen on {host}:{port}: {exc.strerror or exc}")
    return listener


def _serve_one(application: Any, settings: SchedulerSettings, access_log: bool, listener: socket.socket) -> None:
    """Serve `application` with uvicorn in this process on `listener` until stopped."""
    import logging

    import uvicorn

    config = uvicorn.Config(
        application,
        log_config=_serve_logging(settings.log_level.upper(), settings.log_format),
        access_log=access_log,
        lifespan="on",
        timeout_graceful_shutdown=10,
    )
    # uvicorn says where it listens only for a socket it bound itself: say it (logging is set up now)
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    log = logging.getLogger(__name__)
    log.info("listening on http://%s:%d (stop with Ctrl-C or SIGTERM)", host, settings.port)
    _log_ui_url(settings)
    from scheduler.serving import Server  # ends the event streams first when it stops

    server = Server(config)
    server.run(sockets=[listener])
    if not server.started:  # the lifespan refused to start: it logged why
        raise typer.Exit(1)


def ui_url(host: str, port: int) -> str:
    """The web UI's address for a server listening on `host:port`; one listening on every interface (0.0.0.0,
    ::) is reached on loopback from this machine."""
    from scheduler.ui import UI_PREFIX

    reachable = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host.strip("[]"), host.strip("[]"))
    shown = f"[{reachable}]" if ":" in reachable else reachable
    return f"http://{shown}:{port}{UI_PREFIX}"


def _log_ui_url(settings: SchedulerSettings) -> None:
    import logging

    logging.getLogger(__name__).info("web UI: %s", ui_url(settings.host, settings.port))


def _serve_with_engine(
    settings: SchedulerSettings, backend_factory: BackendFactory | None, access_log: bool, listener: socket.socket
) -> None:
    """On PostgreSQL: the lifecycle engine in this process, leading or following (`scheduler.leader`), and the
    API beside it, which hands jobs to whichever engine leads (`scheduler.dispatch`): in this process with one
    worker, in N uvicorn worker processes with `--workers N`."""
    import json
    import logging.config
    import os

    import uvicorn

    from scheduler.app import ENGINE_IDENTITY_ENV, WORKER_SETTINGS_ENV, create_app, default_backend
    from scheduler.dispatch import Engine, dispatching

    log_config = _serve_logging(settings.log_level.upper(), settings.log_format)
    logging.config.dictConfig(log_config)
    factory = backend_factory or default_backend
    engine = Engine(settings, factory)
    engine.start()
    try:
        if settings.workers == 1:
            application = create_app(settings, backend_factory=dispatching(factory), engine_identity=engine.identity)
            _serve_one(application, settings, access_log, listener)
            return
        listener.close()  # uvicorn's supervisor binds the port for its workers itself
        _log_ui_url(settings)
        os.environ[WORKER_SETTINGS_ENV] = json.dumps(settings.model_dump(mode="json"))
        os.environ[ENGINE_IDENTITY_ENV] = engine.identity
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


def _serve_logging(level: str, fmt: str = "text") -> dict[str, Any]:
    """uvicorn's logging configuration with our line format (`ir.logformat`, text or json) for uvicorn's own
    loggers and the access log, and the scheduler's loggers printed the same way."""
    import copy

    from uvicorn.config import LOGGING_CONFIG

    config: dict[str, Any] = copy.deepcopy(LOGGING_CONFIG)
    formatter = {"()": "ir.logformat.JsonFormatter" if fmt == "json" else "ir.logformat.TextFormatter"}
    config["formatters"] = {"default": formatter, "access": dict(formatter)}
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
    scope: Annotated[str, typer.Option(help="read, write, code (write + code-running runtimes) or admin.")] = "write",
    max_concurrent_jobs: Annotated[
        int | None,
        typer.Option(
            min=1, help="Quota: at most this many unfinished jobs of this token (more: 429).", show_default=False
        ),
    ] = None,
    max_rows_per_day: Annotated[
        int | None,
        typer.Option(
            min=1, help="Quota: no new job once its jobs of the day (UTC) wrote this many rows.", show_default=False
        ),
    ] = None,
) -> None:
    """Make a random API token: prints it (for the client) and its hashed entry (for the server's settings),
    with its quotas if given."""
    import secrets

    from scheduler.settings import TokenSpec, hash_token

    plaintext = f"mo_{secrets.token_urlsafe(32)}"
    try:
        spec = TokenSpec.model_validate(
            {
                "name": name,
                "scope": scope,
                "sha256": hash_token(plaintext),
                "max_concurrent_jobs": max_concurrent_jobs,
                "max_rows_per_day": max_rows_per_day,
            }
        )
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
        deployment = client.deploy(path, on_artifact=_artifact_line)
    if as_json:
        out.print_json(deployment.model_dump_json())
        return
    status = "created" if deployment.created else "existing (same IR already deployed)"
    out.print(f"pipeline {deployment.name} version {deployment.version}: {status}; digest {deployment.digest}")


def _artifact_line(artifact: LocalArtifact | MissingArtifact, uploaded: bool) -> None:
    if isinstance(artifact, MissingArtifact):
        err.print(
            f"model {artifact.model}: no artifact at {artifact.path}: uri {artifact.uri!r} left for the "
            "server's model store"
        )
        return
    done = f"uploaded ({artifact.kind})" if uploaded else "already on the server"
    err.print(f"model {artifact.model}: {artifact.uri} sha256 {artifact.sha256[:12]} {done}")


@pipeline_app.command("list")
def pipeline_list(
    server: ServerOption = None,
    token: TokenOption = None,
    output: OutputOption = None,
    no_headers: NoHeadersOption = False,
    as_json: JsonOption = False,
) -> None:
    """The deployed pipelines and their versions."""
    with _reader(server, token, "listing pipelines") as client:
        pipelines = client.list_pipelines()
    output = _output_of(output, as_json)
    if output in (OutputFormat.JSON, OutputFormat.YAML):
        _print_data([p.model_dump(mode="json") for p in pipelines], output)
        return
    if output is OutputFormat.NAME:
        for pipeline in pipelines:
            out.print(pipeline.name)
        return
    if not pipelines:
        err.print("no pipelines deployed yet: `modelops pipeline deploy PATH`")
        return
    wide = output is OutputFormat.WIDE
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_header=not no_headers)
    columns = ("PIPELINE", "LATEST", "VERSIONS", "DIGEST", "DEPLOYED", "BY", "JOBS", *(("CREATED",) if wide else ()))
    for column in columns:
        table.add_column(column, no_wrap=True)
    for pipeline in pipelines:
        latest = pipeline.versions[-1]
        table.add_row(
            pipeline.name,
            str(pipeline.latest_version),
            str(len(pipeline.versions)),
            latest.digest if wide else latest.digest[:12],
            _when(latest.created_at),
            latest.created_by or "-",
            str(pipeline.jobs),
            *((_when(pipeline.created_at),) if wide else ()),
        )
    _print_table(table)


@pipeline_app.command("diff")
def pipeline_diff(
    pipeline: Annotated[str, typer.Argument(help="The pipeline's name.")],
    old: Annotated[int, typer.Argument(min=1, metavar="FROM", help="The version to compare from.")],
    new: Annotated[int, typer.Argument(min=1, metavar="TO", help="The version to compare to.")],
    server: ServerOption = None,
    token: TokenOption = None,
    as_json: JsonOption = False,
) -> None:
    """What changed between two versions: unified diffs of the IR files, then of the values `install` would
    deploy with the default parameters."""
    with _api(server, token, f"comparing versions {old} and {new} of {pipeline}") as client:
        diff = client.diff_versions(pipeline, old, new)
    if as_json:
        out.print_json(diff.model_dump_json())
        return
    if not diff.ir and not diff.values:
        err.print(f"pipeline {pipeline}: versions {old} and {new} do not differ")
        return
    sys.stdout.write(diff.ir)
    sys.stdout.write(diff.values)


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
        JobState | None,
        typer.Option(case_sensitive=False, help="Only jobs in this state (any case).", show_default=False),
    ] = None,
    pipeline: Annotated[str | None, typer.Option(help="Only jobs of this pipeline.")] = None,
    search: Annotated[
        str | None,
        typer.Option(
            help="Only jobs whose id starts with this text, or whose pipeline, creator, reason or message contains "
            "it (any case)."
        ),
    ] = None,
    limit: Annotated[int, typer.Option(min=1, help="At most this many jobs (newest first).")] = 20,
    cursor: Annotated[str | None, typer.Option(help="Continue after a previous page (its printed cursor).")] = None,
    watch: Annotated[
        bool, typer.Option("--watch", "-w", help="Keep watching: print the list again when it changes, until Ctrl-C.")
    ] = False,
    server: ServerOption = None,
    token: TokenOption = None,
    output: OutputOption = None,
    no_headers: NoHeadersOption = False,
    as_json: JsonOption = False,
) -> None:
    """Jobs, newest first, as a table."""
    if watch and cursor is not None:
        _fail("--watch follows the newest jobs: it takes no --cursor", 2)
    output = _output_of(output, as_json)
    with _reader(server, token, "listing jobs") as client:
        if watch:
            _watch_jobs(
                lambda: client.list_jobs(state=state, pipeline=pipeline, limit=limit, q=search), output, no_headers
            )
            return
        page = client.list_jobs(state=state, pipeline=pipeline, limit=limit, cursor=cursor, q=search)
    if output in (OutputFormat.JSON, OutputFormat.YAML):
        _print_data(page.model_dump(mode="json"), output)
        return
    if output is OutputFormat.NAME:
        for job in page.items:
            out.print(str(job.id))
    elif not page.items:
        err.print("no jobs" + (" match" if state or pipeline or search or cursor else " yet"))
        return
    else:
        _print_table(_jobs_table(page.items, wide=output is OutputFormat.WIDE, no_headers=no_headers))
    if page.next_cursor:
        err.print(f"more: --cursor {page.next_cursor}")


def _jobs_table(jobs: list[Job], *, wide: bool, no_headers: bool) -> Table:
    """The table of `job list`; `wide` adds when it ran, its records, its backend and its message."""
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_header=not no_headers)
    table.add_column("ID", no_wrap=True, min_width=36)
    table.add_column("PIPELINE", overflow="fold")
    table.add_column("STATE", no_wrap=True)
    table.add_column("TASK")
    table.add_column("CREATED")
    if wide:
        for column in ("STARTED", "DURATION", "READ", "WRITTEN", "FAILED", "BACKEND"):
            numeric = column in ("READ", "WRITTEN", "FAILED")
            table.add_column(column, no_wrap=True, justify="right" if numeric else "left")
    table.add_column("REASON", overflow="fold")
    if wide:
        table.add_column("MESSAGE", overflow="fold")
    for job in jobs:
        row: list[str | Text] = [
            str(job.id),
            f"{job.pipeline} v{job.version}",
            _state(job.state.value),
            _queued(job) or (job.task.value if job.task else "-"),
            job.created_at.astimezone().strftime("%m-%d %H:%M:%S"),
        ]
        if wide:
            took = "-"
            if job.started_at is not None:
                took = _duration(((job.finished_at or datetime.now(UTC)) - job.started_at).total_seconds())
            started = job.started_at.astimezone().strftime("%m-%d %H:%M:%S") if job.started_at else "-"
            progress = job.progress
            row += [started, took, f"{progress.read:,}", f"{progress.written:,}", f"{progress.failed:,}", job.backend]
        row.append(job.reason or "-")
        if wide:
            row.append(Text(_first_line(job.message) if job.message else "-"))
        table.add_row(*row)
    return table


def _watch_jobs(fetch: Callable[[], JobPage], output: OutputFormat | None, no_headers: bool) -> None:
    """`job list --watch`: ask every `WATCH_SECONDS` and show what changed, until Ctrl-C (exit code 0).

    A table is drawn again in place on a terminal (rich Live) and printed again, whole, elsewhere whenever a job
    in it changed; with `-o json|yaml|name` each new or changed job is printed as it is seen (JSON one object a
    line)."""
    live: Live | None = None
    last: dict[uuid.UUID, str] | None = None  # None: nothing shown yet
    try:
        while True:
            page = fetch()
            seen = {job.id: job.model_dump_json() for job in page.items}
            if output in (OutputFormat.JSON, OutputFormat.YAML, OutputFormat.NAME):
                for job in reversed(page.items):  # oldest first: the order in which they changed, roughly
                    if last is None or last.get(job.id) != seen[job.id]:
                        _print_watched(job, output)
            elif out.is_terminal:
                table = _jobs_table(page.items, wide=output is OutputFormat.WIDE, no_headers=no_headers)
                if live is None:
                    live = Live(table, console=out, auto_refresh=False)
                    live.start()
                live.update(table, refresh=True)
            elif last is None or list(seen.items()) != list(last.items()):
                if last is not None:
                    out.print()
                _print_table(_jobs_table(page.items, wide=output is OutputFormat.WIDE, no_headers=no_headers))
            sys.stdout.flush()
            last = seen
            time.sleep(WATCH_SECONDS)
    except KeyboardInterrupt:
        pass
    finally:
        if live is not None:
            live.stop()


def _print_watched(job: Job, output: OutputFormat) -> None:
    if output is OutputFormat.NAME:
        out.print(str(job.id))
    elif output is OutputFormat.JSON:
        sys.stdout.write(job.model_dump_json() + "\n")
    else:
        import yaml

        sys.stdout.write("---\n" + yaml.safe_dump(job.model_dump(mode="json"), sort_keys=False, allow_unicode=True))


@job_app.command("show")
def job_show(
    job_id: Annotated[str, typer.Argument(metavar="ID", help="The job's id, or its first hex digits (at least 4).")],
    server: ServerOption = None,
    token: TokenOption = None,
    as_json: JsonOption = False,
    watch: Annotated[
        bool,
        typer.Option(
            "--watch", "-w", help="Follow the job live until it ends, as `modelops run` does (Ctrl-C stops watching)."
        ),
    ] = False,
) -> None:
    """A job's state, task, reason and message, timestamps, progress, and its events."""
    with _reader(server, token, f"reading job {job_id}") as client:
        job = client.get_job(job_id)
        if watch and not as_json:
            _watch_job(client, job)
            return
    if as_json:
        out.print_json(job.model_dump_json(by_alias=True))
        return
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column(overflow="fold")
    grid.add_row("job", str(job.id))
    grid.add_row("pipeline", f"{job.pipeline} version {job.version}")
    grid.add_row("state", _state(job.state.value))
    if job.queue_position is not None:
        grid.add_row("queued", f"position {job.queue_position}: it starts when a running job ends (max_running_jobs)")
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
    records = f"read {progress.read:,}  written {progress.written:,}  failed {progress.failed:,}"
    records += f"  filtered {progress.filtered:,}"
    if progress.total is not None and progress.done is not None:
        size = _sized(progress.total, progress.unit)
        records += f"  ({_percent(progress.done, progress.total)} of {size})"
    grid.add_row("records", records)
    for name, reported in progress.flows.items():
        grid.add_row(f"  flow {name}", Text(f"{reported.state or '-'}:{_RunView._flow_counts(reported)}"))
    for output in _outputs(job):
        grid.add_row("output", Text(output))
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
    previous_task = None
    for event in job.events:
        if event.from_state is None:
            change = Text.assemble("created ", _state(event.to_state.value))
        elif event.from_state == event.to_state:
            # The same state and task: an event of the run, e.g. a component restarted (ServiceRestarted).
            change = Text("task change" if event.task != previous_task else "event", style="dim")
        else:
            change = Text.assemble(_state(event.from_state.value), " -> ", _state(event.to_state.value))
        events.add_row(
            event.at.astimezone().strftime("%H:%M:%S.%f")[:-4],
            change,
            event.task.value if event.task else "-",
            event.reason or "-",
            Text(_first_line(event.message) if event.message else "-"),
        )
        previous_task = event.task
    _print_table(events)


@job_app.command("cancel")
def job_cancel(
    job_id: Annotated[str, typer.Argument(metavar="ID", help="The job's id, or its first hex digits (at least 4).")],
    server: ServerOption = None,
    token: TokenOption = None,
) -> None:
    """Ask a job to stop: it goes CANCELLING, runs uninstall, and ends CANCELLED."""
    with _api(server, token, f"cancelling job {job_id}") as client:
        job = client.cancel_job(job_id)
    out.print(f"job {job.id}: {job.state.value} (task {job.task.value if job.task else '-'})")


@job_app.command("logs")
def job_logs(
    job_id: Annotated[str, typer.Argument(metavar="ID", help="The job's id, or its first hex digits (at least 4).")],
    component: Annotated[
        list[str],
        typer.Option(
            "--component",
            "-c",
            metavar="NAME",
            help="Only this component (repeatable): install, wait, uninstall, service/NAME, flow/NAME, or a bare "
            "service or flow name. Default: all, interleaved by time.",
        ),
    ] = [],  # noqa: B006
    task: Annotated[
        Task | None, typer.Option(case_sensitive=False, help="Only this phase's log (the same as --component).")
    ] = None,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep printing the lines as they are written until the job ends.")
    ] = False,
    list_components: Annotated[
        bool, typer.Option("--list", help="Print the job's log components, one per line, and nothing else.")
    ] = False,
    server: ServerOption = None,
    token: TokenOption = None,
) -> None:
    """Print a job's logs, like `tkn pipelinerun logs`: every phase (install, wait, uninstall) and the output of
    every scoring service and flow, interleaved by time, each line prefixed with its [component]."""
    with _reader(server, token, f"reading the logs of job {job_id}") as client:
        if list_components:
            for name in client.log_components(job_id):
                out.print(name)
            return
        try:
            for chunk in client.logs(job_id, task=task, components=component, follow=follow):
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
    data_root: Annotated[
        list[Path],
        typer.Option(
            "--data-root",
            help="With the embedded scheduler: one more folder the job may read and write files in, besides the "
            "bundle's folder (repeatable; you widen the roots for your own run, not the IR).",
        ),
    ] = [],  # noqa: B006
) -> None:
    """Deploy a bundle, start a job, and follow it live until it ends (exit code 0 only on SUCCEEDED).

    Without --server (or MODELOPS_SERVER) an embedded scheduler runs inside this command, on SQLite under
    MODELOPS_HOME (default ~/.modelops). Ctrl-C cancels the job and waits for it to be torn down; a second
    Ctrl-C exits at once.
    """
    parameters = _pairs(param, "--param")
    if not path.exists():
        _fail(f"{path}: no such file or directory")
    raise typer.Exit(run_folder(path, parameters, server, token, extra_roots=data_root))


def run_folder(
    path: Path,
    parameters: dict[str, str],
    server: str | None = None,
    token: str | None = None,
    *,
    extra_roots: list[Path] | None = None,
) -> int:
    """What `modelops run` does, as an exit code: deploy, start, follow (embedded unless `server`)."""
    # CI systems stop a job with SIGTERM: treat it like Ctrl-C, so the scoring job is cancelled, not orphaned.
    previous = signal.signal(signal.SIGTERM, _interrupt)
    embedded: EmbeddedServer | None = None
    code = 1
    try:
        if server is None:
            embedded = _start_embedded(bundle_folder(path), extra_roots or [])
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
    return EXIT_INTERRUPTED if code == _ABANDONED else code


_ABANDONED = -1


def _interrupt(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


EMBEDDED_BACKEND_FACTORY: BackendFactory | None = None
"""The backend the embedded server of `modelops run` uses; None: the default for its settings. Tests set it."""


def _start_embedded(folder: Path, extra_roots: list[Path] | None = None) -> EmbeddedServer:
    """The embedded server of `modelops run`, with the bundle's `folder` (and `--data-root`s) as more data
    roots: the operator (this command, running locally) widens the roots for its own run, not the IR
    (docs/security.md)."""
    from scheduler.embedded import EmbeddedServer, EmbeddedServerError

    settings = _settings()
    default_roots = settings.data_roots or [settings.home / "data"]
    added = [root.expanduser().resolve() for root in [folder, *(extra_roots or [])]]
    settings = settings.model_copy(update={"data_roots": [*default_roots, *added]})
    embedded = EmbeddedServer(settings, backend_factory=EMBEDDED_BACKEND_FACTORY)
    try:
        embedded.start()
    except EmbeddedServerError as exc:
        _fail(f"cannot start the embedded scheduler: {exc}")
    except KeyboardInterrupt:
        raise typer.Exit(EXIT_INTERRUPTED) from None
    migrated = f"; database migrated from {embedded.migrated_from}" if embedded.migrated_from else ""
    err.print(f"embedded scheduler at {embedded.url} (home {settings.home}, log {embedded.log_file}{migrated})")
    err.print(f"web UI: {embedded.ui_url}")
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
        deployment = client.deploy(path, on_artifact=_artifact_line)
        state = "new version" if deployment.created else "unchanged"
        err.print(f"pipeline {deployment.name} version {deployment.version} ({state}, {deployment.digest[:12]})")
        # The model artifacts went with the bundle; relative data paths resolve against the bundle's folder
        # with the embedded server, against the server's data root otherwise (docs/scheduler.md, "Paths").
        environment = {"dataRoot": str(bundle_folder(path))} if embedded is not None else None
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


def _follow(client: _Reader, job_id: uuid.UUID, view: _RunView) -> JobDetail:
    """Update the view until the job is terminal: from the server's event stream of the job when it has one
    (a change shows at once), else by polling every `POLL_SECONDS`."""
    view.start()
    if isinstance(client, SchedulerClient):
        final = _follow_events(client, job_id, view)
        if final is not None:
            return final
    while True:
        job = client.get_job(job_id)
        view.update(job)
        if job.terminal:
            return job
        time.sleep(POLL_SECONDS)


def _follow_events(client: SchedulerClient, job_id: uuid.UUID, view: _RunView) -> JobDetail | None:
    """`_follow` from `GET /jobs/{id}/events`, read in a thread; the view is still updated every `POLL_SECONDS`
    (with the latest job) so its clock, rates and heartbeat move while nothing changes. None when the stream
    ended before the job did, or could not be read (a server without it, or stopping): the caller polls."""
    import queue
    import threading

    arrived: queue.Queue[JobDetail | BaseException | None] = queue.Queue()
    stop = threading.Event()

    def read() -> None:
        try:
            for job in client.job_events(job_id):
                arrived.put(job)
                if stop.is_set():
                    return
        except Exception as exc:  # handed to the caller, which falls back to polling
            arrived.put(exc)
        arrived.put(None)

    threading.Thread(target=read, name=f"modelops-follow-{job_id}", daemon=True).start()
    latest: JobDetail | None = None
    try:
        while True:
            try:
                item = arrived.get(timeout=POLL_SECONDS)
            except queue.Empty:
                if latest is not None:
                    view.update(latest)
                continue
            if item is None or isinstance(item, BaseException):
                return None
            latest = item
            view.update(item)
            if item.terminal:
                return item
    finally:
        stop.set()  # the reader ends at the next event (the server ends the stream once the job has ended)


def _watch_job(client: _Reader, job: JobDetail) -> None:
    """`job show --watch`: the live view of `modelops run` until the job ends; Ctrl-C only stops watching."""
    view = _RunView(job)
    try:
        final = _follow(client, job.id, view)
    except KeyboardInterrupt:
        view.stop()
        err.print(f"stopped watching job {job.id} (it goes on: `modelops job cancel {job.id}` stops it)")
        raise typer.Exit(EXIT_INTERRUPTED) from None
    view.stop()
    took = ""
    if final.started_at is not None and final.finished_at is not None:
        took = f" in {_duration((final.finished_at - final.started_at).total_seconds())}"
    progress = final.progress
    out.print(
        f"job {final.id} {final.state.value}{took}: {final.reason or '-'}; read {progress.read:,}, "
        f"written {progress.written:,}, failed {progress.failed:,}, filtered {progress.filtered:,}"
    )
    for output in _outputs(final):
        out.print(f"output: {output}")


def _outputs(job: Job) -> list[str]:
    """Where the job's records went: the sinks its flows reported, each once, in flow order."""
    seen: dict[str, None] = {}
    for flow in job.progress.flows.values():
        seen.update(dict.fromkeys(flow.outputs))
    return list(seen)


def _report(job: JobDetail, cancelled_by_us: bool, logs: str) -> int:
    took = ""
    progress = job.progress
    records = f"read {progress.read:,}, written {progress.written:,}, failed {progress.failed:,}"
    if progress.filtered:
        records += f", filtered {progress.filtered:,}"
    if job.started_at is not None and job.finished_at is not None:
        seconds = (job.finished_at - job.started_at).total_seconds()
        took = f" in {_duration(seconds)}"
        if seconds > 0 and job.progress.written:
            records += f" ({job.progress.written / seconds:,.0f} rows/s over the whole job)"
    if job.state is JobState.SUCCEEDED:
        out.print(f"job {job.id} SUCCEEDED{took}: {records}")
        for output in _outputs(job):
            out.print(f"output: {output}")
        return 0
    if job.state is JobState.CANCELLED:
        err.print(f"job {job.id} CANCELLED{took}: {job.message or job.reason or 'cancelled'}")
        return EXIT_INTERRUPTED if cancelled_by_us else 1
    err.print(f"job {job.id} {job.state.value}{took}: {job.reason or 'no reason given'}")
    if job.message:
        err.print(job.message)
    err.print(f"error: the job failed ({job.reason}); its logs: {logs}")
    return 1


HEARTBEAT_SECONDS = 10.0
"""Off a terminal (CI logs, a pipe), the view prints a line at least this often while the job runs."""


def _amount(count: int, unit: str | None) -> str:
    return filesize.decimal(count) if unit == "bytes" else f"{count:,}"


def _sized(count: int, unit: str | None) -> str:
    """`153.2 MB` for bytes (the size says its unit), `3,000 records` otherwise."""
    return _amount(count, unit) if unit == "bytes" else f"{count:,} {unit}".rstrip()


def _percent(done: int | None, total: int | None) -> str:
    if done is None or not total:
        return ""
    return f"{min(100.0, 100.0 * done / total):.1f}%"


def _latency(service: ServiceProgress) -> str:
    if service.latency_ms is None:
        return "latency -"
    lat = service.latency_ms
    return f"latency p50 {lat.p50:,.1f} ms  p99 {lat.p99:,.1f} ms  mean {lat.mean:,.1f} ms"


class _RunView:
    """What `modelops run` and `modelops job show --watch` show of a job while it runs.

    On a terminal, a live panel (rich): the job and what it does now (the reason and message of its latest
    event, so no message of an earlier task lingers during uninstall); a progress bar with percentage and ETA
    when the size of the sources is known (records, or bytes of the input files); rows/s now (over
    `RATE_WINDOW_SECONDS`) and on average; one line per flow and per scoring service it calls. Elsewhere (a
    pipe, CI logs): one line per change of state, task or reason and per change of a flow's state, and a
    heartbeat line at least every `HEARTBEAT_SECONDS` with the counters, the percentage and the rate.
    """

    def __init__(
        self, job: Job, *, console: Console | None = None, live: bool | None = None, heartbeat: float | None = None
    ) -> None:
        self.job: Job = job
        self.console = console or out
        self.live_view = self.console.is_terminal if live is None else live
        self.heartbeat = HEARTBEAT_SECONDS if heartbeat is None else heartbeat
        self.started = time.monotonic()
        self.samples: deque[tuple[float, int]] = deque()
        self.notes: list[str] = []
        self.live: Live | None = None
        self._last_line: tuple[str, str, str] | None = None
        self._last_printed = self.started
        self._flow_states: dict[str, str | None] = {}
        self._spinner = Spinner("dots")
        self._bar = Progress(
            BarColumn(bar_width=40),
            TaskProgressColumn(),
            TextColumn("{task.fields[amount]}"),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=self.console,
            auto_refresh=False,
        )
        self._bar_task: TaskID | None = None

    def start(self) -> None:
        if self.live is None and self.live_view:
            self.live = Live(self, console=self.console, refresh_per_second=8, transient=False)
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
        self._update_bar()
        if not self.live_view:
            self._print_lines(now)

    def rate(self) -> float:
        """Records read per second over the last `RATE_WINDOW_SECONDS`."""
        if len(self.samples) < 2:
            return 0.0
        (t0, r0), (t1, r1) = self.samples[0], self.samples[-1]
        return (r1 - r0) / (t1 - t0) if t1 > t0 else 0.0

    def average(self) -> float | None:
        """Records read per second since the flows began reading: the sum of the rates they report."""
        rates = [flow.rate for flow in self.job.progress.flows.values() if flow.rate is not None]
        return sum(rates) if rates else None

    # -- off a terminal: lines --------------------------------------------------------------------------------

    def _print_lines(self, now: float) -> None:
        job = self.job
        elapsed = _duration(now - self.started)
        line = (job.state.value, job.task.value if job.task else "-", _queued(job) or self._latest()[0] or "")
        if line != self._last_line:
            self._last_line = line
            self._print(now, f"{elapsed} {line[0]:<10} task {line[1]:<9} {line[2]}".rstrip())
        for name, flow in job.progress.flows.items():
            if self._flow_states.get(name, "") != flow.state:
                self._flow_states[name] = flow.state
                self._print(now, f"{elapsed} flow {name}: {flow.state or '-'}{self._flow_counts(flow)}")
        if not job.terminal and now - self._last_printed >= self.heartbeat:
            self._print(now, f"{elapsed} {line[0]:<10} task {line[1]:<9} {self._counts()}")

    def _print(self, now: float, text: str) -> None:
        self._last_printed = now
        self.console.print(text, markup=False, highlight=False, soft_wrap=True)

    def _counts(self) -> str:
        progress = self.job.progress
        read = f"read {progress.read:,}"
        if progress.total is not None and progress.unit == "records":
            read += f"/{progress.total:,}"
        percent = _percent(progress.done, progress.total)
        if percent:
            read += f" ({percent}{' of the input bytes' if progress.unit == 'bytes' else ''})"
        text = f"{read}, written {progress.written:,}, failed {progress.failed:,}, filtered {progress.filtered:,}"
        text += f"; {self.rate():,.0f} rows/s now"
        average = self.average()
        if average is not None:
            text += f", {average:,.0f} on average"
        return text

    @staticmethod
    def _flow_counts(flow: FlowProgress) -> str:
        if flow.state in (None, "starting"):
            return ""
        text = f" read {flow.read:,}, written {flow.written:,}, failed {flow.failed:,}, filtered {flow.filtered:,}"
        if flow.total is not None and flow.state != "done":
            text += f" of {_sized(flow.total, flow.unit)}"
        return text

    # -- on a terminal: the live panel ------------------------------------------------------------------------

    def _update_bar(self) -> None:
        progress = self.job.progress
        if progress.total is None or progress.done is None:
            return
        amount = f"{_amount(progress.done, progress.unit)}/{_sized(progress.total, progress.unit)}"
        if self._bar_task is None:
            self._bar_task = self._bar.add_task("", total=progress.total, completed=progress.done, amount=amount)
        else:
            self._bar.update(self._bar_task, total=progress.total, completed=progress.done, amount=amount)

    def _latest(self) -> tuple[str | None, str | None]:
        """The reason and message of what the job does now: its latest event's (a job's own `reason` and
        `message` are those of its last state change, which may belong to an earlier task)."""
        job = self.job
        events = getattr(job, "events", None)
        if events and not job.terminal:
            return events[-1].reason, events[-1].message
        return job.reason, job.message

    def _phase(self) -> str:
        """The current task and what it does now (`_latest`)."""
        job = self.job
        reason, message = self._latest()
        queued = _queued(job)
        if queued:
            return queued
        phase = f"task {job.task.value if job.task else '-'}"
        if reason:
            phase += f"  {reason}"
        if message and not job.terminal:
            phase += f": {_first_line(message)}"
        return phase

    def __rich__(self) -> Group:
        job = self.job
        head = Table.grid(padding=(0, 1))
        head.add_column(no_wrap=True)
        head.add_column(overflow="fold")
        title = Text.assemble((f"{job.pipeline} v{job.version}", "bold"), f"  job {job.id}  ", _state(job.state.value))
        head.add_row(self._spinner if not job.terminal else Text(" "), title)
        head.add_row("", Text(self._phase()))
        parts: list[Any] = [head]
        if self._bar_task is not None:
            parts.append(Padding(self._bar.get_renderable(), (0, 0, 0, 2)))
        progress = job.progress
        average = self.average()
        rates = "" if job.terminal else f"{self.rate():,.0f} rows/s now"
        if average is not None:
            rates += f"{', ' if rates else ''}{average:,.0f} rows/s on average"
        counts = Text(
            f"  records read {progress.read:,}  written {progress.written:,}  failed {progress.failed:,}  "
            f"filtered {progress.filtered:,}  {rates}  elapsed {_duration(time.monotonic() - self.started)}"
        )
        parts.append(counts)
        if progress.flows:
            lines = Table.grid(padding=(0, 2))
            for _ in range(4):
                lines.add_column(no_wrap=True)
            lines.add_column(overflow="fold")
            for name, flow in progress.flows.items():
                size = ""
                if flow.total is not None and flow.done is not None and flow.state != "done":
                    size = f"{_percent(flow.done, flow.total)} of {_sized(flow.total, flow.unit)}"
                rate = f"{flow.rate:,.0f} rows/s" if flow.rate is not None else ""
                lines.add_row(
                    f"  flow {name}",
                    Text(flow.state or "-", style=_FLOW_STYLE.get(flow.state or "", "")),
                    f"read {flow.read:,}  written {flow.written:,}  failed {flow.failed:,}  filtered {flow.filtered:,}",
                    rate,
                    size,
                )
                for service_name, service in flow.services.items():
                    lines.add_row(
                        f"    service {service_name}",
                        "",
                        f"requests {service.requests:,}  rows {service.rows:,}  errors {service.errors:,}"
                        + (f"  retries {service.retries:,}" if service.retries else ""),
                        "",
                        _latency(service),
                    )
            parts.append(lines)
        for note in self.notes:
            parts.append(Text(f"  {note}", style="yellow"))
        return Group(*parts)


def _queued(job: Job) -> str | None:
    """`queued: position N` for a job that waits for admission, else None."""
    return f"queued: position {job.queue_position}" if job.queue_position is not None else None


_FLOW_STYLE = {"starting": "cyan", "running": "blue", "done": "green", "failed": "red", "stopped": "yellow"}


def _first_line(text: str) -> str:
    stripped = text.strip()
    return stripped.splitlines()[0] if stripped else ""


def main() -> None:  # pragma: no cover - console script entry point
    app()


def _register_scaffold_commands() -> None:
    from scheduler.cli_scaffold import init_command, score_command

    app.command("init")(init_command)
    app.command("score")(score_command)


_register_scaffold_commands()
