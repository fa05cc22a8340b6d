"""Request and response bodies of the REST API, as pydantic models: the OpenAPI schema is generated from them.

Request models are strict where a loose reading would hide a client bug (counters are integers, not "5" or
5.0; `succeeded` is a boolean), and bound every value so nothing reaches the database that it would refuse
with an error of its own (64-bit integers, finite numbers, text without NUL or lone surrogates).
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any, Final, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictBool, StrictInt, model_validator

from scheduler.api.examples import BUNDLE_FILES
from scheduler.service import TokenQuotaUsage, json_object_problem, text_problem
from scheduler.states import JobState, Task
from scheduler.store import Job, JobEvent, Pipeline, PipelineVersion, ProgressSample, VersionInfo

INT64_MAX: Final = 2**63 - 1
VERSION_MAX: Final = 2**31 - 1
"""Version numbers are 32-bit in the database."""
NAME_PATTERN: Final = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
"""A pipeline name: a DNS label, as the IR requires of `metadata.name`."""
NAME_MAX: Final = 63
MESSAGE_MAX: Final = 16_384

EXAMPLE_JOB_ID: Final = "3f2b6c1e-8f7d-4c52-9d8e-2a1b0c9d8e7f"
EXAMPLE_DIGEST: Final = "9a0364b9e99bb480dd25e1f0284c8555a2d3b0c9e1d5b1e6a2f4c8e7d6b5a4c3"
EXAMPLE_TIME: Final = "2025-06-01T12:00:00Z"


def _clean_text(value: str) -> str:
    problem = text_problem(value)
    if problem:
        raise ValueError(problem)
    return value


def _clean_object(value: dict[str, Any]) -> dict[str, Any]:
    problem = json_object_problem(value)
    if problem:
        raise ValueError(problem)
    return value


CleanText = Annotated[str, AfterValidator(_clean_text)]
JsonObject = Annotated[dict[str, Any], AfterValidator(_clean_object)]
PipelineName = Annotated[str, Field(min_length=1, max_length=NAME_MAX, pattern=NAME_PATTERN)]
ParameterValue = (
    Annotated[StrictBool, Field(title="boolean")]
    | Annotated[StrictInt, Field(ge=-INT64_MAX - 1, le=INT64_MAX, title="integer")]
    | Annotated[float, Field(allow_inf_nan=False, title="number")]
    | Annotated[CleanText, Field(max_length=MESSAGE_MAX, title="string")]
)
Counter = Annotated[StrictInt, Field(ge=0, le=INT64_MAX)]


def _examples(*examples: dict[str, Any]) -> ConfigDict:
    return ConfigDict(json_schema_extra={"examples": list(examples)})


# ------------------------------------------------------------------------------------------------ pipelines


class FilesBundle(BaseModel):
    """An IR bundle as named files: file name (e.g. `flows/score.yaml`) -> its YAML or JSON text."""

    model_config = _examples({"files": BUNDLE_FILES})

    files: dict[CleanText, CleanText] = Field(description="File name -> file content (UTF-8 YAML or JSON text).")


class DeploymentOut(BaseModel):
    """A deployed pipeline version. `created` is false when the same IR was already stored (HTTP 200)."""

    model_config = _examples(
        {
            "name": "digits",
            "version": 3,
            "digest": EXAMPLE_DIGEST,
            "created": True,
            "created_at": EXAMPLE_TIME,
            "created_by": "ci",
        }
    )

    name: str
    version: int = Field(description="The version number, 1 for the first deploy of the pipeline.")
    digest: str = Field(description="SHA-256 of the normalised IR: equal IR, equal digest.")
    created: bool = Field(description="True when this request stored a new version.")
    created_at: datetime
    created_by: str | None = Field(description="Name of the API token that deployed it.")

    @classmethod
    def of(cls, version: PipelineVersion, created: bool) -> DeploymentOut:
        return cls(
            name=version.pipeline,
            version=version.number,
            digest=version.digest,
            created=created,
            created_at=version.created_at,
            created_by=version.created_by,
        )


class ValidationOut(BaseModel):
    """What a deploy of the bundle would do, told without storing it: it is valid (errors are 422 `invalid_ir`)."""

    model_config = _examples({"valid": True, "pipeline": "digits", "digest": EXAMPLE_DIGEST, "deployed_version": 3})

    valid: Literal[True] = Field(description="Always true: an invalid bundle is answered with 422 `invalid_ir`.")
    pipeline: str = Field(description="The pipeline the bundle defines.")
    digest: str = Field(description="SHA-256 of the normalised IR, as a deploy would store it.")
    deployed_version: int | None = Field(
        description="The stored version with this digest (a deploy would return it unchanged), or null: a deploy "
        "would store a new version."
    )


class VersionSummary(BaseModel):
    """One version of a pipeline, without its IR."""

    version: int
    digest: str
    created_at: datetime
    created_by: str | None
    jobs: int = Field(description="How many jobs ran (or run) this version.")

    @classmethod
    def of(cls, info: VersionInfo) -> VersionSummary:
        return cls(
            version=info.number,
            digest=info.digest,
            created_at=info.created_at,
            created_by=info.created_by,
            jobs=info.jobs,
        )


class PipelineOut(BaseModel):
    """A pipeline and its versions, oldest first."""

    model_config = _examples(
        {
            "name": "digits",
            "created_at": EXAMPLE_TIME,
            "latest_version": 2,
            "latest_deployed_at": EXAMPLE_TIME,
            "latest_deployed_by": "alice",
            "jobs": 3,
            "versions": [
                {"version": 1, "digest": EXAMPLE_DIGEST, "created_at": EXAMPLE_TIME, "created_by": "ci", "jobs": 2},
                {
                    "version": 2,
                    "digest": EXAMPLE_DIGEST[::-1],
                    "created_at": EXAMPLE_TIME,
                    "created_by": "alice",
                    "jobs": 1,
                },
            ],
        }
    )

    name: str
    created_at: datetime
    latest_version: int
    latest_deployed_at: datetime = Field(description="When the latest version was deployed.")
    latest_deployed_by: str | None = Field(description="Name of the API token that deployed the latest version.")
    jobs: int = Field(description="How many jobs ran (or run) any version of this pipeline.")
    versions: list[VersionSummary]

    @classmethod
    def of(cls, pipeline: Pipeline) -> PipelineOut:
        return cls(
            name=pipeline.name,
            created_at=pipeline.created_at,
            latest_version=pipeline.latest.number,
            latest_deployed_at=pipeline.latest.created_at,
            latest_deployed_by=pipeline.latest.created_by,
            jobs=pipeline.jobs,
            versions=[VersionSummary.of(v) for v in pipeline.versions],
        )


class PipelineList(BaseModel):
    """Every pipeline, by name."""

    items: list[PipelineOut]


class VersionOut(BaseModel):
    """A stored pipeline version: its normalised IR documents (defaults explicit, canonical order)."""

    model_config = _examples(
        {
            "name": "digits",
            "version": 1,
            "digest": EXAMPLE_DIGEST,
            "created_at": EXAMPLE_TIME,
            "created_by": "ci",
            "documents": [
                {"apiVersion": "modelops/v1", "kind": "ScoringPipeline", "metadata": {"name": "digits"}, "spec": {}}
            ],
        }
    )

    name: str
    version: int
    digest: str
    created_at: datetime
    created_by: str | None
    documents: list[dict[str, Any]] = Field(description="The IR documents: pipeline, channels, flows, models.")

    @classmethod
    def of(cls, version: PipelineVersion) -> VersionOut:
        documents = version.ir.get("documents")
        return cls(
            name=version.pipeline,
            version=version.number,
            digest=version.digest,
            created_at=version.created_at,
            created_by=version.created_by,
            documents=documents if isinstance(documents, list) else [],
        )


class DiffOut(BaseModel):
    """What changed between two versions of a pipeline, as unified diffs ('' when nothing did)."""

    model_config = _examples(
        {
            "name": "digits",
            "from_version": 1,
            "to_version": 2,
            "ir": "--- v1/pipeline.yaml\n+++ v2/pipeline.yaml\n@@ -9 +9 @@\n-    default: data/in.csv\n"
            "+    default: data/today.csv\n",
            "values": "--- v1/values.yaml\n+++ v2/values.yaml\n@@ -40 +40 @@\n-      input: data/in.csv\n"
            "+      input: data/today.csv\n",
        }
    )

    name: str
    from_version: int
    to_version: int
    ir: str = Field(
        description="Unified diff of the IR documents, one file per document as a bundle folder names them "
        "(`pipeline.yaml`, `channels/NAME.yaml`, `flows/NAME.yaml`, `models/NAME.yaml`)."
    )
    values: str = Field(
        description="Unified diff of the values documents rendered with each version's default parameters "
        "(a version needing a parameter without default shows a comment saying so instead)."
    )


class ValuesOut(BaseModel):
    """The Helm values document `install` would deploy for a job of this version (rendered with a preview
    job id, the nil UUID, and without a job token)."""

    model_config = _examples(
        {
            "name": "digits",
            "version": 1,
            "job_id": "00000000-0000-0000-0000-000000000000",
            "values": {"global": {"jobId": "00000000-0000-0000-0000-000000000000"}, "pipeline": {"name": "digits"}},
        }
    )

    name: str
    version: int
    job_id: uuid.UUID
    values: dict[str, Any]


# ------------------------------------------------------------------------------------------------ jobs


class JobCreate(BaseModel):
    """A request to run a pipeline version."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"pipeline": "digits"},
                {
                    "pipeline": "digits",
                    "version": 1,
                    "parameters": {"input": "data/today.csv", "output": "out/today.csv"},
                    "environment": {"namespace": "scoring"},
                },
            ]
        },
    )

    pipeline: PipelineName
    version: Annotated[StrictInt, Field(ge=1, le=VERSION_MAX)] | None = Field(
        default=None, description="The version to run; the latest when omitted."
    )
    parameters: dict[Annotated[CleanText, Field(max_length=128)], ParameterValue] | None = Field(
        default=None, description="Values of the pipeline's declared parameters (the rest keep their defaults)."
    )
    environment: JsonObject | None = Field(
        default=None, description="Where and how the job runs, e.g. `{namespace: scoring}`; backend-specific."
    )


