"""Field selectors in score inputs: `{from, to}`, `{prefix}`, `{all: true, except}` and explicit lists.

The bundle of `bundle_kit`: the source has `id, amount (number), age (integer), country (string), day (date)`,
step 0 adds `tag`, step 1 scores `fraud-rf`, whose input `features` is FP32 `[-1, 2]`. A selector resolves
against the schema at its step, in schema order, and the loaded bundle (so the rendered values) holds the
explicit list it chose.
"""

from __future__ import annotations

from typing import Any

import pytest
from bundle_kit import BundleData, issues_of, put

import ir

SCORE = "spec.steps[1].score"


def _resolved(bundle: BundleData, step: int = 1, index: int = 0) -> Any:
    loaded = ir.load_bundle_files(bundle.files())
    score = loaded.flows["f1"].spec.steps[step].score
    assert score is not None
    return score.inputs[index].fields


@pytest.mark.parametrize(
    "selector",
    [
        {"from": "amount", "to": "age"},
        {"prefix": "a"},
        {"all": True, "except": ["id", "country", "day", "tag"]},
        ["amount", "age"],
    ],
    ids=["from-to", "prefix", "all-except", "list"],
)
def test_each_form_resolves_to_the_fields_in_schema_order(bundle: BundleData, selector: Any) -> None:
    put(bundle.flow, f"{SCORE}.inputs[0].fields", selector)
    assert _resolved(bundle) == ["amount", "age"]


def test_the_rendered_values_hold_the_explicit_list(bundle: BundleData) -> None:
    put(bundle.flow, f"{SCORE}.inputs[0].fields", {"from": "amount", "to": "age"})
    values = ir.render(ir.load_bundle_files(bundle.files()))
    document = ir.to_document(values)
    (flow,) = document["scoringFlows"].values()
    assert flow["steps"][1]["score"]["inputs"][0]["fields"] == ["amount", "age"]


def test_a_selector_sees_the_schema_after_earlier_map_steps(bundle: BundleData) -> None:
    bundle.steps().insert(0, {"name": "trim", "map": {"drop": ["country", "day"], "rename": {"amount": "x_amount"}}})
    put(bundle.flow, "spec.steps[2].score.inputs[0].fields", {"all": True, "except": ["id", "tag"]})
    # rename moves the field to the end of the schema, as the checks track it: age, x_amount
    assert _resolved(bundle, step=2) == ["age", "x_amount"]


def test_two_inputs_may_choose_overlapping_fields(bundle: BundleData) -> None:
    model = bundle.model
    model["spec"]["inputs"] = [
        {"name": "features", "datatype": "FP32", "shape": [-1, 2]},
        {"name": "age_only", "datatype": "FP32", "shape": [-1, 1]},
    ]
    put(bundle.flow, f"{SCORE}.inputs[0].fields", {"prefix": "a"})
    bundle.steps()[1]["score"]["inputs"].append({"input": "age_only", "fields": {"from": "age", "to": "age"}})
    assert _resolved(bundle) == ["amount", "age"]
    assert _resolved(bundle, index=1) == ["age"]


@pytest.mark.parametrize(
    ("selector", "message"),
    [
        ({"prefix": "zz"}, "selector {prefix: zz} matches no field of the record schema here"),
        ({"from": "age", "to": "amount"}, "selector {from: age, to: amount}: 'amount' comes before 'age'"),
        ({"from": "amount", "to": "agee"}, "selector {from: amount, to: agee}: field 'agee' is not in the record"),
        (
            {"all": True, "except": ["idd"]},
            "selector {all: true, except: [idd]}: 'except' names 'idd', which is not in the record schema here",
        ),
        (
            {"all": True, "except": ["id", "amount", "day", "tag"]},
            "field 'country' (chosen by selector {all: true, except: [id, amount, day, tag]}) is string, which cannot "
            "feed "
            "FP32 input 'features'",
        ),
        (
            {"from": "id", "to": "age"},
            "each record needs 2 values, but 3 fields are mapped (chosen by selector {from: id, to: age})",
        ),
    ],
    ids=["empty-match", "reversed", "unknown-end", "unknown-except", "type-mismatch", "wrong-width"],
)
def test_a_selector_that_cannot_feed_the_input_is_named_in_the_error(
    bundle: BundleData, selector: dict[str, Any], message: str
) -> None:
    put(bundle.flow, f"{SCORE}.inputs[0].fields", selector)
    issues = issues_of(bundle.files())
    assert len(issues) == 1, "\n".join(map(str, issues))
    (issue,) = issues
    assert (issue.file, issue.document) == ("flows/f1.yaml", "ScoringFlow f1")
    assert issue.path == "spec.steps[1].score.inputs[0].fields", str(issue)
    assert message in issue.message, str(issue)
    assert issue.line is not None


@pytest.mark.parametrize(
    ("selector", "message"),
    [
        (
            {"prefix": "a", "all": True},
            "exactly one of {from, to}, {prefix} or {all: true, except} (found prefix, all)",
        ),
        ({"from": "amount"}, "a {from, to} selector needs both ends: 'to' is missing"),
        ({"except": ["id"]}, "found none"),
        ({"all": False}, "'all' can only be true"),
        ({"prefix": "a", "except": ["id"]}, "'except' goes with 'all: true'"),
        ({"suffix": "e"}, "suffix"),
        ([], "'fields' lists no field"),
    ],
    ids=["two-forms", "half-range", "except-alone", "all-false", "except-with-prefix", "unknown-key", "empty-list"],
)
def test_a_malformed_selector_is_refused_where_it_is_written(bundle: BundleData, selector: Any, message: str) -> None:
    put(bundle.flow, f"{SCORE}.inputs[0].fields", selector)
    issues = issues_of(bundle.files())
    assert issues, "accepted"
    assert any(message in issue.message for issue in issues), "\n".join(map(str, issues))
    assert all(issue.file == "flows/f1.yaml" for issue in issues)
    assert all(issue.path.startswith("spec.steps[1].score.inputs[0]") for issue in issues), "\n".join(map(str, issues))
