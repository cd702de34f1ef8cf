"""vlmforge.client against a real trainer gRPC server on port 0: typed dataclasses and errors, paging, events
that reconnect across a drained-and-restarted trainer without losing or repeating an event, the async variant,
and (with the Files API) a directory upload that resumes after a broken TCP connection."""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import os
import shutil
import socket
import threading
import time
from pathlib import Path

import grpc
import pytest

from trainer_service.domain import JobStatus
from trainer_service.files import ArchiveLimits, FileLimits, FileService
from trainer_service.grpc_api.server import create_server
from trainer_service.jobs import JobService
from trainer_service.store import JobStore
from vlmforge.client import (
    AsyncTrainer,
    DataLossError,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    Trainer,
    types,
)
from vlmforge.client._artifacts import receive_artifacts
from vlmforge.client._sources import source_for
from vlmforge.trainer.v1 import files_pb2 as fpb

# The test restarts the trainer on the same port: let the channel retry the connection quickly.
FAST_RECONNECT = (("grpc.initial_reconnect_backoff_ms", 50), ("grpc.min_reconnect_backoff_ms", 50),
                  ("grpc.max_reconnect_backoff_ms", 200))


def _serve(store: JobStore, address: str):
    running = create_server(JobService(store, watch_poll_interval_s=0.05), address,
                            max_message_bytes=8 * 1024 * 1024)
    running.set_serving(True)
    return running


@pytest.fixture()
def store(tmp_path: Path) -> JobStore:
    return JobStore(tmp_path / "jobs.sqlite3")


@pytest.fixture()
def server(store):
    running = _serve(store, "127.0.0.1:0")
    yield running
    running.server.stop(None)


@pytest.fixture()
def client(server):
    with Trainer(f"127.0.0.1:{server.port}", options=FAST_RECONNECT) as client:
        yield client


@pytest.fixture()
def job_fields(tiny_model_dir: Path, small_dataset_dir: Path) -> dict:
    return {"model": str(tiny_model_dir), "training_file": str(small_dataset_dir / "train.jsonl"),
            "suffix": "client"}


def test_jobs_come_back_as_dataclasses_and_list_walks_every_page(client, job_fields) -> None:
    created = [client.jobs.create(**job_fields, hyperparameters={"learning_rate": 1e-3, "warmup_ratio": 0.1},
                                  metadata={"run": str(i)}) for i in range(3)]
    job = created[0]
    assert isinstance(job, types.FineTuningJob) and job.status == "queued" and job.method == "lora"
    assert job.hyperparameters.learning_rate == 1e-3 and job.hyperparameters.warmup_ratio == 0.1
    assert job.hyperparameters.lora_rank == 16  # the trainer's default, as used
    assert job.created_at is not None and job.created_at.tzinfo is not None and job.error is None
    assert client.jobs.retrieve(job.id) == job
    assert [j.id for j in client.jobs.list(page_size=2)] == [j.id for j in reversed(created)]
    assert [j.id for j in client.jobs.list(statuses=["running"])] == []

    cancelled = client.jobs.cancel(job.id)
    assert cancelled.status == "cancelled" and cancelled.done and cancelled.finished_at is not None
    assert client.jobs.checkpoints(job.id) == []
    seen: list[types.JobEvent] = []
    assert client.jobs.wait(job.id, on_event=seen.append) == cancelled
    assert [e.type for e in seen][-1] == "status_changed" and seen[-1].data == types.StatusChanged("cancelled", None)


