"""The job service: what the gRPC handlers call. It validates and stores (Watch streams are served by event_hub);
it knows no protobuf. Every call names its `Caller`: a job belongs to its creator's project, and another project's
job answers exactly as a missing one does (JobNotFoundError), so its existence is not revealed."""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from vlmforge.families import ModelFamily, family_for_model_dir

from .domain import OPEN_CALLER, Caller, Job, JobStatus
from .errors import (InvalidArgumentError, InvalidTransitionError, JobNotFoundError, ServiceDrainingError,
                     StoredFileNotFoundError)
from .job_spec import (NODE_PLACEMENT_NEEDS_KUBERNETES, QLORA_NEEDS_CUDA, DatasetSource, JobSpec, check_model,
                       dataset_sources, inspect_job_dataset, is_file_id, load_job_dataset)
from .path_roots import PathRoots
from .store import JobStore
from .tracking import TrackingDestinations
from .validated_files import RecentlyValidated

if TYPE_CHECKING:
    from .files import FileService, StoredFile

DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE = 20, 100
INLINE_VALIDATION_MAX_BYTES = 1024 * 1024  # a few thousand rows, read in Create; bigger files after it


@dataclass
class _DatasetChecks:
    """What Create learnt of a job's datasets."""

    sources: dict[str, DatasetSource] = field(default_factory=dict)  # field -> where the worker reads it
    resolved: dict[str, dict] = field(default_factory=dict)  # file-id fields -> their stored dataset
    formats: dict[str, str] = field(default_factory=dict)  # field -> the format it is read as, and why
    deferred: bool = False  # some file still needs a full read (validation.py)


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
        # Gemma 3's projector takes no LoRA: finetune_projector alone leaves the adapter servable there.
        beyond_language = hyper.finetune_vision_layers or (hyper.finetune_projector and family.projector_takes_lora)
    if not beyond_language:
        return None
    return (f"vLLM serves LoRA only on the language model of {family.name} models: the inference service will refuse "
            "this job's adapter, so serve its merged model (merged_model_path) instead; to get a servable adapter, "
            "fine-tune with finetune_vision_layers and finetune_projector off")


