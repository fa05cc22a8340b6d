"""tekton/Dockerfile, the runner image, read for its essentials.

The image cannot be built here: the build downloads helm and Python wheels and this machine has no internet
(the image is built in CI, which has). So this test parses the Dockerfile instead and checks what the Tasks
and the chart rely on: a python:3.11-slim base, helm pinned to the version the tests use and verified by
sha256, the project installed with every runtime extra, the chart at /opt/modelops/charts/modelops, a non-root
final user 65532 with HOME=/tmp, no ENTRYPOINT, and a build context filter that lets those files in.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass

import pytest
from tekton_kit import ROOT, TEKTON

DOCKERFILE = TEKTON / "Dockerfile"
DOCKERIGNORE = TEKTON / "Dockerfile.dockerignore"
HELM_VERSION = "3.17.2"  # scripts/fetch-helm.sh fetches the same version for the tests


@dataclass(frozen=True)
class Instruction:
    keyword: str
    args: str


def parse(text: str) -> list[list[Instruction]]:
    """Instructions per build stage (the first list holds the ARGs before the first FROM)."""
    stages: list[list[Instruction]] = [[]]
    logical = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not logical and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            logical += line[:-1].rstrip() + " "
            continue
        logical += line
        keyword, _, args = logical.partition(" ")
        logical = ""
        if keyword.upper() == "FROM":
            stages.append([])
        stages[-1].append(Instruction(keyword.upper(), args.strip()))
    return stages


STAGES = parse(DOCKERFILE.read_text(encoding="utf-8"))
FINAL = STAGES[-1]


def _args(stage: list[Instruction], keyword: str) -> list[str]:
    return [i.args for i in stage if i.keyword == keyword]


def _arg_defaults() -> dict[str, str]:
    defaults = {}
    for stage in STAGES:
        for arg in _args(stage, "ARG"):
            name, _, value = arg.partition("=")
            defaults[name] = value
    return defaults


def test_the_parser_joins_continued_lines_and_splits_stages() -> None:
    stages = parse("ARG A=1\nFROM x AS a\nRUN one \\\n    two\n# c\nFROM y\nUSER 7\n")
    assert stages == [
        [Instruction("ARG", "A=1")],
        [Instruction("FROM", "x AS a"), Instruction("RUN", "one two")],
        [Instruction("FROM", "y"), Instruction("USER", "7")],
    ]


def test_every_stage_builds_from_python_3_11_slim() -> None:
    assert _arg_defaults()["PYTHON_IMAGE"] == "python:3.11-slim"
    for stage in STAGES[1:]:
        assert stage[0].args.split()[0] == "${PYTHON_IMAGE}"


def test_helm_is_pinned_and_checked_against_a_sha256_before_use() -> None:
    defaults = _arg_defaults()
    assert defaults["HELM_VERSION"] == HELM_VERSION
    assert re.fullmatch(r"[0-9a-f]{64}", defaults["HELM_SHA256_AMD64"])
    (helm_stage,) = [s for s in STAGES[1:] if s[0].args.endswith(" AS helm")]
    (run,) = _args(helm_stage, "RUN")
    assert "sha256sum --check --strict" in run
    assert run.index("sha256sum --check") < run.index("tar -xzf")
    assert "COPY --from=helm /out/helm /usr/local/bin/helm" in [f"COPY {a}" for a in _args(FINAL, "COPY")]


def test_the_pinned_helm_version_is_the_one_the_tests_run() -> None:
    fetch = (ROOT / "scripts" / "fetch-helm.sh").read_text(encoding="utf-8")
    assert f"HELM_VERSION=v{HELM_VERSION}" in fetch


def test_the_project_is_installed_with_every_runtime_extra() -> None:
    (build_stage,) = [s for s in STAGES[1:] if s[0].args.endswith(" AS build")]
    runs = " ".join(_args(build_stage, "RUN"))
    assert 'pip install ".[all]"' in runs
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["optional-dependencies"]
    assert {"torch", "transformers", "onnx", "pmml", "k8s"} <= set(extras)
    assert {"torch", "transformers", "onnx", "pmml", "k8s"} <= {
        name for spec in extras["all"] for name in re.findall(r"\w+", spec.partition("[")[2])
    }


def test_the_final_image_carries_the_chart_where_the_tasks_look_for_it() -> None:
    assert "charts/modelops /opt/modelops/charts/modelops" in _args(FINAL, "COPY")


def test_the_final_image_runs_as_uid_65532_with_home_in_tmp() -> None:
    assert _args(FINAL, "USER")[-1] == "65532:65532"
    env = " ".join(_args(FINAL, "ENV"))
    assert "HOME=/tmp" in env
    assert "PATH=/opt/venv/bin:${PATH}" in env


def test_the_final_image_has_no_entrypoint_and_prints_help_by_default() -> None:
    assert _args(FINAL, "ENTRYPOINT") == []
    assert _args(FINAL, "CMD") == ['["modelops", "--help"]']


@pytest.mark.parametrize(
    ("path", "included"),
    [
        ("pyproject.toml", True),
        ("scheduler/cli.py", True),
        ("charts/modelops/Chart.yaml", True),
        ("charts/modelops/charts/scheduler/files/tekton/pipeline.yaml", True),
        (".venv/bin/python", False),
        (".tools/bin/helm", False),
        ("examples/digits/data/digits.csv", False),
        ("scheduler/__pycache__/cli.cpython-311.pyc", False),
    ],
)
def test_the_context_filter_lets_in_what_the_dockerfile_copies_and_nothing_heavy(path: str, included: bool) -> None:
    # The last matching pattern wins, as in Docker; `!` re-includes. A folder pattern matches everything below it.
    verdict = True
    for pattern in DOCKERIGNORE.read_text(encoding="utf-8").splitlines():
        pattern = pattern.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negate = pattern.startswith("!")
        body = pattern.lstrip("!").rstrip("/")
        regex = re.escape(body).replace(r"\*\*/", "(?:.*/)?").replace(r"\*", "[^/]*")
        if re.fullmatch(f"{regex}(?:/.*)?", path):
            verdict = negate
    assert verdict is included


def test_every_path_the_final_and_build_stages_copy_from_the_context_exists() -> None:
    for stage in STAGES[1:]:
        for args in _args(stage, "COPY"):
            if args.startswith("--from="):
                continue
            *sources, _ = args.split()
            for source in sources:
                assert (ROOT / source).exists(), f"COPY {source}: not in the repository"