def test_errors_are_typed_with_the_grpc_code_and_the_trainers_details(client, job_fields) -> None:
    with pytest.raises(NotFoundError) as missing:
        client.jobs.retrieve("ftjob-missing")
    assert missing.value.code == grpc.StatusCode.NOT_FOUND and "ftjob-missing" in missing.value.details
    with pytest.raises(InvalidArgumentError) as invalid:
        client.jobs.create(**job_fields, hyperparameters=types.Hyperparameters(warmup_steps=3, warmup_ratio=0.1))
    assert invalid.value.details.startswith("hyperparameters.warmup_ratio:")
    assert str(invalid.value).startswith("INVALID_ARGUMENT: hyperparameters.warmup_ratio")
    job = client.jobs.create(**job_fields)
    client.jobs.cancel(job.id)
    with pytest.raises(FailedPreconditionError, match="cancelled"):
        client.jobs.cancel(job.id)
    with pytest.raises(NotFoundError):
        list(client.jobs.events("ftjob-missing"))
    with pytest.raises(ValueError, match="n_epochs"):  # caught here, before any call
        client.jobs.create(**job_fields, hyperparameters={"n_epochs": 3})
    with pytest.raises(ValueError, match="hyperparameters.epochs: 'three' must be a whole number"):
        client.jobs.create(**job_fields, hyperparameters={"epochs": "three"})


def test_events_resume_after_a_drain_and_a_restart_without_gaps_or_repeats(store, job_fields) -> None:
    first = _serve(store, "127.0.0.1:0")
    port = first.port
    with Trainer(f"127.0.0.1:{port}", options=FAST_RECONNECT) as client, \
            concurrent.futures.ThreadPoolExecutor(1) as pool:
        job = client.jobs.create(**job_fields)
        events = client.jobs.events(job.id, reconnect_timeout_s=30)
        seen = [next(events)]
        store.append_event(job.id, "log", "before the drain")
        seen.append(next(events))
        rest = pool.submit(list, events)  # blocks on the open stream
        first.drain(grace_s=1.0)
        store.append_event(job.id, "log", "while no trainer listens")
        time.sleep(0.5)  # the client retries against a closed port meanwhile
        assert not rest.done()
        second = _serve(store, f"127.0.0.1:{port}")
        try:
            store.append_event(job.id, "log", "after the restart")
            JobService(store).cancel(job.id)  # the trainer's side: the job ends, its stream with it
            seen += rest.result(timeout=30)
        finally:
            second.server.stop(None)
    assert [e.sequence for e in seen] == list(range(1, len(seen) + 1)) and len(seen) == 5
    assert [e.message for e in seen[1:4]] == ["before the drain", "while no trainer listens", "after the restart"]
    assert seen[-1].type == "status_changed" and seen[-1].data.status == "cancelled"


def test_async_events_resume_after_a_drain_and_a_restart(store, job_fields) -> None:
    first = _serve(store, "127.0.0.1:0")
    address = f"127.0.0.1:{first.port}"

    async def scenario() -> list[types.JobEvent]:
        async with AsyncTrainer(address, options=FAST_RECONNECT) as client:
            job = await client.jobs.create(**job_fields)
            events = client.jobs.events(job.id, reconnect_timeout_s=30)
            seen = [await anext(events)]
            rest = asyncio.create_task(_collect(events))
            await asyncio.to_thread(first.drain, 1.0)
            store.append_event(job.id, "log", "while no trainer listens")
            await asyncio.sleep(0.5)
            assert not rest.done()
            second = await asyncio.to_thread(_serve, store, address)
            try:
                JobService(store).cancel(job.id)
                return seen + await asyncio.wait_for(rest, 30)
            finally:
                second.server.stop(None)

    seen = asyncio.run(scenario())
    assert [e.sequence for e in seen] == [1, 2, 3] and seen[1].message == "while no trainer listens"
    assert seen[-1].data.status == "cancelled"


async def _collect(events) -> list[types.JobEvent]:
    return [event async for event in events]


def test_events_without_follow_return_what_is_recorded(client, job_fields, store) -> None:
    job = client.jobs.create(**job_fields)
    store.append_event(job.id, "log", "one")
    started = time.monotonic()
    recorded = list(client.jobs.events(job.id, follow=False, replay_timeout_s=0.5))
    assert [e.message for e in recorded][-1] == "one" and time.monotonic() - started < 5
    assert list(client.jobs.events(job.id, after_sequence=recorded[-1].sequence, follow=False,
                                   replay_timeout_s=0.3)) == []


