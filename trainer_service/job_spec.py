"""What a client may ask for, with defaults and limits, checked before a job is queued.

`JobSpec.validated()` checks values alone; `check_model()` and the dataset helpers then check what must exist on
this machine (the base model, the dataset files and their records; `check_resources()` does all of it at once).
All raise typed errors naming the field.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vlmforge.data import (ColumnMapping, Conversation, DatasetFormat, DatasetFormatError, DatasetSummary,
                           inspect_dataset, load_dataset)
from vlmforge.families import UnsupportedModelError, family_for_model_dir

from vlmforge.aliases import ALIAS_NAME_RULE, is_valid_alias_name

from .errors import FailedPreconditionError, InvalidArgumentError
from .path_roots import check_still_resolved

SUFFIX_PATTERN = re.compile(r"^[a-z0-9][a-z0-9-]{0,39}$")
SCHEDULERS = ("cosine", "linear", "constant")
METHODS = ("lora", "qlora")
MAX_METADATA_PAIRS, MAX_METADATA_KEY_CHARS, MAX_METADATA_VALUE_CHARS = 16, 64, 512  # OpenAI's limits
MAX_GPUS_PER_JOB = 64
MAX_NODES_PER_JOB = 64
# Kubernetes label syntax: an optional DNS-subdomain prefix and a name of at most 63 characters.
_LABEL_NAME = r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?"
LABEL_KEY_PATTERN = re.compile(rf"^([a-z0-9]([-a-z0-9.]{{0,251}}[a-z0-9])?/)?{_LABEL_NAME}$")
LABEL_VALUE_PATTERN = re.compile(rf"^({_LABEL_NAME})?$")
TOLERATION_OPERATORS = ("Equal", "Exists")
TOLERATION_EFFECTS = ("", "NoSchedule", "PreferNoSchedule", "NoExecute")
STRATEGIES = ("auto", "ddp", "fsdp")  # how a job on several GPUs spreads the model (worker/distributed.py)
# Experiment trackers a job may report to (Hugging Face TrainingArguments.report_to names); where each one
# writes is the trainer's setting, never the request's (trainer_service/tracking.py).
TRACKERS = ("tensorboard", "mlflow", "trackio")


@dataclass(frozen=True)
class Hyperparameters:
    """Defaults follow the LoRA fine-tuning guides for Qwen2-VL; `max_steps` wins over `epochs` when set."""

    epochs: int = 1
    max_steps: int | None = None
    batch_size: int = 8
    gradient_accumulation_steps: int = 1
    learning_rate: float = 2e-4
    warmup_steps: int = 0
    weight_decay: float = 0.0
    scheduler: str = "cosine"
    seed: int = 0
    max_sequence_length: int = 2048
    lora_rank: int = 16
    lora_alpha: float = 32.0
    lora_dropout: float = 0.0
    lora_target_modules: tuple[str, ...] = ()  # empty: chosen by the four switches below
    finetune_vision_layers: bool = True
    finetune_language_layers: bool = True
    finetune_attention_modules: bool = True
    finetune_mlp_modules: bool = True
    finetune_projector: bool = True  # LoRA on the multimodal projector (Qwen's patch merger, LLaVA's projector)
    gradient_checkpointing: bool = False  # recompute activations in the backward pass: less memory, slower
    eval_every_steps: int = 0  # score the validation file every N steps; 0: only the test file, before and after
    checkpoint_every_steps: int = 50
    warmup_ratio: float | None = None  # warmup as a share of the total steps (ceil); instead of warmup_steps
    validation_split: float = 0.0  # share of the training file held out (seeded) when no validation_file is given
    max_samples: int | None = None  # train on the first N records only (LLaMA-Factory's max_samples)
    # Padding-free packing (Qwen2-VL / Qwen2.5-VL): each micro-batch is one row of whole samples laid end to end,
    # at most max_tokens_per_batch language tokens (image placeholders included) and batch_size samples,
    # attention kept inside each sample. Off: padded batches of batch_size samples. Off by default: on an H200
    # (2B shape) it paid on real-sized data (1.08x without, 1.26x with checkpointing) but not on uniform (0.93x).
    packing: bool = False
    max_tokens_per_batch: int = 8192
    group_by_length: bool = False  # packing off: batches of samples of similar length (seeded), less padding

    def validated(self) -> Hyperparameters:
        _check(1 <= self.epochs <= 100, "epochs", "must be between 1 and 100")
        _check(self.max_steps is None or 1 <= self.max_steps <= 1_000_000, "max_steps", "must be between 1 and 1e6")
        _check(1 <= self.batch_size <= 1024, "batch_size", "must be between 1 and 1024")
        _check(1 <= self.gradient_accumulation_steps <= 1024, "gradient_accumulation_steps",
               "must be between 1 and 1024")
        _check(0 < self.learning_rate <= 1, "learning_rate", "must be > 0 and <= 1")
        _check(self.warmup_steps >= 0, "warmup_steps", "must be >= 0")
        _check(0 <= self.weight_decay <= 1, "weight_decay", "must be between 0 and 1")
        _check(self.scheduler in SCHEDULERS, "scheduler", f"must be one of {', '.join(SCHEDULERS)}")
        _check(0 <= self.seed < 2**63, "seed", "must be between 0 and 2^63-1")
        _check(16 <= self.max_sequence_length <= 131072, "max_sequence_length", "must be between 16 and 131072")
        _check(1 <= self.lora_rank <= 512, "lora_rank", "must be between 1 and 512")
        _check(0 < self.lora_alpha <= 4096, "lora_alpha", "must be > 0 and <= 4096")
        _check(0 <= self.lora_dropout < 1, "lora_dropout", "must be >= 0 and < 1")
        _check(all(isinstance(m, str) and m.strip() for m in self.lora_target_modules), "lora_target_modules",
               "module names must be non-empty")
        if not self.lora_target_modules:
            _check(self.finetune_vision_layers or self.finetune_language_layers, "finetune_language_layers",
                   "at least one of vision or language layers must be fine-tuned")
            _check(self.finetune_attention_modules or self.finetune_mlp_modules, "finetune_mlp_modules",
                   "at least one of attention or MLP modules must be fine-tuned")
        _check(self.eval_every_steps >= 0, "eval_every_steps", "must be >= 0")
        _check(self.checkpoint_every_steps >= 1, "checkpoint_every_steps", "must be >= 1")
        _check(self.warmup_ratio is None or 0 <= self.warmup_ratio < 1, "warmup_ratio", "must be >= 0 and < 1")
        _check(self.warmup_ratio is None or not self.warmup_steps, "warmup_ratio",
               "set warmup_ratio or warmup_steps, not both")
        _check(0 <= self.validation_split <= 0.5, "validation_split", "must be between 0 and 0.5")
        _check(self.max_samples is None or self.max_samples >= 1, "max_samples", "must be >= 1")
        _check(16 <= self.max_tokens_per_batch <= 1_048_576, "max_tokens_per_batch", "must be between 16 and 2^20")
        _check(not self.packing or self.max_tokens_per_batch >= self.max_sequence_length, "max_tokens_per_batch",
               f"must be >= max_sequence_length ({self.max_sequence_length}) with packing, so every sample fits a row")
        _check(not (self.packing and self.group_by_length), "group_by_length",
               "is for packing off (a packed row has no padding to save)")
        return self


@dataclass(frozen=True)
class Toleration:
    key: str = ""
    operator: str = "Equal"
    value: str = ""
    effect: str = ""


@dataclass(frozen=True)
class Placement:
    """Where a job trains. gpu_count 0 takes the trainer's default; node_selector and tolerations go on the
    Kubernetes launcher's worker Job (the local launcher has one machine and refuses them)."""

    gpu_count: int = 0
    node_selector: dict[str, str] = field(default_factory=dict)
    tolerations: tuple[Toleration, ...] = ()
    nodes: int = 0  # 0 or 1: one node; above 1: torchrun on each node, c10d rendezvous (gpu_count GPUs per node)
    strategy: str = "auto"  # STRATEGIES; auto: FSDP when the bf16 model does not fit one GPU (worker/distributed.py)

    @property
    def selects_nodes(self) -> bool:
        return bool(self.node_selector or self.tolerations)

    @property
    def node_count(self) -> int:
        return max(1, self.nodes)

    def validated(self) -> Placement:
        _check(0 <= self.gpu_count <= MAX_GPUS_PER_JOB, "gpu_count", f"must be between 0 and {MAX_GPUS_PER_JOB}",
               prefix="placement.")
        _check(0 <= self.nodes <= MAX_NODES_PER_JOB, "nodes", f"must be between 0 and {MAX_NODES_PER_JOB}",
               prefix="placement.")
        _check(self.strategy in STRATEGIES, "strategy", f"must be one of {', '.join(STRATEGIES)}", prefix="placement.")
        for key, value in self.node_selector.items():
            _check(bool(LABEL_KEY_PATTERN.match(key)), f"node_selector[{key}]", "is not a Kubernetes label key",
                   prefix="placement.")
            _check(bool(LABEL_VALUE_PATTERN.match(value)), f"node_selector[{key}]",
                   "is not a Kubernetes label value", prefix="placement.")
        for index, toleration in enumerate(self.tolerations):
            name = f"tolerations[{index}]"
            _check(toleration.operator in TOLERATION_OPERATORS, name + ".operator",
                   f"must be one of {', '.join(TOLERATION_OPERATORS)}", prefix="placement.")
            _check(toleration.effect in TOLERATION_EFFECTS, name + ".effect",
                   f"must be empty or one of {', '.join(TOLERATION_EFFECTS[1:])}", prefix="placement.")
            _check(not toleration.key or bool(LABEL_KEY_PATTERN.match(toleration.key)), name + ".key",
                   "is not a Kubernetes label key", prefix="placement.")
            _check(toleration.operator == "Equal" or not toleration.value, name + ".value",
                   "must be empty with operator Exists", prefix="placement.")
            _check(toleration.operator == "Exists" or bool(toleration.key), name + ".key",
                   "is required with operator Equal", prefix="placement.")
        return self


