"""charts/modelops through the real helm: lint, template, strict validation, and what the objects must say.

Renders: every scenario file of charts/modelops/ci/, both examples as `modelops ir render` prints them, the
chart's own values alone (nothing per job), the scheduler sub-chart alone and as a dependency. Each object is
validated (chart_kit.validate); the assertions below are the chart's promises: labels, selectors, checksums,
security contexts, the job token only in its Secret, NetworkPolicies, HPAs only when enabled, KEDA triggers.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from chart_kit import (
    CHART,
    RELEASE,
    ROOT,
    SUBCHART,
    by_name,
    containers,
    env_of,
    helm,
    of_kind,
    pod_specs,
    template,
    template_text,
    validate,
)
from ci_values import CI_DIR, FAKE_TOKEN, SCENARIOS, scenario_text

from ir.render import PROFILES, Values
from scheduler.settings import SchedulerSettings
from scoring_flows.settings import FlowSettings
from scoring_services.settings import ScoringSettings
from scoring_services.stores.secrets import STORE_SECRET_KEYS
from tests.s3_kit import SECRET_ACCESS_KEY, running_s3

CI_FILES = sorted(CI_DIR.glob("*-values.yaml"))
EXAMPLES = ["digits", "digits-stream"]
LABELS = (
    "app.kubernetes.io/name",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/component",
    "app.kubernetes.io/part-of",
    "app.kubernetes.io/managed-by",
    "app.kubernetes.io/version",
    "helm.sh/chart",
)
SELECTOR_KEYS = {"app.kubernetes.io/name", "app.kubernetes.io/instance", "app.kubernetes.io/component"}


def _load(path: Path) -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(path.read_text())
    return loaded


@pytest.fixture(scope="module")
def example_values(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The examples as `modelops ir render` prints them (the CLI itself, default settings)."""
    folder = tmp_path_factory.mktemp("examples")
    out: dict[str, Path] = {}
    for name in EXAMPLES:
        target = folder / f"{name}.yaml"
        modelops = Path(sys.executable).parent / "modelops"
        subprocess.run(
            [str(modelops), "ir", "render", str(ROOT / "examples" / name), "-o", str(target)],
            check=True,
            capture_output=True,
            timeout=120,
        )
        out[name] = target
    return out


@pytest.fixture(scope="module")
def renders(example_values: dict[str, Path]) -> dict[str, tuple[dict[str, Any], list[dict[str, Any]]]]:
    """name -> (values, rendered objects) of every per-job render."""
    out: dict[str, tuple[dict[str, Any], list[dict[str, Any]]]] = {}
    for path in CI_FILES:
        out[f"ci/{path.name}"] = (_load(path), template(values=[path]))
    for name, path in example_values.items():
        out[f"example/{name}"] = (_load(path), template(values=[path]))
    return out


@pytest.fixture(scope="module")
def platform() -> list[dict[str, Any]]:
    return template(chart=SUBCHART, release="modelops", namespace="modelops")


def _each(renders: dict[str, tuple[dict[str, Any], list[dict[str, Any]]]]) -> list[tuple[str, dict[str, Any]]]:
    return [(name, obj) for name, (_, objects) in renders.items() for obj in objects]


# ---------------------------------------------------------------------------------------------- lint, template


def test_the_scenario_files_are_what_the_generator_writes() -> None:
    stale = [name for name in SCENARIOS if (CI_DIR / name).read_text() != scenario_text(name)]
    assert stale == [], f"out of date: {stale}; regenerate with .venv/bin/python tests/charts/ci_values.py"
    assert {p.name for p in CI_FILES} == set(SCENARIOS)


def test_lint_passes_with_the_charts_own_values_and_nothing_per_job_is_rendered() -> None:
    result = helm("lint", str(CHART), "--strict")
    assert "0 chart(s) failed" in result.stdout
    assert template() == []


@pytest.mark.parametrize("values", CI_FILES, ids=[p.name for p in CI_FILES])
def test_lint_passes_for_every_scenario_file(values: Path) -> None:
    helm("lint", str(CHART), "--strict", "-f", str(values))


def test_lint_passes_for_every_rendered_example(example_values: dict[str, Path]) -> None:
    for path in example_values.values():
        helm("lint", str(CHART), "--strict", "-f", str(path))


def test_lint_passes_for_the_scheduler_sub_chart_alone_and_as_a_dependency() -> None:
    helm("lint", str(SUBCHART), "--strict")
    helm("lint", str(CHART), "--strict", "--set", "scheduler.enabled=true")


def test_every_rendered_object_validates(
    renders: dict[str, tuple[dict[str, Any], list[dict[str, Any]]]], platform: list[dict[str, Any]]
) -> None:
    objects = [obj for _, obj in _each(renders)] + platform
    assert len(objects) > 60
    for obj in objects:
        validate(obj)


def test_values_the_schema_refuses_stop_the_install(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({**_load(CI_DIR / "digits-batch-values.yaml"), "kedaa": {"enabled": True}}))
    result = helm("template", RELEASE, str(CHART), "-f", str(bad), check=False)
    assert result.returncode != 0
    assert "kedaa" in result.stderr


# ---------------------------------------------------------------------------------------------- labels


def test_every_object_carries_the_job_id_and_the_standard_labels(
    renders: dict[str, tuple[dict[str, Any], list[dict[str, Any]]]],
) -> None:
    for name, (values, objects) in renders.items():
        job_id = values["global"]["jobId"]
        assert objects, name
        for obj in objects:
            labels = obj["metadata"]["labels"]
            where = f"{name}: {obj['kind']} {obj['metadata']['name']}"
            assert labels.get("modelops.io/job-id") == job_id, where
            assert [key for key in LABELS if key not in labels] == [], where
            assert labels["app.kubernetes.io/instance"] == RELEASE, where
        for owner, pod in pod_specs(objects):
            assert pod["metadata"]["labels"]["modelops.io/job-id"] == job_id, owner["metadata"]["name"]


