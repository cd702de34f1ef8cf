"""Qwen2-VL at its published sizes with random weights, for GPU benchmarks and checks where the real weights
cannot be downloaded. Speed and memory depend on the shapes, not on the weight values.

The numbers are those of Qwen/Qwen2-VL-2B-Instruct and -7B-Instruct's config.json. The tokenizer is the
embedded tiny model's (any Qwen-style chat tokenizer works): its ids all fall inside the real 151,936-entry
vocabulary, whose embedding and LM-head cost is kept.

    python -m vlmforge.model_shapes OUT_DIR --shape 2b --tokenizer-from .cache/vlmforge/models/tiny-qwen2-vl
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from .build_cache import built_atomically
from .tiny_model.tokenizer import ENDOFTEXT

QWEN2_VL_VOCAB = 151936
QWEN2_VL_VISION = {"depth": 32, "embed_dim": 1280, "num_heads": 16, "mlp_ratio": 4, "patch_size": 14,
                   "spatial_merge_size": 2, "temporal_patch_size": 2}
QWEN2_VL_SHAPES = {
    "2b": {"hidden_size": 1536, "intermediate_size": 8960, "num_hidden_layers": 28, "num_attention_heads": 12,
           "num_key_value_heads": 2, "tie_word_embeddings": True},
    "7b": {"hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28, "num_attention_heads": 28,
           "num_key_value_heads": 4, "tie_word_embeddings": False},
}


def build_shaped_model(out_dir: Path, shape: str, tokenizer_from: Path, *, image_size_px: int = 448,
                       device: str = "cpu") -> Path:
    """Writes a loadable model directory (bf16 safetensors + processor); returns it. Cached: an existing
    directory with a config is left as it is."""
    from transformers import (
        AutoTokenizer,
        Qwen2VLConfig,
        Qwen2VLForConditionalGeneration,
        Qwen2VLImageProcessor,
        Qwen2VLProcessor,
        Qwen2VLVideoProcessor,
    )

    out_dir = Path(out_dir)
    if (out_dir / "config.json").is_file():
        return out_dir
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_from)
    token = tokenizer.convert_tokens_to_ids
    sizes = QWEN2_VL_SHAPES[shape]
    text_config = {
        **sizes, "vocab_size": QWEN2_VL_VOCAB, "max_position_embeddings": 32768, "rms_norm_eps": 1e-6,
        "rope_parameters": {"rope_type": "default", "rope_theta": 1e6, "mrope_section": [16, 24, 24]},
        "bos_token_id": token(ENDOFTEXT), "eos_token_id": token("<|im_end|>"), "pad_token_id": token(ENDOFTEXT),
    }
    config = Qwen2VLConfig(
        text_config=text_config, vision_config={**QWEN2_VL_VISION, "hidden_size": sizes["hidden_size"]},
        tie_word_embeddings=sizes["tie_word_embeddings"], image_token_id=token("<|image_pad|>"),
        video_token_id=token("<|video_pad|>"), vision_start_token_id=token("<|vision_start|>"),
        vision_end_token_id=token("<|vision_end|>"))
    config.architectures = ["Qwen2VLForConditionalGeneration"]
    pixels = image_size_px * image_size_px
    processor = Qwen2VLProcessor(image_processor=Qwen2VLImageProcessor(min_pixels=pixels, max_pixels=pixels),
                                 video_processor=Qwen2VLVideoProcessor(min_pixels=pixels, max_pixels=pixels),
                                 tokenizer=tokenizer, chat_template=tokenizer.chat_template)
    torch.manual_seed(0)
    with torch.device(device):
        model = Qwen2VLForConditionalGeneration(config).to(torch.bfloat16)
    with built_atomically(out_dir) as staging:
        model.save_pretrained(staging)
        processor.save_pretrained(staging)
    return out_dir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--shape", choices=sorted(QWEN2_VL_SHAPES), default="2b")
    parser.add_argument("--tokenizer-from", type=Path, required=True)
    parser.add_argument("--image-size-px", type=int, default=448)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    print(build_shaped_model(args.out_dir, args.shape, args.tokenizer_from, image_size_px=args.image_size_px,
                             device=args.device))


if __name__ == "__main__":
    main()
