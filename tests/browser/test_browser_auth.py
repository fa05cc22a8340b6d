"""Sign-in, sessions and what a session may do, in a real browser: the sign-in form with a write token, no page
or stream without a session, no write without the CSRF token, a read token that sees no write button and whose
forged writes the server refuses, and open mode (no tokens: the UI opens directly)."""

from __future__ import annotations

import re
import uuid
from typing import Any

import pytest
from browser_kit import LONG_INPUT, READ_TOKEN, WRITE_TOKEN, Browse, CheckPage, UiServer, sign_in

from scheduler.states import JobState


def test_sign_in_with_a_write_token(browse: Browse, ui_server: UiServer, check_page: CheckPage) -> None:
    page = browse.page(who=None)
    page.goto("/ui/pipelines?x=1")
    # no session: the page sends us to the sign-in form, which brings us back afterwards
    assert re.search(r"/ui/login\?next=%2Fui%2Fpipelines%3Fx%3D1$", page.url), page.url
    check_page(page, "login")

    page.get_by_label("API token").fill("wr-not-a-configured-token-0000000000")
    page.get_by_role("button", name="Sign in").click()
    assert page.get_by_role("alert").inner_text() == "that token is not valid"
    assert page.get_by_label("API token").get_attribute("aria-invalid") == "true"

    page.get_by_label("API token").fill(WRITE_TOKEN)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(re.compile(r"/ui/pipelines\?x=1$"))
    header = page.locator("header.top")
    assert "writer" in header.inner_text() and "write" in header.locator(".badge").inner_text()
    assert page.get_by_role("navigation", name="Main").get_by_role("link", name="Deploy").is_visible()

    cookie = next(c for c in page.context.cookies() if c["name"] == "modelops_session")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    assert WRITE_TOKEN not in cookie["value"]  # the cookie carries a signed session, not the token

    page.get_by_role("button", name="Sign out").click()
    page.wait_for_url(re.compile(r"/ui/login"))
    page.goto("/ui/jobs")
    assert "/ui/login" in page.url, "signed out, a page must ask to sign in again"


def test_no_page_or_stream_without_a_session(
    browse: Browse, ui_server: UiServer, digits_pipeline: str, finished_jobs: dict[str, uuid.UUID]
) -> None:
    job = finished_jobs["succeeded"]
    context = browse.context(who=None)
    page = context.new_page()
    pages = [
        "/ui/jobs?state=RUNNING",
        f"/ui/jobs/{job}",
        "/ui/pipelines",
        f"/ui/pipelines/{digits_pipeline}",
        f"/ui/pipelines/{digits_pipeline}/versions/1",
        f"/ui/pipelines/{digits_pipeline}/run",
        "/ui/deploy",
    ]
    for path in pages:
        page.goto(path)
        assert "/ui/login?next=" in page.url, f"{path} opened without a session: {page.url}"
        assert page.get_by_label("API token").is_visible()

    streams = [
        "/ui/jobs/stream",
        f"/ui/jobs/{job}/stream",
        f"/ui/jobs/{job}/logs/stream",
        "/api/v1/jobs/events",
        f"/api/v1/jobs/{job}/events",
        f"/api/v1/jobs/{job}/logs?follow=true",
    ]
    for path in streams:
        answer = context.request.get(path, max_redirects=0, timeout=10_000)
        redirected = answer.status in (302, 303, 307) and "/ui/login" in answer.headers.get("location", "")
        assert answer.status == 401 or redirected, f"{path} without a session: {answer.status} {answer.text()[:200]}"

    # and the page's own EventSource, opened by a script without a session, is refused, not served
    page.goto("/ui/login")
    refused = page.evaluate(
        """(url) => new Promise((resolve) => {
             const source = new EventSource(url);
             source.addEventListener("job", () => { source.close(); resolve("served"); });
             source.onerror = () => { source.close(); resolve("refused"); };
             setTimeout(() => { source.close(); resolve("no answer"); }, 5000);
           })""",
        f"/api/v1/jobs/{job}/events",
    )
    assert refused == "refused"


FETCH = """async ([url, body, type, csrf]) => {
  const headers = {"Content-Type": type};
  if (csrf) { headers["X-CSRF-Token"] = csrf; }
  const answer = await fetch(url, {method: "POST", body, headers, credentials: "same-origin"});
  return [answer.status, await answer.text()];
}"""


def csrf_of(page: Any) -> str:
    token = page.locator('meta[name="csrf-token"]').get_attribute("content")
    assert token, "the page carries no CSRF token"
    return str(token)


