"""Request bytes that are not a valid protobuf message are the caller's mistake: INVALID_ARGUMENT. Left alone,
grpcio answers INTERNAL when a request deserializer raises, which would blame the server."""

from __future__ import annotations

import inspect

import grpc
from google.protobuf.message import DecodeError

MALFORMED_MESSAGE = "the request is not a valid protobuf message of this method's request type"


class _Malformed:
    """Stands in for a request that did not parse; the wrapped behaviour answers it."""


_MALFORMED = _Malformed()


class MalformedRequestInterceptor(grpc.aio.ServerInterceptor):
    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
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
    async def unary(request, context):
        if request is _MALFORMED:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, MALFORMED_MESSAGE)
        return await behaviour(request, context)
    return unary


def _checked_stream(behaviour):
    if not inspect.isasyncgenfunction(behaviour):  # a stream written with context.write (grpc.health's Watch)
        return _checked_unary(behaviour)

    async def stream(request, context):
        if request is _MALFORMED:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, MALFORMED_MESSAGE)
        async for response in behaviour(request, context):
            yield response
    return stream