def test_selectors_never_carry_the_chart_version(
    renders: dict[str, tuple[dict[str, Any], list[dict[str, Any]]]], platform: list[dict[str, Any]]
) -> None:
    selectors: list[dict[str, str]] = []
    for _, obj in [*_each(renders), *(("platform", o) for o in platform)]:
        if obj["kind"] == "Deployment":
            selectors.append(obj["spec"]["selector"]["matchLabels"])
        elif obj["kind"] == "Service":
            selectors.append(obj["spec"]["selector"])
        elif obj["kind"] == "NetworkPolicy":
            selectors.append(obj["spec"]["podSelector"]["matchLabels"])
    assert len(selectors) > 20
    for selector in selectors:
        assert set(selector) == SELECTOR_KEYS, selector


def test_object_names_are_dns_labels_with_the_45_character_release(
    renders: dict[str, tuple[dict[str, Any], list[dict[str, Any]]]],
) -> None:
    for _, obj in _each(renders):
        assert len(obj["metadata"]["name"]) <= 63, obj["metadata"]["name"]
    long_name = "a" * 40
    values = _load(CI_DIR / "digits-stream-values.yaml")
    values["scoringServices"] = {long_name: {**values["scoringServices"]["digits-rf-onnx"], "name": long_name}}
    for flow in values["scoringFlows"].values():
        flow["services"] = [long_name]
    objects = _template_values(values)
    service = [o for o in of_kind(objects, "Service") if o["metadata"]["name"].endswith(long_name)]
    assert len(service) == 1
    for obj in objects:
        assert len(obj["metadata"]["name"]) <= 63, obj["metadata"]["name"]


def _template_values(values: dict[str, Any], *sets: str) -> list[dict[str, Any]]:
    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as handle:
        handle.write(yaml.safe_dump(values))
        handle.flush()
        return template(values=[Path(handle.name)], sets=sets)


# ---------------------------------------------------------------------------------------------- secrets


def test_the_job_token_appears_only_in_its_secret() -> None:
    for path in CI_FILES:
        assert FAKE_TOKEN in path.read_text()
        text = template_text(values=[path])
        assert FAKE_TOKEN not in text, f"{path.name}: the token is rendered in clear"
        objects = [o for o in yaml.safe_load_all(text) if o]
        holders = []
        for obj in objects:
            if obj["kind"] != "Secret":
                assert FAKE_TOKEN not in json.dumps(obj), f"{path.name}: {obj['kind']} holds the token"
                continue
            for key, encoded in obj.get("data", {}).items():
                if base64.b64decode(encoded).decode() == FAKE_TOKEN:
                    holders.append((obj["metadata"]["name"], key))
        assert holders == [(f"{RELEASE}-job-token", "token")], path.name


def test_values_configmaps_are_the_ir_document_without_the_token(
    renders: dict[str, tuple[dict[str, Any], list[dict[str, Any]]]],
) -> None:
    for name, (values, objects) in renders.items():
        maps = of_kind(objects, "ConfigMap")
        assert len(maps) == len(values["scoringServices"]) + len(values["scoringFlows"]), name
        for config in maps:
            document = yaml.safe_load(config["data"]["values.yaml"])
            assert "token" not in document["global"]["scheduler"], name
            parsed = Values.model_validate(document)  # what the services and flows load
            assert parsed.global_.job_id == values["global"]["jobId"]
            assert set(document) == {"global", "pipeline", "scoringServices", "scoringFlows", "dataChannels"}
            for key in ("pipeline", "scoringServices", "scoringFlows", "dataChannels"):
                assert document[key] == values[key], f"{name}: {key} differs from the values"


def test_credentials_reach_containers_only_through_secret_references(
    renders: dict[str, tuple[dict[str, Any], list[dict[str, Any]]]],
) -> None:
    _values, objects = renders["ci/channels-values.yaml"]
    seen: set[str] = set()
    for _owner, pod in pod_specs(objects):
        for container in containers(pod):
            for env_name, entry in env_of(container).items():
                if env_name.startswith("MODELOPS_SECRET_") or env_name == "MODELOPS_JOB_TOKEN":
                    assert "value" not in entry and "secretKeyRef" in entry["valueFrom"], env_name
                    seen.add(env_name)
    assert {
        "MODELOPS_SECRET_AMQP_URL",
        "MODELOPS_SECRET_REDIS_MAIN_URL",
        "MODELOPS_SECRET_PG_MAIN_DSN",
        "MODELOPS_JOB_TOKEN",
    } <= seen
    events = by_name(objects, "Deployment", f"{RELEASE}-events")
    env = env_of(events["spec"]["template"]["spec"]["containers"][0])
    assert env["MODELOPS_SECRET_REDIS_MAIN_URL"]["valueFrom"]["secretKeyRef"] == {"name": "redis-main", "key": "url"}
    assert "MODELOPS_SECRET_AMQP_URL" not in env  # only the credentials of its own channels


# ---------------------------------------------------------------------------------------------- pods


def test_every_pod_is_locked_down(
    renders: dict[str, tuple[dict[str, Any], list[dict[str, Any]]]], platform: list[dict[str, Any]]
) -> None:
    pods = [*pod_specs(o for _, o in _each(renders)), *pod_specs(platform)]
    assert len(pods) > 10
    for owner, pod in pods:
        spec = pod["spec"]
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        mounts_tmp = any(v["name"] == "tmp" and "emptyDir" in v for v in spec["volumes"])
        assert mounts_tmp, owner["metadata"]["name"]
        for container in containers(pod):
            context = container["securityContext"]
            where = f"{owner['metadata']['name']}/{container['name']}"
            assert context["readOnlyRootFilesystem"] is True, where
            assert context["allowPrivilegeEscalation"] is False, where
            assert context["runAsNonRoot"] is True, where
            assert context["capabilities"] == {"drop": ["ALL"]}, where
            assert context["seccompProfile"] == {"type": "RuntimeDefault"}, where
            assert {"mountPath": "/tmp", "name": "tmp"} in container["volumeMounts"], where
            assert container["resources"]["requests"], where


def test_missing_requests_come_from_the_size_profile() -> None:
    values = _load(CI_DIR / "digits-batch-values.yaml")
    values["global"]["sizeProfile"] = "large"
    values["scoringServices"]["digits-rf"]["resources"] = {"limits": {"memory": "3Gi"}}
    objects = _template_values(values)
    deployment = by_name(objects, "Deployment", f"{RELEASE}-digits-rf")
    server = deployment["spec"]["template"]["spec"]["containers"][0]
    assert server["resources"] == {
        "requests": PROFILES["large"]["requests"],
        "limits": {"cpu": PROFILES["large"]["limits"]["cpu"], "memory": "3Gi"},
    }


