"""The UI's Deploy page: paste or upload an IR, validated on the server as you type, deployed once valid.

- `GET /ui/deploy`: the page (write scope: a read user has no Deploy link, and gets a 403 page here). An editor
  (a textarea with a line gutter marking the lines of problems) and file pickers: YAML/JSON files, a `.tar.gz`
  bundle, or a folder (`webkitdirectory`). `static/deploy.js` drives it.
- `POST /ui/deploy/validate`: multipart, the editor's `text` (with its file `name`), or the picked files
  (`file` parts with a `path` each: their relative path, `webkitRelativePath` for a folder) and `listed` paths
  (files the browser holds but did not send: data it need not upload to validate). Answers a fragment, with 200
  whatever it says (the page asked a question and has its answer): valid (pipeline, digest, "same as version
  N", the artifacts that will be uploaded, the files ignored), every issue with file, document, path and line
  (a button per line moves the editor's caret there), or the refusal of a trust check or a limit.
- `POST /ui/deploy`: the same body; deploys (`SchedulerService.deploy`, or `deploy_folder` for files, which
  stores the bundle's relative model artifacts and names them by sha256 as the CLI does) and answers a fragment
  (a whole page without htmx): "deployed version N of X" (201) or "unchanged: the same IR is version N" (200);
  the issues or a refusal with the status the API would answer (422, 403, 413).

Uploads are bounded before the form is parsed: the body by the artifact API's `artifact_max_bytes` (plus room
for the form's own fields), the number of parts by `MAX_FOLDER_MEMBERS`, a pasted text by the IR loader's file
limit. Uploaded files are staged in the artifact store's `tmp/` and removed once answered.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Annotated, Any, BinaryIO, Final

import anyio.to_thread
from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse
from starlette.datastructures import FormData, UploadFile

import ir
from ir.load import IR_SUFFIXES, MAX_FILE_BYTES
from scheduler.api.errors import PayloadTooLarge
from scheduler.artifacts import MAX_FOLDER_MEMBERS, ArtifactStore
from scheduler.auth import Principal
from scheduler.bundle_folder import clean_paths, stage_files, unpack_tarball
from scheduler.errors import InvalidInput, SchedulerError
from scheduler.service import BundleFormat, SchedulerService
from scheduler.ui.deps import UI_PREFIX, UiWriter
from scheduler.ui.templating import render

router = APIRouter(prefix=UI_PREFIX)

EDITOR_FILE: Final = "pasted.yaml"
"""The file name issues of the editor's text carry, unless the text came from a picked file (its name then)."""
FORM_OVERHEAD: Final = 4 * 2**20
"""Room for the form's own fields and part headers on top of `artifact_max_bytes`."""
_SHOWN: Final = 50
"""Ignored files named in a result (the rest are counted)."""
_TARBALL: Final = (".tar.gz", ".tgz")


def _service(request: Request) -> SchedulerService:
    service = request.app.state.service
    assert isinstance(service, SchedulerService)
    return service


async def _bounded(request: Request) -> None:
    """Refuse a body past the upload limit from its Content-Length, before anything reads the form."""
    if request.method != "POST":
        return
    limit = _service(request).settings.artifact_max_bytes + FORM_OVERHEAD
    declared = request.headers.get("content-length")
    if declared is None or not declared.isdigit():
        raise PayloadTooLarge(
            "an upload must declare its size (Content-Length)", code="length_required", details={"limit_bytes": limit}
        )
    if int(declared) > limit:
        raise PayloadTooLarge(
            f"the upload is larger than the server's limit of {limit} bytes (artifact_max_bytes and the form)",
            details={"limit_bytes": limit, "size": int(declared)},
        )


Bounded = Annotated[None, Depends(_bounded)]


@dataclass
class _Upload:
    """A parsed deploy form: the editor's text, or files staged in a folder (with their original paths)."""

    text: str | None = None
    name: str = EDITOR_FILE
    staging: Path | None = None
    root: Path | None = None
    listed: list[str] = field(default_factory=list)
    original: dict[str, str] = field(default_factory=dict)

    def cleanup(self) -> None:
        if self.staging is not None:
            shutil.rmtree(self.staging, ignore_errors=True)


def _editor_name(raw: Any) -> str:
    name = PurePosixPath(raw).name if isinstance(raw, str) else ""
    if not name or not name.endswith(IR_SUFFIXES) or len(name) > 200 or "\x00" in name or "\\" in name:
        return EDITOR_FILE
    return name


def _stage(store: ArtifactStore, uploads: list[tuple[str, BinaryIO]], listed: list[str]) -> _Upload:
    cleaned = clean_paths([path for path, _ in uploads] + listed)
    sent, rest = cleaned[: len(uploads)], cleaned[len(uploads) :]
    original = dict(zip(cleaned, [path for path, _ in uploads] + listed, strict=True))
    store.folder.mkdir(parents=True, exist_ok=True)
    store.staging.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=store.staging, prefix="bundle-"))
    upload = _Upload(staging=staging, listed=rest, original=original)
    try:
        if len(uploads) == 1 and not rest and sent[0].endswith(_TARBALL):
            archive = staging / "upload.tar.gz"
            stage_files(staging, {archive.name: uploads[0][1]}, store.max_bytes)
            unpacked = staging / "bundle"
            unpacked.mkdir()
            upload.root = unpack_tarball(archive, unpacked, store.max_bytes)
        else:
            upload.root = staging / "bundle"
            upload.root.mkdir()
            sources = {rel: source for rel, (_, source) in zip(sent, uploads, strict=True)}
            stage_files(upload.root, sources, store.max_bytes)
    except BaseException:
        upload.cleanup()
        raise
    return upload


