"""Jobs in a real browser, with the local backend running the digits example for real: start a job from the
form with a parameter and watch its progress and logs arrive live; cancel a second job and see the uninstall
phase run until CANCELLED; filter the job list by state and keep the filter across a reload; the list follows
new jobs and their changes by server push."""

from __future__ import annotations

import re
import uuid
from typing import Any

from browser_kit import LONG_INPUT, SHORT_INPUT, SHORT_INPUT_ROWS, Browse, CheckPage, UiServer
from playwright.sync_api import expect

from scheduler.states import JobState

COUNT_ABOVE = """([id, floor]) => {
  const element = document.getElementById(id);
  if (!element) { return false; }
  const value = parseInt(element.textContent.replace(/[^0-9]/g, "") || "0", 10);
  return value > floor ? value : false;
}"""
SSE_OPENED = "document.addEventListener('htmx:sseOpen', () => { window.sseOpened = (window.sseOpened || 0) + 1; });"


def count_above(page: Any, element_id: str, floor: int, timeout: float = 60_000) -> int:
    """Wait (without reloading) until the number shown in `#element_id` exceeds `floor`; returns it."""
    return int(page.wait_for_function(COUNT_ABOVE, arg=[element_id, floor], timeout=timeout).json_value())


def same_document(page: Any) -> bool:
    """Whether the page is still the document `mark_document` marked: nothing reloaded it."""
    return bool(page.evaluate("window.markedDocument === true"))


def mark_document(page: Any) -> None:
    page.evaluate("window.markedDocument = true")


def test_start_a_job_with_a_parameter_and_watch_progress_and_logs_live(
    browse: Browse, ui_server: UiServer, digits_pipeline: str, check_page: CheckPage
) -> None:
    page = browse.page("writer")
    page.goto(f"/ui/pipelines/{digits_pipeline}/run")
    scorer = page.get_by_label("scorer", exact=True)
    assert scorer.input_value() == "digits-example"  # prefilled with the default
    check_page(page, "start-job")
    scorer.fill("started-in-the-browser")
    page.get_by_label("input", exact=True).fill(SHORT_INPUT)
    page.get_by_label("output", exact=True).fill("out/from-the-form.csv")
    page.get_by_role("button", name="Start the job").click()
    page.wait_for_url(re.compile(r"/ui/jobs/[0-9a-f-]{36}$"))
    job_id = uuid.UUID(page.url.rsplit("/", 1)[1])
    mark_document(page)

    detail = ui_server.api("writer").get_job(job_id)
    assert detail.parameters["scorer"] == "started-in-the-browser"
    parameters = page.locator("table.params")
    expect(parameters.locator("tr", has_text="scorer")).to_contain_text("started-in-the-browser")

    # progress arrives by server push: the counter grows while the job runs, then reaches the source's size
    first = count_above(page, "count-read", 0, timeout=90_000)
    assert first < SHORT_INPUT_ROWS, "the first progress seen was already the end: nothing was seen live"
    second = count_above(page, "count-read", first)
    assert second > first
    expect(page.locator("#job-state")).to_have_text("SUCCEEDED", timeout=90_000)
    expect(page.locator("#count-read")).to_have_text(f"{SHORT_INPUT_ROWS:,}")
    expect(page.locator("#count-written")).to_have_text(f"{SHORT_INPUT_ROWS:,}")

    # logs arrived in the same document: lines with their time, the flow's among them
    log = page.locator("#log")
    expect(log.locator(".line").first).to_be_visible(timeout=30_000)
    expect(log.locator(".line", has_text="flow/digits-batch").first).to_be_attached(timeout=30_000)
    stamped = log.locator(".line time[datetime]").first
    assert re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d", stamped.get_attribute("datetime") or "")
    assert same_document(page), "the page was reloaded: progress and logs must arrive live"

    # a line's number is its URL; opening that URL scrolls to and marks the line
    number = log.locator(".line a.ln").nth(2)
    anchor = number.get_attribute("href")
    assert anchor and re.fullmatch(r"#log-\d+", anchor)
    number.click()
    assert page.url.endswith(anchor)
    page.goto(f"/ui/jobs/{job_id}")
    page.goto(f"/ui/jobs/{job_id}{anchor}")
    expect(page.locator(f"{anchor}.selected")).to_be_visible(timeout=30_000)

    # the log downloads as text with the session cookie
    link = page.locator("#log-download")
    assert link.get_attribute("download") is not None
    answer = page.context.request.get(str(link.get_attribute("href")))
    assert answer.status == 200 and "flow/digits-batch" in answer.text()

    check_page(page, "job", wait=lambda: expect(log.locator(".line").first).to_be_visible())