def test_checksums_are_the_hash_of_the_mounted_values_and_change_with_them(
    renders: dict[str, tuple[dict[str, Any], list[dict[str, Any]]]],
) -> None:
    for name, (_, objects) in renders.items():
        for _owner, pod in pod_specs(objects):
            config = next(v["configMap"]["name"] for v in pod["spec"]["volumes"] if v["name"] == "values")
            text = by_name(objects, "ConfigMap", config)["data"]["values.yaml"]
            expected = hashlib.sha256(text.rstrip("\n").encode()).hexdigest()
            assert pod["metadata"]["annotations"]["checksum/config"] == expected, name
    values = _load(CI_DIR / "digits-batch-values.yaml")
    before = _template_values(values)
    values["global"]["logLevel"] = "debug"
    after = _template_values(values)

    def checksum(objects: list[dict[str, Any]]) -> str:
        pod = by_name(objects, "Deployment", f"{RELEASE}-digits-rf")["spec"]["template"]
        annotation: str = pod["metadata"]["annotations"]["checksum/config"]
        return annotation

    assert checksum(before) != checksum(after)


def test_scoring_services_fetch_their_model_into_a_persistent_cache_and_probe_health(
    renders: dict[str, tuple[dict[str, Any], list[dict[str, Any]]]],
) -> None:
    values, objects = renders["ci/digits-batch-values.yaml"]
    for name in values["scoringServices"]:
        deployment = by_name(objects, "Deployment", f"{RELEASE}-{name}")
        spec = deployment["spec"]["template"]["spec"]
        (init,) = spec["initContainers"]
        assert init["command"][:2] == ["python", "-c"] and init["command"][-2:] == [name, "/var/cache/modelops/models"]
        (server,) = spec["containers"]
        assert server["args"] == ["modelops", "scoring-service", "--values", "/etc/modelops/values.yaml",
                                  "--service", name, "--port", "8080"]  # fmt: skip
        assert server["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": "http"}
        assert server["livenessProbe"]["httpGet"] == {"path": "/v2/health/live", "port": "http"}
        cache = next(v for v in spec["volumes"] if v["name"] == "model-cache")
        by_name(objects, "PersistentVolumeClaim", cache["persistentVolumeClaim"]["claimName"])
        service = by_name(objects, "Service", f"{RELEASE}-{name}")
        assert service["spec"]["ports"] == [{"name": "http", "port": 8080, "targetPort": "http", "protocol": "TCP"}]
        assert deployment["spec"]["replicas"] == values["scoringServices"][name]["replicas"]


def test_the_init_container_script_fetches_an_artifact(tmp_path: Path) -> None:
    """The fetch-model script, run as the init container runs it, against a file:// artifact with its sha256."""
    objects = template(values=[CI_DIR / "digits-batch-values.yaml"])
    init = by_name(objects, "Deployment", f"{RELEASE}-digits-rf")["spec"]["template"]["spec"]["initContainers"][0]
    artifact = tmp_path / "model.bin"
    artifact.write_bytes(b"weights")
    values = _load(CI_DIR / "digits-batch-values.yaml")
    model = values["scoringServices"]["digits-rf"]["model"]
    model["uri"], model["sha256"] = artifact.as_uri(), hashlib.sha256(b"weights").hexdigest()
    document = tmp_path / "values.yaml"
    document.write_text(yaml.safe_dump(values))
    script = init["command"][2]
    ok = subprocess.run([sys.executable, "-c", script, str(document), "digits-rf", str(tmp_path / "cache")],
                        capture_output=True, text=True, timeout=60)  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    assert "ready" in ok.stdout
    model["sha256"] = "0" * 64
    document.write_text(yaml.safe_dump(values))
    bad = subprocess.run([sys.executable, "-c", script, str(document), "digits-rf", str(tmp_path / "cache")],
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    assert bad.returncode != 0
    assert "sha256 mismatch" in bad.stderr


def _store_values() -> dict[str, Any]:
    """The digits batch scenario with one model in S3 and the other in an MLflow registry, each naming a Secret."""
    values = _load(CI_DIR / "digits-batch-values.yaml")
    s3_model = values["scoringServices"]["digits-rf"]["model"]
    s3_model["uri"], s3_model["credentials"] = "s3://models/digits/model.joblib", {"secretRef": {"name": "minio"}}
    registry = values["scoringServices"]["digits-rf-onnx"]["model"]
    registry["uri"], registry["credentials"] = "models:/digits-onnx@champion", {"secretRef": {"name": "mlflow.main"}}
    return values


def test_a_model_in_s3_or_an_mlflow_registry_reads_the_keys_of_its_secret_and_may_reach_its_store() -> None:
    objects = _template_values(_store_values())
    for obj in objects:
        validate(obj)
    wanted = {
        "digits-rf": ("minio", "MODELOPS_SECRET_MINIO_", STORE_SECRET_KEYS["s3"]),
        "digits-rf-onnx": ("mlflow.main", "MODELOPS_SECRET_MLFLOW_MAIN_", STORE_SECRET_KEYS["models"]),
    }
    for name, (secret, prefix, keys) in wanted.items():
        spec = by_name(objects, "Deployment", f"{RELEASE}-{name}")["spec"]["template"]["spec"]
        for container in [*spec["initContainers"], *spec["containers"]]:
            env = env_of(container)
            secrets = {k: v for k, v in env.items() if k.startswith("MODELOPS_SECRET_")}
            assert set(secrets) == {prefix + key.upper().replace("-", "_") for key in keys}, container["name"]
            for variable, key in zip(sorted(secrets), sorted(keys, key=lambda k: prefix + k.upper()), strict=True):
                reference = secrets[variable]["valueFrom"]["secretKeyRef"]
                assert reference == {"name": secret, "key": key, "optional": True}, variable
                assert "value" not in secrets[variable]
        policy = by_name(objects, "NetworkPolicy", f"{RELEASE}-{name}")
        assert {"ports": [{"port": 443, "protocol": "TCP"}, {"port": 80, "protocol": "TCP"}]} in policy["spec"][
            "egress"
        ], name
    plain = template(values=[CI_DIR / "digits-batch-values.yaml"])  # https:// models, no credentials
    for name in wanted:
        spec = by_name(plain, "Deployment", f"{RELEASE}-{name}")["spec"]["template"]["spec"]
        for container in [*spec["initContainers"], *spec["containers"]]:
            assert not [k for k in env_of(container) if k.startswith("MODELOPS_SECRET_")], container["name"]


def test_the_init_container_script_fetches_an_s3_artifact_with_the_secrets_credentials(tmp_path: Path) -> None:
    """The fetch-model script, run as the init container runs it, against a real S3 server (moto_server), with
    the Secret's keys in the environment the chart gives it."""
    values = _store_values()
    init = by_name(_template_values(values), "Deployment", f"{RELEASE}-digits-rf")["spec"]["template"]["spec"][
        "initContainers"
    ][0]
    data = b"weights in a bucket"
    values["scoringServices"]["digits-rf"]["model"]["sha256"] = hashlib.sha256(data).hexdigest()
    document = tmp_path / "values.yaml"
    document.write_text(yaml.safe_dump(values))
    script, cache = init["command"][2], tmp_path / "cache"
    with running_s3(tmp_path / "moto") as server:
        client = server.client()
        client.create_bucket(Bucket="models")
        client.put_object(Bucket="models", Key="digits/model.joblib", Body=data)
        environ = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "MODELOPS_SECRET_"))}
        environ |= {"HOME": str(tmp_path), **server.secret_env("minio")}
        run = [sys.executable, "-c", script, str(document), "digits-rf", str(cache)]
        ok = subprocess.run(run, capture_output=True, text=True, timeout=60, env=environ)
        assert ok.returncode == 0, ok.stderr
        assert f"s3://models/digits/model.joblib ready at {cache / hashlib.sha256(data).hexdigest()}" in ok.stdout
        assert (cache / hashlib.sha256(data).hexdigest()).read_bytes() == data
        before = len(server.requests())
        again = subprocess.run(run, capture_output=True, text=True, timeout=60, env=environ)
        assert again.returncode == 0 and len(server.requests()) == before  # from the cache, the store not asked
        model = values["scoringServices"]["digits-rf"]["model"]
        model["uri"], model["sha256"] = "s3://models/digits/absent.joblib", "1" * 64
        document.write_text(yaml.safe_dump(values))
        missing = subprocess.run(run, capture_output=True, text=True, timeout=60, env=environ)
    assert missing.returncode != 0
    assert "fetch-model digits-rf: s3://models/digits/absent.joblib (endpoint http://127.0.0.1:" in missing.stderr
    assert "no object 'digits/absent.joblib' and no objects under 'digits/absent.joblib/'" in missing.stderr
    assert SECRET_ACCESS_KEY not in ok.stdout + ok.stderr + missing.stderr


