"""The trainer under a team's load: N clients following running jobs with WatchFineTuningJob, M concurrent
CreateFineTuningJob calls, a paging ListFineTuningJobs client and a Get / health prober, all at once against the
real trainer service (a subprocess on loopback, local launcher, real tiny-model jobs). Prints create / get / list /
health latency p50 and p99, events delivered per second, stream completeness (every watcher got every event of
its job, in order, no gap) and the trainer's RSS and thread count before and under load.

    .venv/bin/python bench/trainer_load.py --model MODEL_DIR --data-dir DATA_DIR [--watchers 1000 --creates 200]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import re
import statistics
import tempfile
import time
from pathlib import Path

import grpc
import psutil
from grpc_health.v1 import health_pb2, health_pb2_grpc

from vlmforge.processes import start_and_wait, stop
from vlmforge.trainer.v1 import trainer_pb2 as pb
from vlmforge.trainer.v1 import trainer_pb2_grpc

READY = re.compile(rb"trainer listening on 127\.0\.0\.1:(\d+)")
CHANNELS = 8  # watchers spread over a few HTTP/2 connections, as several client machines would


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--watchers", type=int, default=1000)
    parser.add_argument("--watched-jobs", type=int, default=2, help="jobs the watchers follow (run one by one)")
    parser.add_argument("--creates", type=int, default=200)
    parser.add_argument("--steps", type=int, default=40, help="training steps of each watched job")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as state_dir:
        process, ready = start_and_wait(
            ["-m", "trainer_service", "--grpc-port", "0", "--metrics-port", "0", "--state-dir", state_dir,
             "--max-streams-per-client", str(args.watchers + 100), "--watch-poll-interval-s", "0.2"],
            Path(state_dir) / "trainer.log", READY, timeout_s=120)
        try:
            report = asyncio.run(_run(int(ready.group(1)), psutil.Process(process.pid), args))
        finally:
            exit_code = stop(process)
    _print(report, args, exit_code)


def _request(args, **fields) -> pb.CreateFineTuningJobRequest:
    return pb.CreateFineTuningJobRequest(model=str(args.model), training_file=str(args.data_dir / "train.jsonl"),
                                         **fields)


async def _timed(latencies: list[float], call):
    started = time.perf_counter()
    result = await call
    latencies.append(time.perf_counter() - started)
    return result


async def _watch(stub, job_id: str, received: list[int]) -> list[int]:
    sequences = []
    async for event in stub.WatchFineTuningJob(pb.WatchFineTuningJobRequest(id=job_id), timeout=1800):
        sequences.append(event.sequence)
        received.append(1)
    return sequences


async def _run(port: int, trainer: psutil.Process, args) -> dict:
    channels = [grpc.aio.insecure_channel(f"127.0.0.1:{port}") for _ in range(CHANNELS)]
    stubs = [trainer_pb2_grpc.FineTuningServiceStub(channel) for channel in channels]
    health = health_pb2_grpc.HealthStub(channels[0])
    hyper = pb.Hyperparameters(max_steps=args.steps, batch_size=2, checkpoint_every_steps=1000)
    watched = [await stubs[0].CreateFineTuningJob(_request(args, hyperparameters=hyper)) for _ in
               range(args.watched_jobs)]
    before = {"rss_mib": trainer.memory_info().rss / 2**20, "threads": trainer.num_threads()}
    received: list[int] = []
    started = time.perf_counter()
    watches = [asyncio.create_task(_watch(stubs[n % CHANNELS], watched[n % len(watched)].id, received))
               for n in range(args.watchers)]
    latencies = {"create": [], "get": [], "list": [], "health": []}
    samples = []

    async def probe() -> None:
        while not all(watch.done() for watch in watches):
            await _timed(latencies["get"], stubs[1].GetFineTuningJob(pb.GetFineTuningJobRequest(id=watched[0].id)))
            await _timed(latencies["health"], health.Check(health_pb2.HealthCheckRequest()))
            samples.append((trainer.memory_info().rss / 2**20, trainer.num_threads()))
            await asyncio.sleep(0.05)

    async def page_through_jobs() -> None:
        while not all(watch.done() for watch in watches):
            token = None
            while token != "":
                page = await _timed(latencies["list"], stubs[2].ListFineTuningJobs(
                    pb.ListFineTuningJobsRequest(page_size=50, page_token=token or "")))
                token = page.next_page_token
            await asyncio.sleep(0.1)

    background = [asyncio.create_task(probe()), asyncio.create_task(page_through_jobs())]
    await asyncio.sleep(1.0)  # the streams are open
    created = await asyncio.gather(*(_timed(latencies["create"], stubs[n % CHANNELS].CreateFineTuningJob(
        _request(args, client_request_id=f"load-{n}", hyperparameters=pb.Hyperparameters(max_steps=1)),
        timeout=60)) for n in range(args.creates)))
    sequences = await asyncio.gather(*watches)
    elapsed = time.perf_counter() - started
    await asyncio.gather(*background)
    for job in created:  # the queue of small jobs is not part of the measurement
        try:
            await stubs[0].CancelFineTuningJob(pb.CancelFineTuningJobRequest(id=job.id))
        except grpc.RpcError:
            pass
    references = {job.id: [e.sequence async for e in stubs[0].WatchFineTuningJob(
        pb.WatchFineTuningJobRequest(id=job.id))] for job in watched}
    complete = sum(got == references[watched[n % len(watched)].id] for n, got in enumerate(sequences))
    for channel in channels:
        await channel.close()
    return {"latencies": latencies, "complete": complete, "events": len(received), "elapsed_s": elapsed,
            "before": before, "peak_rss_mib": max(s[0] for s in samples), "peak_threads": max(s[1] for s in samples),
            "events_per_job": {job_id: len(seq) for job_id, seq in references.items()}}


def _pct(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100)[q - 1] * 1000 if len(values) > 1 else values[0] * 1000


def _print(report: dict, args, exit_code: int) -> None:
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
          f"grpcio {grpc.__version__}")
    print(f"{args.watchers} watchers on {args.watched_jobs} running jobs ({args.steps} steps each), "
          f"{args.creates} concurrent creates, a paging lister, a Get + health prober")
    print("| call | calls | p50 ms | p99 ms |\n|---|---|---|---|")
    for name, values in report["latencies"].items():
        print(f"| {name} | {len(values)} | {_pct(values, 50):.1f} | {_pct(values, 99):.1f} |")
    print(f"streams complete (every event, in order, no gap): {report['complete']} / {args.watchers}")
    print(f"events delivered: {report['events']} in {report['elapsed_s']:.1f} s = "
          f"{report['events'] / report['elapsed_s']:.0f} events/s (events per job: {report['events_per_job']})")
    print(f"trainer RSS {report['before']['rss_mib']:.0f} MiB before, {report['peak_rss_mib']:.0f} MiB peak; "
          f"threads {report['before']['threads']} before, {report['peak_threads']} peak")
    print(f"trainer exit code after SIGTERM: {exit_code}")


if __name__ == "__main__":
    main()
