"""`TektonBackend`: each job is one Tekton PipelineRun of the `modelops-scoring` Pipeline on Kubernetes.

The Pipeline (tekton/) runs `install` -> `wait` and, in `finally`, `uninstall`: each task is a step running
`modelops task <name>` in the runner image, which fetches the job's IR from this scheduler, deploys or tears
down the Helm release, and reports its phase (`POST /jobs/{id}/phase`). This backend only:

- creates the PipelineRun (and, beside it, the Secret with the job's token, which the tasks authenticate with);
- cancels it with the merge patch `{"spec": {"status": "CancelledRunFinally"}}`, which still runs `finally`
  (plain `Cancelled` would skip uninstall and leak the Helm release);
- keeps the store in step with the cluster through a watch on the PipelineRuns (the reconciler, below);
- streams the logs of the TaskRuns' step containers, the way `tkn pipelinerun logs` does.

Who decides what (../shared/ARCHITECTURE.md, "Tekton facts"):

- The terminal state comes from the PipelineRun's `Succeeded` condition *status* only (`Unknown`: running;
  never from a list of reasons, which is open-ended): `True` -> SUCCEEDED (`Completed`); `False` -> CANCELLED
  when the job is CANCELLING, else FAILED with the reason a task reported when it is one of
  `scheduler.lifecycle.FAILED_REASONS` (e.g. `InstallFailed`), else `PipelineRunFailed` with the condition's
  reason and message. A PipelineRun that disappears before it finished: FAILED `RunDeleted`.
- The current task comes from the TaskRuns listed by `tekton.dev/pipelineRun=<name>`: `install`, `wait`, and
  `tekton.dev/memberOf=finally` for `uninstall`. Tasks only move forward.
- The tasks' own phase reports may have moved the job already. Every store write here is idempotent and
  race-safe: the store refuses a stale transition with `IllegalTransition`, and we then re-read the job and
  follow whoever won. A CANCELLING job is never moved anywhere but to its end.

The reconciler: one thread runs the (blocking) watch and feeds events into the event loop, where one consumer
applies them in order. It resumes from the last resourceVersion it saw; on `410 Gone` it lists again (a run
missing from the list is a deleted run) and watches from the list's resourceVersion. `recover()` at server start
does that list first, so a restarted scheduler re-attaches to every live run and ends jobs whose runs finished or
vanished while it was away. Nothing here needs the previous process's memory: the store and the cluster are the
truth.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import threading
import uuid
import weakref
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final, ParamSpec, TypeVar

import ir
from ir.logformat import timestamp
from scheduler.admission import Admission
from scheduler.backends.base import Backend
from scheduler.errors import Conflict, IllegalTransition, NotFound, StoreUnavailable
from scheduler.joblogs import PHASES, Idle, LogItem, merge_logs
from scheduler.k8s import TEKTON_GROUP, TEKTON_VERSION, Gone, K8sError, Kube, PodInfo, Stream, connect
from scheduler.k8s import NotFound as K8sNotFound
from scheduler.lifecycle import (
    CANCELLED,
    COMPLETED,
    FAILED_REASONS,
    INSTALLING_REASON,
    INVALID_PARAMETERS,
    READY_REASON,
    RENDER_FAILED,
    SCHEDULER_RESTARTED,
    UNINSTALL_FAILED,
    completion_failure_reason,
)
from scheduler.settings import SchedulerSettings
from scheduler.states import JobState, Task
from scheduler.store import Job, JobStore
from scheduler.tokens import job_token, job_token_hash
from scheduler.values import render_values

__all__ = [
    "CANCEL_STATUS",
    "JOB_LABEL",
    "PIPELINE_RUN_FAILED",
    "RUN_DELETED",
    "K8sError",
    "TektonBackend",
    "pipelinerun_body",
    "token_secret_body",
]

logger = logging.getLogger(__name__)

JOB_LABEL: Final = "modelops.io/job-id"
"""Label on each PipelineRun (and token Secret): the job's UUID. The reconciler watches runs carrying it."""
PIPELINERUN_LABEL: Final = "tekton.dev/pipelineRun"
PIPELINE_TASK_LABEL: Final = "tekton.dev/pipelineTask"
MEMBER_OF_LABEL: Final = "tekton.dev/memberOf"

CANCEL_STATUS: Final = "CancelledRunFinally"
"""`spec.status` that cancels a run and still runs `finally` (uninstall)."""
PENDING_STATUS: Final = "PipelineRunPending"
"""`spec.status` of a run created but not started yet (see `_create_run` for why)."""

PIPELINE_RUN_FAILED: Final = "PipelineRunFailed"
"""The job's reason when the PipelineRun failed and no task reported a reason of its own."""
RUN_DELETED: Final = "RunDeleted"
"""The job's reason when its PipelineRun was deleted (or is gone) before it finished."""

_TASK_ORDER: Final = {Task.INSTALL: 0, Task.WAIT: 1, Task.UNINSTALL: 2}
_WATCH_TIMEOUT_SECONDS: Final = 300
"""The API server ends each watch request after this long; the watch then resumes from its last resourceVersion
(a bound on how long a silently dead connection goes unnoticed)."""
_WATCH_BACKOFF: Final = (1.0, 2.0, 5.0, 10.0, 30.0)
"""Delays between attempts while the API server cannot be reached."""
_STORE_RETRY_DELAYS: Final = (0.2, 0.5, 1.0, 2.0, 4.0)
_CANCEL_RETRY_DELAYS: Final = (1.0, 2.0, 5.0, 10.0, 30.0)
_FOLLOW_ATTEMPTS: Final = 8
"""How many times a store transition is retried after losing a race before the event is left to the next one."""
_APPLIED_MEMORY: Final = 1000

