"""How a job's base model is loaded and given its LoRA adapters.

Two backends take the same job spec: plain transformers + peft (everywhere) and Unsloth (CUDA, where it is
installed). The training loop, checkpoints, evaluation and artifacts are shared; only loading, adapter
injection and the train/inference mode switch differ. QLoRA loads the base in 4 bits (NF4, bitsandbytes).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

import torch

from vlmforge.families import family_for_model_type

from ..errors import FailedPreconditionError
from ..job_spec import Hyperparameters
from .compile_blocks import round_like_eager
from .lora_targets import target_modules
from .vision_attention import use_varlen_vision_attention, varlen_vision_attention_applies

BackendChoice = Literal["auto", "transformers", "unsloth"]
BACKEND_ENV = "VLMFORGE_TRAINER_TRAINING_BACKEND"  # how the service hands its setting to the worker


@dataclass(frozen=True)
class Placement:
    """Where the base model lives and in which precision: bf16 on GPUs that have it, fp32 otherwise (CPU
    bf16 is slow and drifts; fp16 would need loss scaling)."""

    device: torch.device
    dtype: torch.dtype

    @classmethod
    def detect(cls) -> Placement:
        if torch.cuda.is_available():
            dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
            return cls(torch.device("cuda", torch.cuda.current_device()), dtype)
        return cls(torch.device("cpu"), torch.float32)


class TrainingBackend(Protocol):
    name: str
    placement: Placement
    fused_loss: bool  # computes its loss without materialising every position's logits (else train.py does)

    def load(self, model_dir: Path, *, quantize_4bit: bool, hyper: Hyperparameters): ...
    def add_lora(self, model, hyper: Hyperparameters): ...
    def for_training(self, model) -> None: ...
    def for_inference(self, model) -> None: ...
    def compute_precision(self): ...
    def vision_attention(self, model) -> str: ...  # how the vision tower attends, for the job's events


class TransformersBackend:
    name = "transformers"
    fused_loss = False

    def __init__(self, placement: Placement, *, mixed_precision: bool | None = None,
                 varlen_vision_attention: bool = True):
        self.placement = placement
        self._mixed_precision = (placement.device.type == "cuda" and placement.dtype == torch.bfloat16
                                 if mixed_precision is None else mixed_precision)
        self._varlen_vision_attention = varlen_vision_attention  # off only to measure against transformers' SDPA

    def load(self, model_dir: Path, *, quantize_4bit: bool, hyper: Hyperparameters):
        from transformers import AutoModelForImageTextToText

        options = {"dtype": self.placement.dtype}
        if self.placement.device.type == "cuda":
            options["device_map"] = {"": self.placement.device}
        if quantize_4bit:
            options["quantization_config"] = _four_bit_config(self.placement.dtype)
        model = AutoModelForImageTextToText.from_pretrained(model_dir, **options)
        if quantize_4bit:
            from peft import prepare_model_for_kbit_training

            model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=hyper.gradient_checkpointing,
                                                    gradient_checkpointing_kwargs={"use_reentrant": False})
        elif hyper.gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            model.enable_input_require_grads()  # the frozen embeddings' output must carry grad for checkpointing
        return model

    def add_lora(self, model, hyper: Hyperparameters):
        from peft import LoraConfig, get_peft_model

        family = family_for_model_type(model.config.model_type)
        config = LoraConfig(r=hyper.lora_rank, lora_alpha=hyper.lora_alpha, lora_dropout=hyper.lora_dropout,
                            target_modules=target_modules(hyper, family))
        return get_peft_model(model, config)

    def for_training(self, model) -> None:
        model.train()
        # Under autocast the LoRA matmuls run in bf16 on the fp32 adapter weights (the optimizer keeps fp32
        # masters), as transformers' Trainer does with bf16=True. PEFT's own cast would otherwise copy every
        # adapted layer's input to fp32 and run its LoRA matmuls in fp32: a fifth of a 2B step on an H100.
        _set_lora_input_casting(model, enabled=not self._mixed_precision)
        self._use_vision_attention(model)

    def for_inference(self, model) -> None:
        model.eval()
        _set_lora_input_casting(model, enabled=True)  # generation runs without autocast
        self._use_vision_attention(model)

    def _use_vision_attention(self, model) -> None:
        if self._varlen_vision_attention:
            use_varlen_vision_attention(model)

    def vision_attention(self, model) -> str:
        if self._varlen_vision_attention and varlen_vision_attention_applies(model):
            return "all of a batch's images in one varlen flash call a block (one SDPA per image off CUDA)"
        return f"the model's own ({getattr(model.config, 'vision_config', model.config)._attn_implementation})"

    def compute_precision(self):
        """The context the training forward and loss run in."""
        if self._mixed_precision:
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()


def _set_lora_input_casting(model, *, enabled: bool) -> None:
    from peft.tuners.tuners_utils import BaseTunerLayer

    for module in model.modules():
        if isinstance(module, BaseTunerLayer):
            module.cast_input_dtype_enabled = enabled


class UnslothBackend:
    """Unsloth's FastVisionModel: its own kernels and offloaded gradient checkpointing; same adapters (PEFT)."""

    name = "unsloth"
    fused_loss = True  # Unsloth's patched forward fuses the LM head with the cross-entropy

    def __init__(self, placement: Placement):
        self.placement = placement

    def load(self, model_dir: Path, *, quantize_4bit: bool, hyper: Hyperparameters):
        from unsloth import FastVisionModel

        model, _ = FastVisionModel.from_pretrained(
            str(model_dir), dtype=self.placement.dtype, load_in_4bit=quantize_4bit,
            use_gradient_checkpointing="unsloth" if hyper.gradient_checkpointing else False,
            max_seq_length=hyper.max_sequence_length, local_files_only=True)
        return model

    def add_lora(self, model, hyper: Hyperparameters):
        from unsloth import FastVisionModel

        # The same modules as the transformers backend: Unsloth's own choice from the four switches leaves out
        # the multimodal projector (Qwen's patch merger), so its runs trained another set of adapters.
        # A regex string is passed to PEFT as it is (Unsloth only rewrites lists).
        targets = target_modules(hyper, family_for_model_type(model.config.model_type))
        return FastVisionModel.get_peft_model(
            model, r=hyper.lora_rank, lora_alpha=hyper.lora_alpha, lora_dropout=hyper.lora_dropout, bias="none",
            target_modules=targets, finetune_vision_layers=hyper.finetune_vision_layers,
            finetune_language_layers=hyper.finetune_language_layers,
            finetune_attention_modules=hyper.finetune_attention_modules,
            finetune_mlp_modules=hyper.finetune_mlp_modules, random_state=hyper.seed,
            use_gradient_checkpointing="unsloth" if hyper.gradient_checkpointing else False)

    def for_training(self, model) -> None:
        from unsloth import FastVisionModel

        FastVisionModel.for_training(model)

    def for_inference(self, model) -> None:
        from unsloth import FastVisionModel

        FastVisionModel.for_inference(model)

    def compute_precision(self):
        return contextlib.nullcontext()  # Unsloth's kernels pick their own precision

    def vision_attention(self, model) -> str:
        return "Unsloth's own"


