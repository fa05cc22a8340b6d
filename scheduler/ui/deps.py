"""Who is looking at a page, and may they: the UI's counterparts of `ReadPrincipal` and `WritePrincipal`.

A page resolves its caller like the API does (`Authenticator.request_principal`: a bearer header, else the
session cookie). Without either, when tokens are configured, a page redirects to the sign-in form (an htmx
request gets `HX-Redirect` instead, so the whole page moves). Unsafe UI requests must carry the CSRF token in
`X-CSRF-Token` or in the form field `csrf_token`: the session's, or in open mode the server's
(`SessionSigner.open_mode_csrf`).
"""

from __future__ import annotations

import hmac
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import Depends, Request

from scheduler.auth import ANONYMOUS, SAFE_METHODS, Authenticator, Forbidden, Principal, Unauthorized
from scheduler.sessions import CSRF_FIELD, CSRF_HEADER

__all__ = ["SignInRequired", "UiReader", "UiWriter", "csrf_token", "layout_context"]

UI_PREFIX = "/ui"


class SignInRequired(Exception):
    """The page needs a session; the handler redirects to the sign-in form, back to `next_url` after it."""

    def __init__(self, next_url: str) -> None:
        super().__init__(next_url)
        self.next_url = next_url


def _auth(request: Request) -> Authenticator:
    auth = request.app.state.auth
    assert isinstance(auth, Authenticator)
    return auth


def csrf_token(request: Request) -> str:
    """The CSRF token the page must send back with unsafe requests ('' when there is none to send)."""
    auth = _auth(request)
    if auth.sessions is None:
        return ""
    if auth.open_mode:
        return auth.sessions.open_mode_csrf()
    session = auth.session_of(request)
    return session.csrf if session is not None else ""


def _next_url(request: Request) -> str:
    if request.headers.get("hx-request") == "true":
        current = request.headers.get("hx-current-url")
        if current:
            return current
    path = request.url.path
    return path + (f"?{request.url.query}" if request.url.query else "")


async def _check_csrf(request: Request) -> None:
    sent = request.headers.get(CSRF_HEADER)
    if sent is None and request.headers.get("content-type", "").startswith(
        ("application/x-www-form-urlencoded", "multipart/form-data")
    ):
        form = await request.form()
        value = form.get(CSRF_FIELD)
        sent = value if isinstance(value, str) else None
    expected = csrf_token(request)
    if not expected or not sent or not hmac.compare_digest(sent, expected):
        raise Forbidden("this form is stale or was not sent by this site: reload the page", code="csrf_failed")


async def _principal(request: Request, needed: Any) -> Principal:
    auth = _auth(request)
    if request.method not in SAFE_METHODS:
        await _check_csrf(request)
    try:
        if request.method not in SAFE_METHODS and not auth.open_mode and request.headers.get(CSRF_HEADER) is None:
            # the form field carried the token (checked above); request_principal looks only at the header
            session = auth.session_of(request)
            if session is None:
                raise Unauthorized("sign in first")
            return auth.scoped(Principal(session.token.name, session.token.scope), needed)
        return auth.request_principal(request, needed)
    except Unauthorized:
        raise SignInRequired(_next_url(request)) from None


async def _reader(request: Request) -> Principal:
    principal = await _principal(request, "read")
    request.state.ui_principal = principal
    return principal


async def _writer(request: Request) -> Principal:
    principal = await _principal(request, "write")
    request.state.ui_principal = principal
    return principal


UiReader = Annotated[Principal, Depends(_reader)]
"""A page parameter: the caller, who may read (redirects to sign-in otherwise)."""
UiWriter = Annotated[Principal, Depends(_writer)]
"""A UI action parameter: the caller, who may write, with the CSRF token checked."""


def sign_in_url(next_url: str) -> str:
    return f"{UI_PREFIX}/login?next={quote(next_url, safe='')}"


def layout_context(request: Request) -> dict[str, Any]:
    """What the layout needs: the user (None on the sign-in page), can_write, the CSRF token, open mode."""
    auth = _auth(request)
    principal = getattr(request.state, "ui_principal", None)
    if principal is None and auth.open_mode:
        principal = ANONYMOUS
    return {
        "user": principal,
        "can_write": principal is not None and principal.allows("write"),
        "csrf_token": csrf_token(request),
        "open_mode": auth.open_mode,
    }
