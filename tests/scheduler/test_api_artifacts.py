"""`/api/v1/artifacts` through httpx on SQLite and PostgreSQL: content-addressed uploads of files and folders,
idempotence, declared digests, size limits, scopes, HEAD/GET, and the job-scoped route the Kubernetes
`fetch-model` init container reads with the job's token."""

from __future__ import annotations

import copy
import hashlib
import io
import tarfile
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from api_kit import READ, WRITE, Api, as_yaml, assert_error, bearer, running, settings_for, tiny_documents

import ir
from scoring_services.artifacts import directory_sha256
from tests import archive_bombs
from tests.archive_bombs import long_header_bomb, tar_bomb

ARTIFACTS = "/api/v1/artifacts"
OCTETS = {"Content-Type": "application/octet-stream"}
MODEL_BYTES = b"a model's bytes \x00\x01\x02" * 100


@pytest.fixture
async def api(api_database_url: str, tmp_path: Path) -> AsyncIterator[Api]:
    async with running(settings_for(tmp_path / "home", api_database_url, artifact_max_bytes=64 * 1024)) as started:
        yield started


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def tar_of(files: dict[str, bytes], *, gzip: bool = True) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz" if gzip else "w") as archive:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


async def test_a_file_is_stored_under_its_sha256_and_a_second_upload_changes_nothing(api: Api) -> None:
    first = await api.client.post(ARTIFACTS, content=MODEL_BYTES, headers={**OCTETS, **WRITE})
    assert first.status_code == 201, first.text
    digest = sha(MODEL_BYTES)
    assert first.json() == {
        "sha256": digest,
        "kind": "file",
        "size": len(MODEL_BYTES),
        "uri": f"modelops-artifact:sha256:{digest}",
        "created": True,
    }
    stored = api.settings.home / "artifacts" / "sha256" / digest
    assert stored.read_bytes() == MODEL_BYTES
    again = await api.client.post(ARTIFACTS, content=MODEL_BYTES, headers={**OCTETS, **WRITE})
    assert again.status_code == 200 and again.json()["created"] is False
    assert list(stored.parent.iterdir()) == [stored]
    assert list((api.settings.home / "artifacts" / "tmp").iterdir()) == []


async def test_head_and_get_answer_what_is_stored_and_404_for_what_is_not(api: Api) -> None:
    digest = sha(MODEL_BYTES)
    missing = await api.client.head(f"{ARTIFACTS}/{digest}", headers=READ)
    assert missing.status_code == 404
    assert_error(await api.client.get(f"{ARTIFACTS}/{digest}", headers=READ), 404, "artifact_not_found")
    await api.client.post(ARTIFACTS, content=MODEL_BYTES, headers={**OCTETS, **WRITE})
    found = await api.client.head(f"{ARTIFACTS}/{digest}", headers=READ)
    assert found.status_code == 200 and found.headers["x-artifact-kind"] == "file"
    got = await api.client.get(f"{ARTIFACTS}/{digest}", headers=READ)
    assert got.status_code == 200 and got.content == MODEL_BYTES
    assert_error(await api.client.get(f"{ARTIFACTS}/not-a-digest", headers=READ), 422)


async def test_a_declared_sha256_that_does_not_match_is_refused_and_nothing_is_stored(api: Api) -> None:
    wrong = "ab" * 32
    response = await api.client.post(ARTIFACTS, params={"sha256": wrong}, content=MODEL_BYTES, headers=WRITE)
    error = assert_error(response, 422, "sha256_mismatch")
    assert error["details"] == {"declared": wrong, "actual": sha(MODEL_BYTES)}
    assert not (api.settings.home / "artifacts" / "sha256" / sha(MODEL_BYTES)).exists()
    right = await api.client.post(ARTIFACTS, params={"sha256": sha(MODEL_BYTES)}, content=MODEL_BYTES, headers=WRITE)
    assert right.status_code == 201


