"""The lifecycle engine end to end: `LocalBackend` + `LocalProcessDeployer` + the store, on real processes.

Each job deploys the fake scoring service `m1` and the fake flow `f1` (tests/scheduler/procs). Tests that take
the conftest's `store` fixture run on SQLite and PostgreSQL; the others use a SQLite store of their own.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from lifecycle_kit import (
    SECRET,
    CompletionReceiver,
    FakeCommands,
    add_pipeline,
    any_running,
    create_job,
    events,
    processes_of,
    read_values,
    settings_for,
    task_order,
    wait_for,
    wait_until,
)

from scheduler.backends.local import LocalBackend
from scheduler.db import create_engine, upgrade
from scheduler.deployers.base import DeployError, Deployment
from scheduler.deployers.local import LocalProcessDeployer
from scheduler.errors import Conflict, IllegalTransition
from scheduler.states import JobState, Task
from scheduler.store import Job, JobStore, PipelineVersion
from scheduler.tokens import job_token

FINAL = {JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED}


@pytest.fixture
def sqlite_store(tmp_path: Path) -> Iterator[JobStore]:
    url = f"sqlite:///{tmp_path / 'lifecycle.db'}"
    upgrade(url)
    engine = create_engine(url)
    yield JobStore(engine)
    engine.dispose()


class Harness:
    """A store, a pipeline version, and backends whose processes are all gone when the test ends."""

    def __init__(self, store: JobStore, home: Path) -> None:
        self.store = store
        self.home = home
        self.version: PipelineVersion = add_pipeline(store)
        self.backends: list[LocalBackend] = []
        self.deployers: list[LocalProcessDeployer] = []

    def backend(self, commands: FakeCommands | None = None, **settings: Any) -> LocalBackend:
        deployer = LocalProcessDeployer(self.home / "jobs", commands or FakeCommands())
        backend = LocalBackend(self.store, settings_for(self.home, **settings), SECRET, deployer)
        self.backends.append(backend)
        self.deployers.append(deployer)
        return backend

    def job(self, version: PipelineVersion | None = None, **kwargs: Any) -> Job:
        return create_job(self.store, version or self.version, **kwargs)

    async def cancel(self, backend: LocalBackend, job_id: uuid.UUID) -> None:
        """What the service layer does on a user's cancel."""
        await asyncio.to_thread(self.store.transition, job_id, JobState.CANCELLING, reason="CancelRequested")
        await backend.cancel(job_id)

    async def finished(self, backend: LocalBackend, job_id: uuid.UUID) -> Job:
        await wait_for(self.store, job_id, FINAL)
        await backend.join(job_id)
        return await asyncio.to_thread(self.store.get_job, job_id)

    async def cleanup(self) -> None:
        for backend in self.backends:
            await backend.close()
        for folder in (self.home / "jobs").glob("*"):
            for deployer in self.deployers:
                recorded = deployer.recorded(folder.name)
                if recorded is not None:
                    await deployer.teardown(recorded, 0, lambda _: None)


@pytest.fixture
async def harness(store: JobStore, tmp_path: Path) -> AsyncIterator[Harness]:
    """On SQLite and PostgreSQL (the conftest's `store`)."""
    kit = Harness(store, tmp_path / "home")
    yield kit
    await kit.cleanup()


@pytest.fixture
async def lite(sqlite_store: JobStore, tmp_path: Path) -> AsyncIterator[Harness]:
    """On SQLite only."""
    kit = Harness(sqlite_store, tmp_path / "home")
    yield kit
    await kit.cleanup()


def assert_gone(job: Job) -> None:
    assert any_running(processes_of(job)) == []


# ---------------------------------------------------------------------------------------------- success


