"""The model state table: every transition the repository makes is in it, nothing else is allowed."""

from __future__ import annotations

import pytest

from scoring_services.metrics import ScoringMetrics
from scoring_services.repository import ALLOWED, ModelEntry, ModelState, transition
from scoring_services.types import ModelConfig


def entry() -> ModelEntry:
    return ModelEntry(ModelConfig("m", "onnx", "m.onnx"), ScoringMetrics().model("m"))


def test_a_model_goes_through_loading_ready_and_unloading_back_to_unavailable() -> None:
    model = entry()
    for state in (ModelState.LOADING, ModelState.READY, ModelState.UNLOADING, ModelState.UNAVAILABLE):
        transition(model, state, "why")
        assert (model.state, model.reason) == (state, "why")


def test_a_failed_load_goes_back_to_unavailable() -> None:
    model = entry()
    transition(model, ModelState.LOADING)
    transition(model, ModelState.UNAVAILABLE, "sha256 mismatch")
    assert model.reason == "sha256 mismatch"


@pytest.mark.parametrize("source", list(ModelState))
def test_transitions_outside_the_table_are_refused(source: ModelState) -> None:
    for target in set(ModelState) - ALLOWED[source]:
        model = entry()
        model.state = source
        with pytest.raises(RuntimeError, match="is not a model transition"):
            transition(model, target)
