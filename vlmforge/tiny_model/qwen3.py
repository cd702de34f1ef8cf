"""The tiny model's Qwen3-VL (dense) and Qwen3.5 layouts: Qwen2-VL's tokenizer and turns in the chat templates the
real checkpoints ship, a ViT with 16 px patches (2x2 merged into one language token, learned position embeddings
interpolated to the image's grid), interleaved M-RoPE in the language model. Qwen3-VL adds DeepStack (the first
vision block's features, merged, are added to the first language layer's input at the image tokens); Qwen3.5
swaps DeepStack for a hybrid language model: gated-delta-net linear attention in the first layers, gated full
attention in the last (the real ones: three linear layers to one full, 32 or 64 layers).

Same sizes as the other families' tiny models. Images are 96 px (a multiple of 32, the 16 px patch times the 2x2
merge): 9 image tokens each, against 16 for the 14 px families' 112 px."""

from __future__ import annotations

from importlib.resources import files

from transformers import (
    Qwen2VLImageProcessor,
    Qwen3_5Config,
    Qwen3VLConfig,
    Qwen3VLProcessor,
    Qwen3VLVideoProcessor,
)

from .spec import TinyModelSpec
from .tokenizer import SPECIAL_TOKENS, TokenizerStyle

PATCH_PX = 16
MERGE = 2
# Both checkpoints normalise to [-1, 1] (preprocessor_config.json of Qwen/Qwen3-VL-8B-Instruct and Qwen3.5).
_MEAN_STD = {"image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5]}


def _shipped_template(name: str) -> str:
    """The template the real checkpoints ship, as TRL keeps it (byte-identical, checked weekly against the Hub):
    Qwen3-VL's; Qwen3.5's non-thinking one, shipped by Qwen3.5-2B and smaller (empty think block in the prompt)."""
    return (files("trl") / "chat_templates" / f"{name}.jinja").read_text()


_THINK_TOKENS = ("<think>", "</think>")
QWEN3_VL_STYLE = TokenizerStyle(SPECIAL_TOKENS, "<|im_end|>", "<|endoftext|>", _shipped_template("qwen3_vl"),
                                ("user\n", "assistant\n", "\n"))
QWEN3_5_STYLE = TokenizerStyle((*SPECIAL_TOKENS, *_THINK_TOKENS), "<|im_end|>", "<|endoftext|>",
                               _shipped_template("qwen3_5_nothink"),
                               ("user\n", "assistant\n", "\n", "<think>\n\n</think>\n\n"))


def image_side_px(spec: TinyModelSpec) -> int:
    """The spec's image size, down to a whole number of merged 2x2 patches."""
    return max(1, spec.image_size_px // (PATCH_PX * MERGE)) * PATCH_PX * MERGE


def qwen3_processor(tokenizer, spec: TinyModelSpec) -> Qwen3VLProcessor:
    """Qwen3-VL's processor (Qwen3.5 uses the same classes): every image resized to one square; videos of up to
    four frames at that size (vLLM's service here takes none, transformers does)."""
    pixels = image_side_px(spec) ** 2
    sizes = {"patch_size": PATCH_PX, "merge_size": MERGE, "temporal_patch_size": 2, **_MEAN_STD}
    image_processor = Qwen2VLImageProcessor(min_pixels=pixels, max_pixels=pixels, **sizes)
    # cap_pixels_per_frame: qwen-vl-utils' per-frame budget, transformers' default from 5.22 (5.17 warns without it)
    video_processor = Qwen3VLVideoProcessor(size={"shortest_edge": pixels, "longest_edge": 4 * pixels},
                                            min_frames=2, max_frames=4, cap_pixels_per_frame=True, **sizes)
    return Qwen3VLProcessor(image_processor=image_processor, tokenizer=tokenizer, video_processor=video_processor,
                            chat_template=tokenizer.chat_template)


def _vision_config(spec: TinyModelSpec) -> dict:
    return {
        "depth": spec.vision_depth,
        "hidden_size": spec.vision_embed_dim,
        "intermediate_size": spec.vision_embed_dim * spec.vision_mlp_ratio,
        "num_heads": spec.vision_heads,
        "out_hidden_size": spec.hidden_size,
        "patch_size": PATCH_PX,
        "spatial_merge_size": MERGE,
        "temporal_patch_size": 2,
        "num_position_embeddings": 64,  # an 8x8 grid, interpolated to the image's 6x6 (real: 48x48)
    }


def _tokens(token) -> dict:
    return {"image_token_id": token("<|image_pad|>"), "video_token_id": token("<|video_pad|>"),
            "vision_start_token_id": token("<|vision_start|>"), "vision_end_token_id": token("<|vision_end|>")}


def qwen3_vl_config(text_config: dict, token, spec: TinyModelSpec) -> Qwen3VLConfig:
    """Interleaved M-RoPE over the whole head (T, H, W frequencies alternating; real: sections 24 / 20 / 20 of
    64, here 12 / 10 / 10 of 32); DeepStack from the first vision block (real: blocks 8, 16 and 24 of 27 into
    language layers 0-2)."""
    head_dim = spec.hidden_size // spec.attention_heads
    text_config = {**text_config, "head_dim": head_dim,
                   "rope_parameters": {"rope_type": "default", "rope_theta": 5_000_000.0,
                                       "mrope_section": [12, 10, 10], "mrope_interleaved": True}}
    vision_config = {**_vision_config(spec), "deepstack_visual_indexes": [0]}
    config = Qwen3VLConfig(text_config=text_config, vision_config=vision_config, tie_word_embeddings=True,
                           **_tokens(token))
    config.architectures = ["Qwen3VLForConditionalGeneration"]
    return config


def qwen3_5_config(text_config: dict, token, spec: TinyModelSpec) -> Qwen3_5Config:
    """Rotary on a quarter of each head, as in Qwen3.5 (real: sections 11 / 11 / 10 of 32 frequencies, here 3 / 3
    / 2 of 8); linear-attention heads of 64 (real: 128), twice as many value heads as key heads, like the real
    16 / 32."""
    head_dim = spec.hidden_size // spec.attention_heads
    layer_types = ["linear_attention"] * (spec.layers - 1) + ["full_attention"]
    text_config = {**text_config, "head_dim": head_dim, "layer_types": layer_types,
                   "linear_conv_kernel_dim": 4, "linear_key_head_dim": 64, "linear_value_head_dim": 64,
                   "linear_num_key_heads": spec.kv_heads, "linear_num_value_heads": 2 * spec.kv_heads,
                   "rope_parameters": {"rope_type": "default", "rope_theta": 10_000_000.0,
                                       "partial_rotary_factor": 0.25,
                                       "mrope_section": [3, 3, 2],
                                       "mrope_interleaved": True}}
    config = Qwen3_5Config(text_config=text_config, vision_config=_vision_config(spec), tie_word_embeddings=True,
                           **_tokens(token))
    config.architectures = ["Qwen3_5ForConditionalGeneration"]
    return config

