"""`run_as_user` (docs/security.md, `scheduler.runas`): the local backend's components run as another OS user, and
a server running as root without it says so in its start log.

Switching users needs root; these tests run as root here (`id -u` is 0) and are skipped elsewhere, except the
ones about refusing a user the server cannot become.
"""

from __future__ import annotations

import logging
import os
import pwd
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from api_kit import settings_for
from lifecycle_kit import FakeCommands, pipeline_bundle, wait_until

import ir
from scheduler.app import StartupRefused, create_app
from scheduler.backends.local import ROOT_WARNING
from scheduler.deployers.local import Component, LocalProcessDeployer
from scheduler.runas import RunAs, RunAsRefused, resolve_run_as

AS_ROOT = pytest.mark.skipif(os.geteuid() != 0, reason="switching users needs root")
SYSTEM_PYTHON = "/usr/bin/python3"
NOBODY = pwd.getpwnam("nobody")


@pytest.fixture
def runs_root() -> Iterator[Path]:
    """A runs folder `nobody` can reach (pytest's own base folder is private to root)."""
    folder = Path(tempfile.mkdtemp(prefix="modelops-runas-"))
    folder.chmod(0o755)
    try:
        yield folder / "jobs"
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def values() -> dict[str, Any]:
    return ir.to_document(ir.render(pipeline_bundle(), {}, ir.make_globals({"jobId": "x"})))


def uid_of(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return int(line.split()[1])  # the real uid; effective, saved and fs follow it
    raise AssertionError(f"no Uid line for pid {pid}")


class Lines(list[str]):
    def __call__(self, message: str) -> None:
        self.append(message)


@AS_ROOT
@pytest.mark.skipif(not os.access(SYSTEM_PYTHON, os.X_OK), reason="needs a Python any user may run")
async def test_components_run_as_nobody_and_read_their_values(runs_root: Path) -> None:
    def commands(component: Component) -> list[str]:
        if component.kind == "service":  # the fake service on an interpreter nobody may run (ours is root's)
            return [SYSTEM_PYTHON, *FakeCommands()(component)[1:]]
        # the flow: who it runs as, and that it can read its values (0600, given to it) and write beside them
        script = 'id -u; id -g; wc -c < "$MODELOPS_VALUES"; echo ok > "$(dirname "$MODELOPS_VALUES")/flows/mine"'
        return ["sh", "-c", script]

    run_as = resolve_run_as("nobody")
    assert run_as == RunAs("nobody", NOBODY.pw_uid, NOBODY.pw_gid, NOBODY.pw_dir)
    deployer = LocalProcessDeployer(runs_root, commands, run_as=run_as)
    job_id, log = str(uuid.uuid4()), Lines()
    deployment = await deployer.deploy(job_id, values(), log)
    try:
        await deployer.wait_ready(deployment, 20, log)
        (service,) = [p for p in deployment.ref["processes"] if p["kind"] == "service"]
        assert uid_of(service["pid"]) == NOBODY.pw_uid
        flow_log = runs_root / job_id / "flows" / "f1.log"
        await wait_until(lambda: len(flow_log.read_text().split()) >= 3, what="the flow's output")
        uid, gid, size = flow_log.read_text().split()[:3]
        assert (int(uid), int(gid)) == (NOBODY.pw_uid, NOBODY.pw_gid)
        assert int(size) == (runs_root / job_id / "values.yaml").stat().st_size > 0
        await wait_until(lambda: (runs_root / job_id / "flows" / "mine").exists(), what="the flow's file")
        assert (runs_root / job_id / "flows" / "mine").stat().st_uid == NOBODY.pw_uid
        assert any("as nobody (uid" in line for line in log)
    finally:
        await deployer.teardown(deployment, 5, log)
    assert not deployer.alive(deployment)


@AS_ROOT
async def test_a_server_running_as_root_without_run_as_user_warns_in_its_start_log(
    api_database_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    app = create_app(settings_for(tmp_path / "home", api_database_url))
    with caplog.at_level(logging.INFO):
        async with app.router.lifespan_context(app):
            pass
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and r.getMessage() == ROOT_WARNING]
    assert len(warnings) == 1


@AS_ROOT
async def test_with_run_as_user_the_start_log_names_the_user_and_does_not_warn(
    api_database_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    app = create_app(settings_for(tmp_path / "home", api_database_url, run_as_user=str(NOBODY.pw_uid)))
    with caplog.at_level(logging.INFO):
        async with app.router.lifespan_context(app):
            pass
    messages = [r.getMessage() for r in caplog.records]
    assert ROOT_WARNING not in messages
    assert f"local backend: the scoring services and flows of every job run as nobody (uid {NOBODY.pw_uid}, " in (
        "\n".join(messages)
    )


async def test_an_unknown_run_as_user_refuses_the_start(api_database_url: str, tmp_path: Path) -> None:
    with pytest.raises(RunAsRefused, match="run_as_user 'no-such-user-here': no such user on this machine"):
        resolve_run_as("no-such-user-here")
    app = create_app(settings_for(tmp_path / "home", api_database_url, run_as_user="no-such-user-here"))
    with pytest.raises(StartupRefused, match="cannot start the local backend: run_as_user 'no-such-user-here'"):
        async with app.router.lifespan_context(app):
            pass


@AS_ROOT
async def test_the_start_log_says_when_the_user_cannot_reach_the_home(
    api_database_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    app = create_app(settings_for(private / "home", api_database_url, run_as_user="nobody"))
    with caplog.at_level(logging.INFO):
        async with app.router.lifespan_context(app):
            pass
    messages = "\n".join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert f"run_as_user nobody cannot reach {private / 'home' / 'jobs'}: " in messages
    assert "is not searchable by it" in messages


def test_the_servers_own_user_needs_no_switch() -> None:
    assert resolve_run_as(None) is None
    assert resolve_run_as(str(os.geteuid())) is None
