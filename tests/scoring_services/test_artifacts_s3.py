"""s3:// model artifacts against a real S3 HTTP server (moto_server): files, folders, archives, the cache,
sha256 checks, the errors of a missing key or bucket or endpoint, and credentials read from the Secret's
`MODELOPS_SECRET_*` variables (never from the IR)."""

from __future__ import annotations

import hashlib
import io
import logging
import os
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import yaml
from botocore.exceptions import ClientError
from conftest import Digits
from scoring_kit import free_port, infer_body, served

from ir.models import Autoscaling, Batching, ModelSpec, Resources
from ir.render import ScoringServiceValues
from scoring_services.artifacts import directory_sha256, resolve_uri
from scoring_services.config import config_from_spec
from scoring_services.errors import ModelLoadError
from scoring_services.settings import ScoringSettings
from scoring_services.stores.s3 import S3Location, _failure
from scoring_services.stores.secrets import store_secrets
from tests.s3_kit import ACCESS_KEY_ID, SECRET_ACCESS_KEY, S3Server, running_s3

BUCKET = "models"
MODELOPS = Path(sys.executable).parent / "modelops"
FOLDER_FILES = {"config.json": b'{"layers": 2}', "weights/part-1.bin": b"\x00\x01" * 500, "README": b"hello"}


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory, digits: Digits) -> Iterator[S3Server]:
    """The server, with a bucket holding a joblib model, a folder (and an object beside it) and a .tar.gz."""
    with running_s3(tmp_path_factory.mktemp("moto")) as server:
        client = server.client()
        client.create_bucket(Bucket=BUCKET)
        client.put_object(Bucket=BUCKET, Key="digits/model.joblib", Body=digits.joblib_path.read_bytes())
        for name, data in FOLDER_FILES.items():
            client.put_object(Bucket=BUCKET, Key=f"lm/{name}", Body=data)
        client.put_object(Bucket=BUCKET, Key="lm-notes.txt", Body=b"not in the folder lm/")
        client.put_object(Bucket=BUCKET, Key="bundle.tar.gz", Body=BUNDLE)
        yield server


