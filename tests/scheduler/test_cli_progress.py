"""What `modelops run` and `modelops job show --watch` show while a job runs: on a terminal a rich panel (bar,
percentage, ETA, rows/s, a line per flow and per service), elsewhere plain lines with a heartbeat; the output
location at the end."""

from __future__ import annotations

import io
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cli_kit import Server, running_server, wait_job, write_bundle
from rich.console import Console
from typer.testing import CliRunner

from scheduler import cli
from scheduler.cli import _RunView, app
from scheduler.client import JobDetail
from scheduler.states import JobState

JOB_ID = "3f2b6c1e-8f7d-4c52-9d8e-2a1b0c9d8e7f"
AT = "2026-12-03T12:00:00Z"


def job_detail(
    *,
    read: int = 4500,
    total: int | None = 10_000,
    unit: str | None = "records",
    state: str = "RUNNING",
    task: str = "wait",
    flow_state: str = "running",
    events: list[dict[str, Any]] | None = None,
    message: str | None = "1 scoring service(s) ready, 1 scoring flow(s) running",
) -> JobDetail:
    """A job as `GET /jobs/{id}` gives it, with one flow calling one service."""
    ready = {"at": AT, "from": "INSTALLING", "to": "RUNNING", "task": "wait", "reason": "Ready", "message": message}
    flow: dict[str, Any] = {
        "state": flow_state,
        "read": read,
        "written": read - 100,
        "failed": 10,
        "filtered": 90,
        "total": total,
        "unit": unit,
        "done": read if total is not None else None,
        "rate": 1100.0,
        "outputs": ["file sink 'scores' (/data/scores.csv)"],
        "services": {
            "digits": {
                "requests": 18,
                "rows": read,
                "errors": 1,
                "retries": 2,
                "latency_ms": {"mean": 12.5, "p50": 11.0, "p99": 30.2},
            }
        },
        "at": AT,
    }
    return JobDetail.model_validate(
        {
            "id": JOB_ID,
            "pipeline": "digits",
            "version": 2,
            "state": state,
            "task": task,
            "reason": "Ready",
            "message": message,
            "parameters": {},
            "environment": {},
            "backend": "local",
            "backend_ref": None,
            "created_at": AT,
            "started_at": AT,
            "finished_at": None,
            "progress": {
                "read": read,
                "written": read - 100,
                "failed": 10,
                "filtered": 90,
                "total": total,
                "unit": unit,
                "done": read if total is not None else None,
                "flows": {"digits-batch": flow},
            },
            "completion": None,
            "flow_completions": {},
            "events": events if events is not None else [ready],
        }
    )


def rendered(view: _RunView) -> str:
    console = Console(record=True, force_terminal=True, width=160, color_system="truecolor")
    console.print(view)
    return console.export_text()


# ---------------------------------------------------------------------------------------------- on a terminal


def test_on_a_terminal_the_view_has_a_bar_with_percentage_eta_rates_and_a_line_per_flow_and_service() -> None:
    view = _RunView(job_detail(read=4000), console=Console(file=io.StringIO()), live=True)
    view.update(job_detail(read=4000))
    view.update(job_detail(read=4500))
    text = rendered(view)
    assert "━" in text  # the bar
    assert "45%" in text
    assert "4,500/10,000 records" in text
    assert "ETA" in text
    assert "rows/s now" in text and "1,100 rows/s on average" in text
    assert "filtered 90" in text
    flow_line = next(line for line in text.splitlines() if "flow digits-batch" in line)
    assert "running" in flow_line and "read 4,500" in flow_line and "45.0% of 10,000 records" in flow_line
    service_line = next(line for line in text.splitlines() if "service digits" in line)
    assert "requests 18" in service_line and "rows 4,500" in service_line and "errors 1" in service_line
    assert "latency p50 11.0 ms  p99 30.2 ms" in service_line


def test_a_source_measured_in_bytes_shows_bytes_in_the_bar() -> None:
    job = job_detail(read=1000, total=50_000_000, unit="bytes")
    view = _RunView(job, console=Console(file=io.StringIO()), live=True)
    view.update(job)
    text = rendered(view)
    assert "1.0 kB/50.0 MB" in text  # done is `read` in this made-up report
    assert "MB bytes" not in text  # a size in bytes says its unit once
    assert "━" in text


def test_without_a_known_size_there_is_no_bar_but_the_counters_and_flows_show() -> None:
    job = job_detail(total=None, unit=None)
    view = _RunView(job, console=Console(file=io.StringIO()), live=True)
    view.update(job)
    text = rendered(view)
    assert "━" not in text and "ETA" not in text
    assert "records read 4,500" in text and "flow digits-batch" in text


