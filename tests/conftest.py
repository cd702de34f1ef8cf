"""Session-wide fixtures: a small generated dataset and a quickly built tiny model (a few pre-training steps:
these tests check that the artifacts load and run everywhere, not how well the model answers)."""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Callable
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
def tiny_model_of(small_dataset_dir: Path, tiny_model_dir: Path) -> Callable[[str], Path]:
    """The quick recipe in any family's layout (vlmforge.tiny_model.build.FAMILIES), built once a session."""
    from vlmforge.tiny_model.build import build_tiny_model

    @functools.cache
    def build(family: str) -> Path:
        if family == QUICK_MODEL.family:
            return tiny_model_dir
        return build_tiny_model(small_dataset_dir.parent / f"tiny-{family}", small_dataset_dir,
                                dataclasses.replace(QUICK_MODEL, family=family))

    return build
