"""Fixtures of the end-to-end tests: the digits models, and an embedded scheduler with the real local backend.

The helpers of the flow tests (`flow_kit`: models, bundles, service processes, a stub scheduler) are shared:
their folder is put on `sys.path` here, so `pytest tests/e2e` alone finds them too.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scoring_flows"))

from flow_kit import Digits, train_digits

from scheduler.client import SchedulerClient
from scheduler.embedded import EmbeddedServer
from scheduler.settings import SchedulerSettings


@pytest.fixture(scope="session")
def digits(tmp_path_factory: pytest.TempPathFactory) -> Digits:
    return train_digits(tmp_path_factory.mktemp("digits-models"))


@pytest.fixture(scope="module")
def scheduler(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SchedulerClient]:
    """A real scheduler (SQLite, the local backend starting real `modelops scoring-service` and `modelops flow`
    processes) on a loopback port, and a client of its REST API."""
    home = tmp_path_factory.mktemp("scheduler-home")
    # The operator's roots (docs/security.md): the tests' models and data live under pytest's base folder.
    base = tmp_path_factory.getbasetemp()
    settings = SchedulerSettings(
        home=home,
        artifact_roots=[base],
        data_roots=[base],
        readiness_timeout_seconds=120.0,
        uninstall_grace_seconds=15.0,
        poll_interval_seconds=0.2,
    )
    server = EmbeddedServer(settings)
    server.start()
    try:
        with SchedulerClient(server.url) as client:
            yield client
    finally:
        server.stop()
