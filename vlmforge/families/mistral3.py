"""Mistral-Small-3.1 / 3.2 (mistralai, `mistral3`, transformers' Mistral3ForConditionalGeneration): the Pixtral
vision tower (RoPE-2D ViT with gated MLPs), a projector that RMS-normalises the patches, merges each 2x2 of them
(`patch_merger.merging_layer`) and maps them through a two-layer GELU MLP, and a Mistral text model. Turns are
Mistral's tokenizer-v7 ones: `<s>[SYSTEM_PROMPT]...[/SYSTEM_PROMPT][INST][IMG]question[/INST]answer</s>`.

vLLM 0.32 serves it in both formats: `Mistral3ForConditionalGeneration` for transformers' (config.json,
model-*.safetensors, the names transformers and peft write, mapped by its hf_to_vllm_mapper) and
`PixtralForConditionalGeneration` for Mistral's own (params.json, consolidated.safetensors, tekken.json), which
its `auto` config format, tokenizer mode and load format all prefer when a directory has both, as mistralai's
published repos do. Our adapters carry transformers' names, so such a base is served with
`--vllm-args "--config-format hf --tokenizer-mode hf --load-format safetensors"` (the last makes vLLM read the
files model.safetensors.index.json lists, not consolidated.safetensors); merged models have transformers' only.

vLLM serves LoRA on its language model only: `Mistral3ForConditionalGeneration` does not set
`supports_tower_connector_lora` (vllm/model_executor/models/mistral3.py; only the Mistral-format Pixtral class
does), so vLLM's LoRA manager ignores --enable-tower-connector-lora for it and wraps no tower or projector
module, and its patch merger is a plain `nn.Linear` that vLLM's LoRA layers cannot wrap anyway."""

from __future__ import annotations

from .base import ModelFamily

_VISION_LAYERS = r"vision_tower\.transformer\.layers\.\d+"
_TEXT_LAYERS = r"language_model\.layers\.\d+"

MISTRAL3 = ModelFamily(
    name="mistral3", model_types=frozenset({"mistral3"}),
    assistant_header="[/INST]", turn_end="</s>",
    vision_attention=_VISION_LAYERS + r"\.attention\.(q_proj|k_proj|v_proj|o_proj)",
    vision_mlp=_VISION_LAYERS + r"\.feed_forward\.(gate_proj|up_proj|down_proj)",
    projector=r"multi_modal_projector\.(patch_merger\.merging_layer|linear_1|linear_2)",
    language_attention=_TEXT_LAYERS + r"\.self_attn\.(q_proj|k_proj|v_proj|o_proj)",
    language_mlp=_TEXT_LAYERS + r"\.mlp\.(gate_proj|up_proj|down_proj)",
    # vLLM 0.32's Mistral3ForConditionalGeneration has no supports_tower_connector_lora: the module docstring
    vllm_serves_tower_connector_lora=False,
)
