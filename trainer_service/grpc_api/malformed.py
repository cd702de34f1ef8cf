"""Request bytes that are not a valid protobuf message are the caller's mistake: INVALID_ARGUMENT. Left alone,
grpcio answers INTERNAL when a request deserializer raises, which would blame the server."""

from __future__ import annotations

import grpc
from google.protobuf.message import DecodeError

MALFORMED_MESSAGE = "the request is not a valid protobuf message of this method's request type"


class _Malformed:
    """Stands in for a request that did not parse; the wrapped behaviour answers it."""


_MALFORMED = _Malformed()


class MalformedRequestInterceptor(grpc.ServerInterceptor):
    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        if handler is None or handler.request_deserializer is None or handler.request_streaming:
            return handler
        parse = _lenient(handler.request_deserializer)
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(_checked_unary(handler.unary_unary), parse,
                                                       handler.response_serializer)
        return grpc.unary_stream_rpc_method_handler(_checked_stream(handler.unary_stream), parse,
                                                    handler.response_serializer)


def _lenient(deserialize):
    def parse(data: bytes):
        try:
            return deserialize(data)
        except DecodeError:
            return _MALFORMED
    return parse


def _checked_unary(behaviour):
    def unary(request, context):
        if request is _MALFORMED:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, MALFORMED_MESSAGE)
        return behaviour(request, context)
    return unary


def _checked_stream(behaviour):
    def stream(request, context):
        if request is _MALFORMED:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, MALFORMED_MESSAGE)
        yield from behaviour(request, context)
    return stream
