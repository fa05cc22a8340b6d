"""The one module that talks to Helm (through pyhelm3, which runs the `helm` binary): install, uninstall,
template and lint a chart, with every failure turned into our own `HelmError`.

An import-linter contract keeps pyhelm3 here, so the rest of the code (the `modelops task` commands, the
`HelmDeployer`) depends on this small async API, and tests can replace it with a fake of our own.

pyhelm3's `Command` runs helm and sorts its failures (`ReleaseNotFoundError`, `ConnectionError`, ...); we build
the argument lists ourselves for install and template rather than call `Client.install_or_upgrade_release`:

- the values go to helm as a file (`--values <path>`), the file `modelops task install` wrote, so what helm
  read can be looked at; pyhelm3's release methods always send them on stdin;
- `--wait` without `--wait-for-jobs`: a batch scoring flow is a Kubernetes Job that runs the whole scoring;
  waiting for it to finish would make install last as long as the job (and hit the install timeout), while
  the `wait` task is the one that waits for the scoring;
- `Client.uninstall_release` swallows "release not found"; we report it, so the log can say so.

Helm's own messages are kept (the tail of its stderr) in every error: they name what failed on the cluster.
"""

from __future__ import annotations

import asyncio
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import yaml
from pyhelm3 import Client, Command
from pyhelm3 import errors as helm_errors

__all__ = [
    "DEFAULT_EXECUTABLE",
    "ChartInfo",
    "HelmClient",
    "HelmError",
    "HelmTimeout",
    "Release",
    "is_release_not_found",
    "is_timeout",
]

DEFAULT_EXECUTABLE: Final = "helm"

STDERR_TAIL_LINES: Final = 20
"""How many of helm's last stderr lines an error message keeps: helm ends with the line that matters."""

_OUTER_TIMEOUT_MARGIN_SECONDS: Final = 60.0
"""helm enforces `--timeout` itself; our own bound (timeout + this) only catches a helm that hangs anyway."""

_TIMEOUT_MARKERS: Final = ("context deadline exceeded", "timed out waiting for the condition")
_NOT_FOUND_MARKERS: Final = ("release: not found",)


