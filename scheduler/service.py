"""What the REST routes call: the scheduler's use cases, independent of HTTP.

The routes parse requests and format responses; everything else happens here, so tests (and a future
second transport) can call it directly. The service owns the order of operations the `Backend` protocol
expects: create a PENDING job in the store, then `backend.start`; move a job to CANCELLING, then
`backend.cancel`; record a completion, then `backend.completed`.

`JobStore` is synchronous (see `scheduler.db.session`): every store call and every CPU-heavy IR operation
(loading, validating, rendering a bundle) runs in a worker thread, so the event loop keeps serving other
requests and the log streams meanwhile.
"""

from __future__ import annotations

import logging
import math
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, replace
from enum import StrEnum
from pathlib import Path
from typing import Any, Final, ParamSpec, TypeVar

import anyio.to_thread

import ir
from scheduler.admission import START_FAILED_REASON
from scheduler.artifacts import Artifact, ArtifactStore
from scheduler.auth import Principal, ReporterCredential, Unauthorized
from scheduler.backends.base import Backend
from scheduler.bundle_folder import FolderBundle, read_folder, store_artifacts
from scheduler.changes import JobChangeFeed, Subscription
from scheduler.errors import Conflict, IllegalTransition, InvalidInput, NotFound
from scheduler.inference import check_inference_supported
from scheduler.irtext import ir_files, unified_diff
from scheduler.joblogs import PHASES, merge_logs
from scheduler.paths import check_job_paths
from scheduler.settings import SchedulerSettings, TokenSpec
from scheduler.states import TERMINAL, JobState
from scheduler.store import (
    DEFAULT_PAGE_SIZE,
    Job,
    JobPage,
    JobStore,
    Pipeline,
    PipelineVersion,
    ProgressSample,
    Quota,
    TokenUsage,
)
from scheduler.tokens import job_token, job_token_hash, verify_job_token
from scheduler.trust import check_bundle, check_code_runtimes, check_values
from scheduler.values import bundle_of, render_values, stored_ir

__all__ = [
    "BundleFormat",
    "Deployment",
    "FolderDeployment",
    "FolderValidation",
    "SchedulerService",
    "TokenQuotaUsage",
    "Validation",
    "VersionDiff",
    "json_object_problem",
    "text_problem",
]

log = logging.getLogger(__name__)

_P = ParamSpec("_P")
_T = TypeVar("_T")

MAX_JSON_DEPTH: Final = 16
"""Nesting limit of free-form request objects (`environment`): deeper input is refused, not recursed into."""
MAX_JSON_ITEMS: Final = 10_000
"""Limit on the number of values in one free-form request object."""
_INT64: Final = 2**63

CANCEL_REASON: Final = "Cancelled"


class BundleFormat(StrEnum):
    """How an IR bundle arrives: multi-document YAML text, named files, or a gzip-compressed tarball."""

    YAML = "yaml"
    FILES = "files"
    TARBALL = "tarball"


@dataclass(frozen=True)
class TokenQuotaUsage:
    """One creator's usage with its token's quotas (None: not a configured token, or no such quota)."""

    usage: TokenUsage
    token: TokenSpec | None

    @property
    def max_concurrent_jobs(self) -> int | None:
        return self.token.max_concurrent_jobs if self.token is not None else None

    @property
    def max_rows_per_day(self) -> int | None:
        return self.token.max_rows_per_day if self.token is not None else None


@dataclass(frozen=True)
class VersionDiff:
    """Two versions of a pipeline and the unified diffs between them: of the IR files, and of the values."""

    before: PipelineVersion
    after: PipelineVersion
    ir: str
    values: str


@dataclass(frozen=True)
class Deployment:
    """The outcome of a deploy: the stored version, and whether this deploy created it."""

    version: PipelineVersion
    created: bool


@dataclass(frozen=True)
class Validation:
    """A bundle a deploy would accept: its pipeline, digest, and the stored version with that digest (or None)."""

    pipeline: str
    digest: str
    deployed_version: int | None


