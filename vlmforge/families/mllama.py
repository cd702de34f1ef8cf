"""Llama-3.2-Vision (meta-llama, `mllama`): a ViT in two stages (a local `transformer`, then a gated
`global_transformer` over the tiles), one linear projector, and a Llama 3.1 text model that reads the image
through cross-attention layers inserted among its self-attention layers. Turns:
`<|start_header_id|>assistant<|end_header_id|>\\n\\nanswer<|eot_id|>`.

Training only: vLLM removed every encoder-decoder model except Whisper with its V0 engine (vLLM PR #24907,
"Remove V0 Encoder-Decoder Support"), so 0.10.2 is the last vLLM with Mllama (vLLM 0.32's registry lists
MllamaForConditionalGeneration among the previously supported architectures, at 0.10.2), and neither vLLM 0.32
(CPU) nor 0.26 (GPU) serves it, as a base or with an adapter. The adapter and the merged model load in
transformers."""

from __future__ import annotations

from .base import ModelFamily

_VISION_LAYERS = r"vision_model\.(transformer|global_transformer)\.layers\.\d+"
_TEXT_LAYERS = r"language_model\.layers\.\d+"

MLLAMA = ModelFamily(
    name="mllama", model_types=frozenset({"mllama"}),
    assistant_header="<|start_header_id|>assistant<|end_header_id|>\n\n", turn_end="<|eot_id|>",
    vision_attention=_VISION_LAYERS + r"\.self_attn\.(q_proj|k_proj|v_proj|o_proj)",
    vision_mlp=_VISION_LAYERS + r"\.mlp\.(fc1|fc2)",
    projector=r"multi_modal_projector",
    # The cross-attention layers are the language model's own (the image reaches the text only through them).
    language_attention=_TEXT_LAYERS + r"\.(self_attn|cross_attn)\.(q_proj|k_proj|v_proj|o_proj)",
    language_mlp=_TEXT_LAYERS + r"\.mlp\.(gate_proj|up_proj|down_proj)",
    vllm_serves=False,
    vllm_unserved_reason=("vLLM does not serve Llama-3.2-Vision (mllama) models: it removed its encoder-decoder "
                          "models except Whisper after 0.10.2 (vLLM PR #24907, \"Remove V0 Encoder-Decoder "
                          "Support\")"),
    vllm_serves_tower_connector_lora=False,  # moot: vLLM serves no part of it
)
