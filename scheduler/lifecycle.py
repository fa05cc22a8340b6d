"""The three phases of a job run, `install`, `wait` and `uninstall`, shared by every backend.

A job runs like a Tekton PipelineRun (../shared/seeds/002): install renders the IR into one values document and
deploys it, wait watches the scoring until it ends, and uninstall (always, like Tekton's `finally`) tears
everything down before the job enters its terminal state. The local backend runs the phases in the server's
event loop with the `LocalProcessDeployer`; the Tekton tasks (`modelops task install|wait|uninstall`) will run
the same phases, one per task, with a Helm deployer. So each phase is a method that needs only the store,
the settings, the job-token secret, a deployer and a `Run` (what is known about the job's run so far), and
the outcome a phase decides travels through the store: uninstall records it (`reason`, `message`) on the
task change event before tearing down, so an uninstall resumed after a restart still knows it.

How a run ends (`Outcome.reason`, which becomes the job's reason):

| reason | state | when |
| --- | --- | --- |
| `Completed` | SUCCEEDED | a flow reported success through `/complete` |
| `ScoringFailed` | FAILED | a flow reported failure through `/complete` (its message is kept) |
| `InvalidInput` | FAILED | a flow reported that an input file is not there (deleted since the job started) |
| `InvalidParameters` | FAILED | the job's parameters do not fit the pipeline |
| `RenderFailed` | FAILED | the IR, the environment or the settings do not render into values |
| `InstallFailed` | FAILED | deploying failed, or a component exited during install |
| `InstallTimeout` | FAILED | not ready within min(settings.readiness_timeout_seconds, the pipeline's install timeout) |
| `FlowFailed` | FAILED | a flow or service died and is not restarted (`scheduler.supervision`), or restarts ran out |
| `NoCompletion` | FAILED | every flow exited with 0 but none reported `/complete` |
| `WaitTimeout` | FAILED | the pipeline's wait timeout passed |
| `Cancelled` | CANCELLED | the user cancelled (the job was CANCELLING) |
| `SchedulerRestarted` | FAILED | the scheduler restarted and the run could not be re-attached |
| `UninstallFailed` | FAILED | teardown failed or timed out: something may be left running |
| `InternalError` | FAILED | a bug or an unexpected error in the engine itself |

With a deployer that can restart one component (`scheduler.deployers.base.Restarter`: the local processes),
wait also supervises the run: a service or flow that dies is restarted after a back-off, up to the job's restart
limit, each restart an event (`ServiceRestarted`, `FlowRestarted`); see `scheduler.supervision`. On Kubernetes
the Deployment and Job controllers do that, and the Helm deployer is no `Restarter`.

`NoCompletion` is a deliberate choice: SUCCEEDED claims that the scoring is done, and only a flow's report
proves that. A flow that exits with 0 without reporting may have stopped early, or could not reach the
scheduler (a wrong `public_url`); a false success hides lost records, a false failure costs a look at the logs.

Every phase appends plain, timestamped lines (what it does and how long it took) to `<run dir>/<task>.log`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, ParamSpec, TextIO, TypeVar

import yaml

import ir
from scheduler.deployers.base import Deployer, DeployError, Deployment, Exited, ReadinessTimeout, Restarter, RunStatus
from scheduler.errors import Conflict, IllegalTransition, InvalidInput, StoreUnavailable
from scheduler.inference import check_inference_supported, inferring_channels, with_inferred_schemas
from scheduler.joblogs import PhaseLog, run_dir, task_log_path
from scheduler.settings import SchedulerSettings
from scheduler.states import JobState, Task
from scheduler.store import Job, JobStore
from scheduler.supervision import backoff, restart_reason, restartable, restarts_of, used_up
from scheduler.tokens import job_token
from scheduler.trust import check_values
from scheduler.values import bundle_of, render_values

__all__ = [
    "CANCELLED",
    "COMPLETED",
    "FAILED_REASONS",
    "FLOW_FAILED",
    "INSTALL_FAILED",
    "INSTALL_TIMEOUT",
    "INTERNAL_ERROR",
    "INVALID_INPUT",
    "INVALID_PARAMETERS",
    "NO_COMPLETION",
    "READY_REASON",
    "RENDER_FAILED",
    "SCHEDULER_RESTARTED",
    "SCORING_FAILED",
    "UNINSTALL_FAILED",
    "WAIT_TIMEOUT",
    "JobNotRunnable",
    "Lifecycle",
    "Outcome",
    "Run",
    "completion_failure_reason",
    "completion_outcome",
]

logger = logging.getLogger(__name__)

COMPLETED: Final = "Completed"
SCORING_FAILED: Final = "ScoringFailed"
INVALID_INPUT: Final = "InvalidInput"
INVALID_PARAMETERS: Final = "InvalidParameters"
RENDER_FAILED: Final = "RenderFailed"
INSTALL_FAILED: Final = "InstallFailed"
INSTALL_TIMEOUT: Final = "InstallTimeout"
FLOW_FAILED: Final = "FlowFailed"
NO_COMPLETION: Final = "NoCompletion"
WAIT_TIMEOUT: Final = "WaitTimeout"
CANCELLED: Final = "Cancelled"
SCHEDULER_RESTARTED: Final = "SchedulerRestarted"
UNINSTALL_FAILED: Final = "UninstallFailed"
INTERNAL_ERROR: Final = "InternalError"
FAILED_REASONS: Final = frozenset(
    {
        SCORING_FAILED,
        INVALID_INPUT,
        INVALID_PARAMETERS,
        RENDER_FAILED,
        INSTALL_FAILED,
        INSTALL_TIMEOUT,
        FLOW_FAILED,
        NO_COMPLETION,
        WAIT_TIMEOUT,
        SCHEDULER_RESTARTED,
        UNINSTALL_FAILED,
        INTERNAL_ERROR,
    }
)

INSTALLING_REASON: Final = "Installing"
READY_REASON: Final = "Ready"

DEFAULT_TIMEOUTS: Final[Mapping[str, int]] = {"install": 600, "wait": 86400, "uninstall": 600}
"""The IR's default timeouts (10m, 24h, 10m), used when a run's values cannot be read back."""

_MIN_UNINSTALL_MARGIN_SECONDS: Final = 10.0
"""Uninstall always gets at least two stop graces (the flows', then the services': each process has its own) plus
this, whatever the pipeline's uninstall timeout says: the SIGKILL steps must be reachable."""

