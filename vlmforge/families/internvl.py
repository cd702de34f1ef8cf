"""InternVL3 in transformers' own format (OpenGVLab/InternVL3-8B-hf, model_type `internvl`; the original
`internvl_chat` checkpoints need trust_remote_code and are not this family): an InternViT tower, a pixel-shuffle
into a LayerNorm + two-layer GELU projector, a Qwen2.5 text model, and ChatML turns,
`<|im_start|>assistant\\nanswer<|im_end|>`.

vLLM 0.32 serves InternVLForConditionalGeneration with its InternS1ForConditionalGeneration (registry.py), which
reads transformers' weight names as they are (its hf_to_vllm_mapper maps `model.vision_tower.`,
`model.multi_modal_projector.` and `model.language_model.`), so nothing is renamed. That class does not set
`supports_tower_connector_lora` (only the original-layout InternVLChatModel does): with
--enable-tower-connector-lora its LoRA manager logs that the model does not support it and ignores the flag, so
adapters serve on the language model only."""

from __future__ import annotations

from .base import ModelFamily

_VISION_LAYERS = r"vision_tower\.encoder\.layer\.\d+"
_TEXT_LAYERS = r"language_model\.layers\.\d+"

INTERNVL = ModelFamily(
    name="internvl", model_types=frozenset({"internvl"}),
    assistant_header="<|im_start|>assistant\n", turn_end="<|im_end|>",
    vision_attention=_VISION_LAYERS + r"\.attention\.(q_proj|k_proj|v_proj|projection_layer)",
    vision_mlp=_VISION_LAYERS + r"\.mlp\.(fc1|fc2)",
    projector=r"multi_modal_projector\.(linear_1|linear_2)",
    language_attention=_TEXT_LAYERS + r"\.self_attn\.(q_proj|k_proj|v_proj|o_proj)",
    language_mlp=_TEXT_LAYERS + r"\.mlp\.(gate_proj|up_proj|down_proj)",
    vllm_serves_tower_connector_lora=False,
)
