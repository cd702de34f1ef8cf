"""Gemma 3 (google/gemma-3-4b-it and the 12B / 27B): a SigLIP vision tower, a projector that average-pools the
tower's patches 4x4 and multiplies them by one weight matrix, and a Gemma 3 text model (five sliding-window
layers to one global, a 1024-token window on the 4B), turns `<start_of_turn>user\\n...<end_of_turn>\\n
<start_of_turn>model\\nanswer<end_of_turn>\\n`.

Training attends bidirectionally among each image's tokens: Gemma3Processor returns `token_type_ids` (1 on image
tokens), the collator passes them on, and Gemma3Model builds its masks from them (causal elsewhere, and within
the window on the sliding layers), as Gemma 3 was trained. vLLM 0.32 does the same on its GPU backends
(is_mm_prefix_lm lists gemma3); its CPU platform picks CPU_ATTN without that check, which attends causally
there: the CPU CI's answers may differ a little from transformers', they are not compared.

The projector has no linear layer: `mm_input_projection_weight` is a bare parameter used in a matmul, and its
norm has no weight matrix either, so LoRA (peft target_modules) has nothing to wrap there and
finetune_projector adapts nothing on Gemma 3 (`projector_takes_lora`). The tower's layers take LoRA (served:
the merged model)."""

from __future__ import annotations

from .base import ModelFamily

# transformers 5.17 writes the SigLIP tower without its `vision_model.` level (as it does CLIP's); checkpoints
# saved before keep it, and vLLM 0.32 reads only that.
_SIGLIP_LAYERS = r"vision_tower\.(vision_model\.)?encoder\.layers\.\d+"
_TEXT_LAYERS = r"language_model\.layers\.\d+"

GEMMA3 = ModelFamily(
    name="gemma3", model_types=frozenset({"gemma3"}),
    assistant_header="<start_of_turn>model\n", turn_end="<end_of_turn>",
    vision_attention=_SIGLIP_LAYERS + r"\.self_attn\.(q_proj|k_proj|v_proj|out_proj)",
    vision_mlp=_SIGLIP_LAYERS + r"\.mlp\.(fc1|fc2)",
    projector=r"multi_modal_projector",
    projector_takes_lora=False,
    language_attention=_TEXT_LAYERS + r"\.self_attn\.(q_proj|k_proj|v_proj|o_proj)",
    language_mlp=_TEXT_LAYERS + r"\.mlp\.(gate_proj|up_proj|down_proj)",
    # vLLM 0.32's Gemma 3 takes tower LoRA (--enable-tower-connector-lora), but it finds an adapter's modules
    # through hf_to_vllm_mapper (`model.vision_tower.` -> `vision_tower.`), and peft names the tower's modules as
    # transformers 5.17 does, without SigLIP's `vision_model.` level that vLLM's tower has: the tower LoRA
    # matches no module and is dropped without a word (on the tiny model, logprobs equal the base's to the last
    # digit; with the names rewritten they move). So adapters serve on the language model only.
    vllm_serves_tower_connector_lora=False,
    vllm_weight_renames=tuple((f"vision_tower.{part}.", f"vision_tower.vision_model.{part}.")
                              for part in ("embeddings", "encoder", "post_layernorm")),
)
