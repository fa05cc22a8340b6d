"""Where a job's files live on disk, and the plain log lines its phases write and users read back.

Every job run by this scheduler gets a run directory, `<home>/jobs/<job id>/`:

    install.log  wait.log  uninstall.log     what each phase did and how long it took (kept after the job)
    values.yaml                              the rendered values (holds the job token: removed by uninstall)
    services/<name>.log  flows/<name>.log    output of each local process (kept after the job)

A phase log is what `tkn pipelinerun logs` shows for the Tekton backend: one plain, timestamped line per
thing done, so the local backend and Tekton read the same. `PhaseLog` writes them (and, in a Tekton step,
can echo them to stdout); `read_lines` reads or follows a log file for the logs endpoint.

A job's log *components* are its three phases (`install`, `wait`, `uninstall`) and its processes
(`service/<name>`, `flow/<name>`). `merge_logs` interleaves the lines of several components by the timestamp each
line starts with (`ir.logformat`: every line we write starts with ISO 8601 UTC milliseconds, so the strings sort
by time), prefixed with `[component]`, the way `tkn pipelinerun logs` prefixes each step's lines.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Final, TextIO

from ir.logformat import LogFormat, format_line, line_timestamp, timestamp
from scheduler.states import Task

__all__ = [
    "IDLE",
    "LOG_TAIL_LINES",
    "PHASES",
    "Idle",
    "LogItem",
    "PhaseLog",
    "component_log_path",
    "follow_lines",
    "merge_logs",
    "read_lines",
    "run_dir",
    "tail",
    "task_log_path",
]

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


PHASES: Final = tuple(task.value for task in Task)
"""The log components every job has, in order: `install`, `wait`, `uninstall`."""


def component_log_path(home: Path, job_id: uuid.UUID | str, component: str) -> Path:
    """Where the local backend keeps a component's log: `<task>.log`, `services/<name>.log`, `flows/<name>.log`."""
    if component in PHASES:
        return task_log_path(home, job_id, Task(component))
    kind, _, name = component.partition("/")
    folders = {"service": "services", "flow": "flows"}
    if kind not in folders or not name or "/" in name or name in (".", ".."):
        raise ValueError(f"not a log component: {component!r} (install, wait, uninstall, service/NAME, flow/NAME)")
    return run_dir(home, job_id) / folders[kind] / f"{name}.log"


class PhaseLog:
    """Appends timestamped lines to one phase's log file (created with its folder), optionally echoing them.

    Call the instance (a `LogFn`) with a message; multi-line messages (log tails) are written line by line,
    each with the timestamp, so every line stays self-describing; with `fmt="json"` a message is one JSON object
    (`ir.logformat`, `logger` naming the phase) whatever its lines. Every line is flushed at once: a follower
    sees it immediately, and a crash loses nothing already logged. Without a `path`, lines only go to `echo`
    (the Tekton task commands print to stdout, which `tkn pipelinerun logs` shows). Every one of `secrets`
    is written as `***`.
    """

    def __init__(
        self,
        path: Path | None,
        *,
        echo: TextIO | None = None,
        secrets: Sequence[str] = (),
        fmt: LogFormat = "text",
        logger: str = "",
    ) -> None:
        self.path = path
        self._fmt: LogFormat = fmt
        self._logger = logger
        self._file: TextIO | None = None
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._file = path.open("a", encoding="utf-8")
        self._echo = echo
        self._secrets = [secret for secret in secrets if secret]

    def __call__(self, message: str) -> None:
        for secret in self._secrets:
            message = message.replace(secret, "***")
        at = time.time()
        lines = message.splitlines() or [""]
        if self._fmt == "json":  # one object per line: a multi-line message (a log tail) stays one record
            text = format_line("\n".join(lines), "json", logger=self._logger, at=at) + "\n"
        else:
            stamp = timestamp(at)
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


@dataclass(frozen=True)
class Idle:
    """What a followed log source yields when it has nothing more right now (see `merge_logs`).

    `at`: when the source last looked (the `ir.logformat` timestamp taken just before its read): it has no line
    older than that still to come. None: it cannot tell, and holds no other source's lines back.
    """

    at: str | None = None


IDLE: Final = Idle()
LogItem = str | Idle
"""A line (without its line break) or an `Idle`."""


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
    async for item in follow_lines(path, follow=follow, ended=ended, poll_seconds=poll_seconds):
        if not isinstance(item, Idle):
            yield item


