"""`modelops run`: deploy, start, follow to a terminal state; against a given server, with its own embedded
server, and interrupted with Ctrl-C (a real `modelops` process sent SIGINT/SIGTERM)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cli_kit import Server, fake_backend_factory, running_server, wait_job, write_bundle
from lifecycle_kit import FakeCommands
from typer.testing import CliRunner

from scheduler.cli import app
from scheduler.client import Job, SchedulerClient
from scheduler.embedded import EmbeddedServer, HomeLock
from scheduler.settings import SchedulerSettings
from scheduler.states import JobState

ROOT = Path(__file__).resolve().parents[2]
# The CLI as its own process, with Python's Ctrl-C handling even if this test process was started with SIGINT
# ignored (as background jobs of a non-interactive shell are).
CLI = [
    sys.executable,
    "-c",
    "import signal; signal.signal(signal.SIGINT, signal.default_int_handler); from scheduler.cli import app; app()",
]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with running_server(tmp_path_factory.mktemp("home")) as running:
        yield running


def embedded_env(home: Path) -> dict[str, str | None]:
    """Environment of `modelops run` without a server: its embedded one lives in `home`, with short timeouts."""
    return {
        "MODELOPS_SERVER": None,
        "MODELOPS_TOKEN": None,
        "MODELOPS_HOME": str(home),
        "MODELOPS_SCHEDULER_HOME": None,
        "MODELOPS_SCHEDULER_DATABASE_URL": None,
        "MODELOPS_SCHEDULER_POLL_INTERVAL_SECONDS": "0.05",
        "MODELOPS_SCHEDULER_READINESS_TIMEOUT_SECONDS": "20",
        "MODELOPS_SCHEDULER_UNINSTALL_GRACE_SECONDS": "5",
    }


@pytest.fixture
def fake_embedded(monkeypatch: pytest.MonkeyPatch) -> FakeCommands:
    """The embedded server of `modelops run` deploys the test programs; set `.flow`/`.service` to steer them."""
    commands = FakeCommands()
    monkeypatch.setattr("scheduler.cli.EMBEDDED_BACKEND_FACTORY", fake_backend_factory(commands))
    return commands


def jobs_of(client: SchedulerClient, pipeline: str) -> list[Job]:
    return client.list_jobs(pipeline=pipeline).items


def no_processes_left(home: Path) -> bool:
    """No process runs one of the test programs with a values file under `home`."""
    mine = str(home)
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if "fake_flow.py" in cmdline and mine in cmdline:
                return False
    return True


# ---------------------------------------------------------------------------------------------- with --server


def test_run_follows_a_job_to_success_and_exits_0(server: Server, tmp_path: Path) -> None:
    server.commands.flow = ["--run-for", "0.5", "--complete", "succeeded"]
    bundle = write_bundle(tmp_path / "b", name="run-ok")
    result = CliRunner().invoke(app, ["run", str(bundle), "--server", server.url, "--param", "threshold=0.7"])
    assert result.exit_code == 0, result.output
    assert "pipeline run-ok version 1 (new version" in result.stderr
    assert result.stdout.startswith("00:00 ")  # one line per state or task change (not a terminal: no live view)
    assert result.stdout.splitlines()[-1].startswith("job ") and " SUCCEEDED in " in result.stdout
    with server.client() as client:
        (job,) = jobs_of(client, "run-ok")
    assert job.state is JobState.SUCCEEDED and job.parameters == {"threshold": "0.7"}


def test_a_failed_job_exits_1_with_its_reason_and_the_log_tail(server: Server, tmp_path: Path) -> None:
    server.commands.flow = ["--lines", "3", "--run-for", "0.2", "--exit-code", "3"]
    bundle = write_bundle(tmp_path / "b", name="run-fails")
    result = CliRunner().invoke(app, ["run", str(bundle), "--server", server.url])
    assert result.exit_code == 1, result.output
    assert "FAILED in " in result.stderr and ": FlowFailed" in result.stderr
    assert "f1 line 3" in result.stderr  # the flow's last log lines are in the message
    assert result.stderr.splitlines()[-1].startswith("error: the job failed (FlowFailed); its logs: modelops job logs ")


def test_run_checks_its_arguments_before_doing_anything(server: Server, tmp_path: Path) -> None:
    bad_param = CliRunner().invoke(app, ["run", str(tmp_path), "--server", server.url, "-p", "oops"])
    assert bad_param.exit_code == 2
    missing = CliRunner().invoke(app, ["run", str(tmp_path / "nope"), "--server", server.url])
    assert missing.exit_code == 1
    assert missing.stderr == f"error: {tmp_path / 'nope'}: no such file or directory\n"


def _started(server: Server, pipeline: str, state: JobState = JobState.RUNNING) -> Job:
    deadline = time.monotonic() + 30
    with server.client() as client:
        while time.monotonic() < deadline:
            jobs = jobs_of(client, pipeline)
            if jobs and jobs[0].state is state:
                return jobs[0]
            time.sleep(0.05)
    raise AssertionError(f"no {state} job of {pipeline}")


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_ctrl_c_cancels_the_job_and_waits_for_cancelled(server: Server, tmp_path: Path, signum: int) -> None:
    server.commands.flow = ["--lines", "1"]  # runs until stopped
    pipeline = f"run-interrupted-{signum}"
    bundle = write_bundle(tmp_path / "b", name=pipeline)
    process = subprocess.Popen(
        [*CLI, "run", str(bundle), "--server", server.url], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        job = _started(server, pipeline)
        process.send_signal(signum)
        stdout, stderr = process.communicate(timeout=60)
    finally:
        process.kill()
    text = stderr.decode()
    assert process.returncode == 130, text
    assert "Ctrl-C: cancelling the job" in text
    assert f"job {job.id} CANCELLED in " in text
    with server.client() as client:
        assert client.get_job(job.id).state is JobState.CANCELLED
    assert " CANCELLING task " in stdout.decode()


def test_a_second_ctrl_c_exits_at_once_without_waiting(server: Server, tmp_path: Path) -> None:
    # The flow ignores SIGTERM, so uninstall takes its 5 s grace period: long enough to be interrupted again.
    server.commands.flow = ["--ignore-sigterm"]
    bundle = write_bundle(tmp_path / "b", name="run-abandoned")
    process = subprocess.Popen(
        [*CLI, "run", str(bundle), "--server", server.url], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        job = _started(server, "run-abandoned")
        process.send_signal(signal.SIGINT)
        _started(server, "run-abandoned", JobState.CANCELLING)
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=3)  # well before the grace period ends
    finally:
        process.kill()
    assert process.returncode == 130
    assert f"exiting without waiting: job {job.id} is left cancelling" in stderr.decode()
    with server.client() as client:
        assert wait_job(client, job.id, JobState.CANCELLED).state is JobState.CANCELLED  # the server finishes it


# ---------------------------------------------------------------------------------------------- embedded


def test_without_a_server_run_starts_an_embedded_one_and_leaves_nothing_behind(
    tmp_path: Path, fake_embedded: FakeCommands
) -> None:
    fake_embedded.flow = ["--run-for", "0.3", "--complete", "succeeded"]
    home = tmp_path / "home"
    bundle = write_bundle(tmp_path / "b")
    result = CliRunner(env=embedded_env(home)).invoke(app, ["run", str(bundle)])
    assert result.exit_code == 0, result.output
    assert result.stderr.startswith("embedded scheduler at http://127.0.0.1:")
    assert f"(home {home}, log {home / 'logs' / 'embedded-server.log'}; database migrated from empty)" in result.stderr
    server_url = result.stderr.split()[3]
    assert result.stderr.splitlines()[1] == f"web UI: {server_url}/ui"
    assert " SUCCEEDED in " in result.stdout
    assert HomeLock.holder(home) is None  # the server stopped and let go of its home
    assert no_processes_left(home)
    assert "scheduler ready: local backend" in (home / "logs" / "embedded-server.log").read_text()
    again = CliRunner(env=embedded_env(home)).invoke(app, ["run", str(bundle)])  # the database is kept
    assert again.exit_code == 0 and "database migrated" not in again.stderr
    assert "pipeline scoring version 1 (unchanged" in again.stderr


def test_an_embedded_run_whose_install_fails_exits_1_and_points_at_the_log_files(
    tmp_path: Path, fake_embedded: FakeCommands
) -> None:
    fake_embedded.service = ["--say", "loading model m1: file not found", "--exit-after", "0", "--exit-code", "3"]
    home = tmp_path / "home"
    result = CliRunner(env=embedded_env(home)).invoke(app, ["run", str(write_bundle(tmp_path / "b"))])
    assert result.exit_code == 1, result.output
    assert ": InstallFailed" in result.stderr
    assert "loading model m1: file not found" in result.stderr
    last = result.stderr.splitlines()[-1]
    assert last.startswith(f"error: the job failed (InstallFailed); its logs: {home / 'jobs'}/")
    assert last.endswith("(install.log, wait.log, uninstall.log, services/, flows/)")


def test_an_embedded_run_cancels_what_an_earlier_killed_run_left_running(
    tmp_path: Path, fake_embedded: FakeCommands, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "home"
    for name, value in embedded_env(home).items():
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    # An earlier `modelops run` killed mid-job: its server stopped without cancelling, the flow still runs.
    # with the bundle's folder as a data root, as `run` starts it
    earlier = EmbeddedServer(
        SchedulerSettings(data_roots=[tmp_path / "old"]), backend_factory=fake_backend_factory(FakeCommands())
    )
    earlier.start()
    with SchedulerClient(earlier.url) as client:
        client.deploy(write_bundle(tmp_path / "old", name="left-over"))
        left = client.create_job("left-over", environment={"dataRoot": str(tmp_path / "old")})  # as `run` does
        wait_job(client, left.id, JobState.RUNNING)
    earlier.stop(cancel_active=False)
    assert not no_processes_left(home)

    fake_embedded.flow = ["--run-for", "0.1", "--complete", "succeeded"]
    result = CliRunner().invoke(app, ["run", str(write_bundle(tmp_path / "b"))])
    assert result.exit_code == 0, result.output
    assert f"cancelling 1 job(s) an earlier `modelops run` left active: {left.id}" in result.stderr
    assert no_processes_left(home)
    with EmbeddedServer() as again, SchedulerClient(again.url) as client:
        assert client.get_job(left.id).state is JobState.CANCELLED


def test_an_embedded_run_refuses_a_home_another_scheduler_is_using(tmp_path: Path) -> None:
    home = tmp_path / "home"
    lock = HomeLock(home)
    lock.acquire("http://127.0.0.1:8787")
    try:
        result = CliRunner(env=embedded_env(home)).invoke(app, ["run", str(write_bundle(tmp_path / "b"))])
    finally:
        lock.release()
    assert result.exit_code == 1
    assert result.stderr == (
        f"error: cannot start the embedded scheduler: another modelops scheduler is using {home} "
        f"(pid {os.getpid()} http://127.0.0.1:8787): use it with --server, or set MODELOPS_HOME to another folder\n"
    )
