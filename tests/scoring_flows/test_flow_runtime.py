"""Whole flows in-process against real scoring services: channels, steps, error policies, reports, metrics."""

from __future__ import annotations

import asyncio
import secrets
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
import psycopg
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
import redis.asyncio as aioredis
from flow_kit import (
    IN_FIELDS,
    OUT_FIELDS,
    PIXELS,
    SCORE_STEPS,
    Digits,
    Services,
    StubScheduler,
    channel,
    digits_rows,
    expected,
    free_port,
    render_values,
    write_bundle,
    write_digits_csv,
)

from scoring_flows.cli import load_values
from scoring_flows.runtime import Flow
from scoring_flows.settings import FlowSettings

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
REDIS_URL = "redis://127.0.0.1:6379/0"


def make_flow(
    values: Path,
    urls: dict[str, str],
    workdir: Path,
    lines: list[str],
    *,
    flow: str = "digits-flow",
    environ: dict[str, str] | None = None,
    **settings: Any,
) -> Flow:
    return Flow(
        load_values(values),
        flow,
        settings=FlowSettings(**{"progress_interval_seconds": 0.05, **settings}),
        service_urls=urls,
        environ=environ,
        workdir=workdir,
        values_path=values,
        log=lines.append,
    )


async def run(
    values: Path,
    urls: dict[str, str],
    workdir: Path,
    *,
    flow: str = "digits-flow",
    environ: dict[str, str] | None = None,
    **settings: Any,
) -> tuple[int, list[str], Flow]:
    lines: list[str] = []
    runner = make_flow(values, urls, workdir, lines, flow=flow, environ=environ, **settings)
    code = await runner.run()
    return code, lines, runner


def csv_flow(
    tmp: Path,
    digits: Digits,
    *,
    steps: list[dict[str, Any]] = SCORE_STEPS,
    out_fields: list[dict[str, Any]] = OUT_FIELDS,
    error_policy: dict[str, Any] | None = None,
    extra: dict[str, dict[str, Any]] | None = None,
    out: dict[str, Any] | None = None,
    batch_size: int = 500,
    scheduler: StubScheduler | None = None,
) -> Path:
    channels = {
        "in": channel("source", "file", {"path": "data/in.csv", "format": "csv"}, IN_FIELDS),
        "out": channel("sink", "file", out or {"path": "out/scored.csv", "format": "csv"}, out_fields),
        **(extra or {}),
    }
    bundle = write_bundle(
        tmp / "bundle", digits, channels=channels, steps=steps, error_policy=error_policy, batch_size=batch_size
    )
    if scheduler is None:
        return render_values(bundle, tmp / "run" / "values.yaml")
    return render_values(
        bundle, tmp / "run" / "values.yaml", job_id=scheduler.job_id, scheduler_url=scheduler.url, token=scheduler.token
    )


def read_csv(path: Path) -> pa.Table:
    return pacsv.read_csv(path)


def assert_scored(table: pa.Table, want: dict[str, np.ndarray]) -> None:
    assert table.num_rows == len(want["id"])
    for name, values in want.items():
        assert np.array_equal(table.column(name).to_numpy(), values), name


async def test_a_csv_flow_scores_every_record_in_order_like_in_process_and_reports_to_the_scheduler(
    tmp_path: Path, workdir: Path, digits: Digits, digits_services: Services
) -> None:
    rows = digits_rows(digits, 3000)
    write_digits_csv(workdir / "data" / "in.csv", rows)
    with StubScheduler() as scheduler:
        values = csv_flow(tmp_path, digits, scheduler=scheduler)
        code, lines, _ = await run(values, digits_services.urls, workdir)
    assert code == 0, lines
    assert_scored(read_csv(workdir / "out" / "scored.csv"), expected(digits, rows))
    assert not (workdir / "out" / "scored.csv.partial").exists()
    assert len(scheduler.completions) == 1
    done = scheduler.completions[0]
    assert done["succeeded"] is True
    assert done["flow"] == "digits-flow"  # the scheduler waits for each flow of the pipeline to report
    assert "3,000 records written to file sink 'out'" in done["message"] and "records/s" in done["message"]
    assert counters(scheduler.progress[-1]) == {"read": 3000, "written": 3000, "failed": 0}
    assert any("binary tensors" in line for line in lines)


