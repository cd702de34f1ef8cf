"""Which samples each micro-batch takes when their lengths matter: packed micro-batches filled to a token budget,
and length-grouped batches for when packing is off. Both are pure functions of the seed, the samples' token
counts and the job's settings, computed before the first step: a resumed run recomputes them and takes exactly
the batches an unbroken run would have (as `train.batch_indices` does for plain batches)."""

from __future__ import annotations

import io
import itertools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from vlmforge.chat_format import to_hf_messages
from vlmforge.data.types import Conversation, ImagePart

from ..job_spec import Hyperparameters
from .distributed import Ranks

# Length grouping sorts windows of this many steps' samples by length: long enough that a batch's samples are
# alike, short enough that the epoch stays shuffled (transformers' LengthGroupedSampler uses 50 batches).
LENGTH_GROUP_STEPS = 50
_GROUPING_STREAM = 0x6C656E  # mixed into the seed so the batch order within a window is its own stream


def sample_token_counts(samples: Sequence[Conversation], processor, max_length: int | None) -> np.ndarray:
    """Each sample's language-model tokens (prompt, image placeholders and answer), capped at `max_length` as
    the collator cuts them. Qwen2-VL-type processors are counted from the image headers and the tokenizer
    alone (what the processor would resize each image to); others run the processor on each sample."""
    count = _qwen_token_count if _is_qwen_image_processor(processor) else _processed_token_count
    counts = np.fromiter((count(processor, sample) for sample in samples), dtype=np.int64, count=len(samples))
    return np.minimum(counts, max_length) if max_length else counts


def _is_qwen_image_processor(processor) -> bool:
    return type(getattr(processor, "image_processor", None)).__name__ in ("Qwen2VLImageProcessor",
                                                                         "Qwen2VLImageProcessorFast")


