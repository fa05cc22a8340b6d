"""The Deploy page and `POST /api/v1/pipelines/validate`, over HTTP: validation without storing, located errors,
folder and .tar.gz uploads whose model artifacts land in the artifact store, CSRF, escaping."""

from __future__ import annotations

import hashlib
import io
import json
import pickle
import sys
import tarfile
from pathlib import Path
from typing import Any

import pytest
from api_kit import (
    ADMIN,
    READ,
    READ_TOKEN,
    WRITE,
    WRITE_TOKEN,
    YAML,
    Api,
    as_files,
    as_tarball,
    as_yaml,
    assert_error,
    running,
    settings_for,
    tiny_documents,
)

import ir
from scheduler.artifact_upload import local_artifacts, rewritten_payload
from scheduler.sessions import CSRF_HEADER, SESSION_COOKIE, SessionSigner

# the digits example's helpers (a 10-tree forest trained in a second, the example's folder as after train.py)
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scoring_flows"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "e2e"))

pytestmark = pytest.mark.asyncio

HX = {"HX-Request": "true"}


def tiny_model() -> bytes:
    """A real (tiny) sklearn model, pickled: what a bundle folder's `artifacts/` holds."""
    from sklearn.linear_model import LogisticRegression

    model = LogisticRegression().fit([[0.0], [1.0], [2.0], [3.0]], [0, 0, 1, 1])
    buffer = io.BytesIO()
    pickle.dump(model, buffer)
    return buffer.getvalue()


def documents_for(model: bytes) -> list[dict[str, Any]]:
    """The tiny pipeline, its Model declaring the sha256 of `model`."""
    docs = tiny_documents()
    docs[-1]["spec"]["sha256"] = hashlib.sha256(model).hexdigest()
    return docs


def folder_parts(files: dict[str, bytes]) -> list[tuple[str, tuple[str, bytes, str]]]:
    """The `file` parts deploy.js sends for picked files (named by their base name, as a browser does)."""
    return [("file", (rel.rsplit("/", 1)[-1], content, "application/octet-stream")) for rel, content in files.items()]


def path_fields(files: dict[str, bytes], top: str = "tiny") -> list[tuple[str, str]]:
    """The `path` fields that go with them: each file's `webkitRelativePath` (under the picked folder `top`)."""
    return [("path", f"{top}/{rel}") for rel in files]


async def sign_in(api: Api, token: str = WRITE_TOKEN) -> str:
    """Open a UI session with `token`; its CSRF token."""
    response = await api.client.post("/ui/login", data={"token": token, "next": "/ui/deploy"})
    assert response.status_code == 303, response.text
    signer: SessionSigner = api.app.state.auth.sessions
    session = signer.verify(api.client.cookies[SESSION_COOKIE])
    assert session is not None
    return session.csrf


async def ui_post(api: Api, url: str, csrf: str, data: list[tuple[str, str]], files: list[Any] | None = None) -> Any:
    """A multipart POST as deploy.js makes it (repeated fields kept in order, the CSRF header, HX-Request)."""
    fields: dict[str, list[str]] = {}
    for key, value in data:
        fields.setdefault(key, []).append(value)
    return await api.client.post(
        url, data=fields, files=files or [("nofile", ("", b"", "text/plain"))], headers={**HX, CSRF_HEADER: csrf}
    )


def bundle_folder(model: bytes, script: bool = False) -> dict[str, bytes]:
    """A folder like examples/digits: IR files, the model artifact, data and a script the IR does not name."""
    files = {rel: text.encode() for rel, text in as_files(documents_for(model)).items()}
    files["artifacts/tiny-rf.joblib"] = model
    files["data/in.csv"] = b"id,x\n1,0.5\n"
    files["train.py"] = b"print('trained')\n"
    return files


# ------------------------------------------------------------------------------------------------ REST validate