def counters(report: dict[str, Any]) -> dict[str, Any]:
    return {name: report[name] for name in ("read", "written", "failed")}


async def test_the_last_progress_report_and_the_completion_are_retried_until_a_restarting_scheduler_accepts_them(
    tmp_path: Path, workdir: Path, digits: Digits, digits_services: Services
) -> None:
    rows = digits_rows(digits, 1500)
    write_digits_csv(workdir / "data" / "in.csv", rows)
    with StubScheduler(final_outage=3) as scheduler:
        values = csv_flow(tmp_path, digits, scheduler=scheduler)
        # one progress report at the start and one at the end only: the final counts travel in the last one
        code, lines, _ = await run(values, digits_services.urls, workdir, progress_interval_seconds=3600)
    assert code == 0, lines
    assert scheduler.refused == ["progress"] * 3 + ["complete"] * 3
    last = scheduler.progress[-1]
    assert last["state"] == "done"
    assert counters(last) == {"read": 1500, "written": 1500, "failed": 0}
    assert [c["succeeded"] for c in scheduler.completions] == [True]
    assert any("accepted the last progress report after 4 attempts" in line for line in lines)
    assert any("accepted the completion report after 4 attempts" in line for line in lines)


async def test_a_flow_whose_completion_is_never_accepted_exits_75_without_reporting_a_failure(
    tmp_path: Path, workdir: Path, digits: Digits, digits_services: Services
) -> None:
    write_digits_csv(workdir / "data" / "in.csv", digits_rows(digits, 600))
    with StubScheduler(final_outage=1_000_000) as scheduler:
        values = csv_flow(tmp_path, digits, scheduler=scheduler)
        code, lines, _ = await run(values, digits_services.urls, workdir, complete_timeout_seconds=0.5)
    assert code == 75, lines  # a restart reports it again: the scoring itself did not fail
    assert scheduler.completions == [] and "complete" in scheduler.refused
    assert "failed" not in [report["state"] for report in scheduler.progress]
    assert any("the scheduler did not record its completion: exiting with 75" in line for line in lines)


async def test_a_flow_restarted_after_it_finished_reports_the_final_counts_again_and_scores_nothing_twice(
    tmp_path: Path, workdir: Path, digits: Digits, digits_services: Services
) -> None:
    rows = digits_rows(digits, 1200)
    write_digits_csv(workdir / "data" / "in.csv", rows)
    with StubScheduler() as first:
        values = csv_flow(tmp_path, digits, scheduler=first)
        code, lines, _ = await run(values, digits_services.urls, workdir)
    assert code == 0, lines
    scored = (workdir / "out" / "scored.csv").read_bytes()
    with StubScheduler() as scheduler:  # the same job id and token: a scheduler that lost the reports
        values = csv_flow(tmp_path, digits, scheduler=scheduler)
        code, lines, _ = await run(values, digits_services.urls, workdir)
    assert code == 0, lines
    assert any("already finished before a restart" in line for line in lines)
    assert (workdir / "out" / "scored.csv").read_bytes() == scored
    last = scheduler.progress[-1]
    assert last["state"] == "done"
    assert counters(last) == {"read": 1200, "written": 1200, "failed": 0}
    assert [c["succeeded"] for c in scheduler.completions] == [True]
    assert "1,200 records written" in scheduler.completions[0]["message"]


def test_reports_are_retried_for_ten_minutes_by_default_longer_than_a_scheduler_restart() -> None:
    assert FlowSettings().complete_timeout_seconds == 600.0


async def test_a_flow_reports_its_state_its_sources_size_its_outputs_and_each_services_figures(
    tmp_path: Path, workdir: Path, digits: Digits, digits_services: Services
) -> None:
    rows = digits_rows(digits, 3000)
    write_digits_csv(workdir / "data" / "in.csv", rows)
    with StubScheduler() as scheduler:
        values = csv_flow(tmp_path, digits, scheduler=scheduler)
        code, lines, _ = await run(values, digits_services.urls, workdir)
    assert code == 0, lines
    reports = scheduler.progress
    assert {r["flow"] for r in reports} == {"digits-flow"}
    states = [r["state"] for r in reports]
    assert states[0] == "starting" and states[-1] == "done"
    assert "running" in states
    assert states.index("done") > max(i for i, state in enumerate(states) if state == "running")
    first_running = next(r for r in reports if r["state"] == "running")
    # counted lines of the CSV file, header left out, known before the first record is scored
    assert (first_running["total"], first_running["unit"]) == (3000, "records")
    last = reports[-1]
    assert (last["total"], last["unit"], last["done"], last["filtered"]) == (3000, "records", 3000, 0)
    assert last["rate"] > 0
    assert last["outputs"] == [f"file sink 'out' ({workdir / 'out' / 'scored.csv'})"]  # where the records went
    assert set(last["services"]) == {"digits-rf", "digits-rf-onnx"}
    for figures in last["services"].values():
        assert figures["rows"] == 3000
        assert figures["requests"] >= 6  # batches of 500
        assert figures["errors"] == 0
        latency = figures["latency_ms"]
        assert 0 < latency["p50"] <= latency["p99"]
        assert latency["mean"] > 0


