"""Idefics3 and SmolVLM (HuggingFaceM4, HuggingFaceTB): a SigLIP-style vision tower, a pixel-shuffle connector
with one linear projection, a Llama-style text model, and turns `User:<image>question<end_of_utterance>\\n
Assistant: answer<end_of_utterance>\\n`. SmolVLM (SmolVLM-Instruct) is an `idefics3` checkpoint; SmolVLM2 has
its own `smolvlm` type and classes, with the same module names and the same turns (checked on transformers
5.17's SmolVLMForConditionalGeneration and the SmolVLM2 chat template it ships), so one family covers both."""

from __future__ import annotations

from .base import ModelFamily

_VISION_LAYERS = r"vision_model\.encoder\.layers\.\d+"
_TEXT_LAYERS = r"text_model\.layers\.\d+"

IDEFICS3 = ModelFamily(
    name="idefics3", model_types=frozenset({"idefics3", "smolvlm"}),
    assistant_header="Assistant:", turn_end="<end_of_utterance>",
    vision_attention=_VISION_LAYERS + r"\.self_attn\.(q_proj|k_proj|v_proj|out_proj)",
    vision_mlp=_VISION_LAYERS + r"\.mlp\.(fc1|fc2)",
    projector=r"connector\.modality_projection\.proj",
    language_attention=_TEXT_LAYERS + r"\.self_attn\.(q_proj|k_proj|v_proj|o_proj)",
    language_mlp=_TEXT_LAYERS + r"\.mlp\.(gate_proj|up_proj|down_proj)",
)
