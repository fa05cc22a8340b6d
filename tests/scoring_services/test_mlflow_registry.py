"""The MLflow registry store against a real `mlflow server` (SQLite backend, proxied artifacts), started once:
two versions of a wine classifier registered in the test, versions and aliases resolved, the folder equal to
mlflow's own download of that version and predicting as the model does, the cache, and the errors in words
(unknown model / version / alias, a dead port, refused credentials, a wrong sha256, bad uris and Secrets)."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import mlflow
import mlflow.sklearn
import numpy as np
import pandas as pd
import pytest
from mlflow.models import infer_signature
from scoring_kit import free_port, infer_body, model_config, served
from sklearn.datasets import load_wine
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

from scoring_services.artifacts import directory_sha256, resolve_uri
from scoring_services.errors import ModelLoadError
from scoring_services.settings import ScoringSettings
from scoring_services.stores.mlflow_registry import fetch, parse_models_uri
from tests.mlflow_kit import MlflowServer, running_mlflow

SECRET = "mlflow-main"
# mlflow warns about its own type hints and environment as it imports, logs and loads models (also ignored in
# pyproject.toml's filterwarnings; repeated here so this module does not depend on it)
pytestmark = [
    pytest.mark.filterwarnings("ignore::UserWarning:mlflow.*"),
    pytest.mark.filterwarnings("ignore::FutureWarning:mlflow.*"),
]


@dataclass
class Registry:
    server: MlflowServer
    features: pd.DataFrame
    models: dict[str, Pipeline]  # version -> the model registered as it

    @property
    def environ(self) -> dict[str, str]:
        return self.server.secret_env(SECRET)


def _classifier() -> Pipeline:
    return make_pipeline(StandardScaler(), LogisticRegression(max_iter=500))


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    """wine versions 1 (all rows) and 2 (the first 100 rows: classes 0 and 1 only), alias champion -> 1."""
    features, target = load_wine(return_X_y=True, as_frame=True)
    first = _classifier().fit(features, target)
    second = _classifier().fit(features.iloc[:100], target.iloc[:100])
    with running_mlflow(tmp_path_factory.mktemp("mlflow")) as server, pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", server.tracking_uri)
        patch.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        for model in (first, second):
            with mlflow.start_run():
                mlflow.sklearn.log_model(
                    model,
                    name="model",
                    signature=infer_signature(features, model.predict(features)),
                    registered_model_name="wine",
                    pip_requirements=["scikit-learn"],  # no requirements inference: it imports the model anew
                )
        client = mlflow.MlflowClient(tracking_uri=server.tracking_uri)
        client.set_registered_model_alias("wine", "champion", "1")
        client.set_registered_model_alias("wine", "staging", "1")
        yield Registry(server, features, {"1": first, "2": second})


def _resolve(registry: Registry, uri: str, cache: Path, sha256: str | None = None, **environ: str) -> Path:
    path, verified = resolve_uri(
        uri, sha256=sha256, model_store=None, cache_dir=cache, timeout_s=10, credentials=SECRET,
        environ={**registry.environ, **environ},
    )  # fmt: skip
    assert verified
    return path


def _mlflow_download(registry: Registry, uri: str, folder: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """What mlflow itself downloads for `uri` (it resolves models:/ uris against MLFLOW_TRACKING_URI)."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", registry.server.tracking_uri)
    return Path(mlflow.artifacts.download_artifacts(uri, dst_path=str(folder)))


