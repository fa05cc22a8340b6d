"""The scoring service's one error base: each error carries its HTTP status, and the app has one handler.

The Open Inference Protocol fixes the error body as `{"error": "<message>"}` (KServe V2, Triton and MLServer
clients parse exactly that), so unlike the scheduler's `{"error": {"code", "message", "details"}}` the body is a
string; the location of what was wrong (input name, dimension, byte offset) is written into the message.
Third-party exceptions (onnxruntime, torch, pickle, py4j) are wrapped in one of these with the cause chained.
"""

from __future__ import annotations

from typing import ClassVar


class ScoringError(Exception):
    """Base of every error a scoring service reports."""

    http_status: ClassVar[int] = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidRequest(ScoringError):
    """Malformed body, unknown or missing input, wrong datatype or shape, unknown output, bad parameter."""

    http_status = 400


class ModelNotFound(ScoringError):
    """No model (or no such version of it) is configured under that name."""

    http_status = 404


class MethodNotAllowed(ScoringError):
    http_status = 405


class PayloadTooLarge(ScoringError):
    http_status = 413


class ModelNotReady(ScoringError):
    """The model is configured but not loaded (loading, unloaded, or its load failed)."""

    http_status = 503


class ModelLoadError(ScoringError):
    """A model could not be loaded: missing artifact, sha256 mismatch, unsupported format, bad signature."""

    http_status = 400


class InferenceError(ScoringError):
    """The model failed on an input that passed the protocol checks (a bug or a model/IR mismatch)."""

    http_status = 500
