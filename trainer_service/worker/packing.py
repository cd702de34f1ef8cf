"""Padding-free packing: the samples of a micro-batch laid end to end in one row, attention kept inside each.

A collated (padded) batch becomes one row of its real tokens. Position ids restart at 0 for every sample: the
text positions (row 0 of Qwen2-VL's 4-row `position_ids`) mark where each sample starts, and the M-RoPE rows
are the model's own `get_rope_index` of each sample, so every token sees the positions it would see alone.
The images' `pixel_values` / `image_grid_thw` are already one list for the whole batch and stay as they are.

Attention runs through `PACKED_ATTENTION`, registered with transformers: causal attention within each sample,
one varlen flash kernel on a CUDA GPU (`torch.nn.attention.varlen`), a causal SDPA per sample elsewhere; any
other call (padded batches, generation with a cache, the vision tower) goes to SDPA as before.
"""

from __future__ import annotations

import contextlib
import itertools

import torch

from vlmforge.chat_format import IGNORE_INDEX

from .varlen import varlen_kernel_for

PACKED_ATTENTION = "vlmforge_packed"
# Only Qwen's M-RoPE families (job_spec.PACKING_FAMILIES): their language model takes packed 4-row position ids
# and their processor returns every image of a batch as one list. LLaVA and Idefics3 would need their own
# position and pixel layout, and Mllama's cross-attention mask is per sample: jobs asking for packing on those
# are refused when created.
PER_TOKEN_KEYS = ("input_ids", "labels", "mm_token_type_ids")


def rope_index_of(model):
    """The model's own M-RoPE position function (Qwen2-VL's `get_rope_index`), through any wrapper."""
    for module in model.modules():
        if hasattr(module, "get_rope_index"):
            return module.get_rope_index
    raise ValueError(f"{type(model).__name__} has no get_rope_index: it cannot be trained packed")


def pack_batch(batch: dict[str, torch.Tensor], rope_index) -> dict[str, torch.Tensor]:
    """One row of the batch's real tokens, with per-sample position ids and no attention mask (CPU tensors)."""
    if "pixel_values_videos" in batch:  # their M-RoPE needs video_grid_thw and the frame timing, not passed here
        raise ValueError("a packed batch holds a video: packing takes image samples only")
    mask = batch["attention_mask"].bool()
    lengths = mask.sum(dim=1)
    mrope, _ = rope_index(input_ids=batch["input_ids"], mm_token_type_ids=batch["mm_token_type_ids"],
                          image_grid_thw=batch.get("image_grid_thw"), attention_mask=batch["attention_mask"])
    text = torch.cat([torch.arange(int(n)) for n in lengths])
    packed = {name: value for name, value in batch.items() if name not in (*PER_TOKEN_KEYS, "attention_mask")}
    packed.update({name: batch[name][mask][None] for name in PER_TOKEN_KEYS if name in batch})
    # A sample's first token is never a target: with the shift, the previous sample's last token would predict
    # it across the boundary. (It is a prompt token anyway; this makes it certain.)
    starts = torch.cumsum(lengths, 0) - lengths
    packed["labels"][0, starts] = IGNORE_INDEX
    packed["position_ids"] = torch.cat([text[None], mrope[:, mask].to(text.dtype)])[:, None, :]
    return packed


def packed_tokens(batch: dict[str, torch.Tensor]) -> int:
    return int(batch["input_ids"].shape[1]) if "attention_mask" not in batch else int(batch["attention_mask"].sum())


def register_packed_attention() -> None:
    """Makes `PACKED_ATTENTION` a name transformers' `set_attn_implementation` takes (idempotent)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(PACKED_ATTENTION, packed_attention)
    AttentionMaskInterface.register(PACKED_ATTENTION, _packed_mask)


def use_packed_attention(model) -> None:
    register_packed_attention()
    model.set_attn_implementation(PACKED_ATTENTION)


def _packed_mask(*args, attention_mask: torch.Tensor | None = None, **kwargs):
    """No mask for a packed row (the attention reads the samples from the position ids); SDPA's mask otherwise."""
    from transformers.masking_utils import sdpa_mask

    if attention_mask is None:
        return None
    return sdpa_mask(*args, attention_mask=attention_mask, **kwargs)


