"""The client CLI against a real server on port 0 (with the local launcher, so `create` follows a real run, and
the Files API, so datasets upload and artifacts download)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from trainer_service import cli
from trainer_service.files import ArchiveLimits, FileLimits, FileService
from trainer_service.grpc_api.server import create_server
from trainer_service.jobs import JobService
from trainer_service.launcher import LocalLauncher
from trainer_service.store import JobStore
from vlmforge.client import Trainer, types

pytestmark = pytest.mark.slow

MAX_UPLOAD_BYTES = 64 * 1024 * 1024


@pytest.fixture()
def service(tmp_path: Path):
    store = JobStore(tmp_path / "jobs.sqlite3")
    files = FileService(tmp_path / "files", store, FileLimits(MAX_UPLOAD_BYTES, ArchiveLimits(
        max_extracted_bytes=MAX_UPLOAD_BYTES, max_members=1000, max_compression_ratio=50.0)))
    launcher = LocalLauncher(store, tmp_path, poll_interval_s=0.1)
    running = create_server(JobService(store, watch_poll_interval_s=0.05, files=files), "127.0.0.1:0",
                            max_message_bytes=4 * 1024 * 1024, files=files)
    launcher.start()
    running.set_serving(True)
    yield store, launcher, running.port
    running.server.stop(None)
    launcher.stop()
    files.close()


def test_create_follows_the_job_then_get_list_checkpoints_and_errors(service, tiny_model_dir, small_dataset_dir,
                                                                     capsys, tmp_path) -> None:
    _, _, port = service
    address = f"--server=127.0.0.1:{port}"
    # warmup_ratio / validation_split / max_samples run through the worker's schedule and split for real.
    code = cli.main([address, "create", str(tiny_model_dir), str(small_dataset_dir / "train.jsonl"),
                     "--max-steps", "2", "--batch-size", "2", "--suffix", "cli", "--warmup-ratio", "0.5",
                     "--validation-split", "0.25", "--max-samples", "40"])
    output = capsys.readouterr().out
    assert code == 0, output
    assert "uploaded" not in output  # the trainer is on this machine: it reads the path itself
    job_id = output.split("created ")[1].split()[0]
    assert "SUCCEEDED: tiny-qwen2-vl-ft-cli-" in output
    merged_line = next(line for line in output.splitlines() if line.strip().startswith("merged"))
    assert (Path(merged_line.split()[1]) / "config.json").is_file()  # printed whole, not wrapped

    assert cli.main([address, "get", job_id]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["status"] == "JOB_STATUS_SUCCEEDED"
    assert {k: shown["hyperparameters"][k] for k in ("warmup_ratio", "validation_split", "max_samples")} == \
        {"warmup_ratio": 0.5, "validation_split": 0.25, "max_samples": 40}
    with Trainer(f"127.0.0.1:{port}") as client:
        progress = [e.data for e in client.jobs.events(job_id) if isinstance(e.data, types.TrainingProgress)]
    assert progress[-1].epoch == pytest.approx(4 / 30)  # 2 steps x 2 samples of 40 - ceil(0.25 x 40) records
    assert cli.main([address, "list"]) == 0 and job_id in capsys.readouterr().out
    assert cli.main([address, "checkpoints", job_id]) == 0
    assert cli.main([address, "cancel", job_id]) == 1
    assert "FAILED_PRECONDITION" in capsys.readouterr().out
    assert cli.main([address, "get", "ftjob-missing"]) == 1
    assert "NOT_FOUND" in capsys.readouterr().out

    assert cli.main([address, "download", job_id, str(tmp_path / "mine")]) == 0
    output = capsys.readouterr().out
    assert "(verified)" in output
    assert (tmp_path / "mine" / "adapter" / "adapter_model.safetensors").stat().st_size > 0


def test_create_uploads_a_local_directory_and_files_commands(service, tiny_model_dir, small_dataset_dir, capsys,
                                                             tmp_path) -> None:
    _, _, port = service
    address = f"--server=127.0.0.1:{port}"
    dataset = tmp_path / "my_dataset_dir"
    dataset.mkdir()
    shutil.copy(small_dataset_dir / "train.jsonl", dataset)
    shutil.copytree(small_dataset_dir / "images" / "train", dataset / "images" / "train")
    code = cli.main([address, "create", str(tiny_model_dir), str(dataset), "--upload", "--no-wait"])
    output = capsys.readouterr().out
    assert code == 0, output
    file_id = output.split(" as ")[1].split()[0]
    assert file_id.startswith("file-") and f"uploaded {dataset} as {file_id}" in output
    job_id = output.split("created ")[1].split()[0]
    assert cli.main([address, "get", job_id]) == 0
    assert json.loads(capsys.readouterr().out)["training_file"] == file_id

    assert cli.main([address, "files", "list"]) == 0 and file_id in capsys.readouterr().out
    assert cli.main([address, "files", "get", file_id]) == 0
    assert json.loads(capsys.readouterr().out)["filename"] == "my_dataset_dir.tar"
    assert cli.main([address, "files", "delete", file_id]) == 1  # the queued job uses it
    assert "FAILED_PRECONDITION" in capsys.readouterr().out
    assert cli.main([address, "cancel", job_id]) == 0
    capsys.readouterr()
    assert cli.main([address, "files", "delete", file_id]) == 0 and f"deleted {file_id}" in capsys.readouterr().out
    assert cli.main([address, "files", "upload", str(tmp_path / "absent")]) == 2
    assert "no such file or directory" in capsys.readouterr().out


def test_create_from_a_llamafactory_config_uploads_its_dataset_dir(service, tiny_model_dir, small_dataset_dir,
                                                                  capsys, tmp_path) -> None:
    """LLaMA-Factory's layout: dataset_info.json (its own mllm_demo entry), mllm_demo.json with `<image>` marks and
    images under mllm_demo_data/, beside another dataset's file that the upload leaves out."""
    _, _, port = service
    data = tmp_path / "data"
    (data / "mllm_demo_data").mkdir(parents=True)
    records = []
    for index, image in enumerate(sorted((small_dataset_dir / "images" / "train").iterdir())[:6]):
        shutil.copy(image, data / "mllm_demo_data" / f"{index}.png")
        records.append({"messages": [{"content": "<image>How many bars are in the chart?", "role": "user"},
                                     {"content": str(index), "role": "assistant"}],
                        "images": [f"mllm_demo_data/{index}.png"]})
    (data / "mllm_demo.json").write_text(json.dumps(records))
    (data / "identity.json").write_text(json.dumps([{"instruction": "hi", "input": "", "output": "hello"}]))
    (data / "dataset_info.json").write_text(json.dumps({
        "identity": {"file_name": "identity.json"},
        "mllm_demo": {"file_name": "mllm_demo.json", "formatting": "sharegpt",
                      "columns": {"messages": "messages", "images": "images"},
                      "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user",
                               "assistant_tag": "assistant"}}}))
    config = tmp_path / "qwen2vl_lora_sft.yaml"
    config.write_text(f"model_name_or_path: Qwen/Qwen2-VL-7B-Instruct\nimage_max_pixels: 262144\nstage: sft\n"
                      f"finetuning_type: lora\nlora_rank: 8\nlora_target: all\ndataset: mllm_demo\n"
                      f"dataset_dir: {data}\ncutoff_len: 2048\nlearning_rate: 1.0e-4\nnum_train_epochs: 3.0\n"
                      "warmup_ratio: 0.1\nval_size: 0.2\n")
    code = cli.main([f"--server=127.0.0.1:{port}", "create", str(tiny_model_dir), "--llamafactory-config",
                     str(config), "--ignore-unsupported", "--upload", "--no-wait"])
    output = capsys.readouterr().out
    assert code == 0, output
    assert "unsupported: image_max_pixels" in output and f"uploaded {data} as file-" in output
    job_id = output.split("created ")[1].split()[0]
    with Trainer(f"127.0.0.1:{port}") as client:
        job = client.jobs.retrieve(job_id)
        assert job.dataset_name == "mllm_demo" and job.training_file.startswith("file-")
        assert (job.hyperparameters.warmup_ratio, job.hyperparameters.validation_split) == (0.1, 0.2)
        assert (job.hyperparameters.lora_rank, job.hyperparameters.lora_alpha) == (8, 16.0)
        assert job.hyperparameters.finetune_vision_layers is False
        file = client.files.wait_for_processing(job.training_file, poll_interval_s=0.1, timeout_s=60)
        assert (file.status, file.record_count) == ("processed", 6), file.status_details
        client.jobs.cancel(job_id)


@pytest.mark.parametrize(("address", "loopback"), [
    ("127.0.0.1:50051", True), ("localhost:50051", True), ("[::1]:50051", True), ("127.8.0.3:1", True),
    ("unix:/run/trainer.sock", True), ("dns:///localhost:50051", True),
    ("10.0.0.5:50051", False), ("trainer.example.com:443", False), ("[2001:db8::1]:50051", False),
])
def test_whether_the_trainer_can_see_local_paths_is_judged_from_its_address(address, loopback) -> None:
    assert cli.server_is_loopback(address) is loopback
