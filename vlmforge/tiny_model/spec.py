"""The recipe of the embedded tiny Qwen2-VL: shapes, pre-training schedule, and the dataset it learns from."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from ..build_cache import recipe_fingerprint
from ..datagen import DatasetSpec

RECIPE_VERSION = 1


@dataclass(frozen=True)
class TinyModelSpec:
    """Every field changes the built bytes, so all of them go into the cache key."""

    family: str = "qwen2_vl"  # one of tiny_model.build.FAMILIES (same sizes, each family's layout)

    # Language model: head_dim = hidden_size / attention_heads = 64, the smallest vLLM's CPU attention takes.
    hidden_size: int = 256
    intermediate_size: int = 512
    layers: int = 3
    attention_heads: int = 4
    kv_heads: int = 2
    mrope_section: tuple[int, int, int] = (8, 12, 12)  # sums to head_dim / 2, like Qwen2-VL's (16, 24, 24) for 128
    # Vision tower (Qwen2-VL ViT): 14 px patches, 2x2 merged into one language token.
    vision_depth: int = 2
    vision_embed_dim: int = 128
    vision_heads: int = 2
    vision_mlp_ratio: int = 2
    image_size_px: int = 112  # every image is resized to this square: 8x8 patches -> 16 image tokens
    max_tokenizer_vocab: int = 1024
    # Full-parameter pre-training on the dataset's `pretrain` split (multi-turn: captions, mixed-style answers).
    # Measured on the 2-core CI machine: at 2e-3 the language model never starts to use the image (colour of a
    # lone shape stayed at chance after 300 steps); at 5e-4 or 1e-4 it reaches 100% on that in 250 steps.
    pretrain_steps: int = 800
    pretrain_batch_size: int = 8
    pretrain_learning_rate: float = 5e-4
    pretrain_warmup_steps: int = 40
    seed: int = 0
    dataset: DatasetSpec = DatasetSpec()

    def fingerprint(self) -> str:
        return recipe_fingerprint({"version": RECIPE_VERSION, **dataclasses.asdict(self)})
