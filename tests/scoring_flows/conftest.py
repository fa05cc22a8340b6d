"""Fixtures of the flow tests: the digits models (trained once), their scoring services (started once)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from flow_kit import (
    IN_FIELDS,
    OUT_FIELDS,
    Digits,
    Services,
    channel,
    render_values,
    services,
    train_digits,
    write_bundle,
)


@pytest.fixture(scope="session")
def digits(tmp_path_factory: pytest.TempPathFactory) -> Digits:
    return train_digits(tmp_path_factory.mktemp("digits-models"))


@pytest.fixture(scope="session")
def digits_services(digits: Digits, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Services]:
    """Both digits models served by real scoring-service processes for the whole session."""
    folder = tmp_path_factory.mktemp("digits-services")
    bundle = write_bundle(
        folder / "bundle",
        digits,
        channels={
            "in": channel("source", "file", {"path": "in.csv", "format": "csv"}, IN_FIELDS),
            "out": channel("sink", "file", {"path": "out.csv", "format": "csv"}, OUT_FIELDS),
        },
    )
    values = render_values(bundle, folder / "values.yaml")
    with services(values, ["digits-rf", "digits-rf-onnx"], folder / "logs") as running:
        yield running


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    folder = tmp_path / "work"
    folder.mkdir()
    return folder