def test_cancel_a_job_and_see_the_uninstall_phase_then_cancelled(
    browse: Browse, ui_server: UiServer, digits_pipeline: str, check_page: CheckPage
) -> None:
    api = ui_server.api("writer")
    job = api.create_job(digits_pipeline, parameters={"input": LONG_INPUT, "output": "out/cancelled.csv"})
    try:
        page = browse.page("writer")
        page.goto(f"/ui/jobs/{job.id}")
        mark_document(page)
        expect(page.locator("#job-state")).to_have_text("RUNNING", timeout=90_000)
        count_above(page, "count-read", 0)
        expect(page.locator("ol.phases li[aria-current=step]")).to_contain_text("wait")
        check_page(page, "job-running")

        # the confirm dialog: focus moves into it, Escape closes it and nothing is cancelled
        opener = page.get_by_role("button", name="Cancel job…")
        opener.click()
        dialog = page.get_by_role("dialog")
        expect(dialog).to_be_visible()
        assert page.evaluate("document.getElementById('cancel-dialog').contains(document.activeElement)")
        page.keyboard.press("Escape")
        expect(dialog).to_be_hidden()
        assert api.get_job(job.id).state is JobState.RUNNING

        opener.click()
        dialog.get_by_role("button", name="Cancel the job").click()
        expect(page.locator("#job-state")).to_have_text("CANCELLING", timeout=30_000)
        current = page.locator("ol.phases li[aria-current=step]")
        expect(current).to_contain_text("uninstall")
        expect(current).to_contain_text("running")
        expect(page.get_by_role("button", name="Cancel job…")).to_have_count(0)
        expect(page.locator("#job-state")).to_have_text("CANCELLED", timeout=90_000)
        expect(page.locator("ol.phases li[aria-current=step]")).to_have_count(0)
        assert same_document(page)
        assert api.get_job(job.id).state is JobState.CANCELLED
    finally:
        if not api.get_job(job.id).terminal:
            api.cancel_job(job.id)


def test_filter_the_job_list_by_state_and_reload_with_the_filter_kept(
    browse: Browse, ui_server: UiServer, finished_jobs: dict[str, uuid.UUID], check_page: CheckPage
) -> None:
    succeeded, cancelled = finished_jobs["succeeded"], finished_jobs["cancelled"]
    page = browse.page("writer")
    page.goto("/ui/jobs")
    expect(page.locator(f"#job-{succeeded}")).to_be_visible()
    expect(page.locator(f"#job-{cancelled}")).to_be_visible()
    check_page(page, "jobs")

    page.get_by_label("State", exact=True).select_option("SUCCEEDED")
    page.wait_for_url(re.compile(r"[?&]state=SUCCEEDED"))
    expect(page.locator(f"#job-{cancelled}")).to_have_count(0)
    expect(page.locator(f"#job-{succeeded}")).to_be_visible()
    states = page.locator("#jobs-rows tr .state").all_inner_texts()
    assert states and set(states) == {"SUCCEEDED"}, states

    page.reload()
    assert page.get_by_label("State", exact=True).input_value() == "SUCCEEDED"
    expect(page.locator(f"#job-{succeeded}")).to_be_visible()
    assert set(page.locator("#jobs-rows tr .state").all_inner_texts()) == {"SUCCEEDED"}

    # the text filter too: the start of the cancelled job's id, any state; then the shared URL opens it as is
    page.get_by_label("State", exact=True).select_option("")
    page.get_by_label("Search", exact=True).fill(cancelled.hex[:8])
    page.wait_for_url(re.compile(rf"[?&]q={cancelled.hex[:8]}"))
    expect(page.locator("#jobs-rows tr")).to_have_count(1)
    expect(page.locator(f"#job-{cancelled}")).to_be_visible()
    shared = page.url
    other = browse.page("reader")
    other.goto(shared)
    assert other.get_by_label("Search", exact=True).input_value() == cancelled.hex[:8]
    expect(other.locator("#jobs-rows tr")).to_have_count(1)

    page.goto("/ui/jobs?state=FAILED&q=no-such-job-anywhere")
    expect(page.locator("#jobs-empty")).to_be_visible()
    check_page(page)


def test_the_job_list_follows_a_new_job_and_its_changes_by_server_push(
    browse: Browse, ui_server: UiServer, digits_pipeline: str
) -> None:
    api = ui_server.api("writer")
    context = browse.context("writer")
    context.add_init_script(SSE_OPENED)
    page = context.new_page()
    page.goto(f"/ui/jobs?pipeline={digits_pipeline}")
    mark_document(page)
    page.wait_for_function("() => window.sseOpened > 0", timeout=10_000)
    job = api.create_job(digits_pipeline, parameters={"input": LONG_INPUT, "output": "out/pushed.csv"})
    try:
        row = page.locator(f"#job-{job.id}")
        expect(row).to_be_visible(timeout=10_000)
        expect(page.locator("#jobs-rows tr").first).to_have_id(f"job-{job.id}")  # newest first
        api.cancel_job(job.id)
        expect(row.locator(".state")).to_have_text(re.compile("CANCELLING|CANCELLED"), timeout=10_000)
        expect(row.locator(".state")).to_have_text("CANCELLED", timeout=60_000)
        assert same_document(page), "the list was reloaded: rows must change by server push"
    finally:
        if not api.get_job(job.id).terminal:
            api.cancel_job(job.id)
