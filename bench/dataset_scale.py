"""Dataset scale: the same job on 1k / 100k / 1M rows of a generated dataset of image paths (the rows share a
few hundred images). A real trainer gRPC server on port 0 in one process, with its background validator:

- Create latency p50 (and max) over a few creates of each size (each cancelled at once but the last);
- background validation rows/s, from Create to QUEUED (files up to 1 MiB are validated inside Create);
- samples/s of the same short job (tiny model, CPU, the real worker process; its fastest quarter of steps after
  two, and the median) relative to the first size, and the worker's peak RSS (it holds every row, never a decoded
  image);
- the worker's data path alone: dataset load rows/s, batch_indices and one micro-batch's collation per size;
- peak RSS of the serving process and of its validation children;
- upload MB/s of the largest file from a client process over loopback through the Files API.

    python bench/dataset_scale.py [--sizes 1000,100000,1000000] [--creates 5] [--steps 16] [--work-dir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

IMAGES = 300  # distinct image files the rows cycle over
TARGETS = "Create p50 < 200 ms at 1M rows; validation >= 50,000 rows/s; samples/s at 1M >= 0.9x of 1k; upload " \
          ">= 200 MB/s"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1000,100000,1000000")
    parser.add_argument("--creates", type=int, default=5)
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--work-dir", type=Path, default=None, help="keeps the images and tiny model between runs")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)  # internal: (prepare|measure|upload, JSON)
    args = parser.parse_args()
    if args.child:
        role, inputs = args.child
        roles = {"prepare": prepare, "measure": measure, "upload": upload, "data_cost": data_cost}
        print(json.dumps(roles[role](**json.loads(inputs))))
        return
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="dataset-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    # Each stage in a fresh process: Linux keeps a process's peak RSS across fork and exec, so a parent that built
    # the model would set the floor of every trainer, validator and worker figure below.
    prepared = _child("prepare", work=str(work), sizes=[int(size) for size in args.sizes.split(",")])
    _report(_child("measure", **prepared, state_dir=str(work / f"state-{time.time_ns()}"), creates=args.creates,
                   steps=args.steps, batch_size=args.batch_size))


def _child(role: str, **inputs) -> dict:
    done = subprocess.run([sys.executable, __file__, "--child", role, json.dumps(inputs)], check=True,
                          stdout=subprocess.PIPE, text=True)
    return json.loads(done.stdout.splitlines()[-1])


def prepare(work: str, sizes: list[int]) -> dict:
    data_dir, model_dir = _images_and_model(Path(work))
    return {"model_dir": str(model_dir), "files": [str(write_dataset(data_dir, rows)) for rows in sizes]}


def measure(model_dir: str, files: list[str], state_dir: str, creates: int, steps: int, batch_size: int) -> dict:
    state = Path(state_dir)
    rows_out = []
    with _Trainer(state) as trainer:
        for path in map(Path, files):
            rows_out.append({"rows": _rows(path), "mb": path.stat().st_size / 1e6,
                             **trainer.create_and_validate(Path(model_dir), path, creates, steps, batch_size)})
        # Children waited for so far: the validation processes only (each starts at this process's small peak).
        validator_rss_mib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        for row in rows_out:
            row.update(trainer.train(row.pop("job_id"), state))
        trainer_rss_mib = _peak_rss_mib()
        for row, path in zip(rows_out, files):
            row.update(_child("data_cost", model_dir=model_dir, path=path, batch_size=batch_size))
        upload = trainer.upload_mb_per_s(Path(max(files, key=lambda f: Path(f).stat().st_size)))
    return {"rows": rows_out, "validator_rss_mib": validator_rss_mib, "trainer_rss_mib": trainer_rss_mib,
            "upload": upload}


def _report(result: dict) -> None:
    rows = result["rows"]
    base = rows[0]["samples_per_s"]
    print(f"\n{TARGETS}\n")
    print("| rows | file MB | Create p50 ms | Create max ms | validated | validation rows/s | worker load rows/s "
          "| batch_indices us | micro-batch ms | worker samples/s (p25 step) | vs first | samples/s (median step) "
          "| worker peak RSS MiB | rows' process peak RSS MiB |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        rate = f"{r['validation_rows_per_s']:,.0f}" if r["validation_rows_per_s"] else "–"
        print(f"| {r['rows']:,} | {r['mb']:.0f} | {r['create_p50_ms']:.0f} | {r['create_max_ms']:.0f} | "
              f"{r['validation']} | {rate} | {r['load_rows_per_s']:,.0f} | {r['index_us']:.0f} | "
              f"{r['micro_batch_ms']:.1f} | {r['samples_per_s']:.1f} | {r['samples_per_s'] / base:.2f} | "
              f"{r['samples_per_s_median']:.1f} | {r['worker_rss_mib']:.0f} | {r['rows_rss_mib']:.0f} |")
    print(f"\ntrainer (the serving process) peak RSS {result['trainer_rss_mib']:.0f} MiB; its validation child "
          f"processes peak RSS {result['validator_rss_mib']:.0f} MiB")
    print(result["upload"])
    print(json.dumps(result))


def _rows(path: Path) -> int:
    with path.open("rb") as handle:
        return sum(1 for _ in handle)


def _images_and_model(work: Path) -> tuple[Path, Path]:
    """A few hundred generated images and the tiny model the tests build (both cached in `work`)."""
    import dataclasses

    from vlmforge.datagen import DatasetSpec, build_dataset
    from vlmforge.tiny_model.build import build_tiny_model
    from vlmforge.tiny_model.spec import TinyModelSpec

    spec = DatasetSpec(train_images=IMAGES, validation_images=8, test_images=8, pretrain_images=48)
    data_dir = build_dataset(work / "data", spec, workers=2)
    quick = dataclasses.replace(TinyModelSpec(), pretrain_steps=4, pretrain_warmup_steps=2, dataset=spec)
    return data_dir, build_tiny_model(work / "tiny-qwen2-vl", data_dir, quick)


def write_dataset(data_dir: Path, rows: int) -> Path:
    """`rows` lines of conversation JSONL, cycling over the dataset's own training records (and images)."""
    path = data_dir / f"scale-{rows}.jsonl"
    if path.exists() and sum(1 for _ in path.open("rb")) == rows:
        return path
    lines = (data_dir / "train.jsonl").read_text().splitlines(keepends=True)
    whole, rest = divmod(rows, len(lines))
    with path.open("w") as handle:
        block = "".join(lines)
        for _ in range(whole):
            handle.write(block)
        handle.write("".join(lines[:rest]))
    return path


