"""The UI's pipelines pages: the list, one pipeline's versions, a version's IR, the diff between two versions,
the values preview, and the "Start a job" form.

Every page reads through `SchedulerService`, as the REST API does (`/api/v1/pipelines/...`); the forms are
generated from the chosen version's declared parameters (type, default, description, required). Parameter
fields are named `p.NAME`: an empty field means "not given" (the default applies; a required parameter without
one is refused, beside its field). The values preview's canonical address is the API's,
`.../values?param=NAME=VALUE`: its form submits `p.NAME` fields and is redirected there, so the URL can be
shared. The start form posts (write scope and CSRF token, `UiWriter`) and, once the job exists, sends the
browser to the job's page; a refused start (422) shows the form again with each problem beside its field and
the typed values kept.
"""

from __future__ import annotations

import math
import re
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Final
from urllib.parse import urlencode

from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

import ir
from scheduler.api.jobs import IDEMPOTENCY_KEY_PATTERN
from scheduler.api.models import NAME_MAX, NAME_PATTERN, VERSION_MAX
from scheduler.errors import SchedulerError
from scheduler.irtext import ir_files
from scheduler.service import SchedulerService
from scheduler.store import PipelineVersion
from scheduler.ui.deps import UI_PREFIX, UiReader, UiWriter
from scheduler.ui.diff import diff_files
from scheduler.ui.highlight import highlight_yaml
from scheduler.ui.templating import render

router = APIRouter(prefix=UI_PREFIX)

FIELD_PREFIX: Final = "p."
"""Form fields of parameters are named `p.NAME` (nothing else on the forms starts so)."""
PARAMETERS_FILE: Final = "<parameters>"
"""The `file` of an `ir.Issue` about a parameter; its `path` is the parameter's name (`ir.resolve_parameters`)."""
_MAX_PARAMS: Final = 256
_IDEMPOTENCY_KEY: Final = re.compile(IDEMPOTENCY_KEY_PATTERN)
"""What the API's `Idempotency-Key` header accepts."""

PipelineName = Annotated[
    str, Path(min_length=1, max_length=NAME_MAX, pattern=NAME_PATTERN, description="The pipeline's name.")
]
VersionNumber = Annotated[int, Path(ge=1, le=VERSION_MAX)]


def _service(request: Request) -> SchedulerService:
    service = request.app.state.service
    assert isinstance(service, SchedulerService)
    return service


@dataclass(frozen=True)
class ParamField:
    """One declared parameter as a form field: what the template needs to draw it, and the value to show."""

    name: str
    type: str
    default: Any
    description: str
    value: str
    """What the field holds: the typed text, else the default as text ('' for none)."""
    error: str | None = None

    @property
    def required(self) -> bool:
        return self.default is None

    @property
    def field(self) -> str:
        return f"{FIELD_PREFIX}{self.name}"

    @property
    def id(self) -> str:
        return f"param-{self.name}"

    @property
    def default_text(self) -> str:
        return _text(self.default) if self.default is not None else ""

    @property
    def checked(self) -> bool:
        return self.value == "true"


