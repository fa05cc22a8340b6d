"""`modelops init` and `modelops score` on models and data the examples do not use (wine, iris, small nets).

The pipelines `init` writes are validated by the real loader, and the ones run here run for real: `modelops
run` / `modelops score` as subprocesses, on the embedded scheduler (SQLite + local backend: real scoring
services and flows), with answers compared to the model's own in-process predictions.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
import pytest
import yaml
from sklearn.datasets import load_iris, load_wine
from sklearn.linear_model import LogisticRegression
from sklearn.tree import DecisionTreeRegressor

import ir
from scheduler.scaffold import ScaffoldError, init_pipeline

MODELOPS = str(Path(sys.executable).with_name("modelops"))
#: the two-leaf tree of tests/scoring_services/test_scoring_runtimes.py: yes when x1 > 0.5
PMML = """<?xml version="1.0" encoding="UTF-8"?>
<PMML xmlns="http://www.dmg.org/PMML-4_4" version="4.4">
  <Header description="a two-leaf decision tree, written by hand"/>
  <DataDictionary numberOfFields="3">
    <DataField name="x1" optype="continuous" dataType="double"/>
    <DataField name="x2" optype="continuous" dataType="double"/>
    <DataField name="label" optype="categorical" dataType="string">
      <Value value="yes"/><Value value="no"/>
    </DataField>
  </DataDictionary>
  <TreeModel functionName="classification" modelName="tiny-tree">
    <MiningSchema>
      <MiningField name="x1"/><MiningField name="x2"/><MiningField name="label" usageType="target"/>
    </MiningSchema>
    <Output>
      <OutputField name="predicted_label" feature="predictedValue" dataType="string" optype="categorical"/>
      <OutputField name="probability_yes" feature="probability" value="yes" dataType="double" optype="continuous"/>
    </Output>
    <Node score="no" recordCount="10">
      <True/>
      <ScoreDistribution value="yes" recordCount="4"/><ScoreDistribution value="no" recordCount="6"/>
      <Node score="yes" recordCount="4">
        <SimplePredicate field="x1" operator="greaterThan" value="0.5"/>
        <ScoreDistribution value="yes" recordCount="3"/><ScoreDistribution value="no" recordCount="1"/>
      </Node>
      <Node score="no" recordCount="6">
        <True/>
        <ScoreDistribution value="yes" recordCount="1"/><ScoreDistribution value="no" recordCount="5"/>
      </Node>
    </Node>
  </TreeModel>
