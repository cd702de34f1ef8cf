"""Padding-free packing on the tiny Qwen2-VL model: a packed row trains exactly as the padded batch of the same
samples does (loss and every LoRA gradient), the token counts the planner packs by are the collator's, and a
packed run killed mid-epoch resumes into exactly the batches and losses of an unbroken one."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from trainer_service.job_spec import Hyperparameters
from trainer_service.worker.backends import Placement, TransformersBackend
from trainer_service.worker.packing import pack_batch, rope_index_of, use_packed_attention
from trainer_service.worker.sampling import packed_plan, sample_token_counts
from trainer_service.worker.train import Cancelled, _answer_tokens, answer_only_loss, seed_everything, train
from vlmforge.chat_format import IGNORE_INDEX, ChatCollator
from vlmforge.data import load_dataset
from vlmforge.data.types import Message, TextPart

CPU = Placement(torch.device("cpu"), torch.float32)


def _with_answer(sample, words: int):
    """The sample with an answer of `words` words, so that a batch's lengths differ (the tiny set's do not)."""
    answer = " ".join(["blue", "square", "left", "three"] * 20)[: words * 6].strip() or "no"
    return dataclasses.replace(sample, messages=(*sample.messages[:-1], Message("assistant", (TextPart(answer),))))


@pytest.fixture(scope="module")
def varied_samples(small_dataset_dir: Path):
    samples = load_dataset(small_dataset_dir / "train.jsonl")[:5]
    return [_with_answer(sample, words) for sample, words in zip(samples, (1, 12, 3, 25, 7), strict=True)]


def _lora_model(model_dir: Path, *, nonzero_b: bool):
    hyper = Hyperparameters()
    backend = TransformersBackend(CPU)
    seed_everything(0)
    model = backend.add_lora(backend.load(model_dir, quantize_4bit=False, hyper=hyper), hyper)
    backend.for_training(model)
    if nonzero_b:  # B starts at 0, which would leave every A gradient 0 and hide a wrong attention
        generator = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for name, parameter in model.named_parameters():
                if "lora_B" in name:
                    parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.02)
    return model


def test_a_packed_row_gives_the_padded_batchs_loss_and_lora_gradients(tiny_model_dir: Path, varied_samples) -> None:
    from transformers import AutoProcessor

    model = _lora_model(tiny_model_dir, nonzero_b=True)
    padded = ChatCollator(AutoProcessor.from_pretrained(tiny_model_dir))(varied_samples)
    lengths = padded["attention_mask"].sum(dim=1)
    assert lengths.max() - lengths.min() >= 10, "the samples differ in length: the padded batch has padding"
    packed = pack_batch(padded, rope_index_of(model))
    assert packed["input_ids"].shape == (1, int(lengths.sum())) and "attention_mask" not in packed
    assert packed["position_ids"].shape == (4, 1, int(lengths.sum()))
    starts = (packed["position_ids"][0, 0] == 0).nonzero().flatten().tolist()
    assert starts == torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)[:-1]]).tolist()
    tokens = _answer_tokens(padded)
    assert _answer_tokens(packed) == tokens

    def loss_and_gradients(batch) -> tuple[float, list[torch.Tensor]]:
        model.zero_grad()
        loss = answer_only_loss(model, batch, answer_tokens=tokens)
        loss.backward()
        return loss.item(), [p.grad.clone() for p in model.parameters() if p.requires_grad]

    expected_loss, expected_gradients = loss_and_gradients(padded)
    with torch.no_grad():
        assert expected_loss == pytest.approx(answer_only_loss(model, padded).item(), rel=1e-6), "sum / count = mean"
    use_packed_attention(model.get_base_model())
    loss, gradients = loss_and_gradients(packed)
    assert loss == pytest.approx(expected_loss, rel=1e-5)
    assert sum(float(g.abs().sum()) for g in gradients) > 0
    for got, expected in zip(gradients, expected_gradients, strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-6)
    with torch.no_grad():
        assert answer_only_loss(model, padded, answer_tokens=tokens).item() == pytest.approx(expected_loss, rel=1e-6), \
            "padded batches still take SDPA's path"

    # The control: the same row as one long sequence (positions never restart) lets samples see each other.
    one_sequence = {**packed, "position_ids": torch.cat([torch.arange(packed["input_ids"].shape[1])[None],
                                                         packed["position_ids"][1:, 0]])[:, None]}
    leaked_loss, leaked_gradients = loss_and_gradients(one_sequence)
    assert leaked_loss != pytest.approx(expected_loss, rel=1e-5)
    assert not all(torch.allclose(got, expected, rtol=1e-4, atol=1e-6)
                   for got, expected in zip(leaked_gradients, expected_gradients, strict=True))


def test_the_planner_counts_the_tokens_the_collator_makes(tiny_model_dir: Path, varied_samples) -> None:
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(tiny_model_dir)
    padded = ChatCollator(processor)(varied_samples)
    counts = sample_token_counts(varied_samples, processor, max_length=None)
    assert counts.tolist() == padded["attention_mask"].sum(dim=1).tolist()
    assert sample_token_counts(varied_samples, processor, max_length=70).max() == 70
    assert int((padded["labels"] != IGNORE_INDEX).sum()) > 0


def _run(model_dir: Path, data_dir: Path, checkpoints: Path, hyper: Hyperparameters, stop_at: int | None = None):
    """Trains from scratch (or from the newest checkpoint in `checkpoints`); returns the losses and the sample
    indices of every micro-batch the data loader handed out. `stop_at`: cancelled before that step (a kill)."""
    from transformers import AutoProcessor

    from trainer_service.worker import train as train_module

    backend = TransformersBackend(CPU)
    model = backend.load(model_dir, quantize_4bit=False, hyper=hyper)
    seed_everything(hyper.seed)
    peft_model = backend.add_lora(model, hyper)
    steps_done: list[int] = []
    taken: list[list[int]] = []
    original = train_module._StepBatches.__iter__

    def recording(sampler):
        for indices in original(sampler):
            taken.append(indices)
            yield indices

    train_module._StepBatches.__iter__ = recording
    try:
        losses = train(peft_model, AutoProcessor.from_pretrained(model_dir), load_dataset(data_dir / "train.jsonl"),
                       hyper, checkpoints, backend, on_progress=lambda p: steps_done.append(p.step),
                       on_checkpoint=lambda *_: None,
                       should_stop=lambda: stop_at is not None and len(steps_done) + 1 >= stop_at)
    except Cancelled:
        losses = None
    finally:
        train_module._StepBatches.__iter__ = original
    return losses, taken, steps_done


def test_a_packed_run_killed_mid_epoch_resumes_into_the_unbroken_runs_batches(tiny_model_dir: Path,
                                                                              small_dataset_dir: Path,
                                                                              tmp_path: Path) -> None:
    # Rows of about 3 samples (the tiny set's are ~65 tokens); 3 steps of 2 micro-batches: inside the first epoch.
    hyper = Hyperparameters(max_steps=3, packing=True, max_tokens_per_batch=200, max_sequence_length=200,
                            gradient_accumulation_steps=2, learning_rate=1e-3, checkpoint_every_steps=2, seed=3)
    unbroken, unbroken_batches, _ = _run(tiny_model_dir, small_dataset_dir, tmp_path / "unbroken", hyper)
    assert len(unbroken) == 3 and unbroken[-1] != unbroken[0]
    killed, _, killed_steps = _run(tiny_model_dir, small_dataset_dir, tmp_path / "killed", hyper, stop_at=3)
    assert killed is None and killed_steps == [1, 2]  # cancelled before step 3; the checkpoint is step 2's
    resumed, resumed_batches, resumed_steps = _run(tiny_model_dir, small_dataset_dir, tmp_path / "killed", hyper)
    assert resumed_steps == [3]
    assert resumed_batches == unbroken_batches[4:]  # step 3: micro-batches 4 and 5
    assert resumed == pytest.approx(unbroken, rel=1e-6)
    from transformers import AutoProcessor

    counts = sample_token_counts(load_dataset(small_dataset_dir / "train.jsonl"),
                                 AutoProcessor.from_pretrained(tiny_model_dir), 200)
    plan = packed_plan(counts, hyper)
    assert unbroken_batches == [plan.indices(step, micro) for step in range(3) for micro in range(2)]
    assert all(2 <= len(row) <= 3 and counts[row].sum() <= 200 for row in unbroken_batches)
