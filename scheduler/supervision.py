"""Supervision of a running job's components: which deaths are restarted, after how long, and how they are counted.

On Kubernetes a scoring service's pod that dies is restarted by its Deployment, and a flow's pod by its Job (up
to `backoffLimit`), while the flows retry their score requests. The local backend's processes have nobody to do
that, so the wait phase does it (`scheduler.lifecycle.Lifecycle.wait`, with a deployer that is a
`scheduler.deployers.base.Restarter`): a component found dead is started again after a back-off, and each
restart is an event of the job (`ServiceRestarted`, `FlowRestarted`) whose message names the component, how it
ended and the attempt. A job's restarts are counted from those events, so a scheduler restart does not reset them.

What is restarted (the exit-code convention of `modelops flow`, `scoring_flows.cli`):

| component | ended how | restarted |
| --- | --- | --- |
| scoring service | any way (a service must run while the flows do) | yes |
| flow | exit code 0 | no: done (the job's outcome comes from its completion report) |
| flow | exit code 1 (failed, and reported it) or 2 (bad command line or values) | no: permanent, the job fails |
| flow | killed by a signal (SIGKILL, SIGSEGV, an OOM kill), or an exit code >= 128 (a shell's report of one) | yes |
| flow | exit code 75: done, but the scheduler did not accept its completion report in time | yes: it reports again |
| flow | exit code unknown (started before a scheduler restart) | yes: a failure it reported would have ended the job |

A restarted flow resumes from its checkpoint (a batch source) or its queue's unacknowledged messages, so no
record is lost or written twice; a flow that had finished only reports its final counts and completion again.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from typing import Final

from scheduler.deployers.base import Exited
from scheduler.settings import SchedulerSettings
from scheduler.store import Job

__all__ = [
    "FLOW_RESTARTED",
    "RESTART_REASONS",
    "SERVICE_RESTARTED",
    "backoff",
    "restart_reason",
    "restartable",
    "restarts_of",
    "used_up",
]

SERVICE_RESTARTED: Final = "ServiceRestarted"
FLOW_RESTARTED: Final = "FlowRestarted"
RESTART_REASONS: Final = frozenset({SERVICE_RESTARTED, FLOW_RESTARTED})

_SIGNAL_EXIT_CODES: Final = 128
"""A shell reports a child killed by signal N as exit code 128 + N; `modelops flow` itself uses 0, 1, 2 and 75."""
NOT_RECORDED_EXIT: Final = 75
"""`scoring_flows.runtime.NOT_RECORDED_EXIT`: the flow is done, but its completion report was not accepted."""


def restartable(exited: Exited) -> bool:
    """Whether a dead component is started again (the module docstring's table)."""
    if exited.kind == "service":
        return True
    code = exited.code
    return code is None or code < 0 or code >= _SIGNAL_EXIT_CODES or code == NOT_RECORDED_EXIT


def restart_reason(exited: Exited) -> str:
    return SERVICE_RESTARTED if exited.kind == "service" else FLOW_RESTARTED


def restarts_of(job: Job) -> Counter[str]:
    """How often each component (`service m1`, `flow f1`) of the job was restarted, from its events (whose
    messages begin with the component)."""
    counts: Counter[str] = Counter()
    for event in job.events or ():
        if event.reason in RESTART_REASONS and event.message:
            counts[" ".join(event.message.split(" ", 2)[:2])] += 1
    return counts


def backoff(restarts_before: int, settings: SchedulerSettings) -> float:
    """The wait before a component's next restart: `restart_backoff_seconds`, doubled for each restart of it
    before, at most `restart_backoff_max_seconds`."""
    delay = settings.restart_backoff_seconds * 2.0 ** min(restarts_before, 30)
    return min(delay, settings.restart_backoff_max_seconds)


def used_up(counts: Mapping[str, int], limit: int) -> str:
    """How a job's restarts were spent, for the failure once none are left: `3 of at most 3: service m1 2,
    flow f1 1`."""
    spent = ", ".join(f"{label} {count}" for label, count in sorted(counts.items()))
    return f"{sum(counts.values())} of at most {limit}" + (f": {spent}" if spent else "")
