"""The UI's Jinja2 environment: templates from `scheduler/ui/templates`, autoescaped, with the shared filters.

Every page renders through `render`, which adds what the layout needs: the signed-in user, whether they may
write, and the CSRF token the layout puts in `<meta name="csrf-token">` (ui.js sends it with every htmx request).
Nothing a user typed is marked safe: autoescape is on for every template, and the only HTML built in Python
(highlighted YAML, diffs, charts) escapes its input itself.
"""

from __future__ import annotations

import functools
import hashlib
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import jinja2
from fastapi import Request
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates

__all__ = ["STATIC_DIR", "TEMPLATES", "render"]

HERE: Final = Path(__file__).resolve().parent
STATIC_DIR: Final = HERE / "static"
TEMPLATES: Final = Jinja2Templates(
    env=jinja2.Environment(
        loader=jinja2.FileSystemLoader(HERE / "templates"), autoescape=True, undefined=jinja2.StrictUndefined
    )
)


def _when(value: datetime | None) -> str:
    """An instant as `2026-12-03 17:20:05Z` (UTC, to the second); empty for None."""
    if value is None:
        return ""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _iso(value: datetime | None) -> str:
    """An instant in ISO 8601 (for `<time datetime=...>` and for scripts)."""
    if value is None:
        return ""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _duration(seconds: float | None) -> str:
    """`850 ms`, `12.3 s`, `4m 05s`, `2h 03m`; empty for None."""
    if seconds is None:
        return ""
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m {secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m"


def _count(value: int | float | None) -> str:
    """A count with thousands separators (`1,000,000`); empty for None."""
    if value is None:
        return ""
    return f"{value:,.0f}"


TEMPLATES.env.filters["when"] = _when
TEMPLATES.env.filters["iso"] = _iso
TEMPLATES.env.filters["duration"] = _duration
TEMPLATES.env.filters["count"] = _count


@functools.cache
def _asset_version(path: str) -> str:
    """A short hash of a static file's content: its URL changes when the file does, so it may be cached long."""
    try:
        return hashlib.sha256((STATIC_DIR / path).read_bytes()).hexdigest()[:12]
    except OSError:
        return "missing"


@jinja2.pass_context
def _url_for(context: dict[str, Any], name: str, /, **path_params: Any) -> str:
    """Starlette's `url_for`, plus `?v=<content hash>` on static assets (cached for a year, see ui/security.py)."""
    request: Request = context["request"]
    url = str(request.url_for(name, **path_params))
    if name == "ui-static" and "path" in path_params:
        url += f"?v={_asset_version(str(path_params['path']))}"
    return url


TEMPLATES.env.globals["url_for"] = _url_for


def render(request: Request, name: str, context: dict[str, Any] | None = None, status_code: int = 200) -> HTMLResponse:
    """The template `name` with `context` and the layout's context (user, can_write, csrf_token)."""
    from scheduler.ui.deps import layout_context  # here: deps imports this module

    full = {**layout_context(request), **(context or {})}
    return TEMPLATES.TemplateResponse(request, name, full, status_code=status_code)
