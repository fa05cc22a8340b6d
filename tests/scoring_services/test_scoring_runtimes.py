"""Every runtime loads a real tiny model, built in a fixture, and answers as the model does in-process."""

from __future__ import annotations

import pickle
import textwrap
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import Digits
from scoring_kit import infer_body, model_config, served, sha256_of, spec

from scoring_services.artifacts import directory_sha256
from scoring_services.settings import ScoringSettings
from scoring_services.types import BatchingConfig


def outputs_of(body: dict[str, Any]) -> dict[str, np.ndarray]:
    return {o["name"]: np.array(o["data"]).reshape(o["shape"]) for o in body["outputs"]}


# ---------------------------------------------------------------------------------------------- sklearn


async def test_sklearn_answers_predict_and_predict_proba_like_the_forest(
    digits: Digits, scoring_settings: ScoringSettings
) -> None:
    config = model_config("digits", "sklearn", digits.joblib_path, sha256=digits.joblib_sha)
    rows = digits.features[100:160]
    async with served([config], scoring_settings) as (_, http):
        body = infer_body("input", rows.astype(np.float64), "FP64")
        outputs = outputs_of((await http.post("/v2/models/digits/infer", json=body)).json())
        only_predict = (
            await http.post("/v2/models/digits/infer", json={**body, "outputs": [{"name": "predict"}]})
        ).json()
    np.testing.assert_array_equal(outputs["predict"], digits.forest.predict(rows))
    np.testing.assert_array_equal(outputs["predict_proba"], digits.forest.predict_proba(rows))
    assert only_predict["outputs"][0]["data"] == digits.forest.predict(rows).tolist()


class Contrarian:
    """A classifier whose `predict` is the least likely class: not the argmax of its `predict_proba`."""

    def __init__(self, model: Any) -> None:
        self.inner = model
        self.classes_ = model.classes_
        self.n_features_in_ = model.n_features_in_

    def predict_proba(self, features: np.ndarray) -> np.ndarray:
        return self.inner.predict_proba(features)  # type: ignore[no-any-return]

    def predict(self, features: np.ndarray) -> np.ndarray:
        return self.classes_.take(np.argmin(self.predict_proba(features), axis=1))  # type: ignore[no-any-return]


async def test_default_outputs_call_the_model_once_where_the_argmax_is_predict(
    tmp_path: Path, scoring_settings: ScoringSettings
) -> None:
    import joblib
    from sklearn.datasets import load_wine
    from sklearn.ensemble import GradientBoostingClassifier
    from sklearn.linear_model import LogisticRegression

    features, labels = load_wine(return_X_y=True)
    models: dict[str, Any] = {
        "gb": GradientBoostingClassifier(n_estimators=20, random_state=0).fit(features, labels),
        "lr": LogisticRegression(max_iter=5000).fit(features, labels),
    }
    models["contrarian"] = Contrarian(models["lr"])
    configs = []
    for name, model in models.items():
        joblib.dump(model, tmp_path / f"{name}.joblib")
        configs.append(
            model_config(name, "sklearn", tmp_path / f"{name}.joblib", sha256=sha256_of(tmp_path / f"{name}.joblib"))
        )
    two_calls = model_config(
        "gb-two",
        "sklearn",
        tmp_path / "gb.joblib",
        sha256=sha256_of(tmp_path / "gb.joblib"),
        options={"predictFromProba": False},
    )
    async with served([*configs, two_calls], scoring_settings) as (app, http):
        derived = {}
        for config in [*configs, two_calls]:
            runtime = app.plane.repository.get(config.name).runtime
            assert runtime is not None
            derived[config.name] = runtime._predict_from_proba  # type: ignore[attr-defined]
            if derived[config.name]:
                runtime.model.predict = None  # type: ignore[attr-defined]  # any call of it now fails the request
        assert derived == {"gb": True, "lr": True, "contrarian": False, "gb-two": False}
        for name, model in [*models.items(), ("gb-two", models["gb"])]:
            response = await http.post(f"/v2/models/{name}/infer", json=infer_body("input", features, "FP64"))
            assert response.status_code == 200, response.text
            outputs = outputs_of(response.json())
            np.testing.assert_array_equal(outputs["predict"], model.predict(features))
            np.testing.assert_array_equal(outputs["predict_proba"], model.predict_proba(features))