SizeUnit = Literal["records", "bytes"]
"""What a source's size counts: records (a SQL count, a Parquet footer, a counted file, a queue's backlog) or,
when records are not known without reading everything, bytes of the input files."""
FlowState = Literal["starting", "running", "done", "failed", "stopped"]
"""A flow's state as it reports it: `starting` (building its channels, waiting for its services), `running`,
then `done` (its source exhausted, completion reported), `failed`, or `stopped` (asked to stop)."""
Rate = Annotated[float, Field(ge=0, allow_inf_nan=False)]
FlowName = Annotated[str, Field(pattern=NAME_PATTERN, max_length=NAME_MAX)]


class LatencyOut(BaseModel):
    """Score request latencies in milliseconds, retries included, over the flow's last requests."""

    model_config = ConfigDict(extra="forbid")

    mean: Rate
    p50: Rate
    p99: Rate


class ServiceProgressOut(BaseModel):
    """What a flow saw of one scoring service it calls: requests, rows scored, errors, latency."""

    model_config = ConfigDict(extra="forbid")

    requests: Counter = Field(default=0, description="Score requests answered.")
    rows: Counter = Field(default=0, description="Rows in the answered requests.")
    errors: Counter = Field(default=0, description="Requests refused, or given up after their retries.")
    retries: Counter = Field(default=0, description="Attempts retried (the service unreachable or busy).")
    latency_ms: LatencyOut | None = Field(default=None, description="None until a request was answered.")


