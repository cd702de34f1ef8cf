"""Qwen's vision towers see all of a batch's images in one varlen attention call
(trainer_service/worker/vision_attention.py). On the CPU that call runs one SDPA per image, as transformers' own
SDPA path does, so these tests check the wiring on each tiny Qwen family: the tower's output and gradients are
SDPA's, every block hands our function its images' boundaries and the longest image's length (what the CUDA
kernel is given), packing leaves it in place, and nothing written to disk names it. The CUDA kernel itself runs
on the GPU machine only; its losses against the plain loop are in BENCHMARKS.md ("Training speed, round 4")."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import pytest
import torch

from trainer_service.job_spec import Hyperparameters
from trainer_service.worker import vision_attention
from trainer_service.worker.backends import Placement, TransformersBackend
from trainer_service.worker.packing import use_packed_attention
from trainer_service.worker.vision_attention import VISION_VARLEN_ATTENTION, use_varlen_vision_attention

CPU = Placement(torch.device("cpu"), torch.float32)
# Three images of different sizes, in patches (height and width multiples of the 2x2 patch merge).
IMAGE_GRIDS = torch.tensor([[1, 8, 12], [1, 16, 6], [1, 4, 4]])


def _vision_tower(model):
    from transformers import PreTrainedModel

    vision_config = model.config.vision_config
    return next(module for module in model.modules()
                if isinstance(module, PreTrainedModel) and module.config is vision_config)


def _tower_output_and_gradients(tower, pixels: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    tower.zero_grad()
    output = tower(pixels, grid_thw=IMAGE_GRIDS)
    merged = output.pooler_output if hasattr(output, "pooler_output") else output[0]
    (merged.float() ** 2).mean().backward()
    return merged.detach(), [p.grad.clone() for p in tower.parameters() if p.grad is not None]


@contextlib.contextmanager
def _counted_calls():
    """Every call of the registered vision attention, with the boundaries and longest length it was given."""
    from transformers import AttentionInterface

    calls: list[tuple[list[int], int]] = []

    def counting(*args, cu_seq_lens_q=None, max_length_q=None, **kwargs):
        calls.append((cu_seq_lens_q.tolist(), max_length_q))
        return vision_attention.vision_varlen_attention(*args, cu_seq_lens_q=cu_seq_lens_q,
                                                         max_length_q=max_length_q, **kwargs)

    AttentionInterface.register(VISION_VARLEN_ATTENTION, counting)
    try:
        yield calls
    finally:
        AttentionInterface.register(VISION_VARLEN_ATTENTION, vision_attention.vision_varlen_attention)


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen2_5_vl", "qwen3_vl", "qwen3_5"])
def test_the_vision_tower_attends_all_images_in_one_call_with_sdpas_result(family: str, tiny_model_of) -> None:
    from transformers import AutoModelForImageTextToText

    model = AutoModelForImageTextToText.from_pretrained(tiny_model_of(family), dtype=torch.float32)
    tower = _vision_tower(model)
    config = model.config.vision_config
    patch = config.in_channels * config.temporal_patch_size * config.patch_size ** 2
    pixels = torch.randn(int(IMAGE_GRIDS.prod(dim=1).sum()), patch, generator=torch.Generator().manual_seed(0))
    assert config._attn_implementation == "sdpa"
    expected, expected_gradients = _tower_output_and_gradients(tower, pixels)

    assert use_varlen_vision_attention(model)
    assert use_varlen_vision_attention(model), "idempotent"
    assert model.config.text_config._attn_implementation == "sdpa", "the language model keeps its attention"
    with _counted_calls() as counted_calls:
        output, gradients = _tower_output_and_gradients(tower, pixels)

    torch.testing.assert_close(output, expected, rtol=1e-5, atol=1e-6)
    assert len(gradients) == len(expected_gradients) > 0
    for got, want in zip(gradients, expected_gradients, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)
    assert len(counted_calls) == config.depth, "one call per block, every image in it"
    full_image_bounds = [0, *IMAGE_GRIDS.prod(dim=1).cumsum(0).tolist()]
    for bounds, longest in counted_calls:  # Qwen2.5-VL's windowed blocks get their windows' bounds instead
        lengths = [end - start for start, end in zip(bounds, bounds[1:])]
        assert longest == max(lengths) and bounds[-1] == full_image_bounds[-1]
    assert any(bounds == full_image_bounds for bounds, _ in counted_calls)


def test_training_keeps_it_with_packing_and_no_saved_config_names_it(tiny_model_dir: Path, tmp_path: Path) -> None:
    from transformers import AutoModelForImageTextToText

    hyper = Hyperparameters()
    backend = TransformersBackend(CPU)
    model = backend.add_lora(backend.load(tiny_model_dir, quantize_4bit=False, hyper=hyper), hyper)
    use_packed_attention(model.get_base_model())  # train()'s order: packing, then the backend's switch
    backend.for_training(model)
    assert model.config.vision_config._attn_implementation == VISION_VARLEN_ATTENTION
    assert model.config.text_config._attn_implementation == "vlmforge_packed"
    assert backend.vision_attention(model).startswith("all of a batch's images in one varlen flash call")
    backend.for_inference(model)
    assert model.config.vision_config._attn_implementation == VISION_VARLEN_ATTENTION

    merged = model.merge_and_unload()
    merged.save_pretrained(tmp_path / "merged")
    assert "vlmforge" not in (tmp_path / "merged" / "config.json").read_text()
    reloaded = AutoModelForImageTextToText.from_pretrained(tmp_path / "merged")
    assert reloaded.config.vision_config._attn_implementation == "sdpa"
    assert json.loads((tmp_path / "merged" / "config.json").read_text())["model_type"] == "qwen2_vl"


@pytest.mark.parametrize("family", ["llava", "idefics3"])
def test_a_vision_tower_without_image_boundaries_keeps_its_attention(family: str, tiny_model_of) -> None:
    from transformers import AutoModelForImageTextToText

    model = AutoModelForImageTextToText.from_pretrained(tiny_model_of(family))
    before = model.config.vision_config._attn_implementation
    assert not use_varlen_vision_attention(model)
    assert model.config.vision_config._attn_implementation == before
    assert TransformersBackend(CPU).vision_attention(model) == f"the model's own ({before})"
