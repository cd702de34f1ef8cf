"""One fine-tuning job through the trainer's own worker code, in this process, on whatever device this machine
has: validated like a gRPC request, trained by the chosen backend, artifacts written (adapter, merged bf16
model, manifest), then the merged model loaded back in transformers to answer a question. Prints the stages'
times, the peak GPU memory and the answer. For machines where the service itself is not installed (a GPU box).

    python bench/worker_job.py --model DIR --train-file FILE.jsonl [--method qlora] [--backend auto] [--steps 10]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--train-file", type=Path, required=True)
    parser.add_argument("--method", choices=("lora", "qlora"), default="lora")
    parser.add_argument("--backend", choices=("auto", "transformers", "unsloth"), default="auto")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--gpus", type=int, default=1, help="above 1: the worker runs under torchrun (DDP) in "
                        "child processes, with the command line the service's launcher uses")
    args = parser.parse_args()

    from trainer_service.worker.backends import BACKEND_ENV, select_backend

    # In this process only with one GPU; first: Unsloth must be imported before transformers.
    backend = select_backend(args.backend) if args.gpus == 1 else None
    import torch

    from trainer_service.domain import JobStatus
    from trainer_service.job_spec import Hyperparameters, JobSpec
    from trainer_service.jobs import JobService
    from trainer_service.launcher import worker_command
    from trainer_service.store import JobStore
    from trainer_service.worker.run import run_job

    with tempfile.TemporaryDirectory() as scratch:
        state = Path(scratch)
        store = JobStore(state / "jobs.sqlite3")
        hyper = Hyperparameters(max_steps=args.steps, batch_size=args.batch_size, learning_rate=2e-4,
                                gradient_checkpointing=args.gradient_checkpointing, checkpoint_every_steps=5)
        job = JobService(store, qlora_unavailable=None).create(
            JobSpec(str(args.model), str(args.train_file), method=args.method, hyperparameters=hyper))
        store.transition(job.id, JobStatus.RUNNING, "bench")
        started = time.perf_counter()
        if backend is not None:
            run_job(store, job.id, state, backend=backend)
        else:
            command = worker_command(job.id, state, state / "artifacts", args.gpus, database=store.path)
            subprocess.run(command, check=True, env={**os.environ, BACKEND_ENV: args.backend})
        job_s = time.perf_counter() - started
        peak_gib = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else 0.0
        done = store.get_job(job.id)
        progress = [e.payload for e in store.events_after(job.id, 0, limit=10_000) if e.kind == "progress"]
        merged = Path(done.result["merged_model_path"])
        manifest = json.loads((merged.parent / "manifest.json").read_text())
        answer = _answer(merged, args.train_file)
        print(json.dumps({
            "status": done.status.value, "backend": manifest["training_backend"], "method": manifest["method"],
            "gpus": args.gpus,
            "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
            "job_seconds": round(job_s, 1), "peak_gpu_gib": round(peak_gib, 2),
            "samples_per_second_last": round(progress[-1]["samples_per_second"], 2),
            "losses": [round(p["loss"], 4) for p in progress],
            "adapter_files": sorted(p.name for p in (merged.parent / "adapter").iterdir()),
            "merged_files": sorted(p.name for p in merged.iterdir()), "merged_model_answer": answer,
        }, indent=1))


def _answer(merged: Path, train_file: Path) -> str:
    """The merged directory must load in plain transformers as it is and generate."""
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from trainer_service.evaluation import answer_questions
    from vlmforge.data import load_dataset

    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = AutoModelForImageTextToText.from_pretrained(merged, dtype=torch.bfloat16, device_map={"": device})
    sample = load_dataset(train_file)[:1]
    return answer_questions(model, AutoProcessor.from_pretrained(merged), sample, max_new_tokens=8)[0].prediction


if __name__ == "__main__":
    main()
