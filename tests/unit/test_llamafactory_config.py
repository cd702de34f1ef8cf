"""LLaMA-Factory training YAML -> fine-tuning job. The YAML is LLaMA-Factory's own
examples/train_lora/qwen2vl_lora_sft.yaml (hiyouga/LLaMA-Factory), with its eval section uncommented; the
dataset_info.json entry is the repository's own `mllm_demo` one."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from trainer_service import cli
from trainer_service.grpc_api.convert import hyperparameters_from_pb
from vlmforge.client import _convert
from vlmforge.client.llamafactory import LlamaFactoryConfigError, migrate

QWEN2VL_LORA_SFT = """\
### model
model_name_or_path: Qwen/Qwen2-VL-7B-Instruct
image_max_pixels: 262144
video_max_pixels: 16384
trust_remote_code: true

### method
stage: sft
do_train: true
finetuning_type: lora
lora_rank: 8
lora_target: all

### dataset
dataset: mllm_demo,identity,alpaca_en_demo  # video: mllm_video_demo
template: qwen2_vl
cutoff_len: 2048
max_samples: 1000
overwrite_cache: true
preprocessing_num_workers: 16
dataloader_num_workers: 4

### output
output_dir: saves/qwen2_vl-7b/lora/sft
logging_steps: 10
save_steps: 500
plot_loss: true
overwrite_output_dir: true
save_only_model: false

### train
per_device_train_batch_size: 1
gradient_accumulation_steps: 8
learning_rate: 1.0e-4
num_train_epochs: 3.0
lr_scheduler_type: cosine
warmup_ratio: 0.1
bf16: true
ddp_timeout: 180000000
resume_from_checkpoint: null

