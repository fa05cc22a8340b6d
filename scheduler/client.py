"""A small typed client of the scheduler's REST API (`/api/v1`), used by the `modelops` CLI and the benchmark.

Synchronous (httpx), because its callers are a command line and a load script's set-up: one request at a time.
Responses are parsed into the pydantic models below, which mirror the server's response models in
`scheduler.api.models` field for field (a test checks they do not drift apart). They are declared here
rather than imported so a CLI command does not pull in the server (SQLAlchemy, FastAPI) just to print a job.

Every failure is a `ClientError` whose `message` is one line fit for stderr:

- `SchedulerUnreachable`: nothing answers at the address (connection refused, DNS, timeout);
- `ApiError`: the server answered with an error body `{"error": {"code", "message", "details"}}`; for a 422
  `detail_lines()` lists every problem (IR issues as `file: Kind name: path: message`, request fields as
  `loc: message`).
"""

from __future__ import annotations

import contextlib
import io
import json
import tarfile
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import datetime
from pathlib import Path, PurePosixPath
from types import TracebackType
from typing import Any, Final, TypeVar
from urllib.parse import urlsplit

import httpx
from pydantic import BaseModel, ConfigDict, Field, ValidationError

import ir
from scheduler.artifact_upload import (
    ArtifactError,
    LocalArtifact,
    MissingArtifact,
    bundle_folder,
    folder_tar,
    local_artifacts,
    rewritten_payload,
)
from scheduler.states import TERMINAL, JobState, Task

__all__ = [
    "DEFAULT_SERVER",
    "ApiError",
    "ClientError",
    "Deployment",
    "Job",
    "JobDetail",
    "JobEvent",
    "JobPage",
    "Pipeline",
    "SchedulerClient",
    "SchedulerUnreachable",
    "VersionDiff",
    "bundle_payload",
    "resolve_job_id",
]

DEFAULT_SERVER: Final = "http://127.0.0.1:8787"
"""Where `modelops serve` listens by default, and where the CLI looks when no server is configured."""

API: Final = "/api/v1"
IR_SUFFIXES: Final = (".yaml", ".yml", ".json")
"""The files of a bundle folder that are sent (as `ir.load_bundle` reads a folder)."""
TARBALL_SUFFIXES: Final = (".tar.gz", ".tgz")

_TIMEOUT: Final = httpx.Timeout(30.0, connect=5.0)
_EVENTS_READ_SECONDS: Final = 60.0
"""How long an event stream may stay silent (the server sends a keep-alive every 15 s)."""
_DEPLOY_TIMEOUT: Final = httpx.Timeout(120.0, connect=5.0)
_LOOPBACK: Final = frozenset({"127.0.0.1", "::1", "localhost"})
ID_PREFIX_MIN: Final = 4
"""The fewest hex digits of a job id the commands accept for it (as the API's `id_prefix` filter)."""
AMBIGUOUS_SHOWN: Final = 5
"""How many of the jobs an ambiguous id prefix matches are named in the error."""


# ---------------------------------------------------------------------------------------------- errors


class ClientError(Exception):
    """A request to the scheduler failed; `message` is one line saying what failed."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class SchedulerUnreachable(ClientError):
    """Nothing (or nothing that speaks HTTP) answers at the server address."""

    def __init__(self, server: str, reason: str) -> None:
        super().__init__(f"no scheduler at {server}: {reason}")
        self.server = server
        self.reason = reason


class ApiError(ClientError):
    """The server answered with an error status; `code`, `message` and `details` come from its error body."""

    def __init__(self, status: int, code: str, message: str, details: Any = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.details = details

    def detail_lines(self) -> list[str]:
        """One line per problem listed in `details` (422 errors), in the server's order; [] when none."""
        if not isinstance(self.details, list):
            return []
        return [_problem_line(item) for item in self.details if isinstance(item, Mapping)]


