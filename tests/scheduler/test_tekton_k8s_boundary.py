"""Only `scheduler/k8s.py` imports the `kubernetes` client; the import-linter contract in pyproject.toml checks
the packages in `make lint`, this test also covers the Tekton backend's tests and fake, which must fake our
wrapper, never the client."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("ir", "scheduler", "scoring_services", "scoring_flows", "data_channel")


def kubernetes_importers(files: list[Path]) -> list[str]:
    found = []
    for path in files:
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            names = (
                [alias.name for alias in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom) and node.level == 0
                else []
            )
            if any(name == "kubernetes" or name.startswith("kubernetes.") for name in names):
                found.append(str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else path.name)
                break
    return found


def test_only_scheduler_k8s_imports_the_kubernetes_client() -> None:
    files = [path for package in PACKAGES for path in sorted((ROOT / package).rglob("*.py"))]
    assert kubernetes_importers(files) == ["scheduler/k8s.py"]


def test_the_tekton_tests_and_their_fake_do_not_import_the_kubernetes_client() -> None:
    here = Path(__file__).parent
    files = [here / "fake_k8s.py", *sorted(here.glob("test_tekton_*.py"))]
    assert kubernetes_importers(files) == []


def test_the_boundary_check_sees_every_form_of_importing_the_client(tmp_path: Path) -> None:
    forms = {
        "plain.py": "import kubernetes\n",
        "dotted.py": "import kubernetes.watch as w\n",
        "from.py": "from kubernetes.client import CoreV1Api\n",
        "lazy.py": "def f():\n    from kubernetes import client\n",
        "other.py": "import kubernetes_validate\nfrom . import kubernetes\n",
    }
    for name, text in forms.items():
        (tmp_path / name).write_text(text)
    found = kubernetes_importers(sorted(tmp_path.glob("*.py")))
    assert found == ["dotted.py", "from.py", "lazy.py", "plain.py"]
