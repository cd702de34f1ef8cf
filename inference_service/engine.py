"""The vLLM side of adapter loading, behind AdapterEngine (adapters.py)."""

from __future__ import annotations

import re
from pathlib import Path

from .errors import AdapterRejected
from .vllm_api import ErrorResponse, LoadLoRAAdapterRequest, OpenAIServingModels, UnloadLoRAAdapterRequest

_PATHS_AND_ADDRESSES = re.compile(r"(/[^\s'\"]+)|(0x[0-9a-fA-F]{6,})")


class VllmAdapterEngine:
    def __init__(self, serving_models: OpenAIServingModels, base_model_name: str):
        self.serving_models = serving_models
        self.base_model_name = base_model_name

    async def load(self, name: str, path: Path) -> None:
        outcome = await self.serving_models.load_lora_adapter(
            LoadLoRAAdapterRequest(lora_name=name, lora_path=str(path)), base_model_name=self.base_model_name)
        if isinstance(outcome, ErrorResponse):
            raise AdapterRejected(f"the engine refused adapter `{name}`: {_caller_safe(outcome.error.message)}",
                                  reason="adapter_engine")

    async def unload(self, name: str) -> None:
        outcome = await self.serving_models.unload_lora_adapter(UnloadLoRAAdapterRequest(lora_name=name))
        if isinstance(outcome, ErrorResponse):
            raise AdapterRejected(f"the engine could not unload `{name}`: {_caller_safe(outcome.error.message)}",
                                  reason="adapter_engine")

    def loaded(self) -> set[str]:
        return set(self.serving_models.lora_requests)


def _caller_safe(message: str) -> str:
    return _PATHS_AND_ADDRESSES.sub("<hidden>", message)[:300]
