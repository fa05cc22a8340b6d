"""`LocalBackend`: runs each job's install -> wait -> uninstall in the scheduling server's own event loop.

The embedded default backend: no Kubernetes, no Tekton. Each job is one asyncio task (its "runner") in the
server's loop, driving the shared phases of `scheduler.lifecycle` with a `LocalProcessDeployer` (or any other
deployer given). The store stays the single source of truth: the runner writes every state and task change
there, and everything else (`cancel`, `completed`, `recover`) reacts to what the store says.

Cancellation, without ever skipping uninstall:

- `cancel` (the job is already CANCELLING in the store) cancels the runner's install/wait part only; the runner
  catches that and goes on to uninstall, which ends the job CANCELLED. Starting processes and storing their
  reference is shielded, so a cancel never leaves processes nobody knows about.
- A cancel during uninstall changes nothing: uninstall runs once, and sees the CANCELLING state at its end.
- Races with the engine's own transitions are settled by the store, which refuses the loser's transition with
  `IllegalTransition`; the lifecycle then re-reads the job and follows the winner (e.g. RUNNING lost to
  CANCELLING: uninstall, then CANCELLED).

`close()` cancels the runners without touching job states or the deployed processes; `recover()` at the next
start re-attaches to runs that still live, and fails (or finishes cancelling) the others.
"""

from __future__ import annotations

import asyncio
import logging
import os
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Final, Literal

from scheduler.admission import Admission
from scheduler.backends.base import Backend
from scheduler.deployers.base import Deployer, Deployment, Restarter
from scheduler.deployers.local import LocalProcessDeployer
from scheduler.errors import NotFound
from scheduler.joblogs import PHASES, LogItem, component_log_path, follow_lines, read_lines, task_log_path
from scheduler.lifecycle import (
    INTERNAL_ERROR,
    READY_REASON,
    SCHEDULER_RESTARTED,
    JobNotRunnable,
    Lifecycle,
    Outcome,
    Run,
    completion_outcome,
)
from scheduler.runas import resolve_run_as
from scheduler.settings import SchedulerSettings
from scheduler.states import JobState, Task
from scheduler.store import Job, JobStore

__all__ = ["ROOT_WARNING", "LocalBackend"]

logger = logging.getLogger(__name__)

ROOT_WARNING: Final = (
    "the server runs as root and run_as_user is unset: the scoring services and flows of every job run as root; "
    "set MODELOPS_SCHEDULER_RUN_AS_USER (e.g. nobody) to run them as another user (docs/security.md)"
)

_TASK_ORDER: Final = {Task.INSTALL: 0, Task.WAIT: 1, Task.UNINSTALL: 2}

Mode = Literal["start", "reattach", "uninstall"]


@dataclass
class _LocalRun(Run):
    """A `Run` plus what the backend needs to steer it."""

    runner: asyncio.Task[None] | None = None
    phase: asyncio.Task[Outcome] | None = None
    """The install/wait part, which `cancel` may cancel; None before it starts and once it has ended."""
    cancel_requested: bool = False
    uninstalling: bool = False
    done: asyncio.Event = field(default_factory=asyncio.Event)


