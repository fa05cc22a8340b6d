"""The real `@ibm/tekton-lint` over tekton/**/*.yaml: zero errors and zero warnings.

tekton-lint checks what schemas cannot: params used but not declared (or declared and never used), tasks a
Pipeline references but nobody defines, runAfter targets, names. It is installed by `make install` from
tools/package.json into .tools/node, linked as .tools/bin/tekton-lint, and runs offline on the machine's Node.js.
This test is how `make test` runs it (the `make lint-tekton` target is the same check by hand).

It lints the files that hold Tekton objects. tekton/rbac.yaml holds only Kubernetes RBAC (kubernetes-validate and
test_tekton_rbac.py check it), and tekton-lint's `no-duplicate-resource` ignores namespaces: it would report the
runner's Role in its second namespace as a duplicate.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from tekton_kit import ROOT, load_documents, tekton_files

TEKTON_LINT = ROOT / ".tools" / "bin" / "tekton-lint"


def _lint(files: list[Path], home: Path) -> list[dict[str, Any]]:
    if not TEKTON_LINT.exists():
        pytest.fail(f"{TEKTON_LINT} is missing: run `make install` (it installs @ibm/tekton-lint from tools/)")
    # HOME: tekton-lint keeps an external-task cache under ~/.tektonlint; keep it out of the real home.
    result = subprocess.run(
        [str(TEKTON_LINT), "--format", "json", "--color", "false", *map(str, files)],
        cwd=ROOT,
        env={"PATH": f"{TEKTON_LINT.parent}:/usr/local/bin:/usr/bin:/bin", "HOME": str(home)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    try:
        problems: list[dict[str, Any]] = json.loads(result.stdout)
    except json.JSONDecodeError:
        pytest.fail(f"tekton-lint exited {result.returncode} without a JSON report:\n{result.stdout}\n{result.stderr}")
    return problems


def _tekton_object_files() -> list[Path]:
    def holds_tekton(path: Path) -> bool:
        return any(str(doc.get("apiVersion")).startswith("tekton.dev/") for doc in load_documents(path))

    return [path for path in tekton_files() if holds_tekton(path)]


def test_tekton_lint_reports_no_error_and_no_warning(tmp_path: Path) -> None:
    files = _tekton_object_files()
    assert len(files) == 4, files  # the Pipeline and its three Tasks
    problems = _lint(files, tmp_path)
    assert problems == [], "\n".join(
        f"{p['path']}:{p['loc']['startLine']}: {p['level']} {p['rule']}: {p['message']}" for p in problems
    )


def test_tekton_lint_catches_an_undefined_param_and_a_missing_task(tmp_path: Path) -> None:
    # The check above is only worth something if the linter really reads our files: break two of them.
    broken = tmp_path / "broken"
    shutil.copytree(ROOT / "tekton", broken)
    wait = broken / "tasks" / "wait.yaml"
    wait.write_text(wait.read_text(encoding="utf-8").replace("$(params.job-id)", "$(params.job-uuid)"), "utf-8")
    pipeline = broken / "pipeline.yaml"
    pipeline.write_text(pipeline.read_text(encoding="utf-8").replace("name: modelops-install", "name: modelops-instal"))
    problems = _lint(sorted(broken.rglob("*.yaml")), tmp_path)
    rules = {(Path(p["path"]).name, p["rule"], p["level"]) for p in problems}
    assert ("wait.yaml", "no-undefined-param", "error") in rules
    assert ("pipeline.yaml", "no-missing-resource", "error") in rules
