"""The mlflow runtime serves MLflow model folders saved in the test (an sklearn model with a column signature,
one with a tensor signature, a pyfunc Python model with string and number columns answering a DataFrame),
answers equal to `mlflow.pyfunc.load_model(folder).predict`, and its errors."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.models import infer_signature
from scoring_kit import infer_body, model_config, served
from sklearn.datasets import load_wine
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

from scoring_services.artifacts import directory_sha256
from scoring_services.errors import ModelLoadError
from scoring_services.settings import ScoringSettings
from scoring_services.signatures import mlflow_schema, read_signature
from scoring_services.types import TensorSpec


class Grader(mlflow.pyfunc.PythonModel):  # type: ignore[misc]
    """A Python model over a string and a number column, answering two columns."""

    def predict(self, context: Any, model_input: pd.DataFrame, params: Any = None) -> pd.DataFrame:
        score = model_input["points"].to_numpy() * 2.0 + model_input["grade"].str.len().to_numpy()
        return pd.DataFrame({"label": np.where(score > 10, "high", "low"), "score": score})


@pytest.fixture(scope="module")
def wine() -> tuple[pd.DataFrame, Pipeline]:
    features, target = load_wine(return_X_y=True, as_frame=True)
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=500)).fit(features.to_numpy(), target)
    return features, model


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory, wine: tuple[pd.DataFrame, Pipeline]) -> dict[str, Path]:
    features, model = wine
    root = tmp_path_factory.mktemp("mlflow")
    columns = features.copy()
    named = make_pipeline(StandardScaler(), LogisticRegression(max_iter=500)).fit(columns, target_of(model, columns))
    mlflow.sklearn.save_model(
        named, root / "columns", signature=infer_signature(columns, named.predict(columns)), pip_requirements=[]
    )
    matrix = features.to_numpy()
    mlflow.sklearn.save_model(
        model,
        root / "proba",
        signature=infer_signature(matrix, model.predict_proba(matrix)),
        pyfunc_predict_fn="predict_proba",
        pip_requirements=[],
    )
    sample = pd.DataFrame({"grade": ["a", "bbbb", "cc"], "points": [1.0, 4.5, 3.0]})
    mlflow.pyfunc.save_model(
        root / "grader",
        python_model=Grader(),
        signature=infer_signature(sample, Grader().predict(None, sample)),
        pip_requirements=[],
    )
    return {"columns": root / "columns", "proba": root / "proba", "grader": root / "grader"}


def target_of(model: Pipeline, columns: pd.DataFrame) -> np.ndarray:
    return model.predict(columns.to_numpy())  # type: ignore[no-any-return]


def _config(name: str, folder: Path, **extra: Any) -> Any:
    return model_config(name, "mlflow", folder, sha256=directory_sha256(folder), **extra)


def _outputs(body: dict[str, Any]) -> dict[str, np.ndarray]:
    return {o["name"]: np.array(o["data"]).reshape(o["shape"]) for o in body["outputs"]}


def test_the_signature_is_read_from_mlmodel_as_the_runtime_serves_it(folders: dict[str, Path]) -> None:
    columns = mlflow_schema(folders["columns"])
    assert columns.signature.inputs == (TensorSpec("input", "FP64", (-1, 13)),)
    assert columns.signature.outputs == (TensorSpec("predict", "INT64", (-1,)),)
    assert [name for name, _ in columns.columns][:2] == ["alcohol", "malic_acid"]
    proba = read_signature("mlflow", folders["proba"], {})
    assert proba is not None and proba.inputs == (TensorSpec("input", "FP64", (-1, 13)),)
    assert proba.outputs == (TensorSpec("predict", "FP64", (-1, 3)),)
    grader = mlflow_schema(folders["grader"])
    assert grader.columns == (("grade", "string"), ("points", "double"))
    assert grader.signature.inputs == (TensorSpec("grade", "BYTES", (-1,)), TensorSpec("points", "FP64", (-1,)))
    assert grader.signature.outputs == (TensorSpec("label", "BYTES", (-1,)), TensorSpec("score", "FP64", (-1,)))


async def test_column_and_tensor_models_answer_as_pyfunc_predict(
    folders: dict[str, Path], wine: tuple[pd.DataFrame, Any], scoring_settings: ScoringSettings
) -> None:
    features, _ = wine
    rows = features.iloc[20:70]
    configs = [_config("columns", folders["columns"]), _config("proba", folders["proba"])]
    async with served(configs, scoring_settings) as (_, http):
        metadata = (await http.get("/v2/models/columns")).json()
        body = infer_body("input", rows.to_numpy(), "FP64")
        by_columns = await http.post("/v2/models/columns/infer", json=body)
        renamed = await http.post("/v2/models/columns/infer", json=infer_body("features", rows.to_numpy(), "FP64"))
        by_tensor = await http.post("/v2/models/proba/infer", json=body)
    assert metadata["inputs"] == [{"name": "input", "datatype": "FP64", "shape": [-1, 13]}]
    assert metadata["outputs"] == [{"name": "predict", "datatype": "INT64", "shape": [-1]}]
    assert by_columns.status_code == 200, by_columns.text
    expected = mlflow.pyfunc.load_model(str(folders["columns"])).predict(rows)
    np.testing.assert_array_equal(_outputs(by_columns.json())["predict"], expected)
    assert renamed.json()["outputs"] == by_columns.json()["outputs"]  # one input: any name (V2 interoperability)
    assert by_tensor.status_code == 200, by_tensor.text
    np.testing.assert_allclose(
        _outputs(by_tensor.json())["predict"],
        mlflow.pyfunc.load_model(str(folders["proba"])).predict(rows.to_numpy()),
        rtol=0,
        atol=1e-12,
    )


async def test_a_python_model_with_string_columns_answers_each_output_column(
    folders: dict[str, Path], scoring_settings: ScoringSettings
) -> None:
    rows = pd.DataFrame({"grade": ["x", "yyyyyyy", "zz", ""], "points": [0.5, 2.0, 7.25, 5.0]})
    body = {
        "inputs": [
            {"name": "grade", "datatype": "BYTES", "shape": [4], "data": rows["grade"].tolist()},
            {"name": "points", "datatype": "FP64", "shape": [4], "data": rows["points"].tolist()},
        ]
    }
    async with served([_config("grader", folders["grader"])], scoring_settings) as (_, http):
        response = await http.post("/v2/models/grader/infer", json=body)
        bad = await http.post(
            "/v2/models/grader/infer",
            json={
                "inputs": [
                    {"name": "grade", "datatype": "BYTES", "shape": [1], "data": ["a"]},
                    {"name": "points", "datatype": "BYTES", "shape": [1], "data": ["many"]},
                ]
            },
        )
    assert response.status_code == 200, response.text
    expected = mlflow.pyfunc.load_model(str(folders["grader"])).predict(rows)
    outputs = {o["name"]: o["data"] for o in response.json()["outputs"]}
    assert outputs["label"] == expected["label"].tolist()
    assert outputs["score"] == expected["score"].tolist()
    assert bad.status_code == 400
    assert bad.json()["error"] == "input 'points' has datatype BYTES; the model expects FP64"


def test_a_folder_without_mlmodel_or_signature_is_refused_naming_it(tmp_path: Path, folders: dict[str, Path]) -> None:
    with pytest.raises(ModelLoadError, match=r"is not an MLflow model folder \(it has no MLmodel file\)"):
        mlflow_schema(tmp_path)
    unsigned = tmp_path / "unsigned"
    shutil.copytree(folders["columns"], unsigned)
    text = (unsigned / "MLmodel").read_text()
    (unsigned / "MLmodel").write_text(text[: text.index("signature:")])
    with pytest.raises(ModelLoadError, match=r"MLmodel: the model has no signature; log it with one"):
        mlflow_schema(unsigned)


async def test_a_changed_folder_or_one_without_a_sha256_is_refused_before_anything_is_unpickled(
    tmp_path: Path, folders: dict[str, Path], scoring_settings: ScoringSettings
) -> None:
    changed = tmp_path / "changed"
    shutil.copytree(folders["columns"], changed)
    expected = directory_sha256(changed)
    (changed / "extra.py").write_text("raise SystemExit('ran')\n")
    configs = [
        model_config("changed", "mlflow", changed, sha256=expected),
        model_config("unchecked", "mlflow", folders["columns"]),
    ]
    async with served(configs, scoring_settings) as (_, http):
        index = {e["name"]: e for e in (await http.post("/v2/repository/index")).json()}
    assert index["changed"]["state"] == "UNAVAILABLE"
    assert f"sha256 mismatch for {changed}: expected {expected}" in index["changed"]["reason"]
    assert index["unchecked"]["state"] == "UNAVAILABLE"
    assert "runtime 'mlflow' unpickles its artifact, which runs code; give its sha256" in index["unchecked"]["reason"]
