"""`/api/v1/pipelines` through httpx on SQLite and PostgreSQL: deploy in three forms, dedupe, validation errors
with locations, media types and size limits, listing, the stored IR and the values preview."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from api_kit import (
    READ,
    WRITE,
    YAML,
    Api,
    as_files,
    as_tarball,
    as_yaml,
    assert_error,
    changed,
    running,
    settings_for,
    tiny_documents,
)

import ir
from ir.load import MAX_BUNDLE_BYTES
from tests.archive_bombs import long_header_bomb, tar_bomb


@pytest.fixture
async def api(api_database_url: str, tmp_path: Path) -> AsyncIterator[Api]:
    async with running(settings_for(tmp_path / "home", api_database_url)) as started:
        yield started


PIPELINES = "/api/v1/pipelines"


@pytest.mark.parametrize("form", ["yaml", "json", "gzip"])
async def test_a_bundle_is_deployed_in_each_form_as_version_one(api: Api, form: str) -> None:
    docs = tiny_documents()
    if form == "yaml":
        response = await api.client.post(PIPELINES, content=as_yaml(docs), headers={**YAML, **WRITE})
    elif form == "json":
        response = await api.client.post(PIPELINES, json={"files": as_files(docs)}, headers=WRITE)
    else:
        response = await api.client.post(
            PIPELINES, content=as_tarball(as_files(docs)), headers={"Content-Type": "application/gzip", **WRITE}
        )
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["name"] == "tiny"
    assert body["version"] == 1
    assert body["created"] is True
    assert body["created_by"] == "ci"
    assert body["digest"] == ir.load_bundle_files(as_files(docs)).digest()


async def test_the_same_ir_in_another_form_returns_the_stored_version_with_200(api: Api) -> None:
    first = await api.client.post(PIPELINES, content=as_yaml(tiny_documents()), headers={**YAML, **WRITE})
    again = await api.client.post(PIPELINES, json={"files": as_files(tiny_documents())}, headers=WRITE)
    assert (first.status_code, again.status_code) == (201, 200)
    assert again.json()["version"] == 1
    assert again.json()["created"] is False
    assert again.json()["digest"] == first.json()["digest"]


@pytest.mark.parametrize("media", ["text/yaml", "application/x-yaml", "application/yaml; charset=utf-8"])
async def test_yaml_is_accepted_under_its_usual_media_types(api: Api, media: str) -> None:
    response = await api.client.post(
        PIPELINES, content=as_yaml(tiny_documents()), headers={"Content-Type": media, **WRITE}
    )
    assert response.status_code == 201, response.text


async def test_a_changed_ir_becomes_the_next_version(api: Api) -> None:
    await api.deploy()
    body = await api.deploy(changed(tiny_documents(), "data/other.csv"))
    assert (body["version"], body["created"]) == (2, True)


async def test_an_invalid_bundle_is_422_with_every_problem_and_its_location(api: Api) -> None:
    docs = tiny_documents()
    docs[3]["spec"]["steps"][0]["score"]["model"] = "tiny-fr"  # unknown model
    docs[4]["spec"]["runtime"] = "tensorflow-1"  # unknown runtime
    response = await api.client.post(PIPELINES, content=as_yaml(docs), headers={**YAML, **WRITE})
    error = assert_error(response, 422, "invalid_ir")
    details = error["details"]
    assert isinstance(details, list) and len(details) >= 2
    assert all(set(issue) == {"file", "document", "path", "message", "line"} for issue in details)
    paths = {issue["path"] for issue in details}
    assert "spec.steps[0].score.model" in paths
    assert any(path.startswith("spec.runtime") for path in paths)
    assert all(issue["file"] == "bundle.yaml" for issue in details)
    assert any(isinstance(issue["line"], int) for issue in details)
    listing = await api.client.get(PIPELINES, headers=READ)
    assert listing.json() == {"items": []}


MALFORMED_BUNDLES = [
    (b"{not json", "application/json"),
    (b'{"files": "pipeline.yaml"}', "application/json"),
    (b'{"files": {}}', "application/json"),
    (b'{"files": {"a.yaml": 5}}', "application/json"),
    (b"\x1f\x8b\x08 not really gzip", "application/gzip"),
    (b"just: a mapping", "application/yaml"),
    (b"\xff\xfe\x00binary", "application/yaml"),
    (b"", "application/yaml"),
    (b"a: [unclosed", "application/x-yaml"),
]


async def test_malformed_bundles_are_422_with_the_error_body(api: Api) -> None:
    for content, media in MALFORMED_BUNDLES:
        response = await api.client.post(PIPELINES, content=content, headers={"Content-Type": media, **WRITE})
        error = assert_error(response, 422, "invalid_ir")
        assert error["details"], content


@pytest.mark.parametrize("media", [None, "text/plain", "application/xml", "multipart/form-data; boundary=x"])
async def test_an_unsupported_media_type_is_415(api: Api, media: str | None) -> None:
    headers = dict(WRITE)
    if media is not None:
        headers["Content-Type"] = media
    response = await api.client.post(PIPELINES, content=as_yaml(tiny_documents()), headers=headers)
    error = assert_error(response, 415, "unsupported_media_type")
    assert "application/yaml" in error["details"]["accepted"]


async def test_a_bundle_over_the_size_limit_is_413(api: Api) -> None:
    body = b"# padding\n" * (MAX_BUNDLE_BYTES // 10 + 1)
    response = await api.client.post(PIPELINES, content=body, headers={**YAML, **WRITE})
    assert_error(response, 413, "payload_too_large")


async def test_a_streamed_bundle_over_the_size_limit_is_413(api: Api) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(MAX_BUNDLE_BYTES // 2**20 + 1):
            yield b"#" * 2**20

    response = await api.client.post(PIPELINES, content=chunks(), headers={**YAML, **WRITE})
    assert_error(response, 413, "payload_too_large")


async def test_pipelines_are_listed_with_their_versions(api: Api) -> None:
    await api.deploy()
    await api.deploy(changed(tiny_documents(), "data/b.csv"))
    await api.deploy(tiny_documents("alpha"))
    response = await api.client.get(PIPELINES, headers=READ)
    assert response.status_code == 200
    items = response.json()["items"]
    assert [p["name"] for p in items] == ["alpha", "tiny"]
    tiny = items[1]
    assert tiny["latest_version"] == 2
    assert [v["version"] for v in tiny["versions"]] == [1, 2]
    assert all(v["created_by"] == "ci" for v in tiny["versions"])


async def test_one_pipeline_is_shown_with_its_versions(api: Api) -> None:
    await api.deploy()
    response = await api.client.get(f"{PIPELINES}/tiny", headers=READ)
    assert response.status_code == 200
    assert response.json()["versions"][0]["version"] == 1


async def test_the_stored_ir_of_a_version_is_the_normalised_documents(api: Api) -> None:
    deployed = await api.deploy()
    response = await api.client.get(f"{PIPELINES}/tiny/versions/1", headers=READ)
    assert response.status_code == 200
    body = response.json()
    assert body["digest"] == deployed["digest"]
    bundle = ir.bundle_from_canonical(body["documents"])
    assert bundle.digest() == deployed["digest"]
    assert body["documents"][0]["kind"] == "ScoringPipeline"


@pytest.mark.parametrize(
    "path",
    ["/api/v1/pipelines/nope", "/api/v1/pipelines/tiny/versions/7", "/api/v1/pipelines/nope/versions/1/values"],
)
async def test_unknown_pipelines_and_versions_are_404(api: Api, path: str) -> None:
    await api.deploy()
    assert_error(await api.client.get(path, headers=READ), 404)


MALFORMED_PATHS = [
    "/api/v1/pipelines/Not_A_Name",
    "/api/v1/pipelines/tiny/versions/0",
    "/api/v1/pipelines/tiny/versions/abc",
    "/api/v1/pipelines/tiny/versions/99999999999999999999",
    "/api/v1/pipelines/%00",
    "/api/v1/pipelines/" + "a" * 300,
]


async def test_malformed_names_and_version_numbers_are_422(api: Api) -> None:
    for path in MALFORMED_PATHS:
        assert_error(await api.client.get(path, headers=READ), 422, "invalid_request")


async def test_the_values_preview_renders_with_parameters_and_the_server_globals(api: Api) -> None:
    await api.deploy()
    response = await api.client.get(
        f"{PIPELINES}/tiny/versions/1/values",
        params=[("param", "input=data/today.csv"), ("param", "threshold=0.9")],
        headers=READ,
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["job_id"] == "00000000-0000-0000-0000-000000000000"
    values = body["values"]
    assert values["global"]["jobId"] == body["job_id"]
    assert values["global"]["scheduler"]["url"] == api.settings.public_url
    assert "token" not in values["global"]["scheduler"]
    assert values["pipeline"]["parameters"] == {"input": "data/today.csv", "limit": 10, "threshold": 0.9}
    # a relative data path resolves against the data root: unset, the server's working directory
    assert values["dataChannels"]["tiny-in"]["spec"]["file"]["path"] == str(Path.cwd() / "data/today.csv")
    assert values["global"]["dataRoot"] == str(Path.cwd())
    assert set(values["scoringServices"]) == {"tiny-rf"}


@pytest.mark.parametrize(
    ("param", "where"),
    [("limit=many", "limit"), ("nope=1", "nope"), ("no-equals-sign", "no-equals-sign"), ("=1", "=1")],
)
async def test_a_bad_preview_parameter_is_422_with_its_issue(api: Api, param: str, where: str) -> None:
    await api.deploy()
    response = await api.client.get(f"{PIPELINES}/tiny/versions/1/values", params={"param": param}, headers=READ)
    error = assert_error(response, 422, "invalid_ir")
    assert [issue["path"] for issue in error["details"]] == [where]


@pytest.mark.parametrize(
    ("bomb", "refusal"),
    [
        (
            long_header_bomb,
            "the archive has a pax extended header of 209,715,216 bytes; extended headers are limited to",
        ),
        (tar_bomb, "the archive decompresses to more than 32 MiB (the bundle limit)"),
    ],
    ids=["pax-header", "gzip-bomb"],
)
async def test_a_hostile_tarball_is_422_naming_the_limit_and_the_server_goes_on(
    api: Api, bomb: Callable[[], bytes], refusal: str
) -> None:
    response = await api.client.post(PIPELINES, content=bomb(), headers={"Content-Type": "application/gzip", **WRITE})
    error = assert_error(response, 422, "invalid_ir")
    (issue,) = error["details"]
    assert refusal in issue["message"]
    assert (await api.client.get("/healthz")).status_code == 200