# The test-set scores a promotion may be judged by (trainer_service.evaluation.EvaluationScores, less `examples`).
PROMOTION_METRICS = ("exact_match", "relaxed_accuracy", "bertscore_precision", "bertscore_recall", "bertscore_f1")


@dataclass(frozen=True)
class AliasPromotion:
    """Move a model alias to the job's adapter when it succeeds, if it scores at least the alias's current target
    on the job's test set (trainer_service/promotion.py)."""

    alias: str
    metric: str = "exact_match"

    def validated(self) -> AliasPromotion:
        _check(is_valid_alias_name(self.alias), "alias", f"must be {ALIAS_NAME_RULE}", prefix="promote_to_alias.")
        _check(self.metric in PROMOTION_METRICS, "metric", f"unknown metric {self.metric!r}: use one of "
               f"{', '.join(PROMOTION_METRICS)}", prefix="promote_to_alias.")
        return self


@dataclass(frozen=True)
class JobSpec:
    model: str
    training_file: str
    validation_file: str = ""
    test_file: str = ""
    dataset_format: DatasetFormat | None = None  # None: detected from the file
    columns: ColumnMapping | None = None
    method: str = "lora"
    hyperparameters: Hyperparameters = field(default_factory=Hyperparameters)
    suffix: str = ""
    metadata: dict[str, str] = field(default_factory=dict)
    placement: Placement = field(default_factory=Placement)
    dataset_name: str = ""  # an entry of the LLaMA-Factory dataset_info.json that training_file names
    promote_to_alias: AliasPromotion | None = None  # None: the job moves no alias
    report_to: tuple[str, ...] = ()  # experiment trackers (TRACKERS); empty: none

    def validated(self) -> JobSpec:
        _check(bool(self.model.strip()), "model", "is required", prefix="")
        _check(bool(self.training_file.strip()), "training_file", "is required", prefix="")
        _check(self.method in METHODS, "method", f"must be one of {', '.join(METHODS)}", prefix="")
        _check(not self.suffix or bool(SUFFIX_PATTERN.match(self.suffix)), "suffix",
               "must be 1-40 characters of a-z, 0-9 and '-', starting with a letter or digit", prefix="")
        _check(len(self.metadata) <= MAX_METADATA_PAIRS, "metadata", f"at most {MAX_METADATA_PAIRS} pairs", prefix="")
        for key, value in self.metadata.items():
            _check(0 < len(key) <= MAX_METADATA_KEY_CHARS, "metadata",
                   f"keys must be 1-{MAX_METADATA_KEY_CHARS} characters", prefix="")
            _check(len(value) <= MAX_METADATA_VALUE_CHARS, f"metadata[{key}]",
                   f"at most {MAX_METADATA_VALUE_CHARS} characters", prefix="")
        for tracker in self.report_to:
            _check(tracker in TRACKERS, "report_to", f"unknown tracker {tracker!r}: use {', '.join(TRACKERS)}",
                   prefix="")
        _check(len(set(self.report_to)) == len(self.report_to), "report_to", "names a tracker twice", prefix="")
        if self.promote_to_alias is not None:
            self.promote_to_alias.validated()
            _check(bool(self.test_file.strip()), "test_file", "is required with promote_to_alias: the alias moves only "
                   "if the new adapter scores at least its current target on a test set", prefix="")
        self.hyperparameters.validated()
        self.placement.validated()
        _check(not (self.method == "qlora" and self.placement.strategy == "fsdp"), "strategy",
               "fsdp shards LoRA jobs; a QLoRA job's 4-bit base trains with ddp (or auto)", prefix="placement.")
        return self

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> JobSpec:
        fields = {k: v for k, v in data.items() if k in {f.name for f in dataclasses.fields(cls)}}
        hyper = dict(fields.get("hyperparameters") or {})
        hyper["lora_target_modules"] = tuple(hyper.get("lora_target_modules", ()))
        fields["hyperparameters"] = Hyperparameters(**hyper)
        fields["dataset_format"] = DatasetFormat(data["dataset_format"]) if data.get("dataset_format") else None
        fields["columns"] = ColumnMapping(**data["columns"]) if data.get("columns") else None
        placement = dict(data.get("placement") or {})  # absent in jobs stored before placement existed
        placement["tolerations"] = tuple(Toleration(**t) for t in placement.get("tolerations", ()))
        fields["placement"] = Placement(**placement)
        promotion = data.get("promote_to_alias")
        fields["promote_to_alias"] = AliasPromotion(**promotion) if promotion else None
        fields["report_to"] = tuple(data.get("report_to") or ())
        return cls(**fields)

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["dataset_format"] = self.dataset_format.value if self.dataset_format else None
        return data


