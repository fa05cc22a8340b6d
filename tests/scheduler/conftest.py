"""Fixtures for the scheduler's storage tests: the same tests run on SQLite and on a real PostgreSQL.

PostgreSQL: one fresh database per test session (`modelops_t_<random>`, created through the admin URL in
`MODELOPS_TEST_POSTGRES_URL`, default `postgresql+psycopg://postgres@127.0.0.1:5432/postgres`), the database
dropped at the end. Before each test its `public` schema is dropped and recreated (`empty_database_url`), or,
for a test that wants a migrated database (`database_url`), its tables are emptied when it is migrated already.
Those tests carry the `postgres` marker: `pytest -m "not postgres"` runs the SQLite half alone.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy
from api_kit import api_database_url, migrated_database, migrated_sqlite_template  # noqa: F401 (fixtures of the API tests)
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import OperationalError
from store_kit import DIGITS_IR, FrozenClock, digest_of, wipe_postgres

from scheduler.db import create_engine
from scheduler.settings import hash_token
from scheduler.store import Job, JobStore, PipelineVersion

POSTGRES_ADMIN_URL = os.environ.get(
    "MODELOPS_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)


@pytest.fixture(scope="session")
def postgres_database() -> Iterator[str]:
    """URL of a PostgreSQL database created for this test session and dropped at its end."""
    name = f"modelops_t_{secrets.token_hex(4)}"
    admin = sqlalchemy.create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    except OperationalError as exc:
        admin.dispose()
        raise RuntimeError(
            f"PostgreSQL is not reachable at {POSTGRES_ADMIN_URL} (set MODELOPS_TEST_POSTGRES_URL, "
            'or deselect these tests with -m "not postgres")'
        ) from exc
    try:
        yield make_url(POSTGRES_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


@pytest.fixture(
    params=[pytest.param("sqlite"), pytest.param("postgresql", marks=pytest.mark.postgres)],
)
def empty_database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """URL of an empty database: a new SQLite file, or the session's PostgreSQL database wiped clean."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'modelops.db'}"
    url: str = request.getfixturevalue("postgres_database")
    wipe_postgres(url)
    return url


@pytest.fixture(params=[pytest.param("sqlite"), pytest.param("postgresql", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """URL of an empty database migrated to the newest revision (a copy of the session's migrated SQLite file, or
    the session's PostgreSQL database with its tables emptied: `api_kit.migrated_database`)."""
    return migrated_database(request, tmp_path)


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    engine = create_engine(database_url)
    yield engine
    engine.dispose()


@pytest.fixture
def store(engine: Engine) -> JobStore:
    return JobStore(engine)


@pytest.fixture
def frozen_clock() -> FrozenClock:
    return FrozenClock()


@pytest.fixture
def version(store: JobStore) -> PipelineVersion:
    """Version 1 of the `digits` pipeline."""
    stored, _ = store.add_pipeline_version("digits", DIGITS_IR, digest_of("digits-v1"), created_by="alice")
    return stored


@pytest.fixture
def new_job(store: JobStore, version: PipelineVersion) -> Callable[..., Job]:
    """Create a PENDING job of the `digits` pipeline; keyword arguments override `create_job`'s."""

    def make(**overrides: Any) -> Job:
        of_version = overrides.pop("version", version)
        arguments: dict[str, Any] = {
            "parameters": {"batch_size": 64},
            "environment": {"namespace": "scoring"},
            "backend": "local",
            "token_hash": hash_token(secrets.token_urlsafe(16)),
        }
        arguments.update(overrides)
        job, created = store.create_job(of_version, **arguments)
        assert created
        return job

    return make
