"""`/api/v1/jobs/{id}/spec|phase|status`: what the pipeline tasks of a job (`modelops task install|wait|uninstall`,
run as Tekton steps next to the cluster) need from the scheduler.

A task knows only its job's id, the scheduler's URL and the job's token (from a Secret), so:

- `GET .../spec` gives it everything `install` renders the values from: the pipeline version's IR (as one JSON
  file of the canonical documents), the job's parameters and environment, and the global settings as the
  server computes them (`scheduler.values.globals_for`, with the job token). `ir.render` on these gives the
  values `scheduler.values.render_values` gives on the server: the preview is what the task installs.
- `POST .../phase` is how a task reports that it started, succeeded or failed (`JobStore.record_phase`).
  A report racing the end of the run (the job is finished, or cancelling) is accepted and changes nothing.
- `GET .../status` is what `modelops task wait` polls: state, task, the flows' completion report, reason.

All three authenticate like progress reports (the `Reporter` dependency): the job's own token, checked against
the job's stored hash, or an API token with the `write` scope.
"""

from __future__ import annotations

import json
import uuid
from typing import Annotated, Any, Literal

import anyio.to_thread
from fastapi import APIRouter, Path, Response, status
from pydantic import BaseModel, ConfigDict, Field, model_validator

from scheduler.api.deps import API_PREFIX, Service
from scheduler.api.errors import error_responses
from scheduler.api.models import EXAMPLE_DIGEST, EXAMPLE_JOB_ID, MESSAGE_MAX, CleanText, JobOut
from scheduler.auth import AuthFirstRoute, Reporter, ReporterCredential, Unauthorized
from scheduler.lifecycle import FAILED_REASONS, completion_failure_reason
from scheduler.service import SchedulerService
from scheduler.states import JobState, Task
from scheduler.store import Job
from scheduler.tokens import verify_job_token
from scheduler.values import DOCUMENTS_KEY, globals_for

__all__ = ["IR_FILE", "PhaseIn", "SpecOut", "StatusOut", "router"]

router = APIRouter(prefix=f"{API_PREFIX}/jobs", tags=["tasks"], route_class=AuthFirstRoute)

IR_FILE = "ir.json"
"""The name of the one file `/spec` puts the IR in: the canonical documents as a JSON list."""

JobIdPath = Annotated[uuid.UUID, Path(description="The job's id (a UUID).")]

_EXAMPLE_TOKEN = "mjt_3f2b6c1e8f7d4c529d8e2a1b0c9d8e7f_xxxxxxxxxxxxxxxxxxxxxxxx"


class SpecOut(BaseModel):
    """What `modelops task install` renders the job's values from (with `ir.render`)."""

    model_config = ConfigDict(
        populate_by_name=True,
        json_schema_extra={
            "examples": [
                {
                    "jobId": EXAMPLE_JOB_ID,
                    "pipeline": "digits",
                    "version": 2,
                    "digest": EXAMPLE_DIGEST,
                    "files": {IR_FILE: '[{"apiVersion": "modelops/v1", "kind": "ScoringPipeline", ...}]'},
                    "parameters": {"input": "data/today.csv"},
                    "environment": {"namespace": "scoring"},
                    "globals": {
                        "jobId": EXAMPLE_JOB_ID,
                        "namespace": "scoring",
                        "image": {"registry": "ghcr.io/modelops", "tag": "0.1.0"},
                        "logLevel": "info",
                        "sizeProfile": "small",
                        "scheduler": {"url": "http://modelops-scheduler:8787", "token": _EXAMPLE_TOKEN},
                    },
                }
            ]
        },
    )

    job_id: uuid.UUID = Field(alias="jobId")
    pipeline: str
    version: int
    digest: str = Field(description="sha256 of the canonical IR: the bundle loaded from `files` must have it.")
    files: dict[str, str] = Field(description="The IR bundle as named files (`ir.load_bundle_files`).")
    parameters: dict[str, Any] = Field(description="The job's parameters, as given when it was started.")
    environment: dict[str, Any] = Field(description="The job's environment, as given when it was started.")
    globals_: dict[str, Any] = Field(
        alias="globals",
        description="The global settings (`ir.Globals`, JSON by alias): job id, images, log level, size "
        "profile, model store, namespace, and the scheduler's URL with the job token.",
    )