def _problem_line(item: Mapping[str, Any]) -> str:
    if "file" in item:  # an IR issue: file, document ("Kind name"), path, message, line
        parts = [str(item.get("file") or "<bundle>")]
        parts += [str(item[key]) for key in ("document", "path") if item.get(key)]
        text = ": ".join(parts) + ": " + str(item.get("message", ""))
        return f"{text} (line {item['line']})" if item.get("line") is not None else text
    loc = item.get("loc")
    where = ".".join(str(part) for part in loc) if isinstance(loc, list) else ""
    message = str(item.get("message", item))
    return f"{where}: {message}" if where else message


# ---------------------------------------------------------------------------------------------- models


class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True, populate_by_name=True)


_M = TypeVar("_M", bound=_Model)


class Deployment(_Model):
    """`POST /pipelines`: the stored version; `created` is false when the same IR was there already."""

    name: str
    version: int
    digest: str
    created: bool
    created_at: datetime
    created_by: str | None


class VersionSummary(_Model):
    version: int
    digest: str
    created_at: datetime
    created_by: str | None
    jobs: int = 0


class Pipeline(_Model):
    """`GET /pipelines` item: a pipeline and its versions, oldest first."""

    name: str
    created_at: datetime
    latest_version: int
    latest_deployed_at: datetime | None = None
    """When the latest version was deployed (None from a server older than the field)."""
    latest_deployed_by: str | None = None
    """Who deployed it (the API token's name; None in open mode or from an older server)."""
    jobs: int = 0
    """How many jobs ran any version (0 from a server older than the count)."""
    versions: list[VersionSummary]


class VersionDiff(_Model):
    """`GET /pipelines/{name}/diff`: unified diffs between two versions, of the IR and of the default values."""

    name: str
    from_version: int
    to_version: int
    ir: str
    values: str


class Latency(_Model):
    """Score request latencies in milliseconds over a flow's last requests."""

    mean: float
    p50: float
    p99: float


class ServiceProgress(_Model):
    """What a flow saw of one scoring service: requests, rows scored, errors, retries, latency."""

    requests: int = 0
    rows: int = 0
    errors: int = 0
    retries: int = 0
    latency_ms: Latency | None = None


class FlowProgress(_Model):
    """One flow's latest progress report (`state` is starting, running, done, failed or stopped)."""

    state: str | None = None
    read: int = 0
    written: int = 0
    failed: int = 0
    filtered: int = 0
    total: int | None = None
    unit: str | None = None
    done: int | None = None
    rate: float | None = None
    outputs: list[str] = Field(default_factory=list)
    services: dict[str, ServiceProgress] = Field(default_factory=dict)
    at: datetime | None = None


class Progress(_Model):
    """A job's record counters; with `total` and `unit` when the size of its sources is known."""

    read: int
    written: int
    failed: int
    filtered: int = 0
    total: int | None = None
    unit: str | None = None
    done: int | None = None
    flows: dict[str, FlowProgress] = Field(default_factory=dict)


class Completion(_Model):
    succeeded: bool
    message: str | None


class JobEvent(_Model):
    """One entry of a job's history: a state change, or a task change (`from == to`)."""

    at: datetime
    from_state: JobState | None = Field(alias="from")
    to_state: JobState = Field(alias="to")
    task: Task | None
    reason: str | None
    message: str | None


class Job(_Model):
    """`JobOut`: state, task, why (`reason`, `message`), timestamps and progress of a job."""

    id: uuid.UUID
    pipeline: str
    version: int
    state: JobState
    task: Task | None
    reason: str | None
    message: str | None
    parameters: dict[str, Any]
    environment: dict[str, Any]
    backend: str
    backend_ref: dict[str, Any] | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    queue_position: int | None = None
    """Set while the job waits for admission: 1 is the next job to start."""
    progress: Progress
    completion: Completion | None
    flow_completions: dict[str, Completion] = Field(default_factory=dict)

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL


class JobDetail(Job):
    """`GET /jobs/{id}`: a job with every event, oldest first."""

    events: list[JobEvent]


