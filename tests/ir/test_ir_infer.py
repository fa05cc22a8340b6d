"""`schema: {infer: true}` on a file source: accepted at deploy with the field checks deferred to install.

The bundle of `bundle_kit` (file source `txns-in`, score step 1 on `fraud-rf`). What needs no fields (the model,
its input and output names) is still checked at deploy; what needs them (selectors, types, sink fields) waits
for the schema `scheduler.inference` reads at install (tested in tests/scheduler/test_schema_inference.py).
"""

from __future__ import annotations

import pytest
from bundle_kit import BundleData, issues_of, put

import ir


def _infer(bundle: BundleData) -> None:
    bundle.source["spec"]["schema"] = {"infer": True}


def test_an_inferring_source_is_accepted_and_its_selectors_wait_for_install(bundle: BundleData) -> None:
    _infer(bundle)
    put(bundle.flow, "spec.steps[1].score.inputs[0].fields", {"from": "amount", "to": "age"})
    loaded = ir.load_bundle_files(bundle.files())
    assert loaded.channels["txns-in"].spec.record_schema.infer is True
    score = loaded.flows["f1"].spec.steps[1].score
    assert score is not None
    fields = score.inputs[0].fields
    assert not isinstance(fields, list)  # still the selector: nothing to resolve it against yet
    assert ir.to_document(ir.render(loaded))["scoringFlows"]["f1"]["source"]["spec"]["schema"] == {
        "fields": [],
        "infer": True,
    }


def test_a_listed_schema_keeps_its_canonical_form(bundle: BundleData) -> None:
    canonical = ir.load_bundle_files(bundle.files()).canonical()
    source = next(doc for doc in canonical if doc["metadata"]["name"] == "txns-in")
    assert "infer" not in source["spec"]["schema"]  # unset, so the digests of existing pipelines do not move


def test_fields_that_do_not_exist_are_not_reported_before_the_schema_is_known(bundle: BundleData) -> None:
    _infer(bundle)
    put(bundle.flow, "spec.steps[1].score.inputs[0].fields", ["no_such", "fields"])
    ir.load_bundle_files(bundle.files())


def test_model_and_tensor_names_are_still_checked_at_deploy(bundle: BundleData) -> None:
    _infer(bundle)
    put(bundle.flow, "spec.steps[1].score.inputs[0].input", "featurez")
    put(bundle.flow, "spec.steps[1].score.outputs[0].output", "prob")
    messages = [issue.message for issue in issues_of(bundle.files())]
    assert "model 'fraud-rf' has no input 'featurez' (did you mean 'features'?)" in messages
    assert "model 'fraud-rf' has no output 'prob' (did you mean 'proba'?)" in messages
    put(bundle.flow, "spec.steps[1].score.model", "fraud-rff")
    messages = [issue.message for issue in issues_of(bundle.files())]
    assert any(m.startswith("unknown model 'fraud-rff'") for m in messages)


@pytest.mark.parametrize(
    ("schema", "message"),
    [
        (
            {"infer": True, "fields": [{"name": "id", "type": "integer"}]},
            "either lists its fields or says 'infer: true'",
        ),
        ({}, "needs at least one field, or 'infer: true'"),
        ({"infer": False}, "needs at least one field, or 'infer: true'"),
    ],
    ids=["both", "neither", "false"],
)
def test_a_schema_lists_fields_or_infers(bundle: BundleData, schema: dict[str, object], message: str) -> None:
    bundle.source["spec"]["schema"] = schema
    (issue,) = issues_of(bundle.files())
    assert message in issue.message and issue.document == "DataChannel txns-in"


def test_only_a_file_source_infers(bundle: BundleData) -> None:
    bundle.sink["spec"]["schema"] = {"infer": True}
    (issue,) = issues_of(bundle.files())
    assert issue.path == "spec.schema.infer"
    assert "applies only to a file source" in issue.message and "a sink of type 'file'" in issue.message
    bundle.sink["spec"]["schema"] = {"fields": [{"name": "id", "type": "integer"}]}
    bundle.source["spec"] = {
        "direction": "source",
        "type": "redis",
        "redis": {"url": {"secretRef": {"name": "redis", "key": "url"}}, "stream": "s", "consumerGroup": "g"},
        "schema": {"infer": True},
    }
    messages = [issue.message for issue in issues_of(bundle.files())]
    assert any("a source of type 'redis'" in m for m in messages)
