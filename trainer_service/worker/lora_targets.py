"""Which Qwen2-VL modules get LoRA adapters, from Unsloth-style switches (vision / language, attention / MLP)."""

from __future__ import annotations

from ..job_spec import Hyperparameters

_VISION_ATTENTION = r"visual\.blocks\.\d+\.attn\.(qkv|proj)"
_VISION_MLP = r"visual\.(blocks\.\d+\.mlp\.(fc1|fc2)|merger\.mlp\.(0|2))"
_LANGUAGE_ATTENTION = r"language_model\.layers\.\d+\.self_attn\.(q_proj|k_proj|v_proj|o_proj)"
_LANGUAGE_MLP = r"language_model\.layers\.\d+\.mlp\.(gate_proj|up_proj|down_proj)"


def target_modules(hyper: Hyperparameters) -> str | list[str]:
    """A peft `target_modules` value: the explicit list when given, else a regex built from the switches."""
    if hyper.lora_target_modules:
        return list(hyper.lora_target_modules)
    parts = []
    if hyper.finetune_vision_layers:
        parts += [p for p, on in ((_VISION_ATTENTION, hyper.finetune_attention_modules),
                                  (_VISION_MLP, hyper.finetune_mlp_modules)) if on]
    if hyper.finetune_language_layers:
        parts += [p for p, on in ((_LANGUAGE_ATTENTION, hyper.finetune_attention_modules),
                                  (_LANGUAGE_MLP, hyper.finetune_mlp_modules)) if on]
    return rf".*({'|'.join(parts)})$"