class FlowProgressOut(BaseModel):
    """One flow's latest progress report, as the flow sent it, with the time the scheduler received it."""

    state: FlowState | None = None
    read: int = 0
    written: int = 0
    failed: int = 0
    filtered: int = Field(default=0, description="Records a filter step left out.")
    total: int | None = Field(default=None, description="The size of the flow's source in `unit`, when known.")
    unit: SizeUnit | None = None
    done: int | None = Field(default=None, description="How much of `total` is read, in `unit`.")
    rate: float | None = Field(default=None, description="Records read per second since the flow began reading.")
    outputs: list[str] = Field(default_factory=list, description="The flow's sinks: where its records go.")
    services: dict[str, ServiceProgressOut] = Field(default_factory=dict)
    at: datetime | None = Field(default=None, description="When the scheduler received the report.")


class ProgressOut(BaseModel):
    read: int = Field(description="Records read from the source(s).")
    written: int = Field(description="Records written to the sinks.")
    failed: int = Field(description="Records that failed.")
    filtered: int = Field(default=0, description="Records a filter step left out (the sum over the flows).")
    total: int | None = Field(
        default=None,
        description="The size of the sources in `unit` when every reporting flow knows its own in the same unit "
        "(the sum); None when unknown.",
    )
    unit: SizeUnit | None = None
    done: int | None = Field(default=None, description="How much of `total` is read, in `unit`.")
    flows: dict[str, FlowProgressOut] = Field(
        default_factory=dict, description="The latest report of each flow, by flow name."
    )

    @classmethod
    def of(cls, job: Job) -> ProgressOut:
        flows = {
            name: FlowProgressOut.model_validate(entry) for name, entry in sorted((job.flow_progress or {}).items())
        }
        sized = [f for f in flows.values() if f.total is not None and f.unit is not None]
        units = {f.unit for f in sized}
        whole = bool(flows) and len(sized) == len(flows) and len(units) == 1
        return cls(
            read=job.records_read,
            written=job.records_written,
            failed=job.records_failed,
            filtered=sum(f.filtered for f in flows.values()),
            total=sum(f.total or 0 for f in sized) if whole else None,
            unit=next(iter(units)) if whole else None,
            done=sum(f.done if f.done is not None else f.read for f in sized) if whole else None,
            flows=flows,
        )