@dataclass(frozen=True)
class FolderValidation:
    """An uploaded bundle folder a deploy would accept (`scheduler.bundle_folder`), and what was found in it."""

    folder: FolderBundle
    validation: Validation


@dataclass(frozen=True)
class FolderDeployment:
    """A deployed bundle folder: the deployment, what was found in the folder, the artifacts stored from it."""

    folder: FolderBundle
    deployment: Deployment
    artifacts: list[Artifact]


def text_problem(text: str) -> str | None:
    """Why `text` cannot be stored or returned as UTF-8 JSON (NUL, lone surrogates), or None."""
    if "\x00" in text:
        return "must not contain NUL characters"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return "must be valid Unicode text (no lone surrogates)"
    return None


def json_object_problem(value: Any) -> str | None:
    """Why `value` is not a plain, bounded JSON object the database takes as it is, or None.

    Checked without recursion: deeply nested input must get a 422, not a `RecursionError` somewhere below.
    """
    if not isinstance(value, dict):
        return "must be a JSON object"
    stack: list[tuple[Any, int]] = [(value, 1)]
    seen = 0
    while stack:
        item, depth = stack.pop()
        seen += 1
        if seen > MAX_JSON_ITEMS:
            return f"holds more than {MAX_JSON_ITEMS} values"
        if isinstance(item, dict):
            if depth > MAX_JSON_DEPTH:
                return f"is nested more than {MAX_JSON_DEPTH} levels deep"
            for key, child in item.items():
                if not isinstance(key, str):
                    return "has a key that is not a string"
                problem = text_problem(key)
                if problem:
                    return f"key {problem}"
                stack.append((child, depth + 1))
        elif isinstance(item, list):
            if depth > MAX_JSON_DEPTH:
                return f"is nested more than {MAX_JSON_DEPTH} levels deep"
            stack.extend((child, depth + 1) for child in item)
        elif isinstance(item, str):
            problem = text_problem(item)
            if problem:
                return f"text {problem}"
        elif isinstance(item, bool) or item is None:
            continue
        elif isinstance(item, int):
            if not -_INT64 <= item < _INT64:
                return "has an integer outside the 64-bit range"
        elif isinstance(item, float):
            if not math.isfinite(item):
                return "has a number that is not finite"
        else:
            return f"has a value of type {type(item).__name__}, which is not JSON"
    return None


async def _in_thread(function: Callable[_P, _T], *args: _P.args, **kwargs: _P.kwargs) -> _T:
    def call() -> _T:
        return function(*args, **kwargs)

    return await anyio.to_thread.run_sync(call)


def _load_bundle(fmt: BundleFormat, payload: bytes | Mapping[str, str]) -> ir.Bundle:
    if fmt is BundleFormat.FILES:
        if not isinstance(payload, Mapping):
            raise TypeError("a files bundle is a mapping of file names to contents")
        return ir.load_bundle_files(payload)
    if not isinstance(payload, bytes):
        raise TypeError("a YAML or tarball bundle is given as bytes")
    if fmt is BundleFormat.TARBALL:
        return ir.load_bundle_tarball(payload)
    return ir.load_bundle_files({"bundle.yaml": payload})


