"""The model-family registry: what the trainer and the inference service need to know about a VLM family, one
small module per family (never a chain of `if model_type == ...`). A family is found by the `model_type` of
the model's config.json, so real checkpoints and the embedded tiny ones resolve the same way."""

from __future__ import annotations

import json
from pathlib import Path

from .base import ModelFamily, UnsupportedModelError
from .gemma3 import GEMMA3
from .idefics3 import IDEFICS3
from .internvl import INTERNVL
from .llava import LLAVA, LLAVA_NEXT
from .mistral3 import MISTRAL3
from .mllama import MLLAMA
from .qwen2_vl import QWEN2_5_VL, QWEN2_VL
from .qwen3_vl import QWEN3_5, QWEN3_VL

FAMILIES: tuple[ModelFamily, ...] = (QWEN2_VL, QWEN2_5_VL, LLAVA, LLAVA_NEXT, IDEFICS3, MLLAMA, GEMMA3, INTERNVL,
                                     MISTRAL3, QWEN3_VL, QWEN3_5)
_BY_MODEL_TYPE = {model_type: family for family in FAMILIES for model_type in family.model_types}

__all__ = ["FAMILIES", "IDEFICS3", "LLAVA", "LLAVA_NEXT", "MLLAMA", "QWEN2_5_VL", "QWEN2_VL", "ModelFamily",
           "GEMMA3", "INTERNVL", "QWEN3_5", "QWEN3_VL",
           "MISTRAL3", "UnsupportedModelError", "family_for_model_dir", "family_for_model_type"]


def family_for_model_type(model_type: str) -> ModelFamily:
    try:
        return _BY_MODEL_TYPE[model_type]
    except KeyError:
        supported = ", ".join(sorted(_BY_MODEL_TYPE))
        raise UnsupportedModelError(f"model type {model_type!r} is not supported (supported: {supported})") from None


def family_for_model_dir(model_dir: Path) -> ModelFamily:
    config = json.loads((Path(model_dir) / "config.json").read_text())
    return family_for_model_type(config.get("model_type", ""))
