"""The model-family registry: every family resolves from its config `model_type`, has a tiny model for the CPU
tests, and the layer switches pick the family's own module names."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from trainer_service.job_spec import Hyperparameters
from trainer_service.worker.lora_targets import target_modules
from vlmforge.families import FAMILIES, LLAVA, QWEN2_VL, UnsupportedModelError, family_for_model_dir
from vlmforge.tiny_model.build import FAMILIES as TINY_FAMILIES


@pytest.mark.parametrize("family", FAMILIES, ids=lambda f: f.name)
def test_each_family_resolves_from_its_config_and_has_a_tiny_model(family, tmp_path: Path) -> None:
    assert family.name in TINY_FAMILIES
    for model_type in family.model_types:
        (tmp_path / "config.json").write_text(json.dumps({"model_type": model_type}))
        assert family_for_model_dir(tmp_path) is family


def test_an_unregistered_model_type_names_the_supported_ones(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "mllama"}))
    with pytest.raises(UnsupportedModelError, match="'mllama' is not supported .*llava.*qwen2_vl"):
        family_for_model_dir(tmp_path)


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