class JobService:
    def __init__(self, store: JobStore, *, models_dir=None, qlora_unavailable: str | None = QLORA_NEEDS_CUDA,
                 node_placement_unavailable: str | None = NODE_PLACEMENT_NEEDS_KUBERNETES,
                 worker_visible_root: Path | None = None, watch_poll_interval_s: float = 0.2,
                 files: FileService | None = None, inline_validation_max_bytes: int = INLINE_VALIDATION_MAX_BYTES,
                 roots: PathRoots | None = None, max_active_jobs_per_project: int | None = None,
                 tracking: TrackingDestinations | None = None):
        self.store = store
        self.models_dir = models_dir
        self.qlora_unavailable = qlora_unavailable
        self.node_placement_unavailable = node_placement_unavailable
        self.worker_visible_root = worker_visible_root  # workers on other nodes see only this volume
        self.watch_poll_interval_s = watch_poll_interval_s  # read by the event hub that serves Watch streams
        self.draining = threading.Event()
        self.files = files  # the Files API: jobs may name an uploaded file by its id
        self.inline_validation_max_bytes = inline_validation_max_bytes
        self._recently_validated = RecentlyValidated()  # a sweep of jobs on one file reads it once
        # Where path datasets and models may be: by default as configured by models_dir alone (today's behaviour).
        self.roots = roots or PathRoots(models_dir=models_dir)
        self.max_active_jobs_per_project = max_active_jobs_per_project  # validating, queued or running
        self.tracking = tracking or TrackingDestinations()  # where report_to trackers write; none by default

    def create(self, spec: JobSpec, client_request_id: str | None = None, *, caller: Caller = OPEN_CALLER) -> Job:
        """Checks values, the model and what is cheap about each dataset, so a job that is created will at least
        start. Files seen whole here (small ones, processed uploads) leave the job QUEUED; otherwise it is
        VALIDATING_FILES until the background validator (validation.py) has read every record."""
        if self.draining.is_set():
            raise ServiceDrainingError("the trainer is shutting down; retry on another replica or later")
        if client_request_id:
            existing = self.store.find_by_client_request_id(client_request_id, project=caller.project)
            if existing is not None:
                return existing
        spec.validated()
        tracking = self.tracking.for_job(spec.report_to)  # before the files: a cheap refusal first
        model_dir = self.roots.model(spec, caller, lambda confined: check_model(
            confined, models_dir=self.models_dir, qlora_unavailable=self.qlora_unavailable,
            node_placement_unavailable=self.node_placement_unavailable))
        checked = self._check_datasets(spec, caller)
        if self.worker_visible_root is not None:
            self._check_visible_to_workers(model_dir, checked.sources)
        stored = {**spec.to_json(), "model_dir": str(model_dir.resolve()), "resolved_files": checked.resolved,
                  "dataset_formats": checked.formats,  # said in the creation event, and again by the worker
                  "tracking": tracking}
        status = JobStatus.VALIDATING_FILES if checked.deferred else JobStatus.QUEUED
        formats = "; ".join(f"{field_name} read as {chosen}" for field_name, chosen in checked.formats.items())
        job, created = self.store.create_job(stored, client_request_id=client_request_id, status=status,
                                             note=formats,  # detection never guesses silently
                                             project=caller.project, max_active=self.max_active_jobs_per_project)
        if created and (note := _serving_note(spec, family_for_model_dir(model_dir))):
            self.store.append_event(job.id, "deployment", note)
        return job

    def _check_datasets(self, spec: JobSpec, caller: Caller) -> _DatasetChecks:
        checked = _DatasetChecks()
        for field_name, source in dataset_sources(spec.to_json()).items():
            processed, uploaded = False, is_file_id(source.path)
            if uploaded:
                stored = self._stored_file(field_name, source.path, caller)
                processed = stored.status == "processed"
                source = DatasetSource(str(stored.dataset_path), stored.dataset_name)
                checked.resolved[field_name] = {"path": source.path, "dataset_name": source.dataset_name}
            elif (confined := self.roots.dataset(field_name, source.path, caller)) is not None:
                source = DatasetSource(str(confined))  # the worker reads the resolved path, no symlink
                checked.resolved[field_name] = {"path": source.path, "dataset_name": None}
            checked.sources[field_name] = source
            summary = inspect_job_dataset(spec, field_name, source)
            chosen = summary.format.value
            checked.formats[field_name] = f"{chosen} ({summary.format_reason.removeprefix(chosen + ': ')})"
            if processed:
                continue
            if not uploaded and (summary.complete or self._small(spec, source)):
                how = (field_name, spec.dataset_format, spec.columns, spec.dataset_name, source.dataset_name)
                self._recently_validated.validate_once(source.path, how,
                                                       lambda: load_job_dataset(spec, field_name, source))
            else:  # a big file, or an upload whose own validation has not ended
                checked.deferred = True
        return checked

    def _stored_file(self, field_name: str, file_id: str, caller: Caller) -> StoredFile:
        if self.files is None:
            raise InvalidArgumentError(field_name, f"{file_id!r} is a file id, and this trainer has no Files API")
        try:
            stored = self.files.get(file_id, caller)
        except StoredFileNotFoundError as err:
            raise InvalidArgumentError(field_name, str(err)) from None
        if stored.status == "error" or stored.dataset_path is None:
            raise InvalidArgumentError(field_name, f"{file_id} failed validation: {stored.error_message}")
        return stored

    def _small(self, spec: JobSpec, source: DatasetSource) -> bool:
        """Loaded in full inside Create: well under 100 ms. A dataset_info.json is small, its dataset need not be."""
        path = Path(source.path)
        return (not (spec.dataset_name or source.dataset_name) and path.is_file()
                and path.stat().st_size <= self.inline_validation_max_bytes)

    def _check_visible_to_workers(self, model_dir: Path, sources: dict[str, DatasetSource]) -> None:
        root = self.worker_visible_root.resolve()
        paths = {"model": model_dir, **{name: Path(source.path) for name, source in sources.items()}}
        for name, path in paths.items():
            if not path.resolve().is_relative_to(root):
                raise InvalidArgumentError(name, f"{path} is not under {root}, the volume worker Jobs mount")

    def get(self, job_id: str, caller: Caller = OPEN_CALLER) -> Job:
        job = self.store.get_job(job_id)
        if not caller.can_see(job.project):
            raise JobNotFoundError(job_id)  # the message of a missing job: nothing says it exists
        return job

    def list(self, statuses: list[JobStatus], page_size: int, page_token: str,
             caller: Caller = OPEN_CALLER) -> tuple[list[Job], str]:
        if page_size < 0:
            raise InvalidArgumentError("page_size", "must be >= 0")
        return self.store.list_jobs(statuses, page_size=min(page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE),
                                    page_token=page_token, project=caller.visible_project)

    def cancel(self, job_id: str, caller: Caller = OPEN_CALLER) -> Job:
        job = self.get(job_id, caller)
        if job.status.is_terminal:
            raise InvalidTransitionError(job_id, job.status, JobStatus.CANCELLED)
        return self.store.transition(job_id, JobStatus.CANCELLED, "cancelled by the client")
