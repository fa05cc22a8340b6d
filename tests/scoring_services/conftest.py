"""Fixtures of the scoring-service tests: tiny real models built once per session, a settings factory."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import joblib
import numpy as np
import pytest
from scoring_kit import settings, sha256_of
from sklearn.datasets import load_digits
from sklearn.ensemble import RandomForestClassifier

from scoring_services.settings import ScoringSettings


@dataclass(frozen=True)
class Digits:
    features: np.ndarray  # float32 [n, 64]
    target: np.ndarray
    forest: RandomForestClassifier
    joblib_path: Path
    joblib_sha: str
    onnx_path: Path
    onnx_sha: str


@pytest.fixture(scope="session")
def digits(tmp_path_factory: pytest.TempPathFactory) -> Digits:
    """A 10-tree forest on sklearn's bundled digits, as joblib and as ONNX (skl2onnx, zipmap off)."""
    from skl2onnx import to_onnx

    data = load_digits()
    features = data.data.astype(np.float32)
    forest = RandomForestClassifier(n_estimators=10, max_depth=8, random_state=0, n_jobs=1)
    forest.fit(features, data.target)
    folder = tmp_path_factory.mktemp("digits")
    joblib_path = folder / "digits.joblib"
    joblib.dump(forest, joblib_path)
    onnx_model = to_onnx(forest, features[:1], options={id(forest): {"zipmap": False}}, target_opset=17)
    onnx_path = folder / "digits.onnx"
    onnx_path.write_bytes(onnx_model.SerializeToString())
    return Digits(features, data.target, forest, joblib_path, sha256_of(joblib_path), onnx_path, sha256_of(onnx_path))


@pytest.fixture
def scoring_settings(tmp_path: Path) -> ScoringSettings:
    return settings(tmp_path)
