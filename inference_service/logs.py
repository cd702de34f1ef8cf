"""The service's log lines: a handler of its own, set in the main process and in each API frontend."""

from __future__ import annotations

import logging


def own_logging() -> None:
    """A handler of our own: importing vLLM's SageMaker helpers reconfigures the root logger mid-start."""
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logger = logging.getLogger("inference_service")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