class PhaseIn(BaseModel):
    """A pipeline task reports on itself. `reason` (one of the failure reasons of `scheduler.lifecycle`) is
    required with `failed` and refused otherwise."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"task": "install", "status": "started"},
                {"task": "install", "status": "succeeded", "message": "release modelops-3f2b... revision 1"},
                {
                    "task": "install",
                    "status": "failed",
                    "reason": "InstallFailed",
                    "message": "helm upgrade --install modelops-3f2b... failed: Kubernetes cluster unreachable",
                },
            ]
        },
    )

    task: Task
    status: Literal["started", "succeeded", "failed"]
    reason: str | None = Field(default=None, description=f"With `failed`: one of {', '.join(sorted(FAILED_REASONS))}.")
    message: Annotated[CleanText, Field(max_length=MESSAGE_MAX)] | None = None

    @model_validator(mode="after")
    def _reason_fits_status(self) -> PhaseIn:
        if self.status == "failed":
            if self.reason not in FAILED_REASONS:
                raise ValueError(f"a failed report needs a reason, one of {', '.join(sorted(FAILED_REASONS))}")
        elif self.reason is not None:
            raise ValueError("only a failed report carries a reason")
        return self


class StatusOut(BaseModel):
    """Where the job stands, for `modelops task wait`."""

    model_config = ConfigDict(
        populate_by_name=True,
        json_schema_extra={
            "examples": [
                {"state": "RUNNING", "task": "wait", "completion": None, "completionMessage": None, "reason": "Ready"},
                {
                    "state": "RUNNING",
                    "task": "wait",
                    "completion": "failed",
                    "completionMessage": "sink unreachable",
                    "reason": "Ready",
                },
            ]
        },
    )

    state: JobState
    task: Task | None
    completion: Literal["succeeded", "failed"] | None = Field(
        description="What the scoring flows reported through `/complete`; null until they do."
    )
    completion_message: str | None = Field(alias="completionMessage")
    completion_reason: str | None = Field(
        default=None,
        alias="completionReason",
        description="With a failed completion: the job's reason for it, `ScoringFailed` or `InvalidInput`.",
    )
    reason: str | None


def _json(model: BaseModel, status_code: int = status.HTTP_200_OK) -> Response:
    return Response(model.model_dump_json(by_alias=True), status_code=status_code, media_type="application/json")


async def authorized_job(service: SchedulerService, job_id: uuid.UUID, credential: ReporterCredential) -> Job:
    """The job, once `credential` may act for it: its own job token, or a `write` API token (or open mode)."""
    job = await service.get_job(job_id, events=False)
    if credential.job_token is not None and not verify_job_token(job.token_hash, credential.job_token):
        raise Unauthorized(f"the job token is not the token of job {job_id}", code="invalid_job_token")
    return job


async def job_spec(service: SchedulerService, job: Job) -> SpecOut:
    """The spec of `job`: its version's IR, its parameters and environment, and its global settings."""
    version = await service.get_version(job.pipeline, job.pipeline_version)
    documents = version.ir.get(DOCUMENTS_KEY)
    token = service.job_token(job.id)

    def build() -> SpecOut:
        settings = globals_for(service.settings, job.id, token, job.environment)
        return SpecOut(
            job_id=job.id,
            pipeline=job.pipeline,
            version=job.pipeline_version,
            digest=version.digest,
            files={IR_FILE: json.dumps(documents if isinstance(documents, list) else [], ensure_ascii=False)},
            parameters=job.parameters,
            environment=job.environment,
            globals_=settings.model_dump(mode="json", by_alias=True, exclude_none=True),
        )

    return await anyio.to_thread.run_sync(build)


@router.get(
    "/{job_id}/spec",
    summary="Get what a job's install task renders",
    description="For `modelops task install`: the pipeline version's IR, the job's parameters and environment, "
    "and the global settings (with the job token), so `ir.render` gives the values the server's preview "
    "gives. Authenticated with the job's own token (`Bearer mjt_...`) or an API token with the write scope.",
    response_model=SpecOut,
    responses=error_responses(401, 403, 404, 422, 503),
)
async def get_spec(job_id: JobIdPath, service: Service, credential: Reporter) -> Response:
    job = await authorized_job(service, job_id, credential)
    return _json(await job_spec(service, job))


@router.post(
    "/{job_id}/phase",
    summary="Report a pipeline task's phase",
    description="For `modelops task install|wait|uninstall`: the task started, succeeded or failed. install "
    "started moves a PENDING job to INSTALLING, install succeeded moves an INSTALLING job to RUNNING (task "
    "wait), uninstall started sets the task to uninstall, a failure records its reason and message; anything "
    "else is recorded as an event. A report about a finished job (or about install or wait of a cancelling "
    "one) changes nothing and is still answered 202. Authenticated like progress reports.",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=JobOut,
    responses=error_responses(401, 403, 404, 422, 503),
)
async def report_phase(job_id: JobIdPath, body: PhaseIn, service: Service, credential: Reporter) -> Response:
    await authorized_job(service, job_id, credential)

    def record() -> Job:
        return service.store.record_phase(job_id, body.task, body.status, reason=body.reason, message=body.message)

    job = await anyio.to_thread.run_sync(record)
    return _json(JobOut.of(job), status.HTTP_202_ACCEPTED)


@router.get(
    "/{job_id}/status",
    summary="Get a job's state for its wait task",
    description="For `modelops task wait`: state, current task, the flows' completion report and the reason. "
    "Authenticated like progress reports.",
    response_model=StatusOut,
    responses=error_responses(401, 403, 404, 422, 503),
)
async def get_status(job_id: JobIdPath, service: Service, credential: Reporter) -> Response:
    job = await authorized_job(service, job_id, credential)
    completion: Literal["succeeded", "failed"] | None = (
        "succeeded" if job.completion == "succeeded" else "failed" if job.completion == "failed" else None
    )
    return _json(
        StatusOut(
            state=job.state,
            task=job.task,
            completion=completion,
            completion_message=job.completion_message,
            completion_reason=completion_failure_reason(job) if completion == "failed" else None,
            reason=job.reason,
        )
    )