</PMML>
"""


@pytest.fixture(scope="module")
def wine(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Any, np.ndarray]:
    """A logistic regression on wine (no feature names) and a CSV of `id, x0..x12`."""
    folder = tmp_path_factory.mktemp("wine")
    features, labels = load_wine(return_X_y=True)
    model = LogisticRegression(max_iter=5000).fit(features, labels)
    joblib.dump(model, folder / "wine.joblib")
    columns: dict[str, Any] = {"id": np.arange(len(features))}
    columns.update({f"x{i}": features[:, i] for i in range(features.shape[1])})
    pa_csv.write_csv(pa.table(columns), folder / "wine.csv")
    return folder / "wine.joblib", folder / "wine.csv", model, features


def run(argv: list[str], cwd: Path, home: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "MODELOPS_HOME": str(home)}
    return subprocess.run([MODELOPS, *argv], cwd=cwd, env=env, capture_output=True, text=True, timeout=240, check=False)


def test_init_writes_a_pipeline_that_validates_and_runs_with_in_process_answers(
    wine: tuple[Path, Path, Any, np.ndarray], tmp_path: Path
) -> None:
    model_path, csv, model, features = wine
    folder = tmp_path / "pipe"
    done = run(["init", str(folder), "--model", str(model_path), "--data", str(csv)], tmp_path, tmp_path / "home")
    assert done.returncode == 0, done.stderr
    assert "numeric columns in order, without the id" in done.stderr
    assert f"--data-root {os.path.relpath(csv.parent, tmp_path)}" in done.stderr
    flow = yaml.safe_load(next((folder / "flows").iterdir()).read_text())
    score = flow["spec"]["steps"][0]["score"]
    assert score["inputs"] == [{"input": "input", "fields": {"all": True, "except": ["id"]}}]
    spec = yaml.safe_load((folder / "models" / "wine.yaml").read_text())["spec"]
    assert spec["runtime"] == "sklearn" and spec["inputs"] == [{"name": "input", "datatype": "FP64", "shape": [-1, 13]}]
    assert spec["outputs"][1] == {"name": "predict_proba", "datatype": "FP64", "shape": [-1, 3]}
    ir.load_bundle(folder)

    ran = run(["run", str(folder), "--data-root", str(csv.parent)], tmp_path, tmp_path / "home")
    assert ran.returncode == 0, ran.stderr[-3000:]
    scored = pa_csv.read_csv(folder / "out" / "scored.csv")
    assert scored.column_names == ["id", "label", "probability"]
    assert scored["id"].to_pylist() == list(range(len(features)))
    assert scored["label"].to_pylist() == model.predict(features).tolist()
    np.testing.assert_allclose(scored["probability"].to_numpy(), model.predict_proba(features).max(axis=1))


def test_score_writes_parquet_from_a_csv_and_says_where(
    wine: tuple[Path, Path, Any, np.ndarray], tmp_path: Path
) -> None:
    model_path, csv, model, features = wine
    out = tmp_path / "results" / "wine.parquet"
    kept = tmp_path / "kept"
    done = run(["score", str(model_path), str(csv), "-o", str(out), "--keep", str(kept)], tmp_path, tmp_path / "h")
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"scored rows in {out}" in done.stderr
    table = pq.read_table(out)
    assert table["label"].to_pylist() == model.predict(features).tolist()
    assert (kept / "pipeline.yaml").is_file()
    ir.load_bundle(kept)


def test_features_are_matched_by_the_names_the_model_was_fitted_with(tmp_path: Path) -> None:
    """A JSON Lines sample whose columns are in another order, with extra ones: the names decide."""
    features, target = load_iris(return_X_y=True)
    names = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
    model = DecisionTreeRegressor(max_depth=3, random_state=0).fit(features, target)
    model.feature_names_in_ = np.array(names, dtype=object)
    joblib.dump(model, tmp_path / "iris.joblib")
    rows = [
        {"key": i, "note": "x", "petal_width": f[3], "sepal_length": f[0], "petal_length": f[2], "sepal_width": f[1]}
        for i, f in enumerate(features[:20])
    ]
    (tmp_path / "iris.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    report = init_pipeline(tmp_path / "pipe", [tmp_path / "iris.joblib"], tmp_path / "iris.jsonl")
    bundle = ir.load_bundle(tmp_path / "pipe")
    score = bundle.flows["iris"].spec.steps[0].score
    assert score is not None and score.inputs[0].fields == names
    assert bundle.channels["iris-out"].spec.file is not None and bundle.channels["iris-out"].spec.file.format == "jsonl"
    assert [f.name for f in bundle.channels["iris-out"].spec.record_schema.fields] == ["key", "label"]
    assert any("by the model's feature names" in line for line in report.decisions)


def test_an_onnx_model_with_a_parquet_sample(tmp_path: Path) -> None:
    from skl2onnx import to_onnx

    features, labels = load_iris(return_X_y=True)
    model = LogisticRegression(max_iter=2000).fit(features, labels)
    onnx_model = to_onnx(model, features[:1].astype(np.float32), options={id(model): {"zipmap": False}})
    (tmp_path / "iris.onnx").write_bytes(onnx_model.SerializeToString())
    columns = {"row_id": np.arange(len(features)), **{f"m{i}": features[:, i] for i in range(4)}}
    pq.write_table(pa.table(columns), tmp_path / "iris.parquet")
    report = init_pipeline(tmp_path / "pipe", [tmp_path / "iris.onnx"], tmp_path / "iris.parquet")
    assert report.models[0].runtime == "onnx"
    bundle = ir.load_bundle(tmp_path / "pipe")
    model_spec = bundle.models["iris"].spec
    assert [t.name for t in model_spec.inputs] == ["X"] and model_spec.inputs[0].shape == [-1, 4]
    assert {t.name for t in model_spec.outputs} == {"label", "probabilities"}
    score = bundle.flows["iris"].spec.steps[0].score
    assert score is not None and score.inputs[0].fields == ["m0", "m1", "m2", "m3"]
    assert any("'probabilities'" in todo for todo in report.todos)

    ran = run(["run", str(tmp_path / "pipe"), "--data-root", str(tmp_path)], tmp_path, tmp_path / "home")
    assert ran.returncode == 0, ran.stderr[-3000:]
    scored = pq.read_table(tmp_path / "pipe" / "out" / "scored.parquet")
    assert scored.column_names == ["row_id", "label", "probabilities"]
    assert scored["label"].to_pylist() == model.predict(features.astype(np.float32)).tolist()


def test_a_torch_export_program_and_a_transformers_folder_are_recognised(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")

    class Net(torch.nn.Module):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self.linear = torch.nn.Linear(3, 2)

        def forward(self, x: Any) -> Any:
            return self.linear(x)

    program = torch.export.export(Net(), (torch.randn(2, 3),), dynamic_shapes={"x": {0: torch.export.Dim("batch")}})
    torch.export.save(program, tmp_path / "net.pt2")
    pa_csv.write_csv(pa.table({"id": [1, 2], "a": [0.1, 0.2], "b": [1.0, 2.0], "c": [3, 4]}), tmp_path / "t.csv")
    init_pipeline(tmp_path / "torch", [tmp_path / "net.pt2"], tmp_path / "t.csv")
    spec = ir.load_bundle(tmp_path / "torch").models["net"].spec
    assert spec.runtime == "torch" and spec.inputs[0].shape == [-1, 3] and spec.options == {"format": "export"}

    models = tmp_path / "models" / "sentiment"
    models.mkdir(parents=True)
    config = {"architectures": ["BertForSequenceClassification"], "id2label": {"0": "neg", "1": "pos"}}
    (models / "config.json").write_text(json.dumps(config))
    (models / "model.safetensors").write_bytes(b"not read by init")
    pa_csv.write_csv(pa.table({"id": [1], "review": ["good"]}), tmp_path / "reviews.csv")
    report = init_pipeline(tmp_path / "text", [models], tmp_path / "reviews.csv")
    bundle = ir.load_bundle(tmp_path / "text")
    assert bundle.models["sentiment"].spec.uri == "../models/sentiment"
    assert any("text input 'text' from column 'review'" in line for line in report.decisions)


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("unknown", "cannot tell which runtime serves this file"),
        ("narrow", "the model takes 13 features per record, but the sample has only 2 numeric column(s)"),
        ("missing-names", "2 of which are not columns of the sample: petal_length, petal_width"),
        ("not-empty", "the folder is not empty (use --force"),
        ("bad-sample", "unknown data format"),
    ],
)
def test_what_init_cannot_decide_is_an_error_naming_it(
    wine: tuple[Path, Path, Any, np.ndarray], tmp_path: Path, case: str, message: str
) -> None:
    model_path, csv, _, _ = wine
    folder, models, data = tmp_path / "pipe", [model_path], csv
    if case == "unknown":
        (tmp_path / "model.bin").write_bytes(b"\0")
        models = [tmp_path / "model.bin"]
    elif case == "narrow":
        data = tmp_path / "narrow.csv"
        pa_csv.write_csv(pa.table({"id": [1], "a": [0.5], "b": [1.5]}), data)
    elif case == "missing-names":
        model = DecisionTreeRegressor().fit(np.zeros((4, 4)), np.zeros(4))
        model.feature_names_in_ = np.array(["sepal_length", "sepal_width", "petal_length", "petal_width"], dtype=object)
        joblib.dump(model, tmp_path / "named.joblib")
        models = [tmp_path / "named.joblib"]
        data = tmp_path / "half.csv"
        pa_csv.write_csv(pa.table({"sepal_length": [1.0], "sepal_width": [2.0]}), data)
    elif case == "not-empty":
        folder.mkdir()
        (folder / "keep.txt").write_text("mine")
    elif case == "bad-sample":
        data = tmp_path / "data.xlsx"
        data.write_bytes(b"PK")
    with pytest.raises(ScaffoldError, match=None) as caught:
        init_pipeline(folder, models, data)
    assert message in str(caught.value)
    if case == "not-empty":
        assert sorted(p.name for p in folder.iterdir()) == ["keep.txt"]


def test_a_pmml_model_reads_its_fields_by_name_and_runs(tmp_path: Path) -> None:
    (tmp_path / "tree.pmml").write_text(PMML)
    x1 = [0.1, 0.9, 0.5, 2.0]
    pa_csv.write_csv(pa.table({"id": [1, 2, 3, 4], "x2": [1.0, 2.0, 3.0, 4.0], "x1": x1}), tmp_path / "t.csv")
    init_pipeline(tmp_path / "pipe", [tmp_path / "tree.pmml"], tmp_path / "t.csv")
    bundle = ir.load_bundle(tmp_path / "pipe")
    score = bundle.flows["tree"].spec.steps[0].score
    assert score is not None and score.inputs[0].fields == ["x1", "x2"]
    assert [t.name for t in bundle.models["tree"].spec.outputs] == ["predicted_label", "probability_yes"]
    ran = run(["run", str(tmp_path / "pipe"), "--data-root", str(tmp_path)], tmp_path, tmp_path / "home")
    assert ran.returncode == 0, ran.stderr[-3000:]
    scored = pa_csv.read_csv(tmp_path / "pipe" / "out" / "scored.csv")
    assert scored["predicted_label"].to_pylist() == ["yes" if v > 0.5 else "no" for v in x1]


@pytest.mark.filterwarnings("ignore::UserWarning:mlflow.*", "ignore::FutureWarning:mlflow.*")
def test_score_on_an_mlflow_model_folder_matches_columns_by_its_signature(tmp_path: Path) -> None:
    """An MLflow model folder logged from a DataFrame: the runtime is mlflow, the inputs are its signature's
    columns by name (the CSV has them in another order, with an id), and the scored labels are pyfunc's."""
    import mlflow.pyfunc
    import mlflow.sklearn
    import pandas as pd
    from mlflow.models import infer_signature
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    frame, target = load_wine(return_X_y=True, as_frame=True)
    (tmp_path / "slash.csv").write_text("id,od280/od315\n1,2.5\n")
    with pytest.raises(ScaffoldError, match=r"slash.csv: column\(s\) 'od280/od315' are not valid IR field names"):
        init_pipeline(tmp_path / "refused", [tmp_path / "nope.joblib"], tmp_path / "slash.csv")
    frame.columns = [c.replace("/", "_") for c in frame.columns]  # od280/od315_of_diluted_wines
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=500)).fit(frame, target)
    folder = tmp_path / "wine-mlflow"
    mlflow.sklearn.save_model(
        model, folder, signature=infer_signature(frame, model.predict(frame)), pip_requirements=["scikit-learn"]
    )
    shuffled = frame[list(reversed(frame.columns))]
    sample = pd.concat([pd.DataFrame({"id": np.arange(len(frame))}), shuffled], axis=1)
    csv = tmp_path / "wine.csv"
    pa_csv.write_csv(pa.Table.from_pandas(sample, preserve_index=False), csv)
    out = tmp_path / "scored.csv"
    kept = tmp_path / "kept"
    done = run(["score", str(folder), str(csv), "-o", str(out), "--keep", str(kept)], tmp_path, tmp_path / "h")
    assert done.returncode == 0, done.stderr[-3000:]
    spec = yaml.safe_load((kept / "models" / "wine-mlflow.yaml").read_text())["spec"]
    assert spec["runtime"] == "mlflow"
    assert spec["inputs"] == [{"name": "input", "datatype": "FP64", "shape": [-1, 13]}]
    score = yaml.safe_load(next((kept / "flows").iterdir()).read_text())["spec"]["steps"][0]["score"]
    assert score["inputs"][0]["fields"] == list(frame.columns)
    scored = pa_csv.read_csv(out)
    expected = mlflow.pyfunc.load_model(str(folder)).predict(frame)
    assert scored["id"].to_pylist() == list(range(len(frame)))
    assert scored["label"].to_pylist() == np.asarray(expected).tolist()
