"""Mistral-Small-3.1 at mistralai/Mistral-Small-3.1-24B-Instruct-2503's published size, for vlmforge.model_shapes
(`--shape mistral-small-3.1-24b`).

Numbers from that checkpoint's config.json (transformers' format, the same values transformers 5.17's
Mistral3Config takes as its defaults): text 40 layers of 5120 (MLP 32768), 32 query / 8 KV heads of 128, RoPE
base 1e9, 131072 positions, no sliding window, vocabulary 131072, embeddings untied; Pixtral tower 24 layers of
1024 (gated MLP 4096, SiLU), 16 heads of 64, 14 px patches, images up to 1540 px; projector with a 2x2 patch
merger, GELU, no biases, the tower's last layer. Its processor (processor_config.json, preprocessor_config.json)
keeps each image's aspect, longest edge at most 1540 px: a 448 px square is 16x16 image tokens plus a break per
row. The special-token ids are the tiny tokenizer's (all inside the real vocabulary)."""

from __future__ import annotations

MISTRAL_SMALL_3_1_24B_TEXT = {"hidden_size": 5120, "intermediate_size": 32768, "num_hidden_layers": 40,
                              "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 128,
                              "tie_word_embeddings": False}
PIXTRAL_MISTRAL_SMALL = {"model_type": "pixtral", "hidden_size": 1024, "intermediate_size": 4096,
                         "num_hidden_layers": 24, "num_attention_heads": 16, "image_size": 1540, "patch_size": 14,
                         "hidden_act": "silu", "rope_parameters": {"rope_type": "axial", "rope_theta": 10000.0}}
MISTRAL_VOCAB = 131072


def mistral3_parts(sizes: dict, tokenizer, image_size_px: int):
    """Images are not resized up: an `image_size_px` square (at most 1540) is (image_size_px / 28)^2 image tokens."""
    from transformers import Mistral3Config, Mistral3ForConditionalGeneration, PixtralImageProcessor, PixtralProcessor

    token = tokenizer.convert_tokens_to_ids
    text_config = {
        **sizes, "model_type": "mistral", "vocab_size": MISTRAL_VOCAB, "max_position_embeddings": 131072,
        "rms_norm_eps": 1e-5, "sliding_window": None, "rope_parameters": {"rope_type": "default", "rope_theta": 1e9},
        "bos_token_id": token("<s>"), "eos_token_id": token("</s>"), "pad_token_id": token(tokenizer.pad_token),
    }
    config = Mistral3Config(text_config=text_config, vision_config=PIXTRAL_MISTRAL_SMALL,
                            image_token_index=token("[IMG]"), spatial_merge_size=2, vision_feature_layer=-1,
                            projector_hidden_act="gelu", multimodal_projector_bias=False,
                            tie_word_embeddings=sizes["tie_word_embeddings"])
    config.architectures = ["Mistral3ForConditionalGeneration"]
    patch = PIXTRAL_MISTRAL_SMALL["patch_size"]
    image_processor = PixtralImageProcessor(size={"longest_edge": PIXTRAL_MISTRAL_SMALL["image_size"]},
                                            patch_size={"height": patch, "width": patch})
    processor = PixtralProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=patch,
                                 spatial_merge_size=2, chat_template=tokenizer.chat_template)
    return config, Mistral3ForConditionalGeneration, processor
