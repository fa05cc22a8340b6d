"""On Kubernetes a scoring service's `fetch-model` init container downloads a stored artifact from the
scheduler's job-scoped route with the job's token: the chart's script, run as the init container runs it,
against a real scheduler holding what `modelops pipeline deploy` uploaded (a file, and a folder)."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from api_kit import WRITE_TOKEN
from cli_kit import running_server, write_bundle

import ir
from scheduler.tokens import job_token, load_secret

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "charts"))

from chart_kit import CHART, RELEASE, by_name, template

from scoring_services.artifacts import directory_sha256


def fetch_model_script() -> str:
    objects = template(values=[CHART / "ci" / "digits-batch-values.yaml"])
    pod = by_name(objects, "Deployment", f"{RELEASE}-digits-rf")["spec"]["template"]["spec"]
    (init,) = pod["initContainers"]
    assert init["name"] == "fetch-model"
    token = next(e for e in init["env"] if e["name"] == "MODELOPS_JOB_TOKEN")
    assert token["valueFrom"]["secretKeyRef"] == {"name": f"{RELEASE}-job-token", "key": "token", "optional": False}
    script: str = init["command"][2]
    return script


@pytest.mark.parametrize("kind", ["file", "folder"])
def test_fetch_model_downloads_a_stored_artifact_with_the_job_token_and_verifies_it(tmp_path: Path, kind: str) -> None:
    bundle = write_bundle(tmp_path / "bundle")
    artifact = bundle / "artifacts" / "m1.onnx"
    if kind == "folder":  # a transformers-like folder, beside the bundle: inside, its .json would be read as IR
        artifact = tmp_path / "models" / "m1"
        pipeline = bundle / "pipeline.yaml"
        pipeline.write_text(pipeline.read_text().replace("uri: artifacts/m1.onnx", "uri: ../models/m1"))
        (artifact / "tokenizer").mkdir(parents=True)
        (artifact / "config.json").write_text('{"model_type": "bert"}')
        (artifact / "tokenizer" / "vocab.txt").write_text("[CLS]\n[SEP]\n")
    script = fetch_model_script()
    digest = directory_sha256(artifact) if kind == "folder" else hashlib.sha256(artifact.read_bytes()).hexdigest()
    with running_server(tmp_path / "home", tokens=True) as server, server.client(WRITE_TOKEN) as client:
        client.deploy(bundle)
        job = client.create_job("scoring")
        token = job_token(load_secret(server.home), job.id)
        # what `ir.render` writes for the job on the tekton backend (see scheduler.values.artifact_store_uri)
        store = f"{server.url}/api/v1/jobs/{job.id}/artifacts"
        model = {"uri": ir.resolve_model_uri(ir.artifact_uri(digest), ir.make_globals({"artifactStore": store}))}
        model["sha256"] = digest
        document = tmp_path / "values.yaml"
        document.write_text(
            yaml.safe_dump({"global": {"artifactStore": store}, "scoringServices": {"m1": {"model": model}}})
        )
        cache = tmp_path / "cache"
        env = {**os.environ, "MODELOPS_JOB_TOKEN": token}
        ok = subprocess.run(
            [sys.executable, "-c", script, str(document), "m1", str(cache)],
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
            check=False,
        )
        assert ok.returncode == 0, ok.stderr
        assert "ready at" in ok.stdout
        fetched = Path(ok.stdout.rsplit("ready at ", 1)[1].strip())
        if kind == "folder":
            assert fetched.is_dir() and directory_sha256(fetched) == digest
            assert (fetched / "tokenizer" / "vocab.txt").read_text() == "[CLS]\n[SEP]\n"
        else:
            assert fetched.read_bytes() == artifact.read_bytes()
        refused = subprocess.run(
            [sys.executable, "-c", script, str(document), "m1", str(tmp_path / "cache-2")],
            capture_output=True,
            text=True,
            timeout=60,
            env={k: v for k, v in os.environ.items() if k != "MODELOPS_JOB_TOKEN"},
            check=False,
        )
        assert refused.returncode != 0 and "HTTP 401" in refused.stderr
        # the job's (fake) service and flow run until it ends: cancel it, so that nothing outlives the test
        client.cancel_job(job.id)
        deadline = time.monotonic() + 30
        while client.get_job(job.id).state not in ("CANCELLED", "SUCCEEDED", "FAILED"):
            assert time.monotonic() < deadline, "the job did not end within 30 s of its cancel"
            time.sleep(0.05)
