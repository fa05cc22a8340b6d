"""`modelops pipeline|job` against a real scheduler on a real port (uvicorn in a thread, SQLite, local backend
running the small test programs of `procs/`), through typer's CliRunner."""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import tarfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from api_kit import READ_TOKEN, WRITE_TOKEN
from cli_kit import Server, running_server, wait_job, write_bundle
from click.testing import Result
from typer.testing import CliRunner

from scheduler.cli import app
from scheduler.states import JobState

UUID_LINE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\n$")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with running_server(tmp_path_factory.mktemp("home")) as running:
        yield running


@pytest.fixture
def runner(server: Server) -> CliRunner:
    return CliRunner(env={"MODELOPS_SERVER": server.url, "MODELOPS_TOKEN": None})


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    return write_bundle(tmp_path / "bundle")


@pytest.fixture
def deployed(runner: CliRunner, bundle: Path) -> str:
    """The `scoring` pipeline deployed; returns its name."""
    result = runner.invoke(app, ["pipeline", "deploy", str(bundle)])
    assert result.exit_code == 0, result.output
    return "scoring"


def ok(result: Result) -> Result:
    assert result.exit_code == 0, f"exit {result.exit_code}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    return result


def start(runner: CliRunner, server: Server, *flow_args: str, params: tuple[str, ...] = ()) -> str:
    """`modelops job start scoring`, the next job's flow behaving as `flow_args`; returns the printed id."""
    server.commands.flow = list(flow_args)
    args = ["job", "start", "scoring"]
    for param in params:
        args += ["--param", param]
    result = ok(runner.invoke(app, args))
    assert UUID_LINE.match(result.stdout), result.stdout
    return result.stdout.strip()


# ---------------------------------------------------------------------------------------------- pipeline


def test_deploying_a_folder_creates_a_version_and_deploying_it_again_finds_it(
    runner: CliRunner, tmp_path: Path
) -> None:
    folder = write_bundle(tmp_path / "b", name="deploy-twice")
    first = ok(runner.invoke(app, ["pipeline", "deploy", str(folder)]))
    assert re.match(r"^pipeline deploy-twice version 1: created; digest [0-9a-f]{64}\n$", first.stdout)
    again = ok(runner.invoke(app, ["pipeline", "deploy", str(folder)]))
    assert "pipeline deploy-twice version 1: existing" in again.stdout


def test_deploy_uploads_the_bundles_relative_artifacts_once_and_a_changed_artifact_is_a_new_version(
    runner: CliRunner, server: Server, tmp_path: Path
) -> None:
    folder = write_bundle(tmp_path / "b", name="with-artifact")
    artifact = folder / "artifacts" / "m1.onnx"
    digest = hashlib.sha256(artifact.read_bytes()).hexdigest()
    first = ok(runner.invoke(app, ["pipeline", "deploy", str(folder)]))
    assert f"model m1: artifacts/m1.onnx sha256 {digest[:12]} uploaded (file)" in first.stderr
    assert (server.home / "artifacts" / "sha256" / digest).read_bytes() == artifact.read_bytes()
    again = ok(runner.invoke(app, ["pipeline", "deploy", str(folder)]))
    assert "already on the server" in again.stderr and "with-artifact version 1: existing" in again.stdout
    artifact.write_bytes(b"retrained")  # the IR names the bytes: other bytes, another version
    retrained = ok(runner.invoke(app, ["pipeline", "deploy", str(folder)]))
    assert "uploaded (file)" in retrained.stderr and "with-artifact version 2: created" in retrained.stdout


def test_a_relative_artifact_that_does_not_match_its_declared_sha256_is_not_deployed(
    runner: CliRunner, tmp_path: Path
) -> None:
    folder = write_bundle(tmp_path / "b", name="wrong-digest")
    pipeline = folder / "pipeline.yaml"
    pipeline.write_text(
        pipeline.read_text().replace("uri: artifacts/m1.onnx", f"uri: artifacts/m1.onnx\n  sha256: {'ab' * 32}")
    )
    result = runner.invoke(app, ["pipeline", "deploy", str(folder)])
    assert result.exit_code == 1
    assert result.stderr.startswith(f"error: deploying {folder}: {folder}: model m1: sha256 mismatch for ")
    assert f"the Model declares {'ab' * 32}, the file has " in result.stderr
    assert "wrong-digest" not in ok(runner.invoke(app, ["pipeline", "list"])).stdout


