"""The trust model (docs/security.md, `scheduler.trust`): code-running runtimes need the `code` scope, model uris
and file paths stay inside the configured roots (after symlinks), remote schemes are allowed per setting.

The app runs with a backend named `local` that records calls and runs nothing: the checks are the scheduler's,
made at deploy and at job start, before any component would read a file.
"""

from __future__ import annotations

import copy
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from api_kit import (
    ADMIN,
    TOKENS,
    WRITE,
    YAML,
    FakeBackend,
    as_yaml,
    assert_error,
    bearer,
    settings_for,
    tiny_documents,
)

from scheduler.app import create_app
from scheduler.settings import SchedulerSettings, TokenSpec, hash_token
from scheduler.store import JobStore

CODE_TOKEN = "cd-7d6c5b4a3f2e41d0c9b8a7f6e5d4c3b2"
CODE = bearer(CODE_TOKEN)
CODER = TokenSpec(name="coder", scope="code", sha256=hash_token(CODE_TOKEN))


@asynccontextmanager
async def serving(settings: SchedulerSettings, backend: str = "local") -> AsyncIterator[httpx.AsyncClient]:
    def factory(store: JobStore, _settings: SchedulerSettings, _secret: bytes) -> FakeBackend:
        return FakeBackend(store, drive=False, name=backend)

    app = create_app(settings, backend_factory=factory)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app)
        async with httpx.AsyncClient(transport=transport, base_url="http://scheduler.test") as client:
            yield client


@pytest.fixture
def folders(tmp_path: Path) -> dict[str, Path]:
    """A data root holding the tiny pipeline's input, a model store holding its model, and a folder outside."""
    found = {name: tmp_path / name for name in ("data", "models", "outside")}
    for folder in found.values():
        folder.mkdir()
    (found["data"] / "data").mkdir()
    (found["data"] / "data" / "in.csv").write_text("id,x\n1,0.5\n")
    (found["models"] / "artifacts").mkdir()
    (found["models"] / "artifacts" / "tiny-rf.joblib").write_bytes(b"not really a pickle")
    (found["outside"] / "secret.joblib").write_bytes(b"the operator never put this in a root")
    (found["outside"] / "in.csv").write_text("id,x\n1,0.5\n")
    return found


def trust_settings(tmp_path: Path, database_url: str, folders: dict[str, Path], **overrides: Any) -> SchedulerSettings:
    values: dict[str, Any] = {
        "tokens": [*TOKENS, CODER],
        "data_root": folders["data"],
        "model_store": folders["models"].as_uri(),
        "allow_code_runtimes": False,
    }
    values.update(overrides)
    return settings_for(tmp_path / "home", database_url, **values)


def documents(*, uri: str | None = None, runtime: str | None = None, sink: str | None = None) -> list[dict[str, Any]]:
    docs = copy.deepcopy(tiny_documents())
    for doc in docs:
        if doc["kind"] == "Model":
            doc["spec"]["uri"] = uri or doc["spec"]["uri"]
            doc["spec"]["runtime"] = runtime or doc["spec"]["runtime"]
        if doc["kind"] == "DataChannel" and doc["metadata"]["name"] == "tiny-out" and sink is not None:
            doc["spec"]["file"]["path"] = sink
    return docs


async def deploy(client: httpx.AsyncClient, docs: list[dict[str, Any]], headers: dict[str, str]) -> httpx.Response:
    return await client.post("/api/v1/pipelines", content=as_yaml(docs), headers={**YAML, **headers})


# -- code-running runtimes ----------------------------------------------------------------------------------


@pytest.mark.parametrize("runtime", ["python", "sklearn", "torch"])
async def test_a_code_running_runtime_deployed_with_the_write_scope_is_403_naming_the_model_and_runtime(
    api_database_url: str, tmp_path: Path, folders: dict[str, Path], runtime: str
) -> None:
    async with serving(trust_settings(tmp_path, api_database_url, folders)) as client:
        response = await deploy(client, documents(runtime=runtime), WRITE)
        error = assert_error(response, 403, "code_runtime_forbidden")
        assert f"model 'tiny-rf' has runtime '{runtime}'" in error["message"]
        assert "'code'" in error["message"]
        assert error["details"]["models"] == [{"model": "tiny-rf", "runtime": runtime}]
        assert error["details"]["token"] == "ci"
        assert (await client.get("/api/v1/pipelines", headers=WRITE)).json()["items"] == []


