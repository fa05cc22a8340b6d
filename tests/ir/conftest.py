"""Fixtures of the IR tests; the bundle they hand out is described in `bundle_kit`."""

from __future__ import annotations

import pytest
from bundle_kit import BundleData, fresh


@pytest.fixture
def bundle() -> BundleData:
    """A fresh copy of the small valid bundle, to mutate."""
    return fresh()
