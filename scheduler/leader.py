"""Leader election among the scheduler replicas that share one PostgreSQL database.

Every replica serves the API; exactly one runs the lifecycle engine (`scheduler.dispatch.Engine`): the one that
holds the session-level advisory lock `LOCK_KEY` (`pg_try_advisory_lock`) on a connection of its own. The others
try again every `RETRY_SECONDS`. PostgreSQL drops the lock with the session, however the leader ends:

- a leader stopped or killed (SIGKILL, OOM, a deleted pod): its connection closes at once, the lock is free, and
  a follower takes it at its next try (within `RETRY_SECONDS`), then recovers the jobs (`Backend.recover`);
- a leader cut off from the database (a partitioned host): the server notices the dead peer through TCP
  keepalives set on the lock session (`SERVER_SETTINGS`: about `SERVER_DEAD_AFTER_SECONDS`) and ends the
  session. The cut-off leader itself stops earlier: it checks its lock every `CHECK_SECONDS`, and a check not
  answered within `CHECK_TIMEOUT_SECONDS` (or a lock found missing) makes it stop its engine at once
  (`LeadershipLost`), so two engines never run at the same time.

The lock connection must reach PostgreSQL itself, or a pooler in *session* mode: a transaction-mode pooler
(PgBouncer's default elsewhere) would hand the session, and so the lock, to other clients.

The lock session's `application_name` is `modelops-leader <identity>` (host name and process id of the engine's
process), so anyone can see who leads (`current_leader`, `modelops_scheduler_leader` in /metrics).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Callable
from typing import Final

import psycopg
from psycopg.conninfo import make_conninfo
from sqlalchemy import text
from sqlalchemy.engine import Engine as SqlEngine
from sqlalchemy.exc import SQLAlchemyError

__all__ = [
    "APPLICATION_PREFIX",
    "CHECK_SECONDS",
    "CHECK_TIMEOUT_SECONDS",
    "LOCK_KEY",
    "RETRY_SECONDS",
    "LeaderLock",
    "LeadershipLost",
    "current_leader",
    "engine_identity",
]

log = logging.getLogger(__name__)

LOCK_KEY: Final = int.from_bytes(b"modelops", "big")
"""The advisory lock's key (a bigint; advisory locks are per database, so one key serves every installation)."""
RETRY_SECONDS: Final = 2.0
"""How often a follower tries to take the lock by default (`leader_retry_seconds` setting): a dead leader is
replaced within about this long."""
CHECK_SECONDS: Final = 1.0
"""How often the leader makes sure it still holds the lock."""
CHECK_TIMEOUT_SECONDS: Final = 2.0
"""A lock check not answered within this long counts as a lost lock (the leader stops its engine)."""
APPLICATION_PREFIX: Final = "modelops-leader "
"""The start of the lock session's `application_name`; the engine's identity follows."""

CLIENT_KEEPALIVES: Final = {
    "keepalives": "1",
    "keepalives_idle": "5",
    "keepalives_interval": "2",
    "keepalives_count": "3",
    "connect_timeout": "5",
}
"""libpq parameters of the lock connection: the leader's side notices a dead server too."""
SERVER_SETTINGS: Final = (
    ("tcp_keepalives_idle", "5"),
    ("tcp_keepalives_interval", "2"),
    ("tcp_keepalives_count", "3"),
    ("tcp_user_timeout", "9000"),
)
"""Set on the lock session: the server probes an idle leader after 5 s and gives up on it after 3 unanswered
probes 2 s apart, so a cut-off leader's lock is free after about `SERVER_DEAD_AFTER_SECONDS`."""
SERVER_DEAD_AFTER_SECONDS: Final = 11.0
"""5 + 3 x 2: how long a partitioned leader keeps the lock at most, as far as the server's keepalives go."""

_MAX_APPLICATION_NAME: Final = 63  # PostgreSQL's NAMEDATALEN - 1

# pg_locks shows a bigint key as classid (its high 32 bits) and objid (its low 32 bits), with objsubid 1.
_KEY_MATCH: Final = f"objsubid = 1 AND classid::bigint = {LOCK_KEY >> 32} AND objid::bigint = {LOCK_KEY & 0xFFFFFFFF}"
_HOLDER_SQL: Final = (
    "SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
    "WHERE l.locktype = 'advisory' AND l.granted "
    "AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) "
    f"AND l.{_KEY_MATCH.replace(' AND ', ' AND l.')}"
)
_OWN_LOCK_SQL: Final = (
    "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE pid = pg_backend_pid() AND locktype = 'advisory' AND granted "
    f"AND {_KEY_MATCH})"
)


