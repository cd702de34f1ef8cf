"""Gemma 3 at google/gemma-3-4b-it's published size, for vlmforge.model_shapes (`--shape gemma-3-4b`).

Numbers from that checkpoint's config.json: text 34 layers of 2560 (MLP 10240), 8 query / 4 KV heads of 256,
a 1024-token window on five layers of six, RoPE base 1M with linear scaling x8 on the global layers and 10k on
the local ones, vocabulary 262208; SigLIP so400m at 896 px (27 layers of 1152, MLP 4304, 16 heads, 14 px
patches), 256 image tokens. The image-token ids are the tiny tokenizer's (all inside the real vocabulary)."""

from __future__ import annotations

GEMMA3_4B_TEXT = {"hidden_size": 2560, "intermediate_size": 10240, "num_hidden_layers": 34, "num_attention_heads": 8,
                  "num_key_value_heads": 4, "head_dim": 256, "query_pre_attn_scalar": 256, "sliding_window": 1024,
                  "tie_word_embeddings": True}
SIGLIP_SO400M_896 = {"model_type": "siglip_vision_model", "hidden_size": 1152, "intermediate_size": 4304,
                     "num_hidden_layers": 27, "num_attention_heads": 16, "image_size": 896, "patch_size": 14,
                     "vision_use_head": False}
GEMMA3_VOCAB = 262208
GEMMA3_IMAGE_TOKENS = 256
_GLOBAL_EVERY = 6  # every sixth layer attends globally, the others within the window


def gemma3_parts(sizes: dict, tokenizer, image_size_px: int):
    """Gemma 3 resizes every image to its tower's 896 px: 256 image tokens whatever `image_size_px` is."""
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration, Gemma3ImageProcessor, Gemma3Processor

    token = tokenizer.convert_tokens_to_ids
    layers = sizes["num_hidden_layers"]
    text_config = {
        **sizes, "model_type": "gemma3_text", "vocab_size": GEMMA3_VOCAB, "max_position_embeddings": 131072,
        "rms_norm_eps": 1e-6, "hidden_activation": "gelu_pytorch_tanh",
        "layer_types": ["full_attention" if (i + 1) % _GLOBAL_EVERY == 0 else "sliding_attention"
                        for i in range(layers)],
        "rope_parameters": {"full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1_000_000.0},
                            "sliding_attention": {"rope_type": "default", "rope_theta": 10_000.0}},
        "bos_token_id": token(tokenizer.bos_token), "eos_token_id": token(tokenizer.eos_token),
        "pad_token_id": token(tokenizer.pad_token),
    }
    config = Gemma3Config(text_config=text_config, vision_config=SIGLIP_SO400M_896,
                          mm_tokens_per_image=GEMMA3_IMAGE_TOKENS, boi_token_index=token(tokenizer.boi_token),
                          eoi_token_index=token(tokenizer.eoi_token), image_token_index=token(tokenizer.image_token),
                          tie_word_embeddings=sizes["tie_word_embeddings"])
    config.architectures = ["Gemma3ForConditionalGeneration"]
    side = SIGLIP_SO400M_896["image_size"]
    processor = Gemma3Processor(image_processor=Gemma3ImageProcessor(size={"height": side, "width": side}),
                                tokenizer=tokenizer, image_seq_length=GEMMA3_IMAGE_TOKENS,
                                chat_template=tokenizer.chat_template)
    return config, Gemma3ForConditionalGeneration, processor
