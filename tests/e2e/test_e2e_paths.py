"""One rule for relative paths, end to end with real scoring services and flows (docs/scheduler.md, "Paths"):
a bundle's relative model artifacts travel with it into the server's artifact store, relative data paths
resolve against the data root (the bundle's folder for the embedded `modelops run`), a path that cannot
resolve is refused when the job is started, and an input that disappears later fails the job as InvalidInput."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import httpx
import pyarrow.csv as pacsv
import pytest
from e2e_kit import relative_digits_example, wait_terminal
from flow_kit import MODELOPS, Digits, digits_rows, write_digits_csv

import ir
from scheduler.client import ApiError, SchedulerClient
from scheduler.states import JobState

pytestmark = pytest.mark.slow


def test_modelops_run_of_a_bundle_from_another_folder_reads_and_writes_next_to_the_bundle(
    tmp_path: Path, digits: Digits
) -> None:
    bundle = relative_digits_example(tmp_path / "repo" / "examples", digits, rows=300)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("MODELOPS_SERVER", "MODELOPS_TOKEN", "MODELOPS_SCHEDULER_"))
    }
    env["MODELOPS_HOME"] = str(tmp_path / "home")
    # As `modelops run examples/digits` from the repository root: a relative bundle path, no --param at all.
    done = subprocess.run(
        [MODELOPS, "run", os.path.relpath(bundle, elsewhere)],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "model digits-rf: artifacts/digits-rf.joblib sha256" in done.stderr and "uploaded (file)" in done.stderr
    scored = bundle / "out" / "scored.csv"  # the `output` default, out/scored.csv, relative to the bundle
    assert pacsv.read_csv(scored).num_rows == 300
    assert not (elsewhere / "out").exists()


def test_a_job_started_later_by_another_client_finds_the_artifacts_the_deploy_uploaded(
    tmp_path: Path, digits: Digits, scheduler: SchedulerClient
) -> None:
    bundle = relative_digits_example(tmp_path / "laptop", digits, rows=10)
    deployment = scheduler.deploy(bundle)
    stored = httpx.get(f"{scheduler.server}/api/v1/pipelines/digits/versions/{deployment.version}").json()
    models = [doc for doc in stored["documents"] if doc["kind"] == "Model"]
    assert {ir.artifact_digest(m["spec"]["uri"]) for m in models} == {m["spec"]["sha256"] for m in models}
    shutil.rmtree(bundle)  # the deploying machine's files are gone: the job must not need them

    source = write_digits_csv(tmp_path / "elsewhere" / "in.csv", digits_rows(digits, 200))
    output = tmp_path / "elsewhere" / "out" / "scored.csv"
    with SchedulerClient(scheduler.server) as another:
        job = another.create_job("digits", parameters={"input": str(source), "output": str(output)})
        final = wait_terminal(another, job.id)
    assert final.state is JobState.SUCCEEDED, f"{final.reason}: {final.message}"
    assert pacsv.read_csv(output).num_rows == 200


def test_a_path_that_cannot_resolve_is_refused_at_start_naming_the_parameter_the_channel_and_the_path(
    tmp_path: Path, digits: Digits, scheduler: SchedulerClient
) -> None:
    scheduler.deploy(relative_digits_example(tmp_path / "b", digits, rows=10))
    before = len(scheduler.list_jobs(pipeline="digits").items)
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    cases = [
        (
            {"input": str(tmp_path / "nowhere.csv")},
            "input",
            "digits-in",
            str(tmp_path / "nowhere.csv"),
            "does not exist",
        ),
        ({"input": str(tmp_path / "*.parquet")}, "input", "digits-in", str(tmp_path / "*.parquet"), "matches no file"),
        (
            {"input": str(tmp_path / "b" / "digits" / "data" / "digits.csv"), "output": str(blocker / "out.csv")},
            "output",
            "digits-out",
            str(blocker / "out.csv"),
            f"{blocker} is not a folder",
        ),
    ]
    for parameters, parameter, channel, path, why in cases:
        with pytest.raises(ApiError) as refused:
            scheduler.create_job("digits", parameters=parameters)
        error = refused.value
        assert error.status == 422 and error.code == "unresolvable_path", error.message
        assert error.details["problems"] == [
            {"parameter": parameter, "channel": channel, "path": path, "message": error.message}
        ]
        assert f"(parameter '{parameter}')" in error.message and path in error.message and why in error.message
    assert len(scheduler.list_jobs(pipeline="digits").items) == before  # nothing was created


def test_an_input_deleted_after_the_job_started_fails_the_job_as_invalid_input(
    tmp_path: Path, digits: Digits, scheduler: SchedulerClient
) -> None:
    scheduler.deploy(relative_digits_example(tmp_path / "b", digits, rows=10))
    source = write_digits_csv(tmp_path / "in.csv", digits_rows(digits, 50))
    job = scheduler.create_job("digits", parameters={"input": str(source), "output": str(tmp_path / "out.csv")})
    # Gone before the flow opens it: the flow process starts, then waits for two scoring services to load.
    source.unlink()
    final = wait_terminal(scheduler, job.id)
    assert final.state is JobState.FAILED
    assert final.reason == "InvalidInput", f"{final.reason}: {final.message}"
    assert final.message is not None and str(source) in final.message
    # Bad input is permanent: the flow that said so (exit code 1) is not restarted by the local backend.
    assert not [e for e in final.events if e.reason in ("FlowRestarted", "ServiceRestarted")]
