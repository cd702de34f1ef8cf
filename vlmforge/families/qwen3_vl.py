"""Qwen3-VL (dense) and Qwen3.5: ChatML turns, a ViT with 16 px patches whose 2x2 patch merger (`linear_fc1` /
`linear_fc2`) is the projector, module names of transformers 5.17's Qwen3VLForConditionalGeneration and
Qwen3_5ForConditionalGeneration.

Qwen3-VL also feeds features of some vision blocks straight into the first language layers (DeepStack): their
mergers (`visual.deepstack_merger_list.N`) are projectors too, and vLLM counts them as connector. Qwen3.5 has no
DeepStack; its language model interleaves gated-delta-net linear-attention layers (`linear_attn`, three of every
four) with gated full attention (`self_attn`): both are the token mixers the attention switch adapts. The
depthwise `linear_attn.conv1d` is a convolution, which LoRA here does not target.

Qwen3.5's template opens the last assistant turn of a chat with an empty think block (`<think>\\n\\n</think>\\n\\n`,
also the generation prompt of the non-thinking template): it follows the header, so the labels cover it, as TRL's
training template for Qwen3.5 does. vLLM 0.32 serves both with LoRA on the tower and the mergers
(`supports_tower_connector_lora` of its Qwen3VLForConditionalGeneration, which Qwen3_5ForConditionalGeneration
extends) and reads transformers' weight names as they are."""

from __future__ import annotations

from .base import ModelFamily

_CHATML = {"assistant_header": "<|im_start|>assistant\n", "turn_end": "<|im_end|>"}
_VISION_BLOCKS = r"visual\.blocks\.\d+"
_TEXT_LAYERS = r"language_model\.layers\.\d+"
_FULL_ATTENTION = _TEXT_LAYERS + r"\.self_attn\.(q_proj|k_proj|v_proj|o_proj)"
_TOWER = {"vision_attention": _VISION_BLOCKS + r"\.attn\.(qkv|proj)",
          "vision_mlp": _VISION_BLOCKS + r"\.mlp\.(linear_fc1|linear_fc2)",
          "language_mlp": _TEXT_LAYERS + r"\.mlp\.(gate_proj|up_proj|down_proj)"}

QWEN3_VL = ModelFamily(
    name="qwen3_vl", model_types=frozenset({"qwen3_vl"}), **_CHATML, **_TOWER,
    projector=r"visual\.(merger|deepstack_merger_list\.\d+)\.(linear_fc1|linear_fc2)",
    language_attention=_FULL_ATTENTION,
)

QWEN3_5 = ModelFamily(
    name="qwen3_5", model_types=frozenset({"qwen3_5"}), **_CHATML, **_TOWER,
    projector=r"visual\.merger\.(linear_fc1|linear_fc2)",
    language_attention=(rf"({_FULL_ATTENTION}|"
                        rf"{_TEXT_LAYERS}\.linear_attn\.(in_proj_qkv|in_proj_z|in_proj_b|in_proj_a|out_proj))"),
)
