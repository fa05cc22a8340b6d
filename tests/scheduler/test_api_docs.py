"""The API reference pages work offline, and every request example in the OpenAPI document is a valid request.

/docs and /redoc must reference only assets this server serves (no CDN, no web fonts); the examples are sent,
as they are written in the document, to a running app (fake backend, real database).
"""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

import pytest
import yaml
from api_kit import WRITE, Api, running, settings_for

from scheduler.api.examples import BUNDLE_FILES, PIPELINE

_REFERENCE = re.compile(r"""(?:src|href)\s*=\s*["']([^"']+)["']""")
_BINARY = frozenset({"application/octet-stream", "application/gzip"})


@pytest.fixture
async def api(api_database_url: str, tmp_path: Path) -> AsyncIterator[Api]:
    async with running(settings_for(tmp_path / "home", api_database_url)) as started:
        yield started


# ---------------------------------------------------------------------------------------------- /docs, /redoc


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
async def test_the_reference_page_loads_only_assets_the_server_serves_itself(api: Api, page: str) -> None:
    response = await api.client.get(page)
    assert response.status_code == 200
    html = response.text
    assert "http://" not in html and "https://" not in html, "the page must not reach out to the internet"
    references = _REFERENCE.findall(html)
    assert {Path(r).suffix for r in references} >= {".js"}
    if page == "/docs":
        assert {Path(r).suffix for r in references} >= {".js", ".css"}
    for reference in references:
        assert reference.startswith("/"), reference
        asset = await api.client.get(urljoin(page, reference))
        assert asset.status_code == 200, reference
        assert len(asset.content) > 1000, reference


async def test_the_pages_load_the_servers_own_openapi_document(api: Api) -> None:
    for page in ("/docs", "/redoc"):
        html = (await api.client.get(page)).text
        assert "/openapi.json" in html
    document = await api.client.get("/openapi.json")
    assert document.status_code == 200
    assert document.json()["info"]["title"] == "ModelOps scheduler"


async def test_swagger_uis_oauth2_redirect_page_is_served(api: Api) -> None:
    response = await api.client.get("/docs/oauth2-redirect")
    assert response.status_code == 200
    assert "oauth2" in response.text.lower()


# ---------------------------------------------------------------------------------------------- examples


def _resolve(document: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        schema = document["components"]["schemas"][name]
    return schema


def _media_examples(document: dict[str, Any], media: dict[str, Any]) -> list[Any]:
    found: list[Any] = []
    if "example" in media:
        found.append(media["example"])
    found.extend(e["value"] for e in media.get("examples", {}).values() if "value" in e)
    found.extend(_resolve(document, media.get("schema", {})).get("examples", []))
    return found


def body_examples(document: dict[str, Any]) -> Iterator[tuple[str, str, str, Any]]:
    """(method, path, media type, example) of every request body example, and of none for a body without one."""
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            content = operation.get("requestBody", {}).get("content", {})
            for media_type, media in content.items():
                if media_type in _BINARY:
                    continue
                examples = _media_examples(document, media)
                if not examples:
                    yield method, path, media_type, None
                for example in examples:
                    yield method, path, media_type, example


def parameter_examples(document: dict[str, Any]) -> Iterator[tuple[str, str, str, Any]]:
    """(method, path, query parameter, example) of every query parameter example."""
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            for parameter in operation.get("parameters", []):
                if parameter["in"] != "query":
                    continue
                examples = list(parameter.get("schema", {}).get("examples", []))
                if "example" in parameter:
                    examples.append(parameter["example"])
                for example in examples:
                    yield method, path, parameter["name"], example


async def _new_job(api: Api) -> str:
    response = await api.client.post("/api/v1/jobs", json={"pipeline": PIPELINE}, headers=WRITE)
    assert response.status_code == 201, response.text
    job_id: str = response.json()["id"]
    return job_id


async def _url(api: Api, path: str) -> str:
    if "{job_id}" in path:
        path = path.replace("{job_id}", await _new_job(api))  # a fresh job each: one example's effect is its own
    return path.replace("{name}", PIPELINE).replace("{version}", "1")


async def _send(api: Api, method: str, path: str, media_type: str, example: Any) -> Any:
    url = await _url(api, path)
    if media_type == "application/json":
        return await api.client.request(method, url, json=example, headers=WRITE)
    text = example if isinstance(example, str) else yaml.safe_dump(example)
    return await api.client.request(method, url, content=text.encode(), headers={**WRITE, "Content-Type": media_type})


async def test_every_request_body_example_is_accepted_by_a_running_server(api: Api) -> None:
    document = (await api.client.get("/openapi.json")).json()
    examples = sorted(body_examples(document), key=lambda e: (not e[1].endswith("/pipelines"), e[1]))
    assert examples, "the document has no request examples"
    missing = [f"{m.upper()} {p} ({t})" for m, p, t, example in examples if example is None]
    assert missing == [], f"request bodies without an example: {missing}"
    refused = []
    for method, path, media_type, example in examples:
        response = await _send(api, method, path, media_type, example)
        if not 200 <= response.status_code < 300:
            refused.append(f"{method.upper()} {path} ({media_type}): {response.status_code} {response.text[:300]}")
    assert refused == []


async def test_every_query_parameter_example_is_accepted_by_a_running_server(api: Api) -> None:
    document = (await api.client.get("/openapi.json")).json()
    deployed = await api.client.post("/api/v1/pipelines", json={"files": BUNDLE_FILES}, headers=WRITE)
    assert deployed.status_code == 201, deployed.text
    examples = list(parameter_examples(document))
    assert examples
    refused = []
    for method, path, name, example in examples:
        url = await _url(api, path)
        response = await api.client.request(method, url, params={name: example}, headers=WRITE)
        if response.status_code in (400, 422) or response.status_code >= 500:
            refused.append(f"{method.upper()} {path}?{name}={example}: {response.status_code} {response.text[:300]}")
    assert refused == []


async def test_the_example_bundle_is_the_digits_pipeline_in_both_deploy_forms(api: Api) -> None:
    as_files = await api.client.post("/api/v1/pipelines", json={"files": BUNDLE_FILES}, headers=WRITE)
    assert as_files.status_code == 201, as_files.text
    document = (await api.client.get("/openapi.json")).json()
    [yaml_example] = _media_examples(
        document, document["paths"]["/api/v1/pipelines"]["post"]["requestBody"]["content"]["application/yaml"]
    )
    as_yaml = await api.client.post(
        "/api/v1/pipelines", content=yaml_example.encode(), headers={**WRITE, "Content-Type": "application/yaml"}
    )
    assert as_yaml.status_code == 200, as_yaml.text  # the same IR: the version stored by the JSON form
    assert as_yaml.json()["version"] == as_files.json()["version"] == 1
    assert uuid.UUID(await _new_job(api))
