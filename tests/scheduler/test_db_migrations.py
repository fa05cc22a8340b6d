"""The Alembic migrations build exactly the schema the models describe, and the server can tell when not.

Run on SQLite and PostgreSQL alike (see the `empty_database_url` fixture).
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from sqlalchemy.engine import Engine

from scheduler.db import Base, SchemaStatus, check_schema, create_engine, current_revision, head_revision, upgrade
from scheduler.db.migrate import ALEMBIC_INI, alembic_config, downgrade
from scheduler.db.models import schema_filter
from scheduler.errors import StoreUnavailable


def schema_diff(engine: Engine, metadata: sqlalchemy.MetaData = Base.metadata) -> list[object]:
    with engine.connect() as conn:
        opts = {"compare_type": True, "include_object": schema_filter(conn.dialect.name)}
        context = MigrationContext.configure(conn, opts=opts)
        return list(compare_metadata(context, metadata))


@pytest.fixture
def empty_engine(empty_database_url: str) -> Iterator[Engine]:
    engine = create_engine(empty_database_url)
    yield engine
    engine.dispose()


def test_the_alembic_configuration_ships_inside_the_package() -> None:
    assert ALEMBIC_INI.is_file()
    script_location = Path(alembic_config().get_main_option("script_location") or "")
    assert script_location.is_dir() and (script_location / "env.py").is_file()
    assert head_revision() == "0006"


def test_upgrading_creates_the_schema_of_the_models_without_drift(empty_database_url: str) -> None:
    upgrade(empty_database_url)  # a fresh migration, not a database other tests used
    engine = create_engine(empty_database_url)
    try:
        assert schema_diff(engine) == []
    finally:
        engine.dispose()


def test_the_drift_check_does_see_a_difference_when_there_is_one(database_url: str) -> None:
    extra = sqlalchemy.MetaData()
    for table in Base.metadata.sorted_tables:
        table.to_metadata(extra)
    extra.tables["jobs"].append_column(sqlalchemy.Column("priority", sqlalchemy.Integer))
    engine = create_engine(database_url)
    try:
        diff = schema_diff(engine, extra)
    finally:
        engine.dispose()
    assert [d[0] for d in diff if isinstance(d, tuple)] == ["add_column"]


def test_the_migrated_check_constraints_carry_the_models_names(empty_database_url: str) -> None:
    upgrade(empty_database_url)  # a fresh migration, not a database other tests used
    engine = create_engine(empty_database_url)
    try:
        inspector = sqlalchemy.inspect(engine)
        for table in Base.metadata.sorted_tables:
            expected = {c.name for c in table.constraints if isinstance(c, sqlalchemy.CheckConstraint)}
            found = {c["name"] for c in inspector.get_check_constraints(table.name)}
            assert found == expected, table.name
    finally:
        engine.dispose()


def test_an_empty_database_is_reported_unmigrated_with_the_command_to_run(empty_engine: Engine) -> None:
    check = check_schema(empty_engine)
    assert check.status is SchemaStatus.UNMIGRATED and not check.ok
    assert check.current is None and check.head == head_revision()
    assert "modelops db upgrade" in check.message


def test_a_migrated_database_is_ok(empty_database_url: str, empty_engine: Engine) -> None:
    upgrade(empty_database_url)
    check = check_schema(empty_engine)
    assert check.status is SchemaStatus.OK and check.ok
    assert current_revision(empty_engine) == head_revision()


def test_upgrading_twice_changes_nothing(empty_database_url: str, empty_engine: Engine) -> None:
    upgrade(empty_database_url)
    upgrade(empty_database_url)
    assert check_schema(empty_engine).ok
    assert schema_diff(empty_engine) == []


def test_a_database_migrated_by_a_newer_release_is_reported_newer(
    empty_database_url: str, empty_engine: Engine
) -> None:
    upgrade(empty_database_url)
    with empty_engine.begin() as conn:
        conn.execute(sqlalchemy.text("UPDATE alembic_version SET version_num = 'ffff_from_the_future'"))
    check = check_schema(empty_engine)
    assert check.status is SchemaStatus.NEWER
    assert check.current == "ffff_from_the_future"
    assert "newer than this code" in check.message


def test_a_database_at_an_older_revision_is_reported_behind(
    empty_database_url: str, empty_engine: Engine, tmp_path: Path
) -> None:
    # "Behind" is shown against a copy of the migrations with one more revision than this code ships.
    upgrade(empty_database_url)
    shipped = Path(alembic_config().get_main_option("script_location") or "")
    copy = tmp_path / "migrations"
    shutil.copytree(shipped, copy, ignore=shutil.ignore_patterns("__pycache__"))
    head = head_revision()
    (copy / "versions" / "9999_next.py").write_text(
        f'revision = "9999"\ndown_revision = "{head}"\nbranch_labels = None\ndepends_on = None\n\n\n'
        "def upgrade() -> None:\n    pass\n\n\ndef downgrade() -> None:\n    pass\n"
    )
    config = Config()
    config.set_main_option("script_location", str(copy))
    check = check_schema(empty_engine, config=config)
    assert check.status is SchemaStatus.BEHIND
    assert (check.current, check.head) == (head, "9999")
    assert "modelops db upgrade" in check.message


def test_downgrading_to_base_removes_every_table_and_upgrading_again_restores_them(
    empty_database_url: str, empty_engine: Engine
) -> None:
    upgrade(empty_database_url)
    downgrade(empty_database_url, "base")
    assert set(sqlalchemy.inspect(empty_engine).get_table_names()) <= {"alembic_version"}
    assert check_schema(empty_engine).status is SchemaStatus.UNMIGRATED
    upgrade(empty_database_url)
    assert schema_diff(empty_engine) == []


def test_checking_the_schema_of_an_unreachable_database_reports_it_unavailable() -> None:
    engine = create_engine("postgresql+psycopg://postgres@127.0.0.1:1/modelops?connect_timeout=2")
    try:
        with pytest.raises(StoreUnavailable) as caught:
            check_schema(engine)
    finally:
        engine.dispose()
    assert caught.value.http_status == 503
    assert isinstance(caught.value.__cause__, sqlalchemy.exc.OperationalError)


def test_upgrading_an_unreachable_database_reports_it_unavailable(tmp_path: Path) -> None:
    # A directory where the database file should be: SQLite cannot open it.
    with pytest.raises(StoreUnavailable):
        upgrade(f"sqlite:///{tmp_path}")
