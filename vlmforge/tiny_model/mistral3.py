"""The tiny model's Mistral-Small-3.1 (Mistral3) layout: a Pixtral tower (14 px patches, 2-D RoPE, gated MLPs),
the projector with its 2x2 patch merger, a Mistral text model; PixtralProcessor with its image processor, and
Mistral's tokenizer-v7 turns. Same sizes as the other families' tiny models: a 112 px image is 8x8 patches,
merged into 4x4 image tokens plus one [IMG_BREAK] / [IMG_END] per row (20 tokens)."""

from __future__ import annotations

from transformers import Mistral3Config, PixtralImageProcessor, PixtralProcessor

from .spec import TinyModelSpec
from .tokenizer import ENDOFTEXT, TokenizerStyle

PATCH_SIZE_PX = 14  # Mistral-Small-3.1's (Pixtral-12B has 16)
SPATIAL_MERGE_SIZE = 2

# Mistral's tokenizer-v7 turns with images (as mistral_common's generate_chat_template writes them for v7 and
# images; mistralai's HF repos ship templates with these turns), without the default system prompt the published
# one adds (a long text that names today's date, so renders would differ from day to day): system turns in place, user
# turns in [INST]...[/INST] with [IMG] per image (a lone text-then-image pair goes image first, as in v7),
# answers closed by </s>. tests/unit/test_model_families.py renders it against mistral_common's.
MISTRAL3_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ '[SYSTEM_PROMPT]' }}{% elif message['role'] == 'user' %}{{ '[INST]' }}"
    "{% endif %}{% if message['content'] is string %}{{ message['content'] }}"
    "{% elif message['content'] | length == 2 and message['content'][0]['type'] == 'text'"
    " and message['content'][1]['type'] in ['image', 'image_url'] %}{{ '[IMG]' + message['content'][0]['text'] }}"
    # vLLM picks the content format from the template's AST: only a loop over message['content'] itself makes it
    # pass the parts (images included) rather than their text alone
    "{% else %}{% for block in message['content'] %}{% if block['type'] == 'text' %}{{ block['text'] }}"
    "{% elif block['type'] in ['image', 'image_url'] %}{{ '[IMG]' }}{% endif %}{% endfor %}{% endif %}"
    "{% if message['role'] == 'system' %}{{ '[/SYSTEM_PROMPT]' }}{% elif message['role'] == 'user' %}{{ '[/INST]' }}"
    "{% else %}{{ eos_token }}{% endif %}{% endfor %}"
)
MISTRAL3_STYLE = TokenizerStyle(
    (ENDOFTEXT, "<s>", "</s>", "[INST]", "[/INST]", "[IMG]", "[IMG_BREAK]", "[IMG_END]", "[SYSTEM_PROMPT]",
     "[/SYSTEM_PROMPT]"), "</s>", ENDOFTEXT, MISTRAL3_CHAT_TEMPLATE, (), bos_token="<s>")


def mistral3_processor(tokenizer, spec: TinyModelSpec) -> PixtralProcessor:
    """Images keep their aspect, longest edge at most `image_size_px`, sides rounded up to 28 px (patch x merge)."""
    image_processor = PixtralImageProcessor(size={"longest_edge": spec.image_size_px},
                                            patch_size={"height": PATCH_SIZE_PX, "width": PATCH_SIZE_PX})
    return PixtralProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=PATCH_SIZE_PX,
                            spatial_merge_size=SPATIAL_MERGE_SIZE, chat_template=tokenizer.chat_template)


def mistral3_config(text_config: dict, token, spec: TinyModelSpec) -> Mistral3Config:
    """Mistral-Small-3.1's layout at the tiny sizes: the tower's last layer feeds the projector (feature layer
    -1), no projector biases, RMS norms at 1e-5 (vLLM's projector norm has that eps fixed)."""
    text_config = {**text_config, "model_type": "mistral", "head_dim": spec.hidden_size // spec.attention_heads,
                   "rope_parameters": {"rope_type": "default", "rope_theta": 1e6}, "rms_norm_eps": 1e-5,
                   "sliding_window": None, "bos_token_id": token("<s>")}
    vision_config = {
        "model_type": "pixtral",
        "hidden_size": spec.vision_embed_dim,
        "intermediate_size": spec.vision_embed_dim * spec.vision_mlp_ratio,
        "num_hidden_layers": spec.vision_depth,
        "num_attention_heads": spec.vision_heads,
        "image_size": spec.image_size_px,
        "patch_size": PATCH_SIZE_PX,
        "hidden_act": "silu",
        "rope_parameters": {"rope_type": "axial", "rope_theta": 10000.0},  # 2-D RoPE over rows and columns
    }
    config = Mistral3Config(text_config=text_config, vision_config=vision_config,
                            image_token_index=token("[IMG]"), spatial_merge_size=SPATIAL_MERGE_SIZE,
                            vision_feature_layer=-1, projector_hidden_act="gelu", multimodal_projector_bias=False,
                            tie_word_embeddings=True)
    config.architectures = ["Mistral3ForConditionalGeneration"]
    return config
