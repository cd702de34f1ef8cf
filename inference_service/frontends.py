"""Several API frontends over one engine (`--api-server-count N`, N > 1), started as `vllm serve` starts its own
(vllm_api.start_engine_and_frontends): this process binds the port(s), starts the engine core and N frontend
processes through vLLM's APIServerProcessManager, each with its own ZMQ addresses on the engine, all accepting
on the one listening socket (vLLM 0.32 hands each new connection to the least loaded frontend). Each frontend
runs the whole of server.serve: guard, limits, auth, media fetching, admin routes and metrics.

With `--admin-port` every frontend also serves the admin router on that one shared port: adapters are loaded
through the shared registry (adapter_registry.py), so whichever frontend takes an admin call, all serve the
result. Metrics are summed over the frontends by prometheus-client's multiprocess mode (metrics.py).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import multiprocessing
import signal
import socket
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .engine import VllmAdapterEngine
from .logs import own_logging
from .settings import InferenceSettings
from .vllm_api import (
    create_server_socket,
    decorate_logs,
    set_process_title,
    setup_multiprocess_prometheus,
    setup_server,
    start_engine_and_frontends,
)

logger = logging.getLogger("inference_service")

# Which frontend answered: lets a client (the e2e tests, an operator with curl) reach each one on the shared port.
FRONTEND_HEADER = b"vlmforge-frontend"
DRAIN_POLL_S = 0.05


def serve_frontends(settings: InferenceSettings) -> None:
    """The service's main process with several frontends: runs until SIGTERM / Ctrl-C, then has each frontend
    drain its requests (within --drain-timeout-s) and stops the engine; exits 0 when asked to stop."""
    from .server import vllm_args

    args = vllm_args(settings)
    setup_multiprocess_prometheus()  # before any frontend starts: they inherit PROMETHEUS_MULTIPROC_DIR
    stopping = False

    def stop(signum, frame) -> None:  # as vLLM's run_multi_api_server: unwinds the wait below, once
        nonlocal stopping
        if not stopping:
            stopping = True
            raise SystemExit

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    listen_address, sock = setup_server(args, reuse_port=True)
    admin_sock = (None if settings.admin_port is None
                  else create_server_socket((settings.host, settings.admin_port), reuse_port=False))
    try:
        with tempfile.TemporaryDirectory(prefix="vlmforge-frontends-") as state_dir:
            serving = multiprocessing.get_context("spawn").Value("i", 0)
            target = functools.partial(run_frontend, settings, Path(state_dir), admin_sock, serving)
            processes = start_engine_and_frontends(args, settings.api_server_count, listen_address, sock, target)
            try:
                processes.wait()
            finally:
                processes.shutdown(draining=stopping)
    finally:
        for listening in (sock, admin_sock):
            if listening is not None:
                listening.close()


def run_frontend(settings: InferenceSettings, state_dir: Path, admin_sock: socket.socket | None, serving: Any,
                 listen_address: str, sock: socket.socket, args, client_config: dict | None = None) -> None:
    """One frontend process (spawned by vLLM's APIServerProcessManager, which passes the last four)."""
    import uvloop

    from .server import serve

    own_logging()
    client_config = dict(client_config or {})
    index = client_config.get("client_index", 0)
    set_process_title("APIServer", str(index))
    decorate_logs()
    loads = client_config.pop("api_server_loads", None)  # serve_http's, not the engine client's
    frontend = Frontend(index, client_config.get("client_count", 1), args, sock, admin_sock, client_config,
                        None if loads is None else (loads, index), state_dir, serving)
    uvloop.run(serve(settings, frontend))


@dataclass
class Frontend:
    """What one frontend process got from the main one."""

    index: int
    count: int
    args: Any  # vLLM's parsed arguments, as the main process built them
    sock: socket.socket
    admin_sock: socket.socket | None
    client_config: dict  # the engine-core client's ZMQ addresses and index
    peer_loads: tuple | None  # shared open-connection counts, for least-loaded accept (vLLM >= 0.32)
    state_dir: Path  # the shared adapter registry
    serving: Any  # a shared counter of frontends accepting connections
    state: FrontendState | None = field(default=None)

    def engine_client_kwargs(self) -> dict:
        return {"client_config": self.client_config}

    def serve_http_kwargs(self) -> dict:
        return {} if self.peer_loads is None else {"peer_loads": self.peer_loads}

    def announce_serving(self) -> bool:
        """Counts this frontend as serving; True for the one that completes the count."""
        with self.serving.get_lock():
            self.serving.value += 1
            return self.serving.value == self.count

    def attach(self, app: FastAPI, admin_app: FastAPI, adapters: VllmAdapterEngine, drain_timeout_s: float) -> None:
        """This frontend's part of server.install: the FrontendLayer's state (the layer itself is in vLLM's
        middleware list, see server.vllm_args)."""
        self.state = FrontendState(str(self.index).encode(), adapters, drain_timeout_s=drain_timeout_s)
        app.state.vlmforge_frontend = self.state
        if admin_app is not app:  # ours: middleware can still be added
            admin_app.add_middleware(FrontendLayer)

    def drain_on_sigterm(self) -> None:
        """Once serve_http has set its signal handlers. On SIGTERM vLLM's handler stops the engine client at once;
        alone, that client owns the engine and its shutdown drains it, but a frontend's client owns no engine and
        its open streams would be cut (vLLM 0.32). So SIGTERM is ours: refuse new requests, let this frontend's
        requests finish (within --drain-timeout-s), then raise SIGINT, which serve_http handles as it would
        SIGTERM. The main process stops the engine once every frontend has exited."""
        loop, state = asyncio.get_running_loop(), self.state

        async def drain() -> None:
            logger.info("frontend %s: stopping; %d requests open, given up to %s s", self.index, state.in_flight,
                        state.drain_timeout_s)
            deadline = loop.time() + state.drain_timeout_s
            while state.in_flight and loop.time() < deadline:
                await asyncio.sleep(DRAIN_POLL_S)
            signal.raise_signal(signal.SIGINT)

        def on_sigterm() -> None:
            if not state.draining:
                state.draining = True
                state.drain_task = loop.create_task(drain())

        loop.add_signal_handler(signal.SIGTERM, on_sigterm)


@dataclass
class FrontendState:
    index: bytes
    adapters: VllmAdapterEngine
    drain_timeout_s: float
    in_flight: int = 0  # HTTP requests this frontend is answering
    draining: bool = False
    drain_task: asyncio.Task | None = None


class FrontendLayer:
    """Outermost middleware of each frontend's apps: brings this frontend's adapter table up to date with the
    registry before vLLM reads it (/v1/models, chat; one stat() when nothing changed), and names the frontend in
    a response header."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state: FrontendState = scope["app"].state.vlmforge_frontend
        header = (FRONTEND_HEADER, state.index)

        async def send_naming_frontend(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), header]}
            await send(message)

        if state.draining:  # /health too: a load balancer stops sending here
            await _SHUTTING_DOWN(scope, receive, send_naming_frontend)
            return
        state.adapters.loaded()
        state.in_flight += 1
        try:
            await self.app(scope, receive, send_naming_frontend)
        finally:
            state.in_flight -= 1


_SHUTTING_DOWN = JSONResponse(status_code=503, content={"error": {
    "message": "the service is shutting down", "type": "service_unavailable_error", "param": None,
    "code": "shutting_down"}})
