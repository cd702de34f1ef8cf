"""Every piece of vLLM this service builds on, imported in one place.

vLLM moves its server internals between releases. The service is written against vLLM 0.32 (the CPU build in
CI and the serve image); vLLM 0.26 (the CUDA wheels of the GPU benchmark machine) keeps the same functions
with the same signatures under older module paths. Each name is taken from 0.32's path first, then 0.26's,
so the rest of the service never depends on where a release keeps it.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import uvicorn
from fastapi import FastAPI
from vllm.engine.arg_utils import AsyncEngineArgs
from vllm.engine.protocol import EngineClient
from vllm.entrypoints.openai.models.serving import OpenAIServingModels
from vllm.entrypoints.serve.lora.protocol import LoadLoRAAdapterRequest, UnloadLoRAAdapterRequest
from vllm.entrypoints.serve.utils.api_utils import cli_env_setup
from vllm.lora.request import LoRARequest
from vllm.usage.usage_lib import UsageContext
from vllm.utils.argparse_utils import FlexibleArgumentParser
from vllm.utils.system_utils import decorate_logs, set_process_title
from vllm.v1.engine.utils import launch_core_engines
from vllm.v1.executor import Executor
from vllm.v1.metrics.prometheus import get_prometheus_registry, setup_multiprocess_prometheus
from vllm.v1.utils import APIServerProcessManager, wait_for_completion_or_failure

try:  # vLLM >= 0.32
    from vllm.entrypoints.launchers.api_server.app_state import init_app_state
    from vllm.entrypoints.launchers.api_server.entry import build_async_engine_client
    from vllm.entrypoints.launchers.app import build_app
    from vllm.entrypoints.launchers.cli_args import (
        make_arg_parser,
        propagate_flash_late_interaction,
        validate_parsed_serve_args,
    )
    from vllm.entrypoints.launchers.launcher import NoSignalServer, create_server_socket, serve_http, setup_server
    from vllm.entrypoints.serve.engine.protocol import ErrorResponse
    from vllm.entrypoints.serve.exception_handling.register import init_exception_handler
except ImportError:  # vLLM 0.26
    from vllm.entrypoints.launcher import serve_http
    from vllm.entrypoints.openai.api_server import (
        build_app,
        build_async_engine_client,
        create_server_socket,
        init_app_state,
        setup_server,
    )
    from vllm.entrypoints.openai.cli_args import make_arg_parser, validate_parsed_serve_args
    from vllm.entrypoints.openai.engine.protocol import ErrorResponse

    class NoSignalServer(uvicorn.Server):
        """A uvicorn server that leaves SIGINT / SIGTERM to the handlers vLLM's `serve_http` installs."""

        def install_signal_handlers(self) -> None:
            pass

    def init_exception_handler(app: FastAPI) -> None:
        """The error handlers vLLM 0.26's `build_app` puts on its own app, for a second app of ours."""
        from fastapi import HTTPException
        from fastapi.exceptions import RequestValidationError
        from vllm.entrypoints.serve.utils.server_utils import (
            exception_handler,
            http_exception_handler,
            validation_exception_handler,
        )

        app.exception_handler(HTTPException)(http_exception_handler)
        app.exception_handler(RequestValidationError)(validation_exception_handler)
        app.exception_handler(Exception)(exception_handler)

    def propagate_flash_late_interaction(args, engine_args) -> None:
        """A 0.32 flag's plumbing; 0.26 has no such flag."""


# On SIGTERM: what a frontend gets beyond the drain timeout to close its client and exit, and the engine after them.
FRONTEND_EXIT_GRACE_S = 10.0
ENGINE_EXIT_MIN_S = 10.0