QLORA_NEEDS_CUDA = ("QLoRA loads the base in 4 bits with bitsandbytes, which needs a CUDA GPU; use method LORA "
                    "on this machine")
QLORA_NEEDS_BITSANDBYTES = "QLoRA needs the bitsandbytes package, which this trainer's environment lacks"
NODE_PLACEMENT_NEEDS_KUBERNETES = ("placement.node_selector and placement.tolerations choose Kubernetes nodes; "
                                   "this trainer runs jobs on its own machine (--launcher local)")


def check_resources(spec: JobSpec, *, models_dir: Path | None, qlora_unavailable: str | None,
                    node_placement_unavailable: str | None = NODE_PLACEMENT_NEEDS_KUBERNETES) -> Path:
    """Everything at once: the model (`check_model`), then every record of every dataset file the spec names
    by path. The job service checks files in two stages instead: what is cheap in Create, the rest after."""
    model_dir = check_model(spec, models_dir=models_dir, qlora_unavailable=qlora_unavailable,
                            node_placement_unavailable=node_placement_unavailable)
    for field_name, source in dataset_sources(spec.to_json()).items():
        load_job_dataset(spec, field_name, source)
    return model_dir


def check_model(spec: JobSpec, *, models_dir: Path | None, qlora_unavailable: str | None,
                node_placement_unavailable: str | None = NODE_PLACEMENT_NEEDS_KUBERNETES) -> Path:
    """Resolves the base model directory and checks its family and what this trainer can run; returns the
    directory. `qlora_unavailable` / `node_placement_unavailable` say why this trainer cannot do those (None: it
    can)."""
    if spec.method == "qlora" and qlora_unavailable:
        raise FailedPreconditionError(qlora_unavailable)
    if spec.placement.selects_nodes and node_placement_unavailable:
        raise FailedPreconditionError(node_placement_unavailable)
    model_dir = resolve_model(spec.model, models_dir)
    try:
        family = family_for_model_dir(model_dir)
    except UnsupportedModelError as error:
        raise InvalidArgumentError("model", str(error)) from None
    except (OSError, ValueError):
        raise InvalidArgumentError("model", f"{spec.model!r}: config.json is not readable JSON") from None
    if spec.hyperparameters.packing and (reason := packing_unsupported(family.name)):
        raise InvalidArgumentError("hyperparameters.packing", reason)
    return model_dir


