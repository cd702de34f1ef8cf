"""A dataset path Create confined to `--data-root/<project>/` is checked again where it is read: a symlink swapped
in after Create (here: the dataset's directory replaced by a link out of the root) fails the job in the worker,
and the background validator's load, with one line naming the field. A stored spec without a resolved entry for
the path (no root configured) is read as it is, as before."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import pytest

from trainer_service.domain import Caller, JobStatus
from trainer_service.errors import InvalidArgumentError
from trainer_service.job_spec import Hyperparameters, JobSpec, dataset_sources, load_job_dataset
from trainer_service.jobs import JobService
from trainer_service.path_roots import PathRoots
from trainer_service.store import JobStore
from trainer_service.validation import _load_files
from trainer_service.worker.run import main_for

CALLER = Caller(project="team-a", key_id="key-a")


@pytest.fixture
def swapped(tiny_model_dir: Path, small_dataset_dir: Path, tmp_path: Path):
    """A job created on <root>/team-a/ds/train.jsonl, whose ds/ is then a symlink to a copy outside the root."""
    root, outside = tmp_path / "data", tmp_path / "outside"
    shutil.copytree(small_dataset_dir, root / "team-a" / "ds")
    shutil.copytree(small_dataset_dir, outside)
    store = JobStore(tmp_path / "jobs.sqlite3")
    jobs = JobService(store, roots=PathRoots(data_root=root))
    job = jobs.create(JobSpec(str(tiny_model_dir), "ds/train.jsonl", hyperparameters=Hyperparameters(max_steps=1)),
                      caller=CALLER)
    stored_path = job.spec["resolved_files"]["training_file"]["path"]
    assert stored_path == str((root / "team-a" / "ds" / "train.jsonl").resolve())
    assert len(load_job_dataset(JobSpec.from_json(job.spec), "training_file",
                                dataset_sources(job.spec)["training_file"])) > 0  # unchanged: it reads
    shutil.rmtree(root / "team-a" / "ds")
    (root / "team-a" / "ds").symlink_to(outside)
    return store, job, stored_path


def test_the_worker_fails_a_job_whose_dataset_was_swapped_for_a_link_out_of_the_root(swapped, tmp_path) -> None:
    store, job, stored_path = swapped
    store.transition(job.id, JobStatus.RUNNING, "running")
    assert main_for(store, job.id, tmp_path / "state") == 3
    failed = store.get_job(job.id)
    assert failed.status is JobStatus.FAILED
    assert f"training_file: {stored_path} changed after the job was created" in failed.error.message
    assert "--data-root" in failed.error.message and "\n" not in failed.error.message
    assert str(tmp_path / "outside") not in failed.error.message  # where the link leads is not said


def test_the_validator_refuses_it_and_a_spec_stored_without_an_entry_reads_as_before(swapped) -> None:
    _, job, stored_path = swapped
    source = dataset_sources(job.spec)["training_file"]
    answer = _load_files(job.spec, {"training_file": dataclasses.asdict(source)})
    assert answer["ok"] is False and answer["field"] == "training_file"
    assert answer["message"].startswith(f"training_file: {stored_path} changed after the job was created")

    without_root = {key: value for key, value in job.spec.items() if key != "resolved_files"}
    without_root["training_file"] = stored_path  # an open trainer's job: the path as the client gave it
    spec = JobSpec.from_json(without_root)
    assert len(load_job_dataset(spec, "training_file", dataset_sources(without_root)["training_file"])) > 0
    with pytest.raises(InvalidArgumentError, match="^training_file: .* changed after the job was created"):
        load_job_dataset(spec, "training_file", source)
