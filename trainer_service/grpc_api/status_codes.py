"""The one table from the trainer's typed errors to gRPC status codes (KServe's pattern). Anything not in it is
a bug: logged in full, answered with a generic INTERNAL that leaks nothing."""

from __future__ import annotations

import functools
import inspect
import logging

import grpc

from ..errors import (
    FailedPreconditionError,
    InvalidArgumentError,
    InvalidTransitionError,
    JobNotFoundError,
    ServiceDrainingError,
    TrainerError,
)

logger = logging.getLogger(__name__)

# Most specific first: ServiceDrainingError is a FailedPreconditionError but means UNAVAILABLE.
STATUS_BY_ERROR: tuple[tuple[type[TrainerError], grpc.StatusCode], ...] = (
    (InvalidArgumentError, grpc.StatusCode.INVALID_ARGUMENT),
    (JobNotFoundError, grpc.StatusCode.NOT_FOUND),
    (ServiceDrainingError, grpc.StatusCode.UNAVAILABLE),
    (InvalidTransitionError, grpc.StatusCode.FAILED_PRECONDITION),
    (FailedPreconditionError, grpc.StatusCode.FAILED_PRECONDITION),
)


def status_for(error: BaseException) -> tuple[grpc.StatusCode, str]:
    for error_type, code in STATUS_BY_ERROR:
        if isinstance(error, error_type):
            return code, str(error)
    logger.exception("unhandled error in a gRPC handler", exc_info=error)
    return grpc.StatusCode.INTERNAL, "internal error; the trainer's log has the details"


def grpc_errors(handler):
    """Decorates a servicer method (unary or server-streaming) so errors leave through `status_for`."""
    if inspect.isgeneratorfunction(handler):
        @functools.wraps(handler)
        def streaming(self, request, context):
            try:
                yield from handler(self, request, context)
            except Exception as error:  # noqa: BLE001 - the table decides
                context.abort(*status_for(error))
        return streaming

    @functools.wraps(handler)
    def unary(self, request, context):
        try:
            return handler(self, request, context)
        except Exception as error:  # noqa: BLE001 - the table decides
            context.abort(*status_for(error))
    return unary
