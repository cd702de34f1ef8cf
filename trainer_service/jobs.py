"""The job service: what the gRPC handlers call. It validates and stores (Watch streams are served by event_hub);
it knows no protobuf."""

from __future__ import annotations

import re
import threading
from pathlib import Path

from vlmforge.families import ModelFamily, family_for_model_dir

from .domain import Job, JobStatus
from .errors import InvalidArgumentError, InvalidTransitionError, ServiceDrainingError
from .job_spec import NODE_PLACEMENT_NEEDS_KUBERNETES, QLORA_NEEDS_CUDA, JobSpec, check_resources
from .store import JobStore

DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE = 20, 100


def _serving_note(spec: JobSpec, family: ModelFamily) -> str | None:
    """Said when the job is created, not discovered at deployment: vLLM cannot serve this job's base at all, or
    cannot serve its adapter as an adapter."""
    if not family.vllm_serves:
        return (f"{family.vllm_unserved_reason}, so the inference service cannot serve this job's base, adapter or "
                "merged model: load the adapter (adapter_path, with peft) or the merged model (merged_model_path) "
                "in transformers")
    if family.vllm_serves_tower_connector_lora:
        return None
    hyper = spec.hyperparameters
    if hyper.lora_target_modules:
        language = f"{family.language_attention}|{family.language_mlp}"
        beyond_language = any(not re.search(language, target) for target in hyper.lora_target_modules)
    else:
        beyond_language = hyper.finetune_vision_layers or hyper.finetune_projector
    if not beyond_language:
        return None
    return (f"vLLM serves LoRA only on the language model of {family.name} models: the inference service will refuse "
            "this job's adapter, so serve its merged model (merged_model_path) instead; to get a servable adapter, "
            "fine-tune with finetune_vision_layers and finetune_projector off")


class JobService:
    def __init__(self, store: JobStore, *, models_dir=None, qlora_unavailable: str | None = QLORA_NEEDS_CUDA,
                 node_placement_unavailable: str | None = NODE_PLACEMENT_NEEDS_KUBERNETES,
                 worker_visible_root: Path | None = None, watch_poll_interval_s: float = 0.2):
        self.store = store
        self.models_dir = models_dir
        self.qlora_unavailable = qlora_unavailable
        self.node_placement_unavailable = node_placement_unavailable
        self.worker_visible_root = worker_visible_root  # workers on other nodes see only this volume
        self.watch_poll_interval_s = watch_poll_interval_s  # read by the event hub that serves Watch streams
        self.draining = threading.Event()

    def create(self, spec: JobSpec, client_request_id: str | None = None) -> Job:
        """Validates values and files first, so a job that is created will at least start."""
        if self.draining.is_set():
            raise ServiceDrainingError("the trainer is shutting down; retry on another replica or later")
        if client_request_id:
            existing = self.store.find_by_client_request_id(client_request_id)
            if existing is not None:
                return existing
        spec.validated()
        model_dir = check_resources(spec, models_dir=self.models_dir, qlora_unavailable=self.qlora_unavailable,
                                    node_placement_unavailable=self.node_placement_unavailable)
        if self.worker_visible_root is not None:
            self._check_visible_to_workers(spec, model_dir)
        stored = {**spec.to_json(), "model_dir": str(model_dir.resolve())}
        job, _ = self.store.create_job(stored, client_request_id=client_request_id, status=JobStatus.QUEUED)
        if note := _serving_note(spec, family_for_model_dir(model_dir)):
            self.store.append_event(job.id, "deployment", note)
        return job

    def _check_visible_to_workers(self, spec: JobSpec, model_dir: Path) -> None:
        root = self.worker_visible_root.resolve()
        paths = {"model": model_dir, **{name: Path(getattr(spec, name)) for name in
                                        ("training_file", "validation_file", "test_file") if getattr(spec, name)}}
        for name, path in paths.items():
            if not path.resolve().is_relative_to(root):
                raise InvalidArgumentError(name, f"{path} is not under {root}, the volume worker Jobs mount")

    def get(self, job_id: str) -> Job:
        return self.store.get_job(job_id)

    def list(self, statuses: list[JobStatus], page_size: int, page_token: str) -> tuple[list[Job], str]:
        if page_size < 0:
            raise InvalidArgumentError("page_size", "must be >= 0")
        return self.store.list_jobs(statuses, page_size=min(page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE),
                                    page_token=page_token)

    def cancel(self, job_id: str) -> Job:
        job = self.store.get_job(job_id)
        if job.status.is_terminal:
            raise InvalidTransitionError(job_id, job.status, JobStatus.CANCELLED)
        return self.store.transition(job_id, JobStatus.CANCELLED, "cancelled by the client")
