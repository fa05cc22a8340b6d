"""Unified diff text (as `scheduler.irtext.unified_diff` writes it) as escaped HTML, one section per file.

Each line keeps its `+`, `-` or space sign, so a change is told by the sign and not by colour alone; the
colours come from ui.css (`.diff .add`, `.diff .del`, `.diff .hunk`). Added and removed lines are `<ins>` and
`<del>`, which assistive technology announces as insertions and deletions. Every line is escaped here: the
diffed YAML is user input.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from markupsafe import Markup, escape

__all__ = ["DiffFile", "diff_files"]

_HUNK: Final = re.compile(r"^@@ -\d+(?:,(\d+))? \+\d+(?:,(\d+))? @@")


@dataclass(frozen=True)
class DiffFile:
    """One file of a unified diff: its name, how many lines were added and removed, and its lines as HTML."""

    name: str
    added: int
    removed: int
    html: Markup


def _file_name(old: str, new: str) -> str:
    """`v1/flows/x.yaml` and `v2/flows/x.yaml` -> `flows/x.yaml`; a side that is /dev/null gives way."""
    side = new if new != "/dev/null" else old
    return side.split("/", 1)[1] if "/" in side else side


def _hunk_sizes(header: str) -> tuple[int, int] | None:
    """`@@ -3,4 +3,5 @@` -> (4, 5): how many old and new lines the hunk spans (a missing count is 1)."""
    match = _HUNK.match(header)
    if match is None:
        return None
    old, new = match.group(1), match.group(2)
    return (1 if old is None else int(old)), (1 if new is None else int(new))


def diff_files(text: str) -> list[DiffFile]:
    """The files of unified diff `text`, in order (empty for no difference).

    A hunk's lines are counted from its `@@` header, so a changed line that itself starts with `-- ` or `++ `
    is never mistaken for the next file's header."""
    files: list[DiffFile] = []
    lines = text.splitlines()
    i = 0
    while i + 1 < len(lines):
        if not (lines[i].startswith("--- ") and lines[i + 1].startswith("+++ ")):
            i += 1  # nothing outside a file section is expected; skip it rather than guess
            continue
        old, new = lines[i][4:].strip(), lines[i + 1][4:].strip()
        i += 2
        body: list[str] = []
        added = removed = 0
        while i < len(lines) and lines[i].startswith("@@"):
            sizes = _hunk_sizes(lines[i])
            body.append(f'<span class="hunk">{escape(lines[i])}</span>')
            i += 1
            old_left, new_left = sizes if sizes is not None else (0, 0)
            while i < len(lines) and (old_left > 0 or new_left > 0 or lines[i].startswith("\\")):
                line = lines[i]
                shown = escape(line)
                if line.startswith("+"):
                    added += 1
                    new_left -= 1
                    body.append(f'<ins class="add">{shown}</ins>')
                elif line.startswith("-"):
                    removed += 1
                    old_left -= 1
                    body.append(f'<del class="del">{shown}</del>')
                elif line.startswith("\\"):  # "\ No newline at end of file"
                    body.append(f'<span class="ctx">{shown}</span>')
                else:
                    old_left -= 1
                    new_left -= 1
                    body.append(f'<span class="ctx">{shown}</span>')
                i += 1
        header = f'<span class="file">--- {escape(old)}</span><span class="file">+++ {escape(new)}</span>'
        html = Markup(f'<pre class="diff" tabindex="0"><code>{header}{"".join(body)}</code></pre>')
        files.append(DiffFile(_file_name(old, new), added, removed, html))
    return files