def test_a_relative_uri_with_no_file_beside_the_bundle_is_left_for_the_servers_model_store(
    runner: CliRunner, tmp_path: Path
) -> None:
    folder = write_bundle(tmp_path / "b", name="no-artifact")
    (folder / "artifacts" / "m1.onnx").unlink()
    result = ok(runner.invoke(app, ["pipeline", "deploy", str(folder)]))
    assert (
        f"model m1: no artifact at {folder / 'artifacts' / 'm1.onnx'}: uri 'artifacts/m1.onnx' left for"
        in result.stderr
    )


def test_a_single_file_and_a_tarball_deploy_the_same_version_as_the_folder(runner: CliRunner, tmp_path: Path) -> None:
    folder = write_bundle(tmp_path / "b", name="three-forms")
    ok(runner.invoke(app, ["pipeline", "deploy", str(folder)]))
    single = ok(runner.invoke(app, ["pipeline", "deploy", str(folder / "pipeline.yaml"), "--json"]))
    assert json.loads(single.stdout)["version"] == 1 and json.loads(single.stdout)["created"] is False
    tarball = folder / "bundle.tar.gz"  # next to the artifacts its relative uris name
    with tarfile.open(tarball, "w:gz") as archive:
        archive.add(folder / "pipeline.yaml", arcname="bundle/pipeline.yaml")
    packed = ok(runner.invoke(app, ["pipeline", "deploy", str(tarball)]))
    assert "three-forms version 1: existing" in packed.stdout


def test_invalid_ir_prints_every_issue_with_file_document_and_path(runner: CliRunner, tmp_path: Path) -> None:
    folder = write_bundle(tmp_path / "bad", name="broken")
    text = (folder / "pipeline.yaml").read_text()
    text = text.replace("model: m1", "model: m2").replace("runtime: onnx", "runtime: abacus")
    (folder / "pipeline.yaml").write_text(text)
    result = runner.invoke(app, ["pipeline", "deploy", str(folder)])
    assert result.exit_code == 1
    lines = result.stderr.splitlines()
    assert any(line.startswith("pipeline.yaml: ScoringFlow f1: spec.steps[0].score.model: ") for line in lines), lines
    assert any(line.startswith("pipeline.yaml: Model m1: spec.runtime: ") for line in lines), lines
    assert lines[-1].startswith("error: deploying ") and "problems found in the IR" in lines[-1]
    assert result.stdout == ""


def test_deploying_a_path_that_does_not_exist_says_so_without_asking_the_server(
    runner: CliRunner, tmp_path: Path
) -> None:
    result = runner.invoke(app, ["pipeline", "deploy", str(tmp_path / "nothing")])
    assert result.exit_code == 1
    assert (
        result.stderr.strip()
        == f"error: deploying {tmp_path / 'nothing'}: {tmp_path / 'nothing'}: no such file or directory"
    )


def test_pipeline_list_shows_each_pipeline_with_its_latest_version(runner: CliRunner, deployed: str) -> None:
    table = ok(runner.invoke(app, ["pipeline", "list"])).stdout
    assert re.search(rf"^\s*{deployed}\s+1\s+1\s+[0-9a-f]{{12}}\s", table, re.MULTILINE), table
    listed = json.loads(ok(runner.invoke(app, ["pipeline", "list", "--json"])).stdout)
    assert deployed in [p["name"] for p in listed]


# ---------------------------------------------------------------------------------------------- job start


def test_job_start_prints_only_the_job_id_and_passes_the_parameters(
    runner: CliRunner, server: Server, deployed: str
) -> None:
    job_id = start(runner, server, "--run-for", "0.2", "--complete", "succeeded", params=("threshold=0.9",))
    with server.client() as client:
        job = wait_job(client, job_id, JobState.SUCCEEDED)
    assert job.parameters == {"threshold": "0.9"}
    assert job.pipeline == deployed and job.version == 1


def test_the_same_idempotency_key_gives_the_same_job(runner: CliRunner, server: Server, deployed: str) -> None:
    server.commands.flow = ["--run-for", "0.2", "--complete", "succeeded"]
    key = f"cli-{uuid.uuid4()}"
    first = ok(runner.invoke(app, ["job", "start", deployed, "--idempotency-key", key])).stdout
    second = ok(runner.invoke(app, ["job", "start", deployed, "--idempotency-key", key])).stdout
    assert first == second
    with server.client() as client:
        wait_job(client, first.strip(), JobState.SUCCEEDED)


