"""The one log line format of every modelops component: what each writes, and what the scheduler merges.

Every line a component writes (phase logs, scoring flows, scoring services, the scheduling server) starts with
its time in ISO 8601 UTC with milliseconds, `2026-12-03T13:55:01.123Z`: fixed width, so lines of different
components sort by time as plain strings, which is how `modelops job logs` interleaves them. Two shapes:

- `text` (the default): `2026-12-03T13:55:01.123Z INFO scoring_services: model m1 loaded in 0.21s`;
- `json`: one object per line, `{"ts": ..., "level": ..., "logger": ..., "message": ...}` (`ts` first, so a
  reader finds the time without parsing the object), plus `exception` with the traceback when there is one.

It lives in `ir` because `ir` is the one package every component imports (scoring services may import nothing
else of modelops), and because the format is a contract between components, like the values document.
Standard library only.
"""

from __future__ import annotations

import json
import logging
import re
import time
from datetime import UTC, datetime
from typing import Any, Final, Literal

__all__ = [
    "LOG_FORMATS",
    "JsonFormatter",
    "LogFormat",
    "TextFormatter",
    "configure_logging",
    "format_line",
    "formatter",
    "line_timestamp",
    "timestamp",
]

LogFormat = Literal["text", "json"]
LOG_FORMATS: Final = ("text", "json")

_STAMP: Final = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")
_JSON_STAMP: Final = re.compile(r'\{\s*"ts"\s*:\s*"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z)"')


def timestamp(at: float | None = None) -> str:
    """`at` (seconds since the epoch; default now) as `2026-12-03T13:55:01.123Z`."""
    moment = datetime.fromtimestamp(time.time() if at is None else at, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def line_timestamp(line: str) -> str | None:
    """The timestamp a line starts with (text or JSON shape), else None (e.g. a traceback's inner lines)."""
    if _STAMP.match(line):
        return line[:24]
    found = _JSON_STAMP.match(line)
    return found.group(1) if found else None


def format_line(
    message: str, fmt: LogFormat = "text", *, level: str = "INFO", logger: str = "", at: float | None = None
) -> str:
    """One line in `fmt` for code that writes its lines itself (phase logs, flows, the CLI before logging is set
    up). Text: `<ts> <LEVEL> <logger>: <message>` as `TextFormatter` writes it, or `<ts> <message>` without a
    logger (the message names its component); json: the object described above."""
    stamp = timestamp(at)
    if fmt == "json":
        return _json_line(stamp, level, logger, message)
    return f"{stamp} {level} {logger}: {message}" if logger else f"{stamp} {message}"


def _json_line(stamp: str, level: str, logger: str, message: str, extra: dict[str, Any] | None = None) -> str:
    document: dict[str, Any] = {"ts": stamp, "level": level, "logger": logger, "message": message}
    if extra:
        document.update(extra)
    return json.dumps(document, ensure_ascii=False, default=str)


class TextFormatter(logging.Formatter):
    """`<ts> <LEVEL> <logger>: <message>`, a traceback on the lines after it."""

    def format(self, record: logging.LogRecord) -> str:
        line = f"{timestamp(record.created)} {record.levelname} {record.name}: {record.getMessage()}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        if record.stack_info:
            line += "\n" + self.formatStack(record.stack_info)
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ts, level, logger, message (and `exception`, the traceback's text)."""

    def format(self, record: logging.LogRecord) -> str:
        extra: dict[str, Any] = {}
        if record.exc_info:
            extra["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            extra["stack"] = self.formatStack(record.stack_info)
        return _json_line(timestamp(record.created), record.levelname, record.name, record.getMessage(), extra)


def formatter(fmt: LogFormat) -> logging.Formatter:
    """The formatter of a log format."""
    return JsonFormatter() if fmt == "json" else TextFormatter()


def configure_logging(level: str, fmt: LogFormat = "text") -> None:
    """Root logging to stderr in `fmt` at `level` (replacing any handlers set before)."""
    handler = logging.StreamHandler()
    handler.setFormatter(formatter(fmt))
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
