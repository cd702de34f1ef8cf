"""`auto` trains with transformers + peft even where Unsloth is installed (its losses leave plain's: BENCHMARKS.md,
"Training speed, round 2"), and the training bench's realistic workload counts exactly the real tokens the
collator makes, so its tokens/s and MFU leave padding out."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from trainer_service.worker import backends
from trainer_service.worker.backends import Placement, TransformersBackend, select_backend
from vlmforge.chat_format import IGNORE_INDEX, ChatCollator
from vlmforge.data.types import ImagePart

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
import train_throughput  # noqa: E402


def test_auto_keeps_transformers_on_a_gpu_that_has_unsloth(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(backends, "unsloth_installed", lambda: True)
    gpu = Placement(torch.device("cuda", 0), torch.bfloat16)
    assert isinstance(select_backend("auto", gpu), TransformersBackend)
    assert "unsloth" not in sys.modules  # importing it would patch transformers for the whole process


def test_realistic_workload_counts_the_collators_real_tokens(tiny_model_dir: Path) -> None:
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(tiny_model_dir)
    processor.image_processor.size = {"shortest_edge": train_throughput.QWEN2_VL_PIXELS[0],
                                      "longest_edge": train_throughput.QWEN2_VL_PIXELS[1]}
    samples = train_throughput._realistic_samples(processor, 6)
    for sample in samples:
        image = next(part for part in sample.messages[0].parts if isinstance(part, ImagePart))
        width, height = Image.open(io.BytesIO(image.image.data)).size
        assert 279 <= min(width, height) <= 1345 and 0.49 <= width / height <= 2.01
    batch = ChatCollator(processor)(samples)
    works = [train_throughput.sample_work(processor, sample) for sample in samples]
    assert [w["tokens"] for w in works] == batch["attention_mask"].sum(dim=1).tolist()
    assert [p for w in works for p in w["patches"]] == batch["image_grid_thw"].prod(dim=1).tolist()
    assert [w["answer_tokens"] for w in works] == (batch["labels"] != IGNORE_INDEX).sum(dim=1).tolist()
    assert max(w["tokens"] for w in works) > 2 * min(w["tokens"] for w in works)  # the sizes do vary
