"""`LocalProcessDeployer`: a job's values document run as local OS processes, for the embedded `local` backend.

Where Helm would create a Deployment per scoring service and a Job per scoring flow, this starts one process
per scoring service and one per scoring flow named in the values (`scoringServices`, `scoringFlows`):

- each in its own session and process group (`setsid`), so teardown signals the whole group, including any
  workers the component forks, and a Ctrl-C in the scheduler's terminal does not reach it;
- with its output in `<run dir>/services/<name>.log` or `<run dir>/flows/<name>.log`;
- told where its values are and who it is through the environment (`MODELOPS_VALUES`, `MODELOPS_COMPONENT`,
  ...); services get a free loopback port (`--port`, `MODELOPS_SCORING_PORT`), flows the URLs of the services
  (`MODELOPS_SERVICE_URLS`, JSON), which on Kubernetes would be Service DNS names.

The command line of each component comes from a `CommandFactory`: by default the `modelops scoring-service`
and `modelops flow` entry points; tests (and anyone, until those exist) pass small real programs instead.

The deployment reference (stored with the job, and also written to `<run dir>/deployment.json` after every
start, so a crash in the middle of deploying leaves a trail) records each process's pid *and* its start time
(`/proc/<pid>/stat` field 22) plus the boot id: after a scheduler restart, a pid that was since reused by an
unrelated program is not mistaken for ours, neither by `alive` nor by `teardown`. Linux only (`/proc`).

Processes are started with `os.posix_spawn` rather than `subprocess.Popen`: they must be able to outlive this
object and the server process (a restart re-attaches to them), which `Popen` objects report as resource leaks
when collected. Exit codes of our own children are collected with `waitpid`; for processes started before a
restart the exit code is unknowable, which `status` says.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import shutil
import signal
import socket
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal

import httpx
import yaml

from scheduler.deployers.base import (
    Deployer,
    DeployError,
    Deployment,
    Exited,
    LogFn,
    ReadinessTimeout,
    Restarter,
    RunStatus,
)
from scheduler.joblogs import LOG_TAIL_LINES, tail
from scheduler.runas import RunAs

__all__ = [
    "REF_KIND",
    "CommandFactory",
    "Component",
    "LocalProcessDeployer",
    "default_commands",
    "process_start_time",
]

REF_KIND: Final = "local-processes"
"""`ref["kind"]` of a local deployment, so a reference from another deployer is never misread."""

READY_PATH: Final = "/v2/health/ready"
"""Open Inference Protocol readiness endpoint: a scoring service answers 200 once its model is loaded."""

_READY_POLL_SECONDS: Final = 0.02
_READY_REQUEST_TIMEOUT_SECONDS: Final = 1.0
_STOP_POLL_SECONDS: Final = 0.05
_KILL_WAIT_SECONDS: Final = 5.0
"""After SIGKILL, how long to wait for the processes to disappear before teardown reports failure (SIGKILL
cannot be ignored; this only bounds a process stuck in uninterruptible sleep, e.g. on a dead NFS mount)."""
_FAILED_DEPLOY_GRACE_SECONDS: Final = 5.0
"""Grace given to already-started processes when a later one cannot be started at all."""

ComponentKind = Literal["service", "flow"]


@dataclass(frozen=True)
class Component:
    """One process to start: what a `CommandFactory` gets to build its command line."""

    kind: ComponentKind
    name: str
    job_id: str
    values_path: Path
    run_dir: Path
    port: int | None = None
    """Services only: the loopback port the service must listen on."""


CommandFactory = Callable[[Component], Sequence[str]]
"""Maps a component to its argv (argv[0] is a path, or a name looked up on PATH)."""


def _modelops_executable() -> str:
    """The `modelops` console script of this installation (next to the interpreter), else the one on PATH."""
    beside = Path(sys.executable).with_name("modelops")
    return str(beside) if beside.exists() else "modelops"


def default_commands(component: Component) -> list[str]:
    """`python -m scoring_services --values V --service N --port P` (what `modelops scoring-service` runs,
    without importing the scheduler's CLI: 0.2 s less per service) and `modelops flow --values V --flow N`."""
    exe = _modelops_executable()
    if component.kind == "service":
        return [
            sys.executable,
            "-m",
            "scoring_services",
            "--values",
            str(component.values_path),
            "--service",
            component.name,
            "--port",
            str(component.port),
        ]
    return [exe, "flow", "--values", str(component.values_path), "--flow", component.name]


# ---------------------------------------------------------------------------------------------- /proc


@dataclass(frozen=True)
class _Stat:
    state: str
    pgrp: int
    start_time: int


def _stat(pid: int) -> _Stat | None:
    """State, process group and start time (clock ticks since boot) of `pid`; None if there is no such process."""
    try:
        data = Path(f"/proc/{pid}/stat").read_bytes()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # The command name (field 2) is in parentheses and may itself hold spaces or ')': split after the last one.
    fields = data[data.rindex(b")") + 2 :].split()
    return _Stat(state=fields[0].decode(), pgrp=int(fields[2]), start_time=int(fields[19]))


def process_start_time(pid: int) -> int | None:
    """`/proc/<pid>/stat` field 22: when the process started, in clock ticks since boot (None: no such pid)."""
    stat = _stat(pid)
    return stat.start_time if stat is not None else None


def _running(stat: _Stat | None) -> bool:
    # Z: exited, waiting to be reaped by its parent; X: being removed. Neither runs any more.
    return stat is not None and stat.state not in ("Z", "X")


@functools.cache
def _boot_id() -> str:
    """This boot's id (it cannot change while this process lives: read once)."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def _group_members(pgid: int) -> list[int]:
    """Running processes whose process group is `pgid`."""
    members: list[int] = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            stat = _stat(int(entry.name))
            if stat is not None and stat.pgrp == pgid and _running(stat):
                members.append(int(entry.name))
    return members


# ---------------------------------------------------------------------------------------------- the deployer


@dataclass(frozen=True)
class _Proc:
    """One started process, as recorded in the deployment reference."""

    kind: ComponentKind
    name: str
    pid: int
    start_time: int
    log: str
    port: int | None = None

    @property
    def label(self) -> str:
        return f"{self.kind} {self.name}"

    @property
    def key(self) -> tuple[int, int]:
        return (self.pid, self.start_time)

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "kind": self.kind,
            "name": self.name,
            "pid": self.pid,
            "startTime": self.start_time,
            "log": self.log,
        }
        if self.port is not None:
            data["port"] = self.port
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> _Proc:
        kind = data["kind"]
        if kind not in ("service", "flow"):
            raise ValueError(f"unknown component kind {kind!r}")
        return cls(
            kind=kind,
            name=str(data["name"]),
            pid=int(data["pid"]),
            start_time=int(data["startTime"]),
            log=str(data["log"]),
            port=int(data["port"]) if data.get("port") is not None else None,
        )


def _procs(deployment: Deployment) -> list[_Proc]:
    ref = deployment.ref
    if not ref:
        return []
    if ref.get("kind") != REF_KIND:
        raise DeployError(f"job {deployment.job_id}: not a local-process deployment: {ref.get('kind')!r}")
    try:
        return [_Proc.from_json(item) for item in ref.get("processes", [])]
    except (KeyError, TypeError, ValueError) as exc:
        raise DeployError(f"job {deployment.job_id}: unreadable deployment reference: {exc}") from exc


def _describe_exit(code: int | None) -> str:
    if code is None:
        return "exited (exit code unknown: it was started before the scheduler restarted)"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"was killed by {name}"
    return f"exited with code {code}"


def _describe_end(code: int | None) -> str:
    """How a process that was found not running had ended, after "had already"."""
    if code is None:
        return "exited (exit code unknown: it was started before the scheduler restarted)"
    if code >= 0:
        return f"exited (code {code})"
    return _describe_exit(code).replace("was killed", "been killed", 1)


def _after_sigterm(code: int | None) -> str:
    """How a process that stopped after SIGTERM ended, as a suffix of the teardown's line about it."""
    if code is None:
        return ""  # not our child (started before a restart): its exit code is unknowable
    if code == -signal.SIGTERM:
        return " (ended by the signal: it had no handler for it)"
    return f" (exit code {code})" if code >= 0 else f" ({_describe_exit(code)})"


def _with_tail(message: str, proc: _Proc) -> str:
    lines = tail(Path(proc.log), LOG_TAIL_LINES)
    if not lines:
        return f"{message} (its log {proc.log} is empty)"
    # The message stays the first line on its own (what a log line or a job list shows); the tail follows.
    return f"{message}\nlast {len(lines)} log line(s) of {proc.label}:\n" + "\n".join(lines)


def _free_port(host: str) -> int:
    """A port free right now on `host`. The component binds it a moment later; if something else took it in
    between, the component fails to start and install reports it (a window of milliseconds)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


class LocalProcessDeployer:
    """Runs the scoring services and flows of each job as local processes under `<runs_root>/<job id>/`.

    `commands` builds each component's argv (default: the `modelops` entry points). `env` adds variables to
    every component's environment. The scheduler's own `MODELOPS_SCHEDULER_*` variables (database URL, token
    secret, API tokens) are never passed on: components get only what the values give them.

    One instance serves all jobs of a backend; it is used from one event loop.
    """

    def __init__(
        self,
        runs_root: Path,
        commands: CommandFactory = default_commands,
        *,
        host: str = "127.0.0.1",
        env: Mapping[str, str] | None = None,
        run_as: RunAs | None = None,
    ) -> None:
        self.runs_root = runs_root
        self.run_as = run_as
        """The OS user the components run as (`run_as_user`); None: the server's own."""
        self._commands = commands
        self._host = host
        self._extra_env = dict(env or {})
        self._children: set[tuple[int, int]] = set()
        """(pid, start time) of processes this object started and has not reaped yet."""
        self._exit_codes: dict[tuple[int, int], int] = {}
        """Exit codes (negative: killed by that signal) of the children this object reaped."""
        self._reported: set[tuple[int, int]] = set()
        """Processes whose end a teardown logged already: a second (idempotent) teardown does not repeat it."""

    # -- paths and the recorded reference -------------------------------------------------------------

    def run_dir(self, job_id: str) -> Path:
        return self.runs_root / job_id

    def recorded(self, job_id: str) -> Deployment | None:
        """The reference last written to `<run dir>/deployment.json`: what was started even if the scheduler
        died before it could store the reference with the job. None when there is none."""
        path = self.run_dir(job_id) / "deployment.json"
        try:
            ref = json.loads(path.read_text(encoding="utf-8"))
        except (FileNotFoundError, ValueError):
            return None
        return Deployment(job_id=job_id, ref=ref) if isinstance(ref, dict) else None

    def _record(self, job_id: str, ref: Mapping[str, Any]) -> None:
        path = self.run_dir(job_id) / "deployment.json"
        partial = path.with_suffix(".json.tmp")
        partial.write_text(json.dumps(ref, indent=2), encoding="utf-8")
        partial.replace(path)

    # -- process bookkeeping -------------------------------------------------------------------------

    def _exit_code(self, proc: _Proc) -> tuple[bool, int | None]:
        """(still running, exit code if known) of one recorded process."""
        key = proc.key
        if key in self._exit_codes:
            return False, self._exit_codes[key]
        if key in self._children:
            try:
                pid, status = os.waitpid(proc.pid, os.WNOHANG)
            except ChildProcessError:  # reaped elsewhere (another waitpid caller): the code is lost
                self._children.discard(key)
                return False, None
            if pid == 0:
                return True, None
            self._children.discard(key)
            code = os.waitstatus_to_exitcode(status)
            self._exit_codes[key] = code
            return False, code
        return self._is_ours(proc), None

    def _is_ours(self, proc: _Proc) -> bool:
        stat = _stat(proc.pid)
        return _running(stat) and stat is not None and stat.start_time == proc.start_time

    def _group_alive(self, proc: _Proc) -> list[int]:
        """Running members of the process group `proc` leads, if that group is still ours; else []."""
        running, _ = self._exit_code(proc)  # reaps the leader when it is our child and has exited
        leader = _stat(proc.pid)
        if leader is not None and leader.start_time != proc.start_time:
            # The pid now belongs to another process, so our group is long gone: a pid is never reused
            # while a process group of that number still has members.
            return []
        members = _group_members(proc.pid)
        if running and proc.pid not in members:
            members.append(proc.pid)
        return members

    def _signal_group(self, proc: _Proc, sig: signal.Signals) -> bool:
        if not self._group_alive(proc):
            return False
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return False
        return True

    # -- Deployer -------------------------------------------------------------------------------------

    async def deploy(self, job_id: str, values: dict[str, Any], log: LogFn) -> Deployment:
        run = self.run_dir(job_id)
        (run / "services").mkdir(parents=True, exist_ok=True)
        (run / "flows").mkdir(parents=True, exist_ok=True)
        values_path = run / "values.yaml"
        if not values_path.exists():  # the lifecycle writes it first; this is for direct use of the deployer
            values_path.touch(mode=0o600)  # the values hold the job token
            values_path.write_text(yaml.safe_dump(values, sort_keys=True), encoding="utf-8")
        if self.run_as is not None:  # its components read the values and write beside them as that user
            self.run_as.own(run, run / "services", run / "flows", values_path)
        services = values.get("scoringServices") or {}
        flows = values.get("scoringFlows") or {}
        ref: dict[str, Any] = {"kind": REF_KIND, "runDir": str(run), "bootId": _boot_id(), "processes": []}
        started: list[_Proc] = []
        current = ""
        try:
            urls: dict[str, str] = {}
            for name in sorted(services):
                current = f"service {name}"
                port = _free_port(self._host)
                component = Component("service", name, job_id, values_path, run, port)
                env = {"MODELOPS_SCORING_PORT": str(port), "MODELOPS_SCORING_HOST": self._host}
                started.append(self._spawn(component, env, log))
                urls[name] = f"http://{self._host}:{port}"
                ref["processes"] = [p.to_json() for p in started]
                self._record(job_id, ref)
            for name in sorted(flows):
                current = f"flow {name}"
                component = Component("flow", name, job_id, values_path, run)
                started.append(self._spawn(component, {"MODELOPS_SERVICE_URLS": json.dumps(urls)}, log))
                ref["processes"] = [p.to_json() for p in started]
                self._record(job_id, ref)
        except (OSError, ValueError) as exc:
            log(f"could not start {current}: {exc}; stopping what was started")
            await self.teardown(Deployment(job_id, ref), _FAILED_DEPLOY_GRACE_SECONDS, log)
            raise DeployError(f"could not start {current}: {exc}") from exc
        return Deployment(job_id=job_id, ref=ref)

    def _spawn(self, component: Component, extra: Mapping[str, str], log: LogFn) -> _Proc:
        argv = [str(part) for part in self._commands(component)]
        if not argv:
            raise ValueError("the command factory returned an empty command")
        executable = shutil.which(argv[0])
        if executable is None:
            raise FileNotFoundError(f"command not found: {argv[0]}")
        folder = "services" if component.kind == "service" else "flows"
        log_path = component.run_dir / folder / f"{component.name}.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith("MODELOPS_SCHEDULER_")}
        env.update(self._extra_env)
        env.update(
            {
                "MODELOPS_JOB_ID": component.job_id,
                "MODELOPS_VALUES": str(component.values_path),
                "MODELOPS_COMPONENT": component.name,
                "MODELOPS_COMPONENT_KIND": component.kind,
                "PYTHONUNBUFFERED": "1",  # log lines reach the log file as they are printed
            }
        )
        env.update(extra)
        command = argv
        if self.run_as is not None:
            executable, command, env = self.run_as.wrap(executable, argv, env)
        pid = os.posix_spawn(
            executable,
            command,
            env,
            file_actions=[
                (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                (os.POSIX_SPAWN_OPEN, 1, str(log_path), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644),
                (os.POSIX_SPAWN_DUP2, 1, 2),
            ],
            setsid=True,
            # Python ignores SIGPIPE and SIGXFSZ; like subprocess, give the child the default actions back.
            setsigdef=(signal.SIGPIPE, signal.SIGXFSZ),
            setsigmask=(),
        )
        start_time = process_start_time(pid)
        if start_time is None:  # pragma: no cover - the child exists until we reap it
            raise OSError(f"{component.kind} {component.name} (pid {pid}) vanished at once")
        proc = _Proc(component.kind, component.name, pid, start_time, str(log_path), component.port)
        self._children.add(proc.key)
        where = f" on port {component.port}" if component.port is not None else ""
        user = f" as {self.run_as}" if self.run_as is not None else ""
        log(f"started {proc.label} (pid {pid}){where}{user}: {' '.join(argv)}; log {log_path}")
        return proc

    async def wait_ready(self, deployment: Deployment, timeout: float, log: LogFn) -> None:
        procs = _procs(deployment)
        started = time.monotonic()
        deadline = started + timeout
        pending = {p.name: p for p in procs if p.kind == "service"}
        if not pending:
            log("no scoring services to wait for")
        # trust_env=False: a proxy from HTTP_PROXY must not stand between us and a loopback port.
        async with httpx.AsyncClient(timeout=_READY_REQUEST_TIMEOUT_SECONDS, trust_env=False) as client:
            while True:
                self._check_no_early_exit(procs, log)
                for name, proc in list(pending.items()):
                    if await self._ready(client, proc):
                        del pending[name]
                        log(f"{proc.label} is ready on port {proc.port} after {time.monotonic() - started:.2f}s")
                if not pending:
                    self._check_no_early_exit(procs, log)
                    flows = [p.name for p in procs if p.kind == "flow"]
                    log(f"ready: {len(procs) - len(flows)} service(s) answer, flow(s) running: {', '.join(flows)}")
                    return
                if time.monotonic() >= deadline:
                    waiting = sorted(pending.values(), key=lambda p: p.name)
                    parts = [
                        _with_tail(f"{p.label} did not answer GET {READY_PATH} with 200 on port {p.port}", p)
                        for p in waiting
                    ]
                    raise ReadinessTimeout(f"not ready after {timeout:g}s: " + "\n".join(parts))
                await asyncio.sleep(_READY_POLL_SECONDS)

    def _check_no_early_exit(self, procs: Iterable[_Proc], log: LogFn) -> None:
        """DeployError for any service that exited, or flow that exited with a failure.

        A flow that exited with 0 has done its work (a fast batch flow may finish before the services are all
        confirmed ready): that is for the wait phase to judge, not an install failure.
        """
        for proc in procs:
            running, code = self._exit_code(proc)
            if running or (proc.kind == "flow" and code == 0):
                continue
            raise DeployError(_with_tail(f"{proc.label} {_describe_exit(code)} during install", proc))

    async def _ready(self, client: httpx.AsyncClient, proc: _Proc) -> bool:
        try:
            response = await client.get(f"http://{self._host}:{proc.port}{READY_PATH}")
        except httpx.HTTPError:
            return False
        return response.status_code == 200

    async def status(self, deployment: Deployment) -> RunStatus:
        procs = _procs(deployment)
        flows = [p for p in procs if p.kind == "flow"]
        finished = True
        for proc in flows:
            running, code = self._exit_code(proc)
            if running:
                finished = False
            elif code != 0:
                return RunStatus("failed", _with_tail(f"{proc.label} {_describe_exit(code)}", proc))
        if finished:
            return RunStatus("succeeded", f"all {len(flows)} flow(s) exited with code 0")
        for proc in procs:
            if proc.kind == "service":
                running, code = self._exit_code(proc)
                if not running:
                    message = f"{proc.label} {_describe_exit(code)} while the flows were running"
                    return RunStatus("failed", _with_tail(message, proc))
        return RunStatus("running")

    async def teardown(self, deployment: Deployment, grace: float, log: LogFn) -> None:
        """Stop every process of `deployment`: SIGTERM, then SIGKILL for one still running `grace` s later.

        The flows stop first, all at once; then the services, all at once: a stopping flow finishes its batches
        in flight, and those still need the services to answer. Each process gets its own full grace, counted
        from its own SIGTERM (so a teardown takes at most two graces, plus the SIGKILL waits). One log line per
        process says what happened to it.
        """
        procs = _procs(deployment)
        if deployment.ref.get("bootId") not in (None, "", _boot_id()):
            log("the machine rebooted since this deployment: none of its processes can still run")
            procs = []
        if not any(self._group_alive(p) for p in procs):
            log("no process of this deployment is running")
            for proc in procs:
                self._log_gone(proc, log)
        else:
            stuck: list[_Proc] = []
            for kind in ("flow", "service"):
                group = [p for p in procs if p.kind == kind]
                stopped = await asyncio.gather(*(self._stop(p, grace, log) for p in group))
                stuck += [p for p, ok in zip(group, stopped, strict=True) if not ok]
            if stuck:
                names = ", ".join(f"{p.label} (pid {p.pid})" for p in stuck)
                raise DeployError(f"could not stop {names}: still running {_KILL_WAIT_SECONDS:g}s after SIGKILL")
        with contextlib.suppress(FileNotFoundError):
            (self.run_dir(deployment.job_id) / "deployment.json").unlink()

    def _log_gone(self, proc: _Proc, log: LogFn) -> None:
        """For a process found not running at teardown: how it had ended, when that is known."""
        running, code = self._exit_code(proc)
        if not running and proc.key not in self._reported:
            self._reported.add(proc.key)
            log(f"{proc.label} had already {_describe_end(code)}")

    async def _stop(self, proc: _Proc, grace: float, log: LogFn) -> bool:
        """SIGTERM to the process group of `proc`, SIGKILL after `grace` s; False if it outlived SIGKILL."""
        if not self._signal_group(proc, signal.SIGTERM):
            self._log_gone(proc, log)
            return True
        started = time.monotonic()
        log(f"sent SIGTERM to {proc.label} (process group {proc.pid}); grace {grace:g}s")
        while self._group_alive(proc) and time.monotonic() - started < grace:
            await asyncio.sleep(_STOP_POLL_SECONDS)
        self._reported.add(proc.key)
        if not self._signal_group(proc, signal.SIGKILL):  # gone by now
            _, code = self._exit_code(proc)
            log(f"{proc.label} stopped by SIGTERM in {time.monotonic() - started:.2f}s{_after_sigterm(code)}")
            return True
        log(f"{proc.label} did not stop within {grace:g}s: killed (SIGKILL)")
        killed = time.monotonic()
        while self._group_alive(proc):
            if time.monotonic() - killed >= _KILL_WAIT_SECONDS:
                log(f"{proc.label} still runs {_KILL_WAIT_SECONDS:g}s after SIGKILL")
                return False
            await asyncio.sleep(_STOP_POLL_SECONDS)
        return True

    def exited(self, deployment: Deployment) -> list[Exited]:
        """The processes that ended while they should run: every service, and every flow but one that exited 0."""
        found: list[Exited] = []
        for proc in _procs(deployment):
            running, code = self._exit_code(proc)
            if running or (proc.kind == "flow" and code == 0):
                continue
            headline = f"{proc.label} {_describe_exit(code)}"
            found.append(Exited(proc.kind, proc.name, code, headline, _with_tail(headline, proc)))
        return found

    async def restart(self, deployment: Deployment, kind: str, name: str, log: LogFn) -> Deployment:
        """Start `kind name` of `deployment` again, as `deploy` started it: a service on the same port (the flows
        keep calling that URL and retry meanwhile), a flow with the services' URLs (it resumes from its
        checkpoint). What is left of the dead process's group is SIGKILLed first. The new reference is also
        written to `<run dir>/deployment.json`, like every start."""
        procs = _procs(deployment)
        old = next((p for p in procs if p.kind == kind and p.name == name), None)
        if old is None:
            raise DeployError(f"job {deployment.job_id}: no {kind} {name} in its deployment")
        if self._group_alive(old):
            self._signal_group(old, signal.SIGKILL)  # e.g. workers of a service whose leader died: they hold its port
            killed = time.monotonic()
            while self._group_alive(old):
                if time.monotonic() - killed >= _KILL_WAIT_SECONDS:
                    raise DeployError(
                        f"{old.label} (process group {old.pid}) still runs {_KILL_WAIT_SECONDS:g}s after SIGKILL"
                    )
                await asyncio.sleep(_STOP_POLL_SECONDS)
        self._reported.add(old.key)
        run = Path(str(deployment.ref.get("runDir") or self.run_dir(deployment.job_id)))
        component = Component(old.kind, old.name, deployment.job_id, run / "values.yaml", run, old.port)
        if old.kind == "service":
            env = {"MODELOPS_SCORING_PORT": str(old.port), "MODELOPS_SCORING_HOST": self._host}
        else:
            urls = {p.name: f"http://{self._host}:{p.port}" for p in procs if p.kind == "service"}
            env = {"MODELOPS_SERVICE_URLS": json.dumps(urls)}
        try:
            new = self._spawn(component, env, log)
        except (OSError, ValueError) as exc:
            raise DeployError(f"could not restart {old.label}: {exc}") from exc
        ref = {**deployment.ref, "processes": [(new if p is old else p).to_json() for p in procs]}
        self._record(deployment.job_id, ref)
        return Deployment(job_id=deployment.job_id, ref=ref)

    def alive(self, deployment: Deployment) -> bool:
        """True when every recorded process still runs and is the one we started (pid *and* start time)."""
        try:
            procs = _procs(deployment)
        except DeployError:
            return False
        if not procs or deployment.ref.get("bootId") not in (None, "", _boot_id()):
            return False
        return all(self._exit_code(proc)[0] for proc in procs)


def _implements_deployer(deployer: LocalProcessDeployer) -> Deployer:
    return deployer  # mypy checks here that LocalProcessDeployer implements the Deployer protocol


def _implements_restarter(deployer: LocalProcessDeployer) -> Restarter:
    return deployer  # and the restarts of supervision (`scheduler.supervision`)
