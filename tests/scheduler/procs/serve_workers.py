"""`modelops serve --workers N` with the lifecycle tests' fake components: for test_dispatch.py.

The real `run_server` (supervisor, lifecycle engine in its thread, N uvicorn API workers); the only difference
from `modelops serve` is the engine's backend factory, whose deployer runs the fake service and flow of
`procs/`, each flow with the arguments `MODELOPS_TEST_FLOW_ARGS` (JSON: flow name -> list) gives it.
Settings come from `MODELOPS_SCHEDULER_*`.

    python serve_workers.py
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests/scheduler, for lifecycle_kit

import typer
from lifecycle_kit import FakeCommands

from scheduler.backends.local import LocalBackend
from scheduler.cli import _settings, run_server
from scheduler.deployers.local import LocalProcessDeployer
from scheduler.settings import SchedulerSettings
from scheduler.store import JobStore


def main() -> int:
    commands = FakeCommands(by_name=json.loads(os.environ.get("MODELOPS_TEST_FLOW_ARGS", "{}")))

    def factory(store: JobStore, settings: SchedulerSettings, secret: bytes) -> LocalBackend:
        return LocalBackend(store, settings, secret, LocalProcessDeployer(settings.home / "jobs", commands))

    try:
        run_server(_settings(), backend_factory=factory)
    except typer.Exit as exc:
        return int(exc.exit_code)
    return 0


if __name__ == "__main__":
    sys.exit(main())