### eval
val_size: 0.1
per_device_eval_batch_size: 1
eval_strategy: steps
eval_steps: 500
"""
MLLM_DEMO_INFO = {
    "identity": {"file_name": "identity.json"},
    "mllm_demo": {"file_name": "mllm_demo.json", "formatting": "sharegpt",
                  "columns": {"messages": "messages", "images": "images"},
                  "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user",
                           "assistant_tag": "assistant"}},
}


@pytest.fixture()
def data_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "data"
    directory.mkdir()
    (directory / "dataset_info.json").write_text(json.dumps(MLLM_DEMO_INFO))
    return directory


def _yaml(tmp_path: Path, text: str = QWEN2VL_LORA_SFT, **changes) -> Path:
    config = yaml.safe_load(text)
    config.update(changes)
    path = tmp_path / "train_lora.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_the_qwen2vl_example_maps_to_a_job_and_names_what_it_cannot_honor(tmp_path, data_dir) -> None:
    migration = migrate(_yaml(tmp_path, dataset="mllm_demo", dataset_dir=str(data_dir)))
    assert migration.create_kwargs == {
        "model": "Qwen/Qwen2-VL-7B-Instruct", "method": "lora", "dataset_name": "mllm_demo",
        "training_file": str(data_dir / "dataset_info.json"),
        "hyperparameters": {
            "lora_rank": 8, "lora_alpha": 16.0, "finetune_vision_layers": False, "finetune_projector": False,
            "finetune_language_layers": True, "max_sequence_length": 2048, "batch_size": 1,
            "gradient_accumulation_steps": 8, "learning_rate": 1e-4, "epochs": 3, "warmup_ratio": 0.1,
            "max_samples": 1000, "checkpoint_every_steps": 500, "scheduler": "cosine",
            "gradient_checkpointing": True, "validation_split": 0.1, "eval_every_steps": 500,
        },
    }
    assert migration.unsupported == {"image_max_pixels": "262144 is not honored by this trainer"}
    every_key = set(yaml.safe_load(QWEN2VL_LORA_SFT)) | {"dataset_dir"}
    accounted = set(migration.mapped) | set(migration.no_effect) | set(migration.unsupported)
    assert every_key <= accounted, f"silently dropped: {every_key - accounted}"
    assert "unsupported: image_max_pixels: 262144 is not honored by this trainer" in migration.report()


def test_the_mapped_hyperparameters_pass_the_trainers_own_validation(tmp_path, data_dir) -> None:
    migration = migrate(_yaml(tmp_path, dataset="mllm_demo", dataset_dir=str(data_dir)))
    hyper = hyperparameters_from_pb(_convert.hyperparameters_to_pb(migration.create_kwargs["hyperparameters"]))
    assert hyper.validated().warmup_ratio == 0.1 and hyper.validation_split == 0.1 and hyper.max_samples == 1000


def test_the_examples_three_datasets_are_refused_by_name(tmp_path, data_dir) -> None:
    with pytest.raises(LlamaFactoryConfigError, match="dataset: mllm_demo, identity, alpaca_en_demo: a job "
                                                      "trains on one dataset"):
        migrate(_yaml(tmp_path, dataset_dir=str(data_dir)))


def test_keys_it_does_not_know_are_named_never_dropped(tmp_path, data_dir) -> None:
    migration = migrate(_yaml(tmp_path, dataset="mllm_demo", dataset_dir=str(data_dir), use_dora=True,
                              optim="adamw_8bit", lr_scheduler_type="cosine_with_restarts", eval_dataset="x"))
    assert {"use_dora", "optim", "lr_scheduler_type", "eval_dataset", "image_max_pixels"} == set(migration.unsupported)
    assert "cosine_with_restarts" in migration.unsupported["lr_scheduler_type"]


def test_evaluation_follows_the_eval_strategy(tmp_path, data_dir) -> None:
    text = QWEN2VL_LORA_SFT.replace("eval_strategy: steps\n", "")  # transformers' default strategy is "no"
    migration = migrate(_yaml(tmp_path, text, dataset="mllm_demo", dataset_dir=str(data_dir)))
    assert "eval_every_steps" not in migration.create_kwargs["hyperparameters"]
    assert "would not validate either" in migration.no_effect["eval_steps"]
    text = QWEN2VL_LORA_SFT.replace("eval_steps: 500\n", "")  # "steps" without eval_steps: logging_steps
    migration = migrate(_yaml(tmp_path, text, dataset="mllm_demo", dataset_dir=str(data_dir), val_size=0))
    assert migration.create_kwargs["hyperparameters"]["eval_every_steps"] == 10
    assert "validation_split" not in migration.create_kwargs["hyperparameters"] and "val_size" in migration.no_effect


def test_every_key_is_accounted_for_even_when_null(tmp_path, data_dir) -> None:
    nulls = {key: None for key in ("quantization_bit", "eval_dataset", "lr_scheduler_type", "lora_alpha", "max_steps",
                                   "val_size", "eval_strategy", "eval_steps", "seed", "report_to", "packing",
                                   "neat_packing")}
    migration = migrate(_yaml(tmp_path, dataset="mllm_demo", dataset_dir=str(data_dir), **nulls))
    accounted = set(migration.mapped) | set(migration.no_effect) | set(migration.unsupported)
    assert set(yaml.safe_load(QWEN2VL_LORA_SFT)) | set(nulls) <= accounted


@pytest.mark.parametrize(("changes", "message"), [
    ({"finetuning_type": "full"}, "finetuning_type: 'full': only lora"),
    ({"val_size": 100}, "val_size: 100: give a share between 0 and 0.5"),
    ({"num_train_epochs": 2.5}, "num_train_epochs: 2.5 is not a whole number"),
    ({"quantization_bit": 8}, "quantization_bit: 8: only 4-bit"),
    ({"stage": "dpo"}, "stage: 'dpo': only supervised fine-tuning"),
    ({"model_name_or_path": None}, "model_name_or_path: is required"),
])
def test_values_it_cannot_use_fail_naming_the_file_and_key(tmp_path, data_dir, changes, message) -> None:
    path = _yaml(tmp_path, dataset="mllm_demo", dataset_dir=str(data_dir), **changes)
    with pytest.raises(LlamaFactoryConfigError) as info:
        migrate(path)
    assert str(info.value).startswith(f"{path}: {message}")


def test_values_as_pyyaml_reads_them_and_qlora(tmp_path, data_dir) -> None:
    text = QWEN2VL_LORA_SFT.replace("learning_rate: 1.0e-4", "learning_rate: 1e-4")  # a string to PyYAML
    migration = migrate(_yaml(tmp_path, text, dataset="mllm_demo", dataset_dir="data", quantization_bit=4,
                              lora_target="q_proj,v_proj", disable_gradient_checkpointing=True),
                        cwd=data_dir.parent)
    hyper = migration.create_kwargs["hyperparameters"]
    assert hyper["learning_rate"] == 1e-4 and hyper["lora_target_modules"] == ("q_proj", "v_proj")
    assert hyper["gradient_checkpointing"] is False and migration.create_kwargs["method"] == "qlora"
    assert migration.create_kwargs["training_file"] == str(data_dir / "dataset_info.json")


def test_the_cli_refuses_unsupported_keys_before_calling_the_trainer(tmp_path, data_dir, capsys) -> None:
    path = _yaml(tmp_path, dataset="mllm_demo", dataset_dir=str(data_dir))
    code = cli.main(["--server=127.0.0.1:9", "create", "--llamafactory-config", str(path)])  # nothing listens
    output = capsys.readouterr().out
    assert code == 2
    assert "keys this trainer cannot honor: image_max_pixels" in output and "--ignore-unsupported" in output
    assert "mapped: lora_rank -> hyperparameters.lora_rank" in output


@pytest.mark.parametrize(("flags", "packing"), [
    ({"packing": True}, True), ({"neat_packing": True}, True), ({"packing": True, "neat_packing": True}, True),
    ({"packing": False, "neat_packing": False}, False)])
def test_packing_maps_to_the_trainers_neat_packing_in_rows_of_cutoff_len(tmp_path, data_dir, flags, packing) -> None:
    migration = migrate(_yaml(tmp_path, dataset="mllm_demo", dataset_dir=str(data_dir), **flags))
    hyper = migration.create_kwargs["hyperparameters"]
    assert hyper["packing"] is packing and set(flags) <= set(migration.mapped)
    assert hyper.get("max_tokens_per_batch") == (2048 if packing else None)  # the example's cutoff_len
    validated = hyperparameters_from_pb(_convert.hyperparameters_to_pb(hyper)).validated()
    assert validated.packing is packing


def test_a_packing_flag_that_is_not_a_boolean_fails_naming_the_key(tmp_path, data_dir) -> None:
    with pytest.raises(LlamaFactoryConfigError, match="neat_packing: 'yes': expected true or false"):
        migrate(_yaml(tmp_path, dataset="mllm_demo", dataset_dir=str(data_dir), neat_packing="yes"))
