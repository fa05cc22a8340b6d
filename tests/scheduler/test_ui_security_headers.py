"""The security headers of /ui responses (scheduler/ui/security.py), over HTTP: on pages, redirects, errors and
static assets under /ui, never on the API or the API docs, and streams pass through unbuffered."""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from api_kit import READ, READ_TOKEN, running, settings_for
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, StreamingResponse
from starlette.routing import Route

from scheduler.ui.security import CONTENT_SECURITY_POLICY, UiSecurityHeaders
from scheduler.ui.templating import STATIC_DIR

TEMPLATES = Path(__file__).resolve().parents[2] / "scheduler" / "ui" / "templates"
EXPECTED = {
    "content-security-policy": (
        "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
        "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
    ),
    "x-content-type-options": "nosniff",
    "referrer-policy": "same-origin",
    "x-frame-options": "DENY",
}


def _security(headers: Any) -> dict[str, str | None]:
    return {name: headers.get(name) for name in EXPECTED}


@pytest.mark.asyncio
async def test_pages_redirects_and_error_pages_under_ui_carry_the_policy_and_are_never_stored(
    api_database_url: str, tmp_path: Path
) -> None:
    assert EXPECTED["content-security-policy"] == CONTENT_SECURITY_POLICY
    async with running(settings_for(tmp_path, api_database_url)) as api:
        form = await api.client.get("/ui/login")
        assert form.status_code == 200 and form.headers["content-type"].startswith("text/html")
        refused = await api.client.post("/ui/login", data={"token": "nope"})
        assert refused.status_code == 401 and "not valid" in refused.text
        signed_in = await api.client.post("/ui/login", data={"token": READ_TOKEN, "next": "/ui/pipelines"})
        assert signed_in.status_code == 303 and signed_in.headers["location"] == "/ui/pipelines"
        missing = await api.client.get("/ui/no-such-page", headers=READ)
        assert missing.status_code == 404 and "no such page" in missing.text
        root = await api.client.get("/ui")
        assert root.status_code == 307
        for response in (form, refused, signed_in, missing, root):
            where = response.request.url.path
            assert _security(response.headers) == EXPECTED, where
            assert response.headers["cache-control"] == "no-store", where


@pytest.mark.asyncio
async def test_static_assets_carry_the_policy_but_may_be_cached(api_database_url: str, tmp_path: Path) -> None:
    async with running(settings_for(tmp_path, api_database_url)) as api:
        for asset in ("ui.css", "vendor/htmx-2.0.8.min.js"):
            response = await api.client.get(f"/ui/static/{asset}")
            assert response.status_code == 200, asset
            assert response.content == (STATIC_DIR / asset).read_bytes()
            assert _security(response.headers) == EXPECTED, asset
            assert "no-store" not in response.headers.get("cache-control", ""), asset
            assert "etag" in response.headers, asset  # revalidated, not fetched again
            assert response.headers["cache-control"] == "no-cache", asset
        # the pages link each asset by its content hash, and such a URL is kept for a year without asking
        page = await api.client.get("/ui/login")
        linked = re.findall(r'/ui/static/([\w./-]+)\?v=([0-9a-f]{12})"', page.text)
        assert {"ui.css", "ui.js", "vendor/htmx-2.0.8.min.js"} <= {path for path, _ in linked}, linked
        for path, version in linked:
            assert version == hashlib.sha256((STATIC_DIR / path).read_bytes()).hexdigest()[:12], path
            response = await api.client.get(f"/ui/static/{path}?v={version}")
            assert response.headers["cache-control"] == "public, max-age=31536000, immutable", path


@pytest.mark.asyncio
async def test_the_api_and_its_docs_pages_get_none_of_it(api_database_url: str, tmp_path: Path) -> None:
    async with running(settings_for(tmp_path, api_database_url)) as api:
        docs = await api.client.get("/docs")
        assert docs.status_code == 200 and "<script>" in docs.text  # Swagger UI starts from an inline script
        redoc = await api.client.get("/redoc")
        assert redoc.status_code == 200
        listed = await api.client.get("/api/v1/pipelines", headers=READ)
        assert listed.status_code == 200
        schema = await api.client.get("/openapi.json")
        assert schema.status_code == 200
        to_ui = await api.client.get("/")
        assert to_ui.status_code == 307 and to_ui.headers["location"] == "/ui/jobs"
        for response in (docs, redoc, listed, schema, to_ui):
            assert _security(response.headers) == dict.fromkeys(EXPECTED), response.request.url.path
            assert "no-store" not in response.headers.get("cache-control", ""), response.request.url.path


# ---------------------------------------------------------------------------------------------- the middleware


