"""`/api/v1/pipelines`: deploy IR bundles as immutable, numbered pipeline versions; read them back.

The deploy body is read by hand rather than declared as a pydantic body, because one endpoint takes three
media types: multi-document YAML, `{"files": {...}}` JSON, and a gzip-compressed tarball. The body is read up
to `MAX_BUNDLE_BYTES` (the IR loader's own bundle limit) and refused with 413 beyond.
"""

from __future__ import annotations

import email.message
import json
from typing import Annotated, Any, Final

from fastapi import APIRouter, Path, Query, Request, Response, status
from pydantic import ValidationError

import ir
from ir.load import MAX_BUNDLE_BYTES
from scheduler.api.deps import API_PREFIX, Service
from scheduler.api.errors import PayloadTooLarge, UnsupportedMediaType, error_responses
from scheduler.api.examples import BUNDLE_YAML
from scheduler.api.models import (
    NAME_MAX,
    NAME_PATTERN,
    VERSION_MAX,
    DeploymentOut,
    DiffOut,
    FilesBundle,
    PipelineList,
    PipelineOut,
    ValidationOut,
    ValuesOut,
    VersionOut,
)
from scheduler.auth import AuthFirstRoute, ReadPrincipal, WritePrincipal
from scheduler.service import BundleFormat
from scheduler.values import PREVIEW_JOB_ID

router = APIRouter(prefix=f"{API_PREFIX}/pipelines", tags=["pipelines"], route_class=AuthFirstRoute)

YAML_TYPES: Final = frozenset({"application/yaml", "text/yaml", "application/x-yaml", "text/x-yaml"})
JSON_TYPES: Final = frozenset({"application/json"})
GZIP_TYPES: Final = frozenset({"application/gzip", "application/x-gzip", "application/x-tar+gzip", "application/x-tgz"})
_MAX_PARAMS: Final = 256

PipelineNamePath = Annotated[
    str, Path(min_length=1, max_length=NAME_MAX, pattern=NAME_PATTERN, description="The pipeline's name.")
]
VersionPath = Annotated[int, Path(ge=1, le=VERSION_MAX, description="The version number (1, 2, ...).")]

_DEPLOY_BODY: Final[dict[str, Any]] = {
    "required": True,
    "description": "An IR bundle: every document of one pipeline (the pipeline, its flows, models and data "
    "channels), as multi-document YAML, as named files in JSON, or as a .tar.gz of the bundle folder.",
    "content": {
        "application/yaml": {"schema": {"type": "string"}, "example": BUNDLE_YAML},
        "application/json": {"schema": FilesBundle.model_json_schema(ref_template="#/components/schemas/{model}")},
        "application/gzip": {"schema": {"type": "string", "format": "binary"}},
    },
}


def _media_type(request: Request) -> str:
    header = request.headers.get("content-type")
    if not header:
        return ""
    message = email.message.Message()
    message["content-type"] = header
    return message.get_content_type().lower()


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(
            f"the bundle is larger than {limit // 2**20} MiB", details={"limit_bytes": limit, "size": int(declared)}
        )
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"the bundle is larger than {limit // 2**20} MiB", details={"limit_bytes": limit})
        chunks.append(chunk)
    return b"".join(chunks)


def _files_bundle(body: bytes) -> dict[str, str]:
    try:
        data = json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise ir.IRValidationError([ir.Issue("<request>", "", "", f"the body is not valid JSON: {exc}")]) from None
    try:
        return dict(FilesBundle.model_validate(data).files)
    except ValidationError as exc:
        raise ir.IRValidationError(
            [
                ir.Issue("<request>", "", ".".join(str(p) for p in e["loc"]), e["msg"])
                for e in exc.errors(include_url=False)
            ]
        ) from None


@router.post(
    "",
    summary="Deploy an IR bundle",
    description="Validate the bundle and store it as the next version of its pipeline. The same IR again "
    "(equal digest, however the files are laid out) returns the stored version with 200.",
    status_code=status.HTTP_201_CREATED,
    response_model=DeploymentOut,
    responses={
        200: {"model": DeploymentOut, "description": "The same IR was already stored: that version."},
        **error_responses(401, 403, 409, 413, 415, 422, 503),
    },
    openapi_extra={"requestBody": _DEPLOY_BODY},
)
async def deploy(request: Request, response: Response, service: Service, principal: WritePrincipal) -> DeploymentOut:
    fmt, payload = await _bundle_body(request)
    created_by = principal.name if principal.authenticated else None
    deployment = await service.deploy(fmt, payload, created_by, principal)
    if not deployment.created:
        response.status_code = status.HTTP_200_OK
    return DeploymentOut.of(deployment.version, deployment.created)