def test_async_trainer_retrieves_and_follows_events(server, job_fields) -> None:
    async def scenario() -> tuple[types.FineTuningJob, list[types.JobEvent]]:
        async with AsyncTrainer(f"127.0.0.1:{server.port}") as client:
            job = await client.jobs.create(**job_fields)
            await client.jobs.cancel(job.id)
            with pytest.raises(NotFoundError):
                await client.jobs.retrieve("ftjob-missing")
            listed = [j.id async for j in client.jobs.list(page_size=1)]
            assert listed == [job.id]
            return await client.jobs.retrieve(job.id), [e async for e in client.jobs.events(job.id)]

    job, events = asyncio.run(scenario())
    assert job.status == "cancelled"
    assert [e.sequence for e in events] == [1, 2] and events[-1].data.status == "cancelled"


# --- Files API: uploads (resumed over a connection that is cut), files, artifact download ---

MAX_UPLOAD_BYTES = 64 * 1024 * 1024
CHUNK_BYTES = 1024 * 1024
PADDING_BYTES = 6 * 1024 * 1024


class _CuttingProxy:
    """Forwards loopback TCP to the trainer; the first connection is cut (both ways, at once) once the client
    has sent `cut_after_bytes` through it, as a dropped network link would. Later connections pass whole."""

    def __init__(self, target_port: int, cut_after_bytes: int):
        self.target_port, self.cut_after_bytes = target_port, cut_after_bytes
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.connections = 0
        self.cut = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                downstream, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            limit = self.cut_after_bytes if self.connections == 0 else None
            self.connections += 1
            threading.Thread(target=self._pump, args=(downstream, upstream, limit), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, downstream, None), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, limit: int | None) -> None:
        sent = 0
        try:
            while data := source.recv(65536):
                sink.sendall(data)
                sent += len(data)
                if limit is not None and sent >= limit:
                    self.cut.set()
                    break
        except OSError:
            pass
        for end in (source, sink):
            try:
                end.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            end.close()

    def close(self) -> None:
        self.listener.close()


@pytest.fixture()
def files_server(store, tmp_path: Path):
    files = FileService(tmp_path / "files", store, FileLimits(MAX_UPLOAD_BYTES, ArchiveLimits(
        max_extracted_bytes=MAX_UPLOAD_BYTES, max_members=1000, max_compression_ratio=50.0)))
    running = create_server(JobService(store, watch_poll_interval_s=0.05, files=files), "127.0.0.1:0",
                            max_message_bytes=4 * 1024 * 1024, files=files)
    running.set_serving(True)
    yield running, files
    running.server.stop(None)
    files.close()


@pytest.fixture()
def dataset_dir(small_dataset_dir: Path, tmp_path: Path) -> Path:
    """A directory as a user has it: one train.jsonl, its images, and some incompressible bulk."""
    directory = tmp_path / "my_dataset"
    directory.mkdir()
    shutil.copy(small_dataset_dir / "train.jsonl", directory / "train.jsonl")
    shutil.copytree(small_dataset_dir / "images" / "train", directory / "images" / "train")
    (directory / "images" / "padding.bin").write_bytes(os.urandom(PADDING_BYTES))
    return directory


def test_a_directory_upload_resumes_after_the_connection_is_cut(files_server, dataset_dir, job_fields) -> None:
    running, files = files_server
    proxy = _CuttingProxy(running.port, cut_after_bytes=3 * 1024 * 1024)
    updates: list[types.UploadProgress] = []
    try:
        with Trainer(f"127.0.0.1:{proxy.port}", options=FAST_RECONNECT) as client:
            uploaded = client.files.upload(dataset_dir, progress=updates.append, chunk_bytes=CHUNK_BYTES)
            assert proxy.cut.is_set() and proxy.connections >= 2
            resumed_from = {u.resumed_from for u in updates}
            assert 0 in resumed_from and max(resumed_from) > 0, "the second stream did not resume"
            assert updates[-1].sent_bytes == updates[-1].total_bytes == uploaded.bytes

            source = source_for(dataset_dir)
            assert (uploaded.filename, uploaded.sha256, uploaded.bytes) == ("my_dataset.tar", source.sha256,
                                                                             source.size)
            stored = files.content_path(files.get(uploaded.id)).read_bytes()
            assert hashlib.sha256(stored).hexdigest() == source.sha256  # byte for byte what the client tarred

            processed = client.files.wait_for_processing(uploaded.id, poll_interval_s=0.1, timeout_s=60)
            assert processed.status == "processed" and processed.record_count == 48, processed.status_details
            assert [f.id for f in client.files.list()] == [uploaded.id]
            again: list[types.UploadProgress] = []
            assert client.files.upload(dataset_dir, progress=again.append).id == uploaded.id
            assert [u.resumed_from for u in again] == [uploaded.bytes]  # stored already: nothing sent

            job = client.jobs.create(**{**job_fields, "training_file": uploaded})
            assert job.training_file == uploaded.id
            with pytest.raises(FailedPreconditionError, match=job.id):
                client.files.delete(uploaded.id)
            client.jobs.cancel(job.id)
            assert client.files.delete(uploaded.id) == types.FileDeleted(uploaded.id, True)
            with pytest.raises(NotFoundError):
                client.files.retrieve(uploaded.id)
    finally:
        proxy.close()


