"""Deploying in a real browser: the digits example by folder upload (and its redeploy, which says it is the same
IR), a broken IR whose errors are located and marked on their lines, and an IR carrying `<script>` in a
description, which every page shows as text."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import httpx
import yaml
from browser_kit import WRITE_TOKEN, Browse, CheckPage, UiServer, paste
from playwright.sync_api import expect

BROKEN = """apiVersion: modelops/v1
kind: ScoringPipeline
metadata:
  name: broken
spec:
  mode: sometimes
  flows: [nowhere]
"""
BROKEN_LINE = 6  # `mode: sometimes`
SCRIPT = '<script>alert("xss")</script><img src=x onerror=alert(2)>'


def test_deploy_the_digits_example_by_folder_upload(
    browse: Browse, open_server: UiServer, digits_folder: Path, check_page: CheckPage
) -> None:
    page = browse.page(server=open_server)
    page.goto("/ui/deploy")
    deploy = page.locator("#deploy-button")
    expect(deploy).to_be_disabled()
    check_page(page)

    page.locator("#ir-folder").set_input_files(digits_folder)
    expect(page.locator("#chosen")).to_contain_text("models/digits-rf.yaml")
    valid = page.locator('#validation [data-valid="true"]')
    expect(valid).to_contain_text("Valid", timeout=30_000)
    expect(valid).to_contain_text("digits")
    expect(valid).to_contain_text("data/digits.csv")  # listed as not part of the IR, ignored
    expect(deploy).to_be_enabled()
    check_page(page, "deploy")

    deploy.click()
    created = page.locator('#deploy-result [data-deployed="created"]')
    expect(created).to_contain_text("Deployed version 1 of digits", timeout=60_000)
    expect(created.get_by_role("link", name="Start a job")).to_have_attribute("href", re.compile("/run"))

    # what the server stored: the models named by sha256 in its artifact store, as `modelops pipeline deploy` does
    stored = httpx.get(f"{open_server.url}/api/v1/pipelines/digits/versions/1", timeout=10).json()
    uris = [doc["spec"]["uri"] for doc in stored["documents"] if doc["kind"] == "Model"]
    assert len(uris) == 2 and all(uri.startswith("modelops-artifact:sha256:") for uri in uris), uris

    # the page validates again after the deploy: the same IR is now version 1; deploying it changes nothing
    expect(page.locator("#validation")).to_contain_text("Same IR as version 1", timeout=30_000)
    expect(deploy).to_be_enabled()
    deploy.click()
    unchanged = page.locator('#deploy-result [data-deployed="unchanged"]')
    expect(unchanged).to_contain_text("Unchanged: the same IR is version 1 of digits", timeout=60_000)
    pipeline = httpx.get(f"{open_server.url}/api/v1/pipelines/digits", timeout=10).json()
    assert [version["version"] for version in pipeline["versions"]] == [1]


def test_a_broken_ir_shows_its_errors_located_and_marked_on_their_lines(
    browse: Browse, ui_server: UiServer, check_page: CheckPage
) -> None:
    page = browse.page("writer")
    page.goto("/ui/deploy")
    editor = page.get_by_label("IR as YAML")
    editor.fill(BROKEN)
    invalid = page.locator('#validation [data-valid="false"]')
    expect(invalid).to_contain_text("Invalid", timeout=30_000)
    issue = invalid.locator("li", has_text="mode")
    expect(issue).to_contain_text("pasted.yaml")
    expect(issue).to_contain_text("sometimes")
    line = issue.get_by_role("button", name=f"line {BROKEN_LINE}")
    expect(line).to_be_visible()
    expect(page.locator("#ir-gutter .bad", has_text=f"✕ {BROKEN_LINE}")).to_have_count(1)
    expect(page.locator("#deploy-button")).to_be_disabled()
    check_page(page, "deploy-error")

    # the line's button moves the editor's caret to that line
    line.click()
    selection: list[Any] = page.evaluate(
        "() => { const t = document.getElementById('ir-text'); "
        "return [document.activeElement === t, t.value.slice(0, t.selectionStart).split('\\n').length]; }"
    )
    assert selection == [True, BROKEN_LINE]

    # fixing the line makes it valid... as far as this document goes: its flow is still missing
    editor.fill(BROKEN.replace("sometimes", "batch"))
    expect(page.locator("#ir-gutter .bad", has_text=f"✕ {BROKEN_LINE}")).to_have_count(0, timeout=30_000)
    expect(page.locator("#validation")).to_contain_text("nowhere")


def _digits_documents(server: UiServer, pipeline: str) -> list[dict[str, Any]]:
    answer = httpx.get(
        f"{server.url}/api/v1/pipelines/{pipeline}/versions/1",
        headers={"Authorization": f"Bearer {WRITE_TOKEN}"},
        timeout=10,
    )
    answer.raise_for_status()
    documents: list[dict[str, Any]] = answer.json()["documents"]
    return documents


def test_an_ir_with_a_script_in_a_description_shows_it_as_text(
    browse: Browse, ui_server: UiServer, digits_pipeline: str
) -> None:
    documents = _digits_documents(ui_server, digits_pipeline)
    for doc in documents:
        if doc["kind"] == "ScoringPipeline":
            doc["metadata"]["name"] = "digits-xss"
            doc["spec"]["parameters"][2]["description"] = SCRIPT
    page = browse.page("writer")
    alerts: list[str] = []
    page.on("dialog", lambda dialog: (alerts.append(dialog.message), dialog.dismiss()))

    # a name that is not one: the error message quotes it, escaped
    page.goto("/ui/deploy")
    editor = page.get_by_label("IR as YAML")
    editor.fill(BROKEN.replace("name: broken", "name: '<script>alert(3)</script>'"))
    invalid = page.locator('#validation [data-valid="false"]')
    expect(invalid).to_contain_text("<script>alert(3)</script>", timeout=30_000)
    assert "<script>alert(3)" not in page.locator("#validation").inner_html()

    paste(page, "ir-text", yaml.safe_dump_all(documents, sort_keys=False))
    expect(page.locator('#validation [data-valid="true"]')).to_be_visible(timeout=30_000)
    page.locator("#deploy-button").click()
    expect(page.locator('#deploy-result [data-deployed="created"]')).to_contain_text("digits-xss", timeout=60_000)

    for path in (
        "/ui/pipelines/digits-xss/run",
        "/ui/pipelines/digits-xss/versions/1",
        "/ui/pipelines/digits-xss/versions/1/values",
    ):
        page.goto(path)
        html = page.content()
        assert "<script>alert" not in html and "<img src=x" not in html, f"{path} renders the IR's HTML"
        shown = page.get_by_text('<script>alert("xss")</script>', exact=False)
        assert shown.count() >= 1, f"{path} does not show the description as text"
    page.goto("/ui/pipelines/digits-xss/run")
    expect(page.get_by_label("scorer", exact=True)).to_have_accessible_description(re.compile(re.escape(SCRIPT)))
    assert alerts == [], f"a script of the IR ran: {alerts}"
