"""Qwen3-VL and Qwen3.5 on their tiny models: the LoRA switches cover every linear layer but the LM head (Qwen3.5's
linear-attention projections and Qwen3-VL's DeepStack mergers included), the labels are the answer of the shipped
chat templates (with Qwen3.5's empty think block), and a batch the trainer cuts to max_sequence_length keeps the
interleaved M-RoPE positions its tokens have uncut."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from trainer_service.job_spec import Hyperparameters
from trainer_service.worker.lora_targets import target_modules
from vlmforge.chat_format import IGNORE_INDEX, ChatCollator
from vlmforge.data import load_dataset
from vlmforge.families import QWEN3_5, QWEN3_VL, family_for_model_dir

pytestmark = pytest.mark.parametrize("family", [QWEN3_VL, QWEN3_5], ids=lambda f: f.name)
PARTS = ("vision_attention", "vision_mlp", "projector", "language_attention", "language_mlp")


def _load(tiny_model_of, family):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    model_dir = tiny_model_of(family.name)
    assert family_for_model_dir(model_dir) is family
    return AutoModelForImageTextToText.from_pretrained(model_dir).eval(), AutoProcessor.from_pretrained(model_dir)


def test_each_linear_layer_but_the_lm_head_belongs_to_exactly_one_switch(family, tiny_model_of) -> None:
    model, _ = _load(tiny_model_of, family)
    linear = [name for name, module in model.named_modules() if isinstance(module, torch.nn.Linear)]
    for name in linear:
        owners = [part for part in PARTS if re.search(getattr(family, part) + "$", name)]
        assert len(owners) == (0 if name == "lm_head" else 1), (name, owners)
    language_only = target_modules(Hyperparameters(finetune_vision_layers=False, finetune_projector=False), family)
    assert not any(re.fullmatch(language_only, name) for name in linear if ".visual." in name)
    if family is QWEN3_5:  # the gated-delta-net layers' projections are attention, their convolution is no target
        mixers = {name.rsplit(".", 1)[1] for name in linear if ".linear_attn." in name}
        assert mixers == {"in_proj_qkv", "in_proj_z", "in_proj_b", "in_proj_a", "out_proj"}
        assert all(re.fullmatch(language_only, n) for n in linear if ".linear_attn." in n or ".self_attn." in n)
        everything = target_modules(Hyperparameters(), family)
        assert not re.fullmatch(everything, "model.language_model.layers.0.linear_attn.conv1d")
    else:
        assert any("deepstack_merger_list.0.linear_fc2" in name for name in linear)


def test_labels_are_the_answer_and_its_turn_end(family, tiny_model_of, small_dataset_dir: Path) -> None:
    _, processor = _load(tiny_model_of, family)
    sample = load_dataset(small_dataset_dir / "train.jsonl")[0]
    batch = ChatCollator(processor, family=family)([sample])
    labelled = batch["labels"][0] != IGNORE_INDEX
    answer = processor.tokenizer.decode(batch["input_ids"][0][labelled])
    think = "<think>\n\n</think>\n\n" if family is QWEN3_5 else ""  # Qwen3.5's template opens the last turn with it
    assert answer == think + sample.messages[-1].parts[0].text + "<|im_end|>"


def test_a_cut_batch_keeps_the_mrope_positions_of_its_tokens(family, tiny_model_of, small_dataset_dir: Path) -> None:
    """The trainer cuts batches to max_sequence_length (ChatCollator.truncated); the model then derives its 3-D
    positions from the cut `input_ids` / `mm_token_type_ids` / `attention_mask`. They must be the uncut
    sequence's, and the image's must be 2-D (text resumes after the image at its side, not its token count)."""
    model, processor = _load(tiny_model_of, family)
    samples = load_dataset(small_dataset_dir / "train.jsonl")[:2]
    full = ChatCollator(processor, family=family)(samples)
    image = (full["input_ids"][0] == processor.image_token_id).nonzero().flatten()
    cut_at = int(image.max()) + 3  # keep the image, cut the text after it (both rows longer than that)
    assert full["attention_mask"].sum(dim=1).min() > cut_at
    cut = ChatCollator(processor, family=family, max_length=cut_at)(samples)
    assert cut["input_ids"].shape[1] == cut_at and cut["mm_token_type_ids"].shape[1] == cut_at

    def positions(batch):
        return model.model.get_rope_index(batch["input_ids"], batch["mm_token_type_ids"],
                                          image_grid_thw=batch["image_grid_thw"],
                                          attention_mask=batch["attention_mask"])[0]

    uncut = positions(full)
    assert torch.equal(positions(cut), uncut[:, :, :cut_at])
    grid = full["image_grid_thw"][0] // torch.tensor([1, 2, 2])  # merged 2x2: the image's side in tokens
    first, last = int(image.min()), int(image.max())
    assert (uncut[1:, 0, first:last + 1].amax(dim=1) - uncut[1:, 0, first]).tolist() == (grid[1:] - 1).tolist()
    assert uncut[0, 0, last + 1] == uncut[0, 0, first] + int(grid[1:].max())


def test_a_video_becomes_timestamped_frames_the_model_reads(family, tiny_model_of) -> None:
    """Qwen3's video processor: two frames per temporal patch, each patch its own `<t seconds>` slot of video
    tokens (typed 2 in mm_token_type_ids). The service takes no video; transformers trains on it."""
    import numpy as np
    from transformers.video_utils import VideoMetadata

    model, processor = _load(tiny_model_of, family)
    frames = np.random.default_rng(0).integers(0, 256, (4, 96, 96, 3), dtype=np.uint8)
    messages = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "What moves?"}]}]
    text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    metadata = VideoMetadata(total_num_frames=4, fps=2.0, frames_indices=[0, 1, 2, 3])
    batch = processor(text=[text], videos=[frames], videos_kwargs={"video_metadata": [metadata],
                                                                    "do_sample_frames": False}, return_tensors="pt")
    assert batch["video_grid_thw"].tolist() == [[2, 6, 6]]
    assert int((batch["mm_token_type_ids"] == 2).sum()) == 2 * 9
    decoded = processor.tokenizer.decode(batch["input_ids"][0])
    assert "<0.2 seconds>" in decoded and "<1.2 seconds>" in decoded
    with torch.no_grad():
        loss = model(**batch, labels=batch["input_ids"]).loss
    assert torch.isfinite(loss)