async def test_a_folder_is_stored_unpacked_under_its_manifest_digest_and_served_as_a_gzip_tar(
    api: Api, tmp_path: Path
) -> None:
    files = {"config.json": b'{"a": 1}', "weights/part-0.bin": b"\x00" * 50}
    response = await api.client.post(ARTIFACTS, params={"kind": "folder"}, content=tar_of(files), headers=WRITE)
    assert response.status_code == 201, response.text
    body = response.json()
    reference = tmp_path / "reference"
    for name, data in files.items():
        (reference / name).parent.mkdir(parents=True, exist_ok=True)
        (reference / name).write_bytes(data)
    assert body["sha256"] == directory_sha256(reference)  # what a Model's sha256 declares for a folder
    assert body["kind"] == "folder" and body["size"] == sum(len(d) for d in files.values())
    stored = api.settings.home / "artifacts" / "sha256" / body["sha256"]
    assert (stored / "weights" / "part-0.bin").read_bytes() == b"\x00" * 50
    plain = await api.client.post(
        ARTIFACTS, params={"kind": "folder"}, content=tar_of(files, gzip=False), headers=WRITE
    )
    assert plain.status_code == 200 and plain.json()["sha256"] == body["sha256"]
    got = await api.client.get(f"{ARTIFACTS}/{body['sha256']}", headers=READ)
    assert got.headers["content-type"] == "application/gzip" and got.headers["x-artifact-kind"] == "folder"
    with tarfile.open(fileobj=io.BytesIO(got.content)) as archive:
        assert {m.name: archive.extractfile(m).read() for m in archive.getmembers()} == files  # type: ignore[union-attr]


async def test_a_folder_archive_with_a_link_or_that_is_not_a_tar_is_refused(api: Api) -> None:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        link = tarfile.TarInfo("escape")
        link.type = tarfile.SYMTYPE
        link.linkname = "/etc/passwd"
        archive.addfile(link)
    linked = await api.client.post(ARTIFACTS, params={"kind": "folder"}, content=buffer.getvalue(), headers=WRITE)
    assert "links and devices are refused" in assert_error(linked, 422)["message"]
    garbage = await api.client.post(ARTIFACTS, params={"kind": "folder"}, content=b"not a tar", headers=WRITE)
    assert "not a readable tar" in assert_error(garbage, 422)["message"]


async def test_an_artifact_beyond_the_size_limit_is_refused_with_413_declared_or_streamed(api: Api) -> None:
    too_big = b"x" * (64 * 1024 + 1)
    declared = await api.client.post(ARTIFACTS, content=too_big, headers=WRITE)
    assert assert_error(declared, 413, "payload_too_large")["details"] == {"limit_bytes": 64 * 1024}

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: counted as it arrives
        for start in range(0, len(too_big), 4096):
            yield too_big[start : start + 4096]

    streamed = await api.client.post(ARTIFACTS, content=chunks(), headers=WRITE)
    assert_error(streamed, 413, "payload_too_large")
    assert list((api.settings.home / "artifacts" / "tmp").iterdir()) == []
    assert list((api.settings.home / "artifacts" / "sha256").iterdir()) == []


async def test_uploading_needs_the_write_scope_and_reading_the_read_scope(api: Api) -> None:
    assert_error(await api.client.post(ARTIFACTS, content=MODEL_BYTES), 401)
    assert_error(await api.client.post(ARTIFACTS, content=MODEL_BYTES, headers=READ), 403, "insufficient_scope")
    assert_error(await api.client.get(f"{ARTIFACTS}/{sha(MODEL_BYTES)}"), 401)


async def test_a_job_token_reads_the_artifacts_its_pipeline_names_and_nothing_else(api: Api) -> None:
    uploaded = (await api.client.post(ARTIFACTS, content=MODEL_BYTES, headers=WRITE)).json()
    other = (await api.client.post(ARTIFACTS, content=b"another model", headers=WRITE)).json()
    documents = copy.deepcopy(tiny_documents())
    model = next(doc for doc in documents if doc["kind"] == "Model")
    model["spec"].update(uri=uploaded["uri"], sha256=uploaded["sha256"])
    await api.deploy(documents)
    job = await api.start_job()
    token = bearer(api.service.job_token(uuid.UUID(job["id"])))
    route = f"/api/v1/jobs/{job['id']}/artifacts"
    got = await api.client.get(f"{route}/{uploaded['sha256']}", headers=token)
    assert got.status_code == 200 and got.content == MODEL_BYTES
    assert_error(await api.client.get(f"{route}/{other['sha256']}", headers=token), 404, "artifact_not_found")
    another_job = await api.start_job()
    foreign = bearer(api.service.job_token(uuid.UUID(another_job["id"])))
    assert_error(await api.client.get(f"{route}/{uploaded['sha256']}", headers=foreign), 401, "invalid_job_token")


