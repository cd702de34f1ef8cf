"""The one table from the trainer's typed errors to gRPC status codes (KServe's pattern). Anything not in it is
a bug: logged in full, answered with a generic INTERNAL that leaks nothing."""

from __future__ import annotations

import functools
import inspect
import logging

import grpc

from ..errors import (
    ConflictError,
    FailedPreconditionError,
    InvalidArgumentError,
    InvalidTransitionError,
    JobNotFoundError,
    LimitExceededError,
    ServiceDrainingError,
    StoredFileNotFoundError,
    TooManyStreamsError,
    TrainerError,
    UnauthenticatedError,
)

logger = logging.getLogger(__name__)

# Most specific first: ServiceDrainingError is a FailedPreconditionError but means UNAVAILABLE.
STATUS_BY_ERROR: tuple[tuple[type[TrainerError], grpc.StatusCode], ...] = (
    (InvalidArgumentError, grpc.StatusCode.INVALID_ARGUMENT),
    (JobNotFoundError, grpc.StatusCode.NOT_FOUND),
    (StoredFileNotFoundError, grpc.StatusCode.NOT_FOUND),
    (LimitExceededError, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (ConflictError, grpc.StatusCode.ABORTED),
    (ServiceDrainingError, grpc.StatusCode.UNAVAILABLE),
    (InvalidTransitionError, grpc.StatusCode.FAILED_PRECONDITION),
    (FailedPreconditionError, grpc.StatusCode.FAILED_PRECONDITION),
    (TooManyStreamsError, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (UnauthenticatedError, grpc.StatusCode.UNAUTHENTICATED),
)


def code_for(error: BaseException) -> grpc.StatusCode | None:
    """The table's code for `error`; None for an error it does not know (a bug)."""
    for error_type, code in STATUS_BY_ERROR:
        if isinstance(error, error_type):
            return code
    return None


def status_for(error: BaseException) -> tuple[grpc.StatusCode, str]:
    if (code := code_for(error)) is not None:
        return code, str(error)
    logger.exception("unhandled error in a gRPC handler", exc_info=error)
    return grpc.StatusCode.INTERNAL, "internal error; the trainer's log has the details"


def grpc_errors(handler):
    """Decorates an async (grpc.aio) servicer method, unary or streaming, so errors leave through `status_for`.
    An abort the handler made itself passes through untouched."""
    if inspect.isasyncgenfunction(handler):
        @functools.wraps(handler)
        async def async_streaming(self, request, context):
            try:
                async for response in handler(self, request, context):
                    yield response
            except grpc.aio.AbortError:
                raise
            except Exception as error:  # noqa: BLE001 - the table decides
                await context.abort(*status_for(error))
        return async_streaming

    if inspect.iscoroutinefunction(handler):
        @functools.wraps(handler)
        async def async_unary(self, request, context):
            try:
                return await handler(self, request, context)
            except grpc.aio.AbortError:
                raise
            except Exception as error:  # noqa: BLE001 - the table decides
                await context.abort(*status_for(error))
        return async_unary

    raise TypeError(f"{handler.__qualname__}: gRPC handlers here are async (grpc.aio)")
