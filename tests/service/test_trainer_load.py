"""The trainer's gRPC server under its own watchers: a real server on port 0 in this process, called from grpc.aio
clients (so the client side adds no thread per stream). Events come from a second JobStore connection to the
same SQLite file, the way a worker process writes them, so they reach the streams through the event hub's
polling path. Stream limits and drain are checked on the same server."""

from __future__ import annotations

import asyncio
import statistics
import threading
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from trainer_service.domain import JobStatus
from trainer_service.grpc_api.server import ServerLimits, create_server
from trainer_service.job_spec import Hyperparameters, JobSpec
from trainer_service.jobs import JobService
from trainer_service.store import JobStore
from vlmforge.trainer.v1 import trainer_pb2 as pb
from vlmforge.trainer.v1 import trainer_pb2_grpc

WATCHED_JOBS, WATCHERS_PER_JOB, PROGRESS_EVENTS, CREATES = 10, 20, 30, 100
LIMITS = ServerLimits(blocking_workers=8, create_workers=4)
MAX_CREATE_P99_S = 2.5
# The probe is one Get and one health check in a loop, ~100 of each: their p99 is the second-worst sample, which
# two pauses of a shared 2-core machine set. Queued behind Creates, most of them would be slow, not a few.
SLOW_PROBE_S, MAX_SLOW_PROBES = 0.4, 3


@pytest.fixture()
def served(tmp_path: Path):
    store = JobStore(tmp_path / "jobs.sqlite3")
    jobs = JobService(store, watch_poll_interval_s=0.05)
    running = create_server(jobs, "127.0.0.1:0", max_message_bytes=4 * 1024 * 1024, limits=LIMITS)
    running.set_serving(True)
    yield running, jobs
    running.server.stop(None)


def _p99(values: list[float]) -> float:
    return statistics.quantiles(values, n=100)[98] if len(values) > 1 else values[0]


def _write_job_events(database: Path, job_ids: list[str], stop: threading.Event) -> None:
    """What workers do: RUNNING, a progress event per step, SUCCEEDED, through their own connection."""
    worker_store = JobStore(database)
    for job_id in job_ids:
        worker_store.transition(job_id, JobStatus.RUNNING, "running")
    for step in range(1, PROGRESS_EVENTS + 1):
        for job_id in job_ids:
            worker_store.record_progress(job_id, step, PROGRESS_EVENTS, f"step {step}", {"step": step})
        if stop.wait(0.1):  # a step every 0.1 s per job: faster than the tiny model trains on a CPU
            return
    for job_id in job_ids:
        worker_store.transition(job_id, JobStatus.SUCCEEDED, "done")
    worker_store.close()


async def _watch(stub, job_id: str) -> list[int]:
    return [event.sequence async for event in stub.WatchFineTuningJob(pb.WatchFineTuningJobRequest(id=job_id),
                                                                       timeout=120)]


async def _timed(latencies: list[float], call) -> None:
    started = time.perf_counter()
    await call
    latencies.append(time.perf_counter() - started)


async def _load(port: int, job_ids: list[str], create_request, database: Path) -> dict:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = trainer_pb2_grpc.FineTuningServiceStub(channel)
        health = health_pb2_grpc.HealthStub(channel)
        threads_at_start = threading.active_count()
        watches = [asyncio.create_task(_watch(stub, job_id)) for job_id in job_ids for _ in range(WATCHERS_PER_JOB)]
        stop = threading.Event()
        writer = threading.Thread(target=_write_job_events, args=(database, job_ids, stop))
        creates, gets, health_checks, threads = [], [], [], []

        async def probe() -> None:  # one caller polling Get and health while everything else runs
            while not all(watch.done() for watch in watches):
                await _timed(gets, stub.GetFineTuningJob(pb.GetFineTuningJobRequest(id=job_ids[0]), timeout=10))
                await _timed(health_checks, health.Check(health_pb2.HealthCheckRequest(), timeout=10))
                threads.append(threading.active_count())
                await asyncio.sleep(0.02)

        await asyncio.sleep(0.5)  # every stream open
        writer.start()
        probing = asyncio.create_task(probe())
        await asyncio.gather(*(_timed(creates, stub.CreateFineTuningJob(create_request(f"load-{n}"), timeout=30))
                               for n in range(CREATES)))
        try:
            sequences = await asyncio.wait_for(asyncio.gather(*watches), timeout=120)
        finally:
            stop.set()
            writer.join()
        await probing
    return {"sequences": sequences, "creates": creates, "gets": gets, "health": health_checks,
            "threads_at_start": threads_at_start, "threads_peak": max(threads)}


