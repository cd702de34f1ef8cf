"""Every setting of the trainer service, in one place: each is a `--flag` and an environment variable
(`VLMFORGE_TRAINER_<NAME>`), e.g. `--grpc-port 50051` or `VLMFORGE_TRAINER_GRPC_PORT=50051`."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from .gpu_scheduling import parse_gpu_list


class TrainerSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="VLMFORGE_TRAINER_", cli_kebab_case=True,
                                      cli_prog_name="python -m trainer_service")

    grpc_host: str = Field("127.0.0.1", description="address the gRPC server binds; 0.0.0.0 in a container")
    grpc_port: int = Field(50051, ge=0, le=65535, description="gRPC port; 0 picks a free one")
    metrics_host: str = Field("127.0.0.1", description="address the Prometheus /metrics server binds")
    metrics_port: int = Field(9464, ge=0, le=65535, description="Prometheus /metrics HTTP port; 0 picks a free one")
    state_dir: Path = Field(Path("state/trainer"), description="holds jobs.sqlite3 and the artifact store")
    models_dir: Path | None = Field(None, description="base models may be named relative to this directory")
    artifacts_dir: Path | None = Field(None, description="the artifact store the inference service reads; "
                                       "default <state_dir>/artifacts")
    inference_admin_url: str | None = Field(None, description="inference service base URL, e.g. "
                                            "http://127.0.0.1:8000; when set, each fine-tune is hot-loaded there "
                                            "as it succeeds")
    inference_admin_token: str | None = Field(None, description="bearer token of the inference admin endpoint")
    training_backend: Literal["auto", "transformers", "unsloth"] = Field(
        "auto", description="auto: plain transformers + peft everywhere (Unsloth's losses leave plain's by 13-15% "
        "over 20 steps on the same weights: BENCHMARKS.md); unsloth only when asked for")
    gpus_per_job: int = Field(1, ge=0, description="GPUs each job trains on (a job's placement.gpu_count "
                              "overrides it); above 1 the worker runs under torchrun with one process per GPU "
                              "(DDP); 0 = CPU (worker Jobs then request no GPU)")
    launcher: Literal["local", "kubernetes"] = Field(
        "local", description="where jobs run: local = worker processes on this machine (one job at a time, or "
        "side by side on --gpus); kubernetes = one batch/v1 Job per fine-tune, reporting through the worker API")
    gpus: str | None = Field(None, description="local launcher: the GPUs it hands out, e.g. 0,1,2,3 (indices or "
                             "UUIDs, as CUDA_VISIBLE_DEVICES takes them): each job gets the GPUs its placement asks "
                             "for as its CUDA_VISIBLE_DEVICES and jobs run side by side while GPUs are free, FIFO "
                             "otherwise. Unset: every GPU this process sees (none: one job at a time on the CPU); "
                             "empty: no GPU list, one job at a time on the default devices")
    multi_node_workload: Literal["auto", "indexed-job", "jobset"] = Field(
        "auto", description="kubernetes launcher, jobs with placement.nodes > 1: indexed-job = an Indexed "
        "batch/v1 Job and a headless Service for the rendezvous (any cluster); jobset = a JobSet (needs the "
        "JobSet CRD, jobset.x-k8s.io/v1alpha2); auto = jobset when the API server serves that CRD")
    worker_api_port: int | None = Field(None, ge=0, le=65535, description="port of the worker API (workers in "
                                        "Kubernetes Jobs report there); required with --launcher kubernetes")
    worker_api_address: str | None = Field(None, description="host:port at which worker pods reach the worker "
                                           "API, e.g. vlmforge-trainer:50052")
    worker_api_token: SecretStr | None = Field(None, description="bearer token worker pods present (the same "
                                               "Secret key is mounted into them); unset = network policy only")
    worker_image: str | None = Field(None, description="image of the worker Jobs: this trainer's own image")
    kubernetes_namespace: str | None = Field(None, description="namespace of the worker Jobs; default: this "
                                             "pod's namespace")
    shared_pvc: str = Field("vlmforge-shared", description="ReadWriteMany claim mounted into the trainer and "
                            "every worker at shared_mount_path: datasets, models, checkpoints, artifacts")
    shared_mount_path: Path = Field(Path("/shared"), description="where the shared claim is mounted; job files, "
                                    "models and the artifact store must be under it")
    secret_name: str = Field("vlmforge-secrets", description="Secret holding worker-api-token and admin-token")
    worker_service_account: str = Field("vlmforge-training-worker", description="service account of worker pods")
    worker_cpu_request: str = Field("8", description="CPU each worker Job requests (a Kubernetes quantity)")
    worker_memory: str = Field("64Gi", description="memory each worker Job requests and is limited to")
    worker_max_pod_failures: int = Field(3, ge=0, description="worker pods that may die (OOM, lost node) before "
                                         "the job fails; each new pod resumes from the last checkpoint")
    max_concurrent_jobs: int = Field(4, ge=1, description="worker Jobs running at once (kubernetes launcher)")
    worker_niceness: int = Field(10, ge=0, le=19, description="local launcher: the worker process's nice "
                                 "increment, so training on the trainer's own cores never slows its API")
    max_message_bytes: int = Field(4 * 1024 * 1024, ge=1024, description="largest gRPC message accepted")
    drain_announce_s: float = Field(2.0, ge=0, description="on SIGTERM: how long health says NOT_SERVING (new jobs "
                                    "get UNAVAILABLE) before the server stops taking calls, so probes and load "
                                    "balancers see it")
    drain_timeout_s: float = Field(30.0, ge=0, description="on SIGTERM: time given to in-flight RPCs")
    watch_poll_interval_s: float = Field(0.2, gt=0, description="how often the trainer looks for events that "
                                         "workers wrote (one query for every open Watch stream)")
    blocking_workers: int = Field(8, ge=1, le=256, description="threads for the gRPC servers' blocking work "
                                  "(SQLite, file I/O); streams themselves hold no thread")
    inline_validation_max_bytes: int = Field(1024 * 1024, ge=0, description="dataset files up to this size are "
                                             "read in full inside CreateFineTuningJob (the job is QUEUED at once); "
                                             "bigger ones are read by the background validator")
    create_workers: int = Field(4, ge=1, le=64, description="threads that check new jobs' model and files "
                                "(CreateFineTuningJob), apart from the others so reads never wait behind them")
    max_streams_total: int = Field(4096, ge=1, description="open Watch / upload streams the trainer serves at "
                                   "once; more get RESOURCE_EXHAUSTED")
    max_streams_per_client: int = Field(1024, ge=1, description="open Watch / upload streams one client host "
                                        "may hold at once; more get RESOURCE_EXHAUSTED")
    keepalive_time_s: float = Field(60.0, gt=0, description="the server pings a connection idle this long, so "
                                    "streams of clients that vanished (laptop closed, pod gone) are reaped")
    keepalive_timeout_s: float = Field(20.0, gt=0, description="a ping unanswered this long closes the connection")
    max_connection_age_s: float | None = Field(1800.0, gt=0, description="connections are asked to reconnect "
                                               "after this long, so load balancers can rebalance them; open "
                                               "streams resume from their last event (unset: never)")
    max_connection_age_grace_s: float = Field(300.0, ge=0, description="calls still open on an aged "
                                              "connection get this long before it is closed")
    files_dir: Path | None = Field(None, description="Files API: uploaded files and their metadata; default "
                                   "<state_dir>/files")
    max_upload_bytes: int = Field(20 * 1024**3, ge=1, description="Files API: largest file one upload may send")
    max_archive_extracted_bytes: int = Field(50 * 1024**3, ge=1, description="Files API: largest total size of "
                                             "what one uploaded archive (.tar, .tar.gz, .zip) extracts to")
    max_archive_members: int = Field(1_000_000, ge=1, description="Files API: most files and directories one "
                                     "uploaded archive may hold")
    max_compression_ratio: float = Field(100.0, gt=1, description="Files API: largest extracted-to-archive size "
                                         "ratio of an uploaded archive (a zip bomb is refused before extraction)")
    # API keys, projects and quotas (trainer_service/auth/, path_roots.py).
    api_keys_file: Path | None = Field(None, description="JSON file of API key hashes, each bound to a project "
                                       "(`python -m trainer_service keys create` writes it; a Kubernetes Secret "
                                       "mounts as one); re-read when it changes. Unset: no keys, the API is open "
                                       "to anyone who reaches the port (the local demo)")
    api_keys_reload_interval_s: float = Field(1.0, gt=0, description="how often the trainer looks whether the "
                                              "API key file changed (a revoked key stops working within this)")
    data_root: Path | None = Field(None, description="path-based datasets must be under this directory (symlinks "
                                   "resolved): a project's key under <data_root>/<project>/, an admin key or an "
                                   "open trainer anywhere in it. Unset: any path without keys; with keys, datasets "
                                   "only as uploaded file ids")
    max_active_jobs_per_project: int | None = Field(None, ge=1, description="jobs one project may have "
                                                    "validating files, queued or running at once; more get "
                                                    "RESOURCE_EXHAUSTED (unset: no limit)")
    max_upload_bytes_per_project: int | None = Field(None, ge=1, description="Files API: bytes one project's "
                                                     "stored files and unfinished uploads (their declared size) "
                                                     "may take in all; an upload past it gets RESOURCE_EXHAUSTED "
                                                     "(unset: no limit)")
    requests_per_second_per_key: float | None = Field(None, gt=0, description="calls one API key may make per "
                                                      "second on average (a token bucket); more get "
                                                      "RESOURCE_EXHAUSTED (unset: no limit)")
    request_burst_per_key: int = Field(20, ge=1, description="calls one API key may make at once above "
                                       "--requests-per-second-per-key (the bucket's size)")
    # TLS (trainer_service/grpc_api/tls.py): both gRPC servers; the files are re-read when they change.
    tls_cert: Path | None = Field(None, description="PEM certificate chain of the client API and the worker API; "
                                  "with --tls-key, both serve TLS only (reloaded when the file changes)")
    tls_key: Path | None = Field(None, description="PEM private key of --tls-cert")
    tls_client_ca: Path | None = Field(None, description="mutual TLS on the client API: PEM CA that must have "
                                       "signed every client's certificate (connections without one are refused); "
                                       "the worker API keeps using the worker token")
    tls_secret_name: str = Field("vlmforge-trainer-tls", description="kubernetes launcher with --tls-cert: the "
                                 "Secret holding the trainer's certificate; worker pods mount its ca.crt (that key "
                                 "only) and verify the worker API with it")
    # Experiment tracking (trainer_service/worker/tracking.py): where a job's `report_to` trackers write. Only
    # these settings say where: a request never names a URI or a directory.
    mlflow_tracking_uri: str | None = Field(None, description="MLflow tracking server (http://host:5000) or store "
                                            "URI of jobs with report_to mlflow; credentials, where the server "
                                            "needs them, in MLFLOW_TRACKING_USERNAME / _PASSWORD / _TOKEN of the "
                                            "trainer's environment. Unset: report_to mlflow is refused")
    mlflow_experiment: str = Field("vlmforge", description="MLflow experiment that jobs' runs are logged under")
    tensorboard_dir: Path | None = Field(None, description="TensorBoard logs of jobs with report_to tensorboard, "
                                         "one subdirectory per job (point `tensorboard --logdir` here). Unset: "
                                         "report_to tensorboard is refused")
    trackio_dir: Path | None = Field(None, description="local trackio database directory (TRACKIO_DIR) of jobs "
                                     "with report_to trackio; nothing is sent anywhere. Unset: report_to trackio "
                                     "is refused")

    @field_validator("gpus")
    @classmethod
    def _gpus_are_a_list(cls, value: str | None) -> str | None:
        return None if value is None else ",".join(parse_gpu_list(value))

    @property
    def gpu_list(self) -> tuple[str, ...] | None:
        """--gpus as a tuple; None when unset (the launcher then uses what this process sees)."""
        return parse_gpu_list(self.gpus)

    @model_validator(mode="after")
    def _tls_files_come_together(self) -> TrainerSettings:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("--tls-cert and --tls-key go together (a certificate and its private key)")
        if self.tls_client_ca is not None and self.tls_cert is None:
            raise ValueError("--tls-client-ca needs --tls-cert and --tls-key: mutual TLS is TLS first")
        return self

    @model_validator(mode="after")
    def _kubernetes_launcher_is_complete(self) -> TrainerSettings:
        if self.launcher == "kubernetes":
            missing = [f"--{name.replace('_', '-')}" for name in ("worker_api_port", "worker_api_address",
                                                                   "worker_image") if getattr(self, name) is None]
            if missing:
                raise ValueError(f"--launcher kubernetes needs {', '.join(missing)}")
            for name in ("artifact_store", "models_dir", "data_root", "tensorboard_dir", "trackio_dir"):
                path = getattr(self, name)
                if path is not None and not path.is_relative_to(self.shared_mount_path):
                    raise ValueError(f"{name} {path} must be under --shared-mount-path {self.shared_mount_path}: "
                                     "worker pods see only that volume")
        return self

    @property
    def artifact_store(self) -> Path:
        return self.artifacts_dir or self.state_dir / "artifacts"

    @property
    def database_path(self) -> Path:
        return self.state_dir / "jobs.sqlite3"

    @property
    def files_root(self) -> Path:
        return self.files_dir or self.state_dir / "files"