def image_patches(processor, sample: Conversation) -> list[int]:
    """Vision patches of each image of a sample, as Qwen2-VL's image processor resizes it."""
    from PIL import Image
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize

    image_processor = processor.image_processor
    factor = image_processor.patch_size * image_processor.merge_size
    size = image_processor.size
    pixels = ((size["shortest_edge"], size["longest_edge"]) if isinstance(size, dict)
              else (size.shortest_edge, size.longest_edge))
    patches = []
    for message in sample.messages:
        for part in message.parts:
            if isinstance(part, ImagePart):
                ref = part.image
                with Image.open(ref.location if ref.location is not None else io.BytesIO(ref.data)) as image:
                    width, height = image.size  # the header only: nothing is decoded
                resized = smart_resize(height, width, factor=factor, min_pixels=pixels[0], max_pixels=pixels[1])
                patches.append(resized[0] * resized[1] // image_processor.patch_size**2)
    return patches


def _qwen_token_count(processor, sample: Conversation) -> int:
    text = processor.apply_chat_template(to_hf_messages(sample.messages), tokenize=False)
    tokens = len(processor.tokenizer.encode(text, add_special_tokens=False))
    merge = processor.image_processor.merge_size
    return tokens + sum(p // merge**2 - 1 for p in image_patches(processor, sample))  # each pad token expands


def _processed_token_count(processor, sample: Conversation) -> int:
    from vlmforge.chat_format import images_by_conversation

    text = processor.apply_chat_template(to_hf_messages(sample.messages), tokenize=False)
    return int(processor(text=[text], images=images_by_conversation([sample]), return_tensors="pt")
               ["input_ids"].shape[1])


@dataclass(frozen=True)
class PackedPlan:
    """Every micro-batch of the run in training order (step, then micro-batch, then rank, as `batch_indices`
    lays them out): the sample indices of one packed row of at most `max_tokens_per_batch` tokens and
    `batch_size` samples."""

    micro_batches: tuple[np.ndarray, ...]
    steps: int
    micro_per_step: int  # gradient_accumulation_steps x world size
    samples_cumulative: np.ndarray  # [i]: samples in the micro-batches before the i-th

    def indices(self, step: int, micro: int, ranks: Ranks = Ranks()) -> list[int]:
        return self.micro_batches[(step * self.micro_per_step) + micro * ranks.world_size + ranks.rank].tolist()

    def samples_before(self, step: int) -> int:
        """Samples the steps before `step` took, over all ranks."""
        return int(self.samples_cumulative[step * self.micro_per_step])


def packed_plan(counts: np.ndarray, hyper: Hyperparameters, world_size: int = 1) -> PackedPlan:
    """Greedy in the epoch's seeded order: each row takes the next samples while they fit the token budget and
    `batch_size` (a sample never waits for a later row, so the order is the unpacked run's; with a budget that
    `batch_size` samples always fit, the rows are exactly the unpacked run's batches). `max_steps` steps, else
    as many as cover `epochs` epochs (the last step topped up from the next epoch, as plain batches are)."""
    budget = hyper.max_tokens_per_batch
    if int(counts.max(initial=0)) > budget:
        raise ValueError(f"a sample has {int(counts.max())} tokens, more than max_tokens_per_batch {budget}")
    micro_per_step = hyper.gradient_accumulation_steps * world_size
    wanted_samples = hyper.epochs * len(counts)
    rows: list[np.ndarray] = []
    taken = 0
    for row in _packed_rows(counts, budget, hyper.batch_size, hyper.seed):
        rows.append(row)
        taken += len(row)
        if len(rows) % micro_per_step:
            continue
        if (len(rows) >= hyper.max_steps * micro_per_step) if hyper.max_steps else taken >= wanted_samples:
            break
    cumulative = np.concatenate([[0], np.cumsum([len(row) for row in rows])])
    return PackedPlan(tuple(rows), len(rows) // micro_per_step, micro_per_step, cumulative)


def _packed_rows(counts: np.ndarray, budget: int, most_samples: int, seed: int) -> Iterator[np.ndarray]:
    """Rows without end, epoch after epoch: a row closes when the next sample in order would not fit."""
    from .train import epoch_order

    row: list[int] = []
    row_tokens = 0
    for epoch in itertools.count():
        for index in epoch_order(seed, epoch, len(counts)).tolist():
            if row and (row_tokens + counts[index] > budget or len(row) == most_samples):
                yield np.asarray(row, dtype=np.int64)
                row, row_tokens = [], 0
            row.append(index)
            row_tokens += int(counts[index])


def length_grouped_order(seed: int, epoch: int, counts: np.ndarray, group_size: int, batch_size: int) -> np.ndarray:
    """The epoch's seeded permutation, reordered so that each run of `batch_size` samples has similar lengths:
    windows of `group_size` samples sorted longest first, then the batches of each window in a seeded order
    (so long and short steps alternate rather than run from long to short)."""
    from .train import epoch_order

    order = np.array(epoch_order(seed, epoch, len(counts)))
    batches = []
    for start in range(0, len(order), group_size):
        window = order[start:start + group_size]
        window = window[np.argsort(-counts[window], kind="stable")]
        batches.extend(window[i:i + batch_size] for i in range(0, len(window), batch_size))
    # Batches of a whole window (never the short last one, which stays last) shuffled as units.
    full = [b for b in batches if len(b) == batch_size]
    rest = [b for b in batches if len(b) != batch_size]
    generator = np.random.Generator(np.random.PCG64([seed, epoch, _GROUPING_STREAM]))
    shuffled = [full[i] for i in generator.permutation(len(full))] + rest
    return np.concatenate(shuffled) if shuffled else order


class PlainBatches:
    """`batch_size` samples a micro-batch (`train.batch_indices`), in the seeded epoch order or, with
    `group_by_length`, in `length_grouped_order`."""

    def __init__(self, hyper: Hyperparameters, train_size: int, world_size: int, counts: np.ndarray | None = None):
        from .train import total_steps

        self.hyper, self.train_size, self.counts = hyper, train_size, counts
        self.steps = total_steps(hyper, train_size, world_size)
        self.samples_per_step = hyper.batch_size * hyper.gradient_accumulation_steps * world_size
        self._orders: dict[int, np.ndarray] = {}  # a micro-batch may straddle two epochs: keep the last two

    def indices(self, step: int, micro: int, ranks: Ranks = Ranks()) -> list[int]:
        from .train import batch_indices

        return batch_indices(step, micro, self.hyper, self.train_size, ranks,
                             order=self._grouped_order if self.counts is not None else None)

    def samples_before(self, step: int) -> int:
        return step * self.samples_per_step

    def _grouped_order(self, epoch: int) -> np.ndarray:
        if epoch not in self._orders:
            self._orders = {e: o for e, o in self._orders.items() if e == epoch - 1}
            self._orders[epoch] = length_grouped_order(self.hyper.seed, epoch, self.counts,
                                                       self.samples_per_step * LENGTH_GROUP_STEPS,
                                                       self.hyper.batch_size)
        return self._orders[epoch]


def plan_micro_batches(train_set: Sequence[Conversation], processor, hyper: Hyperparameters,
                       world_size: int = 1) -> PackedPlan | PlainBatches:
    """The run's micro-batches: packed rows, length-grouped batches, or plain batches (no token counts needed)."""
    if not (hyper.packing or hyper.group_by_length):
        return PlainBatches(hyper, len(train_set), world_size)
    counts = sample_token_counts(train_set, processor, hyper.max_sequence_length)
    if hyper.packing:
        return packed_plan(counts, hyper, world_size)
    return PlainBatches(hyper, len(train_set), world_size, counts)
