"""The packing planner and length-grouped order (pure functions of the seed and the token counts), the packed
attention against SDPA on random tensors, and the job settings that switch them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from trainer_service.errors import InvalidArgumentError
from trainer_service.job_spec import Hyperparameters, JobSpec, check_model
from trainer_service.worker.distributed import Ranks
from trainer_service.worker.packing import packed_attention
from trainer_service.worker.sampling import PlainBatches, length_grouped_order, packed_plan
from trainer_service.worker.train import epoch_order


def _counts(size: int = 97, seed: int = 5) -> np.ndarray:
    return np.random.default_rng(seed).integers(20, 300, size)  # 15x apart, as real VQA data


def test_rows_fill_the_token_budget_in_the_unpacked_order_and_cover_each_epoch_once() -> None:
    counts = _counts()
    hyper = Hyperparameters(epochs=2, batch_size=4, packing=True, max_tokens_per_batch=600, max_sequence_length=300,
                            gradient_accumulation_steps=3, seed=11)
    plan = packed_plan(counts, hyper)
    rows = list(plan.micro_batches)
    assert len(rows) == plan.steps * 3
    assert all(counts[row].sum() <= 600 and len(row) <= hyper.batch_size for row in rows)
    # A row closes only when the next sample would not fit: nothing is skipped or reordered.
    assert all(counts[row].sum() + counts[following[0]] > 600 or len(row) == hyper.batch_size
               for row, following in zip(rows, rows[1:]))
    assert any(len(row) == hyper.batch_size for row in rows) and any(len(row) < 3 for row in rows)
    taken = np.concatenate(rows)
    first_two_epochs = np.concatenate([epoch_order(11, 0, 97), epoch_order(11, 1, 97)])
    assert np.array_equal(taken[:194], first_two_epochs)
    assert len(taken) - 194 < sum(len(row) for row in rows[-3:]), "only the last step runs into epoch 3"
    assert plan.samples_before(plan.steps) == len(taken)
    assert packed_plan(counts, hyper).micro_batches[5].tolist() == rows[5].tolist(), "the same plan every time"


def test_with_room_for_batch_size_samples_the_rows_are_the_unpacked_batches() -> None:
    from trainer_service.worker.train import batch_indices

    counts = _counts()
    hyper = Hyperparameters(max_steps=30, batch_size=6, gradient_accumulation_steps=2, packing=True,
                            max_tokens_per_batch=6 * 300, max_sequence_length=300, seed=2)
    plan = packed_plan(counts, hyper, world_size=2)
    for step in (0, 7, 29):  # 29: past the first epoch
        for micro, rank in ((0, 0), (0, 1), (1, 1)):
            ranks = Ranks(rank, 2, rank)
            assert plan.indices(step, micro, ranks) == batch_indices(step, micro, hyper, 97, ranks)


def test_ranks_take_their_own_rows_of_each_step_and_max_steps_wins() -> None:
    counts = _counts()
    hyper = Hyperparameters(max_steps=4, packing=True, max_tokens_per_batch=500, max_sequence_length=300,
                            gradient_accumulation_steps=2)
    plan = packed_plan(counts, hyper, world_size=2)
    assert plan.steps == 4 and len(plan.micro_batches) == 16
    for step in range(4):
        taken = [plan.indices(step, micro, Ranks(rank, 2, rank)) for micro in range(2) for rank in range(2)]
        assert sorted(i for row in taken for i in row) == sorted(
            i for row in plan.micro_batches[step * 4:(step + 1) * 4] for i in row.tolist())
    with pytest.raises(ValueError, match="more than max_tokens_per_batch"):
        packed_plan(np.array([10, 900]), Hyperparameters(max_steps=1, packing=True, max_tokens_per_batch=800,
                                                          max_sequence_length=800))


def test_length_grouping_is_a_seeded_permutation_whose_batches_are_alike() -> None:
    counts = _counts(size=400)
    grouped = length_grouped_order(3, 0, counts, group_size=160, batch_size=8)
    assert sorted(grouped.tolist()) == list(range(400))
    assert np.array_equal(grouped, length_grouped_order(3, 0, counts, group_size=160, batch_size=8))
    assert not np.array_equal(grouped, length_grouped_order(3, 1, counts, group_size=160, batch_size=8))

    def padding_share(order: np.ndarray) -> float:
        batches = order.reshape(-1, 8)
        return 1 - counts[batches].sum() / (counts[batches].max(axis=1) * 8).sum()

    assert padding_share(grouped) < padding_share(np.asarray(epoch_order(3, 0, 400))) / 3
    step_lengths = counts[grouped.reshape(-1, 8)].max(axis=1)
    assert np.corrcoef(step_lengths[:-1], step_lengths[1:])[0, 1] < 0.5, "long and short batches alternate"


def test_grouped_plain_batches_resume_on_the_same_batches() -> None:
    counts = _counts(size=50)
    hyper = Hyperparameters(epochs=3, batch_size=4, group_by_length=True)
    first, second = PlainBatches(hyper, 50, 1, counts), PlainBatches(hyper, 50, 1, counts)
    late = [second.indices(step, 0) for step in range(20, first.steps)]  # a fresh process, from step 20
    assert late == [first.indices(step, 0) for step in range(first.steps)][20:]
    assert first.steps == 39 and first.samples_before(39) == 156  # ceil(50 / 4) a epoch


@pytest.mark.parametrize("kv_heads", [4, 2])
def test_packed_attention_equals_causal_sdpa_on_each_sample_alone(kv_heads: int) -> None:
    generator = torch.Generator().manual_seed(0)
    lengths = [5, 17, 1, 9]
    query = torch.randn(1, 4, sum(lengths), 8, generator=generator)
    key, value = (torch.randn(1, kv_heads, sum(lengths), 8, generator=generator) for _ in range(2))
    positions = torch.cat([torch.arange(n) for n in lengths])[None]
    module = torch.nn.Module()
    out, _ = packed_attention(module, query, key, value, None, scaling=0.3, position_ids=positions)
    assert out.shape == (1, sum(lengths), 4, 8)
    start = 0
    for n in lengths:
        alone = torch.nn.functional.scaled_dot_product_attention(
            query[:, :, start:start + n], key[:, :, start:start + n], value[:, :, start:start + n], scale=0.3,
            is_causal=True, enable_gqa=True)
        torch.testing.assert_close(out[:, start:start + n], alone.transpose(1, 2))
        start += n


def test_packing_settings_are_checked_and_refused_for_families_that_cannot_pack(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgumentError, match="max_tokens_per_batch"):
        Hyperparameters(packing=True, max_tokens_per_batch=1024, max_sequence_length=2048).validated()
    with pytest.raises(InvalidArgumentError, match="group_by_length"):
        Hyperparameters(packing=True, group_by_length=True).validated()
    Hyperparameters(packing=True).validated()
    for model_type, refused in (("llava", True), ("qwen2_vl", False), ("qwen2_5_vl", False)):
        model_dir = tmp_path / model_type
        model_dir.mkdir()
        (model_dir / "config.json").write_text(json.dumps({"model_type": model_type}))
        spec = JobSpec(str(model_dir), "train.jsonl", hyperparameters=Hyperparameters(packing=True))
        if refused:
            with pytest.raises(InvalidArgumentError, match="hyperparameters.packing.*set packing to false"):
                check_model(spec, models_dir=None, qlora_unavailable=None)
        else:
            assert check_model(spec, models_dir=None, qlora_unavailable=None) == model_dir


def test_the_settings_travel_over_grpc() -> None:
    from trainer_service.grpc_api.convert import hyperparameters_from_pb
    from vlmforge.client._convert import hyperparameters_to_pb
    from vlmforge.client.types import Hyperparameters as ClientHyperparameters

    message = hyperparameters_to_pb(ClientHyperparameters(packing=True, max_tokens_per_batch=4096,
                                                          max_sequence_length=4096))
    hyper = hyperparameters_from_pb(message)
    assert (hyper.packing, hyper.max_tokens_per_batch, hyper.group_by_length) == (True, 4096, False)
    assert not hyperparameters_from_pb(hyperparameters_to_pb({"group_by_length": True})).packing


def test_a_packed_rows_known_lengths_are_used_only_while_it_trains() -> None:
    from trainer_service.worker.packing import _segments, known_segments, sample_lengths

    positions = torch.cat([torch.arange(n) for n in (3, 4, 2)])[None].expand(4, 1, -1).contiguous()
    batch = {"position_ids": positions, "input_ids": torch.zeros(1, 9, dtype=torch.long)}
    assert sample_lengths(batch) == [3, 4, 2]
    assert sample_lengths({**batch, "attention_mask": torch.ones(1, 9)}) is None
    with known_segments(batch, [4, 5]):  # what the trainer says wins: no read-back from the device
        assert _segments(positions[0])[1] == [4, 5]
    cu_seqlens, lengths = _segments(positions[0])
    assert lengths == [3, 4, 2] and cu_seqlens.tolist() == [0, 3, 7, 9]


def test_a_jobs_levers_event_says_how_it_batches() -> None:
    from trainer_service.worker.run import training_levers

    assert training_levers(Hyperparameters(packing=True, max_tokens_per_batch=4096)) == (
        "training levers: packing on (rows of at most 4096 tokens and 8 samples), gradient checkpointing off")
    assert training_levers(Hyperparameters(group_by_length=True, gradient_checkpointing=True)) == (
        "training levers: packing off (batches of 8, grouped by length), gradient checkpointing on")
