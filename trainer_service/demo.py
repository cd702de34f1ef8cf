"""`make demo` (for now): the embedded tiny Qwen2-VL answers test questions zero-shot, gets a LoRA fine-tune
on the training split with the trainer's own training loop, and answers the same questions again; prints both
and the exact-match lift.

The full product flow (trainer and inference services, hot-loading, report) replaces this in the demo issue.
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from vlmforge.data import load_dataset

from .evaluation import answer_questions, exact_match_rate
from .job_spec import Hyperparameters
from .worker.train import train

# What a couple of CPU minutes buys on the embedded default (BENCHMARKS.md).
DEMO_HYPERPARAMETERS = Hyperparameters(max_steps=600, batch_size=8, learning_rate=1e-3, warmup_steps=20)


def fine_tune(model, processor, train_set, hyper: Hyperparameters, adapter_dir: Path):
    """Runs the worker's training loop in this process, without job bookkeeping or checkpoints; saves the
    adapter and returns (peft model, seconds)."""
    started = time.perf_counter()
    hyper = dataclasses.replace(hyper, checkpoint_every_steps=hyper.max_steps or 1)
    with tempfile.TemporaryDirectory() as checkpoints:
        peft_model, _ = train(model, processor, train_set, hyper, Path(checkpoints), on_progress=lambda _: None,
                              on_checkpoint=lambda *_: None, should_stop=lambda: False)
    peft_model.save_pretrained(adapter_dir)  # adapter_config.json + adapter_model.safetensors
    return peft_model, time.perf_counter() - started


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m trainer_service.demo", description=__doc__)
    parser.add_argument("--model", type=Path, required=True, help="base model directory")
    parser.add_argument("--data-dir", type=Path, required=True, help="has train.jsonl and test.jsonl")
    parser.add_argument("--output-dir", type=Path, default=Path("reports/demo"), help="where the adapter goes")
    parser.add_argument("--steps", type=int, default=DEMO_HYPERPARAMETERS.max_steps)
    parser.add_argument("--test-questions", type=int, default=100)
    args = parser.parse_args(argv)
    console = Console()

    from transformers import AutoModelForImageTextToText, AutoProcessor

    processor = AutoProcessor.from_pretrained(args.model)
    model = AutoModelForImageTextToText.from_pretrained(args.model)
    train_set = load_dataset(args.data_dir / "train.jsonl")
    test_set = load_dataset(args.data_dir / "test.jsonl")[:args.test_questions]
    console.print(f"base model [bold]{args.model}[/], {len(train_set)} training and {len(test_set)} test questions")

    before = answer_questions(model, processor, test_set)
    console.print(f"zero-shot exact match: [bold]{exact_match_rate(before):.2f}[/]")
    hyper = dataclasses.replace(DEMO_HYPERPARAMETERS, max_steps=args.steps)
    adapter_dir = args.output_dir / "adapter"
    console.print(f"LoRA fine-tune: r={hyper.lora_rank}, {hyper.max_steps} steps x {hyper.batch_size} ...")
    peft_model, train_seconds = fine_tune(model, processor, train_set, hyper, adapter_dir)
    after = answer_questions(peft_model, processor, test_set)

    table = Table(title="the same test questions, before and after the LoRA fine-tune")
    for column in ("question", "reference", "zero-shot", "fine-tuned"):
        table.add_column(column)
    for old, new in list(zip(before, after))[:12]:
        table.add_row(old.question, old.reference, _mark(old.prediction, old.exact), _mark(new.prediction, new.exact))
    console.print(table)
    console.print(f"exact match: zero-shot [bold]{exact_match_rate(before):.2f}[/] -> fine-tuned "
                  f"[bold green]{exact_match_rate(after):.2f}[/] on {len(test_set)} test questions "
                  f"(LoRA r={hyper.lora_rank}, {hyper.max_steps} steps x {hyper.batch_size}, {train_seconds:.0f} s)")
    console.print(f"adapter written to {adapter_dir.resolve()}")


def _mark(text: str, correct: bool) -> str:
    return f"[green]{text}[/]" if correct else f"[red]{text}[/]"


if __name__ == "__main__":
    started = time.perf_counter()
    main()
    Console().print(f"demo finished in {time.perf_counter() - started:.0f} s")