async def test_sklearn_stacks_one_input_per_feature_in_declared_order(
    tmp_path: Path, scoring_settings: ScoringSettings
) -> None:
    import joblib
    from sklearn.linear_model import LinearRegression

    features = np.array([[1.0, 2.0], [3.0, 5.0], [4.0, -1.0], [0.0, 0.5]])
    model = LinearRegression().fit(features, features @ np.array([2.0, -3.0]) + 1)
    path = tmp_path / "linear.joblib"
    joblib.dump(model, path)
    config = model_config(
        "linear",
        "sklearn",
        path,
        sha256=sha256_of(path),
        inputs=[spec("a", "FP64", -1), spec("b", "FP64", -1)],
        outputs=[spec("predict", "FP64", -1)],
    )
    async with served([config], scoring_settings) as (_, http):
        body = {
            "inputs": [
                {"name": "b", "datatype": "FP64", "shape": [4], "data": features[:, 1].tolist()},
                {"name": "a", "datatype": "FP64", "shape": [4], "data": features[:, 0].tolist()},
            ]
        }
        answer = (await http.post("/v2/models/linear/infer", json=body)).json()
    assert answer["outputs"][0]["data"] == pytest.approx(model.predict(features).tolist())


class _Exploit:
    """Unpickling this would create a marker file: the sha256 check must stop it first."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.touch, (self.marker,))


async def test_sklearn_refuses_to_unpickle_an_artifact_whose_sha256_differs(
    tmp_path: Path, scoring_settings: ScoringSettings
) -> None:
    marker = tmp_path / "pwned"
    artifact = tmp_path / "model.pkl"
    artifact.write_bytes(pickle.dumps(_Exploit(marker)))
    config = model_config("evil", "sklearn", artifact, sha256="a" * 64)
    async with served([config], scoring_settings) as (_, http):
        index = (await http.post("/v2/repository/index")).json()
    assert index[0]["state"] == "UNAVAILABLE"
    assert "sha256 mismatch" in index[0]["reason"]
    assert not marker.exists()


async def test_sklearn_refuses_to_load_without_a_sha256(digits: Digits, scoring_settings: ScoringSettings) -> None:
    config = model_config("digits", "sklearn", digits.joblib_path)
    async with served([config], scoring_settings) as (_, http):
        index = (await http.post("/v2/repository/index")).json()
    assert "give its sha256" in index[0]["reason"]


# ---------------------------------------------------------------------------------------------- onnx


async def test_onnx_answers_like_an_in_process_session_with_names_from_the_graph(
    digits: Digits, scoring_settings: ScoringSettings
) -> None:
    import onnxruntime as ort

    config = model_config(
        "digits-onnx", "onnx", digits.onnx_path, sha256=digits.onnx_sha, options={"intraOpThreads": 2}
    )
    rows = digits.features[:40]
    async with served([config], scoring_settings) as (_, http):
        metadata = (await http.get("/v2/models/digits-onnx")).json()
        answer = (await http.post("/v2/models/digits-onnx/infer", json=infer_body("X", rows, "FP32"))).json()
    assert metadata["inputs"] == [{"name": "X", "datatype": "FP32", "shape": [-1, 64]}]
    assert [(o["name"], o["datatype"]) for o in metadata["outputs"]] == [("label", "INT64"), ("probabilities", "FP32")]
    session = ort.InferenceSession(str(digits.onnx_path), providers=["CPUExecutionProvider"])
    label, probabilities = session.run(None, {"X": rows})
    outputs = outputs_of(answer)
    np.testing.assert_array_equal(outputs["label"], label)
    np.testing.assert_allclose(outputs["probabilities"], probabilities, rtol=1e-6)


async def test_onnx_binds_a_declared_input_name_to_the_graphs_single_input(
    digits: Digits, scoring_settings: ScoringSettings
) -> None:
    config = model_config(
        "digits-onnx",
        "onnx",
        digits.onnx_path,
        inputs=[spec("input", "FP32", -1, 64)],
        outputs=[spec("label", "INT64", -1)],
    )
    async with served([config], scoring_settings) as (_, http):
        answer = await http.post("/v2/models/digits-onnx/infer", json=infer_body("input", digits.features[:3], "FP32"))
    assert answer.json()["outputs"][0]["data"] == digits.forest.predict(digits.features[:3]).tolist()


# ---------------------------------------------------------------------------------------------- torch


@pytest.fixture(scope="module")
def torch_models(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Path, Path]:
    import torch

    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.linear = torch.nn.Linear(4, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.softmax(self.linear(x), dim=-1)

    torch.manual_seed(0)
    net = Net().eval()
    folder = tmp_path_factory.mktemp("torch")
    scripted = folder / "net.pt"
    with warnings.catch_warnings():  # TorchScript is deprecated in torch 2.13 but still what many ship
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.save(torch.jit.script(net), str(scripted))
    exported = folder / "net.pt2"
    program = torch.export.export(net, (torch.randn(2, 4),), dynamic_shapes={"x": {0: torch.export.Dim("batch")}})
    torch.export.save(program, str(exported))
    return net, scripted, exported


async def test_torchscript_answers_like_the_module(
    torch_models: tuple[Any, Path, Path], scoring_settings: ScoringSettings
) -> None:
    import torch

    net, scripted, _ = torch_models
    config = model_config(
        "net",
        "torch",
        scripted,
        sha256=sha256_of(scripted),
        inputs=[spec("x", "FP32", -1, 4)],
        outputs=[spec("probabilities", "FP32", -1, 3)],
    )
    rows = np.random.default_rng(1).normal(size=(6, 4)).astype(np.float32)
    async with served([config], scoring_settings) as (_, http):
        answer = (await http.post("/v2/models/net/infer", json=infer_body("x", rows, "FP32"))).json()
    with torch.inference_mode():
        want = net(torch.from_numpy(rows)).numpy()
    np.testing.assert_allclose(outputs_of(answer)["probabilities"], want, rtol=1e-5, atol=1e-6)


async def test_an_exported_program_tells_its_signature_and_answers_like_the_module(
    torch_models: tuple[Any, Path, Path], scoring_settings: ScoringSettings
) -> None:
    import torch

    net, _, exported = torch_models
    config = model_config("net", "torch", exported, sha256=sha256_of(exported))
    rows = np.random.default_rng(2).normal(size=(5, 4)).astype(np.float32)
    async with served([config], scoring_settings) as (_, http):
        metadata = (await http.get("/v2/models/net")).json()
        binary_rows = rows.tobytes()
        import orjson

        header = orjson.dumps(
            {
                "inputs": [
                    {
                        "name": "x",
                        "datatype": "FP32",
                        "shape": [5, 4],
                        "parameters": {"binary_data_size": len(binary_rows)},
                    }
                ]
            }
        )
        answer = (
            await http.post(
                "/v2/models/net/infer",
                content=header + binary_rows,
                headers={"Inference-Header-Content-Length": str(len(header))},
            )
        ).json()
    assert metadata["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}]
    assert metadata["outputs"] == [{"name": "output", "datatype": "FP32", "shape": [-1, 3]}]
    with torch.inference_mode():
        want = net(torch.from_numpy(rows)).numpy()
    np.testing.assert_allclose(outputs_of(answer)["output"], want, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------------------- transformers

WORDS = ["the", "a", "cat", "dog", "sat", "on", "mat", "good", "bad", "movie", "is", "was", "very", "not", "and", "it"]


def _tokenizer(folder: Path) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {word: i for i, word in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "<eos>", *WORDS])}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="[UNK]", pad_token="[PAD]", eos_token="<eos>"
    )
    tokenizer.save_pretrained(folder)


@pytest.fixture(scope="module")
def bert_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny BERT classifier (random weights from a config) with a word-level tokenizer."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    folder = tmp_path_factory.mktemp("bert")
    _tokenizer(folder)
    config = BertConfig(
        vocab_size=len(WORDS) + 5,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=64,
        num_labels=3,
        id2label={0: "negative", 1: "neutral", 2: "positive"},
        label2id={"negative": 0, "neutral": 1, "positive": 2},
    )
    torch.manual_seed(0)
    BertForSequenceClassification(config).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def gpt_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny GPT-2 style language model (random weights) with the same tokenizer."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    folder = tmp_path_factory.mktemp("gpt")
    _tokenizer(folder)
    config = GPT2Config(
        vocab_size=len(WORDS) + 5, n_positions=64, n_embd=16, n_layer=2, n_head=2, eos_token_id=4, bos_token_id=4
    )
    torch.manual_seed(0)
    GPT2LMHeadModel(config).save_pretrained(folder)
    return folder


TEXTS = ["the cat sat on the mat", "a very bad movie", "it was good"]


async def test_text_classification_answers_like_the_model(bert_folder: Path, scoring_settings: ScoringSettings) -> None:
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    config = model_config("sentiment", "transformers", bert_folder, sha256=directory_sha256(bert_folder))
    async with served([config], scoring_settings) as (_, http):
        metadata = (await http.get("/v2/models/sentiment")).json()
        answer = await http.post("/v2/models/sentiment/infer", json=infer_body("text", np.array(TEXTS), "BYTES"))
    assert metadata["inputs"] == [{"name": "text", "datatype": "BYTES", "shape": [-1]}]
    assert [o["name"] for o in metadata["outputs"]] == ["label", "score", "logits"]
    outputs = {o["name"]: o["data"] for o in answer.json()["outputs"]}
    tokenizer = AutoTokenizer.from_pretrained(bert_folder)
    model = AutoModelForSequenceClassification.from_pretrained(bert_folder).eval()
    for i, text in enumerate(TEXTS):
        with torch.inference_mode():
            logits = model(**tokenizer([text], return_tensors="pt")).logits[0]
        probabilities = torch.softmax(logits, dim=-1)
        assert outputs["label"][i] == model.config.id2label[int(probabilities.argmax())]
        assert outputs["score"][i] == pytest.approx(float(probabilities.max()), abs=1e-5)
        assert outputs["logits"][i * 3 : i * 3 + 3] == pytest.approx(logits.tolist(), abs=1e-5)


async def test_feature_extraction_answers_mean_pooled_hidden_states(
    bert_folder: Path, scoring_settings: ScoringSettings
) -> None:
    import torch
    from transformers import AutoModel, AutoTokenizer

    config = model_config("embed", "transformers", bert_folder, options={"task": "feature-extraction"})
    async with served([config], scoring_settings) as (_, http):
        answer = (await http.post("/v2/models/embed/infer", json=infer_body("text", np.array(TEXTS), "BYTES"))).json()
    embedding = outputs_of(answer)["embedding"]
    assert embedding.shape == (3, 16)
    tokenizer = AutoTokenizer.from_pretrained(bert_folder)
    model = AutoModel.from_pretrained(bert_folder).eval()
    for i, text in enumerate(TEXTS):
        with torch.inference_mode():
            hidden = model(**tokenizer([text], return_tensors="pt")).last_hidden_state[0]
        np.testing.assert_allclose(embedding[i], hidden.mean(dim=0).numpy(), atol=1e-5)


async def test_text_generation_answers_the_greedy_continuation(
    gpt_folder: Path, scoring_settings: ScoringSettings
) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    config = model_config("lm", "transformers", gpt_folder)
    prompt = "the cat sat on"
    async with served([config], scoring_settings) as (_, http):
        body = infer_body("text", np.array([prompt]), "BYTES", parameters={"max_new_tokens": 6})
        answer = (await http.post("/v2/models/lm/infer", json=body)).json()
    tokenizer = AutoTokenizer.from_pretrained(gpt_folder)
    model = AutoModelForCausalLM.from_pretrained(gpt_folder).eval()
    encoded = tokenizer([prompt], return_tensors="pt")
    with torch.inference_mode():
        generated = model.generate(**encoded, max_new_tokens=6, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    want = tokenizer.decode(generated[0, encoded["input_ids"].shape[1] :], skip_special_tokens=True)
    assert answer["outputs"] == [{"name": "generated_text", "datatype": "BYTES", "shape": [1], "data": [want]}]


async def test_text_generation_over_the_token_budget_is_400_naming_the_counts(
    gpt_folder: Path, scoring_settings: ScoringSettings
) -> None:
    small = model_config("lm", "transformers", gpt_folder, options={"maxTokens": 16})
    default = model_config("lm256", "transformers", gpt_folder)
    async with served([small, default], scoring_settings) as (_, http):
        prompt = " ".join(["cat"] * 12)
        body = infer_body("text", np.array([prompt]), "BYTES", parameters={"max_new_tokens": 5})
        over = await http.post("/v2/models/lm/infer", json=body)
        within = await http.post("/v2/models/lm/infer", json={**body, "parameters": {"max_new_tokens": 4}})
        long_prompt = infer_body("text", np.array([" ".join(["dog"] * 250)]), "BYTES")
        over_default = await http.post("/v2/models/lm256/infer", json=long_prompt)
    assert over.status_code == 400
    assert over.json()["error"] == (
        "the prompt has 12 tokens and max_new_tokens is 5: 12 + 5 = 17 exceeds the token budget of 16"
    )
    assert within.status_code == 200
    assert over_default.status_code == 400
    assert "250 + 32 = 282 exceeds the token budget of 256" in over_default.json()["error"]


# ---------------------------------------------------------------------------------------------- pmml

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


@pytest.mark.slow
async def test_pmml_answers_like_pypmml_in_process(tmp_path: Path, scoring_settings: ScoringSettings) -> None:
    from pypmml import Model

    path = tmp_path / "tree.pmml"
    path.write_text(PMML)
    config = model_config("tree", "pmml", path, sha256=sha256_of(path))
    x1 = [0.1, 0.9, 0.5, 2.0]
    x2 = [1.0, 2.0, 3.0, 4.0]
    async with served([config], scoring_settings) as (_, http):
        metadata = (await http.get("/v2/models/tree")).json()
        body = {
            "inputs": [
                {"name": "x1", "datatype": "FP64", "shape": [4], "data": x1},
                {"name": "x2", "datatype": "FP64", "shape": [4], "data": x2},
            ]
        }
        answer = (await http.post("/v2/models/tree/infer", json=body)).json()
    assert [i["name"] for i in metadata["inputs"]] == ["x1", "x2"]
    assert metadata["outputs"] == [
        {"name": "predicted_label", "datatype": "BYTES", "shape": [-1]},
        {"name": "probability_yes", "datatype": "FP64", "shape": [-1]},
    ]
    outputs = {o["name"]: o["data"] for o in answer["outputs"]}
    model = Model.fromFile(str(path))
    for i in range(4):
        want = model.predict({"x1": x1[i], "x2": x2[i]})
        assert outputs["predicted_label"][i] == want["predicted_label"]
        assert outputs["probability_yes"][i] == pytest.approx(want["probability_yes"])
    assert outputs["predicted_label"] == ["no", "yes", "no", "yes"]


# ---------------------------------------------------------------------------------------------- python

MODULE = """
import numpy as np

