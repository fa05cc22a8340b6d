"""Check a scored digits output against in-process predictions of the same models.

Usage: python examples/digits/check.py INPUT.csv SCORED.csv

Exits 1 when the row counts differ, an id is missing or repeated, or a label differs from what the
sklearn forest (and its ONNX export) predict in this process.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import joblib
import numpy as np
import onnxruntime as ort
import pyarrow.compute as pc
import pyarrow.csv as pacsv

HERE = Path(__file__).resolve().parent


def main() -> int:
    if len(sys.argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    source, scored = Path(sys.argv[1]), Path(sys.argv[2])
    started = time.perf_counter()
    inputs = pacsv.read_csv(source).sort_by("id")
    output = pacsv.read_csv(scored).sort_by("id")
    if inputs.num_rows != output.num_rows:
        print(f"error: {source} has {inputs.num_rows:,} rows but {scored} has {output.num_rows:,}", file=sys.stderr)
        return 1
    if not pc.all(pc.equal(inputs.column("id"), output.column("id"))).as_py():
        print(f"error: the ids of {scored} are not those of {source} (missing or duplicated rows)", file=sys.stderr)
        return 1
    features = np.column_stack([inputs.column(f"p{i}").to_numpy() for i in range(64)]).astype(np.float32)
    forest = joblib.load(HERE / "artifacts" / "digits-rf.joblib")
    expected = forest.predict(features)
    session = ort.InferenceSession(str(HERE / "artifacts" / "digits-rf.onnx"), providers=["CPUExecutionProvider"])
    expected_onnx = session.run(["label"], {"input": features})[0]
    for column, want in (("label", expected), ("onnx_label", expected_onnx)):
        got = output.column(column).to_numpy()
        wrong = int(np.count_nonzero(got != want))
        if wrong:
            print(
                f"error: {wrong:,} of {len(want):,} '{column}' values differ from in-process predictions",
                file=sys.stderr,
            )
            return 1
    took = time.perf_counter() - started
    print(
        f"checked {output.num_rows:,} rows: same ids as the input, labels equal to in-process predictions ({took:.1f}s)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