def test_a_version_and_an_alias_give_that_versions_mlflow_folder_predicting_as_the_registered_model(
    registry: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # The service's own MLFLOW_TRACKING_URI is not what the store asks: the model's Secret is.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{free_port()}")
    caplog.set_level(logging.INFO, logger="scoring_services.stores.mlflow_registry")
    second = _resolve(registry, "models:/wine/2", tmp_path / "cache")
    champion = _resolve(registry, "models:/wine@champion", tmp_path / "cache")
    for folder, version in ((second, "2"), (champion, "1")):
        assert (folder / "MLmodel").is_file()
        assert folder.parent == tmp_path / "cache"
        loaded = mlflow.pyfunc.load_model(str(folder))
        expected = registry.models[version].predict(registry.features)
        np.testing.assert_array_equal(np.asarray(loaded.predict(registry.features)), expected)
    assert set(registry.models["2"].predict(registry.features)) == {0, 1}  # the versions do differ
    assert set(registry.models["1"].predict(registry.features)) == {0, 1, 2}
    assert "resolved models:/wine@champion to version 1 (run " in caplog.text
    assert "downloaded models:/wine/2 (version 2, " in caplog.text
    # The same folder (so the same sha256) as `mlflow artifacts download -u models:/wine/VERSION` gives.
    assert directory_sha256(second) == directory_sha256(
        _mlflow_download(registry, "models:/wine/2", tmp_path / "mlflow-2", monkeypatch)
    )
    assert directory_sha256(champion) == directory_sha256(
        _mlflow_download(registry, "models:/wine/1", tmp_path / "mlflow-1", monkeypatch)
    )
    assert (champion / "registered_model_meta").read_text() == "model_name: wine\nmodel_version: '1'\n"
    latest = _resolve(registry, "models:/wine/latest", tmp_path / "cache")
    assert directory_sha256(latest) == directory_sha256(second)


def test_with_its_sha256_a_cached_folder_is_used_without_asking_the_server_and_a_wrong_one_is_refused(
    registry: Registry, tmp_path: Path
) -> None:
    first = _resolve(registry, "models:/wine/1", tmp_path / "fresh")
    sha256 = directory_sha256(first)
    cache = tmp_path / "cache"
    folder = _resolve(registry, "models:/wine@champion", cache, sha256)
    assert folder == cache / sha256
    dead = f"http://127.0.0.1:{free_port()}"
    again = _resolve(registry, "models:/wine@champion", cache, sha256, MODELOPS_SECRET_MLFLOW_MAIN_TRACKING_URI=dead)
    assert again == folder
    with pytest.raises(ModelLoadError, match=r"sha256 mismatch for models:/wine/2 \(version 2, tracking server "):
        _resolve(registry, "models:/wine/2", cache, sha256)  # version 1's sha256, cached: not served for 2
    assert [p.name for p in cache.iterdir()] == [sha256]  # no staging folder left behind
    with pytest.raises(ModelLoadError, match=r"expected [0-9a-f]{64}, its manifest has [0-9a-f]{64}; refusing to"):
        _resolve(registry, "models:/wine/2", tmp_path / "empty", sha256)
    assert list((tmp_path / "empty").iterdir()) == []


def test_an_alias_that_moves_downloads_its_new_version(registry: Registry, tmp_path: Path) -> None:
    before = _resolve(registry, "models:/wine@staging", tmp_path)
    client = mlflow.MlflowClient(tracking_uri=registry.server.tracking_uri)
    client.set_registered_model_alias("wine", "staging", "2")
    after = _resolve(registry, "models:/wine@staging", tmp_path)
    assert before != after
    assert "model_version: '2'" in (after / "registered_model_meta").read_text()
    loaded = mlflow.pyfunc.load_model(str(after))
    expected = registry.models["2"].predict(registry.features)
    np.testing.assert_array_equal(np.asarray(loaded.predict(registry.features)), expected)


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        ("models:/vin/1", r"models:/vin/1: no registered model 'vin' on the tracking server http://127\.0\.0\.1:"),
        ("models:/wine/9", r"models:/wine/9: registered model 'wine' has no version 9 \(on http://127"),
        ("models:/wine@retired", r"models:/wine@retired: registered model 'wine' has no alias 'retired'"),
        ("models:/vin@champion", r"models:/vin@champion: no registered model 'vin'"),
        ("models:/vin/latest", r"models:/vin/latest: no registered model 'vin'"),
    ],
)
def test_an_unknown_model_version_or_alias_is_a_load_error_naming_it(
    registry: Registry, tmp_path: Path, uri: str, message: str
) -> None:
    with pytest.raises(ModelLoadError, match=message):
        _resolve(registry, uri, tmp_path)


def test_a_dead_tracking_server_fails_in_seconds_naming_it(registry: Registry, tmp_path: Path) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    started = time.monotonic()
    with pytest.raises(ModelLoadError) as caught:
        _resolve(registry, "models:/wine/1", tmp_path, MODELOPS_SECRET_MLFLOW_MAIN_TRACKING_URI=dead)
    assert time.monotonic() - started < 8
    assert f"resolving models:/wine/1 (tracking server {dead}) failed: cannot connect to the tracking server" in str(
        caught.value
    )