class _Trainer:
    """The service's parts as `python -m trainer_service` wires them, on loopback."""

    def __init__(self, state_dir: Path):
        import grpc

        from trainer_service.grpc_api.server import create_server
        from trainer_service.jobs import JobService
        from trainer_service.store import JobStore
        from trainer_service.validation import DatasetValidator
        from vlmforge.trainer.v1 import trainer_pb2_grpc

        state_dir.mkdir(parents=True, exist_ok=True)
        self.store = JobStore(state_dir / "jobs.sqlite3")
        self.files = _file_service(state_dir, self.store)
        self.validator = DatasetValidator(self.store, files=self.files, poll_interval_s=0.02)
        self.validator.start()
        kwargs = {"files": self.files} if self.files is not None else {}
        self.jobs = JobService(self.store, **kwargs)
        self.running = create_server(self.jobs, "127.0.0.1:0", max_message_bytes=8 * 1024 * 1024, **kwargs)
        self.running.set_serving(True)
        self.channel = grpc.insecure_channel(f"127.0.0.1:{self.running.port}")
        self.client = trainer_pb2_grpc.FineTuningServiceStub(self.channel)

    def __enter__(self) -> _Trainer:
        return self

    def __exit__(self, *_) -> None:
        self.channel.close()
        self.running.server.stop(None)
        self.validator.stop()
        if self.files is not None:
            self.files.close()
        self.store.close()

    def create_and_validate(self, model_dir: Path, dataset: Path, creates: int, steps: int,
                            batch_size: int) -> dict:
        from trainer_service.domain import JobStatus
        from vlmforge.trainer.v1 import trainer_pb2 as pb

        hyper = pb.Hyperparameters(max_steps=steps, batch_size=batch_size, checkpoint_every_steps=10_000,
                                   learning_rate=1e-4)
        latencies_ms, job = [], None
        for index in range(creates + 1):  # the first one warms the channel and is not counted
            started = time.perf_counter()
            job = self.client.CreateFineTuningJob(pb.CreateFineTuningJobRequest(
                model=str(model_dir), training_file=str(dataset), hyperparameters=hyper))
            created = time.perf_counter()
            if index:
                latencies_ms.append((created - started) * 1000)
            if index < creates and job.status == pb.JOB_STATUS_VALIDATING_FILES:
                self.client.CancelFineTuningJob(pb.CancelFineTuningJobRequest(id=job.id))
        rows = _rows(dataset)
        inline = job.status == pb.JOB_STATUS_QUEUED
        while (status := self.store.get_job(job.id).status) is JobStatus.VALIDATING_FILES:
            time.sleep(0.01)
        validated_s = time.perf_counter() - created
        if status is not JobStatus.QUEUED:
            raise RuntimeError(f"validation ended {status.value}: {self.store.get_job(job.id).error}")
        return {"job_id": job.id, "create_p50_ms": statistics.median(latencies_ms),
                "create_max_ms": max(latencies_ms), "validation": "in Create" if inline else "background",
                "validation_rows_per_s": None if inline else rows / validated_s}

    def train(self, job_id: str, state_dir: Path) -> dict:
        """Runs the job in the worker process the local launcher would start; its peak RSS from wait4."""
        from trainer_service.domain import JobStatus
        from trainer_service.launcher import worker_command

        self.store.transition(job_id, JobStatus.RUNNING, "bench")
        command = worker_command(job_id, state_dir, state_dir / "artifacts", 1, database=self.store.path)
        with (state_dir / f"worker-{job_id}.log").open("wb") as log:
            process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                       env={**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")})
            _, status, usage = os.wait4(process.pid, 0)
            process.returncode = os.waitstatus_to_exitcode(status)
        job = self.store.get_job(job_id)
        if job.status is not JobStatus.SUCCEEDED:
            raise RuntimeError(f"job {job_id} ended {job.status.value}: {job.error} (see {log.name})")
        progress = [e.payload for e in self.store.events_after(job_id, 0, limit=100_000) if e.kind == "progress"]
        # Steps after the first two (warm-up): a short job's average is mostly its start. On a shared machine other
        # processes stretch some steps many times over, so the fastest quarter is the figure that compares sizes.
        steps_s = sorted(p["step_seconds"] for p in progress[2:])
        hyper = job.spec["hyperparameters"]
        samples_per_step = hyper["batch_size"] * hyper["gradient_accumulation_steps"]
        return {"samples_per_s": samples_per_step / steps_s[len(steps_s) // 4],
                "samples_per_s_median": samples_per_step / statistics.median(steps_s),
                "worker_rss_mib": usage.ru_maxrss / 1024}

    def upload_mb_per_s(self, path: Path) -> str:
        """The Files API's UploadFile from a client process over loopback, where this trainer serves it."""
        if self.files is None or not _serves(self.channel, "vlmforge.trainer.v1.FilesService"):
            return "upload: skipped, this trainer's server does not serve FilesService"
        sent = _child("upload", port=self.running.port, path=str(path))
        megabytes = sent["bytes"] / 1e6
        return (f"upload: {megabytes:.0f} MB in {sent['seconds']:.2f} s = {megabytes / sent['seconds']:.0f} MB/s from "
                f"a client process over loopback (4 MiB chunks, sha256 checked by the server, {sent['id']})")


def data_cost(model_dir: str, path: str, batch_size: int, micro_batches: int = 40) -> dict:
    """The worker's data path alone, in a process of its own: the dataset loaded as the worker loads it, then
    each micro-batch's indices (batch_indices) and its collation (images decoded, tokenized) timed."""
    from transformers import AutoProcessor

    from trainer_service.job_spec import Hyperparameters, JobSpec, load_job_dataset
    from trainer_service.worker.train import batch_indices
    from vlmforge.chat_format import ChatCollator
    from vlmforge.families import family_for_model_dir

    started = time.perf_counter()
    rows = load_job_dataset(JobSpec(model_dir, path), "training_file")
    load_s = time.perf_counter() - started
    collate = ChatCollator(AutoProcessor.from_pretrained(model_dir), family=family_for_model_dir(Path(model_dir)))
    hyper = Hyperparameters(batch_size=batch_size, seed=1)
    index_s, batch_s = [], []
    for step in range(micro_batches):
        started = time.perf_counter()
        indices = batch_indices(step, 0, hyper, len(rows))
        picked = time.perf_counter()
        collate([rows[i] for i in indices])
        index_s.append(picked - started)
        batch_s.append(time.perf_counter() - started)
    return {"load_s": load_s, "load_rows_per_s": len(rows) / load_s,
            "index_us": statistics.median(index_s[1:]) * 1e6, "micro_batch_ms": statistics.median(batch_s[1:]) * 1e3,
            "rows_rss_mib": _peak_rss_mib()}


def _peak_rss_mib() -> float:
    """This process's own peak (VmHWM starts again at exec, unlike getrusage's ru_maxrss)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def upload(port: int, path: str) -> dict:
    """The client side: the digest first (a client knows it before sending), then one timed UploadFile."""
    import hashlib

    import grpc

    from vlmforge.trainer.v1 import files_pb2, files_pb2_grpc

    chunk_bytes = 4 * 1024 * 1024
    digest, size = hashlib.sha256(), Path(path).stat().st_size
    with open(path, "rb") as handle:
        while piece := handle.read(chunk_bytes):
            digest.update(piece)

    def requests():
        yield files_pb2.UploadFileRequest(metadata=files_pb2.UploadFileMetadata(
            filename=Path(path).name, purpose=files_pb2.FILE_PURPOSE_FINE_TUNE, sha256=digest.hexdigest(), bytes=size))
        with open(path, "rb") as handle:
            while piece := handle.read(chunk_bytes):
                yield files_pb2.UploadFileRequest(chunk=piece)

    options = [("grpc.max_send_message_length", chunk_bytes + 65536)]
    with grpc.insecure_channel(f"127.0.0.1:{port}", options=options) as channel:
        started = time.perf_counter()
        uploaded = files_pb2_grpc.FilesServiceStub(channel).UploadFile(requests())
        seconds = time.perf_counter() - started
    return {"bytes": size, "seconds": seconds, "id": uploaded.id}


def _file_service(state_dir: Path, store):
    """The Files API as __main__ builds it (FileService.from_settings), with its default limits."""
    try:
        from trainer_service.files import ArchiveLimits, FileLimits, FileService
    except ImportError:
        return None
    return FileService(state_dir / "files", store, FileLimits(20 * 1024**3, ArchiveLimits(50 * 1024**3, 1_000_000,
                                                                                           100.0)))


def _serves(channel, service: str) -> bool:
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    answer = next(stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")])))
    return service in {s.name for s in answer.list_services_response.service}


if __name__ == "__main__":
    main()
