"""OpenAI error envelopes: one mapping from the platform's errors to HTTP status and JSON."""

from __future__ import annotations

import json
import logging
import math
import re

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from services.common import errors

logger = logging.getLogger(__name__)

# (HTTP status, OpenAI error type) per domain error; the first matching class wins.
_STATUS = [
    (errors.InvalidArgument, 400, "invalid_request_error"),
    (errors.FailedPrecondition, 400, "invalid_request_error"),
    (errors.Unauthenticated, 401, "authentication_error"),
    (errors.PermissionDenied, 403, "permission_error"),
    (errors.NotFound, 404, "invalid_request_error"),
    (errors.AlreadyExists, 409, "invalid_request_error"),
    (errors.ResourceExhausted, 429, "rate_limit_error"),
    (errors.Cancelled, 499, "invalid_request_error"),
    (errors.Unavailable, 503, "service_unavailable_error"),
    (errors.DeadlineExceeded, 504, "timeout_error"),
]
_HTTP_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
}


def envelope(message: str, type_: str, param: str | None = None, code: str | None = None) -> dict:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def status_and_envelope(error: errors.ServiceError) -> tuple[int, dict]:
    for cls, status, type_ in _STATUS:
        if isinstance(error, cls):
            return status, envelope(error.message, type_, error.param, error.code)
    return 500, envelope("The server had an error while processing your request.", "server_error")


def error_headers(error: errors.ServiceError) -> dict[str, str] | None:
    if isinstance(error, errors.ResourceExhausted):
        return {"Retry-After": str(max(1, math.ceil(error.retry_after_s)))}
    if isinstance(error, errors.Unauthenticated):
        return {"WWW-Authenticate": "Bearer"}
    return None


def sse_error(error: Exception) -> str:
    """The SSE event that reports a failure after a stream has started."""
    if not isinstance(error, errors.ServiceError):
        logger.exception("stream failed", exc_info=error)
        error = errors.Internal("internal error")
    _, body = status_and_envelope(error)
    return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"


# Names pydantic adds to a location for the member of a union it tried (`str`,
# `list[ContentPart]`, `function-after[...]`, a model's class name); never a field of ours.
_UNION_MEMBER = re.compile(r"^(str|int|float|bool|list|dict|none)$|[\[\](),']|^[A-Z]")


def _param_of(location: tuple) -> str | None:
    parts = [
        str(p)
        for p in location
        if p != "body" and not (isinstance(p, str) and _UNION_MEMBER.search(p))
    ]
    return ".".join(parts) or None


def _most_specific(found: list[dict]) -> dict:
    """The error to report. For a union every member fails; the deepest location is the one
    that got furthest (a text part without `text` beats "content is not a string")."""
    return max(found, key=lambda e: len(e.get("loc", ())))


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(errors.ServiceError)
    async def service_error(request: Request, error: errors.ServiceError):
        status, body = status_and_envelope(error)
        if status >= 500:
            logger.warning("%s %s failed: %s", request.method, request.url.path, error.message)
        return JSONResponse(body, status_code=status, headers=error_headers(error))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, error: RequestValidationError):
        first = _most_specific(list(error.errors()))
        param = _param_of(tuple(first.get("loc", ())))
        if first.get("type") == "json_invalid":
            message = f"We could not parse the JSON body of your request: {first.get('msg')}"
            param = None
        else:
            # pydantic prefixes what our validators raise; the client needs only the reason.
            reason = str(first.get("msg", "")).removeprefix("Value error, ")
            message = f"{param}: {reason}" if param else reason
        return JSONResponse(envelope(message, "invalid_request_error", param), status_code=400)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, error: HTTPException):
        status = error.status_code
        message = error.detail if isinstance(error.detail, str) else str(error.detail)
        if status == 404:
            message = f"Unknown route: {request.method} {request.url.path}"
        return JSONResponse(
            envelope(message, _HTTP_TYPES.get(status, "server_error"), code=None),
            status_code=status,
            headers=getattr(error, "headers", None),
        )

    @app.exception_handler(Exception)
    async def unexpected_error(request: Request, error: Exception):
        logger.exception("unhandled error on %s %s", request.method, request.url.path)
        return JSONResponse(
            envelope("The server had an error while processing your request.", "server_error"),
            status_code=500,
        )
