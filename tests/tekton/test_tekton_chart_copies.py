"""The scheduler sub-chart's files/tekton/ holds byte-identical copies of the Pipeline and Tasks.

tekton/ is the source of truth; the platform sub-chart installs the copies with `.Files.Glob "files/tekton/*.yaml"`
(a glob that does not descend into folders, so tasks/<name>.yaml becomes task-<name>.yaml).
Refresh them with scripts/sync-tekton.sh. tekton/rbac.yaml is not copied (its namespace is fixed); the sub-chart
templates the runner's Role into its release namespace, and the last test here keeps its rules equal to ours.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from tekton_kit import CHART_COPIES, ROOT, RUNNER_SERVICE_ACCOUNT, TEKTON, load_documents

SYNC = ROOT / "scripts" / "sync-tekton.sh"
FIX = "run scripts/sync-tekton.sh"


def _expected(tekton: Path) -> dict[str, Path]:
    """Copy name -> source, the mapping scripts/sync-tekton.sh implements."""
    wanted = {"pipeline.yaml": tekton / "pipeline.yaml"}
    wanted.update({f"task-{path.name}": path for path in sorted((tekton / "tasks").glob("*.yaml"))})
    return wanted


def test_the_chart_holds_a_copy_of_the_pipeline_and_of_each_task_and_nothing_else() -> None:
    assert CHART_COPIES.is_dir(), f"{CHART_COPIES.relative_to(ROOT)} is missing: {FIX}"
    assert sorted(p.name for p in CHART_COPIES.iterdir()) == sorted(_expected(TEKTON)), FIX


def test_each_chart_copy_is_byte_identical_to_its_source() -> None:
    for name, source in _expected(TEKTON).items():
        copy = CHART_COPIES / name
        assert copy.read_bytes() == source.read_bytes(), f"{copy.relative_to(ROOT)} differs from {source}: {FIX}"


def test_sync_tekton_refreshes_a_stale_copy_adds_a_new_task_and_removes_an_orphan(tmp_path: Path) -> None:
    shutil.copytree(TEKTON, tmp_path / "tekton")
    (tmp_path / "scripts").mkdir()
    shutil.copy2(SYNC, tmp_path / "scripts" / SYNC.name)
    dest = tmp_path / CHART_COPIES.relative_to(ROOT)
    shutil.copytree(CHART_COPIES, dest)
    (dest / "task-install.yaml").write_text("stale\n", encoding="utf-8")
    (dest / "task-gone.yaml").write_text("orphan\n", encoding="utf-8")
    shutil.copy2(tmp_path / "tekton" / "tasks" / "wait.yaml", tmp_path / "tekton" / "tasks" / "extra.yaml")

    result = subprocess.run(
        ["bash", str(tmp_path / "scripts" / SYNC.name)], capture_output=True, text=True, timeout=60, check=False
    )

    assert result.returncode == 0, result.stderr
    expected = _expected(tmp_path / "tekton")
    assert "task-extra.yaml" in expected
    assert sorted(p.name for p in dest.iterdir()) == sorted(expected)
    for name, source in expected.items():
        assert (dest / name).read_bytes() == source.read_bytes(), name


def test_the_sub_charts_runner_role_grants_exactly_what_tekton_rbac_yaml_grants() -> None:
    sub_chart = CHART_COPIES.parent.parent
    if not (sub_chart / "templates").is_dir():
        pytest.skip("the scheduler sub-chart has no templates yet")
    helm = shutil.which("helm", path=f"{ROOT / '.tools' / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}")
    assert helm is not None, "helm is not on PATH nor in .tools/bin: run `make tools`"
    result = subprocess.run(
        [helm, "template", "platform", str(sub_chart), "--namespace", "modelops"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    rendered = [d for d in yaml.safe_load_all(result.stdout) if isinstance(d, dict)]
    (chart_role,) = [d for d in rendered if d["kind"] == "Role" and d["metadata"]["name"] == RUNNER_SERVICE_ACCOUNT]
    our_roles = [d for d in load_documents(TEKTON / "rbac.yaml") if d["kind"] == "Role"]
    assert our_roles
    for our_role in our_roles:
        assert chart_role["rules"] == our_role["rules"], our_role["metadata"]["namespace"]
