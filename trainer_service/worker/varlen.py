"""PyTorch's varlen flash attention (`torch.nn.attention.varlen`, CUDA only), adapted to the signature this torch
has: 2.11 takes `is_causal`; later ones `window_size`, `scale` and `enable_gqa`. Used for packed language rows
(causal, packing.py) and for the vision tower's images (not causal, vision_attention.py)."""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Callable

import torch


def varlen_kernel_for(query: torch.Tensor, *, causal: bool) -> Callable | None:
    """The kernel for tensors like `query`; None where there is none (CPU, fp32, a torch without it)."""
    if not query.is_cuda or query.dtype not in (torch.bfloat16, torch.float16):
        return None
    return _varlen_kernel(causal)


@functools.cache
def _varlen_kernel(causal: bool) -> Callable | None:
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return None
    parameters = inspect.signature(varlen_attn).parameters
    if "window_size" in parameters:
        masking = {"window_size": (-1, 0) if causal else (-1, -1)}
    else:
        masking = {"is_causal": causal}

    def attend(query, key, value, cu_seqlens: torch.Tensor, longest: int, scaling: float | None) -> torch.Tensor:
        """transformers' attention shapes, (1, heads, tokens, head_dim) in; (tokens, heads, head_dim) out."""
        query, key, value = (t[0].transpose(0, 1) for t in (query, key, value))  # (tokens, heads, head_dim)
        options = dict(masking)
        if key.shape[1] != query.shape[1]:
            if "enable_gqa" in parameters:
                options["enable_gqa"] = True
            else:
                repeat = query.shape[1] // key.shape[1]
                key, value = key.repeat_interleave(repeat, dim=1), value.repeat_interleave(repeat, dim=1)
        if "scale" in parameters:
            options["scale"] = scaling
        elif scaling is not None and not math.isclose(scaling, query.shape[-1] ** -0.5):
            raise ValueError(f"this torch's varlen_attn has no scale argument; the model scales by {scaling}")
        return varlen_attn(query, key, value, cu_seqlens, cu_seqlens, longest, longest, **options)

    return attend