async def test_validate_says_valid_with_the_digest_and_stores_nothing(api_database_url: str, tmp_path: Path) -> None:
    async with running(settings_for(tmp_path, api_database_url)) as api:
        body = as_yaml(tiny_documents())
        response = await api.client.post("/api/v1/pipelines/validate", content=body, headers={**YAML, **WRITE})
        assert response.status_code == 200, response.text
        answer = response.json()
        assert answer["valid"] is True and answer["pipeline"] == "tiny" and answer["deployed_version"] is None
        assert (await api.client.get("/api/v1/pipelines", headers=READ)).json()["items"] == []
        deployed = await api.deploy()
        assert deployed["digest"] == answer["digest"]
        # the same IR in another wire form: same digest, and the version that holds it
        files = {"files": as_files(tiny_documents())}
        again = await api.client.post("/api/v1/pipelines/validate", json=files, headers=WRITE)
        assert again.json() == {**answer, "deployed_version": 1}
        tarred = await api.client.post(
            "/api/v1/pipelines/validate",
            content=as_tarball(as_files(tiny_documents())),
            headers={"Content-Type": "application/gzip", **WRITE},
        )
        assert tarred.status_code == 200 and tarred.json()["deployed_version"] == 1


async def test_validate_locates_every_issue_like_deploy(api_database_url: str, tmp_path: Path) -> None:
    async with running(settings_for(tmp_path, api_database_url)) as api:
        docs = tiny_documents()
        docs[3]["spec"]["steps"][0]["score"]["model"] = "tiny-rg"
        body = as_yaml(docs)
        checked = await api.client.post("/api/v1/pipelines/validate", content=body, headers={**YAML, **WRITE})
        deployed = await api.client.post("/api/v1/pipelines", content=body, headers={**YAML, **WRITE})
        error = assert_error(checked, 422, "invalid_ir")
        assert error == assert_error(deployed, 422, "invalid_ir")
        issue = next(i for i in error["details"] if "tiny-rg" in i["message"])
        assert issue["file"] == "bundle.yaml" and issue["document"] == "ScoringFlow tiny-batch"
        assert issue["path"] == "spec.steps[0].score.model" and "did you mean 'tiny-rf'" in issue["message"]
        line = body.decode().splitlines()[issue["line"] - 1]
        assert "model: tiny-rg" in line


async def test_validate_needs_write_and_runs_the_trust_checks(api_database_url: str, tmp_path: Path) -> None:
    async with running(settings_for(tmp_path, api_database_url, allow_code_runtimes=False)) as api:
        body = as_yaml(tiny_documents())
        read = await api.client.post("/api/v1/pipelines/validate", content=body, headers={**YAML, **READ})
        assert_error(read, 403, "insufficient_scope")
        anonymous = await api.client.post("/api/v1/pipelines/validate", content=body, headers=YAML)
        assert anonymous.status_code == 401
        # the write token may not deploy an sklearn pickle here: "valid" would be a lie
        refused = await api.client.post("/api/v1/pipelines/validate", content=body, headers={**YAML, **WRITE})
        assert refused.status_code == 403 and "tiny-rf" in refused.json()["error"]["message"]
        admin = await api.client.post("/api/v1/pipelines/validate", content=body, headers={**YAML, **ADMIN})
        assert admin.status_code == 200, admin.text


async def test_validate_is_in_the_openapi_document(api_database_url: str, tmp_path: Path) -> None:
    async with running(settings_for(tmp_path, api_database_url)) as api:
        spec = (await api.client.get("/openapi.json")).json()
        operation = spec["paths"]["/api/v1/pipelines/validate"]["post"]
        assert operation["summary"] and operation["description"]
        assert {"200", "403", "422", "413"} <= set(operation["responses"])
        assert "application/yaml" in operation["requestBody"]["content"]


# ------------------------------------------------------------------------------------------------ the page