def test_a_parameter_without_an_equals_sign_is_a_usage_error(runner: CliRunner) -> None:
    result = runner.invoke(app, ["job", "start", "scoring", "--param", "threshold"])
    assert result.exit_code == 2
    assert result.stderr.strip() == "error: --param expects NAME=VALUE, got 'threshold'"


def test_a_parameter_of_the_wrong_type_is_refused_with_the_servers_details(runner: CliRunner, deployed: str) -> None:
    result = runner.invoke(app, ["job", "start", deployed, "--param", "threshold=high", "--param", "nope=1"])
    assert result.exit_code == 1
    lines = result.stderr.splitlines()
    assert "<parameters>: threshold: expected a number for parameter of type 'number' (got 'high')" in lines
    assert any(line.startswith("<parameters>: nope: unknown parameter 'nope'") for line in lines), lines
    assert lines[-1].startswith(f"error: starting a job of {deployed}: 2 problems")


def test_an_unknown_pipeline_is_one_error_line(runner: CliRunner) -> None:
    result = runner.invoke(app, ["job", "start", "no-such-pipeline"])
    assert result.exit_code == 1
    assert result.stderr.count("\n") == 1
    assert (
        result.stderr.startswith("error: starting a job of no-such-pipeline: ")
        and "no-such-pipeline" in (result.stderr.split(": ", 2)[2])
    )


# ---------------------------------------------------------------------------------------------- list, show


def test_job_list_shows_the_newest_jobs_and_filters_by_state(runner: CliRunner, server: Server, deployed: str) -> None:
    job_id = start(runner, server, "--run-for", "0.1", "--complete", "succeeded")
    with server.client() as client:
        wait_job(client, job_id, JobState.SUCCEEDED)
    table = ok(runner.invoke(app, ["job", "list", "--limit", "5"])).stdout
    row = next(line for line in table.splitlines() if job_id in line)
    assert re.search(rf"{job_id}\s+{deployed} v1\s+SUCCEEDED\s+uninstall\s+\S+ \S+\s+Completed", row), row
    failed = ok(runner.invoke(app, ["job", "list", "--state", "failed", "--json"])).stdout
    assert job_id not in failed
    succeeded = json.loads(ok(runner.invoke(app, ["job", "list", "--state", "SUCCEEDED", "--json"])).stdout)
    assert job_id in [item["id"] for item in succeeded["items"]]
    assert ok(runner.invoke(app, ["job", "list", "--pipeline", "no-such-pipeline"])).stderr == "no jobs match\n"


def test_an_unknown_state_is_a_usage_error(runner: CliRunner) -> None:
    assert runner.invoke(app, ["job", "list", "--state", "DONE"]).exit_code == 2


def test_job_show_gives_state_reason_timestamps_progress_and_events(
    runner: CliRunner, server: Server, deployed: str
) -> None:
    job_id = start(runner, server, "--run-for", "0.1", "--complete", "failed", "--message", "sink unreachable")
    with server.client() as client:
        wait_job(client, job_id, JobState.FAILED)
    shown = ok(runner.invoke(app, ["job", "show", job_id])).stdout
    shown = "\n".join(line.rstrip() for line in shown.splitlines())
    assert re.search(r"^state\s+FAILED$", shown, re.MULTILINE), shown
    assert re.search(r"^reason\s+ScoringFailed$", shown, re.MULTILINE), shown
    assert re.search(r"^completion\s+failed: sink unreachable$", shown, re.MULTILINE), shown
    assert re.search(r"^records\s+read 0  written 0  failed 0  filtered 0$", shown, re.MULTILINE), shown
    for label in ("created", "started", "finished"):
        assert re.search(rf"^{label}\s+\d{{4}}-\d\d-\d\d \d\d:\d\d:\d\d$", shown, re.MULTILINE), shown
    events = shown[shown.index("events") :]
    assert "created PENDING" in events and "PENDING -> INSTALLING" in events
    assert "INSTALLING -> RUNNING" in events and "RUNNING -> FAILED" in events
    detail = json.loads(ok(runner.invoke(app, ["job", "show", job_id, "--json"])).stdout)
    assert detail["events"][0]["from"] is None and detail["events"][-1]["to"] == "FAILED"


