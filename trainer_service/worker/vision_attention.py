"""All of a batch's images in one attention call in Qwen's vision towers (Qwen2-VL, Qwen2.5-VL, Qwen3-VL, Qwen3.5).

Such a tower lays every image of a batch end to end and attends within each image. Under SDPA, transformers
splits them in every block: it reads the image lengths back from the GPU (a host sync in each of the 32 blocks,
and again in each recomputation under gradient checkpointing) and calls SDPA once per image. On Hopper SDPA
runs cuDNN, which plans a graph for each sequence length it has not seen yet: with images of varied sizes that
planning cost ~1.4 ms of CPU per call, and the step waited on the CPU with the GPU ~40% busy (BENCHMARKS.md,
"Training speed, round 4"). For an attention implementation whose name says "flash", transformers passes the
images' boundaries (`cu_seqlens`) and the longest image's length, computed once per forward, to the attention
function instead; registered under such a name, this one runs PyTorch's varlen flash kernel over all images at
once on a CUDA GPU in bf16/fp16, and one SDPA per image elsewhere (what transformers does).
"""

from __future__ import annotations

import inspect

import torch

from .varlen import varlen_kernel_for

# "flash" in the name is what makes transformers' vision attention hand over `cu_seqlens` (it checks the name).
VISION_VARLEN_ATTENTION = "vlmforge_flash_varlen_vision"


def use_varlen_vision_attention(model) -> bool:
    """Gives the model's vision tower this attention if its attention takes image boundaries (`cu_seqlens`);
    returns whether it did. Idempotent; the saved config is not changed (transformers keeps the attention
    implementation out of config.json)."""
    if not varlen_vision_attention_applies(model):
        return False
    from transformers import AttentionInterface

    AttentionInterface.register(VISION_VARLEN_ATTENTION, vision_varlen_attention)
    model.config.vision_config._attn_implementation = VISION_VARLEN_ATTENTION
    return True


def varlen_vision_attention_applies(model) -> bool:
    """Whether the model's vision tower has an attention that takes its images' boundaries (`cu_seqlens`)."""
    vision_config = getattr(model.config, "vision_config", None)
    return vision_config is not None and any(_takes_image_boundaries(module, vision_config)
                                             for module in model.modules())


def _takes_image_boundaries(module: torch.nn.Module, vision_config) -> bool:
    return (getattr(module, "config", None) is vision_config and type(module).__name__.endswith("Attention")
            and "cu_seqlens" in inspect.signature(module.forward).parameters)


def vision_varlen_attention(module, query, key, value, attention_mask=None, dropout: float = 0.0,
                            scaling: float | None = None, cu_seq_lens_q: torch.Tensor | None = None,
                            max_length_q: int | None = None, **kwargs):
    """Non-causal attention within each image. Shapes as transformers' SDPA: (1, heads, tokens, head_dim) in,
    (1, tokens, heads, head_dim) out."""
    if cu_seq_lens_q is None or attention_mask is not None:
        raise ValueError("the varlen vision attention takes image boundaries (cu_seqlens) and no mask")
    dropout = dropout if module.training else 0.0
    kernel = varlen_kernel_for(query, causal=False)
    if kernel is not None and not dropout:
        return kernel(query, key, value, cu_seq_lens_q.to(torch.int32), int(max_length_q), scaling)[None], None
    lengths = (cu_seq_lens_q[1:] - cu_seq_lens_q[:-1]).tolist()
    parts = [torch.nn.functional.scaled_dot_product_attention(q, k, v, dropout_p=dropout, scale=scaling)
             for q, k, v in zip(*(t.split(lengths, dim=2) for t in (query, key, value)))]
    return torch.cat(parts, dim=2).transpose(1, 2).contiguous(), None