class CompletionOut(BaseModel):
    succeeded: bool
    message: str | None


class JobEventOut(BaseModel):
    """One entry of a job's history: a state change, or a task change (`from == to`), or an event of the run
    with neither (`from == to`, the same task: e.g. `ServiceRestarted`, a component restarted by the local
    backend)."""

    model_config = ConfigDict(populate_by_name=True)

    at: datetime
    from_state: JobState | None = Field(alias="from", description="None for the creation of the job.")
    to_state: JobState = Field(alias="to")
    task: Task | None
    reason: str | None
    message: str | None

    @classmethod
    def of(cls, event: JobEvent) -> JobEventOut:
        return cls.model_validate(
            {
                "at": event.at,
                "from": event.from_state,
                "to": event.to_state,
                "task": event.task,
                "reason": event.reason,
                "message": event.message,
            }
        )


_FLOW_REPORT_EXAMPLE: Final[dict[str, Any]] = {
    "state": "running",
    "read": 5000,
    "written": 4890,
    "failed": 10,
    "filtered": 100,
    "total": 20000,
    "unit": "records",
    "done": 5000,
    "rate": 2480.5,
    "outputs": ["file sink 'scores' (/data/scores.csv)"],
    "services": {
        "digits": {
            "requests": 20,
            "rows": 5000,
            "errors": 0,
            "retries": 1,
            "latency_ms": {"mean": 12.5, "p50": 11.0, "p99": 30.2},
        }
    },
}
"""One flow's progress report: what a flow sends (with its name) and what the job shows per flow (with `at`)."""


_JOB_EXAMPLE: Final[dict[str, Any]] = {
    "id": EXAMPLE_JOB_ID,
    "pipeline": "digits",
    "version": 2,
    "state": "RUNNING",
    "task": "wait",
    "reason": "Ready",
    "message": "1 scoring service(s) ready, 1 scoring flow(s) running",
    "parameters": {"input": "data/today.csv"},
    "environment": {},
    "backend": "local",
    "backend_ref": None,
    "created_at": EXAMPLE_TIME,
    "started_at": EXAMPLE_TIME,
    "finished_at": None,
    "queue_position": None,
    "progress": {
        "read": 5000,
        "written": 4890,
        "failed": 10,
        "filtered": 100,
        "total": 20000,
        "unit": "records",
        "done": 5000,
        "flows": {
            "digits-batch": {**_FLOW_REPORT_EXAMPLE, "at": EXAMPLE_TIME},
        },
    },
    "completion": None,
    "flow_completions": {},
}


