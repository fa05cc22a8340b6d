"""The `Deployer` interface: deploy one rendered values document, watch it, and tear it down.

The lifecycle phases (`scheduler.lifecycle`) are the same for every backend; only the deployer differs:
local processes (`LocalProcessDeployer`) or a Helm release of `charts/modelops` (`HelmDeployer`, later).
A `Deployment` is what a deployer needs to find its work again, as JSON, so it survives a server restart.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

LogFn = Callable[[str], None]
"""Where a phase writes its plain log lines (the task's log file, or stdout in a Tekton step)."""


@dataclass(frozen=True)
class Deployment:
    """Handle on deployed work. `ref` is plain JSON, stored as the job's backend reference."""

    job_id: str
    ref: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class RunStatus:
    """What the deployed scoring flows are doing right now."""

    state: Literal["running", "succeeded", "failed"]
    message: str | None = None
    """For `failed`: which component failed, how, and its last log lines."""


@dataclass(frozen=True)
class Exited:
    """A component of a deployment found not running while it should (a service, or a flow that did not end
    with 0)."""

    kind: Literal["service", "flow"]
    name: str
    code: int | None
    """Its exit code; negative: killed by that signal; None: unknown (started before a scheduler restart)."""
    headline: str
    """What happened, in one line: `service m1 was killed by SIGKILL`."""
    message: str
    """The headline (first line on its own) and then the component's last log lines."""

    @property
    def label(self) -> str:
        return f"{self.kind} {self.name}"


class DeployError(Exception):
    """Deploying, becoming ready or tearing down failed; the message says what and where (with log tails)."""


class ReadinessTimeout(DeployError):
    """`wait_ready` gave up: the deployed work did not become ready within its timeout (nothing exited).

    Separate from a plain `DeployError` so the lifecycle can tell `InstallTimeout` from `InstallFailed`.
    """


class Deployer(Protocol):
    async def deploy(self, job_id: str, values: dict[str, Any], log: LogFn) -> Deployment:
        """Start everything the values describe (services first, then flows). Raises DeployError."""
        ...

    async def wait_ready(self, deployment: Deployment, timeout: float, log: LogFn) -> None:
        """Return once every service and flow is ready; ReadinessTimeout on timeout, DeployError on an early exit."""

    async def status(self, deployment: Deployment) -> RunStatus:
        """Whether the flows still run, all ended well, or one failed."""
        ...

    async def teardown(self, deployment: Deployment, grace: float, log: LogFn) -> None:
        """Stop and remove everything (graceful, then forced after `grace` seconds). Idempotent."""

    def alive(self, deployment: Deployment) -> bool:
        """After a restart: whether the deployed work still runs (and is really ours)."""
        ...


@runtime_checkable
class Restarter(Protocol):
    """A deployer that can restart one dead component itself (local processes): the lifecycle supervises its
    runs (`scheduler.supervision`). On Kubernetes the Deployment and the Job controllers do that instead."""

    def exited(self, deployment: Deployment) -> list[Exited]:
        """The components that are not running while they should: every service that ended, every flow that
        ended other than with exit code 0."""
        ...

    async def restart(self, deployment: Deployment, kind: str, name: str, log: LogFn) -> Deployment:
        """Start component `kind name` again as it was started first (a service on its port); the deployment's
        new reference. Leftovers of the dead process (its process group) are killed first. Raises DeployError."""
        ...
