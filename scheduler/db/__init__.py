"""The scheduler's database layer: models, engine and sessions, and Alembic migrations.

Only `scheduler.store` reads and writes the tables; the rest of the scheduler goes through `JobStore`.
Server start-up uses `check_schema`, `modelops db upgrade` uses `upgrade`.
"""

from scheduler.db.migrate import SchemaCheck, SchemaStatus, check_schema, current_revision, head_revision, upgrade
from scheduler.db.models import Base
from scheduler.db.session import create_engine, make_sessionmaker

__all__ = [
    "Base",
    "SchemaCheck",
    "SchemaStatus",
    "check_schema",
    "create_engine",
    "current_revision",
    "head_revision",
    "make_sessionmaker",
    "upgrade",
]
