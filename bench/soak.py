"""Soak: many jobs through admission, random cancels and scheduler SIGKILLs (issue 11's figures).

Runs the real scheduling server (`run_server`: SQLite, the local backend, admission with `--limit` slots) with
the lifecycle tests' stand-in components (tests/scheduler/procs: `fake_service.py` answers readiness,
`fake_flow.py` reports completion, runs `--flow-seconds` and exits), so the figures are the scheduler's and not
a model's. It submits `--jobs` jobs from a few client threads (each start with an Idempotency-Key, retried
while the server is down, so a start whose answer was lost is not a second job), cancels a random
`--cancel-fraction` of them at a random moment, and SIGKILLs the server `--kills` times, spread over the run,
starting it again each time (a restart recovers the jobs: `LocalBackend.recover`). Meanwhile it samples, every
0.25 s, the jobs holding an admission slot (from the API) and the stand-in processes alive (from /proc).

Then, once every job has ended (or `--drain-seconds` passed), it stops the server and prints:

- jobs lost: submitted (the server said 201 or 200) but unknown to the server;
- run twice: jobs whose flow was started more than once (the flow's log, opened in append mode, has one
  `fake flow f1 pid ...` line per start), apart from restarts the job's events record (`FlowRestarted`);
- stuck: jobs not in a terminal state at the end;
- orphan processes: stand-in processes still alive once every job ended;
- the most jobs holding a slot and the most stand-in processes seen at once (the limit: `--limit` jobs, two
  processes each), the end states and reasons, and the server's peak resident memory (VmHWM of each server
  process; the largest).

Never fails on a result: it reports.

Usage:
    .venv/bin/python bench/soak.py [--jobs 500] [--limit 4] [--kills 5] [--cancel-fraction 0.1] [--keep DIR]
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PROCS = ROOT / "tests" / "scheduler" / "procs"
# bench/scheduler.py would shadow the package: import from the checkout and the lifecycle tests' kit instead.
sys.path[:] = [str(ROOT), str(ROOT / "tests" / "scheduler")] + [
    p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent
]

from lifecycle_kit import PIPELINE_YAML, write_input  # noqa: E402

from scheduler.client import ApiError, ClientError, SchedulerClient  # noqa: E402
from scheduler.states import TERMINAL, JobState  # noqa: E402

SLOT_STATES = {JobState.INSTALLING, JobState.RUNNING, JobState.CANCELLING}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def stand_ins(home: Path) -> list[int]:
    """Pids of this soak's stand-in components alive (zombies excluded; other runs' are told apart by the
    home in their environment)."""
    found = []
    marker = str(home).encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            if b"fake_flow.py" not in cmdline and b"fake_service.py" not in cmdline:
                continue
            state = (entry / "stat").read_text().rpartition(")")[2].split()[0]
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        if state not in ("Z", "X") and (marker in environ or marker in cmdline):
            found.append(int(entry.name))
    return found


def peak_rss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


class Server:
    """The scheduling server as a subprocess: start, SIGKILL, stop; remembers the peak RSS of each run."""

    def __init__(self, home: Path, port: int, limit: int, flow_seconds: float, log: Path) -> None:
        self.env = {
            **os.environ,
            "MODELOPS_HOME": str(home),
            "MODELOPS_SCHEDULER_PORT": str(port),
            "MODELOPS_SCHEDULER_MAX_RUNNING_JOBS": str(limit),
            "MODELOPS_SCHEDULER_POLL_INTERVAL_SECONDS": "0.2",
            "MODELOPS_SCHEDULER_UNINSTALL_GRACE_SECONDS": "5",
            "MODELOPS_SCHEDULER_DATA_ROOT": str(home),
            "MODELOPS_TEST_FLOW_ARGS": json.dumps(
                {"f1": ["--complete", "succeeded", "--report-retry-seconds", "120", "--run-for", str(flow_seconds)]}
            ),
        }
        for name in ("MODELOPS_SCHEDULER_TOKENS", "MODELOPS_SCHEDULER_DATABASE_URL", "MODELOPS_SCHEDULER_WORKERS"):
            self.env.pop(name, None)
        self.log = log
        self.url = f"http://127.0.0.1:{port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.peaks: list[int] = []
        self.starts = 0

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, str(PROCS / "serve_workers.py")], env=self.env, stdout=out, stderr=out
            )
        self.starts += 1
        with SchedulerClient(self.url) as client:
            deadline = time.monotonic() + 120
            while not client.ready():
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"the server did not start; see {self.log}")
                time.sleep(0.1)

    def sample(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            peak = peak_rss_kib(self.proc.pid)
            if self.peaks and self.starts == len(self.peaks):
                self.peaks[-1] = max(self.peaks[-1], peak)
            else:
                self.peaks.append(peak)

    def kill(self) -> None:
        assert self.proc is not None
        self.sample()
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.sample()
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(120)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def all_jobs(client: SchedulerClient) -> dict[uuid.UUID, Any]:
    """Every job the server knows, by id (paged)."""
    found: dict[uuid.UUID, Any] = {}
    cursor = None
    while True:
        page = client.list_jobs(limit=500, cursor=cursor)
        found.update((job.id, job) for job in page.items)
        if page.next_cursor is None:
            return found
        cursor = page.next_cursor


def retrying(server: Server, what: Any, stop: threading.Event) -> Any:
    """Call `what(client)` until the server answers (it may be down between a SIGKILL and its restart)."""
    while not stop.is_set():
        try:
            with SchedulerClient(server.url) as client:
                return what(client)
        except ApiError:
            raise
        except ClientError:
            time.sleep(0.2)
    return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=500)
    parser.add_argument("--limit", type=int, default=4)
    parser.add_argument("--kills", type=int, default=5)
    parser.add_argument("--cancel-fraction", type=float, default=0.1)
    parser.add_argument("--flow-seconds", type=float, default=0.3)
    parser.add_argument("--drain-seconds", type=float, default=900)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--keep", type=Path, default=None, help="work in this folder and keep it")
    args = parser.parse_args()
    rng = random.Random(args.seed)

    work = args.keep or Path(tempfile.mkdtemp(prefix="modelops-soak-"))
    home = work / "home"
    home.mkdir(parents=True, exist_ok=True)
    write_input(home)
    server = Server(home, free_port(), args.limit, args.flow_seconds, work / "server.log")
    started_at = time.monotonic()
    server.start()
    with SchedulerClient(server.url) as client:
        client.deploy_bytes(PIPELINE_YAML.replace("WAIT", "1h").encode(), "application/yaml")

    stop = threading.Event()
    submitted: dict[uuid.UUID, str] = {}
    lock = threading.Lock()
    keys = [f"soak-{args.seed}-{n}" for n in range(args.jobs)]
    to_cancel = set(rng.sample(range(args.jobs), int(args.jobs * args.cancel_fraction)))
    cancels: list[tuple[float, uuid.UUID]] = []
    slots_max = 0
    procs_max = 0
    over_limit_samples = 0

    def submit(indexes: list[int]) -> None:
        for n in indexes:
            job = retrying(server, lambda c, n=n: c.create_job("scoring", idempotency_key=keys[n]), stop)
            if job is None:
                return
            with lock:
                submitted[job.id] = keys[n]
                if n in to_cancel:
                    cancels.append((time.monotonic() + rng.uniform(0, 20), job.id))

    def canceller() -> None:
        while not stop.is_set():
            now = time.monotonic()
            with lock:
                due = [job_id for at, job_id in cancels if at <= now]
                cancels[:] = [(at, job_id) for at, job_id in cancels if at > now]
            for job_id in due:
                with contextlib.suppress(ApiError):  # it finished first: 409
                    retrying(server, lambda c, j=job_id: c.cancel_job(j), stop)
            time.sleep(0.1)

    def watcher() -> None:
        nonlocal slots_max, procs_max, over_limit_samples
        while not stop.is_set():
            server.sample()
            procs = len(stand_ins(home))
            procs_max = max(procs_max, procs)
            try:
                with SchedulerClient(server.url) as client:  # one page: one snapshot (the newest 500 jobs)
                    holding = sum(1 for job in client.list_jobs(limit=500).items if job.state in SLOT_STATES)
            except ClientError:
                holding = 0
            slots_max = max(slots_max, holding)
            if holding > args.limit:
                over_limit_samples += 1
            time.sleep(0.25)

    threads = [threading.Thread(target=submit, args=(list(range(i, args.jobs, 4)),), daemon=True) for i in range(4)]
    helpers = [threading.Thread(target=canceller, daemon=True), threading.Thread(target=watcher, daemon=True)]
    for thread in threads + helpers:
        thread.start()

    # SIGKILLs spread over the run: one every so many ended jobs, up to `--kills`.
    kills = 0
    while kills < args.kills:
        with lock:
            known = list(submitted)
        ended = 0
        try:
            with SchedulerClient(server.url) as client:
                listed = all_jobs(client)
            ended = sum(1 for job_id in known if job_id in listed and listed[job_id].state in TERMINAL)
        except ClientError:
            pass
        if ended >= (kills + 1) * args.jobs // (args.kills + 1):
            server.kill()
            kills += 1
            print(f"SIGKILL {kills} of the server after {ended} jobs ended", flush=True)
            time.sleep(rng.uniform(0.5, 2.0))
            server.start()
        time.sleep(1.0)

    for thread in threads:
        thread.join()
    deadline = time.monotonic() + args.drain_seconds
    while time.monotonic() < deadline:
        with SchedulerClient(server.url) as client:
            listed = all_jobs(client)
        if all(job_id in listed and listed[job_id].state in TERMINAL for job_id in submitted):
            break
        time.sleep(1.0)
    states: dict[uuid.UUID, Any] = {}
    lost = []
    with SchedulerClient(server.url) as client:
        for job_id in submitted:
            try:
                states[job_id] = client.get_job(job_id)  # with its events
            except ApiError:
                lost.append(job_id)
    elapsed = time.monotonic() - started_at
    stop.set()
    for thread in helpers:
        thread.join()
    orphans = stand_ins(home)
    server.stop()
    stuck = [job_id for job_id, job in states.items() if job.state not in TERMINAL]
    twice = []
    restarted = 0
    for job_id, job in states.items():
        log = home / "jobs" / str(job_id) / "flows" / "f1.log"
        starts = log.read_text().count("fake flow f1 pid") if log.exists() else 0
        restarts = sum(1 for event in job.events if event.reason == "FlowRestarted")
        restarted += restarts
        if starts > 1 + restarts:
            twice.append(job_id)
    ends = collections.Counter(f"{job.state.value} {job.reason}" for job in states.values())

    print()
    print(
        f"jobs submitted {len(submitted)} of {args.jobs}, limit {args.limit}, {kills} SIGKILLs, "
        f"{len(to_cancel)} cancels asked; {elapsed:.0f} s; load average {os.getloadavg()[0]:.2f}"
    )
    print(f"jobs lost        {len(lost) + args.jobs - len(submitted)}")
    print(f"run twice        {len(twice)}" + (f" ({', '.join(map(str, twice[:5]))})" if twice else ""))
    print(f"stuck            {len(stuck)}" + (f" ({', '.join(map(str, stuck[:5]))})" if stuck else ""))
    print(f"orphan processes {len(orphans)}")
    print(
        f"most jobs holding a slot at once {slots_max} (samples over the limit: {over_limit_samples}); "
        f"most stand-in processes at once {procs_max}"
    )
    print(f"flow restarts recorded as events {restarted}")
    print(
        f"server peak RSS  {max(server.peaks or [0]) / 1024:.0f} MiB (per run: "
        f"{', '.join(f'{p / 1024:.0f}' for p in server.peaks)})"
    )
    for end, count in sorted(ends.items()):
        print(f"  {count:4d}  {end}")
    if args.keep is None:
        print(f"(work folder {work}; pass --keep DIR to keep one)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