async def test_a_stored_artifact_renders_to_the_store_folder_with_its_sha256_as_the_models_digest(api: Api) -> None:
    uploaded = (await api.client.post(ARTIFACTS, content=MODEL_BYTES, headers=WRITE)).json()
    documents = tiny_documents()
    model = next(doc for doc in documents if doc["kind"] == "Model")
    model["spec"].update(runtime="onnx", uri=uploaded["uri"])  # onnx: a sha256 may be left out
    del model["spec"]["sha256"]
    deployed = await api.client.post(
        "/api/v1/pipelines", content=as_yaml(documents), headers={"Content-Type": "application/yaml", **WRITE}
    )
    assert deployed.status_code == 201, deployed.text
    preview = await api.client.get("/api/v1/pipelines/tiny/versions/1/values", headers=READ)
    assert preview.status_code == 200, preview.text
    values = preview.json()["values"]
    rendered = values["scoringServices"]["tiny-rf"]["model"]
    assert rendered["uri"] == (api.settings.home / "artifacts" / "sha256" / uploaded["sha256"]).resolve().as_uri()
    assert rendered["sha256"] == uploaded["sha256"]
    assert ir.artifact_digest(uploaded["uri"]) == uploaded["sha256"]


@pytest.fixture
async def roomy_api(api_database_url: str, tmp_path: Path) -> AsyncIterator[Api]:
    """A server whose artifact limit (4 MiB) lets a bomb's compressed body in, but not what it decompresses to."""
    async with running(settings_for(tmp_path / "home", api_database_url, artifact_max_bytes=4 * 2**20)) as started:
        yield started


@pytest.mark.parametrize(
    ("bomb", "refusal", "details"),
    [
        (tar_bomb, "the archive decompresses to more than 4 MiB (artifact_max_bytes)", {"limit_bytes": 4 * 2**20}),
        (long_header_bomb, "extended headers are limited to 4 MiB per archive", {"limit_bytes": 4 * 2**20}),
    ],
    ids=["gzip-bomb", "pax-header"],
)
async def test_a_hostile_folder_tar_is_413_naming_the_limit_and_nothing_is_kept(
    roomy_api: Api, bomb: Callable[[], bytes], refusal: str, details: dict[str, int]
) -> None:
    response = await roomy_api.client.post(ARTIFACTS, params={"kind": "folder"}, content=bomb(), headers=WRITE)
    error = assert_error(response, 413, "payload_too_large")
    assert refusal in error["message"] and error["details"] == details
    assert list((roomy_api.settings.home / "artifacts" / "tmp").iterdir()) == []
    assert list((roomy_api.settings.home / "artifacts" / "sha256").iterdir()) == []


@pytest.mark.parametrize(
    ("bomb", "refusal"),
    [
        ("tar_bomb", "the archive decompresses to more than 64 MiB (artifact_max_bytes)"),
        ("long_header_bomb", "extended headers are limited to 4 MiB per archive"),
    ],
)
def test_storing_a_hostile_folder_tar_keeps_the_memory_of_the_server_flat(
    tmp_path: Path, bomb: str, refusal: str
) -> None:
    staged = tmp_path / "upload.tar.gz"
    staged.write_bytes(getattr(archive_bombs, bomb)())
    message, growth = archive_bombs.peak_growth_mb(
        f"from pathlib import Path\nfrom scheduler.artifacts import ArtifactStore\n"
        f"store = ArtifactStore(Path({str(tmp_path / 'home')!r}), 64 * 2**20)\nstore.staged_file()",
        f"""
        try:
            store.put_folder(Path({str(staged)!r}))
        except Exception as exc:
            return str(exc)
        return "stored"
        """,
    )
    assert refusal in message
    assert growth < 50


async def test_a_folder_tar_member_the_file_system_refuses_is_422_not_a_server_error(api: Api) -> None:
    refused = tar_of({"n" * 300 + ".txt": b"x"})  # a name longer than any file system allows
    response = await api.client.post(ARTIFACTS, params={"kind": "folder"}, content=refused, headers=WRITE)
    assert "the body is not a readable tar of a folder: " in assert_error(response, 422)["message"]
    assert list((api.settings.home / "artifacts" / "tmp").iterdir()) == []
