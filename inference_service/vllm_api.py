"""Every piece of vLLM this service builds on, imported in one place.

vLLM moves its server internals between releases. The service is written against vLLM 0.32 (the CPU build in
CI and the serve image); vLLM 0.26 (the CUDA wheels of the GPU benchmark machine) keeps the same functions
with the same signatures under older module paths. Each name is taken from 0.32's path first, then 0.26's,
so the rest of the service never depends on where a release keeps it.
"""

from __future__ import annotations

import uvicorn
from fastapi import FastAPI
from vllm.engine.protocol import EngineClient
from vllm.entrypoints.openai.models.serving import OpenAIServingModels
from vllm.entrypoints.serve.lora.protocol import LoadLoRAAdapterRequest, UnloadLoRAAdapterRequest
from vllm.entrypoints.serve.utils.api_utils import cli_env_setup
from vllm.utils.argparse_utils import FlexibleArgumentParser
from vllm.v1.metrics.prometheus import get_prometheus_registry

try:  # vLLM >= 0.32
    from vllm.entrypoints.launchers.api_server.app_state import init_app_state
    from vllm.entrypoints.launchers.api_server.entry import build_async_engine_client
    from vllm.entrypoints.launchers.app import build_app
    from vllm.entrypoints.launchers.cli_args import make_arg_parser, validate_parsed_serve_args
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

__all__ = ["EngineClient", "ErrorResponse", "FlexibleArgumentParser", "LoadLoRAAdapterRequest", "NoSignalServer",
           "OpenAIServingModels", "UnloadLoRAAdapterRequest", "build_app", "build_async_engine_client",
           "cli_env_setup", "create_server_socket", "get_prometheus_registry", "init_app_state",
           "init_exception_handler", "make_arg_parser", "serve_http", "setup_server", "validate_parsed_serve_args"]
