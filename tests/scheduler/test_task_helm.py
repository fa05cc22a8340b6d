"""`scheduler.helm` and the `HelmDeployer` with the real helm binary (`.tools/bin/helm`), no cluster:

- `helm template` and `helm lint` of `charts/modelops` with values rendered from `examples/digits`;
- `helm upgrade --install` and `helm uninstall` against a cluster that is not there (a kubeconfig pointing at
  https://127.0.0.1:1), which must fail with helm's own words;
- `helm uninstall` against a stand-in API server that answers `/version` and holds no Helm release (no
  Secrets), so the real helm says `release: not found`, which counts as uninstalled.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from helm_kit import cluster_without_releases, kubeconfig
from pyhelm3 import errors as helm_errors

import ir
from scheduler.deployers.base import DeployError, Deployment
from scheduler.deployers.helm import HelmDeployer, release_name
from scheduler.helm import HelmClient, HelmError, HelmTimeout, is_release_not_found, is_timeout

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "modelops"
DIGITS = ROOT / "examples" / "digits"
JOB_ID = "3f2b6c1e-8f7d-4c52-9d8e-2a1b0c9d8e7f"
TOKEN = "mjt_test-token-that-must-not-leak"

# What helm 3 prints when the release does not exist, and when --wait runs out of time (helm's own text).
RELEASE_NOT_FOUND = "Error: uninstall: Release not loaded: modelops-x: release: not found\n"
TIMED_OUT = (
    "Error: release modelops-x failed, and has been uninstalled due to atomic being set: context deadline exceeded\n"
)


@pytest.fixture
def helm_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The real helm on PATH, its homes under tmp_path, and a kubeconfig of a cluster that is not there."""
    monkeypatch.setenv("PATH", f"{ROOT / '.tools' / 'bin'}:{__import__('os').environ['PATH']}")
    for name in ("HELM_CACHE_HOME", "HELM_CONFIG_HOME", "HELM_DATA_HOME"):
        monkeypatch.setenv(name, str(tmp_path / name.lower()))
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig(tmp_path, "https://127.0.0.1:1")))
    return tmp_path


