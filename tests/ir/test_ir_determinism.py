"""Property tests: rendering is deterministic and independent of how documents are laid out in files."""

from __future__ import annotations

import json
import random
from typing import Any

import yaml
from bundle_kit import generated_documents
from hypothesis import given, settings
from hypothesis import strategies as st

import ir

SETTINGS = settings(deadline=None, max_examples=50)

_PARAM_VALUES: dict[str, st.SearchStrategy[Any]] = {
    "string": st.text(alphabet="abcxyz-_ ", min_size=1, max_size=8),
    "integer": st.integers(-1000, 1000),
    "number": st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False),
    "boolean": st.booleans(),
}


@st.composite
def parameters(draw: st.DrawFn) -> list[tuple[str, str, Any]]:
    names = draw(st.lists(st.sampled_from(["alpha", "beta", "gamma", "delta", "limit"]), unique=True, max_size=4))
    out = []
    for name in names:
        kind = draw(st.sampled_from(sorted(_PARAM_VALUES)))
        out.append((name, kind, draw(_PARAM_VALUES[kind])))
    return out


@st.composite
def bundles(draw: st.DrawFn) -> list[dict[str, Any]]:
    """The documents of a valid bundle of varying size."""
    return generated_documents(
        models=draw(st.integers(1, 3)),
        flows=draw(st.integers(1, 3)),
        sinks_per_flow=draw(st.integers(1, 2)),
        params=draw(parameters()),
    )


def lay_out(documents: list[dict[str, Any]], rnd: random.Random) -> dict[str, str]:
    """Spread `documents` over 1..n files in a random order, some as JSON, some as multi-document YAML."""
    shuffled = list(documents)
    rnd.shuffle(shuffled)
    count = rnd.randint(1, len(shuffled))
    buckets: list[list[dict[str, Any]]] = [[] for _ in range(count)]
    for doc in shuffled:
        buckets[rnd.randrange(count)].append(doc)
    files: dict[str, str] = {}
    names = [f"f{n:03d}" for n in rnd.sample(range(1000), count)]
    for name, docs in zip(names, buckets, strict=True):
        if not docs:
            continue
        if rnd.random() < 0.3:
            files[f"{name}.json"] = json.dumps(docs if len(docs) > 1 or rnd.random() < 0.5 else docs[0])
        else:
            files[f"{name}.yaml"] = yaml.safe_dump_all(docs, sort_keys=rnd.random() < 0.5)
    items = list(files.items())
    rnd.shuffle(items)  # the insertion order of the mapping, too
    return dict(items)


def canonical_layout(documents: list[dict[str, Any]]) -> dict[str, str]:
    return {f"doc-{i:03d}.yaml": yaml.safe_dump(doc, sort_keys=False) for i, doc in enumerate(documents)}


@SETTINGS
@given(documents=bundles())
def test_rendering_twice_gives_identical_yaml(documents: list[dict[str, Any]]) -> None:
    files = canonical_layout(documents)
    first = ir.to_yaml(ir.render(ir.load_bundle_files(files)))
    second = ir.to_yaml(ir.render(ir.load_bundle_files(files)))
    assert first == second


@SETTINGS
@given(documents=bundles(), rnd=st.randoms(use_true_random=False))
def test_the_layout_of_documents_in_files_changes_neither_digest_nor_values(
    documents: list[dict[str, Any]], rnd: random.Random
) -> None:
    reference = ir.load_bundle_files(canonical_layout(documents))
    shuffled = ir.load_bundle_files(lay_out(documents, rnd))
    assert shuffled.digest() == reference.digest()
    assert ir.to_yaml(ir.render(shuffled)) == ir.to_yaml(ir.render(reference))


@SETTINGS
@given(documents=bundles(), rnd=st.randoms(use_true_random=False))
def test_the_order_of_documents_inside_one_multi_document_file_does_not_matter(
    documents: list[dict[str, Any]], rnd: random.Random
) -> None:
    shuffled = list(documents)
    rnd.shuffle(shuffled)
    one = ir.load_bundle_files({"bundle.yaml": yaml.safe_dump_all(documents)})
    other = ir.load_bundle_files({"bundle.yaml": yaml.safe_dump_all(shuffled)})
    assert one.digest() == other.digest()
    assert ir.to_yaml(ir.render(one)) == ir.to_yaml(ir.render(other))


@SETTINGS
@given(documents=bundles())
def test_the_canonical_form_round_trips(documents: list[dict[str, Any]]) -> None:
    loaded = ir.load_bundle_files(canonical_layout(documents))
    again = ir.bundle_from_canonical(loaded.canonical())
    assert again.digest() == loaded.digest()
    assert ir.to_yaml(ir.render(again)) == ir.to_yaml(ir.render(loaded))


@SETTINGS
@given(documents=bundles())
def test_the_rendered_values_hold_every_used_document(documents: list[dict[str, Any]]) -> None:
    values = ir.render(ir.load_bundle_files(canonical_layout(documents)))
    names = {(d["kind"], d["metadata"]["name"]) for d in documents}
    assert {("Model", n) for n in values.scoring_services} == {n for n in names if n[0] == "Model"}
    assert {("ScoringFlow", n) for n in values.scoring_flows} == {n for n in names if n[0] == "ScoringFlow"}
    assert {("DataChannel", n) for n in values.data_channels} == {n for n in names if n[0] == "DataChannel"}
    assert values.pipeline.parameters == {p["name"]: p["default"] for p in documents[0]["spec"]["parameters"]}
