"""`/api/v1/artifacts`: the content-addressed store of model artifacts that travel with bundles.

- `POST /api/v1/artifacts` (write scope): the body is the artifact's bytes (`?kind=file`, the default) or a tar,
  plain or gzip, of a folder (`?kind=folder`); `?sha256=` optionally declares the digest, and a mismatch is
  refused (422 `sha256_mismatch`). 201 when stored now, 200 when it was there already (idempotent); 413 beyond
  `artifact_max_bytes`.
- `HEAD|GET /api/v1/artifacts/{sha256}` (read scope): whether it is there (clients skip uploads the server
  has), and its content (a folder as a gzip tar). `X-Artifact-Kind` says `file` or `folder`.
- `GET /api/v1/jobs/{id}/artifacts/{sha256}`: the same content for a job's components on Kubernetes (the
  scoring services' `fetch-model` init container), authenticated with the job's own token; only artifacts the
  job's pipeline version names are served.

The store itself is `scheduler.artifacts.ArtifactStore`, under `<home>/artifacts/sha256/`.
"""

from __future__ import annotations

import pathlib
import uuid
from typing import Annotated, Final, Literal

import anyio
import anyio.to_thread
from fastapi import APIRouter, Path, Query, Request, Response, status
from fastapi.responses import FileResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.background import BackgroundTask

import ir
from scheduler.api.deps import API_PREFIX, Service
from scheduler.api.errors import error_responses
from scheduler.api.tasks import authorized_job
from scheduler.artifacts import SHA256_PATTERN, Artifact, ArtifactStore
from scheduler.auth import AuthFirstRoute, ReadPrincipal, Reporter, WritePrincipal
from scheduler.errors import NotFound
from scheduler.service import SchedulerService
from scheduler.values import bundle_of
from scoring_services.artifacts import FOLDER_KIND_HEADER

__all__ = ["ArtifactOut", "router"]

router = APIRouter(tags=["artifacts"], route_class=AuthFirstRoute)

KIND_HEADER: Final = FOLDER_KIND_HEADER
_EXAMPLE_SHA: Final = "dd532423b8dfd0bbadb551419195829e3b34f19e47a60b6078bdfccc97a09991"

Sha256Path = Annotated[
    str, Path(pattern=SHA256_PATTERN, description="The artifact's sha256 (64 lower-case hex digits).")
]


class ArtifactOut(BaseModel):
    """A stored artifact, and the model `uri` that names it in an IR."""

    model_config = {
        "json_schema_extra": {
            "examples": [
                {
                    "sha256": _EXAMPLE_SHA,
                    "kind": "file",
                    "size": 5062305,
                    "uri": f"modelops-artifact:sha256:{_EXAMPLE_SHA}",
                    "created": True,
                }
            ]
        }
    }

    sha256: str
    kind: Literal["file", "folder"]
    size: int = Field(description="Bytes of the file, or of a folder's files together.")
    uri: str = Field(description="What a Model's `uri` says to use this artifact.")
    created: bool = Field(description="False when the store held it already (the upload changed nothing).")

    @classmethod
    def of(cls, artifact: Artifact) -> ArtifactOut:
        return cls(
            sha256=artifact.sha256,
            kind=artifact.kind,
            size=artifact.size,
            uri=ir.artifact_uri(artifact.sha256),
            created=artifact.created,
        )


class UploadQuery(BaseModel):
    """The query of an upload; anything else in it is refused (422)."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["file", "folder"] = Field(default="file", description="A file, or a tar of a folder.")
    sha256: str | None = Field(default=None, pattern=SHA256_PATTERN, description="The sha256 the artifact must have.")


def _store(service: SchedulerService) -> ArtifactStore:
    return ArtifactStore(service.settings.home, service.settings.artifact_max_bytes)


async def _receive(request: Request, store: ArtifactStore) -> anyio.Path:
    """The request body in a file of the store's `tmp/`, refused with 413 past the limit."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > store.max_bytes:
        raise store.too_large()
    staged = anyio.Path(await anyio.to_thread.run_sync(store.staged_file))
    size = 0
    try:
        async with await staged.open("wb") as handle:
            async for chunk in request.stream():
                size += len(chunk)
                if size > store.max_bytes:
                    raise store.too_large()
                await handle.write(chunk)
    except BaseException:
        await staged.unlink(missing_ok=True)
        raise
    return staged


