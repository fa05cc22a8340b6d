"""`modelops serve`, `db upgrade|check` and `token new|hash`; and the client's models against the API's."""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from pydantic import BaseModel
from store_kit import wipe_postgres
from typer.testing import CliRunner

from scheduler import client
from scheduler.api import models as api
from scheduler.cli import app, ui_url
from scheduler.db import head_revision
from scheduler.embedded import HomeLock
from scheduler.settings import SchedulerSettings

ROOT = Path(__file__).resolve().parents[2]


def env_for(home: Path, **more: str | None) -> dict[str, str | None]:
    return {
        "MODELOPS_HOME": str(home),
        "MODELOPS_SCHEDULER_HOME": None,
        "MODELOPS_SCHEDULER_DATABASE_URL": None,
        "MODELOPS_SCHEDULER_TOKENS": None,
        "MODELOPS_SCHEDULER_HOST": None,
        "MODELOPS_SCHEDULER_PORT": None,
        **more,
    }


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


# ---------------------------------------------------------------------------------------------- db


def test_db_upgrade_migrates_once_and_says_from_what_to_what(empty_database_url: str) -> None:
    runner = CliRunner(env={"MODELOPS_SCHEDULER_DATABASE_URL": empty_database_url})
    before = runner.invoke(app, ["db", "check"])
    assert before.exit_code == 1 and "has no scheduler schema: run `modelops db upgrade`" in before.stderr
    first = runner.invoke(app, ["db", "upgrade"])
    assert first.exit_code == 0, first.output
    assert first.stdout.endswith(f": upgraded from an empty database to {head_revision()}\n")
    again = runner.invoke(app, ["db", "upgrade"])
    assert again.exit_code == 0 and again.stdout.endswith(f": already at revision {head_revision()}\n")
    after = runner.invoke(app, ["db", "check"])
    assert after.exit_code == 0 and after.stdout.endswith(f"is at revision {head_revision()}\n")


def test_db_upgrade_of_an_unreachable_database_is_one_error_line() -> None:
    url = f"postgresql://nobody@127.0.0.1:{free_port()}/modelops"
    result = CliRunner(env={"MODELOPS_SCHEDULER_DATABASE_URL": url}).invoke(app, ["db", "upgrade"])
    assert result.exit_code == 1
    assert result.stderr.startswith("error: cannot reach the scheduler database (postgresql+psycopg://nobody@")
    assert result.stderr.count("\n") == 1


# ---------------------------------------------------------------------------------------------- serve


@pytest.mark.postgres
def test_serve_refuses_an_unmigrated_postgresql_database_and_says_what_to_run(
    tmp_path: Path, postgres_database: str
) -> None:
    wipe_postgres(postgres_database)
    env = env_for(tmp_path, MODELOPS_SCHEDULER_DATABASE_URL=postgres_database)
    result = CliRunner(env=env).invoke(app, ["serve", "--port", str(free_port())])
    assert result.exit_code == 1
    assert result.stderr.startswith("error: cannot start: the database postgresql+psycopg://")
    assert result.stderr.endswith(" has no scheduler schema: run `modelops db upgrade`\n")
    assert result.stderr.count("\n") == 1


@pytest.mark.postgres
def test_serve_with_migrate_upgrades_a_postgresql_database_first(tmp_path: Path, postgres_database: str) -> None:
    wipe_postgres(postgres_database)
    env = env_for(tmp_path, MODELOPS_SCHEDULER_DATABASE_URL=postgres_database)
    with serving(env, "--migrate") as url:
        assert httpx.get(f"{url}/readyz", timeout=5).status_code == 200
    assert CliRunner(env=env).invoke(app, ["db", "check"]).exit_code == 0


def test_the_web_ui_address_of_a_server_on_every_interface_is_on_loopback() -> None:
    assert ui_url("127.0.0.1", 8787) == "http://127.0.0.1:8787/ui"
    assert ui_url("0.0.0.0", 8787) == "http://127.0.0.1:8787/ui"
    assert ui_url("::", 9000) == "http://[::1]:9000/ui"
    assert ui_url("[::1]", 9000) == "http://[::1]:9000/ui"
    assert ui_url("modelops.internal", 80) == "http://modelops.internal:80/ui"


