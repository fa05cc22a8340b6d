"""Settings come from `MODELOPS_SCHEDULER_*`, default to a laptop setup, and refuse placeholders."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from scheduler.settings import SchedulerSettings, TokenSpec, hash_token


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in list(os.environ):
        if name.startswith("MODELOPS_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))


def test_defaults_run_on_a_laptop(tmp_path: Path) -> None:
    settings = SchedulerSettings()
    home = tmp_path / "home" / ".modelops"
    assert settings.home == home
    assert settings.database_url == f"sqlite:///{home / 'modelops.db'}"
    assert (settings.host, settings.port, settings.backend) == ("127.0.0.1", 8787, "local")
    assert settings.tokens == []
    assert settings.readiness_timeout_seconds > 0
    assert settings.uninstall_grace_seconds >= 0


def test_modelops_home_moves_the_default_database(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MODELOPS_HOME", str(tmp_path / "shared"))
    settings = SchedulerSettings()
    assert settings.home == tmp_path / "shared"
    assert settings.database_url == f"sqlite:///{tmp_path / 'shared' / 'modelops.db'}"


def test_the_scheduler_specific_home_wins_over_the_shared_one(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MODELOPS_HOME", str(tmp_path / "shared"))
    monkeypatch.setenv("MODELOPS_SCHEDULER_HOME", str(tmp_path / "own"))
    assert SchedulerSettings().home == tmp_path / "own"


def test_home_can_be_passed_by_name_and_the_database_follows(tmp_path: Path) -> None:
    settings = SchedulerSettings(home=tmp_path / "x")
    assert settings.database_url.endswith(f"{tmp_path / 'x' / 'modelops.db'}")


def test_the_plain_home_variable_is_not_mistaken_for_the_scheduler_home(tmp_path: Path) -> None:
    assert SchedulerSettings().home != tmp_path / "home"


@pytest.mark.parametrize(
    "given",
    ["postgresql://scheduler:s3cr3t-v4lue@db:5432/modelops", "postgres://scheduler:s3cr3t-v4lue@db:5432/modelops"],
)
def test_postgresql_urls_are_normalised_to_the_psycopg_driver(given: str) -> None:
    settings = SchedulerSettings(database_url=given)
    assert settings.database_url == "postgresql+psycopg://scheduler:s3cr3t-v4lue@db:5432/modelops"


def test_environment_variables_use_the_scheduler_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODELOPS_SCHEDULER_PORT", "9000")
    monkeypatch.setenv("MODELOPS_SCHEDULER_HOST", "0.0.0.0")
    monkeypatch.setenv("MODELOPS_SCHEDULER_BACKEND", "tekton")
    monkeypatch.setenv("MODELOPS_SCHEDULER_DATABASE_URL", "postgresql://scheduler:pw-123456@db/modelops")
    settings = SchedulerSettings()
    assert (settings.port, settings.host, settings.backend) == (9000, "0.0.0.0", "tekton")
    assert settings.database_url.startswith("postgresql+psycopg://")


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://scheduler:changeme@db/modelops",
        "postgresql://scheduler:password@db/modelops",
        "postgresql://scheduler:${DB_PASSWORD}@db/modelops",
        "postgresql://<user>:<password>@<host>/modelops",
        "postgresql://scheduler:CHANGE_ME@db/modelops",
    ],
)
def test_placeholder_database_urls_are_refused(url: str) -> None:
    with pytest.raises(ValidationError, match="database_url"):
        SchedulerSettings(database_url=url)


@pytest.mark.parametrize("url", ["mysql://u:p@h/db", "postgresql+psycopg2://u:pw-1234@h/db", "not a url"])
def test_unsupported_databases_are_refused(url: str) -> None:
    with pytest.raises(ValidationError):
        SchedulerSettings(database_url=url)


@pytest.mark.parametrize("backend", ["kubernetes", ""])
def test_only_known_backends_are_accepted(backend: str) -> None:
    with pytest.raises(ValidationError):
        SchedulerSettings(backend=backend)


@pytest.mark.parametrize("port", [0, 70000])
def test_ports_outside_the_tcp_range_are_refused(port: int) -> None:
    with pytest.raises(ValidationError):
        SchedulerSettings(port=port)


def test_tokens_are_configured_as_name_scope_and_hash(monkeypatch: pytest.MonkeyPatch) -> None:
    ci, alice = hash_token("ci-token-9f8e7d"), hash_token("alice-token-1a2b3c")
    monkeypatch.setenv("MODELOPS_SCHEDULER_TOKENS", f"ci:write:{ci}, alice:admin:{alice}")
    settings = SchedulerSettings()
    assert settings.tokens == [
        TokenSpec(name="ci", scope="write", sha256=ci),
        TokenSpec(name="alice", scope="admin", sha256=alice),
    ]
    assert str(settings.tokens[0]) == f"ci:write:{ci}"


def test_a_presented_token_is_matched_by_its_hash_and_an_unknown_one_is_not() -> None:
    settings = SchedulerSettings(tokens=[f"ci:read:{hash_token('ci-token-9f8e7d')}"])
    found = settings.find_token("ci-token-9f8e7d")
    assert found is not None and found.name == "ci" and found.scope == "read"
    assert settings.find_token("ci-token-9f8e7e") is None


def test_a_plaintext_token_in_the_configuration_is_refused_with_a_hint() -> None:
    with pytest.raises(ValidationError, match="modelops token hash"):
        SchedulerSettings(tokens=["ci:write:my-plaintext-token"])


@pytest.mark.parametrize("plaintext", ["changeme", "secret", "token", ""])
def test_the_hash_of_a_placeholder_token_is_refused(plaintext: str) -> None:
    with pytest.raises(ValidationError, match="placeholder"):
        SchedulerSettings(tokens=[f"ci:write:{hash_token(plaintext)}"])


@pytest.mark.parametrize(
    "spec",
    ["ci:write", "ci:superuser:" + "ab" * 32, ":write:" + "ab" * 32, "ci:write:" + "0" * 64],
)
def test_malformed_token_specifications_are_refused(spec: str) -> None:
    with pytest.raises(ValidationError):
        SchedulerSettings(tokens=[spec])


def test_two_tokens_with_one_name_are_refused() -> None:
    spec = f"ci:write:{hash_token('a-real-token-123')}"
    with pytest.raises(ValidationError, match="unique"):
        SchedulerSettings(tokens=[spec, spec])


def test_every_field_is_documented() -> None:
    for name, field in SchedulerSettings.model_fields.items():
        assert field.description, f"{name} has no docstring"


def test_importing_the_storage_layer_reads_no_settings(tmp_path: Path) -> None:
    environment = {**os.environ, "MODELOPS_SCHEDULER_PORT": "not-a-port"}
    code = "import scheduler.settings, scheduler.states, scheduler.db, scheduler.store"
    done = subprocess.run([sys.executable, "-c", code], env=environment, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
