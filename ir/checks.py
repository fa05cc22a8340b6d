"""Checks that need more than one document: references, parameters, and the record schema through a flow.

The record schema of a flow starts as its source channel's schema and is transformed by each step in order;
a step that reads a field no earlier step provides, or feeds a string to an FP32 model input, is an error at
that step. At the end, every field each sink expects must be there with a type the sink accepts.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ir.errors import Loc, did_you_mean
from ir.models import (
    BATCH_TYPES,
    PARAM_REF,
    STREAM_TYPES,
    DataChannel,
    Datatype,
    FieldSelector,
    FieldType,
    FilterStep,
    MapStep,
    Model,
    Parameter,
    PythonStep,
    ScoreStep,
    ScoringFlow,
    ScoringPipeline,
    param_refs,
)

Report = Callable[[Loc, str], None]
Schema = dict[str, FieldType]
Resolved = dict[str, dict[tuple[int, int], list[str]]]
"""Field selectors resolved by the checks: flow name -> (step index, input index) -> the fields chosen."""

_INT_TYPES = frozenset({"INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64"})
_FLOAT_TYPES = frozenset({"FP16", "FP32", "FP64"})


def tensor_accepts(datatype: Datatype, field: FieldType) -> bool:
    """Whether values of a record field can be fed to a tensor of `datatype` without loss of meaning."""
    if datatype == "BYTES":
        return field.type == "string"
    if datatype == "BOOL":
        return field.type == "boolean"
    if datatype in _INT_TYPES:
        return field.type in ("integer", "boolean")
    return field.type in ("number", "integer", "boolean")


def field_type_of(datatype: Datatype) -> FieldType:
    """The record field type a tensor element of `datatype` becomes."""
    if datatype == "BOOL":
        return FieldType(type="boolean")
    if datatype in ("INT8", "INT16", "INT32", "UINT8", "UINT16"):
        return FieldType(type="integer", format="int32")
    if datatype in _INT_TYPES:
        return FieldType(type="integer", format="int64")
    if datatype in ("FP16", "FP32"):
        return FieldType(type="number", format="float")
    if datatype == "FP64":
        return FieldType(type="number", format="double")
    return FieldType(type="string")


def assignable(source: FieldType, target: FieldType) -> bool:
    """Whether a flow field of type `source` may be written to a sink field of type `target`."""
    s, t = source.normalised(), target.normalised()
    if t.type == "number" and s.type == "integer":
        return True
    if s.type != t.type:
        return False
    if s.type == "integer":
        return s.format == t.format or (s.format == "int32" and t.format == "int64")
    if s.type == "number":
        return s.format == t.format or (s.format == "float" and t.format == "double")
    if s.type == "string":
        return s.format == t.format or t.format is None
    if s.type == "array" and s.items is not None and t.items is not None:
        return assignable(s.items, t.items)
    return True


_CASTABLE = frozenset({"boolean", "integer", "number", "string"})


def scalar_type(value: bool | int | float | str) -> FieldType:
    if isinstance(value, bool):
        return FieldType(type="boolean")
    if isinstance(value, int):
        return FieldType(type="integer", format="int64")
    if isinstance(value, float):
        return FieldType(type="number", format="double")
    return FieldType(type="string")


def param_field_type(param: Parameter) -> FieldType:
    return {
        "string": FieldType(type="string"),
        "integer": FieldType(type="integer", format="int64"),
        "number": FieldType(type="number", format="double"),
        "boolean": FieldType(type="boolean"),
    }[param.type]


def value_fits(value: Any, param_type: str) -> bool:
    """Whether a typed value fits a parameter type (bools are not integers here)."""
    if param_type == "string":
        return isinstance(value, str)
    if param_type == "boolean":
        return isinstance(value, bool)
    if param_type == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, int | float) and not isinstance(value, bool)


def check_pipeline(
    pipeline: ScoringPipeline,
    flows: dict[str, ScoringFlow],
    models: dict[str, Model],
    channels: dict[str, DataChannel],
    report_for: Callable[[str, str], Report],
    broken: frozenset[tuple[str, str]] = frozenset(),
    resolved: Resolved | None = None,
) -> None:
    """Every cross-document check; `report_for(kind, name)` gives the reporter bound to that document.

    Field selectors of score inputs are resolved against the schema at their step; the lists they choose go
    into `resolved` (when given), for `ir.bundle` to write into the flows.

    `broken` names the documents (kind, name) that exist but failed validation: references to them are not
    reported again, and a flow using one is not checked past that point.
    """
    report = report_for("ScoringPipeline", pipeline.metadata.name)
    params = {p.name: p for p in pipeline.spec.parameters}
    for i, param in enumerate(pipeline.spec.parameters):
        if param.default is not None and not value_fits(param.default, param.type):
            report(
                ("spec", "parameters", i, "default"),
                f"default {param.default!r} is not of type '{param.type}'",
            )
    for i, flow_name in enumerate(pipeline.spec.flows):
        flow = flows.get(flow_name)
        if flow is None:
            if ("ScoringFlow", flow_name) not in broken:
                report(("spec", "flows", i), f"unknown flow '{flow_name}'{did_you_mean(flow_name, flows)}")
            continue
        chosen = resolved.setdefault(flow_name, {}) if resolved is not None else {}
        check_flow(flow, pipeline, params, models, channels, report_for("ScoringFlow", flow_name), broken, chosen)
    used_channels = {
        name
        for flow_name in pipeline.spec.flows
        if (flow := flows.get(flow_name)) is not None
        for name in [
            flow.spec.source,
            *flow.spec.sinks,
            *([flow.spec.error_policy.sink] if flow.spec.error_policy.sink else []),
        ]
    }
    for name in sorted(used_channels):
        channel = channels.get(name)
        if channel is not None:
            _check_refs(channel.spec.model_dump(by_alias=True), ("spec",), params, report_for("DataChannel", name))


def _check_refs(value: Any, loc: Loc, params: dict[str, Parameter], report: Report) -> None:
    """Every `${params.x}` inside `value` names a declared parameter."""
    if isinstance(value, dict | list):
        items = value.items() if isinstance(value, dict) else enumerate(value)
        for key, item in items:
            # only strings with a `${` and containers can hold a reference: skip the rest without recursing
            if (isinstance(item, str) and "${" in item) or isinstance(item, dict | list):
                _check_refs(item, (*loc, key), params, report)
    elif isinstance(value, str):
        for ref in PARAM_REF.findall(value):
            if ref not in params:
                report(
                    loc,
                    f"unknown parameter '{ref}'{did_you_mean(ref, params)}; "
                    "declare it in the pipeline's spec.parameters",
                )


def check_flow(
    flow: ScoringFlow,
    pipeline: ScoringPipeline,
    params: dict[str, Parameter],
    models: dict[str, Model],
    channels: dict[str, DataChannel],
    report: Report,
    broken: frozenset[tuple[str, str]] = frozenset(),
    resolved: dict[tuple[int, int], list[str]] | None = None,
) -> None:
    spec = flow.spec
    chosen: dict[tuple[int, int], list[str]] = {} if resolved is None else resolved
    schema: Schema | None = None
    inferred = False
    source = channels.get(spec.source)
    if source is None:
        if ("DataChannel", spec.source) in broken:
            return
        report(("spec", "source"), f"unknown data channel '{spec.source}'{did_you_mean(spec.source, channels)}")
    elif source.spec.direction != "source":
        report(("spec", "source"), f"data channel '{spec.source}' is a sink, not a source")
    else:
        # an inferred schema is known at install: the field checks wait for it (`ir.bundle.with_schemas`)
        inferred = bool(source.spec.record_schema.infer)
        schema = None if inferred else {f.name: f.type_only() for f in source.spec.record_schema.fields}
        mode = pipeline.spec.mode
        if mode == "batch" and source.spec.type not in BATCH_TYPES:
            report(
                ("spec", "source"),
                f"a batch pipeline reads from file or sql channels; '{spec.source}' is of type '{source.spec.type}' "
                "(use mode 'streaming')",
            )
        if mode == "streaming" and source.spec.type not in STREAM_TYPES:
            report(
                ("spec", "source"),
                f"a streaming pipeline reads from redis, rabbitmq or http channels; '{spec.source}' is of type "
                f"'{source.spec.type}' (use mode 'batch')",
            )
    sinks: list[tuple[Loc, str, DataChannel]] = []
    for i, name in enumerate(spec.sinks):
        if ("DataChannel", name) in broken:
            schema = None  # the sink's expectations are unknown; do not report on them
            continue
        channel = _sink(name, ("spec", "sinks", i), channels, report)
        if channel is not None:
            sinks.append((("spec", "sinks", i), name, channel))
    if spec.error_policy.sink is not None and ("DataChannel", spec.error_policy.sink) not in broken:
        _sink(spec.error_policy.sink, ("spec", "errorPolicy", "sink"), channels, report)

    _check_refs(spec.model_dump(by_alias=True)["steps"], ("spec", "steps"), params, report)
    for i, step in enumerate(spec.steps):
        loc: Loc = ("spec", "steps", i, step.kind)
        if schema is None:
            if inferred and step.score is not None and ("Model", step.score.model) not in broken:
                _score_names(step.score, loc, models, report)  # what needs no fields is checked at deploy
            continue  # without a source schema nothing below can be checked meaningfully
        if step.map is not None:
            _map_step(step.map, loc, schema, params, report)
        elif step.score is not None:
            if ("Model", step.score.model) in broken:
                schema = None  # the model's tensors are unknown: later fields cannot be checked
                continue
            if not _score_step(step.score, loc, schema, models, report, i, chosen):
                schema = None  # an unknown model or output: the fields it makes are unknown, as for a broken model
        elif step.filter is not None:
            _filter_step(step.filter, loc, schema, params, report)
        elif step.python is not None:
            _python_step(step.python, loc, schema, report)
    if schema is None:
        return
    for loc, name, channel in sinks:
        for field in channel.spec.record_schema.fields:
            have = schema.get(field.name)
            if have is None:
                report(
                    loc,
                    f"sink '{name}' expects field '{field.name}', which the flow does not provide"
                    f"{did_you_mean(field.name, schema)}",
                )
            elif not assignable(have, field.type_only()):
                report(
                    loc,
                    f"sink '{name}' expects field '{field.name}' as {field.describe()}, "
                    f"but the flow makes it {have.describe()}",
                )


def _sink(name: str, loc: Loc, channels: dict[str, DataChannel], report: Report) -> DataChannel | None:
    channel = channels.get(name)
    if channel is None:
        report(loc, f"unknown data channel '{name}'{did_you_mean(name, channels)}")
        return None
    if channel.spec.direction != "sink":
        report(loc, f"data channel '{name}' is a source, not a sink")
        return None
    return channel


def _need(schema: Schema, field: str, loc: Loc, report: Report) -> FieldType | None:
    have = schema.get(field)
    if have is None:
        report(loc, f"field '{field}' does not exist at this step{did_you_mean(field, schema)}")
    return have


def _map_step(step: MapStep, loc: Loc, schema: Schema, params: dict[str, Parameter], report: Report) -> None:
    """Applied in the order rename, cast, set, drop (docs/ir.md)."""
    for old, new in step.rename.items():
        if _need(schema, old, (*loc, "rename", old), report) is None:
            continue
        if new in schema and new != old:
            report((*loc, "rename", old), f"cannot rename to '{new}': that field already exists")
            continue
        schema[new] = schema.pop(old)
    for name, target in step.cast.items():
        have = _need(schema, name, (*loc, "cast", name), report)
        if have is None:
            continue
        if have.type not in _CASTABLE or target.type not in _CASTABLE:
            report((*loc, "cast", name), f"cannot cast {have.describe()} to {target.describe()}: only scalars cast")
            continue
        schema[name] = target
    for name, value in step.set.items():
        refs = PARAM_REF.fullmatch(value) if isinstance(value, str) else None
        if refs is not None:
            param = params.get(refs.group(1))
            schema[name] = param_field_type(param) if param is not None else FieldType(type="string")
        else:
            schema[name] = scalar_type(value)
    for i, name in enumerate(step.drop):
        if _need(schema, name, (*loc, "drop", i), report) is not None:
            del schema[name]


def select_fields(selector: FieldSelector, schema: Schema) -> tuple[list[str], str | None]:
    """The fields of `schema` a selector chooses, in schema order, and the problem when it chooses none or
    names a field the schema lacks (None when it is fine)."""
    names = list(schema)
    described = selector.describe()
    if selector.prefix is not None:
        chosen = [n for n in names if n.startswith(selector.prefix)]
    elif selector.all:
        excluded = selector.except_ or []
        unknown = [n for n in excluded if n not in schema]
        if unknown:
            listed = ", ".join(repr(n) for n in unknown)
            verb = "is" if len(unknown) == 1 else "are"
            hint = did_you_mean(unknown[0], schema)
            return (
                [],
                f"selector {described}: 'except' names {listed}, which {verb} not in the record schema here{hint}",
            )
        chosen = [n for n in names if n not in set(excluded)]
    else:
        start, end = selector.from_ or "", selector.to or ""
        for end_name in (start, end):
            if end_name not in schema:
                hint = did_you_mean(end_name, schema)
                return [], f"selector {described}: field '{end_name}' is not in the record schema here{hint}"
        first, last = names.index(start), names.index(end)
        if last < first:
            return [], f"selector {described}: '{end}' comes before '{start}' in the record schema"
        chosen = names[first : last + 1]
    if not chosen:
        return [], f"selector {described} matches no field of the record schema here"
    return chosen, None


def _score_names(step: ScoreStep, loc: Loc, models: dict[str, Model], report: Report) -> None:
    """The checks of a score step that need no record schema: its model, input and output names."""
    model = models.get(step.model)
    if model is None:
        report((*loc, "model"), f"unknown model '{step.model}'{did_you_mean(step.model, models)}")
        return
    tensors = {t.name: t for t in model.spec.inputs}
    for i, mapping in enumerate(step.inputs):
        if mapping.input not in tensors:
            report(
                (*loc, "inputs", i, "input"),
                f"model '{step.model}' has no input '{mapping.input}'{did_you_mean(mapping.input, tensors)}",
            )
    outputs = {t.name: t for t in model.spec.outputs}
    for i, out in enumerate(step.outputs):
        if out.output not in outputs:
            report(
                (*loc, "outputs", i, "output"),
                f"model '{step.model}' has no output '{out.output}'{did_you_mean(out.output, outputs)}",
            )


def _score_step(
    step: ScoreStep,
    loc: Loc,
    schema: Schema,
    models: dict[str, Model],
    report: Report,
    index: int = 0,
    chosen: dict[tuple[int, int], list[str]] | None = None,
) -> bool:
    """Check one score step and add its output fields to `schema`; False when the fields it makes are unknown.
    Selectors in its inputs are resolved into `chosen[(index, input index)]`."""
    model = models.get(step.model)
    if model is None:
        report((*loc, "model"), f"unknown model '{step.model}'{did_you_mean(step.model, models)}")
        return False
    tensors = {t.name: t for t in model.spec.inputs}
    fed: set[str] = set()
    misnamed = False
    for i, mapping in enumerate(step.inputs):
        iloc: Loc = (*loc, "inputs", i)
        tensor = tensors.get(mapping.input)
        if tensor is None:
            report(
                (*iloc, "input"),
                f"model '{step.model}' has no input '{mapping.input}'{did_you_mean(mapping.input, tensors)}",
            )
            misnamed = True
            continue
        if mapping.input in fed:
            report((*iloc, "input"), f"input '{mapping.input}' is fed twice")
        fed.add(mapping.input)
        width = tensor.row_width
        floc: Loc = (*iloc, "fields" if mapping.fields is not None else "field")
        selector = mapping.fields if isinstance(mapping.fields, FieldSelector) else None
        if selector is not None:
            names, problem = select_fields(selector, schema)
            if problem is not None:
                report(floc, problem)
                continue
            if chosen is not None:
                chosen[(index, i)] = names
        else:
            names = mapping.field_names
        by = f" (chosen by selector {selector.describe()})" if selector is not None else ""
        for j, name in enumerate(names):
            where = (*floc, j) if isinstance(mapping.fields, list) else floc
            have = _need(schema, name, where, report)
            if have is None:
                continue
            element = have.items if have.type == "array" and have.items is not None else have
            if not tensor_accepts(tensor.datatype, element):
                report(
                    where,
                    f"field '{name}'{by} is {have.describe()}, which cannot feed {tensor.datatype} input "
                    f"'{tensor.name}'",
                )
            elif have.type == "array" and len(names) > 1:
                report(where, f"field '{name}' is an array: feed it alone with 'field', not inside 'fields'")
        if width is not None and all(n in schema and schema[n].type != "array" for n in names) and len(names) != width:
            report(
                floc,
                f"input '{tensor.name}' has shape {tensor.shape}: each record needs {width} value"
                f"{'s' if width != 1 else ''}, but {len(names)} field{'s are' if len(names) != 1 else ' is'} mapped"
                f"{by}",
            )
    for name in tensors:
        if name not in fed and not misnamed:  # a misnamed input is likely meant to be the one not fed
            report((*loc, "inputs"), f"model input '{name}' of model '{step.model}' is not fed by any field")
    outputs = {t.name: t for t in model.spec.outputs}
    complete = True
    for i, out in enumerate(step.outputs):
        oloc: Loc = (*loc, "outputs", i)
        tensor = outputs.get(out.output)
        if tensor is None:
            report(
                (*oloc, "output"),
                f"model '{step.model}' has no output '{out.output}'{did_you_mean(out.output, outputs)}",
            )
            complete = False
            continue
        element = field_type_of(tensor.datatype)
        width = tensor.row_width
        targets: list[tuple[Loc, str, FieldType]] = []
        if out.field is not None:
            if out.reduce == "argmax":
                made = FieldType(type="integer", format="int64")
            elif out.reduce == "max" or width == 1:
                made = element
            else:
                made = FieldType(type="array", items=element)
            targets.append(((*oloc, "field"), out.field, made))
        else:
            names = out.fields or []
            if width is None:
                report(
                    (*oloc, "fields"),
                    f"output '{tensor.name}' has a variable shape {tensor.shape}: map it with 'field'",
                )
            elif width != len(names):
                report(
                    (*oloc, "fields"),
                    f"output '{tensor.name}' has shape {tensor.shape}: {width} value{'s' if width != 1 else ''} per "
                    f"record, but {len(names)} field{'s are' if len(names) != 1 else ' is'} given",
                )
            targets.extend(((*oloc, "fields", j), name, element) for j, name in enumerate(names))
        for where, name, made in targets:
            if name in schema:
                report(where, f"field '{name}' already exists: choose another name or drop it first")
            schema[name] = made
    return complete


def _filter_step(step: FilterStep, loc: Loc, schema: Schema, params: dict[str, Parameter], report: Report) -> None:
    have = _need(schema, step.field, (*loc, "field"), report)
    if have is None:
        return
    vloc: Loc = (*loc, "value")
    if step.op in ("isNull", "notNull"):
        if step.value is not None:
            report(vloc, f"operator '{step.op}' takes no value")
        return
    if step.value is None:
        report(vloc, f"operator '{step.op}' needs a value")
        return
    if step.op in ("lt", "le", "gt", "ge") and have.type not in ("integer", "number", "string"):
        report((*loc, "op"), f"operator '{step.op}' does not apply to {have.describe()} field '{step.field}'")
        return
    if step.op in ("in", "notIn"):
        if not isinstance(step.value, list):
            report(vloc, f"operator '{step.op}' needs a list of values")
            return
        values: list[Any] = list(step.value)
    else:
        if isinstance(step.value, list):
            report(vloc, f"operator '{step.op}' compares with one value, not a list")
            return
        values = [step.value]
    for value in values:
        refs = PARAM_REF.fullmatch(value) if isinstance(value, str) else None
        kind = params[refs.group(1)].type if refs is not None and refs.group(1) in params else None
        if refs is not None and kind is None:
            continue  # an unknown parameter is reported by _check_refs
        if not _comparable(have, kind, value):
            shown = f"parameter '{refs.group(1)}' of type '{kind}'" if refs is not None else repr(value)
            report(vloc, f"cannot compare {have.describe()} field '{step.field}' with {shown}")


def _comparable(field: FieldType, param_kind: str | None, value: Any) -> bool:
    if param_kind is not None:
        if param_kind in ("integer", "number"):
            return field.type in ("integer", "number")
        return field.type == param_kind
    if field.type == "boolean":
        return isinstance(value, bool)
    if field.type == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if field.type == "number":
        return isinstance(value, int | float) and not isinstance(value, bool)
    if field.type == "string":
        return isinstance(value, str)
    return False


def _python_step(step: PythonStep, loc: Loc, schema: Schema, report: Report) -> None:
    for i, name in enumerate(step.removes):
        if _need(schema, name, (*loc, "removes", i), report) is not None:
            del schema[name]
    for i, field in enumerate(step.adds):
        if field.name in schema:
            report((*loc, "adds", i), f"field '{field.name}' already exists")
        schema[field.name] = field.type_only()


__all__ = [
    "Resolved",
    "assignable",
    "check_pipeline",
    "field_type_of",
    "param_refs",
    "select_fields",
    "tensor_accepts",
    "value_fits",
]