@contextmanager
def serving(env: dict[str, str | None], *args: str) -> Iterator[str]:
    """`modelops serve ARGS` in a process until it is ready; its URL. Stopped with SIGTERM at the end."""
    port = free_port()
    process_env = {key: value for key, value in {**os.environ, **env}.items() if value is not None}
    process = subprocess.Popen(
        [sys.executable, "-c", "from scheduler.cli import app; app()", "serve", "--port", str(port), *args],
        cwd=ROOT,
        env=process_env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30  # a safety net, not a timing assertion
        while not _ready(url):
            assert process.poll() is None, process.communicate()[1].decode()
            assert time.monotonic() < deadline, "the server did not become ready"
            time.sleep(0.1)
        yield url
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=30)
    finally:
        process.kill()


def _ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/readyz", timeout=1).status_code == 200
    except httpx.TransportError:
        return False


def test_serve_refuses_to_listen_beyond_loopback_without_tokens_and_says_how_to_make_one(tmp_path: Path) -> None:
    result = CliRunner(env=env_for(tmp_path)).invoke(app, ["serve", "--host", "0.0.0.0", "--port", str(free_port())])
    assert result.exit_code == 1
    assert result.stderr.startswith("error: cannot start: no API tokens are configured and the server would listen")
    assert "Make a token with `modelops token new NAME`" in result.stderr
    assert result.stderr.count("\n") == 1


