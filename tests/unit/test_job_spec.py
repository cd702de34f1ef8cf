"""Validation before queueing: bad hyperparameters, names and files are refused with the field named."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest

from trainer_service.errors import FailedPreconditionError, InvalidArgumentError
from trainer_service.job_spec import (
    QLORA_NEEDS_CUDA,
    Hyperparameters,
    JobSpec,
    Placement,
    Toleration,
    check_resources,
    resolve_model,
)


def _field_of(spec: JobSpec) -> str:
    with pytest.raises(InvalidArgumentError) as info:
        spec.validated()
    return info.value.field


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"learning_rate": 0.0}, "hyperparameters.learning_rate"),
        ({"learning_rate": float("nan")}, "hyperparameters.learning_rate"),
        ({"batch_size": 0}, "hyperparameters.batch_size"),
        ({"epochs": 1000}, "hyperparameters.epochs"),
        ({"max_steps": 0}, "hyperparameters.max_steps"),
        ({"scheduler": "exotic"}, "hyperparameters.scheduler"),
        ({"lora_rank": 0}, "hyperparameters.lora_rank"),
        ({"lora_dropout": 1.0}, "hyperparameters.lora_dropout"),
        ({"max_sequence_length": 4}, "hyperparameters.max_sequence_length"),
        ({"finetune_vision_layers": False, "finetune_language_layers": False},
         "hyperparameters.finetune_language_layers"),
        ({"finetune_attention_modules": False, "finetune_mlp_modules": False}, "hyperparameters.finetune_mlp_modules"),
        ({"lora_target_modules": ("",)}, "hyperparameters.lora_target_modules"),
    ],
)
def test_bad_hyperparameters_name_their_field(change: dict, field: str) -> None:
    spec = JobSpec("m", "train.jsonl", hyperparameters=dataclasses.replace(Hyperparameters(), **change))
    assert _field_of(spec) == field


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"model": " "}, "model"),
        ({"training_file": ""}, "training_file"),
        ({"method": "full"}, "method"),
        ({"suffix": "Has Spaces"}, "suffix"),
        ({"suffix": "-leading-dash"}, "suffix"),
        ({"metadata": {f"k{i}": "v" for i in range(17)}}, "metadata"),
        ({"metadata": {"k": "v" * 513}}, "metadata[k]"),
    ],
)
def test_bad_request_fields_are_named(change: dict, field: str) -> None:
    assert _field_of(dataclasses.replace(JobSpec("m", "train.jsonl"), **change)) == field


def test_defaults_are_valid() -> None:
    assert JobSpec("m", "train.jsonl", suffix="charts-v1", metadata={"team": "vision"}).validated()


@pytest.fixture()
def model_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "models" / "tiny"
    directory.mkdir(parents=True)
    (directory / "config.json").write_text('{"model_type": "qwen2_vl"}')
    return directory


def test_models_resolve_by_path_or_by_name_and_names_cannot_escape(model_dir: Path) -> None:
    models = model_dir.parent
    assert resolve_model(str(model_dir), None) == model_dir
    assert resolve_model("tiny", models) == model_dir.resolve()
    with pytest.raises(InvalidArgumentError, match="no model directory 'missing'"):
        resolve_model("missing", models)
    with pytest.raises(InvalidArgumentError):
        resolve_model("../models/../../etc", models)


def test_dataset_problems_surface_with_file_line_and_field(model_dir: Path, small_dataset_dir: Path,
                                                           tmp_path: Path) -> None:
    good = JobSpec(str(model_dir), str(small_dataset_dir / "train.jsonl"),
                   test_file=str(small_dataset_dir / "test.jsonl"))
    assert check_resources(good, models_dir=None, qlora_unavailable=QLORA_NEEDS_CUDA) == model_dir

    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"},
                                            {"role": "assistant", "content": ""}]}) + "\n")
    with pytest.raises(InvalidArgumentError) as info:
        check_resources(dataclasses.replace(good, validation_file=str(bad)), models_dir=None,
                        qlora_unavailable=QLORA_NEEDS_CUDA)
    assert info.value.field == "validation_file"
    assert "bad.jsonl line 1, field messages[1]: the assistant's answer is empty" in str(info.value)


def test_qlora_needs_cuda(model_dir: Path) -> None:
    with pytest.raises(FailedPreconditionError, match="needs a CUDA GPU"):
        check_resources(JobSpec(str(model_dir), "x.jsonl", method="qlora"), models_dir=None,
                        qlora_unavailable=QLORA_NEEDS_CUDA)


@pytest.mark.parametrize(("placement", "field"), [
    (Placement(gpu_count=-1), "placement.gpu_count"),
    (Placement(gpu_count=65), "placement.gpu_count"),
    (Placement(node_selector={"bad key!": "x"}), "placement.node_selector[bad key!]"),
    (Placement(node_selector={"nvidia.com/gpu.product": "H100 80GB"}),
     "placement.node_selector[nvidia.com/gpu.product]"),
    (Placement(node_selector={"k": "x" * 64}), "placement.node_selector[k]"),
    (Placement(tolerations=(Toleration("k", "Sometimes"),)), "placement.tolerations[0].operator"),
    (Placement(tolerations=(Toleration("k", "Equal", "v", "NoWhere"),)), "placement.tolerations[0].effect"),
    (Placement(tolerations=(Toleration("k", "Exists", "v"),)), "placement.tolerations[0].value"),
    (Placement(tolerations=(Toleration("", "Equal", "v"),)), "placement.tolerations[0].key"),
])
def test_bad_placements_name_their_field(placement: Placement, field: str) -> None:
    with pytest.raises(InvalidArgumentError) as info:
        JobSpec("m", "train.jsonl", placement=placement).validated()
    assert info.value.field == field


def test_a_placement_round_trips_through_the_stored_json() -> None:
    placement = Placement(2, {"cloud.google.com/gke-accelerator": "nvidia-h100-80gb"},
                          (Toleration("nvidia.com/gpu", "Exists", "", "NoSchedule"),))
    spec = JobSpec("m", "train.jsonl", placement=placement).validated()
    assert JobSpec.from_json(json.loads(json.dumps(spec.to_json()))) == spec
    assert JobSpec.from_json({"model": "m", "training_file": "t"}).placement == Placement()  # stored before


def test_node_placement_needs_the_kubernetes_launcher(model_dir: Path) -> None:
    spec = JobSpec(str(model_dir), "x.jsonl", placement=Placement(node_selector={"pool": "gpu"}))
    with pytest.raises(FailedPreconditionError, match="--launcher local"):
        check_resources(spec, models_dir=None, qlora_unavailable=None)


@pytest.mark.parametrize(("config", "message"), [
    ('{"model_type": "llama"}', "model type 'llama' is not supported (supported: gemma3, idefics3, internvl, llava, "
                                "llava_next, mistral3, mllama, qwen2_5_vl, qwen2_vl, qwen3_5, qwen3_vl, smolvlm)"),
    ("{not json", "config.json is not readable JSON"),
])
def test_a_model_of_an_unknown_family_is_refused_up_front(model_dir: Path, config: str, message: str) -> None:
    (model_dir / "config.json").write_text(config)
    with pytest.raises(InvalidArgumentError, match=re.escape(message)) as info:
        check_resources(JobSpec(str(model_dir), "x.jsonl"), models_dir=None, qlora_unavailable=None)
    assert info.value.field == "model"
