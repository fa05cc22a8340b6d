"""One error body for every failure the API reports, and the handlers that produce it.

Whatever goes wrong, the client gets `{"error": {"code", "message", "details"}}`:

| raised                                  | status | code                                 | details              |
| --------------------------------------- | ------ | ------------------------------------ | -------------------- |
| `SchedulerError` (store, service, auth) | its own| its own                              | an object            |
| `ir.IRValidationError`                  | 422    | `invalid_ir`                         | the list of issues   |
| FastAPI `RequestValidationError`        | 422    | `invalid_request`                    | the list of fields   |
| a JSON body FastAPI cannot decode       | 422    | `invalid_request`                    | the list of fields   |
| Starlette `HTTPException` (404, 405...) | its own| `not_found`, `method_not_allowed`... | an object            |
| anything else                           | 500    | `internal_error` (logged, no trace)  | an object            |

Error bodies are rendered with every non-ASCII character escaped: a message may quote input (a file name,
a parameter name) that holds lone surrogates, which cannot be encoded as UTF-8 but can be escaped in JSON.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping
from http import HTTPStatus
from typing import Any, Final

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

import ir
from scheduler.errors import SchedulerError

__all__ = [
    "ErrorBody",
    "ErrorDetail",
    "PayloadTooLarge",
    "ServiceUnavailable",
    "UnsupportedMediaType",
    "error_response",
    "error_responses",
    "install_error_handlers",
]

log = logging.getLogger(__name__)

_HTTP_CODES: Final = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "invalid_request",
    503: "service_unavailable",
}
_MAX_DETAIL_TEXT: Final = 200


class ErrorDetail(BaseModel):
    """What went wrong: a stable machine-readable `code`, a sentence for people, and structured `details`."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "code": "job_not_found",
                    "message": "no job 3f2b6c1e-8f7d-4c52-9d8e-2a1b0c9d8e7f",
                    "details": {"job_id": "3f2b6c1e-8f7d-4c52-9d8e-2a1b0c9d8e7f"},
                }
            ]
        }
    )

    code: str = Field(description="Stable identifier of the kind of error, e.g. `job_not_found`, `invalid_ir`.")
    message: str = Field(description="Human-readable explanation.")
    details: dict[str, Any] | list[dict[str, Any]] = Field(
        description="Structured context: an object, or for validation errors (`invalid_ir`, `invalid_request`) "
        "the list of every problem with its location."
    )


class ErrorBody(BaseModel):
    """The one body of every error response."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "error": {
                        "code": "invalid_ir",
                        "message": "1 problem found in the IR bundle",
                        "details": [
                            {
                                "file": "flows/score.yaml",
                                "document": "ScoringFlow digits-batch",
                                "path": "spec.steps[0].score.model",
                                "message": "unknown model 'digit-rf' (did you mean 'digits-rf'?)",
                                "line": 9,
                            }
                        ],
                    }
                }
            ]
        }
    )

    error: ErrorDetail


class PayloadTooLarge(SchedulerError):
    """The request body is larger than the endpoint accepts."""

    http_status = 413
    default_code = "payload_too_large"


class UnsupportedMediaType(SchedulerError):
    """The request body's Content-Type is not one the endpoint reads."""

    http_status = 415
    default_code = "unsupported_media_type"