async def _bundle_body(request: Request) -> tuple[BundleFormat, bytes | dict[str, str]]:
    """The bundle of a deploy (or validate) request, in the format its Content-Type says."""
    media = _media_type(request)
    if media not in YAML_TYPES | JSON_TYPES | GZIP_TYPES:
        raise UnsupportedMediaType(
            f"cannot read a bundle sent as {media or 'no Content-Type'!r}: send application/yaml, "
            'application/json ({"files": {name: content}}) or application/gzip (a .tar.gz)',
            details={"accepted": sorted(YAML_TYPES | JSON_TYPES | GZIP_TYPES)},
        )
    body = await _read_body(request, MAX_BUNDLE_BYTES)
    if media in JSON_TYPES:
        return BundleFormat.FILES, _files_bundle(body)
    if media in GZIP_TYPES:
        return BundleFormat.TARBALL, body
    return BundleFormat.YAML, body


@router.post(
    "/validate",
    summary="Validate an IR bundle without deploying it",
    description="The same bodies and the same checks as a deploy (the IR, then the trust checks for this caller: "
    "code-running runtimes, roots, uri schemes), storing nothing: 200 when a deploy would accept the bundle, "
    "with its digest and the stored version with the same digest (a deploy would return that one unchanged), or "
    "null; 422 `invalid_ir` with every issue located (file, document, path, line) like a deploy. Needs the "
    "`write` scope: it is a dry run of a write.",
    response_model=ValidationOut,
    responses=error_responses(401, 403, 413, 415, 422, 503),
    openapi_extra={"requestBody": _DEPLOY_BODY},
)
async def validate(request: Request, service: Service, principal: WritePrincipal) -> ValidationOut:
    fmt, payload = await _bundle_body(request)
    checked = await service.validate(fmt, payload, principal)
    return ValidationOut(
        valid=True, pipeline=checked.pipeline, digest=checked.digest, deployed_version=checked.deployed_version
    )


@router.get(
    "",
    summary="List pipelines",
    description="Every pipeline, by name, with its versions, its latest version (number, when and by whom it "
    "was deployed) and how many jobs ran it (per version and in all).",
    response_model=PipelineList,
    responses=error_responses(401, 403, 503),
)
async def list_pipelines(service: Service, _: ReadPrincipal) -> PipelineList:
    return PipelineList(items=[PipelineOut.of(p) for p in await service.list_pipelines()])


@router.get(
    "/{name}",
    summary="Get a pipeline and its versions",
    response_model=PipelineOut,
    responses=error_responses(401, 403, 404, 422, 503),
)
async def get_pipeline(name: PipelineNamePath, service: Service, _: ReadPrincipal) -> PipelineOut:
    return PipelineOut.of(await service.get_pipeline(name))


@router.get(
    "/{name}/versions/{version}",
    summary="Get the IR of a pipeline version",
    response_model=VersionOut,
    responses=error_responses(401, 403, 404, 422, 503),
)
async def get_version(name: PipelineNamePath, version: VersionPath, service: Service, _: ReadPrincipal) -> VersionOut:
    return VersionOut.of(await service.get_version(name, version))


@router.get(
    "/{name}/diff",
    summary="Compare two versions of a pipeline",
    description="Unified diffs from version `from` to version `to`: of the IR documents (one file per document, "
    "named as in a bundle folder) and of the values documents rendered with each version's default parameters.",
    response_model=DiffOut,
    responses=error_responses(401, 403, 404, 422, 503),
)
async def diff_versions(
    name: PipelineNamePath,
    service: Service,
    _: ReadPrincipal,
    old: Annotated[int, Query(alias="from", ge=1, le=VERSION_MAX, description="The version to compare from.")],
    new: Annotated[int, Query(alias="to", ge=1, le=VERSION_MAX, description="The version to compare to.")],
) -> DiffOut:
    diff = await service.diff_versions(name, old, new)
    return DiffOut(
        name=name, from_version=diff.before.number, to_version=diff.after.number, ir=diff.ir, values=diff.values
    )


@router.get(
    "/{name}/versions/{version}/values",
    summary="Preview the values of a job",
    description="Render the version with the given parameters and the server's global settings, exactly as "
    "`install` would for a job (with the nil UUID as job id and no job token).",
    response_model=ValuesOut,
    responses=error_responses(401, 403, 404, 422, 503),
)
async def preview_values(
    name: PipelineNamePath,
    version: VersionPath,
    service: Service,
    _: ReadPrincipal,
    param: Annotated[
        list[str] | None,
        Query(
            description="A parameter as NAME=VALUE; repeat for several.",
            examples=["input=data/today.csv"],
            max_length=_MAX_PARAMS,
        ),
    ] = None,
) -> ValuesOut:
    parameters: dict[str, str] = {}
    issues: list[ir.Issue] = []
    for item in param or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            issues.append(ir.Issue("<parameters>", "", item, "expected NAME=VALUE, e.g. input=data/in.csv"))
        else:
            parameters[key] = value
    if issues:
        raise ir.IRValidationError(issues)
    stored, values = await service.preview_values(name, version, parameters)
    return ValuesOut(name=stored.pipeline, version=stored.number, job_id=PREVIEW_JOB_ID, values=ir.to_document(values))
