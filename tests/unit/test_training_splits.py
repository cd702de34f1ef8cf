"""The training-set split (max_samples, validation_split) and the warmup_ratio schedule: pure functions."""

from __future__ import annotations

import math

from trainer_service.job_spec import Hyperparameters
from trainer_service.worker.splits import split_training_set
from trainer_service.worker.train import schedule


def test_validation_split_holds_out_a_seeded_ceil_share_and_keeps_order() -> None:
    records = list(range(101))
    hyper = Hyperparameters(validation_split=0.1, seed=3)
    train, held = split_training_set(records, hyper, validation_file_given=False)
    assert len(held) == 11 and len(train) == 90  # ceil(10.1)
    assert sorted(train + held) == records and train == sorted(train) and held == sorted(held)
    assert split_training_set(records, hyper, validation_file_given=False) == (train, held)
    other_seed = split_training_set(records, Hyperparameters(validation_split=0.1, seed=4),
                                    validation_file_given=False)
    assert other_seed[1] != held


def test_max_samples_keeps_the_first_records_before_the_split() -> None:
    train, held = split_training_set(list(range(50)), Hyperparameters(max_samples=10, validation_split=0.5),
                                     validation_file_given=False)
    assert sorted(train + held) == list(range(10)) and len(held) == 5


def test_a_validation_file_wins_over_the_split_and_nothing_set_changes_nothing() -> None:
    records = list(range(10))
    assert split_training_set(records, Hyperparameters(validation_split=0.5), validation_file_given=True) == \
        (records, [])
    unchanged, held = split_training_set(records, Hyperparameters(), validation_file_given=False)
    assert unchanged is records and held == []
    one, none_held = split_training_set([7], Hyperparameters(validation_split=0.5), validation_file_given=False)
    assert one == [7] and none_held == []  # never holds out every record


def test_warmup_ratio_warms_up_for_ceil_of_the_total_steps() -> None:
    factor = schedule(Hyperparameters(warmup_ratio=0.1, scheduler="constant"), 25)  # ceil(2.5) = 3 steps
    assert [factor(step) for step in range(4)] == [1 / 3, 2 / 3, 1.0, 1.0]
    cosine = schedule(Hyperparameters(warmup_ratio=0.2), 10)
    assert cosine(1) == 1.0 and math.isclose(cosine(2), 1.0) and cosine(9) < 0.05