class SchedulerService:
    """The scheduler's use cases over one store and one backend. Safe to share between requests."""

    def __init__(self, store: JobStore, backend: Backend, settings: SchedulerSettings, secret: bytes) -> None:
        self.store = store
        self.backend = backend
        self.settings = settings
        self._secret = secret
        self.feed = JobChangeFeed(store)
        """The job change feed of this process (`scheduler.changes`): what `watch_jobs` and `watch_job` read."""

    async def close(self) -> None:
        """End the job change feed: every `watch_jobs` / `watch_job` iterator ends (the app's lifespan end)."""
        await self.feed.close()

    # -- pipelines ----------------------------------------------------------------------------------------

    async def deploy(
        self,
        fmt: BundleFormat,
        payload: bytes | Mapping[str, str],
        created_by: str | None,
        by: Principal | None = None,
    ) -> Deployment:
        """Validate an IR bundle and store it as the next version of its pipeline (or find the same one).

        Raises `ir.IRValidationError` listing every problem with its location. The trust checks come next
        (`scheduler.trust`, docs/security.md): a code-running runtime the deployer `by` may not deploy is
        `CodeRuntimeForbidden` (403; None: an in-process caller, not checked), a literal model uri or file path
        outside the roots or with a refused scheme is `OutsideRoots` (422).
        """
        bundle = await self._checked_bundle(fmt, payload, by)
        version, created = await _in_thread(
            self.store.add_pipeline_version, bundle.name, stored_ir(bundle), bundle.digest(), created_by
        )
        if created:
            log.info(
                "pipeline %s: stored version %d (%s) by %s",
                version.pipeline,
                version.number,
                version.digest[:12],
                created_by,
            )
        return Deployment(version, created)

    async def _checked_bundle(
        self, fmt: BundleFormat, payload: bytes | Mapping[str, str], by: Principal | None
    ) -> ir.Bundle:
        bundle = await _in_thread(_load_bundle, fmt, payload)
        if by is not None:
            check_code_runtimes(bundle, by, self.settings)
        await _in_thread(check_bundle, bundle, self.settings, local=self.backend.name == "local")
        return bundle

    async def validate(
        self, fmt: BundleFormat, payload: bytes | Mapping[str, str], by: Principal | None = None
    ) -> Validation:
        """What `deploy` would say of this bundle, storing nothing: the same `ir.IRValidationError` and trust
        checks, else its pipeline, digest and the version already stored with that digest (None: a deploy would
        store a new version)."""
        bundle = await self._checked_bundle(fmt, payload, by)
        digest = bundle.digest()
        try:
            pipeline = await self.get_pipeline(bundle.name)
        except NotFound:
            return Validation(bundle.name, digest, None)
        same = next((v.number for v in pipeline.versions if v.digest == digest), None)
        return Validation(bundle.name, digest, same)

    def artifact_store(self) -> ArtifactStore:
        """The server's content-addressed artifact store (`scheduler.artifacts`)."""
        return ArtifactStore(self.settings.home, self.settings.artifact_max_bytes)

    async def validate_folder(
        self, folder: Path, listed: Collection[str] = (), by: Principal | None = None
    ) -> FolderValidation:
        """`validate` of a bundle folder uploaded whole (staged in `artifact_store().staging`), its relative model
        artifacts hashed and named by sha256 as `deploy_folder` would store them; `listed`: files of the folder
        the client holds but did not send (`scheduler.bundle_folder.read_folder`)."""
        found = await _in_thread(read_folder, folder, listed)
        return FolderValidation(found, await self.validate(BundleFormat.FILES, found.files, by))

    async def deploy_folder(
        self, folder: Path, created_by: str | None, listed: Collection[str] = (), by: Principal | None = None
    ) -> FolderDeployment:
        """Deploy a bundle folder uploaded whole, like `modelops pipeline deploy FOLDER`: once the IR passes every
        check, its relative model artifacts go into the artifact store and the IR is deployed naming them as
        `modelops-artifact:sha256:<hex>`. The folder must be staged in `artifact_store().staging` (artifacts are
        moved, not copied)."""
        found = await _in_thread(read_folder, folder, listed)
        await self.validate(BundleFormat.FILES, found.files, by)
        stored = await _in_thread(store_artifacts, found, self.artifact_store())
        deployment = await self.deploy(BundleFormat.FILES, found.files, created_by, by)
        return FolderDeployment(found, deployment, stored)

    async def list_pipelines(self) -> tuple[Pipeline, ...]:
        return await _in_thread(self.store.list_pipelines)

    async def get_pipeline(self, name: str) -> Pipeline:
        return await _in_thread(self.store.get_pipeline, name)

    async def get_version(self, name: str, number: int | None = None) -> PipelineVersion:
        return await _in_thread(self.store.get_version, name, number)

    async def preview_values(
        self, name: str, number: int, parameters: Mapping[str, str]
    ) -> tuple[PipelineVersion, ir.Values]:
        """The values `install` would deploy for a job of this version with these parameters (preview job id)."""
        version = await self.get_version(name, number)
        values = await _in_thread(render_values, version.ir, parameters, self.settings)
        return version, values

    async def diff_versions(self, name: str, old: int, new: int) -> VersionDiff:
        """What changed from version `old` to version `new` of a pipeline: the unified diff of their IR files and
        of their values previews with default parameters (`scheduler.irtext`); NotFound for either missing."""
        before = await self.get_version(name, old)
        after = await self.get_version(name, new)
        return await _in_thread(self._diff, before, after)

    def _diff(self, before: PipelineVersion, after: PipelineVersion) -> VersionDiff:
        old, new = f"v{before.number}", f"v{after.number}"
        return VersionDiff(
            before,
            after,
            ir=unified_diff(ir_files(before.ir), ir_files(after.ir), old, new),
            values=unified_diff(
                {"values.yaml": self._default_values(before)}, {"values.yaml": self._default_values(after)}, old, new
            ),
        )

    def _default_values(self, version: PipelineVersion) -> str:
        """The values preview of `version` with its default parameters as YAML; when it needs a parameter without
        a default (or no longer renders), a YAML comment saying why, so the diff still shows the rest."""
        try:
            return ir.to_yaml(render_values(version.ir, {}, self.settings))
        except ir.IRValidationError as exc:
            reasons = "".join(f"#   {issue}\n" for issue in exc.issues)
            return f"# not rendered with the default parameters of version {version.number}:\n{reasons}"

    # -- jobs ---------------------------------------------------------------------------------------------

    async def create_job(
        self,
        pipeline: str,
        version: int | None = None,
        parameters: Mapping[str, Any] | None = None,
        environment: Mapping[str, Any] | None = None,
        idempotency_key: str | None = None,
        by: Principal | None = None,
    ) -> tuple[Job, bool]:
        """Create a PENDING job and start it on the backend; `(job, created)`.

        `by` is recorded as the job's `created_by`; when it is a configured token with quotas, a start over
        one is `QuotaExceeded` (429 with `Retry-After`) and creates nothing (`JobStore.create_job`).

        The parameters are checked by rendering the values before anything is written, so a bad request
        creates nothing (`ir.IRValidationError`); on the local backend the rendered paths are checked too
        (`scheduler.paths.UnresolvablePath`, 422). A replayed idempotency key returns the first job with
        `created=False` and does not start it again.
        """
        params = dict(parameters or {})
        env = dict(environment or {})
        for what, document in (("parameters", params), ("environment", env)):
            problem = json_object_problem(document)
            if problem:
                raise InvalidInput(f"{what} {problem}", details={"field": what})
        job, created = await _in_thread(self._check_and_insert, pipeline, version, params, env, idempotency_key, by)
        if not created:
            return job, False
        log.info("job %s: created for %s version %d", job.id, job.pipeline, job.pipeline_version)
        try:
            await self.backend.start(job.id)
        except Exception as exc:  # the backend's failure must not leave a PENDING job behind
            log.exception("job %s: the %s backend could not start it", job.id, self.backend.name)
            job = await self._fail_unstarted(job, f"the {self.backend.name} backend could not start the job: {exc}")
            return job, True
        return await self.get_job(job.id, events=False), True

    async def _fail_unstarted(self, job: Job, message: str) -> Job:
        try:
            return await _in_thread(
                self.store.transition, job.id, JobState.FAILED, reason=START_FAILED_REASON, message=message
            )
        except IllegalTransition:  # the backend got further than it said: report where the job is
            return await self.get_job(job.id, events=False)

    def _check_and_insert(
        self,
        pipeline: str,
        version: int | None,
        params: dict[str, Any],
        env: dict[str, Any],
        idempotency_key: str | None,
        by: Principal | None = None,
    ) -> tuple[Job, bool]:
        """`create_job`'s blocking part, in one worker thread: find the version, render, insert."""
        stored = self.store.get_version(pipeline, version)
        job_id = uuid.uuid4()
        values = render_values(stored.ir, params, self.settings, job_id, None, env)
        check_inference_supported(bundle_of(stored.ir), self.backend.name)
        check_values(values, env, self.settings, local=self.backend.name == "local")  # docs/security.md
        if self.backend.name == "local":  # its components run on this machine: their paths must resolve here
            check_job_paths(bundle_of(stored.ir), values)
        return self.store.create_job(
            stored,
            parameters=params,
            environment=env,
            backend=self.backend.name,
            token_hash=job_token_hash(self._secret, job_id),
            idempotency_key=idempotency_key,
            job_id=job_id,
            created_by=by.name if by is not None else None,
            quota=self._quota_of(by),
        )

    def _token_of(self, by: Principal | None) -> TokenSpec | None:
        if by is None or not by.authenticated:
            return None
        return next((token for token in self.settings.tokens if token.name == by.name), None)

    def _quota_of(self, by: Principal | None) -> Quota | None:
        token = self._token_of(by)
        if token is None or (token.max_concurrent_jobs is None and token.max_rows_per_day is None):
            return None
        return Quota(token.max_concurrent_jobs, token.max_rows_per_day)

    async def usage(self, by: Principal) -> list[TokenQuotaUsage]:
        """What `by` uses of its quotas; for an `admin`, every configured token's (and any other creator's with
        unfinished jobs or jobs today), sorted by name."""
        configured = {token.name: token for token in self.settings.tokens}
        if by.allows("admin"):
            found = await _in_thread(self.store.token_usage, None)
            zeros = await _in_thread(self.store.token_usage, [n for n in configured if n not in found])
            found = {**found, **zeros}
        else:
            found = await _in_thread(self.store.token_usage, [by.name])
        return [TokenQuotaUsage(usage, configured.get(name)) for name, usage in sorted(found.items())]

    async def list_jobs(
        self,
        *,
        state: JobState | None = None,
        pipeline: str | None = None,
        cursor: str | None = None,
        limit: int = DEFAULT_PAGE_SIZE,
        id_prefix: str | None = None,
        q: str | None = None,
    ) -> JobPage:
        """A page of jobs, newest first (`JobStore.list_jobs`; `q` is its text search)."""
        return await _in_thread(
            lambda: self.store.list_jobs(
                state=state, pipeline=pipeline, cursor=cursor, limit=limit, id_prefix=id_prefix, q=q
            )
        )

    async def get_job(self, job_id: uuid.UUID, *, events: bool = True) -> Job:
        job = await _in_thread(self.store.get_job, job_id)
        return job if events else _without_events(job)

    # -- following jobs (the UI's live pages, the API's event streams) -----------------------------------

    async def watch_jobs(self) -> AsyncGenerator[list[Job], None]:
        """Batches of jobs (events None) that changed since the previous batch: created, a state or task change,
        a progress report, a completion, an event. Each job at most once per batch, in its newest state; nothing
        is yielded while nothing changes. Delivered within about 0.3 s of the store write (at once for a write of
        this process), also for writes of other processes: one poll of the `jobs.updated_at` index per process,
        shared by every subscriber (`scheduler.changes.JobChangeFeed`).

        Ends when the service closes. Raises `scheduler.changes.FeedLagged` when the caller read so slowly that
        it fell too far behind (it must start again from the current state), `StoreUnavailable` when the
        database cannot be read to start from."""
        batches = await self.follow_jobs()
        try:
            async for batch in batches:
                yield batch
        finally:
            await batches.aclose()

    async def follow_jobs(self) -> Subscription:
        """`watch_jobs`, already subscribed once awaited: every change committed after this returns is in one of
        its batches (what a stream needs before it answers; `watch_jobs` subscribes at its first `anext`). Close
        it (`aclose()`, or `async with`) when done, even if never iterated. `StoreUnavailable` here when the
        database cannot be read to start from."""
        return await self.feed.subscribe()

    async def watch_job(self, job_id: uuid.UUID) -> AsyncGenerator[Job, None]:
        """The job (with events) at once, then again each time it changes; ends after yielding it in a terminal
        state (or when the service closes). NotFound (404) for an unknown id, raised by the first `anext`."""
        subscription = await self.feed.subscribe([job_id])
        try:
            job = await self.get_job(job_id)
            yield job
            last = job.updated_at
            if job.terminal:
                return
            async for batch in subscription:
                if last is not None and all(c.updated_at is not None and c.updated_at <= last for c in batch):
                    continue  # what the first read already showed
                job = await self.get_job(job_id)
                if last is not None and job.updated_at is not None and job.updated_at <= last:
                    continue
                yield job
                last = job.updated_at
                if job.terminal:
                    return
        finally:
            subscription.close()

    async def progress_history(self, job_id: uuid.UUID, *, points: int = 300) -> list[ProgressSample]:
        """The job's progress over time, oldest first, at most `points` samples (evenly thinned, the first and
        the last kept), from the samples stored with its progress reports (`JobStore.progress_samples`).
        NotFound for an unknown job; `InvalidInput` for `points` outside 2..`MAX_PROGRESS_POINTS`."""
        return await _in_thread(self.store.progress_samples, job_id, points)

    async def cancel_job(self, job_id: uuid.UUID, by: Principal) -> Job:
        """Ask for the job to stop: CANCELLING, then the backend runs uninstall and ends it CANCELLED.

        Idempotent: a job already CANCELLING is returned as it is. A finished job is a `Conflict`. A job still
        queued by admission is CANCELLED at once (`JobStore.cancel_queued`), its backend never involved.
        """
        job = await self.get_job(job_id, events=False)
        if job.state is JobState.CANCELLING:
            return job
        if job.state in TERMINAL:
            raise _finished(job, "cancelled")
        if job.queue_position is not None:  # queued: nothing deployed, so it ends at once (no backend call)
            queued = await _in_thread(
                self.store.cancel_queued, job_id, reason=CANCEL_REASON, message=f"cancelled by {by.name}"
            )
            if queued is not None:
                log.info("job %s: cancelled by %s while queued", job_id, by.name)
                return await self.get_job(job_id, events=False)
        try:
            job = await _in_thread(
                self.store.transition,
                job_id,
                JobState.CANCELLING,
                reason=CANCEL_REASON,
                message=f"cancelled by {by.name}",
            )
        except IllegalTransition:
            job = await self.get_job(job_id, events=False)  # lost a race: someone else decided first
            if job.state is JobState.CANCELLING:
                return job
            raise _finished(job, "cancelled") from None
        log.info("job %s: cancel requested by %s", job_id, by.name)
        await self.backend.cancel(job_id)
        return await self.get_job(job_id, events=False)

    async def report_progress(
        self,
        job_id: uuid.UUID,
        credential: ReporterCredential,
        read: int,
        written: int,
        failed: int,
        *,
        flow: str | None = None,
        report: Mapping[str, Any] | None = None,
    ) -> Job:
        """Raise the job's record counters (they never go down); with `flow`, keep that flow's `report` too
        (`JobStore.update_progress`)."""
        await self._authorize_report(job_id, credential)
        return await _in_thread(self.store.update_progress, job_id, read, written, failed, flow=flow, report=report)

    async def complete_job(
        self,
        job_id: uuid.UUID,
        credential: ReporterCredential,
        succeeded: bool,
        message: str | None = None,
        flow: str | None = None,
        reason: str | None = None,
    ) -> Job:
        """Record a completion report, of one flow (`flow`) or of all, then let the backend end `wait` if the
        job's completion is now known (every flow succeeded, or one failed: `JobStore.record_completion`).
        `reason` (`InvalidInput`) classifies a flow's failure."""
        checked = await self._authorize_report(job_id, credential)
        job = await _in_thread(self._record_completion, job_id, succeeded, message, flow, checked, reason)
        if job.completion is None:
            return job  # other flows have yet to report
        await self.backend.completed(job_id)
        return await self.get_job(job.id, events=False)

    def _record_completion(
        self,
        job_id: uuid.UUID,
        succeeded: bool,
        message: str | None,
        flow: str | None,
        known: Job | None,
        reason: str | None = None,
    ) -> Job:
        """`known`: the job as the token check read it, if it did (its pipeline names the flows)."""
        flows: list[str] = []
        if flow is not None:
            job = known or self.store.get_job(job_id)
            stored = self.store.get_version(job.pipeline, job.pipeline_version)
            flows = list(bundle_of(stored.ir).pipeline.spec.flows)
        return self.store.record_completion(job_id, succeeded, message, flow=flow, flows=flows, reason=reason)

    async def authorize_report(self, job_id: uuid.UUID, credential: ReporterCredential) -> Job | None:
        """Check a job token against the job (`scheduler.auth.AuthFirstRoute` does before a report's body is
        read); returns the job read for it (None for an API token)."""
        return await self._authorize_report(job_id, credential)

    async def _authorize_report(self, job_id: uuid.UUID, credential: ReporterCredential) -> Job | None:
        """Check a job token against the job; returns the job read for it (None for an API token)."""
        if credential.job_token is None:
            return None  # an API token with the write scope, or open mode: checked by the authenticator
        job = await self.get_job(job_id, events=False)
        if not verify_job_token(job.token_hash, credential.job_token):
            raise Unauthorized(f"the job token is not the token of job {job_id}", code="invalid_job_token")
        return job

    async def log_components(self, job_id: uuid.UUID) -> list[str]:
        """The job's log components: its phases, then `service/<name>` per scoring service and `flow/<name>` per
        scoring flow of its pipeline version (sorted by name); NotFound for an unknown job."""
        job = await self.get_job(job_id, events=False)
        version = await _in_thread(self.store.get_version, job.pipeline, job.pipeline_version)
        try:
            bundle = await _in_thread(bundle_of, version.ir)
        except ir.IRError:  # a stored IR this version no longer reads: its phases still have logs
            return list(PHASES)
        services = sorted(model.metadata.name for model in bundle.used_models())
        flows = sorted(flow.metadata.name for flow in bundle.used_flows())
        return [*PHASES, *(f"service/{name}" for name in services), *(f"flow/{name}" for name in flows)]

    async def logs(self, job_id: uuid.UUID, components: Sequence[str] | None, follow: bool) -> AsyncIterator[str]:
        """The lines of the job's log components (all when None), interleaved by time, each as
        `[component] line` ending in a newline (`scheduler.joblogs.merge_logs`). A component is named as
        `log_components` lists it, or by its bare name when one service or flow has it; any other name is an
        `InvalidInput` that lists the job's components. NotFound for an unknown job."""
        known = await self.log_components(job_id)
        chosen = known if not components else _choose_components(job_id, known, components)
        sources = {name: self.backend.component_logs(job_id, name, follow) for name in chosen}
        return _lines(merge_logs(sources, follow))

    def job_token(self, job_id: uuid.UUID) -> str:
        """The plaintext token of a job (what install puts into its values)."""
        return job_token(self._secret, job_id)


def _choose_components(job_id: uuid.UUID, known: Sequence[str], wanted: Sequence[str]) -> list[str]:
    """The components of `known` that `wanted` names, in the order of `known`."""
    chosen: set[str] = set()
    for name in wanted:
        matches = [name] if name in known else [each for each in known if each.partition("/")[2] == name]
        if len(matches) != 1:
            problem = "names more than one" if matches else "names no"
            raise InvalidInput(
                f"component {name!r} {problem} log component of job {job_id}; its components: {', '.join(known)}",
                code="unknown_component",
                details={"component": name, "components": list(known)},
            )
        chosen.add(matches[0])
    return [each for each in known if each in chosen]


async def _lines(source: AsyncIterator[str]) -> AsyncIterator[str]:
    try:
        async for line in source:
            yield line if line.endswith("\n") else line + "\n"
    finally:
        close = getattr(source, "aclose", None)
        if close is not None:
            await close()


def _without_events(job: Job) -> Job:
    return job if job.events is None else replace(job, events=None)


def _finished(job: Job, verb: str) -> Conflict:
    return Conflict(
        f"job {job.id} is {job.state.value}: a finished job cannot be {verb}",
        code="job_finished",
        details={"job_id": str(job.id), "state": job.state.value},
    )
