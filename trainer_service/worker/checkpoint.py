"""Training checkpoints a killed worker resumes from: LoRA weights, optimizer and scheduler state, RNG state
and the step. Tensors go to safetensors and the rest to JSON; nothing is pickled. Each checkpoint is written
aside and renamed into place, so a kill mid-write leaves the previous one intact.

A sharded (FSDP) job writes its LoRA weights and optimizer state with torch.distributed.checkpoint instead, each
rank its own shards (`sharded/`), and rank 0 the rest; the whole adapter is still written once by rank 0
(`adapter/`), so a checkpoint's adapter loads the same way whichever strategy trained it."""

from __future__ import annotations

import json
import random
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from vlmforge.build_cache import built_atomically

from .distributed import Ranks

STEP_PREFIX = "step-"
SHARDED_DIR = "sharded"  # torch.distributed.checkpoint's files: LoRA weights and optimizer state, by shard


@dataclass(frozen=True)
class Checkpoint:
    step: int
    path: Path


def latest_checkpoint(root: Path) -> Checkpoint | None:
    steps = sorted((int(p.name.removeprefix(STEP_PREFIX)), p) for p in Path(root).glob(f"{STEP_PREFIX}*")
                   if p.name.removeprefix(STEP_PREFIX).isdigit() and (p / "state.json").is_file())
    return Checkpoint(*steps[-1]) if steps else None


def save_checkpoint(root: Path, step: int, peft_model, optimizer, scheduler, losses: list[float],
                    ranks: Ranks = Ranks()) -> Checkpoint:
    """Called by every rank; rank 0 writes (with a sharded model every rank writes its shards)."""
    target = Path(root) / f"{STEP_PREFIX}{step:08d}"
    if ranks.shards_model:
        return _save_sharded(target, step, peft_model, optimizer, scheduler, losses, ranks)
    if not ranks.is_main:
        return Checkpoint(step, target)
    with built_atomically(target) as staging:
        peft_model.save_pretrained(staging / "adapter")
        tensors, optimizer_meta = _flatten_optimizer(optimizer.state_dict())
        tensors["rng.torch"] = torch.get_rng_state()
        if torch.cuda.is_available():  # dropout on the GPU draws from these
            tensors.update({f"rng.cuda.{index}": state for index, state in enumerate(torch.cuda.get_rng_state_all())})
        save_file(tensors, staging / "optimizer_and_rng.safetensors")
        state = {"step": step, "optimizer": optimizer_meta, "scheduler": _json_safe(scheduler.state_dict()),
                 "python_random": _json_safe(random.getstate()), "losses": losses}
        (staging / "state.json").write_text(json.dumps(state))
    return Checkpoint(step, target)


def restore_checkpoint(checkpoint: Checkpoint, peft_model, optimizer, scheduler, ranks: Ranks = Ranks()) -> list[float]:
    """Loads everything back; returns the loss history up to the checkpoint."""
    from peft import set_peft_model_state_dict

    state = json.loads((checkpoint.path / "state.json").read_text())
    tensors = load_file(checkpoint.path / "optimizer_and_rng.safetensors")
    written_sharded = (checkpoint.path / SHARDED_DIR).is_dir()
    if written_sharded != ranks.shards_model:
        raise ValueError(f"{checkpoint.path} was written {'with' if written_sharded else 'without'} FSDP and this "
                         f"run {'shards' if ranks.shards_model else 'does not shard'} the model: resume with the "
                         "placement (strategy, GPU count) the job started with")
    if ranks.shards_model:
        _load_sharded(checkpoint.path / SHARDED_DIR, peft_model, optimizer)
    else:
        set_peft_model_state_dict(peft_model, load_file(checkpoint.path / "adapter" / "adapter_model.safetensors"))
    torch.set_rng_state(tensors.pop("rng.torch"))
    cuda_states = [tensors.pop(f"rng.cuda.{index}") for index in range(_count_prefixed(tensors, "rng.cuda."))]
    if cuda_states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda_states)
    if not ranks.shards_model:
        optimizer.load_state_dict(_unflatten_optimizer(tensors, state["optimizer"]))
    scheduler.load_state_dict(state["scheduler"])
    random.setstate(_as_tuples(state["python_random"]))
    return state["losses"]


def _save_sharded(target: Path, step: int, peft_model, optimizer, scheduler, losses: list[float],
                  ranks: Ranks) -> Checkpoint:
    """Every rank writes its shards into one staging directory beside `target` (the same path on every rank:
    the state directory is shared by the job's processes), then rank 0 adds the rest and renames it in."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    from .fsdp import full_adapter_state

    staging = target.parent / f".{target.name}-sharded"
    if ranks.is_main:
        shutil.rmtree(staging, ignore_errors=True)  # a killed run's leftovers
        staging.mkdir(parents=True)
    ranks.barrier()
    model_state, optimizer_state = get_state_dict(peft_model, optimizer, options=_sharded_options())
    dcp.save({"model": model_state, "optimizer": optimizer_state}, checkpoint_id=staging / SHARDED_DIR)
    adapter = full_adapter_state(peft_model)
    if ranks.is_main:
        peft_model.save_pretrained(staging / "adapter", state_dict=adapter)
        tensors = {"rng.torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            tensors.update({f"rng.cuda.{index}": state for index, state in enumerate(torch.cuda.get_rng_state_all())})
        save_file(tensors, staging / "optimizer_and_rng.safetensors")
        state = {"step": step, "optimizer": {"param_groups": [], "scalars": {}},
                 "scheduler": _json_safe(scheduler.state_dict()), "python_random": _json_safe(random.getstate()),
                 "losses": losses}
        (staging / "state.json").write_text(json.dumps(state))
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    ranks.barrier()
    return Checkpoint(step, target)


def _load_sharded(directory: Path, peft_model, optimizer) -> None:
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    model_state, optimizer_state = get_state_dict(peft_model, optimizer, options=_sharded_options())
    loaded = {"model": model_state, "optimizer": optimizer_state}
    dcp.load(loaded, checkpoint_id=directory)
    set_state_dict(peft_model, optimizer, model_state_dict=loaded["model"], optim_state_dict=loaded["optimizer"],
                   options=_sharded_options())


def _sharded_options():
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    # Only the adapters: the frozen base is the model directory's, loaded again on resume.
    return StateDictOptions(ignore_frozen_params=True, strict=False)


def _count_prefixed(tensors: dict[str, torch.Tensor], prefix: str) -> int:
    return sum(1 for key in tensors if key.startswith(prefix))


def _flatten_optimizer(state_dict: dict) -> tuple[dict[str, torch.Tensor], dict]:
    tensors, scalars = {}, {}
    for index, values in state_dict["state"].items():
        for name, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optimizer.{index}.{name}"] = value.contiguous()
            else:
                scalars[f"{index}.{name}"] = value
    return tensors, {"param_groups": state_dict["param_groups"], "scalars": scalars}


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        _, index, name = key.split(".", 2)
        state.setdefault(int(index), {})[name] = value
    for key, value in meta["scalars"].items():
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    return {"state": state, "param_groups": meta["param_groups"]}


def _json_safe(value):
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    return value


def _as_tuples(value):
    return tuple(_as_tuples(v) for v in value) if isinstance(value, list) else value
