"""The ASGI layer in front of vLLM's OpenAI app: endpoint allow-list, API-key auth, body limit, chat checks,
images made safe, adapters loaded on first use, and request latency metrics. vLLM does the rest."""

from __future__ import annotations

import hashlib
import json
import secrets
import time
from dataclasses import dataclass

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from vlmforge.artifacts import is_valid_model_name

from .adapters import AdapterManager
from .aliases import AliasResolver, models_with_aliases, sync_alias_metrics
from .chat_checks import ChatLimits, check_chat_body, materialise_images
from .errors import EndpointNotFound, InvalidRequest, PayloadTooLarge, RequestRejected, Unauthorized, error_response
from .media import ImageLimits, MediaUrlPolicy
from .metrics import InferenceMetrics
from .stage_timing import ServerTimingSend, StageTimes

CHAT_PATH = "/v1/chat/completions"
# Only what this product serves. vLLM's app has many more routes (completions with raw token ids, responses,
# tokenize, pooling...); some take media URLs or prompts past these checks, so they are not exposed.
ROUTES_SERVED = {("POST", CHAT_PATH), ("GET", "/v1/models"), ("GET", "/health"), ("GET", "/metrics"),
                 ("GET", "/version"), ("GET", "/ping")}
ADMIN_PREFIX = "/admin/v1/"


@dataclass(frozen=True)
class GuardConfig:
    base_model_name: str
    api_key: str | None
    max_request_body_bytes: int
    chat_limits: ChatLimits
    media_policy: MediaUrlPolicy
    image_limits: ImageLimits
    media_fetch_timeout_s: float
    admin_routes: bool  # False when the admin router has a port of its own: /admin/* is then a 404 here


@dataclass(frozen=True)
class GuardContext:
    config: GuardConfig
    adapters: AdapterManager
    metrics: InferenceMetrics
    aliases: AliasResolver | None = None  # None: no artifact store, so no aliases


