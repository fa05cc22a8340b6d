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


def test_the_data_root_is_the_setting_else_the_servers_working_directory_and_a_job_may_name_its_own(
    tmp_path: Path,
) -> None:
    job = uuid.uuid4()
    assert globals_for(SchedulerSettings(home=tmp_path), job).data_root == str(Path.cwd())
    settings = SchedulerSettings(home=tmp_path, data_root=tmp_path / "data")
    assert globals_for(settings, job).data_root == str(tmp_path / "data")
    assert globals_for(settings, job, environment={"dataRoot": "/work/bundle"}).data_root == "/work/bundle"


def test_on_kubernetes_an_unset_data_root_leaves_data_paths_to_the_flow_pods_working_directory(tmp_path: Path) -> None:
    assert globals_for(SchedulerSettings(home=tmp_path, backend="tekton"), uuid.uuid4()).data_root is None


def test_stored_artifacts_resolve_to_the_store_folder_locally_and_to_the_jobs_artifact_route_on_kubernetes(
    tmp_path: Path,
) -> None:
    job = uuid.uuid4()
    local = globals_for(SchedulerSettings(home=tmp_path), job).artifact_store
    assert local == (tmp_path / "artifacts" / "sha256").resolve().as_uri()
    remote = SchedulerSettings(home=tmp_path, backend="tekton", public_url="http://modelops-scheduler:8787")
    assert globals_for(remote, job).artifact_store == f"http://modelops-scheduler:8787/api/v1/jobs/{job}/artifacts"