def _text(value: Any) -> str:
    """A parameter value as a form field holds it (`true`/`false` for booleans, as YAML and the CLI write it)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def declared_parameters(version: PipelineVersion) -> list[dict[str, Any]]:
    """The parameters the version's pipeline declares (`spec.parameters` of its ScoringPipeline document), as
    stored: read from the stored IR itself, so a page shows them even if the IR no longer validates."""
    documents = version.ir.get("documents")
    for document in documents if isinstance(documents, list) else []:
        if isinstance(document, dict) and document.get("kind") == "ScoringPipeline":
            spec = document.get("spec")
            params = spec.get("parameters") if isinstance(spec, dict) else None
            return [p for p in params if isinstance(p, dict) and "name" in p] if isinstance(params, list) else []
    return []


def _fields(
    version: PipelineVersion, typed: Mapping[str, str] | None = None, errors: Mapping[str, str] | None = None
) -> list[ParamField]:
    fields = []
    for param in declared_parameters(version):
        name = str(param["name"])
        default = param.get("default")
        shown = (typed or {}).get(name)
        fields.append(
            ParamField(
                name=name,
                type=str(param.get("type", "string")),
                default=default,
                description=str(param.get("description") or ""),
                value=shown if shown is not None else (_text(default) if default is not None else ""),
                error=(errors or {}).get(name),
            )
        )
    return fields


def _typed_fields(pairs: Iterable[tuple[str, str]]) -> dict[str, str]:
    """The `p.NAME` fields of a form (the last value of a repeated one: a checkbox follows its hidden 'false')."""
    typed: dict[str, str] = {}
    for key, value in pairs:
        if key.startswith(FIELD_PREFIX) and len(key) > len(FIELD_PREFIX):
            typed[key[len(FIELD_PREFIX) :]] = value
    return typed


def _convert(value: str, kind: str) -> Any:
    """A field's text as the parameter's type, when it reads as one; otherwise the text itself, which the
    service then refuses with its own located message (the one the API gives)."""
    try:
        if kind == "integer":
            return int(value.strip())
        if kind == "number":
            number = float(value.strip())
            return number if math.isfinite(number) else value
        if kind == "boolean" and value in ("true", "false"):
            return value == "true"
    except ValueError:
        return value
    return value


def _split_issues(exc: ir.IRValidationError, names: Sequence[str]) -> tuple[dict[str, str], list[str]]:
    """Issues about a declared parameter, by its name; the rest as lines for the top of the form."""
    by_field: dict[str, str] = {}
    others: list[str] = []
    for issue in exc.issues:
        if issue.file == PARAMETERS_FILE and issue.path in names:
            known = by_field.get(issue.path)
            by_field[issue.path] = f"{known}; {issue.message}" if known else issue.message
        else:
            others.append(str(issue))
    return by_field, others


def _split_problems(exc: SchedulerError, names: Sequence[str]) -> tuple[dict[str, str], list[str]]:
    """A refused start's problems that name a declared parameter (`details.problems[].parameter`, as path and
    root checks give them: `scheduler.paths`, `scheduler.trust`), by its name; else the message at the top."""
    listed = exc.details.get("problems") if isinstance(exc.details, dict) else None
    by_field: dict[str, str] = {}
    others: list[str] = []
    for problem in listed if isinstance(listed, list) else []:
        name = problem.get("parameter") if isinstance(problem, dict) else None
        if isinstance(name, str) and name in names:
            known = by_field.get(name)
            message = str(problem.get("message", ""))
            by_field[name] = f"{known}; {message}" if known else message
    if not by_field:
        return {}, [exc.message]
    if len(by_field) < len(listed or []):
        others.append(exc.message)
    return by_field, others


# ------------------------------------------------------------------------------------------------ pages


@router.get("/pipelines", response_class=HTMLResponse)
async def pipeline_list(request: Request, _: UiReader) -> Response:
    pipelines = await _service(request).list_pipelines()
    return render(request, "pipelines/list.html", {"nav": "pipelines", "pipelines": pipelines})


@router.get("/pipelines/{name}", response_class=HTMLResponse)
async def pipeline_detail(request: Request, name: PipelineName, _: UiReader) -> Response:
    pipeline = await _service(request).get_pipeline(name)
    versions = list(reversed(pipeline.versions))
    return render(request, "pipelines/detail.html", {"nav": "pipelines", "pipeline": pipeline, "versions": versions})


@router.get("/pipelines/{name}/versions/{number}", response_class=HTMLResponse)
async def version_ir(request: Request, name: PipelineName, number: VersionNumber, _: UiReader) -> Response:
    version = await _service(request).get_version(name, number)
    files = [
        {"name": file, "anchor": _anchor(file), "html": highlight_yaml(text, f"{_anchor(file)}-", file)}
        for file, text in ir_files(version.ir).items()
    ]
    context = {"nav": "pipelines", "version": version, "files": files, "parameters": _fields(version)}
    return render(request, "pipelines/version.html", context)


def _anchor(file: str) -> str:
    """An id-safe form of a file name: `flows/digits-batch.yaml` -> `flows-digits-batch-yaml`."""
    return "".join(c if c.isalnum() or c in "-_" else "-" for c in file)


@router.get("/pipelines/{name}/diff", response_class=HTMLResponse)
async def version_diff(
    request: Request,
    name: PipelineName,
    _: UiReader,
    old: Annotated[int | None, Query(alias="from", ge=1, le=VERSION_MAX)] = None,
    new: Annotated[int | None, Query(alias="to", ge=1, le=VERSION_MAX)] = None,
) -> Response:
    """From `from` to `to`; without them, from the version before `to` (or the latest) to it."""
    service = _service(request)
    pipeline = await service.get_pipeline(name)
    numbers = [v.number for v in pipeline.versions]
    new = new if new is not None else numbers[-1]
    old = old if old is not None else max([n for n in numbers if n < new], default=new)
    diff = await service.diff_versions(name, old, new)
    context = {
        "nav": "pipelines",
        "pipeline": pipeline,
        "old": old,
        "new": new,
        "numbers": numbers,
        "ir_files": diff_files(diff.ir),
        "values_files": diff_files(diff.values),
    }
    return render(request, "pipelines/diff.html", context)


@router.get("/pipelines/{name}/versions/{number}/values", response_class=HTMLResponse)
async def values_preview(
    request: Request,
    name: PipelineName,
    number: VersionNumber,
    _: UiReader,
    param: Annotated[list[str] | None, Query(max_length=_MAX_PARAMS)] = None,
) -> Response:
    typed = _typed_fields(request.query_params.multi_items())
    if typed:  # the form was sent: go to the address the API answers too (?param=NAME=VALUE), to share it
        given = [f"{key}={value}" for key, value in typed.items() if value != ""]
        query = urlencode([("param", each) for each in given])
        return RedirectResponse(f"{request.url.path}{'?' + query if query else ''}", status_code=303)
    service = _service(request)
    version = await service.get_version(name, number)
    names = [str(p["name"]) for p in declared_parameters(version)]
    parameters: dict[str, str] = {}
    problems: list[str] = []
    for item in param or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            problems.append(f"param {item!r}: expected NAME=VALUE, e.g. input=data/in.csv")
        else:
            parameters[key] = value
    errors: dict[str, str] = {}
    rendered = None
    if not problems:
        try:
            _version, values = await service.preview_values(name, number, parameters)
            rendered = highlight_yaml(ir.to_yaml(values), "", "values.yaml")
        except ir.IRValidationError as exc:
            errors, problems = _split_issues(exc, names)
    context = {
        "nav": "pipelines",
        "version": version,
        "fields": _fields(version, parameters, errors),
        "problems": problems,
        "rendered": rendered,
        "action": request.url.path,
        "run_url": f"{UI_PREFIX}/pipelines/{name}/run?"
        + urlencode([("version", number), *(("param", f"{k}={v}") for k, v in parameters.items())]),
    }
    return render(request, "pipelines/values.html", context, status_code=422 if errors or problems else 200)


@router.get("/pipelines/{name}/run", response_class=HTMLResponse)
async def run_form(
    request: Request,
    name: PipelineName,
    _: UiReader,
    version: Annotated[int | None, Query(ge=1, le=VERSION_MAX)] = None,
    param: Annotated[list[str] | None, Query(max_length=_MAX_PARAMS)] = None,
) -> Response:
    """The form for `version` (the latest by default), prefilled with the defaults and any `param=NAME=VALUE`
    (the values preview links here with the parameters it rendered)."""
    service = _service(request)
    pipeline = await service.get_pipeline(name)
    chosen = await service.get_version(name, version)
    given = dict(item.partition("=")[::2] for item in param or [] if "=" in item)
    return _run_page(request, pipeline.versions, chosen, given, {}, [], "")


def _run_page(
    request: Request,
    versions: Sequence[Any],
    chosen: PipelineVersion,
    typed: Mapping[str, str],
    errors: Mapping[str, str],
    problems: Sequence[str],
    idempotency_key: str,
    status_code: int = 200,
) -> Response:
    context = {
        "nav": "pipelines",
        "name": chosen.pipeline,
        "versions": list(reversed(versions)),
        "latest": versions[-1].number if versions else chosen.number,
        "chosen": chosen,
        "fields": _fields(chosen, typed, errors),
        "problems": problems,
        "idempotency_key": idempotency_key,
    }
    return render(request, "pipelines/run.html", context, status_code=status_code)


@router.post("/pipelines/{name}/run", response_class=HTMLResponse)
async def run(request: Request, name: PipelineName, principal: UiWriter) -> Response:
    form = await request.form()
    pairs = [(key, value) for key, value in form.multi_items() if isinstance(value, str)]
    typed = _typed_fields(pairs)
    fields = dict(pairs)
    service = _service(request)
    pipeline = await service.get_pipeline(name)
    key = fields.get("idempotency_key", "").strip()
    problems: list[str] = []
    number: int | None = None
    raw_version = fields.get("version", "").strip()
    if raw_version:
        try:
            number = int(raw_version)
        except ValueError:
            problems.append(f"version {raw_version!r} is not a version number")
    if key and not _IDEMPOTENCY_KEY.fullmatch(key):
        problems.append("the idempotency key must be 1 to 255 printable ASCII characters without spaces")
    chosen = await service.get_version(name, number if not problems else None)
    if problems:
        return _run_page(request, pipeline.versions, chosen, typed, {}, problems, key, 422)
    kinds = {str(p["name"]): str(p.get("type", "string")) for p in declared_parameters(chosen)}
    parameters = {
        param: _convert(value, kinds.get(param, "string")) for param, value in typed.items() if value.strip() != ""
    }
    try:
        job, _created = await service.create_job(name, chosen.number, parameters, None, key or None, by=principal)
    except ir.IRValidationError as exc:
        errors, others = _split_issues(exc, list(kinds))
        return _run_page(request, pipeline.versions, chosen, typed, errors, others, key, 422)
    except SchedulerError as exc:
        if exc.http_status >= 500:
            raise
        errors, others = _split_problems(exc, list(kinds))
        return _run_page(request, pipeline.versions, chosen, typed, errors, others, key, exc.http_status)
    return _to_job(request, job.id)


def _to_job(request: Request, job_id: uuid.UUID) -> Response:
    url = f"{UI_PREFIX}/jobs/{job_id}"
    if request.headers.get("hx-request") == "true":
        return Response(status_code=200, headers={"HX-Redirect": url})
    return RedirectResponse(url, status_code=303)