async def test_the_page_needs_write(api_database_url: str, tmp_path: Path) -> None:
    async with running(settings_for(tmp_path, api_database_url)) as api:
        assert (await api.client.get("/ui/deploy")).status_code == 303
        await sign_in(api, READ_TOKEN)
        page = await api.client.get("/ui/deploy")
        assert page.status_code == 403 and "text/html" in page.headers["content-type"]
        assert 'href="/ui/deploy"' not in page.text
        await sign_in(api, WRITE_TOKEN)
        page = await api.client.get("/ui/deploy")
        assert page.status_code == 200
        for needle in ('<label for="ir-text">', 'id="ir-text"', 'type="file" id="ir-files"', "webkitdirectory",
                       'accept=".yaml,.yml,.json,.tar.gz,.tgz"', 'aria-live="polite"', "deploy.js"):
            assert needle in page.text, needle


async def test_the_validate_fragment_lists_located_errors_with_line_buttons(
    api_database_url: str, tmp_path: Path
) -> None:
    async with running(settings_for(tmp_path, api_database_url)) as api:
        csrf = await sign_in(api)
        docs = tiny_documents()
        docs[3]["spec"]["steps"][0]["score"]["model"] = "tiny-rg"
        text = as_yaml(docs).decode()
        line = next(n for n, t in enumerate(text.splitlines(), 1) if "model: tiny-rg" in t)
        response = await ui_post(api, "/ui/deploy/validate", csrf, [("text", text), ("name", "mine.yaml")])
        assert response.status_code == 200  # the fragment is the answer: no failed request in the console
        html = response.text
        assert 'data-valid="false"' in html and f"data-lines=\"[{line}]\"" in html
        assert f'data-line="{line}"' in html and f"line {line}</button>" in html
        assert "<code>mine.yaml</code>" in html and "ScoringFlow tiny-batch" in html
        assert "<code>spec.steps[0].score.model</code>" in html and "did you mean &#39;tiny-rf&#39;" in html
        valid = await ui_post(api, "/ui/deploy/validate", csrf, [("text", as_yaml(tiny_documents()).decode())])
        assert valid.status_code == 200 and 'data-valid="true"' in valid.text
        assert "<strong>Valid</strong>: pipeline <code>tiny</code>" in valid.text


async def test_deploy_from_the_editor_then_again_says_unchanged(api_database_url: str, tmp_path: Path) -> None:
    async with running(settings_for(tmp_path, api_database_url)) as api:
        csrf = await sign_in(api)
        text = as_yaml(tiny_documents()).decode()
        first = await ui_post(api, "/ui/deploy", csrf, [("text", text)])
        assert first.status_code == 201, first.text
        assert "<strong>Deployed</strong> version 1 of <code>tiny</code>" in first.text
        assert 'href="/ui/pipelines/tiny/versions/1"' in first.text
        assert 'href="/ui/pipelines/tiny/run?version=1"' in first.text
        again = await ui_post(api, "/ui/deploy", csrf, [("text", text)])
        assert again.status_code == 200 and "<strong>Unchanged</strong>: the same IR is version 1" in again.text
        checked = await ui_post(api, "/ui/deploy/validate", csrf, [("text", text)])
        assert "Same IR as version 1" in checked.text
        version = (await api.client.get("/api/v1/pipelines/tiny/versions/1", headers=READ)).json()
        assert version["created_by"] == "ci"


async def test_a_ui_write_without_the_csrf_token_is_refused(api_database_url: str, tmp_path: Path) -> None:
    async with running(settings_for(tmp_path, api_database_url)) as api:
        await sign_in(api)
        text = as_yaml(tiny_documents()).decode()
        for url in ("/ui/deploy/validate", "/ui/deploy"):
            response = await api.client.post(url, data={"text": text}, headers=HX)
            assert response.status_code == 403 and "csrf_failed" in response.text, url
            forged = await api.client.post(url, data={"text": text, "csrf_token": "guess"})
            assert forged.status_code == 403, url
        assert (await api.client.get("/api/v1/pipelines", headers=READ)).json()["items"] == []


