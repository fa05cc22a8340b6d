"""scikit-learn runtime: a joblib or pickle artifact, verified against its sha256 before it is unpickled.

Outputs are `predict` and, where the estimator has it, `predict_proba`. Only the outputs some request asked
for are computed. When both are asked (a request without `outputs` asks for both), `predict` is taken from
`predict_proba` (the class of the highest probability, as sklearn's classifiers compute it) instead of running
the model twice: for a forest by construction, for any other classifier when that gives `model.predict`'s
answers at load on probe rows (at three scales, 193 rows; an estimator that cannot take them, or whose
`predict` is not that argmax, as an SVC with Platt-scaled probabilities, keeps the two calls). Option
`predictFromProba: false` always makes the two calls.

Forest classifiers (RandomForest, ExtraTrees) with `n_jobs` 1 get their probabilities summed over the trees
here, in tree order, as `ForestClassifier.predict_proba` does with one job, but without its joblib dispatch
and per-tree input checks (~0.2 ms per tree whatever the batch size on a busy 2-core machine: 20 ms per call
for a 100-tree forest against about 1 ms of tree walking for a 16-row batch): each tree's `apply` (the leaf
of every row) indexes a table of its leaf values. At load the fast path is checked against `predict_proba`
on probe rows and kept only if the answers are bit-identical. Option `fastForest: false` turns it off.

Multi-class gradient boosting (GradientBoostingClassifier, 3 classes or more) gets its probabilities with
sklearn's own tree walk (`predict_stages`), but without working out the initial prediction again for every
row (a prior, the same for all rows: computed once at load) and with the softmax taken column by column
(numpy's row-wise max over 3 values costs more than the exp): 12% less per 1000-row call. Checked at load
against `predict_proba` on probe rows and kept only if bit-identical; option `fastBoosting: false` turns it off.

Several declared inputs (one per feature, shape [-1] or [-1, k]) are stacked into one matrix in declared order.

Options: `nJobs` (int) sets the estimator's `n_jobs` when it has one (default: left as trained);
`fastForest`, `fastBoosting` and `predictFromProba` (bools, default true), see above. The option `processes`
(any runtime, see `runtimes.processes`) suits models whose calls hold the GIL, as gradient boosting does.
"""

from __future__ import annotations

import io
import logging
import warnings
from collections.abc import Mapping
from functools import reduce
from typing import Any

import joblib
import numpy as np
from sklearn.ensemble import GradientBoostingClassifier
from sklearn.ensemble._forest import ForestClassifier
from sklearn.ensemble._gradient_boosting import predict_stages
from sklearn.utils.validation import validate_data

from scoring_services.artifacts import read_verified
from scoring_services.codecs import datatype_of
from scoring_services.errors import ModelLoadError
from scoring_services.runtimes.base import ModelRuntime, option
from scoring_services.types import Array, Batch, TensorSpec

__all__ = ["SklearnRuntime"]

log = logging.getLogger(__name__)


