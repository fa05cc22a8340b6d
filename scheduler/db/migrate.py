"""Apply and check the scheduler's Alembic migrations from code, for `modelops db upgrade` and server start.

The server must not run against a schema it does not understand, so at start it calls `check_schema` and
refuses anything but `ok`, printing `SchemaCheck.message` (which says what to run). Upgrading is explicit
(`modelops db upgrade` -> `upgrade`), never a side effect of starting the server: with several replicas, or a
production database owned by a DBA, a silent schema change at start is the wrong default.

`alembic.ini` ships inside the package (see `pyproject.toml` package data), so this works from an installed
wheel as well as from a checkout.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Final

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import text
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from scheduler.db.session import create_engine
from scheduler.errors import StoreUnavailable

__all__ = [
    "ALEMBIC_INI",
    "SchemaCheck",
    "SchemaStatus",
    "alembic_config",
    "check_schema",
    "current_revision",
    "downgrade",
    "head_revision",
    "upgrade",
]

ALEMBIC_INI: Final = Path(__file__).with_name("alembic.ini")

# Serialises concurrent `upgrade` calls on one PostgreSQL database (two replicas starting a migration job at
# once). An arbitrary constant: the ASCII of "modelops" read as a 64-bit integer.
_PG_MIGRATION_LOCK_ID: Final = int.from_bytes(b"modelops", "big") & 0x7FFF_FFFF_FFFF_FFFF

UPGRADE_HINT: Final = "run `modelops db upgrade`"


class SchemaStatus(StrEnum):
    """How the database schema relates to the migrations this code ships."""

    OK = "ok"
    """At the newest revision this code knows."""
    UNMIGRATED = "unmigrated"
    """No revision recorded: an empty database (or one never managed by these migrations)."""
    BEHIND = "behind"
    """At an older revision of this code: upgrade it."""
    NEWER = "newer"
    """At a revision this code does not know: the database was upgraded by a newer release."""


@dataclass(frozen=True)
class SchemaCheck:
    """The outcome of `check_schema`, with a message fit to print when the server refuses to start."""

    status: SchemaStatus
    current: str | None
    head: str
    message: str

    @property
    def ok(self) -> bool:
        return self.status is SchemaStatus.OK


def alembic_config(connection: Connection | None = None) -> Config:
    """The packaged Alembic configuration, optionally bound to an open connection."""
    config = Config(str(ALEMBIC_INI))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


@contextmanager
def _unavailable_on_db_error(url_hint: str) -> Iterator[None]:
    try:
        yield
    except (OperationalError, PoolTimeout) as exc:
        cause = getattr(exc, "orig", None) or exc
        raise StoreUnavailable(f"cannot reach the scheduler database ({url_hint}): {cause}") from exc
    except DBAPIError as exc:
        if exc.connection_invalidated:
            raise StoreUnavailable(f"lost the connection to the scheduler database ({url_hint})") from exc
        raise


def _safe_url(engine: Engine) -> str:
    return engine.url.render_as_string(hide_password=True)


def upgrade(database_url: str, revision: str = "head") -> None:
    """Migrate the database at `database_url` up to `revision` (default: the newest)."""
    engine = create_engine(database_url)
    try:
        with _unavailable_on_db_error(_safe_url(engine)), engine.begin() as conn:
            if conn.dialect.name == "postgresql":
                conn.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": _PG_MIGRATION_LOCK_ID})
            command.upgrade(alembic_config(conn), revision)
    finally:
        engine.dispose()


def downgrade(database_url: str, revision: str) -> None:
    """Migrate the database at `database_url` down to `revision` (`base` removes every table)."""
    engine = create_engine(database_url)
    try:
        with _unavailable_on_db_error(_safe_url(engine)), engine.begin() as conn:
            command.downgrade(alembic_config(conn), revision)
    finally:
        engine.dispose()


def head_revision(config: Config | None = None) -> str:
    """The newest revision this code ships."""
    head = ScriptDirectory.from_config(config or alembic_config()).get_current_head()
    if head is None:  # pragma: no cover - the package always ships a revision
        raise RuntimeError("the scheduler ships no migration")
    return head


def current_revision(engine: Engine) -> str | None:
    """The revision recorded in the database, or None when it was never migrated."""
    with _unavailable_on_db_error(_safe_url(engine)), engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def check_schema(engine: Engine, *, config: Config | None = None) -> SchemaCheck:
    """Compare the database's revision with this code's migrations (`config` defaults to the packaged ones)."""
    script = ScriptDirectory.from_config(config or alembic_config())
    head = script.get_current_head()
    if head is None:  # pragma: no cover - the package always ships a revision
        raise RuntimeError("the scheduler ships no migration")
    current = current_revision(engine)
    where = _safe_url(engine)
    if current is None:
        return SchemaCheck(
            SchemaStatus.UNMIGRATED, None, head, f"the database {where} has no scheduler schema: {UPGRADE_HINT}"
        )
    if current == head:
        return SchemaCheck(SchemaStatus.OK, current, head, f"the database {where} is at revision {head}")
    known = {rev.revision for rev in script.walk_revisions()}
    if current in known:
        return SchemaCheck(
            SchemaStatus.BEHIND,
            current,
            head,
            f"the database {where} is at revision {current}, this code needs {head}: {UPGRADE_HINT}",
        )
    return SchemaCheck(
        SchemaStatus.NEWER,
        current,
        head,
        f"the database {where} is at revision {current}, newer than this code (which knows up to {head}): "
        "upgrade modelops, or downgrade the database with the release that created it",
    )
