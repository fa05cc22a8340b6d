"""Model URIs: relative paths, file://, http(s):// downloads into the cache with sha256 checks, archives."""

from __future__ import annotations

import functools
import hashlib
import http.server
import re
import sys
import tarfile
import threading
import types
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from conftest import Digits
from scoring_kit import infer_body, model_config, served

from scoring_services.artifacts import directory_sha256, resolve_uri, verify
from scoring_services.errors import ModelLoadError
from scoring_services.settings import ScoringSettings
from tests.archive_bombs import long_header_bomb, tar_bomb, zip_bomb


class _Handler(http.server.SimpleHTTPRequestHandler):
    hits: list[str]

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        type(self).hits.append(self.path)
        super().do_GET()


@pytest.fixture
def file_server(tmp_path: Path) -> Iterator[tuple[str, Path, list[str]]]:
    """An HTTP server over a folder; yields its base URL, the folder and the paths requested."""
    root = tmp_path / "www"
    root.mkdir()
    hits: list[str] = []
    handler = type("Handler", (_Handler,), {"hits": hits})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(handler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", root, hits
    finally:
        server.shutdown()
        server.server_close()


def test_a_relative_uri_resolves_against_the_model_store(tmp_path: Path) -> None:
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "m.bin").write_bytes(b"x")
    path, _ = resolve_uri("models/m.bin", sha256=None, model_store=tmp_path.as_uri(), cache_dir=tmp_path / "c")
    assert path == tmp_path / "models" / "m.bin"
    path, _ = resolve_uri("./models/m.bin", sha256=None, model_store=str(tmp_path), cache_dir=tmp_path / "c")
    assert path.resolve() == tmp_path / "models" / "m.bin"


def test_a_missing_artifact_or_an_unknown_scheme_is_a_load_error(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="does not exist"):
        resolve_uri((tmp_path / "nope").as_uri(), sha256=None, model_store=None, cache_dir=tmp_path)
    with pytest.raises(ModelLoadError, match="scheme 'ftp' is not supported"):
        resolve_uri("ftp://host/m", sha256=None, model_store=None, cache_dir=tmp_path)


def test_an_http_artifact_is_downloaded_verified_and_then_served_from_the_cache(
    file_server: tuple[str, Path, list[str]], tmp_path: Path
) -> None:
    base, root, hits = file_server
    (root / "model.bin").write_bytes(b"weights" * 100)
    sha = hashlib.sha256(b"weights" * 100).hexdigest()
    cache = tmp_path / "cache"
    first, verified = resolve_uri(f"{base}/model.bin", sha256=sha, model_store=None, cache_dir=cache)
    second, _ = resolve_uri(f"{base}/model.bin", sha256=sha, model_store=None, cache_dir=cache)
    assert verified
    assert first == second == cache / sha
    assert first.read_bytes() == b"weights" * 100
    assert hits == ["/model.bin"]


def test_a_download_with_the_wrong_sha256_is_refused_and_not_kept(
    file_server: tuple[str, Path, list[str]], tmp_path: Path
) -> None:
    base, root, _ = file_server
    (root / "model.bin").write_bytes(b"tampered")
    cache = tmp_path / "cache"
    with pytest.raises(ModelLoadError, match="sha256 mismatch"):
        resolve_uri(f"{base}/model.bin", sha256="0" * 64, model_store=None, cache_dir=cache)
    assert list(cache.iterdir()) == []


def test_a_missing_download_is_a_load_error(file_server: tuple[str, Path, list[str]], tmp_path: Path) -> None:
    base, _, _ = file_server
    with pytest.raises(ModelLoadError, match="HTTP 404"):
        resolve_uri(f"{base}/absent.bin", sha256=None, model_store=None, cache_dir=tmp_path)


def test_a_folder_artifact_comes_over_http_as_an_archive(
    file_server: tuple[str, Path, list[str]], tmp_path: Path
) -> None:
    base, root, _ = file_server
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "model.py").write_text("def load(path): pass\n")
    archive = root / "model.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname="model")
    sha = hashlib.sha256(archive.read_bytes()).hexdigest()
    path, _ = resolve_uri(f"{base}/model.tar.gz", sha256=sha, model_store=None, cache_dir=tmp_path / "cache")
    assert path.is_dir()
    assert (path / "model.py").read_text() == "def load(path): pass\n"


