"""VLMs at their published sizes with random weights, for GPU benchmarks and checks where the real weights
cannot be downloaded. Speed and memory depend on the shapes, not on the weight values.

The numbers are those of the checkpoints' config.json: Qwen/Qwen2-VL-2B-Instruct and -7B-Instruct,
Qwen/Qwen2.5-VL-3B-Instruct and -7B-Instruct, llava-hf/llava-1.5-7b-hf, llava-hf/llava-v1.6-mistral-7b-hf and
HuggingFaceTB/SmolVLM-Instruct (an Idefics3). The tokenizer is an embedded tiny
model's of the same family (`python -m vlmforge.tiny_model build DIR --family F`): its ids all fall inside the
real vocabulary, whose embedding and LM-head cost is kept.

    python -m vlmforge.model_shapes OUT_DIR --shape 2b --tokenizer-from .cache/vlmforge/models/tiny-qwen2-vl
    python -m vlmforge.model_shapes OUT_DIR --shape llava-1.5-7b --tokenizer-from TINY_LLAVA_DIR
    python -m vlmforge.model_shapes OUT_DIR --shape mistral-small-3.1-24b --tokenizer-from TINY_MISTRAL3_DIR
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from .build_cache import built_atomically
from .model_shapes_gemma3 import GEMMA3_4B_TEXT, gemma3_parts
from .model_shapes_internvl import INTERNVL3_8B_TEXT, internvl_parts
from .model_shapes_mistral3 import MISTRAL_SMALL_3_1_24B_TEXT, mistral3_parts
from .model_shapes_qwen3 import QWEN3_5_9B_TEXT, QWEN3_VL_8B_TEXT, qwen3_5_parts, qwen3_vl_parts
from .tiny_model.tokenizer import ENDOFTEXT

QWEN_VOCAB = 151936
QWEN2_VL_VISION = {"depth": 32, "embed_dim": 1280, "num_heads": 16, "mlp_ratio": 4, "patch_size": 14,
                   "spatial_merge_size": 2, "temporal_patch_size": 2}
QWEN2_5_VL_VISION = {"depth": 32, "hidden_size": 1280, "intermediate_size": 3420, "num_heads": 16, "patch_size": 14,
                     "spatial_merge_size": 2, "temporal_patch_size": 2, "window_size": 112,
                     "fullatt_block_indexes": [7, 15, 23, 31]}
CLIP_L_336 = {"model_type": "clip_vision_model", "hidden_size": 1024, "intermediate_size": 4096,
              "num_hidden_layers": 24, "num_attention_heads": 16, "image_size": 336, "patch_size": 14,
              "projection_dim": 768}
SHAPES = {  # shape -> (family, language model sizes)
    "gemma-3-4b": ("gemma3", GEMMA3_4B_TEXT),  # google/gemma-3-4b-it
    "internvl3-8b": ("internvl", INTERNVL3_8B_TEXT),  # OpenGVLab/InternVL3-8B-hf
    "mistral-small-3.1-24b": ("mistral3", MISTRAL_SMALL_3_1_24B_TEXT),  # mistralai/Mistral-Small-3.1-24B-Instruct-2503
    "qwen3-vl-8b": ("qwen3_vl", QWEN3_VL_8B_TEXT),  # Qwen/Qwen3-VL-8B-Instruct
    "qwen3.5-9b": ("qwen3_5", QWEN3_5_9B_TEXT),  # Qwen/Qwen3.5-9B
    "2b": ("qwen2_vl", {"hidden_size": 1536, "intermediate_size": 8960, "num_hidden_layers": 28,
                        "num_attention_heads": 12, "num_key_value_heads": 2, "tie_word_embeddings": True}),
    "7b": ("qwen2_vl", {"hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28,
                        "num_attention_heads": 28, "num_key_value_heads": 4, "tie_word_embeddings": False}),
    "qwen2.5-vl-3b": ("qwen2_5_vl", {"hidden_size": 2048, "intermediate_size": 11008, "num_hidden_layers": 36,
                                     "num_attention_heads": 16, "num_key_value_heads": 2,
                                     "tie_word_embeddings": True}),
    "qwen2.5-vl-7b": ("qwen2_5_vl", {"hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28,
                                     "num_attention_heads": 28, "num_key_value_heads": 4,
                                     "tie_word_embeddings": False}),
    "llava-1.5-7b": ("llava", {"hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32,
                               "num_attention_heads": 32, "num_key_value_heads": 32, "tie_word_embeddings": False}),
    "llava-v1.6-mistral-7b": ("llava_next", {"hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
                                             "num_attention_heads": 32, "num_key_value_heads": 8,
                                             "tie_word_embeddings": False}),
    "smolvlm-instruct": ("idefics3", {"hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 24,
                                      "num_attention_heads": 32, "num_key_value_heads": 32,
                                      "tie_word_embeddings": False}),
}
LLAVA_NEXT_PINPOINTS = [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]
SIGLIP_SO400M_384 = {"hidden_size": 1152, "intermediate_size": 4304, "num_hidden_layers": 27,
                     "num_attention_heads": 16, "image_size": 384, "patch_size": 14}


def build_shaped_model(out_dir: Path, shape: str, tokenizer_from: Path, *, image_size_px: int = 448,
                       device: str = "cpu") -> Path:
    """Writes a loadable model directory (bf16 safetensors + processor); returns it. Cached: an existing
    directory with a config is left as it is."""
    from transformers import AutoTokenizer

    out_dir = Path(out_dir)
    if (out_dir / "config.json").is_file():
        return out_dir
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_from)
    family, sizes = SHAPES[shape]
    config, model_class, processor = _BUILDERS[family](sizes, tokenizer, image_size_px)
    torch.manual_seed(0)
    with torch.device(device):
        model = model_class(config).to(torch.bfloat16)
    with built_atomically(out_dir) as staging:
        model.save_pretrained(staging)
        processor.save_pretrained(staging)
    return out_dir


def _qwen_parts(sizes: dict, tokenizer, image_size_px: int, *, processor_class, video: bool = True):
    from transformers import Qwen2VLImageProcessor, Qwen2VLVideoProcessor

    token = tokenizer.convert_tokens_to_ids
    text_config = {
        **sizes, "vocab_size": QWEN_VOCAB, "max_position_embeddings": 32768, "rms_norm_eps": 1e-6,
        "rope_parameters": {"rope_type": "default", "rope_theta": 1e6, "mrope_section": [16, 24, 24]},
        "bos_token_id": token(ENDOFTEXT), "eos_token_id": token("<|im_end|>"), "pad_token_id": token(ENDOFTEXT),
    }
    tokens = {"image_token_id": token("<|image_pad|>"), "video_token_id": token("<|video_pad|>"),
              "vision_start_token_id": token("<|vision_start|>"), "vision_end_token_id": token("<|vision_end|>")}
    pixels = image_size_px * image_size_px
    processor = processor_class(image_processor=Qwen2VLImageProcessor(min_pixels=pixels, max_pixels=pixels),
                                video_processor=Qwen2VLVideoProcessor(min_pixels=pixels, max_pixels=pixels),
                                tokenizer=tokenizer, chat_template=tokenizer.chat_template)
    return text_config, tokens, processor


def _qwen2_vl(sizes: dict, tokenizer, image_size_px: int):
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration, Qwen2VLProcessor

    text_config, tokens, processor = _qwen_parts(sizes, tokenizer, image_size_px, processor_class=Qwen2VLProcessor)
    config = Qwen2VLConfig(text_config=text_config, vision_config={**QWEN2_VL_VISION, "hidden_size":
                                                                   sizes["hidden_size"]},
                           tie_word_embeddings=sizes["tie_word_embeddings"], **tokens)
    config.architectures = ["Qwen2VLForConditionalGeneration"]
    return config, Qwen2VLForConditionalGeneration, processor


def _qwen2_5_vl(sizes: dict, tokenizer, image_size_px: int):
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor

    text_config, tokens, processor = _qwen_parts(sizes, tokenizer, image_size_px,
                                                 processor_class=Qwen2_5_VLProcessor)
    config = Qwen2_5_VLConfig(text_config=text_config, vision_config={**QWEN2_5_VL_VISION, "out_hidden_size":
                                                                      sizes["hidden_size"]},
                              tie_word_embeddings=sizes["tie_word_embeddings"], **tokens)
    config.architectures = ["Qwen2_5_VLForConditionalGeneration"]
    return config, Qwen2_5_VLForConditionalGeneration, processor


def _text_config(sizes: dict, tokenizer, *, model_type: str, vocab_size: int, max_positions: int, eos_token: str,
                 rope_theta: float | None = None) -> dict:
    """The language model of the LLaVA and Idefics3 shapes (Llama / Mistral), with the tiny tokenizer's ids."""
    token = tokenizer.convert_tokens_to_ids
    config = {**sizes, "model_type": model_type, "vocab_size": vocab_size, "max_position_embeddings": max_positions,
              "rms_norm_eps": 1e-5, "bos_token_id": token(ENDOFTEXT), "eos_token_id": token(eos_token),
              "pad_token_id": token(ENDOFTEXT)}
    if rope_theta is not None:
        config["rope_parameters"] = {"rope_type": "default", "rope_theta": rope_theta}
    return config


