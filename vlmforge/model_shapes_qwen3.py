"""Qwen3-VL and Qwen3.5 at published sizes, for vlmforge.model_shapes (`--shape qwen3-vl-8b`, `--shape qwen3.5-9b`).

Numbers from the checkpoints' config.json as published (written down from them, not downloaded here):
- Qwen/Qwen3-VL-8B-Instruct: text 36 layers of 4096 (MLP 12288), 32 query / 8 KV heads of 128, interleaved M-RoPE
  sections 24 / 20 / 20, base 5M, vocabulary 151936, embeddings not tied; vision 27 blocks of 1152 (MLP 4304,
  16 heads), 16 px patches merged 2x2 into 4096, 2304 learned positions, DeepStack from blocks 8, 16 and 24.
- Qwen/Qwen3.5-9B: text 32 layers of 4096 (MLP 12288), three gated-delta-net layers (16 key / 32 value heads of
  128, conv kernel 4) to one gated full-attention layer (16 query / 4 KV heads of 256, rotary on a quarter of
  each head, sections 11 / 11 / 10, base 10M), vocabulary 248320, embeddings not tied (transformers 5.17's
  Qwen3_5TextConfig defaults are this size too); the same ViT without DeepStack, out 4096. Its multi-token-
  prediction head (`mtp_num_hidden_layers`) is not part of transformers' model and is left out.
The special-token ids are the tiny tokenizer's (all inside the real vocabularies)."""

from __future__ import annotations

QWEN3_VL_8B_TEXT = {"hidden_size": 4096, "intermediate_size": 12288, "num_hidden_layers": 36, "num_attention_heads": 32,
                    "num_key_value_heads": 8, "head_dim": 128, "tie_word_embeddings": False}
QWEN3_5_9B_TEXT = {"hidden_size": 4096, "intermediate_size": 12288, "num_hidden_layers": 32, "num_attention_heads": 16,
                   "num_key_value_heads": 4, "head_dim": 256, "linear_conv_kernel_dim": 4, "linear_key_head_dim": 128,
                   "linear_value_head_dim": 128, "linear_num_key_heads": 16, "linear_num_value_heads": 32,
                   "tie_word_embeddings": False}
QWEN3_VISION = {"depth": 27, "hidden_size": 1152, "intermediate_size": 4304, "num_heads": 16, "patch_size": 16,
                "spatial_merge_size": 2, "temporal_patch_size": 2, "num_position_embeddings": 2304}
QWEN3_VL_VOCAB = 151936
QWEN3_5_VOCAB = 248320
_FULL_ATTENTION_EVERY = 4


def qwen3_vl_parts(sizes: dict, tokenizer, image_size_px: int):
    from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration

    rope = {"rope_type": "default", "rope_theta": 5_000_000.0, "mrope_section": [24, 20, 20], "mrope_interleaved": True}
    text_config, tokens, processor = _parts(sizes, tokenizer, image_size_px, vocab_size=QWEN3_VL_VOCAB, rope=rope)
    config = Qwen3VLConfig(text_config=text_config, tie_word_embeddings=sizes["tie_word_embeddings"], **tokens,
                           vision_config={**QWEN3_VISION, "out_hidden_size": sizes["hidden_size"],
                                          "deepstack_visual_indexes": [8, 16, 24]})
    config.architectures = ["Qwen3VLForConditionalGeneration"]
    return config, Qwen3VLForConditionalGeneration, processor


def qwen3_5_parts(sizes: dict, tokenizer, image_size_px: int):
    from transformers import Qwen3_5Config, Qwen3_5ForConditionalGeneration

    rope = {"rope_type": "default", "rope_theta": 10_000_000.0, "partial_rotary_factor": 0.25,
            "mrope_section": [11, 11, 10], "mrope_interleaved": True}
    text_config, tokens, processor = _parts(sizes, tokenizer, image_size_px, vocab_size=QWEN3_5_VOCAB, rope=rope)
    text_config["layer_types"] = ["full_attention" if (i + 1) % _FULL_ATTENTION_EVERY == 0 else "linear_attention"
                                  for i in range(sizes["num_hidden_layers"])]
    config = Qwen3_5Config(text_config=text_config, tie_word_embeddings=sizes["tie_word_embeddings"], **tokens,
                           vision_config={**QWEN3_VISION, "out_hidden_size": sizes["hidden_size"]})
    config.architectures = ["Qwen3_5ForConditionalGeneration"]
    return config, Qwen3_5ForConditionalGeneration, processor


def _parts(sizes: dict, tokenizer, image_size_px: int, *, vocab_size: int, rope: dict):
    """Text config, special-token ids and processor: every image resized to `image_size_px` squared (rounded to the
    32 px of a merged 2x2 patch), the benchmarks' fixed-size images, as the Qwen2-VL shapes do."""
    from .tiny_model.qwen3 import qwen3_processor
    from .tiny_model.spec import TinyModelSpec
    from .tiny_model.tokenizer import ENDOFTEXT

    token = tokenizer.convert_tokens_to_ids
    text_config = {**sizes, "vocab_size": vocab_size, "max_position_embeddings": 262144, "rms_norm_eps": 1e-6,
                   "rope_parameters": rope, "bos_token_id": token(ENDOFTEXT), "eos_token_id": token("<|im_end|>"),
                   "pad_token_id": token(ENDOFTEXT)}
    tokens = {"image_token_id": token("<|image_pad|>"), "video_token_id": token("<|video_pad|>"),
              "vision_start_token_id": token("<|vision_start|>"), "vision_end_token_id": token("<|vision_end|>")}
    processor = qwen3_processor(tokenizer, TinyModelSpec(image_size_px=image_size_px))
    return text_config, tokens, processor