def test_a_folder_sha256_covers_every_file_and_its_name(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("a")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.txt").write_text("b")
    before = directory_sha256(tmp_path)
    verify(tmp_path, before)
    (tmp_path / "sub" / "b.txt").write_text("B")
    with pytest.raises(ModelLoadError, match="sha256 mismatch"):
        verify(tmp_path, before)


async def test_a_model_served_from_an_http_uri_answers(
    digits: Digits, file_server: tuple[str, Path, list[str]], scoring_settings: ScoringSettings
) -> None:
    base, root, _ = file_server
    (root / "digits.onnx").write_bytes(digits.onnx_path.read_bytes())
    config = model_config("digits", "onnx", f"{base}/digits.onnx", sha256=digits.onnx_sha)
    async with served([config], scoring_settings) as (_, http):
        answer = (await http.post("/v2/models/digits/infer", json=infer_body("X", digits.features[:4], "FP32"))).json()
    assert answer["outputs"][0]["data"] == digits.forest.predict(digits.features[:4]).tolist()
    assert np.array(answer["outputs"][1]["data"]).shape == (40,)


@pytest.mark.parametrize(
    ("name", "bomb", "refusal"),
    [
        ("model.zip", zip_bomb, "decompresses to more than 64 MiB (MODELOPS_SCORING_MAX_UNPACKED_BYTES)"),
        ("model.tar.gz", tar_bomb, "decompresses to more than 64 MiB (MODELOPS_SCORING_MAX_UNPACKED_BYTES)"),
        ("model.tgz", long_header_bomb, "extended headers are limited to 4 MiB per archive"),
    ],
    ids=["zip-bomb", "gzip-bomb", "pax-header"],
)
def test_a_downloaded_archive_past_its_bounds_is_refused_naming_the_limit_and_nothing_is_unpacked(
    file_server: tuple[str, Path, list[str]], tmp_path: Path, name: str, bomb: Callable[[], bytes], refusal: str
) -> None:
    base, root, _ = file_server
    (root / name).write_bytes(bomb())
    cache = tmp_path / "cache"
    with pytest.raises(ModelLoadError, match=re.escape(f"cannot unpack {base}/{name}: ")) as caught:
        resolve_uri(f"{base}/{name}", sha256=None, model_store=None, cache_dir=cache, max_unpacked_bytes=64 * 2**20)
    assert refusal in str(caught.value)
    assert [p.name for p in cache.iterdir() if p.is_dir()] == []  # no folder, no staging left behind


async def test_the_unpacked_limit_of_the_settings_applies_to_a_served_model(
    file_server: tuple[str, Path, list[str]], scoring_settings: ScoringSettings
) -> None:
    base, root, _ = file_server
    (root / "model.zip").write_bytes(zip_bomb())
    settings = scoring_settings.model_copy(update={"max_unpacked_bytes": 2**20})
    config = model_config("bomb", "python", f"{base}/model.zip")
    async with served([config], settings) as (_, http):
        entry = (await http.post("/v2/repository/index")).json()[0]
    assert entry["state"] == "UNAVAILABLE"
    assert "decompresses to more than 1 MiB (MODELOPS_SCORING_MAX_UNPACKED_BYTES)" in entry["reason"]


def test_a_torch_export_archive_with_a_central_directory_past_the_bound_is_refused_before_zipfile_loads_it(
    tmp_path: Path,
) -> None:
    import io
    import struct
    import zipfile

    from scoring_services.signatures import read_signature

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("net/models/model.json", "{}")
    data = bytearray(buffer.getvalue())
    end = data.rfind(b"PK\x05\x06")
    struct.pack_into("<L", data, end + 12, 40 * 2**20)  # the end record's size of the central directory
    path = tmp_path / "net.pt2"
    path.write_bytes(bytes(data))
    with pytest.raises(ModelLoadError) as caught:
        read_signature("torch", path, {})
    assert str(caught.value) == (
        "cannot read net.pt2 as a torch.export archive: the zip's central directory is 41,943,040 bytes; "
        "the limit is 32 MiB"
    )


def test_a_models_uri_goes_to_the_mlflow_registry_store_with_the_keys_of_the_models_secret(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The contract `scoring_services.stores.mlflow_registry` fills: `fetch(uri, *, sha256, cache_dir, secrets,
    timeout_s) -> Path`, its secrets read from MODELOPS_SECRET_<NAME>_<KEY> (a stand-in module records the call)."""
    import scoring_services.stores as stores

    calls: list[dict[str, object]] = []
    fetched = tmp_path / "model"

    def fetch(uri: str, **kwargs: object) -> Path:
        calls.append({"uri": uri, **kwargs})
        return fetched

    registry = types.ModuleType("scoring_services.stores.mlflow_registry")
    registry.fetch = fetch  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, registry.__name__, registry)
    monkeypatch.setattr(stores, "mlflow_registry", registry, raising=False)
    environ = {
        "MODELOPS_SECRET_MLFLOW_MAIN_TRACKING_URI": "http://mlflow.internal:5000",
        "MODELOPS_SECRET_MLFLOW_MAIN_TOKEN": "t0ken",
        "MODELOPS_SECRET_OTHER_TOKEN": "not this one",
    }
    path, verified = resolve_uri(
        "models:/digits@champion", sha256="ab" * 32, model_store="/srv/store", cache_dir=tmp_path / "cache",
        timeout_s=7.0, credentials="mlflow.main", environ=environ,
    )  # fmt: skip
    assert (path, verified) == (fetched, True)
    assert calls == [
        {
            "uri": "models:/digits@champion",
            "sha256": "ab" * 32,
            "cache_dir": tmp_path / "cache",
            "secrets": {"tracking-uri": "http://mlflow.internal:5000", "token": "t0ken"},
            "timeout_s": 7.0,
        }
    ]


def test_a_models_uri_without_the_registry_store_installed_is_a_load_error_saying_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import scoring_services.stores as stores

    monkeypatch.setitem(sys.modules, "scoring_services.stores.mlflow_registry", None)  # import fails
    monkeypatch.delattr(stores, "mlflow_registry", raising=False)
    with pytest.raises(ModelLoadError, match=r"models:/digits/3: models:/ uris need the MLflow registry store"):
        resolve_uri("models:/digits/3", sha256=None, model_store=None, cache_dir=tmp_path)
