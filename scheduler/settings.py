"""Configuration of the scheduling server, read from `MODELOPS_SCHEDULER_*` environment variables.

Defaults run on a laptop with nothing else installed: an SQLite file under `$MODELOPS_HOME` (default
`~/.modelops`), the in-process `local` backend, listening on 127.0.0.1 only. Nothing here is created at import
time: the app factory and the CLI build a `SchedulerSettings()` when they start, tests pass values directly.

API tokens are configured as `name:scope:sha256hex` so the plaintext never sits in the environment, a
process listing or a Helm values file; `hash_token` (and `modelops`'s CLI on top of it) computes the hash.
Validators refuse values that are obviously placeholders (`changeme`, `<password>`, `${VAR}` left unexpanded,
the hash of `secret`, ...), because a scheduler that starts with those is worse than one that refuses to.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
from pathlib import Path
from typing import Annotated, Any, Final, Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

__all__ = ["SchedulerSettings", "TokenScope", "TokenSpec", "default_home", "hash_token"]

TokenScope = Literal["read", "write", "code", "admin"]
"""`read`: GET endpoints; `write`: deploy pipelines, start and cancel jobs; `code`: `write`, and deploy models
whose runtime runs code (`python`, `sklearn`, `torch`; docs/security.md); `admin`: everything."""

_SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")
_TOKEN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")

# Words that only ever appear in a value somebody forgot to replace.
_PLACEHOLDER_WORDS: Final = (
    "changeme",
    "change-me",
    "change_me",
    "replaceme",
    "replace-me",
    "replace_me",
    "placeholder",
    "fixme",
    "xxxx",
)
_PLACEHOLDER_SECRETS: Final = frozenset(
    {"", "secret", "password", "passwd", "token", "admin", "test", "example", "default", "root"}
    | set(_PLACEHOLDER_WORDS)
)
_PLACEHOLDER_TOKEN_HASHES: Final = frozenset(hashlib.sha256(word.encode()).hexdigest() for word in _PLACEHOLDER_SECRETS)


def hash_token(plaintext: str) -> str:
    """The SHA-256 hex digest under which a bearer token is configured and compared."""
    return hashlib.sha256(plaintext.encode("utf-8")).hexdigest()


def default_max_running_jobs() -> int:
    """The default of `max_running_jobs`: this machine's CPU count, at least 2 (see the field)."""
    return max(2, os.cpu_count() or 1)


def default_home() -> Path:
    """`~/.modelops`: where the embedded database and local-run files live unless `MODELOPS_HOME` says else."""
    return Path("~/.modelops").expanduser()


def _looks_like_placeholder(text: str) -> str | None:
    """The reason `text` looks like an unreplaced placeholder, or None."""
    lowered = text.lower()
    for word in _PLACEHOLDER_WORDS:
        if word in lowered:
            return f"contains the placeholder word {word!r}"
    if "${" in text or re.search(r"<[^<>]*>", text):
        return "contains an unexpanded ${VAR} or <placeholder>"
    return None


