"""Rewrites saved safetensors so vLLM loads what transformers and peft wrote (see ModelFamily.vllm_weight_renames).
transformers reads the renamed files too: they are the names the published checkpoints use."""

from __future__ import annotations

import json
from pathlib import Path

from safetensors import safe_open
from safetensors.torch import save_file

from .base import ModelFamily

_INDEX = "model.safetensors.index.json"


def rename_weights_for_vllm(directory: Path, family: ModelFamily) -> int:
    """Renames the tensors of every *.safetensors file in `directory` in place; returns how many changed."""
    if not family.vllm_weight_renames:
        return 0
    renamed = 0
    for path in sorted(Path(directory).glob("*.safetensors")):
        with safe_open(path, "pt") as source:
            names = {key: _renamed(key, family) for key in source.keys()}
            changed = sum(old != new for old, new in names.items())
            if not changed:
                continue
            metadata = source.metadata()
            tensors = {new: source.get_tensor(old) for old, new in names.items()}
        save_file(tensors, path, metadata=metadata)
        renamed += changed
    index = Path(directory) / _INDEX
    if index.exists():
        data = json.loads(index.read_text())
        data["weight_map"] = {_renamed(key, family): shard for key, shard in data["weight_map"].items()}
        index.write_text(json.dumps(data, indent=2) + "\n")
    return renamed


def _renamed(key: str, family: ModelFamily) -> str:
    for written, read in family.vllm_weight_renames:
        if written in key and read not in key:
            return key.replace(written, read, 1)
    return key