_STORE_RETRY_DELAYS: Final = (0.2, 0.5, 1.0, 2.0, 4.0)
"""Back-off between attempts when the database is unavailable (about 8 s in all): a restarting database or a
dropped connection should not fail a job, a database that stays away should not hang it."""

_MESSAGE_MAX: Final = 8000
"""Job messages are shown by the API and UI: log tails are kept, but not unboundedly."""

_P = ParamSpec("_P")
_T = TypeVar("_T")


class JobNotRunnable(Exception):
    """The job is not in a state this phase can begin from (e.g. started twice, or already finished)."""


@dataclass(frozen=True)
class Outcome:
    """How a run ended, decided by install or wait (or a cancel), carried out by uninstall."""

    state: JobState
    reason: str
    message: str | None = None

    @classmethod
    def failed(cls, reason: str, message: str | None) -> Outcome:
        return cls(JobState.FAILED, reason, _clip(message))

    @classmethod
    def cancelled(cls, message: str | None = None) -> Outcome:
        return cls(JobState.CANCELLED, CANCELLED, message or "cancelled by the user")

    @classmethod
    def from_reason(cls, reason: str | None, message: str | None) -> Outcome:
        """Rebuild the outcome an uninstall recorded (see the module docstring's table)."""
        if reason == COMPLETED:
            return cls(JobState.SUCCEEDED, COMPLETED, message)
        if reason == CANCELLED:
            return cls.cancelled(message)
        return cls.failed(reason or INTERNAL_ERROR, message)


