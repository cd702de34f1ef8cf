"""FSDP2 (`torch.distributed.fsdp.fully_shard`) for LoRA jobs whose base does not fit one GPU.

Every rank builds the model on the meta device (no memory), adds the adapters there, and shards it: one FSDP unit
per decoder layer / vision block (the model's `_no_split_modules`), then the rest as the root. Only then are the
weights materialised: `to_empty` allocates this rank's shard of every parameter, and rank 0, the one process that
reads the checkpoint (`from_pretrained` into host RAM), broadcasts it tensor by tensor; each rank keeps its slice.
No GPU and no other rank's RAM ever holds the whole model. The adapters rank 0 broadcasts are the ones the
single-process path would have made from the same seed, so a 2-process job trains the same model as a 1-process one.

Mixed precision on CUDA: the frozen base is stored in bf16, the LoRA masters in fp32 (PEFT upcasts them), FSDP
gathers both as bf16 for compute and reduces gradients in fp32. On the CPU (gloo) everything stays fp32, as the
single-process CPU path does: no cast, so losses compare to it exactly up to reduction order.
"""

from __future__ import annotations

import gc
from pathlib import Path

import torch

from ..job_spec import Hyperparameters
from .distributed import Ranks


def build_sharded_peft_model(model_dir: Path, backend, hyper: Hyperparameters, ranks: Ranks, *, seed: int):
    """The job's PEFT model, sharded over `ranks`, with the base weights from `model_dir` and the adapters the
    single-process path makes after `seed_everything(seed)`."""
    from transformers import AutoConfig, AutoModelForImageTextToText

    from .train import seed_everything

    dtype = backend.placement.dtype
    sharded = meta_peft_model(AutoConfig.from_pretrained(model_dir), backend, hyper)
    source = None
    if ranks.is_main:
        # The only full copy: rank 0's host RAM, as from_pretrained reads it.
        source = AutoModelForImageTextToText.from_pretrained(model_dir, dtype=dtype)
        seed_everything(seed)
        source = backend.add_lora(source, hyper)
    else:
        seed_everything(seed)  # every rank leaves this step with the same RNG state, as one process would
    shard(sharded, ranks, mixed_precision=_mixed_precision(backend))
    materialise(sharded, ranks, source)
    del source
    gc.collect()
    return sharded


def meta_peft_model(config, backend, hyper: Hyperparameters):
    """The model and its adapters with every parameter on the meta device (no memory), gradient checkpointing
    set as the backend would set it. Buffers (rotary frequencies) are small and computed for real on the CPU:
    a meta-built model could not know them later."""
    from accelerate import init_empty_weights
    from transformers import AutoModelForImageTextToText

    with init_empty_weights(include_buffers=False):
        model = AutoModelForImageTextToText.from_config(config, dtype=backend.placement.dtype)
    if hyper.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    rng = torch.get_rng_state()  # PEFT draws initial adapter weights here that the meta device then drops
    peft_model = backend.add_lora(model, hyper)
    torch.set_rng_state(rng)
    return peft_model


def shard(peft_model, ranks: Ranks, *, mixed_precision: bool) -> None:
    """One FSDP unit per repeated block, the transformers model as the root (not the PEFT wrapper: PEFT's
    generate calls the inner model, whose forward must be the one that gathers the root's weights)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mesh = init_device_mesh(ranks.device.type, (ranks.world_size,))
    policy = (MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if mixed_precision
              else MixedPrecisionPolicy())
    inner = peft_model.get_base_model()
    block_names = set(getattr(inner, "_no_split_modules", None) or ())
    blocks = [module for module in inner.modules() if type(module).__name__ in block_names]
    if not blocks:
        raise ValueError(f"{type(inner).__name__} names no repeated blocks (_no_split_modules) to shard by")
    for block in blocks:
        fully_shard(block, mesh=mesh, mp_policy=policy)
    fully_shard(inner, mesh=mesh, mp_policy=policy)


def materialise(peft_model, ranks: Ranks, source=None) -> None:
    """Allocates this rank's shards and fills them from rank 0's `source` (the same PEFT model, loaded; None on
    the other ranks), or, when `source` is None on every rank, with random weights (the benchmark's shapes)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    buffers = {name: buffer.clone() for name, buffer in peft_model.named_buffers()}
    peft_model.to_empty(device=ranks.device)
    with torch.no_grad():
        for name, buffer in peft_model.named_buffers():
            buffer.copy_(buffers[name])
    if ranks.any(source is not None):
        set_model_state_dict(peft_model, source.state_dict() if source is not None else {},
                             options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))
        return
    with torch.no_grad():  # each rank its own shard: base ~ N(0, 0.02), norms 1, biases and LoRA B 0
        for name, param in peft_model.named_parameters():
            local = param.to_local() if hasattr(param, "to_local") else param
            if "lora_B" in name or name.endswith(".bias"):
                local.zero_()
            elif local.dim() == 1:
                local.fill_(1.0)
            else:
                local.normal_(0.0, 0.02)


def reshard(peft_model) -> None:
    """Back to shards after inference: FSDP keeps the root's weights gathered after a forward with no backward
    to follow, and the optimizer and checkpoints hold the sharded parameters."""
    peft_model.get_base_model().reshard()


def _mixed_precision(backend) -> bool:
    return backend.placement.device.type == "cuda" and backend.placement.dtype == torch.bfloat16


def full_adapter_state(peft_model) -> dict[str, torch.Tensor]:
    """The trainable (LoRA) weights gathered whole onto rank 0's CPU, for `save_pretrained(state_dict=...)`.
    A collective: every rank calls it; ranks other than 0 get an empty dict."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(peft_model, options=StateDictOptions(
        full_state_dict=True, cpu_offload=True, ignore_frozen_params=True))