class JobPage(_Model):
    items: list[Job]
    next_cursor: str | None


# ---------------------------------------------------------------------------------------------- bundles


def bundle_payload(path: Path) -> tuple[bytes, str]:
    """The body and Content-Type that deploy the IR bundle at `path`.

    A `.tar.gz`/`.tgz` file is sent as it is (`application/gzip`); a folder's IR files (`.yaml`, `.yml`,
    `.json`, none hidden) or a single file are sent as `{"files": {relative name: text}}`, so the server's
    errors name the files as they are on disk. Files that are not UTF-8 go as a tarball instead (JSON cannot
    carry them; the server then says what is wrong with them). Raises `ClientError` when there is nothing to send.
    """
    if not path.exists():
        raise ClientError(f"{path}: no such file or directory")
    if path.is_file() and path.name.endswith(TARBALL_SUFFIXES):
        return _read(path), "application/gzip"
    if path.is_dir():
        found = sorted(
            p
            for p in path.rglob("*")
            if p.is_file() and p.suffix in IR_SUFFIXES and not any(s.startswith(".") for s in p.relative_to(path).parts)
        )
        if not found:
            raise ClientError(f"{path}: the folder holds no .yaml, .yml or .json files")
        files = {p.relative_to(path).as_posix(): _read(p) for p in found}
    elif path.is_file():
        files = {path.name: _read(path)}
    else:
        raise ClientError(f"{path}: not a file or a folder")
    try:
        texts = {name: data.decode("utf-8") for name, data in files.items()}
    except UnicodeDecodeError:
        return _tarball(files), "application/gzip"
    return json.dumps({"files": texts}).encode("utf-8"), "application/json"


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ClientError(f"{path}: cannot read it: {exc.strerror or exc}") from None


