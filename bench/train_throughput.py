"""Training throughput and peak GPU memory, side by side in one run on one model directory: the baseline
`plain` (transformers + peft in the loop a notebook writes: collate inline, `model(**batch).loss`, backward,
step) against the trainer's own loop on its two backends (`transformers`: batches prepared by DataLoader
workers while the GPU trains, LM head only on answer tokens, LoRA matmuls in bf16 under autocast; `fp32lora`:
the same with PEFT's fp32 LoRA matmuls; `unsloth`), LoRA and QLoRA, with and without
gradient checkpointing. Each configuration runs in its own process (Unsloth patches transformers when
imported) with the worker's loading and adapter code, on the same synthetic batches: one random RGB image and
a fixed number of text tokens per sample, LoRA on every linear layer (language + vision). Ratios and the
largest loss difference are against `plain` in the same method, mode and GPU count.

    python bench/train_throughput.py --model-dir DIR [--configs plain:lora:gc,transformers:lora:gc,...]
    python -m vlmforge.model_shapes DIR --shape 2b --tokenizer-from TINY_MODEL_DIR   # a 2B-shaped DIR
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROFILE_MARK = "\n=== profile ===\n"
DEFAULT_CONFIGS = ("plain:lora:nogc,transformers:lora:nogc,unsloth:lora:nogc,plain:lora:gc,transformers:lora:gc,"
                   "unsloth:lora:gc,plain:qlora:gc,transformers:qlora:gc,unsloth:qlora:gc")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", type=Path, required=True)
    parser.add_argument("--configs", default=DEFAULT_CONFIGS, help="backend:method:gc|nogc, comma separated")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=20, help="timed optimizer steps")
    parser.add_argument("--warmup-steps", type=int, default=5)
    parser.add_argument("--text-tokens", type=int, default=64)
    parser.add_argument("--image-size-px", type=int, default=448)
    parser.add_argument("--lora-rank", type=int, default=16)
    parser.add_argument("--gpus", default="1", help="GPU counts to run each configuration on, e.g. 1,2 (DDP)")
    parser.add_argument("--profile", action="store_true", help="also print each configuration's top CUDA "
                        "operations over 3 steps after the warm-up (torch.profiler)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print("RESULT " + json.dumps(_measure(args, args.child)))
        return
    results = {}
    for config in [f"{c}:{g}gpu" for c in args.configs.split(",") for g in args.gpus.split(",")]:
        gpus = int(config.rpartition(":")[2].removesuffix("gpu"))
        runner = [sys.executable] if gpus == 1 else [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                                     f"--nproc-per-node={gpus}"]
        child = subprocess.run([*runner, __file__, *sys.argv[1:], "--child", config], capture_output=True,
                               text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
        lines = [line for line in child.stdout.splitlines() if line.startswith("RESULT ")]
        if child.returncode or not lines:
            print(f"{config}: failed (exit {child.returncode})\n{child.stderr[-3000:]}", file=sys.stderr)
            continue
        if args.profile and PROFILE_MARK in child.stdout:
            print(f"{config}, 3 profiled steps:\n{child.stdout.split(PROFILE_MARK)[1]}")
        results[config] = json.loads(lines[-1].removeprefix("RESULT "))
        print(f"{config}: {results[config]['samples_per_second']:.2f} samples/s, "
              f"{results[config]['peak_gib']:.1f} GiB", flush=True)
    _print_table(results, args)


def _measure(args, config: str) -> dict:
    import torch

    from trainer_service.job_spec import Hyperparameters
    from trainer_service.worker.backends import TransformersBackend, select_backend
    from trainer_service.worker.distributed import Ranks
    from trainer_service.worker.train import seed_everything, train

    backend_name, method, checkpointing, _ = config.split(":")
    ranks = Ranks.from_environment()
    ranks.start()
    backend = select_backend("transformers" if backend_name in ("plain", "fp32lora") else backend_name)  # Unsloth 1st
    if backend_name == "fp32lora":  # the trainer's loop with PEFT's fp32 LoRA matmuls (no autocast)
        backend = TransformersBackend(backend.placement, mixed_precision=False)
    from transformers import AutoProcessor

    hyper = Hyperparameters(max_steps=args.warmup_steps + args.steps, batch_size=args.batch_size,
                            learning_rate=2e-4, lora_rank=args.lora_rank, lora_alpha=args.lora_rank,
                            gradient_checkpointing=checkpointing == "gc", checkpoint_every_steps=10**6,
                            max_sequence_length=16384)  # LLaVA-1.6 and Idefics3 tile a 448 px image: ~3k tokens
    processor = AutoProcessor.from_pretrained(args.model_dir)
    loaded_at = time.perf_counter()
    model = backend.load(args.model_dir, quantize_4bit=method == "qlora", hyper=hyper)
    seed_everything(hyper.seed)
    peft_model = backend.add_lora(model, hyper)
    load_s = time.perf_counter() - loaded_at
    samples = _samples(processor, args.batch_size * hyper.max_steps * ranks.world_size, args.text_tokens,
                       args.image_size_px)
    step_ends: list[float] = []
    profiler = _profiler(args.warmup_steps) if args.profile and ranks.is_main else None

    def on_step() -> None:
        step_ends.append(time.perf_counter())
        if profiler is not None:
            profiler.step()

    torch.cuda.reset_peak_memory_stats()
    if backend_name == "plain":
        losses = _plain_loop(peft_model, processor, samples, hyper, backend, ranks, on_step=on_step)
    else:
        with tempfile.TemporaryDirectory() as checkpoints:
            losses = train(peft_model, processor, samples, hyper, Path(checkpoints), backend,
                           on_progress=lambda _: on_step(),
                           on_checkpoint=lambda *_: None, should_stop=lambda: False, ranks=ranks)
    ranks.finish()
    if not ranks.is_main:
        sys.exit(0)
    if profiler is not None:
        profiler.stop()
        table = profiler.key_averages().table(sort_by="self_cuda_time_total", row_limit=25)
        print(f"{PROFILE_MARK}{table}{PROFILE_MARK}")
    timed = step_ends[args.warmup_steps - 1:]
    samples_per_step = args.batch_size * ranks.world_size
    return {"samples_per_second": samples_per_step * (len(timed) - 1) / (timed[-1] - timed[0]),
            "peak_gib": torch.cuda.max_memory_allocated() / 2**30, "load_s": load_s, "losses": losses,
            "trainable_parameters": sum(p.numel() for p in peft_model.parameters() if p.requires_grad)}


def _profiler(warmup_steps: int):
    from torch.profiler import ProfilerActivity, profile, schedule

    profiler = profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA],
                       schedule=schedule(wait=warmup_steps, warmup=1, active=3, repeat=1))
    profiler.start()
    return profiler


def _plain_loop(peft_model, processor, samples, hyper, backend, ranks, on_step) -> list[float]:
    """The baseline: what a transformers + peft script does, on the same batches, optimizer and schedule."""
    import torch

    from trainer_service.worker.train import _to_device, batch_indices, schedule
    from vlmforge.chat_format import ChatCollator
    from vlmforge.families import family_for_model_type

    trainable = [p for p in peft_model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=hyper.learning_rate, weight_decay=hyper.weight_decay, fused=True)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule(hyper, hyper.max_steps))
    collate = ChatCollator(processor, family=family_for_model_type(peft_model.config.model_type),
                           max_length=hyper.max_sequence_length)
    peft_model.train()
    model = ranks.wrap(peft_model)
    losses = []
    for step in range(hyper.max_steps):
        batch = collate([samples[i] for i in batch_indices(step, 0, hyper, len(samples), ranks)])
        loss = model(**_to_device(batch, backend.placement)).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(ranks.mean(loss.item()))
        on_step()
    return losses


def _samples(processor, count: int, text_tokens: int, image_size_px: int):
    """Distinct random images; question + answer cut to `text_tokens` tokens of real words in total."""
    import numpy as np
    from PIL import Image

    from vlmforge.data.types import Conversation, ImagePart, ImageRef, Message, TextPart

    words = ("What colour is the tallest bar in this chart and how many shapes are there at the top left "
             "corner of the picture ") * 8
    ids = processor.tokenizer.encode(words, add_special_tokens=False)
    question = processor.tokenizer.decode(ids[:text_tokens - text_tokens // 4])
    answer = processor.tokenizer.decode(ids[:text_tokens // 4])
    generator = np.random.default_rng(0)
    samples = []
    for index in range(count):
        pixels = generator.integers(0, 256, (image_size_px, image_size_px, 3), dtype=np.uint8)
        png = io.BytesIO()
        Image.fromarray(pixels).save(png, format="PNG")
        image = ImagePart(ImageRef(data=png.getvalue()))
        samples.append(Conversation((Message("user", (image, TextPart(question))),
                                     Message("assistant", (TextPart(answer),))), source=f"synthetic:{index}"))
    return samples


def _print_table(results: dict[str, dict], args) -> None:
    import torch

    print(f"\n{torch.cuda.get_device_name()}, batch {args.batch_size}, {args.image_size_px}px image + "
          f"{args.text_tokens} text tokens per sample, LoRA r={args.lora_rank} on every linear layer, "
          f"{args.steps} timed steps after {args.warmup_steps}")
    print("| loop / backend | method | gradient checkpointing | GPUs | samples/s | peak GiB (rank 0) "
          "| vs plain | largest loss difference vs plain |")
    print("|---|---|---|---|---|---|---|---|")
    for config, result in results.items():
        backend, method, checkpointing, gpus = config.split(":")
        baseline = results.get(f"plain:{method}:{checkpointing}:{gpus}")
        ratio = f"{result['samples_per_second'] / baseline['samples_per_second']:.2f}x" if baseline else "-"
        drift = "-"
        if baseline and backend != "plain":
            drift = f"{max(abs(a - b) / abs(b) for a, b in zip(result['losses'], baseline['losses'])):.2%}"
        print(f"| {backend} | {method} | {'on' if checkpointing == 'gc' else 'off'} | {gpus.removesuffix('gpu')} | "
              f"{result['samples_per_second']:.2f} | {result['peak_gib']:.1f} | {ratio} | {drift} |")
    for config, result in results.items():
        print(f"{config} first losses: {', '.join(f'{loss:.4f}' for loss in result['losses'][:5])}")


if __name__ == "__main__":
    main()
