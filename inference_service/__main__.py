"""`python -m inference_service --base-model DIR [--flags]`: serve the OpenAI chat API until SIGTERM / Ctrl-C.

Run with `--help` for every setting (each also an environment variable, see settings.py).
"""

from __future__ import annotations

import logging

from pydantic_settings import CliApp

from .settings import InferenceSettings


def main() -> None:
    settings = CliApp.run(InferenceSettings)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    import uvloop
    from vllm.entrypoints.serve.utils.api_utils import cli_env_setup

    from .server import serve

    cli_env_setup()
    uvloop.run(serve(settings))


if __name__ == "__main__":  # vLLM starts its engine in a spawned child, which re-imports this module
    main()