def test_flows_are_jobs_in_batch_mode_and_deployments_when_streaming(
    renders: dict[str, tuple[dict[str, Any], list[dict[str, Any]]]],
) -> None:
    for name, (values, objects) in renders.items():
        mode = values["pipeline"]["mode"]
        for flow_name, flow in values["scoringFlows"].items():
            kind = "Job" if mode == "batch" else "Deployment"
            owner = by_name(objects, kind, f"{RELEASE}-{flow_name}")
            pod = owner["spec"]["template"]["spec"]
            volumes = {v["name"]: v for v in pod["volumes"]}
            if mode == "batch":
                assert owner["spec"]["backoffLimit"] == 3  # from the checkpoint PVC (next test)
                assert owner["spec"]["activeDeadlineSeconds"] == values["pipeline"]["timeoutSeconds"]["wait"]
                assert pod["restartPolicy"] == "Never"
                claim = volumes["checkpoints"]["persistentVolumeClaim"]["claimName"]
                assert claim.endswith(f"-{flow_name}-checkpoints")  # the release part is cut to fit 63
                by_name(objects, "PersistentVolumeClaim", claim)
            else:
                assert volumes["checkpoints"] == {"name": "checkpoints", "emptyDir": {}}
            (container,) = pod["containers"]
            assert container["args"] == ["modelops", "flow", "--values", "/etc/modelops/values.yaml", "--flow",
                                         flow_name]  # fmt: skip
            env = env_of(container)
            assert env["MODELOPS_JOB_ID"]["value"] == values["global"]["jobId"]
            assert env["MODELOPS_COMPONENT"]["value"] == flow_name
            token = env["MODELOPS_JOB_TOKEN"]["valueFrom"]["secretKeyRef"]
            assert (token["name"], token["key"]) == (f"{RELEASE}-job-token", "token")
            if values["global"]["scheduler"].get("token"):
                by_name(objects, "Secret", token["name"])
            urls = json.loads(env["MODELOPS_SERVICE_URLS"]["value"])
            assert list(urls) == flow["services"], name
            for service, url in urls.items():
                assert url == f"http://{RELEASE}-{service}:8080"
                by_name(objects, "Service", f"{RELEASE}-{service}")


