"""Regional compilation: each decoder and vision block of the model under its own `torch.compile`.

Inductor, by default, fuses a chain of bf16 operations and skips the bf16 rounding between them. For LoRA that
is not a small change: a base layer's bf16 output is already on the bf16 grid, and early in training the
adapter's delta is smaller than half a bf16 step (after one AdamW step at lr 2e-4 about 6e-4 of the output),
so eager PyTorch (the plain loop) rounds most of it away, while a fused kernel carries all of it into the next
operation. The compiled blocks then train another curve: 5% lower losses within a few steps on an H200
(BENCHMARKS.md, "Training speed, round 2"). `emulate_precision_casts` keeps eager's rounding inside the fused
kernels, so compiled and eager steps stay the same computation. `compile_blocks` is not a trainer setting: on the
realistic workload with packing and checkpointing it ran at 0.97x the uncompiled loop (the bench's `compiled`
configurations use it); the Unsloth backend uses `round_like_eager`.
"""

from __future__ import annotations

import torch


def round_like_eager() -> None:
    """Make every later `torch.compile` in this process keep eager's bf16/fp16 rounding points."""
    import torch._inductor.config as inductor_config

    inductor_config.emulate_precision_casts = True


def compile_blocks(model: torch.nn.Module) -> int:
    """Compiles, in place, every module whose class transformers keeps whole when it splits the model
    (`_no_split_modules`: Qwen2-VL's decoder layers and vision blocks), with dynamic shapes so one compile
    serves every layer and sequence length; returns how many. PEFT wrappers are looked through."""
    round_like_eager()
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    blocks = set(getattr(inner, "_no_split_modules", None) or ())
    compiled = 0
    for module in model.modules():
        if type(module).__name__ in blocks:
            module.compile(dynamic=True)
            compiled += 1
    return compiled
