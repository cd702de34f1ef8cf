"""Why Unsloth's (and compiled blocks') LoRA losses left the plain loop's, pinned on the CPU: eager bf16 rounds a
young adapter's output away, Inductor's fused kernels keep it unless told to round like eager, and
`round_like_eager` (which the Unsloth backend and the bench's `compiled` blocks use) tells it to. The GPU
losses behind this are in BENCHMARKS.md, "Training speed, round 2"."""

from __future__ import annotations

import os

import pytest
import torch

from trainer_service.worker.compile_blocks import compile_blocks, round_like_eager


@pytest.fixture
def inductor_config():
    import torch._inductor.config as config

    saved = config.emulate_precision_casts
    yield config
    config.emulate_precision_casts = saved
    torch._dynamo.reset()


def _lora_layer_then_residual(base, x, lora_a, lora_b, residual):
    """PEFT's Linear forward (bf16 base output + fp32 adapter, cast back to bf16) feeding the residual add."""
    return (base + (x @ lora_a.T) @ lora_b.T).to(torch.bfloat16) + residual


def _young_adapter(seed: int = 0):
    """A 512-wide layer after one AdamW step at lr 2e-4: B's entries are +-lr, A is PEFT's kaiming init."""
    generator = torch.Generator().manual_seed(seed)
    width, rank = 512, 16
    x = torch.randn(64, width, generator=generator).bfloat16()
    weight = (torch.randn(width, width, generator=generator) * 0.02).bfloat16()
    base = x @ weight.T  # on the bf16 grid, as the base layer returns it
    lora_a = (torch.rand(rank, width, generator=generator) * 2 - 1) / width**0.5
    lora_b = torch.randint(0, 2, (width, rank), generator=generator).float().mul(2).sub(1) * 2e-4
    residual = torch.randn(64, width, generator=generator).bfloat16()
    return base, x.float(), lora_a, lora_b, residual


def test_eager_bf16_rounds_most_of_a_young_adapter_away() -> None:
    base, x, lora_a, lora_b, _ = _young_adapter()
    delta = (x @ lora_a.T) @ lora_b.T
    kept = (base + delta).to(torch.bfloat16).float() - base.float()
    share = float((kept * delta).sum() / (delta * delta).sum())
    assert share < 0.6, f"{share:.2f} of the adapter's output survived the cast"


@pytest.mark.skipif(os.environ.get("VLMFORGE_RUN_COMPILE_TESTS") != "1", reason="Inductor's C++ build of these two "
                    "kernels took 257 s on the shared 2-core machine (CI's budget for this file is 20 s); "
                    "VLMFORGE_RUN_COMPILE_TESTS=1 runs it (passed 2026-12-02)")
def test_inductor_keeps_eager_rounding_only_when_told(inductor_config) -> None:
    inputs = _young_adapter(seed=1)
    eager = _lora_layer_then_residual(*inputs)
    inductor_config.emulate_precision_casts = False
    torch._dynamo.reset()
    fused = torch.compile(_lora_layer_then_residual, dynamic=False)(*inputs)
    round_like_eager()
    torch._dynamo.reset()
    rounded = torch.compile(_lora_layer_then_residual, dynamic=False)(*inputs)
    assert torch.equal(rounded, eager)
    assert not torch.equal(fused, eager), "Inductor's default fusion kept the bf16 rounding after all"


def test_compile_blocks_compiles_each_decoder_layer_and_vision_block(tiny_model_dir, inductor_config) -> None:
    from trainer_service.job_spec import Hyperparameters
    from trainer_service.worker.backends import Placement, TransformersBackend

    backend = TransformersBackend(Placement(torch.device("cpu"), torch.float32))
    hyper = Hyperparameters()
    peft_model = backend.add_lora(backend.load(tiny_model_dir, quantize_4bit=False, hyper=hyper), hyper)
    blocks = [m for m in peft_model.modules() if type(m).__name__ in ("Qwen2VLDecoderLayer", "Qwen2VLVisionBlock")]
    inductor_config.emulate_precision_casts = False
    assert compile_blocks(peft_model) == len(blocks) > 0  # compiling itself waits for the first call
    assert all(block._compiled_call_impl is not None for block in blocks)
    assert inductor_config.emulate_precision_casts
