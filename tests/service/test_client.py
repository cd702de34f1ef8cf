"""vlmforge.client against a real trainer gRPC server on port 0: typed dataclasses and errors, paging, events
that reconnect across a drained-and-restarted trainer without losing or repeating an event, the async variant,
and (with the Files API) a directory upload that resumes after a broken TCP connection."""

from __future__ import annotations

import asyncio
import concurrent.futures
import time
from pathlib import Path

import grpc
import pytest

from trainer_service.grpc_api.server import create_server
from trainer_service.jobs import JobService
from trainer_service.store import JobStore
from vlmforge.client import (
    AsyncTrainer,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    Trainer,
    types,
)

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
