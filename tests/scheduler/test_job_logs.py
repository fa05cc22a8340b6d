"""A job's logs in one view: every phase and every component, prefixed with its name, interleaved by time.

The merge itself (`scheduler.joblogs.merge_logs`) on hand-made sources, then real local jobs (the fake service
and flow of lifecycle_kit, printing timestamped lines as real components do) read through the service layer,
which is what `GET /jobs/{id}/logs` and `modelops job logs` return.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import sys
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path

import pytest
from lifecycle_kit import SECRET, FakeCommands, add_pipeline, create_job, settings_for, wait_for, wait_until

from ir.logformat import JsonFormatter, TextFormatter, line_timestamp, timestamp
from scheduler.backends.local import LocalBackend
from scheduler.db import create_engine, upgrade
from scheduler.deployers.local import LocalProcessDeployer
from scheduler.errors import InvalidInput
from scheduler.joblogs import IDLE, Idle, LogItem, PhaseLog, component_log_path, merge_logs
from scheduler.service import SchedulerService
from scheduler.states import JobState
from scheduler.store import JobStore

STAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
FINAL = {JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED}


async def source(*items: LogItem) -> AsyncIterator[LogItem]:
    for item in items:
        yield item


async def merged(sources: dict[str, AsyncIterator[LogItem]]) -> list[str]:
    return [line async for line in merge_logs(sources)]


async def merged_with(sources: dict[str, AsyncIterator[LogItem]], follow: bool) -> list[str]:
    return [line async for line in merge_logs(sources, follow)]


# ---------------------------------------------------------------------------------------------- the merge


async def test_lines_of_several_sources_come_out_in_time_order_each_prefixed_with_its_source() -> None:
    lines = await merged(
        {
            "install": source("2026-12-03T13:55:01.100Z a", "2026-12-03T13:55:01.400Z d"),
            "service/m1": source("2026-12-03T13:55:01.200Z b", "2026-12-03T13:55:01.500Z e"),
            "flow/f1": source("2026-12-03T13:55:01.300Z c"),
        }
    )
    assert lines == [
        "[install] 2026-12-03T13:55:01.100Z a",
        "[service/m1] 2026-12-03T13:55:01.200Z b",
        "[flow/f1] 2026-12-03T13:55:01.300Z c",
        "[install] 2026-12-03T13:55:01.400Z d",
        "[service/m1] 2026-12-03T13:55:01.500Z e",
    ]


@pytest.mark.parametrize("follow", [True, False])
async def test_reading_finished_sources_one_at_a_time_merges_the_same(follow: bool) -> None:
    lines = await merged_with(
        {
            "install": source("2026-12-03T13:55:01.300Z c", "2026-12-03T13:55:01.300Z c2"),
            "service/m1": source("2026-12-03T13:55:01.100Z a", "plain", "2026-12-03T13:55:01.300Z same"),
            "flow/f1": source("2026-12-03T13:55:01.200Z b"),
        },
        follow,
    )
    assert lines == [
        "[service/m1] 2026-12-03T13:55:01.100Z a",
        "[service/m1] plain",
        "[flow/f1] 2026-12-03T13:55:01.200Z b",
        "[install] 2026-12-03T13:55:01.300Z c",
        "[install] 2026-12-03T13:55:01.300Z c2",
        "[service/m1] 2026-12-03T13:55:01.300Z same",
    ]


async def test_a_line_without_a_timestamp_stays_with_the_line_before_it() -> None:
    lines = await merged(
        {
            "flow/f1": source(
                "2026-12-03T13:55:01.100Z ERROR boom", "Traceback (most recent call last):", "  ValueError: x"
            ),
            "wait": source("2026-12-03T13:55:01.200Z wait: watching"),
        }
    )
    assert lines == [
        "[flow/f1] 2026-12-03T13:55:01.100Z ERROR boom",
        "[flow/f1] Traceback (most recent call last):",
        "[flow/f1]   ValueError: x",
        "[wait] 2026-12-03T13:55:01.200Z wait: watching",
    ]


async def test_json_lines_sort_by_their_ts_field_and_equal_times_keep_the_order_of_the_sources() -> None:
    lines = await merged(
        {
            "install": source("2026-12-03T13:55:01.200Z same time"),
            "flow/f1": source('{"ts": "2026-12-03T13:55:01.100Z", "level": "INFO", "message": "first"}'),
            "service/m1": source('{"ts": "2026-12-03T13:55:01.200Z", "level": "INFO", "message": "same time"}'),
        }
    )
    assert [line.split(" ", 1)[0] for line in lines] == ["[flow/f1]", "[install]", "[service/m1]"]


async def test_a_source_with_nothing_yet_holds_nothing_back_once_it_says_it_is_idle() -> None:
    gate = asyncio.Event()

    async def late() -> AsyncIterator[LogItem]:
        yield IDLE
        await gate.wait()
        yield "2026-12-03T13:55:09.000Z late line"

    stream = merge_logs({"flow/f1": late(), "install": source("2026-12-03T13:55:01.000Z early line")})
    assert await anext(stream) == "[install] 2026-12-03T13:55:01.000Z early line"
    gate.set()
    assert await anext(stream) == "[flow/f1] 2026-12-03T13:55:09.000Z late line"
    with pytest.raises(StopAsyncIteration):
        await anext(stream)


async def test_a_source_that_last_looked_before_a_lines_time_holds_it_back_until_it_looks_again() -> None:
    looked_again = asyncio.Event()

    async def quiet_then_late() -> AsyncIterator[LogItem]:
        yield Idle("2026-12-03T13:55:01.000Z")  # looked at 01.000: nothing yet
        await looked_again.wait()
        yield "2026-12-03T13:55:01.500Z written at 01.500, read on the next look"

    stream = merge_logs(
        {"service/m1": quiet_then_late(), "install": source("2026-12-03T13:55:02.000Z phase line at 02.000")}
    )
    first = asyncio.ensure_future(anext(stream))
    await asyncio.sleep(0.01)
    assert not first.done()  # the phase line (02.000) waits: the service may still have an older one
    looked_again.set()
    assert await first == "[service/m1] 2026-12-03T13:55:01.500Z written at 01.500, read on the next look"
    assert await anext(stream) == "[install] 2026-12-03T13:55:02.000Z phase line at 02.000"


def test_our_timestamps_are_iso_8601_utc_with_milliseconds_and_are_found_at_the_start_of_a_line() -> None:
    assert timestamp(1796306101.1239) == "2026-12-03T13:55:01.123Z"
    assert STAMP.match(timestamp())
    assert line_timestamp("2026-12-03T13:55:01.123Z INFO x: y") == "2026-12-03T13:55:01.123Z"
    assert line_timestamp('{"ts": "2026-12-03T13:55:01.123Z", "level": "INFO"}') == "2026-12-03T13:55:01.123Z"
    assert line_timestamp("2026-12-03 13:55:01,123 INFO x: y") is None
    assert line_timestamp("  File 'x.py', line 1") is None


def record(message: str, *, error: bool = False) -> logging.LogRecord:
    exc_info = None
    if error:
        try:
            raise ValueError("bad row")
        except ValueError:
            exc_info = sys.exc_info()
    return logging.LogRecord(
        "scheduler.lifecycle", logging.ERROR if error else logging.INFO, __file__, 1, message, (), exc_info
    )


def test_server_text_lines_start_with_the_timestamp_then_level_and_logger() -> None:
    line = TextFormatter().format(record("job 1 started"))
    stamp, rest = line.split(" ", 1)
    assert STAMP.match(stamp)
    assert rest == "INFO scheduler.lifecycle: job 1 started"
    with_trace = TextFormatter().format(record("failed", error=True)).splitlines()
    assert with_trace[0].endswith("ERROR scheduler.lifecycle: failed") and with_trace[-1] == "ValueError: bad row"


def test_json_lines_are_one_parseable_object_each_with_ts_level_logger_and_message() -> None:
    line = JsonFormatter().format(record("job 1 started"))
    document = json.loads(line)
    assert list(document)[:4] == ["ts", "level", "logger", "message"]
    assert STAMP.match(document["ts"]) and line_timestamp(line) == document["ts"]
    assert (document["level"], document["logger"], document["message"]) == (
        "INFO",
        "scheduler.lifecycle",
        "job 1 started",
    )
    failed = JsonFormatter().format(record("failed", error=True))
    assert "\n" not in failed and json.loads(failed)["exception"].endswith("ValueError: bad row")


def test_the_servers_uvicorn_configuration_uses_our_formatters_for_every_handler() -> None:
    from scheduler.cli import _serve_logging

    for fmt, cls in (("text", TextFormatter), ("json", JsonFormatter)):
        config = _serve_logging("INFO", fmt)
        assert {name: f["()"] for name, f in config["formatters"].items()} == {
            "default": f"ir.logformat.{cls.__name__}",
            "access": f"ir.logformat.{cls.__name__}",
        }
        assert config["loggers"]["scheduler"]["handlers"] == ["default"]


def test_phase_log_lines_start_with_the_timestamp(tmp_path: Path) -> None:
    with PhaseLog(tmp_path / "install.log") as log:
        log("rendering values\nsecond line")
    for line in (tmp_path / "install.log").read_text().splitlines():
        stamp, _ = line.split(" ", 1)
        assert STAMP.match(stamp), line


def test_a_json_phase_log_writes_one_object_per_message_that_the_merge_orders_by_its_ts(tmp_path: Path) -> None:
    with PhaseLog(tmp_path / "install.log", fmt="json", logger="install", secrets=["s3cr3t"]) as log:
        log("rendering values with token s3cr3t")
        log("service m1 exited with code 1\nlast 2 log line(s) of service m1:\nTraceback")
    lines = (tmp_path / "install.log").read_text().splitlines()
    assert len(lines) == 2  # the multi-line message (a log tail) stays one record
    records = [json.loads(line) for line in lines]
    assert [r["logger"] for r in records] == ["install", "install"]
    assert records[0]["message"] == "rendering values with token ***"
    assert records[1]["message"].splitlines()[1] == "last 2 log line(s) of service m1:"
    assert all(STAMP.match(r["ts"]) and line_timestamp(line) == r["ts"] for r, line in zip(records, lines, strict=True))


def test_a_task_command_with_log_format_json_prints_json_step_lines() -> None:
    import subprocess

    command = [str(Path(sys.executable).parent / "modelops"), "task", "wait", "--job-id", str(uuid.uuid4())]
    command += ["--scheduler-url", "http://127.0.0.1:9", "--token", "mjt_x", "--log-format", "json"]
    # No scheduler answers at port 9: the command logs its start and its retries, which is all this test reads.
    with subprocess.Popen(command, stdout=subprocess.PIPE, text=True) as process:
        try:
            assert process.stdout is not None
            first, second = process.stdout.readline(), process.stdout.readline()
        finally:
            process.kill()
    records = [json.loads(first), json.loads(second)]
    assert records[0]["logger"] == "wait" and records[0]["message"].startswith("wait: job ")
    assert "no answer from the scheduler" in records[1]["message"]
    assert all(STAMP.match(r["ts"]) for r in records)


def test_a_task_command_refuses_an_unknown_log_format() -> None:
    from typer.testing import CliRunner

    from scheduler.taskcmd import task_app

    arguments = ["wait", "--job-id", str(uuid.uuid4()), "--scheduler-url", "http://127.0.0.1:9"]
    refused = CliRunner().invoke(task_app, [*arguments, "--log-format", "xml"])
    assert refused.exit_code == 2 and "'xml' is not one of 'text', 'json'" in refused.output


def test_a_component_name_that_could_leave_the_run_directory_is_refused(tmp_path: Path) -> None:
    job = "2b1e0c6e-36a4-4a59-9a3f-0b0e9c7a6c11"
    assert component_log_path(tmp_path, job, "flow/f1") == tmp_path / "jobs" / job / "flows" / "f1.log"
    assert component_log_path(tmp_path, job, "wait") == tmp_path / "jobs" / job / "wait.log"
    for bad in ("flow/..", "service/a/b", "pod/x", "flow/"):
        with pytest.raises(ValueError, match="not a log component"):
            component_log_path(tmp_path, job, bad)


# ---------------------------------------------------------------------------------------------- real local jobs


@pytest.fixture
def store(tmp_path: Path) -> Iterator[JobStore]:
    url = f"sqlite:///{tmp_path / 'logs.db'}"
    upgrade(url)
    engine = create_engine(url)
    yield JobStore(engine)
    engine.dispose()


class Kit:
    """A local backend running the fake components with timestamped output, and the service in front of it."""

    def __init__(self, store: JobStore, home: Path, commands: FakeCommands) -> None:
        self.store = store
        self.version = add_pipeline(store)
        settings = settings_for(home)
        self.deployer = LocalProcessDeployer(home / "jobs", commands)
        self.backend = LocalBackend(store, settings, SECRET, self.deployer)
        self.service = SchedulerService(store, self.backend, settings, SECRET)

    async def logs(self, job_id: uuid.UUID, components: Sequence[str] | None = None) -> list[str]:
        lines = await self.service.logs(job_id, components, False)
        return [line.rstrip("\n") async for line in lines]


def stamped(flow: Sequence[str] = ()) -> FakeCommands:
    return FakeCommands(service=["--stamp", "--say", "model m1 loaded"], flow=["--stamp", "--lines", "3", *flow])


def component_of(line: str) -> str:
    return line[1 : line.index("]")]


def body_of(line: str) -> str:
    return line[line.index("] ") + 2 :]


async def test_the_logs_of_a_real_job_interleave_every_phase_service_and_flow_by_time(
    store: JobStore, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    kit = Kit(store, tmp_path / "home", stamped(["--run-for", "0.2"]))
    job = create_job(store, kit.version)
    with caplog.at_level(logging.INFO, logger="scheduler.store"):
        await kit.backend.start(job.id)
        await wait_for(store, job.id, FINAL)
        await kit.backend.join(job.id)
    lines = await kit.logs(job.id)

    # The server's own log records each job's start and end, with state and reason.
    server = [record.getMessage() for record in caplog.records if record.name == "scheduler.store"]
    assert server[0] == f"job {job.id} started (scoring v1)"
    assert server[-1].startswith(f"job {job.id} ended FAILED reason NoCompletion: ")

    assert {component_of(line) for line in lines} == {"install", "wait", "uninstall", "service/m1", "flow/f1"}
    stamps = [line_timestamp(body_of(line)) for line in lines]
    assert all(stamps), [line for line, stamp in zip(lines, stamps, strict=True) if not stamp]
    assert stamps == sorted(stamps)  # type: ignore[type-var]
    text = "\n".join(lines)
    # What causes what: the service prints before it answers ready, which ends install and starts wait; the
    # flow's lines are all written before it exits, which ends wait and starts uninstall.
    assert text.index("[service/m1] ") < text.index("[wait] ")
    last_flow = max(i for i, line in enumerate(lines) if component_of(line) == "flow/f1")
    first_uninstall = min(i for i, line in enumerate(lines) if component_of(line) == "uninstall")
    assert last_flow < first_uninstall
    assert "[flow/f1] " in text and "f1 line 3" in text and "model m1 loaded" in text


async def test_component_selects_some_components_by_full_or_bare_name(store: JobStore, tmp_path: Path) -> None:
    kit = Kit(store, tmp_path / "home", stamped(["--run-for", "0.1"]))
    job = create_job(store, kit.version)
    await kit.backend.start(job.id)
    await wait_for(store, job.id, FINAL)
    await kit.backend.join(job.id)

    only_flow = await kit.logs(job.id, ["f1"])
    assert only_flow and {component_of(line) for line in only_flow} == {"flow/f1"}
    assert [body_of(line).split(" ", 1)[1] for line in only_flow][-4:] == [
        "f1 line 1",
        "f1 line 2",
        "f1 line 3",
        "fake flow f1 exits with code 0",
    ]
    two = await kit.logs(job.id, ["service/m1", "uninstall"])
    assert {component_of(line) for line in two} == {"service/m1", "uninstall"}
    with pytest.raises(InvalidInput, match="'flow/f2' names no log component"):
        await kit.logs(job.id, ["flow/f2"])


async def test_following_the_logs_streams_the_components_lines_as_they_are_written(
    store: JobStore, tmp_path: Path
) -> None:
    release = tmp_path / "release"
    kit = Kit(store, tmp_path / "home", stamped(["--until-file", str(release)]))
    job = create_job(store, kit.version)
    followed: list[str] = []

    async def follow() -> None:
        async for line in await kit.service.logs(job.id, None, True):
            followed.append(line.rstrip("\n"))

    reader = asyncio.create_task(follow())
    await kit.backend.start(job.id)
    # The flow runs until `release` exists: its lines arrive while the job is still RUNNING.
    await wait_until(lambda: any(line.endswith("f1 line 3") for line in followed), what="the flow's third line")
    assert (await asyncio.to_thread(store.get_job, job.id)).state is JobState.RUNNING
    assert any(line.startswith("[service/m1] ") for line in followed)
    release.touch()
    await wait_for(store, job.id, FINAL)
    await kit.backend.join(job.id)
    await asyncio.wait_for(reader, 30)  # ends by itself once the job has ended
    assert followed[-1].startswith("[uninstall] ") and "the job is " in followed[-1]  # its last line
    assert any(line.endswith("fake flow f1 exits with code 0") for line in followed)
    assert followed == await kit.logs(job.id)  # in time order while following too, and nothing missing