INPUTS = [{"name": "x", "datatype": "FP64", "shape": [-1, 2]}]
OUTPUTS = [{"name": "total", "datatype": "FP64", "shape": [-1]}, {"name": "tag", "datatype": "BYTES", "shape": [-1]}]
state = {}


def load(path):
    with open(path + "/scale.txt") as handle:
        state["scale"] = float(handle.read())


def predict(batch):
    x = batch["x"]
    total = x.sum(axis=1) * state["scale"]
    return {"total": total, "tag": np.array([b"big" if t > 10 else b"small" for t in total], dtype=object)}
"""


async def test_a_python_module_is_loaded_from_its_folder_and_answers(
    tmp_path: Path, scoring_settings: ScoringSettings
) -> None:
    folder = tmp_path / "user-model"
    folder.mkdir()
    (folder / "model.py").write_text(textwrap.dedent(MODULE))
    (folder / "scale.txt").write_text("2.0")
    config = model_config(
        "user", "python", folder, sha256=directory_sha256(folder), batching=BatchingConfig(enabled=False)
    )
    x = np.array([[1.0, 2.0], [5.0, 6.0]])
    async with served([config], scoring_settings) as (_, http):
        metadata = (await http.get("/v2/models/user")).json()
        answer = (await http.post("/v2/models/user/infer", json=infer_body("x", x, "FP64"))).json()
    assert metadata["inputs"] == [{"name": "x", "datatype": "FP64", "shape": [-1, 2]}]
    outputs = {o["name"]: o["data"] for o in answer["outputs"]}
    assert outputs == {"total": [6.0, 22.0], "tag": ["small", "big"]}


async def test_a_python_module_without_predict_fails_to_load_with_the_reason(
    tmp_path: Path, scoring_settings: ScoringSettings
) -> None:
    folder = tmp_path / "broken"
    folder.mkdir()
    (folder / "model.py").write_text("def load(path):\n    pass\n")
    config = model_config("broken", "python", folder, inputs=[spec("x", "FP64", -1)], outputs=[spec("y", "FP64", -1)])
    async with served([config], scoring_settings) as (_, http):
        index = (await http.post("/v2/repository/index")).json()
    assert index[0]["state"] == "UNAVAILABLE"
    assert "has no function predict()" in index[0]["reason"]


# ---------------------------------------------------------------------------------------------- forest fast path


async def test_the_forest_fast_path_answers_bit_identically_to_predict_proba(
    digits: Digits, tmp_path: Path, scoring_settings: ScoringSettings
) -> None:
    rows = np.random.default_rng(3).uniform(0, 16, size=(200, 64)).astype(np.float32)
    fast = model_config("fast", "sklearn", digits.joblib_path, sha256=digits.joblib_sha)
    slow = model_config("slow", "sklearn", digits.joblib_path, sha256=digits.joblib_sha, options={"fastForest": False})
    async with served([fast, slow], scoring_settings) as (app, http):
        runtime = app.plane.repository.get("fast").runtime
        assert runtime is not None
        assert runtime._fast_forest  # type: ignore[attr-defined]
        answers = []
        for name in ("fast", "slow"):
            response = await http.post(f"/v2/models/{name}/infer", json=infer_body("input", rows, "FP32"))
            answers.append(outputs_of(response.json()))
    for answer in answers:
        np.testing.assert_array_equal(answer["predict_proba"], digits.forest.predict_proba(rows))
        np.testing.assert_array_equal(answer["predict"], digits.forest.predict(rows))


async def test_an_exported_program_serves_declared_names_bound_to_its_own(
    torch_models: tuple[Any, Path, Path], scoring_settings: ScoringSettings
) -> None:
    exported = torch_models[2]
    config = model_config(
        "net",
        "torch",
        exported,
        sha256=sha256_of(exported),
        inputs=[spec("features", "FP32", -1, 4)],
        outputs=[spec("probabilities", "FP32", -1, 3)],
    )
    rows = np.ones((2, 4), dtype=np.float32)
    async with served([config], scoring_settings) as (_, http):
        answer = (await http.post("/v2/models/net/infer", json=infer_body("features", rows, "FP32"))).json()
    assert [o["name"] for o in answer["outputs"]] == ["probabilities"]
    assert outputs_of(answer)["probabilities"].shape == (2, 3)


# ---------------------------------------------------------------------------------------------- signatures
# `modelops ir validate` reads signatures without running the artifact's code (scoring_services.signatures):
# what it reads must be what the loaded runtime serves.


async def _loaded_signature(runtime: str, path: Path, options: dict[str, Any] | None = None) -> tuple[Any, Any]:
    from concurrent.futures import ThreadPoolExecutor

    from scoring_services.runtimes import runtime_class

    config = model_config("m", runtime, path, sha256=sha256_of(path) if path.is_file() else None, options=options)
    with ThreadPoolExecutor(1) as executor:
        loaded = runtime_class(runtime)(config, path, executor)
        await loaded.load()
        try:
            return loaded.inputs, loaded.outputs
        finally:
            await loaded.unload()


async def test_the_onnx_signature_read_for_validate_is_the_one_the_runtime_serves(digits: Digits) -> None:
    from scoring_services.signatures import read_signature

    read = read_signature("onnx", digits.onnx_path, {})
    assert read is not None
    assert (read.inputs, read.outputs) == await _loaded_signature("onnx", digits.onnx_path)


async def test_the_exported_program_signature_read_from_its_json_is_the_one_the_runtime_serves(
    torch_models: tuple[Any, Path, Path],
) -> None:
    from scoring_services.signatures import read_signature

    _, _, exported = torch_models
    read = read_signature("torch", exported, {})
    assert read is not None
    assert read.inputs == (spec("x", "FP32", -1, 4),)
    assert (read.inputs, read.outputs) == await _loaded_signature("torch", exported)


@pytest.mark.parametrize(
    ("folder", "options"),
    [("bert_folder", {}), ("bert_folder", {"task": "feature-extraction"}), ("gpt_folder", {})],
)
async def test_the_transformers_signature_read_from_config_json_is_the_one_the_runtime_serves(
    folder: str, options: dict[str, Any], request: pytest.FixtureRequest
) -> None:
    from scoring_services.signatures import read_signature

    path: Path = request.getfixturevalue(folder)
    read = read_signature("transformers", path, options)
    assert read is not None
    assert (read.inputs, read.outputs) == await _loaded_signature("transformers", path, options)


# ---------------------------------------------------------------------------------------------- input hygiene
# The same answer whatever the runtime: an empty batch is 200 with empty outputs of the declared shapes (the
# model is not called), NaN and infinities are a 400 unless the model's option allowNonFinite is true.


def _python_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "user-model"
    folder.mkdir(exist_ok=True)
    (folder / "model.py").write_text(textwrap.dedent(MODULE))
    (folder / "scale.txt").write_text("2.0")
    return folder


def _empty_batch_case(runtime: str, request: pytest.FixtureRequest, tmp_path: Path) -> tuple[Any, dict[str, Any]]:
    """The model config of one runtime's tiny model, and a request of 0 rows for it."""
    zero_rows: dict[str, Any]
    if runtime in ("sklearn", "onnx"):
        digits: Digits = request.getfixturevalue("digits")
        path, sha = (digits.joblib_path, digits.joblib_sha) if runtime == "sklearn" else (digits.onnx_path, None)
        name = "input" if runtime == "sklearn" else "X"
        zero_rows = infer_body(name, np.zeros((0, 64), dtype=np.float32), "FP32")
        return model_config("m", runtime, path, sha256=sha), zero_rows
    if runtime.startswith("torch"):
        _, scripted, exported = request.getfixturevalue("torch_models")
        path = scripted if runtime == "torch-script" else exported
        declared = dict(inputs=[spec("x", "FP32", -1, 4)], outputs=[spec("probabilities", "FP32", -1, 3)])
        config = model_config("m", "torch", path, sha256=sha256_of(path), **(declared if path == scripted else {}))
        return config, infer_body("x", np.zeros((0, 4), dtype=np.float32), "FP32")
    if runtime.startswith("transformers"):
        folder: Path = request.getfixturevalue("gpt_folder" if runtime.endswith("generation") else "bert_folder")
        options = {"task": "feature-extraction"} if runtime.endswith("extraction") else {}
        config = model_config("m", "transformers", folder, sha256=directory_sha256(folder), options=options)
        return config, infer_body("text", np.array([], dtype=object), "BYTES")
    if runtime == "pmml":
        path = tmp_path / "tree.pmml"
        path.write_text(PMML)
        body = {"inputs": [{"name": n, "datatype": "FP64", "shape": [0], "data": []} for n in ("x1", "x2")]}
        return model_config("m", "pmml", path, sha256=sha256_of(path)), body
    folder = _python_folder(tmp_path)
    return model_config("m", "python", folder, sha256=directory_sha256(folder)), infer_body(
        "x", np.zeros((0, 2)), "FP64"
    )


