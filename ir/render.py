"""Pre-processing: a validated bundle + job parameters + global settings -> ONE Helm values document.

This is the core of the `install` task (../shared/seeds/002: "scoring pipeline helm chart values are
calculated"), in four steps:

1. look up the source and sinks of every flow in the data channels: each flow carries its resolved channels;
2. apply parameters: declared defaults, then job-time overrides, type-checked; `${params.x}` substituted;
3. merge all documents into one values document: `scoringServices` (one per model), `scoringFlows`,
   `dataChannels`;
4. apply global settings: images, log level, tracing, model store, scheduler URL, job id, namespace, size
   profile.

`render` is pure and deterministic; `to_yaml` prints the result byte-identically for equal input. The
`Values` model below is the single source of truth of `charts/modelops/values.schema.json`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import PurePosixPath
from typing import Any, Final, Literal, TypeVar

import yaml
from pydantic import BaseModel, Field, ValidationError, ValidationInfo, field_validator
from pydantic_core import PydanticCustomError

from ir.bundle import Bundle
from ir.checks import value_fits
from ir.errors import IRValidationError, Issue, Loc, did_you_mean, format_loc
from ir.fastyaml import Unsupported, dump_block
from ir.load import with_gc_paused
from ir.models import (
    PARAM_REF,
    Autoscaling,
    Batching,
    DataChannelSpec,
    DnsLabel,
    ModelSpec,
    Resources,
    Scalar,
    Step,
    StrictModel,
    Timeouts,
    parse_duration,
    uri_scheme,
)

SizeProfile = Literal["small", "medium", "large"]
_M = TypeVar("_M", bound=BaseModel)

#: Default requests and limits per size profile, used where a model gives no resources of its own.
PROFILES: dict[str, dict[str, dict[str, str]]] = {
    "small": {"requests": {"cpu": "250m", "memory": "512Mi"}, "limits": {"cpu": "1", "memory": "1Gi"}},
    "medium": {"requests": {"cpu": "1", "memory": "2Gi"}, "limits": {"cpu": "2", "memory": "4Gi"}},
    "large": {"requests": {"cpu": "4", "memory": "8Gi"}, "limits": {"cpu": "8", "memory": "16Gi"}},
}

# ---------------------------------------------------------------------------------------------- globals


class ImageSettings(StrictModel):
    registry: str = Field(default="ghcr.io/modelops", description="Registry and path prefix of the images.")
    tag: str = Field(default="0.1.0", description="Tag of the modelops images.")
    pull_policy: Literal["Always", "IfNotPresent", "Never"] = "IfNotPresent"


class Tracing(StrictModel):
    enabled: bool = False
    endpoint: str | None = Field(default=None, description="OTLP endpoint, e.g. http://otel-collector:4317.")
    sample_ratio: float = Field(default=0.1, ge=0, le=1)


class SchedulerLink(StrictModel):
    url: str = Field(default="http://127.0.0.1:8787", description="Where flows report progress and completion.")
    token: str | None = Field(default=None, description="Per-job token flows present to the scheduler.")


_STORE_KEYS: Final = {"model_store": "modelStore", "artifact_store": "artifactStore"}
"""The values key of each store setting, as its error names it."""


class Globals(StrictModel):
    """Settings of the installation rather than of the pipeline: step 4 of the pre-processing."""

    job_id: str = Field(default="", description="The scheduler's job id (a UUID); empty in previews.")
    namespace: DnsLabel | None = Field(default=None, description="Overrides the pipeline's environment.namespace.")
    image: ImageSettings = Field(default_factory=ImageSettings)
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["text", "json"] = Field(
        default="text",
        description="How the scoring services and flows write their log lines (ir.logformat): text or json.",
    )
    tracing: Tracing = Field(default_factory=Tracing)
    model_store: str | None = Field(
        default=None,
        description="Base URI (file://, http://, https://, or an absolute path) that relative model artifact "
        "paths are resolved against.",
    )

    @field_validator("model_store", "artifact_store")
    @classmethod
    def _store_uri(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None:
            return None
        if value.startswith("/"):
            return PurePosixPath(value).as_uri()
        scheme = value.split("://", 1)[0] if "://" in value else ""
        if scheme not in ("file", "http", "https"):
            key = _STORE_KEYS[str(info.field_name)]
            raise PydanticCustomError(
                str(info.field_name),
                key + " must be an absolute path or a file://, http:// or https:// URI (got '{value}')",
                {"value": value},
            )
        return value

    artifact_store: str | None = Field(
        default=None,
        description="Base URI of the scheduler's artifact store: a model uri `modelops-artifact:sha256:<hex>` "
        "(what `modelops pipeline deploy` and `modelops run` write for a bundle's relative artifacts) resolves "
        "to `<artifactStore>/<hex>` (a file:// folder, or the scheduler's http(s) artifact route).",
    )
    data_root: str | None = Field(
        default=None,
        description="Absolute path that relative file channel paths are resolved against; unset leaves them "
        "relative (to the flow's working directory).",
    )

    @field_validator("data_root")
    @classmethod
    def _absolute_data_root(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith("/"):
            raise PydanticCustomError(
                "data_root", "dataRoot must be an absolute path (got '{value}')", {"value": value}
            )
        return value

    scheduler: SchedulerLink = Field(default_factory=SchedulerLink)
    size_profile: SizeProfile = "small"


# ---------------------------------------------------------------------------------------------- values


class PipelineValues(StrictModel):
    name: str
    digest: str
    mode: Literal["batch", "streaming"]
    namespace: str
    timeouts: Timeouts
    timeout_seconds: dict[str, int]
    parameters: dict[str, Scalar]


class ScoringServiceValues(StrictModel):
    """One scoring service per model (Deployment + Service on Kubernetes, a process locally)."""

    name: str
    model: ModelSpec
    replicas: int
    autoscaling: Autoscaling
    batching: Batching
    resources: Resources


class ChannelValues(StrictModel):
    name: str
    spec: DataChannelSpec


class ScoringFlowValues(StrictModel):
    """One scoring flow (a Job in batch mode, a Deployment in streaming mode)."""

    name: str
    source: ChannelValues
    sinks: list[ChannelValues]
    dead_letter: ChannelValues | None = None
    steps: list[Step]
    batch_size: int
    error_policy: Literal["fail", "skip", "deadLetter"]
    services: list[str] = Field(description="The scoring services (model names) this flow calls, in step order.")
    resources: Resources


class Values(StrictModel):
    """The merged values document `install` deploys: one per job."""

    global_: Globals = Field(alias="global")
    pipeline: PipelineValues
    scoring_services: dict[str, ScoringServiceValues]
    scoring_flows: dict[str, ScoringFlowValues]
    data_channels: dict[str, ChannelValues]


# ---------------------------------------------------------------------------------------------- parameters

_TRUE = frozenset({"true", "yes", "on", "1"})
_FALSE = frozenset({"false", "no", "off", "0"})
_INT = re.compile(r"^[+-]?\d+$")


def _coerce(text: str, kind: str) -> Scalar:
    if kind == "string":
        return text
    if kind == "boolean":
        if text.lower() in _TRUE:
            return True
        if text.lower() in _FALSE:
            return False
        raise ValueError("expected true or false")
    if kind == "integer":
        if not _INT.match(text.strip()):
            raise ValueError("expected an integer")
        return int(text)
    try:
        number = float(text)
    except ValueError:
        raise ValueError("expected a number") from None
    if number != number or number in (float("inf"), float("-inf")):
        raise ValueError("expected a finite number")
    return number


def resolve_parameters(bundle: Bundle, overrides: Mapping[str, Any]) -> dict[str, Scalar]:
    """Declared defaults, then overrides (typed values, or strings from a command line), all type-checked."""
    declared = {p.name: p for p in bundle.pipeline.spec.parameters}
    issues: list[Issue] = []
    values: dict[str, Scalar] = {p.name: p.default for p in declared.values() if p.default is not None}
    for name in sorted(overrides):
        raw = overrides[name]
        param = declared.get(name)
        if param is None:
            hint = did_you_mean(name, declared) or (
                f" (declared: {', '.join(sorted(declared))})" if declared else " (the pipeline declares none)"
            )
            issues.append(Issue("<parameters>", "", name, f"unknown parameter '{name}'{hint}"))
            continue
        try:
            if isinstance(raw, str):
                value = _coerce(raw, param.type)
            elif value_fits(raw, param.type):
                value = float(raw) if param.type == "number" else raw
                if value != value or value in (float("inf"), float("-inf")):
                    raise ValueError("expected a finite number")
            else:
                raise ValueError(f"expected a value of type '{param.type}'")
        except ValueError as exc:
            issues.append(Issue("<parameters>", "", name, f"{exc} for parameter of type '{param.type}' (got {raw!r})"))
            continue
        values[name] = value
    for name in declared:
        if name not in values:
            issues.append(Issue("<parameters>", "", name, f"parameter '{name}' is required: it has no default"))
    if issues:
        raise IRValidationError(issues)
    return {name: values[name] for name in sorted(values)}


def _text(value: Scalar) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _substitute(value: Any, params: Mapping[str, Scalar], typed: bool) -> Any:
    """Replace `${params.x}`; a value that is exactly one reference takes the typed value where `typed`."""
    if isinstance(value, str):
        if "${" not in value:  # the common case, without a regular expression
            return value
        whole = PARAM_REF.fullmatch(value)
        if whole is not None and typed:
            return params[whole.group(1)]
        return PARAM_REF.sub(lambda m: _text(params[m.group(1)]), value)
    if isinstance(value, dict):
        return {k: _substitute(v, params, typed) for k, v in value.items()}
    if isinstance(value, list):
        return [_substitute(v, params, typed) for v in value]
    return value


def _substitute_step(step: dict[str, Any], params: Mapping[str, Scalar]) -> dict[str, Any]:
    """Typed substitution where the IR takes any scalar (map.set values, filter.value), text elsewhere."""
    out: dict[str, Any] = _substitute(step, params, typed=False)
    if "map" in step and "set" in step["map"]:
        out["map"]["set"] = _substitute(step["map"]["set"], params, typed=True)
    if "filter" in step and "value" in step["filter"]:
        out["filter"]["value"] = _substitute(step["filter"]["value"], params, typed=True)
    return out


# ---------------------------------------------------------------------------------------------- globals from --set


def parse_sets(assignments: Sequence[str]) -> Globals:
    """`--set image.registry=r.example --set logLevel=debug` -> `Globals`, every problem reported."""
    data: dict[str, Any] = {}
    raws: dict[tuple[str, ...], str] = {}
    issues: list[Issue] = []
    for assignment in assignments:
        key, sep, raw = assignment.partition("=")
        if not sep or not key:
            issues.append(Issue("<globals>", "", assignment, "expected KEY=VALUE, e.g. logLevel=debug"))
            continue
        try:
            value = yaml.safe_load(raw) if raw else ""
        except yaml.YAMLError:
            value = raw
        target = data
        parts = key.split(".")
        for part in parts[:-1]:
            nested = target.setdefault(part, {})
            if not isinstance(nested, dict):
                issues.append(Issue("<globals>", "", key, f"'{part}' is not a group of settings"))
                break
            target = nested
        else:
            target[parts[-1]] = value
            raws[tuple(parts)] = raw
    if issues:
        raise IRValidationError(issues)
    try:
        return Globals.model_validate(data)
    except ValidationError as exc:
        # `image.tag=1.2` reads as a number; where the setting wants text, take the text as written.
        for error in exc.errors(include_url=False):
            path = tuple(str(part) for part in error["loc"])
            if path in raws and error["type"] == "string_type":
                _put(data, path, raws[path])
    return make_globals(data)


def _put(data: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    for part in path[:-1]:
        data = data[part]
    data[path[-1]] = value


def make_globals(data: Mapping[str, Any]) -> Globals:
    """Validate global settings given as a mapping; errors name the setting."""
    from ir.parse import _message

    try:
        return Globals.model_validate(data)
    except ValidationError as exc:
        raise IRValidationError(
            [
                Issue("<globals>", "", format_loc(tuple(e["loc"])), _message(Globals, tuple(e["loc"]), e))
                for e in exc.errors(include_url=False)
            ]
        ) from None


# ---------------------------------------------------------------------------------------------- render


ARTIFACT_SCHEME: Final = "modelops-artifact:sha256:"
"""How a model uri names an artifact of the scheduler's content-addressed store: this prefix, then its sha256."""
_ARTIFACT_URI = re.compile(r"^modelops-artifact:sha256:([0-9a-f]{64})$")