async def follow_lines(
    path: Path,
    *,
    follow: bool = False,
    ended: Callable[[], Awaitable[bool]] | None = None,
    poll_seconds: float = _FOLLOW_POLL_SECONDS,
) -> AsyncIterator[LogItem]:
    """`read_lines`, also yielding an `Idle` (stamped with when it looked) each time a followed file has no new
    line yet, before it waits."""
    position = 0
    pending = b""
    while True:
        finished = bool(follow and ended is not None and await ended())
        looked = timestamp()
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
            yield Idle(looked)
            await asyncio.sleep(poll_seconds)


@dataclass
class _Feed:
    """One source of `merge_logs`: its next line (`head`, with the time it sorts by), and whether it is idle."""

    name: str
    items: AsyncIterator[LogItem]
    task: asyncio.Task[LogItem] | None = None
    head: tuple[str, str] | None = None
    """(timestamp, line) of the line to emit next from this source."""
    idle: Idle | None = None
    """The source's last `Idle`, while it has said nothing since."""
    done: bool = False
    last_stamp: str = ""

    def holds_back(self, stamp: str) -> bool:
        """Whether a line of another source at `stamp` must wait: this one may still have an older line."""
        if self.head is not None or self.done:
            return False
        return self.idle is None or (self.idle.at is not None and self.idle.at < stamp)


async def _merge_finite(feeds: list[_Feed]) -> AsyncIterator[str]:
    """`merge_logs` of sources that end by themselves: after a line, only its source is read on."""

    async def advance(feed: _Feed) -> None:
        while True:
            try:
                item = await anext(feed.items)
            except StopAsyncIteration:
                feed.done = True
                return
            if not isinstance(item, Idle):
                feed.last_stamp = line_timestamp(item) or feed.last_stamp
                feed.head = (feed.last_stamp, item)
                return

    for feed in feeds:
        await advance(feed)
    while True:
        waiting = [feed for feed in feeds if feed.head is not None]
        if not waiting:
            return
        first = min(waiting, key=lambda feed: (feed.head or ("", ""))[0])
        assert first.head is not None
        line = first.head[1]
        first.head = None
        yield f"[{first.name}] {line}"
        await advance(first)


async def _next_item(items: AsyncIterator[LogItem]) -> LogItem:
    return await anext(items)


async def merge_logs(sources: Mapping[str, AsyncIterator[LogItem]], follow: bool = True) -> AsyncIterator[str]:
    """The lines of all `sources` as `[name] line`, in the order of their timestamps.

    A line without a timestamp (a traceback's inner lines, a program printing plain text) sorts with the line
    before it in its source. Lines of equal time keep the order of `sources`. The oldest waiting line is
    emitted once every other source has either a line waiting, ended, or said `Idle` since a moment no older
    than that line (followed logs): so lines come out in time order, also those written while following.
    Sources are read concurrently and closed when the merge stops. `follow=False` promises sources that end by
    themselves without waiting for new lines: each is then read only when its next line is the one needed (a
    tenth of the cost per line).
    """
    feeds = [_Feed(name, items) for name, items in sources.items()]
    try:
        if not follow:
            async for line in _merge_finite(feeds):
                yield line
            return
        while True:
            for feed in feeds:
                if not feed.done and feed.head is None and feed.task is None:
                    feed.task = asyncio.create_task(_next_item(feed.items))
            waiting = [feed for feed in feeds if feed.head is not None]
            if waiting:
                first = min(waiting, key=lambda feed: (feed.head or ("", ""))[0])
                assert first.head is not None
                stamp, line = first.head
                if not any(feed.holds_back(stamp) for feed in feeds):
                    first.head = None
                    yield f"[{first.name}] {line}"
                    continue
            running = [feed.task for feed in feeds if feed.task is not None]
            if not running:
                return  # every source is done and emptied
            await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
            for feed in feeds:
                if feed.task is None or not feed.task.done():
                    continue
                task, feed.task = feed.task, None
                try:
                    item = task.result()
                except StopAsyncIteration:
                    feed.done = True
                    continue
                if isinstance(item, Idle):
                    feed.idle = item
                    continue
                feed.idle = None
                feed.last_stamp = line_timestamp(item) or feed.last_stamp
                feed.head = (feed.last_stamp, item)
    finally:
        for feed in feeds:
            if feed.task is not None:
                feed.task.cancel()
                with contextlib.suppress(BaseException):
                    await feed.task
            close = getattr(feed.items, "aclose", None)
            if close is not None:
                with contextlib.suppress(Exception):
                    await close()


def _read_from(path: Path, position: int) -> bytes:
    try:
        with path.open("rb") as handle:
            handle.seek(position)
            return handle.read()
    except FileNotFoundError:
        return b""
