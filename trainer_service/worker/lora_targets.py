"""Which modules get LoRA adapters, from Unsloth-style switches (vision / language, attention / MLP) plus the
multimodal projector, in the module names of the model's family (vlmforge.families)."""

from __future__ import annotations

from vlmforge.families import ModelFamily

from ..job_spec import Hyperparameters


def target_modules(hyper: Hyperparameters, family: ModelFamily) -> str | list[str]:
    """A peft `target_modules` value: the explicit list when given, else a regex built from the switches."""
    if hyper.lora_target_modules:
        return list(hyper.lora_target_modules)
    parts = []
    if hyper.finetune_vision_layers:
        parts += [p for p, on in ((family.vision_attention, hyper.finetune_attention_modules),
                                  (family.vision_mlp, hyper.finetune_mlp_modules)) if on]
    if hyper.finetune_language_layers:
        parts += [p for p, on in ((family.language_attention, hyper.finetune_attention_modules),
                                  (family.language_mlp, hyper.finetune_mlp_modules)) if on]
    if hyper.finetune_projector and family.projector_takes_lora:  # Gemma 3's projector has no linear layer
        parts.append(family.projector)
    return rf".*({'|'.join(parts)})$"
