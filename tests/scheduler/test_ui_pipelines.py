"""The pipelines pages over HTTP (httpx on the app, SQLite and PostgreSQL): the list with its counts, one
pipeline's versions, a version's highlighted IR, the diff (page, REST endpoint and `modelops pipeline diff`), the
values preview and the start form (CSRF, scopes, errors beside their fields), and escaping of what users typed."""

from __future__ import annotations

import copy
import re
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy
from api_kit import (
    READ,
    READ_TOKEN,
    WRITE,
    WRITE_TOKEN,
    Api,
    assert_error,
    changed,
    running,
    settings_for,
    tiny_documents,
)
from cli_kit import running_server, write_bundle
from typer.testing import CliRunner

from scheduler.cli import app
from scheduler.errors import InvalidInput
from scheduler.irtext import ir_files, unified_diff
from scheduler.sessions import SESSION_COOKIE, SessionSigner
from scheduler.ui.diff import diff_files
from scheduler.ui.highlight import highlight_yaml
from scheduler.ui.pipelines import _split_problems

PIPELINES = "/api/v1/pipelines"


@pytest.fixture
async def api(api_database_url: str, tmp_path: Path) -> AsyncIterator[Api]:
    async with running(settings_for(tmp_path / "home", api_database_url)) as started:
        yield started


async def sign_in(api: Api, token: str) -> str:
    """Open a UI session with `token` on the client; returns its CSRF token."""
    response = await api.client.post("/ui/login", data={"token": token, "next": "/ui/pipelines"})
    assert response.status_code == 303, response.text
    signer = api.app.state.auth.sessions
    assert isinstance(signer, SessionSigner)
    session = signer.verify(api.client.cookies[SESSION_COOKIE])
    assert session is not None
    return session.csrf


def with_description(description: str) -> list[dict[str, Any]]:
    docs = tiny_documents()
    docs[0]["spec"]["parameters"][0]["description"] = description
    return docs