async def _read_form(form: FormData, service: SchedulerService) -> _Upload:
    files = [item for item in form.getlist("file") if isinstance(item, UploadFile) and item.filename]
    paths = [item for item in form.getlist("path") if isinstance(item, str)]
    listed = [item for item in form.getlist("listed") if isinstance(item, str)]
    if not files and not listed:
        text = form.get("text")
        if not isinstance(text, str) or not text.strip():
            raise InvalidInput("nothing to deploy: paste an IR or pick its files", details={"field": "text"})
        return _Upload(text=text, name=_editor_name(form.get("name")))
    if paths and len(paths) != len(files):
        raise InvalidInput(
            f"{len(files)} files came with {len(paths)} paths: send one path per file (or none)",
            details={"field": "path"},
        )
    named = [(paths[i] if paths else (f.filename or ""), f.file) for i, f in enumerate(files)]
    if not named:
        raise InvalidInput("no file was sent: pick the bundle's files", details={"field": "file"})
    return await anyio.to_thread.run_sync(_stage, service.artifact_store(), named, listed)


def _issues_context(exc: ir.IRValidationError, editor: str | None) -> dict[str, Any]:
    lines = sorted({i.line for i in exc.issues if i.line is not None and i.file == editor}) if editor else []
    return {"outcome": "invalid", "issues": exc.issues, "editor": editor, "bad_lines": lines}


def _refused_context(exc: SchedulerError) -> dict[str, Any]:
    return {"outcome": "refused", "status": exc.http_status, "code": exc.code, "message": exc.message}


def _folder_context(upload: _Upload, found: Any) -> dict[str, Any]:
    ignored = [upload.original.get(rel, rel) for rel in found.ignored]
    return {
        "artifacts": [(a.model, a.uri, a.kind) for a in found.artifacts],
        "pending": [(p.model, p.uri) for p in found.pending],
        "missing": [(m.model, m.uri) for m in found.missing],
        "ignored": ignored[:_SHOWN],
        "ignored_count": len(ignored),
        "needed": [upload.original.get(rel, rel) for rel in found.needed],
        "digest_known": found.digest_known,
        "ir_files": found.ir_files,
    }


_NO_FOLDER: Final[dict[str, Any]] = {
    "artifacts": [],
    "pending": [],
    "missing": [],
    "ignored": [],
    "ignored_count": 0,
    "needed": [],
    "digest_known": True,
    "ir_files": [],
}


def _fragment(request: Request, context: dict[str, Any], status_code: int = 200) -> HTMLResponse:
    if request.headers.get("hx-request") == "true":
        return render(request, "deploy/result.html", {"result": context}, status_code=status_code)
    return render(request, "deploy/page.html", {"nav": "deploy", "result": context}, status_code=status_code)


@router.get("/deploy", response_class=HTMLResponse)
async def deploy_page(request: Request, _principal: UiWriter) -> HTMLResponse:
    return render(request, "deploy/page.html", {"nav": "deploy", "result": None})


@router.post("/deploy/validate", response_class=HTMLResponse)
async def validate(request: Request, _bound: Bounded, principal: UiWriter) -> HTMLResponse:
    return await _answer(request, principal, deploy=False)


@router.post("/deploy", response_class=HTMLResponse)
async def deploy(request: Request, _bound: Bounded, principal: UiWriter) -> HTMLResponse:
    return await _answer(request, principal, deploy=True)


async def _answer(request: Request, principal: Principal, *, deploy: bool) -> HTMLResponse:
    """Validate or deploy what the form holds; the outcome (valid, deployed, the issues, a refusal) as HTML."""
    service = _service(request)
    created_by = principal.name if principal.authenticated else None
    upload = _Upload()
    form = await request.form(
        max_files=MAX_FOLDER_MEMBERS, max_fields=2 * MAX_FOLDER_MEMBERS + 8, max_part_size=MAX_FILE_BYTES
    )
    try:
        upload = await _read_form(form, service)
        if upload.text is not None:
            payload = {upload.name: upload.text}
            if deploy:
                done = await service.deploy(BundleFormat.FILES, payload, created_by, principal)
                context = {**_NO_FOLDER, "outcome": "deployed", "deployment": done, "stored": []}
            else:
                checked = await service.validate(BundleFormat.FILES, payload, principal)
                context = {**_NO_FOLDER, "outcome": "valid", "check": checked}
        else:
            assert upload.root is not None
            if deploy:
                folder = await service.deploy_folder(upload.root, created_by, upload.listed, principal)
                context = {
                    **_folder_context(upload, folder.folder),
                    "outcome": "deployed",
                    "deployment": folder.deployment,
                    "stored": folder.artifacts,
                }
            else:
                checked_folder = await service.validate_folder(upload.root, upload.listed, principal)
                context = {
                    **_folder_context(upload, checked_folder.folder),
                    "outcome": "valid",
                    "check": checked_folder.validation,
                }
    except ir.IRValidationError as exc:
        context = _issues_context(exc, upload.name if upload.text is not None else None)
        return _fragment(request, context, 422 if deploy else 200)
    except SchedulerError as exc:
        return _fragment(request, _refused_context(exc), exc.http_status if deploy else 200)
    finally:
        await form.close()
        await anyio.to_thread.run_sync(upload.cleanup)
    created = deploy and context["deployment"].created
    return _fragment(request, context, 201 if created else 200)
