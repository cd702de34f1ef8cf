"""The worker's training loop on the tiny model: backend choice on this CPU machine, the gradient checkpointing
switch, and `max_sequence_length` (CUDA, QLoRA and Unsloth are measured on a GPU: see BENCHMARKS.md)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from trainer_service.errors import FailedPreconditionError
from trainer_service.job_spec import Hyperparameters
from trainer_service.worker.backends import Placement, TransformersBackend, select_backend
from trainer_service.worker.train import seed_everything, train
from vlmforge.chat_format import ChatCollator, SequenceTooLongError
from vlmforge.data import load_dataset

CPU = Placement(torch.device("cpu"), torch.float32)


def test_this_machine_trains_with_transformers_in_fp32() -> None:
    assert Placement.detect() == CPU
    assert isinstance(select_backend("auto", CPU), TransformersBackend)
    assert isinstance(select_backend("transformers", CPU), TransformersBackend)
    with pytest.raises(FailedPreconditionError, match="CUDA"):
        select_backend("unsloth", CPU)


def _losses(model_dir: Path, data_dir: Path, tmp_path: Path, hyper: Hyperparameters) -> list[float]:
    from transformers import AutoProcessor

    backend = TransformersBackend(CPU)
    processor = AutoProcessor.from_pretrained(model_dir)
    model = backend.load(model_dir, quantize_4bit=False, hyper=hyper)
    seed_everything(hyper.seed)
    peft_model = backend.add_lora(model, hyper)
    return train(peft_model, processor, load_dataset(data_dir / "train.jsonl"), hyper, tmp_path, backend,
                 on_progress=lambda _: None, on_checkpoint=lambda *_: None, should_stop=lambda: False)


def test_gradient_checkpointing_changes_memory_not_the_losses(tiny_model_dir: Path, small_dataset_dir: Path,
                                                               tmp_path: Path) -> None:
    hyper = Hyperparameters(max_steps=3, batch_size=2, learning_rate=1e-3, checkpoint_every_steps=100)
    plain = _losses(tiny_model_dir, small_dataset_dir, tmp_path / "plain", hyper)
    checkpointed = _losses(tiny_model_dir, small_dataset_dir, tmp_path / "gc",
                           dataclasses.replace(hyper, gradient_checkpointing=True))
    assert len(plain) == 3
    assert plain[-1] != plain[0], "training moved the loss"
    assert checkpointed == pytest.approx(plain, rel=1e-4)


@pytest.mark.parametrize("family", ["qwen2_vl", "llava", "idefics3", "mllama"])
def test_max_sequence_length_cuts_answers_but_never_images(family: str, tiny_model_of,
                                                            small_dataset_dir: Path) -> None:
    """Qwen's processor marks image tokens (mm_token_type_ids); LLaVA's and Idefics3's do not: their
    placeholders are found by token id. Cutting one would make the image features and placeholders disagree.
    Mllama's one image token opens a cross-attention mask that is cut with the tokens."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from vlmforge.families import family_for_model_dir

    model_dir = tiny_model_of(family)
    processor, model_family = AutoProcessor.from_pretrained(model_dir), family_for_model_dir(model_dir)
    samples = load_dataset(small_dataset_dir / "train.jsonl")[:4]
    full = ChatCollator(processor, family=model_family)(samples)
    image_end = int((full["input_ids"] == processor.image_token_id).nonzero()[:, 1].max()) + 1
    image_end += int(hasattr(processor, "fake_image_token_id"))  # Idefics3 closes each image with a marker
    assert full["input_ids"].shape[1] > image_end + 2

    cut = ChatCollator(processor, family=model_family, max_length=image_end + 2)(samples)
    assert cut["input_ids"].shape[1] == image_end + 2
    assert cut["labels"].shape == cut["attention_mask"].shape == cut["input_ids"].shape
    assert torch.equal(cut["pixel_values"], full["pixel_values"])
    if "cross_attention_mask" in full:
        assert torch.equal(cut["cross_attention_mask"], full["cross_attention_mask"][:, :image_end + 2])
    with torch.no_grad():  # the cut batch is one the model takes
        assert AutoModelForImageTextToText.from_pretrained(model_dir)(**cut).logits.shape[1] == image_end + 2
    with pytest.raises(SequenceTooLongError, match="image tokens"):
        ChatCollator(processor, family=model_family, max_length=image_end - 1)(samples)