@pytest.mark.parametrize("headers", [CODE, ADMIN], ids=["code", "admin"])
async def test_a_code_running_runtime_is_deployed_with_the_code_or_admin_scope(
    api_database_url: str, tmp_path: Path, folders: dict[str, Path], headers: dict[str, str]
) -> None:
    async with serving(trust_settings(tmp_path, api_database_url, folders)) as client:
        assert (await deploy(client, documents(runtime="python"), headers)).status_code == 201


async def test_the_code_scope_may_do_what_write_may(
    api_database_url: str, tmp_path: Path, folders: dict[str, Path]
) -> None:
    async with serving(trust_settings(tmp_path, api_database_url, folders)) as client:
        assert (await deploy(client, documents(), CODE)).status_code == 201
        response = await client.post("/api/v1/jobs", json={"pipeline": "tiny"}, headers=CODE)
        assert response.status_code == 201, response.text


async def test_allow_code_runtimes_lets_the_write_scope_deploy_them(
    api_database_url: str, tmp_path: Path, folders: dict[str, Path]
) -> None:
    settings = trust_settings(tmp_path, api_database_url, folders, allow_code_runtimes=True)
    async with serving(settings) as client:
        assert (await deploy(client, documents(runtime="python"), WRITE)).status_code == 201


async def test_a_runtime_that_runs_no_code_needs_only_the_write_scope(
    api_database_url: str, tmp_path: Path, folders: dict[str, Path]
) -> None:
    (folders["models"] / "artifacts" / "m.onnx").write_bytes(b"onnx")
    async with serving(trust_settings(tmp_path, api_database_url, folders)) as client:
        assert (await deploy(client, documents(runtime="onnx", uri="artifacts/m.onnx"), WRITE)).status_code == 201


async def test_open_mode_on_loopback_may_deploy_code_running_runtimes(
    api_database_url: str, tmp_path: Path, folders: dict[str, Path]
) -> None:
    settings = trust_settings(tmp_path, api_database_url, folders, tokens=[])
    async with serving(settings) as client:
        assert (await deploy(client, documents(runtime="python"), {})).status_code == 201


# -- artifact roots -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("uri", "resolved"),
    [("../" * 30 + "etc/shadow", "/etc/shadow"), ("file:///etc/passwd", "/etc/passwd")],
    ids=["dotdot", "file-uri"],
)
async def test_a_model_uri_outside_the_artifact_roots_is_refused_at_deploy_naming_the_resolved_path(
    api_database_url: str, tmp_path: Path, folders: dict[str, Path], uri: str, resolved: str
) -> None:
    async with serving(trust_settings(tmp_path, api_database_url, folders)) as client:
        response = await deploy(client, documents(runtime="onnx", uri=uri), WRITE)
        error = assert_error(response, 422, "outside_roots")
        assert f"model 'tiny-rf': uri {uri} resolves to {resolved}, outside the artifact roots" in error["message"]
        (problem,) = error["details"]["problems"]
        assert problem["path"] == resolved
        assert str(folders["models"].resolve()) in problem["roots"]


async def test_a_symlink_inside_the_model_store_pointing_outside_is_refused(
    api_database_url: str, tmp_path: Path, folders: dict[str, Path]
) -> None:
    os.symlink(folders["outside"] / "secret.joblib", folders["models"] / "artifacts" / "link.joblib")
    async with serving(trust_settings(tmp_path, api_database_url, folders)) as client:
        response = await deploy(client, documents(uri="artifacts/link.joblib"), ADMIN)
        error = assert_error(response, 422, "outside_roots")
        assert f"resolves to {(folders['outside'] / 'secret.joblib').resolve()}" in error["message"]


async def test_an_extra_artifact_root_admits_a_model_outside_the_model_store(
    api_database_url: str, tmp_path: Path, folders: dict[str, Path]
) -> None:
    uri = (folders["outside"] / "secret.joblib").as_uri()
    settings = trust_settings(tmp_path, api_database_url, folders, artifact_roots=str(folders["outside"]))
    async with serving(settings) as client:
        assert (await deploy(client, documents(uri=uri), ADMIN)).status_code == 201