def test_a_batch_flow_is_retried_from_its_checkpoint_claim_but_never_after_it_failed_for_a_reason(
    renders: dict[str, tuple[dict[str, Any], list[dict[str, Any]]]],
) -> None:
    _, objects = renders["ci/digits-batch-values.yaml"]
    job = by_name(objects, "Job", f"{RELEASE}-digits-batch")
    assert job["spec"]["podFailurePolicy"] == {
        "rules": [
            {"action": "FailJob", "onExitCodes": {"containerName": "flow", "operator": "In", "values": [1, 2]}},
            {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
        ]
    }
    (container,) = job["spec"]["template"]["spec"]["containers"]
    assert container["name"] == "flow"  # what onExitCodes names
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert mounts["checkpoints"] == env_of(container)["MODELOPS_FLOW_CHECKPOINT_DIR"]["value"]
    volumes = {v["name"]: v for v in job["spec"]["template"]["spec"]["volumes"]}
    checkpoints = volumes["checkpoints"]["persistentVolumeClaim"]["claimName"]
    claim = by_name(objects, "PersistentVolumeClaim", checkpoints)
    assert claim["spec"] == {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "100Mi"}}}
    assert "helm.sh/resource-policy" not in claim["metadata"].get("annotations", {})  # goes with the release
    tuned = template(
        values=[CI_DIR / "digits-batch-values.yaml"],
        sets=["scoringFlow.backoffLimit=5", "scoringFlow.checkpoint.persistence.storageClass=fast",
              "scoringFlow.checkpoint.persistence.size=1Gi"],
    )  # fmt: skip
    assert by_name(tuned, "Job", f"{RELEASE}-digits-batch")["spec"]["backoffLimit"] == 5
    claim = by_name(tuned, "PersistentVolumeClaim", checkpoints)
    assert (claim["spec"]["storageClassName"], claim["spec"]["resources"]["requests"]["storage"]) == ("fast", "1Gi")
    for obj in tuned:
        validate(obj)
    # Without the claim a new pod would start over (a SQL sink would get its rows again): no retry at all.
    off = template(values=[CI_DIR / "digits-batch-values.yaml"],
                   sets=["scoringFlow.checkpoint.persistence.enabled=false", "scoringFlow.backoffLimit=5"])  # fmt: skip
    job = by_name(off, "Job", f"{RELEASE}-digits-batch")
    assert job["spec"]["backoffLimit"] == 0 and "podFailurePolicy" not in job["spec"]
    volumes = {v["name"]: v for v in job["spec"]["template"]["spec"]["volumes"]}
    assert volumes["checkpoints"] == {"name": "checkpoints", "emptyDir": {}}
    claims = {o["metadata"]["name"] for o in of_kind(off, "PersistentVolumeClaim")}
    assert checkpoints not in claims
    refused = helm("template", RELEASE, str(CHART), "-f", str(CI_DIR / "digits-batch-values.yaml"),
                   "--set", "scoringFlow.backoffLimit=-1", check=False)  # fmt: skip
    assert refused.returncode != 0 and "backoffLimit" in refused.stderr


def test_environment_variables_are_settings_the_components_read(
    renders: dict[str, tuple[dict[str, Any], list[dict[str, Any]]]], platform: list[dict[str, Any]]
) -> None:
    prefixes: dict[str, set[str]] = {
        "MODELOPS_SCORING_": set(ScoringSettings.model_fields),
        "MODELOPS_FLOW_": set(FlowSettings.model_fields) | {"http_host", "http_port"},  # data_channel/http.py
        "MODELOPS_SCHEDULER_": set(SchedulerSettings.model_fields),
    }
    objects = [o for _, o in _each(renders)] + platform
    checked = 0
    for _, pod in pod_specs(objects):
        for container in containers(pod):
            for env_name in env_of(container):
                for prefix, fields in prefixes.items():
                    if env_name.startswith(prefix):
                        assert env_name.removeprefix(prefix).lower() in fields, env_name
                        checked += 1
    assert checked > 20


def test_file_channels_are_mounted_from_claims_and_outputs_outlive_the_release(
    renders: dict[str, tuple[dict[str, Any], list[dict[str, Any]]]],
) -> None:
    _, objects = renders["ci/digits-batch-values.yaml"]
    job = by_name(objects, "Job", f"{RELEASE}-digits-batch")
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert container["workingDir"] == "/data"
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert mounts["/data/data"]["readOnly"] is True  # data/digits.csv: the source
    assert mounts["/data/out"]["readOnly"] is False  # out/scored.csv: the sink
    output = by_name(objects, "PersistentVolumeClaim", f"{RELEASE}-data-digits-out")
    assert output["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    source = by_name(objects, "PersistentVolumeClaim", f"{RELEASE}-data-digits-in")
    assert "helm.sh/resource-policy" not in source["metadata"].get("annotations", {})
    _, scaled = renders["ci/autoscaling-values.yaml"]
    claims = {o["metadata"]["name"] for o in of_kind(scaled, "PersistentVolumeClaim")}
    assert f"{RELEASE}-data-digits-in" not in claims  # persistence.fileChannels.existingClaims names one
    job = by_name(scaled, "Job", f"{RELEASE}-digits-batch")
    volumes = {v["name"]: v for v in job["spec"]["template"]["spec"]["volumes"]}
    assert volumes["data-digits-in"]["persistentVolumeClaim"]["claimName"] == "digits-input"


# ---------------------------------------------------------------------------------------------- scaling


def _targets(objects: list[dict[str, Any]], kind: str) -> set[str]:
    return {o["spec"]["scaleTargetRef"]["name"] for o in of_kind(objects, kind)}


def test_an_hpa_exists_only_for_services_with_autoscaling_enabled_and_not_scaled_by_keda(
    renders: dict[str, tuple[dict[str, Any], list[dict[str, Any]]]],
) -> None:
    for name, (values, objects) in renders.items():
        keda = _targets(objects, "ScaledObject")
        enabled = {f"{RELEASE}-{s}" for s, v in values["scoringServices"].items() if v["autoscaling"]["enabled"]}
        assert _targets(objects, "HorizontalPodAutoscaler") == enabled - keda, name
        for deployment in of_kind(objects, "Deployment"):
            scaled = deployment["metadata"]["name"] in enabled | keda
            assert ("replicas" in deployment["spec"]) is not scaled, deployment["metadata"]["name"]
    assert of_kind(renders["ci/digits-batch-values.yaml"][1], "HorizontalPodAutoscaler") == []
    (hpa,) = of_kind(renders["ci/autoscaling-values.yaml"][1], "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"]["name"] == f"{RELEASE}-digits-rf"
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 8)
    assert hpa["spec"]["metrics"][0]["resource"]["target"] == {"type": "Utilization", "averageUtilization": 60}


