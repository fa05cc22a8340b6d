"""Benchmark: batch scoring end to end through flow + scoring services, against the same work in-process (issue 5).

The work is the digits example's: 1,000,000 rows (`id, p0..p63`, drawn from sklearn's digits with the seed of
examples/digits/train.py) scored by the example's flow: the RandomForest (100 trees, depth 10, random_state 0)
for `label` and `probability` (max of predict_proba), its ONNX export for `onnx_label`, and a constant `scorer`
column. Two pipelines:

- CSV -> CSV: a file source and a file sink (examples/digits as it is, its models pointing at artifacts
  trained here);
- PostgreSQL -> PostgreSQL: the same rows in a table, read with `SELECT ... ORDER BY id` through the flow's
  server-side cursor, written with COPY into a table created from the schema.

Each runs as real processes: `modelops scoring-service` per model (started and ready first) and `modelops flow`.
The figure is rows / wall time of the flow process (its start to its exit: reading, scoring, writing, the final
fsync and rename; the services' start-up is not counted). The flow's own figure (from its first read) is shown
too. In the same run, the same work in-process, in a child process of its own: pyarrow reads the CSV (or
`COPY (SELECT ...) TO STDOUT` into pyarrow), `predict_proba` of the forest, the ONNX session (default threads),
pyarrow writes the CSV (or `COPY ... FROM STDIN`). Target: the flow at least 0.5x of in-process.

Peak memory is each process's maximum resident set size (`VmHWM`, read until it exits): the flow, each scoring
service, the in-process run. Outputs are checked: as many rows as the input, ids in order, and the predictions
of the first 20,000 rows equal to in-process ones.

Usage:
    .venv/bin/python bench/batch_scoring.py [--rows N] [--rounds N] [--skip-pg] [--workdir DIR]
Run it with no test suite or other benchmark going: the load average is printed. Nothing fails on a slow
figure (benchmarks report, they do not gate).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "digits"
MODELOPS = str(Path(sys.executable).with_name("modelops"))
PG_ADMIN = os.environ.get("MODELOPS_BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
PIXELS = [f"p{i}" for i in range(64)]
CHECKED_ROWS = 20_000


@dataclass
class Figure:
    name: str
    rows: int
    seconds: float
    peak_mb: dict[str, float]
    note: str = ""

    @property
    def rate(self) -> float:
        return self.rows / self.seconds if self.seconds else 0.0


# ---------------------------------------------------------------------------------------------- setup


def train(workdir: Path) -> tuple[Path, Path]:
    """The example's forest and its ONNX export (deterministic), trained here so the example is left alone."""
    joblib_path, onnx_path = workdir / "digits-rf.joblib", workdir / "digits-rf.onnx"
    if joblib_path.exists() and onnx_path.exists():
        return joblib_path, onnx_path
    import joblib
    from skl2onnx import to_onnx
    from sklearn.datasets import load_digits
    from sklearn.ensemble import RandomForestClassifier

    digits = load_digits()
    features = digits.data.astype(np.float32)
    forest = RandomForestClassifier(n_estimators=100, max_depth=10, random_state=0, n_jobs=1)
    forest.fit(features, digits.target)
    joblib.dump(forest, joblib_path)
    model = to_onnx(forest, features[:1], options={id(forest): {"zipmap": False}}, target_opset=17)
    graph = model.graph
    old = graph.input[0].name
    graph.input[0].name = "input"
    for node in graph.node:
        node.input[:] = ["input" if name == old else name for name in node.input]
    onnx_path.write_bytes(model.SerializeToString())
    return joblib_path, onnx_path


def make_csv(path: Path, rows: int) -> Path:
    """`rows` rows drawn like examples/digits/train.py does (seed 7)."""
    if path.exists() and sum(1 for _ in path.open("rb")) == rows + 1:
        return path
    from sklearn.datasets import load_digits

    images = load_digits().data.astype(np.int64)
    picks = np.random.default_rng(7).integers(0, len(images), size=rows)
    with path.open("w") as handle:
        handle.write(",".join(["id", *PIXELS]) + "\n")
        for start in range(0, rows, 100_000):
            chunk = picks[start : start + 100_000]
            block = np.hstack([np.arange(start, start + len(chunk)).reshape(-1, 1), images[chunk]])
            np.savetxt(handle, block, fmt="%d", delimiter=",")
    return path