def test_a_busy_port_is_one_error_line_before_the_database_is_touched(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = CliRunner(env=env_for(tmp_path)).invoke(app, ["serve", "--port", str(port)])
    assert result.exit_code == 1
    assert result.stderr == (
        f"error: cannot start: port {port} on 127.0.0.1 is in use (another `modelops serve`?): stop it, or choose "
        "another port with --port or MODELOPS_SCHEDULER_PORT\n"
    )
    assert not (tmp_path / "modelops.db").exists()  # nothing was created, migrated or recovered
    assert HomeLock.holder(tmp_path) is None


def test_a_bad_setting_names_its_variable(tmp_path: Path) -> None:
    result = CliRunner(env=env_for(tmp_path, MODELOPS_SCHEDULER_PORT="http")).invoke(app, ["serve"])
    assert result.exit_code == 1
    assert result.stderr.startswith("error: invalid setting MODELOPS_SCHEDULER_PORT: ")
    assert result.stderr.count("\n") == 1  # only the setting at fault, not the defaults computed from it
    option = CliRunner(env=env_for(tmp_path)).invoke(app, ["serve", "--port", "70000"])
    assert option.exit_code == 1 and option.stderr.startswith("error: invalid setting --port: ")


def test_several_workers_on_sqlite_are_refused_in_one_line(tmp_path: Path) -> None:
    result = CliRunner(env=env_for(tmp_path)).invoke(app, ["serve", "--workers", "2"])
    assert result.exit_code == 1
    assert result.stderr == (
        "error: invalid settings: workers=2 needs PostgreSQL (API workers wake the lifecycle engine with "
        "LISTEN/NOTIFY): use workers=1 with SQLite\n"
    )


def test_serve_creates_its_sqlite_database_runs_until_sigterm_and_holds_its_home_meanwhile(tmp_path: Path) -> None:
    env = env_for(tmp_path)
    assert not (tmp_path / "modelops.db").exists()  # a new home: `modelops serve` creates and migrates it
    port = free_port()
    process_env = {key: value for key, value in {**os.environ, **env}.items() if value is not None}
    process = subprocess.Popen(
        [sys.executable, "-c", "from scheduler.cli import app; app()", "serve", "--port", str(port)],
        cwd=ROOT,
        env=process_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert process.poll() is None, process.communicate()[1].decode()
            assert time.monotonic() < deadline, "the server did not become ready"
            time.sleep(0.1)
        ui = httpx.get(f"{url}/ui", timeout=5)  # the address it prints for the web UI
        assert ui.status_code == 307 and ui.headers["location"] == "/ui/jobs"
        listed = CliRunner(env={"MODELOPS_SERVER": url}).invoke(app, ["job", "list"])
        assert listed.exit_code == 0 and listed.stderr == "no jobs yet\n"
        assert HomeLock.holder(tmp_path) == f"pid {process.pid} {url}"
        second = CliRunner(env=env_for(tmp_path)).invoke(app, ["serve", "--port", str(free_port())])
        assert second.exit_code == 1 and f"another modelops scheduler is using {tmp_path}" in second.stderr
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=30)
    finally:
        process.kill()
    log = stderr.decode()
    # uvicorn shuts down gracefully, then re-raises the signal so the process ends "killed by SIGTERM" as expected
    assert process.returncode in (0, -signal.SIGTERM), log
    assert "Application shutdown complete." in log
    assert "no API tokens configured: accepting unauthenticated requests on loopback only" in log
    assert "scheduler ready: local backend" in log
    assert "migrated the database from empty to this version's schema" in log
    assert f"scheduler.cli: listening on {url} (stop with Ctrl-C or SIGTERM)" in log
    assert f"scheduler.cli: web UI: {url}/ui\n" in log
    assert HomeLock.holder(tmp_path) is None


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_the_servers_log_lines_carry_our_timestamp_in_text_or_one_json_object_each(tmp_path: Path, fmt: str) -> None:
    port = free_port()
    process_env = {k: v for k, v in {**os.environ, **env_for(tmp_path)}.items() if v is not None}
    command = [sys.executable, "-c", "from scheduler.cli import app; app()", "serve", "--port", str(port)]
    process = subprocess.Popen(
        [*command, "--log-format", fmt],
        cwd=ROOT,
        env=process_env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 30  # a safety net, not a timing assertion
        while not _ready(f"http://127.0.0.1:{port}"):
            assert process.poll() is None, process.communicate()[1].decode()
            assert time.monotonic() < deadline, "the server did not become ready"
            time.sleep(0.1)
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=30)
    finally:
        process.kill()
    lines = stderr.decode().splitlines()  # "migrated the database ..." (a new home) included
    stamp = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z"
    if fmt == "json":
        documents = [json.loads(line) for line in lines]
        assert all(re.fullmatch(stamp, d["ts"]) and {"level", "logger", "message"} <= set(d) for d in documents)
        messages = {d["message"] for d in documents}
        assert "migrated the database from empty to this version's schema" in messages
        assert any(m.startswith("scheduler ready: local backend") for m in messages), messages
        assert "Application shutdown complete." in messages
    else:
        assert lines and all(re.match(rf"^{stamp} [A-Z]+ [\w.]+: ", line) for line in lines), lines
        assert any(" INFO uvicorn.error: Application shutdown complete." in line for line in lines), lines


# ---------------------------------------------------------------------------------------------- tokens


def test_token_new_prints_a_token_and_the_entry_that_configures_it() -> None:
    result = CliRunner().invoke(app, ["token", "new", "ci", "--scope", "write"])
    assert result.exit_code == 0, result.output
    token_line, config_line = result.stdout.splitlines()
    assert token_line.startswith("MODELOPS_TOKEN=mo_")
    plaintext = token_line.split("=", 1)[1]
    entry = config_line.removeprefix("MODELOPS_SCHEDULER_TOKENS=")
    settings = SchedulerSettings(tokens=entry)
    found = settings.find_token(plaintext)
    assert found is not None and found.name == "ci" and found.scope == "write"


def test_token_new_refuses_a_bad_name_or_scope() -> None:
    assert CliRunner().invoke(app, ["token", "new", "-bad-"]).exit_code == 2
    assert CliRunner().invoke(app, ["token", "new", "ci", "--scope", "root"]).exit_code == 2


def test_token_hash_reads_the_token_from_stdin() -> None:
    result = CliRunner().invoke(app, ["token", "hash"], input="s3cr3t-t0ken\n")
    assert result.exit_code == 0
    assert result.stdout == hashlib.sha256(b"s3cr3t-t0ken").hexdigest() + "\n"
    assert CliRunner().invoke(app, ["token", "hash"], input="").exit_code == 2


# ---------------------------------------------------------------------------------------------- client models


@pytest.mark.parametrize(
    ("ours", "theirs"),
    [
        (client.Deployment, api.DeploymentOut),
        (client.Pipeline, api.PipelineOut),
        (client.VersionSummary, api.VersionSummary),
        (client.Job, api.JobOut),
        (client.JobDetail, api.JobDetail),
        (client.JobEvent, api.JobEventOut),
        (client.JobPage, api.JobPageOut),
        (client.Progress, api.ProgressOut),
        (client.Completion, api.CompletionOut),
    ],
    ids=lambda model: model.__name__,
)
def test_the_clients_models_have_the_fields_of_the_apis(ours: type[BaseModel], theirs: type[BaseModel]) -> None:
    def wire_names(model: type[BaseModel]) -> set[str]:
        return {field.alias or name for name, field in model.model_fields.items()}

    assert wire_names(ours) == wire_names(theirs)


def test_serve_refuses_an_unusable_job_token_secret_in_one_line(tmp_path: Path) -> None:
    env = env_for(tmp_path, MODELOPS_SCHEDULER_JOB_TOKEN_SECRET="short")
    assert CliRunner(env=env).invoke(app, ["db", "upgrade"]).exit_code == 0
    result = CliRunner(env=env).invoke(app, ["serve"])
    assert result.exit_code == 1
    assert result.stderr.startswith("error: cannot start: the job-token secret is unusable: ")
    assert result.stderr.count("\n") == 1
