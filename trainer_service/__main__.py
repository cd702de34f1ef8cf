"""`python -m trainer_service [--flags]`: serve FineTuningService until SIGTERM / Ctrl-C, then drain.

Run with `--help` for every setting (each also an environment variable, see settings.py).
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
import time
from pathlib import Path, PurePosixPath

from pydantic_settings import CliApp

from .deploy import ADMIN_TOKEN_ENV, ADMIN_URL_ENV
from .files import FileService
from .grpc_api.server import ServerLimits, create_server
from .grpc_api.reporting import create_worker_api_server
from .job_spec import NODE_PLACEMENT_NEEDS_KUBERNETES, QLORA_NEEDS_BITSANDBYTES, QLORA_NEEDS_CUDA
from .jobs import JobService
from .kubernetes.api import KubernetesJobsApi
from .kubernetes.launcher import KubernetesLauncher
from .kubernetes.manifest import WorkerJobTemplate
from .launcher import LocalLauncher
from .metrics import serve_metrics
from .settings import TrainerSettings
from .store import JobStore
from .validation import DatasetValidator
from .worker.backends import BACKEND_ENV, Placement, backend_unavailable

logger = logging.getLogger("trainer_service")
SERVICE_ACCOUNT_NAMESPACE_FILE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"


def main() -> None:
    settings = CliApp.run(TrainerSettings)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # Under Kubernetes the backend runs on the GPU nodes, not in this pod.
    if settings.launcher == "local" and (reason := backend_unavailable(settings.training_backend,
                                                                       Placement.detect())):
        sys.exit(f"--training-backend {settings.training_backend}: {reason}")
    store = JobStore(settings.database_path)
    files = FileService.from_settings(settings, store)
    on_kubernetes = settings.launcher == "kubernetes"
    jobs = JobService(store, models_dir=settings.models_dir, qlora_unavailable=_qlora_unavailable(settings),
                      node_placement_unavailable=None if on_kubernetes else NODE_PLACEMENT_NEEDS_KUBERNETES,
                      worker_visible_root=settings.shared_mount_path if on_kubernetes else None,
                      watch_poll_interval_s=settings.watch_poll_interval_s, files=files,
                      inline_validation_max_bytes=settings.inline_validation_max_bytes)
    validator = DatasetValidator(store, files=files)  # big dataset files are read after Create answers
    validator.start()
    running = create_server(jobs, f"{settings.grpc_host}:{settings.grpc_port}",
                            max_message_bytes=settings.max_message_bytes, limits=ServerLimits.from_settings(settings),
                            files=files)
    worker_api = None
    if settings.worker_api_port is not None:
        worker_api, worker_api_port = create_worker_api_server(
            store, f"{settings.grpc_host}:{settings.worker_api_port}", token=_secret(settings.worker_api_token))
        logger.info("worker API on %s:%d", settings.grpc_host, worker_api_port)
    metrics_port = serve_metrics(store, settings.metrics_host, settings.metrics_port)
    launcher = _kubernetes_launcher(store, settings) if on_kubernetes else LocalLauncher(
        store, settings.state_dir, artifacts_dir=settings.artifact_store, worker_env=_worker_env(settings),
        gpus_per_job=settings.gpus_per_job, worker_niceness=settings.worker_niceness)
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
    running.drain(settings.drain_timeout_s)  # open Watch streams are told to reconnect, then calls get the grace
    launcher.stop()
    if worker_api is not None:
        worker_api.stop(settings.drain_timeout_s).wait()
    validator.stop()
    files.close()
    store.close()
    logger.info("stopped")


def _kubernetes_launcher(store: JobStore, settings: TrainerSettings) -> KubernetesLauncher:
    namespace = settings.kubernetes_namespace or Path(SERVICE_ACCOUNT_NAMESPACE_FILE).read_text().strip()
    template = WorkerJobTemplate(
        namespace=namespace, image=settings.worker_image, worker_api_address=settings.worker_api_address,
        shared_pvc=settings.shared_pvc, shared_mount_path=PurePosixPath(settings.shared_mount_path),
        artifacts_dir=PurePosixPath(settings.artifact_store), secret_name=settings.secret_name,
        service_account=settings.worker_service_account, training_backend=settings.training_backend,
        inference_admin_url=settings.inference_admin_url, default_gpus=settings.gpus_per_job,
        cpu_request=settings.worker_cpu_request, memory_request=settings.worker_memory,
        max_pod_failures=settings.worker_max_pod_failures, ttl_after_finished_s=7 * 24 * 3600)
    return KubernetesLauncher(store, KubernetesJobsApi(namespace), template,
                              max_concurrent_jobs=settings.max_concurrent_jobs)


def _secret(value) -> str | None:
    return value.get_secret_value() if value is not None else None


def _worker_env(settings: TrainerSettings) -> dict[str, str]:
    env = {BACKEND_ENV: settings.training_backend}
    if settings.inference_admin_url:
        env[ADMIN_URL_ENV] = settings.inference_admin_url
    if settings.inference_admin_token:
        env[ADMIN_TOKEN_ENV] = settings.inference_admin_token
    return env


def _qlora_unavailable(settings: TrainerSettings) -> str | None:
    import torch

    from .worker.backends import bitsandbytes_installed

    if settings.launcher == "kubernetes":
        return None  # workers run on GPU nodes with the trainer's image; this pod has no GPU to look at
    if not torch.cuda.is_available():
        return QLORA_NEEDS_CUDA
    return None if bitsandbytes_installed() else QLORA_NEEDS_BITSANDBYTES


if __name__ == "__main__":
    main()
