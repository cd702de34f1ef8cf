"""Gemma 3 and InternVL3 (transformers' format): the layer switches pick their module names (those of
transformers 5.17's Gemma3ForConditionalGeneration and InternVLForConditionalGeneration; the integration tests
check on the tiny models that every switched part got LoRA), Gemma 3's projector is never a LoRA target, and
Gemma 3's training batches carry the image-token types its bidirectional image attention is built from."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from trainer_service.job_spec import Hyperparameters
from trainer_service.worker.lora_targets import target_modules
from vlmforge.chat_format import IGNORE_INDEX, ChatCollator, SequenceTooLongError
from vlmforge.data import load_dataset
from vlmforge.families import GEMMA3, INTERNVL
from vlmforge.families.checkpoints import _renamed

LANGUAGE_ONLY = Hyperparameters(finetune_vision_layers=False, finetune_projector=False)


def test_gemma3_switches_reach_the_siglip_tower_and_never_the_projector() -> None:
    everything = target_modules(Hyperparameters(), GEMMA3)
    language_only = target_modules(LANGUAGE_ONLY, GEMMA3)
    for name in ("model.language_model.layers.33.self_attn.o_proj", "model.language_model.layers.0.mlp.gate_proj"):
        assert re.fullmatch(everything, name) and re.fullmatch(language_only, name)
    for name in ("model.vision_tower.encoder.layers.26.self_attn.out_proj",
                 "model.vision_tower.encoder.layers.0.mlp.fc1",
                 "model.vision_tower.vision_model.encoder.layers.3.self_attn.q_proj"):  # saved before transformers 5
        assert re.fullmatch(everything, name) and not re.fullmatch(language_only, name)
    # The projector module holds a bare matrix: peft refuses a target that is not a layer it can wrap.
    assert not any(re.fullmatch(everything, name) for name in ("model.multi_modal_projector", "lm_head",
                                                              "model.multi_modal_projector.mm_soft_emb_norm"))


def test_gemma3_merged_weights_get_the_tower_level_vllm_reads() -> None:
    assert (_renamed("vision_tower.encoder.layers.0.mlp.fc1.weight", GEMMA3)
            == "vision_tower.vision_model.encoder.layers.0.mlp.fc1.weight")
    for unchanged in ("vision_tower.vision_model.post_layernorm.bias",
                      "language_model.model.layers.0.mlp.up_proj.weight"):
        assert _renamed(unchanged, GEMMA3) == unchanged


def test_internvl_switches_reach_the_internvit_tower_and_the_projector() -> None:
    everything = target_modules(Hyperparameters(), INTERNVL)
    language_only = target_modules(LANGUAGE_ONLY, INTERNVL)
    assert re.fullmatch(language_only, "model.language_model.layers.27.self_attn.k_proj")
    for name in ("model.vision_tower.encoder.layer.23.attention.projection_layer",
                 "model.vision_tower.encoder.layer.0.mlp.fc2", "model.multi_modal_projector.linear_1",
                 "model.multi_modal_projector.linear_2"):
        assert re.fullmatch(everything, name) and not re.fullmatch(language_only, name)
    assert not re.fullmatch(everything, "model.vision_tower.embeddings.patch_embeddings.projection")


@pytest.fixture(scope="module")
def gemma3_batch(tiny_model_of, small_dataset_dir: Path):
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(tiny_model_of("gemma3"))
    conversations = load_dataset(small_dataset_dir / "train.jsonl")[:4]
    return processor, conversations, ChatCollator(processor, family=GEMMA3)(conversations)


def test_gemma3_batches_mark_the_image_tokens_and_label_only_the_answers(gemma3_batch) -> None:
    processor, conversations, batch = gemma3_batch
    image_token = processor.tokenizer.image_token_id
    assert torch.equal(batch["token_type_ids"] == 1, batch["input_ids"] == image_token)
    assert (batch["token_type_ids"].sum(dim=1) == processor.image_seq_length).all()
    for row, conversation in enumerate(conversations):
        labelled = batch["input_ids"][row][batch["labels"][row] != IGNORE_INDEX]
        assert processor.tokenizer.decode(labelled) == conversation.messages[-1].text + "<end_of_turn>"


def test_gemma3_samples_reach_past_the_sliding_window(gemma3_batch, tiny_model_of) -> None:
    from transformers import AutoConfig

    text = AutoConfig.from_pretrained(tiny_model_of("gemma3")).text_config
    assert {"sliding_attention", "full_attention"} == set(text.layer_types)
    assert (gemma3_batch[2]["attention_mask"].sum(dim=1) > text.sliding_window).all()


def test_gemma3_trains_with_bidirectional_attention_among_image_tokens(gemma3_batch, tiny_model_of) -> None:
    """With the token types the image tokens see each other both ways; without them (generation) causally: the
    first image token's output then differs, the text before the image does not."""
    from transformers import AutoModelForImageTextToText

    _, _, batch = gemma3_batch
    model = AutoModelForImageTextToText.from_pretrained(tiny_model_of("gemma3")).eval()
    inputs = {name: batch[name][:1] for name in ("input_ids", "attention_mask", "pixel_values", "token_type_ids")}
    with torch.no_grad():
        bidirectional = model(**inputs).logits[0]
        causal = model(**{k: v for k, v in inputs.items() if k != "token_type_ids"}).logits[0]
    first_image = int(inputs["token_type_ids"][0].nonzero()[0])
    assert torch.allclose(bidirectional[:first_image], causal[:first_image], atol=1e-5)
    assert not torch.allclose(bidirectional[first_image], causal[first_image], atol=1e-5)


def test_a_gemma3_cut_into_the_image_soft_tokens_is_refused(gemma3_batch) -> None:
    processor, conversations, batch = gemma3_batch
    first_image = int(batch["token_type_ids"][0].nonzero()[0])
    collate = ChatCollator(processor, family=GEMMA3, max_length=first_image + 2)  # after <start_of_image>
    with pytest.raises(SequenceTooLongError, match="image tokens"):
        collate(conversations)
