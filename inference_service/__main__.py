"""`python -m inference_service --base-model DIR [--flags]`: serve the OpenAI chat API until SIGTERM / Ctrl-C.

Run with `--help` for every setting (each also an environment variable, see settings.py).
"""

from __future__ import annotations

import logging

from pydantic_settings import CliApp

from .base_model import BaseModelError, base_model_dir, check_base_model
from .settings import InferenceSettings


def main() -> None:
    settings = CliApp.run(InferenceSettings)
    try:  # before vLLM is imported: a base it cannot serve gets one line, not a traceback minutes later
        check_base_model(base_model_dir(settings.base_model))
    except BaseModelError as error:
        raise SystemExit(f"inference_service: {error}") from None
    _own_logging()
    import uvloop

    from .server import serve
    from .vllm_api import cli_env_setup

    cli_env_setup()
    uvloop.run(serve(settings))


def _own_logging() -> None:
    """A handler of our own: importing vLLM's SageMaker helpers reconfigures the root logger mid-start."""
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logger = logging.getLogger("inference_service")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False


if __name__ == "__main__":  # vLLM starts its engine in a spawned child, which re-imports this module
    main()