class LocalBackend:
    """The `Backend` that runs jobs in this process (see the module docstring).

    `deployer` defaults to a `LocalProcessDeployer` under `<settings.home>/jobs`.
    """

    name = "local"

    def __init__(
        self,
        store: JobStore,
        settings: SchedulerSettings,
        secret: bytes,
        deployer: Deployer | None = None,
    ) -> None:
        self.store = store
        self.settings = settings
        run_as = resolve_run_as(settings.run_as_user)  # RunAsRefused: the server cannot become that user
        if run_as is not None:
            logger.info("local backend: the scoring services and flows of every job run as %s", run_as)
            for needed in (settings.home / "jobs", settings.home / "artifacts"):
                blocked = run_as.unreachable(needed.expanduser().resolve())
                if blocked is not None:
                    logger.warning(
                        "run_as_user %s cannot reach %s: %s is not searchable by it; give the home another place "
                        "(MODELOPS_HOME) or open that folder to it",
                        run_as.name,
                        needed,
                        blocked,
                    )
        elif os.geteuid() == 0:
            logger.warning(ROOT_WARNING)
        self.deployer: Deployer = deployer or LocalProcessDeployer(settings.home / "jobs", run_as=run_as)
        self.lifecycle = Lifecycle(store, settings, secret, self.deployer)
        self._runs: dict[uuid.UUID, _LocalRun] = {}
        self._closing = False
        self.admission = Admission(store, self.name, settings.max_running_jobs, self._start_admitted)

    # -- Backend ----------------------------------------------------------------------------------

    async def start(self, job_id: uuid.UUID) -> None:
        """Begin install of a PENDING job in the background once admission has a slot for it (at once if one is
        free, else when an earlier job ends: `scheduler.admission`); a job already being run is left alone."""
        await self.admission.submit(job_id)

    async def _start_admitted(self, job_id: uuid.UUID) -> None:
        if job_id not in self._runs and not self._closing:
            self._launch(_LocalRun(job_id), "start")

    async def cancel(self, job_id: uuid.UUID) -> None:
        """Stop install or wait of the CANCELLING job; its runner then uninstalls and ends it CANCELLED.

        Returns at once; the job reaches CANCELLED in the background. Idempotent. A job without a runner here
        (never started, or left by a previous server process) gets one that only uninstalls.
        """
        run = self._runs.get(job_id)
        if run is not None:
            run.cancel_requested = True
            if run.phase is not None and not run.phase.done() and not run.uninstalling:
                run.phase.cancel()
            return
        job = await self.lifecycle.db(self.store.get_job, job_id)
        if job.state == JobState.CANCELLING and job_id not in self._runs:
            self._launch(_LocalRun(job_id), "uninstall", Outcome.cancelled())

    async def completed(self, job_id: uuid.UUID) -> None:
        """Wake the job's wait phase (the completion is already in the store; polling would find it too)."""
        run = self._runs.get(job_id)
        if run is not None:
            run.wake.set()

    async def logs(self, job_id: uuid.UUID, task: Task | None, follow: bool) -> AsyncIterator[str]:
        """Lines (without line breaks) of one task's log, or of all three in order.

        With `follow`, each task's log is followed until that task has ended: the job moved on to a later task
        or finished. A task the job never reached yields nothing. Raises `NotFound` for an unknown job.
        """
        await self.lifecycle.db(self.store.get_job, job_id)  # NotFound before any line
        for current in [task] if task is not None else list(Task):

            async def ended(current: Task = current) -> bool:
                job = await self.lifecycle.db(self.store.get_job, job_id)
                return job.terminal or (job.task is not None and _TASK_ORDER[job.task] > _TASK_ORDER[current])

            path = task_log_path(self.settings.home, job_id, current)
            async for line in read_lines(path, follow=follow, ended=ended):
                yield line

    async def component_logs(self, job_id: uuid.UUID, component: str, follow: bool) -> AsyncIterator[LogItem]:
        """Lines of a phase's log or of a process's output file (`scheduler.joblogs.component_log_path`).

        With `follow`, a phase's log is followed until the job moved past that phase, a process's until the
        job ended (uninstall stops the processes first). Raises `NotFound` for an unknown job.
        """
        await self.lifecycle.db(self.store.get_job, job_id)  # NotFound before any line
        order = _TASK_ORDER[Task(component)] if component in PHASES else len(_TASK_ORDER)

        async def ended() -> bool:
            job = await self.lifecycle.db(self.store.get_job, job_id)
            return job.terminal or (job.task is not None and _TASK_ORDER[job.task] > order)

        path = component_log_path(self.settings.home, job_id, component)
        async for item in follow_lines(path, follow=follow, ended=ended):
            yield item

    async def recover(self) -> None:
        """Take over the store's non-terminal local jobs after a (re)start; returns once each has a runner.

        - CANCELLING: finish the cancel (uninstall, CANCELLED).
        - task `uninstall` already: resume it with the outcome it recorded.
        - the flows reported their completion (every flow succeeded, or one failed), whatever the run's state:
          uninstall with that outcome (SUCCEEDED `Completed` when they all succeeded). What the flows reported
          decides, not whether they still run.
        - RUNNING with its processes all alive (and really ours): re-attach and continue the wait phase.
        - RUNNING with some of its processes gone, when the deployer supervises (`settings.restart_limit` > 0):
          re-attach; the wait phase restarts what died (`scheduler.supervision`), e.g. a flow that finished
          while no scheduler listened reports its completion again from its checkpoint.
        - PENDING with nothing deployed: start it if admission admitted it (it never began); a queued one stays
          queued, and admission starts as many as have slots once every job has its runner.
        - anything else (INSTALLING, RUNNING with processes gone and no supervision): uninstall whatever the
          reference names, then FAILED with reason `SchedulerRestarted`.
        """
        jobs = await self.lifecycle.db(self.store.non_terminal_jobs)
        for listed in jobs:
            if listed.backend != self.name or listed.id in self._runs:
                continue
            job = await self.lifecycle.db(self.store.get_job, listed.id)  # with its events
            run = _LocalRun(job.id)
            run.deployment = self._deployment_of(job)
            mode, outcome = self._recovery_plan(job, run.deployment)
            if outcome is not None and outcome.state == JobState.SUCCEEDED and job.state == JobState.INSTALLING:
                # Only a RUNNING job succeeds (`scheduler.states`): its flows ran, and said they are done.
                await self.lifecycle.db(
                    self.store.transition,
                    job.id,
                    JobState.RUNNING,
                    task=Task.WAIT,
                    reason=READY_REASON,
                    message="the flows reported their completion while the scheduler was restarting",
                )
            if mode == "start" and job.admitted_at is None:
                continue  # queued: admission starts it in its turn (below)
            logger.info("recover: job %s (%s, task %s): %s", job.id, job.state, job.task, mode)
            self._launch(run, mode, outcome, resumed=job.task == Task.UNINSTALL)
        await self.admission.pump()

    async def close(self) -> None:
        """Cancel every runner; job states and deployed processes stay as they are, for `recover()`."""
        self._closing = True
        await self.admission.close()
        runners = [run.runner for run in self._runs.values() if run.runner is not None]
        for runner in runners:
            runner.cancel()
        await asyncio.gather(*runners, return_exceptions=True)

    # -- extras -----------------------------------------------------------------------------------

    async def join(self, job_id: uuid.UUID) -> None:
        """Wait until this backend has nothing more to do for the job (returns at once if it has no runner)."""
        run = self._runs.get(job_id)
        if run is not None:
            await run.done.wait()

    def running_jobs(self) -> list[uuid.UUID]:
        """Jobs this backend currently drives."""
        return list(self._runs)

    # -- internals --------------------------------------------------------------------------------

    def _deployment_of(self, job: Job) -> Deployment | None:
        # The deployer's own record first: it is written after every process start, before the reference
        # reaches the store (a crash in between: a started or restarted process the store does not know yet).
        recorded = getattr(self.deployer, "recorded", None)
        if callable(recorded):
            found = recorded(str(job.id))
            if isinstance(found, Deployment):
                return found
        if job.backend_ref:
            return Deployment(str(job.id), job.backend_ref)
        return None

    def _supervises(self) -> bool:
        return isinstance(self.deployer, Restarter) and self.settings.restart_limit > 0

    def _recovery_plan(self, job: Job, deployment: Deployment | None) -> tuple[Mode, Outcome | None]:
        if job.state == JobState.PENDING and deployment is None:
            return "start", None  # never began (e.g. created by an API worker while the engine restarted)
        if job.state == JobState.CANCELLING:
            return "uninstall", Outcome.cancelled()
        if job.task == Task.UNINSTALL:
            recorded = next((e for e in reversed(job.events or ()) if e.task == Task.UNINSTALL), None)
            if recorded is not None and recorded.reason:
                return "uninstall", Outcome.from_reason(recorded.reason, recorded.message)
            reported = completion_outcome(job) if job.state == JobState.RUNNING else None
            return "uninstall", reported or Outcome.failed(
                SCHEDULER_RESTARTED, f"the scheduler restarted while the job was uninstalling ({job.state})"
            )
        reported = completion_outcome(job)
        if reported is not None:
            return "uninstall", reported  # the flows said how the scoring ended, e.g. while install still ran
        if job.state == JobState.RUNNING:
            if deployment is not None and self.deployer.alive(deployment):
                return "reattach", None
            if deployment is not None and self._supervises():
                return "reattach", None  # the wait phase restarts what died meanwhile
            return "uninstall", Outcome.failed(
                SCHEDULER_RESTARTED,
                "the scheduler restarted while the job was RUNNING and its processes are no longer all running",
            )
        return "uninstall", Outcome.failed(
            SCHEDULER_RESTARTED, f"the scheduler restarted while the job was {job.state} (task {job.task or '-'})"
        )

    def _launch(self, run: _LocalRun, mode: Mode, outcome: Outcome | None = None, *, resumed: bool = False) -> None:
        self._runs[run.job_id] = run
        run.runner = asyncio.create_task(self._drive(run, mode, outcome, resumed), name=f"job-{run.job_id}")

    async def _drive(self, run: _LocalRun, mode: Mode, outcome: Outcome | None, resumed: bool) -> None:
        try:
            if mode != "uninstall":
                outcome = await self._install_and_wait(run, mode)
                if outcome is None:
                    return  # not ours to run (JobNotRunnable, logged)
            assert outcome is not None
            run.uninstalling = True
            await self.lifecycle.uninstall(run, outcome, resumed=resumed)
        except asyncio.CancelledError:
            if not self._closing:
                logger.warning("job %s: runner cancelled outside shutdown; recover() will finish it", run.job_id)
            raise
        except NotFound:
            logger.warning("job %s: deleted from the store while it ran", run.job_id)
        except Exception:
            logger.exception("job %s: the run could not be finished; recover() at the next start retries", run.job_id)
        finally:
            if self._runs.get(run.job_id) is run:
                del self._runs[run.job_id]
            run.done.set()
            if not self._closing:
                self.admission.released()

    async def _install_and_wait(self, run: _LocalRun, mode: Mode) -> Outcome | None:
        """Run install (unless re-attaching) and wait as a cancellable child task; the outcome to uninstall with."""
        phase = asyncio.create_task(self._phases(run, mode), name=f"job-{run.job_id}-{mode}")
        run.phase = phase
        if run.cancel_requested:
            phase.cancel()
        try:
            return await phase
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if self._closing or (current is not None and current.cancelling()):
                phase.cancel()
                raise
            return Outcome.cancelled()
        except JobNotRunnable as exc:
            logger.warning("job %s: %s", run.job_id, exc)
            return None
        except Exception as exc:
            logger.exception("job %s: the %s phase failed unexpectedly", run.job_id, mode)
            return Outcome.failed(INTERNAL_ERROR, f"the lifecycle engine failed: {type(exc).__name__}: {exc}")
        finally:
            run.phase = None

    async def _phases(self, run: _LocalRun, mode: Mode) -> Outcome:
        if mode == "start":
            outcome = await self.lifecycle.install(run)
            if outcome is not None:
                return outcome
        return await self.lifecycle.wait(run)


def _implements_backend(backend: LocalBackend) -> Backend:
    return backend  # mypy checks here that LocalBackend implements the Backend protocol