def artifact_uri(sha256: str) -> str:
    """The model uri of the stored artifact with this sha256."""
    return ARTIFACT_SCHEME + sha256


def artifact_digest(uri: str) -> str | None:
    """The sha256 a `modelops-artifact:sha256:<hex>` uri names; None for any other uri."""
    match = _ARTIFACT_URI.match(uri)
    return match.group(1) if match else None


def is_relative_uri(uri: str) -> bool:
    """True for a model uri that is a path relative to the bundle (no scheme, not a stored artifact)."""
    return not uri_scheme(uri) and not uri.startswith("/") and artifact_digest(uri) is None


# The path rules of a job live here, in one place (docs/scheduler.md, "Paths"): a stored artifact resolves
# against the artifact store, another relative model uri against the model store, a relative file channel
# path against the data root.


def resolve_model_uri(uri: str, globals_: Globals) -> str:
    """Where the scoring service finds a model: see the comment above."""
    digest = artifact_digest(uri)
    if digest is not None:
        if globals_.artifact_store is None:
            return uri
        return globals_.artifact_store.rstrip("/") + "/" + digest
    if globals_.model_store is None or uri_scheme(uri):  # models:/NAME/1 has a scheme but no '://'
        return uri
    return globals_.model_store.rstrip("/") + "/" + uri.removeprefix("./")