class JobOut(BaseModel):
    """A job: where it stands (`state`, current pipeline `task`), why (`reason`, `message`), and how far."""

    model_config = _examples(_JOB_EXAMPLE)

    id: uuid.UUID
    pipeline: str
    version: int
    state: JobState
    task: Task | None = Field(description="The pipeline task running: install, wait or uninstall.")
    reason: str | None
    message: str | None
    parameters: dict[str, Any]
    environment: dict[str, Any]
    backend: str
    backend_ref: dict[str, Any] | None = Field(description="How the backend finds the job's run.")
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    queue_position: int | None = Field(
        default=None,
        ge=1,
        description="Only while the job waits for admission (PENDING, every running slot taken: "
        "`max_running_jobs`): 1 for the next job to start, 2 for the one after, ...; null otherwise.",
    )
    progress: ProgressOut
    completion: CompletionOut | None = Field(description="What the scoring flows reported at the end, if they did.")
    flow_completions: dict[str, CompletionOut] = Field(
        description="The reports of the flows that reported one by one, by flow name (the job's `completion` is "
        "known once every flow succeeded, or at the first failure)."
    )

    @classmethod
    def fields_of(cls, job: Job) -> dict[str, Any]:
        return {
            "id": job.id,
            "pipeline": job.pipeline,
            "version": job.pipeline_version,
            "state": job.state,
            "task": job.task,
            "reason": job.reason,
            "message": job.message,
            "parameters": job.parameters,
            "environment": job.environment,
            "backend": job.backend,
            "backend_ref": job.backend_ref,
            "created_at": job.created_at,
            "started_at": job.started_at,
            "finished_at": job.finished_at,
            "queue_position": job.queue_position,
            "progress": ProgressOut.of(job),
            "completion": (
                CompletionOut(succeeded=job.completion == "succeeded", message=job.completion_message)
                if job.completion is not None
                else None
            ),
            "flow_completions": {
                name: CompletionOut(succeeded=bool(report.get("succeeded")), message=report.get("message"))
                for name, report in sorted((job.flow_completions or {}).items())
            },
        }

    @classmethod
    def of(cls, job: Job) -> JobOut:
        return cls(**cls.fields_of(job))


class JobDetail(JobOut):
    """A job with its history of events, oldest first."""

    model_config = _examples(
        {
            **_JOB_EXAMPLE,
            "events": [
                {"at": EXAMPLE_TIME, "from": None, "to": "PENDING", "task": None, "reason": "Created", "message": None},
                {
                    "at": EXAMPLE_TIME,
                    "from": "PENDING",
                    "to": "INSTALLING",
                    "task": "install",
                    "reason": None,
                    "message": None,
                },
            ],
        }
    )

    events: list[JobEventOut]

    @classmethod
    def of(cls, job: Job) -> JobDetail:
        return cls(**cls.fields_of(job), events=[JobEventOut.of(e) for e in job.events or ()])


class JobPageOut(BaseModel):
    """One page of jobs, newest first. Pass `next_cursor` as `cursor` for the next page (null: no more)."""

    model_config = _examples({"items": [_JOB_EXAMPLE], "next_cursor": None})

    items: list[JobOut]
    next_cursor: str | None


class ProgressSampleOut(BaseModel):
    """The job's counters at one moment, as a progress report left them."""

    at: datetime
    read: int
    written: int
    failed: int

    @classmethod
    def of(cls, sample: ProgressSample) -> ProgressSampleOut:
        return cls(at=sample.at, read=sample.read, written=sample.written, failed=sample.failed)


class ProgressHistoryOut(BaseModel):
    """The job's progress over time, oldest first, thinned evenly to at most `points` samples (the first and the
    last kept): rows/s between two samples is the difference of `written` over the difference of `at`."""

    model_config = _examples(
        {
            "samples": [
                {"at": "2025-06-01T12:00:05Z", "read": 1000, "written": 998, "failed": 2},
                {"at": "2025-06-01T12:00:06Z", "read": 2500, "written": 2496, "failed": 4},
            ]
        }
    )

    samples: list[ProgressSampleOut]


_FLOW_ONLY: Final = ("filtered", "state", "total", "unit", "done", "rate", "outputs", "services")


class ProgressIn(BaseModel):
    """Record counters of a running job, as totals so far (lower values than stored ones are ignored).

    A flow reports by name (`flow`): then the scheduler keeps its whole report (state, source size, rate,
    outputs, services) as the flow's entry, and the job's counters are the sums over its flows."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"read": 5000, "written": 4990, "failed": 10},
                {"flow": "digits-batch", **_FLOW_REPORT_EXAMPLE},
            ]
        },
    )

    read: Counter = 0
    written: Counter = 0
    failed: Counter = 0
    filtered: Counter = 0
    flow: FlowName | None = Field(default=None, description="The reporting flow; the fields below need it.")
    state: FlowState | None = None
    total: Counter | None = Field(default=None, description="The size of the flow's source in `unit`, if known.")
    unit: SizeUnit | None = None
    done: Counter | None = Field(default=None, description="How much of `total` is read, in `unit`.")
    rate: Rate | None = Field(default=None, description="Records read per second since the flow began reading.")
    outputs: list[Annotated[CleanText, Field(max_length=1024)]] = Field(default_factory=list, max_length=16)
    services: dict[FlowName, ServiceProgressOut] = Field(default_factory=dict, max_length=32)

    @model_validator(mode="after")
    def _flow_fields_need_a_flow(self) -> ProgressIn:
        if self.flow is None:
            given = [name for name in _FLOW_ONLY if name in self.model_fields_set]
            if given:
                raise ValueError(f"{', '.join(given)} describe one flow: give `flow` too")
        if (self.total is None) != (self.unit is None):
            raise ValueError("`total` and `unit` go together")
        return self

    def flow_report(self) -> dict[str, Any]:
        """What the scheduler keeps of a flow's report besides its counters."""
        return self.model_dump(mode="json", exclude={"read", "written", "failed", "flow"})