async def test_a_script_in_the_ir_is_shown_as_text(api_database_url: str, tmp_path: Path) -> None:
    async with running(settings_for(tmp_path, api_database_url)) as api:
        csrf = await sign_in(api)
        docs = tiny_documents()
        docs[0]["spec"]["parameters"][0]["description"] = "<script>alert(1)</script>"
        docs[3]["spec"]["steps"][0]["score"]["model"] = "<script>alert(2)</script>"
        bad = await ui_post(api, "/ui/deploy/validate", csrf, [("text", as_yaml(docs).decode())])
        assert "<script>" not in bad.text and "&lt;script&gt;alert(2)&lt;/script&gt;" in bad.text
        docs[3]["spec"]["steps"][0]["score"]["model"] = "tiny-rf"
        good = await ui_post(api, "/ui/deploy", csrf, [("text", as_yaml(docs).decode()), ("name", "<b>x</b>.yaml")])
        assert good.status_code == 201 and "<script>" not in good.text and "<b>" not in good.text


# ------------------------------------------------------------------------------------------------ uploads


async def test_a_folder_upload_stores_its_model_and_deploys_the_ir_naming_it(
    api_database_url: str, tmp_path: Path
) -> None:
    model = tiny_model()
    sha = hashlib.sha256(model).hexdigest()
    files = bundle_folder(model)
    async with running(settings_for(tmp_path, api_database_url)) as api:
        csrf = await sign_in(api)
        # to validate, the browser sends the IR files and only lists the others
        ir_only = {rel: c for rel, c in files.items() if rel.endswith((".yaml", ".json"))}
        listed = [("listed", f"tiny/{rel}") for rel in files if rel not in ir_only]
        checked = await ui_post(
            api, "/ui/deploy/validate", csrf, [("csrf_token", csrf), *path_fields(ir_only), *listed],
            folder_parts(ir_only),
        )
        assert checked.status_code == 200, checked.text
        assert 'data-valid="true"' in checked.text
        assert "data-needed=\"[&#34;tiny/artifacts/tiny-rf.joblib&#34;]\"" in checked.text
        assert "will be uploaded on Deploy" in checked.text and "2 files not part of the IR, ignored" in checked.text
        assert not (tmp_path / "artifacts" / "sha256" / sha).exists()
        # the deploy sends the model too, and still lists the data and the script
        sent = {**ir_only, "artifacts/tiny-rf.joblib": model}
        rest = [("listed", "tiny/data/in.csv"), ("listed", "tiny/train.py")]
        deployed = await ui_post(api, "/ui/deploy", csrf, [*path_fields(sent), *rest], folder_parts(sent))
        assert deployed.status_code == 201, deployed.text
        assert "<strong>Deployed</strong> version 1 of <code>tiny</code>" in deployed.text
        assert "<code>tiny/data/in.csv</code>, <code>tiny/train.py</code>" in deployed.text
        stored = tmp_path / "artifacts" / "sha256" / sha
        assert stored.read_bytes() == model
        version = (await api.client.get("/api/v1/pipelines/tiny/versions/1", headers=READ)).json()
        (model_doc,) = [d for d in version["documents"] if d["kind"] == "Model"]
        assert model_doc["spec"]["uri"] == f"modelops-artifact:sha256:{sha}"
        assert model_doc["spec"]["sha256"] == sha
        # validation said which digest a deploy stores
        assert version["digest"][:12] in checked.text
        # the whole folder sent at once (no JS, or curl) is the same IR: unchanged
        whole = await ui_post(api, "/ui/deploy", csrf, path_fields(files), folder_parts(files))
        assert whole.status_code == 200 and "<strong>Unchanged</strong>" in whole.text, whole.text
        assert not list((tmp_path / "artifacts" / "tmp").iterdir())  # nothing left in staging


