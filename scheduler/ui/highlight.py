"""YAML as highlighted HTML with a numbered, linkable line each: the IR and values views of the pipelines pages.

Pygments tokenises the text and escapes every token itself (its `HtmlFormatter` HTML-escapes all text it
writes), so nothing of the YAML, which users typed, reaches the page as markup. With `nowrap` the formatter
writes one line of output per line of input with every `<span>` closed on its line, so the output is split
into lines and each is wrapped in `<span class="line" id="{prefix}L{n}">` behind a link to itself: a URL
ending in `#L12` points at line 12 (and `:target` marks it). The class names are Pygments' short ones, which
ui.css colours with the theme's variables.
"""

from __future__ import annotations

from typing import Final

from markupsafe import Markup, escape
from pygments import highlight as pygments_highlight  # type: ignore[import-untyped]  # no stubs installed
from pygments.formatters import HtmlFormatter  # type: ignore[import-untyped]  # no stubs installed
from pygments.lexers import YamlLexer  # type: ignore[import-untyped]  # no stubs installed

__all__ = ["MAX_HIGHLIGHTED_BYTES", "highlight_yaml", "line_anchor"]

MAX_HIGHLIGHTED_BYTES: Final = 2 * 2**20
"""Beyond this size YAML is shown as plain (escaped) lines: tokenising megabytes would hold the page up."""

_FORMATTER: Final = HtmlFormatter(nowrap=True)


def line_anchor(prefix: str, number: int) -> str:
    """The id of line `number` (from 1) of the block whose anchors start with `prefix`: `{prefix}L{number}`."""
    return f"{prefix}L{number}"


def highlight_yaml(text: str, prefix: str = "", label: str | None = None) -> Markup:
    """`text` as `<pre class="highlight lines">`, one anchored line per line of input (see the module doc).

    `prefix` keeps the anchors of several blocks on one page apart (`pipeline.yaml-L3`); `label` names the
    block for assistive technology (the file name)."""
    if len(text) <= MAX_HIGHLIGHTED_BYTES:
        body = str(pygments_highlight(text, YamlLexer(), _FORMATTER))
    else:
        body = str(escape(text))
    lines = body.split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # the text's final newline ends the last line; it does not start another
    out: list[str] = []
    for number, line in enumerate(lines, start=1):
        anchor = escape(line_anchor(prefix, number))
        out.append(
            f'<span class="line" id="{anchor}"><a class="ln" href="#{anchor}" tabindex="-1" '
            f'aria-hidden="true">{number}</a><span class="src">{line}</span></span>'
        )
    named = f' role="region" aria-label="{escape(label)}"' if label else ""
    # tabindex 0: a block wider than the page scrolls, so it must be reachable by keyboard
    return Markup(f'<pre class="highlight lines" tabindex="0"{named}><code>{"".join(out)}</code></pre>')
