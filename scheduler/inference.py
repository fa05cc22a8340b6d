"""`infer: true` source schemas, read from the job's input file at install.

A file source may say `schema: {infer: true}` instead of listing its fields. Its path is known only once a
job's parameters are applied, so the fields are read at install: `ir.render` gives the resolved path, the
roots check of docs/security.md runs on it again (it ran at start too), `data_channel.infer` reads the header
and first rows (or the Parquet footer), and the stored IR is rebuilt with the fields in place of `infer: true`.
Rebuilding runs every check that waited for the schema (field selectors, types, sink fields) against it, so a
file that does not fit the flow fails the job at install with the same messages a listed schema gets at
deploy. The job's values are rendered from that document, so they record the inferred fields.

Only the local backend infers: on Kubernetes the file lives on the flow pod's volume, which the scheduler cannot
read, and such a job is refused at start (`SchemaInferenceUnsupported`).
"""

from __future__ import annotations

import glob as globlib
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import ir
from data_channel.infer import SchemaInferenceError, infer_schema
from scheduler.errors import InvalidInput
from scheduler.values import DOCUMENTS_KEY, bundle_of

__all__ = [
    "InferredSchema",
    "SchemaInferenceFailed",
    "SchemaInferenceUnsupported",
    "check_inference_supported",
    "inferring_channels",
    "with_inferred_schemas",
]

_GLOB_CHARS: Final = frozenset("*?[")


class SchemaInferenceFailed(InvalidInput):
    """The input file of an `infer: true` source cannot give a schema (missing, unreadable, not its format)."""

    default_code = "schema_inference_failed"


class SchemaInferenceUnsupported(InvalidInput):
    """An `infer: true` source on a backend whose files the scheduler cannot read."""

    default_code = "schema_inference_unsupported"


@dataclass(frozen=True)
class InferredSchema:
    """What install read for one channel: from which file, and the fields it found."""

    channel: str
    path: str
    schema: ir.models.RecordSchema

    def describe(self) -> str:
        names = [f.name for f in self.schema.fields]
        shown = ", ".join(names[:5]) + (f", ... {names[-1]}" if len(names) > 5 else "")
        return f"channel '{self.channel}': {len(names)} field(s) from {self.path} ({shown})"


def inferring_channels(bundle: ir.Bundle) -> list[str]:
    """The used source channels of `bundle` whose schema is `infer: true`, by name."""
    return [c.metadata.name for c in bundle.used_channels() if c.spec.record_schema.infer]


def check_inference_supported(bundle: ir.Bundle, backend: str) -> None:
    """At start: refuse `infer: true` sources on a backend other than the local one (see the module doc)."""
    names = inferring_channels(bundle)
    if names and backend != "local":
        listed = ", ".join(f"'{n}'" for n in names)
        raise SchemaInferenceUnsupported(
            f"data channel {listed} says 'schema: {{infer: true}}', which the {backend} backend cannot do: the file "
            "is on the flow pod's volume, out of the scheduler's reach. List its fields (`modelops init` writes "
            "them from a sample of the file)",
            details={"channels": names},
        )


def _first_file(path: Path) -> Path:
    text = str(path)
    if any(c in _GLOB_CHARS for c in text):
        matches = sorted(p for p in globlib.glob(text, recursive=True) if os.path.isfile(p))
        if not matches:
            raise SchemaInferenceError(f"{text} matches no file")
        return Path(matches[0])
    return path


def _infer_one(name: str, spec: ir.models.DataChannelSpec) -> InferredSchema:
    file = spec.file
    assert file is not None  # the IR allows `infer` on file sources only
    path = Path(os.path.expanduser(file.path))
    if not path.is_absolute():
        path = Path.cwd() / path
    try:
        first = _first_file(path)
        schema = infer_schema(first, file.format, csv=file.csv)
    except SchemaInferenceError as exc:
        raise SchemaInferenceFailed(
            f"data channel '{name}': its schema cannot be inferred: {exc}", details={"channel": name}
        ) from exc
    return InferredSchema(name, str(first), schema)


def with_inferred_schemas(
    document: Mapping[str, Any], values: ir.Values
) -> tuple[dict[str, Any], list[InferredSchema]] | None:
    """The stored IR `document` with the fields of every `infer: true` source read from the file its rendered
    `values` name, and what was read; None when no source infers.

    Raises `SchemaInferenceFailed` for a file that gives no schema, `ir.IRValidationError` when the flows do not
    fit the schema read (the issues name the step, as at deploy)."""
    names = inferring_channels(bundle_of(document))
    if not names:
        return None
    channels = {
        flow.source.name: flow.source.spec for flow in values.scoring_flows.values() if flow.source.name in names
    }
    inferred = [_infer_one(name, channels[name]) for name in names if name in channels]
    schemas = {item.channel: item.schema.model_dump(mode="json", by_alias=True, exclude_none=True) for item in inferred}
    documents: list[dict[str, Any]] = []
    for doc in document[DOCUMENTS_KEY]:
        name = doc.get("metadata", {}).get("name")
        if doc.get("kind") == "DataChannel" and name in schemas:
            doc = {**doc, "spec": {**doc["spec"], "schema": schemas[name]}}
        documents.append(doc)
    rebuilt = {DOCUMENTS_KEY: documents}
    bundle_of(rebuilt)  # runs the checks that waited for the schema; raises IRValidationError
    return rebuilt, inferred
