"""The CLI conventions kubectl users expect: `--version`, `-h`, short job ids, `-o json|yaml|name|wide`,
`--no-headers`, plain tables in a pipe, `job list --watch`; and the read commands on a home whose server is
gone (after `modelops run`). Against a real scheduler on a real port, as test_cli_commands.py."""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from cli_kit import Server, running_server, wait_job, write_bundle
from click.testing import Result
from typer.testing import CliRunner

from scheduler.cli import app
from scheduler.db import create_engine
from scheduler.settings import hash_token
from scheduler.states import JobState
from scheduler.store import JobStore

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with running_server(tmp_path_factory.mktemp("home")) as running:
        yield running


@pytest.fixture
def runner(server: Server) -> CliRunner:
    return CliRunner(env={"MODELOPS_SERVER": server.url, "MODELOPS_TOKEN": None})


@pytest.fixture(scope="module")
def finished(server: Server, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The id of a SUCCEEDED job of the deployed `scoring` pipeline."""
    runner = CliRunner(env={"MODELOPS_SERVER": server.url, "MODELOPS_TOKEN": None})
    ok(runner.invoke(app, ["pipeline", "deploy", str(bundle_with_model(tmp_path_factory.mktemp("bundle")))]))
    return start(runner, server, "--run-for", "0.1", "--complete", "succeeded", wait=JobState.SUCCEEDED)


def bundle_with_model(folder: Path) -> Path:
    """The lifecycle tests' bundle with a file at its model's path (the fake service never opens it)."""
    write_bundle(folder)
    model = folder / "artifacts" / "m1.onnx"
    if not model.exists():
        model.parent.mkdir(parents=True, exist_ok=True)
        model.write_bytes(b"not a real model")
    return folder


def ok(result: Result) -> Result:
    assert result.exit_code == 0, f"exit {result.exit_code}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    return result


def start(runner: CliRunner, server: Server, *flow_args: str, wait: JobState | None = None) -> str:
    server.commands.flow = list(flow_args)
    job_id = ok(runner.invoke(app, ["job", "start", "scoring"])).stdout.strip()
    if wait is not None:
        with server.client() as client:
            wait_job(client, job_id, wait)
    return job_id


def unused_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"


# ---------------------------------------------------------------------------------------------- version, help


def test_version_prints_the_package_version() -> None:
    from importlib.metadata import version

    result = ok(CliRunner().invoke(app, ["--version"]))
    assert result.stdout == f"modelops {version('modelops')}\n"


@pytest.mark.parametrize("command", [[], ["job"], ["job", "list"], ["serve"], ["ir", "validate"], ["flow"]])
def test_dash_h_is_help_everywhere(command: list[str]) -> None:
    result = ok(CliRunner().invoke(app, [*command, "-h"]))
    assert "Usage: modelops" in result.stdout and "--help" in result.stdout


# ---------------------------------------------------------------------------------------------- job id prefixes


def test_show_cancel_and_logs_accept_the_start_of_a_job_id(runner: CliRunner, server: Server, finished: str) -> None:
    short = finished[:8]
    detail = json.loads(ok(runner.invoke(app, ["job", "show", short, "--json"])).stdout)
    assert detail["id"] == finished
    shown = ok(runner.invoke(app, ["job", "show", finished[:13].upper()])).stdout  # with its hyphen, in capitals
    assert re.search(rf"^job\s+{finished}\s*$", shown, re.MULTILINE), shown
    assert " uninstall: " in ok(runner.invoke(app, ["job", "logs", short])).stdout
    refused = runner.invoke(app, ["job", "cancel", short])
    assert refused.exit_code == 1
    assert refused.stderr == (
        f"error: cancelling job {short}: job {finished} is SUCCEEDED: a finished job cannot be cancelled\n"
    )

    running = start(runner, server, "--lines", "2")
    with server.client() as client:
        wait_job(client, running, JobState.RUNNING)
        cancelled = ok(runner.invoke(app, ["job", "cancel", running[:6]])).stdout
        assert cancelled.startswith(f"job {running}: CANCELLING")
        wait_job(client, running, {JobState.CANCELLED, JobState.FAILED})


def test_a_prefix_that_matches_no_job_or_is_too_short_is_one_error_line(runner: CliRunner, finished: str) -> None:
    missing = uuid.uuid4().hex[:12]
    result = runner.invoke(app, ["job", "show", missing])
    assert result.exit_code == 1
    assert result.stderr == f"error: reading job {missing}: no job has an id starting with '{missing}'\n"
    short = runner.invoke(app, ["job", "show", finished[:3]])
    assert short.exit_code == 1
    assert short.stderr == (
        f"error: reading job {finished[:3]}: not a job id: '{finished[:3]}' (give a job id, or at least its "
        "first 4 hex digits)\n"
    )


# ---------------------------------------------------------------------------------------------- output formats


def test_job_list_prints_json_yaml_names_or_a_wide_table(runner: CliRunner, finished: str) -> None:
    as_json = json.loads(ok(runner.invoke(app, ["job", "list", "-o", "json"])).stdout)
    assert finished in [item["id"] for item in as_json["items"]]
    assert json.loads(ok(runner.invoke(app, ["job", "list", "--json"])).stdout)["items"] == as_json["items"]
    as_yaml = yaml.safe_load(ok(runner.invoke(app, ["job", "list", "-o", "yaml"])).stdout)
    assert [item["id"] for item in as_yaml["items"]] == [item["id"] for item in as_json["items"]]
    names = ok(runner.invoke(app, ["job", "list", "-o", "name"])).stdout.splitlines()
    assert names == [item["id"] for item in as_json["items"]]
    wide = ok(runner.invoke(app, ["job", "list", "-o", "WIDE", "--state", "Succeeded"])).stdout
    header, *rows = wide.splitlines()
    assert header.split() == [
        "ID", "PIPELINE", "STATE", "TASK", "CREATED", "STARTED", "DURATION", "READ", "WRITTEN", "FAILED", "BACKEND",
        "REASON", "MESSAGE",
    ]  # fmt: skip
    row = next(line for line in rows if finished in line)
    assert re.search(r"SUCCEEDED\s+uninstall\s+.*\s+\d\d:\d\d\s+0\s+0\s+0\s+local\s+Completed", row), row


def test_tables_in_a_pipe_are_plain_and_no_headers_leaves_out_the_header(runner: CliRunner, finished: str) -> None:
    table = ok(runner.invoke(app, ["job", "list"])).stdout
    assert table.splitlines()[0].split() == ["ID", "PIPELINE", "STATE", "TASK", "CREATED", "REASON"]
    assert not set(table) & set("─━│┃╭╮╰╯┏┓┗┛\x1b"), table  # no lines drawn, no colour codes
    bare = ok(runner.invoke(app, ["job", "list", "--no-headers"])).stdout
    assert bare.splitlines() == table.splitlines()[1:]
    pipelines = ok(runner.invoke(app, ["pipeline", "list", "--no-headers", "-o", "wide"])).stdout
    assert pipelines.split()[0] == "scoring" and len(pipelines.split()[3]) == 64  # the whole digest when wide


def test_job_list_search_finds_jobs_by_text_in_any_case(runner: CliRunner, finished: str) -> None:
    for text in ("completed", "SCORING", finished[:8]):
        names = ok(runner.invoke(app, ["job", "list", "--search", text, "-o", "name"])).stdout.splitlines()
        assert finished in names, text
    nothing = ok(runner.invoke(app, ["job", "list", "--search", "no-job-says-this"]))
    assert nothing.stdout == "" and "no jobs match" in nothing.stderr


def test_pipeline_list_prints_names_json_or_yaml(runner: CliRunner, finished: str) -> None:
    assert ok(runner.invoke(app, ["pipeline", "list", "-o", "name"])).stdout == "scoring\n"
    listed = json.loads(ok(runner.invoke(app, ["pipeline", "list", "-o", "json"])).stdout)
    assert [p["name"] for p in listed] == ["scoring"]
    assert yaml.safe_load(ok(runner.invoke(app, ["pipeline", "list", "-o", "yaml"])).stdout) == listed


def test_an_unknown_output_format_or_watching_from_a_cursor_is_a_usage_error(runner: CliRunner) -> None:
    result = runner.invoke(app, ["job", "list", "-o", "table"])
    assert result.exit_code == 2 and "'table' is not one of" in result.stderr
    watching = runner.invoke(app, ["job", "list", "--watch", "--cursor", "abc"])
    assert watching.exit_code == 2
    assert watching.stderr == "error: --watch follows the newest jobs: it takes no --cursor\n"


# ---------------------------------------------------------------------------------------------- watch


def test_job_list_watch_prints_the_list_again_when_a_job_changes_and_ends_with_ctrl_c(
    runner: CliRunner, server: Server, finished: str
) -> None:
    env = {**os.environ, "MODELOPS_SERVER": server.url}
    env.pop("MODELOPS_TOKEN", None)
    process = subprocess.Popen(
        [sys.executable, "-c", "from scheduler.cli import app; app()", "job", "list", "--watch"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in process.stdout or ()], daemon=True).start()

    printed: list[str] = []

    def wait_for(pattern: str) -> None:
        deadline = time.monotonic() + 30  # a safety net, not a timing assertion
        while time.monotonic() < deadline:
            try:
                printed.append(lines.get(timeout=1))
                if re.search(pattern, printed[-1]):
                    return
            except queue.Empty:
                assert process.poll() is None, process.communicate()
        raise AssertionError(f"never printed {pattern!r}: {''.join(printed)}")

    try:
        wait_for(rf"^{finished}\s.*SUCCEEDED")
        job_id = start(runner, server, "--run-for", "0.5", "--complete", "succeeded")
        wait_for(rf"^{job_id}\s.*SUCCEEDED")  # the list was printed again with the new job, until it ended
        assert sum(line.startswith("ID ") for line in printed) >= 2, printed
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=30) == 0
    finally:
        process.kill()
        process.wait()
        stderr = process.stderr.read() if process.stderr else ""
        for stream in (process.stdout, process.stderr):
            if stream is not None:
                stream.close()
    assert "Traceback" not in stderr, stderr


# ---------------------------------------------------------------------------------------------- no server


def test_read_commands_read_the_home_when_no_server_answers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "home"
    with running_server(home) as server:
        runner = CliRunner(env={"MODELOPS_SERVER": server.url, "MODELOPS_TOKEN": None})
        ok(runner.invoke(app, ["pipeline", "deploy", str(bundle_with_model(tmp_path / "bundle"))]))
        job_id = start(runner, server, "--run-for", "0.1", "--complete", "succeeded", wait=JobState.SUCCEEDED)
        online = {
            "show": ok(runner.invoke(app, ["job", "show", job_id, "--json"])).stdout,
            "list": ok(runner.invoke(app, ["job", "list", "-o", "json"])).stdout,
            "pipelines": ok(runner.invoke(app, ["pipeline", "list", "-o", "json"])).stdout,
            "logs": ok(runner.invoke(app, ["job", "logs", job_id])).stdout,
        }
    database = home / "modelops.db"
    before = database.read_bytes()
    url = unused_url()
    monkeypatch.setattr("scheduler.cli.DEFAULT_SERVER", url)
    offline = CliRunner(env=home_env(home))
    shown = ok(offline.invoke(app, ["job", "show", job_id[:8], "--json"]))
    assert shown.stdout == online["show"]
    assert shown.stderr == f"no scheduler at {url}: reading {database} directly (read-only)\n"
    assert ok(offline.invoke(app, ["job", "list", "-o", "json"])).stdout == online["list"]
    assert ok(offline.invoke(app, ["pipeline", "list", "-o", "json"])).stdout == online["pipelines"]
    assert ok(offline.invoke(app, ["job", "logs", job_id])).stdout == online["logs"]
    assert database.read_bytes() == before  # read-only: not even a migration or a recovery
    # what needs a server still says how to get one
    refused = offline.invoke(app, ["job", "cancel", job_id])
    assert refused.exit_code == 1 and "start one with `modelops serve`" in refused.stderr


def test_read_commands_ask_the_scheduler_that_holds_the_home_when_none_answers_at_the_default_address(
    server: Server, finished: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = unused_url()
    monkeypatch.setattr("scheduler.cli.DEFAULT_SERVER", url)
    result = ok(CliRunner(env=home_env(server.home)).invoke(app, ["job", "show", finished[:8], "--json"]))
    assert json.loads(result.stdout)["id"] == finished
    assert result.stderr == (
        f"no scheduler at {url}: using the one that holds {server.home} (pid {os.getpid()} {server.url})\n"
    )


def test_an_ambiguous_job_id_prefix_is_refused_naming_the_jobs_it_matches(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "home"
    with running_server(home) as server:
        runner = CliRunner(env={"MODELOPS_SERVER": server.url, "MODELOPS_TOKEN": None})
        ok(runner.invoke(app, ["pipeline", "deploy", str(bundle_with_model(tmp_path / "bundle"))]))
    engine = create_engine(f"sqlite:///{home / 'modelops.db'}")
    store = JobStore(engine)
    version = store.get_version("scoring")
    twins = [uuid.UUID("274541d4-0000-4000-8000-000000000001"), uuid.UUID("274541d4-1111-4000-8000-000000000002")]
    for twin in twins:
        store.create_job(version, backend="local", token_hash=hash_token(str(twin)), job_id=twin)
    engine.dispose()
    monkeypatch.setattr("scheduler.cli.DEFAULT_SERVER", unused_url())
    offline = CliRunner(env=home_env(home))
    result = offline.invoke(app, ["job", "show", "274541d4"])
    assert result.exit_code == 1
    assert result.stderr.splitlines()[-1] == (
        f"error: reading job 274541d4: '274541d4' is the start of several job ids ({twins[1]}, {twins[0]}): "
        "give more of the id"
    )
    assert str(twins[1]) in ok(offline.invoke(app, ["job", "show", "274541d4-1"])).stdout


def test_without_a_server_or_a_home_database_the_cli_says_how_to_get_a_server(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = unused_url()
    monkeypatch.setattr("scheduler.cli.DEFAULT_SERVER", url)
    result = CliRunner(env=home_env(tmp_path)).invoke(app, ["job", "list"])
    assert result.exit_code == 1
    assert result.stderr == f"error: no scheduler at {url}: start one with `modelops serve` or set MODELOPS_SERVER\n"
    assert not (tmp_path / "modelops.db").exists()


def home_env(home: Path) -> dict[str, str | None]:
    return {
        "MODELOPS_SERVER": None,
        "MODELOPS_TOKEN": None,
        "MODELOPS_HOME": str(home),
        "MODELOPS_SCHEDULER_HOME": None,
        "MODELOPS_SCHEDULER_DATABASE_URL": None,
    }
