"""`HelmDeployer`: the `Deployer` protocol on top of a Helm release of `charts/modelops`, one release per job.

The lifecycle phases (`scheduler.lifecycle`) drive any deployer the same way; this one turns them into helm
commands through `scheduler.helm` (the only module that imports pyhelm3):

- `deploy` writes the values to a private file and runs `helm upgrade --install --wait --atomic` with the
  pipeline's install timeout (`pipeline.timeoutSeconds.install` of the values): Helm waits for readiness itself,
  and a failure rolls the release back. A Helm timeout is raised as `ReadinessTimeout`;
- `wait_ready` then only checks that the release is `deployed` (the wait already happened inside helm);
- `status` reads the release status: `deployed` is running, `failed` is a failure, a release that vanished is a
  failure. What the pods do is the cluster's business: on Kubernetes the scoring's end comes from the flows'
  `/complete` report and the Tekton reconciler, not from this deployer;
- `teardown` runs `helm uninstall --wait`; a release that does not exist is already torn down.

The release of job `<uuid>` is `modelops-<uuid>` (`release_name`), unique per job and within Helm's 53-character
limit. The namespace is the deployer's if it has one, else the values' `pipeline.namespace`.
"""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
import threading
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, Final, TypeVar

import yaml

from scheduler.deployers.base import DeployError, Deployment, LogFn, ReadinessTimeout, RunStatus
from scheduler.helm import HelmClient, HelmError, HelmTimeout

__all__ = ["RELEASE_PREFIX", "HelmDeployer", "release_name", "write_values"]

RELEASE_PREFIX: Final = "modelops-"
DEFAULT_INSTALL_TIMEOUT_SECONDS: Final = 600.0
"""The IR's default install timeout (10m), when the values do not say."""
_ALIVE_TIMEOUT_SECONDS: Final = 60.0
_UNINSTALL_MARGIN_SECONDS: Final = 60.0
"""`helm uninstall --wait` waits for the pods to go: their termination grace, plus time for the API server."""

_T = TypeVar("_T")


def release_name(job_id: str) -> str:
    """The Helm release of a job: `modelops-<job uuid>` (45 characters)."""
    return f"{RELEASE_PREFIX}{job_id}"


def write_values(folder: Path, values: dict[str, Any]) -> Path:
    """Write `values` as YAML to `<folder>/values.yaml`, readable by the owner only (they hold the job token)."""
    path = folder / "values.yaml"
    path.touch(mode=0o600)
    path.write_text(yaml.safe_dump(values, sort_keys=True), encoding="utf-8")
    return path


def _install_timeout(values: dict[str, Any]) -> float:
    given = ((values.get("pipeline") or {}).get("timeoutSeconds") or {}).get("install")
    return float(given) if isinstance(given, int | float) and given > 0 else DEFAULT_INSTALL_TIMEOUT_SECONDS


def _run_blocking(work: Coroutine[Any, Any, _T], timeout: float) -> _T:
    """Run a coroutine to its end from synchronous code, even when called inside a running event loop."""
    result: list[_T] = []
    failure: list[BaseException] = []

    def target() -> None:
        try:
            result.append(asyncio.run(asyncio.wait_for(work, timeout)))
        except BaseException as exc:
            failure.append(exc)

    thread = threading.Thread(target=target, name="modelops-helm-sync", daemon=True)
    thread.start()
    thread.join()
    if failure:
        raise failure[0]
    return result[0]


class HelmDeployer:
    """Deploys a job's values as the Helm release `modelops-<job id>` of `chart`."""

    def __init__(self, helm: HelmClient, chart: str | Path, *, namespace: str | None = None) -> None:
        self.helm = helm
        self.chart = str(chart)
        self.namespace = namespace

    def _namespace(self, values: dict[str, Any]) -> str:
        found = self.namespace or (values.get("pipeline") or {}).get("namespace") or "default"
        return str(found)

    async def deploy(self, job_id: str, values: dict[str, Any], log: LogFn) -> Deployment:
        release = release_name(job_id)
        namespace = self._namespace(values)
        timeout = _install_timeout(values)
        ref = {"release": release, "namespace": namespace, "chart": self.chart}
        log(f"helm upgrade --install {release} (chart {self.chart}, namespace {namespace}, timeout {timeout:g}s) ...")
        started = time.monotonic()
        with tempfile.TemporaryDirectory(prefix="modelops-values-") as folder:
            path = await asyncio.to_thread(write_values, Path(folder), values)
            try:
                found = await self.helm.upgrade_install(release, self.chart, path, namespace=namespace, timeout=timeout)
            except HelmTimeout as exc:
                log(f"helm upgrade --install: timed out after {time.monotonic() - started:.2f}s")
                raise ReadinessTimeout(exc.message) from exc
            except HelmError as exc:
                log(f"helm upgrade --install: failed after {time.monotonic() - started:.2f}s")
                raise DeployError(exc.message) from exc
        log(f"helm upgrade --install: revision {found.revision} {found.status} in {time.monotonic() - started:.2f}s")
        return Deployment(job_id, {**ref, "revision": found.revision})

    async def wait_ready(self, deployment: Deployment, timeout: float, log: LogFn) -> None:
        release, namespace = self._where(deployment)
        try:
            found = await asyncio.wait_for(self.helm.status(release, namespace=namespace), timeout)
        except TimeoutError as exc:
            raise ReadinessTimeout(f"helm status {release} did not answer within {timeout:g}s") from exc
        except HelmError as exc:
            raise DeployError(exc.message) from exc
        if found is None:
            raise DeployError(f"release {release} is not installed in namespace {namespace}")
        if found.status != "deployed":
            raise DeployError(f"release {release} is {found.status}: {found.description or 'no description'}")
        log(f"release {release} revision {found.revision} is deployed (helm waited for readiness)")

    async def status(self, deployment: Deployment) -> RunStatus:
        release, namespace = self._where(deployment)
        try:
            found = await self.helm.status(release, namespace=namespace)
        except HelmError as exc:
            return RunStatus("failed", exc.message)
        if found is None:
            return RunStatus("failed", f"release {release} no longer exists in namespace {namespace}")
        if found.status == "deployed":
            return RunStatus("running")
        return RunStatus("failed", f"release {release} is {found.status}: {found.description or 'no description'}")

    async def teardown(self, deployment: Deployment, grace: float, log: LogFn) -> None:
        release, namespace = self._where(deployment)
        timeout = grace + _UNINSTALL_MARGIN_SECONDS
        log(f"helm uninstall {release} (namespace {namespace}, timeout {timeout:g}s) ...")
        started = time.monotonic()
        try:
            removed = await self.helm.uninstall(release, namespace=namespace, timeout=timeout)
        except HelmError as exc:
            raise DeployError(exc.message) from exc
        took = time.monotonic() - started
        if removed:
            log(f"helm uninstall: done in {took:.2f}s")
        else:
            log(f"helm uninstall: release {release} not found in namespace {namespace}: nothing to remove")

    def alive(self, deployment: Deployment) -> bool:
        release, namespace = self._where(deployment)
        with contextlib.suppress(HelmError, TimeoutError):
            found = _run_blocking(self.helm.status(release, namespace=namespace), _ALIVE_TIMEOUT_SECONDS)
            return found is not None and found.status == "deployed"
        return False

    @staticmethod
    def _where(deployment: Deployment) -> tuple[str, str]:
        release = deployment.ref.get("release") or release_name(deployment.job_id)
        namespace = deployment.ref.get("namespace") or "default"
        return str(release), str(namespace)