_P = ParamSpec("_P")
_T = TypeVar("_T")


# ---------------------------------------------------------------------------------------------------------
# The objects we create


def _seconds(value: int) -> str:
    """A Kubernetes (Go) duration for whole seconds."""
    return f"{int(value)}s"


def pipelinerun_body(
    job: Job,
    settings: SchedulerSettings,
    *,
    target_namespace: str,
    timeouts: Mapping[str, int],
    secret_name: str,
) -> dict[str, Any]:
    """The PipelineRun of `job`, created pending (`spec.status: PipelineRunPending`; see `_create_run`).

    `timeouts` are the pipeline's own (`install`, `wait`, `uninstall`, in seconds): `timeouts.tasks` covers
    install and wait, `timeouts.finally` uninstall (each with the configured margin, unless the settings fix
    them), and `timeouts.pipeline` is their sum. Tekton refuses a tasks timeout above the pipeline timeout, whose
    default (60 minutes) would otherwise cap every job; and `timeouts.pipeline` alone would cut `finally` short.
    """
    margin = settings.tekton_timeout_margin_seconds
    tasks = settings.tekton_tasks_timeout_seconds or (timeouts["install"] + timeouts["wait"] + margin)
    final = settings.tekton_finally_timeout_seconds or (timeouts["uninstall"] + margin)
    params = {
        "job-id": str(job.id),
        "scheduler-url": settings.public_url,
        "release-name": f"modelops-{job.id}",
        "namespace": target_namespace,
        "chart": settings.tekton_chart,
        "token-secret": secret_name,
    }
    return {
        "apiVersion": f"{TEKTON_GROUP}/{TEKTON_VERSION}",
        "kind": "PipelineRun",
        "metadata": {
            "generateName": "modelops-",
            "namespace": settings.tekton_namespace,
            "labels": {
                JOB_LABEL: str(job.id),
                "app.kubernetes.io/part-of": "modelops",
                "app.kubernetes.io/managed-by": "modelops-scheduler",
            },
            "annotations": {
                "modelops.io/pipeline": job.pipeline,
                "modelops.io/pipeline-version": str(job.pipeline_version),
            },
        },
        "spec": {
            "pipelineRef": {"name": settings.tekton_pipeline},
            "params": [{"name": name, "value": value} for name, value in params.items()],
            "taskRunTemplate": {"serviceAccountName": settings.tekton_service_account},
            "timeouts": {"pipeline": _seconds(tasks + final), "tasks": _seconds(tasks), "finally": _seconds(final)},
            "status": PENDING_STATUS,
        },
    }


def token_secret_name(job_id: uuid.UUID) -> str:
    """The job's token Secret: one per job, named after it, so a retried start finds it again."""
    return f"modelops-job-token-{job_id}"


def token_secret_body(job_id: uuid.UUID, namespace: str, token: str, owner: Mapping[str, Any]) -> dict[str, Any]:
    """The Secret holding the job token (key `token`), owned by the PipelineRun `owner` (garbage-collected with
    it). No `blockOwnerDeletion`: that would need the `pipelineruns/finalizers` permission for nothing."""
    metadata = owner.get("metadata") or {}
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": {
            "name": token_secret_name(job_id),
            "namespace": namespace,
            "labels": {
                JOB_LABEL: str(job_id),
                "app.kubernetes.io/part-of": "modelops",
                "app.kubernetes.io/component": "job-token",
                "app.kubernetes.io/managed-by": "modelops-scheduler",
            },
            "ownerReferences": [_owner_reference(metadata)],
        },
        "stringData": {"token": token},
    }


def _owner_reference(metadata: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": f"{TEKTON_GROUP}/{TEKTON_VERSION}",
        "kind": "PipelineRun",
        "name": metadata.get("name"),
        "uid": metadata.get("uid"),
    }


# ---------------------------------------------------------------------------------------------------------
# Reading Tekton objects


@dataclass(frozen=True)
class _Condition:
    status: str  # "True", "False", "Unknown"
    reason: str
    message: str

    @property
    def final(self) -> bool:
        return self.status in ("True", "False")


def _condition(run: Mapping[str, Any]) -> _Condition:
    """The `Succeeded` condition (Unknown when there is none yet: a run Tekton has not picked up)."""
    for condition in (run.get("status") or {}).get("conditions") or []:
        if isinstance(condition, dict) and condition.get("type") == "Succeeded":
            return _Condition(
                str(condition.get("status") or "Unknown"),
                str(condition.get("reason") or ""),
                str(condition.get("message") or ""),
            )
    return _Condition("Unknown", "", "")


