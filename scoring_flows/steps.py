"""The steps of a scoring flow on Arrow record batches: `map`, `score`, `filter`, `python`.

Each step takes a `FlowBatch` (records, their source ordinals, the errors so far) and returns the next one; the
record schema changes exactly as `ir.checks` follows it, so what the IR validated is what runs:

- `map` applies **rename, cast, set, drop** in that order. A cast that does not fit a value (text `'x'` to an
  integer, 1.5 to an integer) is a record error; `set` writes a constant (boolean, integer as int64, number as
  double, string), replacing a field in place or adding it at the end.
- `score` builds one row per record from the mapped fields (`fields` side by side, or one `array` field, or one
  scalar field), in the model input's datatype, calls the model's scoring service (`client.V2Client`) and adds
  each output: `field` (a scalar when the output's width is 1, else an array), `field` with `reduce: max` or
  `argmax`, or `fields` (one per value). A null input value is a record error. When the service refuses a
  request (400, or a 500 from the model), the batch is split in halves until the records that fail alone are
  found (at most `ISOLATE_BUDGET` extra requests per batch; past that the rest of the failing part fails as a
  whole): their errors carry the service's message, every other record is scored.
- `filter` keeps the records for which `field op value` is true (a comparison with a null is not true).
- `python` imports `module.function` once, at start-up, and calls it with a `pyarrow.RecordBatch`; it returns a
  `RecordBatch` or `Table` with **the same number of rows**, holding the fields it `adds` (cast to their declared
  types) and possibly new values of existing fields; the fields it `removes` are removed. An exception is
  isolated to records the same way as a refused score request. Async functions are awaited; plain ones run in a
  worker thread. The flow's working directory is on `sys.path`.
"""

from __future__ import annotations

import abc
import asyncio
import importlib
import inspect
import sys
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from data_channel import RecordError, SourceBatch, arrow_type
from data_channel.schema import conform, from_text
from ir.checks import field_type_of
from ir.models import FieldType, FilterStep, MapStep, ModelSpec, PythonStep, RecordSchema, ScoreStep, Step, Tensor
from scoring_flows.client import DATATYPES, ScoreRejected, TensorIn, V2Client

__all__ = ["ISOLATE_BUDGET", "FlowBatch", "FlowStep", "StepError", "build_steps"]

ISOLATE_BUDGET: Final = 64
"""Extra requests one batch may spend finding the records a service (or a python step) refuses."""


class StepError(Exception):
    """A step cannot run at all (a python function that cannot be imported, a wrong return value)."""


@dataclass
class FlowBatch:
    """Records on their way through the steps."""

    records: pa.RecordBatch
    ordinals: np.ndarray
    source: SourceBatch
    errors: list[RecordError] = field(default_factory=list)

    def row_values(self, row: int) -> dict[str, Any]:
        values: dict[str, Any] = self.records.slice(row, 1).to_pylist()[0]
        return values

    def fail_rows(self, failures: dict[int, tuple[str | None, str]], step: str) -> FlowBatch:
        """The batch without the rows in `failures` (row -> (field, message)), with their errors added."""
        if not failures:
            return self
        errors = list(self.errors)
        for row in sorted(failures):
            field_name, message = failures[row]
            ordinal = int(self.ordinals[row])
            errors.append(
                RecordError(
                    ordinal,
                    self.source.describe(ordinal),
                    message,
                    field=field_name,
                    step=step,
                    record=self.row_values(row),
                )
            )
        keep = np.ones(self.records.num_rows, dtype=bool)
        keep[list(failures)] = False
        return FlowBatch(self.records.filter(pa.array(keep)), self.ordinals[keep], self.source, errors)

    def with_records(self, records: pa.RecordBatch) -> FlowBatch:
        return FlowBatch(records, self.ordinals, self.source, self.errors)


def _replace(records: pa.RecordBatch, name: str, column: pa.Array) -> pa.RecordBatch:
    names = records.schema.names
    if name in names:
        index = names.index(name)
        return records.set_column(index, name, column)
    return records.append_column(name, column)


class FlowStep(abc.ABC):
    """One compiled step."""

    def __init__(self, label: str) -> None:
        self.label = label

    @abc.abstractmethod
    async def apply(self, batch: FlowBatch) -> FlowBatch: ...

    async def close(self) -> None:  # noqa: B027 - most steps hold nothing
        """Release what the step holds."""


# ---------------------------------------------------------------------------------------------- map


