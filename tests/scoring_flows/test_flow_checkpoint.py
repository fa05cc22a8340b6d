"""`modelops flow` and its checkpoint: a checkpoint whose output was deleted is refused (never trusted), and
`--fresh` starts over. Real `modelops flow` processes against the real digits scoring services."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pyarrow.csv as pacsv
from flow_kit import (
    IN_FIELDS,
    MODELOPS,
    OUT_FIELDS,
    Digits,
    Services,
    channel,
    digits_rows,
    flow_env,
    render_values,
    write_bundle,
    write_digits_csv,
)


def flow(values: Path, workdir: Path, services: Services, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [MODELOPS, "flow", "--values", str(values), "--flow", "digits-flow", *args],
        env=flow_env(services.urls),
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=120,  # a safety net: a run takes a few seconds
    )


def test_a_finished_checkpoint_whose_output_was_deleted_is_refused_and_fresh_starts_over(
    tmp_path: Path, workdir: Path, digits: Digits, digits_services: Services
) -> None:
    write_digits_csv(workdir / "data" / "in.csv", digits_rows(digits, 300))
    channels = {
        "in": channel("source", "file", {"path": "data/in.csv", "format": "csv"}, IN_FIELDS),
        "out": channel("sink", "file", {"path": "out/scored.csv", "format": "csv"}, OUT_FIELDS),
    }
    values = render_values(write_bundle(tmp_path / "bundle", digits, channels=channels), tmp_path / "run" / "v.yaml")
    output = workdir / "out" / "scored.csv"
    checkpoint = tmp_path / "run" / "checkpoints" / "digits-flow.json"

    first = flow(values, workdir, digits_services)
    assert first.returncode == 0, first.stdout + first.stderr
    assert json.loads(checkpoint.read_text())["finished"] is True
    again = flow(values, workdir, digits_services)  # the output is there: the finished run is not repeated
    assert again.returncode == 0 and "already finished before a restart" in again.stdout + again.stderr

    output.unlink()
    refused = flow(values, workdir, digits_services)
    assert refused.returncode == 1
    assert (
        f"the checkpoint {checkpoint} (finished) says file sink 'out' ({output}) wrote output, but {output} does "
        "not exist: run the flow again with --fresh to start over"
    ) in refused.stdout + refused.stderr
    assert not output.exists()

    fresh = flow(values, workdir, digits_services, "--fresh")
    assert fresh.returncode == 0, fresh.stdout + fresh.stderr
    assert f"starting over (--fresh): removing the checkpoint {checkpoint}" in fresh.stdout + fresh.stderr
    assert pacsv.read_csv(output).num_rows == 300


def test_fresh_also_starts_over_from_a_checkpoint_that_cannot_be_read(
    tmp_path: Path, workdir: Path, digits: Digits, digits_services: Services
) -> None:
    write_digits_csv(workdir / "data" / "in.csv", digits_rows(digits, 50))
    channels = {
        "in": channel("source", "file", {"path": "data/in.csv", "format": "csv"}, IN_FIELDS),
        "out": channel("sink", "file", {"path": "out/scored.csv", "format": "csv"}, OUT_FIELDS),
    }
    values = render_values(write_bundle(tmp_path / "bundle", digits, channels=channels), tmp_path / "run" / "v.yaml")
    checkpoint = tmp_path / "run" / "checkpoints" / "digits-flow.json"
    checkpoint.parent.mkdir(parents=True)
    checkpoint.write_text('{"version": 0}')
    refused = flow(values, workdir, digits_services)
    assert refused.returncode == 1
    assert f"{checkpoint} is not a checkpoint of this version: start the flow with --fresh" in (
        refused.stdout + refused.stderr
    )
    fresh = flow(values, workdir, digits_services, "--fresh")
    assert fresh.returncode == 0, fresh.stdout + fresh.stderr
    assert pacsv.read_csv(workdir / "out" / "scored.csv").num_rows == 50
