"""Security headers on every response under `/ui`: a Content-Security-Policy, no framing, no sniffing, and
`Cache-Control: no-store` on the pages (never on `/ui/static`, whose assets may be cached).

The policy allows scripts and connections to this server only (`script-src 'self'`: no inline `<script>`, no
`on*=` attributes, no eval; htmx runs under it because base.html's htmx-config sets `allowEval: false` and turns
its injected indicator styles off). Inline styles stay allowed ('unsafe-inline' in style-src: htmx settles `style`
attributes while it swaps); they cannot run code.

It is a pure ASGI middleware, not Starlette's `BaseHTTPMiddleware`: it only adds headers to the
`http.response.start` message and passes every body message through as it comes, so server-sent event streams
are never buffered. Outside `/ui` nothing changes: the API answers JSON, and `/docs` and `/redoc`
(`scheduler.api.docs`) need their inline scripts. A header a route sets itself is kept.
"""

from __future__ import annotations

from typing import Final

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from scheduler.ui.deps import UI_PREFIX

__all__ = ["CONTENT_SECURITY_POLICY", "SECURITY_HEADERS", "UiSecurityHeaders"]

CONTENT_SECURITY_POLICY: Final = "; ".join(
    (
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self' 'unsafe-inline'",
        "img-src 'self' data:",
        "connect-src 'self'",
        "frame-ancestors 'none'",
        "base-uri 'none'",
        "form-action 'self'",
    )
)

SECURITY_HEADERS: Final[tuple[tuple[str, str], ...]] = (
    ("content-security-policy", CONTENT_SECURITY_POLICY),
    ("x-content-type-options", "nosniff"),
    ("referrer-policy", "same-origin"),
    ("x-frame-options", "DENY"),
)
"""Added to every response under /ui, static assets included."""

NO_STORE: Final = ("cache-control", "no-store")
"""Added to the pages, fragments and streams under /ui (everything but /ui/static): they show what a session may
see, and a shared or back-button cache must not keep it."""

IMMUTABLE: Final = ("cache-control", "public, max-age=31536000, immutable")
REVALIDATE: Final = ("cache-control", "no-cache")
_STATIC_PREFIX: Final = f"{UI_PREFIX}/static/"


class UiSecurityHeaders:
    """ASGI middleware: the security headers on responses whose path is `/ui` or under `/ui/`."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope.get("path", "") if scope["type"] == "http" else ""
        if not (path == UI_PREFIX or path.startswith(f"{UI_PREFIX}/")):
            await self.app(scope, receive, send)
            return
        if path.startswith(_STATIC_PREFIX):
            # the pages link assets as `?v=<content hash>` (scheduler.ui.templating): such a URL never changes
            # meaning, so the browser keeps it without asking again; a bare URL is revalidated (ETag)
            versioned = b"v=" in scope.get("query_string", b"")
            extra = (*SECURITY_HEADERS, IMMUTABLE if versioned else REVALIDATE)
        else:
            extra = (*SECURITY_HEADERS, NO_STORE)

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message.setdefault("headers", [])  # optional in an ASGI message
                headers = MutableHeaders(scope=message)
                for name, value in extra:
                    headers.setdefault(name, value)
            await send(message)

        await self.app(scope, receive, send_with_headers)
