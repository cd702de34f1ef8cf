"""`placement.strategy`: what `auto` picks from the weights' size, the GPU's memory and the GPU count, and how a
request's strategy is checked (INVALID_ARGUMENT naming the field)."""

from __future__ import annotations

from pathlib import Path

import pytest

from trainer_service.errors import InvalidArgumentError
from trainer_service.grpc_api.convert import _placement_to_pb, placement_from_pb
from trainer_service.job_spec import JobSpec, Placement
from trainer_service.worker.distributed import bf16_parameter_bytes, choose_strategy
from vlmforge.trainer.v1 import trainer_pb2 as pb

H200_BYTES = 143_771_090_944  # torch.cuda.get_device_properties(0).total_memory on an H200
H100_BYTES = 85_045_231_616


@pytest.mark.parametrize(("requested", "weights_gb", "memory", "gpus", "chosen"), [
    ("auto", 144, H200_BYTES, 2, "fsdp"),  # 72B: does not fit one H200 at all
    ("auto", 66, H200_BYTES, 2, "ddp"),  # 32B: fits with 77 GB to spare
    ("auto", 66, H100_BYTES, 2, "fsdp"),  # the same on an 80 GB GPU: 78% of it, too little room to train
    ("auto", 15, H100_BYTES, 8, "ddp"),  # 7B
    ("auto", 144, H200_BYTES, 1, "ddp"),  # one GPU: nothing to shard over
    ("auto", 144, None, 2, "ddp"),  # no GPU (gloo on CPU processes): auto never shards
    ("fsdp", 4, None, 2, "fsdp"),  # asked for by name: as asked, as CI runs it
    ("ddp", 144, H200_BYTES, 2, "ddp"),
])
def test_auto_shards_when_the_bf16_weights_leave_too_little_of_one_gpu(requested, weights_gb, memory, gpus,
                                                                        chosen) -> None:
    assert choose_strategy(requested, parameter_bytes=weights_gb * 10**9, gpu_memory_bytes=memory,
                           gpu_count=gpus) == chosen


def test_the_weights_are_counted_from_the_config_alone(tmp_path: Path) -> None:
    """Qwen2-VL-72B-Instruct's published config, no weights: 73.4B parameters, ~147 GB in bf16 (more than an
    H200 holds), counted on the meta device in a moment."""
    from transformers import Qwen2VLConfig

    Qwen2VLConfig(text_config={"hidden_size": 8192, "intermediate_size": 29568, "num_hidden_layers": 80,
                               "num_attention_heads": 64, "num_key_value_heads": 8, "vocab_size": 152064},
                  vision_config={"depth": 32, "embed_dim": 1280, "num_heads": 16, "hidden_size": 8192},
                  tie_word_embeddings=False).save_pretrained(tmp_path)
    weights = bf16_parameter_bytes(tmp_path)
    assert 146e9 < weights < 148e9
    assert choose_strategy("auto", parameter_bytes=weights, gpu_memory_bytes=H200_BYTES, gpu_count=2) == "fsdp"


def test_a_request_names_its_strategy_by_enum_and_a_bad_one_is_refused_naming_the_field() -> None:
    placement = placement_from_pb(pb.Placement(gpu_count=2, strategy=pb.DISTRIBUTED_STRATEGY_FSDP))
    assert placement.strategy == "fsdp"
    assert placement_from_pb(pb.Placement()).strategy == "auto"
    assert _placement_to_pb({"strategy": "ddp"}).strategy == pb.DISTRIBUTED_STRATEGY_DDP
    with pytest.raises(InvalidArgumentError, match=r"placement\.strategy"):
        placement_from_pb(pb.Placement(strategy=7))
    with pytest.raises(InvalidArgumentError, match=r"placement\.strategy: must be one of auto, ddp, fsdp"):
        JobSpec("m", "t.jsonl", placement=Placement(strategy="zero3")).validated()
    with pytest.raises(InvalidArgumentError, match=r"placement\.strategy: fsdp shards LoRA jobs"):
        JobSpec("m", "t.jsonl", method="qlora", placement=Placement(strategy="fsdp")).validated()
    assert JobSpec.from_json(JobSpec("m", "t.jsonl", placement=Placement(strategy="fsdp")).to_json()) \
        .placement.strategy == "fsdp"