@pytest.fixture
def empty_cluster(helm_env: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    with cluster_without_releases() as url:
        monkeypatch.setenv("KUBECONFIG", str(kubeconfig(helm_env, url)))
        yield url


@pytest.fixture(scope="module")
def digits_values() -> ir.Values:
    settings = ir.make_globals({"jobId": JOB_ID, "scheduler": {"url": "http://scheduler:8787", "token": TOKEN}})
    return ir.render(ir.load_bundle(DIGITS), {}, settings)


@pytest.fixture
def values_file(tmp_path: Path, digits_values: ir.Values) -> Path:
    path = tmp_path / "values.yaml"
    path.write_text(ir.to_yaml(digits_values))
    return path


# ------------------------------------------------------------------------------------------------ the chart


async def test_the_chart_renders_the_digits_values_with_the_job_label_on_every_object(
    helm_env: Path, values_file: Path, digits_values: ir.Values
) -> None:
    objects = await HelmClient().template_objects(
        release_name(JOB_ID), CHART, values_file, namespace="modelops-examples"
    )
    assert objects, "the chart rendered no object"
    for obj in objects:
        labels = obj["metadata"].get("labels") or {}
        assert labels.get("modelops.io/job-id") == JOB_ID, f"{obj['kind']} {obj['metadata'].get('name')}"
    # the values reached helm: a Deployment per scoring service, a workload per flow, named after them
    text = json.dumps(objects)
    for name in list(digits_values.scoring_services) + list(digits_values.scoring_flows):
        assert name in text


async def test_the_rendered_manifests_never_hold_the_job_token_inline(helm_env: Path, values_file: Path) -> None:
    text = await HelmClient().template(release_name(JOB_ID), CHART, values_file, namespace="modelops-examples")
    assert "kind:" in text
    assert TOKEN not in text


async def test_the_chart_lints_with_the_digits_values(helm_env: Path, values_file: Path) -> None:
    report = await HelmClient().lint(CHART, values_file)
    assert "0 chart(s) failed" in report


async def test_the_chart_is_read_through_pyhelm3(helm_env: Path) -> None:
    chart = await HelmClient().chart(CHART)
    assert chart.name == "modelops"
    assert chart.version


async def test_a_chart_that_is_not_there_is_a_helm_error_naming_it(helm_env: Path, values_file: Path) -> None:
    with pytest.raises(HelmError, match=r"helm template .*no-such-chart.*failed: .*no-such-chart"):
        await HelmClient().template("r", helm_env / "no-such-chart", values_file, namespace="ns")


async def test_a_missing_helm_binary_is_named(values_file: Path) -> None:
    with pytest.raises(HelmError, match="the helm binary 'no-such-helm' is not on PATH"):
        await HelmClient("no-such-helm").template("r", CHART, values_file, namespace="ns")


# ------------------------------------------------------------------------------------------------ no cluster


async def test_install_against_an_unreachable_cluster_fails_with_helms_words_and_the_cause_chained(
    helm_env: Path, values_file: Path
) -> None:
    with pytest.raises(HelmError) as caught:
        await HelmClient().upgrade_install(release_name(JOB_ID), CHART, values_file, namespace="ns", timeout=30)
    assert not isinstance(caught.value, HelmTimeout)
    message = caught.value.message
    assert message.startswith(f"helm upgrade --install {release_name(JOB_ID)} (namespace ns) failed: ")
    assert "Kubernetes cluster unreachable" in message
    assert "127.0.0.1:1" in message
    assert isinstance(caught.value.__cause__, helm_errors.Error)


async def test_uninstall_against_an_unreachable_cluster_is_an_error_not_a_missing_release(helm_env: Path) -> None:
    with pytest.raises(HelmError, match="Kubernetes cluster unreachable"):
        await HelmClient().uninstall("modelops-x", namespace="ns", timeout=30)


async def test_uninstalling_a_release_the_cluster_does_not_hold_counts_as_done(empty_cluster: str) -> None:
    assert await HelmClient().uninstall("modelops-x", namespace="ns", timeout=30) is False
    assert await HelmClient().status("modelops-x", namespace="ns") is None


def test_helms_release_not_found_and_timeout_texts_are_recognised() -> None:
    assert is_release_not_found(RELEASE_NOT_FOUND)
    assert not is_release_not_found('Error: Kubernetes cluster unreachable: Get "https://127.0.0.1:1/version"')
    assert is_timeout(TIMED_OUT)
    assert is_timeout("Error: timed out waiting for the condition")
    assert not is_timeout(RELEASE_NOT_FOUND)


# ------------------------------------------------------------------------------------------------ deployer


async def test_the_helm_deployer_turns_an_unreachable_cluster_into_a_deploy_error(
    helm_env: Path, digits_values: ir.Values
) -> None:
    lines: list[str] = []
    deployer = HelmDeployer(HelmClient(), CHART)
    with pytest.raises(DeployError, match="Kubernetes cluster unreachable"):
        await deployer.deploy(JOB_ID, ir.to_document(digits_values), lines.append)
    assert lines[0].startswith(f"helm upgrade --install {release_name(JOB_ID)} (chart {CHART}, namespace modelops-")
    assert "timeout 300s" in lines[0]  # the digits pipeline's install timeout, 5m
    assert not any(TOKEN in line for line in lines)


async def test_the_helm_deployer_tears_down_a_missing_release_as_done_and_reports_it_gone(
    empty_cluster: str,
) -> None:
    lines: list[str] = []
    deployer = HelmDeployer(HelmClient(), CHART)
    deployment = Deployment(JOB_ID, {"release": release_name(JOB_ID), "namespace": "ns"})
    await deployer.teardown(deployment, 5.0, lines.append)
    assert lines[-1] == f"helm uninstall: release {release_name(JOB_ID)} not found in namespace ns: nothing to remove"
    status = await deployer.status(deployment)
    assert status.state == "failed"
    assert status.message == f"release {release_name(JOB_ID)} no longer exists in namespace ns"
    assert deployer.alive(deployment) is False


async def test_a_release_name_is_unique_per_job_and_fits_helms_limit() -> None:
    one, two = release_name(str(uuid.uuid4())), release_name(str(uuid.uuid4()))
    assert one != two
    assert len(one) == 45 <= 53