def resolve_data_path(path: str, data_root: str | None) -> str:
    """A file channel's path with the data root applied (`~` and absolute paths are kept as they are)."""
    if data_root is None or path.startswith(("/", "~")):
        return path
    return str(PurePosixPath(data_root) / path.removeprefix("./"))


def _resolve_channel(spec: DataChannelSpec, data_root: str | None) -> DataChannelSpec:
    if spec.file is None or data_root is None:
        return spec
    resolved = resolve_data_path(spec.file.path, data_root)
    if resolved == spec.file.path:
        return spec
    return spec.model_copy(update={"file": spec.file.model_copy(update={"path": resolved})})


def _revalidate(
    bundle: Bundle, kind: str, name: str, loc: Loc, cls: type[_M], data: Any, issues: list[Issue]
) -> _M | None:
    """Validate a part of a document again once parameters are substituted; problems go to `issues`."""
    from ir.parse import _message, _strip_union_tags, _validator_loc

    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        origin = bundle.origins.get((kind, name))
        for error in exc.errors(include_url=False):
            at = _strip_union_tags(error["loc"]) + _validator_loc(error)
            message = f"with the parameters applied: {_message(cls, at, error)}"
            if origin is not None:
                issues.append(origin.issue((*loc, *at), message))
            else:
                issues.append(Issue("<parameters>", f"{kind} {name}", format_loc((*loc, *at)), message))
        return None