def test_job_show_lists_a_restart_of_a_component_as_an_event_of_the_run(
    runner: CliRunner, server: Server, deployed: str, tmp_path: Path
) -> None:
    done = tmp_path / "done"
    job_id = start(runner, server, "--complete", "succeeded", "--complete-when-file", str(done))
    with server.client() as client:
        wait_job(client, job_id, JobState.RUNNING)
        ref = client.get_job(uuid.UUID(job_id)).backend_ref
        assert ref is not None
        flow = next(p for p in ref["processes"] if p["name"] == "f1")
        os.killpg(flow["pid"], signal.SIGKILL)
        deadline = time.monotonic() + 30  # a safety net: the restart comes after a back-off of 1 s
        while not any(e.reason == "FlowRestarted" for e in client.get_job(uuid.UUID(job_id)).events):
            assert time.monotonic() < deadline, "the flow was not restarted"
            time.sleep(0.05)
        done.touch()
        wait_job(client, job_id, JobState.SUCCEEDED)
    shown = ok(runner.invoke(app, ["job", "show", job_id])).stdout
    row = next(line for line in shown.splitlines() if "FlowRestarted" in line)
    assert re.search(r"\sevent\s+wait\s+FlowRestarted\s+flow f1 was killed by SIGKILL; restarted after 1s", row), row
    assert re.search(r"\stask change\s+uninstall\s", shown), shown  # a task change is still one


def test_showing_a_job_that_does_not_exist_is_one_error_line(runner: CliRunner) -> None:
    missing = str(uuid.uuid4())
    result = runner.invoke(app, ["job", "show", missing])
    assert result.exit_code == 1
    assert result.stderr == f"error: reading job {missing}: no job {missing}\n"
    bad = runner.invoke(app, ["job", "show", "not-a-uuid"])
    assert bad.exit_code == 1 and "not a job id: 'not-a-uuid'" in bad.stderr


# ---------------------------------------------------------------------------------------------- cancel, logs


def test_cancel_stops_a_running_job_and_a_finished_job_cannot_be_cancelled(
    runner: CliRunner, server: Server, deployed: str
) -> None:
    # Runs until stopped and ignores SIGTERM: the job stays CANCELLING for the grace period (5 s) of uninstall.
    job_id = start(runner, server, "--lines", "2", "--ignore-sigterm")
    with server.client() as client:
        wait_job(client, job_id, JobState.RUNNING)
        cancelled = ok(runner.invoke(app, ["job", "cancel", job_id])).stdout
        assert re.match(rf"^job {job_id}: CANCELLING \(task (wait|uninstall)\)\n$", cancelled), cancelled
        again = ok(runner.invoke(app, ["job", "cancel", job_id])).stdout  # idempotent while CANCELLING
        assert again.startswith(f"job {job_id}: CANCELLING")
        job = wait_job(client, job_id, {JobState.CANCELLED, JobState.FAILED})
    assert job.state is JobState.CANCELLED, job.message
    again = runner.invoke(app, ["job", "cancel", job_id])
    assert again.exit_code == 1
    assert again.stderr == (
        f"error: cancelling job {job_id}: job {job_id} is CANCELLED: a finished job cannot be cancelled\n"
    )


def test_logs_print_each_task_in_order_or_one_task(runner: CliRunner, server: Server, deployed: str) -> None:
    job_id = start(runner, server, "--run-for", "0.1", "--complete", "succeeded")
    with server.client() as client:
        wait_job(client, job_id, JobState.SUCCEEDED)
    text = ok(runner.invoke(app, ["job", "logs", job_id])).stdout
    install, wait, uninstall = (
        text.index(marker) for marker in (f" install: job {job_id}", " wait: watching", " uninstall: the run ended")
    )
    assert install < wait < uninstall, text
    only = ok(runner.invoke(app, ["job", "logs", job_id, "--task", "uninstall"])).stdout
    assert " uninstall: the run ended with Completed" in only and " install: job" not in only


