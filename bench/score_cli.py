"""Benchmark: `modelops score model.joblib data.csv -o out.csv` against pandas in one process (issue 13).

A data scientist's two ways to get scored rows from a trained model and a CSV:

- `modelops score MODEL DATA -o OUT`: scaffolds a pipeline into a temporary folder (`modelops init`), starts
  the embedded scheduler (SQLite + local backend), which starts a scoring service and a flow as processes, and
  follows the job to its end;
- the peer: `python -c 'pd.read_csv -> predict_proba -> to_csv'`, one process, the whole file in memory.

The model and data are not the examples': a `HistGradientBoostingClassifier` (50 iterations, 3 classes) fitted
on a pandas DataFrame of 30 float features `f0..f29` (so it carries `feature_names_in_`), and a CSV of `id` +
those 30 columns (6 decimals) drawn from the same distribution. Figures, for each tool, from the command's
start:

- first row: when the output (`OUT`, or the sink's `OUT.partial` while it is being written) first holds a
  scored data row (polled every 5 ms);
- total: the command's exit; rows/s = rows / total;
- peak memory: the process tree's largest resident set (`VmHWM` of each process, summed over the live tree).

Outputs are checked: as many rows as the input, and the labels of the first 10,000 rows equal to in-process
`predict`. Both commands run as child processes of this script, one after the other, twice (the better run of
each is reported, and both are printed).

Usage:
    .venv/bin/python bench/score_cli.py [--rows N] [--rounds N] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
MODELOPS = str(Path(sys.executable).with_name("modelops"))
FEATURES = [f"f{i}" for i in range(30)]
CHECKED_ROWS = 10_000

PANDAS_SCRIPT = """
import sys, joblib, pandas as pd
model_path, data, out = sys.argv[1:4]
model = joblib.load(model_path)
frame = pd.read_csv(data)
proba = model.predict_proba(frame[model.feature_names_in_])
frame_out = pd.DataFrame({"id": frame["id"], "label": model.classes_[proba.argmax(axis=1)],
                          "probability": proba.max(axis=1)})
