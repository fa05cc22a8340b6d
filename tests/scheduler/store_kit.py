"""Test data and helpers shared by the scheduler storage tests.

Test modules import this file as `store_kit` (pytest puts `tests/scheduler` on sys.path: like `tests/ir`, the
folder deliberately has no `__init__.py`, which would make `tests/scheduler` shadow the real `scheduler`).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy

from scheduler.settings import hash_token

DIGITS_IR: dict[str, Any] = {
    "apiVersion": "modelops/v1",
    "kind": "ScoringPipeline",
    "metadata": {"name": "digits"},
    "spec": {"flows": ["digits-batch"], "models": ["digits-rf"]},
}


def wipe_postgres(url: str) -> None:
    """Drop everything in the PostgreSQL database at `url` (its `public` schema, recreated empty)."""
    engine = sqlalchemy.create_engine(url)
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql("DROP SCHEMA public CASCADE")
            conn.exec_driver_sql("CREATE SCHEMA public")
    finally:
        engine.dispose()


def digest_of(text: str) -> str:
    """A stand-in SHA-256 digest for an IR document (the store treats it as an opaque key)."""
    return hash_token(text)


class FrozenClock:
    """A clock that stands still until told to move, for tests about timestamps."""

    def __init__(self, start: datetime | None = None) -> None:
        self.now = start or datetime(2025, 6, 1, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float = 1.0) -> None:
        self.now += timedelta(seconds=seconds)