@pytest.mark.parametrize(
    "runtime",
    [
        "sklearn",
        "onnx",
        "torch-script",
        "torch-export",
        "transformers-classification",
        "transformers-extraction",
        "transformers-generation",
        pytest.param("pmml", marks=pytest.mark.slow),
        "python",
    ],
)
async def test_every_runtime_answers_an_empty_batch_with_empty_outputs_of_the_declared_shapes(
    runtime: str, request: pytest.FixtureRequest, tmp_path: Path, scoring_settings: ScoringSettings
) -> None:
    config, zero_rows = _empty_batch_case(runtime, request, tmp_path)
    async with served([config], scoring_settings) as (_, http):
        metadata = (await http.get("/v2/models/m")).json()
        response = await http.post("/v2/models/m/infer", json=zero_rows)
    assert response.status_code == 200, response.text
    declared = {o["name"]: o for o in metadata["outputs"]}
    outputs = response.json()["outputs"]
    assert [o["name"] for o in outputs] == list(declared)
    for output in outputs:
        want = declared[output["name"]]
        assert output["datatype"] == want["datatype"]
        assert output["shape"] == [0, *(max(d, 0) for d in want["shape"][1:])]
        assert output["data"] == []


def _binary_body(name: str, rows: np.ndarray, datatype: str) -> tuple[bytes, dict[str, str]]:
    import orjson

    blob = rows.tobytes()
    header = orjson.dumps(
        {
            "inputs": [
                {
                    "name": name,
                    "datatype": datatype,
                    "shape": list(rows.shape),
                    "parameters": {"binary_data_size": len(blob)},
                }
            ]
        }
    )
    return header + blob, {"Inference-Header-Content-Length": str(len(header))}


