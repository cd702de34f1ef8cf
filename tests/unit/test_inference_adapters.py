"""What inspect_adapter refuses before the engine reads a byte of an adapter's weights."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from inference_service.adapters import BaseModelIdentity, inspect_adapter
from inference_service.errors import AdapterRejected, ModelNotFound

BASE = BaseModelIdentity(config_sha256="a" * 64, names=frozenset({"tiny-qwen2-vl", "/models/tiny-qwen2-vl"}))


def _adapter(store: Path, name: str = "tiny-ft-1", *, rank: int = 8, manifest: dict | None = None) -> Path:
    adapter = store / name / "adapter"
    adapter.mkdir(parents=True)
    (adapter / "adapter_config.json").write_text(json.dumps(
        {"peft_type": "LORA", "r": rank, "lora_alpha": 16, "base_model_name_or_path": "/models/tiny-qwen2-vl",
         "target_modules": ["q_proj"]}))
    save_file({"base_model.model.layers.0.q_proj.lora_A.weight": np.zeros((rank, 4), np.float32)},
              str(adapter / "adapter_model.safetensors"))
    (store / name / "manifest.json").write_text(json.dumps(manifest if manifest is not None else {
        "base_model_config_sha256": BASE.config_sha256, "evaluation_after": {"exact_match": 0.5}}))
    return adapter


def _inspect(store: Path, name: str = "tiny-ft-1", max_rank: int = 16):
    return inspect_adapter(store, name, max_rank=max_rank, base=BASE)


def test_a_good_adapter_passes_with_its_rank_and_scores(tmp_path: Path) -> None:
    adapter = _adapter(tmp_path)
    info = _inspect(tmp_path)
    assert (info.path, info.rank, info.evaluation) == (adapter.resolve(), 8, {"after": {"exact_match": 0.5}})


def test_an_unknown_name_is_not_found(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFound):
        _inspect(tmp_path, "nothing-here")


@pytest.mark.parametrize("name", ["../outside", "/etc", "a/b", "..", ".hidden", "x" * 129, "sp ace"])
def test_names_that_are_paths_are_refused(tmp_path: Path, name: str) -> None:
    with pytest.raises(AdapterRejected) as refused:
        _inspect(tmp_path / "store", name)
    assert refused.value.reason == "adapter_name"


def test_a_symlink_out_of_the_store_is_refused(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    _adapter(outside, "real")
    (tmp_path / "store").mkdir()
    os.symlink(outside / "real", tmp_path / "store" / "linked")
    with pytest.raises(AdapterRejected) as refused:
        _inspect(tmp_path / "store", "linked")
    assert refused.value.reason == "adapter_path"


def test_a_weights_file_symlinked_out_is_refused(tmp_path: Path) -> None:
    adapter = _adapter(tmp_path / "store")
    secret = tmp_path / "secret.safetensors"
    (adapter / "adapter_model.safetensors").rename(secret)
    os.symlink(secret, adapter / "adapter_model.safetensors")
    with pytest.raises(AdapterRejected) as refused:
        _inspect(tmp_path / "store")
    assert refused.value.reason == "adapter_path"


class _Boom:
    def __reduce__(self):
        return (os.system, ("touch /tmp/vlmforge-pickle-ran",))


def test_pickle_weights_are_refused_without_being_read(tmp_path: Path) -> None:
    adapter = _adapter(tmp_path)
    (adapter / "adapter_model.bin").write_bytes(pickle.dumps(_Boom()))
    with pytest.raises(AdapterRejected) as refused:
        _inspect(tmp_path)
    assert refused.value.reason == "adapter_pickle"
    assert not Path("/tmp/vlmforge-pickle-ran").exists()


def test_rank_above_the_maximum_is_refused(tmp_path: Path) -> None:
    _adapter(tmp_path, rank=32)
    with pytest.raises(AdapterRejected, match="rank 32, above this server's maximum 16") as refused:
        _inspect(tmp_path)
    assert refused.value.reason == "adapter_rank"


def test_a_different_base_model_is_refused(tmp_path: Path) -> None:
    _adapter(tmp_path, manifest={"base_model_config_sha256": "b" * 64})
    with pytest.raises(AdapterRejected) as refused:
        _inspect(tmp_path)
    assert refused.value.reason == "adapter_base_model"


def test_without_a_manifest_the_adapter_config_names_the_base(tmp_path: Path) -> None:
    adapter = _adapter(tmp_path, manifest={})
    (adapter.parent / "manifest.json").unlink()
    assert _inspect(tmp_path).rank == 8
    config = json.loads((adapter / "adapter_config.json").read_text())
    (adapter / "adapter_config.json").write_text(json.dumps({**config, "base_model_name_or_path": "other/model"}))
    with pytest.raises(AdapterRejected):
        _inspect(tmp_path)


@pytest.mark.parametrize("damage", ["config_json", "config_not_lora", "config_no_rank", "weights_garbage",
                                    "weights_missing"])
def test_corrupt_config_or_weights_are_refused(tmp_path: Path, damage: str) -> None:
    adapter = _adapter(tmp_path)
    config_path, weights = adapter / "adapter_config.json", adapter / "adapter_model.safetensors"
    if damage == "config_json":
        config_path.write_text("{not json")
    elif damage == "config_not_lora":
        config_path.write_text(json.dumps({"peft_type": "PREFIX_TUNING", "r": 8}))
    elif damage == "config_no_rank":
        config_path.write_text(json.dumps({"peft_type": "LORA"}))
    elif damage == "weights_garbage":
        weights.write_bytes(b"\xff" * 64)
    else:
        weights.unlink()
    with pytest.raises(AdapterRejected) as refused:
        _inspect(tmp_path)
    assert str(tmp_path) not in refused.value.message


def test_lora_on_modules_this_engine_cannot_serve_is_refused_with_the_way_out(tmp_path: Path) -> None:
    """A LLaVA base: vLLM serves no LoRA on its CLIP tower or projector (vlmforge.families.llava)."""
    from vlmforge.families import LLAVA

    llava = BaseModelIdentity(config_sha256=BASE.config_sha256, names=BASE.names, family_name="llava",
                              unservable_lora_modules=LLAVA.tower_and_projector_patterns)
    adapter = _adapter(tmp_path, "language-only")
    assert inspect_adapter(tmp_path, "language-only", max_rank=16, base=llava).rank == 8
    for module in ("model.vision_tower.vision_model.encoder.layers.0.self_attn.q_proj",
                   "model.vision_tower.encoder.layers.1.mlp.fc2", "model.multi_modal_projector.linear_1"):
        name = "towers-" + module.rsplit(".", 1)[-1]
        adapter = _adapter(tmp_path, name)
        save_file({f"base_model.model.{module}.lora_A.weight": np.zeros((8, 4), np.float32),
                   "base_model.model.model.language_model.layers.0.self_attn.q_proj.lora_A.weight":
                       np.zeros((8, 4), np.float32)}, str(adapter / "adapter_model.safetensors"))
        with pytest.raises(AdapterRejected, match=f"serve its merged model instead.*{name}/merged") as refused:
            inspect_adapter(tmp_path, name, max_rank=16, base=llava)
        assert refused.value.reason == "adapter_modules"
        assert _inspect(tmp_path, name).rank == 8  # a Qwen2-VL base serves the same adapter
