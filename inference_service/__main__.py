"""`python -m inference_service --base-model DIR [--flags]`: serve the OpenAI chat API until SIGTERM / Ctrl-C.

Run with `--help` for every setting (each also an environment variable, see settings.py).
"""

from __future__ import annotations

from pydantic_settings import CliApp

from .base_model import BaseModelError, base_model_dir, check_base_model
from .logs import own_logging
from .settings import InferenceSettings


def main() -> None:
    settings = CliApp.run(InferenceSettings)
    try:  # before vLLM is imported: a base it cannot serve gets one line, not a traceback minutes later
        check_base_model(base_model_dir(settings.base_model))
    except BaseModelError as error:
        raise SystemExit(f"inference_service: {error}") from None
    own_logging()
    from .vllm_api import cli_env_setup

    cli_env_setup()
    if settings.api_server_count > 1:
        from .frontends import serve_frontends

        serve_frontends(settings)
        return
    import uvloop

    from .server import serve

    uvloop.run(serve(settings))


if __name__ == "__main__":  # vLLM starts its engine (and frontends) in spawned children, which re-import this
    main()
