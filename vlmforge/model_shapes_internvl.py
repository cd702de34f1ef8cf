"""InternVL3 at OpenGVLab/InternVL3-8B-hf's published size, for vlmforge.model_shapes (`--shape internvl3-8b`).

Numbers from that checkpoint's config.json: InternViT-300M at 448 px (24 layers of 1024, MLP 4096, 16 heads,
14 px patches), pixel shuffle 0.5 (256 tokens a tile), a Qwen2.5-7B text model (28 layers of 3584, MLP 18944,
28 query / 4 KV heads, RoPE base 1M, vocabulary 151674, untied LM head). Its preprocessor does not crop images
into tiles (crop_to_patches false): one 448 px tile per image. The image-token ids are the tiny tokenizer's."""

from __future__ import annotations

INTERNVL3_8B_TEXT = {"hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28,
                     "num_attention_heads": 28, "num_key_value_heads": 4, "tie_word_embeddings": False}
INTERNVIT_300M_448 = {"hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24,
                      "num_attention_heads": 16, "image_size": [448, 448], "patch_size": [14, 14],
                      "use_qk_norm": False, "norm_type": "layer_norm", "layer_scale_init_value": 0.1}
INTERNVL3_VOCAB = 151674
INTERNVL3_IMAGE_TOKENS = 256


def internvl_parts(sizes: dict, tokenizer, image_size_px: int):
    """Every image is resized to one 448 px tile: 256 image tokens whatever `image_size_px` is."""
    from transformers import (
        GotOcr2ImageProcessor,
        InternVLConfig,
        InternVLForConditionalGeneration,
        InternVLProcessor,
        InternVLVideoProcessor,
    )

    token = tokenizer.convert_tokens_to_ids
    text_config = {**sizes, "model_type": "qwen2", "vocab_size": INTERNVL3_VOCAB, "max_position_embeddings": 32768,
                   "rms_norm_eps": 1e-6, "rope_parameters": {"rope_type": "default", "rope_theta": 1_000_000.0},
                   "bos_token_id": token("<|endoftext|>"), "eos_token_id": token("<|im_end|>"),
                   "pad_token_id": token("<|endoftext|>")}
    config = InternVLConfig(text_config=text_config, vision_config=INTERNVIT_300M_448,
                            image_token_id=token(tokenizer.context_image_token),
                            image_seq_length=INTERNVL3_IMAGE_TOKENS, downsample_ratio=0.5, vision_feature_layer=-1,
                            tie_word_embeddings=sizes["tie_word_embeddings"])
    config.architectures = ["InternVLForConditionalGeneration"]
    side = {"height": 448, "width": 448}
    processor = InternVLProcessor(
        image_processor=GotOcr2ImageProcessor(size=side, crop_to_patches=False, min_patches=1, max_patches=12),
        video_processor=InternVLVideoProcessor(size=side), tokenizer=tokenizer,
        image_seq_length=INTERNVL3_IMAGE_TOKENS, chat_template=tokenizer.chat_template)
    return config, InternVLForConditionalGeneration, processor