class LeadershipLost(RuntimeError):
    """The leader's lock connection failed or no longer holds the lock: its engine must stop."""


def engine_identity(pid: int | None = None) -> str:
    """Who runs an engine: `<host name> pid <pid>` (the current process by default), short enough for
    `application_name`."""
    suffix = f" pid {pid if pid is not None else os.getpid()}"
    room = _MAX_APPLICATION_NAME - len(APPLICATION_PREFIX) - len(suffix)
    return socket.gethostname()[:room] + suffix


class LeaderLock:
    """The leader lock on a connection of its own (see the module docstring); one per attempt to lead.

    `acquire` waits until the lock is this process's (True) or `stopping` is set (False); `check` raises
    `LeadershipLost` unless the lock is still held; `release` closes the connection, which frees the lock.
    """

    def __init__(self, libpq_url: str, identity: str, *, retry_seconds: float = RETRY_SECONDS) -> None:
        self.identity = identity
        self._url = libpq_url
        self._retry_seconds = retry_seconds
        self._conn: psycopg.AsyncConnection[tuple[object, ...]] | None = None

    async def acquire(self, stopping: asyncio.Event, *, following: Callable[[str | None], None]) -> bool:
        """Take the lock, trying every `retry_seconds`; `following(leader)` is called after each failed try
        (with the holder's identity, when known). Connection errors propagate (the caller backs off)."""
        conninfo = make_conninfo(
            self._url,
            application_name=(APPLICATION_PREFIX + self.identity)[:_MAX_APPLICATION_NAME],
            **CLIENT_KEEPALIVES,
        )
        conn = await psycopg.AsyncConnection.connect(conninfo, autocommit=True)
        self._conn = conn
        for name, value in SERVER_SETTINGS:
            await conn.execute(f"SET {name} = {value}")
        while not stopping.is_set():
            row = await (await conn.execute("SELECT pg_try_advisory_lock(%s)", (LOCK_KEY,))).fetchone()
            if row is not None and row[0] is True:
                return True
            following(await self._holder(conn))
            try:
                await asyncio.wait_for(stopping.wait(), self._retry_seconds)
            except TimeoutError:
                continue
        return False

    async def check(self) -> None:
        """Raise `LeadershipLost` unless this connection answers within `CHECK_TIMEOUT_SECONDS` and holds the
        lock."""
        conn = self._conn
        if conn is None or conn.closed:
            raise LeadershipLost("the leader lock's connection is closed")
        try:
            cursor = await asyncio.wait_for(conn.execute(_OWN_LOCK_SQL), CHECK_TIMEOUT_SECONDS)
            row = await cursor.fetchone()
        except TimeoutError:
            raise LeadershipLost(
                f"the database did not answer the leader lock's check within {CHECK_TIMEOUT_SECONDS:g} s"
            ) from None
        except psycopg.Error as exc:
            raise LeadershipLost(f"the leader lock's connection failed: {exc}".strip()) from exc
        if row is None or row[0] is not True:
            raise LeadershipLost("the leader lock is no longer held by this scheduler")

    async def release(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None and not conn.closed:
            try:
                await asyncio.wait_for(conn.close(), CHECK_TIMEOUT_SECONDS)
            except (TimeoutError, psycopg.Error, OSError) as exc:
                log.warning("leader lock: closing its connection failed (%s); the server drops it", exc)

    @staticmethod
    async def _holder(conn: psycopg.AsyncConnection[tuple[object, ...]]) -> str | None:
        cursor = await conn.execute(_HOLDER_SQL)
        row = await cursor.fetchone()
        return _identity_of(row[0]) if row is not None else None


def current_leader(engine: SqlEngine) -> str | None:
    """The identity of the engine holding the leader lock of `engine`'s database; None when nobody leads, on
    SQLite (one server, no election), or when the database cannot be asked."""
    if engine.dialect.name != "postgresql":
        return None
    try:
        with engine.connect() as conn:
            name = conn.execute(text(_HOLDER_SQL)).scalar()
    except SQLAlchemyError as exc:
        log.warning("leader: cannot ask the database who leads: %s", exc)
        return None
    return _identity_of(name) if isinstance(name, str) else None


def _identity_of(application_name: object) -> str | None:
    if isinstance(application_name, str) and application_name.startswith(APPLICATION_PREFIX):
        return application_name.removeprefix(APPLICATION_PREFIX)
    return None
