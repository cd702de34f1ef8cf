"""LLaVA-1.5 and LLaVA-1.6 / LLaVA-NeXT (llava-hf). LLaVA-1.5: a CLIP vision tower, a two-layer MLP projector,
a Llama / Mistral language model, and Vicuna-style turns, `USER: <image>\\n... ASSISTANT: answer</s>` (the
format LLaVA was trained on; llava-hf's own chat template leaves the `</s>` out, so with it the labels run to
the end of the sample). LLaVA-1.6 adds any-resolution tiles and, on Mistral-7B, Mistral's turns:
`[INST] <image>\\n... [/INST] answer</s>`."""

from __future__ import annotations

import dataclasses

from .base import ModelFamily

# transformers 5 flattens CLIPVisionModel to `vision_tower.encoder...`; checkpoints saved before keep
# `vision_tower.vision_model.encoder...`.
_CLIP_LAYERS = r"vision_tower\.(vision_model\.)?encoder\.layers\.\d+"

LLAVA = ModelFamily(
    name="llava", model_types=frozenset({"llava"}),
    assistant_header="ASSISTANT:", turn_end="</s>",
    vision_attention=_CLIP_LAYERS + r"\.self_attn\.(q_proj|k_proj|v_proj|out_proj)",
    vision_mlp=_CLIP_LAYERS + r"\.mlp\.(fc1|fc2)",
    projector=r"multi_modal_projector\.(linear_1|linear_2)",
    language_attention=r"language_model\.layers\.\d+\.self_attn\.(q_proj|k_proj|v_proj|o_proj)",
    language_mlp=r"language_model\.layers\.\d+\.mlp\.(gate_proj|up_proj|down_proj)",
    # With --enable-tower-connector-lora, vLLM 0.32 counts the tower's tokens without CLIP's class token and every
    # image request with an adapter fails (einsum 64 vs 65), even one adapting the language model alone. Without
    # the flag, adapters serve on the language model only.
    vllm_serves_tower_connector_lora=False,
    # transformers 5.17 writes the CLIP tower without its `vision_model.` level; vLLM 0.32 reads only that.
    vllm_weight_renames=tuple((f"vision_tower.{part}.", f"vision_tower.vision_model.{part}.")
                              for part in ("embeddings", "encoder", "pre_layrnorm", "post_layernorm")),
)

# vLLM's LLaVA-NeXT counts its tower's tokens right: the tower and projector LoRA serve (tested on vLLM CPU).
LLAVA_NEXT = dataclasses.replace(LLAVA, name="llava_next", model_types=frozenset({"llava_next"}),
                                 assistant_header="[/INST]", turn_end="</s>", vllm_serves_tower_connector_lora=True)
