"""The artifact store both services share: one directory per fine-tuned model, named by that model.

    <artifacts_dir>/<fine_tuned_model>/
        adapter/            adapter_config.json + adapter_model.safetensors (PEFT; never pickle)
        merged/             the merged 16-bit model, loadable by transformers and vLLM as it is
        manifest.json       base model, its config digest, hyperparameters, evaluation before / after
        loss.png

The trainer writes an entry atomically (temp dir + rename); the inference service only reads.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

# Also what a client passes as `model` to the chat endpoint, so it must be safe as a path component and a
# Prometheus label: no separators, no leading dot, bounded length.
MODEL_NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")

ADAPTER_DIR = "adapter"
MERGED_DIR = "merged"
MANIFEST_FILE = "manifest.json"
LOSS_PLOT_FILE = "loss.png"


def is_valid_model_name(name: str) -> bool:
    return MODEL_NAME_PATTERN.fullmatch(name) is not None and ".." not in name


def safe_model_name(text: str) -> str:
    """`text` with every character the name pattern refuses replaced, e.g. a base model's directory name."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-.") or "model"
    return cleaned[:64]


def model_config_digest(model_dir: Path) -> str:
    """Identifies a base model by its architecture config, so an adapter trained on one base is refused by a
    server running another. Paths differ between machines; the config does not."""
    config = _without_volatile_keys(json.loads((Path(model_dir) / "config.json").read_text()))
    canonical = json.dumps(config, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


# Keys that change when the same weights are saved again (merged to bf16, another transformers version).
_VOLATILE_CONFIG_KEYS = frozenset({"_name_or_path", "transformers_version", "torch_dtype", "dtype"})


def _without_volatile_keys(value):
    if isinstance(value, dict):
        return {k: _without_volatile_keys(v) for k, v in value.items() if k not in _VOLATILE_CONFIG_KEYS}
    return value


def read_manifest(entry_dir: Path) -> dict:
    return json.loads((entry_dir / MANIFEST_FILE).read_text())
