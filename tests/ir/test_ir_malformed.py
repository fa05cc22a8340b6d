"""Malformed IR, one mistake at a time: each case yields exactly one issue, located precisely.

Every case starts from the small valid bundle of `bundle_kit`, applies one mutation, loads the files with
`ir.load_bundle_files` and compares the single issue reported with the expected file, document label, path
and message. A case that yields no issue, another issue, or more issues (a cascade) fails.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from bundle_kit import SHA, BundleData, delete, get, issues_of, model_doc, pipeline_doc, put

import ir

PIPE = ("pipeline.yaml", "ScoringPipeline fraud")
FLOW = ("flows/f1.yaml", "ScoringFlow f1")
MODEL = ("models/fraud-rf.yaml", "Model fraud-rf")
SOURCE = ("channels.yaml", "DataChannel txns-in")
SINK = ("channels.yaml", "DataChannel txns-out")

SECRET = {"secretRef": {"name": "db", "key": "url"}}


@dataclass(frozen=True)
class Case:
    id: str
    mutate: Callable[[BundleData], None]
    where: tuple[str, str]
    path: str
    message: str


def _all(*actions: Callable[[BundleData], Any]) -> Callable[[BundleData], None]:
    def run(b: BundleData) -> None:
        for action in actions:
            action(b)

    return run


def _sql_source(**options: Any) -> Callable[[BundleData], None]:
    def run(b: BundleData) -> None:
        spec = b.source["spec"]
        del spec["file"]
        spec["type"] = "sql"
        spec["sql"] = {"connection": SECRET, **options}

    return run


def _sql_sink(**options: Any) -> Callable[[BundleData], None]:
    def run(b: BundleData) -> None:
        spec = b.sink["spec"]
        del spec["file"]
        spec["type"] = "sql"
        spec["sql"] = {"connection": SECRET, **options}

    return run


def _redis_source(**options: Any) -> Callable[[BundleData], None]:
    def run(b: BundleData) -> None:
        spec = b.source["spec"]
        del spec["file"]
        spec["type"] = "redis"
        spec["redis"] = {"url": SECRET, "stream": "txns", **options}

    return run


def _add_source_field(field: dict[str, Any]) -> Callable[[BundleData], None]:
    return lambda b: b.source["spec"]["schema"]["fields"].append(field)


def _step(index: int, step: dict[str, Any]) -> Callable[[BundleData], None]:
    return lambda b: b.steps().insert(index, step)


CASES: list[Case] = [
    # ------------------------------------------------------------------ unknown fields, did-you-mean at every level
    Case(
        "unknown-top-level-field",
        lambda b: put(b.model, "metadatas", {"name": "x"}),
        MODEL,
        "metadatas",
        "unknown field 'metadatas' (did you mean 'metadata'?)",
    ),
    Case(
        "unknown-spec-field",
        lambda b: put(b.model, "spec.replica", 2),
        MODEL,
        "spec.replica",
        "unknown field 'replica' (did you mean 'replicas'?)",
    ),
    Case(
        "unknown-nested-field",
        lambda b: put(b.model, "spec.autoscaling", {"maxReplica": 3}),
        MODEL,
        "spec.autoscaling.maxReplica",
        "unknown field 'maxReplica' (did you mean 'maxReplicas'?)",
    ),
    Case(
        "unknown-field-in-step-list-item",
        lambda b: put(b.flow, "spec.steps[1].score.outputs[0].reduced", "max"),
        FLOW,
        "spec.steps[1].score.outputs[0].reduced",
        "unknown field 'reduced' (did you mean 'reduce'?)",
    ),
    Case(
        "unknown-field-in-channel-options",
        lambda b: put(b.sink, "spec.file.compresion", "gzip"),
        SINK,
        "spec.file.compresion",
        "unknown field 'compresion' (did you mean 'compression'?)",
    ),
    Case(
        "unknown-field-in-record-field",
        lambda b: put(b.source, "spec.schema.fields[1].nulable", True),
        SOURCE,
        "spec.schema.fields[1].nulable",
        "unknown field 'nulable' (did you mean 'nullable'?)",
    ),
    # ------------------------------------------------------------------ required fields, apiVersion, kind
    Case(
        "missing-required-field",
        lambda b: delete(b.model, "spec.uri"),
        MODEL,
        "spec.uri",
        "required field is missing",
    ),
    Case(
        "missing-flow-steps",
        lambda b: delete(b.flow, "spec.steps"),
        FLOW,
        "spec.steps",
        "required field is missing",
    ),
    Case(
        "wrong-api-version",
        lambda b: put(b.flow, "apiVersion", "modelops/v2"),
        FLOW,
        "apiVersion",
        "apiVersion must be 'modelops/v1' (got 'modelops/v2')",
    ),
    Case(
        "missing-api-version",
        lambda b: delete(b.flow, "apiVersion"),
        FLOW,
        "apiVersion",
        "apiVersion must be 'modelops/v1' (missing)",
    ),
    Case(
        "unknown-kind-with-did-you-mean",
        lambda b: put(b.flow, "kind", "ScoringFlows"),
        ("flows/f1.yaml", "ScoringFlows f1"),
        "kind",
        "unknown kind 'ScoringFlows' (did you mean 'ScoringFlow'?); the kinds are Model, DataChannel, ScoringFlow,",
    ),
    # ------------------------------------------------------------------ names
    Case(
        "name-not-a-dns-label",
        lambda b: put(b.pipeline, "metadata.name", "Fraud_Pipeline"),
        ("pipeline.yaml", "ScoringPipeline Fraud_Pipeline"),
        "metadata.name",
        "'Fraud_Pipeline' is not a DNS-1123 label",
    ),
    Case(
        "name-longer-than-40",
        lambda b: put(b.pipeline, "metadata.name", "f" * 41),
        ("pipeline.yaml", f"ScoringPipeline {'f' * 41}"),
        "metadata.name",
        "is 41 characters long; at most 40 are allowed",
    ),
    Case(
        "step-name-not-an-identifier",
        lambda b: put(b.flow, "spec.steps[0].name", "tag-rows"),
        FLOW,
        "spec.steps[0].name",
        "'tag-rows' is not a valid name: use letters, digits and '_'",
    ),
    Case(
        "field-name-invalid",
        lambda b: put(b.source, "spec.schema.fields[0].name", "1st"),
        SOURCE,
        "spec.schema.fields[0].name",
        "'1st' is not a valid field name",
    ),
    # ------------------------------------------------------------------ scalar types
    Case(
        "integer-given-a-word",
        lambda b: put(b.model, "spec.replicas", "three"),
        MODEL,
        "spec.replicas",
        "expected an integer (got 'three')",
    ),
    Case(
        "integer-given-a-fraction",
        lambda b: put(b.flow, "spec.batchSize", 2.5),
        FLOW,
        "spec.batchSize",
        "expected an integer (got 2.5)",
    ),
    Case(
        "boolean-given-a-word",
        lambda b: put(b.model, "spec.batching", {"enabled": "maybe"}),
        MODEL,
        "spec.batching.enabled",
        "expected a boolean (got 'maybe')",
    ),
    Case(
        "string-given-a-number",
        lambda b: put(b.model, "metadata.labels", {"team": 7}),
        MODEL,
        "metadata.labels.team",
        "expected a string (got 7)",
    ),
    Case(
        "list-given-a-scalar",
        lambda b: put(b.flow, "spec.sinks", "txns-out"),
        FLOW,
        "spec.sinks",
        "expected a list (got 'txns-out')",
    ),
    Case(
        "mapping-given-a-list",
        lambda b: put(b.model, "spec.batching", [1, 2]),
        MODEL,
        "spec.batching",
        "expected a mapping (got a list)",
    ),
    Case(
        "scalar-union-given-a-mapping",
        lambda b: put(b.flow, "spec.steps[2].filter.value", {"min": 1}),
        FLOW,
        "spec.steps[2].filter.value",
        "wrong type: expected a boolean, an integer, a number, a string or a list (got a mapping)",
    ),
    Case(
        "number-out-of-range",
        lambda b: put(b.model, "spec.replicas", 5000),
        MODEL,
        "spec.replicas",
        "input should be less than or equal to 1000 (got 5000)",
    ),
    # ------------------------------------------------------------------ Model
    Case(
        "unknown-runtime-with-did-you-mean",
        lambda b: put(b.model, "spec.runtime", "sklern"),
        MODEL,
        "spec.runtime",
        "'sklern' is not one of 'sklearn', 'onnx', 'torch', 'transformers', 'pmml', 'python', 'mlflow' "
        "(did you mean 'sklearn'?)",
    ),
    Case(
        "unknown-datatype-with-did-you-mean",
        lambda b: put(b.model, "spec.inputs[0].datatype", "FP322"),
        MODEL,
        "spec.inputs[0].datatype",
        "(did you mean 'FP32'?)",
    ),
    Case(
        "sha256-missing-for-sklearn",
        lambda b: delete(b.model, "spec.sha256"),
        MODEL,
        "spec.sha256",
        "sha256 is required for runtime 'sklearn': its artifacts are unpickled, which runs code",
    ),
    Case(
        "sha256-malformed",
        lambda b: put(b.model, "spec.sha256", SHA.upper()),
        MODEL,
        "spec.sha256",
        "sha256 must be 64 lower-case hexadecimal characters (got 64 characters)",
    ),
    Case(
        "uri-with-unsupported-scheme",
        lambda b: put(b.model, "spec.uri", "gs://bucket/fraud.joblib"),
        MODEL,
        "spec.uri",
        "uri scheme 'gs' is not supported: use a relative path, file://, http(s)://, s3:// or models:/",
    ),
    Case(
        "uri-absolute-path",
        lambda b: put(b.model, "spec.uri", "/models/fraud.joblib"),
        MODEL,
        "spec.uri",
        "an absolute path must be written as a file:// URI (file:///models/fraud.joblib)",
    ),
    Case(
        "tensor-shape-zero",
        lambda b: put(b.model, "spec.inputs[0].shape", [-1, 0]),
        MODEL,
        "spec.inputs[0].shape[1]",
        "shape dimensions must be positive, or -1 for a variable size (got 0)",
    ),
    Case(
        "tensor-shape-empty",
        lambda b: put(b.model, "spec.outputs[0].shape", []),
        MODEL,
        "spec.outputs[0].shape",
        "list should have at least 1 item",
    ),
    Case(
        "duplicate-tensor-names",
        lambda b: b.model["spec"]["outputs"].append({"name": "proba", "datatype": "FP32", "shape": [-1]}),
        MODEL,
        "spec.outputs[1].name",
        "output 'proba' is declared twice",
    ),
    Case(
        "autoscaling-min-above-max",
        lambda b: put(b.model, "spec.autoscaling", {"enabled": True, "minReplicas": 5, "maxReplicas": 2}),
        MODEL,
        "spec.autoscaling.minReplicas",
        "minReplicas (5) is greater than maxReplicas (2)",
    ),
    Case(
        "resource-quantity-malformed",
        lambda b: put(b.model, "spec.resources", {"requests": {"cpu": "lots"}}),
        MODEL,
        "spec.resources.requests.cpu",
        "'lots' is not a Kubernetes quantity",
    ),
    # ------------------------------------------------------------------ DataChannel
    Case(
        "channel-options-not-matching-type",
        lambda b: put(b.sink, "spec.type", "sql"),
        SINK,
        "spec.sql",
        "a channel of type 'sql' needs its options under 'sql'",
    ),
    Case(
        "channel-extra-options-block",
        lambda b: put(b.sink, "spec.http", {"path": "/scores"}),
        SINK,
        "spec.http",
        "options 'http' do not apply to a channel of type 'file'",
    ),
    Case(
        "channel-unknown-type-with-did-you-mean",
        lambda b: put(b.sink, "spec.type", "fille"),
        SINK,
        "spec.type",
        "'fille' is not one of 'file', 'sql', 'redis', 'rabbitmq', 'http' (did you mean 'file'?)",
    ),
    Case(
        "csv-options-on-jsonl-file",
        lambda b: put(b.sink, "spec.file", {"path": "out.jsonl", "format": "jsonl", "csv": {"delimiter": ";"}}),
        SINK,
        "spec.file.csv",
        "'csv' options apply only to format 'csv'",
    ),
    Case(
        "sql-source-with-query-and-table",
        _sql_source(query="select * from txns", table="txns"),
        SOURCE,
        "spec.sql",
        "a sql source needs exactly one of 'query' or 'table'",
    ),
    Case(
        "sql-sink-without-table",
        _sql_sink(),
        SINK,
        "spec.sql.table",
        "a sql sink needs 'table'",
    ),
    Case(
        "sql-sink-with-query",
        _sql_sink(table="scores", query="select 1"),
        SINK,
        "spec.sql.query",
        "'query' applies only to a sql source",
    ),
    Case(
        "credentials-inline",
        _sql_sink(table="scores", connection="postgresql://scorer:hunter2@db/scores"),
        SINK,
        "spec.sql.connection",
        "credentials are never written inline: use secretRef: {name: <secret>, key: <key>}",
    ),
    Case(
        "redis-source-without-consumer-group",
        _all(_redis_source(), lambda b: put(b.pipeline, "spec.mode", "streaming")),
        SOURCE,
        "spec.redis.consumerGroup",
        "a redis source needs 'consumerGroup'",
    ),
    Case(
        "field-format-not-fitting-integer",
        lambda b: put(b.source, "spec.schema.fields[2].format", "date"),
        SOURCE,
        "spec.schema.fields[2].format",
        "format 'date' does not apply to type 'integer' (allowed: 'int32', 'int64')",
    ),
    Case(
        "field-format-not-fitting-date",
        lambda b: put(b.source, "spec.schema.fields[4].format", "datetime"),
        SOURCE,
        "spec.schema.fields[4].format",
        "format 'datetime' does not apply to type 'string' (allowed: 'date', 'date-time', 'bytes')",
    ),
    Case(
        "array-without-items",
        _add_source_field({"name": "tags", "type": "array"}),
        SOURCE,
        "spec.schema.fields[5].items",
        "an array field needs 'items' (the type of its elements)",
    ),
    Case(
        "items-on-a-scalar-field",
        lambda b: put(b.source, "spec.schema.fields[3].items", {"type": "string"}),
        SOURCE,
        "spec.schema.fields[3].items",
        "'items' applies only to type 'array'",
    ),
    Case(
        "duplicate-record-field",
        _add_source_field({"name": "amount", "type": "number"}),
        SOURCE,
        "spec.schema.fields[5].name",
        "field 'amount' is declared twice",
    ),
    # ------------------------------------------------------------------ ScoringFlow: channels
    Case(
        "flow-source-unknown-with-did-you-mean",
        lambda b: put(b.flow, "spec.source", "txns-im"),
        FLOW,
        "spec.source",
        "unknown data channel 'txns-im' (did you mean 'txns-in'?)",
    ),
    Case(
        "flow-source-is-a-sink",
        lambda b: put(b.flow, "spec.source", "txns-out"),
        FLOW,
        "spec.source",
        "data channel 'txns-out' is a sink, not a source",
    ),
    Case(
        "flow-sink-is-a-source",
        lambda b: put(b.flow, "spec.sinks", ["txns-in"]),
        FLOW,
        "spec.sinks[0]",
        "data channel 'txns-in' is a source, not a sink",
    ),
    Case(
        "flow-sink-unknown-with-did-you-mean",
        lambda b: put(b.flow, "spec.sinks", ["txns-uot"]),
        FLOW,
        "spec.sinks[0]",
        "unknown data channel 'txns-uot' (did you mean 'txns-out'?)",
    ),
    Case(
        "batch-pipeline-reading-redis",
        _redis_source(consumerGroup="scorers"),
        FLOW,
        "spec.source",
        "a batch pipeline reads from file or sql channels; 'txns-in' is of type 'redis' (use mode 'streaming')",
    ),
    Case(
        "streaming-pipeline-reading-a-file",
        lambda b: put(b.pipeline, "spec.mode", "streaming"),
        FLOW,
        "spec.source",
        "a streaming pipeline reads from redis, rabbitmq or http channels; 'txns-in' is of type 'file'",
    ),
    Case(
        "sink-expects-a-missing-field",
        lambda b: b.sink["spec"]["schema"]["fields"].append({"name": "reason", "type": "string"}),
        FLOW,
        "spec.sinks[0]",
        "sink 'txns-out' expects field 'reason', which the flow does not provide",
    ),
    Case(
        "sink-expects-a-missing-field-with-did-you-mean",
        lambda b: put(b.sink, "spec.schema.fields[1].name", "scores"),
        FLOW,
        "spec.sinks[0]",
        "sink 'txns-out' expects field 'scores', which the flow does not provide (did you mean 'score'?)",
    ),
    Case(
        "sink-type-mismatch",
        lambda b: put(b.sink, "spec.schema.fields[2]", {"name": "tag", "type": "integer"}),
        FLOW,
        "spec.sinks[0]",
        "sink 'txns-out' expects field 'tag' as integer, but the flow makes it string",
    ),
    Case(
        "sink-narrower-number-format",
        lambda b: put(b.sink, "spec.schema.fields[1].format", "float"),
        FLOW,
        "spec.sinks[0]",
        "sink 'txns-out' expects field 'score' as number (float), but the flow makes it number (double)",
    ),
    Case(
        "dead-letter-without-sink",
        lambda b: put(b.flow, "spec.errorPolicy", {"mode": "deadLetter"}),
        FLOW,
        "spec.errorPolicy.sink",
        "mode 'deadLetter' needs 'sink' (a sink data channel)",
    ),
    Case(
        "dead-letter-sink-is-a-source",
        lambda b: put(b.flow, "spec.errorPolicy", {"mode": "deadLetter", "sink": "txns-in"}),
        FLOW,
        "spec.errorPolicy.sink",
        "data channel 'txns-in' is a source, not a sink",
    ),
    Case(
        "sink-given-without-dead-letter-mode",
        lambda b: put(b.flow, "spec.errorPolicy", {"mode": "skip", "sink": "txns-out"}),
        FLOW,
        "spec.errorPolicy.sink",
        "'sink' applies only to mode 'deadLetter'",
    ),
    # ------------------------------------------------------------------ ScoringFlow: steps
    Case(
        "step-with-two-kinds",
        lambda b: put(b.flow, "spec.steps[2].map", {"drop": ["age"]}),
        FLOW,
        "spec.steps[2]",
        "a step needs exactly one of map, score, filter, python (found map, filter)",
    ),
    Case(
        "step-with-no-kind",
        lambda b: put(b.flow, "spec.steps[2]", {"name": "nothing"}),
        FLOW,
        "spec.steps[2]",
        "a step needs exactly one of map, score, filter, python (found none)",
    ),
    Case(
        "empty-map-step",
        lambda b: put(b.flow, "spec.steps[0].map", {}),
        FLOW,
        "spec.steps[0].map",
        "a map step needs at least one of set, rename, cast, drop",
    ),
    Case(
        "unknown-model-with-did-you-mean",
        lambda b: put(b.flow, "spec.steps[1].score.model", "fraud-rff"),
        FLOW,
        "spec.steps[1].score.model",
        "unknown model 'fraud-rff' (did you mean 'fraud-rf'?)",
    ),
    Case(
        "model-input-unknown-with-did-you-mean",
        lambda b: put(b.flow, "spec.steps[1].score.inputs[0].input", "featurs"),
        FLOW,
        "spec.steps[1].score.inputs[0].input",
        "model 'fraud-rf' has no input 'featurs' (did you mean 'features'?)",
    ),
    Case(
        "model-input-not-fed",
        lambda b: b.model["spec"]["inputs"].append({"name": "history", "datatype": "FP32", "shape": [-1, 4]}),
        FLOW,
        "spec.steps[1].score.inputs",
        "model input 'history' of model 'fraud-rf' is not fed by any field",
    ),
    Case(
        "model-input-fed-twice",
        lambda b: b.flow["spec"]["steps"][1]["score"]["inputs"].append(
            {"input": "features", "fields": ["amount", "age"]}
        ),
        FLOW,
        "spec.steps[1].score.inputs[1].input",
        "input 'features' is fed twice",
    ),
    Case(
        "input-field-never-exists-with-did-you-mean",
        lambda b: put(b.flow, "spec.steps[1].score.inputs[0].fields[0]", "amont"),
        FLOW,
        "spec.steps[1].score.inputs[0].fields[0]",
        "field 'amont' does not exist at this step (did you mean 'amount'?)",
    ),
    Case(
        "input-field-produced-by-a-later-step",
        _all(
            lambda b: put(b.flow, "spec.steps[1].score.inputs[0].fields[1]", "risk"),
            lambda b: b.steps().append({"map": {"set": {"risk": 1.5}}}),
        ),
        FLOW,
        "spec.steps[1].score.inputs[0].fields[1]",
        "field 'risk' does not exist at this step",
    ),
    Case(
        "input-field-dropped-by-an-earlier-step",
        lambda b: put(b.flow, "spec.steps[0].map.drop", ["age"]),
        FLOW,
        "spec.steps[1].score.inputs[0].fields[1]",
        "field 'age' does not exist at this step",
    ),
    Case(
        "string-field-feeding-fp32-input",
        lambda b: put(b.flow, "spec.steps[1].score.inputs[0].fields[1]", "country"),
        FLOW,
        "spec.steps[1].score.inputs[0].fields[1]",
        "field 'country' is string, which cannot feed FP32 input 'features'",
    ),
    Case(
        "fields-count-not-matching-shape-width",
        lambda b: put(b.flow, "spec.steps[1].score.inputs[0].fields", ["amount"]),
        FLOW,
        "spec.steps[1].score.inputs[0].fields",
        "input 'features' has shape [-1, 2]: each record needs 2 values, but 1 field is mapped",
    ),
    Case(
        "input-with-field-and-fields",
        lambda b: put(b.flow, "spec.steps[1].score.inputs[0].field", "amount"),
        FLOW,
        "spec.steps[1].score.inputs[0]",
        "give exactly one of 'field' or 'fields'",
    ),
    Case(
        "output-unknown-with-did-you-mean",
        lambda b: put(b.flow, "spec.steps[1].score.outputs[0].output", "probas"),
        FLOW,
        "spec.steps[1].score.outputs[0].output",
        "model 'fraud-rf' has no output 'probas' (did you mean 'proba'?)",
    ),
    Case(
        "output-fields-count-mismatch",
        _all(
            lambda b: b.model["spec"]["outputs"].append({"name": "logits", "datatype": "FP32", "shape": [-1, 3]}),
            lambda b: b.steps()[1]["score"]["outputs"].append({"output": "logits", "fields": ["l0", "l1"]}),
        ),
        FLOW,
        "spec.steps[1].score.outputs[1].fields",
        "output 'logits' has shape [-1, 3]: 3 values per record, but 2 fields are given",
    ),
    Case(
        "output-field-already-exists",
        lambda b: b.steps()[1]["score"]["outputs"].append({"output": "proba", "field": "amount"}),
        FLOW,
        "spec.steps[1].score.outputs[1].field",
        "field 'amount' already exists: choose another name or drop it first",
    ),
    Case(
        "reduce-with-fields",
        lambda b: put(b.flow, "spec.steps[1].score.outputs[0]", {"output": "proba", "fields": ["s"], "reduce": "max"}),
        FLOW,
        "spec.steps[1].score.outputs[0].reduce",
        "'reduce' writes one value: use it with 'field'",
    ),
    Case(
        "filter-op-on-wrong-type",
        _all(
            _add_source_field({"name": "vip", "type": "boolean"}),
            lambda b: put(b.flow, "spec.steps[2].filter", {"field": "vip", "op": "lt", "value": True}),
        ),
        FLOW,
        "spec.steps[2].filter.op",
        "operator 'lt' does not apply to boolean field 'vip'",
    ),
    Case(
        "filter-value-wrong-type",
        lambda b: put(b.flow, "spec.steps[2].filter.value", "high"),
        FLOW,
        "spec.steps[2].filter.value",
        "cannot compare number (double) field 'score' with 'high'",
    ),
    Case(
        "filter-value-parameter-of-wrong-type",
        lambda b: put(b.flow, "spec.steps[2].filter.value", "${params.tag}"),
        FLOW,
        "spec.steps[2].filter.value",
        "cannot compare number (double) field 'score' with parameter 'tag' of type 'string'",
    ),
    Case(
        "filter-in-without-list",
        lambda b: put(b.flow, "spec.steps[2].filter", {"field": "country", "op": "in", "value": "DE"}),
        FLOW,
        "spec.steps[2].filter.value",
        "operator 'in' needs a list of values",
    ),
    Case(
        "filter-eq-with-a-list",
        lambda b: put(b.flow, "spec.steps[2].filter", {"field": "country", "op": "eq", "value": ["DE", "FR"]}),
        FLOW,
        "spec.steps[2].filter.value",
        "operator 'eq' compares with one value, not a list",
    ),
    Case(
        "filter-without-value",
        lambda b: delete(b.flow, "spec.steps[2].filter.value"),
        FLOW,
        "spec.steps[2].filter.value",
        "operator 'ge' needs a value",
    ),
    Case(
        "filter-is-null-with-value",
        lambda b: put(b.flow, "spec.steps[2].filter.op", "isNull"),
        FLOW,
        "spec.steps[2].filter.value",
        "operator 'isNull' takes no value",
    ),
    Case(
        "filter-unknown-op-with-did-you-mean",
        lambda b: put(b.flow, "spec.steps[2].filter.op", "notin"),
        FLOW,
        "spec.steps[2].filter.op",
        "(did you mean 'notIn'?)",
    ),
    Case(
        "filter-field-unknown",
        lambda b: put(b.flow, "spec.steps[2].filter.field", "scor"),
        FLOW,
        "spec.steps[2].filter.field",
        "field 'scor' does not exist at this step (did you mean 'score'?)",
    ),
    Case(
        "map-rename-onto-existing-field",
        lambda b: put(b.flow, "spec.steps[0].map.rename", {"age": "amount"}),
        FLOW,
        "spec.steps[0].map.rename.age",
        "cannot rename to 'amount': that field already exists",
    ),
    Case(
        "map-cast-unknown-field",
        lambda b: put(b.flow, "spec.steps[0].map.cast", {"agee": {"type": "number"}}),
        FLOW,
        "spec.steps[0].map.cast.agee",
        "field 'agee' does not exist at this step (did you mean 'age'?)",
    ),
    Case(
        "map-drop-unknown-field",
        lambda b: put(b.flow, "spec.steps[0].map.drop", ["county"]),
        FLOW,
        "spec.steps[0].map.drop[0]",
        "field 'county' does not exist at this step (did you mean 'country'?)",
    ),
    Case(
        "python-step-adds-existing-field",
        _step(2, {"python": {"module": "rules", "function": "flag", "adds": [{"name": "country", "type": "string"}]}}),
        FLOW,
        "spec.steps[2].python.adds[0]",
        "field 'country' already exists",
    ),
    # ------------------------------------------------------------------ parameters
    Case(
        "unknown-parameter-in-a-step",
        lambda b: put(b.flow, "spec.steps[0].map.set.tag", "${params.tga}"),
        FLOW,
        "spec.steps[0].map.set.tag",
        "unknown parameter 'tga' (did you mean 'tag'?); declare it in the pipeline's spec.parameters",
    ),
    Case(
        "unknown-parameter-in-a-filter-value",
        lambda b: put(b.flow, "spec.steps[2].filter.value", "${params.treshold}"),
        FLOW,
        "spec.steps[2].filter.value",
        "unknown parameter 'treshold' (did you mean 'threshold'?)",
    ),
    Case(
        "unknown-parameter-in-a-channel-option",
        lambda b: put(b.sink, "spec.file.path", "out/${params.tga}.csv"),
        SINK,
        "spec.file.path",
        "unknown parameter 'tga' (did you mean 'tag'?); declare it in the pipeline's spec.parameters",
    ),
    Case(
        "parameter-default-not-matching-type",
        lambda b: put(b.pipeline, "spec.parameters[2].default", "ten"),
        PIPE,
        "spec.parameters[2].default",
        "default 'ten' is not of type 'integer'",
    ),
    Case(
        "parameter-boolean-default-for-integer",
        lambda b: put(b.pipeline, "spec.parameters[2].default", True),
        PIPE,
        "spec.parameters[2].default",
        "default True is not of type 'integer'",
    ),
    Case(
        "parameter-unknown-type",
        lambda b: put(b.pipeline, "spec.parameters[2].type", "int"),
        PIPE,
        "spec.parameters[2].type",
        "'int' is not one of 'string', 'integer', 'number', 'boolean'",
    ),
    Case(
        "parameter-declared-twice",
        lambda b: b.pipeline["spec"]["parameters"].append({"name": "tag", "default": "v2"}),
        PIPE,
        "spec.parameters[4].name",
        "parameter 'tag' is listed twice",
    ),
    # ------------------------------------------------------------------ pipeline
    Case(
        "pipeline-unknown-flow-with-did-you-mean",
        lambda b: put(b.pipeline, "spec.flows", ["f-1"]),
        PIPE,
        "spec.flows[0]",
        "unknown flow 'f-1' (did you mean 'f1'?)",
    ),
    Case(
        "pipeline-flow-listed-twice",
        lambda b: put(b.pipeline, "spec.flows", ["f1", "f1"]),
        PIPE,
        "spec.flows[1]",
        "flow 'f1' is listed twice",
    ),
    Case(
        "pipeline-unknown-mode-with-did-you-mean",
        lambda b: put(b.pipeline, "spec.mode", "batched"),
        PIPE,
        "spec.mode",
        "'batched' is not one of 'batch', 'streaming' (did you mean 'batch'?)",
    ),
    Case(
        "bad-duration",
        lambda b: put(b.pipeline, "spec.timeouts", {"install": "10 minutes"}),
        PIPE,
        "spec.timeouts.install",
        "'10 minutes' is not a duration: write it like '90s', '10m' or '1h30m'",
    ),
    Case(
        "zero-duration",
        lambda b: put(b.pipeline, "spec.timeouts", {"wait": "0s"}),
        PIPE,
        "spec.timeouts.wait",
        "a duration must be longer than 0s",
    ),
    Case(
        "namespace-not-a-dns-label",
        lambda b: put(b.pipeline, "spec.environment", {"namespace": "Prod"}),
        PIPE,
        "spec.environment.namespace",
        "'Prod' is not a DNS-1123 label",
    ),
    # ------------------------------------------------------------------ across documents
    Case(
        "duplicate-document-in-two-files",
        lambda b: b.add("models/zz-copy.yaml", model_doc()),
        ("models/zz-copy.yaml", "Model fraud-rf"),
        "metadata.name",
        "a Model named 'fraud-rf' is already defined in models/fraud-rf.yaml",
    ),
    Case(
        "two-scoring-pipelines",
        lambda b: b.add("zz-other.yaml", {**pipeline_doc(), "metadata": {"name": "aaa-other"}}),
        ("zz-other.yaml", "ScoringPipeline aaa-other"),
        "",
        "a bundle holds exactly one ScoringPipeline; found another one ('aaa-other')",
    ),
    Case(
        "no-scoring-pipeline",
        lambda b: b.remove("ScoringPipeline", "fraud"),
        ("<bundle>", ""),
        "",
        "the bundle has no ScoringPipeline document",
    ),
    Case(
        "mistake-in-a-json-file",
        _all(
            lambda b: b.layout.__setitem__("models/fraud-rf.json", b.layout.pop("models/fraud-rf.yaml")),
            lambda b: put(b.model, "spec.runtime", "onnxx"),
        ),
        ("models/fraud-rf.json", "Model fraud-rf"),
        "spec.runtime",
        "(did you mean 'onnx'?)",
    ),
]


def test_the_table_covers_many_distinct_cases() -> None:
    ids = [case.id for case in CASES]
    assert len(set(ids)) == len(ids)
    assert len({(case.where, case.path, case.message) for case in CASES}) == len(CASES)
    assert len(CASES) >= 35


def test_the_unmutated_bundle_is_valid(bundle: BundleData) -> None:
    loaded = bundle.load()
    assert loaded.name == "fraud"
    assert [m.metadata.name for m in loaded.used_models()] == ["fraud-rf"]


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_one_mistake_yields_exactly_one_issue_naming_file_document_path_and_problem(
    bundle: BundleData, case: Case
) -> None:
    case.mutate(bundle)
    issues = issues_of(bundle.files())
    assert len(issues) == 1, "\n".join(map(str, issues))
    issue = issues[0]
    assert (issue.file, issue.document, issue.path) == (*case.where, case.path), str(issue)
    assert case.message in issue.message, str(issue)


def test_an_issue_carries_the_line_of_the_offending_key(bundle: BundleData) -> None:
    put(bundle.flow, "spec.steps[1].score.model", "fraud-rff")
    text = bundle.files()["flows/f1.yaml"]
    issue = issues_of(bundle.files())[0]
    expected = next(i for i, line in enumerate(text.splitlines(), 1) if "fraud-rff" in line)
    assert issue.line == expected
    assert str(issue).startswith(
        "flows/f1.yaml: ScoringFlow f1: spec.steps[1].score.model: unknown model 'fraud-rff' (did you mean"
    )


def test_the_second_document_of_a_file_is_labelled_by_its_own_kind_and_name(bundle: BundleData) -> None:
    put(bundle.sink, "spec.file.format", "xml")
    (issue,) = issues_of(bundle.files())
    assert (issue.file, issue.document, issue.path) == ("channels.yaml", "DataChannel txns-out", "spec.file.format")
    text = bundle.files()["channels.yaml"]
    assert issue.line == next(i for i, line in enumerate(text.splitlines(), 1) if "xml" in line)


def test_a_document_without_readable_name_is_labelled_by_its_position(bundle: BundleData) -> None:
    put(bundle.sink, "metadata", "txns-out")
    issues = issues_of(bundle.files())
    assert ("channels.yaml", "document 2", "metadata") in [(i.file, i.document, i.path) for i in issues]


def test_all_errors_are_reported_at_once(bundle: BundleData) -> None:
    bundle.layout["channels/in.yaml"], bundle.layout["channels/out.yaml"] = [
        [d] for d in bundle.layout.pop("channels.yaml")
    ]
    put(bundle.pipeline, "spec.timeouts", {"install": "soon"})
    put(bundle.source, "spec.schema.fields[2].format", "date")
    put(bundle.sink, "spec.file.compresion", "gzip")
    put(bundle.flow, "spec.batchSize", 0)
    put(bundle.model, "spec.replica", 2)
    issues = issues_of(bundle.files())
    assert [(i.file, i.document, i.path) for i in issues] == [
        ("channels/in.yaml", "DataChannel txns-in", "spec.schema.fields[2].format"),
        ("channels/out.yaml", "DataChannel txns-out", "spec.file.compresion"),
        ("flows/f1.yaml", "ScoringFlow f1", "spec.batchSize"),
        ("models/fraud-rf.yaml", "Model fraud-rf", "spec.replica"),
        ("pipeline.yaml", "ScoringPipeline fraud", "spec.timeouts.install"),
    ]
    assert str(ir.IRValidationError(issues)).startswith("5 problems found:\n  channels/in.yaml: DataChannel txns-in")


def test_document_and_cross_document_errors_are_reported_together(bundle: BundleData) -> None:
    put(bundle.pipeline, "spec.parameters[2].default", "ten")
    put(bundle.sink, "spec.file.path", "out/${params.tga}.csv")
    put(bundle.flow, "spec.steps[0].map.drop", ["county"])
    put(bundle.flow, "spec.steps[2].filter.value", "high")
    bundle.add("models/other.yaml", {**model_doc("other"), "kind": "Modle"})
    issues = issues_of(bundle.files())
    assert [(i.file, i.path) for i in issues] == [
        ("channels.yaml", "spec.file.path"),
        ("flows/f1.yaml", "spec.steps[0].map.drop[0]"),
        ("flows/f1.yaml", "spec.steps[2].filter.value"),
        ("models/other.yaml", "kind"),
        ("pipeline.yaml", "spec.parameters[2].default"),
    ]


def test_several_mistakes_in_one_document_are_all_reported(bundle: BundleData) -> None:
    put(bundle.model, "spec.runtime", "sklern")
    put(bundle.model, "spec.replicas", -1)
    put(bundle.model, "spec.inputs[0].datatype", "FLOAT")
    issues = issues_of(bundle.files())
    assert {i.path for i in issues} == {"spec.inputs[0].datatype", "spec.replicas", "spec.runtime"}
    assert [i.line for i in issues] == sorted(i.line or 0 for i in issues), "issues are listed in line order"


def test_a_broken_model_does_not_cascade_into_unknown_model_errors_in_flows(bundle: BundleData) -> None:
    put(bundle.model, "spec.runtime", "sklern")
    issues = issues_of(bundle.files())
    assert [(i.document, i.path) for i in issues] == [("Model fraud-rf", "spec.runtime")]
    assert not any("unknown model" in i.message for i in issues)


def test_a_broken_model_does_not_cascade_into_missing_field_errors_after_its_step(bundle: BundleData) -> None:
    put(bundle.model, "spec.uri", "gs://bucket/m")
    issues = issues_of(bundle.files())
    assert [i.document for i in issues] == ["Model fraud-rf"], "\n".join(map(str, issues))


def test_a_broken_channel_does_not_cascade_into_flow_errors(bundle: BundleData) -> None:
    put(bundle.source, "spec.file.format", "excel")
    put(bundle.sink, "spec.file.format", "excel")
    issues = issues_of(bundle.files())
    assert [i.document for i in issues] == ["DataChannel txns-in", "DataChannel txns-out"]


def test_a_broken_flow_does_not_cascade_into_an_unknown_flow_error(bundle: BundleData) -> None:
    put(bundle.flow, "spec.batchSize", 0)
    issues = issues_of(bundle.files())
    assert [(i.document, i.path) for i in issues] == [("ScoringFlow f1", "spec.batchSize")]


def test_an_unknown_model_does_not_cascade_into_missing_output_fields(bundle: BundleData) -> None:
    put(bundle.flow, "spec.steps[1].score.model", "nothing-like-it")
    issues = issues_of(bundle.files())
    assert [i.message for i in issues] == ["unknown model 'nothing-like-it'"]


def test_an_inline_credential_is_not_echoed_in_the_message(bundle: BundleData) -> None:
    _sql_sink(table="scores", connection="postgresql://scorer:hunter2@db/scores")(bundle)
    (issue,) = issues_of(bundle.files())
    assert "hunter2" not in str(issue)


def test_a_valid_sql_sink_with_a_secret_reference_is_accepted(bundle: BundleData) -> None:
    _sql_sink(table="scores")(bundle)
    loaded = bundle.load()
    assert get(loaded.channels["txns-out"].spec.model_dump(by_alias=True), "sql.connection.secretRef.name") == "db"


@pytest.mark.parametrize(
    ("path", "value", "located", "key"),
    [
        ("spec.uri", "gs://bucket/m", "spec.uri", "uri:"),
        ("spec.sha256", "00", "spec.sha256", "sha256:"),
        ("spec.autoscaling", {"minReplicas": 9, "maxReplicas": 3}, "spec.autoscaling.minReplicas", "minReplicas:"),
    ],
)
def test_a_cross_field_error_points_at_the_line_of_its_field(
    bundle: BundleData, path: str, value: Any, located: str, key: str
) -> None:
    put(bundle.model, path, value)
    text = bundle.files()["models/fraud-rf.yaml"]
    (issue,) = issues_of(bundle.files())
    assert issue.path == located
    assert issue.line == next(i for i, line in enumerate(text.splitlines(), 1) if line.strip().startswith(key))
