"""A stored pipeline version as text: its IR as named YAML files, and unified diffs between two versions.

A version stores its normalised IR documents, not the files they came from (equal IR, however laid out, is
one version: see `ir.Bundle.digest`). To show and compare them, each document gets the file name a bundle folder
would give it (examples/digits's layout: `pipeline.yaml`, `channels/NAME.yaml`, `flows/NAME.yaml`,
`models/NAME.yaml`), and is printed as YAML in its canonical key order. The diffs are `difflib` unified diffs of
those files, and of the values documents rendered with each version's default parameters (what `install` would
deploy). Used by `SchedulerService.diff_versions` (the REST API and `modelops pipeline diff`) and the UI pages.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from typing import Any, Final

import yaml

__all__ = ["document_file_name", "ir_files", "unified_diff"]

_FOLDERS: Final = {"DataChannel": "channels", "ScoringFlow": "flows", "Model": "models"}


def document_file_name(document: Mapping[str, Any]) -> str:
    """The file a bundle folder keeps `document` in: `pipeline.yaml`, `flows/NAME.yaml`, ..."""
    kind = str(document.get("kind", "document"))
    metadata = document.get("metadata")
    name = str(metadata.get("name", "")) if isinstance(metadata, Mapping) else ""
    if kind == "ScoringPipeline":
        return "pipeline.yaml"
    folder = _FOLDERS.get(kind, kind.lower())
    return f"{folder}/{name or 'unnamed'}.yaml"


def ir_files(stored: Mapping[str, Any]) -> dict[str, str]:
    """A stored IR (`{"documents": [...]}`) as file name -> YAML text, in the stored (canonical) order."""
    documents = stored.get("documents")
    files: dict[str, str] = {}
    for document in documents if isinstance(documents, list) else []:
        if not isinstance(document, Mapping):
            continue
        name = document_file_name(document)
        text = yaml.safe_dump(dict(document), sort_keys=False, allow_unicode=True, default_flow_style=False, width=120)
        files[name] = files[name] + "---\n" + text if name in files else text
    return files


def unified_diff(before: Mapping[str, str], after: Mapping[str, str], old: str, new: str) -> str:
    """The unified diff from the files `before` to `after` (file name -> text), file by file: the names of
    `before` in their order, then those only `after` has. Headers are `--- OLD/NAME` and `+++ NEW/NAME`
    (`/dev/null` for a file one side lacks); '' when nothing differs."""
    names = [*before, *(name for name in after if name not in before)]
    out: list[str] = []
    for name in names:
        lines = difflib.unified_diff(
            _lines(before.get(name, "")),
            _lines(after.get(name, "")),
            fromfile=f"{old}/{name}" if name in before else "/dev/null",
            tofile=f"{new}/{name}" if name in after else "/dev/null",
        )
        out.extend(line if line.endswith("\n") else line + "\n" for line in lines)
    return "".join(out)


def _lines(text: str) -> list[str]:
    lines = text.splitlines(keepends=True)
    if lines and not lines[-1].endswith("\n"):
        lines[-1] += "\n"
    return lines
