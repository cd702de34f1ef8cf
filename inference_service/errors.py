"""The caller's mistakes as typed errors, each with the HTTP status it maps to (one table) and the reason
label it is counted under in `vlmforge_inference_requests_rejected_total`. Bodies use OpenAI's error shape.
Messages never carry a file path or memory address: they are written for the caller."""

from __future__ import annotations

from http import HTTPStatus

from starlette.responses import JSONResponse


class RequestRejected(Exception):
    def __init__(self, message: str, *, reason: str, param: str | None = None):
        super().__init__(message)
        self.message = message
        self.reason = reason
        self.param = param


class InvalidRequest(RequestRejected):
    """A malformed or disallowed request: bad JSON, too many images, a refused image URL..."""


class PayloadTooLarge(RequestRejected):
    pass


class Unauthorized(RequestRejected):
    pass


class AdminDisabled(RequestRejected):
    pass


class ModelNotFound(RequestRejected):
    pass


class EndpointNotFound(RequestRejected):
    pass


class AdapterRejected(RequestRejected):
    """An adapter in the artifact store that this server will not load: why is in the message."""


STATUS_BY_ERROR: dict[type[RequestRejected], HTTPStatus] = {
    InvalidRequest: HTTPStatus.BAD_REQUEST,
    AdapterRejected: HTTPStatus.BAD_REQUEST,
    Unauthorized: HTTPStatus.UNAUTHORIZED,
    AdminDisabled: HTTPStatus.FORBIDDEN,
    ModelNotFound: HTTPStatus.NOT_FOUND,
    EndpointNotFound: HTTPStatus.NOT_FOUND,
    PayloadTooLarge: HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
}

_OPENAI_ERROR_TYPE = {
    HTTPStatus.BAD_REQUEST: "invalid_request_error",
    HTTPStatus.UNAUTHORIZED: "authentication_error",
    HTTPStatus.FORBIDDEN: "permission_error",
    HTTPStatus.NOT_FOUND: "not_found_error",
    HTTPStatus.REQUEST_ENTITY_TOO_LARGE: "invalid_request_error",
}


def status_of(error: RequestRejected) -> HTTPStatus:
    for error_type in type(error).__mro__:
        if error_type in STATUS_BY_ERROR:
            return STATUS_BY_ERROR[error_type]
    return HTTPStatus.BAD_REQUEST


def error_response(error: RequestRejected) -> JSONResponse:
    status = status_of(error)
    headers = {"WWW-Authenticate": "Bearer"} if status is HTTPStatus.UNAUTHORIZED else None
    return JSONResponse(status_code=status, headers=headers, content={"error": {
        "message": error.message, "type": _OPENAI_ERROR_TYPE[status], "param": error.param,
        "code": error.reason}})
