"""Sign in and out: a bearer token typed once becomes a session cookie (`scheduler.sessions`)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Form, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from scheduler.auth import Authenticator
from scheduler.sessions import SESSION_COOKIE, SESSION_MAX_AGE
from scheduler.ui.deps import UI_PREFIX, UiReader
from scheduler.ui.templating import render

router = APIRouter(prefix=UI_PREFIX)


def _safe_next(value: str | None) -> str:
    """Where to go after signing in: a path of this UI only (never another site, never `//host`)."""
    if value and value.startswith(f"{UI_PREFIX}/") and not value.startswith("//") and "\\" not in value:
        return value
    return f"{UI_PREFIX}/jobs"


@router.get("/login", response_class=HTMLResponse)
async def login_form(request: Request, next: Annotated[str | None, Query(max_length=2000)] = None) -> Response:
    auth: Authenticator = request.app.state.auth
    if auth.open_mode or auth.session_of(request) is not None:
        return RedirectResponse(_safe_next(next), status_code=303)
    return render(request, "login.html", {"next": _safe_next(next), "error": None})


@router.post("/login", response_class=HTMLResponse)
async def login(
    request: Request,
    token: Annotated[str, Form(max_length=4096)] = "",
    next: Annotated[str | None, Form(max_length=2000)] = None,
) -> Response:
    auth: Authenticator = request.app.state.auth
    target = _safe_next(next)
    if auth.open_mode:
        return RedirectResponse(target, status_code=303)
    if request.headers.get("sec-fetch-site", "").lower() == "cross-site":
        return render(request, "login.html", {"next": target, "error": "sign in from this site's own page"}, 403)
    found = request.app.state.settings.find_token(token.strip()) if token.strip() else None
    if found is None or auth.sessions is None:
        error = "that token is not valid" if token.strip() else "enter an API token"
        return render(request, "login.html", {"next": target, "error": error}, status_code=401)
    value, _csrf = auth.sessions.mint(found)
    response = RedirectResponse(target, status_code=303)
    response.set_cookie(
        SESSION_COOKIE,
        value,
        max_age=SESSION_MAX_AGE,
        httponly=True,
        samesite="strict",
        # https as the server is published, or as this request arrived (behind a TLS-terminating Ingress,
        # uvicorn's proxy headers make the scheme https)
        secure=auth.sessions.secure or request.url.scheme == "https",
        path="/",
    )
    return response


@router.post("/logout")
async def logout(_: UiReader) -> Response:
    response = RedirectResponse(f"{UI_PREFIX}/login", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="strict")
    return response
