"""A LLaMA-Factory training YAML (`llamafactory-cli train examples/train_lora/qwen2vl_lora_sft.yaml`) as a
fine-tuning job: which keys map to which job fields, which have no effect here and why, and which change
training in a way this trainer cannot honor. Nothing is dropped silently: every key lands in one of the three.

LoRA defaults follow LLaMA-Factory's where they differ from the trainer's, so a migrated job trains what the
YAML would have: lora_rank 8 and lora_alpha 2 x lora_rank, the vision tower and the projector frozen
(freeze_vision_tower / freeze_multi_modal_projector default to true), gradient checkpointing on unless
disable_gradient_checkpointing is set. `dataset_dir` (default "data") is relative to the current directory, as
for llamafactory-cli.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DATASET_INFO = "dataset_info.json"
_DEFAULT = " (LLaMA-Factory's default)"
_SCHEDULERS = {"cosine": "cosine", "linear": "linear", "constant": "constant",
               "constant_with_warmup": "constant"}  # our constant schedule warms up too
# Keys that do not change what is trained here, with the reason the migration report gives.
NO_EFFECT: dict[str, str] = {
    "do_train": "the job trains",
    "template": "the model's own chat template is used",
    "output_dir": "the trainer writes artifacts to its artifact store (download them with `download`)",
    "overwrite_output_dir": "every job writes a new artifact directory",
    "logging_steps": "every step is reported as a job event",
    "plot_loss": "every job writes loss.png",
    "report_to": "progress goes to job events and the trainer's /metrics",
    "run_name": "use --suffix to name the fine-tuned model",
    "save_only_model": "checkpoints always hold what a resume needs",
    "overwrite_cache": "no preprocessing cache is kept",
    "preprocessing_num_workers": "datasets load in the trainer's own process",
    "dataloader_num_workers": "the trainer chooses its data workers per GPU",
    "ddp_timeout": "the trainer owns distributed launch (placement.gpu_count)",
    "bf16": "the trainer trains in bf16 where the device supports it",
    "fp16": "the trainer trains in bf16 where the device supports it",
    "trust_remote_code": "only built-in model families load; no remote code is run",
    "flash_attn": "the trainer chooses the attention kernel",
    "video_max_pixels": "video is not trained on",
    "video_fps": "video is not trained on",
    "video_maxlen": "video is not trained on",
    "per_device_eval_batch_size": "validation runs one sample at a time",
}


class LlamaFactoryConfigError(ValueError):
    """The YAML cannot become a job; the message names the file and the key."""


@dataclass(frozen=True)
class Migration:
    """What `migrate()` made of a YAML: `create_kwargs` for `client.jobs.create(**create_kwargs)`."""

    create_kwargs: dict[str, Any]
    dataset_dir: Path
    mapped: dict[str, str] = field(default_factory=dict)  # YAML key -> job field
    no_effect: dict[str, str] = field(default_factory=dict)  # YAML key -> why it changes nothing here
    unsupported: dict[str, str] = field(default_factory=dict)  # YAML key -> what is not honored

    def report(self) -> list[str]:
        lines = [f"mapped: {key} -> {target}" for key, target in self.mapped.items()]
        lines += [f"no effect: {key}: {why}" for key, why in self.no_effect.items()]
        lines += [f"unsupported: {key}: {why}" for key, why in self.unsupported.items()]
        return lines


def load_yaml(path: Path) -> dict[str, Any]:
    import yaml  # PyYAML: only the migration needs it

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as err:
        raise LlamaFactoryConfigError(f"{path}: cannot be read ({err.strerror})") from None
    except yaml.YAMLError as err:
        raise LlamaFactoryConfigError(f"{path}: not valid YAML ({str(err).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise LlamaFactoryConfigError(f"{path}: expected a mapping of LLaMA-Factory arguments")
    return data


def migrate(path: str | Path, *, cwd: str | Path | None = None) -> Migration:
    """Maps the YAML at `path`; raises LlamaFactoryConfigError naming the key when a value cannot be used."""
    path = Path(path)
    return migrate_mapping(load_yaml(path), source=str(path), cwd=Path(cwd) if cwd else Path.cwd())


def migrate_mapping(config: Mapping[str, Any], *, source: str, cwd: Path) -> Migration:
    builder = _Builder(dict(config), source)
    builder.run(cwd)
    return builder.result


class _Builder:
    def __init__(self, config: dict[str, Any], source: str):
        self.config, self.source = config, source
        self.hyper: dict[str, Any] = {}
        self.kwargs: dict[str, Any] = {"method": "lora"}
        self.mapped: dict[str, str] = {}
        self.no_effect: dict[str, str] = {}
        self.unsupported: dict[str, str] = {}
        self.result: Migration

    def fail(self, key: str, message: str) -> None:
        raise LlamaFactoryConfigError(f"{self.source}: {key}: {message}")

    def take(self, key: str, target: str, convert: Callable[[str, Any], Any], *, hyper: bool = True) -> None:
        if key not in self.config:
            return
        value = self.config.pop(key)
        if value is None:
            self.no_effect[key] = "null: the trainer's default"
            return
        (self.hyper if hyper else self.kwargs)[target] = self.convert(key, convert, value)
        self.mapped[key] = ("hyperparameters." if hyper else "") + target

    def convert(self, key: str, convert: Callable[[Any], Any], value: Any) -> Any:
        try:
            return convert(value)
        except ValueError as err:
            self.fail(key, f"{value!r} {err}")

    def run(self, cwd: Path) -> None:
        self._model_and_method()
        self._dataset(cwd)
        self._lora()
        self._training()
        self._evaluation()
        for key in list(self.config):
            value = self.config.pop(key)
            if key in NO_EFFECT:
                self.no_effect[key] = NO_EFFECT[key]
            elif key == "resume_from_checkpoint" and value in (None, False):
                self.no_effect[key] = "jobs resume from their own checkpoints"
            else:
                self.unsupported[key] = f"{value!r} is not honored by this trainer"
        self.kwargs["hyperparameters"] = self.hyper
        self.result = Migration(self.kwargs, self.dataset_dir, self.mapped, self.no_effect, self.unsupported)

    def _model_and_method(self) -> None:
        if not self.config.get("model_name_or_path"):
            self.fail("model_name_or_path", "is required")
        self.take("model_name_or_path", "model", _text, hyper=False)
        if "stage" in self.config:
            stage = self.config.pop("stage")
            if stage != "sft":
                self.fail("stage", f"{stage!r}: only supervised fine-tuning (sft) runs here")
            self.no_effect["stage"] = "sft is what the trainer runs"
        absent = "finetuning_type" not in self.config
        kind = self.config.pop("finetuning_type", "lora")
        if kind != "lora":
            self.fail("finetuning_type", f"{kind!r}: only lora (and 4-bit QLoRA via quantization_bit: 4) runs here")
        self.mapped["finetuning_type"] = "method" + (_DEFAULT if absent else "")
        if "quantization_bit" in self.config:
            bits = self.config.pop("quantization_bit")
            if bits not in (None, 4):
                self.fail("quantization_bit", f"{bits!r}: only 4-bit (QLoRA, NF4) quantization runs here")
            if bits == 4:
                self.kwargs["method"] = "qlora"
                self.mapped["quantization_bit"] = "method (qlora)"
            else:
                self.no_effect["quantization_bit"] = "null: no quantization"

    def _dataset(self, cwd: Path) -> None:
        names = self.config.pop("dataset", None)
        listed = [n.strip() for n in names.split(",") if n.strip()] if isinstance(names, str) else names
        if not listed or not isinstance(listed, list) or not all(isinstance(n, str) for n in listed):
            self.fail("dataset", "name one dataset of dataset_info.json")
        if len(listed) > 1:
            self.fail("dataset", f"{', '.join(listed)}: a job trains on one dataset; merge them into one "
                                 "dataset_info.json entry or run one job per dataset")
        directory = self.config.pop("dataset_dir", "data")
        self.dataset_dir = Path(directory) if Path(directory).is_absolute() else cwd / directory
        info = self.dataset_dir / DATASET_INFO
        if not info.is_file():
            self.fail("dataset_dir", f"{self.dataset_dir} holds no {DATASET_INFO}")
        self.kwargs.update(training_file=str(info), dataset_name=listed[0])
        self.mapped["dataset"], self.mapped["dataset_dir"] = "dataset_name", "training_file (its dataset_info.json)"
        if "eval_dataset" in self.config:
            eval_names = self.config.pop("eval_dataset")
            if eval_names:
                self.unsupported["eval_dataset"] = f"{eval_names!r}: use val_size, or --validation-file"
            else:
                self.no_effect["eval_dataset"] = f"{eval_names!r}: none"

    def _lora(self) -> None:
        self.take("lora_rank", "lora_rank", _whole)
        self.take("lora_alpha", "lora_alpha", _number)
        self.take("lora_dropout", "lora_dropout", _number)
        if "lora_rank" not in self.hyper:
            self.hyper["lora_rank"] = 8
            self.mapped["lora_rank"] = "hyperparameters.lora_rank = 8" + _DEFAULT
        if "lora_alpha" not in self.hyper:
            self.hyper["lora_alpha"] = 2.0 * self.hyper["lora_rank"]
            self.no_effect.pop("lora_alpha", None)  # a null lora_alpha means this default too
            self.mapped["lora_alpha"] = "hyperparameters.lora_alpha = 2 x lora_rank" + _DEFAULT
        absent = "lora_target" not in self.config
        modules = [m.strip() for m in str(self.config.pop("lora_target", "all")).split(",") if m.strip()]
        if modules != ["all"]:
            self.hyper["lora_target_modules"] = tuple(modules)
            self.mapped["lora_target"] = "hyperparameters.lora_target_modules"
        else:
            self.mapped["lora_target"] = "every linear layer of the parts not frozen" + (_DEFAULT if absent else "")
        for key, target, default in (("freeze_vision_tower", "finetune_vision_layers", True),
                                     ("freeze_multi_modal_projector", "finetune_projector", True),
                                     ("freeze_language_model", "finetune_language_layers", False)):
            absent = key not in self.config
            frozen = self.config.pop(key, default)
            if not isinstance(frozen, bool):
                self.fail(key, f"{frozen!r}: expected true or false")
            self.hyper[target] = not frozen
            self.mapped[key] = f"hyperparameters.{target} = {not frozen}" + (_DEFAULT if absent else "")

    def _training(self) -> None:
        self.take("cutoff_len", "max_sequence_length", _whole)
        self.take("per_device_train_batch_size", "batch_size", _whole)
        self.take("gradient_accumulation_steps", "gradient_accumulation_steps", _whole)
        self.take("learning_rate", "learning_rate", _number)
        self.take("num_train_epochs", "epochs", _whole)
        self.take("weight_decay", "weight_decay", _number)
        self.take("warmup_ratio", "warmup_ratio", _number)
        self.take("warmup_steps", "warmup_steps", _whole)
        if self.hyper.get("warmup_steps") == 0 and "warmup_ratio" in self.hyper:
            del self.hyper["warmup_steps"]  # LLaMA-Factory's explicit 0 means "use the ratio"
        self.take("seed", "seed", _whole)
        self.take("max_samples", "max_samples", _whole)
        self.take("save_steps", "checkpoint_every_steps", _whole)
        if "max_steps" in self.config:
            steps = self.config.pop("max_steps")
            if steps not in (None, -1):
                self.hyper["max_steps"] = self.convert("max_steps", _whole, steps)
                self.mapped["max_steps"] = "hyperparameters.max_steps"
            else:
                self.no_effect["max_steps"] = f"{steps!r}: epochs decide"
        if "lr_scheduler_type" in self.config:
            scheduler = self.config.pop("lr_scheduler_type")
            if scheduler is None:
                self.no_effect["lr_scheduler_type"] = "null: the trainer's default (cosine)"
            elif scheduler not in _SCHEDULERS:
                self.unsupported["lr_scheduler_type"] = f"{scheduler!r}: this trainer has {', '.join(_SCHEDULERS)}"
            else:
                self.hyper["scheduler"] = _SCHEDULERS[scheduler]
                self.mapped["lr_scheduler_type"] = "hyperparameters.scheduler"
        self._packing()
        absent = "disable_gradient_checkpointing" not in self.config
        disabled = self.config.pop("disable_gradient_checkpointing", False)
        if not isinstance(disabled, bool):
            self.fail("disable_gradient_checkpointing", f"{disabled!r}: expected true or false")
        self.hyper["gradient_checkpointing"] = not disabled
        self.mapped["disable_gradient_checkpointing"] = (f"hyperparameters.gradient_checkpointing = {not disabled}"
                                                         + (_DEFAULT if absent else ""))

    def _packing(self) -> None:
        """`packing` / `neat_packing`: LLaMA-Factory packs samples into rows of cutoff_len tokens; with plain
        `packing` they attend to each other, with `neat_packing` each attends to itself. The trainer packs only
        the neat way, so either asks for its `packing`, rows of at most cutoff_len tokens."""
        flags = {}
        for key in ("packing", "neat_packing"):
            if key not in self.config:
                continue
            value = self.config.pop(key)
            if value is None:
                self.no_effect[key] = "null: the trainer's default (no packing)"
                continue
            if not isinstance(value, bool):
                self.fail(key, f"{value!r}: expected true or false")
            flags[key] = value
        if not flags:
            return
        packing = any(flags.values())
        self.hyper["packing"] = packing
        rows = ""
        if packing and "max_sequence_length" in self.hyper:
            self.hyper["max_tokens_per_batch"] = self.hyper["max_sequence_length"]
            rows = f", max_tokens_per_batch = {self.hyper['max_tokens_per_batch']} (cutoff_len)"
        neat = " (attention inside each sample, as neat_packing)" if packing else ""
        for key in flags:
            self.mapped[key] = f"hyperparameters.packing = {packing}{neat}{rows}"

    def _evaluation(self) -> None:
        if "val_size" in self.config:
            share = self.config.pop("val_size")
            if share in (None, 0):
                self.no_effect["val_size"] = f"{share!r}: nothing is held out"
            else:
                number = self.convert("val_size", _number, share)
                if isinstance(share, int) and share > 1 or not 0 < number <= 0.5:
                    self.fail("val_size", f"{share!r}: give a share between 0 and 0.5 (a record count is not "
                                          "supported)")
                self.hyper["validation_split"] = number
                self.mapped["val_size"] = "hyperparameters.validation_split"
        strategy = None
        for key in ("eval_strategy", "evaluation_strategy"):  # the second: transformers' older name
            if key not in self.config:
                continue
            strategy = self.config.pop(key)
            if strategy == "steps":
                self.mapped[key] = "hyperparameters.eval_every_steps (with eval_steps)"
            elif strategy in (None, "no"):
                self.no_effect[key] = f"{strategy!r}: no validation during training"
            else:
                self.unsupported[key] = f"{strategy!r}: validation runs every eval_steps steps"
        if strategy == "steps":
            # transformers: eval_steps defaults to logging_steps (500 by default) under the "steps" strategy.
            every = self.config.pop("eval_steps", None) or self.config.get("logging_steps") or 500
            self.hyper["eval_every_steps"] = self.convert("eval_steps", _whole, every)
            self.mapped["eval_steps"] = "hyperparameters.eval_every_steps"
        elif "eval_steps" in self.config:
            self.config.pop("eval_steps")
            self.no_effect["eval_steps"] = "eval_strategy is not 'steps', so LLaMA-Factory would not validate either"


def _text(value: Any) -> str:
    return str(value)


def _number(value: Any) -> float:
    # PyYAML reads "1e-4" (no dot) as a string; LLaMA-Factory's own examples write 1.0e-4.
    if isinstance(value, bool):
        raise ValueError("is not a number")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError("is not a number") from None
    if not math.isfinite(number):
        raise ValueError("is not a finite number")
    return number


def _whole(value: Any) -> int:
    number = _number(value)
    if number != int(number):
        raise ValueError("is not a whole number")
    return int(number)
