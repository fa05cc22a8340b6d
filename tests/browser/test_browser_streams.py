"""Many tabs in one browser: the server-sent event streams of a hidden tab are paused (static/streams.js).

Over HTTP/1.1 chromium opens at most 6 connections per host in a profile (a Playwright context): a job page holds
two streams (its parts, its log), so without the pause the fourth job tab would hold the last connections and
every further page of the server would stall. Here ONE context opens the Jobs list and then 8 job pages one
after the other, each made hidden once it is seen live (headless chromium never hides a page by itself:
`document.visibilityState` is overridden and `visibilitychange` dispatched, which is what the page listens to).
The last page must still load and follow its job live, and pages shown again must catch up with what changed
while they were hidden: the job page's stream sends every part as it is now, the Jobs list reloads its results.

The server is a real one on a real port (`EmbeddedServer`, open mode) with the API tests' fake backend (jobs
RUNNING at once, nothing scored): the progress the pages show is what the test reports through the REST API.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scheduler"))

from api_kit import FakeBackend, as_yaml, tiny_documents

from scheduler.embedded import EmbeddedServer
from scheduler.settings import SchedulerSettings
from scheduler.store import JobStore

JOB_PAGES = 8
VIEWPORT = {"width": 1280, "height": 800}

HIDE = """() => {
  Object.defineProperty(document, "visibilityState", {configurable: true, get: () => "hidden"});
  Object.defineProperty(document, "hidden", {configurable: true, get: () => true});
  document.dispatchEvent(new Event("visibilitychange"));
}"""
SHOW = """() => {
  delete document.visibilityState;
  delete document.hidden;
  document.dispatchEvent(new Event("visibilitychange"));
}"""
COUNT_OPENS = "document.addEventListener('htmx:sseOpen', () => { window.sseOpened = (window.sseOpened || 0) + 1; });"
"""Counts the htmx SSE extension's stream openings: a stream sends changes from when it is open."""
OPENED = "(n) => (window.sseOpened || 0) >= n"
PAUSED = "() => document.documentElement.dataset.streams === 'paused'"


@pytest.fixture
def fake_server(tmp_path: Path) -> Iterator[EmbeddedServer]:
    def factory(store: JobStore, _settings: SchedulerSettings, _secret: bytes) -> FakeBackend:
        return FakeBackend(store)

    settings = SchedulerSettings(home=tmp_path / "home", allow_code_runtimes=True, poll_interval_seconds=0.2)
    embedded = EmbeddedServer(settings, backend_factory=factory)
    embedded.start()
    try:
        yield embedded
    finally:
        embedded.stop()


def _report(api: httpx.Client, job_id: str, read: int) -> None:
    body = {"flow": "tiny-batch", "read": read, "written": read, "failed": 0, "state": "running"}
    response = api.post(f"/api/v1/jobs/{job_id}/progress", json=body)
    assert response.status_code < 300, response.text


def _hide(page: Any) -> None:
    page.evaluate(HIDE)
    page.wait_for_function(PAUSED, timeout=10_000)  # after ~2 s hidden


def test_eight_job_tabs_in_one_browser_stay_live_and_hidden_ones_catch_up(
    browser: Any, fake_server: EmbeddedServer
) -> None:
    problems: list[str] = []
    with httpx.Client(base_url=fake_server.url, timeout=10) as api:
        deployed = api.post(
            "/api/v1/pipelines", content=as_yaml(tiny_documents()), headers={"Content-Type": "application/yaml"}
        )
        assert deployed.status_code in (200, 201), deployed.text
        jobs = []
        for _ in range(JOB_PAGES):
            created = api.post("/api/v1/jobs", json={"pipeline": "tiny"})
            assert created.status_code == 201, created.text
            jobs.append(created.json()["id"])

        context = browser.new_context(base_url=fake_server.url, viewport=VIEWPORT, reduced_motion="reduce")
        context.add_init_script(COUNT_OPENS)
        try:
            listing = context.new_page()
            listing.on("pageerror", lambda error: problems.append(f"script error: {error}"))
            listing.goto("/ui/jobs")
            listing.wait_for_function(OPENED, arg=1, timeout=10_000)
            first_row = listing.locator(f"#job-{jobs[0]} td:nth-child(7)")
            _report(api, jobs[0], 11)
            listing.wait_for_function(  # the list is live
                f"() => document.querySelector('#job-{jobs[0]} td:nth-child(7)').textContent.trim() === '11'",
                timeout=10_000,
            )
            _hide(listing)

            pages = []
            for index, job_id in enumerate(jobs):
                page = context.new_page()
                page.on("pageerror", lambda error: problems.append(f"script error: {error}"))
                page.goto(f"/ui/jobs/{job_id}", timeout=15_000)  # stalls here without the pause
                page.wait_for_function(
                    "() => document.getElementById('log-status').textContent.includes('live')", timeout=10_000
                )
                page.wait_for_function(OPENED, arg=1, timeout=10_000)
                _report(api, job_id, 1000 + index)
                page.wait_for_function(
                    f"() => document.getElementById('count-read').textContent.replace(/,/g, '') === '{1000 + index}'",
                    timeout=10_000,
                )
                pages.append(page)
                if index < JOB_PAGES - 1:
                    _hide(page)

            assert all(page.evaluate(PAUSED) for page in [listing, *pages[:-1]])
            last = pages[-1]
            _report(api, jobs[-1], 5555)  # the eighth page still follows its job live
            last.wait_for_function(
                "() => document.getElementById('count-read').textContent.replace(/,/g, '') === '5555'", timeout=10_000
            )

            # the first job page shown again: what changed while it was hidden shows, its streams run again
            _report(api, jobs[0], 424242)
            first = pages[0]
            assert first.locator("#count-read").inner_text() == "1,000"  # paused: nothing came
            first.evaluate(SHOW)
            first.wait_for_function(
                "() => document.getElementById('count-read').textContent.replace(/,/g, '') === '424242'", timeout=10_000
            )
            first.wait_for_function(
                "() => document.getElementById('log-status').textContent.includes('live')", timeout=10_000
            )
            assert not first.evaluate(PAUSED)
            _report(api, jobs[0], 434343)  # and it follows the job live again
            first.wait_for_function(
                "() => document.getElementById('count-read').textContent.replace(/,/g, '') === '434343'", timeout=10_000
            )

            # the Jobs list shown again reloads its results (its stream only sends changes from now on)
            before, entries = listing.url, listing.evaluate("history.length")
            listing.evaluate(SHOW)
            listing.wait_for_function(
                f"() => document.querySelector('#job-{jobs[0]} td:nth-child(7)').textContent.trim() === '434,343'",
                timeout=10_000,
            )
            listing.wait_for_function(OPENED, arg=2, timeout=10_000)  # the reloaded results' own stream
            _report(api, jobs[1], 987654)
            row = listing.locator(f"#job-{jobs[1]} td:nth-child(7)")
            listing.wait_for_function(
                f"() => document.querySelector('#job-{jobs[1]} td:nth-child(7)').textContent.trim() === '987,654'",
                timeout=10_000,
            )
            assert re.sub(r"[^0-9]", "", row.inner_text()) == "987654" and first_row.count() == 1
            assert listing.url == before
            assert listing.evaluate("history.length") == entries, "the reload of the results added a history entry"
            assert not problems, problems
        finally:
            context.close()
