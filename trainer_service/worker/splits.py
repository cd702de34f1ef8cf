"""Which records of the training file a job trains on, and which it holds out for validation."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TypeVar

import numpy as np

from ..job_spec import Hyperparameters

T = TypeVar("T")
# Mixed into the job's seed so the held-out set does not follow the epoch permutations of the same seed.
_VALIDATION_STREAM = 0x76616C


def split_training_set(records: Sequence[T], hyper: Hyperparameters, *,
                       validation_file_given: bool) -> tuple[Sequence[T], list[T]]:
    """Returns (training records, held-out validation records).

    `max_samples` keeps the first N records (as LLaMA-Factory's max_samples does), then, when the job names
    no validation file, `validation_split` holds out ceil(share * N) records chosen by the seed (as
    `datasets.train_test_split` rounds), never all of them. Both sets keep the file's order."""
    splitting = bool(hyper.validation_split) and not validation_file_given
    if not splitting and (not hyper.max_samples or hyper.max_samples >= len(records)):
        return records, []  # as loaded: a lazily decoded dataset stays lazy
    kept = [records[i] for i in range(min(len(records), hyper.max_samples or len(records)))]
    if not splitting or len(kept) < 2:
        return kept, []
    held_count = min(math.ceil(hyper.validation_split * len(kept)), len(kept) - 1)
    order = np.random.Generator(np.random.PCG64([hyper.seed, _VALIDATION_STREAM])).permutation(len(kept))
    held = np.zeros(len(kept), dtype=bool)
    held[order[:held_count]] = True
    return ([r for r, out in zip(kept, held) if not out], [r for r, out in zip(kept, held) if out])