class TokenSpec(BaseModel):
    """One configured API bearer token: who it is, what it may do, and the SHA-256 of its plaintext."""

    model_config = ConfigDict(frozen=True, use_attribute_docstrings=True)

    name: str
    """A label for logs and audit (`created_by`), e.g. `ci` or `alice`."""
    scope: TokenScope
    """What the token may do: `read`, `write`, `code` or `admin` (each includes the ones before it)."""
    sha256: str
    """The lowercase SHA-256 hex digest of the plaintext token (see `hash_token`)."""
    max_concurrent_jobs: int | None = Field(default=None, ge=1)
    """Quota: at most this many unfinished jobs (queued ones included) created with this token; a start over
    it is 429. None: no limit."""
    max_rows_per_day: int | None = Field(default=None, ge=1)
    """Quota: once the jobs this token created today (UTC) have written this many rows, a start is 429 until
    00:00 UTC. None: no limit."""

    @field_validator("name")
    @classmethod
    def _check_name(cls, value: str) -> str:
        if not _TOKEN_NAME.match(value):
            raise ValueError("a token name is 1-63 letters, digits, '.', '_' or '-', starting alphanumeric")
        return value

    @field_validator("sha256")
    @classmethod
    def _check_hash(cls, value: str) -> str:
        value = value.lower()
        if not _SHA256_HEX.match(value):
            raise ValueError(
                "expected the SHA-256 hex digest of the token (64 hex characters), not the token itself; "
                "compute it with `modelops token hash`, or make a new token with `modelops token new NAME`"
            )
        if value in _PLACEHOLDER_TOKEN_HASHES:
            raise ValueError("this is the hash of a placeholder token such as 'secret' or 'changeme'")
        if len(set(value)) == 1:
            raise ValueError("a hash made of one repeated character is a placeholder")
        return value

    @classmethod
    def parse(cls, text: str) -> TokenSpec:
        """Parse `name:scope:sha256hex`, optionally followed by quotas as `:max_concurrent_jobs=N` and
        `:max_rows_per_day=N` (no commas or spaces: those separate tokens)."""
        parts = text.strip().split(":")
        if len(parts) < 3:
            raise ValueError(f"a token is configured as 'name:scope:sha256hex[:quota=N...]', got {len(parts)} field(s)")
        name, scope, digest, *quotas = parts
        document: dict[str, Any] = {"name": name, "scope": scope, "sha256": digest}
        for quota in quotas:
            key, equals, value = quota.partition("=")
            if not equals or key not in _QUOTA_FIELDS:
                raise ValueError(
                    f"token {name!r}: {quota!r} is not a quota; known: "
                    + ", ".join(f"{field}=N" for field in _QUOTA_FIELDS)
                )
            if key in document:
                raise ValueError(f"token {name!r}: quota {key} is given twice")
            document[key] = value
        return cls.model_validate(document)

    def __str__(self) -> str:
        quotas = "".join(
            f":{field}={getattr(self, field)}" for field in _QUOTA_FIELDS if getattr(self, field) is not None
        )
        return f"{self.name}:{self.scope}:{self.sha256}{quotas}"


_QUOTA_FIELDS: Final = ("max_concurrent_jobs", "max_rows_per_day")
"""The quotas a token entry may carry after its hash (`TokenSpec.parse`)."""