def test_a_write_without_the_csrf_token_is_refused(browse: Browse, ui_server: UiServer) -> None:
    page = browse.page("writer")
    page.goto("/ui/jobs")
    csrf = csrf_of(page)
    broken = "apiVersion: modelops/v1\nkind: ScoringPipeline\n"

    # the REST API with the session cookie: refused without the header, heard with it (422: the IR is bad)
    status, body = page.evaluate(FETCH, ["/api/v1/pipelines", broken, "application/yaml", None])
    assert status == 403, body
    status, body = page.evaluate(FETCH, ["/api/v1/pipelines", broken, "application/yaml", "forged-" + csrf[7:]])
    assert status == 403, body
    status, body = page.evaluate(FETCH, ["/api/v1/pipelines", broken, "application/yaml", csrf])
    assert status == 422, body

    # the UI's own actions: a form without its csrf_token field, or with another one, is refused
    form = "application/x-www-form-urlencoded"
    for path in ("/ui/deploy/validate", "/ui/logout"):
        status, body = page.evaluate(FETCH, [path, "text=" + broken, form, None])
        assert status == 403, f"{path}: {status} {body[:200]}"
        assert "reload the page" in body
        status, body = page.evaluate(FETCH, [path, "csrf_token=nope&text=x", form, None])
        assert status == 403, f"{path}: {status} {body[:200]}"
    status, _ = page.evaluate(FETCH, ["/ui/deploy/validate", f"csrf_token={csrf}&text=x", form, None])
    assert status in (200, 422)

    page.reload()
    assert "/ui/login" not in page.url, "the refused sign-out must not have signed us out"


def test_a_read_token_sees_no_write_buttons_and_its_writes_are_refused(
    browse: Browse, ui_server: UiServer, digits_pipeline: str
) -> None:
    writer = ui_server.api("writer")
    job = writer.create_job(digits_pipeline, parameters={"input": LONG_INPUT, "output": "out/read-token.csv"})
    try:
        page = browse.page("reader")
        page.goto(f"/ui/jobs/{job.id}")
        assert page.locator("#job-state").inner_text() in {s.value for s in JobState if s.value != "CANCELLED"}
        assert page.get_by_role("button", name=re.compile("Cancel")).count() == 0
        header = page.locator("header.top")
        assert "reader" in header.inner_text() and header.locator(".badge").inner_text() == "read"
        assert page.get_by_role("navigation", name="Main").get_by_role("link", name="Deploy").count() == 0

        page.goto("/ui/jobs")
        assert page.get_by_role("link", name="Start a job").count() == 0
        page.goto(f"/ui/pipelines/{digits_pipeline}")
        assert page.get_by_role("link", name=re.compile(r"^(Run|Start)")).count() == 0
        assert page.get_by_role("button", name=re.compile(r"^(Run|Start)")).count() == 0
        page.goto(f"/ui/pipelines/{digits_pipeline}/run")
        assert page.get_by_role("button", name=re.compile("Start")).count() == 0
        page.goto("/ui/deploy")
        assert page.locator("#deploy-button").count() == 0

        # forged writes, with the reader's own valid CSRF token: the server refuses them
        csrf = csrf_of(page)
        form = "application/x-www-form-urlencoded"
        status, body = page.evaluate(FETCH, [f"/ui/jobs/{job.id}/cancel", f"csrf_token={csrf}", form, None])
        assert status == 403, body
        status, body = page.evaluate(FETCH, [f"/api/v1/jobs/{job.id}/cancel", "", "application/json", csrf])
        assert status == 403, body
        status, body = page.evaluate(
            FETCH, [f"/ui/pipelines/{digits_pipeline}/run", f"csrf_token={csrf}&version=1", form, None]
        )
        assert status == 403, body
        assert not writer.get_job(job.id).terminal and writer.get_job(job.id).state is not JobState.CANCELLING
    finally:
        writer.cancel_job(job.id)


def test_the_read_token_signs_in_like_the_write_token(browse: Browse, ui_server: UiServer) -> None:
    page = browse.page(who=None)
    sign_in(page, READ_TOKEN, "/ui/pipelines")
    assert page.locator("header.top .badge").inner_text() == "read"


@pytest.mark.parametrize("path", ["/", "/ui", "/ui/login"])
def test_open_mode_opens_the_ui_without_signing_in(browse: Browse, open_server: UiServer, path: str) -> None:
    page = browse.page(who=None, server=open_server)
    page.goto(path)
    page.wait_for_url(re.compile(r"/ui/jobs$"))
    header = page.locator("header.top")
    assert header.get_by_role("button", name="Sign out").count() == 0
    assert page.get_by_role("navigation", name="Main").get_by_role("link", name="Deploy").is_visible()
