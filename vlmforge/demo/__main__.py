"""`python -m vlmforge.demo --model DIR --data-dir DIR` (what `make demo` runs). Flags or environment
(VLMFORGE_DEMO_MODEL, VLMFORGE_DEMO_DATA_DIR) point it at a real model directory and dataset on a GPU machine."""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import secrets
import signal
import time
from contextlib import ExitStack
from datetime import datetime
from pathlib import Path

import openai
from rich.console import Console
from rich.table import Table

from trainer_service import cli as trainer_cli
from trainer_service.evaluation import score_answers
from vlmforge.artifacts import LOSS_PLOT_FILE
from vlmforge.client import FineTuningJob, Trainer
from vlmforge.data import load_dataset
from vlmforge.processes import start_and_wait, stop

from . import DEMO_HYPERPARAMETERS
from .ask import ServedAnswer, ask_all
from .report import SCORE_ROWS, DemoResult, write_report

INFERENCE_READY = re.compile(rb"inference service listening on (http://[\d.]+:\d+)")
TRAINER_READY = re.compile(rb"trainer listening on ([\d.]+:\d+)")
console = Console()


def _parser() -> argparse.ArgumentParser:
    env = os.environ.get
    parser = argparse.ArgumentParser(prog="python -m vlmforge.demo", description=__doc__)
    parser.add_argument("--model", type=Path, default=env("VLMFORGE_DEMO_MODEL"), required=not env("VLMFORGE_DEMO_MODEL"),
                        help="base model directory")
    parser.add_argument("--data-dir", type=Path, default=env("VLMFORGE_DEMO_DATA_DIR"),
                        required=not env("VLMFORGE_DEMO_DATA_DIR"), help="holds train.jsonl and test.jsonl")
    parser.add_argument("--output-dir", type=Path, default=Path("reports"), help="a run directory is made here")
    parser.add_argument("--steps", type=int, default=DEMO_HYPERPARAMETERS.max_steps, help="fine-tuning steps")
    parser.add_argument("--batch-size", type=int, default=DEMO_HYPERPARAMETERS.batch_size)
    parser.add_argument("--learning-rate", type=float, default=DEMO_HYPERPARAMETERS.learning_rate)
    parser.add_argument("--questions", type=int, default=100, help="test questions asked before and after")
    parser.add_argument("--examples", type=int, default=8, help="answers shown side by side in the terminal")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    run_dir = (args.output_dir / datetime.now().strftime("demo-%Y%m%d-%H%M%S")).resolve()
    run_dir.mkdir(parents=True)
    signal.signal(signal.SIGTERM, _interrupt)  # SIGTERM too unwinds through the `finally` that stops services
    with ExitStack() as services:
        try:
            return _run(args, run_dir, services)
        except KeyboardInterrupt:
            console.print("[yellow]interrupted: stopping both services[/]")
            return 130
        finally:
            console.print(f"logs in {run_dir}")


def _interrupt(*_) -> None:
    raise KeyboardInterrupt


