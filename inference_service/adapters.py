"""LoRA adapters from the artifact store: what may be loaded (inspect_adapter) and loading each once
(AdapterManager), whether pushed by the trainer or asked for by name in a chat request."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from safetensors import safe_open

from vlmforge.artifacts import ADAPTER_DIR, MANIFEST_FILE, is_valid_model_name, read_manifest

from .errors import AdapterRejected, ModelNotFound
from .metrics import InferenceMetrics

logger = logging.getLogger(__name__)

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
# Weight formats that unpickle (run code) when read. Their mere presence refuses the adapter, so no loader
# down the line can prefer them over the safetensors file.
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".ckpt")


@dataclass(frozen=True)
class BaseModelIdentity:
    config_sha256: str
    names: frozenset[str]  # served name, path, directory name: what an adapter without a manifest may cite
    family_name: str = ""  # vlmforge.families, "" when the model type is not in the registry
    # Module-name patterns this engine cannot serve LoRA on (the vision tower and projector of some families).
    unservable_lora_modules: tuple[str, ...] = ()


@dataclass(frozen=True)
class AdapterInfo:
    name: str
    path: Path
    rank: int
    evaluation: dict[str, dict[str, float]] = field(default_factory=dict)  # phase -> metric -> value


def inspect_adapter(artifacts_dir: Path, name: str, *, max_rank: int, base: BaseModelIdentity) -> AdapterInfo:
    """Everything checked before the engine reads a byte of weights. Raises ModelNotFound or AdapterRejected."""
    if not is_valid_model_name(name):
        raise AdapterRejected("adapter names are letters, digits, '.', '_' and '-' (at most 128)",
                              reason="adapter_name", param="model")
    root = artifacts_dir.resolve()
    entry = artifacts_dir / name
    if not entry.exists():
        raise ModelNotFound(f"the model `{name}` does not exist", reason="model_not_found", param="model")
    adapter_dir = entry / ADAPTER_DIR
    for path in (entry, adapter_dir, *_listing(adapter_dir)):
        if not path.resolve().is_relative_to(root):
            raise AdapterRejected(f"adapter `{name}` points outside the artifact store", reason="adapter_path")
    if pickled := [p.name for p in _listing(adapter_dir) if p.suffix in PICKLE_SUFFIXES]:
        raise AdapterRejected(f"adapter `{name}` holds pickle weights ({', '.join(sorted(pickled))}); only "
                              "safetensors are read", reason="adapter_pickle")
    config = _adapter_config(adapter_dir, name)
    rank = config.get("r")
    if not isinstance(rank, int) or rank < 1:
        raise AdapterRejected(f"adapter `{name}` has no valid LoRA rank `r`", reason="adapter_config")
    if rank > max_rank:
        raise AdapterRejected(f"adapter `{name}` has rank {rank}, above this server's maximum {max_rank}",
                              reason="adapter_rank")
    _check_weights(adapter_dir / ADAPTER_WEIGHTS, name)
    _check_servable_modules(adapter_dir / ADAPTER_WEIGHTS, base, name)
    manifest = _manifest(entry, name)
    _check_base(manifest, config, base, name)
    return AdapterInfo(name, adapter_dir.resolve(), rank, _evaluation(manifest))


def _evaluation(manifest: dict) -> dict[str, dict[str, float]]:
    return {phase: scores for phase in ("before", "after")
            if isinstance(scores := manifest.get(f"evaluation_{phase}"), dict)}


def stored_evaluation(artifacts_dir: Path, name: str) -> dict[str, dict[str, float]]:
    """The trainer's scores of a stored adapter, {} where there are none or the manifest cannot be read."""
    try:
        return _evaluation(_manifest(artifacts_dir / name, name))
    except (AdapterRejected, OSError):
        return {}


def _listing(directory: Path) -> list[Path]:
    return sorted(directory.iterdir()) if directory.is_dir() else []


def _adapter_config(adapter_dir: Path, name: str) -> dict:
    try:
        config = json.loads((adapter_dir / ADAPTER_CONFIG).read_text())
    except FileNotFoundError:
        raise AdapterRejected(f"adapter `{name}` has no {ADAPTER_CONFIG}", reason="adapter_config") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise AdapterRejected(f"adapter `{name}` has a corrupt {ADAPTER_CONFIG}", reason="adapter_config") from None
    if not isinstance(config, dict) or config.get("peft_type", "LORA") != "LORA":
        raise AdapterRejected(f"adapter `{name}` is not a PEFT LoRA adapter", reason="adapter_config")
    return config


def _check_weights(weights: Path, name: str) -> None:
    if not weights.is_file():
        raise AdapterRejected(f"adapter `{name}` has no {ADAPTER_WEIGHTS}", reason="adapter_weights")
    try:
        with safe_open(str(weights), framework="numpy") as tensors:  # reads the header only
            if not list(tensors.keys()):
                raise AdapterRejected(f"adapter `{name}` has no tensors", reason="adapter_weights")
    except AdapterRejected:
        raise
    except Exception:  # noqa: BLE001 - safetensors raises several types for a damaged header
        raise AdapterRejected(f"adapter `{name}` has corrupt weights", reason="adapter_weights") from None


