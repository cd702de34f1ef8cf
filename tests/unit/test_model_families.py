"""The model-family registry: every family resolves from its config `model_type`, has a tiny model for the CPU
tests, and the layer switches pick the family's own module names."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest

from trainer_service.job_spec import Hyperparameters
from trainer_service.worker.lora_targets import target_modules
from vlmforge.families import FAMILIES, LLAVA, MLLAMA, QWEN2_VL, UnsupportedModelError, family_for_model_dir
from vlmforge.tiny_model.build import FAMILIES as TINY_FAMILIES
from vlmforge.tiny_model.build import model_family_of


@pytest.mark.parametrize("family", FAMILIES, ids=lambda f: f.name)
def test_each_family_resolves_from_its_config_and_has_a_tiny_model(family, tmp_path: Path) -> None:
    assert family.name in TINY_FAMILIES
    for model_type in family.model_types:
        (tmp_path / "config.json").write_text(json.dumps({"model_type": model_type}))
        assert family_for_model_dir(tmp_path) is family


@pytest.mark.parametrize("tiny_family", TINY_FAMILIES)
def test_each_tiny_model_is_of_a_registered_family(tiny_family: str) -> None:
    family = model_family_of(tiny_family)  # raises for an unregistered model type
    assert family.name in (tiny_family, "idefics3")  # SmolVLM2 shares Idefics3's module names and turns


def test_an_unregistered_model_type_names_the_supported_ones(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "paligemma"}))
    with pytest.raises(UnsupportedModelError, match="'paligemma' is not supported .*llava.*mllama.*qwen2_vl"):
        family_for_model_dir(tmp_path)


def test_a_family_vllm_cannot_serve_says_why_and_only_then() -> None:
    assert not MLLAMA.vllm_serves and "vLLM PR #24907" in MLLAMA.vllm_unserved_reason
    assert all(family.vllm_serves and not family.vllm_unserved_reason for family in FAMILIES if family is not MLLAMA)
    with pytest.raises(ValueError, match="vllm_unserved_reason"):
        dataclasses.replace(MLLAMA, vllm_unserved_reason="")
    with pytest.raises(ValueError, match="vllm_unserved_reason"):
        dataclasses.replace(QWEN2_VL, vllm_unserved_reason="it is not served")


def test_mllama_switches_reach_both_vision_stages_and_the_cross_attention() -> None:
    """Names of transformers 5.17's MllamaForConditionalGeneration (checked on the tiny model by the
    integration tests, which assert every part got LoRA)."""
    language_only = target_modules(Hyperparameters(finetune_vision_layers=False, finetune_projector=False), MLLAMA)
    everything = target_modules(Hyperparameters(), MLLAMA)
    for name in ("model.language_model.layers.3.cross_attn.k_proj", "model.language_model.layers.0.self_attn.o_proj",
                 "model.language_model.layers.1.mlp.down_proj"):
        assert re.fullmatch(language_only, name) and re.fullmatch(everything, name)
    for name in ("model.vision_model.transformer.layers.31.self_attn.q_proj",
                 "model.vision_model.global_transformer.layers.7.mlp.fc2", "model.multi_modal_projector"):
        assert re.fullmatch(everything, name) and not re.fullmatch(language_only, name)
    assert not any(re.fullmatch(everything, name) for name in ("lm_head", "model.vision_model.patch_embedding",
                                                              "model.language_model.layers.3.cross_attn.q_norm"))


@pytest.mark.parametrize(("switches", "adapted", "left"), [
    ({}, ["model.visual.blocks.3.attn.qkv", "model.visual.merger.mlp.0", "model.language_model.layers.2.mlp.up_proj"],
     []),
    ({"finetune_vision_layers": False}, ["model.visual.merger.mlp.2", "model.language_model.layers.0.self_attn.q_proj"],
     ["model.visual.blocks.0.mlp.fc1"]),
    ({"finetune_projector": False, "finetune_mlp_modules": False}, ["model.visual.blocks.0.attn.proj"],
     ["model.visual.merger.mlp.0", "model.language_model.layers.0.mlp.down_proj"]),
])
def test_the_switches_pick_module_names_of_the_family(switches: dict, adapted: list[str], left: list[str]) -> None:
    pattern = target_modules(Hyperparameters(**switches), QWEN2_VL)
    assert all(re.fullmatch(pattern, name) for name in adapted) and not any(re.fullmatch(pattern, n) for n in left)
    llava = target_modules(Hyperparameters(**switches), LLAVA)
    assert re.fullmatch(llava, "model.language_model.layers.1.self_attn.o_proj")
    assert not re.fullmatch(llava, "model.visual.merger.mlp.0")


def test_mistral3_switches_reach_the_pixtral_tower_and_the_patch_merger() -> None:
    """Names of transformers 5.17's Mistral3ForConditionalGeneration (the integration tests check every part of
    the tiny model's got LoRA)."""
    from vlmforge.families.mistral3 import MISTRAL3

    language_only = target_modules(Hyperparameters(finetune_vision_layers=False, finetune_projector=False), MISTRAL3)
    everything = target_modules(Hyperparameters(), MISTRAL3)
    for name in ("model.language_model.layers.39.self_attn.k_proj", "model.language_model.layers.0.mlp.gate_proj"):
        assert re.fullmatch(language_only, name) and re.fullmatch(everything, name)
    for name in ("model.vision_tower.transformer.layers.23.attention.o_proj",
                 "model.vision_tower.transformer.layers.0.feed_forward.up_proj",
                 "model.multi_modal_projector.patch_merger.merging_layer", "model.multi_modal_projector.linear_2"):
        assert re.fullmatch(everything, name) and not re.fullmatch(language_only, name)
    assert not any(re.fullmatch(everything, name) for name in ("lm_head", "model.vision_tower.patch_conv",
                                                              "model.multi_modal_projector.norm"))


def test_the_tiny_mistral3_chat_template_renders_as_mistral_commons_v7() -> None:
    """The tiny model's template against the one mistral_common (Mistral's own library, which vLLM brings)
    generates for tokenizer v7 with images, on the turns our datasets have: system prompts, images before or
    after the text, several turns."""
    from mistral_common.integrations.chat_templates.chat_templates import generate_chat_template
    from mistral_common.tokens.tokenizers.base import TokenizerVersion
    from transformers.utils.chat_template_utils import render_jinja_template

    from vlmforge.tiny_model.mistral3 import MISTRAL3_CHAT_TEMPLATE

    v7 = generate_chat_template(spm=False, tokenizer_version=TokenizerVersion.v7, image_support=True,
                                audio_support=False, thinking_support=False, default_system_prompt=None,
                                plain_thinking_support=False, use_special_token_variables=True,
                                model_settings_fields=None, reasoning_effort_values=None,
                                reasoning_effort_default=None)
    image, text = {"type": "image"}, {"type": "text", "text": "What color is the bar?"}
    chats = [
        [{"role": "user", "content": [image, text]},
         {"role": "assistant", "content": [{"type": "text", "text": "red"}]}],
        [{"role": "system", "content": "Answer in one word."}, {"role": "user", "content": [text, image]},
         {"role": "assistant", "content": "blue"}, {"role": "user", "content": [image, image, text]},
         {"role": "assistant", "content": "two"}],
        [{"role": "user", "content": "Hello"}],
    ]
    for chat in chats:
        ours, theirs = (render_jinja_template(conversations=[chat], chat_template=template, bos_token="<s>",
                                              eos_token="</s>")[0][0] for template in (MISTRAL3_CHAT_TEMPLATE, v7))
        assert ours == theirs
    assert ours == "<s>[INST]Hello[/INST]"