async def test_a_job_installs_waits_uninstalls_and_succeeds_when_its_flow_reports_completion(
    harness: Harness,
) -> None:
    loop = asyncio.get_running_loop()
    holder: list[LocalBackend] = []
    receiver = CompletionReceiver(
        harness.store,
        lambda job_id: asyncio.run_coroutine_threadsafe(holder[0].completed(job_id), loop).result(),
    )
    with receiver.running():
        commands = FakeCommands(flow=["--complete", "succeeded", "--message", "42 records"])
        backend = harness.backend(commands, public_url=receiver.url)
        holder.append(backend)
        job = harness.job(environment={"namespace": "team-a"})
        await backend.start(job.id)
        running = await wait_for(harness.store, job.id, JobState.RUNNING)
        values = read_values(harness.home, job.id)
        job = await harness.finished(backend, job.id)

    assert (job.state, job.reason, job.message) == (JobState.SUCCEEDED, "Completed", "42 records")
    assert receiver.reports == [(f"/api/v1/jobs/{job.id}/complete", 200)]
    assert task_order(job) == ["install", "wait", "uninstall"]
    assert events(job) == [
        (None, "PENDING", None, "Created"),
        ("PENDING", "INSTALLING", "install", "Installing"),
        ("INSTALLING", "RUNNING", "wait", "Ready"),
        ("RUNNING", "RUNNING", "uninstall", "Completed"),
        ("RUNNING", "SUCCEEDED", "uninstall", "Completed"),
    ]
    assert running.backend_ref == job.backend_ref
    assert_gone(job)
    # The values carry the job's globals: who it is, where to report, with which token.
    assert values["global"]["jobId"] == str(job.id)
    assert values["global"]["scheduler"] == {"url": receiver.url, "token": job_token(SECRET, job.id)}
    assert values["pipeline"]["namespace"] == "team-a"
    # Logs stay, the values (which hold the token) do not.
    run = harness.home / "jobs" / str(job.id)
    assert not (run / "values.yaml").exists()
    for name in ("install.log", "wait.log", "uninstall.log", "services/m1.log", "flows/f1.log"):
        assert (run / name).read_text()
    assert "deploy: done in" in (run / "install.log").read_text()
    assert "the job is SUCCEEDED (Completed)" in (run / "uninstall.log").read_text()
    # The flow had exited after its report: the teardown says so, with no SIGTERM and no "killed".
    uninstall = (run / "uninstall.log").read_text()
    assert "flow f1 had already exited (code 0)" in uninstall or "flow f1 stopped by SIGTERM in" in uninstall
    assert "killed" not in uninstall


async def test_a_flow_that_reports_completion_and_then_exits_ends_the_job_succeeded(lite: Harness) -> None:
    backend = lite.backend(FakeCommands(flow=["--run-for", "0.2"]))
    job = lite.job()
    await backend.start(job.id)
    await wait_for(lite.store, job.id, JobState.RUNNING)
    await asyncio.to_thread(lite.store.record_completion, job.id, True, "done")
    # No backend.completed(): the wait phase's polling finds the report on its own.
    job = await lite.finished(backend, job.id)
    assert (job.state, job.reason) == (JobState.SUCCEEDED, "Completed")
    assert_gone(job)


async def test_a_completion_reporting_failure_fails_the_job_with_the_flow_s_message(lite: Harness) -> None:
    backend = lite.backend()
    job = lite.job()
    await backend.start(job.id)
    await wait_for(lite.store, job.id, JobState.RUNNING)
    await asyncio.to_thread(lite.store.record_completion, job.id, False, "source unreadable: permission denied")
    await backend.completed(job.id)
    job = await lite.finished(backend, job.id)
    assert (job.state, job.reason, job.message) == (
        JobState.FAILED,
        "ScoringFailed",
        "source unreadable: permission denied",
    )
    assert_gone(job)


# ---------------------------------------------------------------------------------------------- failures


async def test_a_service_that_is_not_ready_in_time_fails_install_with_its_last_log_lines(lite: Harness) -> None:
    backend = lite.backend(
        FakeCommands(service=["--never-ready", "--say", "downloading m1.onnx: 3%"]), readiness_timeout_seconds=0.5
    )
    job = lite.job()
    await backend.start(job.id)
    job = await lite.finished(backend, job.id)
    assert (job.state, job.reason) == (JobState.FAILED, "InstallTimeout")
    assert job.message is not None
    assert "not ready after 0.5s" in job.message
    assert "downloading m1.onnx: 3%" in job.message
    assert task_order(job) == ["install", "uninstall"]
    assert_gone(job)