async def test_an_all_nan_row_in_a_binary_tensor_is_a_400_not_a_label(
    digits: Digits, scoring_settings: ScoringSettings
) -> None:
    config = model_config("digits", "sklearn", digits.joblib_path, sha256=digits.joblib_sha)
    rows = np.vstack([digits.features[:1], np.full((1, 64), np.nan, dtype=np.float32)])
    content, headers = _binary_body("input", rows, "FP32")
    async with served([config], scoring_settings) as (_, http):
        response = await http.post("/v2/models/digits/infer", content=content, headers=headers)
    assert response.status_code == 400
    assert response.json()["error"] == (
        "input 'input': the value at [1, 0] is nan, not a finite number; NaN and infinities are refused unless "
        "the model's option allowNonFinite is true"
    )


NAN_MODULE = """
import numpy as np

INPUTS = [{"name": "x", "datatype": "FP64", "shape": [-1, 2]}]
OUTPUTS = [{"name": "missing", "datatype": "INT64", "shape": [-1]}]


def load(path):
    pass


def predict(batch):
    return {"missing": np.isnan(batch["x"]).sum(axis=1)}
"""


@pytest.mark.parametrize("wire", ["json", "binary"])
async def test_a_model_with_allow_non_finite_gets_nan_and_inf_in_json_and_binary_alike(
    tmp_path: Path, scoring_settings: ScoringSettings, wire: str
) -> None:
    folder = tmp_path / "nan-model"
    folder.mkdir()
    (folder / "model.py").write_text(textwrap.dedent(NAN_MODULE))
    allowed = model_config("allowed", "python", folder, options={"allowNonFinite": True})
    refused = model_config("refused", "python", folder)
    rows = np.array([[np.nan, 1.0], [np.inf, np.nan], [2.0, -np.inf]])
    async with served([allowed, refused], scoring_settings) as (_, http):
        answers = {}
        for name in ("allowed", "refused"):
            if wire == "json":  # as Python's json module writes them: NaN, Infinity, -Infinity
                import json

                body = json.dumps(
                    {"inputs": [{"name": "x", "datatype": "FP64", "shape": [3, 2], "data": rows.ravel().tolist()}]}
                )
                answers[name] = await http.post(f"/v2/models/{name}/infer", content=body)
            else:
                content, headers = _binary_body("x", rows, "FP64")
                answers[name] = await http.post(f"/v2/models/{name}/infer", content=content, headers=headers)
    assert answers["allowed"].status_code == 200, answers["allowed"].text
    assert answers["allowed"].json()["outputs"][0]["data"] == [1, 1, 0]
    assert answers["refused"].status_code == 400
    assert answers["refused"].json()["error"].startswith("input 'x': the value at [0, 0] is nan, not a finite number")