async def test_a_service_that_never_gets_ready_fails_the_flow_with_a_clear_message_in_bounded_time(
    tmp_path: Path, workdir: Path, digits: Digits
) -> None:
    write_digits_csv(workdir / "data" / "in.csv", digits_rows(digits, 10))
    port = free_port()
    urls = {"digits-rf": f"http://127.0.0.1:{port}", "digits-rf-onnx": f"http://127.0.0.1:{port}"}
    with StubScheduler() as scheduler:
        values = csv_flow(tmp_path, digits, scheduler=scheduler)
        code, _, _ = await run(values, urls, workdir, ready_timeout_seconds=0.5)
    assert code == 1
    message = scheduler.completions[0]["message"]
    assert scheduler.completions[0]["succeeded"] is False
    assert "scoring services not ready after 0.5s" in message and f"127.0.0.1:{port}" in message
    assert "ConnectError" in message


def corrupt(path: Path, bad: dict[int, str]) -> None:
    """Replace whole lines of a CSV (line 0 is the header)."""
    lines = path.read_text().splitlines()
    for number, text in bad.items():
        lines[number] = text
    path.write_text("\n".join(lines) + "\n")


async def test_under_fail_the_first_bad_record_fails_the_job_naming_it_and_no_output_appears(
    tmp_path: Path, workdir: Path, digits: Digits, digits_services: Services
) -> None:
    rows = digits_rows(digits, 2000)
    source = write_digits_csv(workdir / "data" / "in.csv", rows)
    corrupt(source, {1501: "1500," + ",".join(["x"] + ["0"] * 63), 1801: "1800,1"})
    with StubScheduler() as scheduler:
        values = csv_flow(tmp_path, digits, scheduler=scheduler, error_policy={"mode": "fail"})
        code, _, _ = await run(values, digits_services.urls, workdir)
    assert code == 1
    report = scheduler.completions[0]
    assert report["succeeded"] is False
    # every bad record of the batch is named, by record number and line (the header is line 1)
    assert report["message"].startswith("flow digits-flow: 2 records of a batch failed: ")
    assert f"record 1501 (line 1502) of {source}, field 'p0': cannot read 'x' as integer (int32)" in report["message"]
    assert f"; record 1801 (line 1802) of {source}: expected 65 columns" in report["message"]
    assert not (workdir / "out" / "scored.csv").exists()


async def test_under_fail_a_batch_with_many_bad_records_names_the_first_twenty_and_counts_the_rest(
    tmp_path: Path, workdir: Path, digits: Digits, digits_services: Services
) -> None:
    rows = digits_rows(digits, 100)
    source = write_digits_csv(workdir / "data" / "in.csv", rows)
    corrupt(source, {line: f"{line - 1},1" for line in range(1, 51, 2)})  # 25 short lines in the first batch
    with StubScheduler() as scheduler:
        values = csv_flow(tmp_path, digits, scheduler=scheduler, error_policy={"mode": "fail"})
        code, _, _ = await run(values, digits_services.urls, workdir)
    assert code == 1
    message = scheduler.completions[0]["message"]
    assert message.startswith("flow digits-flow: 25 records of a batch failed: ")
    named = [f"record {line} (line {line + 1}) of {source}: expected 65 columns" for line in range(1, 51, 2)]
    assert all(text in message for text in named[:20]) and not any(text in message for text in named[20:])
    assert message.endswith("; and 5 more")


