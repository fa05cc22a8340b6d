"""Map, filter and python steps on Arrow batches, and record isolation, without any service."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from data_channel import SourceBatch
from ir.models import FilterStep, MapStep, PythonStep
from scoring_flows import steps as steps_module
from scoring_flows.steps import FilterOp, FlowBatch, MapOp, PythonOp, StepError, isolate, load_function


def batch(**columns: Any) -> FlowBatch:
    records = pa.RecordBatch.from_pydict(columns)
    ordinals = np.arange(10, 10 + records.num_rows)
    source = SourceBatch(records, ordinals, 10, 10 + records.num_rows, where=lambda o: f"record {o + 1} of in.csv")
    return FlowBatch(records, ordinals, source)


async def test_map_applies_rename_cast_set_drop_in_that_order_whatever_the_order_written() -> None:
    step = MapStep.model_validate(
        {"drop": ["b"], "set": {"b": 1, "c": "x"}, "cast": {"b": {"type": "string"}}, "rename": {"a": "b"}}
    )
    out = await MapOp("m", step).apply(batch(a=[1, 2], keep=[True, False]))
    # rename a -> b, cast b to text, set b = 1 (replaced in place) and c, drop b
    assert out.records.schema.names == ["keep", "c"]
    assert out.records.to_pylist() == [{"keep": True, "c": "x"}, {"keep": False, "c": "x"}]


async def test_a_cast_that_does_not_fit_fails_only_that_record_and_names_it() -> None:
    step = MapStep.model_validate({"cast": {"t": {"type": "integer", "format": "int32"}, "f": {"type": "integer"}}})
    out = await MapOp("to_ints", step).apply(batch(t=["1", "x", "3", "4"], f=[1.0, 2.0, 2.5, None]))
    assert out.records.to_pylist() == [{"t": 1, "f": 1}, {"t": 4, "f": None}]
    assert out.ordinals.tolist() == [10, 13]
    assert [(e.ordinal, e.field, e.step, e.where) for e in out.errors] == [
        (11, "t", "to_ints", "record 12 of in.csv"),
        (12, "f", "to_ints", "record 13 of in.csv"),
    ]
    assert "cannot cast" in out.errors[0].message and out.errors[0].record == {"t": "x", "f": 2.0}


async def test_numbers_cast_to_text_read_as_python_prints_them() -> None:
    out = await MapOp("m", MapStep.model_validate({"cast": {"f": {"type": "string"}}})).apply(batch(f=[0.1, 2.0]))
    assert out.records.column("f").to_pylist() == ["0.1", "2.0"]


@pytest.mark.parametrize(
    ("op", "value", "kept"),
    [
        ("eq", 2, [2]),
        ("ne", 2, [1, 3]),
        ("lt", 2, [1]),
        ("le", 2, [1, 2]),
        ("gt", 2, [3]),
        ("ge", 2, [2, 3]),
        ("in", [1, 3], [1, 3]),
        ("notIn", [1, 3], [2]),
        ("isNull", None, [None]),
        ("notNull", None, [1, 2, 3]),
    ],
)
async def test_a_filter_keeps_the_records_for_which_the_comparison_is_true(
    op: str, value: Any, kept: list[Any]
) -> None:
    step = FilterStep.model_validate({"field": "n", "op": op, "value": value})
    out = await FilterOp("f", step).apply(batch(n=[1, 2, None, 3]))
    assert out.records.column("n").to_pylist() == kept
    assert len(out.ordinals) == len(kept) and out.errors == []


async def test_isolation_halves_down_to_the_failing_rows_within_its_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = 0

    async def attempt(indices: np.ndarray) -> list[int]:
        nonlocal calls
        calls += 1
        if 7 in indices.tolist():
            raise ValueError("seven")
        return indices.tolist()

    def refused(exc: Exception) -> str | None:
        return str(exc)

    parts, failed = await isolate(100, attempt, refused)
    assert failed == {7: "seven"}
    assert sorted(i for indices, _ in parts for i in indices.tolist()) == [i for i in range(100) if i != 7]
    assert calls <= 2 * 7 + 1
    monkeypatch.setattr(steps_module, "ISOLATE_BUDGET", 0)
    _, failed = await isolate(100, attempt, refused)
    assert sorted(failed) == list(range(100))  # no budget: the refused part fails as a whole


PY = """
import asyncio
import pyarrow as pa
import pyarrow.compute as pc


def add_sum(batch):
    if -1 in batch.column("a").to_pylist():
        raise ValueError("negative")
    total = pc.add(batch.column("a"), batch.column("b"))
    return pa.RecordBatch.from_arrays([total, pc.multiply(batch.column("a"), 10)], names=["sum", "a"])


async def too_short(batch):
    await asyncio.sleep(0)
    return batch.slice(1)


def not_a_batch(batch):
    return {"sum": [1]}
"""


@pytest.fixture
def pymodule(tmp_path: Path) -> Path:
    (tmp_path / "userstep.py").write_text(PY)
    return tmp_path


async def test_a_python_step_adds_and_removes_its_fields_and_may_change_others(pymodule: Path) -> None:
    step = PythonStep.model_validate(
        {"module": "userstep", "function": "add_sum", "adds": [{"name": "sum", "type": "number"}], "removes": ["b"]}
    )
    op = PythonOp("py", step, load_function(step, pymodule))
    out = await op.apply(batch(a=[1, -1, 3], b=[10, 20, 30], c=["x", "y", "z"]))
    assert out.records.schema.names == ["a", "c", "sum"]
    assert out.records.schema.field("sum").type == pa.float64()
    assert out.records.to_pylist() == [{"a": 10, "c": "x", "sum": 11.0}, {"a": 30, "c": "z", "sum": 33.0}]
    assert [(e.ordinal, e.message) for e in out.errors] == [(11, "ValueError: negative")]


@pytest.mark.parametrize(
    ("function", "message"), [("too_short", "one row per record"), ("not_a_batch", "not a pyarrow")]
)
async def test_a_python_step_that_breaks_its_contract_stops_the_flow(
    pymodule: Path, function: str, message: str
) -> None:
    step = PythonStep.model_validate({"module": "userstep", "function": function})
    op = PythonOp("py", step, load_function(step, pymodule))
    with pytest.raises(StepError, match=message):
        await op.apply(batch(a=[1, 2]))


def test_a_missing_function_is_an_error_at_start(pymodule: Path) -> None:
    with pytest.raises(StepError, match="has no function 'nope'"):
        load_function(PythonStep.model_validate({"module": "userstep", "function": "nope"}), pymodule)
