"""Batch jobs end to end: the scheduler's local backend deploys real scoring services and a real flow from the
values, the flow reports progress and completion, uninstall tears everything down; each error policy."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import orjson
import pyarrow.csv as pacsv
import pytest
from e2e_kit import digits_example, run_job
from flow_kit import (
    IN_FIELDS,
    OUT_FIELDS,
    SCORE_STEPS,
    Digits,
    channel,
    digits_rows,
    expected,
    write_bundle,
    write_digits_csv,
)

from scheduler.client import SchedulerClient
from scheduler.states import JobState

pytestmark = pytest.mark.slow


def test_the_digits_example_scores_every_row_like_in_process_and_succeeds(
    tmp_path: Path, digits: Digits, scheduler: SchedulerClient
) -> None:
    rows = digits_rows(digits, 5000)
    source = write_digits_csv(tmp_path / "in.csv", rows)
    output = tmp_path / "out" / "scored.csv"
    job = run_job(scheduler, digits_example(tmp_path, digits), {"input": str(source), "output": str(output)})
    assert job.state is JobState.SUCCEEDED, f"{job.reason}: {job.message}"
    assert job.reason == "Completed"
    assert job.message is not None and "5,000 records written" in job.message and str(output) in job.message
    assert (job.progress.read, job.progress.written, job.progress.failed) == (5000, 5000, 0)
    table = pacsv.read_csv(output)
    assert table.num_rows == 5000
    want = expected(digits, rows)
    for name, values in want.items():
        assert np.array_equal(table.column(name).to_numpy(), values), name
    assert set(table.column("scorer").to_pylist()) == {"digits-example"}
    assert list(dict.fromkeys(e.task for e in job.events if e.task)) == ["install", "wait", "uninstall"]


def policy_bundle(tmp_path: Path, digits: Digits, policy: dict[str, str]) -> Path:
    channels = {
        "in": channel("source", "file", {"path": "${params.input}", "format": "csv"}, IN_FIELDS),
        "out": channel("sink", "file", {"path": "${params.output}", "format": "csv"}, OUT_FIELDS),
        "dead": channel(
            "sink",
            "file",
            {"path": "${params.dead}", "format": "jsonl"},
            [
                {"name": "id", "type": "string", "nullable": True},
                {"name": "error", "type": "string"},
                {"name": "position", "type": "string"},
            ],
        ),
    }
    parameters = [{"name": n, "type": "string"} for n in ("input", "output", "dead")]
    return write_bundle(
        tmp_path / f"bundle-{policy['mode']}",
        digits,
        channels=channels,
        steps=SCORE_STEPS,
        error_policy=policy,
        batch_size=250,
        parameters=parameters,
        flow=f"policy-{policy['mode'].lower()}",
    )


def bad_input(tmp_path: Path, digits: Digits) -> tuple[Path, np.ndarray]:
    rows = digits_rows(digits, 1500)
    source = write_digits_csv(tmp_path / "in.csv", rows)
    lines = source.read_text().splitlines()
    lines[301] = "300," + ",".join(["x"] * 64)  # record 301: not a number
    lines[1201] = "1200,5"  # record 1201: too few columns
    source.write_text("\n".join(lines) + "\n")
    return source, rows


@pytest.mark.parametrize("mode", ["fail", "skip", "deadLetter"])
def test_each_error_policy_ends_the_job_as_it_says(
    tmp_path: Path, digits: Digits, scheduler: SchedulerClient, mode: str
) -> None:
    source, rows = bad_input(tmp_path, digits)
    output, dead = tmp_path / "scored.csv", tmp_path / "dead.jsonl"
    policy = {"mode": mode, "sink": "dead"} if mode == "deadLetter" else {"mode": mode}
    job = run_job(
        scheduler,
        policy_bundle(tmp_path, digits, policy),
        {"input": str(source), "output": str(output), "dead": str(dead)},
    )
    if mode == "fail":
        assert job.state is JobState.FAILED
        assert job.reason == "ScoringFailed"
        assert job.message is not None and f"record 301 (line 302) of {source}, field 'p0'" in job.message
        assert not output.exists()
        return
    assert job.state is JobState.SUCCEEDED, f"{job.reason}: {job.message}"
    assert (job.progress.read, job.progress.written, job.progress.failed) == (1500, 1498, 2)
    keep = ~np.isin(rows[:, 0], [300, 1200])
    table = pacsv.read_csv(output)
    assert np.array_equal(table.column("id").to_numpy(), rows[keep, 0])
    assert np.array_equal(table.column("label").to_numpy(), expected(digits, rows[keep])["label"])
    if mode == "deadLetter":
        records = [orjson.loads(line) for line in dead.read_bytes().splitlines()]
        assert [r["position"] for r in records] == [
            f"record 301 (line 302) of {source}",
            f"record 1201 (line 1202) of {source}",
        ]
        assert records[0]["id"] == "300" and "cannot read 'x'" in records[0]["error"]
    else:
        assert not dead.exists()