class CompleteIn(BaseModel):
    """A scoring flow (`flow`), or all of them, finished the work (batch source exhausted), well or not."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"succeeded": True, "flow": "digits-batch", "message": "1000000 records"},
                {"succeeded": False, "flow": "digits-batch", "message": "sink unreachable"},
                {"succeeded": True},
            ]
        },
    )

    succeeded: StrictBool
    message: Annotated[CleanText, Field(max_length=MESSAGE_MAX)] | None = None
    flow: Annotated[str, Field(pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", max_length=63)] | None = Field(
        default=None,
        description="The reporting scoring flow. The job is complete once every flow of its pipeline reported "
        "success, or at the first failure; a report without `flow` speaks for all the flows at once.",
    )
    reason: Literal["InvalidInput"] | None = Field(
        default=None,
        description="Why a flow failed, when it is more than a scoring failure: `InvalidInput` (an input file "
        "is not there) makes the job's reason `InvalidInput` instead of `ScoringFailed`. Only with `flow`.",
    )

    @model_validator(mode="after")
    def _reason_needs_a_failed_flow(self) -> CompleteIn:
        if self.reason is not None and (self.succeeded or self.flow is None):
            raise ValueError("a reason goes only with a failed report of one flow (succeeded false, flow set)")
        return self


# ------------------------------------------------------------------------------------------------ health


class HealthOut(BaseModel):
    model_config = _examples({"status": "ok"})

    status: str


class ReadyOut(BaseModel):
    model_config = _examples({"status": "ready", "database": "ok"})

    status: str
    database: str


# ------------------------------------------------------------------------------------------------ logs


LOG_COMPONENT_PATTERN: Final = r"^((service|flow)/)?[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
"""A log component: `install`, `wait`, `uninstall`, `service/<name>`, `flow/<name>`, or a bare service/flow name."""


class LogComponentsOut(BaseModel):
    model_config = _examples({"components": ["install", "wait", "uninstall", "service/digits", "flow/digits-batch"]})

    components: list[str] = Field(
        description="The job's log components, in the order the merged log breaks ties: its phases, then "
        "`service/<name>` per scoring service and `flow/<name>` per scoring flow."
    )


class TokenUsageOut(BaseModel):
    """What one API token (by name) uses of its quotas now; a limit of null is no limit."""

    name: str = Field(description="The token's name (what jobs record as `created_by`).")
    active_jobs: int = Field(description="Its unfinished jobs, queued ones included.")
    rows_today: int = Field(description="Rows written by its jobs created since 00:00 UTC today.")
    max_concurrent_jobs: int | None = Field(description="Its limit of unfinished jobs.")
    max_rows_per_day: int | None = Field(description="Its limit of rows per UTC day.")

    @classmethod
    def of(cls, entry: TokenQuotaUsage) -> TokenUsageOut:
        return cls(
            name=entry.usage.name,
            active_jobs=entry.usage.active_jobs,
            rows_today=entry.usage.rows_today,
            max_concurrent_jobs=entry.max_concurrent_jobs,
            max_rows_per_day=entry.max_rows_per_day,
        )


class UsageOut(BaseModel):
    """`GET /api/v1/usage`: the caller's own token, or for an `admin` every token."""

    model_config = _examples(
        {
            "day": "2026-12-03",
            "tokens": [
                {
                    "name": "ci",
                    "active_jobs": 2,
                    "rows_today": 120000,
                    "max_concurrent_jobs": 4,
                    "max_rows_per_day": 1000000,
                }
            ],
        }
    )

    day: str = Field(description="The UTC day `rows_today` counts (YYYY-MM-DD).")
    tokens: list[TokenUsageOut]