def test_keda_scales_on_queue_length_and_prometheus_only_when_enabled(
    renders: dict[str, tuple[dict[str, Any], list[dict[str, Any]]]],
) -> None:
    assert of_kind(renders["ci/digits-stream-values.yaml"][1], "ScaledObject") == []  # keda off by default
    _, objects = renders["ci/channels-values.yaml"]
    (scaled,) = of_kind(objects, "ScaledObject")
    triggers = {t["type"]: t for t in scaled["spec"]["triggers"]}
    assert set(triggers) == {"rabbitmq", "redis-streams", "cpu"}
    assert triggers["rabbitmq"]["metadata"] == {"protocol": "amqp", "queueName": "orders", "mode": "QueueLength",
                                                "value": "50"}  # fmt: skip
    assert triggers["redis-streams"]["metadata"]["stream"] == "events"
    auths = {o["metadata"]["name"]: o for o in of_kind(objects, "TriggerAuthentication")}
    rabbit = auths[triggers["rabbitmq"]["authenticationRef"]["name"]]
    assert rabbit["spec"]["secretTargetRef"] == [{"parameter": "host", "name": "amqp", "key": "url"}]
    redis = auths[triggers["redis-streams"]["authenticationRef"]["name"]]
    assert {r["parameter"] for r in redis["spec"]["secretTargetRef"]} == {"address", "password"}
    _, objects = renders["ci/autoscaling-values.yaml"]
    (scaled,) = of_kind(objects, "ScaledObject")
    assert scaled["spec"]["scaleTargetRef"]["name"] == f"{RELEASE}-digits-rf-onnx"
    assert [t["type"] for t in scaled["spec"]["triggers"]] == ["prometheus"]


def test_every_trigger_authentication_matches_the_strict_keda_schema_which_refuses_a_misspelt_field(
    renders: dict[str, tuple[dict[str, Any], list[dict[str, Any]]]],
) -> None:
    auths = [obj for _, (_, objects) in renders.items() for obj in of_kind(objects, "TriggerAuthentication")]
    assert {ref["parameter"] for auth in auths for ref in auth["spec"]["secretTargetRef"]} == {
        "host", "address", "password"
    }  # fmt: skip
    for auth in auths:
        validate(auth)
    broken = json.loads(json.dumps(auths[0]))
    ref = broken["spec"]["secretTargetRef"][0]
    ref["paramter"] = ref.pop("parameter")
    with pytest.raises(pytest.fail.Exception, match=r"triggerauthentication_v1alpha1\.json: spec\.secretTargetRef\.0"):
        validate(broken)


def test_a_service_monitor_only_when_enabled(renders: dict[str, tuple[dict[str, Any], list[dict[str, Any]]]]) -> None:
    for name, (values, objects) in renders.items():
        monitors = of_kind(objects, "ServiceMonitor")
        assert len(monitors) == int(values.get("serviceMonitor", {}).get("enabled", False)), name
    (monitor,) = of_kind(renders["ci/autoscaling-values.yaml"][1], "ServiceMonitor")
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    flow_service = by_name(renders["ci/autoscaling-values.yaml"][1], "Service", f"{RELEASE}-digits-batch")
    assert [p["name"] for p in flow_service["spec"]["ports"]] == ["metrics"]


# ---------------------------------------------------------------------------------------------- network


def _selects(policy: dict[str, Any], labels: dict[str, str]) -> bool:
    wanted = policy["spec"]["podSelector"]["matchLabels"]
    return all(labels.get(k) == v for k, v in wanted.items())


def test_every_pod_is_covered_by_a_network_policy_and_flows_reach_only_their_services(
    renders: dict[str, tuple[dict[str, Any], list[dict[str, Any]]]],
) -> None:
    for name, (values, objects) in renders.items():
        policies = of_kind(objects, "NetworkPolicy")
        for owner, pod in pod_specs(objects):
            covering = [p for p in policies if _selects(p, pod["metadata"]["labels"])]
            assert len(covering) == 1, f"{name}: {owner['metadata']['name']}"
            assert covering[0]["spec"]["policyTypes"] == ["Ingress", "Egress"]
        for flow_name, flow in values["scoringFlows"].items():
            policy = by_name(objects, "NetworkPolicy", f"{RELEASE}-{flow_name}")
            egress = policy["spec"]["egress"]
            to_services = egress[0]["to"][0]["podSelector"]["matchExpressions"][0]["values"]
            assert to_services == [f"scoring-service-{s}" for s in flow["services"]]
            assert egress[1]["ports"] == [{"port": 8787, "protocol": "TCP"}]  # the scheduler
            assert {p["protocol"] for p in egress[2]["ports"]} == {"UDP", "TCP"}  # DNS
            extra = values.get("networkPolicy", {}).get("flowEgress", [])
            assert egress[3:] == extra
        for service_name in values["scoringServices"]:
            policy = by_name(objects, "NetworkPolicy", f"{RELEASE}-{service_name}")
            callers = [f"scoring-flow-{f}" for f, v in values["scoringFlows"].items() if service_name in v["services"]]
            rule = policy["spec"]["ingress"][0]
            assert rule["from"][0]["podSelector"]["matchExpressions"][0]["values"] == callers
            assert rule["ports"] == [{"port": 8080, "protocol": "TCP"}]


def test_a_network_policy_can_be_switched_off() -> None:
    objects = template(values=[CI_DIR / "digits-batch-values.yaml"], sets=["networkPolicy.enabled=false"])
    assert of_kind(objects, "NetworkPolicy") == []


# ---------------------------------------------------------------------------------------------- scheduler sub-chart


def test_the_platform_runs_the_tekton_backend_with_its_database_url_from_a_secret(
    platform: list[dict[str, Any]],
) -> None:
    deployment = by_name(platform, "Deployment", "modelops-scheduler")
    server = deployment["spec"]["template"]["spec"]["containers"][0]
    assert server["args"] == ["modelops", "serve"]
    env = env_of(server)
    assert env["MODELOPS_SCHEDULER_BACKEND"]["value"] == "tekton"
    assert env["MODELOPS_SCHEDULER_HOST"]["value"] == "0.0.0.0"
    assert env["MODELOPS_SCHEDULER_PORT"]["value"] == "8787"
    assert env["MODELOPS_SCHEDULER_DATABASE_URL"]["valueFrom"]["secretKeyRef"] == {
        "name": "modelops-database",
        "key": "url",
    }
    assert env["MODELOPS_SCHEDULER_TEKTON_NAMESPACE"]["value"] == "modelops"
    assert deployment["spec"]["template"]["spec"]["serviceAccountName"] == "modelops-scheduler"
    assert "MODELOPS_SCHEDULER_JOB_TOKEN_SECRET" not in env
    secret_ref = template(
        chart=SUBCHART,
        release="modelops",
        namespace="modelops",
        sets=["server.jobTokenSecret.name=modelops-job-tokens", "server.jobTokenSecret.key=secret"],
    )
    env = env_of(by_name(secret_ref, "Deployment", "modelops-scheduler")["spec"]["template"]["spec"]["containers"][0])
    assert env["MODELOPS_SCHEDULER_JOB_TOKEN_SECRET"]["valueFrom"]["secretKeyRef"] == {
        "name": "modelops-job-tokens",
        "key": "secret",
    }
    assert of_kind(platform, "Ingress") == []
    with_ingress = template(chart=SUBCHART, release="modelops", namespace="modelops", sets=["ingress.enabled=true"])
    (ingress,) = of_kind(with_ingress, "Ingress")
    validate(ingress)


