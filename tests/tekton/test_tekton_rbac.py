"""tekton/rbac.yaml: valid Kubernetes (1.30 and the newest schemas kubernetes-validate ships), least privilege,
and enough for `helm upgrade --install --wait --atomic` and `helm uninstall` of charts/modelops.

"Enough" is checked against the chart itself: every kind `helm template` renders for a per-job release (the
scenario files under charts/modelops/ci/, sub-charts excluded: the scheduler sub-chart is off in per-job
releases) must be creatable, patchable and deletable by the Role. A kind the chart starts creating without a
rule here would fail `helm install` on a cluster; this test fails first.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from tekton_kit import ROOT, RUNNER_SERVICE_ACCOUNT, TEKTON, Manifest, load_documents

RBAC = load_documents(TEKTON / "rbac.yaml")
CHART = ROOT / "charts" / "modelops"
CI_SCENARIOS = sorted((CHART / "ci").glob("*.yaml"))

HELM_WRITE = {"get", "list", "watch", "create", "update", "patch", "delete"}
READ = {"get", "list", "watch"}

# kind -> (API group, resource) for every kind a job release may contain.
KIND_RESOURCES = {
    "ConfigMap": ("", "configmaps"),
    "Secret": ("", "secrets"),
    "Service": ("", "services"),
    "PersistentVolumeClaim": ("", "persistentvolumeclaims"),
    "ServiceAccount": ("", "serviceaccounts"),
    "Deployment": ("apps", "deployments"),
    "StatefulSet": ("apps", "statefulsets"),
    "Job": ("batch", "jobs"),
    "CronJob": ("batch", "cronjobs"),
    "NetworkPolicy": ("networking.k8s.io", "networkpolicies"),
    "Ingress": ("networking.k8s.io", "ingresses"),
    "HorizontalPodAutoscaler": ("autoscaling", "horizontalpodautoscalers"),
    "PodDisruptionBudget": ("policy", "poddisruptionbudgets"),
    "ScaledObject": ("keda.sh", "scaledobjects"),
    "TriggerAuthentication": ("keda.sh", "triggerauthentications"),
    "ServiceMonitor": ("monitoring.coreos.com", "servicemonitors"),
    "Role": ("rbac.authorization.k8s.io", "roles"),
    "RoleBinding": ("rbac.authorization.k8s.io", "rolebindings"),
}

# What charts/modelops creates per job (plus helm's own release records in secrets); the chart-rendering test
# below checks the chart itself.
CHART_KINDS = [
    "Deployment",
    "Job",
    "Service",
    "ConfigMap",
    "Secret",
    "PersistentVolumeClaim",
    "NetworkPolicy",
    "HorizontalPodAutoscaler",
    "ScaledObject",
    "TriggerAuthentication",
    "ServiceMonitor",
]


EXAMPLE_PIPELINES = sorted((ROOT / "examples").glob("*/pipeline.yaml"))


def _one(kind: str) -> Manifest:
    (doc,) = [d for d in RBAC if d["kind"] == kind]
    return doc


def _by_namespace(kind: str) -> dict[str, Manifest]:
    docs = [d for d in RBAC if d["kind"] == kind]
    found = {d["metadata"]["namespace"]: d for d in docs}
    assert len(found) == len(docs), f"two {kind}s in one namespace"
    return found


def _role() -> Manifest:
    """The Role of the PipelineRuns' namespace (every other namespace's Role has the same rules)."""
    return _by_namespace("Role")[_one("ServiceAccount")["metadata"]["namespace"]]


def _allowed(group: str, resource: str) -> set[str]:
    verbs: set[str] = set()
    for rule in _role()["rules"]:
        if group in rule.get("apiGroups", []) and resource in rule.get("resources", []):
            verbs |= set(rule["verbs"])
    return verbs


@pytest.mark.parametrize("version", ["1.30.0", kubernetes_validate.latest_version()])
@pytest.mark.parametrize("doc", RBAC, ids=lambda d: f"{d['kind']}/{d['metadata']['name']}")
def test_each_rbac_object_is_valid_kubernetes(doc: Manifest, version: str) -> None:
    kubernetes_validate.validate(doc, version, strict=True)


def test_rbac_is_a_service_account_and_per_namespace_a_role_and_a_binding_of_the_account_to_it() -> None:
    assert {d["metadata"]["name"] for d in RBAC} == {RUNNER_SERVICE_ACCOUNT}
    sa = _one("ServiceAccount")
    roles, bindings = _by_namespace("Role"), _by_namespace("RoleBinding")
    assert sorted(d["kind"] for d in RBAC) == sorted(["ServiceAccount"] + ["Role", "RoleBinding"] * len(roles))
    assert set(bindings) == set(roles)
    assert sa["metadata"]["namespace"] in roles  # the PipelineRuns' own namespace is one of them
    for namespace, binding in bindings.items():
        assert binding["roleRef"] == {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "Role",
            "name": roles[namespace]["metadata"]["name"],
        }
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": sa["metadata"]["name"], "namespace": sa["metadata"]["namespace"]}
        ]


def test_every_namespace_gets_the_same_rules() -> None:
    for namespace, role in _by_namespace("Role").items():
        assert role["rules"] == _role()["rules"], namespace


@pytest.mark.parametrize("pipeline", EXAMPLE_PIPELINES, ids=lambda p: p.parent.name)
def test_the_runner_may_install_into_the_namespace_each_example_declares(pipeline: Path) -> None:
    namespace = yaml.safe_load(pipeline.read_text())["spec"]["environment"]["namespace"]
    assert namespace in _by_namespace("Role"), f"tekton/rbac.yaml grants nothing in {namespace}"
    assert namespace in _by_namespace("RoleBinding"), f"tekton/rbac.yaml binds nothing in {namespace}"


def test_the_role_grants_nothing_wide_and_nothing_that_escalates() -> None:
    for rule in _role()["rules"]:
        assert "*" not in rule["apiGroups"] and "*" not in rule["resources"] and "*" not in rule["verbs"], rule
        assert not {"bind", "escalate", "impersonate", "deletecollection"} & set(rule["verbs"]), rule
        assert not any("/" in resource for resource in rule["resources"]), f"no subresources (pods/exec…): {rule}"
        assert "resourceNames" not in rule and "nonResourceURLs" not in rule, rule


@pytest.mark.parametrize("kind", CHART_KINDS)
def test_the_role_lets_helm_manage_each_kind_the_chart_creates(kind: str) -> None:
    assert _allowed(*KIND_RESOURCES[kind]) == HELM_WRITE


def test_the_role_lets_helm_wait_read_pods_replicasets_and_events_but_not_change_them() -> None:
    assert _allowed("", "pods") == READ
    assert _allowed("apps", "replicasets") == READ
    assert _allowed("", "events") == READ
    assert _allowed("events.k8s.io", "events") == READ


def _helm() -> str:
    path = f"{ROOT / '.tools' / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}"
    helm = shutil.which("helm", path=path)
    if helm is None:
        pytest.fail("helm is not on PATH nor in .tools/bin: run `make tools`")
    return helm


def _job_release_objects(rendered: str) -> list[dict[str, Any]]:
    """Objects of the parent chart only: `# Source: modelops/charts/<sub-chart>/...` documents are skipped."""
    objects = []
    for chunk in rendered.split("\n---"):
        source = next((line for line in chunk.splitlines() if line.startswith("# Source: ")), "")
        if source.startswith(f"# Source: {CHART.name}/charts/"):
            continue
        doc = yaml.safe_load(chunk)
        if isinstance(doc, dict):
            objects.append(doc)
    return objects


@pytest.mark.parametrize("scenario", CI_SCENARIOS, ids=lambda p: p.name)
def test_the_role_covers_every_kind_the_chart_renders_for_a_job(scenario: Path) -> None:
    release = f"modelops-{uuid.uuid4()}"
    result = subprocess.run(
        [_helm(), "template", release, str(CHART), "--namespace", "modelops", "-f", str(scenario)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, f"helm template {scenario.relative_to(ROOT)} failed:\n{result.stderr}"
    for doc in _job_release_objects(result.stdout):
        kind, api_version = doc["kind"], doc["apiVersion"]
        assert kind in KIND_RESOURCES, f"{scenario.name}: the chart renders {kind}: add it to tekton/rbac.yaml"
        group, resource = KIND_RESOURCES[kind]
        assert (api_version.split("/")[0] if "/" in api_version else "") == group, f"{kind} in {api_version}"
        missing = HELM_WRITE - _allowed(group, resource)
        assert not missing, f"{scenario.name}: the chart renders {kind}; modelops-runner lacks {sorted(missing)}"