PACKING_FAMILIES = ("qwen2_vl", "qwen2_5_vl")  # trainer_service/worker/packing.py says why only these


def packing_unsupported(family_name: str) -> str | None:
    """Why a family cannot train packed; None when it can."""
    if family_name in PACKING_FAMILIES:
        return None
    return (f"padding-free packing is implemented for {', '.join(PACKING_FAMILIES)}, not {family_name}; "
            "set packing to false")


# Each dataset field of a job and the split a dataset with several (a DatasetDict, shards) gives it.
DATASET_SPLITS = {"training_file": "train", "validation_file": "validation", "test_file": "test"}
_FILE_ID = re.compile(r"^file-[A-Za-z0-9]+$")  # trainer_service.files ids; a path has a suffix or a slash


def is_file_id(value: str) -> bool:
    return bool(_FILE_ID.match(value))


@dataclass(frozen=True)
class DatasetSource:
    """Where one of a job's datasets is read: the path (a file id's stored dataset, or the field's own path) and
    the dataset_info.json entry, when an uploaded LLaMA-Factory archive named one."""

    path: str
    dataset_name: str | None = None
    # Create resolved this path (symlinks followed) inside the caller's data root: whoever reads it later checks
    # that it still resolves to itself, so a symlink swapped in after Create cannot lead out of the root.
    confined: bool = False


