"""Errors of the IR: every problem found in a bundle, each with the place it was found.

Validation never stops at the first problem: it collects `Issue`s and raises one `IRValidationError` holding
all of them, so a user fixes a bundle in one round trip. An issue names the file, the document inside it and
the path inside the document, in the form `flows/score.yaml: ScoringFlow digits-batch: spec.steps[1].score.model:
unknown model 'digit-rf' (did you mean 'digits-rf'?)`.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

Loc = tuple[str | int, ...]


def format_loc(loc: Loc) -> str:
    """`("spec", "steps", 1, "score")` -> `spec.steps[1].score`."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def did_you_mean(word: str, candidates: Iterable[str]) -> str:
    """A ` (did you mean 'x'?)` suffix when a close candidate exists, else the empty string."""
    close = difflib.get_close_matches(word, list(candidates), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


@dataclass(frozen=True, order=True)
class Issue:
    """One problem in a bundle, located as precisely as the input allows."""

    file: str
    document: str
    path: str
    message: str
    line: int | None = None

    def __str__(self) -> str:
        parts = [self.file]
        if self.document:
            parts.append(self.document)
        if self.path:
            parts.append(self.path)
        text = ": ".join(parts) + ": " + self.message
        return f"{text} (line {self.line})" if self.line is not None else text

    def as_dict(self) -> dict[str, str | int | None]:
        return {
            "file": self.file,
            "document": self.document,
            "path": self.path,
            "message": self.message,
            "line": self.line,
        }


class IRError(Exception):
    """Base of the errors the `ir` package raises."""


class IRValidationError(IRError):
    """A bundle, a parameter set or a global setting is invalid; `issues` lists every problem found."""

    def __init__(self, issues: Sequence[Issue]) -> None:
        self.issues: list[Issue] = sorted(set(issues), key=_issue_order)
        count = len(self.issues)
        head = f"{count} problem{'s' if count != 1 else ''} found"
        super().__init__(head + ":\n" + "\n".join(f"  {issue}" for issue in self.issues))


def _issue_order(issue: Issue) -> tuple[str, int, str, str, str]:
    return (issue.file, issue.line if issue.line is not None else 0, issue.document, issue.path, issue.message)