async def test_a_tarball_upload_with_its_model_deploys(api_database_url: str, tmp_path: Path) -> None:
    model = tiny_model()
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for rel, content in bundle_folder(model).items():
            info = tarfile.TarInfo(f"tiny/{rel}")
            info.size = len(content)
            archive.addfile(info, io.BytesIO(content))
    async with running(settings_for(tmp_path, api_database_url)) as api:
        csrf = await sign_in(api)
        parts = [("file", ("tiny.tar.gz", buffer.getvalue(), "application/gzip"))]
        checked = await ui_post(api, "/ui/deploy/validate", csrf, [("path", "tiny.tar.gz")], parts)
        assert checked.status_code == 200 and 'data-valid="true"' in checked.text, checked.text
        deployed = await ui_post(api, "/ui/deploy", csrf, [("path", "tiny.tar.gz")], parts)
        assert deployed.status_code == 201, deployed.text
        version = (await api.client.get("/api/v1/pipelines/tiny/versions/1", headers=READ)).json()
        (model_doc,) = [d for d in version["documents"] if d["kind"] == "Model"]
        assert model_doc["spec"]["uri"] == f"modelops-artifact:sha256:{hashlib.sha256(model).hexdigest()}"
        # a tarball of IR files only (no artifact): the uri stays relative, as the CLI leaves it
        plain = as_tarball(as_files(tiny_documents("plain")))
        parts = [("file", ("plain.tgz", plain, "application/gzip"))]
        other = await ui_post(api, "/ui/deploy", csrf, [("path", "plain.tgz")], parts)
        assert other.status_code == 201 and "nothing at <code>artifacts/tiny-rf.joblib</code>" in other.text


async def test_an_upload_is_refused_when_it_climbs_out_or_its_model_is_not_what_it_declares(
    api_database_url: str, tmp_path: Path
) -> None:
    model = tiny_model()
    async with running(settings_for(tmp_path, api_database_url)) as api:
        csrf = await sign_in(api)
        climbing = {"x/../../etc/pipeline.yaml": b"a: 1"}
        response = await ui_post(api, "/ui/deploy", csrf, path_fields(climbing, "t"), folder_parts(climbing))
        assert response.status_code == 422 and "must be relative and stay inside the folder" in response.text
        docs = documents_for(model)
        docs[-1]["spec"]["uri"] = "../../secret.joblib"
        leaving = {rel: t.encode() for rel, t in as_files(docs).items()}
        response = await ui_post(api, "/ui/deploy/validate", csrf, path_fields(leaving), folder_parts(leaving))
        assert response.status_code == 200 and 'data-valid="false"' in response.text
        assert "leaves the uploaded folder" in response.text
        files = bundle_folder(model)
        files["artifacts/tiny-rf.joblib"] = b"another model"
        response = await ui_post(api, "/ui/deploy", csrf, path_fields(files), folder_parts(files))
        assert response.status_code == 422 and "sha256 mismatch" in response.text
        assert str(tmp_path) not in response.text  # the staging folder is not shown
        assert (await api.client.get("/api/v1/pipelines", headers=READ)).json()["items"] == []


async def test_an_upload_past_the_artifact_limit_is_refused_before_it_is_read(
    api_database_url: str, tmp_path: Path
) -> None:
    async with running(settings_for(tmp_path, api_database_url, artifact_max_bytes=1000)) as api:
        csrf = await sign_in(api)
        files = {"pipeline.yaml": as_yaml(tiny_documents()), "big.bin": b"x" * (5 * 2**20)}
        response = await ui_post(api, "/ui/deploy", csrf, path_fields(files), folder_parts(files))
        assert response.status_code == 413 and "larger than the server" in response.text
        small = {"pipeline.yaml": as_yaml(tiny_documents()), "big.bin": b"x" * 5000}
        response = await ui_post(api, "/ui/deploy", csrf, path_fields(small), folder_parts(small))
        assert response.status_code == 413 and "artifact_max_bytes" in response.text