async def test_a_job_environment_model_store_outside_the_roots_is_refused_at_start(
    api_database_url: str, tmp_path: Path, folders: dict[str, Path]
) -> None:
    async with serving(trust_settings(tmp_path, api_database_url, folders)) as client:
        assert (await deploy(client, documents(), ADMIN)).status_code == 201
        body = {"pipeline": "tiny", "environment": {"modelStore": "file:///etc"}}
        error = assert_error(await client.post("/api/v1/jobs", json=body, headers=WRITE), 422, "outside_roots")
        assert "environment.modelStore file:///etc resolves to /etc, outside the artifact roots" in error["message"]
        escape = folders["models"].as_uri() + "/../outside"  # under the server's model store, as written
        body = {"pipeline": "tiny", "environment": {"modelStore": escape}}
        error = assert_error(await client.post("/api/v1/jobs", json=body, headers=WRITE), 422, "outside_roots")
        assert f"environment.modelStore {escape} resolves to {folders['outside'].resolve()}," in error["message"]
        assert (await client.get("/api/v1/jobs", headers=WRITE)).json()["items"] == []


# -- remote schemes -----------------------------------------------------------------------------------------


async def test_https_model_uris_are_allowed_and_http_is_refused_by_default(
    api_database_url: str, tmp_path: Path, folders: dict[str, Path]
) -> None:
    async with serving(trust_settings(tmp_path, api_database_url, folders)) as client:
        ok = await deploy(client, documents(runtime="onnx", uri="https://models.example.org/m.onnx"), WRITE)
        assert ok.status_code == 201, ok.text
        response = await deploy(client, documents(runtime="onnx", uri="http://169.254.169.254/latest"), WRITE)
        error = assert_error(response, 422, "outside_roots")
        assert (
            "uses the scheme 'http', which this server does not allow (allowed_uri_schemes: https)" in error["message"]
        )


async def test_a_scheme_the_operator_allows_is_accepted(
    api_database_url: str, tmp_path: Path, folders: dict[str, Path]
) -> None:
    settings = trust_settings(tmp_path, api_database_url, folders, allowed_uri_schemes="https,http")
    async with serving(settings) as client:
        response = await deploy(client, documents(runtime="onnx", uri="http://models.internal/m.onnx"), WRITE)
        assert response.status_code == 201, response.text


async def test_s3_and_models_uris_are_remote_schemes_refused_by_default_and_accepted_when_allowed(
    api_database_url: str, tmp_path: Path, folders: dict[str, Path]
) -> None:
    uris = {"s3": "s3://models/digits/m.onnx", "models": "models:/digits/3"}
    async with serving(trust_settings(tmp_path, api_database_url, folders)) as client:
        for scheme, uri in uris.items():
            response = await deploy(client, documents(runtime="onnx", uri=uri), WRITE)
            error = assert_error(response, 422, "outside_roots")
            assert f"uri {uri} uses the scheme '{scheme}', which this server does not allow " in error["message"]
            assert "(allowed_uri_schemes: https)" in error["message"]
    allowed = trust_settings(tmp_path, api_database_url, folders, allowed_uri_schemes="https,s3,models")
    async with serving(allowed) as client:
        for uri in uris.values():  # models:/NAME/3 is not a path under the model store, though it has no '://'
            response = await deploy(client, documents(runtime="onnx", uri=uri), WRITE)
            assert response.status_code == 201, response.text


async def test_an_http_model_store_of_the_operator_is_trusted_whatever_the_schemes(
    api_database_url: str, tmp_path: Path, folders: dict[str, Path]
) -> None:
    settings = trust_settings(tmp_path, api_database_url, folders, model_store="http://models.internal/store/")
    async with serving(settings) as client:
        assert (await deploy(client, documents(runtime="onnx", uri="m.onnx"), WRITE)).status_code == 201


async def test_a_refused_scheme_is_refused_on_the_tekton_backend_too(
    api_database_url: str, tmp_path: Path, folders: dict[str, Path]
) -> None:
    async with serving(trust_settings(tmp_path, api_database_url, folders), backend="tekton") as client:
        response = await deploy(client, documents(runtime="onnx", uri="http://internal/m.onnx"), WRITE)
        assert_error(response, 422, "outside_roots")
        # a pod's own file system: paths are not this machine's
        assert (await deploy(client, documents(runtime="onnx", uri="file:///models/m.onnx"), WRITE)).status_code == 201


