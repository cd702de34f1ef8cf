"""Session-wide fixtures: a small generated dataset and a quickly built tiny model (a few pre-training steps:
these tests check that the artifacts load and run everywhere, not how well the model answers)."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest

from vlmforge.datagen import DatasetSpec
from vlmforge.tiny_model.spec import TinyModelSpec

# Nothing may be downloaded at run time: make any accidental hub lookup fail fast instead of reaching out.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

SMALL_DATASET = DatasetSpec(train_images=48, validation_images=8, test_images=8, pretrain_images=48)
QUICK_MODEL = dataclasses.replace(TinyModelSpec(), pretrain_steps=4, pretrain_warmup_steps=2, dataset=SMALL_DATASET)


@pytest.fixture(scope="session")
def small_dataset_dir(tmp_path_factory) -> Path:
    from vlmforge.datagen import build_dataset

    return build_dataset(tmp_path_factory.mktemp("embedded") / "data", SMALL_DATASET, workers=2)


@pytest.fixture(scope="session")
def tiny_model_dir(small_dataset_dir: Path) -> Path:
    from vlmforge.tiny_model.build import build_tiny_model

    return build_tiny_model(small_dataset_dir.parent / "tiny-qwen2-vl", small_dataset_dir, QUICK_MODEL)


@pytest.fixture(scope="session")
def tiny_qwen2_5_vl_dir(small_dataset_dir: Path) -> Path:
    """The same recipe in the Qwen2.5-VL family (gated vision MLP, windowed vision attention)."""
    from vlmforge.tiny_model.build import build_tiny_model

    return build_tiny_model(small_dataset_dir.parent / "tiny-qwen2_5-vl", small_dataset_dir,
                            dataclasses.replace(QUICK_MODEL, family="qwen2_5_vl"))


@pytest.fixture(scope="session")
def tiny_llava_dir(small_dataset_dir: Path) -> Path:
    """The same recipe in LLaVA-1.5's layout (CLIP tower, MLP projector, Llama, Vicuna-style turns)."""
    from vlmforge.tiny_model.build import build_tiny_model

    return build_tiny_model(small_dataset_dir.parent / "tiny-llava", small_dataset_dir,
                            dataclasses.replace(QUICK_MODEL, family="llava"))


@pytest.fixture(scope="session")
def tiny_llava_next_dir(small_dataset_dir: Path) -> Path:
    """LLaVA-1.6's layout: LLaVA-1.5's plus any-resolution tiles, on a Mistral with [INST] turns."""
    from vlmforge.tiny_model.build import build_tiny_model

    return build_tiny_model(small_dataset_dir.parent / "tiny-llava-next", small_dataset_dir,
                            dataclasses.replace(QUICK_MODEL, family="llava_next"))


@pytest.fixture(scope="session")
def tiny_idefics3_dir(small_dataset_dir: Path) -> Path:
    """Idefics3's layout (SmolVLM's too): vision transformer, pixel-shuffle connector, Llama, <end_of_utterance>."""
    from vlmforge.tiny_model.build import build_tiny_model

    return build_tiny_model(small_dataset_dir.parent / "tiny-idefics3", small_dataset_dir,
                            dataclasses.replace(QUICK_MODEL, family="idefics3"))
