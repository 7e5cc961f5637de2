"""The platform's one error vocabulary.

Service cores raise these; `services.common.rpc` maps them to gRPC status codes (with the
OpenAI error code and parameter in trailing metadata), and the edge maps gRPC status back to
HTTP status and the OpenAI error envelope.
"""

from __future__ import annotations

import grpc

# Trailing-metadata keys that carry the OpenAI `code` and `param` next to the gRPC status.
ERROR_CODE_KEY = "x-error-code"
ERROR_PARAM_KEY = "x-error-param"


class ServiceError(Exception):
    """A failure whose meaning is part of a service's contract."""

    grpc_code: grpc.StatusCode = grpc.StatusCode.INTERNAL

    def __init__(self, message: str, *, code: str | None = None, param: str | None = None):
        super().__init__(message)
        self.message = message
        self.code = code
        self.param = param


class InvalidArgument(ServiceError):
    grpc_code = grpc.StatusCode.INVALID_ARGUMENT


class ContextLengthExceeded(InvalidArgument):
    def __init__(self, message: str, param: str = "messages"):
        super().__init__(message, code="context_length_exceeded", param=param)


class NotFound(ServiceError):
    grpc_code = grpc.StatusCode.NOT_FOUND


class ModelNotFound(NotFound):
    def __init__(self, model: str):
        super().__init__(
            f"The model `{model}` does not exist.", code="model_not_found", param="model"
        )


class AlreadyExists(ServiceError):
    grpc_code = grpc.StatusCode.ALREADY_EXISTS


class FailedPrecondition(ServiceError):
    grpc_code = grpc.StatusCode.FAILED_PRECONDITION


class ResourceExhausted(ServiceError):
    grpc_code = grpc.StatusCode.RESOURCE_EXHAUSTED

    def __init__(self, message: str, *, retry_after_s: float = 1.0, **kwargs):
        super().__init__(message, **kwargs)
        self.retry_after_s = retry_after_s


class Unavailable(ServiceError):
    grpc_code = grpc.StatusCode.UNAVAILABLE


class Unauthenticated(ServiceError):
    grpc_code = grpc.StatusCode.UNAUTHENTICATED


class PermissionDenied(ServiceError):
    grpc_code = grpc.StatusCode.PERMISSION_DENIED


class DeadlineExceeded(ServiceError):
    grpc_code = grpc.StatusCode.DEADLINE_EXCEEDED


class Cancelled(ServiceError):
    grpc_code = grpc.StatusCode.CANCELLED


class Internal(ServiceError):
    grpc_code = grpc.StatusCode.INTERNAL


_BY_GRPC_CODE: dict[grpc.StatusCode, type[ServiceError]] = {
    cls.grpc_code: cls
    for cls in (
        InvalidArgument,
        NotFound,
        AlreadyExists,
        FailedPrecondition,
        ResourceExhausted,
        Unavailable,
        Unauthenticated,
        PermissionDenied,
        DeadlineExceeded,
        Cancelled,
        Internal,
    )
}


def from_rpc_error(error: grpc.aio.AioRpcError) -> ServiceError:
    """Rebuilds the domain error a peer service raised from its gRPC status."""
    metadata = {key: value for key, value in (error.trailing_metadata() or ())}
    cls = _BY_GRPC_CODE.get(error.code(), Internal)
    message = error.details() or error.code().name.lower()
    if cls is Unavailable and error.code() is grpc.StatusCode.UNAVAILABLE:
        message = "A backend service is unavailable; try again shortly."
    return cls(message, code=metadata.get(ERROR_CODE_KEY), param=metadata.get(ERROR_PARAM_KEY))
