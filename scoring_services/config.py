"""Model configurations from the two places a service gets them: a rendered values document, or the command line.

`--values FILE --service NAME` reads `scoringServices.<NAME>` of the values document `modelops ir render`
writes (validated with the IR's own `ScoringServiceValues`); this is how the local backend and the Helm chart
start a service. `--model NAME=RUNTIME:URI[:SHA256]` serves an artifact directly, with its signature taken from
the artifact where the runtime can read it; `--option NAME.KEY=VALUE` adds model options.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from ir.models import Batching, ModelSpec
from ir.render import ScoringServiceValues
from scoring_services.runtimes import RUNTIMES
from scoring_services.settings import ScoringSettings
from scoring_services.types import BatchingConfig, ModelConfig, Scalar, TensorSpec

__all__ = ["ConfigError", "config_from_spec", "configs_from_values", "parse_model_arg", "parse_option_args"]

_SHA_SUFFIX = re.compile(r":([0-9a-f]{64})$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


class ConfigError(Exception):
    """A command-line or values-document problem, reported to the user as it is."""


def config_from_spec(name: str, spec: ModelSpec, batching: Batching | None = None) -> ModelConfig:
    batch = batching or spec.batching
    return ModelConfig(
        name=name,
        runtime=spec.runtime,
        uri=spec.uri,
        sha256=spec.sha256,
        version=spec.version,
        inputs=tuple(TensorSpec(t.name, t.datatype, tuple(t.shape)) for t in spec.inputs),
        outputs=tuple(TensorSpec(t.name, t.datatype, tuple(t.shape)) for t in spec.outputs),
        options=dict(spec.options),
        batching=BatchingConfig(batch.enabled, batch.max_batch_size, batch.max_latency_ms),
        credentials=spec.credentials.secret_ref.name if spec.credentials is not None else None,
    )


def configs_from_values(path: Path, services: Sequence[str]) -> tuple[list[ModelConfig], dict[str, Any]]:
    """The models of the named scoring services (all of them when `services` is empty), and the globals."""
    try:
        document = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from None
    if not isinstance(document, dict) or not isinstance(document.get("scoringServices"), dict):
        raise ConfigError(f"{path} has no 'scoringServices' map: is it a values document from 'modelops ir render'?")
    available: dict[str, Any] = document["scoringServices"]
    names = list(services) or list(available)
    configs: list[ModelConfig] = []
    for name in names:
        raw = available.get(name)
        if raw is None:
            known = ", ".join(sorted(available)) or "none"
            raise ConfigError(f"{path} has no scoring service '{name}' (it has: {known})")
        try:
            service = ScoringServiceValues.model_validate(raw)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors(include_url=False)
            )
            raise ConfigError(f"{path}: scoringServices.{name} is invalid: {problems}") from None
        configs.append(config_from_spec(service.name, service.model, service.batching))
    globals_ = document.get("global")
    return configs, globals_ if isinstance(globals_, dict) else {}


def _scalar(text: str) -> Scalar:
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def parse_option_args(items: Sequence[str]) -> dict[str, dict[str, Scalar]]:
    """`NAME.KEY=VALUE` -> {NAME: {KEY: value}}, values typed (true/false, int, float, else text)."""
    options: dict[str, dict[str, Scalar]] = {}
    for item in items:
        key, sep, value = item.partition("=")
        model, dot, option = key.partition(".")
        if not sep or not dot or not model or not option:
            raise ConfigError(f"--option expects MODEL.KEY=VALUE, e.g. digits.intraOpThreads=2 (got {item!r})")
        options.setdefault(model, {})[option] = _scalar(value)
    return options


def parse_model_arg(
    item: str, settings: ScoringSettings, options: Mapping[str, Mapping[str, Scalar]] | None = None
) -> ModelConfig:
    """`NAME=RUNTIME:URI[:SHA256]`, e.g. `digits=sklearn:model.joblib:dd53...` or `lm=transformers:file:///m`."""
    name, sep, rest = item.partition("=")
    runtime, colon, uri = rest.partition(":")
    if not sep or not colon or not uri:
        raise ConfigError(f"--model expects NAME=RUNTIME:URI[:SHA256], e.g. digits=onnx:model.onnx (got {item!r})")
    if not _NAME.match(name):
        raise ConfigError(f"model name {name!r} must be letters, digits, '_', '.', '-'")
    if runtime not in RUNTIMES:
        raise ConfigError(f"unknown runtime {runtime!r} in --model {item!r} (known: {', '.join(RUNTIMES)})")
    sha256: str | None = None
    match = _SHA_SUFFIX.search(uri)
    if match:
        sha256, uri = match.group(1), uri[: match.start()]
    return ModelConfig(
        name=name,
        runtime=runtime,
        uri=uri,
        sha256=sha256,
        options=dict((options or {}).get(name, {})),
        batching=BatchingConfig(True, settings.default_max_batch_size, settings.default_max_latency_ms),
    )
