"""Builds the embedded default model: a tiny Qwen2-VL that transformers and vLLM load like the real one (or the
same recipe in another family's layout, `TinyModelSpec(family="smolvlm")`, for the model-family tests: FAMILIES).

Steps: generate the dataset (cached), train the tokenizer on its text, assemble config + processor, pre-train
all weights on the `pretrain` split, then write everything into the directory in one atomic rename.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from pathlib import Path

import torch
from transformers import (
    CLIPImageProcessor,
    CLIPImageProcessor,
    Gemma3ForConditionalGeneration,
    GenerationConfig,
    Idefics3Config,
    Idefics3ForConditionalGeneration,
    Idefics3ImageProcessor,
    Idefics3Processor,
    Idefics3Processor,
    InternVLForConditionalGeneration,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaNextConfig,
    LlavaNextForConditionalGeneration,
    LlavaNextImageProcessor,
    LlavaNextProcessor,
    LlavaProcessor,
    Mistral3ForConditionalGeneration,
    MllamaForConditionalGeneration,
    PretrainedConfig,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2_5_VLProcessor,
    Qwen2VLConfig,
    Qwen2VLForConditionalGeneration,
    Qwen2VLImageProcessor,
    Qwen2VLProcessor,
    Qwen2VLVideoProcessor,
    Qwen3_5ForConditionalGeneration,
    Qwen3VLForConditionalGeneration,
    SmolVLMConfig,
    SmolVLMForConditionalGeneration,
    SmolVLMImageProcessor,
    SmolVLMProcessor,
    SmolVLMVideoProcessor,
)

from ..build_cache import built_atomically, has_fingerprint
from ..families import ModelFamily, family_for_model_type
from ..families.checkpoints import rename_weights_for_vllm
from ..data import load_dataset
from ..datagen import build_dataset
from .gemma3 import GEMMA3_STYLE, gemma3_config, gemma3_processor
from .internvl import INTERNVL_STYLE, internvl_config, internvl_processor
from .mistral3 import MISTRAL3_STYLE, mistral3_config, mistral3_processor
from .mllama import mllama_config, mllama_processor
from .pretrain import PretrainResult, pretrain
from .qwen3 import QWEN3_5_STYLE, QWEN3_VL_STYLE, qwen3_5_config, qwen3_processor, qwen3_vl_config
from .spec import TinyModelSpec
from .tokenizer import (ENDOFTEXT, IDEFICS3_STYLE, LLAVA_STYLE, MISTRAL_STYLE, MLLAMA_STYLE, QWEN2_STYLE,
                        SMOLVLM_STYLE, train_tokenizer)

RECIPE_FILE = "vlmforge_tiny_model.json"


def is_built(model_dir: Path, spec: TinyModelSpec) -> bool:
    return has_fingerprint(model_dir, RECIPE_FILE, spec.fingerprint())


def build_tiny_model(model_dir: Path, data_dir: Path, spec: TinyModelSpec = TinyModelSpec()) -> Path:
    model_dir = Path(model_dir)
    if is_built(model_dir, spec):
        return model_dir
    build_dataset(data_dir, spec.dataset)
    pretrain_set = load_dataset(Path(data_dir) / "pretrain.jsonl")
    train_texts = [m.text for c in load_dataset(Path(data_dir) / "train.jsonl") for m in c.messages]

    torch.manual_seed(spec.seed)
    tokenizer = train_tokenizer([m.text for c in pretrain_set for m in c.messages] + train_texts,
                                spec.max_tokenizer_vocab, _TOKENIZER_STYLE[spec.family])
    processor = make_processor(tokenizer, spec)
    model = _MODEL_CLASS[spec.family](make_config(tokenizer, spec))
    result = pretrain(model, processor, pretrain_set, spec)

    with built_atomically(model_dir) as staging:
        model.generation_config = make_generation_config(tokenizer)
        model.save_pretrained(staging)  # safetensors
        rename_weights_for_vllm(staging, family_for_model_type(model.config.model_type))
        processor.save_pretrained(staging)
        _write_recipe(staging, spec, result)
    return model_dir


def make_processor(tokenizer, spec: TinyModelSpec):
    return _PROCESSOR_BUILDER[spec.family](tokenizer, spec)


def _qwen_processor(processor_class, tokenizer, spec: TinyModelSpec):
    pixels = spec.image_size_px * spec.image_size_px
    image_processor = Qwen2VLImageProcessor(min_pixels=pixels, max_pixels=pixels)
    video_processor = Qwen2VLVideoProcessor(min_pixels=pixels, max_pixels=pixels)
    return processor_class(image_processor=image_processor, tokenizer=tokenizer, video_processor=video_processor,
                           chat_template=tokenizer.chat_template)


def _llava_processor(tokenizer, spec: TinyModelSpec) -> LlavaProcessor:
    side = spec.image_size_px
    image_processor = CLIPImageProcessor(size={"shortest_edge": side}, crop_size={"height": side, "width": side})
    # CLIP adds a CLS token that the "default" feature strategy drops: (side / 14)^2 image tokens.
    return LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=14,
                          vision_feature_select_strategy="default", num_additional_image_tokens=1,
                          chat_template=tokenizer.chat_template)


def _llava_next_processor(tokenizer, spec: TinyModelSpec) -> LlavaNextProcessor:
    side = spec.image_size_px
    image_processor = LlavaNextImageProcessor(size={"shortest_edge": side}, crop_size={"height": side, "width": side},
                                              image_grid_pinpoints=_pinpoints(side))
    return LlavaNextProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=14,
                              vision_feature_select_strategy="default", num_additional_image_tokens=1,
                              chat_template=tokenizer.chat_template)


def _idefics3_processor(tokenizer, spec: TinyModelSpec) -> Idefics3Processor:
    """One global image per picture, no splitting: (side / 14)^2 patches, pixel-shuffled 2x2 into image tokens."""
    side = spec.image_size_px
    image_processor = Idefics3ImageProcessor(size={"longest_edge": side}, max_image_size={"longest_edge": side},
                                             do_image_splitting=False)
    return Idefics3Processor(image_processor=image_processor, tokenizer=tokenizer,
                             image_seq_len=(side // 14) ** 2 // 4, chat_template=tokenizer.chat_template)


def _smolvlm_processor(tokenizer, spec: TinyModelSpec) -> SmolVLMProcessor:
    """Idefics3's image layout; SmolVLM2's processor also takes a video processor (videos are not served here)."""
    side = spec.image_size_px
    sizes = {"size": {"longest_edge": side}, "max_image_size": {"longest_edge": side}}
    video_processor = SmolVLMVideoProcessor(**sizes, video_sampling={"fps": 1, "max_frames": 4,
                                                                     "video_size": {"longest_edge": side}})
    return SmolVLMProcessor(image_processor=SmolVLMImageProcessor(**sizes, do_image_splitting=False),
                            tokenizer=tokenizer, video_processor=video_processor,
                            image_seq_len=(side // 14) ** 2 // 4, chat_template=tokenizer.chat_template)


def _pinpoints(side: int) -> list[list[int]]:
    """LLaVA-1.6's any-resolution grid at this model's tile size: up to 2x2 tiles."""
    return [[side, side], [side, 2 * side], [2 * side, side], [2 * side, 2 * side]]


def make_config(tokenizer, spec: TinyModelSpec) -> PretrainedConfig:
    token = tokenizer.convert_tokens_to_ids
    vocab_size = -(-len(tokenizer) // 64) * 64  # padded like Qwen's embedding tables
    text_config = {
        "vocab_size": vocab_size,
        "hidden_size": spec.hidden_size,
        "intermediate_size": spec.intermediate_size,
        "num_hidden_layers": spec.layers,
        "num_attention_heads": spec.attention_heads,
        "num_key_value_heads": spec.kv_heads,
        "max_position_embeddings": 4096,
        "rms_norm_eps": 1e-6,
        "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": list(spec.mrope_section)},
        "bos_token_id": token(ENDOFTEXT),
        "eos_token_id": token(tokenizer.eos_token),
        "pad_token_id": token(ENDOFTEXT),
        "tie_word_embeddings": True,
    }
    return _CONFIG_BUILDER[spec.family](text_config, token, spec)


def _qwen_tokens(token) -> dict:
    return {"image_token_id": token("<|image_pad|>"), "video_token_id": token("<|video_pad|>"),
            "vision_start_token_id": token("<|vision_start|>"), "vision_end_token_id": token("<|vision_end|>")}


def _qwen2_vl_config(text_config: dict, token, spec: TinyModelSpec) -> Qwen2VLConfig:
    vision_config = {
        "depth": spec.vision_depth,
        "embed_dim": spec.vision_embed_dim,
        "num_heads": spec.vision_heads,
        "mlp_ratio": spec.vision_mlp_ratio,
        "hidden_size": spec.hidden_size,
        "patch_size": 14,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
    }
    config = Qwen2VLConfig(text_config=text_config, vision_config=vision_config, tie_word_embeddings=True,
                           **_qwen_tokens(token))
    config.architectures = ["Qwen2VLForConditionalGeneration"]
    return config


def _qwen2_5_vl_config(text_config: dict, token, spec: TinyModelSpec) -> Qwen2_5_VLConfig:
    """Qwen2.5-VL's tower: gated MLP, windowed attention with full attention in the last block (the real one has
    a window of 112 px and full attention every 8th block; a 112 px image is one window here)."""
    vision_config = {
        "depth": spec.vision_depth,
        "hidden_size": spec.vision_embed_dim,
        "intermediate_size": spec.vision_embed_dim * spec.vision_mlp_ratio,
        "num_heads": spec.vision_heads,
        "out_hidden_size": spec.hidden_size,
        "patch_size": 14,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
        "window_size": 112,
        "fullatt_block_indexes": [spec.vision_depth - 1],
    }
    config = Qwen2_5_VLConfig(text_config=text_config, vision_config=vision_config, tie_word_embeddings=True,
                              **_qwen_tokens(token))
    config.architectures = ["Qwen2_5_VLForConditionalGeneration"]
    return config


def _llava_config(text_config: dict, token, spec: TinyModelSpec) -> LlavaConfig:
    """LLaVA-1.5's layout: CLIP ViT (features of its second-to-last layer), a 2-layer GELU projector, a Llama."""
    text_config = {**text_config, "model_type": "llama", "head_dim": spec.hidden_size // spec.attention_heads,
                   "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0}}
    vision_config = {
        "model_type": "clip_vision_model",
        "hidden_size": spec.vision_embed_dim,
        "intermediate_size": spec.vision_embed_dim * spec.vision_mlp_ratio,
        "num_hidden_layers": spec.vision_depth + 1,  # the last is not used (vision_feature_layer -2), as in LLaVA
        "num_attention_heads": spec.vision_heads,
        "image_size": spec.image_size_px,
        "patch_size": 14,
    }
    config = LlavaConfig(text_config=text_config, vision_config=vision_config, image_token_index=token("<image>"),
                         image_seq_length=(spec.image_size_px // 14) ** 2, vision_feature_layer=-2,
                         vision_feature_select_strategy="default", tie_word_embeddings=True)
    config.architectures = ["LlavaForConditionalGeneration"]
    return config


def _llava_next_config(text_config: dict, token, spec: TinyModelSpec) -> LlavaNextConfig:
    """LLaVA-1.6 on Mistral: the LLaVA-1.5 layout plus any-resolution tiles and an image-newline embedding."""
    llava = _llava_config(text_config, token, spec)
    config = LlavaNextConfig(text_config={**llava.text_config.to_dict(), "model_type": "mistral"},
                             vision_config=llava.vision_config.to_dict(), image_token_index=token("<image>"),
                             image_grid_pinpoints=_pinpoints(spec.image_size_px),
                             image_seq_length=(spec.image_size_px // 14) ** 2, vision_feature_layer=-2,
                             vision_feature_select_strategy="default", tie_word_embeddings=True)
    config.architectures = ["LlavaNextForConditionalGeneration"]
    return config


def _idefics3_config(text_config: dict, token, spec: TinyModelSpec, config_class=Idefics3Config):
    """Idefics3's layout, and SmolVLM2's (`config_class=SmolVLMConfig`): a SigLIP-style tower, a 2x2 pixel-shuffle
    connector, a Llama."""
    text_config = {**text_config, "model_type": "llama", "head_dim": spec.hidden_size // spec.attention_heads,
                   "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0}}
    vision_config = {"hidden_size": spec.vision_embed_dim, "num_hidden_layers": spec.vision_depth,
                     "intermediate_size": spec.vision_embed_dim * spec.vision_mlp_ratio,
                     "num_attention_heads": spec.vision_heads, "image_size": spec.image_size_px, "patch_size": 14}
    config = config_class(text_config=text_config, vision_config=vision_config, scale_factor=2,
                          image_token_id=token("<image>"), pad_token_id=token(ENDOFTEXT), tie_word_embeddings=True)
    config.architectures = [config_class.__name__.removesuffix("Config") + "ForConditionalGeneration"]
    return config


_CONFIG_BUILDER = {"qwen2_vl": _qwen2_vl_config, "qwen2_5_vl": _qwen2_5_vl_config, "llava": _llava_config,
                   "gemma3": gemma3_config, "internvl": internvl_config,
                   "llava_next": _llava_next_config, "idefics3": _idefics3_config,
                   # SmolVLM2: Idefics3's layout under its own model type and classes
                   "smolvlm": functools.partial(_idefics3_config, config_class=SmolVLMConfig),
                   "mistral3": mistral3_config,
                   "mllama": mllama_config,
                   "qwen3_vl": qwen3_vl_config, "qwen3_5": qwen3_5_config}
_MODEL_CLASS = {"qwen2_vl": Qwen2VLForConditionalGeneration, "qwen2_5_vl": Qwen2_5_VLForConditionalGeneration,
                "gemma3": Gemma3ForConditionalGeneration, "internvl": InternVLForConditionalGeneration,
                "llava": LlavaForConditionalGeneration, "llava_next": LlavaNextForConditionalGeneration,
                "idefics3": Idefics3ForConditionalGeneration, "smolvlm": SmolVLMForConditionalGeneration,
                "mistral3": Mistral3ForConditionalGeneration,
                "mllama": MllamaForConditionalGeneration,
                "qwen3_vl": Qwen3VLForConditionalGeneration, "qwen3_5": Qwen3_5ForConditionalGeneration}
_PROCESSOR_BUILDER = {"qwen2_vl": functools.partial(_qwen_processor, Qwen2VLProcessor),
                      "gemma3": gemma3_processor, "internvl": internvl_processor,
                      "qwen2_5_vl": functools.partial(_qwen_processor, Qwen2_5_VLProcessor),
                      "llava": _llava_processor, "llava_next": _llava_next_processor, "mistral3": mistral3_processor,
                      "idefics3": _idefics3_processor, "smolvlm": _smolvlm_processor, "mllama": mllama_processor,
                      "qwen3_vl": qwen3_processor, "qwen3_5": qwen3_processor}
FAMILIES = tuple(_CONFIG_BUILDER)
_TOKENIZER_STYLE = {"qwen2_vl": QWEN2_STYLE, "qwen2_5_vl": QWEN2_STYLE, "llava": LLAVA_STYLE,
                    "gemma3": GEMMA3_STYLE, "internvl": INTERNVL_STYLE,
                    "llava_next": MISTRAL_STYLE, "idefics3": IDEFICS3_STYLE, "smolvlm": SMOLVLM_STYLE,
                    "mistral3": MISTRAL3_STYLE,
                    "mllama": MLLAMA_STYLE,
                    "qwen3_vl": QWEN3_VL_STYLE, "qwen3_5": QWEN3_5_STYLE}


def architecture_of(family: str) -> str:
    """The model class (config `architectures`) of a tiny family's models, e.g. SmolVLMForConditionalGeneration."""
    return _MODEL_CLASS[family].__name__


def model_family_of(family: str) -> ModelFamily:
    """The registered family (vlmforge.families) a tiny family's models resolve to: smolvlm's is idefics3."""
    return family_for_model_type(_MODEL_CLASS[family].config_class.model_type)


def make_generation_config(tokenizer) -> GenerationConfig:
    token = tokenizer.convert_tokens_to_ids
    return GenerationConfig(eos_token_id=[token(tokenizer.eos_token), token(ENDOFTEXT)],
                            pad_token_id=token(ENDOFTEXT), bos_token_id=token(ENDOFTEXT), do_sample=False)


def _write_recipe(model_dir: Path, spec: TinyModelSpec, result: PretrainResult) -> None:
    recipe = {
        "fingerprint": spec.fingerprint(),
        "spec": dataclasses.asdict(spec),
        "pretraining": dataclasses.asdict(result),
    }
    (model_dir / RECIPE_FILE).write_text(json.dumps(recipe, indent=2) + "\n")
