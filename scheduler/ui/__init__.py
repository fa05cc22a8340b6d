"""The web UI, served by the scheduling server under `/ui` (server-rendered Jinja2 pages, htmx, SSE).

`install_ui(app)` mounts the vendored static assets, the pages of each area (one module per area: `login`,
`pipelines`, `deploy`, `jobs`, `job_detail`) and the redirect of `/` to `/ui`, and makes errors raised under
`/ui` answer as HTML pages instead of the API's JSON error body. Pages call `SchedulerService`, like the REST
API: never the database. docs/ui.md says why this stack and how it is built.
"""

from __future__ import annotations

import importlib
from typing import Final

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException

from scheduler.errors import SchedulerError
from scheduler.ui.deps import UI_PREFIX, SignInRequired, sign_in_url
from scheduler.ui.security import UiSecurityHeaders
from scheduler.ui.templating import STATIC_DIR, render

__all__ = ["UI_PREFIX", "install_ui"]

AREAS: Final = ("login", "pipelines", "deploy", "jobs", "job_detail")
"""The modules of `scheduler.ui` holding a `router` each, included in this order."""


def install_ui(app: FastAPI) -> None:
    """Serve the UI from `app`: static assets, the pages, `/` → `/ui`, HTML errors under `/ui`."""
    app.add_middleware(UiSecurityHeaders)  # CSP, no framing, no-store pages: scheduler/ui/security.py
    app.mount(f"{UI_PREFIX}/static", StaticFiles(directory=STATIC_DIR), name="ui-static")
    for area in AREAS:
        module = importlib.import_module(f"scheduler.ui.{area}")
        app.include_router(module.router, include_in_schema=False)

    @app.get("/", include_in_schema=False)
    async def root() -> RedirectResponse:
        return RedirectResponse(f"{UI_PREFIX}/jobs", status_code=307)

    @app.get(UI_PREFIX, include_in_schema=False)
    @app.get(f"{UI_PREFIX}/", include_in_schema=False)
    async def ui_root() -> RedirectResponse:
        return RedirectResponse(f"{UI_PREFIX}/jobs", status_code=307)

    async def sign_in_required(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, SignInRequired)
        url = sign_in_url(exc.next_url)
        if request.headers.get("hx-request") == "true":
            return Response(status_code=204, headers={"HX-Redirect": url})
        return RedirectResponse(url, status_code=303)

    app.add_exception_handler(SignInRequired, sign_in_required)
    for kind in (SchedulerError, RequestValidationError, HTTPException):
        _html_errors_under_ui(app, kind)


def _html_errors_under_ui(app: FastAPI, kind: type[Exception]) -> None:
    """Errors of `kind` raised under /ui render the error page; elsewhere the API's handler answers."""
    api_handler = app.exception_handlers[kind]

    async def handler(request: Request, exc: Exception) -> Response:
        if not request.url.path.startswith(f"{UI_PREFIX}/") or request.url.path.startswith(f"{UI_PREFIX}/static/"):
            answer = api_handler(request, exc)
            return answer if isinstance(answer, Response) else await answer
        status, code, message = _describe(exc)
        fragment = request.headers.get("hx-request") == "true"
        context = {"status": status, "code": code, "message": message, "fragment": fragment, "nav": None}
        page = render(request, "error_fragment.html" if fragment else "error.html", context, status_code=status)
        if fragment:
            page.headers["HX-Retarget"] = "#flash"
            page.headers["HX-Reswap"] = "innerHTML"
        return page

    app.add_exception_handler(kind, handler)


def _describe(exc: Exception) -> tuple[int, str, str]:
    if isinstance(exc, SchedulerError):
        return exc.http_status, exc.code, exc.message
    if isinstance(exc, RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(part) for part in first.get("loc", ()))
        return 422, "invalid_request", f"invalid request: {where}: {first.get('msg', 'invalid')}"
    assert isinstance(exc, HTTPException)
    message = exc.detail if isinstance(exc.detail, str) else "error"
    if exc.status_code == 404:
        message = "no such page"
    return exc.status_code, "http_error", message
