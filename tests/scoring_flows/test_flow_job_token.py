"""The job token a flow presents: `MODELOPS_JOB_TOKEN` (set by the Helm chart from a Secret) over the values'.

On Kubernetes the chart strips `global.scheduler.token` from the values ConfigMap and passes the token through
the environment instead; locally the values still carry it. Reports go to a stub scheduler that checks the bearer.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from flow_kit import StubScheduler, render_values

from scoring_flows.cli import load_values
from scoring_flows.runtime import Flow, job_token

ROOT = Path(__file__).resolve().parents[2]
DIGITS = ROOT / "examples" / "digits"


def _flow(tmp_path: Path, stub: StubScheduler, token_in_values: str | None, environ: dict[str, str]) -> Flow:
    values = render_values(
        DIGITS, tmp_path / "values.yaml", job_id=stub.job_id, scheduler_url=stub.url, token=token_in_values
    )
    return Flow(load_values(values), "digits-batch", environ=environ, workdir=tmp_path, log=lambda _: None)


def test_the_environment_token_wins_over_the_values_token() -> None:
    assert job_token("from-values", {"MODELOPS_JOB_TOKEN": "from-env"}) == "from-env"


def test_the_values_token_is_used_when_the_environment_has_none_or_an_empty_one() -> None:
    assert job_token("from-values", {}) == "from-values"
    assert job_token("from-values", {"MODELOPS_JOB_TOKEN": ""}) == "from-values"
    assert job_token(None, {}) is None


def test_the_process_environment_is_read_when_no_environment_is_given(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODELOPS_JOB_TOKEN", "from-process-env")
    assert job_token("from-values", None) == "from-process-env"


async def test_a_flow_without_a_token_in_its_values_reports_with_the_environment_token(tmp_path: Path) -> None:
    with StubScheduler() as stub:
        runner = _flow(tmp_path, stub, None, {"MODELOPS_JOB_TOKEN": stub.token})
        try:
            assert runner.link.enabled
            assert await runner.reporter.complete(True, "done") is True
        finally:
            await runner.reporter.close()
    assert stub.completions == [{"succeeded": True, "message": "done", "flow": "digits-batch"}]


async def test_a_stale_token_in_the_values_is_overridden_by_the_environment(tmp_path: Path) -> None:
    with StubScheduler() as stub:
        runner = _flow(tmp_path, stub, "mjt_stale-token", {"MODELOPS_JOB_TOKEN": stub.token})
        try:
            assert await runner.reporter.complete(False, "boom") is True
        finally:
            await runner.reporter.close()
    assert stub.completions == [{"succeeded": False, "message": "boom", "flow": "digits-batch"}]


async def test_without_the_environment_variable_the_values_token_is_presented(tmp_path: Path) -> None:
    with StubScheduler() as stub:
        refused = _flow(tmp_path, stub, "mjt_wrong-token", {})
        accepted = _flow(tmp_path / "b", stub, stub.token, {})
        try:
            assert await refused.reporter.complete(True, "x") is False  # 401 from the stub: not recorded
            assert await accepted.reporter.complete(True, "y") is True
        finally:
            await refused.reporter.close()
            await accepted.reporter.close()
    assert stub.completions == [{"succeeded": True, "message": "y", "flow": "digits-batch"}]