def packed_attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling: float | None = None,
                     position_ids: torch.Tensor | None = None, **kwargs):
    """Causal attention inside each packed sample. Shapes as transformers' SDPA: (1, heads, tokens, head_dim) in,
    (1, tokens, heads, head_dim) out."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    packed = (attention_mask is None and position_ids is not None and query.shape[0] == 1
              and query.shape[2] == key.shape[2] > 1)
    if not packed:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    cu_seqlens, lengths = _segments(position_ids)
    varlen = varlen_kernel_for(query, causal=True)
    if varlen is not None and not (dropout and module.training):
        return varlen(query, key, value, cu_seqlens, max(lengths), scaling)[None], None
    parts = [torch.nn.functional.scaled_dot_product_attention(
        q, k, v, dropout_p=dropout if module.training else 0.0, scale=scaling, is_causal=True,
        enable_gqa=key.shape[1] != query.shape[1])
        for q, k, v in zip(*(t.split(lengths, dim=2) for t in (query, key, value)))]
    return torch.cat(parts, dim=2).transpose(1, 2).contiguous(), None


_last_segments: tuple[torch.Tensor, torch.Tensor, list[int]] | None = None
_known_segments: tuple[int, int, torch.Tensor, list[int]] | None = None


def sample_lengths(batch: dict[str, torch.Tensor]) -> list[int] | None:
    """The samples' lengths in a packed row (CPU tensors; None for a padded batch)."""
    if "position_ids" not in batch or "attention_mask" in batch:
        return None
    text = batch["position_ids"][0].reshape(-1)
    starts = (torch.nonzero(text == 0).flatten().tolist() + [text.numel()])
    return [end - start for start, end in zip(starts, starts[1:])]


@contextlib.contextmanager
def known_segments(batch: dict[str, torch.Tensor], lengths: list[int] | None):
    """While the packed row `batch` (on its device) trains, the attention takes its samples from `lengths`
    instead of reading them back from the GPU in the forward: a host sync there would stall the CPU behind the
    queued vision tower, and on a GPU the CPU's kernel launches are what a step waits for."""
    global _known_segments
    if lengths is None:
        yield
        return
    position_ids = batch["position_ids"]
    bounds = torch.tensor([0, *itertools.accumulate(lengths)], dtype=torch.int32)
    _known_segments = (position_ids.data_ptr(), position_ids.shape[-1],
                       bounds.to(position_ids.device, non_blocking=True), lengths)
    try:
        yield
    finally:
        _known_segments = None


@torch.compiler.disable  # reads module state that changes every row: never baked into a compiled block
def _segments(position_ids: torch.Tensor) -> tuple[torch.Tensor, list[int]]:
    """Cumulative sample boundaries (int32, on the tokens' device) and lengths of a packed row, from where the
    text positions restart. Every layer of one forward (and its recomputation) gets the same tensor: computed,
    and synchronised with the host, once (never, inside `known_segments`: the text positions are a view of
    the row's `position_ids`, at the same address)."""
    global _last_segments
    known = _known_segments
    if known is not None and position_ids.data_ptr() == known[0] and position_ids.shape[-1] == known[1]:
        return known[2], known[3]
    if _last_segments is not None and _last_segments[0] is position_ids:
        return _last_segments[1], _last_segments[2]
    flat = position_ids.reshape(-1)
    starts = torch.nonzero(flat[1:] != flat[:-1] + 1).flatten() + 1
    bounds = torch.cat([starts.new_zeros(1), starts, starts.new_full((1,), flat.numel())])
    lengths = (bounds[1:] - bounds[:-1]).tolist()
    cu_seqlens = bounds.to(torch.int32)
    _last_segments = (position_ids, cu_seqlens, lengths)
    return cu_seqlens, lengths