class SchedulerSettings(BaseSettings):
    """Everything the scheduling server needs to start; see the field docstrings for each variable."""

    model_config = SettingsConfigDict(
        env_prefix="MODELOPS_SCHEDULER_",
        extra="ignore",
        use_attribute_docstrings=True,
        validate_by_name=True,
        validate_by_alias=True,
    )

    home: Path = Field(
        default_factory=default_home,
        validation_alias=AliasChoices("MODELOPS_SCHEDULER_HOME", "MODELOPS_HOME"),
    )
    """Directory for the embedded SQLite database and local-run files (`MODELOPS_SCHEDULER_HOME`, or
    `MODELOPS_HOME` shared with the other components; default `~/.modelops`)."""

    database_url: str = Field(default_factory=lambda data: f"sqlite:///{data['home'] / 'modelops.db'}")
    """SQLAlchemy URL of the scheduler database. Default: the SQLite file `<home>/modelops.db`. PostgreSQL URLs
    may be given as `postgresql://` or `postgres://`; they are normalised to the psycopg 3 driver."""

    host: str = "127.0.0.1"
    """Interface the API listens on. The default keeps it off the network; use 0.0.0.0 in a container."""

    port: int = Field(default=8787, ge=1, le=65535)
    """TCP port the API listens on."""

    backend: Literal["local", "tekton"] = "local"
    """Where jobs run: `local` (in-process, deploys local processes) or `tekton` (one PipelineRun per job)."""

    max_running_jobs: int = Field(default_factory=lambda: default_max_running_jobs(), ge=0)
    """Admission: how many jobs may run at once (installing, running or cancelling); further jobs wait PENDING
    in creation order, each with its queue position, and start as slots free. Default: the machine's CPU count,
    at least 2. A local job is at least two processes (a scoring service and a flow) that are busy while it
    scores: more jobs than cores only slice the same cores thinner, each job slower and every one holding its
    memory, while a 2-core laptop still runs one job while another installs. The tekton backend honours the
    same limit before it creates a PipelineRun (set it to what the cluster's quota holds). 0: no limit."""

    tokens: Annotated[list[TokenSpec], NoDecode] = Field(default_factory=list)
    """API bearer tokens as `name:scope:sha256hex`, separated by commas or whitespace, each optionally with
    quotas (`:max_concurrent_jobs=N`, `:max_rows_per_day=N`). Hashes only: the plaintext is never configured.
    Empty means no token is accepted for the protected endpoints."""

    readiness_timeout_seconds: float = Field(default=300.0, gt=0)
    """How long install may wait for the scoring services and flows to become ready before the job fails."""

    uninstall_grace_seconds: float = Field(default=30.0, ge=0)
    """How long uninstall lets processes and pods stop gracefully before they are killed."""

    restart_limit: int = Field(default=3, ge=0, le=1000)
    """Local backend supervision: how many times the processes of one job (its scoring services and flows
    together) are restarted after dying while the job runs, before the job fails (`FlowFailed`, naming the
    component and the restarts); 0: never restart. Like a Deployment restarting its pods and a Job's
    `backoffLimit` on Kubernetes (docs/scheduler.md, Supervision)."""

    restart_backoff_seconds: float = Field(default=1.0, gt=0)
    """The wait before a dead component's first restart; it doubles with each further restart of the same
    component, up to `restart_backoff_max_seconds`."""

    restart_backoff_max_seconds: float = Field(default=30.0, gt=0)
    """The longest wait before restarting a dead component."""

    public_url: str = Field(default_factory=lambda data: _default_public_url(data.get("host"), data.get("port")))
    """The URL scoring flows use to reach this scheduler (progress and completion reports); it goes into every
    job's values as `global.scheduler.url`. Default `http://{host}:{port}`, with a wildcard host (`0.0.0.0`,
    `::`) replaced by the loopback address, which is right for the local backend; behind a proxy or on
    Kubernetes set the address the pods can reach."""

    log_level: Literal["debug", "info", "warning", "error"] = "info"
    """Log level given to the scoring services and flows of every job (`global.logLevel` in the values)."""

    log_format: Literal["text", "json"] = "text"
    """How the server writes its log lines (`ir.logformat`): `text`, `<ISO 8601 UTC ms> LEVEL logger: message`,
    or `json`, one object per line with ts, level, logger and message; also given to the scoring services and
    flows of every job (`global.logFormat` in the values)."""

    size_profile: Literal["small", "medium", "large"] = "small"
    """Default requests and limits for components whose IR gives none (`global.sizeProfile`)."""

    model_store: str | None = None
    """Base URI that relative model artifact paths are resolved against (`global.modelStore`), e.g.
    `file:///srv/models` or `https://models.example.org/`; unset leaves relative paths as they are."""

    data_root: Path | None = None
    """The folder relative file channel paths resolve against (`global.dataRoot`; see docs/scheduler.md,
    "Paths"). Unset: the working directory `modelops serve` was started in (local backend); on the tekton
    backend unset leaves them relative, to the flow pod's working directory."""

    # -- trust (docs/security.md): where jobs may read and write, what they may run -------------------------

    data_roots: Annotated[list[Path], NoDecode] = Field(default_factory=list)
    """Folders (separated by commas) that file sources and sinks may resolve into, after symlinks, besides the
    data root (`data_root`, else the working directory); a job's `environment.dataRoot` must lie inside one of
    them too. Empty (the default): `<home>/data`. Checked on the local backend, at deploy and at job start."""

    artifact_roots: Annotated[list[Path], NoDecode] = Field(default_factory=list)
    """Folders (separated by commas) that local model uris (`file://`, or a relative path without a model
    store) may resolve into, after symlinks, besides the artifact store (`<home>/artifacts`) and the model
    store when it is a folder; a job's `environment.modelStore` must lie inside one of them too. Checked on
    the local backend, at deploy and at job start."""

    allowed_uri_schemes: Annotated[list[str], NoDecode] = Field(default_factory=lambda: ["https"])
    """Remote model uri schemes (separated by commas) a deployer may use, besides the server's own model store
    and artifact store: `https` by default; add `http` only on a network you trust (a plain-text download can
    be changed on the way, and the sha256 is the deployer's). Empty: no remote model uris."""

    allow_code_runtimes: bool = False
    """Let any deployer (scope `write`) deploy models whose runtime runs code from its artifact (`python`,
    `sklearn` and `torch`, which unpickle). Off by default: those need a token with the `code` or `admin`
    scope (403 naming the model and the runtime). Open mode (no tokens, loopback) deploys them anyway."""

    run_as_user: str | None = None
    """Local backend: the OS user (name or uid) the scoring services and flows run as; the server must run as
    root to switch. Unset: the server's own user (a server running as root says so at start)."""

    artifact_max_bytes: int = Field(default=2 * 2**30, ge=1)
    """The largest model artifact `POST /api/v1/artifacts` accepts (a file, or the tar of a folder, and the
    folder unpacked from it). Artifacts are stored under `<home>/artifacts/sha256/`."""

    image_registry: str = Field(default="ghcr.io/modelops", min_length=1)
    """Registry and path prefix of the modelops images the Helm deployer installs (`global.image.registry`)."""

    image_tag: str = Field(default="0.1.0", min_length=1)
    """Tag of the modelops images (`global.image.tag`)."""

    poll_interval_seconds: float = Field(default=1.0, gt=0, le=60)
    """How often the wait phase looks at the deployed flows and at the store, besides being woken at once by a
    completion report: the bound on how late a flow's exit or a report delivered elsewhere is noticed."""

    leader_retry_seconds: float = Field(default=2.0, gt=0, le=60)
    """With PostgreSQL and several replicas: how often a follower tries to take the leader lock, so about how
    long a dead leader goes unreplaced (`scheduler.leader`)."""

    worker_threads: int = Field(default=40, ge=1, le=1000)
    """Worker threads for request handling (the database work of the API): anyio's thread limiter, and the size
    of the PostgreSQL connection pool (plus headroom for the lifecycle engine's own threads). With `workers` > 1
    the count is shared out between the workers, so the server's connections stay within the same budget."""

    workers: int = Field(default=1, ge=1, le=64)
    """API worker processes. 1 (the default): one process serves the API and runs the lifecycle engine. More
    (PostgreSQL only): that many uvicorn workers serve the API and hand jobs to the one lifecycle engine, which
    runs in the supervising process (`scheduler.dispatch`); about one per core is right for a busy server."""

    gc_freeze: bool = True
    """Exempt everything alive once the server has started from later garbage collections (`gc.freeze`):
    shorter collector pauses, so shorter latency tails."""

    # -- the tekton backend (one PipelineRun per job; see docs/kubernetes.md) ---------------------------------

    tekton_namespace: str = Field(default="modelops", pattern=r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
    """Namespace of the Tekton Pipeline, where each job's PipelineRun and token Secret are created (the
    platform chart's namespace). A job's services go to its pipeline's `environment.namespace` instead."""

    tekton_pipeline: str = Field(default="modelops-scoring", min_length=1)
    """Name of the Tekton Pipeline each job's PipelineRun refers to (`pipelineRef.name`)."""

    tekton_service_account: str = Field(default="modelops-runner", min_length=1)
    """ServiceAccount the tasks run as (`taskRunTemplate.serviceAccountName`); tekton/rbac.yaml grants it what
    the install, wait and uninstall tasks need."""

    tekton_chart: str = Field(default="/opt/modelops/charts/modelops", min_length=1)
    """Chart reference the install task deploys (the `chart` param): the chart inside the runner image by
    default, or an OCI reference such as `oci://registry.example/charts/modelops`."""

    tekton_tasks_timeout_seconds: int | None = Field(default=None, gt=0)
    """`timeouts.tasks` of every PipelineRun; unset: the pipeline's install + wait timeouts, plus
    `tekton_timeout_margin_seconds`."""

    tekton_finally_timeout_seconds: int | None = Field(default=None, gt=0)
    """`timeouts.finally` (the uninstall task) of every PipelineRun; unset: the pipeline's uninstall timeout plus
    `tekton_timeout_margin_seconds`."""

    tekton_timeout_margin_seconds: int = Field(default=300, ge=0)
    """Added to the pipeline's own timeouts for the PipelineRun's: pod scheduling and image pulls come first."""

    kube_config: Literal["auto", "in-cluster", "kubeconfig"] = "auto"
    """How the tekton backend reaches the cluster: `in-cluster` (the pod's ServiceAccount), `kubeconfig`, or
    `auto` (in-cluster inside a pod, kubeconfig elsewhere)."""

    kubeconfig: Path | None = None
    """The kubeconfig file for `kube_config=kubeconfig`/`auto` outside a pod; unset: `$KUBECONFIG`, else
    `~/.kube/config`."""

    kube_context: str | None = None
    """The kubeconfig context to use; unset: the file's current context."""

    @field_validator("home", mode="after")
    @classmethod
    def _expand_home(cls, value: Path) -> Path:
        reason = _looks_like_placeholder(str(value))
        if reason:
            raise ValueError(f"home {reason}")
        return value.expanduser()

    @field_validator("data_root", mode="after")
    @classmethod
    def _absolute_data_root(cls, value: Path | None) -> Path | None:
        return None if value is None else value.expanduser().resolve()

    @field_validator("data_roots", "artifact_roots", mode="before")
    @classmethod
    def _split_roots(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("data_roots", "artifact_roots", mode="after")
    @classmethod
    def _absolute_roots(cls, value: list[Path]) -> list[Path]:
        return [root.expanduser().resolve() for root in value]

    @field_validator("allowed_uri_schemes", mode="before")
    @classmethod
    def _split_schemes(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = [part for part in re.split(r"[,\s]+", value) if part]
        if isinstance(value, list | tuple):
            return [str(part).strip().lower().removesuffix("://").removesuffix(":") for part in value]
        return value

    @field_validator("allowed_uri_schemes", mode="after")
    @classmethod
    def _check_schemes(cls, value: list[str]) -> list[str]:
        for scheme in value:
            if scheme == "file":
                raise ValueError("file is not a remote scheme: local model uris are bounded by artifact_roots")
            if not re.match(r"^[a-z][a-z0-9+.-]*$", scheme):
                raise ValueError(f"{scheme!r} is not a uri scheme such as https")
        return value

    @field_validator("run_as_user", mode="after")
    @classmethod
    def _check_run_as_user(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        reason = _looks_like_placeholder(value)
        if reason:
            raise ValueError(f"run_as_user {reason}")
        return value.strip()

    @field_validator("database_url", mode="after")
    @classmethod
    def _normalise_database_url(cls, value: str) -> str:
        value = value.strip()
        try:
            url = make_url(value)
        except ArgumentError as exc:
            raise ValueError(f"not a database URL: {exc}") from None
        if url.drivername in ("postgres", "postgresql"):
            url = url.set(drivername="postgresql+psycopg")
        if url.get_backend_name() not in ("sqlite", "postgresql"):
            raise ValueError(f"unsupported database {url.get_backend_name()!r}: use sqlite or postgresql")
        if url.get_backend_name() == "postgresql" and url.get_driver_name() != "psycopg":
            raise ValueError("PostgreSQL is reached through psycopg 3: use postgresql:// or postgresql+psycopg://")
        reason = _looks_like_placeholder(value) or _looks_like_placeholder(str(url.password or ""))
        if reason:
            raise ValueError(f"database_url {reason}")
        if url.password is not None and str(url.password).lower() in _PLACEHOLDER_SECRETS:
            raise ValueError("database_url has a placeholder password")
        return _render(url)

    @model_validator(mode="after")
    def _workers_need_postgresql(self) -> SchedulerSettings:
        if self.workers > 1 and not self.database_url.startswith("postgresql"):
            raise ValueError(
                f"workers={self.workers} needs PostgreSQL (API workers wake the lifecycle engine with LISTEN/NOTIFY):"
                " use workers=1 with SQLite"
            )
        return self

    @field_validator("host")
    @classmethod
    def _check_host(cls, value: str) -> str:
        if not value.strip() or _looks_like_placeholder(value):
            raise ValueError("host must be an interface name or address such as 127.0.0.1 or 0.0.0.0")
        return value.strip()

    @field_validator("public_url")
    @classmethod
    def _check_public_url(cls, value: str) -> str:
        value = value.strip().rstrip("/")
        if not re.match(r"^https?://[^/\s]+", value):
            raise ValueError("public_url must be an http:// or https:// URL, e.g. http://scheduler.example:8787")
        reason = _looks_like_placeholder(value)
        if reason:
            raise ValueError(f"public_url {reason}")
        return value

    @field_validator("tokens", mode="before")
    @classmethod
    def _parse_tokens(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = [part for part in re.split(r"[,\s]+", value) if part]
        if isinstance(value, list | tuple):
            return [TokenSpec.parse(item) if isinstance(item, str) else item for item in value]
        return value

    @field_validator("tokens", mode="after")
    @classmethod
    def _unique_token_names(cls, value: list[TokenSpec]) -> list[TokenSpec]:
        names = [token.name for token in value]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"token names must be unique, repeated: {', '.join(duplicates)}")
        return value

    def find_token(self, plaintext: str) -> TokenSpec | None:
        """The configured token whose hash matches `plaintext`, compared in constant time; None if none does."""
        digest = hash_token(plaintext)
        found: TokenSpec | None = None
        for token in self.tokens:
            # No early exit: the time taken does not depend on which token matched.
            if hmac.compare_digest(token.sha256, digest):
                found = token
        return found


def _default_public_url(host: object, port: object) -> str:
    """`http://host:port` as local processes reach it: a wildcard address becomes the loopback one."""
    name = host if isinstance(host, str) and host else "127.0.0.1"
    if name in ("0.0.0.0", "::", "[::]"):
        name = "127.0.0.1"
    elif ":" in name and not name.startswith("["):
        name = f"[{name}]"  # an IPv6 literal
    return f"http://{name}:{port if isinstance(port, int) else 8787}"


def _render(url: URL) -> str:
    return url.render_as_string(hide_password=False)
