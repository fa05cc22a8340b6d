"""`modelops task install|wait|uninstall`: the three pipeline tasks of a job on Kubernetes, one per Tekton task.

Each runs in the runner image next to the cluster and knows only its job's id, the scheduler's URL and the
job's token (from a Secret, in `MODELOPS_JOB_TOKEN`). It talks to the scheduler through the task endpoints
(`scheduler.api.tasks`: `/spec`, `/phase`, `/status`) and to the cluster through `scheduler.helm`:

- `install` reports `install started`, fetches the job's spec, renders the values with `ir.render` (what the
  server's `scheduler.values.render_values` gives for the same inputs), writes them to a private temporary
  file and runs `helm upgrade --install --wait --atomic` (a release per job, the pipeline's install timeout
  unless `--timeout` says otherwise, a failure rolled back); then reports `succeeded`, or `failed` with reason
  `RenderFailed`, `InstallTimeout` or `InstallFailed` and helm's own words. `--dry-run` renders the manifests
  with `helm template` instead (no cluster) and prints them, reporting nothing;
- `wait` reports `wait started` and polls `/status` until the flows report completion (exit 0 when they
  succeeded; exit 1, reporting `ScoringFailed`, when they failed) or the job is cancelling or finished (exit 1);
- `uninstall` (Tekton's `finally`) reports `uninstall started`, runs `helm uninstall` (a release that does not
  exist counts as success) and reports the outcome. It uninstalls even when the scheduler cannot be reached.

Every step prints a plain timestamped line to stdout (what `tkn pipelinerun logs` shows): what it does, the
release, the namespace, how long it took. The job token is never printed: every line is scrubbed of it.
Transient HTTP failures (no answer, 429, 5xx) are retried with back-off and logged; 401, 403, 404 and 422 fail
at once. Exit status: 0 on success, 1 on failure, 2 for a bad command line.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import re
import sys
import tempfile
import time
import uuid
from collections.abc import Coroutine, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Final, NoReturn, TypeVar

import httpx
import typer

import ir
from ir.logformat import LogFormat
from scheduler.joblogs import PhaseLog
from scheduler.states import TERMINAL, JobState

if TYPE_CHECKING:
    from scheduler.helm import HelmClient

__all__ = ["DEFAULT_CHART", "TaskApi", "TaskError", "parse_duration", "render_spec", "task_app"]

DEFAULT_CHART: Final = "/opt/modelops/charts/modelops"
"""Where the runner image holds the chart."""
DEFAULT_UNINSTALL_TIMEOUT_SECONDS: Final = 600.0
API: Final = "/api/v1/jobs"

RETRY_DELAYS: Final = (0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 15.0, 15.0)
"""Back-off between attempts of a request that failed transiently (about a minute in all): a scheduler that
restarts should not fail a task; one that stays away should not hang it (except `wait`, see below)."""
WAIT_MAX_DELAY: Final = 30.0
"""`wait` retries its polls for as long as it runs (the pipeline's `timeouts.tasks` bounds it), at most this far
apart."""
_TRANSIENT_STATUSES: Final = frozenset({408, 429, 500, 502, 503, 504})
_REQUEST_TIMEOUT: Final = httpx.Timeout(30.0, connect=10.0)
_MESSAGE_MAX: Final = 8000
"""Messages reported to the scheduler (helm's stderr tail) stay well under the API's limit."""

_T = TypeVar("_T")

task_app = typer.Typer(
    help="The pipeline tasks of a job on Kubernetes (run by the Tekton pipeline): install, wait, uninstall.",
    no_args_is_help=True,
)


# ---------------------------------------------------------------------------------------------- step log


def _secrets_of(token: str | None) -> list[str]:
    """The token and the forms a manifest or an error could show it in (a Secret's base64 data)."""
    if not token:
        return []
    return [token, base64.b64encode(token.encode()).decode()]


# ---------------------------------------------------------------------------------------------- scheduler


class TaskError(Exception):
    """A task cannot go on; the message says what failed and where."""


class TaskApi:
    """The task endpoints of one job, authenticated with its token, retrying what failed transiently."""

    def __init__(
        self,
        server: str,
        job_id: uuid.UUID,
        token: str | None,
        log: PhaseLog,
        *,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.server = server.rstrip("/")
        self.job_id = job_id
        self._log = log
        headers = {"Accept": "application/json", "User-Agent": "modelops-task"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self._http = httpx.Client(base_url=self.server, headers=headers, timeout=_REQUEST_TIMEOUT, transport=transport)

    def close(self) -> None:
        self._http.close()

    def _request(self, method: str, what: str, path: str, *, body: Any = None, forever: bool = False) -> Any:
        """The JSON answer; `TaskError` at once for a refusal (4xx), after the retries for transient failures."""
        url = f"{API}/{self.job_id}/{path}"
        attempt = 0
        while True:
            try:
                response = self._http.request(method, url, json=body)
            except httpx.TransportError as exc:
                problem = f"no answer from the scheduler at {self.server} ({type(exc).__name__}: {exc})"
            else:
                if response.status_code < 400:
                    try:
                        return response.json()
                    except ValueError:
                        raise TaskError(f"{what}: the scheduler's answer is not JSON") from None
                problem = f"HTTP {response.status_code}: {_error_message(response)}"
                if response.status_code not in _TRANSIENT_STATUSES:
                    raise TaskError(f"{what}: the scheduler at {self.server} refused: {problem}")
            if not forever and attempt >= len(RETRY_DELAYS):
                raise TaskError(f"{what}: gave up after {attempt + 1} attempts: {problem}")
            delay = RETRY_DELAYS[attempt] if attempt < len(RETRY_DELAYS) else WAIT_MAX_DELAY
            attempt += 1
            self._log(f"{what}: {problem}; retrying in {delay:g}s (attempt {attempt + 1})")
            time.sleep(delay)

    def spec(self) -> dict[str, Any]:
        found = self._request("GET", "fetching the job's spec", "spec")
        if not isinstance(found, dict):
            raise TaskError("fetching the job's spec: the answer is not a JSON object")
        return found

    def status(self, *, forever: bool = False) -> dict[str, Any]:
        found = self._request("GET", "reading the job's status", "status", forever=forever)
        if not isinstance(found, dict) or "state" not in found:
            raise TaskError("reading the job's status: the answer has no state")
        return found

    def report(self, task: str, status: str, reason: str | None = None, message: str | None = None) -> None:
        body: dict[str, Any] = {"task": task, "status": status}
        if reason is not None:
            body["reason"] = reason
        if message is not None:
            body["message"] = _clip(message)
        self._request("POST", f"reporting {task} {status}", "phase", body=body)


def _error_message(response: httpx.Response) -> str:
    try:
        error = response.json()["error"]
        return f"{error['code']}: {error['message']}"
    except (ValueError, KeyError, TypeError):
        return (response.text.strip().splitlines() or [response.reason_phrase or "error"])[0][:200]


def _clip(message: str) -> str:
    return message if len(message) <= _MESSAGE_MAX else "[...]\n" + message[-_MESSAGE_MAX:]


# ---------------------------------------------------------------------------------------------- rendering


def render_spec(spec: Mapping[str, Any]) -> ir.Values:
    """The job's values from its spec (`GET /spec`): `ir.render(bundle, parameters, globals)`, exactly as
    `scheduler.values.render_values` renders on the server. Raises `ir.IRValidationError`."""
    files = spec.get("files")
    if not isinstance(files, dict) or not files:
        raise ir.IRValidationError([ir.Issue("<spec>", "", "files", "the spec holds no IR files")])
    bundle = ir.load_bundle_files({str(name): str(text) for name, text in files.items()})
    digest = spec.get("digest")
    if digest and bundle.digest() != digest:
        raise ir.IRValidationError(
            [ir.Issue("<spec>", "", "digest", f"the IR does not match its digest {digest} (got {bundle.digest()})")]
        )
    settings = ir.make_globals(spec.get("globals") or {})
    parameters = spec.get("parameters") or {}
    return ir.render(bundle, parameters if isinstance(parameters, dict) else {}, settings)


_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(h|m|s)")


def parse_duration(text: str) -> float:
    """Seconds in `10m`, `90s`, `1h30m`, `10m0s` (Go's form, as helm and Tekton write it) or plain `600`."""
    value = text.strip()
    if re.fullmatch(r"\d+(?:\.\d+)?", value):
        seconds = float(value)
    elif value and _DURATION_PART.sub("", value) == "":
        factor = {"h": 3600.0, "m": 60.0, "s": 1.0}
        seconds = sum(float(number) * factor[unit] for number, unit in _DURATION_PART.findall(value))
    else:
        raise ValueError(f"not a duration: {text!r} (use e.g. 10m, 90s, 1h30m)")
    if seconds <= 0:
        raise ValueError(f"a timeout must be positive, got {text!r}")
    return seconds


def _issues(exc: ir.IRValidationError) -> str:
    return "\n".join(str(issue) for issue in exc.issues)


def _write_private(folder: Path, text: str) -> Path:
    """`<folder>/values.yaml`, readable by the owner only: the values hold the job token."""
    path = folder / "values.yaml"
    path.touch(mode=0o600)
    path.write_text(text, encoding="utf-8")
    return path


# ---------------------------------------------------------------------------------------------- the commands


def _helm(executable: str) -> HelmClient:
    # pyhelm3 (the `k8s` extra) is imported only by the commands that run helm.
    from scheduler.helm import HelmClient

    logging.getLogger("pyhelm3").setLevel(logging.ERROR)  # our own lines say what helm did
    return HelmClient(executable)


def _run(work: Coroutine[Any, Any, _T]) -> _T:
    return asyncio.run(work)


def _job_uuid(job_id: str) -> uuid.UUID:
    try:
        return uuid.UUID(job_id)
    except ValueError:
        raise typer.BadParameter(f"not a job id: {job_id!r} (job ids are UUIDs)", param_hint="--job-id") from None


def _timeout_option(text: str | None) -> float | None:
    if text is None or not text.strip():
        return None
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--timeout") from None


def _blank_is_none(value: str | None) -> str | None:
    """Tekton passes an unset param as an empty string: it means "not given"."""
    return value if value and value.strip() else None


def _finish(log: PhaseLog, started: float, code: int) -> NoReturn:
    log(f"{'done' if code == 0 else 'failed'} in {time.monotonic() - started:.2f}s (exit {code})")
    raise typer.Exit(code)


def _report(
    api: TaskApi, log: PhaseLog, task: str, status: str, reason: str | None = None, message: str | None = None
) -> bool:
    """Report a phase; a failure to report is logged (the caller decides whether it matters)."""
    try:
        api.report(task, status, reason, message)
    except TaskError as exc:
        log(f"could not report {task} {status} to the scheduler: {exc}")
        return False
    log(f"reported {task} {status}" + (f" ({reason})" if reason else ""))
    return True


JobIdOption = Annotated[str, typer.Option("--job-id", envvar="MODELOPS_JOB_ID", help="The job's id (a UUID).")]
SchedulerOption = Annotated[
    str, typer.Option("--scheduler-url", envvar="MODELOPS_SCHEDULER_URL", help="The scheduler's URL.")
]
ReleaseOption = Annotated[
    str | None,
    typer.Option(
        "--release", envvar="MODELOPS_RELEASE", show_default=False, help="Helm release (default modelops-<job id>)."
    ),
]
NamespaceOption = Annotated[
    str | None,
    typer.Option(
        "--namespace",
        envvar="MODELOPS_NAMESPACE",
        show_default=False,
        help="Namespace of the release (default: the values' pipeline.namespace). It must exist.",
    ),
]
ChartOption = Annotated[
    str, typer.Option("--chart", envvar="MODELOPS_CHART", help="The chart (folder, package or OCI).")
]
TokenOption = Annotated[
    str | None,
    typer.Option(
        "--token",
        envvar="MODELOPS_JOB_TOKEN",
        show_default=False,
        help="The job's token (better: env MODELOPS_JOB_TOKEN).",
    ),
]
HelmOption = Annotated[str, typer.Option("--helm", envvar="MODELOPS_HELM", help="The helm binary.")]
LogFormatOption = Annotated[
    LogFormat,
    typer.Option(
        "--log-format",
        envvar="MODELOPS_TASK_LOG_FORMAT",
        help="text: timestamped plain lines (what `tkn pipelinerun logs` shows best); json: one object a line.",
    ),
]


@task_app.command("install")
def install(
    job_id: JobIdOption,
    scheduler_url: SchedulerOption,
    release: ReleaseOption = None,
    namespace: NamespaceOption = None,
    chart: ChartOption = DEFAULT_CHART,
    timeout: Annotated[
        str | None,
        typer.Option(help="How long helm waits for readiness, e.g. 10m (default: the pipeline's install timeout)."),
    ] = None,
    dry_run: Annotated[
        bool,
        typer.Option("--dry-run", help="Print the manifests `helm template` renders; install nothing, report nothing."),
    ] = False,
    token: TokenOption = None,
    helm: HelmOption = "helm",
    log_format: LogFormatOption = "text",
) -> None:
    """Render the job's values and install them as the job's Helm release; report the phase."""
    from scheduler.lifecycle import RENDER_FAILED  # the server side is imported by the commands that need it

    uid = _job_uuid(job_id)
    seconds = _timeout_option(timeout)
    # With --dry-run stdout carries the manifests, so the step lines go to stderr.
    log = PhaseLog(
        None,
        echo=sys.stderr if dry_run else sys.stdout,
        secrets=_secrets_of(token),
        fmt=log_format,
        logger="install",
    )
    name = _blank_is_none(release) or f"modelops-{uid}"
    started = time.monotonic()
    log(
        f"install: job {uid}, release {name}, chart {chart}, scheduler {scheduler_url}"
        + (" (dry run)" if dry_run else "")
    )
    api = TaskApi(scheduler_url, uid, token, log)
    try:
        if not dry_run and not _report(api, log, "install", "started"):
            _finish(log, started, 1)
        try:
            with log.step("fetch the job's spec"):
                spec = api.spec()
        except TaskError as exc:
            log(str(exc))
            _finish(log, started, 1)
        log(f"pipeline {spec.get('pipeline')} version {spec.get('version')} (digest {str(spec.get('digest'))[:12]})")
        try:
            with log.step("render the values"):
                values = render_spec(spec)
        except ir.IRValidationError as exc:
            log(_issues(exc))
            if not dry_run:
                _report(api, log, "install", "failed", RENDER_FAILED, f"the values do not render:\n{_issues(exc)}")
            _finish(log, started, 1)
        where = _blank_is_none(namespace) or values.pipeline.namespace
        wait_for = seconds if seconds is not None else float(values.pipeline.timeout_seconds.get("install", 600))
        log(
            f"{len(values.scoring_services)} scoring service(s), {len(values.scoring_flows)} scoring flow(s); "
            f"release {name} in namespace {where}"
        )
        client = _helm(helm)
        with tempfile.TemporaryDirectory(prefix="modelops-install-") as folder:
            path = _write_private(Path(folder), ir.to_yaml(values))
            log(f"wrote the values to {path}")
            if dry_run:
                code = _template(client, log, name, chart, path, where, _secrets_of(token))
            else:
                code = _install(client, api, log, name, chart, path, where, wait_for)
        _finish(log, started, code)
    finally:
        api.close()


def _template(
    client: HelmClient, log: PhaseLog, release: str, chart: str, path: Path, namespace: str, secrets: list[str]
) -> int:
    from scheduler.helm import HelmError

    try:
        with log.step(f"helm template {release} {chart} (namespace {namespace})"):
            text = _run(client.template(release, chart, path, namespace=namespace))
    except HelmError as exc:
        log(exc.message)
        return 1
    for secret in secrets:
        text = text.replace(secret, "***")
    sys.stdout.write(text)
    sys.stdout.flush()
    return 0


def _install(
    client: HelmClient,
    api: TaskApi,
    log: PhaseLog,
    release: str,
    chart: str,
    path: Path,
    namespace: str,
    timeout: float,
) -> int:
    from scheduler.helm import HelmError, HelmTimeout
    from scheduler.lifecycle import INSTALL_FAILED, INSTALL_TIMEOUT

    try:
        with log.step(
            f"helm upgrade --install {release} {chart} (namespace {namespace}, --wait --atomic, timeout {timeout:g}s)"
        ):
            found = _run(client.upgrade_install(release, chart, path, namespace=namespace, timeout=timeout))
    except HelmTimeout as exc:
        log(exc.message)
        _report(api, log, "install", "failed", INSTALL_TIMEOUT, f"not ready within {timeout:g}s: {exc.message}")
        return 1
    except HelmError as exc:
        log(exc.message)
        _report(api, log, "install", "failed", INSTALL_FAILED, exc.message)
        return 1
    message = f"release {found.name} revision {found.revision} {found.status} in namespace {found.namespace}"
    log(message)
    _report(api, log, "install", "succeeded", message=message)
    return 0


@task_app.command("wait")
def wait(
    job_id: JobIdOption,
    scheduler_url: SchedulerOption,
    interval: Annotated[float, typer.Option(min=0.01, help="Seconds between two looks at the job's status.")] = 2.0,
    token: TokenOption = None,
    log_format: LogFormatOption = "text",
) -> None:
    """Wait until the scoring flows report completion (exit 0 if they succeeded) or the job ends otherwise."""
    from scheduler.lifecycle import SCORING_FAILED

    uid = _job_uuid(job_id)
    log = PhaseLog(None, echo=sys.stdout, secrets=_secrets_of(token), fmt=log_format, logger="wait")
    started = time.monotonic()
    log(f"wait: job {uid}, scheduler {scheduler_url}, polling every {interval:g}s")
    api = TaskApi(scheduler_url, uid, token, log)
    try:
        if not _report(api, log, "wait", "started"):
            _finish(log, started, 1)
        seen: tuple[Any, ...] | None = None
        while True:
            try:
                found = api.status(forever=True)
            except TaskError as exc:
                log(str(exc))
                _finish(log, started, 1)
            state = str(found.get("state"))
            now = (state, found.get("task"), found.get("reason"))
            if now != seen:
                seen = now
                log(f"job {state}, task {found.get('task') or '-'}, reason {found.get('reason') or '-'}")
            if state == JobState.CANCELLING.value or state in TERMINAL:
                log(f"the job is {state}: the scoring will not complete, nothing more to wait for")
                _finish(log, started, 1)
            completion = found.get("completion")
            message = found.get("completionMessage")
            if completion == "succeeded":
                log("the scoring flows reported success" + (f": {message}" if message else ""))
                _report(api, log, "wait", "succeeded", message=message)
                _finish(log, started, 0)
            if completion == "failed":
                text = message or "a flow reported that the scoring failed"
                log(f"the scoring flows reported failure: {text}")
                _report(api, log, "wait", "failed", str(found.get("completionReason") or SCORING_FAILED), text)
                _finish(log, started, 1)
            time.sleep(interval)
    finally:
        api.close()


@task_app.command("uninstall")
def uninstall(
    job_id: JobIdOption,
    scheduler_url: SchedulerOption,
    release: ReleaseOption = None,
    namespace: NamespaceOption = None,
    timeout: Annotated[str, typer.Option(help="How long helm waits for the resources to go, e.g. 10m.")] = "10m",
    token: TokenOption = None,
    helm: HelmOption = "helm",
    log_format: LogFormatOption = "text",
) -> None:
    """Uninstall the job's Helm release (a release that does not exist counts as success); report the phase."""
    from scheduler.helm import HelmError
    from scheduler.lifecycle import UNINSTALL_FAILED

    uid = _job_uuid(job_id)
    seconds = _timeout_option(timeout) or DEFAULT_UNINSTALL_TIMEOUT_SECONDS
    log = PhaseLog(None, echo=sys.stdout, secrets=_secrets_of(token), fmt=log_format, logger="uninstall")
    name = _blank_is_none(release) or f"modelops-{uid}"
    started = time.monotonic()
    log(f"uninstall: job {uid}, release {name}, scheduler {scheduler_url}")
    api = TaskApi(scheduler_url, uid, token, log)
    try:
        # The finally task: uninstall whatever the scheduler says (or does not say).
        _report(api, log, "uninstall", "started")
        where = _blank_is_none(namespace) or _namespace_from_spec(api, log)
        client = _helm(helm)
        try:
            with log.step(f"helm uninstall {name} (namespace {where}, --wait, timeout {seconds:g}s)"):
                removed = _run(client.uninstall(name, namespace=where, timeout=seconds))
        except HelmError as exc:
            log(exc.message)
            _report(api, log, "uninstall", "failed", UNINSTALL_FAILED, exc.message)
            _finish(log, started, 1)
        if removed:
            message = f"release {name} uninstalled from namespace {where}"
        else:
            message = f"release {name} not found in namespace {where}: nothing to uninstall (counts as success)"
        log(message)
        _report(api, log, "uninstall", "succeeded", message=message)
        _finish(log, started, 0)
    finally:
        api.close()


def _namespace_from_spec(api: TaskApi, log: PhaseLog) -> str:
    """The release's namespace as install chose it (the values' `pipeline.namespace`), or `default`."""
    try:
        return render_spec(api.spec()).pipeline.namespace
    except (TaskError, ir.IRValidationError) as exc:
        log(f"no --namespace and the job's spec gives none ({str(exc).splitlines()[0]}): using namespace default")
        return "default"
