"""Every page of the UI in a real browser, for what the scenarios do not already cover: axe-core in the light and
dark themes (no serious or critical violation), the screenshots of docs/ui.md, the pipeline pages (versions, the
highlighted IR with line anchors, the diff of two versions, the values preview), error pages, keyboard basics."""

from __future__ import annotations

import copy
import uuid
from typing import Any

import httpx
import pytest
import yaml
from browser_kit import WRITE_TOKEN, Browse, CheckPage, UiServer
from playwright.sync_api import expect

PIPELINE = "digits-versions"


@pytest.fixture(scope="module")
def two_versions(ui_server: UiServer, digits_pipeline: str) -> str:
    """`digits-versions`: the digits IR (its models already in the artifact store) deployed twice, the second time
    with another default for `scorer`; its name."""
    answer = httpx.get(
        f"{ui_server.url}/api/v1/pipelines/{digits_pipeline}/versions/1",
        headers={"Authorization": f"Bearer {WRITE_TOKEN}"},
        timeout=10,
    )
    answer.raise_for_status()
    documents: list[dict[str, Any]] = answer.json()["documents"]
    for doc in documents:
        if doc["kind"] == "ScoringPipeline":
            doc["metadata"]["name"] = PIPELINE
    second = copy.deepcopy(documents)
    for doc in second:
        if doc["kind"] == "ScoringPipeline":
            doc["spec"]["parameters"][2]["default"] = "second-version"
    api = ui_server.api("writer")
    for docs in (documents, second):
        api.deploy_bytes(yaml.safe_dump_all(docs, sort_keys=False).encode(), "application/yaml")
    return PIPELINE


def test_the_pipelines_list_and_one_pipeline(browse: Browse, two_versions: str, check_page: CheckPage) -> None:
    page = browse.page("writer")
    page.goto("/ui/pipelines")
    row = page.locator("tr", has=page.get_by_role("link", name=two_versions, exact=True))
    expect(row).to_contain_text("2")  # the latest version
    expect(row).to_contain_text("writer")  # deployed by
    check_page(page, "pipelines")

    row.get_by_role("link", name=two_versions, exact=True).click()
    page.wait_for_url(f"**/ui/pipelines/{two_versions}")
    expect(page.get_by_role("heading", level=1)).to_contain_text(two_versions)
    check_page(page, "pipeline")


def test_a_version_shows_its_ir_highlighted_with_line_anchors(
    browse: Browse, two_versions: str, check_page: CheckPage
) -> None:
    page = browse.page("reader")
    page.goto(f"/ui/pipelines/{two_versions}/versions/2")
    block = page.locator(".highlight").first
    expect(block).to_contain_text("second-version")
    lines = block.locator("span.line[id]")
    assert lines.count() > 20, "every line of the IR has an anchor"
    anchor = lines.nth(2).get_attribute("id")
    # a URL points at a line: opening it shows that line as the target
    page.goto(f"/ui/pipelines/{two_versions}/versions/2#{anchor}")
    assert page.evaluate("() => document.querySelector(':target')?.id") == anchor
    check_page(page, "version")


def test_the_diff_of_two_versions(browse: Browse, two_versions: str, check_page: CheckPage) -> None:
    page = browse.page("reader")
    page.goto(f"/ui/pipelines/{two_versions}/diff?from=1&to=2")
    ir = page.get_by_role("region", name="IR", exact=True)
    expect(ir).to_contain_text("-      default: digits-example")
    expect(ir).to_contain_text("+      default: second-version")
    values = page.locator("section", has=page.get_by_role("heading", name="Values, with the default parameters"))
    expect(values).to_contain_text("second-version")
    check_page(page, "diff")


def test_the_values_preview_for_chosen_parameters(browse: Browse, two_versions: str, check_page: CheckPage) -> None:
    page = browse.page("reader")
    page.goto(f"/ui/pipelines/{two_versions}/versions/2/values")
    scorer = page.get_by_label("scorer", exact=True)
    assert scorer.input_value() == "second-version"
    scorer.fill("previewed-in-the-browser")
    scorer.press("Enter")
    page.wait_for_url("**param=scorer*previewed-in-the-browser*")
    expect(page.locator(".highlight").last).to_contain_text("previewed-in-the-browser")
    check_page(page, "values")


def test_finished_jobs_pages(browse: Browse, finished_jobs: dict[str, uuid.UUID], check_page: CheckPage) -> None:
    page = browse.page("reader")
    for state, job in finished_jobs.items():
        page.goto(f"/ui/jobs/{job}")
        expect(page.locator("#job-state")).to_have_text(state.upper())
        expect(page.locator("#log .line").first).to_be_attached(timeout=30_000)
        expect(page.locator("#log-status")).to_contain_text("End of the log", timeout=30_000)
        check_page(page, f"job-{state}" if state == "cancelled" else None)


@pytest.mark.parametrize("path", ["/ui/no-such-page", f"/ui/jobs/{uuid.UUID(int=7)}", "/ui/pipelines/no-such"])
def test_error_pages(browse: Browse, ui_server: UiServer, check_page: CheckPage, path: str) -> None:
    page = browse.page("writer")
    answer = page.goto(path)
    assert answer is not None and answer.status == 404
    expect(page.get_by_role("heading", level=1)).to_be_visible()
    check_page(page, "not-found" if path == "/ui/no-such-page" else None)


def test_the_keyboard_reaches_the_skip_link_first_and_the_theme_toggle(browse: Browse, ui_server: UiServer) -> None:
    page = browse.page("writer")
    page.goto("/ui/jobs")
    page.keyboard.press("Tab")
    focused = page.evaluate("() => [document.activeElement.className, document.activeElement.textContent]")
    assert focused == ["skip", "Skip to content"]
    page.keyboard.press("Enter")
    assert page.evaluate("() => document.activeElement.id") == "main"

    toggle = page.locator("#theme-toggle")
    toggle.focus()
    seen = []
    for _ in range(3):
        page.keyboard.press("Enter")
        seen.append(page.evaluate("() => document.documentElement.dataset.theme || 'auto'"))
    assert seen == ["light", "dark", "auto"]
    page.keyboard.press("Enter")
    page.reload()  # the choice is kept
    assert page.evaluate("() => document.documentElement.dataset.theme") == "light"
