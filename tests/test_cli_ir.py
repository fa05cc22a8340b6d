"""`modelops ir validate|render|schema` through typer's CliRunner (and once through the installed script)."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import typer
import yaml
from typer.testing import CliRunner


def _import_app() -> typer.Typer:
    """`scheduler.cli.app`, importing the real `ir` package.

    There is no `tests/__init__.py`, so pytest puts `tests/` itself on sys.path for this module; from there
    `tests/ir` would be found first, as a namespace package `ir` shadowing the package under test.
    """
    here = Path(__file__).resolve().parent
    shadowed = sys.modules.get("ir")
    if shadowed is not None and getattr(shadowed, "__file__", None) is None:
        del sys.modules["ir"]  # the namespace package from an earlier import
    saved = sys.path[:]
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != here]
    try:
        from scheduler.cli import app

        return app
    finally:
        sys.path[:] = saved


app = _import_app()

ROOT = Path(__file__).resolve().parents[1]
DIGITS = ROOT / "examples" / "digits"


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


@pytest.fixture
def digits(tmp_path: Path) -> Path:
    """A copy of the IR files of the digits example, to break."""
    target = tmp_path / "digits"
    for path in DIGITS.rglob("*.yaml"):
        copy = target / path.relative_to(DIGITS)
        copy.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, copy)
    return target


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))


# ---------------------------------------------------------------------------------------------- validate


def test_validate_accepts_the_digits_example(runner: CliRunner) -> None:
    # the example's artifacts are written by its train.py; tests/scheduler/test_artifact_check.py checks artifacts
    result = runner.invoke(app, ["ir", "validate", "--no-artifacts", str(DIGITS)])
    assert result.exit_code == 0, result.output
    assert "pipeline 'digits' is valid: 1 flow(s), 2 model(s), 2 data channel(s); digest " in result.stdout
    assert result.stderr == ""


def test_validate_accepts_a_tarball(runner: CliRunner, digits: Path, tmp_path: Path) -> None:
    archive = tmp_path / "digits.tar.gz"
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        tar.add(digits, arcname="digits")
    archive.write_bytes(buffer.getvalue())
    result = runner.invoke(app, ["ir", "validate", "--no-artifacts", str(archive)])
    assert result.exit_code == 0, result.output
    assert "pipeline 'digits' is valid" in result.stdout


def test_validate_rejects_a_broken_bundle_naming_file_document_and_path_on_stderr(
    runner: CliRunner, digits: Path
) -> None:
    edit(digits / "flows" / "digits-batch.yaml", "model: digits-rf\n", "model: digit-rf\n")
    edit(digits / "models" / "digits-rf.yaml", "runtime: onnx", "runtime: onx")
    result = runner.invoke(app, ["ir", "validate", str(digits)])
    assert result.exit_code == 1
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert lines[0].startswith(
        "error flows/digits-batch.yaml: ScoringFlow digits-batch: spec.steps[0].score.model: "
        "unknown model 'digit-rf' (did you mean 'digits-rf'?) (line "
    )
    assert lines[1].startswith("error models/digits-rf.yaml: Model digits-rf-onnx: spec.runtime: 'onx' is not one of")
    assert "(did you mean 'onnx'?)" in lines[1]
    assert lines[2:] == ["2 problems found."]


def test_validate_prints_bracketed_user_input_literally(runner: CliRunner, digits: Path) -> None:
    edit(digits / "pipeline.yaml", "  mode: batch\n", "  mode: batch\n  '[/x]': 1\n  '[bold]y': 2\n")
    result = runner.invoke(app, ["ir", "validate", str(digits)])
    assert result.exit_code == 1, result.output
    assert "spec.[/x]: unknown field '[/x]'" in result.stderr
    assert "spec.[bold]y: unknown field '[bold]y'" in result.stderr


def test_validate_of_a_missing_path_fails(runner: CliRunner, tmp_path: Path) -> None:
    result = runner.invoke(app, ["ir", "validate", str(tmp_path / "nope")])
    assert result.exit_code == 1
    assert "no such file or directory" in result.stderr


def test_validate_of_garbage_fails_cleanly(runner: CliRunner, tmp_path: Path) -> None:
    (tmp_path / "bundle.yaml").write_bytes(b"\x00\x01\x02binary")
    result = runner.invoke(app, ["ir", "validate", str(tmp_path / "bundle.yaml")])
    assert result.exit_code == 1
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert "bundle.yaml: binary content" in result.stderr


# ---------------------------------------------------------------------------------------------- render


def test_render_writes_values_with_params_and_sets_to_stdout(runner: CliRunner) -> None:
    result = runner.invoke(
        app,
        [
            "ir",
            "render",
            str(DIGITS),
            "--param",
            "scorer=cli-test",
            "-p",
            "output=out/x.csv",
            "--set",
            "logLevel=debug",
        ],
    )
    assert result.exit_code == 0, result.output
    values = yaml.safe_load(result.stdout)
    assert values["pipeline"]["parameters"]["scorer"] == "cli-test"
    assert values["dataChannels"]["digits-out"]["spec"]["file"]["path"] == "out/x.csv"
    assert values["global"]["logLevel"] == "debug"
    assert values["global"]["modelStore"] == DIGITS.resolve().as_uri()
    assert (
        values["scoringServices"]["digits-rf"]["model"]["uri"]
        == f"{DIGITS.resolve().as_uri()}/artifacts/digits-rf.joblib"
    )


def test_render_keeps_an_explicit_model_store(runner: CliRunner) -> None:
    result = runner.invoke(app, ["ir", "render", str(DIGITS), "--set", "modelStore=https://store.example/m"])
    assert result.exit_code == 0, result.output
    values = yaml.safe_load(result.stdout)
    assert (
        values["scoringServices"]["digits-rf-onnx"]["model"]["uri"]
        == "https://store.example/m/artifacts/digits-rf.onnx"
    )


def test_render_to_a_file_writes_the_same_text_as_stdout(runner: CliRunner, tmp_path: Path) -> None:
    target = tmp_path / "nested" / "values.yaml"
    to_file = runner.invoke(app, ["ir", "render", str(DIGITS), "-p", "scorer=x", "-o", str(target)])
    to_stdout = runner.invoke(app, ["ir", "render", str(DIGITS), "-p", "scorer=x"])
    assert to_file.exit_code == 0, to_file.output
    assert to_file.stdout == ""
    assert f"wrote {target} (2 scoring service(s), 1 flow(s))" in to_file.stderr
    assert target.read_text() == to_stdout.stdout


def test_render_to_an_unwritable_place_fails(runner: CliRunner, tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    result = runner.invoke(app, ["ir", "render", str(DIGITS), "-o", str(tmp_path / "file" / "values.yaml")])
    assert result.exit_code == 1
    assert "error: cannot write" in result.stderr


@pytest.mark.parametrize("bad", ["scorer", "=x", ""])
def test_render_refuses_a_param_without_name_and_value_with_exit_2(runner: CliRunner, bad: str) -> None:
    result = runner.invoke(app, ["ir", "render", str(DIGITS), "--param", bad])
    assert result.exit_code == 2
    assert f"error: --param expects NAME=VALUE, got {bad!r}" in result.stderr
    assert result.stdout == ""


def test_render_refuses_an_unknown_set_key_with_did_you_mean(runner: CliRunner) -> None:
    result = runner.invoke(app, ["ir", "render", str(DIGITS), "--set", "logLvel=debug"])
    assert result.exit_code == 1
    assert "<globals>: logLvel: unknown field 'logLvel' (did you mean 'logLevel'?)" in result.stderr
    assert result.stdout == ""


def test_render_refuses_a_nested_set_key_with_did_you_mean(runner: CliRunner) -> None:
    result = runner.invoke(app, ["ir", "render", str(DIGITS), "--set", "image.tga=1.2"])
    assert result.exit_code == 1
    assert "<globals>: image.tga: unknown field 'tga' (did you mean 'tag'?)" in result.stderr


def test_render_refuses_a_set_value_of_the_wrong_type(runner: CliRunner) -> None:
    result = runner.invoke(app, ["ir", "render", str(DIGITS), "--set", "logLevel=loud"])
    assert result.exit_code == 1
    assert "<globals>: logLevel: 'loud' is not one of 'debug', 'info', 'warning', 'error'" in result.stderr


def test_render_refuses_an_unknown_param_with_did_you_mean(runner: CliRunner) -> None:
    result = runner.invoke(app, ["ir", "render", str(DIGITS), "-p", "scorrer=x"])
    assert result.exit_code == 1
    assert "<parameters>: scorrer: unknown parameter 'scorrer' (did you mean 'scorer'?)" in result.stderr


def test_render_of_a_broken_bundle_fails_with_its_issues(runner: CliRunner, digits: Path) -> None:
    edit(digits / "channels" / "digits-out.yaml", "format: csv", "format: xls")
    result = runner.invoke(app, ["ir", "render", str(digits)])
    assert result.exit_code == 1
    assert "channels/digits-out.yaml: DataChannel digits-out: spec.file.format: 'xls' is not one of" in result.stderr
    assert result.stdout == ""


# ---------------------------------------------------------------------------------------------- schema


@pytest.mark.parametrize(
    ("args", "title"),
    [
        (["ir", "schema"], "modelops IR document (modelops/v1)"),
        (["ir", "schema", "ir"], "modelops IR document (modelops/v1)"),
        (["ir", "schema", "values"], "modelops chart values"),
    ],
)
def test_schema_prints_json(runner: CliRunner, args: list[str], title: str) -> None:
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    schema = json.loads(result.stdout)
    assert schema["title"] == title
    assert result.stdout.endswith("}\n")


def test_schema_of_an_unknown_kind_exits_2(runner: CliRunner) -> None:
    result = runner.invoke(app, ["ir", "schema", "bogus"])
    assert result.exit_code == 2
    assert "error: unknown schema 'bogus': choose 'ir' or 'values'" in result.stderr
    assert result.stdout == ""


# ---------------------------------------------------------------------------------------------- installed script


def test_the_installed_script_validates_and_fails_like_the_app(digits: Path) -> None:
    script = Path(sys.executable).parent / "modelops"
    ok = subprocess.run(
        [str(script), "ir", "validate", "--no-artifacts", str(DIGITS)], capture_output=True, text=True, timeout=60
    )
    assert ok.returncode == 0, ok.stderr
    edit(digits / "pipeline.yaml", "mode: batch", "mode: batched")
    bad = subprocess.run([str(script), "ir", "validate", str(digits)], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 1
    assert "pipeline.yaml: ScoringPipeline digits: spec.mode: 'batched' is not one of" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_a_text_setting_that_looks_like_a_number_is_kept_as_text() -> None:
    import ir

    settings = ir.parse_sets(["image.tag=1.2", "jobId=123", "tracing.sampleRatio=0.5"])
    assert (settings.image.tag, settings.job_id, settings.tracing.sample_ratio) == ("1.2", "123", 0.5)


def test_a_model_store_must_be_a_uri_or_an_absolute_path() -> None:
    import pytest

    import ir

    assert ir.parse_sets(["modelStore=/srv/models"]).model_store == "file:///srv/models"
    with pytest.raises(ir.IRValidationError) as caught:
        ir.parse_sets(["modelStore=s3://bucket/models"])
    assert [str(issue) for issue in caught.value.issues] == [
        "<globals>: modelStore: modelStore must be an absolute path or a file://, http:// or https:// URI "
        "(got 's3://bucket/models')"
    ]
