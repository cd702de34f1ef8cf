"""Builds vLLM's own OpenAI server (engine, FastAPI app, uvicorn) and puts this service's layer in front:
the request guard, the admin router (on vLLM's port, or on `--admin-port` alone) and our metrics.
`serve(settings)` runs until SIGTERM / Ctrl-C; with `--api-server-count` > 1 it runs in each API frontend
process that frontends.py starts, over the engine that process started."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import shlex
import socket
from typing import TYPE_CHECKING

import uvicorn
from fastapi import FastAPI, Request

from vlmforge.aliases import AliasStore
from vlmforge.artifacts import model_config_digest
from vlmforge.families import ModelFamily

from .adapter_registry import SharedAdapterRegistry
from .adapters import AdapterManager, BaseModelIdentity
from .admin import admin_router
from .aliases import AliasResolver
from .base_model import base_model_dir, check_base_model
from .chat_checks import ChatLimits
from .engine import VllmAdapterEngine
from .errors import RequestRejected, error_response
from .guard import GuardConfig, GuardContext, RequestGuard
from .media import ImageLimits, MediaUrlPolicy
from .metrics import InferenceMetrics, multiprocess_mode
from .settings import InferenceSettings
from .vllm_api import (
    EngineClient,
    FlexibleArgumentParser,
    NoSignalServer,
    build_app,
    build_async_engine_client,
    create_server_socket,
    get_prometheus_registry,
    init_app_state,
    init_exception_handler,
    make_arg_parser,
    serve_http,
    setup_server,
    validate_parsed_serve_args,
)

if TYPE_CHECKING:
    from .frontends import Frontend

logger = logging.getLogger("inference_service")

# vLLM would fetch http(s) image URLs itself. It never gets one: the guard turns each into a checked data:
# URL, and this unresolvable domain makes vLLM refuse any URL that reached it some other way.
NO_MEDIA_DOMAIN = "media-is-fetched-by-vlmforge.invalid"
CPU_MEMORY_SHARE = 0.15  # on CPU, vLLM's gpu_memory_utilization is the share of RAM it reserves


# With several frontends, the outermost middleware (vLLM adds --middleware in order, each around the ones before).
FRONTEND_LAYER = "inference_service.frontends.FrontendLayer"


def vllm_args(settings: InferenceSettings) -> argparse.Namespace:
    argv = vllm_argv(settings) + ["--middleware", f"{RequestGuard.__module__}.{RequestGuard.__qualname__}"]
    parser = make_arg_parser(FlexibleArgumentParser(prog="vllm (via inference_service)"))
    args = parser.parse_args(argv)
    if settings.api_server_count > 1:
        args.middleware.append(FRONTEND_LAYER)  # after parsing: a second --middleware would log a warning
    validate_parsed_serve_args(args)
    return args


def vllm_argv(settings: InferenceSettings) -> list[str]:
    """The vLLM command line these settings mean (also what bench/ gives a plain `vllm serve`)."""
    argv = ["--model", settings.base_model, "--served-model-name", settings.model_name,
            "--host", settings.host, "--port", str(settings.port),
            "--enable-lora", "--max-lora-rank", str(settings.max_lora_rank),
            "--max-loras", str(settings.max_loras_per_batch), "--max-cpu-loras", str(settings.max_cpu_loras),
            "--limit-mm-per-prompt", json.dumps({"image": settings.max_images_per_request, "video": 0}),
            "--allowed-media-domains", NO_MEDIA_DOMAIN, "--disable-fastapi-docs",
            "--gpu-memory-utilization", str(settings.gpu_memory_utilization or _default_memory_share()),
            "--shutdown-timeout", str(settings.drain_timeout_s),
            "--mm-processor-cache-gb", str(settings.mm_processor_cache_gb)]
    if _serves_tower_lora(settings, check_base_model(base_model_dir(settings.base_model))):
        argv.append("--enable-tower-connector-lora")
    if settings.max_model_len:
        argv += ["--max-model-len", str(settings.max_model_len)]
    return argv + shlex.split(settings.vllm_args)


def _default_memory_share() -> float:
    import torch

    return 0.9 if torch.cuda.is_available() else CPU_MEMORY_SHARE


def install(app: FastAPI, settings: InferenceSettings, engine_client: EngineClient,
            frontend: Frontend | None = None) -> FastAPI:
    """Adds this service's layer to vLLM's app; returns the app serving the admin router: vLLM's own, or with
    `admin_port` set a separate one that `serve` runs on that port."""
    metrics = InferenceMetrics(None if multiprocess_mode() else get_prometheus_registry())
    engine = VllmAdapterEngine(app.state.openai_serving_models, engine_client, settings.model_name,
                               SharedAdapterRegistry(frontend.state_dir) if frontend else None)
    adapters = AdapterManager(settings.artifacts_dir, engine, metrics, max_rank=settings.max_lora_rank,
                              base=_base_identity(settings))
    admin_app = app
    if settings.admin_port is not None:
        admin_app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)
        admin_app.state = app.state  # vLLM's error handlers read its args, server and engine client there
        init_exception_handler(admin_app)  # so errors are answered as on the main port
    if frontend:
        frontend.attach(app, admin_app, engine, settings.drain_timeout_s)
    # Aliases live in the artifact store beside the adapters they name; every frontend reads them itself.
    aliases = (AliasResolver(AliasStore(settings.artifacts_dir), settings.model_name) if settings.artifacts_dir
               else None)
    admin_app.include_router(admin_router(adapters, _secret(settings.admin_token), aliases))

    async def rejected(_: Request, error: RequestRejected):
        metrics.rejected.labels(error.reason).inc()
        return error_response(error)

    admin_app.add_exception_handler(RequestRejected, rejected)
    app.state.request_guard = GuardContext(adapters=adapters, metrics=metrics, aliases=aliases, config=GuardConfig(
        base_model_name=settings.model_name, api_key=_secret(settings.api_key),
        max_request_body_bytes=settings.max_request_body_bytes,
        chat_limits=ChatLimits(settings.max_images_per_request, settings.max_choices_per_request,
                               engine_client.model_config.max_model_len),
        media_policy=MediaUrlPolicy(frozenset(d.lower() for d in settings.allowed_media_domains),
                                    settings.allow_private_media_addresses),
        image_limits=ImageLimits(settings.max_image_bytes, settings.max_image_pixels),
        media_fetch_timeout_s=settings.media_fetch_timeout_s, admin_routes=admin_app is app))
    return admin_app


def _base_identity(settings: InferenceSettings) -> BaseModelIdentity:
    model_dir = base_model_dir(settings.base_model)
    family = check_base_model(model_dir)  # None: not in the registry, adapters are checked by vLLM alone
    unservable = () if family is None or _serves_tower_lora(settings, family) else family.tower_and_projector_patterns
    return BaseModelIdentity(model_config_digest(model_dir), frozenset(
        {settings.model_name, settings.base_model, str(model_dir.resolve()), model_dir.name}),
        family_name=family.name if family else "", unservable_lora_modules=unservable)


def _serves_tower_lora(settings: InferenceSettings, family: ModelFamily | None) -> bool:
    """LoRA on the vision tower and projector: as configured, unless vLLM cannot serve it for this family."""
    return settings.vision_tower_lora and (family is None or family.vllm_serves_tower_connector_lora)


def _secret(value) -> str | None:
    return value.get_secret_value() if value is not None else None


async def serve(settings: InferenceSettings, frontend: Frontend | None = None) -> None:
    """Alone (frontend None): binds the ports, starts the engine and serves. As one of several frontends: on
    the sockets and with the engine addresses the main process handed it (frontends.py)."""
    if frontend is None:
        args = vllm_args(settings)
        _, sock = setup_server(args, reuse_port=False)
        # Bound before the engine starts, as vLLM binds its port: a port in use fails in seconds, not minutes.
        admin_sock = (None if settings.admin_port is None
                      else create_server_socket((settings.host, settings.admin_port), reuse_port=False))
    else:
        args, sock, admin_sock = frontend.args, frontend.sock, frontend.admin_sock
    try:
        async with build_async_engine_client(args, **frontend.engine_client_kwargs() if frontend else {}) as \
                engine_client:
            supported_tasks = await engine_client.get_supported_tasks()
            app = build_app(args, supported_tasks, engine_client.model_config)
            await init_app_state(engine_client, app.state, args, supported_tasks)
            admin_app = install(app, settings, engine_client, frontend)
            admin = admin_task = None
            if admin_sock is not None:
                # No signal handlers of its own: uvicorn's would replace vLLM's, which drain the engine first.
                # It stops when vLLM's server does (SIGTERM, engine death).
                admin = NoSignalServer(uvicorn.Config(admin_app, log_level="warning", access_log=False,
                                                      lifespan="off", timeout_keep_alive=settings.http_keep_alive_s))
                admin_task = asyncio.create_task(admin.serve(sockets=[admin_sock]))
            announcement = asyncio.create_task(_announce_when_serving(app, sock, admin, admin_sock, settings,
                                                                      frontend))
            shutdown_task = await serve_http(app, sock=sock, host=args.host, port=sock.getsockname()[1],
                                             log_level="warning", access_log=False,
                                             timeout_keep_alive=settings.http_keep_alive_s,
                                             **frontend.serve_http_kwargs() if frontend else {})
            announcement.cancel()
            if admin is not None:
                admin.should_exit = True
        await shutdown_task
        if admin_task is not None:
            await admin_task
    finally:
        for listening in (sock, admin_sock):
            if listening is not None:
                listening.close()


async def _announce_when_serving(app: FastAPI, sock: socket.socket, admin: uvicorn.Server | None,
                                 admin_sock: socket.socket | None, settings: InferenceSettings,
                                 frontend: Frontend | None) -> None:
    """The line scripts wait for; uvicorn sets `started` once a socket accepts connections. With several
    frontends the last one to start says it, once every frontend accepts."""
    while not (getattr(getattr(app.state, "server", None), "started", False) and (admin is None or admin.started)):
        await asyncio.sleep(0.05)
    if frontend is not None:
        frontend.drain_on_sigterm()  # serve_http has set its signal handlers by now
        if not frontend.announce_serving():
            return
    frontends = f", {frontend.count} API frontends" if frontend else ""
    logger.info("inference service listening on %s (model %s, artifacts %s%s)%s", _url(sock), settings.model_name,
                settings.artifacts_dir, frontends, f", admin endpoint on {_url(admin_sock)}" if admin_sock else "")


def _url(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://{host}:{port}"