def dataset_sources(stored: dict[str, Any]) -> dict[str, DatasetSource]:
    """Field -> source, for each dataset a stored job spec names. File ids resolve through the spec's
    `resolved_files` (written by Create), paths are their own source. A path Create confined to the data root
    (it has a `resolved_files` entry) is re-checked when read; one stored without an entry is read as it is."""
    resolved = stored.get("resolved_files") or {}
    sources = {}
    for field_name in DATASET_SPLITS:
        if value := stored.get(field_name):
            known = resolved.get(field_name)
            sources[field_name] = (DatasetSource(**{**known, "confined": not is_file_id(value)}) if known
                                   else DatasetSource(value))
    return sources


def load_job_dataset(spec: JobSpec, field_name: str, source: DatasetSource | None = None) -> list[Conversation]:
    """Loads one of a job's datasets as Create, the background validator and the worker all do: its split by
    role, the job's format, columns and dataset name. Errors name the field: `InvalidArgumentError`."""
    return _dataset_call(load_dataset, spec, field_name, source)


def inspect_job_dataset(spec: JobSpec, field_name: str, source: DatasetSource | None = None) -> DatasetSummary:
    """Create's cheap look at one of a job's datasets: its format (and why) and its first records, checked as
    `load_job_dataset` would."""
    return _dataset_call(inspect_dataset, spec, field_name, source)


def _dataset_call(read, spec: JobSpec, field_name: str, source: DatasetSource | None):
    source = source or DatasetSource(getattr(spec, field_name))
    if source.confined:
        check_still_resolved(field_name, source.path)  # right before the read: the loader follows links
    try:
        return read(source.path, spec.dataset_format, columns=spec.columns,
                    dataset_name=spec.dataset_name or source.dataset_name or None, split=DATASET_SPLITS[field_name])
    except DatasetFormatError as err:
        raise InvalidArgumentError(field_name, str(err)) from None


def resolve_model(model: str, models_dir: Path | None) -> Path:
    """A directory path, or a name under the configured models directory; it must hold a config.json."""
    candidates = [Path(model)]
    if models_dir is not None and not Path(model).is_absolute():
        root = models_dir.resolve()
        named = (root / model).resolve()
        if named.is_relative_to(root):
            candidates.insert(0, named)
    for candidate in candidates:
        if (candidate / "config.json").is_file():
            return candidate
    raise InvalidArgumentError("model", f"no model directory {model!r} (a path, or a name under the models "
                                        "directory, holding config.json)")


def _check(ok: bool, name: str, message: str, *, prefix: str = "hyperparameters.") -> None:
    if not ok:
        raise InvalidArgumentError(prefix + name, message)
