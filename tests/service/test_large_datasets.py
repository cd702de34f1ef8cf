"""Real sizes: Create answers at once for a million-row file (a real gRPC server on port 0, the background
validator beside it), a bad line late in a big file fails the job naming the line, a job cancelled while its
files are validated stays cancelled, a job left validating by a restart is picked up, and the epoch order costs
the same per micro-batch at 1M rows as at 1k."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import grpc
import pytest

from trainer_service.domain import JobStatus
from trainer_service.grpc_api.server import create_server
from trainer_service.job_spec import Hyperparameters, JobSpec
from trainer_service.jobs import JobService
from trainer_service.store import JobStore
from trainer_service.validation import DatasetValidator
from vlmforge.trainer.v1 import trainer_pb2 as pb
from vlmforge.trainer.v1 import trainer_pb2_grpc

MILLION = 1_000_000
BIG_ROWS = 30_000  # ~4 MB: past what Create validates in full, quick for the validator


def _record(image: str, question: str, answer: str) -> dict:
    """The conversation JSONL layout (vlmforge.data.conversation_jsonl): an image part and a text part."""
    return {"messages": [{"role": "user", "content": [{"type": "image", "image": image},
                                                      {"type": "text", "text": question}]},
                         {"role": "assistant", "content": [{"type": "text", "text": answer}]}]}


@pytest.fixture(scope="module")
def data_dir(small_dataset_dir: Path, tmp_path_factory) -> Path:
    """A dataset directory with four real images that every generated row shares."""
    root = tmp_path_factory.mktemp("large")
    (root / "images").mkdir()
    for image in sorted((small_dataset_dir / "images" / "train").glob("*.png"))[:4]:
        shutil.copy(image, root / "images" / image.name)
    return root


def write_rows(path: Path, rows: int, *, bad_line: int | None = None) -> Path:
    """`rows` lines cycling over four distinct records, written as blocks; line `bad_line` (1-based) has a role
    no format allows."""
    images = sorted(p.name for p in (path.parent / "images").iterdir())
    lines = [json.dumps(_record(f"images/{name}", f"What is in picture {i}?", f"shape {i}")) + "\n"
             for i, name in enumerate(images)]
    block = "".join(lines)
    with path.open("w") as handle:
        whole, rest = divmod(rows, len(lines))
        for _ in range(whole // 1000):
            handle.write(block * 1000)
        handle.write(block * (whole % 1000) + "".join(lines[:rest]))
    if bad_line is not None:
        with path.open("r+") as handle:  # same length, so the rows after it keep their lines
            handle.seek(sum(len(lines[i % len(lines)]) for i in range(bad_line - 1)))
            original = lines[(bad_line - 1) % len(lines)]
            handle.write(original.replace('"role": "user"', '"role": "bots"'))
    return path


@pytest.fixture(scope="module")
def million_rows(data_dir: Path) -> Path:
    return write_rows(data_dir / "million.jsonl", MILLION)


@pytest.fixture()
def service(tmp_path: Path):
    store = JobStore(tmp_path / "jobs.sqlite3")
    jobs = JobService(store)
    validator = DatasetValidator(store, poll_interval_s=0.05)
    validator.start()
    running = create_server(jobs, "127.0.0.1:0", max_message_bytes=4 * 1024 * 1024)
    running.set_serving(True)
    with grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
        yield trainer_pb2_grpc.FineTuningServiceStub(channel), store, validator
    running.server.stop(None)
    validator.stop()
    store.close()


def _wait_for(store: JobStore, job_id: str, *statuses: JobStatus, timeout_s: float = 30.0):
    deadline = time.monotonic() + timeout_s
    while (job := store.get_job(job_id)).status not in statuses:
        assert time.monotonic() < deadline, f"job still {job.status.value}"
        time.sleep(0.05)
    return job


def test_create_on_a_million_rows_answers_within_a_second_then_cancel_holds(service, million_rows: Path,
                                                                            tiny_model_dir: Path) -> None:
    client, store, validator = service
    request = pb.CreateFineTuningJobRequest(model=str(tiny_model_dir), training_file=str(million_rows))
    warm = client.CreateFineTuningJob(pb.CreateFineTuningJobRequest(model=str(tiny_model_dir),
                                                                    training_file=str(million_rows), suffix="warm"))
    client.CancelFineTuningJob(pb.CancelFineTuningJobRequest(id=warm.id))  # its load would compete for the CPU
    started = time.perf_counter()
    job = client.CreateFineTuningJob(request)
    elapsed_s = time.perf_counter() - started
    assert elapsed_s < 1.0, f"Create took {elapsed_s:.2f} s on {MILLION:,} rows"
    assert job.status == pb.JOB_STATUS_VALIDATING_FILES
    assert store.get_job(job.id).spec["dataset_formats"]["training_file"].startswith("conversation (")

    deadline = time.monotonic() + 10
    while job.id not in validator.in_progress():  # its load has started in a child process
        assert time.monotonic() < deadline, "the validator never took the job"
        time.sleep(0.02)
    client.CancelFineTuningJob(pb.CancelFineTuningJobRequest(id=job.id))
    deadline = time.monotonic() + 10
    while job.id in validator.in_progress():  # the load stops once it sees the job cancelled
        assert time.monotonic() < deadline, "the validator kept loading a cancelled job"
        time.sleep(0.02)
    assert store.get_job(job.id).status is JobStatus.CANCELLED
    statuses = [e.payload["status"] for e in store.events_after(job.id) if e.kind == "status_changed"]
    assert statuses == ["validating_files", "cancelled"]


@pytest.mark.parametrize("field", ["training_file", "validation_file"])
def test_a_bad_line_late_in_a_big_file_fails_the_job_naming_the_line(service, data_dir: Path, tiny_model_dir: Path,
                                                                     field: str) -> None:
    client, store, _ = service
    good = write_rows(data_dir / "good.jsonl", BIG_ROWS)
    bad = write_rows(data_dir / f"bad-{field}.jsonl", BIG_ROWS, bad_line=BIG_ROWS - 3)
    files = {"training_file": str(good), "validation_file": str(good), field: str(bad)}
    job = client.CreateFineTuningJob(pb.CreateFineTuningJobRequest(model=str(tiny_model_dir), **files))
    assert job.status == pb.JOB_STATUS_VALIDATING_FILES

    failed = _wait_for(store, job.id, JobStatus.FAILED, JobStatus.QUEUED)
    assert failed.status is JobStatus.FAILED
    assert failed.error.code == f"invalid_{field}"
    assert f"bad-{field}.jsonl line {BIG_ROWS - 3}, field messages[0].role" in failed.error.message
    got = client.GetFineTuningJob(pb.GetFineTuningJobRequest(id=job.id))
    assert got.status == pb.JOB_STATUS_FAILED and got.error.code == f"invalid_{field}"


def test_a_good_big_file_is_queued_and_a_restart_picks_up_jobs_left_validating(tmp_path: Path, data_dir: Path,
                                                                               tiny_model_dir: Path) -> None:
    store = JobStore(tmp_path / "jobs.sqlite3")
    good = write_rows(data_dir / "good.jsonl", BIG_ROWS)
    spec = JobSpec(str(tiny_model_dir), str(good), hyperparameters=Hyperparameters(max_steps=1))
    job = JobService(store).create(spec)  # no validator running: as if the trainer stopped right after Create
    assert job.status is JobStatus.VALIDATING_FILES

    validator = DatasetValidator(store, poll_interval_s=0.05)  # the next trainer process
    validator.start()
    try:
        queued = _wait_for(store, job.id, JobStatus.QUEUED, JobStatus.FAILED)
    finally:
        validator.stop()
    assert queued.status is JobStatus.QUEUED, queued.error
    messages = [e.message for e in store.events_after(job.id)]
    assert f"files validated: training_file {BIG_ROWS:,} records" in messages
    store.close()


def test_an_epoch_order_costs_the_same_per_micro_batch_at_a_million_rows_as_at_a_thousand() -> None:
    from trainer_service.worker.train import batch_indices

    hyper = Hyperparameters(batch_size=8, seed=11)

    def per_call_s(rows: int) -> float:
        batch_indices(0, 0, hyper, rows)  # the epoch's permutation, once
        best = float("inf")
        for _ in range(5):
            started = time.perf_counter()
            for step in range(200):
                batch_indices(step, 0, hyper, rows)
            best = min(best, (time.perf_counter() - started) / 200)
        return best

    small, large = per_call_s(1_000), per_call_s(MILLION)
    assert large < 3 * small + 20e-6, f"{large * 1e6:.1f} us per call at 1M rows, {small * 1e6:.1f} us at 1k"
    first = time.perf_counter()
    batch_indices(0, 0, Hyperparameters(batch_size=8, seed=12), MILLION)
    assert time.perf_counter() - first < 1.0
    order = [i for step in range(MILLION // 8) for i in batch_indices(step, 0, hyper, MILLION)][:MILLION]
    assert sorted(order[:1000]) != list(range(1000)) and len(set(order)) == MILLION  # an epoch: a permutation


def _uploaded(files, name: str, content: bytes):
    """Through the Files API's own upload path (begin, write, finish); returns the committed StoredFile."""
    import hashlib

    from trainer_service.files import UploadMetadata

    upload = files.begin_upload(UploadMetadata(name, "fine-tune", hashlib.sha256(content).hexdigest(), len(content)))
    upload.write(content)
    return files.finish_upload(upload)