async def test_a_trust_refusal_is_the_validation_answer(api_database_url: str, tmp_path: Path) -> None:
    async with running(settings_for(tmp_path, api_database_url, allow_code_runtimes=False)) as api:
        csrf = await sign_in(api)
        response = await ui_post(api, "/ui/deploy/validate", csrf, [("text", as_yaml(tiny_documents()).decode())])
        assert response.status_code == 200 and 'data-valid="false"' in response.text
        assert "<strong>Refused</strong> (403)" in response.text and "tiny-rf" in response.text
        deployed = await ui_post(api, "/ui/deploy", csrf, [("text", as_yaml(tiny_documents()).decode())])
        assert deployed.status_code == 403 and "<strong>Refused</strong>" in deployed.text


async def test_without_javascript_the_form_deploys_and_shows_the_page(api_database_url: str, tmp_path: Path) -> None:
    async with running(settings_for(tmp_path, api_database_url)) as api:
        csrf = await sign_in(api)
        text = as_yaml(tiny_documents()).decode()
        response = await api.client.post("/ui/deploy", data={"csrf_token": csrf, "text": text})
        assert response.status_code == 201, response.text
        assert "<h1>Deploy a pipeline</h1>" in response.text
        assert "<strong>Deployed</strong> version 1 of <code>tiny</code>" in response.text


async def test_the_digits_example_deploys_by_folder_upload_as_the_cli_deploys_it(
    api_database_url: str, tmp_path: Path
) -> None:
    from e2e_kit import relative_digits_example
    from flow_kit import train_digits

    folder = relative_digits_example(tmp_path / "upload", train_digits(tmp_path / "models"), rows=20)
    (folder / "train.py").write_text("# trains the models\n")
    files = {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}
    # what `modelops pipeline deploy FOLDER` would deploy (scheduler.artifact_upload on the client)
    bundle = ir.load_bundle(folder)
    body, _ = rewritten_payload(bundle, local_artifacts(bundle, folder)[0])
    cli_digest = ir.load_bundle_files(json.loads(body)["files"]).digest()
    async with running(settings_for(tmp_path / "home", api_database_url)) as api:
        csrf = await sign_in(api)
        ir_only = {rel: c for rel, c in files.items() if rel.endswith((".yaml", ".yml", ".json"))}
        listed = [("listed", f"digits/{rel}") for rel in files if rel not in ir_only]
        checked = await ui_post(
            api, "/ui/deploy/validate", csrf, [*path_fields(ir_only, "digits"), *listed], folder_parts(ir_only)
        )
        assert 'data-valid="true"' in checked.text, checked.text
        assert cli_digest[:12] in checked.text
        needed = ["digits/artifacts/digits-rf.joblib", "digits/artifacts/digits-rf.onnx"]
        assert f"data-needed=\"{json.dumps(needed).replace(chr(34), '&#34;')}\"" in checked.text
        sent = {**ir_only, **{path.removeprefix("digits/"): files[path.removeprefix("digits/")] for path in needed}}
        rest = [("listed", "digits/data/digits.csv"), ("listed", "digits/train.py")]
        deployed = await ui_post(api, "/ui/deploy", csrf, [*path_fields(sent, "digits"), *rest], folder_parts(sent))
        assert deployed.status_code == 201, deployed.text
        assert "2 files not part of the IR, ignored" in deployed.text
        version = (await api.client.get("/api/v1/pipelines/digits/versions/1", headers=READ)).json()
        assert version["digest"] == cli_digest
        uris = sorted(d["spec"]["uri"] for d in version["documents"] if d["kind"] == "Model")
        assert all(uri.startswith("modelops-artifact:sha256:") for uri in uris) and len(uris) == 2
        for uri in uris:
            assert (tmp_path / "home" / "artifacts" / "sha256" / uri.rsplit(":", 1)[1]).is_file()