def _constant(value: bool | int | float | str, rows: int) -> pa.Array:
    if isinstance(value, bool):
        return pa.array(np.full(rows, value, dtype=bool))
    if isinstance(value, int):
        return pa.array(np.full(rows, value, dtype=np.int64))
    if isinstance(value, float):
        return pa.array(np.full(rows, value, dtype=np.float64))
    return pa.array([value] * rows, type=pa.string())


class MapOp(FlowStep):
    def __init__(self, label: str, step: MapStep) -> None:
        super().__init__(label)
        self.step = step

    async def apply(self, batch: FlowBatch) -> FlowBatch:
        step = self.step
        records = batch.records
        if step.rename:
            records = records.rename_columns([step.rename.get(n, n) for n in records.schema.names])
        batch = batch.with_records(records)
        for name, target in step.cast.items():
            batch = self._cast(batch, name, target)
        records = batch.records
        for name, value in step.set.items():
            records = _replace(records, name, _constant(value, records.num_rows))
        if step.drop:
            records = records.drop_columns([n for n in step.drop if n in records.schema.names])
        return batch.with_records(records)

    def _cast(self, batch: FlowBatch, name: str, target: FieldType) -> FlowBatch:
        records = batch.records
        column = records.column(name)
        to = arrow_type(target)
        if column.type == to:
            return batch
        spec = RecordSchema.model_validate(
            {"fields": [{"name": name, **target.model_dump(exclude_none=True), "nullable": True}]}
        )
        # The casts below locate a record by its row index in this batch (`str(row)`), read back with `int()`.
        if pa.types.is_string(column.type):
            good, _, errors = from_text(
                pa.table({name: column}), spec, np.arange(records.num_rows), lambda row: str(row)
            )
        else:
            try:
                if pa.types.is_floating(column.type) and target.type == "string":
                    raise pa.ArrowInvalid("printed by Python")  # '0.5' rather than Arrow's digits
                return batch.with_records(_replace(records, name, pc.cast(column, to, safe=True)))
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
                values = pa.RecordBatch.from_arrays(
                    [
                        pa.array(
                            [None if v is None else _plain(v, target) for v in column.to_pylist()], type=pa.string()
                        )
                    ],
                    names=[name],
                )
                good, _, errors = from_text(values, spec, np.arange(records.num_rows), lambda row: str(row))
        failures: dict[int, tuple[str | None, str]] = {
            int(e.where): (name, f"cannot cast: {e.message}") for e in errors
        }
        # The failed records leave with their values as they were; the others take the cast column.
        kept = batch.fail_rows(failures, self.label)
        return kept.with_records(_replace(kept.records, name, good.column(0)))


def _plain(value: Any, target: FieldType) -> str:
    """A non-text value as the text a cast parses: integral floats lose their '.0' for integer targets."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and target.type == "integer" and value.is_integer():
        return str(int(value))
    return str(value)


# ---------------------------------------------------------------------------------------------- filter

_COMPARE: Final[dict[str, Callable[[Any, Any], Any]]] = {
    "eq": pc.equal,
    "ne": pc.not_equal,
    "lt": pc.less,
    "le": pc.less_equal,
    "gt": pc.greater,
    "ge": pc.greater_equal,
}


class FilterOp(FlowStep):
    def __init__(self, label: str, step: FilterStep) -> None:
        super().__init__(label)
        self.step = step

    async def apply(self, batch: FlowBatch) -> FlowBatch:
        step = self.step
        column = batch.records.column(step.field)
        if step.op == "isNull":
            mask = pc.is_null(column)
        elif step.op == "notNull":
            mask = pc.is_valid(column)
        elif step.op in ("in", "notIn"):
            values = step.value if isinstance(step.value, list) else [step.value]
            found = pc.is_in(column, value_set=pa.array(values).cast(column.type, safe=False))
            mask = (
                pc.and_(found, pc.is_valid(column))
                if step.op == "in"
                else pc.and_(pc.invert(found), pc.is_valid(column))
            )
        else:
            mask = _COMPARE[step.op](column, pa.scalar(step.value))
        keep = np.asarray(pc.fill_null(mask, False).to_numpy(zero_copy_only=False), dtype=bool)
        if keep.all():
            return batch
        return FlowBatch(batch.records.filter(pa.array(keep)), batch.ordinals[keep], batch.source, batch.errors)


# ---------------------------------------------------------------------------------------------- isolation

Attempt = Callable[[np.ndarray], Awaitable[Any]]
"""Runs a step's work on the rows at the given indices."""
Refused = Callable[[Exception], str | None]
"""The message of an exception that may be one record's fault; None for one that must stop the flow."""