def _archive(data_dir: Path, rows: list[str]) -> bytes:
    """A .tar.gz of a conversation JSONL and the images it names, as a client would pack its dataset."""
    import io
    import tarfile

    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        body = "".join(rows).encode()
        info = tarfile.TarInfo("train.jsonl")
        info.size = len(body)
        tar.addfile(info, io.BytesIO(body))
        for image in sorted((data_dir / "images").iterdir()):
            tar.add(image, arcname=f"images/{image.name}")
    return buffer.getvalue()


def test_a_file_id_resolves_to_its_stored_dataset_processed_skips_validation_error_is_refused(
        tmp_path: Path, data_dir: Path, tiny_model_dir: Path) -> None:
    from trainer_service.errors import InvalidArgumentError
    from trainer_service.files import ArchiveLimits, FileLimits, FileService
    from trainer_service.job_spec import dataset_sources

    store = JobStore(tmp_path / "jobs.sqlite3")
    files = FileService(tmp_path / "files", store, FileLimits(1 << 30, ArchiveLimits(1 << 30, 1000, 100.0)))
    jobs = JobService(store, files=files)
    image = sorted((data_dir / "images").iterdir())[0].name
    rows = [json.dumps(_record(f"images/{image}", f"question {i}", f"answer {i}")) + "\n" for i in range(40)]
    good = _uploaded(files, "shapes.tar.gz", _archive(data_dir, rows))
    bad = _uploaded(files, "broken.tar.gz", _archive(data_dir, rows[:5] + [rows[5].replace('"user"', '"robot"')]))
    deadline = time.monotonic() + 30
    while {files.get(f.id).status for f in (good, bad)} & {"uploaded"}:
        assert time.monotonic() < deadline, "upload validation never ended"
        time.sleep(0.05)
    assert (files.get(good.id).status, files.get(bad.id).status) == ("processed", "error")

    job = jobs.create(JobSpec(str(tiny_model_dir), good.id, test_file=good.id))
    assert job.status is JobStatus.QUEUED  # validated once, at upload
    assert job.spec["training_file"] == good.id  # what the client sent, shown back
    sources = dataset_sources(job.spec)
    assert Path(sources["training_file"].path) == files.get(good.id).dataset_path == Path(sources["test_file"].path)
    with pytest.raises(InvalidArgumentError) as refused:
        jobs.create(JobSpec(str(tiny_model_dir), good.id, validation_file=bad.id))
    assert refused.value.field == "validation_file"
    assert "line 6, field messages[0].role" in str(refused.value)  # the upload's own validation error
    with pytest.raises(InvalidArgumentError, match="training_file: no file 'file-0123456789abcdef01234567'"):
        jobs.create(JobSpec(str(tiny_model_dir), "file-0123456789abcdef01234567"))
    files.close()
    store.close()