def test_the_platform_rbac_lets_the_server_run_pipelineruns_and_nothing_more(platform: list[dict[str, Any]]) -> None:
    role = by_name(platform, "Role", "modelops-scheduler")
    rules = {(r["apiGroups"][0], resource): set(r["verbs"]) for r in role["rules"] for resource in r["resources"]}
    assert rules == {
        ("tekton.dev", "pipelineruns"): {"create", "get", "list", "watch", "patch", "delete"},
        ("tekton.dev", "taskruns"): {"get", "list", "watch"},
        ("", "pods"): {"get", "list", "watch"},
        ("", "pods/log"): {"get"},
        ("", "secrets"): {"create", "get", "patch", "delete"},
    }
    runner = by_name(platform, "Role", "modelops-runner")
    resources = {res for r in runner["rules"] for res in r["resources"]}
    per_job_kinds = {"configmaps", "secrets", "services", "persistentvolumeclaims", "deployments", "jobs",
                     "networkpolicies", "horizontalpodautoscalers", "scaledobjects", "triggerauthentications",
                     "servicemonitors"}  # fmt: skip
    assert per_job_kinds <= resources  # helm can create everything charts/modelops renders


def _tekton_documents() -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for path in sorted((SUBCHART / "files" / "tekton").glob("*.yaml")):
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