def _check_servable_modules(weights: Path, base: BaseModelIdentity, name: str) -> None:
    """vLLM would accept such an adapter and then fail or ignore part of it: refuse it, and say what works."""
    if not base.unservable_lora_modules:
        return
    with safe_open(str(weights), framework="numpy") as tensors:  # the header only
        modules = {key.rsplit(".lora_", 1)[0] for key in tensors.keys() if ".lora_" in key}
    if any(re.search(pattern + "$", module) for module in modules for pattern in base.unservable_lora_modules):
        raise AdapterRejected(
            f"adapter `{name}` has LoRA on the vision tower or the projector, which vLLM does not serve for "
            f"{base.family_name} models; serve its merged model instead (--base-model <artifacts>/{name}/merged), "
            "or fine-tune with finetune_vision_layers and finetune_projector off", reason="adapter_modules")


def _manifest(entry: Path, name: str) -> dict:
    if not (entry / MANIFEST_FILE).exists():
        return {}
    try:
        manifest = read_manifest(entry)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise AdapterRejected(f"adapter `{name}` has a corrupt {MANIFEST_FILE}", reason="adapter_config") from None
    return manifest if isinstance(manifest, dict) else {}


def _check_base(manifest: dict, config: dict, base: BaseModelIdentity, name: str) -> None:
    if "base_model_config_sha256" in manifest:
        if manifest["base_model_config_sha256"] != base.config_sha256:
            raise AdapterRejected(f"adapter `{name}` was trained on a different base model than this server's",
                                  reason="adapter_base_model")
        return
    cited = str(config.get("base_model_name_or_path") or "")
    if cited not in base.names and Path(cited.rstrip("/")).name not in base.names:
        raise AdapterRejected(f"adapter `{name}` was trained on a different base model than this server's",
                              reason="adapter_base_model")


class AdapterEngine(Protocol):
    """What the manager needs from the serving engine."""

    async def load(self, name: str, path: Path) -> None: ...
    async def unload(self, name: str) -> None: ...
    def loaded(self) -> set[str]: ...
    # Held around checking and loading or unloading one name: one at a time across API frontends too.
    def exclusive(self, name: str) -> contextlib.AbstractAsyncContextManager[None]: ...


class AdapterManager:
    def __init__(self, artifacts_dir: Path | None, engine: AdapterEngine, metrics: InferenceMetrics, *,
                 max_rank: int, base: BaseModelIdentity):
        self.artifacts_dir = artifacts_dir
        self.engine = engine
        self.metrics = metrics
        self.max_rank = max_rank
        self.base = base
        self._locks: dict[str, asyncio.Lock] = {}

    def is_stored(self, name: str) -> bool:
        return self.artifacts_dir is not None and is_valid_model_name(name) and (self.artifacts_dir / name).exists()

    def is_loaded(self, name: str) -> bool:
        return name in self.engine.loaded()

    def loaded(self) -> set[str]:
        return self.engine.loaded()

    async def ensure_loaded(self, name: str, *, source: str) -> bool:
        """Loads `name` unless it is loaded already (concurrent callers wait for one load); True if it loaded
        now. `source` is `push` (admin endpoint) or `lazy` (first request)."""
        if self.artifacts_dir is None:
            raise ModelNotFound(f"the model `{name}` does not exist", reason="model_not_found", param="model")
        lock = self._locks.setdefault(name, asyncio.Lock())
        async with lock, self.engine.exclusive(name):
            if self.is_loaded(name):
                return False
            started = time.perf_counter()
            try:
                info = await asyncio.to_thread(inspect_adapter, self.artifacts_dir, name, max_rank=self.max_rank,
                                               base=self.base)
                await self.engine.load(name, info.path)
            except Exception:
                self.metrics.adapter_loads.labels(source=source, outcome="refused").observe(
                    time.perf_counter() - started)
                raise
            self.metrics.adapter_loads.labels(source=source, outcome="loaded").observe(time.perf_counter() - started)
            self.metrics.adapter_loaded(info.name, info.evaluation, loaded_count=len(self.loaded()))
            logger.info("adapter %s (rank %d) loaded in %.0f ms (%s)", name, info.rank,
                        1000 * (time.perf_counter() - started), source)
            return True

    async def unload(self, name: str) -> None:
        lock = self._locks.setdefault(name, asyncio.Lock())
        async with lock, self.engine.exclusive(name):
            if not self.is_loaded(name):
                raise ModelNotFound(f"the adapter `{name}` is not loaded", reason="model_not_found", param="name")
            await self.engine.unload(name)
            # Another frontend may have loaded it: the scores it published are named from the manifest.
            evaluation = await asyncio.to_thread(stored_evaluation, self.artifacts_dir, name) \
                if self.artifacts_dir is not None else {}
            self.metrics.adapter_unloaded(name, evaluation, loaded_count=len(self.loaded()))