async def test_a_failure_while_the_window_of_batches_is_full_ends_the_flow_instead_of_hanging(
    tmp_path: Path, workdir: Path, digits: Digits, digits_services: Services
) -> None:
    # The reader fills the window (2 batches) while the first batch is scored; the first batch then fails
    # under `fail`, and the flow must end although the reader is blocked on the full window.
    rows = digits_rows(digits, 2000)
    source = write_digits_csv(workdir / "data" / "in.csv", rows)
    corrupt(source, {2: "1," + ",".join(["x"] + ["0"] * 63)})
    with StubScheduler() as scheduler:
        values = csv_flow(tmp_path, digits, scheduler=scheduler, error_policy={"mode": "fail"}, batch_size=50)
        task = asyncio.ensure_future(run(values, digits_services.urls, workdir, in_flight=2))
        done, _ = await asyncio.wait({task}, timeout=90)  # about 3 s normally; a hang never ends by itself
        if not done:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        assert done, "the flow hung after a batch failed while the window was full"
        code, _, _ = task.result()
    assert code == 1
    assert f"record 2 (line 3) of {source}, field 'p0'" in scheduler.completions[0]["message"]


async def test_under_skip_bad_records_are_counted_and_left_out(
    tmp_path: Path, workdir: Path, digits: Digits, digits_services: Services
) -> None:
    rows = digits_rows(digits, 2000)
    source = write_digits_csv(workdir / "data" / "in.csv", rows)
    corrupt(source, {11: "10," + ",".join(["x"] + ["0"] * 63), 1801: "1800,1", 1901: "1900," + ",".join([""] * 64)})
    with StubScheduler() as scheduler:
        values = csv_flow(tmp_path, digits, scheduler=scheduler, error_policy={"mode": "skip"})
        code, lines, _ = await run(values, digits_services.urls, workdir)
    assert code == 0
    keep = ~np.isin(rows[:, 0], [10, 1800, 1900])
    assert_scored(read_csv(workdir / "out" / "scored.csv"), expected(digits, rows[keep]))
    assert counters(scheduler.progress[-1]) == {"read": 2000, "written": 1997, "failed": 3}
    assert sum("skipped record" in line or "skipped a line" in line for line in lines) == 3


async def test_under_dead_letter_bad_records_go_to_the_dead_letter_sink_with_their_error(
    tmp_path: Path, workdir: Path, digits: Digits, digits_services: Services
) -> None:
    rows = digits_rows(digits, 1000)
    source = write_digits_csv(workdir / "data" / "in.csv", rows)
    corrupt(source, {101: "100," + ",".join(["7"] * 63 + ["99999999999"]), 501: "500,1,2"})
    dead_fields = [
        {"name": "id", "type": "string", "nullable": True},
        {"name": "error", "type": "string"},
        {"name": "errorField", "type": "string", "nullable": True},
        {"name": "position", "type": "string"},
        {"name": "ordinal", "type": "integer"},
        {"name": "record", "type": "string"},
    ]
    extra = {"dead": channel("sink", "file", {"path": "out/dead.jsonl", "format": "jsonl"}, dead_fields)}
    values = csv_flow(tmp_path, digits, error_policy={"mode": "deadLetter", "sink": "dead"}, extra=extra)
    code, lines, runner = await run(values, digits_services.urls, workdir)
    assert code == 0, lines
    assert runner.counters.failed == 2 and runner.counters.written == 998
    dead = [orjson.loads(line) for line in (workdir / "out" / "dead.jsonl").read_bytes().splitlines()]
    assert [d["ordinal"] for d in dead] == [100, 500]
    first = dead[0]
    assert first["id"] == "100" and first["errorField"] == "p63"
    assert first["position"] == f"record 101 (line 102) of {source}"
    assert "out of range for int32" in first["error"]
    assert orjson.loads(first["record"])["p63"] == "99999999999"
    assert dead[1]["id"] is None and "expected 65 columns" in dead[1]["error"]
    assert orjson.loads(dead[1]["record"]) == {"line": "500,1,2"}
    assert read_csv(workdir / "out" / "scored.csv").num_rows == 998


PY_STEP = """
import pyarrow as pa
import pyarrow.compute as pc


def confidence(batch: pa.RecordBatch) -> pa.RecordBatch:
    if 13 in batch.column("id").to_pylist():
        raise ValueError("unlucky record")
    band = pc.if_else(pc.greater(batch.column("probability"), 0.9), "high", "low")
    return pa.RecordBatch.from_arrays([batch.column("id"), band], names=["id", "band"])
"""


