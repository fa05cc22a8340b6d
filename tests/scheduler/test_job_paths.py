"""`scheduler.paths`: the rendered paths of a job checked where its components will look, before it starts."""

from __future__ import annotations

from pathlib import Path

import pytest
from lifecycle_kit import PIPELINE_YAML

import ir
from scheduler.paths import UnresolvablePath, check_job_paths, path_problems


def render(tmp_path: Path, **globals_: str) -> tuple[ir.Bundle, ir.Values]:
    bundle = ir.load_bundle_files({"pipeline.yaml": PIPELINE_YAML.replace("WAIT", "1h")})
    return bundle, ir.render(bundle, {}, ir.make_globals({"dataRoot": str(tmp_path), **globals_}))


def test_a_job_whose_input_output_and_model_resolve_passes(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "in.csv").write_text("id,x\n")
    (tmp_path / "models" / "artifacts").mkdir(parents=True)
    (tmp_path / "models" / "artifacts" / "m1.onnx").write_bytes(b"onnx")
    check_job_paths(*render(tmp_path, modelStore=(tmp_path / "models").as_uri()))


def test_every_problem_is_listed_with_its_channel_or_model_and_the_resolved_path(tmp_path: Path) -> None:
    (tmp_path / "out" / "scored.csv").mkdir(parents=True)  # a folder where the sink's file goes
    bundle, values = render(tmp_path, modelStore=(tmp_path / "models").as_uri())
    problems = [p.to_json() for p in path_problems(bundle, values)]
    assert problems == [
        {
            "channel": "rows-in",
            "path": str(tmp_path / "data" / "in.csv"),
            "message": f"file source 'rows-in': {tmp_path / 'data' / 'in.csv'} does not exist",
        },
        {
            "channel": "rows-out",
            "path": str(tmp_path / "out" / "scored.csv"),
            "message": f"file sink 'rows-out': {tmp_path / 'out' / 'scored.csv'} is a folder, not a file",
        },
        {
            "model": "m1",
            "path": str(tmp_path / "models" / "artifacts" / "m1.onnx"),
            "message": f"model 'm1': {tmp_path / 'models' / 'artifacts' / 'm1.onnx'} does not exist",
        },
    ]
    with pytest.raises(UnresolvablePath) as refused:
        check_job_paths(bundle, values)
    assert refused.value.http_status == 422 and refused.value.code == "unresolvable_path"
    assert refused.value.details == {"problems": problems}