async def test_a_service_that_exits_during_install_fails_the_job_naming_it(lite: Harness) -> None:
    backend = lite.backend(FakeCommands(service=["--exit-after", "0", "--exit-code", "3", "--say", "bad model"]))
    job = lite.job()
    await backend.start(job.id)
    job = await lite.finished(backend, job.id)
    assert (job.state, job.reason) == (JobState.FAILED, "InstallFailed")
    assert job.message is not None
    assert "service m1 exited with code 3 during install" in job.message
    assert "bad model" in job.message
    assert_gone(job)


async def test_a_failed_install_logs_its_reason_and_uninstall_logs_how_each_component_ended(lite: Harness) -> None:
    backend = lite.backend(FakeCommands(service=["--exit-after", "0", "--exit-code", "3", "--say", "bad model"]))
    job = lite.job()
    await backend.start(job.id)
    job = await lite.finished(backend, job.id)
    assert job.message is not None
    why = job.message.splitlines()[0]
    assert why == "service m1 exited with code 3 during install"
    run = lite.home / "jobs" / str(job.id)
    install = [line.split(" ", 1)[1] for line in (run / "install.log").read_text().splitlines()]
    assert next(line for line in install if line.startswith("install: failed after ")).endswith(
        f"s with InstallFailed: {why}"
    )
    uninstall = [line.split(" ", 1)[1] for line in (run / "uninstall.log").read_text().splitlines()]
    assert f"uninstall: the run ended with InstallFailed (job state INSTALLING): {why}" in uninstall
    assert "service m1 had already exited (code 3)" in uninstall
    # The fake flow has no SIGTERM handler: it ends on the signal, and the log says so rather than "killed".
    assert [line for line in uninstall if line.startswith("flow f1 stopped by SIGTERM in ")]
    assert not [line for line in uninstall if "killed (SIGKILL)" in line]


async def test_a_flow_exiting_with_an_error_during_wait_fails_the_job_with_its_log_tail(
    lite: Harness, tmp_path: Path
) -> None:
    stop = tmp_path / "stop"
    backend = lite.backend(FakeCommands(flow=["--lines", "25", "--until-file", str(stop), "--exit-code", "2"]))
    job = lite.job()
    await backend.start(job.id)
    await wait_for(lite.store, job.id, JobState.RUNNING)
    stop.touch()
    job = await lite.finished(backend, job.id)
    assert (job.state, job.reason) == (JobState.FAILED, "FlowFailed")
    assert job.message is not None
    assert job.message.startswith("flow f1 exited with code 2\nlast 20 log line(s) of flow f1:\n")
    assert job.message.splitlines()[-2:] == ["f1 line 25", "fake flow f1 exits with code 2"]
    assert task_order(job) == ["install", "wait", "uninstall"]
    assert_gone(job)


async def test_flows_that_all_exit_0_without_reporting_completion_fail_the_job(lite: Harness) -> None:
    backend = lite.backend(FakeCommands(flow=["--run-for", "0"]))
    job = lite.job()
    await backend.start(job.id)
    job = await lite.finished(backend, job.id)
    assert (job.state, job.reason) == (JobState.FAILED, "NoCompletion")
    assert job.message is not None and "no flow reported completion" in job.message
    assert_gone(job)


async def test_a_job_running_past_the_pipeline_s_wait_timeout_fails(lite: Harness) -> None:
    backend = lite.backend()
    job = lite.job(add_pipeline(lite.store, wait="1s"))
    await backend.start(job.id)
    job = await lite.finished(backend, job.id)
    assert (job.state, job.reason) == (JobState.FAILED, "WaitTimeout")
    assert job.message == "the scoring did not complete within 1s"
    assert_gone(job)


@pytest.mark.parametrize(
    ("parameters", "expected"),
    [
        ({"limit": "many"}, "expected an integer for parameter of type 'integer'"),
        ({"treshold": 0.9}, "unknown parameter 'treshold'"),
    ],
)
async def test_parameters_that_do_not_fit_fail_the_job_before_anything_is_started(
    lite: Harness, parameters: dict[str, Any], expected: str
) -> None:
    commands = FakeCommands()
    backend = lite.backend(commands)
    job = lite.job(parameters=parameters)
    await backend.start(job.id)
    job = await lite.finished(backend, job.id)
    assert (job.state, job.reason) == (JobState.FAILED, "InvalidParameters")
    assert job.message is not None and expected in job.message
    assert task_order(job) == ["install", "uninstall"]
    assert commands.seen == []
    assert job.backend_ref is None
    install_log = (lite.home / "jobs" / str(job.id) / "install.log").read_text()
    assert expected in install_log