class SklearnRuntime(ModelRuntime):
    name = "sklearn"
    requires_sha256 = True

    def _load(self) -> None:
        if not self.path.is_file():
            raise ModelLoadError(f"model '{self.config.name}': {self.path} is not a file")
        data = read_verified(self.path, self.config.sha256)
        try:
            model = joblib.load(io.BytesIO(data))
        except Exception as exc:  # unpickling can raise anything
            raise ModelLoadError(f"model '{self.config.name}': cannot unpickle {self.path.name}: {exc}") from exc
        if not hasattr(model, "predict"):
            raise ModelLoadError(f"model '{self.config.name}': {type(model).__name__} has no predict method")
        jobs = option(self.config, "nJobs", 0, int)
        if jobs and hasattr(model, "n_jobs"):
            model.n_jobs = jobs
        self.model: Any = model
        self._stack = len(self.config.inputs) > 1
        width = getattr(model, "n_features_in_", None)
        if not self._stack:
            self.inputs = (TensorSpec("input", "FP64", (-1, int(width) if width else -1)),)
        classes = getattr(model, "classes_", None)
        predict_type = "FP64"
        if isinstance(classes, np.ndarray) and classes.ndim == 1:
            predict_type = datatype_of(classes.dtype)
        outputs = [TensorSpec("predict", predict_type, (-1,))]
        self._has_proba = hasattr(model, "predict_proba") and isinstance(classes, np.ndarray) and classes.ndim == 1
        if self._has_proba:
            outputs.append(TensorSpec("predict_proba", "FP64", (-1, len(classes))))  # type: ignore[arg-type]
        self.outputs = tuple(outputs)
        forest = isinstance(model, ForestClassifier) and getattr(model, "n_outputs_", 1) == 1
        self._predict_from_proba = (
            self._has_proba
            and option(self.config, "predictFromProba", True, bool)
            and ((forest and type(model).predict is ForestClassifier.predict) or self._argmax_is_predict())
        )
        self._fast_forest = (
            self._has_proba
            and forest
            and type(model).predict_proba is ForestClassifier.predict_proba
            and getattr(model, "n_jobs", None) in (None, 1)
            and option(self.config, "fastForest", True, bool)
        )
        if self._fast_forest:
            self._prepare_forest()
        self._fast_boosting = (
            self._has_proba
            and type(model).predict_proba is GradientBoostingClassifier.predict_proba
            and type(model)._raw_predict is GradientBoostingClassifier._raw_predict
            and len(classes) >= 3  # type: ignore[arg-type]
            and option(self.config, "fastBoosting", True, bool)
        )
        if self._fast_boosting:
            self._prepare_boosting()

    def _features(self, batch: Batch) -> Array:
        if not self._stack:
            return next(iter(batch.inputs.values()))
        columns = [batch.inputs[spec.name] for spec in self.config.inputs]
        return np.column_stack([c.reshape(c.shape[0], -1) for c in columns])

    def _predict(self, batch: Batch) -> Mapping[str, Any]:
        features = self._features(batch)
        wanted = batch.outputs
        result: dict[str, Any] = {}
        if "predict_proba" in wanted and self._has_proba:
            if self._fast_forest:
                proba = self._forest_proba(features)
            elif self._fast_boosting:
                proba = self._boosting_proba(features)
            else:
                proba = self.model.predict_proba(features)
            result["predict_proba"] = proba
            if "predict" in wanted and self._predict_from_proba:
                result["predict"] = self.model.classes_.take(np.argmax(proba, axis=1), axis=0)
        if "predict" in wanted and "predict" not in result:
            result["predict"] = self.model.predict(features)
        return result

    def _argmax_is_predict(self) -> bool:
        """Whether the class of the highest `predict_proba` is `predict`'s answer on probe rows."""
        model = self.model
        width = int(getattr(model, "n_features_in_", 0) or 0)
        if not width:
            return False
        rng = np.random.default_rng(0)
        probes = np.concatenate([np.zeros((1, width)), *(rng.normal(0.0, s, size=(64, width)) for s in (1, 8, 100))])
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # fitted with feature names, overflow in a link function, ...
                derived = model.classes_.take(np.argmax(model.predict_proba(probes), axis=1), axis=0)
                agrees = bool(np.array_equal(derived, model.predict(probes)))
        except Exception as exc:  # an estimator that cannot take float rows (a pipeline of string encoders, ...)
            log.info("model '%s': predict is not derived from predict_proba (%s)", self.config.name, exc)
            return False
        if not agrees:
            log.info("model '%s': predict is not the argmax of predict_proba; both are computed", self.config.name)
        return agrees

    def _prepare_forest(self) -> None:
        """Leaf-value tables of the trees, kept only if they reproduce `predict_proba` bit for bit on probe rows."""
        model = self.model
        classes = int(model.n_classes_)
        self._tables = [
            (tree.tree_, np.ascontiguousarray(tree.tree_.value[:, 0, :classes], dtype=np.float64))
            for tree in model.estimators_
        ]
        width = int(getattr(model, "n_features_in_", 0))
        if not width:
            self._fast_forest = False
            return
        probes = np.random.default_rng(0).normal(0.0, 8.0, size=(16, width))
        probes[0] = 0.0
        if not np.array_equal(self._forest_proba(probes), model.predict_proba(probes)):
            log.warning("model '%s': the forest fast path disagrees with predict_proba; not using it", self.config.name)
            self._fast_forest = False

    def _forest_proba(self, features: Array) -> Array:
        """`ForestClassifier.predict_proba` with one job, minus joblib (see the module docstring)."""
        checked = self.model._validate_X_predict(features)
        shape = (checked.shape[0], int(self.model.n_classes_))
        proba: Array = np.zeros(shape, dtype=np.float64)
        leaf_values = np.empty(shape, dtype=np.float64)
        for tree, table in self._tables:
            # apply() returns valid node ids, so take() may skip its bounds checks ("clip"): 4x faster than table[ids]
            table.take(tree.apply(checked), axis=0, out=leaf_values, mode="clip")
            np.add(proba, leaf_values, out=proba)
        proba /= len(self._tables)
        return proba

    def _prepare_boosting(self) -> None:
        """The initial raw prediction (one row: the prior), kept only if the fast path is bit-identical."""
        model = self.model
        width = int(getattr(model, "n_features_in_", 0) or 0)
        self._fast_boosting = False
        if not width:
            return
        rng = np.random.default_rng(0)
        probes = np.concatenate([np.zeros((1, width)), *(rng.normal(0.0, s, size=(32, width)) for s in (1, 8, 100))])
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # fitted with feature names, overflow in exp, ...
                init = model._raw_predict_init(np.ascontiguousarray(probes, dtype=np.float32))
                self._init_row = np.ascontiguousarray(init[:1])
                same_init = bool(np.array_equal(init, np.repeat(self._init_row, len(probes), axis=0)))
                self._fast_boosting = same_init and bool(
                    np.array_equal(self._boosting_proba(probes), model.predict_proba(probes))
                )
        except Exception as exc:  # an init estimator that cannot take float rows
            log.info("model '%s': the boosting fast path is off (%s)", self.config.name, exc)
            return
        if not self._fast_boosting:
            log.info("model '%s': the boosting fast path disagrees with predict_proba; not using it", self.config.name)

    def _boosting_proba(self, features: Array) -> Array:
        """`GradientBoostingClassifier.predict_proba` with the prior computed once and a column-wise softmax."""
        model = self.model
        checked = validate_data(model, features, dtype=np.float32, order="C", accept_sparse="csr", reset=False)
        raw: Array = np.repeat(self._init_row, checked.shape[0], axis=0)
        predict_stages(model.estimators_, checked, model.learning_rate, raw)
        columns = [raw[:, k] for k in range(raw.shape[1])]
        raw -= reduce(np.maximum, columns)[:, None]
        np.exp(raw, out=raw)
        total = columns[0] + columns[1]
        for column in columns[2:]:
            total += column
        raw /= total[:, None]
        return raw

    def _unload(self) -> None:
        self.model = None