def _run(args, run_dir: Path, services: ExitStack) -> int:
    started = time.perf_counter()
    timings: dict[str, float] = {}
    samples = load_dataset(args.data_dir / "test.jsonl")[:args.questions]
    admin_token = secrets.token_urlsafe(24)
    artifacts_dir = run_dir / "trainer" / "artifacts"

    with console.status("starting the inference service (vLLM) and the trainer service..."):
        inference, ready = start_and_wait(
            ["-m", "inference_service", "--base-model", str(args.model.resolve()), "--artifacts-dir",
             str(artifacts_dir), "--port", "0"], run_dir / "inference.log", INFERENCE_READY, timeout_s=600,
            # In the environment, not on the command line: out of `ps`, and a token starting with "-" is no flag.
            env={**os.environ, "VLMFORGE_INFERENCE_ADMIN_TOKEN": admin_token})
        services.callback(_stop, "inference service", inference)
        inference_url = ready.group(1).decode()
        trainer, ready = start_and_wait(
            ["-m", "trainer_service", "--grpc-port", "0", "--metrics-port", "0", "--state-dir",
             str(run_dir / "trainer"), "--inference-admin-url", inference_url],
            run_dir / "trainer.log", TRAINER_READY, env={**os.environ, "VLMFORGE_TRAINER_INFERENCE_ADMIN_TOKEN":
                                                         admin_token})
        services.callback(_stop, "trainer service", trainer)
        trainer_address = ready.group(1).decode()
    timings["services_start"] = time.perf_counter() - started
    console.print(f"inference service [bold]{inference_url}/v1[/] (OpenAI API), trainer [bold]{trainer_address}[/]"
                  f" (gRPC), {timings['services_start']:.0f} s")

    client = openai.OpenAI(base_url=inference_url + "/v1", api_key="unused", max_retries=0, timeout=300)
    base_name = client.models.list().data[0].id
    phase_started = time.perf_counter()
    with console.status(f"asking {len(samples)} test questions to the base model {base_name}..."):
        before = ask_all(client, base_name, samples)
    timings["zero_shot_answers"] = time.perf_counter() - phase_started

    console.rule("fine-tuning over gRPC: the CLI's create, with its progress bar")
    phase_started = time.perf_counter()
    job = _fine_tune(trainer_address, args)
    timings["fine_tune"] = time.perf_counter() - phase_started
    if job.status != "succeeded":
        console.print(f"[red]the fine-tune did not succeed; see {run_dir / 'trainer'}[/]")
        return 1

    phase_started = time.perf_counter()
    with console.status(f"asking the same questions to {job.fine_tuned_model} (hot-loaded, no restart)..."):
        after = ask_all(client, job.fine_tuned_model, samples)
    timings["fine_tuned_answers"] = time.perf_counter() - phase_started

    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()  # BERTScore's weight loading would draw over our status line
    with console.status("scoring (BERTScore, exact match, relaxed accuracy)..."):
        scores = [dataclasses.asdict(score_answers([a.prediction for a in answers], [a.reference for a in answers]))
                  for answers in (before, after)]
    timings["total"] = time.perf_counter() - started
    result = DemoResult(base_name, job.fine_tuned_model, job.id, scores[0], scores[1], timings)
    page = write_report(run_dir / "report", result, samples, before, after,
                        artifacts_dir / job.fine_tuned_model / LOSS_PLOT_FILE)
    _print_summary(result, before, after, args.examples)
    console.print(f"report: [bold]{page}[/]")
    return 0


def _fine_tune(address: str, args) -> FineTuningJob:
    """Submits the job, then follows it exactly as `python -m trainer_service.cli create` does."""
    hyper = {"max_steps": args.steps, "batch_size": args.batch_size, "learning_rate": args.learning_rate,
             "warmup_steps": DEMO_HYPERPARAMETERS.warmup_steps}
    model, training_file = str(args.model.resolve()), str((args.data_dir / "train.jsonl").resolve())
    console.print(f"[dim]$ python -m trainer_service.cli --server {address} create {model} "
                  f"{training_file} --suffix demo --max-steps {args.steps} --batch-size {args.batch_size} "
                  f"--learning-rate {args.learning_rate} --warmup-steps {hyper['warmup_steps']}[/]")
    with Trainer(address) as client:
        job = client.jobs.create(model=model, training_file=training_file, suffix="demo", method="lora",
                                 hyperparameters=hyper)
        console.print(f"created [bold]{job.id}[/]")
        trainer_cli.follow(client, job.id, 0)
        return client.jobs.retrieve(job.id)


def _print_summary(result: DemoResult, before: list[ServedAnswer], after: list[ServedAnswer], examples: int) -> None:
    answers = Table(title="the same test questions through the same OpenAI endpoint")
    for column in ("question", "reference", f"zero-shot ({result.base_model})", "fine-tuned"):
        answers.add_column(column)
    for old, new in list(zip(before, after))[:examples]:
        answers.add_row(old.question, old.reference, old.prediction, new.prediction)
    console.print(answers)
    scores = Table(title=f"{len(before)} test questions, before and after")
    for column in ("metric", "zero-shot", "fine-tuned"):
        scores.add_column(column)
    for label, key in SCORE_ROWS:
        scores.add_row(label, f"{result.before[key]:.3f}", f"[bold green]{result.after[key]:.3f}[/]")
    console.print(scores)
    timings = ", ".join(f"{name.replace('_', ' ')} {seconds:.0f} s" for name, seconds in result.timings_s.items())
    console.print(f"timings: {timings}")


def _stop(name: str, process) -> None:
    code = stop(process)
    console.print(f"{name} stopped (exit code {code})")


if __name__ == "__main__":
    raise SystemExit(main())