async def test_map_filter_and_python_steps_change_records_as_the_ir_says(
    tmp_path: Path, workdir: Path, digits: Digits, digits_services: Services
) -> None:
    (workdir / "bandsteps.py").write_text(PY_STEP)
    rows = digits_rows(digits, 400)
    write_digits_csv(workdir / "data" / "in.csv", rows)
    steps = [
        {"map": {"rename": {"id": "key"}, "cast": {"p0": {"type": "number"}}, "set": {"tag": "t1"}, "drop": ["p1"]}},
        {"map": {"rename": {"key": "id"}, "set": {"p1": 0}}},
        *SCORE_STEPS,
        {"name": "keep_some", "filter": {"field": "label", "op": "in", "value": [1, 3, 7]}},
        {
            "name": "band",
            "python": {
                "module": "bandsteps",
                "function": "confidence",
                "adds": [{"name": "band", "type": "string"}],
                "removes": ["p2"],
            },
        },
    ]
    out_fields = [*OUT_FIELDS, {"name": "tag", "type": "string"}, {"name": "band", "type": "string"}]
    values = csv_flow(
        tmp_path, digits, steps=steps, out_fields=out_fields, error_policy={"mode": "skip"}, batch_size=64
    )
    code, lines, runner = await run(values, digits_services.urls, workdir)
    assert code == 0, lines
    want = expected(digits, np.hstack([rows[:, :2], np.zeros((len(rows), 1), np.int64), rows[:, 3:]]))
    keep = np.isin(want["label"], [1, 3, 7]) & (want["id"] != 13)
    table = read_csv(workdir / "out" / "scored.csv")
    assert_scored(table.select(["id", "label", "probability", "onnx_label"]), {k: v[keep] for k, v in want.items()})
    assert set(table.column("tag").to_pylist()) == {"t1"}
    bands = ["high" if p > 0.9 else "low" for p in want["probability"][keep]]
    assert table.column("band").to_pylist() == bands
    assert runner.counters.failed == (1 if 13 in want["id"][np.isin(want["label"], [1, 3, 7])] else 0)
    assert runner.counters.filtered == 400 - keep.sum() - runner.counters.failed


async def test_a_python_step_that_cannot_be_imported_stops_the_flow_before_any_record(
    tmp_path: Path, workdir: Path, digits: Digits, digits_services: Services
) -> None:
    write_digits_csv(workdir / "data" / "in.csv", digits_rows(digits, 10))
    steps = [*SCORE_STEPS, {"python": {"module": "no_such_module", "function": "f"}}]
    values = csv_flow(tmp_path, digits, steps=steps)
    code, lines, _ = await run(values, digits_services.urls, workdir)
    assert code == 1
    assert any("cannot import module 'no_such_module'" in line for line in lines)


async def test_a_parquet_sink_gets_every_record_once_in_order(
    tmp_path: Path, workdir: Path, digits: Digits, digits_services: Services
) -> None:
    rows = digits_rows(digits, 1200)
    write_digits_csv(workdir / "data" / "in.csv", rows)
    values = csv_flow(tmp_path, digits, out={"path": "out/scored.parquet", "format": "parquet"}, batch_size=100)
    code, lines, _ = await run(values, digits_services.urls, workdir, commit_interval_seconds=0)
    assert code == 0, lines
    assert_scored(pq.read_table(workdir / "out" / "scored.parquet"), expected(digits, rows))


