"""The client CLI against a real server on port 0 (with the local launcher, so `create` follows a real run)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from trainer_service import cli

from .test_trainer_jobs_run import service  # noqa: F401 - the same real server + launcher fixture

pytestmark = pytest.mark.slow


def test_create_follows_the_job_then_get_list_checkpoints_and_errors(service, tiny_model_dir, small_dataset_dir,  # noqa: F811
                                                                     capsys) -> None:
    _, _, port = service
    address = f"--server=127.0.0.1:{port}"
    code = cli.main([address, "create", str(tiny_model_dir), str(small_dataset_dir / "train.jsonl"),
                     "--max-steps", "2", "--batch-size", "2", "--suffix", "cli"])
    output = capsys.readouterr().out
    assert code == 0, output
    job_id = output.split("created ")[1].split()[0]
    assert "SUCCEEDED: tiny-qwen2-vl-ft-cli-" in output
    merged_line = next(line for line in output.splitlines() if line.strip().startswith("merged"))
    assert (Path(merged_line.split()[1]) / "config.json").is_file()  # printed whole, not wrapped

    assert cli.main([address, "get", job_id]) == 0
    assert json.loads(capsys.readouterr().out)["status"] == "JOB_STATUS_SUCCEEDED"
    assert cli.main([address, "list"]) == 0 and job_id in capsys.readouterr().out
    assert cli.main([address, "checkpoints", job_id]) == 0
    assert cli.main([address, "cancel", job_id]) == 1
    assert "FAILED_PRECONDITION" in capsys.readouterr().out
    assert cli.main([address, "get", "ftjob-missing"]) == 1
    assert "NOT_FOUND" in capsys.readouterr().out

