"""Train the digits example's models and write their artifacts, their sha256 and a CSV of input data.

Writes, next to this file:
- artifacts/digits-rf.joblib: a RandomForest (100 trees, depth 10) on sklearn's bundled digits data;
- artifacts/digits-rf.onnx: the same forest exported with skl2onnx (zipmap off: plain label + probabilities);
- the sha256 of each artifact, into models/digits-rf.yaml (the IR refuses to unpickle without it);
- data/digits.csv: `--rows` rows (id, p0..p63) drawn from the digits images, for the batch job.

Usage: python examples/digits/train.py [--rows N]
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import re
import time
from pathlib import Path

import joblib
import numpy as np
from sklearn.datasets import load_digits
from sklearn.ensemble import RandomForestClassifier

HERE = Path(__file__).resolve().parent
MODELS_YAML = HERE / "models" / "digits-rf.yaml"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_sha256(model_name: str, sha: str) -> None:
    """Rewrite `sha256:` of the Model document named `model_name` in models/digits-rf.yaml."""
    text = MODELS_YAML.read_text()
    pattern = re.compile(rf"(name: {re.escape(model_name)}\n(?:.*\n)*?  sha256: )[0-9a-f]+", re.MULTILINE)
    new, count = pattern.subn(lambda m: m.group(1) + sha, text, count=1)
    if count != 1:
        raise SystemExit(f"{MODELS_YAML}: no sha256 line found for model {model_name}")
    MODELS_YAML.write_text(new)


def write_csv(path: Path, images: np.ndarray, rows: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(7)
    picks = rng.integers(0, len(images), size=rows)
    header = ["id", *(f"p{i}" for i in range(images.shape[1]))]
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        block = 50_000
        for start in range(0, rows, block):
            chunk = picks[start : start + block]
            ids = np.arange(start, start + len(chunk)).reshape(-1, 1)
            writer.writerows(np.hstack([ids, images[chunk].astype(np.int64)]).tolist())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=10_000, help="rows of input data to write (default 10000)")
    args = parser.parse_args()

    started = time.perf_counter()
    digits = load_digits()
    features = digits.data.astype(np.float32)
    forest = RandomForestClassifier(n_estimators=100, max_depth=10, random_state=0, n_jobs=1)
    forest.fit(features, digits.target)
    print(
        f"trained RandomForest (100 trees, depth 10) on {len(features)} digits in {time.perf_counter() - started:.1f}s"
    )

    artifacts = HERE / "artifacts"
    artifacts.mkdir(exist_ok=True)
    joblib_path = artifacts / "digits-rf.joblib"
    joblib.dump(forest, joblib_path)

    from skl2onnx import to_onnx

    onnx_model = to_onnx(
        forest,
        features[:1],
        options={id(forest): {"zipmap": False}},
        target_opset=17,
        initial_types=None,
    )
    # skl2onnx names the input "X"; the IR declares "input": rename it in the graph.
    graph = onnx_model.graph
    old_name = graph.input[0].name
    graph.input[0].name = "input"
    for node in graph.node:
        node.input[:] = ["input" if name == old_name else name for name in node.input]
    onnx_path = artifacts / "digits-rf.onnx"
    onnx_path.write_bytes(onnx_model.SerializeToString())

    for name, path in (("digits-rf", joblib_path), ("digits-rf-onnx", onnx_path)):
        sha = sha256_of(path)
        write_sha256(name, sha)
        print(f"wrote {path.relative_to(HERE)} ({path.stat().st_size / 1e6:.1f} MB) sha256 {sha}")

    csv_path = HERE / "data" / "digits.csv"
    write_csv(csv_path, digits.data, args.rows)
    print(f"wrote {csv_path.relative_to(HERE)} ({args.rows} rows)")


if __name__ == "__main__":
    main()