def test_the_tekton_pipeline_and_tasks_are_rendered_from_the_files(platform: list[dict[str, Any]]) -> None:
    expected = {(d["kind"], d["metadata"]["name"]) for d in _tekton_documents()}
    rendered = {(o["kind"], o["metadata"]["name"]) for o in platform if o["apiVersion"].startswith("tekton.dev/")}
    assert rendered == expected
    if expected:
        assert ("Pipeline", "modelops-scoring") in rendered
    for obj in platform:
        if obj["apiVersion"].startswith("tekton.dev/"):
            assert obj["metadata"]["namespace"] == "modelops"
            assert obj["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "Helm"


@pytest.fixture
def chart_copy(tmp_path: Path) -> Callable[[dict[str, str]], Path]:
    """A copy of the sub-chart whose files/tekton holds the given files instead."""

    def make(files: dict[str, str]) -> Path:
        target = tmp_path / "scheduler"
        shutil.copytree(SUBCHART, target, ignore=shutil.ignore_patterns("files"))
        (target / "files" / "tekton").mkdir(parents=True)
        for name, text in files.items():
            (target / "files" / "tekton" / name).write_text(text)
        return target

    return make


def test_an_empty_tekton_folder_renders_no_tekton_objects(chart_copy: Callable[[dict[str, str]], Path]) -> None:
    objects = template(chart=chart_copy({}), release="modelops", namespace="modelops")
    assert [o for o in objects if o["apiVersion"].startswith("tekton.dev/")] == []
    assert of_kind(objects, "Deployment")


def test_tekton_files_with_several_documents_comments_and_params_render_as_written(
    chart_copy: Callable[[dict[str, str]], Path],
) -> None:
    text = (
        "# comment only\n---\napiVersion: tekton.dev/v1\nkind: Task\nmetadata:\n  name: a\n  namespace: elsewhere\n"
        "spec:\n  params: [{name: x, type: string}]\n  steps:\n    - name: s\n      image: busybox\n"
        '      script: |\n        echo "$(params.x)" {{ not a template }}\n---\n---\n'
        "apiVersion: tekton.dev/v1\nkind: Task\nmetadata: {name: b}\nspec:\n  steps: [{name: s, image: busybox}]\n"
    )
    objects = template(chart=chart_copy({"tasks.yaml": text}), release="modelops", namespace="modelops")
    tasks = {o["metadata"]["name"]: o for o in of_kind(objects, "Task")}
    assert set(tasks) == {"a", "b"}
    assert tasks["a"]["metadata"]["namespace"] == "modelops"
    assert tasks["a"]["spec"]["steps"][0]["script"] == 'echo "$(params.x)" {{ not a template }}\n'
    for task in tasks.values():
        validate(task)


def test_a_tekton_file_that_is_not_a_kubernetes_object_stops_the_render_naming_it(
    chart_copy: Callable[[dict[str, str]], Path],
) -> None:
    chart = chart_copy({"broken.yaml": "just: a map\n"})
    result = helm("template", "modelops", str(chart), check=False)
    assert result.returncode != 0
    assert "files/tekton/broken.yaml" in result.stderr


def test_the_sub_chart_is_off_in_per_job_releases_and_on_when_enabled() -> None:
    objects = template(values=[CI_DIR / "digits-batch-values.yaml"])
    assert not any(o["metadata"]["labels"]["app.kubernetes.io/name"] == "modelops-scheduler" for o in objects)
    enabled = template(sets=["scheduler.enabled=true"], release="modelops", namespace="modelops")
    assert by_name(enabled, "Deployment", "modelops-scheduler")
    assert all(o["metadata"]["labels"]["app.kubernetes.io/name"] == "modelops-scheduler" for o in enabled)


def test_the_ingress_sends_every_path_of_its_host_to_the_server_for_the_web_ui_the_api_and_their_streams(
    tmp_path: Path,
) -> None:
    values = tmp_path / "ingress.yaml"
    annotations = {
        "nginx.ingress.kubernetes.io/proxy-buffering": "off",  # what the values comments suggest for SSE
        "nginx.ingress.kubernetes.io/proxy-read-timeout": "3600",
    }
    ingress_values = {"enabled": True, "className": "nginx", "host": "modelops.corp.example", "tlsSecret": "tls",
                      "annotations": annotations}  # fmt: skip
    values.write_text(yaml.safe_dump({"ingress": ingress_values}))
    rendered = template(chart=SUBCHART, values=[values], release="modelops", namespace="modelops")
    (ingress,) = of_kind(rendered, "Ingress")
    validate(ingress)
    assert ingress["metadata"]["annotations"] == annotations
    assert ingress["spec"]["ingressClassName"] == "nginx"
    assert ingress["spec"]["tls"] == [{"hosts": ["modelops.corp.example"], "secretName": "tls"}]
    (rule,) = ingress["spec"]["rules"]
    assert rule["host"] == "modelops.corp.example"
    (path,) = rule["http"]["paths"]
    assert (path["path"], path["pathType"]) == ("/", "Prefix")  # /ui, /api/v1, /docs and the event streams
    service = by_name(rendered, "Service", path["backend"]["service"]["name"])
    (port,) = service["spec"]["ports"]
    assert path["backend"]["service"]["port"] == {"name": port["name"]}
    (container,) = by_name(rendered, "Deployment", "modelops-scheduler")["spec"]["template"]["spec"]["containers"]
    assert {"name": port["targetPort"], "containerPort": 8787, "protocol": "TCP"} in container["ports"]
    plain = of_kind(template(chart=SUBCHART, release="modelops", namespace="modelops", sets=["ingress.enabled=true"]),
                    "Ingress")[0]  # fmt: skip
    assert "ingressClassName" not in plain["spec"] and "tls" not in plain["spec"]  # the cluster default, no TLS
    assert "annotations" not in plain["metadata"]
    through_parent = template(sets=["scheduler.enabled=true", "scheduler.ingress.enabled=true"], release="modelops",
                              namespace="modelops")  # fmt: skip
    validate(by_name(through_parent, "Ingress", "modelops-scheduler"))
    helm("lint", str(SUBCHART), "--strict", "-f", str(values))
    misspelt = helm("template", "modelops", str(SUBCHART), "--set", "ingress.tls=true", check=False)
    assert misspelt.returncode != 0 and "tls" in misspelt.stderr  # the schema is strict: tlsSecret is the key


def test_the_platform_runs_one_server_with_several_api_workers_replaced_not_doubled(
    platform: list[dict[str, Any]],
) -> None:
    (server,) = of_kind(platform, "Deployment")
    assert server["spec"]["replicas"] == 1
    assert server["spec"]["strategy"] == {"type": "Recreate"}
    (container,) = server["spec"]["template"]["spec"]["containers"]
    assert env_of(container)["MODELOPS_SCHEDULER_WORKERS"] == {"name": "MODELOPS_SCHEDULER_WORKERS", "value": "2"}


def test_several_server_replicas_roll_and_need_a_shared_job_token_secret() -> None:
    shared = ["server.jobTokenSecret.name=modelops-job-token", "server.jobTokenSecret.key=key"]
    rendered = template(chart=SUBCHART, release="modelops", namespace="modelops", sets=["replicas=3", *shared])
    server = by_name(rendered, "Deployment", "modelops-scheduler")
    assert server["spec"]["replicas"] == 3
    # Only the replica holding the leader lock runs the engine, so old and new pods may overlap.
    assert server["spec"]["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
    }
    validate(server)
    refused = helm("template", "modelops", str(SUBCHART), "--set", "replicas=2", check=False)
    assert refused.returncode != 0
    assert "replicas > 1 needs server.jobTokenSecret" in refused.stderr
    negative = helm(
        "template", "modelops", str(SUBCHART), "--set", "replicas=-1", *[f"--set={s}" for s in shared], check=False
    )
    assert negative.returncode != 0
    assert "replicas" in negative.stderr


def test_in_each_other_job_namespace_the_server_may_read_pods_and_their_logs_only() -> None:
    rendered = template(
        chart=SUBCHART,
        release="modelops",
        namespace="modelops",
        sets=["runner.jobNamespaces={modelops,modelops-examples}"],
    )
    roles = [r for r in of_kind(rendered, "Role") if r["metadata"]["name"] == "modelops-scheduler-component-logs"]
    assert [r["metadata"]["namespace"] for r in roles] == ["modelops-examples"]  # its own has them already
    rules = {(r["apiGroups"][0], res): set(r["verbs"]) for r in roles[0]["rules"] for res in r["resources"]}
    assert rules == {("", "pods"): {"get", "list"}, ("", "pods/log"): {"get"}}
    (binding,) = [b for b in of_kind(rendered, "RoleBinding") if b["metadata"]["name"] == roles[0]["metadata"]["name"]]
    assert binding["metadata"]["namespace"] == "modelops-examples"
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "modelops-scheduler", "namespace": "modelops"}]
    for obj in (roles[0], binding):
        validate(obj)


def test_the_values_log_format_reaches_every_scoring_service_and_flow_container() -> None:
    values = _load(CI_DIR / "digits-batch-values.yaml")
    values["global"]["logFormat"] = "json"
    objects = _template_values(values)
    seen = []
    for owner, pod in pod_specs(objects):
        for container in pod["spec"]["containers"]:
            env = env_of(container)
            service = "MODELOPS_SCORING_LOG_LEVEL" in env
            wanted = "MODELOPS_SCORING_LOG_FORMAT" if service else "MODELOPS_FLOW_LOG_FORMAT"
            assert env[wanted]["value"] == "json", owner["metadata"]["name"]
            seen.append(wanted)
    assert {"MODELOPS_SCORING_LOG_FORMAT", "MODELOPS_FLOW_LOG_FORMAT"} <= set(seen)
    del values["global"]["logFormat"]  # values rendered before logFormat existed: text
    for _owner, pod in pod_specs(_template_values(values)):
        for container in pod["spec"]["containers"]:
            env = env_of(container)
            assert {env[k]["value"] for k in env if k.endswith("_LOG_FORMAT")} == {"text"}