async def isolate(rows: int, attempt: Attempt, refused: Refused) -> tuple[list[tuple[np.ndarray, Any]], dict[int, str]]:
    """Run `attempt` on all rows; when refused, on halves, down to the single rows that fail.

    Returns the (indices, result) of every part that worked, in row order, and the message of each failed row.
    """
    budget = ISOLATE_BUDGET
    done: list[tuple[np.ndarray, Any]] = []
    failed: dict[int, str] = {}

    async def run(indices: np.ndarray) -> None:
        nonlocal budget
        try:
            done.append((indices, await attempt(indices)))
            return
        except Exception as exc:
            message = refused(exc)
            if message is None:
                raise
            if len(indices) == 1 or budget <= 0:
                for index in indices.tolist():
                    failed[index] = message
                return
        budget -= 2
        middle = len(indices) // 2
        await run(indices[:middle])
        await run(indices[middle:])

    await run(np.arange(rows))
    done.sort(key=lambda part: int(part[0][0]))
    return done, failed


def _rejected(exc: Exception) -> str | None:
    return exc.message if isinstance(exc, ScoreRejected) else None


def _raised(exc: Exception) -> str | None:
    return None if isinstance(exc, StepError) else f"{type(exc).__name__}: {exc}"


# ---------------------------------------------------------------------------------------------- score


def _element_type(tensor: Tensor) -> pa.DataType:
    return arrow_type(field_type_of(tensor.datatype))