def _tarball(files: Mapping[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name, data in files.items():
            info = tarfile.TarInfo(str(PurePosixPath(name)))
            info.size = len(data)
            info.mode = 0o644
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


# ---------------------------------------------------------------------------------------------- client


class SchedulerClient:
    """The REST API of one scheduler. Use as a context manager, or `close()` it.

    `token` is sent as `Authorization: Bearer <token>`. `transport` lets tests talk to an app in-process.
    """

    def __init__(
        self,
        server: str = DEFAULT_SERVER,
        token: str | None = None,
        *,
        timeout: httpx.Timeout | float = _TIMEOUT,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.server = server.rstrip("/")
        headers = {"Accept": "application/json", "User-Agent": "modelops-cli"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        host = urlsplit(self.server).hostname or ""
        self._http = httpx.Client(
            base_url=self.server,
            headers=headers,
            timeout=timeout,
            transport=transport,
            # A proxy from the environment must not stand between us and a scheduler on this machine.
            trust_env=host not in _LOOPBACK,
        )

    def __enter__(self) -> SchedulerClient:
        return self

    def __exit__(self, *_: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    # -- plumbing ---------------------------------------------------------------------------------

    def _request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self._http.request(method, url, **kwargs)
        except httpx.TransportError as exc:
            raise SchedulerUnreachable(self.server, _transport_reason(exc)) from exc
        if response.status_code >= 400:
            raise _api_error(response)
        return response

    def _parse(self, model: type[_M], response: httpx.Response) -> _M:
        try:
            return model.model_validate(response.json())
        except (ValueError, ValidationError) as exc:
            raise ClientError(
                f"{self.server} answered {response.request.method} {response.request.url.path} with a body "
                f"that is not a {model.__name__}: is it a modelops scheduler of this version? ({_first_line(exc)})"
            ) from None

    # -- health -----------------------------------------------------------------------------------

    def ready(self) -> bool:
        """True when the server answers `/readyz` with 200 (it is started and reaches its database)."""
        try:
            return self._http.get("/readyz").status_code == 200
        except httpx.TransportError:
            return False

    def check(self) -> None:
        """Make sure a scheduler answers: `SchedulerUnreachable` if nothing does, `ApiError` if it is not ready."""
        self._request("GET", "/readyz")

    # -- pipelines --------------------------------------------------------------------------------

    def deploy(
        self, path: Path, on_artifact: Callable[[LocalArtifact | MissingArtifact, bool], None] | None = None
    ) -> Deployment:
        """Deploy the IR bundle at `path` (folder, file or .tar.gz); see `bundle_payload`.

        Its relative model artifacts are uploaded first (those the server has not got) and the IR deployed
        names them by sha256 (`scheduler.artifact_upload`); `on_artifact(artifact, uploaded)` hears of each,
        and of each relative uri with no file next to the bundle (left for the server's model store).
        """
        body, content_type = bundle_payload(path)
        try:
            bundle = ir.load_bundle(path)
        except ir.IRValidationError:
            return self.deploy_bytes(body, content_type)  # as it is: the server lists every problem
        try:
            artifacts, missing = local_artifacts(bundle, bundle_folder(path))
        except ArtifactError as exc:
            raise ClientError(f"{path}: {exc}") from None
        for absent in missing:
            if on_artifact is not None:
                on_artifact(absent, False)
        if not artifacts:
            return self.deploy_bytes(body, content_type)
        for artifact in artifacts:
            uploaded = not self.has_artifact(artifact.sha256)
            if uploaded:
                self.upload_artifact(artifact)
            if on_artifact is not None:
                on_artifact(artifact, uploaded)
        return self.deploy_bytes(*rewritten_payload(bundle, artifacts))

    def has_artifact(self, sha256: str) -> bool:
        """Whether the server's artifact store holds this sha256 (`HEAD /artifacts/{sha256}`)."""
        try:
            self._request("HEAD", f"{API}/artifacts/{sha256}")
        except ApiError as exc:
            if exc.status in (401, 403, 404):
                return False  # not there, or not for us to see: the upload's answer says which, with a body
            raise
        return True

    def upload_artifact(self, artifact: LocalArtifact) -> dict[str, Any]:
        """`POST /artifacts` of a file, or of a folder as a tar; the server checks the sha256."""
        params = {"kind": artifact.kind, "sha256": artifact.sha256}
        headers = {"Content-Type": "application/gzip" if artifact.kind == "folder" else "application/octet-stream"}
        try:
            content = folder_tar(artifact.path) if artifact.kind == "folder" else artifact.path.read_bytes()
        except OSError as exc:
            raise ClientError(f"{artifact.path}: cannot read it: {exc.strerror or exc}") from None
        response = self._request(
            "POST", f"{API}/artifacts", params=params, content=content, headers=headers, timeout=_DEPLOY_TIMEOUT
        )
        body: dict[str, Any] = response.json()
        return body

    def deploy_bytes(self, body: bytes, content_type: str) -> Deployment:
        response = self._request(
            "POST", f"{API}/pipelines", content=body, headers={"Content-Type": content_type}, timeout=_DEPLOY_TIMEOUT
        )
        return self._parse(Deployment, response)

    def list_pipelines(self) -> list[Pipeline]:
        return self._parse(_PipelineList, self._request("GET", f"{API}/pipelines")).items

    def diff_versions(self, pipeline: str, old: int, new: int) -> VersionDiff:
        """What changed from version `old` to `new` of `pipeline` (IR and default values, as unified diffs)."""
        params = {"from": old, "to": new}
        return self._parse(VersionDiff, self._request("GET", f"{API}/pipelines/{pipeline}/diff", params=params))

    # -- jobs -------------------------------------------------------------------------------------

    def create_job(
        self,
        pipeline: str,
        *,
        version: int | None = None,
        parameters: Mapping[str, Any] | None = None,
        environment: Mapping[str, Any] | None = None,
        idempotency_key: str | None = None,
    ) -> Job:
        body: dict[str, Any] = {"pipeline": pipeline}
        if version is not None:
            body["version"] = version
        if parameters:
            body["parameters"] = dict(parameters)
        if environment:
            body["environment"] = dict(environment)
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        return self._parse(Job, self._request("POST", f"{API}/jobs", json=body, headers=headers))

    def list_jobs(
        self,
        *,
        state: JobState | None = None,
        pipeline: str | None = None,
        limit: int | None = None,
        cursor: str | None = None,
        id_prefix: str | None = None,
        q: str | None = None,
    ) -> JobPage:
        params: dict[str, str | int] = {}
        if id_prefix is not None:
            params["id_prefix"] = id_prefix
        if q is not None:
            params["q"] = q
        if state is not None:
            params["state"] = state.value
        if pipeline is not None:
            params["pipeline"] = pipeline
        if limit is not None:
            params["limit"] = limit
        if cursor is not None:
            params["cursor"] = cursor
        return self._parse(JobPage, self._request("GET", f"{API}/jobs", params=params))

    def resolve_job_id(self, job_id: uuid.UUID | str) -> uuid.UUID:
        """The job id that `job_id` names, a full id or a prefix (see `resolve_job_id`); the server finds the
        jobs a prefix matches (`GET /jobs?id_prefix=`)."""
        return resolve_job_id(job_id, lambda prefix: self.list_jobs(id_prefix=prefix, limit=AMBIGUOUS_SHOWN))

    def get_job(self, job_id: uuid.UUID | str) -> JobDetail:
        return self._parse(JobDetail, self._request("GET", f"{API}/jobs/{self.resolve_job_id(job_id)}"))

    def cancel_job(self, job_id: uuid.UUID | str) -> Job:
        return self._parse(Job, self._request("POST", f"{API}/jobs/{self.resolve_job_id(job_id)}/cancel"))

    def log_components(self, job_id: uuid.UUID | str) -> list[str]:
        """The job's log components (`install`, `wait`, `uninstall`, `service/<name>`, `flow/<name>`)."""
        response = self._request("GET", f"{API}/jobs/{self.resolve_job_id(job_id)}/logs/components")
        return list(self._parse(_LogComponents, response).components)

    def logs(
        self,
        job_id: uuid.UUID | str,
        *,
        task: Task | None = None,
        components: Sequence[str] = (),
        follow: bool = False,
    ) -> Iterator[str]:
        """The job's log text, chunk by chunk as the server sends it: the lines of `components` (all when none is
        given, nor `task`), interleaved by time and prefixed `[component]`; with `follow`, until the job ends."""
        params = httpx.QueryParams([("component", name) for name in components])
        if task is not None:
            params = params.add("task", task.value)
        if follow:
            params = params.add("follow", "true")
        timeout = httpx.Timeout(30.0, connect=5.0, read=None) if follow else _TIMEOUT
        request = self._http.build_request(
            "GET", f"{API}/jobs/{self.resolve_job_id(job_id)}/logs", params=params, timeout=timeout
        )
        try:
            response = self._http.send(request, stream=True)
        except httpx.TransportError as exc:
            raise SchedulerUnreachable(self.server, _transport_reason(exc)) from exc
        try:
            if response.status_code >= 400:
                response.read()
                raise _api_error(response)
            try:
                yield from response.iter_text()
            except httpx.TransportError as exc:
                raise SchedulerUnreachable(self.server, f"the log stream broke: {_transport_reason(exc)}") from exc
        finally:
            response.close()


    def job_events(self, job_id: uuid.UUID | str) -> Iterator[JobDetail]:
        """The job now, then each time it changes, until it ends (`GET /jobs/{id}/events`, server-sent events):
        ends after the job in a terminal state, or when the server ends the stream (it is stopping: the caller
        may read the job again). A read timeout of `_EVENTS_READ_SECONDS` (the server sends a keep-alive every
        15 s) notices a server that went away."""
        request = self._http.build_request(
            "GET",
            f"{API}/jobs/{self.resolve_job_id(job_id)}/events",
            headers={"Accept": "text/event-stream"},
            timeout=httpx.Timeout(30.0, connect=5.0, read=_EVENTS_READ_SECONDS),
        )
        try:
            response = self._http.send(request, stream=True)
        except httpx.TransportError as exc:
            raise SchedulerUnreachable(self.server, _transport_reason(exc)) from exc
        try:
            if response.status_code >= 400:
                response.read()
                raise _api_error(response)
            event, data = "message", []
            try:
                for line in response.iter_lines():
                    if line:
                        field, _, value = line.partition(":")
                        value = value.removeprefix(" ")
                        if field == "event":
                            event = value
                        elif field == "data":
                            data.append(value)
                        continue
                    if data and event == "job":
                        yield self._parse_text(JobDetail, "\n".join(data))
                    elif data and event == "end":
                        return
                    elif data and event == "error":
                        body = json.loads("\n".join(data)).get("error", {})
                        raise ApiError(200, str(body.get("code")), str(body.get("message")), body.get("details"))
                    event, data = "message", []
            except httpx.TransportError as exc:
                raise SchedulerUnreachable(self.server, f"the event stream broke: {_transport_reason(exc)}") from exc
        finally:
            response.close()

    def _parse_text(self, model: type[_M], text: str) -> _M:
        try:
            return model.model_validate_json(text)
        except ValidationError as exc:
            raise ClientError(
                f"{self.server} sent an event that is not a {model.__name__}: is it a modelops scheduler of this "
                f"version? ({_first_line(exc)})"
            ) from None


class _PipelineList(_Model):
    items: list[Pipeline]


class _LogComponents(_Model):
    components: list[str]


def resolve_job_id(job_id: uuid.UUID | str, matching: Callable[[str], JobPage]) -> uuid.UUID:
    """The job id that `job_id` names: a full id as it is, or the one job whose id starts with a prefix of at
    least `ID_PREFIX_MIN` hex digits (`274541d4`, as `git` and `docker` accept short ids).

    `matching(prefix)` lists (some of) the jobs whose id starts with the prefix. A prefix that matches no job
    is a 404 `ApiError`; one that matches several is a 409 naming them, never a guess."""
    if isinstance(job_id, uuid.UUID):
        return job_id
    text = job_id.strip()
    with contextlib.suppress(ValueError):
        return uuid.UUID(text)
    digits = text.replace("-", "")
    if not ID_PREFIX_MIN <= len(digits) <= 32 or any(c not in "0123456789abcdefABCDEF" for c in digits):
        raise ApiError(
            422,
            "invalid_request",
            f"not a job id: {job_id!r} (give a job id, or at least its first {ID_PREFIX_MIN} hex digits)",
        )
    page = matching(text)
    if not page.items:
        raise ApiError(404, "job_not_found", f"no job has an id starting with {text!r}")
    if len(page.items) > 1:
        named = ", ".join(str(job.id) for job in page.items)
        more = " and more" if page.next_cursor else ""
        raise ApiError(
            409, "ambiguous_job_id", f"{text!r} is the start of several job ids ({named}{more}): give more of the id"
        )
    return page.items[0].id


def _api_error(response: httpx.Response) -> ApiError:
    status = response.status_code
    try:
        error = response.json()["error"]
        return ApiError(status, str(error["code"]), str(error["message"]), error.get("details"))
    except (ValueError, KeyError, TypeError):
        phrase = response.reason_phrase or "error"
        text = _first_line(response.text)[:200]
        return ApiError(
            status,
            f"http_{status}",
            f"{response.request.method} {response.request.url.path}: HTTP {status} {phrase}"
            + (f": {text}" if text else ""),
        )


def _transport_reason(exc: httpx.TransportError) -> str:
    if isinstance(exc, httpx.ConnectError):
        return "connection refused or host unreachable" if "refused" in str(exc).lower() or not str(exc) else str(exc)
    if isinstance(exc, httpx.TimeoutException):
        return "timed out"
    return _first_line(exc) or type(exc).__name__


def _first_line(value: object) -> str:
    text = str(value).strip()
    return text.splitlines()[0] if text else ""