def _meta(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    metadata = obj.get("metadata")
    return metadata if isinstance(metadata, dict) else {}


def _job_id_of(run: Mapping[str, Any]) -> uuid.UUID | None:
    try:
        return uuid.UUID(str((_meta(run).get("labels") or {}).get(JOB_LABEL)))
    except ValueError:
        return None


def _task_of(taskrun: Mapping[str, Any]) -> Task | None:
    """Which of our tasks a TaskRun runs: `memberOf=finally` is uninstall, else its pipelineTask label."""
    labels = _meta(taskrun).get("labels") or {}
    if labels.get(MEMBER_OF_LABEL) == "finally":
        return Task.UNINSTALL
    name = str(labels.get(PIPELINE_TASK_LABEL) or "").removeprefix("modelops-")
    try:
        return Task(name)
    except ValueError:
        return None


def _taskrun_for(taskruns: list[dict[str, Any]], task: Task) -> dict[str, Any] | None:
    """The TaskRun of `task` (the newest, should there be several)."""
    found = [taskrun for taskrun in taskruns if _task_of(taskrun) is task]
    found.sort(key=lambda taskrun: str(_meta(taskrun).get("creationTimestamp") or ""))
    return found[-1] if found else None


@dataclass(frozen=True)
class _Target:
    state: JobState
    reason: str
    message: str | None


class _End:
    """The end marker of a line stream pumped from a thread."""


_END: Final = _End()


# ---------------------------------------------------------------------------------------------------------
# The backend


class TektonBackend:
    """The `Backend` that runs each job as a Tekton PipelineRun (see the module docstring).

    `kube` is the cluster (`scheduler.k8s.Kube`); by default one is connected as the settings say
    (`kube_config`, `kubeconfig`, `kube_context`).
    """

    name = "tekton"

    def __init__(self, store: JobStore, settings: SchedulerSettings, secret: bytes, kube: Kube | None = None) -> None:
        self.store = store
        self.settings = settings
        self._secret = secret
        self.kube: Kube = kube or connect(settings.kube_config, settings.kubeconfig, settings.kube_context)
        self.namespace = settings.tekton_namespace
        self._locks: weakref.WeakValueDictionary[uuid.UUID, asyncio.Lock] = weakref.WeakValueDictionary()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._stream: Stream | None = None
        self._queue: asyncio.Queue[tuple[str, Any, str]] | None = None
        self._consumer: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[None]] = set()
        self._applied: deque[str] = deque(maxlen=_APPLIED_MEMORY)
        self._progress: asyncio.Event | None = None
        self.resource_version: str | None = None
        """The resourceVersion of the last watch event or list applied to the store."""
        self.admission = Admission(store, self.name, settings.max_running_jobs, self._start_admitted)

    # -- Backend ----------------------------------------------------------------------------------

    async def start(self, job_id: uuid.UUID) -> None:
        """Once admission has a slot for the job (`scheduler.admission`; at once if one is free, else when an
        earlier job ends), create its PipelineRun and token Secret; the job becomes INSTALLING (task install).

        Idempotent: a job that is no longer PENDING is left alone, and a run already created for the job (a
        start interrupted by a restart) is taken over instead of creating a second one. Raises `K8sError` when
        the cluster refuses; then nothing of the job is left on the cluster and the job is FAILED.
        """
        await self.admission.submit(job_id)

    async def _start_admitted(self, job_id: uuid.UUID) -> None:
        async with self._lock(job_id):
            job = await self._db(self.store.get_job, job_id)
            if job.state is JobState.CANCELLING and not job.backend_ref:
                await self._end(job_id, _Target(JobState.CANCELLED, CANCELLED, "cancelled before its run started"))
                return
            if job.state is not JobState.PENDING:
                return
            if job_token_hash(self._secret, job_id) != job.token_hash:
                # The tasks would present a token the job does not accept: every report would be refused.
                await self._end(
                    job_id,
                    _Target(
                        JobState.FAILED,
                        SCHEDULER_RESTARTED,
                        "the scheduler's job-token secret changed since the job was created: set "
                        "MODELOPS_SCHEDULER_JOB_TOKEN_SECRET (from a Kubernetes Secret) so it survives restarts",
                    ),
                )
                return
            rendered = await self._render(job)
            if rendered is None:
                return
            target_namespace, timeouts = rendered
            run = await asyncio.to_thread(self._create_run, job, target_namespace, timeouts)
            name = str(_meta(run).get("name"))
            await self._db(self.store.set_backend_ref, job_id, self._ref(name))
            logger.info("job %s: PipelineRun %s/%s created", job_id, self.namespace, name)
            await self._follow(
                job_id,
                _Target(JobState.INSTALLING, INSTALLING_REASON, f"PipelineRun {self.namespace}/{name} created"),
                task=Task.INSTALL,
            )

    async def cancel(self, job_id: uuid.UUID) -> None:
        """Cancel the CANCELLING job's run with `spec.status: CancelledRunFinally` (uninstall still runs).

        The reconciler ends the job CANCELLED once the run's condition turns False. A job whose run does not
        exist (not created yet, or gone) is ended CANCELLED here. Idempotent. A cluster that cannot be reached
        is retried in the background (and the reconciler re-sends the patch on the run's next event).
        """
        async with self._lock(job_id):
            job = await self._db(self.store.get_job, job_id)
            if job.state is not JobState.CANCELLING:
                return
            name = await self._run_name(job)
            if name is None:
                await self._end(job_id, _Target(JobState.CANCELLED, CANCELLED, "cancelled before its run started"))
                return
            try:
                await asyncio.to_thread(self._patch_cancel, name)
            except K8sNotFound:
                await self._end(
                    job_id,
                    _Target(
                        JobState.CANCELLED,
                        CANCELLED,
                        f"cancelled; its PipelineRun {self.namespace}/{name} no longer exists, so its uninstall "
                        f"may not have run (check for a Helm release modelops-{job_id})",
                    ),
                )
            except K8sError as exc:
                logger.warning("job %s: cancelling PipelineRun %s failed (%s); retrying", job_id, name, exc)
                self._spawn(self._retry_cancel(job_id, name))

    async def completed(self, job_id: uuid.UUID) -> None:
        """Nothing to do: the run's `wait` task polls the job's status and ends when it sees the completion."""
        logger.info("job %s: completion recorded; the wait task of its PipelineRun will see it", job_id)

    async def logs(self, job_id: uuid.UUID, task: Task | None, follow: bool) -> AsyncIterator[str]:
        """Lines of the TaskRuns' step containers, task by task (install, wait, uninstall) and step by step.

        With `follow`, waits for each task's pod and follows its steps until they end; a task that never runs
        (the job ended or moved past it) yields nothing. Raises `NotFound` for an unknown job.
        """
        await self._db(self.store.get_job, job_id)  # NotFound before any line
        ref = await self._wait_for_ref(job_id, follow)
        if ref is None:
            return
        namespace, run = ref
        for current in [task] if task is not None else list(Task):
            async for line in self._task_lines(job_id, namespace, run, current, follow):
                if isinstance(line, str):
                    yield line

    async def component_logs(self, job_id: uuid.UUID, component: str, follow: bool) -> AsyncIterator[LogItem]:
        """A phase: its TaskRun's step containers (as `logs`). A scoring service or flow: the containers of the
        pods of the job's Helm release that carry its component label (`app.kubernetes.io/component:
        scoring-service-<name>` / `scoring-flow-<name>`, and `modelops.io/job-id`), in the namespace the run
        installs into; with more than one pod (replicas), each line also names its pod. With `follow`, waits for
        the pods until the job ends and follows them until their containers end. The pods' logs go with the pods
        (uninstall deletes them): a finished job's components have no log left here."""
        await self._db(self.store.get_job, job_id)  # NotFound before any line
        ref = await self._wait_for_ref(job_id, follow)
        if ref is None:
            return
        namespace, run = ref
        if component in PHASES:
            async for item in self._task_lines(job_id, namespace, run, Task(component), follow):
                yield item
            return
        kind, _, name = component.partition("/")
        if kind not in ("service", "flow") or not name:
            raise ValueError(f"not a log component: {component!r}")
        target = await self._target_namespace(namespace, run)
        if target is None:
            return  # the run is gone, and its release's pods with it
        try:
            async for item in self._component_lines(job_id, target, f"scoring-{kind}-{name}", follow):
                yield item
        except K8sError as exc:  # e.g. 403: no Role for pods in that namespace; the other components go on
            logger.warning("job %s: cannot read the logs of %s in namespace %s: %s", job_id, component, target, exc)
            yield f"{timestamp()} [modelops] cannot read the logs of {component} in namespace {target}: {exc}"

    async def _component_lines(
        self, job_id: uuid.UUID, namespace: str, label: str, follow: bool
    ) -> AsyncIterator[LogItem]:
        selector = f"{JOB_LABEL}={job_id},app.kubernetes.io/component={label}"
        while True:
            over = (await self._db(self.store.get_job, job_id)).terminal if follow else True
            pods = await asyncio.to_thread(self.kube.list_pods, namespace, selector)
            if pods or over:
                break
            yield Idle(timestamp())
            await asyncio.sleep(self.settings.poll_interval_seconds)
        sources = {pod.name: self._pod_lines(job_id, namespace, pod, follow) for pod in pods}
        if len(sources) == 1:
            async for item in next(iter(sources.values())):
                yield item
        elif sources:
            async for line in merge_logs(sources, follow):
                yield line

    async def _target_namespace(self, namespace: str, run: str) -> str | None:
        """The namespace the run's release is installed into (its `namespace` param); None once it is gone."""
        try:
            body = await asyncio.to_thread(self.kube.get_pipelinerun, namespace, run)
        except K8sNotFound:
            return None
        for param in (body.get("spec") or {}).get("params") or []:
            if isinstance(param, dict) and param.get("name") == "namespace" and param.get("value"):
                return str(param["value"])
        return namespace

    async def _pod_lines(self, job_id: uuid.UUID, namespace: str, pod: PodInfo, follow: bool) -> AsyncIterator[LogItem]:
        """The lines of each of the pod's containers in turn; with `follow`, each followed until it ends."""
        for container in pod.containers:
            async for item in self._container_lines(namespace, pod.name, container, follow):
                yield item

    async def recover(self) -> None:
        """List the runs, bring every non-terminal job in step with its run, then start the watch.

        Re-attaches to live runs, ends jobs whose runs finished or vanished meanwhile, and starts PENDING jobs
        that never got a run. A cluster that cannot be reached now is retried by the watch thread.
        """
        loop = asyncio.get_running_loop()
        self._queue = asyncio.Queue()
        self._progress = asyncio.Event()
        resource_version: str | None = None
        try:
            items, listed_at = await asyncio.to_thread(self.kube.list_pipelineruns, self.namespace, JOB_LABEL)
        except K8sError as exc:
            logger.error("tekton: cannot list PipelineRuns in %s (%s); the watch keeps trying", self.namespace, exc)
        else:
            await self._resync(items, listed_at, at_start=True)
            resource_version = listed_at
        self._consumer = asyncio.create_task(self._consume(), name="tekton-reconciler")
        self._stop.clear()
        self._thread = threading.Thread(
            target=self._watch_loop, args=(loop, resource_version), name="tekton-watch", daemon=True
        )
        self._thread.start()

    async def close(self) -> None:
        """Stop the watch and the reconciler; job states stay as they are (the next `recover()` resumes)."""
        await self.admission.close()
        self._stop.set()
        stream = self._stream
        if stream is not None:
            stream.close()
        for task in [self._consumer, *self._background]:
            if task is not None:
                task.cancel()
        await asyncio.gather(*(t for t in [self._consumer, *self._background] if t is not None), return_exceptions=True)
        thread = self._thread
        if thread is not None:
            await asyncio.to_thread(thread.join, 10.0)
            if thread.is_alive():
                logger.warning("tekton: the watch thread did not stop within 10s (it is a daemon thread)")
        self._thread = None
        self._consumer = None

    # -- extras -----------------------------------------------------------------------------------

    def applied(self, resource_version: str) -> bool:
        """Whether the reconciler has applied the watch event or list with this resourceVersion."""
        return resource_version in self._applied

    async def wait_applied(self, resource_version: str) -> None:
        """Wait until `applied(resource_version)` (tests and tools use it to know the store is in step)."""
        while not self.applied(resource_version):
            progress = self._progress
            if progress is None:
                raise RuntimeError("the reconciler is not running: call recover() first")
            progress.clear()
            if self.applied(resource_version):
                return
            await progress.wait()

    # -- creating the run -------------------------------------------------------------------------

    async def _render(self, job: Job) -> tuple[str, dict[str, int]] | None:
        """The job's target namespace and timeouts from its values; None (and the job FAILED) if they do not
        render: the install task would fail the same way, after a pod start."""
        version = await self._db(self.store.get_version, job.pipeline, job.pipeline_version)
        try:
            values = await asyncio.to_thread(
                render_values, version.ir, job.parameters, self.settings, job.id, None, job.environment
            )
        except ir.IRValidationError as exc:
            only_parameters = all(issue.file == "<parameters>" for issue in exc.issues)
            reason = INVALID_PARAMETERS if only_parameters else RENDER_FAILED
            await self._end(job.id, _Target(JobState.FAILED, reason, f"the values do not render: {exc}"))
            return None
        return values.pipeline.namespace, dict(values.pipeline.timeout_seconds)

    def _create_run(self, job: Job, target_namespace: str, timeouts: Mapping[str, int]) -> dict[str, Any]:
        """Create (or find) the job's PipelineRun and its token Secret, then let the run start. Blocking.

        The order keeps the token from leaking and no pod from starting without it:

        1. the PipelineRun, *pending* (`spec.status: PipelineRunPending`): Tekton creates no pod for it yet;
        2. the Secret, created with an ownerReference to that run (its uid is known now), so from its first
           moment it is deleted together with the run;
        3. a merge patch removing `spec.status`: the run starts, and its pods find the Secret.

        If step 2 or 3 fails, the pending run is deleted, and the garbage collector takes the Secret with it:
        nothing is left behind, nothing ever ran. (Secret first would leave an unowned token behind whenever
        creating the run failed and the clean-up did too.)
        """
        selector = f"{JOB_LABEL}={job.id}"
        existing, _ = self.kube.list_pipelineruns(self.namespace, selector)
        created = not existing
        secret_name = token_secret_name(job.id)
        if existing:
            run = existing[0]
            logger.info("job %s: taking over its existing PipelineRun %s", job.id, _meta(run).get("name"))
        else:
            body = pipelinerun_body(
                job, self.settings, target_namespace=target_namespace, timeouts=timeouts, secret_name=secret_name
            )
            run = self.kube.create_pipelinerun(self.namespace, body)
        name = str(_meta(run).get("name"))
        try:
            self._ensure_secret(job.id, run)
            if (run.get("spec") or {}).get("status") == PENDING_STATUS:
                run = self.kube.patch_pipelinerun_merge(self.namespace, name, {"spec": {"status": None}})
        except K8sError:
            if created:
                with contextlib.suppress(K8sError):
                    self.kube.delete_pipelinerun(self.namespace, name)
            raise
        return run

    def _ensure_secret(self, job_id: uuid.UUID, run: Mapping[str, Any]) -> None:
        token = job_token(self._secret, job_id)
        body = token_secret_body(job_id, self.namespace, token, run)
        try:
            self.kube.create_secret(self.namespace, body)
        except K8sError as exc:
            if exc.status != 409:
                raise
            # Left by an interrupted start: same name, same (derived) token; make this run its owner.
            self.kube.patch_secret_owner(self.namespace, token_secret_name(job_id), _owner_reference(_meta(run)))

    def _patch_cancel(self, name: str) -> None:
        self.kube.patch_pipelinerun_merge(self.namespace, name, {"spec": {"status": CANCEL_STATUS}})

    async def _retry_cancel(self, job_id: uuid.UUID, name: str) -> None:
        for delay in _CANCEL_RETRY_DELAYS:
            await asyncio.sleep(delay)
            job = await self._db(self.store.get_job, job_id)
            if job.state is not JobState.CANCELLING:
                return
            try:
                await asyncio.to_thread(self._patch_cancel, name)
                return
            except K8sNotFound:
                await self.cancel(job_id)  # ends it: the run is gone
                return
            except K8sError as exc:
                logger.warning("job %s: cancelling PipelineRun %s failed again: %s", job_id, name, exc)
        logger.error("job %s: could not cancel PipelineRun %s; the reconciler retries on its next event", job_id, name)

    def _ref(self, name: str) -> dict[str, Any]:
        return {"kind": "tekton", "namespace": self.namespace, "pipelinerun": name}

    async def _run_name(self, job: Job) -> str | None:
        """The job's PipelineRun: from its backend reference, else found by label (a start cut short)."""
        ref = job.backend_ref or {}
        if ref.get("pipelinerun"):
            return str(ref["pipelinerun"])
        found, _ = await asyncio.to_thread(self.kube.list_pipelineruns, self.namespace, f"{JOB_LABEL}={job.id}")
        if not found:
            return None
        name = str(_meta(found[0]).get("name"))
        await self._db(self.store.set_backend_ref, job.id, self._ref(name))
        return name

    # -- the reconciler ---------------------------------------------------------------------------

    def _watch_loop(self, loop: asyncio.AbstractEventLoop, resource_version: str | None) -> None:
        """The watch thread: list when there is no resourceVersion to resume from, watch, post everything."""
        failures = 0
        while not self._stop.is_set():
            try:
                if resource_version is None:
                    items, resource_version = self.kube.list_pipelineruns(self.namespace, JOB_LABEL)
                    if not self._post(loop, ("list", items, resource_version)):
                        return
                stream = self.kube.watch_pipelineruns(
                    self.namespace, JOB_LABEL, resource_version, _WATCH_TIMEOUT_SECONDS
                )
                self._stream = stream
                try:
                    for event in stream:
                        if self._stop.is_set():
                            return
                        version = str(_meta(event.object).get("resourceVersion") or resource_version)
                        resource_version = version
                        if event.type in ("ADDED", "MODIFIED", "DELETED") and not self._post(
                            loop, ("event", event, version)
                        ):
                            return
                finally:
                    self._stream = None
                    stream.close()
                failures = 0
            except Gone:
                logger.info("tekton: resourceVersion %s is too old (410 Gone): listing again", resource_version)
                resource_version = None
            except Exception as exc:
                if self._stop.is_set():
                    return
                delay = _WATCH_BACKOFF[min(failures, len(_WATCH_BACKOFF) - 1)]
                failures += 1
                logger.warning("tekton: watching PipelineRuns failed (%s); again in %.0fs", exc, delay)
                self._stop.wait(delay)

    def _post(self, loop: asyncio.AbstractEventLoop, item: tuple[str, Any, str]) -> bool:
        queue = self._queue
        if queue is None or self._stop.is_set():
            return False
        try:
            loop.call_soon_threadsafe(queue.put_nowait, item)
        except RuntimeError:  # the loop is closed: the server is gone
            return False
        return True

    async def _consume(self) -> None:
        assert self._queue is not None
        while True:
            kind, payload, version = await self._queue.get()
            try:
                if kind == "list":
                    await self._resync(payload, version, at_start=False)
                else:
                    await self._apply(payload.object, deleted=payload.type == "DELETED")
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("tekton: applying %s at resourceVersion %s failed", kind, version)
            self._mark_applied(version)

    def _mark_applied(self, version: str) -> None:
        self.resource_version = version
        self._applied.append(version)
        if self._progress is not None:
            self._progress.set()

    async def _resync(self, items: list[dict[str, Any]], version: str, *, at_start: bool) -> None:
        """Apply a full list: every listed run, then every non-terminal job whose run is not in it."""
        listed: set[uuid.UUID] = set()
        for run in items:
            job_id = _job_id_of(run)
            if job_id is not None:
                listed.add(job_id)
            try:
                await self._apply(run, deleted=False)
            except (K8sError, StoreUnavailable) as exc:
                logger.warning("tekton: re-sync of PipelineRun %s failed: %s", _meta(run).get("name"), exc)
        jobs = await self._db(self.store.non_terminal_jobs)
        for job in jobs:
            if job.backend != self.name or job.id in listed:
                continue
            try:
                await self._resync_missing(job.id, at_start)
            except (K8sError, StoreUnavailable) as exc:
                logger.warning("tekton: re-sync of job %s failed: %s", job.id, exc)
        if at_start:
            self._mark_applied(version)

    async def _resync_missing(self, job_id: uuid.UUID, at_start: bool) -> None:
        """A non-terminal job whose run the list did not show."""
        start = False
        async with self._lock(job_id):
            job = await self._db(self.store.get_job, job_id)
            if job.terminal:
                return
            name = (job.backend_ref or {}).get("pipelinerun")
            if name:
                try:  # created after the list was taken?
                    run = await asyncio.to_thread(self.kube.get_pipelinerun, self.namespace, str(name))
                except K8sNotFound:
                    await self._end(job_id, self._deleted(job, str(name)))
                    return
                await self._apply_locked(job, run, deleted=False)
            elif job.state is JobState.CANCELLING:
                await self._end(job_id, _Target(JobState.CANCELLED, CANCELLED, "cancelled before its run started"))
            elif job.state is JobState.PENDING:
                start = at_start  # the scheduler stopped before it created the run (else: a start in flight)
            else:
                await self._end(job_id, self._deleted(job, None))
        if start:
            logger.info("recover: job %s never got a PipelineRun: starting it", job_id)
            try:
                await self.start(job_id)
            except K8sError as exc:
                await self._end(
                    job_id, _Target(JobState.FAILED, PIPELINE_RUN_FAILED, f"could not create its PipelineRun: {exc}")
                )

    async def _apply(self, run: dict[str, Any], *, deleted: bool) -> None:
        job_id = _job_id_of(run)
        if job_id is None:
            return
        async with self._lock(job_id):
            try:
                job = await self._db(self.store.get_job, job_id)
            except NotFound:
                return  # a run of a job this database does not know (another scheduler's?)
            await self._apply_locked(job, run, deleted=deleted)

    async def _apply_locked(self, job: Job, run: dict[str, Any], *, deleted: bool) -> None:
        """Bring `job` in step with `run` (the job's lock is held)."""
        if job.backend != self.name or job.terminal:
            return
        name = str(_meta(run).get("name"))
        known = (job.backend_ref or {}).get("pipelinerun")
        if known and known != name:
            logger.warning("job %s: ignoring PipelineRun %s (its run is %s)", job.id, name, known)
            return
        condition = _condition(run)
        if deleted and not condition.final:
            await self._end(job.id, self._deleted(job, name))
            return
        if not known:
            job = await self._db(self.store.set_backend_ref, job.id, self._ref(name))
        if (run.get("spec") or {}).get("status") == PENDING_STATUS and not condition.final:
            return  # created, not started (a start in flight, or cut short: recover finishes it)
        taskruns = await asyncio.to_thread(self.kube.list_taskruns, self.namespace, f"{PIPELINERUN_LABEL}={name}")
        tasks = {task for task in map(_task_of, taskruns) if task is not None}
        if Task.WAIT in tasks or not condition.final:
            # Each task seen, in order: a wait TaskRun means install succeeded, whatever happened since.
            for task in sorted(tasks, key=_TASK_ORDER.__getitem__):
                await self._follow_task(job.id, task)
        if condition.final:
            await self._finish(job.id, name, condition, ran_finally=Task.UNINSTALL in tasks)
            return
        if job.state is JobState.CANCELLING and (run.get("spec") or {}).get("status") != CANCEL_STATUS:
            try:  # the cancel patch was lost (the cluster was unreachable when the user cancelled)
                await asyncio.to_thread(self._patch_cancel, name)
            except K8sNotFound:
                await self._end(job.id, self._deleted(job, name))

    async def _follow_task(self, job_id: uuid.UUID, task: Task) -> None:
        """Move the job forward to the task its TaskRuns show; never backwards, never out of CANCELLING."""
        if task is Task.UNINSTALL:
            with contextlib.suppress(Conflict):  # finished meanwhile, or the task is uninstall already
                await self._db(self.store.set_task, job_id, Task.UNINSTALL)
            return
        job = await self._db(self.store.get_job, job_id)
        if job.task is not None and _TASK_ORDER[job.task] >= _TASK_ORDER[task]:
            return
        if task is Task.INSTALL or job.state is JobState.PENDING:
            await self._follow(job_id, _Target(JobState.INSTALLING, INSTALLING_REASON, None), task=Task.INSTALL)
        if task is Task.WAIT:
            await self._follow(
                job_id, _Target(JobState.RUNNING, READY_REASON, "the install task succeeded"), task=Task.WAIT
            )

    async def _follow(self, job_id: uuid.UUID, target: _Target, *, task: Task) -> None:
        """Make the job `target.state` (task `task`) unless it already got there or further, or was cancelled."""
        order = [JobState.PENDING, JobState.INSTALLING, JobState.RUNNING]
        for _ in range(_FOLLOW_ATTEMPTS):
            job = await self._db(self.store.get_job, job_id)
            if job.state not in order or order.index(job.state) >= order.index(target.state):
                return  # there already, further on, cancelling or finished: nothing to do
            try:
                await self._db(
                    self.store.transition, job_id, target.state, task=task, reason=target.reason, message=target.message
                )
                return
            except IllegalTransition:
                continue  # someone else moved it: look again
            except Conflict:
                return  # the task moved past `task` (a phase report was faster)
        logger.warning("job %s: gave up moving it to %s after repeated races", job_id, target.state)

    async def _finish(self, job_id: uuid.UUID, name: str, condition: _Condition, *, ran_finally: bool) -> None:
        """End the job as the run's final `Succeeded` condition says (see the module docstring)."""
        for _ in range(_FOLLOW_ATTEMPTS):
            job = await self._db(self.store.get_job, job_id)
            if job.terminal:
                break
            if ran_finally and job.task is not Task.UNINSTALL:
                with contextlib.suppress(Conflict):
                    job = await self._db(self.store.set_task, job_id, Task.UNINSTALL)
            target = self._decide(job, name, condition)
            try:
                if target.state is JobState.SUCCEEDED and job.state in (JobState.PENDING, JobState.INSTALLING):
                    # The run got through install and wait before we saw it (watch down, scheduler restarted).
                    if job.state is JobState.PENDING:
                        await self._db(self.store.transition, job_id, JobState.INSTALLING, reason=INSTALLING_REASON)
                    await self._db(self.store.transition, job_id, JobState.RUNNING, reason=READY_REASON)
                await self._db(
                    self.store.transition, job_id, target.state, reason=target.reason, message=target.message
                )
                logger.info("job %s: %s (%s) from PipelineRun %s", job_id, target.state, target.reason, name)
                break
            except IllegalTransition:
                continue
        await self._forget_secret(job_id)
        self.admission.released()

    def _decide(self, job: Job, name: str, condition: _Condition) -> _Target:
        where = f"PipelineRun {self.namespace}/{name}"
        detail = f"{where} {condition.reason or 'ended'}" + (f": {condition.message}" if condition.message else "")
        if job.state is JobState.CANCELLING:
            if job.reason == UNINSTALL_FAILED:
                return _Target(JobState.FAILED, UNINSTALL_FAILED, job.message)
            message = job.message if job.reason == CANCELLED and job.message else "cancelled by the user"
            return _Target(JobState.CANCELLED, CANCELLED, message)
        if condition.status == "True":
            return _Target(JobState.SUCCEEDED, COMPLETED, job.completion_message or f"{where} succeeded")
        if job.reason in FAILED_REASONS:
            return _Target(JobState.FAILED, str(job.reason), job.message or detail)
        if job.completion == "failed":
            return _Target(JobState.FAILED, completion_failure_reason(job), job.completion_message or detail)
        return _Target(JobState.FAILED, PIPELINE_RUN_FAILED, detail)

    def _deleted(self, job: Job, name: str | None) -> _Target:
        what = f"its PipelineRun {self.namespace}/{name} was deleted" if name else "no PipelineRun exists for it"
        return _Target(
            JobState.FAILED,
            RUN_DELETED,
            f"{what} before it finished (job {job.state}, task {job.task or '-'}); its uninstall may not have run: "
            f"check for a Helm release modelops-{job.id}",
        )

    async def _end(self, job_id: uuid.UUID, target: _Target) -> None:
        """Enter a terminal state unless the job is already finished (whoever finished it won)."""
        for _ in range(_FOLLOW_ATTEMPTS):
            job = await self._db(self.store.get_job, job_id)
            if job.terminal:
                break
            state = target.state
            if state is JobState.CANCELLED and job.state is not JobState.CANCELLING:
                return  # only a cancel cancels
            try:
                await self._db(self.store.transition, job_id, state, reason=target.reason, message=target.message)
                break
            except IllegalTransition:
                continue
        await self._forget_secret(job_id)
        self.admission.released()

    async def _forget_secret(self, job_id: uuid.UUID) -> None:
        """Delete the finished job's token Secret at once (the run may be kept for its logs: the token not)."""
        try:
            await asyncio.to_thread(self.kube.delete_secret, self.namespace, token_secret_name(job_id))
        except K8sNotFound:
            pass
        except K8sError as exc:
            logger.warning("job %s: its token Secret stays until its PipelineRun is deleted: %s", job_id, exc)

    # -- logs -------------------------------------------------------------------------------------

    async def _wait_for_ref(self, job_id: uuid.UUID, follow: bool) -> tuple[str, str] | None:
        while True:
            job = await self._db(self.store.get_job, job_id)
            ref = job.backend_ref or {}
            if ref.get("pipelinerun"):
                return str(ref.get("namespace") or self.namespace), str(ref["pipelinerun"])
            if not follow or job.terminal:
                return None
            await asyncio.sleep(self.settings.poll_interval_seconds)

    async def _task_over(self, job_id: uuid.UUID, task: Task) -> bool:
        """Whether `task` can no longer start: the job finished or moved past it."""
        job = await self._db(self.store.get_job, job_id)
        return job.terminal or (job.task is not None and _TASK_ORDER[job.task] > _TASK_ORDER[task])

    async def _task_lines(
        self, job_id: uuid.UUID, namespace: str, run: str, task: Task, follow: bool
    ) -> AsyncIterator[LogItem]:
        selector = f"{PIPELINERUN_LABEL}={run}"
        while True:
            over = await self._task_over(job_id, task) if follow else True
            taskruns = await asyncio.to_thread(self.kube.list_taskruns, namespace, selector)
            taskrun = _taskrun_for(taskruns, task)
            pod = str((taskrun or {}).get("status", {}).get("podName") or "")
            if pod:
                break
            if over or (taskrun is not None and _condition(taskrun).final):
                return  # never ran, or ended without a pod (e.g. a timeout before scheduling)
            yield Idle(timestamp())
            await asyncio.sleep(self.settings.poll_interval_seconds)
        assert taskrun is not None
        while True:
            try:
                info = await asyncio.to_thread(self.kube.get_pod, namespace, pod)
            except K8sNotFound:
                if not follow or _condition(taskrun).final:
                    return  # pruned: its logs are gone with it
                info = None
            if info is not None:
                break
            yield Idle(timestamp())
            await asyncio.sleep(self.settings.poll_interval_seconds)
            taskruns = await asyncio.to_thread(self.kube.list_taskruns, namespace, selector)
            taskrun = _taskrun_for(taskruns, task) or taskrun
        for container in (name for name in info.containers if name.startswith("step-")):
            async for line in self._container_lines(namespace, pod, container, follow):
                yield line

    async def _container_lines(self, namespace: str, pod: str, container: str, follow: bool) -> AsyncIterator[LogItem]:
        """A container's log; with `follow`, once it has started (`Idle` meanwhile), nothing if it never will."""
        while follow:
            try:
                info = await asyncio.to_thread(self.kube.get_pod, namespace, pod)
            except K8sNotFound:
                return
            if container in info.started:
                break
            if info.phase in ("Succeeded", "Failed"):
                return
            yield Idle(timestamp())
            await asyncio.sleep(self.settings.poll_interval_seconds)
        opener = functools.partial(self.kube.read_pod_log, namespace, pod, container, follow)
        async for item in self._pump(opener, follow):
            yield item

    async def _pump(self, open_stream: Callable[[], Stream], follow: bool = False) -> AsyncIterator[LogItem]:
        """Lines of a blocking stream read on a thread of its own; the stream is closed when we stop early.

        With `follow`, also `Idle` whenever no line is waiting, stamped with when we looked. A line the API server
        has not handed over yet may be older than that: at the start of a followed pod log, its earlier lines can
        come out after newer lines of other components (the merge is exact without `follow`)."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[str | _End | BaseException] = asyncio.Queue()
        holder: list[Stream] = []

        def put(item: str | _End | BaseException) -> None:
            with contextlib.suppress(RuntimeError):  # the loop is gone
                loop.call_soon_threadsafe(queue.put_nowait, item)

        def pump() -> None:
            try:
                stream = open_stream()
                holder.append(stream)
                for line in stream:
                    put(str(line))
                put(_END)
            except BaseException as exc:
                put(exc)

        threading.Thread(target=pump, name="tekton-log", daemon=True).start()
        try:
            while True:
                if follow and queue.empty():
                    yield Idle(timestamp())
                item = await queue.get()
                if isinstance(item, _End):
                    return
                if isinstance(item, BaseException):
                    if isinstance(item, K8sNotFound):
                        return  # the pod went away meanwhile
                    raise item
                yield item
        finally:
            for stream in holder:
                stream.close()

    # -- helpers ----------------------------------------------------------------------------------

    def _lock(self, job_id: uuid.UUID) -> asyncio.Lock:
        """The job's lock: start, cancel and the reconciler never act on one job at the same time."""
        lock = self._locks.get(job_id)
        if lock is None:
            lock = asyncio.Lock()
            self._locks[job_id] = lock
        return lock

    def _spawn(self, work: Awaitable[None]) -> None:
        async def run() -> None:
            await work

        task = asyncio.create_task(run())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _db(self, fn: Callable[_P, _T], /, *args: _P.args, **kwargs: _P.kwargs) -> _T:
        """A store call in a worker thread, retried while the database is unavailable."""
        for delay in (*_STORE_RETRY_DELAYS, None):
            try:
                return await asyncio.to_thread(fn, *args, **kwargs)
            except StoreUnavailable:
                if delay is None:
                    raise
                logger.warning("scheduler database unavailable; retrying in %.1fs", delay)
                await asyncio.sleep(delay)
        raise AssertionError("unreachable")  # pragma: no cover


def _implements_backend(backend: TektonBackend) -> Backend:
    return backend  # mypy checks here that TektonBackend implements the Backend protocol