@with_gc_paused
def render(bundle: Bundle, params: Mapping[str, Any] | None = None, globals_: Globals | None = None) -> Values:
    """The four pre-processing steps. Raises `IRValidationError` for bad parameters."""
    settings = globals_ or Globals()
    resolved = resolve_parameters(bundle, params or {})
    profile = Resources.model_validate(PROFILES[settings.size_profile])
    spec = bundle.pipeline.spec

    issues: list[Issue] = []
    channels: dict[str, ChannelValues] = {}
    for channel in bundle.used_channels():
        name = channel.metadata.name
        raw = channel.spec.model_dump(mode="json", by_alias=True, exclude_none=True)
        substituted = _substitute(raw, resolved, typed=False)
        channel_spec = _revalidate(bundle, "DataChannel", name, ("spec",), DataChannelSpec, substituted, issues)
        if channel_spec is not None:
            channels[name] = ChannelValues(name=name, spec=_resolve_channel(channel_spec, settings.data_root))

    services: dict[str, ScoringServiceValues] = {}
    for model in bundle.used_models():
        update: dict[str, Any] = {"uri": resolve_model_uri(model.spec.uri, settings)}
        digest = artifact_digest(model.spec.uri)
        if digest is not None and model.spec.sha256 is None:
            update["sha256"] = digest  # what the store holds under that name is checked on load
        model_spec = model.spec.model_copy(update=update)
        services[model.metadata.name] = ScoringServiceValues(
            name=model.metadata.name,
            model=model_spec,
            replicas=model.spec.replicas,
            autoscaling=model.spec.autoscaling,
            batching=model.spec.batching,
            resources=model.spec.resources or profile,
        )

    flows: dict[str, ScoringFlowValues] = {}
    for flow in bundle.used_flows():
        fspec = flow.spec
        steps: list[Step] = []
        for i, step in enumerate(fspec.steps):
            raw_step = _substitute_step(step.model_dump(mode="json", by_alias=True, exclude_none=True), resolved)
            checked = _revalidate(
                bundle, "ScoringFlow", flow.metadata.name, ("spec", "steps", i), Step, raw_step, issues
            )
            if checked is not None:
                steps.append(checked)
        if issues:
            continue
        used: list[str] = []
        for step in fspec.steps:
            if step.score is not None and step.score.model not in used:
                used.append(step.score.model)
        dead = fspec.error_policy.sink
        flows[flow.metadata.name] = ScoringFlowValues(
            name=flow.metadata.name,
            source=channels[fspec.source],
            sinks=[channels[name] for name in fspec.sinks],
            dead_letter=channels[dead] if dead else None,
            steps=steps,
            batch_size=fspec.batch_size,
            error_policy=fspec.error_policy.mode,
            services=used,
            resources=profile,
        )

    if issues:
        raise IRValidationError(issues)
    timeouts = spec.timeouts
    pipeline = PipelineValues(
        name=bundle.name,
        digest=bundle.digest(),
        mode=spec.mode,
        namespace=settings.namespace or spec.environment.namespace,
        timeouts=timeouts,
        timeout_seconds={
            "install": parse_duration(timeouts.install),
            "wait": parse_duration(timeouts.wait),
            "uninstall": parse_duration(timeouts.uninstall),
        },
        parameters=resolved,
    )
    return Values.model_validate(
        {
            "global": settings,
            "pipeline": pipeline,
            "scoringServices": services,
            "scoringFlows": flows,
            "dataChannels": channels,
        }
    )


def to_document(values: Values) -> dict[str, Any]:
    """Plain data of the values (JSON types, YAML key names, no nulls)."""
    document: dict[str, Any] = values.model_dump(mode="json", by_alias=True, exclude_none=True)
    return document


@with_gc_paused
def to_yaml(values: Values) -> str:
    """Deterministic YAML: sorted keys, block style; equal values give byte-identical text.

    The text is `yaml.dump`'s; `ir.fastyaml.dump_block` writes it directly when every value is one it
    handles (nearly always), which is several times faster than PyYAML's representer.
    """
    document = to_document(values)
    try:
        return dump_block(document)
    except Unsupported:
        pass
    dumper: Any = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
    text: str = yaml.dump(
        document, Dumper=dumper, sort_keys=True, default_flow_style=False, allow_unicode=True, width=120
    )
    return text
