"""Where a job's files live on disk, and the plain log lines its phases write and users read back.

Every job run by this scheduler gets a run directory, `<home>/jobs/<job id>/`:

    install.log  wait.log  uninstall.log     what each phase did and how long it took (kept after the job)
    values.yaml                              the rendered values (holds the job token: removed by uninstall)
    services/<name>.log  flows/<name>.log    output of each local process (kept after the job)

A phase log is what `tkn pipelinerun logs` shows for the Tekton backend: one plain, timestamped line per
thing done, so the local backend and Tekton read the same. `PhaseLog` writes them (and, in a Tekton step,
can echo them to stdout); `read_lines` reads or follows a log file for the logs endpoint.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Final, TextIO

from scheduler.states import Task

__all__ = ["LOG_TAIL_LINES", "PhaseLog", "read_lines", "run_dir", "tail", "task_log_path"]

LOG_TAIL_LINES: Final = 20
"""How many last lines of a component's log go into a failure message: enough to show a traceback's end."""

_TAIL_BYTES: Final = 64 * 1024
"""How far back from a log's end `tail` reads: 20 lines of even very chatty output fit."""

_FOLLOW_POLL_SECONDS: Final = 0.2


def run_dir(home: Path, job_id: uuid.UUID | str) -> Path:
    """`<home>/jobs/<job id>`: the job's run directory (not created here)."""
    return home / "jobs" / str(uuid.UUID(str(job_id)))


def task_log_path(home: Path, job_id: uuid.UUID | str, task: Task) -> Path:
    """`<run dir>/<task>.log`."""
    return run_dir(home, job_id) / f"{task.value}.log"


def _timestamp() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")[:-4] + "Z"


class PhaseLog:
    """Appends timestamped lines to one phase's log file (created with its folder), optionally echoing them.

    Call the instance (a `LogFn`) with a message; multi-line messages (log tails) are written line by line,
    each with the timestamp, so every line stays self-describing. Every line is flushed at once: a follower
    sees it immediately, and a crash loses nothing already logged. Without a `path`, lines only go to `echo`
    (the Tekton task commands print to stdout, which `tkn pipelinerun logs` shows). Every one of `secrets`
    is written as `***`.
    """

    def __init__(self, path: Path | None, *, echo: TextIO | None = None, secrets: Sequence[str] = ()) -> None:
        self.path = path
        self._file: TextIO | None = None
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._file = path.open("a", encoding="utf-8")
        self._echo = echo
        self._secrets = [secret for secret in secrets if secret]

    def __call__(self, message: str) -> None:
        for secret in self._secrets:
            message = message.replace(secret, "***")
        stamp = _timestamp()
        lines = message.splitlines() or [""]
        text = "".join(f"{stamp} {line}\n" for line in lines)
        if self._file is not None:
            self._file.write(text)
            self._file.flush()
        if self._echo is not None:
            self._echo.write(text)
            self._echo.flush()

    @contextmanager
    def step(self, what: str) -> Iterator[None]:
        """Log `what...`, then `what: done in 1.23s` (or `what: failed after 1.23s: error`)."""
        self(f"{what} ...")
        started = time.monotonic()
        try:
            yield
        except BaseException as exc:
            detail = f": {type(exc).__name__}" if not str(exc) else f": {str(exc).splitlines()[0]}"
            self(f"{what}: failed after {time.monotonic() - started:.2f}s{detail}")
            raise
        self(f"{what}: done in {time.monotonic() - started:.2f}s")

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> PhaseLog:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


def tail(path: Path, lines: int = LOG_TAIL_LINES) -> list[str]:
    """The last `lines` lines of a text file (fewer if it is shorter; none if it does not exist)."""
    try:
        with path.open("rb") as handle:
            size = handle.seek(0, os.SEEK_END)
            handle.seek(max(0, size - _TAIL_BYTES))
            data = handle.read()
    except FileNotFoundError:
        return []
    text = data.decode("utf-8", errors="replace")
    found = text.splitlines()
    if size > _TAIL_BYTES and found:
        found = found[1:]  # the first line read is probably cut
    return found[-lines:] if lines > 0 else []


async def read_lines(
    path: Path,
    *,
    follow: bool = False,
    ended: Callable[[], Awaitable[bool]] | None = None,
    poll_seconds: float = _FOLLOW_POLL_SECONDS,
) -> AsyncIterator[str]:
    """Yield the lines of `path`, without line breaks.

    Without `follow`, what the file holds now (nothing if it does not exist). With `follow`, keep reading as
    the file grows (or until it appears) until `ended()` says the writer is done; then read what is left and
    stop. A line still being written (no line break yet) is only yielded once complete, or at the end.
    """
    position = 0
    pending = b""
    while True:
        finished = bool(follow and ended is not None and await ended())
        chunk = await asyncio.to_thread(_read_from, path, position)
        if chunk:
            position += len(chunk)
            pending += chunk
            *complete, pending = pending.split(b"\n")
            for line in complete:
                yield line.decode("utf-8", errors="replace")
        if not follow or finished:
            # `ended()` was checked before this last read, so everything written before the end is read.
            if pending:
                yield pending.decode("utf-8", errors="replace")
            return
        if not chunk:
            await asyncio.sleep(poll_seconds)


def _read_from(path: Path, position: int) -> bytes:
    try:
        with path.open("rb") as handle:
            handle.seek(position)
            return handle.read()
    except FileNotFoundError:
        return b""
