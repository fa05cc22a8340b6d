"""`LocalProcessDeployer` on real processes: start, readiness, status, teardown, and telling our pids apart."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from lifecycle_kit import PROCS, FakeCommands, any_running, pipeline_bundle, running, wait_until

import ir
from scheduler.deployers.base import DeployError, Deployment, ReadinessTimeout
from scheduler.deployers.local import CommandFactory, Component, LocalProcessDeployer

Make = Callable[[CommandFactory], LocalProcessDeployer]


def values() -> dict[str, Any]:
    return ir.to_document(ir.render(pipeline_bundle(), {}, ir.make_globals({"jobId": "x"})))


class Lines:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def __call__(self, message: str) -> None:
        self.lines.append(message)

    def text(self) -> str:
        return "\n".join(self.lines)


@pytest.fixture
async def make(tmp_path: Path) -> AsyncIterator[Make]:
    """Deployers under tmp_path; whatever they deployed is torn down at the end of the test."""
    made: list[LocalProcessDeployer] = []

    def build(commands: CommandFactory) -> LocalProcessDeployer:
        deployer = LocalProcessDeployer(tmp_path / "jobs", commands)
        made.append(deployer)
        return deployer

    yield build
    for deployer in made:
        for job_dir in (tmp_path / "jobs").glob("*"):
            recorded = deployer.recorded(job_dir.name)
            if recorded is not None:
                await deployer.teardown(recorded, 0, Lines())


async def flow_started(run: Path) -> None:
    """Until the fake flow has printed what it was given (readiness only waits for the services)."""
    log = run / "flows" / "f1.log"
    await wait_until(lambda: "scheduler variables seen" in log.read_text(), what="the flow to start")


def job() -> str:
    return str(uuid.uuid4())


async def test_each_service_and_flow_runs_as_its_own_process_with_its_own_log(make: Make, tmp_path: Path) -> None:
    deployer = make(FakeCommands())
    job_id, log = job(), Lines()
    deployment = await deployer.deploy(job_id, values(), log)
    await deployer.wait_ready(deployment, 10, log)

    processes = {p["name"]: p for p in deployment.ref["processes"]}
    assert {name: p["kind"] for name, p in processes.items()} == {"m1": "service", "f1": "flow"}
    assert processes["m1"]["port"] > 0
    assert processes["m1"]["pid"] != processes["f1"]["pid"]
    for p in processes.values():
        assert os.getpgid(p["pid"]) == p["pid"]  # each leads its own process group
    assert deployer.alive(deployment)
    assert (await deployer.status(deployment)).state == "running"

    run = tmp_path / "jobs" / job_id
    await flow_started(run)
    flow_log = (run / "flows" / "f1.log").read_text()
    assert f"http://127.0.0.1:{processes['m1']['port']}" in flow_log  # the flow was told where its service is
    assert "fake service m1" in (run / "services" / "m1.log").read_text()
    assert deployer.recorded(job_id) == deployment

    await deployer.teardown(deployment, 5, log)
    assert any_running(deployment.ref["processes"]) == []
    assert not deployer.alive(deployment)
    assert deployer.recorded(job_id) is None
    assert (run / "flows" / "f1.log").exists()  # logs stay


async def test_the_scheduler_s_own_variables_are_not_passed_to_components(
    make: Make, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MODELOPS_SCHEDULER_DATABASE_URL", "postgresql://u:p@db/x")
    deployer = make(FakeCommands())
    job_id, log = job(), Lines()
    deployment = await deployer.deploy(job_id, values(), log)
    await deployer.wait_ready(deployment, 10, log)
    await flow_started(tmp_path / "jobs" / job_id)
    await deployer.teardown(deployment, 5, log)
    assert "scheduler variables seen: []" in (tmp_path / "jobs" / job_id / "flows" / "f1.log").read_text()


async def test_a_service_that_never_becomes_ready_times_out_with_its_last_log_lines(make: Make) -> None:
    deployer = make(FakeCommands(service=["--never-ready", "--say", "loading model m1 from nowhere"]))
    log = Lines()
    deployment = await deployer.deploy(job(), values(), log)
    with pytest.raises(ReadinessTimeout) as caught:
        await deployer.wait_ready(deployment, 0.5, log)
    assert "service m1 did not answer GET /v2/health/ready" in str(caught.value)
    assert "loading model m1 from nowhere" in str(caught.value)
    await deployer.teardown(deployment, 5, log)


async def test_a_service_exiting_during_install_is_an_install_failure_naming_it(make: Make) -> None:
    deployer = make(FakeCommands(service=["--exit-after", "0", "--exit-code", "3", "--say", "no such model"]))
    log = Lines()
    deployment = await deployer.deploy(job(), values(), log)
    with pytest.raises(DeployError) as caught:
        await deployer.wait_ready(deployment, 10, log)
    assert not isinstance(caught.value, ReadinessTimeout)
    assert "service m1 exited with code 3 during install" in str(caught.value)
    assert "no such model" in str(caught.value)
    await deployer.teardown(deployment, 5, log)


async def test_a_flow_that_finishes_with_0_during_install_is_not_an_install_failure(make: Make) -> None:
    deployer = make(FakeCommands(service=["--ready-after", "0.3"], flow=["--run-for", "0"]))
    log = Lines()
    deployment = await deployer.deploy(job(), values(), log)
    await deployer.wait_ready(deployment, 10, log)
    status = await deployer.status(deployment)
    assert status.state == "succeeded"
    await deployer.teardown(deployment, 5, log)


async def test_status_reports_a_failed_flow_with_its_exit_code_and_log_tail(make: Make, tmp_path: Path) -> None:
    stop = tmp_path / "stop"
    deployer = make(FakeCommands(flow=["--lines", "30", "--until-file", str(stop), "--exit-code", "4"]))
    log = Lines()
    deployment = await deployer.deploy(job(), values(), log)
    await deployer.wait_ready(deployment, 10, log)
    stop.touch()
    while (status := await deployer.status(deployment)).state == "running":
        await asyncio.sleep(0.02)
    assert status.state == "failed"
    assert status.message is not None
    assert status.message.startswith("flow f1 exited with code 4\nlast 20 log line(s) of flow f1:\n")
    assert status.message.splitlines()[-1] == "fake flow f1 exits with code 4"
    assert "f1 line 30" in status.message
    assert "f1 line 11\n" not in status.message  # only the tail
    await deployer.teardown(deployment, 5, log)


async def test_a_process_ignoring_sigterm_is_killed_after_the_grace(make: Make, tmp_path: Path) -> None:
    deployer = make(FakeCommands(service=["--ignore-sigterm"], flow=["--ignore-sigterm"]))
    job_id, log = job(), Lines()
    deployment = await deployer.deploy(job_id, values(), log)
    await deployer.wait_ready(deployment, 10, log)
    await flow_started(tmp_path / "jobs" / job_id)  # its SIGTERM handler is in place
    await deployer.teardown(deployment, 0.3, log)
    assert "service m1 did not stop within 0.3s: killed (SIGKILL)" in log.lines
    assert "flow f1 did not stop within 0.3s: killed (SIGKILL)" in log.lines
    assert any_running(deployment.ref["processes"]) == []
    assert "SIGTERM ignored" in (tmp_path / "jobs" / job_id / "services" / "m1.log").read_text()


def line_about(log: Lines, start: str) -> str:
    """The one teardown line that starts with `start`."""
    found = [line for line in log.lines if line.startswith(start)]
    assert len(found) == 1, log.text()
    return found[0]


async def test_each_process_gets_its_own_grace_so_a_flow_that_uses_it_up_does_not_get_a_service_killed(
    make: Make, tmp_path: Path
) -> None:
    deployer = make(FakeCommands(flow=["--ignore-sigterm"]))
    job_id, log = job(), Lines()
    deployment = await deployer.deploy(job_id, values(), log)
    await deployer.wait_ready(deployment, 10, log)
    await flow_started(tmp_path / "jobs" / job_id)
    log.lines.clear()
    await deployer.teardown(deployment, 1, log)
    assert log.lines[0] == f"sent SIGTERM to flow f1 (process group {deployment.ref['processes'][1]['pid']}); grace 1s"
    assert log.lines[1] == "flow f1 did not stop within 1s: killed (SIGKILL)"
    # Only then the service: SIGTERM, and a grace of its own, which it needs no more than a moment of.
    assert log.lines[2].startswith("sent SIGTERM to service m1 ")
    assert line_about(log, "service m1 stopped by SIGTERM in ").endswith("s (exit code 0)")
    assert not [line for line in log.lines if "service m1" in line and "SIGKILL" in line]
    assert "SIGTERM: stopping" in (tmp_path / "jobs" / job_id / "services" / "m1.log").read_text()


async def test_teardown_says_a_flow_that_had_exited_by_itself_exited_rather_than_that_it_was_stopped_or_killed(
    make: Make,
) -> None:
    deployer = make(FakeCommands(flow=["--run-for", "0"]))
    log = Lines()
    deployment = await deployer.deploy(job(), values(), log)
    await deployer.wait_ready(deployment, 10, log)
    while (await deployer.status(deployment)).state == "running":
        await asyncio.sleep(0.02)
    log.lines.clear()
    await deployer.teardown(deployment, 5, log)
    assert line_about(log, "flow f1 ") == "flow f1 had already exited (code 0)"
    assert line_about(log, "service m1 stopped by SIGTERM in ").endswith("s (exit code 0)")
    assert "killed" not in log.text()


async def test_teardown_says_how_a_process_that_failed_by_itself_had_ended(make: Make) -> None:
    deployer = make(FakeCommands(service=["--exit-after", "0", "--exit-code", "3"], flow=["--run-for", "0"]))
    log = Lines()
    deployment = await deployer.deploy(job(), values(), log)
    with pytest.raises(DeployError):
        await deployer.wait_ready(deployment, 10, log)
    await wait_until(lambda: any_running(deployment.ref["processes"]) == [], what="both processes to exit")
    log.lines.clear()
    await deployer.teardown(deployment, 5, log)
    assert log.lines == [
        "no process of this deployment is running",
        "service m1 had already exited (code 3)",
        "flow f1 had already exited (code 0)",
    ]


async def test_a_process_ended_by_sigterm_without_a_handler_is_reported_as_stopped_by_the_signal(
    make: Make, tmp_path: Path
) -> None:
    def sleeper(component: Component) -> list[str]:
        return ["sleep", "60"] if component.kind == "flow" else FakeCommands()(component)

    deployer = make(sleeper)
    log = Lines()
    deployment = await deployer.deploy(job(), values(), log)
    await deployer.wait_ready(deployment, 10, log)
    await deployer.teardown(deployment, 5, log)
    assert line_about(log, "flow f1 stopped by SIGTERM in ").endswith(
        "s (ended by the signal: it had no handler for it)"
    )


async def test_teardown_is_idempotent_and_tolerates_processes_that_are_already_gone(make: Make) -> None:
    deployer = make(FakeCommands(flow=["--run-for", "0", "--exit-code", "1"]))
    log = Lines()
    deployment = await deployer.deploy(job(), values(), log)
    await deployer.teardown(deployment, 5, log)
    second = Lines()
    await deployer.teardown(deployment, 5, second)
    assert second.lines == ["no process of this deployment is running"]
    await deployer.teardown(Deployment(job(), {}), 5, second)  # nothing deployed at all


async def test_a_reused_pid_is_not_mistaken_for_the_process_that_was_started(make: Make) -> None:
    deployer = make(FakeCommands())
    log = Lines()
    deployment = await deployer.deploy(job(), values(), log)
    await deployer.wait_ready(deployment, 10, log)
    # The same pids, but recorded with other start times: what a reference looks like once the pids were reused.
    forged = Deployment(
        deployment.job_id,
        {
            **deployment.ref,
            "processes": [{**p, "startTime": p["startTime"] + 1} for p in deployment.ref["processes"]],
        },
    )
    other = LocalProcessDeployer(deployer.runs_root, FakeCommands())  # a restarted scheduler: not the parent
    assert other.alive(deployment)
    assert not other.alive(forged)
    assert not deployer.alive(forged)
    await other.teardown(forged, 0, log)  # must not touch the processes that merely share the pids
    assert sorted(any_running(deployment.ref["processes"])) == ["f1", "m1"]
    await deployer.teardown(deployment, 5, log)


async def test_after_a_restart_a_vanished_flow_s_exit_code_is_reported_as_unknown(make: Make, tmp_path: Path) -> None:
    stop = tmp_path / "stop"
    deployer = make(FakeCommands(flow=["--until-file", str(stop)]))
    log = Lines()
    deployment = await deployer.deploy(job(), values(), log)
    await deployer.wait_ready(deployment, 10, log)
    restarted = LocalProcessDeployer(deployer.runs_root, FakeCommands())
    flow = next(p for p in deployment.ref["processes"] if p["kind"] == "flow")
    stop.touch()
    while running(flow["pid"], flow["startTime"]):
        await asyncio.sleep(0.02)
    status = await restarted.status(deployment)
    assert status.state == "failed"
    assert status.message is not None and "exit code unknown" in status.message
    teardown = Lines()
    await restarted.teardown(deployment, 5, teardown)
    assert "flow f1 had already exited (exit code unknown: it was started before the scheduler restarted)" in (
        teardown.lines
    )
    assert line_about(teardown, "service m1 stopped by SIGTERM in ").endswith("s")  # its exit code is unknowable
    await deployer.teardown(deployment, 5, log)


async def test_a_command_that_cannot_be_started_stops_what_was_already_started(make: Make, tmp_path: Path) -> None:
    commands = FakeCommands()

    def broken(component: Any) -> list[str]:
        if component.kind == "flow":
            return [str(PROCS / "no-such-program")]
        return commands(component)

    deployer = LocalProcessDeployer(tmp_path / "jobs", broken)
    log = Lines()
    job_id = job()
    with pytest.raises(DeployError, match="could not start flow f1"):
        await deployer.deploy(job_id, values(), log)
    started = [c for c in commands.seen if c.kind == "service"]
    assert len(started) == 1
    assert "sent SIGTERM to service m1" in log.text()
    assert deployer.recorded(job_id) is None
