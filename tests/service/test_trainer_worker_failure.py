"""A job that breaks inside the worker ends FAILED with its error recorded, never stuck RUNNING."""

from __future__ import annotations

import shutil
from pathlib import Path

from trainer_service.domain import JobStatus
from trainer_service.job_spec import Hyperparameters, JobSpec
from trainer_service.jobs import JobService
from trainer_service.store import JobStore
from trainer_service.worker.run import main_for


def test_a_dataset_gone_after_queueing_fails_the_job_with_its_reason(tiny_model_dir: Path, small_dataset_dir: Path,
                                                                     tmp_path: Path) -> None:
    data = tmp_path / "data"
    shutil.copytree(small_dataset_dir, data)
    store = JobStore(tmp_path / "jobs.sqlite3")
    job = JobService(store).create(JobSpec(str(tiny_model_dir), str(data / "train.jsonl"),
                                           hyperparameters=Hyperparameters(max_steps=1)))
    store.transition(job.id, JobStatus.RUNNING, "running")
    (data / "train.jsonl").unlink()

    assert main_for(store, job.id, tmp_path) == 3
    failed = store.get_job(job.id)
    assert failed.status is JobStatus.FAILED
    assert failed.error.code == "training_failed" and "file not found" in failed.error.message
    assert store.events_after(job.id)[-1].payload["error"]["code"] == "training_failed"
