"""The vLLM side of adapter loading, behind AdapterEngine (adapters.py).

vLLM's own `load_lora_adapter` numbers adapters with a per-process counter, which several API frontends would
each count on their own: two adapters under one id, the engine serving one's weights for the other. Here the id
comes from the artifact (adapter_registry.artifact_lora_id), and with several frontends the served set lives in
the SharedAdapterRegistry that each frontend's table follows.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator
from pathlib import Path

from .adapter_registry import LORA_ID_FLOOR, RegisteredAdapter, SharedAdapterRegistry, artifact_lora_id
from .errors import AdapterRejected
from .vllm_api import EngineClient, LoRARequest, OpenAIServingModels

_PATHS_AND_ADDRESSES = re.compile(r"(/[^\s'\"]+)|(0x[0-9a-fA-F]{6,})")


class VllmAdapterEngine:
    def __init__(self, serving_models: OpenAIServingModels, engine_client: EngineClient, base_model_name: str,
                 registry: SharedAdapterRegistry | None = None):
        self.serving_models = serving_models
        self.engine_client = engine_client
        self.base_model_name = base_model_name
        self.registry = registry
        self._followed: dict[str, RegisteredAdapter] | None = None

    async def load(self, name: str, path: Path) -> None:
        if self.serving_models.is_base_model(name):
            raise AdapterRejected(f"adapter `{name}` has the name of a served base model", reason="adapter_name")
        shared = self.registry.current() if self.registry else {}
        taken = {lora.lora_int_id for other, lora in self.serving_models.lora_requests.items() if other != name}
        taken |= {adapter.lora_int_id for other, adapter in shared.items() if other != name}
        request = LoRARequest(lora_name=name, lora_int_id=artifact_lora_id(path, taken), lora_path=str(path),
                              base_model_name=self.base_model_name)
        try:
            await self.engine_client.add_lora(request)  # reads and checks the weights; later requests find them
        except Exception as error:  # noqa: BLE001 - the engine raises whatever its loader did
            raise AdapterRejected(f"the engine refused adapter `{name}`: {_caller_safe(str(error))}",
                                  reason="adapter_engine") from None
        self.serving_models.lora_requests[name] = request
        if self.registry:
            self.registry.add(RegisteredAdapter(name, request.lora_int_id, request.lora_path))

    async def unload(self, name: str) -> None:
        """Out of the API's table (every frontend's); the engine keeps its copy in its LRU cache as vLLM does,
        so a reload of the unchanged artifact (same id) is quick."""
        self.serving_models.lora_requests.pop(name, None)
        if self.registry:
            self.registry.remove(name)

    def loaded(self) -> set[str]:
        if self.registry:
            self._follow(self.registry.current())
        return set(self.serving_models.lora_requests)

    @contextlib.asynccontextmanager
    async def exclusive(self, name: str) -> AsyncIterator[None]:
        """Around checking and loading or unloading `name`: across frontends, one at a time."""
        if self.registry is None:
            yield
            return
        async with self.registry.loading(name):
            yield

    def _follow(self, shared: dict[str, RegisteredAdapter]) -> None:
        """This frontend's table becomes the registry's, in its order (so /v1/models lists alike everywhere).
        Adapters vLLM loaded itself (`--lora-modules` in --vllm-args, counter ids below ours) stay."""
        if shared is self._followed:
            return
        table = self.serving_models.lora_requests
        own = {name: lora for name, lora in table.items() if lora.lora_int_id < LORA_ID_FLOOR}
        followed = {}
        for name, adapter in shared.items():
            lora = table.get(name)
            if lora is None or lora.lora_int_id != adapter.lora_int_id:
                lora = LoRARequest(lora_name=name, lora_int_id=adapter.lora_int_id, lora_path=adapter.path,
                                   base_model_name=self.base_model_name)
            followed[name] = lora
        table.clear()
        table.update({**own, **followed})
        self._followed = shared


def _caller_safe(message: str) -> str:
    return _PATHS_AND_ADDRESSES.sub("<hidden>", message)[:300]