def test_eval_every_steps_scores_the_validation_file_as_events(tiny_model_dir: Path, small_dataset_dir: Path,
                                                               tmp_path: Path) -> None:
    from trainer_service.domain import JobStatus
    from trainer_service.job_spec import JobSpec
    from trainer_service.jobs import JobService
    from trainer_service.store import JobStore
    from trainer_service.worker.run import run_job

    store = JobStore(tmp_path / "jobs.sqlite3")
    job = JobService(store).create(JobSpec(
        str(tiny_model_dir), str(small_dataset_dir / "train.jsonl"),
        validation_file=str(small_dataset_dir / "validation.jsonl"),
        hyperparameters=Hyperparameters(max_steps=2, batch_size=2, eval_every_steps=1)))
    store.transition(job.id, JobStatus.RUNNING, "running")
    run_job(store, job.id, tmp_path, backend=TransformersBackend(CPU))

    evaluations = [e.payload for e in store.events_after(job.id) if e.kind == "evaluation"]
    assert [(e["phase"], e["step"]) for e in evaluations] == [("validation", 1), ("validation", 2)]
    assert all(0 <= e["scores"]["exact_match"] <= 1 and e["scores"]["examples"] == 8 for e in evaluations)
    assert store.get_job(job.id).status is JobStatus.SUCCEEDED


def test_ranks_split_each_step_into_slices_of_the_same_samples_one_process_would_take() -> None:
    from trainer_service.launcher import worker_command
    from trainer_service.worker.distributed import Ranks
    from trainer_service.worker.train import batch_indices, total_steps

    per_rank = Hyperparameters(batch_size=4, gradient_accumulation_steps=2, seed=7)
    one_process = Hyperparameters(batch_size=8, gradient_accumulation_steps=2, seed=7)
    for step in (0, 5, 31):  # 31 crosses into a second epoch of 100 samples
        single = [i for micro in (0, 1) for i in batch_indices(step, micro, one_process, 100)]
        ranks = [[i for micro in (0, 1) for i in batch_indices(step, micro, per_rank, 100, Ranks(rank, 2, rank))]
                 for rank in (0, 1)]
        assert len(ranks[0]) == len(ranks[1]) == 8 and sorted(ranks[0] + ranks[1]) == sorted(single)
    assert total_steps(Hyperparameters(batch_size=4, epochs=1), 100, world_size=2) == 13
    single_process = worker_command("ftjob-1", Path("s"), Path("a"), 1, database=Path("j.db"))
    assert single_process[1:3] == ["-m", "trainer_service.worker"]
    assert "--nproc-per-node=2" in worker_command("ftjob-1", Path("s"), Path("a"), 2, database=Path("j.db"))


def test_the_answer_only_loss_equals_the_models_own_loss_and_gradients(tiny_model_dir: Path,
                                                                       small_dataset_dir: Path) -> None:
    """The LM head runs on answer positions only; the loss and every LoRA gradient must not change."""
    from transformers import AutoProcessor

    from trainer_service.worker.train import answer_only_loss

    hyper = Hyperparameters()
    backend = TransformersBackend(CPU)
    seed_everything(0)
    model = backend.add_lora(backend.load(tiny_model_dir, quantize_4bit=False, hyper=hyper), hyper)
    backend.for_training(model)
    samples = load_dataset(small_dataset_dir / "train.jsonl")[:4]
    batch = ChatCollator(AutoProcessor.from_pretrained(tiny_model_dir))(samples)
    assert (batch["labels"] != -100).sum() < batch["labels"].numel() / 4, "answers are a small part of the batch"

    def loss_and_gradients(compute) -> tuple[float, list[torch.Tensor]]:
        model.zero_grad()
        loss = compute()
        loss.backward()
        return loss.item(), [p.grad.clone() for p in model.parameters() if p.requires_grad]

    expected_loss, expected_gradients = loss_and_gradients(lambda: model(**batch).loss)
    loss, gradients = loss_and_gradients(lambda: answer_only_loss(model, batch))
    assert loss == pytest.approx(expected_loss, rel=1e-5)
    for got, expected in zip(gradients, expected_gradients, strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-6)