def test_200_watchers_and_100_creates_every_event_in_order_latencies_bounded_threads_flat(
        served, tiny_model_dir: Path, small_dataset_dir: Path, tmp_path: Path) -> None:
    running, jobs = served

    def create_request(request_id: str) -> pb.CreateFineTuningJobRequest:
        return pb.CreateFineTuningJobRequest(model=str(tiny_model_dir), client_request_id=request_id,
                                             training_file=str(small_dataset_dir / "train.jsonl"))

    spec = JobSpec(str(tiny_model_dir), str(small_dataset_dir / "train.jsonl"), hyperparameters=Hyperparameters())
    job_ids = [jobs.create(spec).id for _ in range(WATCHED_JOBS)]
    result = asyncio.run(_load(running.port, job_ids, create_request, tmp_path / "jobs.sqlite3"))

    expected = list(range(1, PROGRESS_EVENTS + 4))  # created, running, every step, succeeded
    assert all(sequences == expected for sequences in result["sequences"]), "every event, in order, no gap"
    assert len(result["sequences"]) == WATCHED_JOBS * WATCHERS_PER_JOB
    # Bounds for a shared 2-core CI machine, where 100 creates at once measured 0.6-1.3 s at the 99th percentile
    # and a health check once 229 ms: a Get or a health check queued behind Creates would take seconds. Issue 16's
    # targets (create p99 < 1 s, get / health < 100 ms) are bench/trainer_load.py's to measure (BENCHMARKS.md).
    assert _p99(result["creates"]) < MAX_CREATE_P99_S, f"create p99 {_p99(result['creates']):.3f} s"
    for probe in ("gets", "health"):
        slow = sorted(round(latency, 3) for latency in result[probe] if latency > SLOW_PROBE_S)
        assert len(slow) <= MAX_SLOW_PROBES, (
            f"{probe}: {len(slow)} of {len(result[probe])} over {SLOW_PROBE_S} s: {slow}")
    grown = result["threads_peak"] - result["threads_at_start"]
    assert grown <= LIMITS.blocking_workers + LIMITS.create_workers + 1, f"{grown} threads more under load"
    assert len(jobs.list([JobStatus.QUEUED], 100, "")[0]) == 100, "every create made one job"


def test_a_burst_of_events_reaches_every_watcher_in_full(served, tiny_model_dir, small_dataset_dir) -> None:
    """Events every 2 ms, faster than 100 streams send them: those that arrive while a stream is sending must
    not be left waiting for a wake-up that already happened (the last ones above all)."""
    running, jobs = served
    job = jobs.create(JobSpec(str(tiny_model_dir), str(small_dataset_dir / "train.jsonl")))

    def write() -> None:
        writer = JobStore(jobs.store.path)  # a worker's own connection
        writer.transition(job.id, JobStatus.RUNNING, "running")
        for step in range(1, 101):
            writer.record_progress(job.id, step, 100, f"step {step}", {"step": step})
            time.sleep(0.002)
        writer.transition(job.id, JobStatus.SUCCEEDED, "done")

    async def watch_all() -> list[list[int]]:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            stub = trainer_pb2_grpc.FineTuningServiceStub(channel)
            watches = [asyncio.create_task(_watch(stub, job.id)) for _ in range(100)]
            await asyncio.sleep(0.3)
            writing = threading.Thread(target=write)
            writing.start()
            try:
                return await asyncio.wait_for(asyncio.gather(*watches), timeout=60)
            finally:
                writing.join()

    assert all(sequences == list(range(1, 104)) for sequences in asyncio.run(watch_all()))


def test_stream_limits_answer_resource_exhausted_naming_the_setting(tiny_model_dir, small_dataset_dir,
                                                                    tmp_path) -> None:
    jobs = JobService(JobStore(tmp_path / "jobs.sqlite3"), watch_poll_interval_s=0.05)
    running = create_server(jobs, "127.0.0.1:0", max_message_bytes=1 << 20,
                            limits=ServerLimits(max_streams_per_client=2, max_streams_total=3))
    job = jobs.create(JobSpec(str(tiny_model_dir), str(small_dataset_dir / "train.jsonl")))
    try:
        with grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            stub = trainer_pb2_grpc.FineTuningServiceStub(channel)
            open_streams = [stub.WatchFineTuningJob(pb.WatchFineTuningJobRequest(id=job.id)) for _ in range(2)]
            for stream in open_streams:
                next(stream)  # the creation event: the stream is open and counted
            with pytest.raises(grpc.RpcError) as refused:
                next(stub.WatchFineTuningJob(pb.WatchFineTuningJobRequest(id=job.id)))
            assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "--max-streams-per-client" in refused.value.details()
            for stream in open_streams:
                stream.cancel()
            _wait_for(lambda: running.stream_limits.open_streams == 0)
            again = stub.WatchFineTuningJob(pb.WatchFineTuningJobRequest(id=job.id))
            assert next(again).sequence == 1, "a closed stream gives its place back"
            again.cancel()
    finally:
        running.server.stop(None)


def test_drain_tells_open_streams_to_reconnect_from_their_last_event(served, tiny_model_dir, small_dataset_dir):
    running, jobs = served
    job = jobs.create(JobSpec(str(tiny_model_dir), str(small_dataset_dir / "train.jsonl")))
    jobs.store.transition(job.id, JobStatus.RUNNING, "running")
    with grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
        stream = trainer_pb2_grpc.FineTuningServiceStub(channel).WatchFineTuningJob(
            pb.WatchFineTuningJobRequest(id=job.id), timeout=30)
        assert [next(stream).sequence, next(stream).sequence] == [1, 2]
        drained = threading.Thread(target=running.drain, args=(5.0,))
        drained.start()
        with pytest.raises(grpc.RpcError) as ended:
            next(stream)
        drained.join(10)
    assert ended.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "after_sequence=2" in ended.value.details()
    assert not drained.is_alive(), "drain returns once the streams are closed, well inside the grace"


def _wait_for(condition, timeout_s: float = 10) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)
