"""Domain errors that carry the gRPC status code they surface as.

Every layer raises these; only the service layer turns them into gRPC statuses, so a status
code is decided once, where the failure is understood.
"""

from __future__ import annotations

import grpc


class ImagedError(Exception):
    code: grpc.StatusCode = grpc.StatusCode.INTERNAL

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgument(ImagedError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(ImagedError):
    code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(ImagedError):
    code = grpc.StatusCode.ALREADY_EXISTS


class PermissionDenied(ImagedError):
    code = grpc.StatusCode.PERMISSION_DENIED


class Unauthenticated(ImagedError):
    code = grpc.StatusCode.UNAUTHENTICATED


class Unavailable(ImagedError):
    code = grpc.StatusCode.UNAVAILABLE


class DataLoss(ImagedError):
    code = grpc.StatusCode.DATA_LOSS


class FailedPrecondition(ImagedError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class ResourceExhausted(ImagedError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class Unimplemented(ImagedError):
    code = grpc.StatusCode.UNIMPLEMENTED


class DeadlineExceeded(ImagedError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED


class Internal(ImagedError):
    code = grpc.StatusCode.INTERNAL


_BY_CODE: dict[grpc.StatusCode, type[ImagedError]] = {
    cls.code: cls
    for cls in (
        InvalidArgument,
        NotFound,
        AlreadyExists,
        PermissionDenied,
        Unauthenticated,
        Unavailable,
        DataLoss,
        FailedPrecondition,
        ResourceExhausted,
        Unimplemented,
        DeadlineExceeded,
        Internal,
    )
}


def from_code(code: grpc.StatusCode, message: str) -> ImagedError:
    """An error of the class that carries `code` (INTERNAL for codes with no class)."""
    return _BY_CODE.get(code, Internal)(message)


def in_context(e: ImagedError, context: str) -> ImagedError:
    """`e` again, its message led by what was being done: added once, by the layer that knows it
    (Talos's `error pulling image X: ...`), never tested for by the layers above."""
    return type(e)(f"{context}: {e.message}")
