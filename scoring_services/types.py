"""Plain data shared by the layers: tensor signatures, model configurations, one batch of inputs.

These are small frozen dataclasses rather than pydantic models: they sit on the request path, where a
validating constructor per request would cost more than the rest of the work for a single-row request. The
IR (`ir.models.ModelSpec`) is validated once, at startup, and converted into a `ModelConfig` here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

Array = npt.NDArray[Any]
Scalar = bool | int | float | str


@dataclass(frozen=True, slots=True)
class TensorSpec:
    """A named input or output in Open Inference Protocol terms; -1 is a variable dimension."""

    name: str
    datatype: str
    shape: tuple[int, ...]

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}


@dataclass(frozen=True, slots=True)
class BatchingConfig:
    enabled: bool = True
    max_batch_size: int = 64
    max_latency_ms: float = 5.0


@dataclass(frozen=True, slots=True)
class ModelConfig:
    """Everything needed to load and serve one model, whether it came from the IR or the command line."""

    name: str
    runtime: str
    uri: str
    sha256: str | None = None
    version: str = "1"
    inputs: tuple[TensorSpec, ...] = ()
    outputs: tuple[TensorSpec, ...] = ()
    options: Mapping[str, Scalar] = field(default_factory=dict)
    batching: BatchingConfig = field(default_factory=BatchingConfig)
    credentials: str | None = None
    """The Secret a model store (s3://, models:/) reads its endpoint and credentials from (`stores.secrets`)."""


@dataclass(slots=True)
class Batch:
    """What a runtime's `predict` receives: inputs by the runtime's own names, rows along axis 0.

    `outputs` names the outputs some request in the batch asked for (a runtime may skip the others);
    `parameters` are the request-level parameters the requests of the batch share.
    """

    inputs: dict[str, Array]
    outputs: frozenset[str]
    parameters: Mapping[str, Any] = field(default_factory=dict)

    @property
    def rows(self) -> int:
        for array in self.inputs.values():
            return int(array.shape[0]) if array.ndim else 1
        return 0


def as_array(value: Any) -> Array:
    """A runtime's output as a numpy array (lists and scalars included)."""
    if isinstance(value, np.ndarray):
        return value
    return np.asarray(value)