async def test_an_allow_non_finite_option_that_is_not_true_or_false_fails_the_load(
    tmp_path: Path, scoring_settings: ScoringSettings
) -> None:
    folder = _python_folder(tmp_path)
    config = model_config("user", "python", folder, options={"allowNonFinite": "yes"})
    async with served([config], scoring_settings) as (_, http):
        index = (await http.post("/v2/repository/index")).json()
    assert index[0]["state"] == "UNAVAILABLE"
    assert "option 'allowNonFinite' must be a bool (got 'yes')" in index[0]["reason"]


# ---------------------------------------------------------------------------------------------- boosting fast path


async def test_the_boosting_fast_path_answers_bit_identically_to_predict_proba(
    tmp_path: Path, scoring_settings: ScoringSettings
) -> None:
    import joblib
    from sklearn.datasets import load_wine
    from sklearn.ensemble import GradientBoostingClassifier

    features, labels = load_wine(return_X_y=True)
    models = {
        "prior": GradientBoostingClassifier(n_estimators=30, random_state=0).fit(features, labels),
        "zero": GradientBoostingClassifier(n_estimators=30, init="zero", random_state=0).fit(features, labels),
        "binary": GradientBoostingClassifier(n_estimators=30, random_state=0).fit(features, labels == 1),
    }
    configs = []
    for name, model in models.items():
        joblib.dump(model, tmp_path / f"{name}.joblib")
        configs.append(
            model_config(name, "sklearn", tmp_path / f"{name}.joblib", sha256=sha256_of(tmp_path / f"{name}.joblib"))
        )
    off = model_config(
        "off",
        "sklearn",
        tmp_path / "prior.joblib",
        sha256=sha256_of(tmp_path / "prior.joblib"),
        options={"fastBoosting": False},
    )
    rows = np.concatenate([features, np.random.default_rng(5).normal(0.0, 50.0, size=(100, features.shape[1]))])
    async with served([*configs, off], scoring_settings) as (app, http):
        used = {}
        for config in [*configs, off]:
            runtime = app.plane.repository.get(config.name).runtime
            assert runtime is not None
            used[config.name] = runtime._fast_boosting  # type: ignore[attr-defined]
        assert used == {"prior": True, "zero": True, "binary": False, "off": False}
        for name, model in [*models.items(), ("off", models["prior"])]:
            response = await http.post(f"/v2/models/{name}/infer", json=infer_body("input", rows, "FP64"))
            assert response.status_code == 200, response.text
            outputs = outputs_of(response.json())
            np.testing.assert_array_equal(outputs["predict_proba"], model.predict_proba(rows))
            np.testing.assert_array_equal(outputs["predict"], model.predict(rows))
