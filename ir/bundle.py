"""A validated pipeline bundle: one `ScoringPipeline` with the flows, models and data channels it uses.

`load_bundle*` are the entry points of the package: read, parse every document, check everything across
documents, and either return a `Bundle` or raise one `IRValidationError` listing every problem.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ir.checks import Report, Resolved, check_pipeline
from ir.errors import IRValidationError, Issue, Loc
from ir.load import RawDocument, load_files, load_path, load_tarball, with_gc_paused
from ir.models import DataChannel, Model, ScoringFlow, ScoringPipeline, StrictModel
from ir.parse import parse_document


@dataclass(frozen=True)
class Bundle:
    """The documents of one pipeline, by name. `documents` keeps where each came from, for messages."""

    pipeline: ScoringPipeline
    flows: dict[str, ScoringFlow]
    models: dict[str, Model]
    channels: dict[str, DataChannel]
    origins: dict[tuple[str, str], RawDocument] = field(default_factory=dict, compare=False, repr=False)

    @property
    def name(self) -> str:
        return self.pipeline.metadata.name

    def used_flows(self) -> list[ScoringFlow]:
        return [self.flows[name] for name in self.pipeline.spec.flows]

    def used_models(self) -> list[Model]:
        names = sorted({s.score.model for f in self.used_flows() for s in f.spec.steps if s.score is not None})
        return [self.models[name] for name in names]

    def used_channels(self) -> list[DataChannel]:
        names: set[str] = set()
        for flow in self.used_flows():
            names.update([flow.spec.source, *flow.spec.sinks])
            if flow.spec.error_policy.sink:
                names.add(flow.spec.error_policy.sink)
        return [self.channels[name] for name in sorted(names)]

    def documents(self) -> list[StrictModel]:
        """Every document of the pipeline, in a canonical order (kind, then name); unused ones left out."""
        return [self.pipeline, *self.used_channels(), *self.used_flows_sorted(), *self.used_models()]

    def used_flows_sorted(self) -> list[ScoringFlow]:
        return sorted(self.used_flows(), key=lambda f: f.metadata.name)

    def canonical(self) -> list[dict[str, Any]]:
        """The normalised IR: defaults made explicit, canonical order. This is what the scheduler stores."""
        return [doc.model_dump(mode="json", by_alias=True, exclude_none=True) for doc in self.documents()]

    def canonical_json(self) -> bytes:
        return json.dumps(self.canonical(), sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()

    def digest(self) -> str:
        """sha256 of the normalised IR: equal for bundles that mean the same, however files are laid out."""
        return hashlib.sha256(self.canonical_json()).hexdigest()


@with_gc_paused
def load_bundle(path: str | Path) -> Bundle:
    """Load and validate a folder, a single (multi-document) YAML/JSON file or a .tar.gz bundle."""
    docs, issues = load_path(path)
    return build_bundle(docs, issues)


@with_gc_paused
def load_bundle_files(files: Mapping[str, bytes | str]) -> Bundle:
    """Load and validate named file contents, e.g. the `{files: {name: content}}` body of the REST API."""
    docs, issues = load_files(files)
    return build_bundle(docs, issues)


@with_gc_paused
def load_bundle_tarball(data: bytes, name: str = "bundle.tar.gz") -> Bundle:
    docs, issues = load_tarball(data, name)
    return build_bundle(docs, issues)


@with_gc_paused
def bundle_from_canonical(documents: list[dict[str, Any]]) -> Bundle:
    """Rebuild a bundle from `Bundle.canonical()` output (as stored by the scheduler)."""
    docs = [RawDocument("<stored>", i, doc, None) for i, doc in enumerate(documents)]
    return build_bundle(docs, [])


@with_gc_paused
def build_bundle(docs: list[RawDocument], issues: list[Issue]) -> Bundle:
    """Parse every document, index them by kind and name, run the cross-document checks."""
    problems = list(issues)
    by_kind: dict[str, dict[str, tuple[StrictModel, RawDocument]]] = {
        "Model": {},
        "DataChannel": {},
        "ScoringFlow": {},
        "ScoringPipeline": {},
    }
    broken: set[tuple[str, str]] = set()
    for doc in docs:
        typed, found = parse_document(doc)
        problems.extend(found)
        if typed is None:
            kind_and_name = doc.label.split(" ", 1)
            if len(kind_and_name) == 2 and kind_and_name[0] != "document":
                label_kind, label_name = kind_and_name
                # a misspelt kind has its issue already: the name may stand for any kind, so no reference to it
                # is reported as unknown
                kinds = [label_kind] if label_kind in by_kind else list(by_kind)
                broken.update((k, label_name) for k in kinds)
            continue
        kind: str = typed.kind  # type: ignore[attr-defined]
        name: str = typed.metadata.name  # type: ignore[attr-defined]
        earlier = by_kind[kind].get(name)
        if earlier is not None:
            problems.append(
                doc.issue(("metadata", "name"), f"a {kind} named '{name}' is already defined in {earlier[1].file}")
            )
            continue
        by_kind[kind][name] = (typed, doc)

    pipelines = by_kind["ScoringPipeline"]
    if not pipelines:
        if not problems:
            problems.append(Issue("<bundle>", "", "", "the bundle has no ScoringPipeline document"))
        raise IRValidationError(problems)
    in_file_order = sorted(pipelines.values(), key=lambda pair: (pair[1].file, pair[1].index))
    for item, doc in in_file_order[1:]:  # the first one is the pipeline of the bundle, see below
        name = item.metadata.name  # type: ignore[attr-defined]
        problems.append(doc.issue((), f"a bundle holds exactly one ScoringPipeline; found another one ('{name}')"))
    origins = {(kind, name): doc for kind, items in by_kind.items() for name, (_, doc) in items.items()}

    def report_for(kind: str, name: str) -> Report:
        doc = origins[(kind, name)]

        def report(loc: Loc, message: str) -> None:
            problems.append(doc.issue(loc, message))

        return report

    pipeline = in_file_order[0][0]
    assert isinstance(pipeline, ScoringPipeline)
    flows = {n: t for n, (t, _) in by_kind["ScoringFlow"].items() if isinstance(t, ScoringFlow)}
    models = {n: t for n, (t, _) in by_kind["Model"].items() if isinstance(t, Model)}
    channels = {n: t for n, (t, _) in by_kind["DataChannel"].items() if isinstance(t, DataChannel)}
    resolved: Resolved = {}
    check_pipeline(pipeline, flows, models, channels, report_for, frozenset(broken), resolved)
    if problems:
        raise IRValidationError(problems)
    flows = {name: with_fields_resolved(flow, resolved.get(name, {})) for name, flow in flows.items()}
    return Bundle(pipeline, flows, models, channels, origins)


def with_fields_resolved(flow: ScoringFlow, chosen: Mapping[tuple[int, int], list[str]]) -> ScoringFlow:
    """`flow` with the field selectors of its score inputs replaced by the fields they chose (the checks'
    `resolved`), so the values and everything downstream see explicit lists."""
    if not chosen:
        return flow
    steps = list(flow.spec.steps)
    for (step_index, input_index), names in chosen.items():
        step = steps[step_index]
        assert step.score is not None
        inputs = list(step.score.inputs)
        inputs[input_index] = inputs[input_index].model_copy(update={"fields": list(names)})
        steps[step_index] = step.model_copy(update={"score": step.score.model_copy(update={"inputs": inputs})})
    return flow.model_copy(update={"spec": flow.spec.model_copy(update={"steps": steps})})