def _tar_gz(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(f"bundle/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


BUNDLE = _tar_gz(FOLDER_FILES)


def _folder_sha(tmp: Path) -> str:
    for name, data in FOLDER_FILES.items():
        (tmp / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp / name).write_bytes(data)
    return directory_sha256(tmp)


def _fetch(uri: str, cache: Path, env: dict[str, str], sha256: str | None = None, **extra: Any) -> Path:
    extra.setdefault("timeout_s", 10)
    path, verified = resolve_uri(
        uri, sha256=sha256, model_store=None, cache_dir=cache, credentials="minio", environ=env, **extra
    )
    assert verified
    return path


def _signed_by(request: dict[str, Any]) -> str:
    authorization = next(v for k, v in request["headers"].items() if k.lower() == "authorization")
    return str(authorization.split("Credential=", 1)[1].split("/", 1)[0])


async def test_a_joblib_model_on_s3_is_served_end_to_end_with_the_secrets_credentials(
    s3: S3Server, digits: Digits, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = ModelSpec.model_validate(
        {
            "runtime": "sklearn",
            "uri": f"s3://{BUCKET}/digits/model.joblib",
            "sha256": digits.joblib_sha,
            "credentials": {"secretRef": {"name": "minio"}},
            "inputs": [{"name": "input", "datatype": "FP64", "shape": [-1, 64]}],
            "outputs": [{"name": "predict_proba", "datatype": "FP64", "shape": [-1, 10]}],
        }
    )
    config = config_from_spec("digits", spec)
    assert config.credentials == "minio"  # the IR names the Secret, nothing of what it holds
    for name, value in s3.secret_env("minio").items():
        monkeypatch.setenv(name, value)
    before = len(s3.requests())
    settings = ScoringSettings(cache_dir=tmp_path / "cache", inference_threads=1, exit_on_load_failure=False)
    rows = digits.features[:5].astype(np.float64)
    async with served([config], settings) as (_, http):
        answer = (await http.post("/v2/models/digits/infer", json=infer_body("input", rows, "FP64"))).json()
    proba = next(o for o in answer["outputs"] if o["name"] == "predict_proba")
    np.testing.assert_allclose(np.reshape(proba["data"], (5, 10)), digits.forest.predict_proba(rows))
    made = s3.requests()[before:]
    assert made and {_signed_by(r) for r in made} == {ACCESS_KEY_ID}
    assert (tmp_path / "cache" / digits.joblib_sha).is_file()


@pytest.mark.skipif(not MODELOPS.exists(), reason="the modelops console script is not installed")
def test_the_local_backend_form_loads_an_s3_model_named_in_a_values_document(
    s3: S3Server, digits: Digits, tmp_path: Path
) -> None:
    """`modelops scoring-service --values` as the local backend starts it: the model's Secret named in the
    values, its keys in the environment the backend passes on (its own, without MODELOPS_SCHEDULER_*)."""
    spec = ModelSpec.model_validate(
        {
            "runtime": "sklearn",
            "uri": f"s3://{BUCKET}/digits/model.joblib",
            "sha256": digits.joblib_sha,
            "credentials": {"secretRef": {"name": "team-minio"}},
            "inputs": [{"name": "input", "datatype": "FP64", "shape": [-1, 64]}],
            "outputs": [{"name": "predict_proba", "datatype": "FP64", "shape": [-1, 10]}],
        }
    )
    service = ScoringServiceValues(
        name="digits", model=spec, replicas=1, autoscaling=Autoscaling(), batching=Batching(), resources=Resources()
    )
    values = tmp_path / "values.yaml"
    document = {"global": {}, "scoringServices": {"digits": service.model_dump(mode="json", by_alias=True)}}
    values.write_text(yaml.safe_dump(document))
    assert "team-minio" in values.read_text() and SECRET_ACCESS_KEY not in values.read_text()
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "MODELOPS_"))}
    env |= {**s3.secret_env("team-minio"), "MODELOPS_SCORING_PORT": str(port), "HOME": str(tmp_path),
            "MODELOPS_SCORING_CACHE_DIR": str(tmp_path / "cache")}  # fmt: skip
    command = [str(MODELOPS), "scoring-service", "--values", str(values), "--service", "digits"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        deadline = time.monotonic() + 60
        while not _ready(port):
            assert process.poll() is None, process.stdout.read() if process.stdout else ""
            assert time.monotonic() < deadline, "the service did not become ready"
            time.sleep(0.1)
        rows = digits.features[:3].astype(np.float64)
        answer = httpx.post(
            f"http://127.0.0.1:{port}/v2/models/digits/infer", json=infer_body("input", rows, "FP64"), timeout=10
        ).json()
        np.testing.assert_allclose(np.reshape(answer["outputs"][0]["data"], (3, 10)), digits.forest.predict_proba(rows))
    finally:
        process.terminate()
        output, _ = process.communicate(timeout=30)
    assert f"s3://{BUCKET}/digits/model.joblib" in output and SECRET_ACCESS_KEY not in output


def _ready(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/v2/health/ready", timeout=1, trust_env=False).status_code == 200
    except httpx.TransportError:
        return False


def test_a_second_fetch_with_a_sha256_uses_the_cache_without_asking_the_store(
    s3: S3Server, digits: Digits, tmp_path: Path
) -> None:
    env = s3.secret_env("minio")
    first = _fetch(f"s3://{BUCKET}/digits/model.joblib", tmp_path, env, digits.joblib_sha)
    assert first == tmp_path / digits.joblib_sha
    count = len(s3.requests())
    second = _fetch(f"s3://{BUCKET}/digits/model.joblib", tmp_path, env, digits.joblib_sha)
    assert second == first
    assert len(s3.requests()) == count


def test_a_prefix_is_a_folder_downloaded_object_by_object_and_verified_by_its_manifest(
    s3: S3Server, tmp_path: Path
) -> None:
    sha = _folder_sha(tmp_path / "expected")
    env = s3.secret_env("minio")
    for index, uri in enumerate((f"s3://{BUCKET}/lm/", f"s3://{BUCKET}/lm")):  # lm: no object, objects under lm/
        cache = tmp_path / f"cache-{index}"
        folder = _fetch(uri, cache, env, sha)
        assert folder == cache / sha and folder.is_dir()
        assert {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()} == set(FOLDER_FILES)
        assert directory_sha256(folder) == sha  # lm-notes.txt, beside the folder, is not in it


def test_a_folder_with_a_wrong_sha256_is_refused_and_left_out_of_the_cache(s3: S3Server, tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match=f"sha256 mismatch for the folder s3://{BUCKET}/lm/"):
        _fetch(f"s3://{BUCKET}/lm/", tmp_path, s3.secret_env("minio"), "0" * 64)
    assert [p.name for p in tmp_path.iterdir()] == []


def test_a_tar_gz_object_is_unpacked_as_over_http(s3: S3Server, tmp_path: Path) -> None:
    sha = hashlib.sha256(BUNDLE).hexdigest()
    folder = _fetch(f"s3://{BUCKET}/bundle.tar.gz", tmp_path, s3.secret_env("minio"), sha)
    assert (
        folder == tmp_path / sha
        and (folder / "weights" / "part-1.bin").read_bytes() == FOLDER_FILES["weights/part-1.bin"]
    )


def test_a_wrong_sha256_is_refused_naming_the_object_and_nothing_is_cached(
    s3: S3Server, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    token = "session-token-never-logged"
    env = {**s3.secret_env("minio"), "MODELOPS_SECRET_MINIO_SESSION_TOKEN": token}
    with pytest.raises(ModelLoadError, match=f"sha256 mismatch for s3://{BUCKET}/digits/model.joblib") as raised:
        _fetch(f"s3://{BUCKET}/digits/model.joblib", tmp_path, env, "1" * 64)
    assert [p.name for p in tmp_path.iterdir()] == []
    for secret in (SECRET_ACCESS_KEY, token):
        assert secret not in str(raised.value) and secret not in caplog.text
    sent = s3.requests()[-1]["headers"]
    assert sent.get("X-Amz-Security-Token") == token  # the token was used, and only sent


def test_a_missing_key_and_a_missing_bucket_are_load_errors_naming_them(s3: S3Server, tmp_path: Path) -> None:
    env = s3.secret_env("minio")
    with pytest.raises(ModelLoadError, match=rf"s3://{BUCKET}/absent.joblib .*no object 'absent.joblib'"):
        _fetch(f"s3://{BUCKET}/absent.joblib", tmp_path, env)
    with pytest.raises(ModelLoadError, match="the bucket 'no-such-bucket' does not exist"):
        _fetch("s3://no-such-bucket/model.joblib", tmp_path, env)


def test_an_endpoint_that_does_not_answer_is_a_load_error_naming_it(tmp_path: Path) -> None:
    endpoint = f"http://127.0.0.1:{free_port()}"
    env = {"MODELOPS_SECRET_MINIO_ENDPOINT": endpoint, "MODELOPS_SECRET_MINIO_ACCESS_KEY_ID": "a",
           "MODELOPS_SECRET_MINIO_SECRET_ACCESS_KEY": "b"}  # fmt: skip
    with pytest.raises(ModelLoadError, match=f"s3://{BUCKET}/m.joblib \\(endpoint {endpoint}\\)"):
        _fetch(f"s3://{BUCKET}/m.joblib", tmp_path, env, timeout_s=2)


def test_credentials_come_only_from_the_named_secrets_variables(s3: S3Server, tmp_path: Path) -> None:
    env = {**s3.secret_env("minio"), **{k: "x" for k in s3.secret_env("other")}}
    assert store_secrets("s3", "minio", env) == {
        "endpoint": s3.endpoint,
        "region": "us-east-1",
        "access-key-id": ACCESS_KEY_ID,
        "secret-access-key": SECRET_ACCESS_KEY,
    }
    assert store_secrets("s3", None, env) == {}
    before = len(s3.requests())
    _fetch(f"s3://{BUCKET}/lm/README", tmp_path, env)
    assert {_signed_by(r) for r in s3.requests()[before:]} == {ACCESS_KEY_ID}
    half = {k: v for k, v in env.items() if not k.endswith("_SECRET_ACCESS_KEY")}
    with pytest.raises(ModelLoadError, match="MODELOPS_SECRET_MINIO_SECRET_ACCESS_KEY") as raised:
        _fetch(f"s3://{BUCKET}/lm/README", tmp_path / "other", half)
    assert ACCESS_KEY_ID not in str(raised.value)


def test_a_folder_past_the_size_limit_is_refused_before_anything_is_downloaded(s3: S3Server, tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="MODELOPS_SCORING_MAX_UNPACKED_BYTES"):
        _fetch(f"s3://{BUCKET}/lm/", tmp_path, s3.secret_env("minio"), max_unpacked_bytes=100)
    assert [p.name for p in tmp_path.iterdir()] == []


@pytest.mark.parametrize(
    ("code", "status", "words"),
    [
        ("AccessDenied", 403, "access denied"),
        ("InvalidAccessKeyId", 403, "refused the credentials (InvalidAccessKeyId)"),
        ("SlowDown", 503, "SlowDown (HTTP 503)"),
    ],
)
def test_the_stores_refusals_read_as_words(code: str, status: int, words: str) -> None:
    error = ClientError({"Error": {"Code": code}, "ResponseMetadata": {"HTTPStatusCode": status}}, "GetObject")
    message = str(_failure("downloading", S3Location("b", "k/m.onnx"), "http://minio:9000", error))
    assert message.startswith("downloading s3://b/k/m.onnx (endpoint http://minio:9000) failed: ")
    assert words in message


def test_an_s3_uri_without_a_bucket_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="names no bucket"):
        _fetch("s3:///model.joblib", tmp_path, {})


def test_a_folder_with_an_object_key_that_leaves_it_is_refused_and_nothing_is_written(
    s3: S3Server, tmp_path: Path
) -> None:
    client = s3.client()
    client.put_object(Bucket=BUCKET, Key="unsafe/model.py", Body=b"def load(path): pass\n")
    client.put_object(Bucket=BUCKET, Key="unsafe/../escape.py", Body=b"import os\n")  # a key S3 keeps as it is
    cache = tmp_path / "cache"
    with pytest.raises(ModelLoadError, match=r"object key 'unsafe/\.\./escape\.py' is not a safe relative path"):
        _fetch(f"s3://{BUCKET}/unsafe/", cache, s3.secret_env("minio"))
    assert not (tmp_path / "escape.py").exists() and list(cache.iterdir()) == []
