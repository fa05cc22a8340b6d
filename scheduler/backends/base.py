"""The `Backend` interface: what the scheduling service asks of whatever runs jobs.

A backend runs each job as `install -> wait -> uninstall` (uninstall always, like Tekton's `finally`) and keeps
the job's state and task in the store up to date. The service layer (REST API) only ever:

- creates a PENDING job in the store, then calls `start(job_id)`;
- on a user cancel, moves the job to CANCELLING in the store, then calls `cancel(job_id)`;
- on a flow's `/complete` report, records the outcome in the store, then calls `completed(job_id)`;
- reads logs through `logs(job_id, task, follow)` (the phases) and `component_logs(job_id, component, follow)`
  (any log component: a phase, `service/<name>` or `flow/<name>`), which `scheduler.joblogs.merge_logs`
  interleaves.

`recover()` runs once at server start: it finds the store's non-terminal jobs and either re-attaches to their
runs or tears them down and fails them with reason `SchedulerRestarted`, so no job stays stuck.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Protocol

from scheduler.joblogs import LogItem
from scheduler.states import Task


class Backend(Protocol):
    """What runs jobs. Implementations: `scheduler.backends.local.LocalBackend` (and later Tekton)."""

    name: str

    async def start(self, job_id: uuid.UUID) -> None:
        """Begin the run of a PENDING job and return promptly; the phases go on in the background."""

    async def cancel(self, job_id: uuid.UUID) -> None:
        """The job is CANCELLING in the store: stop what runs, run uninstall, end in CANCELLED. Idempotent."""

    async def completed(self, job_id: uuid.UUID) -> None:
        """A flow reported completion (already recorded in the store): end `wait`, run uninstall."""

    def logs(self, job_id: uuid.UUID, task: Task | None, follow: bool) -> AsyncIterator[str]:
        """Log lines of one task (or all tasks in order), each without its line break; with `follow`, until
        the task has ended (the job moved on to a later task, or finished)."""
        ...

    def component_logs(self, job_id: uuid.UUID, component: str, follow: bool) -> AsyncIterator[LogItem]:
        """Lines of one log component (`install`, `wait`, `uninstall`, `service/<name>`, `flow/<name>`), each
        without its line break. With `follow`, until it can write no more (a phase: the job moved past it; a
        process: the job ended), yielding `scheduler.joblogs.IDLE` whenever there is nothing new yet; a
        component that never ran yields nothing."""
        ...

    async def recover(self) -> None:
        """After a (re)start: re-attach to live runs of non-terminal jobs or fail them cleanly."""

    async def close(self) -> None:
        """Server shutdown: stop background work without changing job states (recover() resumes them)."""
