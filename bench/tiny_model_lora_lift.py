"""How much a short LoRA fine-tune lifts the embedded tiny model, per question kind.

    .venv/bin/python bench/tiny_model_lora_lift.py --model MODEL_DIR --data-dir DATA_DIR [--steps 600]

Prints exact match before and after, overall and per question kind, and the training time.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch
from transformers import AutoModelForImageTextToText, AutoProcessor

from trainer_service.evaluation import answer_questions, exact_match_rate
from trainer_service.job_spec import Hyperparameters
from trainer_service.worker.backends import Placement, TransformersBackend
from trainer_service.worker.train import seed_everything, train
from vlmforge.data import load_dataset
from vlmforge.demo import DEMO_HYPERPARAMETERS


def fine_tune(model, processor, train_set, hyper: Hyperparameters, adapter_dir: Path):
    """Runs the worker's training loop in this process, without job bookkeeping or checkpoints; saves the
    adapter and returns (peft model, seconds)."""
    started = time.perf_counter()
    hyper = dataclasses.replace(hyper, checkpoint_every_steps=hyper.max_steps or 1)
    backend = TransformersBackend(Placement.detect())
    seed_everything(hyper.seed)
    peft_model = backend.add_lora(model, hyper)
    with tempfile.TemporaryDirectory() as checkpoints:
        train(peft_model, processor, train_set, hyper, Path(checkpoints), backend, on_progress=lambda _: None,
              on_checkpoint=lambda *_: None, should_stop=lambda: False)
    peft_model.save_pretrained(adapter_dir)  # adapter_config.json + adapter_model.safetensors
    return peft_model, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=DEMO_HYPERPARAMETERS.max_steps)
    args = parser.parse_args()

    processor = AutoProcessor.from_pretrained(args.model)
    model = AutoModelForImageTextToText.from_pretrained(args.model)
    test_path = args.data_dir / "test.jsonl"
    test_set = load_dataset(test_path)
    kinds = [json.loads(line)["kind"] for line in test_path.read_text().splitlines()]
    before = answer_questions(model, processor, test_set)
    with tempfile.TemporaryDirectory() as adapter_dir:
        hyper = dataclasses.replace(DEMO_HYPERPARAMETERS, max_steps=args.steps)
        peft_model, seconds = fine_tune(model, processor, load_dataset(args.data_dir / "train.jsonl"), hyper,
                                        Path(adapter_dir))
    after = answer_questions(peft_model, processor, test_set)

    print(f"machine: {platform.processor() or platform.machine()}, torch threads {torch.get_num_threads()}")
    print(f"LoRA r={hyper.lora_rank} all linear layers, {hyper.max_steps} steps x batch {hyper.batch_size}, "
          f"lr {hyper.learning_rate}: {seconds:.0f} s")
    print(f"exact match on {len(test_set)} test questions: before {exact_match_rate(before):.2f}, "
          f"after {exact_match_rate(after):.2f}")
    by_kind: dict[str, list[tuple[bool, bool]]] = defaultdict(list)
    for kind, old, new in zip(kinds, before, after):
        by_kind[kind].append((old.exact, new.exact))
    print(f"{'kind':18s} {'n':>3s} {'before':>6s} {'after':>6s}")
    for kind, pairs in sorted(by_kind.items()):
        n = len(pairs)
        print(f"{kind:18s} {n:3d} {sum(p[0] for p in pairs) / n:6.2f} {sum(p[1] for p in pairs) / n:6.2f}")


if __name__ == "__main__":
    main()