def _llava_processor_options(tokenizer) -> dict:
    """CLIP adds a class token that the "default" feature strategy drops."""
    return {"tokenizer": tokenizer, "patch_size": 14, "vision_feature_select_strategy": "default",
            "num_additional_image_tokens": 1, "chat_template": tokenizer.chat_template}


def _llava(sizes: dict, tokenizer, image_size_px: int):
    """LLaVA-1.5 resizes every image to CLIP's 336 px: 576 image tokens whatever `image_size_px` is."""
    from transformers import CLIPImageProcessor, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor

    token = tokenizer.convert_tokens_to_ids
    text_config = _text_config(sizes, tokenizer, model_type="llama", vocab_size=32064, max_positions=4096,
                               eos_token="</s>")
    side = CLIP_L_336["image_size"]
    config = LlavaConfig(text_config=text_config, vision_config=CLIP_L_336, image_token_index=token("<image>"),
                         image_seq_length=(side // 14) ** 2, vision_feature_layer=-2,
                         vision_feature_select_strategy="default", tie_word_embeddings=False)
    config.architectures = ["LlavaForConditionalGeneration"]
    processor = LlavaProcessor(
        image_processor=CLIPImageProcessor(size={"shortest_edge": side}, crop_size={"height": side, "width": side}),
        **_llava_processor_options(tokenizer))
    return config, LlavaForConditionalGeneration, processor


def _llava_next(sizes: dict, tokenizer, image_size_px: int):
    """LLaVA-1.6: a 448 px image becomes the 672x672 grid (2x2 tiles of 336) plus the base image."""
    from transformers import (
        LlavaNextConfig,
        LlavaNextForConditionalGeneration,
        LlavaNextImageProcessor,
        LlavaNextProcessor,
    )

    token = tokenizer.convert_tokens_to_ids
    text_config = _text_config(sizes, tokenizer, model_type="mistral", vocab_size=32064, max_positions=32768,
                               eos_token="</s>", rope_theta=1e6)
    side = CLIP_L_336["image_size"]
    config = LlavaNextConfig(text_config=text_config, vision_config=CLIP_L_336, image_token_index=token("<image>"),
                             image_grid_pinpoints=LLAVA_NEXT_PINPOINTS, image_seq_length=(side // 14) ** 2,
                             vision_feature_layer=-2, vision_feature_select_strategy="default",
                             tie_word_embeddings=False)
    config.architectures = ["LlavaNextForConditionalGeneration"]
    processor = LlavaNextProcessor(
        image_processor=LlavaNextImageProcessor(size={"shortest_edge": side}, crop_size={"height": side, "width": side},
                                                image_grid_pinpoints=LLAVA_NEXT_PINPOINTS),
        **_llava_processor_options(tokenizer))
    return config, LlavaNextForConditionalGeneration, processor


def _idefics3(sizes: dict, tokenizer, image_size_px: int):
    """SmolVLM-Instruct: images split into 384 px tiles (longest edge up to 1536) plus a global view, 81 tokens
    each after the 3x3 pixel shuffle."""
    from transformers import (
        Idefics3Config,
        Idefics3ForConditionalGeneration,
        Idefics3ImageProcessor,
        Idefics3Processor,
    )

    token = tokenizer.convert_tokens_to_ids
    text_config = _text_config(sizes, tokenizer, model_type="llama", vocab_size=49155, max_positions=16384,
                               eos_token="<end_of_utterance>", rope_theta=273768.0)
    config = Idefics3Config(text_config=text_config, vision_config=SIGLIP_SO400M_384, scale_factor=3,
                            image_token_id=token("<image>"), pad_token_id=token(ENDOFTEXT), tie_word_embeddings=False)
    config.architectures = ["Idefics3ForConditionalGeneration"]
    processor = Idefics3Processor(
        image_processor=Idefics3ImageProcessor(size={"longest_edge": 1536}, max_image_size={"longest_edge": 384}),
        tokenizer=tokenizer, image_seq_len=81, chat_template=tokenizer.chat_template)
    return config, Idefics3ForConditionalGeneration, processor


_BUILDERS = {"qwen2_vl": _qwen2_vl, "qwen2_5_vl": _qwen2_5_vl, "llava": _llava, "llava_next": _llava_next,
             "gemma3": gemma3_parts, "internvl": internvl_parts, "mistral3": mistral3_parts,
             "qwen3_vl": qwen3_vl_parts, "qwen3_5": qwen3_5_parts,
             "idefics3": _idefics3}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--shape", choices=sorted(SHAPES), default="2b")
    parser.add_argument("--tokenizer-from", type=Path, required=True, help="a tiny model of the shape's family")
    parser.add_argument("--image-size-px", type=int, default=448)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    print(build_shaped_model(args.out_dir, args.shape, args.tokenizer_from, image_size_px=args.image_size_px,
                             device=args.device))


if __name__ == "__main__":
    main()