def write_bundle(workdir: Path, joblib_path: Path, onnx_path: Path, channels: dict[str, Any] | None) -> Path:
    """examples/digits with its models pointing at the artifacts trained here (and other channels if given)."""
    import hashlib
    import shutil

    import yaml

    bundle = workdir / ("bundle-csv" if channels is None else "bundle-pg")
    shutil.rmtree(bundle, ignore_errors=True)
    bundle.mkdir(parents=True)
    shutil.copy(EXAMPLE / "pipeline.yaml", bundle / "pipeline.yaml")
    shutil.copytree(EXAMPLE / "flows", bundle / "flows")
    if channels is None:
        shutil.copytree(EXAMPLE / "channels", bundle / "channels")
    else:
        (bundle / "channels.yaml").write_text(yaml.safe_dump_all(list(channels.values()), sort_keys=False))
    models = list(yaml.safe_load_all((EXAMPLE / "models" / "digits-rf.yaml").read_text()))
    for model in models:
        path = joblib_path if model["spec"]["runtime"] == "sklearn" else onnx_path
        model["spec"]["uri"] = path.as_uri()
        model["spec"]["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
    (bundle / "models.yaml").write_text(yaml.safe_dump_all(models, sort_keys=False))
    return bundle


def pg_channels() -> dict[str, Any]:
    import yaml

    docs = {
        name: yaml.safe_load((EXAMPLE / "channels" / f"{name}.yaml").read_text())
        for name in ("digits-in", "digits-out")
    }
    secret = {"secretRef": {"name": "bench-pg", "key": "url"}}
    docs["digits-in"]["spec"].pop("file")
    docs["digits-in"]["spec"]["type"] = "sql"
    docs["digits-in"]["spec"]["sql"] = {"connection": secret, "query": "SELECT * FROM digits ORDER BY id"}
    docs["digits-out"]["spec"].pop("file")
    docs["digits-out"]["spec"]["type"] = "sql"
    docs["digits-out"]["spec"]["sql"] = {"connection": secret, "table": "scored", "createTable": True}
    return docs


def render(bundle: Path, out: Path, params: dict[str, str]) -> Path:
    subprocess.run(
        [
            MODELOPS,
            "ir",
            "render",
            str(bundle),
            "-o",
            str(out),
            *[part for key, value in params.items() for part in ("--param", f"{key}={value}")],
        ],
        check=True,
        capture_output=True,
    )
    return out


def pg_database(csv: Path, rows: int) -> str:
    """A database `modelops_bench` holding `digits` (the CSV's rows); its URL."""
    import psycopg

    name = "modelops_bench"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone():
            conn.execute(f'CREATE DATABASE "{name}"')
    url = PG_ADMIN.rsplit("/", 1)[0] + f"/{name}"
    with psycopg.connect(url, autocommit=True) as conn:
        have = conn.execute("SELECT to_regclass('digits') IS NOT NULL").fetchone()
        count = conn.execute("SELECT count(*) FROM digits").fetchone() if have and have[0] else (0,)
        if not count or count[0] != rows:
            conn.execute("DROP TABLE IF EXISTS digits")
            conn.execute(f"CREATE TABLE digits (id bigint PRIMARY KEY, {', '.join(f'{p} integer' for p in PIXELS)})")
            with (
                conn.cursor().copy("COPY digits FROM STDIN (FORMAT csv, HEADER true)") as copy,
                csv.open("rb") as handle,
            ):
                while data := handle.read(1 << 20):
                    copy.write(data)
            conn.execute("VACUUM ANALYZE digits")
    return url


def reset_output_table(url: str) -> None:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS scored")
        conn.execute("DROP TABLE IF EXISTS scored_inprocess")
        conn.execute("DROP TABLE IF EXISTS modelops_sink_watermarks")


# ---------------------------------------------------------------------------------------------- processes


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def hwm_mb(pid: int) -> float | None:
    """VmHWM (peak resident set size) of a running process, in MB."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def wait4(proc: subprocess.Popen[bytes], timeout: float) -> tuple[int, float]:
    """Exit code and peak resident memory (MB) of a child.

    The peak is VmHWM read until the process exits (it only grows): `ru_maxrss` from wait4 would not do, since
    Linux carries the parent's resident size over fork and exec into the child's maximum."""
    deadline = time.monotonic() + timeout
    peak = 0.0
    while True:
        seen = hwm_mb(proc.pid)
        if seen is not None:
            peak = max(peak, seen)
        pid, status, _usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            proc.returncode = os.waitstatus_to_exitcode(status)
            return proc.returncode, peak
        if time.monotonic() > deadline:
            proc.kill()
        time.sleep(0.01)


class Services:
    def __init__(self, values: Path, logs: Path) -> None:
        self.values, self.logs = values, logs
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.urls: dict[str, str] = {}

    def __enter__(self) -> Services:
        import httpx

        for name in ("digits-rf", "digits-rf-onnx"):
            port = free_port()
            with (self.logs / f"{name}.log").open("wb") as log:
                self.procs[name] = subprocess.Popen(
                    [MODELOPS, "scoring-service", "--values", str(self.values), "--service", name, "--port", str(port)],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            self.urls[name] = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        for name, url in self.urls.items():
            while True:
                try:
                    if httpx.get(f"{url}/v2/models/{name}/ready", timeout=1, trust_env=False).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline or self.procs[name].poll() is not None:
                    raise SystemExit(f"{name} did not start: see {self.logs / (name + '.log')}")
                time.sleep(0.1)
        return self

    def stop(self) -> dict[str, float]:
        peaks = {}
        for name, proc in self.procs.items():
            proc.send_signal(signal.SIGTERM)
            _, peak = wait4(proc, 30)
            peaks[f"service {name}"] = peak
        self.procs.clear()
        return peaks

    def __exit__(self, *_: object) -> None:
        for proc in self.procs.values():
            proc.kill()
            proc.wait()


def run_flow(values: Path, urls: dict[str, str], workdir: Path, env: dict[str, str]) -> tuple[float, float, str]:
    """Wall seconds, peak MB and the 'done' line of one flow process."""
    import shutil

    shutil.rmtree(workdir / "ck", ignore_errors=True)  # each run is a new job, not a resumed one
    log = workdir / "flow.log"
    environ = {**os.environ, **env, "MODELOPS_SERVICE_URLS": json.dumps(urls), "PYTHONUNBUFFERED": "1"}
    with log.open("wb") as handle:
        started = time.perf_counter()
        proc = subprocess.Popen(
            [
                MODELOPS,
                "flow",
                "--values",
                str(values),
                "--flow",
                "digits-batch",
                "--checkpoint-dir",
                str(workdir / "ck"),
            ],
            stdout=handle,
            stderr=subprocess.STDOUT,
            env=environ,
            cwd=workdir,
        )
        code, peak = wait4(proc, 3600)
        seconds = time.perf_counter() - started
    text = log.read_text()
    if code != 0:
        raise SystemExit(f"the flow failed ({code}):\n{text[-3000:]}")
    done = next((line for line in text.splitlines() if " done: " in line), "")
    return seconds, peak, done.split(" done: ", 1)[-1]


def run_inprocess(kind: str, workdir: Path, args: list[str]) -> tuple[float, float]:
    """The in-process work in a child process of its own: its wall seconds (printed by it) and peak MB."""
    out = workdir / f"inprocess-{kind}.out"
    with out.open("wb") as handle:
        proc = subprocess.Popen(
            [sys.executable, __file__, "--inprocess", kind, "--workdir", str(workdir), *args], stdout=handle
        )
        code, peak = wait4(proc, 3600)
    output = out.read_text()
    if code != 0:
        raise SystemExit(f"the in-process run failed ({code}): {output}")
    return float(output.strip().splitlines()[-1]), peak


# ---------------------------------------------------------------------------------------------- in-process work


def inprocess(kind: str, workdir: Path, source: str, output: str) -> None:
    """Read, predict with both models, write; print the wall seconds."""
    import io

    import joblib
    import onnxruntime as ort
    import pyarrow as pa
    import pyarrow.csv as pacsv

    forest = joblib.load(workdir / "digits-rf.joblib")
    session = ort.InferenceSession(str(workdir / "digits-rf.onnx"), providers=["CPUExecutionProvider"])
    started = time.perf_counter()
    if kind == "csv":
        table = pacsv.read_csv(source)
    else:
        import psycopg

        buffer = io.BytesIO()
        with (
            psycopg.connect(source) as conn,
            conn.cursor().copy("COPY (SELECT * FROM digits ORDER BY id) TO STDOUT (FORMAT csv, HEADER true)") as copy,
        ):
            for chunk in copy:
                buffer.write(chunk)
        buffer.seek(0)
        table = pacsv.read_csv(buffer)
    features = np.column_stack([table.column(p).to_numpy() for p in PIXELS]).astype(np.float32)
    proba = forest.predict_proba(features)
    out = pa.table(
        {
            "id": table.column("id"),
            "label": forest.classes_[proba.argmax(axis=1)],
            "probability": proba.max(axis=1),
            "onnx_label": session.run(["label"], {"input": features})[0],
            "scorer": pa.array(["digits-example"] * table.num_rows),
        }
    )
    if kind == "csv":
        pacsv.write_csv(out, output)
    else:
        import psycopg

        data = io.BytesIO()
        pacsv.write_csv(out, data, write_options=pacsv.WriteOptions(include_header=False))
        with psycopg.connect(source) as conn:
            conn.execute(
                "CREATE TABLE scored_inprocess (id bigint, label bigint, probability double precision, "
                "onnx_label bigint, scorer text)"
            )
            with conn.cursor().copy("COPY scored_inprocess FROM STDIN (FORMAT csv)") as copy:
                copy.write(data.getvalue())
    print(f"{time.perf_counter() - started:.3f}")


# ---------------------------------------------------------------------------------------------- checks


def check(kind: str, target: str, rows: int, workdir: Path) -> str:
    import joblib
    import onnxruntime as ort
    import pyarrow.csv as pacsv

    if kind == "csv":
        out = pacsv.read_csv(target)
        ids = out.column("id").to_numpy()
        label, prob, onnx_label = (out.column(c).to_numpy() for c in ("label", "probability", "onnx_label"))
    else:
        import psycopg

        with psycopg.connect(target) as conn:
            got = conn.execute("SELECT id, label, probability, onnx_label FROM scored ORDER BY id").fetchall()
        ids, label, prob, onnx_label = (np.array(col) for col in zip(*got, strict=True))
    assert len(ids) == rows, f"{len(ids)} rows written for {rows}"
    assert np.array_equal(ids, np.arange(rows)), "ids out of order, duplicated or lost"
    source = pacsv.read_csv(workdir / "digits.csv")
    features = np.column_stack([source.column(p).to_numpy()[:CHECKED_ROWS] for p in PIXELS]).astype(np.float32)
    forest = joblib.load(workdir / "digits-rf.joblib")
    proba = forest.predict_proba(features)
    session = ort.InferenceSession(str(workdir / "digits-rf.onnx"), providers=["CPUExecutionProvider"])
    n = CHECKED_ROWS
    assert np.array_equal(label[:n], forest.classes_[proba.argmax(axis=1)]), "labels differ from in-process"
    assert np.array_equal(prob[:n], proba.max(axis=1)), "probabilities differ from in-process"
    assert np.array_equal(onnx_label[:n], session.run(["label"], {"input": features})[0]), "ONNX labels differ"
    return f"{rows:,} rows, ids 0..{rows - 1} in order, first {n:,} predictions equal in-process"


# ---------------------------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=1, help="runs of each figure; the best is kept")
    parser.add_argument("--skip-pg", action="store_true")
    parser.add_argument("--workdir", type=Path, default=ROOT / ".bench" / "batch")
    parser.add_argument("--inprocess", choices=["csv", "pg"], help=argparse.SUPPRESS)
    parser.add_argument("--source", help=argparse.SUPPRESS)
    parser.add_argument("--output", help=argparse.SUPPRESS)
    args = parser.parse_args()
    workdir: Path = args.workdir.resolve()
    if args.inprocess:
        inprocess(args.inprocess, workdir, args.source, args.output)
        return
    workdir.mkdir(parents=True, exist_ok=True)
    print(f"python {platform.python_version()}, {os.cpu_count()} cores; load average {os.getloadavg()[0]:.2f}")
    joblib_path, onnx_path = train(workdir)
    csv = make_csv(workdir / "digits.csv", args.rows)
    print(f"input: {csv} ({args.rows:,} rows, {csv.stat().st_size / 1e6:.0f} MB)")
    figures: list[Figure] = []

    def best(run: Any) -> Figure:
        results = [run() for _ in range(args.rounds)]
        return min(results, key=lambda f: f.seconds)

    # CSV -> CSV
    csv_out = workdir / "scored.csv"
    csv_values = render(
        write_bundle(workdir, joblib_path, onnx_path, None),
        workdir / "values-csv.yaml",
        {"input": str(csv), "output": str(csv_out)},
    )

    def flow_csv() -> Figure:
        csv_out.unlink(missing_ok=True)
        with Services(csv_values, workdir) as services:
            seconds, peak, done = run_flow(csv_values, services.urls, workdir, {})
            peaks = {"flow": peak, **services.stop()}
        return Figure("CSV -> CSV, flow + 2 services", args.rows, seconds, peaks, done)

    def inproc_csv() -> Figure:
        seconds, peak = run_inprocess("csv", workdir, ["--source", str(csv), "--output", str(workdir / "inproc.csv")])
        return Figure("CSV -> CSV, in-process", args.rows, seconds, {"in-process": peak})

    figures.append(best(flow_csv))
    print(f"  check: {check('csv', str(csv_out), args.rows, workdir)}")
    figures.append(best(inproc_csv))

    if not args.skip_pg:
        url = pg_database(csv, args.rows)
        pg_values = render(
            write_bundle(workdir, joblib_path, onnx_path, pg_channels()),
            workdir / "values-pg.yaml",
            {"input": "unused", "output": "unused"},
        )

        def flow_pg() -> Figure:
            reset_output_table(url)
            with Services(pg_values, workdir) as services:
                seconds, peak, done = run_flow(pg_values, services.urls, workdir, {"MODELOPS_SECRET_BENCH_PG_URL": url})
                peaks = {"flow": peak, **services.stop()}
            return Figure("PostgreSQL -> PostgreSQL, flow + 2 services", args.rows, seconds, peaks, done)

        def inproc_pg() -> Figure:
            reset_output_table(url)
            seconds, peak = run_inprocess("pg", workdir, ["--source", url])
            return Figure("PostgreSQL -> PostgreSQL, in-process", args.rows, seconds, {"in-process": peak})

        figures.append(best(flow_pg))
        print(f"  check: {check('pg', url, args.rows, workdir)}")
        figures.append(best(inproc_pg))

    print()
    print(f"{'run':<46} {'seconds':>8} {'rows/s':>10}  peak RSS (MB)")
    for figure in figures:
        peaks = ", ".join(f"{k} {v:,.0f}" for k, v in figure.peak_mb.items())
        print(f"{figure.name:<46} {figure.seconds:>8.1f} {figure.rate:>10,.0f}  {peaks}")
    for i in range(0, len(figures), 2):
        flow, local = figures[i], figures[i + 1]
        print(f"{flow.name.split(',')[0]}: flow / in-process = {flow.rate / local.rate:.2f}x (target >= 0.5x)")
        if flow.note:
            print(f"  the flow's own report: {flow.note}")
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    (workdir / "results.json").write_text(json.dumps([{**asdict(f), "rate": f.rate} for f in figures], indent=2))


if __name__ == "__main__":
    main()
