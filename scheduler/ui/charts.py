"""Small server-side SVG charts for the UI: the job page's rows/s over time.

Drawn in Python rather than by a chart library in the browser: the page gets a finished `<svg>` (no script, no
build step, nothing to download), re-rendered by the server as progress arrives. Every text in it goes through
`markupsafe.escape`; the chart is an `img` with a `<title>` and a `<desc>` that say in words what the line
shows (for screen readers, and for anyone who cannot tell a line from a colour), and the page repeats the
latest figures as text next to it. Colours come from the stylesheet (`currentColor` and CSS classes), so the
chart follows the light and dark themes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Final

from markupsafe import Markup, escape

__all__ = ["RatePoint", "describe", "line_chart", "rates"]

WIDTH: Final = 640
HEIGHT: Final = 180
_LEFT: Final = 64
"""Room for the y axis labels (`12.3k`), in SVG units."""
_BOTTOM: Final = 24
_TOP: Final = 10
_RIGHT: Final = 10


@dataclass(frozen=True)
class RatePoint:
    """The rate of one interval between two progress samples: `at` is its end, `seconds` since the first."""

    at: datetime
    seconds: float
    rate: float


def rates(samples: Sequence[tuple[datetime, int]]) -> list[RatePoint]:
    """Rows per second between consecutive `(time, rows so far)` samples, oldest first.

    Samples out of order or at the same instant are skipped (a rate over no time means nothing); a counter
    that went down (it never should) counts as no progress rather than a negative rate.
    """
    points: list[RatePoint] = []
    if not samples:
        return points
    first = samples[0][0]
    previous = samples[0]
    for at, rows in samples[1:]:
        seconds = (at - previous[0]).total_seconds()
        if seconds <= 0:
            continue
        points.append(RatePoint(at, (at - first).total_seconds(), max(0, rows - previous[1]) / seconds))
        previous = (at, rows)
    return points


def _nice_top(value: float) -> float:
    """The y axis' top: the first of 1, 2, 2.5, 5 times 10^k above `value` (so the half-way label is round too)."""
    if value <= 0:
        return 1.0
    scale = 10.0 ** math.floor(math.log10(value))
    return next(step * scale for step in (1, 2, 2.5, 5, 10, 20) if step * scale >= value * 1.02)


def _short(value: float) -> str:
    """`950`, `12.3k`, `4.5M`: axis labels stay narrow."""
    for limit, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if value >= limit:
            return f"{value / limit:.3g}{suffix}"
    return f"{value:.3g}"


def _span(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def describe(points: Sequence[RatePoint], unit: str = "rows/s") -> str:
    """The chart in words: its time span, the latest, peak and mean rate."""
    if not points:
        return f"No {unit} yet: the chart starts with the second progress report."
    values = [p.rate for p in points]
    mean = sum(values) / len(values)
    return (
        f"{unit} over {_span(points[-1].seconds)} ({len(points)} intervals): latest {values[-1]:,.0f}, "
        f"peak {max(values):,.0f}, mean {mean:,.0f}."
    )


def line_chart(points: Sequence[RatePoint], *, title: str, chart_id: str, unit: str = "rows/s") -> Markup:
    """An SVG line chart of `points` (rate against seconds since the first sample), with its text alternative.

    `chart_id` makes the ids of the title and description unique on the page. With fewer than two points
    there is no line to draw: the SVG then holds the axes and says so in its description.
    """
    plot_w, plot_h = WIDTH - _LEFT - _RIGHT, HEIGHT - _TOP - _BOTTOM
    top = _nice_top(max((p.rate for p in points), default=0.0))
    span = points[-1].seconds if points else 0.0
    span = span if span > 0 else 1.0
    safe_id = escape(chart_id)
    parts = [
        f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" preserveAspectRatio="none" '
        f'aria-labelledby="{safe_id}-title {safe_id}-desc" xmlns="http://www.w3.org/2000/svg">',
        f'<title id="{safe_id}-title">{escape(title)}</title>',
        f'<desc id="{safe_id}-desc">{escape(describe(points, unit))}</desc>',
        f'<g class="axis" aria-hidden="true">'
        f'<line x1="{_LEFT}" y1="{_TOP}" x2="{_LEFT}" y2="{_TOP + plot_h}"/>'
        f'<line x1="{_LEFT}" y1="{_TOP + plot_h}" x2="{_LEFT + plot_w}" y2="{_TOP + plot_h}"/>',
    ]
    for fraction in (0.0, 0.5, 1.0):
        y = _TOP + plot_h * (1 - fraction)
        parts.append(
            f'<line class="grid" x1="{_LEFT}" y1="{y:.1f}" x2="{_LEFT + plot_w}" y2="{y:.1f}"/>'
            f'<text x="{_LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">{escape(_short(top * fraction))}</text>'
        )
    parts.append(f'<text x="{_LEFT}" y="{HEIGHT - 6}" text-anchor="start">0 s</text>')
    parts.append(
        f'<text x="{_LEFT + plot_w}" y="{HEIGHT - 6}" text-anchor="end">{escape(_span(span if points else 0))}</text>'
    )
    parts.append(f'<text x="{_LEFT + plot_w / 2:.0f}" y="{HEIGHT - 6}" text-anchor="middle">{escape(unit)}</text>')
    parts.append("</g>")
    if len(points) >= 1:
        coords = " ".join(
            f"{_LEFT + plot_w * p.seconds / span:.1f},{_TOP + plot_h * (1 - p.rate / top):.1f}" for p in points
        )
        if len(points) == 1:
            cx, cy = coords.split(",")
            parts.append(f'<circle class="line" cx="{cx}" cy="{cy}" r="3" aria-hidden="true"/>')
        else:
            parts.append(f'<polyline class="line" fill="none" points="{coords}" aria-hidden="true"/>')
    parts.append("</svg>")
    return Markup("".join(parts))