class ServiceUnavailable(SchedulerError):
    """The server is not ready to answer (starting, stopping, or its database is unreachable)."""

    http_status = 503
    default_code = "service_unavailable"


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` entries declaring `ErrorBody` for each status, for the route decorators."""
    return {status: {"model": ErrorBody, "description": HTTPStatus(status).phrase} for status in sorted(set(statuses))}


class _ErrorJSON(JSONResponse):
    def render(self, content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=True, allow_nan=False, separators=(",", ":")).encode("ascii")


def error_response(
    status: int,
    code: str,
    message: str,
    details: Mapping[str, Any] | list[dict[str, Any]] | None = None,
    headers: Mapping[str, str] | None = None,
) -> Response:
    """A response carrying the error body."""
    body = {"error": {"code": code, "message": message, "details": _json_safe(details if details is not None else {})}}
    response_headers = dict(headers or {})
    if status == 401:
        response_headers.setdefault("WWW-Authenticate", 'Bearer realm="modelops"')
    return _ErrorJSON(body, status_code=status, headers=response_headers)


def _json_safe(value: Any, depth: int = 0) -> Any:
    """A copy of `value` made only of JSON types (finite floats, string keys); anything else as its repr."""
    if depth > 16:
        return "..."
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v, depth + 1) for v in value]
    return _short(repr(value))


def _short(text: str) -> str:
    return text if len(text) <= _MAX_DETAIL_TEXT else text[:_MAX_DETAIL_TEXT] + "..."


def _field_errors(exc: RequestValidationError) -> list[dict[str, Any]]:
    """Pydantic's errors as `{loc, message, type}`; the offending input is not echoed back."""
    out: list[dict[str, Any]] = []
    for error in exc.errors():
        loc = [part if isinstance(part, int | str) else str(part) for part in error.get("loc", ())]
        message = str(error.get("msg", "invalid value"))
        ctx = error.get("ctx")
        if isinstance(ctx, Mapping) and error.get("type") == "json_invalid" and "error" in ctx:
            message = f"{message}: {ctx['error']}"
        out.append({"loc": loc, "message": _short(message), "type": str(error.get("type", "value_error"))})
    return out


async def _scheduler_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, SchedulerError)
    if exc.http_status >= 500:
        log.warning("%s %s: %s", request.method, request.url.path, exc.message, exc_info=exc.__cause__ is not None)
    return error_response(exc.http_status, exc.code, exc.message, exc.details, getattr(exc, "headers", None))


async def _ir_error(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ir.IRValidationError)
    count = len(exc.issues)
    return error_response(
        422,
        "invalid_ir",
        f"{count} problem{'s' if count != 1 else ''} found in the IR",
        [issue.as_dict() for issue in exc.issues],
    )


async def _validation_error(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    errors = _field_errors(exc)
    first = errors[0] if errors else None
    where = ".".join(str(part) for part in first["loc"]) if first else "request"
    message = f"invalid request: {where}: {first['message']}" if first else "invalid request"
    if len(errors) > 1:
        message += f" (and {len(errors) - 1} more)"
    return error_response(422, "invalid_request", message, errors)


async def _http_error(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    status = exc.status_code
    if status == 400 and exc.__cause__ is not None:
        # FastAPI's answer to a JSON body it could not even decode (invalid UTF-8, digits beyond Python's
        # int limit, nesting beyond the recursion limit): the same 422 as for any other malformed JSON.
        reason = _short(f"{type(exc.__cause__).__name__}: {exc.__cause__}")
        return error_response(
            422,
            "invalid_request",
            f"invalid request: body: the body is not valid JSON ({reason})",
            [{"loc": ["body"], "message": f"the body is not valid JSON ({reason})", "type": "json_invalid"}],
        )
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = "error"
    code = _HTTP_CODES.get(status, phrase.lower().replace(" ", "_").replace("-", "_"))
    message = exc.detail if isinstance(exc.detail, str) and exc.detail else phrase
    if status == 404 and message == "Not Found":
        message = "no such endpoint"
    elif status == 405 and message == "Method Not Allowed":
        message = "this endpoint does not accept that method"
    headers = dict(exc.headers or {})
    if status < 400:  # pragma: no cover - routes never raise these
        return Response(status_code=status, headers=headers)
    return error_response(status, code, message, {}, headers)


async def _unexpected(request: Request, exc: Exception) -> Response:
    log.error("unhandled error in %s %s", request.method, request.url.path, exc_info=exc)
    return error_response(500, "internal_error", "internal server error: the error is in the server log")


def install_error_handlers(app: FastAPI) -> None:
    """Register the handlers that turn every exception into the error body."""
    app.add_exception_handler(SchedulerError, _scheduler_error)
    app.add_exception_handler(ir.IRValidationError, _ir_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)
