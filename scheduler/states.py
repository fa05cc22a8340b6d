"""The job state machine as one table, so every layer agrees on which state changes are legal.

A job runs like a Tekton PipelineRun: `install`, then `wait`, then `uninstall` (always, like `finally`).
`JobState` is where the job stands, `Task` is which of the three phases is running. The store checks every
state change against `ALLOWED` with `check_transition` inside the same database transaction that applies it;
a refused change raises `IllegalTransition` (HTTP 409) and changes nothing.

The table, and why:

- `PENDING -> INSTALLING` when a backend picks the job up.
- `PENDING -> FAILED` when the job cannot even start (e.g. the IR does not render into values).
- `INSTALLING -> RUNNING` once the services are deployed and ready; `INSTALLING -> FAILED` when install fails.
- `RUNNING -> SUCCEEDED | FAILED` when the scoring ends.
- every non-terminal state `-> CANCELLING` on a user cancel; `CANCELLING -> CANCELLED` once uninstall is done,
  `CANCELLING -> FAILED` only when uninstall itself fails (resources may be left behind, which the user must
  see as a failure rather than a clean cancel).
- `uninstall` runs *before* a terminal state is entered: the lifecycle engine sets `task=uninstall` while the
  job is still `INSTALLING`/`RUNNING`/`CANCELLING`, and only then moves it to the terminal state.
- no self-transitions: a second cancel of a `CANCELLING` job is refused, so callers can tell who won a race.
- terminal states (`SUCCEEDED`, `FAILED`, `CANCELLED`) have no way out.
"""

from __future__ import annotations

from enum import StrEnum
from types import MappingProxyType
from typing import Final

from scheduler.errors import IllegalTransition

__all__ = ["ACTIVE", "ALLOWED", "TERMINAL", "IllegalTransition", "JobState", "Task", "check_transition"]


class JobState(StrEnum):
    """Where a job stands. Stored by value in the database (`jobs.state`, `job_events.*_state`)."""

    PENDING = "PENDING"
    INSTALLING = "INSTALLING"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLING = "CANCELLING"
    CANCELLED = "CANCELLED"

    @classmethod
    def _missing_(cls, value: object) -> JobState | None:
        """Any case names a state (`?state=failed`, `--state Failed`), as kubectl users type them."""
        return cls.__members__.get(value.upper()) if isinstance(value, str) else None


class Task(StrEnum):
    """The pipeline phase that is running, named like the Tekton tasks and the CLI entry points."""

    INSTALL = "install"
    WAIT = "wait"
    UNINSTALL = "uninstall"


TERMINAL: Final[frozenset[JobState]] = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED})
"""States a job never leaves."""

ACTIVE: Final[frozenset[JobState]] = frozenset(JobState) - TERMINAL
"""States that still need work (what the reconciler re-syncs after a restart)."""

ALLOWED: Final[MappingProxyType[JobState, frozenset[JobState]]] = MappingProxyType(
    {
        JobState.PENDING: frozenset({JobState.INSTALLING, JobState.FAILED, JobState.CANCELLING}),
        JobState.INSTALLING: frozenset({JobState.RUNNING, JobState.FAILED, JobState.CANCELLING}),
        JobState.RUNNING: frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLING}),
        JobState.CANCELLING: frozenset({JobState.CANCELLED, JobState.FAILED}),
        JobState.SUCCEEDED: frozenset(),
        JobState.FAILED: frozenset(),
        JobState.CANCELLED: frozenset(),
    }
)
"""For each state, the states it may move to. Read-only: the table is the specification."""


def check_transition(from_state: JobState, to_state: JobState, *, job_id: str | None = None) -> None:
    """Return when `from_state -> to_state` is allowed, else raise `IllegalTransition`."""
    if to_state not in ALLOWED[from_state]:
        raise IllegalTransition(from_state, to_state, job_id=job_id)