def _streaming_app(release: asyncio.Event) -> Starlette:
    async def stream(_request: Request) -> StreamingResponse:
        async def events() -> AsyncIterator[bytes]:
            yield b"data: first\n\n"
            await release.wait()  # the test sets it only once it has received the first event
            yield b"data: second\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    async def own_headers(_request: Request) -> PlainTextResponse:
        return PlainTextResponse("x", headers={"Cache-Control": "max-age=60", "X-Frame-Options": "SAMEORIGIN"})

    routes = [Route("/ui/stream", stream), Route("/ui/own", own_headers), Route("/uix", own_headers)]
    return Starlette(routes=routes, middleware=[])


async def _call(app: Any, path: str, on_body: Any = None) -> list[dict[str, Any]]:
    """Drive `app` with one GET of `path` as a server would; every message it sends, in order."""
    sent: list[dict[str, Any]] = []
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET", "scheme": "http",
        "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "", "headers": [],
        "server": ("scheduler.test", 80), "client": ("127.0.0.1", 5000),
    }  # fmt: skip
    requested = False
    finished = asyncio.Event()

    async def receive() -> dict[str, Any]:
        nonlocal requested
        if not requested:
            requested = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await finished.wait()  # the client stays connected until the response is complete
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)
        if message["type"] == "http.response.body":
            if on_body is not None:
                on_body(message)
            if not message.get("more_body"):
                finished.set()

    await asyncio.wait_for(app(scope, receive, send), timeout=10)
    return sent


@pytest.mark.asyncio
async def test_an_event_stream_under_ui_is_passed_on_event_by_event_not_buffered() -> None:
    release = asyncio.Event()
    bodies: list[bytes] = []

    def on_body(message: dict[str, Any]) -> None:
        bodies.append(message["body"])
        if message["body"] == b"data: first\n\n":
            release.set()  # the second event can only come after the first one reached the client

    sent = await _call(UiSecurityHeaders(_streaming_app(release)), "/ui/stream", on_body)
    start = sent[0]
    assert start["type"] == "http.response.start" and start["status"] == 200
    headers = {k.decode(): v.decode() for k, v in start["headers"]}
    assert headers["content-type"].startswith("text/event-stream")
    assert headers["content-security-policy"] == CONTENT_SECURITY_POLICY
    assert headers["cache-control"] == "no-store"
    assert [b for b in bodies if b] == [b"data: first\n\n", b"data: second\n\n"]


@pytest.mark.asyncio
async def test_headers_a_route_sets_itself_are_kept_and_only_the_ui_prefix_counts() -> None:
    app = UiSecurityHeaders(_streaming_app(asyncio.Event()))
    own = {k.decode(): v.decode() for k, v in (await _call(app, "/ui/own"))[0]["headers"]}
    assert own["cache-control"] == "max-age=60"
    assert own["x-frame-options"] == "SAMEORIGIN"
    assert own["content-security-policy"] == CONTENT_SECURITY_POLICY  # the rest is still added
    lookalike = {k.decode() for k, _ in (await _call(app, "/uix"))[0]["headers"]}
    assert "content-security-policy" not in lookalike  # /uix is not under /ui


# ---------------------------------------------------------------------------------------------- what the policy needs

_INLINE_SCRIPT = re.compile(r"<script\b(?![^>]*\bsrc=)[^>]*>", re.IGNORECASE)
_EVENT_ATTRIBUTE = re.compile(r"<[a-z][^>]*\s(on[a-z]+|hx-on[:\-][\w:\-]*)\s*=", re.IGNORECASE)
_JS_URL = re.compile(r"""(href|src|action)\s*=\s*["']?\s*javascript:""", re.IGNORECASE)


def test_no_template_holds_what_script_src_self_would_block() -> None:
    """Inline <script> blocks, on*= and hx-on attributes (htmx evaluates those, and allowEval is off) and
    javascript: URLs would silently not run under the policy: none in any template of the UI."""
    templates = sorted(TEMPLATES.rglob("*.html"))
    assert templates
    for path in templates:
        text = path.read_text()
        where = path.relative_to(TEMPLATES)
        assert not _INLINE_SCRIPT.search(text), f"{where}: an inline <script> (put it in static/<area>.js)"
        found = _EVENT_ATTRIBUTE.search(text)
        assert not found, f"{where}: a {found and found.group(1)} attribute (bind the event in static/<area>.js)"
        assert not _JS_URL.search(text), f"{where}: a javascript: URL"


def test_htmx_is_configured_to_run_without_eval_or_injected_styles() -> None:
    base = (TEMPLATES / "base.html").read_text()
    meta = re.search(r"""<meta name="htmx-config" content='([^']*)'>""", base)
    assert meta is not None, "base.html has no htmx-config meta"
    config = json.loads(meta.group(1))
    assert config["allowEval"] is False
    assert config["includeIndicatorStyles"] is False