class RequestGuard:
    """vLLM builds its app's middleware stack itself and takes extra middleware only by import path (its
    `--middleware` flag), so this class reads its context from `app.state.request_guard` on first use."""

    def __init__(self, app: ASGIApp):
        self.app = app
        self._context: GuardContext | None = None

    def _bind(self, context: GuardContext) -> None:
        self._context = context
        self.config, self.adapters, self.metrics = context.config, context.adapters, context.metrics
        self.aliases = context.aliases
        api_key = context.config.api_key
        self._api_key_digest = hashlib.sha256(api_key.encode()).digest() if api_key else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self._context is None:
            self._bind(scope["app"].state.request_guard)
        method, path = scope["method"], scope["path"].rstrip("/") or "/"
        try:
            if self.config.admin_routes and path.startswith(ADMIN_PREFIX.rstrip("/")):
                await self.app(scope, receive, send)  # the admin router checks its own token
                return
            if (method, path) not in ROUTES_SERVED:
                raise EndpointNotFound(f"{method} {path[:100]} is not served here", reason="unsupported_endpoint")
            if path.startswith("/v1/"):
                self._authenticate(scope)
            if self.aliases is not None and path == "/v1/models":
                await models_with_aliases(self.app, scope, receive, send, self.aliases)
                return
            if self.aliases is not None and path == "/metrics":
                sync_alias_metrics(self.aliases, self.metrics)  # the files' state, whichever frontend is scraped
            if path != CHAT_PATH:
                await self.app(scope, receive, send)
                return
            times = StageTimes()
            with times.stage("read"):
                body = await _read_body(scope, receive, self.config.max_request_body_bytes)
        except RequestRejected as rejected:
            await self._reject(rejected, scope, receive, send)
            return
        await self._chat(scope, receive, send, body, times)

    async def _chat(self, scope: Scope, receive: Receive, send: Send, raw_body: bytes, times: StageTimes) -> None:
        started = time.perf_counter()
        try:
            with times.stage("parse"):
                body = _parse_json(raw_body)
            with times.stage("checks"):
                image_parts = check_chat_body(body, self.config.chat_limits)
            with times.stage("resolve"):
                aliased = self._resolve_alias(body)
                model_label = await self._resolve_model(body.get("model"))
            replaced = await materialise_images(image_parts, self.config.media_policy, self.config.image_limits,
                                                self.config.media_fetch_timeout_s, times)
        except RequestRejected as rejected:
            await self._reject(rejected, scope, receive, send)
            self.metrics.request_duration.labels("unknown", str(error_response(rejected).status_code)).observe(
                time.perf_counter() - started)
            return
        rewritten = raw_body  # unchanged, the client's own bytes go on: no second encode of a megabyte of base64
        if aliased or replaced:
            with times.stage("encode"):
                rewritten = json.dumps(body).encode()
        server_timing = ServerTimingSend(send, times, self.metrics.stage_seconds, stream=bool(body.get("stream")))
        timing = _ResponseTiming(server_timing.send, started)
        try:
            await self.app(_with_body_length(scope, len(rewritten)), _replay(rewritten, receive), timing.send)
            await server_timing.flush()
        finally:
            self.metrics.request_duration.labels(model_label, str(timing.status)).observe(
                time.perf_counter() - started)
            if body.get("stream") and timing.first_chunk_s is not None:
                self.metrics.time_to_first_token.labels(model_label).observe(timing.first_chunk_s)

    def _resolve_alias(self, body: dict) -> bool:
        """An alias becomes its target here, once, in the body vLLM reads: the request keeps that target even if
        the alias moves while it runs. True when it did."""
        model = body.get("model")
        if (self.aliases is None or not isinstance(model, str) or model == self.config.base_model_name
                or self.adapters.is_loaded(model)):
            return False
        if (entry := self.aliases.current(model)) is None:
            return False
        body["model"] = self.aliases.served_name(entry)
        return True

    async def _resolve_model(self, model: object) -> str:
        """The metrics label for `model`, loading it from the artifact store on first use. Names that are
        neither served nor stored are left for vLLM to answer 404 (label `unknown`, to bound cardinality)."""
        if model is None or model == self.config.base_model_name:
            return self.config.base_model_name
        if not isinstance(model, str):
            raise InvalidRequest("model must be a string", reason="invalid_body", param="model")
        if self.adapters.is_loaded(model):
            return model
        if self.adapters.is_stored(model) or not is_valid_model_name(model):  # the latter to say why it's refused
            await self.adapters.ensure_loaded(model, source="lazy")
            return model
        return "unknown"

    def _authenticate(self, scope: Scope) -> None:
        if self._api_key_digest is None:
            return
        scheme, _, token = _header(scope, b"authorization").partition(" ")
        offered = hashlib.sha256(token.encode()).digest()
        if scheme.lower() != "bearer" or not secrets.compare_digest(offered, self._api_key_digest):
            raise Unauthorized("a valid API key is required (Authorization: Bearer <key>)", reason="unauthorized")

    async def _reject(self, rejected: RequestRejected, scope: Scope, receive: Receive, send: Send) -> None:
        self.metrics.rejected.labels(rejected.reason).inc()
        await error_response(rejected)(scope, receive, send)


class _ResponseTiming:
    """Wraps `send` to learn the status and when the first body chunk left (time to first token on streams:
    vLLM sends nothing before the first token)."""

    def __init__(self, send: Send, started: float):
        self._send = send
        self._started = started
        self.status = 500
        self.first_chunk_s: float | None = None

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
        elif message["type"] == "http.response.body" and self.first_chunk_s is None and message.get("body"):
            self.first_chunk_s = time.perf_counter() - self._started
        await self._send(message)


def _header(scope: Scope, name: bytes) -> str:
    for key, value in scope.get("headers", []):
        if key.lower() == name:
            return value.decode("latin-1")
    return ""


async def _read_body(scope: Scope, receive: Receive, max_bytes: int) -> bytes:
    declared = _header(scope, b"content-length")
    if declared.isdigit() and int(declared) > max_bytes:
        raise PayloadTooLarge(f"request body is larger than {max_bytes} bytes", reason="body_too_large")
    body = bytearray()
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise InvalidRequest("client disconnected", reason="client_disconnected")
        body += message.get("body", b"")
        if len(body) > max_bytes:
            raise PayloadTooLarge(f"request body is larger than {max_bytes} bytes", reason="body_too_large")
        if not message.get("more_body"):
            return bytes(body)


def _parse_json(raw_body: bytes) -> object:
    try:
        return json.loads(raw_body)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise InvalidRequest("the request body is not valid JSON", reason="invalid_body") from None


def _with_body_length(scope: Scope, length: int) -> Scope:
    headers = [(k, v) for k, v in scope["headers"] if k.lower() != b"content-length"]
    return {**scope, "headers": [*headers, (b"content-length", str(length).encode())]}


def _replay(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def replayed() -> Message:
        nonlocal sent
        if sent:
            return await receive()  # later calls wait for the client's disconnect, as the server would
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replayed
