"""`python -m trainer_service [--flags]`: serve FineTuningService until SIGTERM / Ctrl-C, then drain.

Run with `--help` for every setting (each also an environment variable, see settings.py).
`python -m trainer_service keys create|list|revoke ...` manages the API key file instead (auth/keys_cli.py).
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
import time
from pathlib import Path, PurePosixPath

from pydantic_settings import CliApp

from .auth.keys import KeyFileError, KeyStore
from .auth.keys_cli import main as keys_main
from .auth.rate_limit import KeyRateLimiter
from .deploy import ADMIN_TOKEN_ENV, ADMIN_URL_ENV
from .files import FileService
from .grpc_api.auth_interceptor import ClientAuth
from .grpc_api.server import ServerLimits, create_server
from .grpc_api.reporting import create_worker_api_server
from .grpc_api.tls import ServerTls, TlsFilesError
from .job_spec import NODE_PLACEMENT_NEEDS_KUBERNETES, QLORA_NEEDS_BITSANDBYTES, QLORA_NEEDS_CUDA
from .jobs import JobService
from .kubernetes.api import KubernetesJobsApi
from .kubernetes.launcher import KubernetesLauncher
from .kubernetes.manifest import WorkerJobTemplate
from .launcher import LocalLauncher, visible_gpus
from .metrics import serve_metrics
from .path_roots import PathRoots
from .settings import TrainerSettings
from .store import JobStore
from .tracking import TrackingDestinations
from .validation import DatasetValidator
from .worker.backends import BACKEND_ENV, Placement, backend_unavailable

logger = logging.getLogger("trainer_service")
SERVICE_ACCOUNT_NAMESPACE_FILE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"


def main() -> None:
    if sys.argv[1:2] == ["keys"]:
        sys.exit(keys_main(sys.argv[2:]))
    settings = CliApp.run(TrainerSettings)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # Under Kubernetes the backend runs on the GPU nodes, not in this pod.
    if settings.launcher == "local" and (reason := backend_unavailable(settings.training_backend,
                                                                       Placement.detect())):
        sys.exit(f"--training-backend {settings.training_backend}: {reason}")
    store = JobStore(settings.database_path)
    files = FileService.from_settings(settings, store)
    on_kubernetes = settings.launcher == "kubernetes"
    auth = _client_auth(settings)
    jobs = JobService(store, models_dir=settings.models_dir, qlora_unavailable=_qlora_unavailable(settings),
                      node_placement_unavailable=None if on_kubernetes else NODE_PLACEMENT_NEEDS_KUBERNETES,
                      worker_visible_root=settings.shared_mount_path if on_kubernetes else None,
                      watch_poll_interval_s=settings.watch_poll_interval_s, files=files,
                      inline_validation_max_bytes=settings.inline_validation_max_bytes,
                      roots=PathRoots(settings.data_root, settings.models_dir, required=auth is not None),
                      max_active_jobs_per_project=settings.max_active_jobs_per_project,
                      tracking=TrackingDestinations.from_settings(settings))
    validator = DatasetValidator(store, files=files)  # big dataset files are read after Create answers
    validator.start()
    tls = ServerTls.from_settings(settings)
    try:
        running = create_server(jobs, f"{settings.grpc_host}:{settings.grpc_port}",
                                max_message_bytes=settings.max_message_bytes,
                                limits=ServerLimits.from_settings(settings), files=files, tls=tls, auth=auth)
    except TlsFilesError as error:
        sys.exit(str(error))
    if tls is None:
        logger.warning("the client API serves plaintext: without --tls-cert / --tls-key keys and data cross the "
                       "network unencrypted")
    worker_api = None
    if settings.worker_api_port is not None:
        worker_api, worker_api_port = create_worker_api_server(
            store, f"{settings.grpc_host}:{settings.worker_api_port}", token=_secret(settings.worker_api_token),
            tls=tls)
        logger.info("worker API on %s:%d (%s)", settings.grpc_host, worker_api_port, "TLS" if tls else "plaintext")
    gpus = () if on_kubernetes else settings.gpu_list if settings.gpu_list is not None else visible_gpus()
    metrics_port = serve_metrics(store, settings.metrics_host, settings.metrics_port, gpus=gpus)
    launcher = _kubernetes_launcher(store, settings) if on_kubernetes else LocalLauncher(
        store, settings.state_dir, artifacts_dir=settings.artifact_store, worker_env=_worker_env(settings),
        gpus_per_job=settings.gpus_per_job, gpus=gpus, worker_niceness=settings.worker_niceness)
    if gpus:
        logger.info("local launcher: GPUs %s, jobs side by side while GPUs are free", ",".join(gpus))
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
        max_pod_failures=settings.worker_max_pod_failures, ttl_after_finished_s=7 * 24 * 3600,
        worker_api_ca_secret=settings.tls_secret_name if settings.tls_cert else None)
    api = KubernetesJobsApi(namespace)
    api.jobsets = _use_jobsets(settings.multi_node_workload, api)
    return KubernetesLauncher(store, api, template, max_concurrent_jobs=settings.max_concurrent_jobs,
                              jobsets=api.jobsets)


def _use_jobsets(choice: str, api: KubernetesJobsApi) -> bool:
    """Multi-node jobs as JobSets: when asked for, or (auto) when API discovery shows the JobSet CRD served."""
    if choice != "auto":
        return choice == "jobset"
    try:
        served = api.serves_jobsets()
    except Exception:  # noqa: BLE001 - discovery down at start: Indexed Jobs work on every cluster
        logger.warning("API discovery failed; multi-node jobs run as Indexed Jobs", exc_info=True)
        return False
    logger.info("multi-node jobs run as %s", "JobSets (the JobSet CRD is served)" if served else
                "Indexed Jobs with a headless Service (no JobSet CRD served)")
    return served


def _client_auth(settings: TrainerSettings) -> ClientAuth | None:
    """The API keys the client API requires; None (and a loud warning) when no key file is configured."""
    if settings.api_keys_file is None:
        logger.warning("NO API KEYS (--api-keys-file unset): anyone who reaches %s:%d can start, read, watch and "
                       "cancel every job and file, and name any path on this machine as a dataset or model; fine "
                       "for a local demo, never for a shared network", settings.grpc_host, settings.grpc_port)
        return None
    try:
        keys = KeyStore(settings.api_keys_file, reload_interval_s=settings.api_keys_reload_interval_s)
    except KeyFileError as error:
        sys.exit(f"--api-keys-file: {error}")
    logger.info("API keys required: %d active keys in %s (re-read when it changes)", keys.key_count,
                settings.api_keys_file)
    if settings.data_root is None:
        logger.info("no --data-root: datasets only as uploaded file ids (Files API); dataset paths are refused")
    if settings.models_dir is None:
        logger.warning("no --models-dir: with API keys every base model path is refused; set --models-dir")
    limiter = None
    if settings.requests_per_second_per_key is not None:
        limiter = KeyRateLimiter(settings.requests_per_second_per_key, settings.request_burst_per_key)
    return ClientAuth(keys, limiter)


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