async def test_an_environment_that_does_not_render_fails_the_job_as_a_render_failure(lite: Harness) -> None:
    backend = lite.backend()
    job = lite.job(environment={"namespace": "Not_A_Namespace"})
    await backend.start(job.id)
    job = await lite.finished(backend, job.id)
    assert (job.state, job.reason) == (JobState.FAILED, "RenderFailed")
    assert job.message is not None and "Not_A_Namespace" in job.message


class TeardownFails(LocalProcessDeployer):
    """Tears down for real, then reports a failure, as a deployer that could not remove everything would."""

    async def teardown(self, deployment: Deployment, grace: float, log: Callable[[str], None]) -> None:
        await super().teardown(deployment, grace, log)
        raise DeployError("could not remove the scratch volume of flow f1")


async def test_a_teardown_failure_fails_the_job_and_keeps_the_original_outcome_in_the_message(lite: Harness) -> None:
    deployer = TeardownFails(lite.home / "jobs", FakeCommands())
    backend = LocalBackend(lite.store, settings_for(lite.home), SECRET, deployer)
    lite.backends.append(backend)
    job = lite.job()
    await backend.start(job.id)
    await wait_for(lite.store, job.id, JobState.RUNNING)
    await asyncio.to_thread(lite.store.record_completion, job.id, True, "done")
    await backend.completed(job.id)
    job = await lite.finished(backend, job.id)
    assert (job.state, job.reason) == (JobState.FAILED, "UninstallFailed")
    assert job.message == (
        "teardown failed: could not remove the scratch volume of flow f1\n(the run had ended with Completed: done)"
    )


# ---------------------------------------------------------------------------------------------- cancel


async def test_a_cancel_during_install_uninstalls_and_ends_cancelled(harness: Harness) -> None:
    backend = harness.backend(FakeCommands(service=["--never-ready"]))
    job = harness.job()
    await backend.start(job.id)
    await wait_until(lambda: harness.store.get_job(job.id).backend_ref is not None, what="the processes to start")
    await harness.cancel(backend, job.id)
    job = await harness.finished(backend, job.id)
    assert (job.state, job.reason) == (JobState.CANCELLED, "Cancelled")
    assert task_order(job) == ["install", "uninstall"]
    assert [e[1] for e in events(job)] == ["PENDING", "INSTALLING", "CANCELLING", "CANCELLING", "CANCELLED"]
    assert_gone(job)


async def test_a_cancel_during_wait_uninstalls_and_ends_cancelled(harness: Harness) -> None:
    backend = harness.backend()
    job = harness.job()
    await backend.start(job.id)
    await wait_for(harness.store, job.id, JobState.RUNNING)
    await harness.cancel(backend, job.id)
    job = await harness.finished(backend, job.id)
    assert (job.state, job.reason) == (JobState.CANCELLED, "Cancelled")
    assert task_order(job) == ["install", "wait", "uninstall"]
    assert_gone(job)
    assert "sent SIGTERM to flow f1" in (harness.home / "jobs" / str(job.id) / "uninstall.log").read_text()


async def test_a_cancel_during_uninstall_does_not_start_a_second_uninstall(lite: Harness) -> None:
    # The service ignores SIGTERM, so uninstall spends the grace second waiting: time to cancel meanwhile.
    backend = lite.backend(FakeCommands(service=["--ignore-sigterm"]), uninstall_grace_seconds=1.0)
    job = lite.job()
    await backend.start(job.id)
    await wait_for(lite.store, job.id, JobState.RUNNING)
    await asyncio.to_thread(lite.store.record_completion, job.id, True, "done")
    await backend.completed(job.id)
    await wait_until(lambda: lite.store.get_job(job.id).task == Task.UNINSTALL, what="uninstall to begin")
    await lite.cancel(backend, job.id)
    await backend.cancel(job.id)  # a repeated cancel changes nothing either
    job = await lite.finished(backend, job.id)

    assert job.state == JobState.CANCELLED
    assert job.message == "cancelled while uninstalling after Completed"
    assert [e for e in events(job) if e[2] == "uninstall" and e[0] == e[1]] == [
        ("RUNNING", "RUNNING", "uninstall", "Completed")
    ]
    uninstall_log = (lite.home / "jobs" / str(job.id) / "uninstall.log").read_text()
    assert uninstall_log.count("uninstall: the run ended with") == 1
    assert "service m1 did not stop within 1s: killed (SIGKILL)" in uninstall_log
    assert_gone(job)