def test_logs_show_the_components_output_prefixed_and_component_selects_and_list_names_them(
    runner: CliRunner, server: Server, deployed: str
) -> None:
    job_id = start(runner, server, "--run-for", "0.1", "--complete", "succeeded", "--lines", "2")
    with server.client() as client:
        wait_job(client, job_id, JobState.SUCCEEDED)
    names = ok(runner.invoke(app, ["job", "logs", job_id, "--list"])).stdout.splitlines()
    assert names == ["install", "wait", "uninstall", "service/m1", "flow/f1"]
    lines = ok(runner.invoke(app, ["job", "logs", job_id])).stdout.splitlines()
    assert {line.split(" ", 1)[0] for line in lines} == {f"[{name}]" for name in names}
    assert "[flow/f1] f1 line 2" in lines  # the fake flow prints without timestamps: under the line before it
    only = ok(runner.invoke(app, ["job", "logs", job_id, "-c", "f1", "--component", "service/m1"])).stdout
    assert {line.split(" ", 1)[0] for line in only.splitlines()} == {"[flow/f1]", "[service/m1]"}
    unknown = runner.invoke(app, ["job", "logs", job_id, "-c", "f2"])
    assert unknown.exit_code == 1
    assert "'f2' names no log component" in unknown.stderr and "flow/f1" in unknown.stderr


def test_following_the_logs_streams_until_the_job_ends(runner: CliRunner, server: Server, deployed: str) -> None:
    job_id = start(runner, server, "--run-for", "1.0", "--complete", "succeeded")
    result = ok(runner.invoke(app, ["job", "logs", job_id, "--follow"]))
    with server.client() as client:
        assert client.get_job(job_id).state is JobState.SUCCEEDED  # following returned only once it had ended
    assert "the job is SUCCEEDED" in result.stdout, result.stdout


# ---------------------------------------------------------------------------------------------- connection


def test_without_a_server_configured_the_cli_says_how_to_get_one(
    monkeypatch: pytest.MonkeyPatch, unused_port_url: str, tmp_path: Path
) -> None:
    monkeypatch.setattr("scheduler.cli.DEFAULT_SERVER", unused_port_url)
    env = {"MODELOPS_SERVER": None, "MODELOPS_HOME": str(tmp_path), "MODELOPS_SCHEDULER_HOME": None}
    result = CliRunner(env=env).invoke(app, ["job", "list"])  # an empty home: nothing to read without a server
    assert result.exit_code == 1
    assert result.stderr == (
        f"error: no scheduler at {unused_port_url}: start one with `modelops serve` or set MODELOPS_SERVER\n"
    )


def test_an_unreachable_server_given_explicitly_is_named(unused_port_url: str) -> None:
    result = CliRunner().invoke(app, ["pipeline", "list", "--server", unused_port_url])
    assert result.exit_code == 1
    assert result.stderr.startswith(f"error: no scheduler at {unused_port_url}: ")
    assert result.stderr.count("\n") == 1


@pytest.fixture
def unused_port_url() -> str:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


# ---------------------------------------------------------------------------------------------- tokens


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with running_server(tmp_path_factory.mktemp("guarded"), tokens=True) as running:
        yield running


def test_a_server_with_tokens_refuses_a_missing_token_and_a_token_without_the_scope(
    guarded: Server, tmp_path: Path
) -> None:
    runner = CliRunner(env={"MODELOPS_SERVER": guarded.url, "MODELOPS_TOKEN": None})
    bundle = str(write_bundle(tmp_path / "b"))
    anonymous = runner.invoke(app, ["pipeline", "deploy", bundle])
    assert anonymous.exit_code == 1
    assert anonymous.stderr.startswith(f"error: deploying {bundle}: this endpoint needs a bearer token")
    assert anonymous.stderr.rstrip().endswith("(give a token with --token or MODELOPS_TOKEN)")
    reader = runner.invoke(app, ["pipeline", "deploy", bundle, "--token", READ_TOKEN])
    assert reader.exit_code == 1
    assert "token 'reader' has the 'read' scope; this needs 'write'" in reader.stderr
    writer = runner.invoke(app, ["pipeline", "deploy", bundle], env={"MODELOPS_TOKEN": WRITE_TOKEN})
    assert writer.exit_code == 0, writer.stderr
    listed = runner.invoke(app, ["pipeline", "list", "--json"], env={"MODELOPS_TOKEN": READ_TOKEN})
    assert listed.exit_code == 0 and "scoring" in listed.stdout