class ScoreOp(FlowStep):
    def __init__(self, label: str, step: ScoreStep, model: ModelSpec, client: V2Client) -> None:
        super().__init__(label)
        self.step = step
        self.model = step.model
        self.inputs = {t.name: t for t in model.inputs}
        self.outputs = {t.name: t for t in model.outputs}
        self.client = client
        self.requested = list(dict.fromkeys(out.output for out in step.outputs))

    async def apply(self, batch: FlowBatch) -> FlowBatch:
        failures: dict[int, tuple[str | None, str]] = {}
        records = batch.records
        for mapping in self.step.inputs:
            for name in mapping.field_names:
                column = records.column(name)
                if column.null_count:
                    for row in np.flatnonzero(np.asarray(column.is_null().to_numpy(zero_copy_only=False))).tolist():
                        failures.setdefault(
                            row, (name, f"null cannot feed input '{mapping.input}' of model '{self.model}'")
                        )
        batch = batch.fail_rows(failures, self.label)
        if batch.records.num_rows == 0:
            return self._add_outputs(batch, {})
        tensors, bad = await asyncio.to_thread(self._tensors, batch.records)
        batch = batch.fail_rows(bad, self.label)
        if bad:
            keep = np.ones(len(next(iter(tensors.values())).array), dtype=bool)
            keep[list(bad)] = False
            tensors = {k: TensorIn(t.name, t.datatype, t.array[keep]) for k, t in tensors.items()}
        if batch.records.num_rows == 0:
            return self._add_outputs(batch, {})
        ordered = [tensors[t] for t in self.inputs if t in tensors]

        async def attempt(indices: np.ndarray) -> dict[str, np.ndarray]:
            part = (
                ordered
                if len(indices) == batch.records.num_rows
                else [TensorIn(t.name, t.datatype, t.array[indices]) for t in ordered]
            )
            return await self.client.infer(self.model, part, self.requested)

        parts, failed = await isolate(batch.records.num_rows, attempt, _rejected)
        if failed:
            batch = batch.fail_rows({row: (None, message) for row, message in failed.items()}, self.label)
        if not parts:
            return self._add_outputs(batch, {})
        outputs = {name: np.concatenate([result[name] for _, result in parts]) for name in self.requested}
        return await asyncio.to_thread(self._add_outputs, batch, outputs)

    def _tensors(self, records: pa.RecordBatch) -> tuple[dict[str, TensorIn], dict[int, tuple[str | None, str]]]:
        """One tensor per model input, and the rows whose values cannot make one (arrays of another length)."""
        rows = records.num_rows
        tensors: dict[str, TensorIn] = {}
        bad: dict[int, tuple[str | None, str]] = {}
        for mapping in self.step.inputs:
            tensor = self.inputs[mapping.input]
            dtype = DATATYPES[tensor.datatype]
            names = mapping.field_names
            column0 = records.column(names[0])
            if len(names) == 1 and pa.types.is_list(column0.type):
                matrix = self._from_list(tensor, names[0], column0, bad)
            elif tensor.datatype == "BYTES":
                matrix = np.empty((rows, len(names)), dtype=np.object_)
                for j, name in enumerate(names):
                    matrix[:, j] = [str(v).encode() for v in records.column(name).to_pylist()]
            else:
                matrix = np.empty((rows, len(names)), dtype=dtype)
                for j, name in enumerate(names):
                    matrix[:, j] = records.column(name).to_numpy(zero_copy_only=False)
            tail = tensor.shape[1:]
            if not tail:
                array = matrix.reshape(rows)
            elif all(d > 0 for d in tail) and matrix.shape[1] == int(np.prod(tail)):
                array = matrix.reshape((rows, *tail))
            else:
                array = matrix
            tensors[mapping.input] = TensorIn(tensor.name, tensor.datatype, array)
        return tensors, bad

    def _from_list(
        self, tensor: Tensor, name: str, column: pa.Array, bad: dict[int, tuple[str | None, str]]
    ) -> np.ndarray:
        """The rows of an array field as a matrix; rows of another width are marked in `bad` (and zero-filled)."""
        rows = len(column)
        lengths = np.asarray(pc.list_value_length(column).to_numpy(zero_copy_only=False))
        width = tensor.row_width or (int(np.bincount(lengths).argmax()) if rows else 0)
        wrong = np.flatnonzero(lengths != width)
        for row in wrong.tolist():
            bad[row] = (name, f"has {lengths[row]} values; input '{tensor.name}' takes {width} per record")
        dtype = DATATYPES[tensor.datatype]
        if tensor.datatype == "BYTES":
            values = np.array([str(v).encode() for v in pc.list_flatten(column).to_pylist()], dtype=np.object_)
        else:
            values = np.asarray(pc.list_flatten(column).to_numpy(zero_copy_only=False)).astype(dtype, copy=False)
        if not len(wrong):
            return values.reshape(rows, width)
        matrix = np.zeros((rows, width), dtype=dtype)
        offsets = np.concatenate([[0], np.cumsum(lengths)])
        for row in np.flatnonzero(lengths == width).tolist():
            matrix[row] = values[offsets[row] : offsets[row + 1]]
        return matrix

    def _add_outputs(self, batch: FlowBatch, outputs: dict[str, np.ndarray]) -> FlowBatch:
        records = batch.records
        rows = records.num_rows
        for out in self.step.outputs:
            tensor = self.outputs[out.output]
            element = _element_type(tensor)
            raw = outputs.get(out.output)
            matrix = raw.reshape(rows, -1) if raw is not None else np.zeros((rows, max(tensor.row_width or 1, 1)))
            if tensor.datatype == "BYTES" and raw is not None:
                matrix = np.vectorize(
                    lambda b: b.decode("utf-8", errors="replace") if isinstance(b, bytes) else str(b), otypes=[object]
                )(matrix)
            if out.field is not None:
                if out.reduce == "argmax":
                    column = pa.array(matrix.argmax(axis=1).astype(np.int64) if rows else np.zeros(0, np.int64))
                elif out.reduce == "max":
                    column = pa.array(matrix.max(axis=1) if rows else matrix[:, 0], type=element)
                elif tensor.row_width == 1:
                    column = pa.array(matrix[:, 0], type=element)
                else:
                    flat = pa.array(matrix.ravel(), type=element)
                    offsets = pa.array(np.arange(0, rows * matrix.shape[1] + 1, matrix.shape[1], dtype=np.int32))
                    column = pa.ListArray.from_arrays(offsets, flat)
                records = _replace(records, out.field, column)
            else:
                for j, name in enumerate(out.fields or []):
                    records = _replace(records, name, pa.array(matrix[:, j], type=element))
        return batch.with_records(records)


# ---------------------------------------------------------------------------------------------- python

PythonFunction = Callable[[pa.RecordBatch], Any]


def load_function(step: PythonStep, workdir: Path) -> PythonFunction:
    """`module.function`, imported with the flow's working directory on sys.path."""
    if str(workdir) not in sys.path:
        sys.path.insert(0, str(workdir))
    try:
        module = importlib.import_module(step.module)
    except Exception as exc:
        raise StepError(f"cannot import module '{step.module}': {type(exc).__name__}: {exc}") from exc
    function = getattr(module, step.function, None)
    if not callable(function):
        raise StepError(f"module '{step.module}' has no function '{step.function}'")
    return function  # type: ignore[no-any-return]


