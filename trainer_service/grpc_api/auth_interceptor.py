"""API keys on the client API: one grpc.aio interceptor checks `authorization: Bearer <key>` on FineTuningService
and FilesService, applies the per-key rate limit, and hands the key to the handler; handlers never look at keys.

grpc.health.v1 and server reflection stay open on purpose: Kubernetes probes and load balancers carry no key,
and neither service says anything about jobs or files.

How the key reaches the handler: grpc.aio gives no way to attach values to a call's context (grpc/grpc#24470,
#27814), and a contextvar set in `intercept_service` itself is not reliably the handler's (#37879, #37881). So
the interceptor wraps the handler's behaviour and sets the contextvar inside that wrapper, which runs in the
call's own task: each call sees its own key, whatever else runs on the loop. The servicers read it through
`Callers.current()` and turn it into a domain `Caller` at the edge.
"""

from __future__ import annotations

import contextvars
import inspect
import logging
from collections.abc import Collection
from dataclasses import dataclass

import grpc

from ..auth.keys import ApiKey, KeyStore
from ..auth.rate_limit import KeyRateLimiter
from ..domain import OPEN_CALLER, Caller
from ..errors import TrainerError, UnauthenticatedError
from .status_codes import status_for

logger = logging.getLogger(__name__)

_CURRENT_KEY: contextvars.ContextVar[ApiKey | None] = contextvars.ContextVar("vlmforge_api_key", default=None)
_MISSING = "this trainer requires an API key: send the metadata 'authorization: Bearer <key>'"
_INVALID = "the API key is not valid (unknown, revoked, or malformed)"


@dataclass(frozen=True)
class Callers:
    """Who is calling, for the servicers. With keys required, a handler that finds no key refuses the call
    (fail closed); without, every call is OPEN_CALLER, today's open behaviour."""

    keys_required: bool = False

    def current(self) -> Caller:
        key = _CURRENT_KEY.get()
        if key is not None:
            return Caller(project=key.project, key_id=key.id, is_admin=key.is_admin)
        if self.keys_required:
            raise UnauthenticatedError(_MISSING)
        return OPEN_CALLER


class ApiKeyInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, keys: KeyStore, protected_services: Collection[str], *,
                 rate_limiter: KeyRateLimiter | None = None):
        self.keys = keys
        self.protected_services = frozenset(protected_services)
        self.rate_limiter = rate_limiter

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        service = handler_call_details.method.lstrip("/").partition("/")[0]
        if handler is None or service not in self.protected_services:
            return handler  # health, reflection: open
        try:
            key = self._authenticate(handler_call_details.invocation_metadata or ())
            if self.rate_limiter is not None:
                self.rate_limiter.take(key.id)
        except TrainerError as refusal:
            logger.info("refused %s: %s", handler_call_details.method, refusal)
            return _with_behaviour(handler, _refusing(refusal))
        return _with_behaviour(handler, _as_caller(key))

    def _authenticate(self, metadata) -> ApiKey:
        values = [value for name, value in metadata if name == "authorization"]
        if not values:
            raise UnauthenticatedError(_MISSING)
        scheme, _, presented = str(values[0]).strip().partition(" ")
        if len(values) != 1 or scheme.lower() != "bearer" or not presented.strip():
            raise UnauthenticatedError(_MISSING)
        key = self.keys.authenticate(presented.strip())
        if key is None:
            raise UnauthenticatedError(_INVALID)
        return key


def _refusing(refusal: TrainerError):
    async def before(context) -> None:
        await context.abort(*status_for(refusal))
    return before


def _as_caller(key: ApiKey):
    async def before(context) -> None:
        _CURRENT_KEY.set(key)  # in the call's own task: never seen by another call
    return before


def _with_behaviour(handler: grpc.RpcMethodHandler, before) -> grpc.RpcMethodHandler:
    """The same handler (kind, (de)serializers) whose behaviour first awaits `before(context)`."""
    kind = next(name for name in ("unary_unary", "unary_stream", "stream_unary", "stream_stream")
                if getattr(handler, name) is not None)
    return handler._replace(**{kind: _wrap(getattr(handler, kind), before)})


def _wrap(behaviour, before):
    if inspect.isasyncgenfunction(behaviour):
        async def streaming(request, context):
            await before(context)
            async for response in behaviour(request, context):
                yield response
        return streaming

    async def unary(request, context):
        await before(context)
        return await behaviour(request, context)
    return unary


@dataclass(frozen=True)
class ClientAuth:
    """What `create_server` needs to require API keys on the client API."""

    keys: KeyStore
    rate_limiter: KeyRateLimiter | None = None

    def interceptor(self, protected_services: Collection[str]) -> ApiKeyInterceptor:
        return ApiKeyInterceptor(self.keys, protected_services, rate_limiter=self.rate_limiter)