@router.post(
    f"{API_PREFIX}/artifacts",
    summary="Upload a model artifact",
    description="Store a model artifact by its sha256: the body is the file (`kind=file`) or a tar, plain or "
    "gzip, of a folder (`kind=folder`; its sha256 is that of its manifest). 201 when stored, 200 when the "
    "store held it already. The answer's `uri` is what a Model's `uri` says to use it.",
    status_code=status.HTTP_201_CREATED,
    response_model=ArtifactOut,
    responses={200: {"model": ArtifactOut, "description": "Already stored"}, **error_responses(401, 403, 413, 422)},
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
        }
    },
)
async def upload_artifact(
    request: Request,
    service: Service,
    _principal: WritePrincipal,
    query: Annotated[UploadQuery, Query()],
) -> Response:
    store = _store(service)
    staged = await _receive(request, store)
    put = store.put_folder if query.kind == "folder" else store.put_file
    artifact = await anyio.to_thread.run_sync(put, pathlib.Path(staged), query.sha256)
    body = ArtifactOut.of(artifact).model_dump_json()
    code = status.HTTP_201_CREATED if artifact.created else status.HTTP_200_OK
    return Response(body, status_code=code, media_type="application/json")


async def _found(service: SchedulerService, sha256: str) -> Artifact:
    artifact = await anyio.to_thread.run_sync(_store(service).get, sha256)
    if artifact is None:
        raise NotFound(f"no artifact {sha256} in the store", code="artifact_not_found", details={"sha256": sha256})
    return artifact


async def _content(service: SchedulerService, artifact: Artifact) -> Response:
    headers = {KIND_HEADER: artifact.kind, "ETag": f'"{artifact.sha256}"'}
    if artifact.kind == "file":
        return FileResponse(artifact.path, media_type="application/octet-stream", headers=headers)
    packed = await anyio.to_thread.run_sync(_store(service).tar, artifact)
    return FileResponse(
        packed,
        media_type="application/gzip",
        headers=headers,
        background=BackgroundTask(packed.unlink, missing_ok=True),
    )


@router.head(
    f"{API_PREFIX}/artifacts/{{sha256}}",
    summary="Is this artifact stored?",
    description="200 (with `X-Artifact-Kind` and `Content-Length` of a file) when it is, 404 when not.",
    response_class=Response,
    responses={
        200: {"description": "Stored", "content": {"application/octet-stream": {}}},
        **error_responses(401, 403, 404, 422),
    },
)
async def has_artifact(sha256: Sha256Path, service: Service, _principal: ReadPrincipal) -> Response:
    artifact = await _found(service, sha256)
    return Response(status_code=status.HTTP_200_OK, headers={KIND_HEADER: artifact.kind})


@router.get(
    f"{API_PREFIX}/artifacts/{{sha256}}",
    summary="Download an artifact",
    description="The file, or a folder as a gzip tar of its files.",
    response_class=Response,
    responses={
        200: {"content": {"application/octet-stream": {}, "application/gzip": {}}},
        **error_responses(401, 403, 404, 422),
    },
)
async def get_artifact(sha256: Sha256Path, service: Service, _principal: ReadPrincipal) -> Response:
    return await _content(service, await _found(service, sha256))


@router.get(
    f"{API_PREFIX}/jobs/{{job_id}}/artifacts/{{sha256}}",
    summary="Download an artifact of a job",
    description="For a job's components (the scoring services' `fetch-model` on Kubernetes): an artifact its "
    "pipeline version names, authenticated with the job's own token (`Bearer mjt_...`) or a write API token.",
    response_class=Response,
    responses={
        200: {"content": {"application/octet-stream": {}, "application/gzip": {}}},
        **error_responses(401, 403, 404, 422),
    },
)
async def get_job_artifact(
    job_id: Annotated[uuid.UUID, Path(description="The job's id (a UUID).")],
    sha256: Sha256Path,
    service: Service,
    credential: Reporter,
) -> Response:
    job = await authorized_job(service, job_id, credential)
    version = await service.get_version(job.pipeline, job.pipeline_version)
    bundle = await anyio.to_thread.run_sync(bundle_of, version.ir)
    named = {ir.artifact_digest(model.spec.uri) for model in bundle.used_models()}
    if sha256 not in named:
        raise NotFound(
            f"job {job_id} names no artifact {sha256}",
            code="artifact_not_found",
            details={"job_id": str(job_id), "sha256": sha256},
        )
    return await _content(service, await _found(service, sha256))
