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
    assert not MLLAMA.vllm_serves and "0.10.2" in MLLAMA.vllm_unserved_reason
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
