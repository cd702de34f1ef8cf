"""Typed errors of the trainer client, one class per gRPC status code (as the OpenAI SDK has one per HTTP status).

Every error carries the status `code` and the trainer's one-line `details`; `str(error)` reads
`NOT_FOUND: no fine-tuning job 'ftjob-x'`."""

from __future__ import annotations

import grpc


class TrainerError(Exception):
    """Base class of everything the client raises for the trainer's answers."""

    code: grpc.StatusCode | None = None

    def __init__(self, details: str, *, code: grpc.StatusCode | None = None):
        self.details = details
        if code is not None:
            self.code = code
        super().__init__(f"{self.code.name}: {details}" if self.code else details)


class InvalidArgumentError(TrainerError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFoundError(TrainerError):
    code = grpc.StatusCode.NOT_FOUND


class AlreadyExistsError(TrainerError):
    code = grpc.StatusCode.ALREADY_EXISTS


class FailedPreconditionError(TrainerError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class ResourceExhaustedError(TrainerError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class AuthenticationError(TrainerError):
    code = grpc.StatusCode.UNAUTHENTICATED


class PermissionDeniedError(TrainerError):
    code = grpc.StatusCode.PERMISSION_DENIED


class UnavailableError(TrainerError):
    """The trainer is unreachable or draining; retrying later (or on another replica) may work."""

    code = grpc.StatusCode.UNAVAILABLE


class DeadlineExceededError(TrainerError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED


class DataLossError(TrainerError):
    """Bytes arrived that do not match their sha256 (raised by the client itself for downloads)."""

    code = grpc.StatusCode.DATA_LOSS


class InternalError(TrainerError):
    code = grpc.StatusCode.INTERNAL


_BY_CODE = {cls.code: cls for cls in (
    InvalidArgumentError, NotFoundError, AlreadyExistsError, FailedPreconditionError, ResourceExhaustedError,
    AuthenticationError, PermissionDeniedError, UnavailableError, DeadlineExceededError, DataLossError,
    InternalError)}


def from_rpc_error(error: grpc.RpcError) -> TrainerError:
    """The typed error for a failed call; codes without a class of their own keep theirs on a TrainerError."""
    code, details = error.code(), error.details() or ""
    cls = _BY_CODE.get(code)
    return cls(details) if cls else TrainerError(details, code=code)
