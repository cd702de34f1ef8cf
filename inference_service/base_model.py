"""What the service checks about its base model before it starts vLLM: a family that vLLM cannot serve at all
(vlmforge.families, `vllm_serves`) is refused with one line that says why. Without the check, vLLM 0.32 takes
Llama-3.2-Vision to its Transformers-backend fallback (it has no Mllama of its own since 0.10.2), and that
fails 16 s into the start (on a 2-core CPU machine) with a vLLM traceback ending in
`'MllamaProcessor' object has no attribute '_get_num_multimodal_tokens'`: images reach Mllama's text through
cross-attention, not as tokens the fallback can count."""

from __future__ import annotations

from pathlib import Path

from vlmforge.families import ModelFamily, UnsupportedModelError, family_for_model_dir


class BaseModelError(Exception):
    """The base model cannot be served; the message says why, in one line."""


class BaseModelNotServable(BaseModelError):
    """The base model is of a family that vLLM does not serve; the message says why and what to use instead."""


class BaseModelNotFound(BaseModelError):
    """Neither a model directory nor a name in the local Hugging Face cache."""


def check_base_model(model_dir: Path) -> ModelFamily | None:
    """The base model's family (None when the registry does not know its type: vLLM serves it as it can);
    raises BaseModelNotServable when vLLM cannot serve the family."""
    try:
        family = family_for_model_dir(model_dir)
    except UnsupportedModelError:
        return None
    if not family.vllm_serves:
        raise BaseModelNotServable(
            f"cannot serve {Path(model_dir).name}: {family.vllm_unserved_reason}; load it, its adapters (with peft) "
            "and its fine-tunes' merged models in transformers instead")
    return family


def base_model_dir(base_model: str) -> Path:
    """The directory holding the base model's config.json: the path given, or for a hub name its local cache
    (no network at run time)."""
    model_dir = Path(base_model)
    if model_dir.is_dir():
        if not (model_dir / "config.json").is_file():
            raise BaseModelNotFound(f"base model {base_model}: the directory has no config.json")
        return model_dir
    from transformers.utils import cached_file

    try:
        return Path(cached_file(base_model, "config.json")).parent
    except OSError as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise BaseModelNotFound(f"base model {base_model}: not a model directory, nor a model in the local Hugging "
                                f"Face cache ({reason})") from None