def with_required(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The pipeline with a required `label` parameter (no default) and a boolean `strict`."""
    docs = copy.deepcopy(docs)
    docs[0]["spec"]["parameters"] += [
        {"name": "label", "type": "string", "description": "what to call the run"},
        {"name": "strict", "type": "boolean", "default": True},
    ]
    return docs


# ---------------------------------------------------------------------------------------------- the list


async def test_the_list_api_gives_each_pipelines_latest_version_who_deployed_it_and_its_jobs(api: Api) -> None:
    await api.deploy()
    await api.start_job()
    await api.start_job()
    await api.deploy(changed(tiny_documents(), "data/other.csv"))
    await api.start_job()
    await api.deploy(tiny_documents("other"))
    response = await api.client.get(PIPELINES, headers=READ)
    assert response.status_code == 200, response.text
    items = {item["name"]: item for item in response.json()["items"]}
    tiny = items["tiny"]
    assert (tiny["latest_version"], tiny["latest_deployed_by"], tiny["jobs"]) == (2, "ci", 3)
    assert tiny["latest_deployed_at"] == tiny["versions"][-1]["created_at"]
    assert [v["jobs"] for v in tiny["versions"]] == [2, 1]
    assert (items["other"]["jobs"], items["other"]["versions"][0]["jobs"]) == (0, 0)
    one = await api.client.get(f"{PIPELINES}/tiny", headers=READ)
    assert [v["jobs"] for v in one.json()["versions"]] == [2, 1]


async def test_listing_pipelines_costs_the_same_few_queries_however_many_pipelines_there_are(api: Api) -> None:
    for index in range(6):
        await api.deploy(tiny_documents(f"p{index}"))
    await api.start_job(pipeline="p3")
    statements: list[str] = []

    def count(*args: Any) -> None:
        statements.append(str(args[2]))

    engine = api.store._engine
    sqlalchemy.event.listen(engine, "before_cursor_execute", count)
    try:
        pipelines = await api.service.list_pipelines()
    finally:
        sqlalchemy.event.remove(engine, "before_cursor_execute", count)
    assert [p.jobs for p in pipelines] == [0, 0, 0, 1, 0, 0]
    selects = [s for s in statements if s.lstrip().upper().startswith("SELECT")]
    assert len(selects) == 2, selects  # the pipelines, then the versions with their job counts
    assert "GROUP BY" in selects[1].upper()


async def test_the_list_page_shows_each_pipeline_with_its_counts_and_a_run_button_for_writers(api: Api) -> None:
    await api.deploy()
    await api.start_job()
    page = await api.client.get("/ui/pipelines", headers=WRITE)
    assert page.status_code == 200, page.text
    assert '<a href="/ui/pipelines/tiny">tiny</a>' in page.text
    assert ">v1</a>" in page.text and "<td>ci</td>" in page.text
    assert 'aria-label="1 jobs of tiny">1</a>' in page.text
    assert 'href="/ui/pipelines/tiny/run"' in page.text
    read = await api.client.get("/ui/pipelines", headers=READ)
    assert read.status_code == 200
    assert "/ui/pipelines/tiny/run" not in read.text


async def test_the_empty_list_points_to_deploy_and_the_cli(api: Api) -> None:
    page = await api.client.get("/ui/pipelines", headers=WRITE)
    assert "No pipelines yet" in page.text
    assert 'href="/ui/deploy"' in page.text and "modelops pipeline deploy" in page.text
    read = await api.client.get("/ui/pipelines", headers=READ)
    assert 'href="/ui/deploy"' not in read.text and "modelops pipeline deploy" in read.text


# ---------------------------------------------------------------------------------------------- one pipeline


async def test_the_pipeline_page_lists_versions_newest_first_with_their_links(api: Api) -> None:
    await api.deploy()
    await api.deploy(changed(tiny_documents(), "data/other.csv"))
    await api.start_job(version=1)
    page = await api.client.get("/ui/pipelines/tiny", headers=WRITE)
    assert page.status_code == 200, page.text
    assert page.text.index('id="v2"') < page.text.index('id="v1"')
    assert 'href="/ui/pipelines/tiny/diff?from=1&amp;to=2"' in page.text
    assert 'href="/ui/pipelines/tiny/versions/1/values"' in page.text
    assert 'href="/ui/pipelines/tiny/run?version=1"' in page.text
    assert '<select id="compare-from" name="from">' in page.text
    read = await api.client.get("/ui/pipelines/tiny", headers=READ)
    assert "/run" not in read.text


async def test_an_unknown_pipeline_or_version_is_a_404_page(api: Api) -> None:
    await api.deploy()
    for path in ("/ui/pipelines/nope", "/ui/pipelines/tiny/versions/9", "/ui/pipelines/tiny/diff?from=1&to=9"):
        page = await api.client.get(path, headers=READ)
        assert page.status_code == 404, path
        assert page.headers["content-type"].startswith("text/html")


async def test_the_version_page_shows_each_ir_file_highlighted_with_line_anchors(api: Api) -> None:
    await api.deploy()
    page = await api.client.get("/ui/pipelines/tiny/versions/1", headers=READ)
    assert page.status_code == 200, page.text
    for name in ("pipeline.yaml", "channels/tiny-in.yaml", "flows/tiny-batch.yaml", "models/tiny-rf.yaml"):
        assert f">{name}</h3>" in page.text
    assert 'id="pipeline-yaml-L1"' in page.text and 'href="#pipeline-yaml-L1"' in page.text
    assert '<span class="nt">apiVersion</span>' in page.text
    assert "<code>threshold</code>" in page.text


# ---------------------------------------------------------------------------------------------- the diff


async def test_the_diff_endpoint_gives_unified_diffs_of_the_ir_and_the_default_values(api: Api) -> None:
    await api.deploy()
    await api.deploy(changed(tiny_documents(), "data/other.csv"))
    response = await api.client.get(f"{PIPELINES}/tiny/diff", params={"from": 1, "to": 2}, headers=READ)
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["name"], body["from_version"], body["to_version"]) == ("tiny", 1, 2)
    assert body["ir"].startswith("--- v1/pipeline.yaml\n+++ v2/pipeline.yaml\n@@")
    assert "\n-    default: data/in.csv\n" in body["ir"] and "\n+    default: data/other.csv\n" in body["ir"]
    assert "flows/" not in body["ir"]  # only the changed file
    assert body["values"].startswith("--- v1/values.yaml\n+++ v2/values.yaml\n")
    assert re.search(r"^-.*data/in\.csv$", body["values"], re.M)
    assert re.search(r"^\+.*data/other\.csv$", body["values"], re.M)
    same = await api.client.get(f"{PIPELINES}/tiny/diff", params={"from": 2, "to": 2}, headers=READ)
    assert same.json()["ir"] == "" and same.json()["values"] == ""


async def test_the_diff_endpoint_refuses_unknown_versions_and_missing_bounds(api: Api) -> None:
    await api.deploy()
    assert_error(await api.client.get(f"{PIPELINES}/tiny/diff?from=1&to=3", headers=READ), 404)
    assert_error(await api.client.get(f"{PIPELINES}/tiny/diff?from=1", headers=READ), 422)
    assert_error(await api.client.get(f"{PIPELINES}/tiny/diff?from=1&to=1"), 401)
    schema = (await api.client.get("/openapi.json")).json()
    route = schema["paths"]["/api/v1/pipelines/{name}/diff"]["get"]
    assert route["summary"] and {"401", "404", "422"} <= set(route["responses"])


async def test_the_values_diff_says_when_a_version_needs_a_parameter_without_default(api: Api) -> None:
    await api.deploy()
    await api.deploy(with_required(tiny_documents()))
    body = (await api.client.get(f"{PIPELINES}/tiny/diff?from=1&to=2", headers=READ)).json()
    assert "+# not rendered with the default parameters of version 2:" in body["values"]
    assert "parameter 'label' is required" in body["values"]


async def test_the_diff_page_marks_added_and_removed_lines_by_sign_and_element(api: Api) -> None:
    await api.deploy()
    await api.deploy(changed(tiny_documents(), "data/other.csv"))
    page = await api.client.get("/ui/pipelines/tiny/diff?from=1&to=2", headers=READ)
    assert page.status_code == 200, page.text
    assert '<del class="del">-    default: data/in.csv</del>' in page.text
    assert '<ins class="add">+    default: data/other.csv</ins>' in page.text
    assert ">pipeline.yaml <span" in page.text and ">values.yaml <span" in page.text
    latest = await api.client.get("/ui/pipelines/tiny/diff", headers=READ)  # default: the latest vs the one before
    assert "version 1 → version 2" in latest.text


def test_a_changed_line_that_looks_like_a_file_header_stays_in_its_file() -> None:
    text = unified_diff({"a.yaml": "x: 1\n-- y\n"}, {"a.yaml": "x: 1\n++ y\n"}, "v1", "v2")
    assert "--- -- y" not in text and "\n--- y\n" in text  # the removed line `-- y`
    files = diff_files(text)
    assert [(f.name, f.added, f.removed) for f in files] == [("a.yaml", 1, 1)]
    assert '<del class="del">--- y</del>' in files[0].html and '<ins class="add">+++ y</ins>' in files[0].html


def test_ir_files_are_named_as_a_bundle_folder_names_them() -> None:
    files = ir_files({"documents": tiny_documents()})
    assert list(files) == ["pipeline.yaml", "channels/tiny-in.yaml", "channels/tiny-out.yaml",
                           "flows/tiny-batch.yaml", "models/tiny-rf.yaml"]  # fmt: skip
    assert files["pipeline.yaml"].startswith("apiVersion: modelops/v1\nkind: ScoringPipeline\n")


def test_highlighted_yaml_is_escaped_and_every_line_has_an_anchor() -> None:
    html = highlight_yaml("a: '<script>x</script>'\nb: |\n  two\n  lines\n", "f-")
    assert "<script>" not in html and "&lt;script&gt;" in html
    assert [f'id="f-L{n}"' in html for n in (1, 2, 3, 4)] == [True] * 4 and 'id="f-L5"' not in html


def test_cli_pipeline_diff_prints_both_diffs(tmp_path: Path) -> None:
    with running_server(tmp_path / "home") as server:
        runner = CliRunner(env={"MODELOPS_SERVER": server.url, "MODELOPS_TOKEN": None})
        folder = write_bundle(tmp_path / "bundle")
        assert runner.invoke(app, ["pipeline", "deploy", str(folder)]).exit_code == 0
        pipeline = folder / "pipeline.yaml"
        pipeline.write_text(pipeline.read_text().replace("{install: 5m,", "{install: 7m,"))
        deployed = runner.invoke(app, ["pipeline", "deploy", str(folder)])
        assert deployed.exit_code == 0 and "version 2" in deployed.stdout, deployed.output
        result = runner.invoke(app, ["pipeline", "diff", "scoring", "1", "2"])
        assert result.exit_code == 0, result.output
        assert "--- v1/pipeline.yaml\n+++ v2/pipeline.yaml\n" in result.stdout
        assert re.search(r"^- +install: 5m\n\+ +install: 7m$", result.stdout, re.M), result.stdout
        assert "--- v1/values.yaml\n+++ v2/values.yaml\n" in result.stdout
        listed = runner.invoke(app, ["pipeline", "list"])
        assert re.search(r"^\s*scoring\s+2\s+2\s+[0-9a-f]{12}\s.*\s0\s*$", listed.stdout, re.M), listed.stdout
        same = runner.invoke(app, ["pipeline", "diff", "scoring", "2", "2"])
        assert same.exit_code == 0 and same.stdout == "" and "do not differ" in same.stderr
        missing = runner.invoke(app, ["pipeline", "diff", "scoring", "1", "5"])
        assert missing.exit_code == 1 and "no version 5 of pipeline 'scoring'" in missing.stderr


# ---------------------------------------------------------------------------------------------- values preview


async def test_the_values_preview_renders_the_defaults_and_given_parameters(api: Api) -> None:
    await api.deploy()
    page = await api.client.get("/ui/pipelines/tiny/versions/1/values", headers=READ)
    assert page.status_code == 200, page.text
    assert 'id="param-input" name="p.input" value="data/in.csv"' in page.text
    assert 'id="L1"' in page.text and "data/in.csv" in page.text
    given = await api.client.get("/ui/pipelines/tiny/versions/1/values?param=input=data/today.csv", headers=READ)
    assert given.status_code == 200
    assert 'value="data/today.csv"' in given.text and "data/today.csv</span>" in given.text


async def test_the_values_form_goes_to_the_shareable_param_address(api: Api) -> None:
    await api.deploy()
    sent = await api.client.get(
        "/ui/pipelines/tiny/versions/1/values",
        params={"p.input": "x.csv", "p.limit": "", "p.threshold": "0.7"},
        headers=READ,
    )
    assert sent.status_code == 303
    assert sent.headers["location"] == "/ui/pipelines/tiny/versions/1/values?param=input%3Dx.csv&param=threshold%3D0.7"


async def test_a_bad_parameter_in_the_preview_is_shown_beside_its_field(api: Api) -> None:
    await api.deploy()
    page = await api.client.get("/ui/pipelines/tiny/versions/1/values?param=limit=many", headers=READ)
    assert page.status_code == 422
    error = re.search(r'<p class="field-error" id="param-limit-error" role="alert">([^<]*)</p>', page.text)
    assert error is not None and "integer" in error.group(1)
    assert 'value="many"' in page.text and 'aria-invalid="true"' in page.text
    unknown = await api.client.get("/ui/pipelines/tiny/versions/1/values?param=colour=red", headers=READ)
    assert unknown.status_code == 422 and "unknown parameter &#39;colour&#39;" in unknown.text


# ---------------------------------------------------------------------------------------------- start a job


async def test_the_start_form_is_generated_from_the_versions_parameters(api: Api) -> None:
    await api.deploy()
    await api.deploy(with_required(tiny_documents()))
    page = await api.client.get("/ui/pipelines/tiny/run", headers=WRITE)
    assert page.status_code == 200, page.text
    assert '<option value="2" selected>v2 (latest)' in page.text
    assert re.search(r'name="p.threshold" value="0.5"\s+type="number" step="any"', page.text)
    assert re.search(r'name="p.limit" value="10"\s+type="number" step="1"', page.text)
    assert '<span class="req">(required)</span>' in page.text and "string, required: no default" in page.text
    assert 'type="checkbox" id="param-strict" name="p.strict" value="true" checked' in page.text
    assert 'aria-describedby="param-label-help param-label-meta"' in page.text
    assert '<p class="hint" id="param-label-help">what to call the run</p>' in page.text
    assert "Start the job</button>" in page.text
    older = await api.client.get("/ui/pipelines/tiny/run?version=1", headers=WRITE)
    assert '<option value="1" selected>' in older.text and "param-label" not in older.text


async def test_a_read_session_sees_no_start_button_and_its_start_is_refused(api: Api) -> None:
    await api.deploy()
    csrf = await sign_in(api, READ_TOKEN)
    page = await api.client.get("/ui/pipelines/tiny/run")
    assert page.status_code == 200 and "Start the job</button>" not in page.text
    refused = await api.client.post("/ui/pipelines/tiny/run", data={"csrf_token": csrf, "version": "1"})
    assert refused.status_code == 403
    assert (await api.service.list_jobs()).items == ()


async def test_a_start_without_the_csrf_token_is_refused(api: Api) -> None:
    await api.deploy()
    await sign_in(api, WRITE_TOKEN)
    refused = await api.client.post("/ui/pipelines/tiny/run", data={"version": "1"})
    assert refused.status_code == 403 and "csrf_failed" in refused.text
    wrong = await api.client.post("/ui/pipelines/tiny/run", data={"version": "1", "csrf_token": "forged"})
    assert wrong.status_code == 403
    assert (await api.service.list_jobs()).items == ()


async def test_the_start_form_creates_the_job_with_typed_parameters_and_goes_to_its_page(api: Api) -> None:
    await api.deploy()
    csrf = await sign_in(api, WRITE_TOKEN)
    form = {"csrf_token": csrf, "version": "1", "p.input": "data/b.csv", "p.threshold": "0.25", "p.limit": "",
            "idempotency_key": "ui-run-1"}  # fmt: skip
    started = await api.client.post("/ui/pipelines/tiny/run", data=form)
    assert started.status_code == 303, started.text
    job_id = uuid.UUID(started.headers["location"].removeprefix("/ui/jobs/"))
    job = await api.service.get_job(job_id)
    assert job.parameters == {"input": "data/b.csv", "threshold": 0.25}  # the empty limit: its default
    assert job.created_by == "ci" and job.pipeline_version == 1
    again = await api.client.post("/ui/pipelines/tiny/run", data=form, headers={"HX-Request": "true"})
    assert again.status_code == 200 and again.headers["HX-Redirect"] == f"/ui/jobs/{job_id}"


async def test_a_refused_start_shows_each_error_beside_its_field_and_keeps_what_was_typed(api: Api) -> None:
    await api.deploy(with_required(tiny_documents()))
    csrf = await sign_in(api, WRITE_TOKEN)
    form = {"csrf_token": csrf, "version": "1", "p.input": "keep/me.csv", "p.limit": "lots", "p.label": "",
            "p.strict": "false"}  # fmt: skip
    refused = await api.client.post("/ui/pipelines/tiny/run", data=form)
    assert refused.status_code == 422, refused.text
    assert re.search(r'id="param-limit-error" role="alert">[^<]*integer', refused.text)
    assert re.search(r'id="param-label-error" role="alert">[^<]*required', refused.text)
    assert 'value="keep/me.csv"' in refused.text and 'value="lots"' in refused.text
    assert 'name="p.strict" value="true" checked' not in refused.text  # unchecked stays unchecked
    assert (await api.service.list_jobs()).items == ()
    bad_key = await api.client.post("/ui/pipelines/tiny/run", data={**form, "p.limit": "3", "p.label": "x",
                                                                     "idempotency_key": "has space"})  # fmt: skip
    assert bad_key.status_code == 422 and "idempotency key" in bad_key.text


# ---------------------------------------------------------------------------------------------- escaping


async def test_what_users_typed_is_shown_as_text_on_every_page(api: Api) -> None:
    await api.deploy(with_description("<script>alert(1)</script>"))
    await api.deploy(changed(with_description("<script>alert(1)</script>"), "<img src=x onerror=alert(2)>"))
    for path in (
        "/ui/pipelines/tiny/versions/1",
        "/ui/pipelines/tiny/versions/2",
        "/ui/pipelines/tiny/versions/2/values",
        "/ui/pipelines/tiny/diff?from=1&to=2",
        "/ui/pipelines/tiny/run",
        "/ui/pipelines/tiny/versions/1/values?param=input=%3Cscript%3Ealert(3)%3C/script%3E",
    ):
        page = await api.client.get(path, headers=WRITE)
        assert page.status_code == 200, (path, page.text)
        assert "<script>alert" not in page.text and "<img src=x" not in page.text, path
        assert "&lt;script&gt;alert(" in page.text or "&lt;img" in page.text, path


def test_a_path_problem_naming_a_parameter_goes_beside_that_field() -> None:
    problems = [{"message": "data/x.csv does not exist", "path": "/srv/data/x.csv", "parameter": "input"}]
    exc = InvalidInput("file source 'tiny-in': data/x.csv does not exist", details={"problems": problems})
    assert _split_problems(exc, ["input", "limit"]) == ({"input": "data/x.csv does not exist"}, [])
    other = InvalidInput("model 'm' is outside the roots", details={"problems": [{"message": "m", "model": "m"}]})
    assert _split_problems(other, ["input"]) == ({}, ["model 'm' is outside the roots"])


async def test_the_values_preview_links_to_the_start_form_with_its_parameters(api: Api) -> None:
    await api.deploy()
    page = await api.client.get("/ui/pipelines/tiny/versions/1/values?param=input=data/x.csv", headers=WRITE)
    link = "/ui/pipelines/tiny/run?version=1&amp;param=input%3Ddata%2Fx.csv"
    assert f'href="{link}"' in page.text
    form = await api.client.get(link.replace("&amp;", "&"), headers=WRITE)
    assert 'name="p.input" value="data/x.csv"' in form.text and 'name="p.limit" value="10"' in form.text
