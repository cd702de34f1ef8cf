"""The tiny model's InternVL3 layout in transformers' own format (OpenGVLab/InternVL3-8B-hf, model_type
`internvl`): an InternViT tower, a pixel shuffle (downsample 0.5) into a LayerNorm + two-layer GELU projector,
and a Qwen2.5 text model with ChatML turns; each image is `<img><IMG_CONTEXT>...</img>`.

Same sizes as the other families' tiny models. The real tower sees 448 px tiles (1 to 12 of them and a
thumbnail) as 32x32 patches, shuffled into 256 tokens a tile; here one 112 px tile, 8x8 patches, 16 tokens."""

from __future__ import annotations

from transformers import GotOcr2ImageProcessor, InternVLConfig, InternVLProcessor, InternVLVideoProcessor

from .spec import TinyModelSpec
from .tokenizer import SPECIAL_TOKENS, TokenizerStyle

START_IMAGE, END_IMAGE, IMAGE_CONTEXT, VIDEO = "<img>", "</img>", "<IMG_CONTEXT>", "<video>"
DOWNSAMPLE_RATIO = 0.5

# InternVL3-*-hf's chat template (transformers' convert_internvl_weights_to_hf.py writes it), unchanged.
INTERNVL_CHAT_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n'}}"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for content in message['content'] %}{% if content['type'] == 'image' %}{{ '<IMG_CONTEXT>\n' }}"
    "{% elif content['type'] == 'video' %}{{ '<video>\n' }}{% elif content['type'] == 'text' %}"
    "{{ content['text'] }}{% endif %}{% endfor %}{% endif %}{{'<|im_end|>\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{'<|im_start|>assistant\n' }}{% endif %}"
)

INTERNVL_STYLE = TokenizerStyle(
    (*SPECIAL_TOKENS, START_IMAGE, END_IMAGE, IMAGE_CONTEXT, VIDEO), "<|im_end|>", "<|endoftext|>",
    INTERNVL_CHAT_TEMPLATE, ("user\n", "assistant\n", "\n"),
    named_tokens=(("start_image_token", START_IMAGE), ("end_image_token", END_IMAGE),
                  ("context_image_token", IMAGE_CONTEXT), ("video_token", VIDEO)))


def image_tokens(spec: TinyModelSpec) -> int:
    return int((spec.image_size_px // 14) ** 2 * DOWNSAMPLE_RATIO ** 2)


def internvl_processor(tokenizer, spec: TinyModelSpec) -> InternVLProcessor:
    """One tile per image (no cropping into patches, as InternVL3-*-hf's preprocessor config has it)."""
    side = {"height": spec.image_size_px, "width": spec.image_size_px}
    image_processor = GotOcr2ImageProcessor(size=side, crop_to_patches=False, min_patches=1, max_patches=1)
    video_processor = InternVLVideoProcessor(size=side)
    return InternVLProcessor(image_processor=image_processor, tokenizer=tokenizer, video_processor=video_processor,
                             image_seq_length=image_tokens(spec), chat_template=tokenizer.chat_template)


def internvl_config(text_config: dict, token, spec: TinyModelSpec) -> InternVLConfig:
    text_config = {**text_config, "model_type": "qwen2", "head_dim": spec.hidden_size // spec.attention_heads,
                   "rope_parameters": {"rope_type": "default", "rope_theta": 1_000_000.0}}
    vision_config = {
        "hidden_size": spec.vision_embed_dim,
        "intermediate_size": spec.vision_embed_dim * spec.vision_mlp_ratio,
        "num_hidden_layers": spec.vision_depth,
        "num_attention_heads": spec.vision_heads,
        "image_size": [spec.image_size_px, spec.image_size_px],
        "patch_size": [14, 14],
    }
    config = InternVLConfig(text_config=text_config, vision_config=vision_config, image_token_id=token(IMAGE_CONTEXT),
                            image_seq_length=image_tokens(spec), downsample_ratio=DOWNSAMPLE_RATIO,
                            vision_feature_layer=-1, tie_word_embeddings=True)
    config.architectures = ["InternVLForConditionalGeneration"]
    return config