# -- data roots ---------------------------------------------------------------------------------------------


async def test_a_sink_with_dotdot_is_refused_at_deploy_naming_the_resolved_path(
    api_database_url: str, tmp_path: Path, folders: dict[str, Path]
) -> None:
    async with serving(trust_settings(tmp_path, api_database_url, folders)) as client:
        response = await deploy(client, documents(sink="../outside/scored.csv"), ADMIN)
        error = assert_error(response, 422, "outside_roots")
        resolved = (folders["outside"] / "scored.csv").resolve()
        assert (
            f"file channel 'tiny-out': {folders['data'].resolve()}/../outside/scored.csv resolves to {resolved}"
            in (error["message"])
        )
        assert "outside the data roots" in error["message"]


async def test_a_source_parameter_outside_the_data_roots_is_refused_at_start(
    api_database_url: str, tmp_path: Path, folders: dict[str, Path]
) -> None:
    async with serving(trust_settings(tmp_path, api_database_url, folders)) as client:
        assert (await deploy(client, documents(), ADMIN)).status_code == 201
        for given in ("../outside/in.csv", str(folders["outside"] / "in.csv"), "/etc/passwd"):
            body = {"pipeline": "tiny", "parameters": {"input": given}}
            response = await client.post("/api/v1/jobs", json=body, headers=WRITE)
            error = assert_error(response, 422, "outside_roots")
            assert "file source 'tiny-in'" in error["message"]
            assert "outside the data roots" in error["message"]
        assert (await client.get("/api/v1/jobs", headers=WRITE)).json()["items"] == []


async def test_a_symlinked_input_inside_the_data_root_pointing_outside_is_refused(
    api_database_url: str, tmp_path: Path, folders: dict[str, Path]
) -> None:
    os.symlink(folders["outside"] / "in.csv", folders["data"] / "data" / "link.csv")
    async with serving(trust_settings(tmp_path, api_database_url, folders)) as client:
        assert (await deploy(client, documents(), ADMIN)).status_code == 201
        body = {"pipeline": "tiny", "parameters": {"input": "data/link.csv"}}
        error = assert_error(await client.post("/api/v1/jobs", json=body, headers=WRITE), 422, "outside_roots")
        assert f"resolves to {(folders['outside'] / 'in.csv').resolve()}" in error["message"]
        glob = {"pipeline": "tiny", "parameters": {"input": "data/*.csv"}}  # a glob matching the link too
        assert_error(await client.post("/api/v1/jobs", json=glob, headers=WRITE), 422, "outside_roots")


async def test_a_job_environment_data_root_must_lie_inside_the_data_roots(
    api_database_url: str, tmp_path: Path, folders: dict[str, Path]
) -> None:
    extra = tmp_path / "extra"
    (extra / "data").mkdir(parents=True)
    (extra / "data" / "in.csv").write_text("id,x\n1,0.5\n")
    settings = trust_settings(tmp_path, api_database_url, folders, data_roots=str(extra))
    async with serving(settings) as client:
        assert (await deploy(client, documents(), ADMIN)).status_code == 201
        outside = {"pipeline": "tiny", "environment": {"dataRoot": str(folders["outside"])}}
        error = assert_error(await client.post("/api/v1/jobs", json=outside, headers=WRITE), 422, "outside_roots")
        assert f"environment.dataRoot {folders['outside']} resolves to" in error["message"]
        inside = {"pipeline": "tiny", "environment": {"dataRoot": str(extra)}}
        response = await client.post("/api/v1/jobs", json=inside, headers=WRITE)
        assert response.status_code == 201, response.text


async def test_the_homes_data_folder_is_a_data_root_by_default(
    api_database_url: str, tmp_path: Path, folders: dict[str, Path]
) -> None:
    settings = trust_settings(tmp_path, api_database_url, folders)
    (settings.home / "data").mkdir(parents=True)
    (settings.home / "data" / "in.csv").write_text("id,x\n1,0.5\n")
    async with serving(settings) as client:
        assert (await deploy(client, documents(), ADMIN)).status_code == 201
        body = {"pipeline": "tiny", "parameters": {"input": str(settings.home / "data" / "in.csv")}}
        response = await client.post("/api/v1/jobs", json=body, headers=WRITE)
        assert response.status_code == 201, response.text