@pytest.mark.postgres
async def test_a_postgresql_query_is_scored_into_a_table_created_from_the_schema(
    tmp_path: Path, workdir: Path, digits: Digits, digits_services: Services
) -> None:
    database = f"modelops_flow_{secrets.token_hex(4)}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{database}"')
    url = PG_ADMIN.rsplit("/", 1)[0] + f"/{database}"
    try:
        rows = digits_rows(digits, 2500)
        with psycopg.connect(url, autocommit=True) as conn:
            columns = ", ".join(f"{p} integer" for p in PIXELS)
            conn.execute(f"CREATE TABLE digits (id bigint PRIMARY KEY, {columns})")
            with conn.cursor().copy(f"COPY digits (id, {', '.join(PIXELS)}) FROM STDIN") as copy:
                for row in rows.tolist():
                    copy.write_row(row)
        secret = {"secretRef": {"name": "pg", "key": "url"}}
        channels = {
            "in": channel(
                "source", "sql", {"connection": secret, "query": "SELECT * FROM digits ORDER BY id"}, IN_FIELDS
            ),
            "out": channel("sink", "sql", {"connection": secret, "table": "scored", "createTable": True}, OUT_FIELDS),
        }
        bundle = write_bundle(tmp_path / "bundle", digits, channels=channels, batch_size=1000)
        env = {"MODELOPS_SECRET_PG_URL": url}
        with StubScheduler() as scheduler:
            values = render_values(
                bundle,
                tmp_path / "run" / "values.yaml",
                job_id=scheduler.job_id,
                scheduler_url=scheduler.url,
                token=scheduler.token,
            )
            code, lines, _ = await run(values, digits_services.urls, workdir, environ=env)
        assert code == 0, lines
        # the query's count(*), known as soon as the source is open
        first_running = next(r for r in scheduler.progress if r["state"] == "running")
        assert (first_running["total"], first_running["unit"]) == (2500, "records")
        assert first_running["outputs"] == ["sql sink 'out' (table scored)"]
        with psycopg.connect(url) as conn:
            got = conn.execute("SELECT id, label, probability, onnx_label FROM scored ORDER BY id").fetchall()
        table = pa.table(
            {name: [r[i] for r in got] for i, name in enumerate(["id", "label", "probability", "onnx_label"])}
        )
        assert_scored(table, expected(digits, rows))
    finally:
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')


async def test_a_streaming_flow_scores_a_redis_stream_and_acknowledges_what_it_wrote(
    tmp_path: Path, workdir: Path, digits: Digits, digits_services: Services
) -> None:
    stream_in = f"modelops-flow-in-{secrets.token_hex(3)}"
    stream_out = f"modelops-flow-out-{secrets.token_hex(3)}"
    secret = {"secretRef": {"name": "redis", "key": "url"}}
    channels = {
        "in": channel("source", "redis", {"url": secret, "stream": stream_in, "consumerGroup": "scorers"}, IN_FIELDS),
        "out": channel("sink", "redis", {"url": secret, "stream": stream_out}, OUT_FIELDS),
    }
    bundle = write_bundle(tmp_path / "bundle", digits, channels=channels, mode="streaming", batch_size=50)
    values = render_values(bundle, tmp_path / "run" / "values.yaml")
    rows = digits_rows(digits, 300)
    client = aioredis.from_url(REDIS_URL)
    try:
        for row in rows.tolist():
            await client.xadd(stream_in, dict(zip(["id", *PIXELS], map(str, row), strict=True)))
        lines: list[str] = []
        runner = make_flow(
            values, digits_services.urls, workdir, lines, environ={"MODELOPS_SECRET_REDIS_URL": REDIS_URL}
        )
        task = asyncio.create_task(runner.run())
        deadline = asyncio.get_running_loop().time() + 60
        while await client.xlen(stream_out) < len(rows):
            assert asyncio.get_running_loop().time() < deadline and not task.done()
            await asyncio.sleep(0.05)
        runner.stop()  # what SIGTERM does
        assert await asyncio.wait_for(task, 30) == 0, lines
        assert (await client.xpending(stream_in, "scorers"))["pending"] == 0
        entries = [fields for _, fields in await client.xrange(stream_out)]
        table = pa.table(
            {
                name: [int(e[name.encode()]) if name != "probability" else float(e[b"probability"]) for e in entries]
                for name in ["id", "label", "probability", "onnx_label"]
            }
        )
        assert_scored(table, expected(digits, rows))
        assert runner.counters.written == len(rows)
    finally:
        await client.delete(stream_in, stream_out)
        await client.aclose()


