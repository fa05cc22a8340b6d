"""Pipeline parameters: defaults, overrides type-checked from text and from typed values, substitution."""

from __future__ import annotations

from typing import Any

import pytest
from bundle_kit import BundleData, put

import ir


def render_issues(bundle: ir.Bundle, params: dict[str, Any]) -> list[ir.Issue]:
    with pytest.raises(ir.IRValidationError) as caught:
        ir.render(bundle, params)
    return caught.value.issues


def with_flag(bundle: BundleData) -> BundleData:
    bundle.pipeline["spec"]["parameters"].append({"name": "strict", "type": "boolean", "default": False})
    return bundle


def test_defaults_are_applied_when_nothing_is_overridden(bundle: BundleData) -> None:
    values = ir.render(bundle.load())
    assert values.pipeline.parameters == {"input": "data/in.csv", "limit": 10, "tag": "v1", "threshold": 0.5}
    flow = values.scoring_flows["f1"]
    assert flow.source.spec.file is not None and flow.source.spec.file.path == "data/in.csv"
    assert flow.steps[0].map is not None and flow.steps[0].map.set == {"tag": "v1"}
    assert flow.steps[2].filter is not None and flow.steps[2].filter.value == 0.5


@pytest.mark.parametrize(
    ("name", "text", "expected"),
    [
        ("limit", "5", 5),
        ("limit", "-3", -3),
        ("limit", " 7 ", 7),
        ("threshold", "0.9", 0.9),
        ("threshold", "1", 1.0),
        ("threshold", "1e-3", 0.001),
        ("tag", "5", "5"),
        ("tag", "", ""),
        ("strict", "true", True),
        ("strict", "Yes", True),
        ("strict", "off", False),
        ("strict", "0", False),
    ],
)
def test_an_override_given_as_text_is_converted_to_the_parameter_type(
    bundle: BundleData, name: str, text: str, expected: Any
) -> None:
    resolved = ir.resolve_parameters(with_flag(bundle).load(), {name: text})
    assert resolved[name] == expected
    assert type(resolved[name]) is type(expected)


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("limit", "x", "expected an integer for parameter of type 'integer' (got 'x')"),
        ("limit", "5.5", "expected an integer for parameter of type 'integer' (got '5.5')"),
        ("limit", "", "expected an integer for parameter of type 'integer' (got '')"),
        ("threshold", "high", "expected a number for parameter of type 'number' (got 'high')"),
        ("threshold", "nan", "expected a finite number for parameter of type 'number' (got 'nan')"),
        ("threshold", "-inf", "expected a finite number"),
        ("strict", "maybe", "expected true or false for parameter of type 'boolean' (got 'maybe')"),
    ],
)
def test_an_override_given_as_text_that_does_not_fit_is_an_issue_naming_the_parameter(
    bundle: BundleData, name: str, text: str, message: str
) -> None:
    (issue,) = render_issues(with_flag(bundle).load(), {name: text})
    assert (issue.file, issue.path) == ("<parameters>", name)
    assert message in issue.message


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [("limit", 7, 7), ("threshold", 2, 2.0), ("threshold", 0.25, 0.25), ("tag", "x", "x"), ("strict", True, True)],
)
def test_a_typed_override_of_the_right_type_is_accepted(
    bundle: BundleData, name: str, value: Any, expected: Any
) -> None:
    resolved = ir.resolve_parameters(with_flag(bundle).load(), {name: value})
    assert resolved[name] == expected
    assert type(resolved[name]) is type(expected)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("limit", 7.5),
        ("limit", True),
        ("threshold", False),
        ("threshold", float("nan")),
        ("threshold", float("inf")),
        ("tag", 5),
        ("strict", 1),
        ("limit", [1]),
        ("tag", None),
    ],
)
def test_a_typed_override_of_the_wrong_type_is_an_issue(bundle: BundleData, name: str, value: Any) -> None:
    (issue,) = render_issues(with_flag(bundle).load(), {name: value})
    assert (issue.file, issue.path) == ("<parameters>", name)
    assert "for parameter of type" in issue.message


def test_an_unknown_parameter_is_an_issue_with_did_you_mean(bundle: BundleData) -> None:
    (issue,) = render_issues(bundle.load(), {"treshold": "0.7"})
    assert (issue.path, issue.message) == ("treshold", "unknown parameter 'treshold' (did you mean 'threshold'?)")


def test_an_unknown_parameter_without_a_close_name_lists_the_declared_ones(bundle: BundleData) -> None:
    (issue,) = render_issues(bundle.load(), {"zzz": "1"})
    assert issue.message == "unknown parameter 'zzz' (declared: input, limit, tag, threshold)"


def test_an_unknown_parameter_of_a_pipeline_without_parameters_says_so(bundle: BundleData) -> None:
    put(bundle.pipeline, "spec.parameters", [])
    put(bundle.source, "spec.file.path", "data/in.csv")
    put(bundle.flow, "spec.steps[0].map.set.tag", "v1")
    put(bundle.flow, "spec.steps[2].filter.value", 0.5)
    (issue,) = render_issues(bundle.load(), {"tag": "x"})
    assert issue.message == "unknown parameter 'tag' (the pipeline declares none)"


