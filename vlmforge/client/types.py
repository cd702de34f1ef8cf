"""What the client returns: plain frozen dataclasses (never protobuf). Statuses are lowercase strings, as in the
OpenAI SDK's fine-tuning objects ("queued", "running", "succeeded", ...); times are aware UTC datetimes."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from datetime import datetime
from typing import Literal

JobStatus = Literal["validating_files", "queued", "running", "succeeded", "failed", "cancelled"]
TERMINAL_JOB_STATUSES: frozenset[str] = frozenset({"succeeded", "failed", "cancelled"})
FileStatus = Literal["uploaded", "processed", "error"]
Method = Literal["lora", "qlora"]
DatasetFormat = Literal["conversation", "openai", "table", "sharegpt", "alpaca", "llava", "trl_messages"]
Scheduler = Literal["cosine", "linear", "constant"]


@dataclass(frozen=True)
class Hyperparameters:
    """Every field left None takes the trainer's default; a job reports the values it actually used."""

    epochs: int | None = None
    max_steps: int | None = None  # wins over epochs
    batch_size: int | None = None
    gradient_accumulation_steps: int | None = None
    learning_rate: float | None = None
    warmup_steps: int | None = None
    warmup_ratio: float | None = None  # instead of warmup_steps: ceil(ratio * total steps)
    weight_decay: float | None = None
    scheduler: Scheduler | None = None
    seed: int | None = None
    max_sequence_length: int | None = None
    lora_rank: int | None = None
    lora_alpha: float | None = None
    lora_dropout: float | None = None
    lora_target_modules: tuple[str, ...] = ()  # empty: chosen by the finetune_* switches
    finetune_vision_layers: bool | None = None
    finetune_language_layers: bool | None = None
    finetune_attention_modules: bool | None = None
    finetune_mlp_modules: bool | None = None
    finetune_projector: bool | None = None
    gradient_checkpointing: bool | None = None
    eval_every_steps: int | None = None
    checkpoint_every_steps: int | None = None
    validation_split: float | None = None  # share of the training file held out when no validation_file
    max_samples: int | None = None  # train on the first N records only
    packing: bool | None = None  # padding-free rows of whole samples (Qwen2-VL / Qwen2.5-VL), <= batch_size each
    max_tokens_per_batch: int | None = None  # with packing: language tokens per row (per micro-batch and GPU)
    group_by_length: bool | None = None  # packing off: batches of samples of similar length

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))


@dataclass(frozen=True)
class Toleration:
    key: str = ""
    operator: str = "Equal"
    value: str = ""
    effect: str = ""


@dataclass(frozen=True)
class Placement:
    gpu_count: int = 0  # 0: the trainer's default; with nodes > 1, GPUs on each node
    node_selector: dict[str, str] = field(default_factory=dict)
    tolerations: tuple[Toleration, ...] = ()
    nodes: int = 0  # 0 or 1: one node; above 1: torchrun on each node with a c10d rendezvous
    strategy: str = "auto"  # "ddp", "fsdp" (frozen base weights sharded over the GPUs) or "auto"


@dataclass(frozen=True)
class ColumnMapping:
    """Column names of a table dataset (dataset_format "table")."""

    image: str = ""
    question: str = ""
    answer: str = ""


@dataclass(frozen=True)
class JobError:
    code: str
    message: str


@dataclass(frozen=True)
class EvaluationScores:
    exact_match: float
    relaxed_accuracy: float
    bertscore_precision: float
    bertscore_recall: float
    bertscore_f1: float
    examples: int


@dataclass(frozen=True)
class FineTuningJob:
    id: str
    model: str
    status: JobStatus
    method: Method
    hyperparameters: Hyperparameters
    training_file: str
    validation_file: str
    test_file: str
    dataset_name: str
    suffix: str
    metadata: dict[str, str]
    placement: Placement
    created_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None
    fine_tuned_model: str  # the name the inference service serves the adapter under
    adapter_path: str  # on the trainer's disk; download_adapter() brings it here
    merged_model_path: str
    trained_steps: int
    total_steps: int
    error: JobError | None
    evaluation_before: EvaluationScores | None
    evaluation_after: EvaluationScores | None

    @property
    def done(self) -> bool:
        return self.status in TERMINAL_JOB_STATUSES


@dataclass(frozen=True)
class StatusChanged:
    status: JobStatus
    error: JobError | None


@dataclass(frozen=True)
class TrainingProgress:
    step: int
    total_steps: int
    loss: float
    learning_rate: float
    samples_per_second: float
    eta_seconds: float
    epoch: float
    tokens_per_second: float
    step_seconds: float


@dataclass(frozen=True)
class EvaluationResult:
    phase: str  # "before", "after" or "validation"
    step: int
    scores: EvaluationScores


@dataclass(frozen=True)
class CheckpointSaved:
    step: int
    path: str


@dataclass(frozen=True)
class JobEvent:
    """One entry of a job's event log; `data` is None for plain log lines."""

    job_id: str
    sequence: int  # per job, from 1; events(after_sequence=...) resumes after it
    created_at: datetime | None
    message: str
    data: StatusChanged | TrainingProgress | EvaluationResult | CheckpointSaved | None

    @property
    def type(self) -> str:
        """"status_changed", "progress", "evaluation", "checkpoint" or "message"."""
        return {StatusChanged: "status_changed", TrainingProgress: "progress", EvaluationResult: "evaluation",
                CheckpointSaved: "checkpoint"}.get(type(self.data), "message")


@dataclass(frozen=True)
class Checkpoint:
    step: int
    path: str
    metrics: dict[str, float]
    created_at: datetime | None


@dataclass(frozen=True)
class FileObject:
    """An uploaded file (OpenAI's FileObject): name it as a job's training_file by its `id`."""

    id: str
    bytes: int
    created_at: datetime | None
    filename: str
    purpose: str
    status: FileStatus
    status_details: str
    sha256: str
    record_count: int | None


@dataclass(frozen=True)
class FileDeleted:
    id: str
    deleted: bool


@dataclass(frozen=True)
class UploadProgress:
    """What an upload's progress callback gets after every chunk the trainer took (and once before the first)."""

    sent_bytes: int  # committed on the trainer, resumed bytes included
    total_bytes: int
    resumed_from: int  # bytes the trainer already held when this attempt started


@dataclass(frozen=True)
class DownloadedArtifacts:
    path: str  # the directory the tar stream was unpacked into
    sha256: str  # of the tar stream, as the trainer sent it and the client verified
    bytes: int
    adapter_path: str  # path/adapter: adapter_config.json + adapter_model.safetensors
    merged_model_path: str  # path/merged_model, or "" when not asked for
