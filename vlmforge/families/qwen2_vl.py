"""Qwen2-VL and Qwen2.5-VL: ChatML turns, a ViT whose 2x2 patch merger is the projector. Qwen2.5-VL's vision
blocks have a gated (SwiGLU) MLP where Qwen2-VL's have fc1 / fc2; the rest of the names are shared."""

from __future__ import annotations

from .base import ModelFamily

_CHATML = {"assistant_header": "<|im_start|>assistant\n", "turn_end": "<|im_end|>"}
_VISION_ATTENTION = r"visual\.blocks\.\d+\.attn\.(qkv|proj)"
_PROJECTOR = r"visual\.merger\.mlp\.(0|2)"
_LANGUAGE_ATTENTION = r"language_model\.layers\.\d+\.self_attn\.(q_proj|k_proj|v_proj|o_proj)"
_LANGUAGE_MLP = r"language_model\.layers\.\d+\.mlp\.(gate_proj|up_proj|down_proj)"

QWEN2_VL = ModelFamily(
    name="qwen2_vl", model_types=frozenset({"qwen2_vl"}), **_CHATML,
    vision_attention=_VISION_ATTENTION, vision_mlp=r"visual\.blocks\.\d+\.mlp\.(fc1|fc2)", projector=_PROJECTOR,
    language_attention=_LANGUAGE_ATTENTION, language_mlp=_LANGUAGE_MLP,
)

QWEN2_5_VL = ModelFamily(
    name="qwen2_5_vl", model_types=frozenset({"qwen2_5_vl"}), **_CHATML,
    vision_attention=_VISION_ATTENTION, vision_mlp=r"visual\.blocks\.\d+\.mlp\.(gate_proj|up_proj|down_proj)",
    projector=_PROJECTOR, language_attention=_LANGUAGE_ATTENTION, language_mlp=_LANGUAGE_MLP,
)