async def test_cancelling_a_job_that_never_started_still_runs_uninstall(lite: Harness) -> None:
    backend = lite.backend()
    job = lite.job()
    await lite.cancel(backend, job.id)
    job = await lite.finished(backend, job.id)
    assert (job.state, job.reason) == (JobState.CANCELLED, "Cancelled")
    assert task_order(job) == ["uninstall"]


async def test_a_cancel_right_after_start_wins_over_install(lite: Harness) -> None:
    commands = FakeCommands()
    backend = lite.backend(commands)
    job = lite.job()
    await backend.start(job.id)
    await lite.cancel(backend, job.id)
    job = await lite.finished(backend, job.id)
    assert job.state == JobState.CANCELLED
    assert task_order(job)[-1] == "uninstall"
    if job.backend_ref is not None:  # the cancel came after the processes had started
        assert_gone(job)


async def test_two_cancels_and_a_completion_racing_leave_exactly_one_outcome(harness: Harness) -> None:
    backend = harness.backend()
    job = harness.job()
    await backend.start(job.id)
    await wait_for(harness.store, job.id, JobState.RUNNING)

    async def complete() -> None:
        await asyncio.to_thread(harness.store.record_completion, job.id, True, "done")
        await backend.completed(job.id)

    async def cancel() -> str:
        try:
            await harness.cancel(backend, job.id)
        except IllegalTransition:
            return "refused"
        return "accepted"

    results = await asyncio.gather(complete(), cancel(), cancel(), return_exceptions=True)
    job = await harness.finished(backend, job.id)

    assert job.state in (JobState.SUCCEEDED, JobState.CANCELLED)
    # A completion report is refused once the job is CANCELLING; one of the two cancels is refused at the least.
    assert results[0] is None or isinstance(results[0], Conflict)
    assert list(results[1:]).count("accepted") == (1 if job.state == JobState.CANCELLED else 0)
    terminal = [e for e in events(job) if e[1] in {s.value for s in FINAL}]
    assert len(terminal) == 1
    assert len([e for e in events(job) if e[2] == "uninstall" and e[0] == e[1]]) == 1
    assert_gone(job)


# ---------------------------------------------------------------------------------------------- logs


async def test_logs_follow_every_task_until_the_job_ends(lite: Harness) -> None:
    backend = lite.backend()
    job = lite.job()
    await backend.start(job.id)
    followed: list[str] = []

    async def follow() -> None:
        async for line in backend.logs(job.id, None, follow=True):
            followed.append(line)

    reader = asyncio.create_task(follow())
    await wait_for(lite.store, job.id, JobState.RUNNING)
    await asyncio.to_thread(lite.store.record_completion, job.id, True, "done")
    await backend.completed(job.id)
    await lite.finished(backend, job.id)
    await asyncio.wait_for(reader, 30)  # ends by itself: the job is finished

    text = "\n".join(followed)
    assert text.index("install: job") < text.index("wait: watching") < text.index("uninstall: the run ended")
    assert followed[-1].endswith("the job is SUCCEEDED (Completed)")
    assert all("\n" not in line for line in followed)
    only_wait = [line async for line in backend.logs(job.id, Task.WAIT, follow=False)]
    assert only_wait[0].split(" ", 1)[1].startswith("wait: watching the flows")
    assert [line async for line in backend.logs(job.id, Task.INSTALL, follow=True)][-1].endswith("the job is RUNNING")


async def test_following_the_logs_of_a_task_the_job_skipped_ends_at_once(lite: Harness) -> None:
    backend = lite.backend()
    job = lite.job(parameters={"limit": "many"})
    await backend.start(job.id)
    await lite.finished(backend, job.id)
    assert [line async for line in backend.logs(job.id, Task.WAIT, follow=True)] == []


