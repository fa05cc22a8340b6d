"""Engines and sessions for the scheduler database, tuned per backend so the store can rely on them.

The scheduler uses *synchronous* SQLAlchemy: the store's operations are short transactions, FastAPI runs
sync code in its threadpool, and the lifecycle engine runs in threads too. One code path, no greenlets.

SQLite (the embedded default) gets WAL journaling (readers never block the writer), foreign keys (off by
default in SQLite), a busy timeout (a writer waits for the lock instead of failing at once) and
`check_same_thread=False` (connections move between threadpool workers; the pool hands each to one thread at a
time). SQLAlchemy takes over `BEGIN` from the sqlite3 driver so that a write transaction can be opened with
`BEGIN IMMEDIATE`: it takes the database write lock up front, which is SQLite's equivalent of
`SELECT ... FOR UPDATE` and what makes `JobStore.transition` safe without a version column.

PostgreSQL gets a pool as large as the server's worker threads (anyio's default limiter: 40), so connections
are opened once and kept rather than opened and closed per request, and no pre-ping: a connection found dead
on first use fails that one call with `StoreUnavailable` (503), and SQLAlchemy then invalidates the pool's
older connections, so the next calls reconnect (the lifecycle engine retries store calls on its own).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Final

import sqlalchemy
from sqlalchemy import event
from sqlalchemy.engine import URL, Connection, Engine, make_url
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import ConnectionPoolEntry, StaticPool

__all__ = ["SQLITE_BEGIN_OPTION", "create_engine", "make_sessionmaker", "normalise_url"]

SQLITE_BUSY_TIMEOUT_SECONDS: Final = 30.0
"""How long an SQLite writer waits for another writer's lock before `database is locked`."""

POSTGRES_CONNECT_TIMEOUT_SECONDS: Final = 10
"""How long to wait for a PostgreSQL connection before the store reports itself unavailable."""

DEFAULT_POOL_SIZE: Final = 40
"""PostgreSQL connections kept open: anyio's default worker-thread limit, so request threads never churn connections."""

DEFAULT_MAX_OVERFLOW: Final = 10
"""Extra PostgreSQL connections for threads beyond the pool (the lifecycle engine's `asyncio.to_thread` calls)."""

SQLITE_BEGIN_OPTION: Final = "modelops_sqlite_begin"
"""Execution option naming the SQLite BEGIN mode of a transaction: `DEFERRED` (default) or `IMMEDIATE`."""

_SQLITE_BEGIN_MODES: Final = frozenset({"DEFERRED", "IMMEDIATE", "EXCLUSIVE"})


def normalise_url(url: str | URL) -> URL:
    """Parse a database URL; `postgresql://` and `postgres://` select the psycopg 3 driver."""
    parsed = make_url(url)
    if parsed.drivername in ("postgres", "postgresql"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed


def _is_memory_sqlite(url: URL) -> bool:
    return url.database in (None, "", ":memory:") or (url.query.get("mode") == "memory")


def create_engine(
    url: str | URL,
    *,
    pool_size: int = DEFAULT_POOL_SIZE,
    max_overflow: int = DEFAULT_MAX_OVERFLOW,
    echo: bool = False,
) -> Engine:
    """An engine for `url`, configured for the scheduler's use of SQLite or PostgreSQL.

    For an SQLite file the parent directory is created, so the default `~/.modelops/modelops.db` works on a
    fresh machine.
    """
    parsed = normalise_url(url)
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        return _sqlite_engine(parsed, echo=echo)
    if backend == "postgresql":
        connect_args: dict[str, Any] = {}
        if "connect_timeout" not in parsed.query:
            connect_args["connect_timeout"] = POSTGRES_CONNECT_TIMEOUT_SECONDS
        return sqlalchemy.create_engine(
            parsed,
            echo=echo,
            pool_size=pool_size,
            max_overflow=max_overflow,
            # No pre-ping (a round trip per checkout): a dead connection fails its first use, which the
            # store reports as StoreUnavailable, and SQLAlchemy invalidates the pool's older connections.
            pool_pre_ping=False,
            # Recycle before typical proxy / load-balancer idle cut-offs (often 30-60 minutes).
            pool_recycle=1800,
            connect_args=connect_args,
        )
    raise ValueError(f"unsupported database {backend!r}: the scheduler supports sqlite and postgresql")


def _sqlite_engine(url: URL, *, echo: bool) -> Engine:
    memory = _is_memory_sqlite(url)
    kwargs: dict[str, Any] = {
        "echo": echo,
        "connect_args": {"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT_SECONDS},
    }
    if memory:
        # One shared connection, otherwise every pooled connection would see its own empty database.
        kwargs["poolclass"] = StaticPool
    elif url.database:
        Path(url.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    engine = sqlalchemy.create_engine(url, **kwargs)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: ConnectionPoolEntry) -> None:
        # Let SQLAlchemy emit BEGIN (see _on_begin) instead of the driver's implicit, DML-only one.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            if not memory:
                cursor.execute("PRAGMA journal_mode=WAL")
                # NORMAL is durable across application crashes in WAL mode; only an OS crash can lose the
                # last transactions, which the reconciler tolerates.
                cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute(f"PRAGMA busy_timeout={int(SQLITE_BUSY_TIMEOUT_SECONDS * 1000)}")
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        mode = str(conn.get_execution_options().get(SQLITE_BEGIN_OPTION, "DEFERRED")).upper()
        if mode not in _SQLITE_BEGIN_MODES:
            raise ValueError(f"{SQLITE_BEGIN_OPTION} must be one of {sorted(_SQLITE_BEGIN_MODES)}, not {mode!r}")
        conn.exec_driver_sql(f"BEGIN {mode}")

    return engine


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    """Sessions bound to `engine`; objects stay readable after commit (the store copies them out anyway)."""
    return sessionmaker(bind=engine, expire_on_commit=False, autoflush=False)