async def test_an_http_flow_answers_each_request_with_its_scored_records(
    tmp_path: Path, workdir: Path, digits: Digits, digits_services: Services
) -> None:
    channels = {
        "in": channel("source", "http", {"path": "/score"}, IN_FIELDS),
        "out": channel("sink", "http", {"path": "/score"}, OUT_FIELDS),
    }
    bundle = write_bundle(
        tmp_path / "bundle", digits, channels=channels, mode="streaming", error_policy={"mode": "fail"}
    )
    values = render_values(bundle, tmp_path / "run" / "values.yaml")
    port = free_port()
    lines: list[str] = []
    runner = make_flow(values, digits_services.urls, workdir, lines, environ={"MODELOPS_FLOW_HTTP_PORT": str(port)})
    task = asyncio.create_task(runner.run())
    rows = digits_rows(digits, 40)
    records = [dict(zip(["id", *PIXELS], row, strict=True)) for row in rows.tolist()]
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", trust_env=False, timeout=30) as client:
        deadline = asyncio.get_running_loop().time() + 30
        while True:
            try:
                if (await client.get("/healthz")).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert asyncio.get_running_loop().time() < deadline and not task.done()
            await asyncio.sleep(0.05)
        answers = await asyncio.gather(*(client.post("/score", json=records[i : i + 10]) for i in range(0, 40, 10)))
        bad = await client.post("/score", json=[records[0], {**records[1], "p3": "x"}])
    runner.stop()
    assert await asyncio.wait_for(task, 30) == 0, lines
    got = [r for answer in answers for r in answer.json()["records"]]
    assert all(a.status_code == 200 for a in answers)
    table = pa.table({name: [r[name] for r in got] for name in ["id", "label", "probability", "onnx_label"]})
    assert_scored(table, expected(digits, rows))
    assert bad.status_code == 422 and bad.json()["errors"][0]["index"] == 1


async def test_prometheus_metrics_count_the_records(
    tmp_path: Path, workdir: Path, digits: Digits, digits_services: Services
) -> None:
    write_digits_csv(workdir / "data" / "in.csv", digits_rows(digits, 600))
    values = csv_flow(tmp_path, digits)
    port = free_port()
    code, lines, _ = await run(values, digits_services.urls, workdir, metrics_port=port)
    assert code == 0, lines
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", trust_env=False).text
    assert 'modelops_flow_records_read_total{flow="digits-flow"} 600.0' in text
    assert 'modelops_flow_records_written_total{flow="digits-flow"} 600.0' in text
    assert 'modelops_flow_score_request_seconds_count{flow="digits-flow",service="digits-rf"}' in text


async def test_a_streaming_flow_scores_a_rabbitmq_queue_into_a_file_that_is_complete_when_it_stops(
    tmp_path: Path, workdir: Path, digits: Digits, digits_services: Services
) -> None:
    import aio_pika

    amqp = "amqp://guest:guest@127.0.0.1:5672/"
    queue = f"modelops-flow-{secrets.token_hex(3)}"
    secret = {"secretRef": {"name": "amqp", "key": "url"}}
    channels = {
        "in": channel("source", "rabbitmq", {"url": secret, "queue": queue, "prefetch": 500}, IN_FIELDS),
        "out": channel("sink", "file", {"path": "out/scored.jsonl", "format": "jsonl"}, OUT_FIELDS),
    }
    bundle = write_bundle(tmp_path / "bundle", digits, channels=channels, mode="streaming", batch_size=100)
    values = render_values(bundle, tmp_path / "run" / "values.yaml")
    rows = digits_rows(digits, 500)
    connection = await aio_pika.connect_robust(amqp)
    try:
        channel_ = await connection.channel()
        await channel_.declare_queue(queue, durable=True)
        for row in rows.tolist():
            body = orjson.dumps(dict(zip(["id", *PIXELS], row, strict=True)))
            await channel_.default_exchange.publish(aio_pika.Message(body), routing_key=queue)
        lines: list[str] = []
        runner = make_flow(values, digits_services.urls, workdir, lines, environ={"MODELOPS_SECRET_AMQP_URL": amqp})
        task = asyncio.create_task(runner.run())
        deadline = asyncio.get_running_loop().time() + 60
        while runner.counters.written < len(rows):
            assert asyncio.get_running_loop().time() < deadline and not task.done(), lines
            await asyncio.sleep(0.05)
        runner.stop()
        assert await asyncio.wait_for(task, 30) == 0, lines
        declared = await channel_.declare_queue(queue, durable=True, passive=True)
        assert declared.declaration_result.message_count == 0  # every message acknowledged
        got = [orjson.loads(line) for line in (workdir / "out" / "scored.jsonl").read_bytes().splitlines()]
        table = pa.table({name: [r[name] for r in got] for name in ["id", "label", "probability", "onnx_label"]})
        assert_scored(table, expected(digits, rows))
    finally:
        channel_ = await connection.channel()
        await channel_.queue_delete(queue)
        await connection.close()
