"""The tiny model's Llama-3.2-Vision (Mllama) layout: a ViT in two stages (a local encoder, then a gated global
one over the tiles), a linear projector from its concatenated layer outputs, and a Llama text model that reads
the image only through cross-attention layers inserted between its self-attention layers. Same sizes as the
other families' tiny models; one 112 px tile per image instead of up to four 560 px tiles."""

from __future__ import annotations

from transformers import MllamaConfig, MllamaImageProcessor, MllamaProcessor

from .spec import TinyModelSpec

IMAGE_TOKEN = "<|image|>"
# One tile per image keeps the vision tower's work the size of the other tiny models' (with up to four, the
# processor pads every image to four tiles). The config's aspect ratios must list exactly the processor's.
MAX_TILES = 1


def mllama_processor(tokenizer, spec: TinyModelSpec) -> MllamaProcessor:
    side = spec.image_size_px
    image_processor = MllamaImageProcessor(size={"height": side, "width": side}, max_image_tiles=MAX_TILES)
    return MllamaProcessor(image_processor=image_processor, tokenizer=tokenizer, chat_template=tokenizer.chat_template)


def mllama_config(text_config: dict, token, spec: TinyModelSpec) -> MllamaConfig:
    """Llama 3.2 Vision inserts 8 cross-attention layers among Llama 3.1's 32 (at 3, 8, ..., 38); here the second
    of the tiny model's layers is one, so the text model is no larger than the other families'. Its embedding
    table has 8 rows beyond the vocabulary and its LM head none, so they cannot be tied."""
    text_config = {**text_config, "cross_attention_layers": [1],
                   "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0},
                   "bos_token_id": token("<|begin_of_text|>"), "tie_word_embeddings": False}
    # The projector reads the last layer's output and these intermediate ones side by side (real: 5 of 32).
    intermediate_layers = [1]
    vision_config = {
        "hidden_size": spec.vision_embed_dim,
        "intermediate_size": spec.vision_embed_dim * spec.vision_mlp_ratio,
        "attention_heads": spec.vision_heads,
        "num_hidden_layers": spec.vision_depth,
        "num_global_layers": 1,  # real: 8 gated global layers after 32 local ones
        "intermediate_layers_indices": intermediate_layers,
        "vision_output_dim": spec.vision_embed_dim * (1 + len(intermediate_layers)),
        "image_size": spec.image_size_px,
        "patch_size": 14,
        "max_num_tiles": MAX_TILES,
        "supported_aspect_ratios": [[1, 1]],
    }
    config = MllamaConfig(text_config=text_config, vision_config=vision_config, image_token_index=token(IMAGE_TOKEN),
                          tie_word_embeddings=False)
    config.architectures = ["MllamaForConditionalGeneration"]
    return config
