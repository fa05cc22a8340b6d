"""Alembic's entry point for the scheduler database, run by `scheduler.db.migrate` and by the alembic CLI.

Online mode uses, in order: a `connection` passed in `config.attributes` (what `scheduler.db.migrate` does,
so the engine gets the scheduler's SQLite settings), `sqlalchemy.url` from the config, or
`MODELOPS_SCHEDULER_DATABASE_URL` through `SchedulerSettings`. Offline mode (`alembic upgrade --sql`) prints
the SQL for a DBA to apply.
"""

from __future__ import annotations

from typing import Any, Literal

from alembic import context
from alembic.autogenerate.api import AutogenContext
from sqlalchemy.engine import Connection

from scheduler.db.models import Base, UTCDateTime, schema_filter
from scheduler.db.session import create_engine, normalise_url

target_metadata = Base.metadata


def _database_url() -> str:
    url = context.config.get_main_option("sqlalchemy.url")
    if url:
        return url
    from scheduler.settings import SchedulerSettings

    return SchedulerSettings().database_url


def _render_item(kind: str, obj: Any, _context: AutogenContext) -> str | Literal[False]:
    """Autogenerate writes `UTCDateTime` as the plain column type it is in the database, so revisions do not
    import application code (which may change after the revision is written)."""
    if kind == "type" and isinstance(obj, UTCDateTime):
        return "sa.DateTime(timezone=True)"
    return False


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        compare_type=True,
        include_object=schema_filter(connection.dialect.name),
        render_item=_render_item,
        # The scheduler's SQLite engine emits BEGIN itself (see scheduler.db.session), so DDL is
        # transactional there too: a failed migration leaves nothing half-applied.
        transactional_ddl=True,
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_offline() -> None:
    context.configure(
        url=normalise_url(_database_url()),
        target_metadata=target_metadata,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = context.config.attributes.get("connection")
    if isinstance(connection, Connection):
        _run(connection)
        return
    engine = create_engine(_database_url())
    try:
        with engine.connect() as conn:
            _run(conn)
            conn.commit()
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