class PythonOp(FlowStep):
    def __init__(self, label: str, step: PythonStep, function: PythonFunction) -> None:
        super().__init__(label)
        self.step = step
        self.function = function
        self.is_async = inspect.iscoroutinefunction(function)
        self.adds = RecordSchema(fields=step.adds) if step.adds else None

    async def _call(self, records: pa.RecordBatch) -> pa.RecordBatch:
        what = f"{self.label}: {self.step.module}.{self.step.function}"
        if self.is_async:
            result = await self.function(records)
        else:
            result = await asyncio.to_thread(self.function, records)
        if isinstance(result, pa.Table):
            result = pa.RecordBatch.from_arrays([c.combine_chunks() for c in result.columns], names=result.schema.names)
        if not isinstance(result, pa.RecordBatch):
            raise StepError(f"{what} returned {type(result).__name__}, not a pyarrow RecordBatch")
        if result.num_rows != records.num_rows:
            raise StepError(
                f"{what} returned {result.num_rows} rows for {records.num_rows}: a python step must return one row "
                "per record"
            )
        missing = [f.name for f in self.step.adds if f.name not in result.schema.names]
        if missing:
            raise StepError(f"{what} did not return the field(s) it adds: {', '.join(missing)}")
        return result

    async def apply(self, batch: FlowBatch) -> FlowBatch:
        records = batch.records

        async def attempt(indices: np.ndarray) -> pa.RecordBatch:
            part = records if len(indices) == records.num_rows else records.take(pa.array(indices))
            return await self._call(part)

        parts, failed = await isolate(records.num_rows, attempt, _raised)
        batch = batch.fail_rows({row: (None, message) for row, message in failed.items()}, self.label)
        result = pa.Table.from_batches([part for _, part in parts]).combine_chunks() if parts else None
        # Fields kept: the existing ones minus `removes`, with the function's new values where it returned some.
        removes = set(self.step.removes) | {f.name for f in self.step.adds}
        current = batch.records
        names = [name for name in current.schema.names if name not in removes]
        columns: list[pa.Array] = []
        for name in names:
            column = current.column(name)
            if result is not None and name in result.schema.names:
                new = result.column(name).combine_chunks()
                column = new if new.type == column.type else pc.cast(new, column.type)
            columns.append(column)
        kept = FlowBatch(
            pa.RecordBatch.from_arrays(columns, schema=pa.schema([current.schema.field(n) for n in names])),
            batch.ordinals,
            batch.source,
            batch.errors,
        )
        if self.adds is None:
            return kept
        if result is None:
            added = pa.RecordBatch.from_arrays(
                [pa.array([], type=arrow_type(f)) for f in self.step.adds], names=[f.name for f in self.step.adds]
            )
        else:
            raw = pa.RecordBatch.from_arrays(
                [result.column(f.name).combine_chunks() for f in self.step.adds], names=[f.name for f in self.step.adds]
            )
            added, _, errors = conform(raw, self.adds, np.arange(current.num_rows), str)
            kept = kept.fail_rows({int(e.where): (e.field, e.message) for e in errors}, self.label)
        out = kept.records
        for spec, column in zip(self.step.adds, added.columns, strict=True):
            out = out.append_column(spec.name, column)
        return kept.with_records(out)


# ---------------------------------------------------------------------------------------------- build


def build_steps(
    steps: Sequence[Step], models: dict[str, ModelSpec], client: V2Client | None, workdir: Path
) -> list[FlowStep]:
    """Compiled steps; python functions are imported here, so a missing one stops the flow before any record."""
    built: list[FlowStep] = []
    for index, step in enumerate(steps):
        label = step.name or f"{step.kind} step {index + 1}"
        if step.map is not None:
            built.append(MapOp(label, step.map))
        elif step.filter is not None:
            built.append(FilterOp(label, step.filter))
        elif step.score is not None:
            model = models.get(step.score.model)
            if model is None or client is None:
                raise StepError(f"{label}: no scoring service for model '{step.score.model}' in the values")
            built.append(ScoreOp(label, step.score, model, client))
        elif step.python is not None:
            built.append(PythonOp(label, step.python, load_function(step.python, workdir)))
    return built
