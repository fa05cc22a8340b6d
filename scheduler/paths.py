"""The paths of a job, checked when it is started: a path that cannot resolve is refused with 422 at once,
not found by a flow or a scoring service half a minute later.

`ir.render` applies the one rule of docs/scheduler.md ("Paths") to the values (a stored artifact against the
artifact store, a relative model uri against the model store, a relative file channel path against the data
root); this module checks the result, where the components will look, which on the local backend is this
machine:

- every file source: its file exists (a glob matches at least one file);
- every file sink (and dead-letter sink): its parent folder exists or can be created, and is writable;
- every model: its `file://` artifact (a stored artifact resolves to one) exists.

A problem names the channel (or model), the parameter its path came from (if any) and the resolved path.
Roots that paths must stay inside (issue 11) belong here too, next to these checks.
"""

from __future__ import annotations

import glob as globlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final
from urllib.parse import unquote, urlsplit

import ir
from ir.models import PARAM_REF
from scheduler.errors import InvalidInput

__all__ = ["PathProblem", "UnresolvablePath", "check_job_paths", "path_problems"]

_GLOB_CHARS: Final = frozenset("*?[")


class UnresolvablePath(InvalidInput):
    """A job whose file paths or model artifacts cannot resolve: refused at start, nothing created."""

    default_code = "unresolvable_path"


@dataclass(frozen=True)
class PathProblem:
    """One path that cannot resolve: which channel or model, from which parameter, where it points, and why."""

    what: str
    """`file source 'in'`, `file sink 'out'`, `model 'rf'`."""
    path: str
    reason: str
    channel: str | None = None
    model: str | None = None
    parameter: str | None = None

    @property
    def message(self) -> str:
        origin = f" (parameter '{self.parameter}')" if self.parameter else ""
        return f"{self.what}{origin}: {self.path} {self.reason}"

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"path": self.path, "message": self.message}
        for key in ("channel", "model", "parameter"):
            value = getattr(self, key)
            if value is not None:
                data[key] = value
        return data


def _local(path: str) -> Path:
    expanded = Path(os.path.expanduser(path))
    return expanded if expanded.is_absolute() else Path.cwd() / expanded


def _source_problem(path: Path) -> str | None:
    text = str(path)
    if any(c in _GLOB_CHARS for c in text):
        if not any(os.path.isfile(p) for p in globlib.iglob(text, recursive=True)):
            return "matches no file"
        return None
    if path.is_dir():
        return "is a folder, not a file"
    if not path.is_file():
        return "does not exist"
    return None


def _sink_problem(path: Path) -> str | None:
    if path.is_dir():
        return "is a folder, not a file"
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        return f"cannot be written: {folder} is not a folder"
    if not os.access(folder, os.W_OK | os.X_OK):
        return f"cannot be written: the folder {folder} is not writable"
    return None


def _parameter(raw: str | None) -> str | None:
    if raw is None:
        return None
    names = PARAM_REF.findall(raw)
    return ", ".join(dict.fromkeys(names)) or None


def path_problems(bundle: ir.Bundle, values: ir.Values) -> list[PathProblem]:
    """Every path of the rendered `values` (of `bundle`) that cannot resolve on this machine."""
    raw_paths = {
        channel.metadata.name: channel.spec.file.path for channel in bundle.used_channels() if channel.spec.file
    }
    problems: list[PathProblem] = []
    seen: set[str] = set()
    for flow in values.scoring_flows.values():
        sinks = [*flow.sinks, *([flow.dead_letter] if flow.dead_letter else [])]
        for role, channel in [("source", flow.source), *(("sink", sink) for sink in sinks)]:
            spec = channel.spec
            if spec.type != "file" or spec.file is None or channel.name in seen:
                continue
            seen.add(channel.name)
            path = _local(spec.file.path)
            reason = _source_problem(path) if role == "source" else _sink_problem(path)
            if reason is not None:
                problems.append(
                    PathProblem(
                        f"file {role} '{channel.name}'",
                        str(path),
                        reason,
                        channel=channel.name,
                        parameter=_parameter(raw_paths.get(channel.name)),
                    )
                )
    for name, service in sorted(values.scoring_services.items()):
        uri = service.model.uri
        if not uri.startswith("file://"):
            continue  # http(s) is fetched by the service; a path without a model store is the service's own
        path = Path(unquote(urlsplit(uri).path))
        if not path.exists():
            stored = " (a stored artifact: upload it with `modelops pipeline deploy`)" if "/sha256/" in uri else ""
            problems.append(PathProblem(f"model '{name}'", str(path), f"does not exist{stored}", model=name))
    return problems


def check_job_paths(bundle: ir.Bundle, values: ir.Values) -> None:
    """Raise `UnresolvablePath` (422) listing every path of the job that cannot resolve."""
    problems = path_problems(bundle, values)
    if not problems:
        return
    raise UnresolvablePath(
        "; ".join(problem.message for problem in problems),
        details={"problems": [problem.to_json() for problem in problems]},
    )