def unsloth_installed() -> bool:
    return importlib.util.find_spec("unsloth") is not None


def bitsandbytes_installed() -> bool:
    return importlib.util.find_spec("bitsandbytes") is not None


def backend_unavailable(choice: BackendChoice, placement: Placement) -> str | None:
    """Why `choice` cannot train on this machine; None when it can. Checked by the service at start too."""
    if choice == "unsloth" and not (placement.device.type == "cuda" and unsloth_installed()):
        return "the Unsloth backend needs a CUDA GPU and the unsloth package"
    return None


def select_backend(choice: BackendChoice, placement: Placement | None = None) -> TrainingBackend:
    """`auto` is plain transformers + peft everywhere; Unsloth only when asked for. Its losses left plain's by
    13-15% within 20 steps because its compiled kernels skip eager's bf16 rounding, which drops most of a young
    adapter's output; kept here, they still differ by up to 1.02% (0.61% from step 3) over 12 steps on an H200
    (BENCHMARKS.md, "Training speed, round 2"): not yet inside the 1% that would let `auto` take it."""
    placement = placement or Placement.detect()
    if reason := backend_unavailable(choice, placement):
        raise FailedPreconditionError(reason)
    if choice == "unsloth":
        # Unsloth patches transformers when it is imported: it must come first, and never phone home.
        os.environ.setdefault("UNSLOTH_DISABLE_STATISTICS", "1")
        import unsloth  # noqa: F401

        # Unsloth compiles much of the model; with Inductor's default rounding its fused kernels keep the small
        # LoRA deltas that eager bf16 rounds away, and its losses leave transformers' (compile_blocks.py says why).
        round_like_eager()
        return UnslothBackend(placement)
    return TransformersBackend(placement)


def _four_bit_config(compute_dtype: torch.dtype):
    from transformers import BitsAndBytesConfig

    # The QLoRA paper's recipe: NF4 weights, double-quantised constants, matmuls in the compute dtype.
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=compute_dtype)
