"""The embedded tiny model is a real Qwen2-VL directory: transformers loads it unchanged and it answers
questions about images (vLLM serves it in tests/integration/test_trainer_artifacts_in_vllm.py and through the
inference service in tests/e2e/); its build is deterministic and cached. Every other family's tiny model labels, trains
and answers in transformers too."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from vlmforge.chat_format import PROCESSING_LOGGER, ChatCollator, prompt_text
from vlmforge.data import load_dataset
from vlmforge.families import family_for_model_dir
from vlmforge.tiny_model.build import (FAMILIES, RECIPE_FILE, architecture_of, build_tiny_model, is_built,
                                       model_family_of)

from ..conftest import QUICK_MODEL


def test_config_has_the_shapes_vllm_needs(tiny_model_dir: Path) -> None:
    config = json.loads((tiny_model_dir / "config.json").read_text())
    assert config["architectures"] == ["Qwen2VLForConditionalGeneration"]
    text = config["text_config"]
    assert text["hidden_size"] // text["num_attention_heads"] == 64, "vLLM's CPU attention refuses head_dim < 64"
    assert sum(text["rope_parameters"]["mrope_section"]) == 32
    assert (tiny_model_dir / "model.safetensors").is_file()
    assert not list(tiny_model_dir.glob("*.bin")), "weights are safetensors only"


def test_transformers_forward_and_generate_with_an_image(tiny_model_dir: Path, small_dataset_dir: Path) -> None:
    from transformers import AutoModelForImageTextToText, AutoProcessor

    processor = AutoProcessor.from_pretrained(tiny_model_dir)
    model = AutoModelForImageTextToText.from_pretrained(tiny_model_dir).eval()
    samples = load_dataset(small_dataset_dir / "test.jsonl")[:2]

    batch = ChatCollator(processor)(samples)
    assert batch["mm_token_type_ids"].sum() == 2 * 16, "each 112x112 image is 16 tokens"
    with torch.no_grad():
        loss = model(**batch).loss
    assert torch.isfinite(loss)

    prompt = processor(text=[prompt_text(processor, samples[0])], images=[samples[0].images[0].open()],
                       return_tensors="pt")
    with torch.no_grad():
        generated = model.generate(**prompt, max_new_tokens=8, do_sample=False)
    new_tokens = generated[0, prompt["input_ids"].shape[1]:]
    assert 0 < len(new_tokens) <= 8
    assert isinstance(processor.decode(new_tokens, skip_special_tokens=True), str)


def test_labels_cover_only_the_assistant_answer(tiny_model_dir: Path, small_dataset_dir: Path) -> None:
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(tiny_model_dir)
    sample = load_dataset(small_dataset_dir / "train.jsonl")[0]
    batch = ChatCollator(processor)([sample])
    labelled = [t for t in batch["labels"][0].tolist() if t != -100]
    assert processor.decode(labelled) == sample.reference_answer + "<|im_end|>"


@pytest.mark.parametrize("family", FAMILIES)
def test_each_family_labels_its_answers_trains_and_answers_in_transformers(family: str, tiny_model_of,
                                                                          small_dataset_dir: Path) -> None:
    """Every family's tiny model as transformers loads it: labels cover each answer and the family's turn end
    only, the loss is finite, and the evaluation path (batched, left-padded) generates answers."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from trainer_service.evaluation import answer_questions

    model_dir = tiny_model_of(family)
    processor, model_family = AutoProcessor.from_pretrained(model_dir), family_for_model_dir(model_dir)
    model = AutoModelForImageTextToText.from_pretrained(model_dir).eval()
    assert type(model).__name__ == architecture_of(family) and model_family is model_family_of(family)
    samples = load_dataset(small_dataset_dir / "train.jsonl")[:3]
    with _messages_of(PROCESSING_LOGGER) as warnings:
        batch = ChatCollator(processor, family=model_family)(samples)
        answers = answer_questions(model, processor, samples, max_new_tokens=4)
    assert warnings == [], warnings  # SmolVLM's processor warned once per rendered chat about its own arguments
    for row, sample in enumerate(samples):
        labelled = [t for t in batch["labels"][row].tolist() if t != -100]
        # LLaVA's and Idefics3's headers are followed by a space that the answer's first token carries
        decoded = processor.decode(labelled).lstrip()
        if model_family.name == "qwen3_5":  # its template opens the answer with an empty think block, labelled too
            decoded = decoded.removeprefix("<think>\n\n</think>\n\n")
        assert decoded == sample.reference_answer + model_family.turn_end
    with torch.no_grad():
        assert torch.isfinite(model(**batch).loss)
    assert [a.question for a in answers] == [s.question for s in samples]
    assert all(isinstance(a.prediction, str) for a in answers)


@contextlib.contextmanager
def _messages_of(logger_name: str) -> Iterator[list[str]]:
    """The warnings `logger_name` lets through meanwhile (transformers' loggers do not reach pytest's caplog)."""
    messages: list[str] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda record: messages.append(record.getMessage())
    logging.getLogger(logger_name).addHandler(handler)
    try:
        yield messages
    finally:
        logging.getLogger(logger_name).removeHandler(handler)


def test_build_is_deterministic_and_cached(small_dataset_dir: Path, tiny_model_dir: Path, tmp_path: Path) -> None:
    again = build_tiny_model(tmp_path / "again", small_dataset_dir, QUICK_MODEL)

    def digest(root: Path) -> dict[str, str]:
        return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.iterdir()) if p.is_file()}

    assert digest(again) == digest(tiny_model_dir)
    assert is_built(again, QUICK_MODEL)
    assert not is_built(again, dataclasses.replace(QUICK_MODEL, seed=1))
    recipe = json.loads((again / RECIPE_FILE).read_text())
    assert recipe["pretraining"]["steps"] == QUICK_MODEL.pretrain_steps