def _succeeded_job(client: Trainer, store: JobStore, job_fields: dict, artifacts: Path) -> str:
    """A job moved to SUCCEEDED on the trainer's store, its artifacts written as the worker lays them out."""
    (artifacts / "adapter").mkdir(parents=True)
    (artifacts / "adapter" / "adapter_config.json").write_text('{"peft_type": "LORA", "r": 4}')
    (artifacts / "adapter" / "adapter_model.safetensors").write_bytes(os.urandom(3 * 1024 * 1024 + 5))
    (artifacts / "merged").mkdir()
    (artifacts / "merged" / "config.json").write_text("{}")
    job = client.jobs.create(**job_fields)
    deadline = time.monotonic() + 30
    while client.jobs.retrieve(job.id).status != "queued":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    store.transition(job.id, JobStatus.RUNNING, "running")
    store.transition(job.id, JobStatus.SUCCEEDED, "succeeded", result={
        "adapter_path": str(artifacts / "adapter"), "merged_model_path": str(artifacts / "merged")})
    return job.id


def test_download_adapter_verifies_and_unpacks_the_artifacts(files_server, store, job_fields, tmp_path) -> None:
    running, _ = files_server
    with Trainer(f"127.0.0.1:{running.port}") as client:
        job_id = _succeeded_job(client, store, job_fields, tmp_path / "artifacts")
        received: list[int] = []
        downloaded = client.jobs.download_adapter(job_id, tmp_path / "out", progress=received.append)
        adapter = Path(downloaded.adapter_path)
        assert (adapter / "adapter_model.safetensors").read_bytes() == \
            (tmp_path / "artifacts" / "adapter" / "adapter_model.safetensors").read_bytes()
        assert downloaded.merged_model_path == "" and not (tmp_path / "out" / "merged_model").exists()
        assert received[-1] == downloaded.bytes and len(downloaded.sha256) == 64
        merged = client.jobs.download_adapter(job_id, tmp_path / "both", merged=True)
        assert (Path(merged.merged_model_path) / "config.json").read_text() == "{}"
        with pytest.raises(FileExistsError):
            client.jobs.download_adapter(job_id, tmp_path / "both")
        queued = client.jobs.create(**job_fields)
        with pytest.raises(FailedPreconditionError, match="only a succeeded job"):
            client.jobs.download_adapter(queued.id, tmp_path / "never")
        assert not (tmp_path / "never").exists()


def test_an_artifact_stream_whose_digest_differs_is_refused_and_nothing_is_unpacked(tmp_path) -> None:
    chunks = [fpb.ArtifactChunk(data=b"x" * 1024),
              fpb.ArtifactChunk(digest=fpb.ArtifactDigest(sha256=hashlib.sha256(b"y" * 1024).hexdigest(),
                                                          bytes=1024))]
    with pytest.raises(DataLossError, match="sha256"):
        receive_artifacts(iter(chunks), tmp_path / "out", merged=False, progress=None)
    with pytest.raises(DataLossError, match="ended before"):
        receive_artifacts(iter(chunks[:1]), tmp_path / "out", merged=False, progress=None)
    assert sorted(p.name for p in tmp_path.iterdir()) == []