class HelmError(Exception):
    """A helm command failed; the message names the command, the release or chart, and helm's own words."""

    def __init__(self, message: str, *, stderr: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.stderr = stderr


class HelmTimeout(HelmError):
    """helm gave up waiting (`--timeout`), or did not return within its timeout and our margin."""


@dataclass(frozen=True)
class ChartInfo:
    """A chart as `helm show chart` describes it."""

    ref: str
    name: str
    version: str


@dataclass(frozen=True)
class Release:
    """A release as `helm upgrade --install -o json` / `helm status -o json` describe it."""

    name: str
    namespace: str
    revision: int
    status: str
    description: str = ""


def is_release_not_found(stderr: str) -> bool:
    """Whether helm's error text says the release does not exist (helm 3: `...: release: not found`)."""
    text = stderr.lower()
    return any(marker in text for marker in _NOT_FOUND_MARKERS)


def is_timeout(stderr: str) -> bool:
    """Whether helm's error text says it ran out of time (`--timeout` with `--wait`)."""
    text = stderr.lower()
    return any(marker in text for marker in _TIMEOUT_MARKERS)


def _tail(text: str, lines: int = STDERR_TAIL_LINES) -> str:
    kept = [line.rstrip() for line in text.strip().splitlines() if line.strip()]
    return "\n".join(kept[-lines:])


def _duration(seconds: float) -> str:
    """A helm `--timeout` value: whole seconds, at least one."""
    return f"{max(1, round(seconds))}s"


class HelmClient:
    """Helm commands for the modelops chart. Async: each runs the helm binary as a child process.

    `executable` is the helm binary (a name on PATH or a path); `kubeconfig` and `kube_context`, when given,
    are passed to every command (otherwise helm reads `KUBECONFIG` or the in-cluster service account).
    """

    def __init__(
        self,
        executable: str = DEFAULT_EXECUTABLE,
        *,
        kubeconfig: Path | None = None,
        kube_context: str | None = None,
    ) -> None:
        self.executable = executable
        self._kubeconfig = kubeconfig
        self._kube_context = kube_context
        self._command = Command(executable=executable, kubeconfig=kubeconfig, kubecontext=kube_context)

    def _check_executable(self) -> None:
        if shutil.which(self.executable) is None:
            raise HelmError(f"the helm binary {self.executable!r} is not on PATH (or not executable)")

    async def _run(self, what: str, argv: list[str], timeout: float | None = None) -> bytes:
        """Run `helm <argv>`; its stdout, or `HelmError` (`HelmTimeout`) saying `what` failed and why."""
        self._check_executable()
        bound = None if timeout is None else timeout + _OUTER_TIMEOUT_MARGIN_SECONDS
        try:
            out: bytes = await asyncio.wait_for(self._command.run(argv), bound)
            return out
        except TimeoutError as exc:
            raise HelmTimeout(f"{what}: helm did not return within {bound:g}s") from exc
        except helm_errors.Error as exc:
            stderr = exc.stderr.decode("utf-8", errors="replace") if isinstance(exc.stderr, bytes) else str(exc)
            detail = _tail(stderr) or f"helm exited with status {exc.returncode} and no message"
            kind = HelmTimeout if is_timeout(stderr) else HelmError
            raise kind(f"{what} failed: {detail}", stderr=stderr) from exc
        except OSError as exc:
            raise HelmError(f"{what}: cannot run {self.executable!r}: {exc}") from exc

    # -- commands ------------------------------------------------------------------------------------

    async def version(self) -> str:
        """helm's version, e.g. `v3.17.2`."""
        return (await self._run("helm version", ["version", "--template", "{{ .Version }}"])).decode().strip()

    async def chart(self, ref: str | Path) -> ChartInfo:
        """The chart at `ref` (a folder, a packaged chart or an OCI reference): its name and version."""
        self._check_executable()
        try:
            # pyhelm3's Client looks for the binary when it is built: built here, after our own check.
            client = Client(executable=self.executable, kubeconfig=self._kubeconfig, kubecontext=self._kube_context)
            found = await client.get_chart(ref)
        except helm_errors.Error as exc:
            stderr = exc.stderr.decode("utf-8", errors="replace") if isinstance(exc.stderr, bytes) else str(exc)
            raise HelmError(f"reading the chart {ref}: {_tail(stderr)}", stderr=stderr) from exc
        except (OSError, ValueError) as exc:  # a path that is no chart, metadata pyhelm3 cannot read
            raise HelmError(f"reading the chart {ref}: {exc}") from exc
        return ChartInfo(str(ref), str(found.metadata.name), str(found.metadata.version))

    async def upgrade_install(
        self,
        release: str,
        chart: str | Path,
        values_file: Path,
        *,
        namespace: str,
        timeout: float,
        wait: bool = True,
        atomic: bool = True,
    ) -> Release:
        """`helm upgrade --install`: with `wait`, until the release is ready or `timeout` seconds have passed;
        with `atomic`, a failure rolls the release back (a first install is uninstalled). The namespace must
        exist (`--create-namespace` is off: namespaces belong to the platform's RBAC, not to a job).

        Raises `HelmTimeout` when helm ran out of time, `HelmError` for any other failure.
        """
        argv = [
            "upgrade",
            release,
            str(chart),
            "--install",
            "--namespace",
            namespace,
            "--values",
            str(values_file),
            "--timeout",
            _duration(timeout),
            "--history-max",
            "10",
            "--output",
            "json",
        ]
        if wait:
            argv.append("--wait")
        if atomic:
            argv.append("--atomic")
        out = await self._run(f"helm upgrade --install {release} (namespace {namespace})", argv, timeout)
        return _release(out, release, namespace)

    async def uninstall(self, release: str, *, namespace: str, timeout: float, wait: bool = True) -> bool:
        """`helm uninstall`: True when the release was removed, False when there was no such release."""
        argv = ["uninstall", release, "--namespace", namespace, "--timeout", _duration(timeout)]
        if wait:
            argv.append("--wait")
        try:
            await self._run(f"helm uninstall {release} (namespace {namespace})", argv, timeout)
        except HelmError as exc:
            if isinstance(exc.__cause__, helm_errors.ReleaseNotFoundError) or is_release_not_found(exc.stderr):
                return False
            raise
        return True

    async def status(self, release: str, *, namespace: str) -> Release | None:
        """The release's current revision and status (`deployed`, `failed`, ...), or None if there is none."""
        argv = ["status", release, "--namespace", namespace, "--output", "json"]
        try:
            out = await self._run(f"helm status {release} (namespace {namespace})", argv)
        except HelmError as exc:
            if isinstance(exc.__cause__, helm_errors.ReleaseNotFoundError) or is_release_not_found(exc.stderr):
                return None
            raise
        return _release(out, release, namespace)

    async def template(self, release: str, chart: str | Path, values_file: Path, *, namespace: str) -> str:
        """`helm template`: the manifests the chart renders with these values, as YAML text (no cluster)."""
        argv = ["template", release, str(chart), "--namespace", namespace, "--values", str(values_file)]
        return (await self._run(f"helm template {release} {chart}", argv)).decode("utf-8", errors="replace")

    async def template_objects(
        self, release: str, chart: str | Path, values_file: Path, *, namespace: str
    ) -> list[dict[str, Any]]:
        """`template`, parsed: one mapping per rendered Kubernetes object."""
        text = await self.template(release, chart, values_file, namespace=namespace)
        try:
            return [doc for doc in yaml.safe_load_all(text) if isinstance(doc, dict)]
        except yaml.YAMLError as exc:
            raise HelmError(f"helm template {release} {chart} rendered text that is not YAML: {exc}") from exc

    async def lint(self, chart: str | Path, values_file: Path, *, strict: bool = False) -> str:
        """`helm lint`: its report (raises `HelmError` with the report when the chart has errors)."""
        argv = ["lint", str(chart), "--values", str(values_file)]
        if strict:
            argv.append("--strict")
        return (await self._run(f"helm lint {chart}", argv)).decode("utf-8", errors="replace")


def _release(out: bytes, name: str, namespace: str) -> Release:
    """The release in helm's JSON output (which may be preceded by registry notes on stdout)."""
    text = out.decode("utf-8", errors="replace")
    start = text.find("{")
    try:
        data = json.loads(text[start:]) if start >= 0 else {}
    except json.JSONDecodeError as exc:
        raise HelmError(f"helm answered for release {name} with output that is not JSON: {exc}") from exc
    info = data.get("info") if isinstance(data, dict) else None
    info = info if isinstance(info, dict) else {}
    return Release(
        name=str(data.get("name", name)),
        namespace=str(data.get("namespace", namespace)),
        revision=int(data.get("version", 0) or 0),
        status=str(info.get("status", "unknown")),
        description=str(info.get("description", "")),
    )