def test_a_parameter_without_default_is_required(bundle: BundleData) -> None:
    bundle.pipeline["spec"]["parameters"].append({"name": "run_id", "type": "integer"})
    loaded = bundle.load()
    (issue,) = render_issues(loaded, {})
    assert (issue.path, issue.message) == ("run_id", "parameter 'run_id' is required: it has no default")
    assert ir.render(loaded, {"run_id": "42"}).pipeline.parameters["run_id"] == 42


def test_every_parameter_problem_is_reported_at_once(bundle: BundleData) -> None:
    bundle.pipeline["spec"]["parameters"].append({"name": "run_id", "type": "integer"})
    issues = render_issues(bundle.load(), {"limit": "many", "tga": "x"})
    assert [i.path for i in issues] == ["limit", "run_id", "tga"]


def test_a_parameter_is_substituted_typed_into_map_set_and_filter_value(bundle: BundleData) -> None:
    put(bundle.flow, "spec.steps[0].map.set", {"tag": "${params.tag}", "max_rows": "${params.limit}"})
    put(bundle.flow, "spec.steps[2].filter", {"field": "country", "op": "in", "value": ["${params.tag}", "FR"]})
    bundle.steps().append({"filter": {"field": "score", "op": "lt", "value": "${params.threshold}"}})
    values = ir.render(bundle.load(), {"limit": "5", "tag": "DE", "threshold": "0.75"})
    steps = values.scoring_flows["f1"].steps
    assert steps[0].map is not None and steps[0].map.set == {"tag": "DE", "max_rows": 5}
    assert isinstance(steps[0].map.set["max_rows"], int)
    assert steps[2].filter is not None and steps[2].filter.value == ["DE", "FR"]
    assert steps[3].filter is not None and steps[3].filter.value == 0.75
    document = ir.to_document(values)
    assert document["scoringFlows"]["f1"]["steps"][0]["map"]["set"]["max_rows"] == 5


def test_a_parameter_inside_longer_text_is_substituted_as_text(bundle: BundleData) -> None:
    put(bundle.flow, "spec.steps[0].map.set.tag", "run ${params.limit} of ${params.tag}")
    values = ir.render(bundle.load(), {"limit": 3})
    step = values.scoring_flows["f1"].steps[0]
    assert step.map is not None and step.map.set == {"tag": "run 3 of v1"}


def test_a_parameter_is_substituted_as_text_in_channel_options(bundle: BundleData) -> None:
    bundle.pipeline["spec"]["parameters"].append({"name": "gzip", "type": "boolean", "default": True})
    put(bundle.sink, "spec.file.path", "out/${params.tag}/limit-${params.limit}-${params.gzip}.csv")
    values = ir.render(bundle.load(), {"tag": "nightly", "limit": "20", "input": "s3-mirror/in.csv"})
    sink = values.data_channels["txns-out"].spec.file
    source = values.data_channels["txns-in"].spec.file
    assert sink is not None and sink.path == "out/nightly/limit-20-true.csv"
    assert source is not None and source.path == "s3-mirror/in.csv"
    assert values.scoring_flows["f1"].sinks[0].spec.file == sink


def test_a_parameter_making_a_channel_option_invalid_is_an_issue_at_that_option(bundle: BundleData) -> None:
    (issue,) = render_issues(bundle.load(), {"input": ""})
    assert (issue.file, issue.document, issue.path) == ("channels.yaml", "DataChannel txns-in", "spec.file.path")
    assert issue.message == "with the parameters applied: string should have at least 1 character (got '')"


def test_a_map_set_parameter_gives_the_field_the_parameter_type(bundle: BundleData) -> None:
    put(bundle.flow, "spec.steps[0].map.set.tag", "${params.limit}")
    with pytest.raises(ir.IRValidationError) as caught:
        bundle.load()
    (issue,) = caught.value.issues
    assert issue.message == "sink 'txns-out' expects field 'tag' as string, but the flow makes it integer (int64)"


def test_a_filter_may_compare_a_number_field_with_an_integer_parameter(bundle: BundleData) -> None:
    put(bundle.flow, "spec.steps[2].filter.value", "${params.limit}")
    values = ir.render(bundle.load(), {"limit": "3"})
    step = values.scoring_flows["f1"].steps[2]
    assert step.filter is not None and step.filter.value == 3


def test_overrides_do_not_change_the_bundle_digest(bundle: BundleData) -> None:
    loaded = bundle.load()
    one = ir.render(loaded, {"limit": "1"})
    two = ir.render(loaded, {"limit": "2"})
    assert one.pipeline.digest == two.pipeline.digest == loaded.digest()
    assert one.pipeline.parameters != two.pipeline.parameters
