"""A flow's checkpoint: how far its batch source has been committed to every sink, in one small JSON file.

Written after every commit of the sinks, atomically (a temporary file, `fsync`, `rename`, `fsync` of the
folder), so a flow killed at any moment finds either the previous checkpoint or the new one, never half of one.
It holds the run's id (which names the sinks' own records, e.g. a SQL sink's watermark row), the source's
ordinal and state, each sink's state as its last commit returned it, the counters, and whether the flow
finished. A checkpoint of another job is ignored (and replaced); `modelops flow --fresh` removes it first. See
`scoring_flows.runtime` for how a restarted flow uses it.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["Checkpoint", "CheckpointError", "CheckpointStore"]

VERSION = 1


class CheckpointError(Exception):
    """The checkpoint cannot be read or written."""


@dataclass
class Checkpoint:
    run_id: str
    job_id: str
    flow: str
    ordinal: int = 0
    source: dict[str, Any] = field(default_factory=dict)
    sinks: dict[str, dict[str, Any]] = field(default_factory=dict)
    counters: dict[str, int] = field(default_factory=dict)
    finished: bool = False
    message: str = ""
    version: int = VERSION


class CheckpointStore:
    """One flow's checkpoint file."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> Checkpoint | None:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise CheckpointError(f"cannot read the checkpoint {self.path}: {exc}") from exc
        if not isinstance(data, dict) or data.get("version") != VERSION:
            raise CheckpointError(f"{self.path} is not a checkpoint of this version: start the flow with --fresh")
        try:
            return Checkpoint(**data)
        except TypeError as exc:
            raise CheckpointError(
                f"{self.path} is not a valid checkpoint ({exc}): start the flow with --fresh"
            ) from exc

    def save(self, checkpoint: Checkpoint) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            temporary = self.path.with_name(self.path.name + ".tmp")
            with open(temporary, "w", encoding="utf-8") as handle:
                json.dump(asdict(checkpoint), handle, separators=(",", ":"))
                handle.flush()
                os.fsync(handle.fileno())
            temporary.replace(self.path)
            fd = os.open(self.path.parent, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            raise CheckpointError(f"cannot write the checkpoint {self.path}: {exc}") from exc

    def remove(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
