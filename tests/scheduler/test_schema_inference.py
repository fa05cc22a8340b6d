"""`schema: {infer: true}` sources: the fields are read from the job's input file at install.

On wine (a model and a data set the examples do not use), with the pipeline `modelops init` writes and its
source schema replaced by `infer: true`: the install step reads the CSV, resolves the flow's selector against
it and records the fields in the job's values; a file that does not fit the flow fails the job at install,
naming the field; the tekton backend refuses such a job at start.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv
import pytest
import yaml
from sklearn.datasets import load_wine
from sklearn.linear_model import LogisticRegression

import ir
from scheduler.inference import (
    SchemaInferenceFailed,
    SchemaInferenceUnsupported,
    check_inference_supported,
    with_inferred_schemas,
)
from scheduler.scaffold import init_pipeline
from scheduler.settings import SchedulerSettings
from scheduler.values import bundle_of, render_values, stored_ir

MODELOPS = str(Path(sys.executable).with_name("modelops"))


@pytest.fixture(scope="module")
def wine(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Any, np.ndarray]:
    """A pipeline folder for a logistic regression on wine whose source infers; its CSV `id, x0..x12`."""
    folder = tmp_path_factory.mktemp("wine")
    features, labels = load_wine(return_X_y=True)
    model = LogisticRegression(max_iter=5000).fit(features, labels)
    joblib.dump(model, folder / "wine.joblib")
    columns: dict[str, Any] = {"id": np.arange(len(features))}
    columns.update({f"x{i}": features[:, i] for i in range(features.shape[1])})
    pa_csv.write_csv(pa.table(columns), folder / "wine.csv")
    pipe = folder / "pipe"
    init_pipeline(pipe, [folder / "wine.joblib"], folder / "wine.csv")
    for path in (pipe / "channels").iterdir():
        doc = yaml.safe_load(path.read_text())
        if doc["spec"]["direction"] == "source":
            doc["spec"]["schema"] = {"infer": True}
            path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return pipe, folder / "wine.csv", model, features


def _values(pipe: Path, tmp_path: Path, data: Path) -> tuple[dict[str, Any], ir.Values]:
    document = stored_ir(ir.load_bundle(pipe))
    settings = SchedulerSettings(home=tmp_path)
    return document, render_values(document, {"input": str(data)}, settings, uuid.uuid4())


def test_install_reads_the_fields_and_resolves_the_selector(wine: tuple[Path, Path, Any, Any], tmp_path: Path) -> None:
    pipe, csv, _, _ = wine
    document, values = _values(pipe, tmp_path, csv)
    found = with_inferred_schemas(document, values)
    assert found is not None
    rebuilt, (inferred,) = found
    assert inferred.path == str(csv)
    names = [f.name for f in inferred.schema.fields]
    assert names == ["id", *(f"x{i}" for i in range(13))]
    assert {f.type for f in inferred.schema.fields[1:]} <= {"number", "integer"}  # proline has whole values
    bundle = bundle_of(rebuilt)
    (flow,) = bundle.flows.values()
    score = flow.spec.steps[0].score
    assert score is not None and score.inputs[0].fields == names[1:]
    assert "13 field(s)" not in inferred.describe() and "14 field(s)" in inferred.describe()


def test_no_inferring_source_leaves_the_document_alone(tmp_path: Path, wine: tuple[Path, Path, Any, Any]) -> None:
    pipe, csv, _, _ = wine
    plain = tmp_path / "plain"
    init_pipeline(plain, [pipe.parent / "wine.joblib"], csv)
    document, values = _values(plain, tmp_path, csv)
    assert with_inferred_schemas(document, values) is None


def test_a_file_that_does_not_fit_the_flow_is_a_validation_error_naming_the_selector(
    wine: tuple[Path, Path, Any, Any], tmp_path: Path
) -> None:
    pipe, _, _, _ = wine
    other = tmp_path / "ids-only.csv"
    pa_csv.write_csv(pa.table({"id": np.arange(3)}), other)
    document, values = _values(pipe, tmp_path, other)
    with pytest.raises(ir.IRValidationError) as caught:
        with_inferred_schemas(document, values)
    (issue,) = caught.value.issues
    assert issue.document.startswith("ScoringFlow") and "matches no field" in issue.message


def test_a_file_that_gives_no_schema_is_refused_naming_the_channel(
    wine: tuple[Path, Path, Any, Any], tmp_path: Path
) -> None:
    pipe, _, _, _ = wine
    empty = tmp_path / "empty.csv"
    empty.write_bytes(b"")
    document, values = _values(pipe, tmp_path, empty)
    with pytest.raises(SchemaInferenceFailed) as caught:
        with_inferred_schemas(document, values)
    assert "its schema cannot be inferred" in str(caught.value) and str(empty) in str(caught.value)


def test_the_tekton_backend_refuses_an_inferring_source(wine: tuple[Path, Path, Any, Any]) -> None:
    pipe, _, _, _ = wine
    bundle = ir.load_bundle(pipe)
    check_inference_supported(bundle, "local")
    with pytest.raises(SchemaInferenceUnsupported, match="the tekton backend cannot do") as caught:
        check_inference_supported(bundle, "tekton")
    assert caught.value.details == {"channels": ["wine-in"]}


def run(argv: list[str], cwd: Path, home: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "MODELOPS_HOME": str(home)}
    return subprocess.run([MODELOPS, *argv], cwd=cwd, env=env, capture_output=True, text=True, timeout=240, check=False)


def _install_logs(home: Path) -> str:
    return "\n".join(p.read_text() for p in sorted(home.rglob("install*.log")))


def test_a_job_infers_at_install_and_answers_as_the_model(wine: tuple[Path, Path, Any, Any], tmp_path: Path) -> None:
    pipe, csv, model, features = wine
    home = tmp_path / "home"
    ran = run(["run", str(pipe), "--data-root", str(csv.parent)], tmp_path, home)
    assert ran.returncode == 0, ran.stderr[-3000:]
    scored = pa_csv.read_csv(pipe / "out" / "scored.csv")
    assert scored["label"].to_pylist() == model.predict(features).tolist()
    np.testing.assert_allclose(scored["probability"].to_numpy(), model.predict_proba(features).max(axis=1))
    assert f"infer schemas: channel 'wine-in': 14 field(s) from {csv}" in _install_logs(home)


def test_a_job_whose_file_does_not_fit_fails_at_install(wine: tuple[Path, Path, Any, Any], tmp_path: Path) -> None:
    pipe, csv, _, _ = wine
    narrow = tmp_path / "narrow.csv"
    pa_csv.write_csv(pa.table({"id": [1, 2], "x0": [0.5, 0.25]}), narrow)
    home = tmp_path / "home"
    ran = run(["run", str(pipe), "-p", f"input={narrow}", "--data-root", str(csv.parent)], tmp_path, home)
    assert ran.returncode != 0
    assert "RenderFailed" in ran.stderr + ran.stdout, ran.stderr[-3000:]
    assert "do not fit the schema inferred from their input" in ran.stderr + ran.stdout