@dataclass
class Run:
    """What is known about one job's run, shared by its phases (and, in the local backend, with `cancel`)."""

    job_id: uuid.UUID
    deployment: Deployment | None = None
    values: dict[str, Any] | None = None
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    """Set by whoever learns that the job's completion was recorded; the wait phase also polls the store."""
    restarts_due: dict[str, tuple[float, int, float]] = field(default_factory=dict)
    """Dead components waiting for their restart (supervision): label -> (when, the job's attempt, back-off)."""


def _clip(message: str | None) -> str | None:
    if message is None or len(message) <= _MESSAGE_MAX:
        return message
    return message[: _MESSAGE_MAX // 4] + "\n[...]\n" + message[-(_MESSAGE_MAX * 3 // 4) :]


def _timeouts(values: Mapping[str, Any] | None) -> dict[str, float]:
    found = dict(DEFAULT_TIMEOUTS)
    given = ((values or {}).get("pipeline") or {}).get("timeoutSeconds") or {}
    for name in found:
        if isinstance(given.get(name), int | float) and given[name] > 0:
            found[name] = given[name]
    return {name: float(seconds) for name, seconds in found.items()}


async def _finish_even_if_cancelled(work: Awaitable[_T]) -> _T:
    """Await `work` to its end even if the caller is cancelled meanwhile, then let the cancellation through.

    For steps that must not be cut in half: starting processes and storing their reference. Cut there, the
    processes would run with nobody knowing about them.
    """
    task = asyncio.ensure_future(work)
    cancelled = False
    while True:
        try:
            result = await asyncio.shield(task)
        except asyncio.CancelledError:
            if task.done():
                raise
            cancelled = True
            continue
        except BaseException:
            if cancelled:
                raise asyncio.CancelledError() from None
            raise
        if cancelled:
            raise asyncio.CancelledError()
        return result


class Lifecycle:
    """The phases of a run, for one store, settings, job-token secret and deployer.

    `echo`, if given, receives every phase log line as well (a Tekton step prints to stdout).
    """

    def __init__(
        self,
        store: JobStore,
        settings: SchedulerSettings,
        secret: bytes,
        deployer: Deployer,
        *,
        echo: TextIO | None = None,
    ) -> None:
        self.store = store
        self.settings = settings
        self._secret = secret
        self.deployer = deployer
        self._echo = echo

    # -- helpers -----------------------------------------------------------------------------------

    async def db(self, fn: Callable[_P, _T], /, *args: _P.args, **kwargs: _P.kwargs) -> _T:
        """Run a store call in a worker thread, retrying while the database is unavailable."""
        for delay in (*_STORE_RETRY_DELAYS, None):
            try:
                return await asyncio.to_thread(fn, *args, **kwargs)
            except StoreUnavailable:
                if delay is None:
                    raise
                logger.warning("scheduler database unavailable; retrying in %.1fs", delay)
                await asyncio.sleep(delay)
        raise AssertionError("unreachable")  # pragma: no cover

    def run_dir(self, job_id: uuid.UUID) -> Path:
        return run_dir(self.settings.home, job_id)

    def log_for(self, job_id: uuid.UUID, task: Task) -> PhaseLog:
        return PhaseLog(
            task_log_path(self.settings.home, job_id, task),
            echo=self._echo,
            fmt=self.settings.log_format,
            logger=task.value,
        )

    def values_path(self, job_id: uuid.UUID) -> Path:
        return self.run_dir(job_id) / "values.yaml"

    def load_values(self, run: Run) -> dict[str, Any] | None:
        """The run's values: in memory, else read back from the run directory (after a restart)."""
        if run.values is None:
            try:
                loaded = yaml.safe_load(self.values_path(run.job_id).read_text(encoding="utf-8"))
            except (OSError, yaml.YAMLError):
                return None
            run.values = loaded if isinstance(loaded, dict) else None
        return run.values

    def render(self, job: Job, stored_ir: Mapping[str, Any]) -> ir.Values:
        """The job's values: its pipeline version's IR with its parameters, environment and the global settings
        (job id, scheduler URL and job token, log level, size profile, model store, images).

        Through `scheduler.values`, like the API's values preview, so the preview is what install deploys.
        Raises `ir.IRValidationError` for parameters, environment or settings that do not fit.
        """
        token = job_token(self._secret, job.id)
        return render_values(stored_ir, job.parameters, self.settings, job.id, token, job.environment)

    # -- install -----------------------------------------------------------------------------------

    async def install(self, run: Run) -> Outcome | None:
        """PENDING -> INSTALLING (task install), render, deploy, wait until ready, -> RUNNING (task wait).

        Returns None when the job is RUNNING, or the outcome to uninstall with. Raises `JobNotRunnable` when
        the job is neither PENDING nor CANCELLING (someone else runs it, or it is finished).
        """
        with self.log_for(run.job_id, Task.INSTALL) as log:
            try:
                job = await self.db(
                    self.store.transition, run.job_id, JobState.INSTALLING, task=Task.INSTALL, reason=INSTALLING_REASON
                )
            except IllegalTransition:
                job = await self.db(self.store.get_job, run.job_id)
                if job.state == JobState.CANCELLING:
                    log("install: the job was cancelled before it started")
                    return Outcome.cancelled()
                raise JobNotRunnable(f"job {run.job_id} is {job.state}: install cannot begin") from None
            log(f"install: job {job.id} of pipeline {job.pipeline} version {job.pipeline_version}")
            started = time.monotonic()
            outcome = await self._render(job, run, log)
            if outcome is None:
                assert run.values is not None
                outcome = await self._deploy(job, run, log)
            if outcome is not None:
                took = time.monotonic() - started
                log(f"install: failed after {took:.2f}s with {outcome.reason}: {_headline(outcome)}")
                return outcome
            assert run.values is not None
            try:
                job = await self.db(
                    self.store.transition,
                    run.job_id,
                    JobState.RUNNING,
                    task=Task.WAIT,
                    reason=READY_REASON,
                    message=f"{len(run.values.get('scoringServices') or {})} scoring service(s) ready, "
                    f"{len(run.values.get('scoringFlows') or {})} scoring flow(s) running",
                )
            except IllegalTransition:
                job = await self.db(self.store.get_job, run.job_id)
                if job.state == JobState.CANCELLING:
                    log("install: ready, but the job was cancelled meanwhile")
                    return Outcome.cancelled()
                raise JobNotRunnable(f"job {run.job_id} is {job.state}: it cannot enter RUNNING") from None
            log("install: the job is RUNNING")
            return None

    async def _render(self, job: Job, run: Run, log: PhaseLog) -> Outcome | None:
        started = time.monotonic()
        log("render values: fetching the IR and applying the parameters and global settings ...")
        try:
            version = await self.db(self.store.get_version, job.pipeline, job.pipeline_version)
            values = self.render(job, version.ir)
        except ir.IRValidationError as exc:
            lines = [str(issue) for issue in exc.issues]
            only_parameters = all(issue.file == "<parameters>" for issue in exc.issues)
            reason = INVALID_PARAMETERS if only_parameters else RENDER_FAILED
            what = "the job's parameters do not fit the pipeline" if only_parameters else "the values do not render"
            log(f"render values: failed after {time.monotonic() - started:.2f}s: {what}")
            for line in lines:
                log(f"  {line}")
            return Outcome.failed(reason, f"{what}:\n" + "\n".join(lines))
        try:
            values = await asyncio.to_thread(self._infer_schemas, job, version.ir, values, log)
        except ir.IRValidationError as exc:
            lines = [str(issue) for issue in exc.issues]
            log("infer schemas: the flows do not fit the schema read from their input")
            for line in lines:
                log(f"  {line}")
            return Outcome.failed(
                RENDER_FAILED, "the flows do not fit the schema inferred from their input:\n" + "\n".join(lines)
            )
        except InvalidInput as exc:  # SchemaInferenceFailed, OutsideRoots
            log(f"infer schemas: {exc}")
            return Outcome.failed(INVALID_INPUT, str(exc))
        run.values = ir.to_document(values)
        path = self.values_path(job.id)
        await asyncio.to_thread(_write_private, path, ir.to_yaml(values))
        log(f"render values: done in {time.monotonic() - started:.2f}s; wrote {path}")
        return None

    def _infer_schemas(self, job: Job, stored: Mapping[str, Any], values: ir.Values, log: PhaseLog) -> ir.Values:
        """`values` with the fields of its `infer: true` sources read from their files (`scheduler.inference`),
        after the roots check of the paths it reads; `values` itself when no source infers."""
        bundle = bundle_of(stored)
        if not inferring_channels(bundle):
            return values
        check_inference_supported(bundle, self.settings.backend)  # refused at start already; a job from before
        started = time.monotonic()
        check_values(values, job.environment, self.settings, local=True)  # the file is read here, now
        found = with_inferred_schemas(stored, values)
        assert found is not None
        document, inferred = found
        for item in inferred:
            log(f"infer schemas: {item.describe()}")
        rendered = self.render(job, document)
        log(f"infer schemas: done in {time.monotonic() - started:.2f}s")
        return rendered

    async def _deploy(self, job: Job, run: Run, log: PhaseLog) -> Outcome | None:
        assert run.values is not None
        values = run.values

        async def deploy_and_record() -> Deployment:
            with log.step("deploy"):
                deployment = await self.deployer.deploy(str(job.id), values, log)
            run.deployment = deployment
            await self.db(self.store.set_backend_ref, job.id, deployment.ref)
            return deployment

        try:
            deployment = await _finish_even_if_cancelled(deploy_and_record())
        except DeployError as exc:
            return Outcome.failed(INSTALL_FAILED, str(exc))
        timeout = min(self.settings.readiness_timeout_seconds, _timeouts(values)["install"])
        log(f"wait for readiness (at most {timeout:g}s) ...")
        started = time.monotonic()
        try:
            # The deployer bounds its own wait; the outer bound only catches a deployer that would hang.
            await asyncio.wait_for(self.deployer.wait_ready(deployment, timeout, log), timeout + 30)
        except (ReadinessTimeout, TimeoutError) as exc:
            message = str(exc) or f"not ready after {timeout:g}s"
            log(f"wait for readiness: timed out after {time.monotonic() - started:.2f}s")
            return Outcome.failed(INSTALL_TIMEOUT, message)
        except DeployError as exc:
            log(f"wait for readiness: failed after {time.monotonic() - started:.2f}s: {exc}")
            return Outcome.failed(INSTALL_FAILED, str(exc))
        log(f"wait for readiness: done in {time.monotonic() - started:.2f}s")
        return None

    # -- wait --------------------------------------------------------------------------------------

    async def wait(self, run: Run) -> Outcome:
        """Watch the RUNNING job until it completes, fails, times out or is cancelled; return the outcome."""
        with self.log_for(run.job_id, Task.WAIT) as log:
            job = await self.db(self.store.get_job, run.job_id)
            if run.deployment is None and job.backend_ref:
                run.deployment = Deployment(str(run.job_id), job.backend_ref)
            timeout = _timeouts(self.load_values(run))["wait"]
            since = _running_since(job)
            elapsed_before = max(0.0, (datetime.now(UTC) - since).total_seconds()) if since else 0.0
            deadline = time.monotonic() + timeout - elapsed_before
            poll = self.settings.poll_interval_seconds
            log(f"wait: watching the flows (timeout {timeout:g}s, {elapsed_before:.0f}s used; polling every {poll:g}s)")
            started = time.monotonic()
            outcome = await self._watch(run, deadline, timeout, log)
            log(f"wait: ended after {time.monotonic() - started:.2f}s: {outcome.reason}")
            if outcome.message:
                log(outcome.message)
            return outcome

    async def _watch(self, run: Run, deadline: float, timeout: float, log: PhaseLog) -> Outcome:
        while True:
            run.wake.clear()
            job = await self.db(self.store.get_job, run.job_id)
            found = _completion(job) or _interrupted(job)
            if found is not None:
                return found
            wake_in = self.settings.poll_interval_seconds
            if run.deployment is not None:
                status = await self.deployer.status(run.deployment)
                if status.state != "running":
                    # A flow reports /complete and then exits: look at the store once more after the exit.
                    job = await self.db(self.store.get_job, run.job_id)
                    found = _completion(job) or _interrupted(job)
                    if found is not None:
                        return found
                    if status.state == "failed":
                        supervised = await self._supervise(run, job, status, log)
                        if isinstance(supervised, Outcome):
                            return supervised
                        wake_in = min(wake_in, supervised)
                    else:
                        return Outcome.failed(
                            NO_COMPLETION,
                            f"{status.message or 'the flows exited'}, but no flow reported completion to "
                            f"{self.settings.public_url}: a batch flow must report /complete when its source is "
                            "exhausted",
                        )
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return Outcome.failed(WAIT_TIMEOUT, f"the scoring did not complete within {timeout:g}s")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(run.wake.wait(), max(0.0, min(wake_in, remaining)))

    # -- supervision (local processes; on Kubernetes, the Deployment and Job controllers) -----------

    async def _supervise(self, run: Run, job: Job, status: RunStatus, log: PhaseLog) -> Outcome | float:
        """A component died while the job runs: restart it after its back-off, or fail the job.

        Returns the outcome to end `wait` with (FlowFailed: a death that is not restarted, or the job's restarts
        are used up), or how long to wait at most before looking again (a restart is due then). See
        `scheduler.supervision` for what is restarted."""
        deployer = self.deployer
        limit = self.settings.restart_limit
        if run.deployment is None or not isinstance(deployer, Restarter) or limit == 0:
            return Outcome.failed(FLOW_FAILED, status.message)
        reported = {name for name, report in (job.flow_completions or {}).items() if (report or {}).get("succeeded")}
        # A flow that reported success is done, even when its exit code is unknown (re-attached after a restart).
        exited = [e for e in deployer.exited(run.deployment) if not (e.kind == "flow" and e.name in reported)]
        permanent = [e for e in exited if not restartable(e)]
        if permanent:
            return Outcome.failed(FLOW_FAILED, permanent[0].message)
        counts = restarts_of(job)
        used = sum(counts.values()) + len(run.restarts_due)
        now = time.monotonic()
        wake_in = self.settings.poll_interval_seconds
        for dead in exited:
            due = run.restarts_due.get(dead.label)
            if due is None:
                if used >= limit:
                    tail = dead.message.partition("\n")[2]
                    spent = used_up(counts, limit)
                    message = (
                        f"{dead.headline}; not restarted: the job's restarts are used up ({spent}; "
                        f"MODELOPS_SCHEDULER_RESTART_LIMIT)"
                    )
                    return Outcome.failed(FLOW_FAILED, f"{message}\n{tail}" if tail else message)
                used += 1
                delay = backoff(counts.get(dead.label, 0), self.settings)
                due = run.restarts_due[dead.label] = (now + delay, used, delay)
                log(f"{dead.headline}; restarting it in {delay:g}s (restart {used} of at most {limit} for this job)")
            when, attempt, delay = due
            if when > now:
                wake_in = min(wake_in, when - now)
                continue
            failed = await self._restart(run, dead, attempt, delay, log)
            if failed is not None:
                return failed
            del run.restarts_due[dead.label]
        return wake_in

    async def _restart(self, run: Run, dead: Exited, attempt: int, delay: float, log: PhaseLog) -> Outcome | None:
        """Restart one dead component and record it (new reference and event together); a failure's outcome."""
        deployer = self.deployer
        assert isinstance(deployer, Restarter) and run.deployment is not None
        deployment = run.deployment
        limit = self.settings.restart_limit
        message = f"{dead.headline}; restarted after {delay:g}s (restart {attempt} of at most {limit} for this job)"

        async def restart_and_record() -> None:
            restarted = await deployer.restart(deployment, dead.kind, dead.name, log)
            run.deployment = restarted
            await self.db(self.store.add_event, run.job_id, restart_reason(dead), message, backend_ref=restarted.ref)

        try:
            await _finish_even_if_cancelled(restart_and_record())
        except DeployError as exc:
            log(f"could not restart {dead.label}: {exc}")
            return Outcome.failed(FLOW_FAILED, f"{dead.headline}; could not restart it: {exc}")
        except Conflict:
            return None  # the job finished meanwhile: the next look at the store ends the wait
        log(f"{dead.label}: restart {attempt} of at most {limit} for this job")
        return None

    # -- uninstall ---------------------------------------------------------------------------------

    async def uninstall(self, run: Run, outcome: Outcome, *, resumed: bool = False) -> Job:
        """Tear down, remove temporary state (logs are kept), then enter the terminal state.

        Records `outcome` on the task change to `uninstall` first, so an uninstall resumed after a restart
        finishes with the same outcome. A cancel that arrives meanwhile ends the job CANCELLED (uninstall is
        not run twice); a teardown failure ends it FAILED with reason `UninstallFailed`.
        """
        with self.log_for(run.job_id, Task.UNINSTALL) as log:
            started = time.monotonic()
            try:
                job = await self.db(
                    self.store.set_task, run.job_id, Task.UNINSTALL, reason=outcome.reason, message=outcome.message
                )
            except Conflict:
                # Finished by someone else meanwhile: still make sure nothing of ours keeps running.
                job = await self.db(self.store.get_job, run.job_id)
            verb = "resuming uninstall" if resumed else "uninstall"
            log(f"{verb}: the run ended with {outcome.reason} (job state {job.state}): {_headline(outcome)}")
            deployment = run.deployment
            if deployment is None and job.backend_ref:
                deployment = Deployment(str(run.job_id), job.backend_ref)
            timeouts = _timeouts(self.load_values(run))
            error = await self._teardown(deployment, timeouts["uninstall"], log)
            await asyncio.to_thread(_remove_temporary_state, self.run_dir(run.job_id))
            log("removed the run's temporary files (the logs are kept)")
            if job.terminal:
                log(f"uninstall: the job was already {job.state}")
                return job
            job = await self._finish(run.job_id, outcome, error, log, started)
            return job

    async def _teardown(self, deployment: Deployment | None, timeout: float, log: PhaseLog) -> str | None:
        """Tear `deployment` down; the reason it failed, or None."""
        if deployment is None or not deployment.ref:
            log("nothing was deployed")
            return None
        grace = self.settings.uninstall_grace_seconds
        bound = max(timeout, 2 * grace + _MIN_UNINSTALL_MARGIN_SECONDS)
        log(f"teardown (SIGTERM, then SIGKILL after a grace of {grace:g}s each; at most {bound:g}s in all) ...")
        started = time.monotonic()
        try:
            await asyncio.wait_for(self.deployer.teardown(deployment, grace, log), bound)
        except DeployError as exc:
            log(f"teardown: failed after {time.monotonic() - started:.2f}s: {exc}")
            return f"teardown failed: {exc}"
        except TimeoutError:
            log(f"teardown: did not finish within {bound:g}s")
            return f"teardown did not finish within {bound:g}s"
        log(f"teardown: done in {time.monotonic() - started:.2f}s")
        return None

    async def _finish(
        self, job_id: uuid.UUID, outcome: Outcome, error: str | None, log: PhaseLog, started: float
    ) -> Job:
        """Enter the terminal state the outcome (and a cancel that may have arrived) calls for."""
        while True:
            job = await self.db(self.store.get_job, job_id)
            if job.terminal:
                return job
            if error is not None:
                target = Outcome.failed(
                    UNINSTALL_FAILED, f"{error}\n(the run had ended with {outcome.reason}: {outcome.message or '-'})"
                )
            elif job.state == JobState.CANCELLING:
                if outcome.state == JobState.CANCELLED:
                    target = outcome
                else:
                    target = Outcome.cancelled(f"cancelled while uninstalling after {outcome.reason}")
            elif outcome.state == JobState.CANCELLED:
                # Only a CANCELLING job is cancelled; the engine never cancels on its own.
                target = Outcome.failed(INTERNAL_ERROR, f"cancel outcome for a job that is {job.state}")
            else:
                target = outcome
            log(f"uninstall: done in {time.monotonic() - started:.2f}s; the job is {target.state} ({target.reason})")
            try:
                return await self.db(
                    self.store.transition, job_id, target.state, reason=target.reason, message=target.message
                )
            except IllegalTransition:
                again = await self.db(self.store.get_job, job_id)
                if again.state == job.state and target.reason != INTERNAL_ERROR:
                    # Nobody got in between: the outcome does not fit the state (e.g. SUCCEEDED from INSTALLING).
                    outcome = Outcome.failed(
                        INTERNAL_ERROR, f"the run ended with {target.reason}, which a job {job.state} cannot enter"
                    )
                continue  # a cancel got in between: look again


def _headline(outcome: Outcome) -> str:
    """The first line of the outcome's message (the rest is log tails): what `job show` shows first."""
    return (outcome.message or "-").splitlines()[0]


def _write_private(path: Path, text: str) -> None:
    """Write `text` readable by the owner only: the values hold the job token."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(path.suffix + ".tmp")
    partial.touch(mode=0o600)
    partial.write_text(text, encoding="utf-8")
    partial.replace(path)


def _remove_temporary_state(folder: Path) -> None:
    """Delete what only a live run needs (the values with the job token, the deployment record); keep logs."""
    for name in ("values.yaml", "values.yaml.tmp", "deployment.json", "deployment.json.tmp"):
        with contextlib.suppress(FileNotFoundError):
            (folder / name).unlink()


def _completion(job: Job) -> Outcome | None:
    if job.completion == "succeeded":
        return Outcome(JobState.SUCCEEDED, COMPLETED, job.completion_message or "a flow reported completion")
    if job.completion == "failed":
        return Outcome.failed(
            completion_failure_reason(job), job.completion_message or "a flow reported that the scoring failed"
        )
    return None


def completion_outcome(job: Job) -> Outcome | None:
    """How the run ended by what its flows reported (`/complete`): SUCCEEDED once every flow succeeded, FAILED at
    the first that failed; None while that is unknown. The same whether the job is installing, running or
    re-attached after a scheduler restart."""
    return _completion(job)


def completion_failure_reason(job: Job) -> str:
    """The reason of a job whose flows reported failure: `InvalidInput` when a failed flow said its input is
    not there, else `ScoringFailed`."""
    for report in (job.flow_completions or {}).values():
        if isinstance(report, Mapping) and not report.get("succeeded") and report.get("reason") == INVALID_INPUT:
            return INVALID_INPUT
    return SCORING_FAILED


def _interrupted(job: Job) -> Outcome | None:
    if job.state == JobState.CANCELLING:
        return Outcome.cancelled()
    if job.terminal:
        return Outcome.from_reason(job.reason, job.message)
    return None


def _running_since(job: Job) -> datetime | None:
    """When the job entered RUNNING (the start of its wait timeout), from its events."""
    for event in reversed(job.events or ()):
        if event.to_state == JobState.RUNNING and event.from_state != JobState.RUNNING:
            return event.at
    return None