@dataclass
class EngineAndFrontends:
    """What `vllm serve --api-server-count N` runs: the engine core (and a DP coordinator where one is needed)
    and N API server processes, each with its own ZMQ input/output addresses on the engine."""

    api_servers: APIServerProcessManager
    engines: Any
    coordinator: Any
    shutdown_timeout_s: float
    # vLLM >= 0.32: the frontends' bound ZMQ listeners (EngineZmqListeners). Collected, it unlinks their IPC
    # socket files (its __del__), and an engine socket that had not connected yet retries ENOENT forever: a
    # frontend that never hears from the engine (vllm serve keeps them in scope until it exits).
    listeners: Any = None

    def wait(self) -> None:
        """Until a process exits (an error, when not asked to) or a signal handler raises in this thread."""
        wait_for_completion_or_failure(api_server_manager=self.api_servers, engine_manager=self.engines,
                                       coordinator=self.coordinator)

    def shutdown(self, *, draining: bool) -> None:
        """vLLM's order: frontends first (each drains its own requests within the shutdown timeout, then closes
        its engine client), then the engine, which has nothing left to run by then but still needs time to exit
        cleanly: a budget the frontends' drain had spent would have it killed at once."""
        self.api_servers.shutdown(timeout=self.shutdown_timeout_s + FRONTEND_EXIT_GRACE_S if draining else None)
        deadline = time.monotonic() + ENGINE_EXIT_MIN_S
        for part in (self.engines, self.coordinator):
            if part:
                part.shutdown(timeout=max(deadline - time.monotonic(), 1.0) if draining else None)
        if self.listeners is not None:
            self.listeners.cleanup()


def start_engine_and_frontends(args, num_servers: int, listen_address: str, sock,
                               target_server_fn: Callable) -> EngineAndFrontends:
    """vllm/entrypoints/cli/serve.py `run_multi_api_server`, with our frontend function (called in each API
    process as `target_server_fn(listen_address, sock, args, client_config)`); no Rust frontend, no headless."""
    engine_args = AsyncEngineArgs.from_cli_args(args)
    propagate_flash_late_interaction(args, engine_args)
    engine_args._api_process_count = num_servers
    engine_args._api_process_rank = -1
    vllm_config = engine_args.create_engine_config(usage_context=UsageContext.OPENAI_API_SERVER)
    executor_class, log_stats = Executor.get_class(vllm_config), not engine_args.disable_log_stats
    common = {"listen_address": listen_address, "sock": sock, "args": args, "num_servers": num_servers,
              "target_server_fn": target_server_fn}
    if "input_listeners" in inspect.signature(APIServerProcessManager).parameters:  # vLLM >= 0.32
        from vllm.v1.engine.utils import bind_engine_zmq_listeners

        listeners = bind_engine_zmq_listeners(vllm_config, num_servers)  # bound here, before the engine starts
        with launch_core_engines(vllm_config, executor_class, log_stats, listeners.addresses) as launch:
            coordinator = launch.coordinator
            api_servers = APIServerProcessManager(
                **common, input_listeners=listeners.inputs, output_listeners=listeners.outputs,
                stats_update_address=coordinator.get_stats_publish_address() if coordinator else None,
                tensor_queue=launch.tensor_queue)
            launch.watched_frontend_processes = api_servers.processes  # one dying aborts the engine's start
        return EngineAndFrontends(api_servers, launch.engine_manager, coordinator, vllm_config.shutdown_timeout,
                                  listeners)
    # vLLM 0.26: placeholder addresses (tcp://host:0 or IPC paths); each frontend binds its sockets and reports
    # the bound ones back, which the engine's handshake (when the `with` ends) hands the engine.
    from vllm.v1.engine.utils import get_engine_zmq_addresses

    addresses = get_engine_zmq_addresses(vllm_config, num_servers)
    with launch_core_engines(vllm_config, executor_class, log_stats, addresses, num_servers) as (
            engines, coordinator, addresses, tensor_queue):
        api_servers = APIServerProcessManager(
            **common, input_addresses=addresses.inputs, output_addresses=addresses.outputs,
            stats_update_address=coordinator.get_stats_publish_address() if coordinator else None,
            tensor_queue=tensor_queue)
        addresses.inputs, addresses.outputs = api_servers.gather_actual_addresses()
    return EngineAndFrontends(api_servers, engines, coordinator, vllm_config.shutdown_timeout)

__all__ = ["EngineAndFrontends", "EngineClient", "ErrorResponse", "FlexibleArgumentParser", "LoRARequest",
           "LoadLoRAAdapterRequest", "NoSignalServer", "OpenAIServingModels", "UnloadLoRAAdapterRequest", "build_app",
           "build_async_engine_client", "cli_env_setup", "create_server_socket", "decorate_logs",
           "get_prometheus_registry", "init_app_state", "init_exception_handler", "make_arg_parser", "serve_http",
           "set_process_title", "setup_multiprocess_prometheus", "setup_server", "start_engine_and_frontends",
           "validate_parsed_serve_args"]