# ---------------------------------------------------------------------------------------------- restart in-process


async def test_close_leaves_the_job_running_and_recover_re_attaches_to_it(lite: Harness) -> None:
    commands = FakeCommands()
    first = lite.backend(commands)
    job = lite.job()
    await first.start(job.id)
    job = await wait_for(lite.store, job.id, JobState.RUNNING)
    await first.close()
    after_close = await asyncio.to_thread(lite.store.get_job, job.id)
    assert (after_close.state, after_close.task) == (JobState.RUNNING, Task.WAIT)
    assert sorted(any_running(processes_of(job))) == ["f1", "m1"]

    second = LocalBackend(lite.store, first.settings, SECRET, first.deployer)  # same deployer: it reaps
    lite.backends.append(second)
    await second.recover()
    assert second.running_jobs() == [job.id]
    await asyncio.to_thread(lite.store.record_completion, job.id, True, "done")
    await second.completed(job.id)
    job = await lite.finished(second, job.id)
    assert (job.state, job.reason) == (JobState.SUCCEEDED, "Completed")
    assert_gone(job)


async def test_recover_resumes_an_interrupted_uninstall_with_the_outcome_it_recorded(lite: Harness) -> None:
    backend = lite.backend()
    job = lite.job()
    await backend.start(job.id)
    await wait_for(lite.store, job.id, JobState.RUNNING)
    await backend.close()
    # As if the scheduler died just after uninstall had recorded its outcome.
    await asyncio.to_thread(lite.store.set_task, job.id, Task.UNINSTALL, reason="FlowFailed", message="flow f1 died")
    again = LocalBackend(lite.store, backend.settings, SECRET, backend.deployer)
    lite.backends.append(again)
    await again.recover()
    job = await lite.finished(again, job.id)
    assert (job.state, job.reason, job.message) == (JobState.FAILED, "FlowFailed", "flow f1 died")
    assert_gone(job)
    assert "resuming uninstall" in (lite.home / "jobs" / str(job.id) / "uninstall.log").read_text()


async def test_recover_fails_a_job_caught_in_install_and_stops_its_processes(lite: Harness) -> None:
    backend = lite.backend(FakeCommands(service=["--never-ready"]))
    job = lite.job()
    await backend.start(job.id)
    await wait_until(lambda: lite.store.get_job(job.id).backend_ref is not None, what="the processes to start")
    await backend.close()
    again = LocalBackend(lite.store, backend.settings, SECRET, backend.deployer)
    lite.backends.append(again)
    await again.recover()
    job = await lite.finished(again, job.id)
    assert (job.state, job.reason) == (JobState.FAILED, "SchedulerRestarted")
    assert job.message is not None and "INSTALLING" in job.message
    assert_gone(job)


async def test_a_deployment_record_without_a_stored_reference_is_still_torn_down(lite: Harness) -> None:
    backend = lite.backend(FakeCommands(service=["--never-ready"]))
    job = lite.job()
    await backend.start(job.id)
    await wait_until(lambda: lite.store.get_job(job.id).backend_ref is not None, what="the processes to start")
    await backend.close()
    running_job = await asyncio.to_thread(lite.store.get_job, job.id)
    # As if the scheduler died between starting the processes and storing their reference.
    await asyncio.to_thread(lite.store.set_backend_ref, job.id, None)
    again = LocalBackend(lite.store, backend.settings, SECRET, backend.deployer)
    lite.backends.append(again)
    await again.recover()
    job = await lite.finished(again, job.id)
    assert (job.state, job.reason) == (JobState.FAILED, "SchedulerRestarted")
    assert any_running(processes_of(running_job)) == []


async def test_recover_starts_a_job_that_never_began(lite: Harness) -> None:
    # PENDING with nothing deployed: created while no engine ran (a multi-worker server's API workers do this).
    job = lite.job()
    backend = lite.backend(FakeCommands())
    await backend.recover()
    running = await wait_for(lite.store, job.id, JobState.RUNNING)
    assert (running.task, running.reason) == (Task.WAIT, "Ready")
    await lite.cancel(backend, job.id)
    job = await lite.finished(backend, job.id)
    assert job.state == JobState.CANCELLED
