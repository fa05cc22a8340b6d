"""A job's globals: the server's settings, overridden per job by its environment."""

from __future__ import annotations

import uuid
from pathlib import Path

from scheduler.settings import SchedulerSettings
from scheduler.values import globals_for


def test_a_job_environment_model_store_overrides_the_server_setting(tmp_path: Path) -> None:
    settings = SchedulerSettings(home=tmp_path, model_store="file:///srv/models")
    job = uuid.uuid4()
    assert globals_for(settings, job).model_store == "file:///srv/models"
    chosen = globals_for(settings, job, environment={"modelStore": "file:///work/bundle"})
    assert chosen.model_store == "file:///work/bundle"
    assert globals_for(settings, job, environment={"namespace": "team-a"}).model_store == "file:///srv/models"


def test_without_any_model_store_relative_artifact_paths_stay_relative(tmp_path: Path) -> None:
    assert globals_for(SchedulerSettings(home=tmp_path), uuid.uuid4()).model_store is None
