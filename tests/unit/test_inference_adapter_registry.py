"""What the API frontends share about adapters (inference_service.adapter_registry): the LoRA id each adapter
gets from its artifact, the served set one frontend writes and another reads, and one load at a time per name.
Two registry objects on one directory stand for two frontend processes (the file locks are per open file, so
they exclude each other within one process too)."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from inference_service.adapter_registry import (
    LORA_ID_CEILING,
    LORA_ID_FLOOR,
    RegisteredAdapter,
    SharedAdapterRegistry,
    artifact_lora_id,
)


def _adapter_dir(root: Path, name: str, weights: bytes = b"w") -> Path:
    adapter = root / name / "adapter"
    adapter.mkdir(parents=True)
    (adapter / "adapter_config.json").write_text('{"r": 8}')
    (adapter / "adapter_model.safetensors").write_bytes(weights)
    return adapter


def test_the_lora_id_comes_from_the_artifact_and_changes_with_its_weights(tmp_path: Path) -> None:
    one, two = _adapter_dir(tmp_path, "one"), _adapter_dir(tmp_path, "two")
    first = artifact_lora_id(one)
    assert first == artifact_lora_id(one) != artifact_lora_id(two)
    assert LORA_ID_FLOOR <= first < LORA_ID_CEILING
    (one / "adapter_model.safetensors").write_bytes(b"retrained")
    os.utime(one / "adapter_model.safetensors", ns=(1, 1))
    assert artifact_lora_id(one) != first
    taken = artifact_lora_id(one)
    assert artifact_lora_id(one, taken={taken}) == taken + 1


def test_what_one_frontend_registers_or_removes_the_other_sees(tmp_path: Path) -> None:
    loader, other = SharedAdapterRegistry(tmp_path), SharedAdapterRegistry(tmp_path)
    assert other.current() == {}
    loader.add(RegisteredAdapter("a", LORA_ID_FLOOR + 1, "/artifacts/a/adapter"))
    loader.add(RegisteredAdapter("b", LORA_ID_FLOOR + 2, "/artifacts/b/adapter"))
    seen = other.current()
    assert list(seen) == ["a", "b"] and seen["b"].lora_int_id == LORA_ID_FLOOR + 2
    assert other.current() is seen, "unchanged file, same snapshot (no re-read)"
    loader.remove("a")
    assert list(other.current()) == ["b"]


def test_one_load_of_a_name_at_a_time_across_frontends(tmp_path: Path) -> None:
    first, second = SharedAdapterRegistry(tmp_path), SharedAdapterRegistry(tmp_path)
    order: list[str] = []

    async def load(registry: SharedAdapterRegistry, who: str) -> None:
        async with registry.loading("same-adapter"):
            order.append(f"{who} in")
            await asyncio.sleep(0.05)
            order.append(f"{who} out")

    async def both() -> None:
        await asyncio.gather(load(first, "first"), load(second, "second"))

    asyncio.run(both())
    assert order in (["first in", "first out", "second in", "second out"],
                     ["second in", "second out", "first in", "first out"])