frame_out.to_csv(out, index=False)
"""


@dataclass
class Run:
    tool: str
    first_row_s: float
    total_s: float
    rows: int
    peak_mb: float
    exit_code: int

    @property
    def rate(self) -> float:
        return self.rows / self.total_s


def make_data(workdir: Path, rows: int) -> tuple[Path, Path]:
    import joblib
    import pandas as pd
    from sklearn.datasets import make_classification
    from sklearn.ensemble import HistGradientBoostingClassifier

    features, labels = make_classification(
        n_samples=20_000 + rows, n_features=len(FEATURES), n_informative=12, n_classes=3, random_state=7
    )
    train = pd.DataFrame(features[:20_000], columns=FEATURES)
    model = HistGradientBoostingClassifier(max_iter=50, random_state=0).fit(train, labels[:20_000])
    model_path = workdir / "model.joblib"
    joblib.dump(model, model_path)
    data = pd.DataFrame(features[20_000:], columns=FEATURES)
    data.insert(0, "id", np.arange(rows, dtype=np.int64))
    csv = workdir / "data.csv"
    data.to_csv(csv, index=False, float_format="%.6f")
    return model_path, csv


def _tree_rss_kb(root: int) -> int:
    """Summed VmHWM of `root` and its live descendants (from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(parent, []).append(int(entry.name))
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        todo.extend(children.get(pid, []))
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total


def _has_a_row(out: Path) -> bool:
    for candidate in (out, out.with_name(out.name + ".partial")):
        try:
            with candidate.open("rb") as handle:
                head = handle.read(1 << 16)
        except OSError:
            continue
        if head.count(b"\n") >= 2:
            return True
    return False


def timed(tool: str, argv: list[str], out: Path, rows: int, cwd: Path) -> Run:
    out.unlink(missing_ok=True)
    started = time.perf_counter()
    process = subprocess.Popen(argv, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    first_row = float("nan")
    peak_kb = 0
    while process.poll() is None:
        if first_row != first_row and _has_a_row(out):
            first_row = time.perf_counter() - started
        peak_kb = max(peak_kb, _tree_rss_kb(process.pid))
        time.sleep(0.005)
    total = time.perf_counter() - started
    if first_row != first_row and _has_a_row(out):
        first_row = total
    stderr = process.stderr.read().decode(errors="replace") if process.stderr else ""
    if process.returncode != 0:
        print(f"{tool} exited with {process.returncode}:\n{stderr[-4000:]}", file=sys.stderr)
    return Run(tool, first_row, total, rows, peak_kb / 1024, process.returncode)


def check(out: Path, model_path: Path, csv: Path, rows: int) -> None:
    import joblib
    import pandas as pd

    scored = pd.read_csv(out)
    if len(scored) != rows:
        raise SystemExit(f"{out}: {len(scored)} rows, expected {rows}")
    head = pd.read_csv(csv, nrows=CHECKED_ROWS)
    model = joblib.load(model_path)
    expected = model.predict(head[FEATURES])
    got = scored.sort_values("id")["label"].to_numpy()[:CHECKED_ROWS]
    if not np.array_equal(expected, got):
        raise SystemExit(f"{out}: labels differ from in-process predict on the first {CHECKED_ROWS} rows")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench-score-"))
    workdir.mkdir(parents=True, exist_ok=True)
    print(f"data: {args.rows:,} rows x {len(FEATURES)} float features + id, in {workdir}", flush=True)
    model_path, csv = make_data(workdir, args.rows)
    print(f"data.csv: {csv.stat().st_size / 2**20:.0f} MiB", flush=True)
    env_home = workdir / "home"
    runs: list[Run] = []
    for round_no in range(args.rounds):
        shutil.rmtree(env_home, ignore_errors=True)
        out = workdir / "out-modelops.csv"
        argv = [MODELOPS, "score", str(model_path), str(csv), "-o", str(out)]
        os.environ["MODELOPS_HOME"] = str(env_home)
        run = timed("modelops score", argv, out, args.rows, workdir)
        if run.exit_code == 0:
            check(out, model_path, csv, args.rows)
        runs.append(run)
        out = workdir / "out-pandas.csv"
        run = timed(
            "pandas in-process",
            [sys.executable, "-c", PANDAS_SCRIPT, str(model_path), str(csv), str(out)],
            out,
            args.rows,
            workdir,
        )
        if run.exit_code == 0:
            check(out, model_path, csv, args.rows)
        runs.append(run)
        print(f"round {round_no + 1}: " + "; ".join(f"{r.tool} {r.total_s:.1f} s" for r in runs[-2:]), flush=True)

    load = " ".join(f"{x:.2f}" for x in os.getloadavg()[:2])
    print()
    print(f"{args.rows:,} rows, python {platform.python_version()}, {os.cpu_count()} cores, load average {load}")
    print(f"{'tool':<20} {'first row':>10} {'total':>9} {'rows/s':>10} {'peak MB':>8}")
    for run in runs:
        print(f"{run.tool:<20} {run.first_row_s:>8.2f} s {run.total_s:>7.2f} s {run.rate:>10,.0f} {run.peak_mb:>8.0f}")
    best = {
        tool: min((r for r in runs if r.tool == tool and r.exit_code == 0), key=lambda r: r.total_s, default=None)
        for tool in ("modelops score", "pandas in-process")
    }
    ours, peer = best["modelops score"], best["pandas in-process"]
    if ours and peer:
        print(
            f"\nbest runs: modelops score {ours.rate:,.0f} rows/s, pandas {peer.rate:,.0f} rows/s: "
            f"{ours.rate / peer.rate:.2f}x; first row {ours.first_row_s:.2f} s against {peer.first_row_s:.2f} s"
        )


if __name__ == "__main__":
    main()