class _Refusing(BaseHTTPRequestHandler):
    """A tracking server behind an auth proxy that refuses every request, recording its Authorization header."""

    seen: list[str | None]

    def do_GET(self) -> None:
        self.seen.append(self.headers.get("Authorization"))
        body = b"You are not authenticated."
        self.send_response(401)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def refusing() -> Iterator[tuple[str, list[str | None]]]:
    seen: list[str | None] = []
    handler = type("Handler", (_Refusing,), {"seen": seen})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", seen
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_refused_credentials_are_a_load_error_in_words_and_only_the_secrets_credentials_are_sent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, refusing: tuple[str, list[str | None]]
) -> None:
    url, seen = refusing
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", "the-services-own-token")
    secrets = {"tracking-uri": url, "token": "secret-t0ken-value"}
    with pytest.raises(ModelLoadError, match=r"the tracking server refused the credentials \(UNAUTHENTICATED") as e:
        fetch("models:/wine/1", sha256=None, cache_dir=tmp_path, secrets=secrets, timeout_s=5)
    assert "secret-t0ken-value" not in str(e.value)
    assert seen == ["Bearer secret-t0ken-value"]
    with pytest.raises(ModelLoadError, match="refused the credentials"):
        fetch("models:/wine/1", sha256=None, cache_dir=tmp_path, secrets={"tracking-uri": url}, timeout_s=5)
    assert seen[1] is None  # the service's own token does not go to the model's registry
    assert os.environ["MLFLOW_TRACKING_TOKEN"] == "the-services-own-token"  # restored
    assert "MLFLOW_HTTP_REQUEST_MAX_RETRIES" not in os.environ


def test_a_models_uri_without_a_tracking_uri_in_the_secret_is_a_load_error_saying_which_key(tmp_path: Path) -> None:
    with pytest.raises(
        ModelLoadError, match=r"the model's Secret \(credentials.secretRef\) needs the key 'tracking-uri'"
    ):
        resolve_uri("models:/wine/1", sha256=None, model_store=None, cache_dir=tmp_path, environ={})
    with pytest.raises(ModelLoadError, match=r"'tracking-uri' must be the http\(s\):// URL .* \(got a 'sqlite' uri\)"):
        fetch(
            "models:/wine/1", sha256=None, cache_dir=tmp_path, secrets={"tracking-uri": "sqlite:///x.db"}, timeout_s=1
        )
    secrets = {"tracking-uri": "http://127.0.0.1:1", "username": "u"}
    with pytest.raises(ModelLoadError, match="has the key 'username' but not 'password'"):
        fetch("models:/wine/1", sha256=None, cache_dir=tmp_path, secrets=secrets, timeout_s=1)


@pytest.mark.parametrize(
    ("uri", "hint"),
    [
        ("models:/wine", ""),
        ("models:/wine/", ""),
        ("models:/wine/Production", "registry stages are deprecated"),
        ("models:/m-44396df3f4c249f094d36109cfa04f01", "a logged model id is not a registry entry"),
        ("models:/wine/1/MLmodel", ""),
        ("models://profile@databricks/wine/1", ""),
        ("models:/@champion", ""),
        ("models:/wine@", ""),
    ],
)
def test_a_models_uri_of_another_form_is_refused_naming_the_accepted_forms(uri: str, hint: str) -> None:
    with pytest.raises(ModelLoadError, match=r"write models:/NAME/VERSION \(a number\), models:/NAME@ALIAS or") as e:
        parse_models_uri(uri)
    assert hint in str(e.value)


def test_the_accepted_forms_parse_to_name_and_version_or_alias() -> None:
    assert str(parse_models_uri("models:/wine/3")) == "models:/wine/3"
    assert parse_models_uri("models:/wine/03").version == "3"
    assert parse_models_uri("models:/wine@champion").alias == "champion"
    assert str(parse_models_uri("models:/wine/Latest")) == "models:/wine/latest"


async def test_a_scoring_service_serves_a_registered_version_by_alias_answering_as_pyfunc_predict(
    registry: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, scoring_settings: ScoringSettings
) -> None:
    """The whole path: models:/ uri and Secret in the model's configuration, the store, the mlflow runtime."""
    for name, value in registry.environ.items():
        monkeypatch.setenv(name, value)
    sha256 = directory_sha256(_resolve(registry, "models:/wine/1", tmp_path / "probe"))
    config = replace(model_config("wine", "mlflow", "models:/wine@champion", sha256=sha256), credentials=SECRET)
    rows = registry.features.iloc[::7]
    async with served([config], scoring_settings) as (_, http):
        metadata = (await http.get("/v2/models/wine")).json()
        response = await http.post("/v2/models/wine/infer", json=infer_body("input", rows.to_numpy(), "FP64"))
    assert metadata["inputs"] == [{"name": "input", "datatype": "FP64", "shape": [-1, 13]}]
    assert response.status_code == 200, response.text
    answer = np.array(response.json()["outputs"][0]["data"])
    expected = mlflow.pyfunc.load_model("models:/wine@champion").predict(rows)  # MLFLOW_TRACKING_URI: the server
    np.testing.assert_array_equal(answer, np.asarray(expected))
    np.testing.assert_array_equal(answer, registry.models["1"].predict(rows))