def test_during_uninstall_the_message_of_an_earlier_task_is_not_shown() -> None:
    earlier = "1 scoring service(s) ready, 1 scoring flow(s) running"
    events = [
        {"at": AT, "from": "INSTALLING", "to": "RUNNING", "task": "wait", "reason": "Ready", "message": earlier},
        {"at": AT, "from": "RUNNING", "to": "RUNNING", "task": "uninstall", "reason": "Completed", "message": None},
    ]
    job = job_detail(task="uninstall", flow_state="done", events=events, message=earlier)
    view = _RunView(job, console=Console(file=io.StringIO()), live=True)
    view.update(job)
    text = rendered(view)
    assert "task uninstall  Completed" in text
    assert "scoring flow(s) running" not in text
    plain, buffer = plain_view(job, heartbeat=3600.0)
    plain.update(job)
    assert buffer.getvalue().splitlines()[0].endswith("RUNNING    task uninstall Completed")


# ---------------------------------------------------------------------------------------------- not a terminal


def plain_view(job: JobDetail, heartbeat: float) -> tuple[_RunView, io.StringIO]:
    buffer = io.StringIO()
    console = Console(file=buffer, force_terminal=False, width=300, highlight=False)
    return _RunView(job, console=console, heartbeat=heartbeat), buffer


def test_off_a_terminal_a_heartbeat_line_comes_with_counters_percentage_and_rate() -> None:
    view, buffer = plain_view(job_detail(read=1000), heartbeat=0.0)
    for read in (1000, 2000, 4500):
        view.update(job_detail(read=read))
    lines = buffer.getvalue().splitlines()
    assert lines[0].endswith("RUNNING    task wait      Ready")  # the state line, once
    assert [line.split(" ", 1)[1] for line in lines if " flow " in line] == [
        "flow digits-batch: running read 1,000, written 900, failed 10, filtered 90 of 10,000 records"
    ]
    beats = [line for line in lines if " read " in line and " flow " not in line]
    assert len(beats) == 3
    assert "read 4,500/10,000 (45.0%), written 4,400, failed 10, filtered 90; " in beats[-1]
    assert "rows/s now, 1,100 on average" in beats[-1]


def test_off_a_terminal_nothing_repeats_before_the_heartbeat_is_due() -> None:
    view, buffer = plain_view(job_detail(), heartbeat=3600.0)
    for _ in range(5):
        view.update(job_detail())
    lines = buffer.getvalue().splitlines()
    assert len(lines) == 2  # the state line and the flow's state, nothing more for an hour
    view.update(job_detail(task="uninstall", flow_state="done"))
    assert "flow digits-batch: done" in buffer.getvalue()
    assert "task uninstall" in buffer.getvalue().splitlines()[2]


# ---------------------------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with running_server(tmp_path_factory.mktemp("home")) as running:
        yield running


def test_run_off_a_terminal_prints_heartbeats_and_ends_with_the_output_location(
    server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cli, "HEARTBEAT_SECONDS", 0.0)  # a heartbeat at every poll: quick to see
    flag = tmp_path / "complete-now"
    # the flow reports its progress at once, and completes once `flag` exists: a few polls later
    server.commands.flow = ["--progress", "250", "--complete", "succeeded", "--complete-when-file", str(flag)]
    bundle = write_bundle(tmp_path / "b", name="run-progress")
    timer = threading.Timer(2.0, flag.touch)
    timer.start()
    try:
        result = CliRunner().invoke(app, ["run", str(bundle), "--server", server.url])
    finally:
        timer.cancel()
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert any(" RUNNING " in line and "read 250/250 (100.0%)" in line for line in lines), result.stdout
    assert any("flow f1: done read 250, written 250" in line for line in lines), result.stdout
    assert " SUCCEEDED in " in lines[-2]
    assert lines[-1] == "output: file sink 'out' (/data/f1-scored.csv)"


def test_job_show_watch_follows_a_running_job_to_its_end(server: Server, tmp_path: Path) -> None:
    server.commands.flow = ["--run-for", "1.0", "--progress", "40", "--complete", "succeeded"]
    bundle = write_bundle(tmp_path / "b", name="watched")
    with server.client() as client:
        client.deploy(bundle)
        job = client.create_job("watched")
    result = CliRunner().invoke(app, ["job", "show", str(job.id), "--watch", "--server", server.url])
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("00:00 ")
    assert f"job {job.id} SUCCEEDED in " in result.stdout
    assert result.stdout.splitlines()[-1] == "output: file sink 'out' (/data/f1-scored.csv)"
    with server.client() as client:
        assert wait_job(client, job.id, JobState.SUCCEEDED).state is JobState.SUCCEEDED
