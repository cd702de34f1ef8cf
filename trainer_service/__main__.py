"""`python -m trainer_service [--flags]`: serve FineTuningService until SIGTERM / Ctrl-C, then drain.

Run with `--help` for every setting (each also an environment variable, see settings.py).
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
import time

from pydantic_settings import CliApp

from .deploy import ADMIN_TOKEN_ENV, ADMIN_URL_ENV
from .grpc_api.server import create_server
from .job_spec import QLORA_NEEDS_BITSANDBYTES, QLORA_NEEDS_CUDA
from .jobs import JobService
from .launcher import LocalLauncher
from .metrics import serve_metrics
from .settings import TrainerSettings
from .store import JobStore
from .worker.backends import BACKEND_ENV, Placement, backend_unavailable

logger = logging.getLogger("trainer_service")


def main() -> None:
    settings = CliApp.run(TrainerSettings)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if reason := backend_unavailable(settings.training_backend, Placement.detect()):
        sys.exit(f"--training-backend {settings.training_backend}: {reason}")
    store = JobStore(settings.database_path)
    jobs = JobService(store, models_dir=settings.models_dir, qlora_unavailable=_qlora_unavailable(),
                      watch_poll_interval_s=settings.watch_poll_interval_s)
    running = create_server(jobs, f"{settings.grpc_host}:{settings.grpc_port}",
                            max_message_bytes=settings.max_message_bytes)
    metrics_port = serve_metrics(store, settings.metrics_host, settings.metrics_port)
    launcher = LocalLauncher(store, settings.state_dir, artifacts_dir=settings.artifact_store,
                             worker_env=_worker_env(settings), gpus_per_job=settings.gpus_per_job)
    launcher.start()
    running.set_serving(True)
    logger.info("trainer listening on %s:%d, metrics on :%d/metrics, state in %s", settings.grpc_host,
                running.port, metrics_port, settings.state_dir)

    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    # With a timeout: a signal may land on any thread, and its Python handler only runs once the main thread
    # wakes up; a bare wait() can sleep through SIGTERM forever.
    while not stop.wait(0.5):
        pass
    logger.info("draining: NOT_SERVING and no new jobs for %.0f s, then %.0f s for in-flight calls",
                settings.drain_announce_s, settings.drain_timeout_s)
    running.set_serving(False)
    jobs.draining.set()
    time.sleep(settings.drain_announce_s)  # still answering: health checks see NOT_SERVING, new jobs UNAVAILABLE
    running.server.stop(settings.drain_timeout_s).wait()
    launcher.stop()
    store.close()
    logger.info("stopped")


def _worker_env(settings: TrainerSettings) -> dict[str, str]:
    env = {BACKEND_ENV: settings.training_backend}
    if settings.inference_admin_url:
        env[ADMIN_URL_ENV] = settings.inference_admin_url
    if settings.inference_admin_token:
        env[ADMIN_TOKEN_ENV] = settings.inference_admin_token
    return env


def _qlora_unavailable() -> str | None:
    import torch

    from .worker.backends import bitsandbytes_installed

    if not torch.cuda.is_available():
        return QLORA_NEEDS_CUDA
    return None if bitsandbytes_installed() else QLORA_NEEDS_BITSANDBYTES


if __name__ == "__main__":
    main()
