"""Training throughput and peak GPU memory, side by side in one run on one model directory: the baseline
`plain` (transformers + peft in the loop a notebook writes: collate inline, `model(**batch).loss`, backward,
step) against the trainer's own loop on its two backends (`transformers`: batches prepared by DataLoader
workers while the GPU trains, LM head only on answer tokens, LoRA matmuls in bf16 under autocast, a Qwen vision
tower's images in one varlen attention call (`transformers_sdpa` / `packed_sdpa`: one SDPA per image); `fp32lora`:
the same with PEFT's fp32 LoRA matmuls; `compiled`: the same with each decoder / vision block under
`torch.compile`, eager's bf16 rounding kept (`compiled_loose`: Inductor's own rounding); `packed`: the trainer's
loop with padding-free packing, each micro-batch one row of whole samples with attention kept inside each
(`packed_compiled`: and the blocks compiled); `grouped`: padded batches of samples of similar length; `unsloth`;
`unsloth_loose`: Unsloth with Inductor's own rounding, as the backend ran before; `unsloth_eager` /
`unsloth_nocompile`: Unsloth without its block compilation / any of its compilation) and `plain_fp32` (the plain
loop on an fp32 copy of the model, TF32 off: the exact computation bf16 approximates), LoRA and QLoRA, with and
without gradient checkpointing. Each configuration runs in its own process (Unsloth patches transformers when
imported) with the worker's loading and adapter code, on the same synthetic batches: one random RGB image and
a fixed number of text tokens per sample (`--workload uniform`), or (`--workload realistic`) images and answers
whose sizes vary as real VQA data's do: per sample a shortest side of 280-1344 px and an aspect of 0.5-2
(log-uniform), an answer of 1-256 tokens (log-uniform), drawn from a fixed seed, the processor at Qwen2-VL's
published pixel limits. LoRA on every linear layer (language + vision). Ratios and the largest loss difference
are against `plain` in the same method, mode and GPU count. Tokens/s and MFU count real tokens only (no padding);
`padding` is the share of the language model's positions that are padding. `packed` rows take `--batch-size`
samples and, unless `--max-tokens-per-batch` says less, room for any `--batch-size` of them: the same batches as
`plain`, so its losses compare; with a smaller budget a step takes as many samples as fit.

    python bench/train_throughput.py --model-dir DIR [--configs plain:lora:gc,transformers:lora:gc,...]
    python bench/train_throughput.py --model-dir DIR --workload realistic --batch-size 4
    python bench/train_throughput.py --model-dir DIR --configs plain:lora:nogc,packed:lora:nogc --cpu-smoke
    python -m vlmforge.model_shapes DIR --shape 2b --tokenizer-from TINY_MODEL_DIR   # a 2B-shaped DIR

FSDP (`--strategy fsdp`, with `--gpus 2`): the trainer's sharded path (trainer_service/worker/fsdp.py). A shape too
large to write to disk (Qwen2-VL-72B in bf16 is ~144 GB) is built sharded in memory instead: `--meta-shape 72b
--tokenizer-from TINY_MODEL_DIR` writes only its config and processor to --model-dir, and a model directory
without weights is built on the meta device and given random weights shard by shard on each GPU. Untested on a
GPU so far (it ran on CPU processes with gloo only):

    python bench/train_throughput.py --model-dir /tmp/72b --meta-shape 72b --tokenizer-from TINY_MODEL_DIR \
        --strategy fsdp --gpus 2 --configs transformers:lora:gc --batch-size 1
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from sync_sites import SyncSites  # noqa: E402 - bench/ is on sys.path when run as a script

PROFILE_MARK = "\n=== profile ===\n"
PROFILED_STEPS = 3  # after the warm-up and one more step (the profiler's own warm-up)
TRANSFORMERS_LOOPS = ("plain", "plain_fp32", "fp32lora", "compiled", "compiled_loose", "packed", "packed_compiled",
                      "grouped", "transformers_sdpa", "packed_sdpa")
PACKED_LOOPS = ("packed", "packed_compiled", "packed_sdpa")
PLAIN_LOOPS = ("plain", "plain_fp32")
# Unsloth's variants: the environment each sets before Unsloth is imported (`unsloth_eager`: no compilation of its
# decoder blocks; `unsloth_nocompile`: none of its compilation; `unsloth_loose`: as the backend ran before it kept
# eager's rounding in Unsloth's compiled code).
UNSLOTH_VARIANTS = {"unsloth_eager": {"UNSLOTH_BLOCK_COMPILE": "0"},
                    "unsloth_nocompile": {"UNSLOTH_COMPILE_DISABLE": "1"}, "unsloth_loose": {}}
H200_BF16_DENSE_PEAK_FLOPS = 989.4e12  # NVIDIA's H100/H200 SXM datasheet, dense (no sparsity)
QWEN2_VL_PIXELS = (56 * 56, 28 * 28 * 16384)  # min_pixels / max_pixels of Qwen/Qwen2-VL-2B-Instruct's processor
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
    parser.add_argument("--workload", choices=("uniform", "realistic"), default="uniform")
    parser.add_argument("--max-tokens-per-batch", type=int, default=None,
                        help="packed configs: tokens per row (default: room for any --batch-size samples)")
    parser.add_argument("--cpu-smoke", action="store_true", help="run on the CPU (a tiny model: checks the "
                        "configs run, measures nothing)")
    parser.add_argument("--time-budget-s", type=float, default=None, help="start no configuration after this long")
    parser.add_argument("--gpus", default="1", help="GPU counts to run each configuration on, e.g. 1,2 (DDP)")
    parser.add_argument("--strategy", choices=("ddp", "fsdp"), default="ddp", help="with more than one GPU")
    parser.add_argument("--meta-shape", choices=tuple(META_SHAPES), help="write only this shape's config and "
                        "processor to --model-dir; its weights are random, made shard by shard (with --tokenizer-from)")
    parser.add_argument("--tokenizer-from", type=Path, help="--meta-shape: the tiny model whose tokenizer it takes")
    parser.add_argument("--profile", action="store_true", help="also print each configuration's top CUDA "
                        "operations over 3 steps after the warm-up (torch.profiler)")
    parser.add_argument("--sync-sites", action="store_true", help="also print where the step after the warm-up "
                        "makes the host wait for the GPU (bench/sync_sites.py; CUDA only, not with --profile)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.meta_shape and not args.child:
        _write_meta_shape(args.model_dir, args.meta_shape, args.tokenizer_from)
    if args.child:
        print("RESULT " + json.dumps(_measure(args, args.child)))
        return
    results = {}
    started = time.perf_counter()
    for config in [f"{c}:{g}gpu" for c in args.configs.split(",") for g in args.gpus.split(",")]:
        if args.time_budget_s is not None and time.perf_counter() - started > args.time_budget_s:
            print(f"{config}: skipped (time budget spent)", file=sys.stderr)
            continue
        gpus = int(config.rpartition(":")[2].removesuffix("gpu"))
        runner = [sys.executable] if gpus == 1 else [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                                     f"--nproc-per-node={gpus}"]
        child = subprocess.run([*runner, __file__, *sys.argv[1:], "--child", config], capture_output=True,
                               text=True, env={**os.environ, "HF_HUB_OFFLINE": "1",
                                               **({"CUDA_VISIBLE_DEVICES": ""} if args.cpu_smoke else {})})
        lines = [line for line in child.stdout.splitlines() if line.startswith("RESULT ")]
        if child.returncode or not lines:
            print(f"{config}: failed (exit {child.returncode})\n{child.stderr[-3000:]}", file=sys.stderr)
            continue
        if (args.profile or args.sync_sites) and PROFILE_MARK in child.stdout:
            print(f"{config}, {'profile' if args.profile else 'sync sites'}:\n{child.stdout.split(PROFILE_MARK)[1]}")
        results[config] = json.loads(lines[-1].removeprefix("RESULT "))
        print(f"{config}: {results[config]['samples_per_second']:.2f} samples/s, "
              f"{results[config]['peak_gib']:.1f} GiB, losses {results[config]['losses']}", flush=True)
    _print_table(results, args)


def _measure(args, config: str) -> dict:
    import torch

    from trainer_service.job_spec import Hyperparameters
    from trainer_service.worker.backends import TransformersBackend, select_backend
    from trainer_service.worker.compile_blocks import compile_blocks
    from trainer_service.worker.distributed import Ranks
    from trainer_service.worker.sampling import plan_micro_batches
    from trainer_service.worker.train import seed_everything, train

    backend_name, method, checkpointing, _ = config.split(":")
    variant = backend_name
    if backend_name in UNSLOTH_VARIANTS:
        os.environ.update(UNSLOTH_VARIANTS[backend_name])
        backend_name = "unsloth"
    ranks = dataclasses.replace(Ranks.from_environment(), strategy=args.strategy)
    ranks.start()
    backend = select_backend("transformers" if backend_name in TRANSFORMERS_LOOPS
                             else backend_name)  # Unsloth must be imported first
    if variant == "unsloth_loose":
        import torch._inductor.config as inductor_config

        inductor_config.emulate_precision_casts = False
    if backend_name == "fp32lora":  # the trainer's loop with PEFT's fp32 LoRA matmuls (no autocast)
        backend = TransformersBackend(backend.placement, mixed_precision=False)
    if backend_name in ("transformers_sdpa", "packed_sdpa"):  # the vision tower as transformers runs it under SDPA
        backend = TransformersBackend(backend.placement, varlen_vision_attention=False)
    if backend_name == "plain_fp32":  # the plain loop on an fp32 copy of the model, no TF32: the exact reference
        from trainer_service.worker.backends import Placement

        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
        backend = TransformersBackend(Placement(backend.placement.device, torch.float32), mixed_precision=False)
    from transformers import AutoProcessor

    hyper = Hyperparameters(max_steps=args.warmup_steps + args.steps, batch_size=args.batch_size,
                            learning_rate=2e-4, lora_rank=args.lora_rank, lora_alpha=args.lora_rank,
                            gradient_checkpointing=checkpointing == "gc", checkpoint_every_steps=10**6,
                            max_sequence_length=16384)  # LLaVA-1.6 and Idefics3 tile a 448 px image: ~3k tokens
    processor = AutoProcessor.from_pretrained(args.model_dir)
    if args.workload == "realistic":  # the shaped model's processor resizes every image to one size
        processor.image_processor.size = {"shortest_edge": QWEN2_VL_PIXELS[0], "longest_edge": QWEN2_VL_PIXELS[1]}
    loaded_at = time.perf_counter()
    if ranks.shards_model:
        peft_model = _sharded_model(args.model_dir, backend, hyper, ranks)
    else:
        model = backend.load(args.model_dir, quantize_4bit=method == "qlora", hyper=hyper)
        seed_everything(hyper.seed)
        peft_model = backend.add_lora(model, hyper)
    if backend_name in ("compiled", "packed_compiled"):  # eager's rounding kept: the same step as eager's
        compile_blocks(peft_model)
    if backend_name == "compiled_loose":  # Inductor's own rounding
        _compile_blocks(peft_model)
    load_s = time.perf_counter() - loaded_at
    count = args.batch_size * hyper.max_steps * ranks.world_size
    samples = (_realistic_samples(processor, count) if args.workload == "realistic" else
               _samples(processor, count, args.text_tokens, args.image_size_px))
    hyper = _with_levers(hyper, backend_name, processor, samples, args)
    plan = plan_micro_batches(samples, processor, hyper, ranks.world_size)
    step_ends: list[float] = []
    profiler = _profiler(args.warmup_steps) if args.profile and ranks.is_main else None

    sync_sites = SyncSites() if args.sync_sites and ranks.is_main and torch.cuda.is_available() else None

    def on_step() -> None:
        step_ends.append(time.perf_counter())
        if profiler is not None:
            profiler.step()
        if sync_sites is not None and len(step_ends) == args.warmup_steps:
            sync_sites.start()
        elif sync_sites is not None and len(step_ends) == args.warmup_steps + 1:
            sync_sites.stop()

    on_gpu = backend.placement.device.type == "cuda"
    if on_gpu:
        torch.cuda.reset_peak_memory_stats()
    if backend_name in PLAIN_LOOPS:
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
        print(f"{PROFILE_MARK}{_profile_report(profiler, step_ends, args.warmup_steps)}{PROFILE_MARK}")
    if sync_sites is not None:
        print(f"{PROFILE_MARK}{sync_sites.report()}{PROFILE_MARK}")
    timed = step_ends[args.warmup_steps - 1:]
    seconds = timed[-1] - timed[0]
    timed_samples = plan.samples_before(hyper.max_steps) - plan.samples_before(args.warmup_steps)
    work = _timed_work(peft_model, processor, samples, hyper, ranks, range(args.warmup_steps, hyper.max_steps),
                       plan)
    return {"samples_per_second": timed_samples / seconds, "padding": work["padding"] if work else None,
            "tokens_per_second": work["tokens"] * ranks.world_size / seconds if work else None,
            "mfu": work["flops"] * ranks.world_size / seconds / (H200_BF16_DENSE_PEAK_FLOPS * ranks.world_size)
            if work else None, "spread": work.get("spread") if work else None,
            "peak_gib": torch.cuda.max_memory_allocated() / 2**30 if on_gpu else 0.0, "load_s": load_s,
            "losses": losses, "max_tokens_per_batch": hyper.max_tokens_per_batch if hyper.packing else None,
            "trainable_parameters": sum(p.numel() for p in peft_model.parameters() if p.requires_grad)}


# Qwen/Qwen2-VL-72B-Instruct's config.json (its vocabulary is 152064; the 2B/7B shapes' 151936 is used here).
META_SHAPES = {"72b": ("qwen2_vl", {"hidden_size": 8192, "intermediate_size": 29568, "num_hidden_layers": 80,
                                    "num_attention_heads": 64, "num_key_value_heads": 8, "tie_word_embeddings": False})}


def _write_meta_shape(model_dir: Path, shape: str, tokenizer_from: Path) -> None:
    """A model directory with a config and a processor but no weights (nothing the size of the model is written)."""
    from transformers import AutoTokenizer

    from vlmforge.model_shapes import _BUILDERS

    if (model_dir / "config.json").is_file():
        return
    family, sizes = META_SHAPES[shape]
    config, _, processor = _BUILDERS[family](sizes, AutoTokenizer.from_pretrained(tokenizer_from), 448)
    model_dir.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(model_dir)
    processor.save_pretrained(model_dir)


def _sharded_model(model_dir: Path, backend, hyper, ranks):
    """The worker's FSDP model; from a directory without weights, random weights made on each GPU for its shards."""
    import torch
    from transformers import AutoConfig

    from trainer_service.worker.fsdp import build_sharded_peft_model, materialise, meta_peft_model, shard

    if any(model_dir.glob("*.safetensors")):
        return build_sharded_peft_model(model_dir, backend, hyper, ranks, seed=hyper.seed)
    peft_model = meta_peft_model(AutoConfig.from_pretrained(model_dir), backend, hyper)
    shard(peft_model, ranks, mixed_precision=backend.placement.dtype == torch.bfloat16)
    materialise(peft_model, ranks)
    return peft_model


def _with_levers(hyper, backend_name: str, processor, samples, args):
    """The packed and grouped loops' settings. A packed row's default budget fits any `--batch-size` samples of
    this workload, so its rows are `plain`'s batches."""
    import dataclasses

    from trainer_service.worker.sampling import sample_token_counts

    if backend_name in PACKED_LOOPS:
        budget = args.max_tokens_per_batch or int(
            sample_token_counts(samples, processor, None).max() * args.batch_size)
        return dataclasses.replace(hyper, packing=True, max_tokens_per_batch=budget,
                                   max_sequence_length=min(hyper.max_sequence_length, budget)).validated()
    if backend_name == "grouped":
        return dataclasses.replace(hyper, group_by_length=True).validated()
    return hyper


def _compile_blocks(peft_model) -> None:
    """The `compiled` configuration as it first was: each decoder and vision block under its own
    `torch.compile`, but with Inductor's default rounding (fused bf16 chains skip eager's rounding between
    operations, which changes a LoRA step: trainer_service/worker/compile_blocks.py says why)."""
    blocks = set(getattr(peft_model.base_model.model, "_no_split_modules", None) or ())
    for module in peft_model.modules():
        if type(module).__name__ in blocks:
            module.compile(dynamic=True)


def _profiler(warmup_steps: int):
    from torch.profiler import ProfilerActivity, profile, schedule

    profiler = profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA],
                       schedule=schedule(wait=warmup_steps, warmup=1, active=PROFILED_STEPS, repeat=1))
    profiler.start()
    return profiler


def _profile_report(profiler, step_ends: list[float], warmup_steps: int) -> str:
    """The profiled steps' top GPU operations, their top host-side operations (where the CPU waits: syncs,
    kernel launches) and how busy the GPU was: kernel time over the steps' wall time (kernels on one stream,
    so their sum is the busy time)."""
    from torch.autograd import DeviceType

    averages = profiler.key_averages()
    kernel_us = sum(event.self_device_time_total for event in averages  # (a step's annotation is not a kernel)
                    if event.device_type == DeviceType.CUDA and not getattr(event, "is_user_annotation", False))
    wall_s = step_ends[warmup_steps + PROFILED_STEPS] - step_ends[warmup_steps]  # the schedule's active steps
    syncs = sum(event.count for event in averages if event.key in ("cudaStreamSynchronize", "cudaDeviceSynchronize"))
    launches = sum(event.count for event in averages if event.key in ("cudaLaunchKernel", "cuLaunchKernel",
                                                                         "cudaLaunchKernelExC", "cuLaunchKernelEx"))
    return (f"{averages.table(sort_by='self_cuda_time_total', row_limit=25)}\n"
            f"{averages.table(sort_by='self_cpu_time_total', row_limit=15)}\n"
            f"GPU busy {kernel_us / 1e6 / wall_s:.1%} of {wall_s:.2f} s ({PROFILED_STEPS} steps); "
            f"{launches / PROFILED_STEPS:.0f} kernel launches and {syncs / PROFILED_STEPS:.0f} host syncs a step")


def _plain_loop(peft_model, processor, samples, hyper, backend, ranks, on_step) -> list[float]:
    """The baseline: what a transformers + peft script does, on the same batches, optimizer and schedule."""
    import torch

    from trainer_service.worker.train import _to_device, batch_indices, schedule
    from vlmforge.chat_format import ChatCollator
    from vlmforge.families import family_for_model_type

    trainable = [p for p in peft_model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=hyper.learning_rate, weight_decay=hyper.weight_decay,
                                  fused=backend.placement.device.type == "cuda")
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


def _realistic_samples(processor, count: int):
    """Sizes as real VQA data has them (ChartQA / DocVQA / CORD): per sample a shortest side of 280-1344 px and an
    aspect of 0.5-2, both log-uniform, and an answer of 1-256 tokens (log-uniform: most answers are short), from a
    fixed seed. JPEG, as most such datasets ship, so making 3-megapixel images stays quick."""
    import numpy as np
    from PIL import Image

    from vlmforge.data.types import Conversation, ImagePart, ImageRef, Message, TextPart

    words = ("the total of the second column is forty two and the invoice lists three items with their prices "
             "while the chart shows revenue by quarter for each region ") * 24
    ids = processor.tokenizer.encode(words, add_special_tokens=False)
    question = processor.tokenizer.decode(ids[:24])
    generator = np.random.default_rng(1)
    base = generator.integers(0, 256, (96, 96, 3), dtype=np.uint8)
    samples = []
    for index in range(count):
        short = math.exp(generator.uniform(math.log(280), math.log(1344)))
        aspect = math.exp(generator.uniform(math.log(0.5), math.log(2)))
        width, height = (round(short * aspect), round(short)) if aspect >= 1 else (round(short), round(short / aspect))
        image = Image.fromarray(np.roll(base, index, axis=0)).resize((width, height), Image.Resampling.BILINEAR)
        jpeg = io.BytesIO()
        image.save(jpeg, format="JPEG", quality=90)
        answer_tokens = round(math.exp(generator.uniform(0, math.log(256))))
        answer = processor.tokenizer.decode(ids[index % 97:index % 97 + answer_tokens])
        samples.append(Conversation((Message("user", (ImagePart(ImageRef(data=jpeg.getvalue())), TextPart(question))),
                                     Message("assistant", (TextPart(answer),))), source=f"realistic:{index}"))
    return samples


def sample_work(processor, sample) -> dict[str, int] | None:
    """A Qwen2-VL sample's real (unpadded) sizes without running the processor: language tokens, vision patches
    per image and answer tokens. None for other families."""
    from PIL import Image
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize

    from vlmforge.chat_format import to_hf_messages
    from vlmforge.data.types import ImagePart, TextPart

    image_processor = processor.image_processor
    if type(image_processor).__name__ not in ("Qwen2VLImageProcessor", "Qwen2VLImageProcessorFast"):
        return None
    factor = image_processor.patch_size * image_processor.merge_size
    size = image_processor.size
    pixels = (size["shortest_edge"], size["longest_edge"]) if isinstance(size, dict) else (size.shortest_edge,
                                                                                           size.longest_edge)
    patches = []
    for message in sample.messages:
        for part in message.parts:
            if isinstance(part, ImagePart):
                width, height = Image.open(io.BytesIO(part.image.data)).size
                resized = smart_resize(height, width, factor=factor, min_pixels=pixels[0], max_pixels=pixels[1])
                patches.append(resized[0] * resized[1] // image_processor.patch_size**2)
    text = processor.apply_chat_template(to_hf_messages(sample.messages), tokenize=False)
    tokens = len(processor.tokenizer.encode(text, add_special_tokens=False))
    tokens += sum(p // image_processor.merge_size**2 - 1 for p in patches)  # each image's one pad token expands
    answer = "".join(part.text for message in sample.messages if message.role == "assistant"
                     for part in message.parts if isinstance(part, TextPart))
    return {"tokens": tokens, "patches": patches,
            "answer_tokens": len(processor.tokenizer.encode(answer, add_special_tokens=False)) + 1}  # + turn end


def model_flops(config, work: dict) -> float:
    """Model FLOPs of one LoRA training step on one sample's real tokens (no padding, no recomputation): every
    frozen matmul runs forward and backward to its input (2 x 2 x params x tokens; frozen weights take no weight
    gradient), attention forward + backward (3x its forward; causal counted as half), the LM head on answer
    tokens only (all the loss needs). The adapters' own FLOPs (~1% of the base's) are left out."""
    text, vision = config.text_config, config.vision_config
    hidden, layers = text.hidden_size, text.num_hidden_layers
    kv = hidden // text.num_attention_heads * text.num_key_value_heads
    lm_params = layers * (2 * hidden * hidden + 2 * hidden * kv + 3 * hidden * text.intermediate_size)
    width, depth = vision.embed_dim, vision.depth
    block_params = depth * (4 * width * width + 2 * width * width * vision.mlp_ratio)
    merged = width * vision.spatial_merge_size**2
    merger_params = merged * merged + merged * vision.hidden_size
    flops = 4 * lm_params * work["tokens"] + 3 * 2 * layers * work["tokens"] ** 2 * hidden
    flops += 4 * hidden * text.vocab_size * work["answer_tokens"]
    for patches in work["patches"]:
        flops += 4 * block_params * patches + 4 * merger_params * patches // vision.spatial_merge_size**2
        flops += 3 * 4 * depth * patches**2 * width
    return float(flops)


def _timed_work(peft_model, processor, samples, hyper, ranks, steps, plan) -> dict | None:
    """Real tokens and model FLOPs of the timed steps on this rank, how unequal the samples of a batch are, and
    the share of the language model's positions that are padding (none in a packed row)."""
    config = peft_model.config
    if config.model_type != "qwen2_vl":  # the FLOP count is Qwen2-VL's (Qwen2.5-VL's vision attends in windows)
        return None
    tokens = flops = positions = 0.0
    spreads = []
    for step in steps:
        for micro in range(hyper.gradient_accumulation_steps):
            works = [sample_work(processor, samples[i]) for i in plan.indices(step, micro, ranks)]
            lengths = [min(w["tokens"], hyper.max_sequence_length) for w in works]
            tokens += sum(lengths)
            positions += sum(lengths) if hyper.packing else max(lengths) * len(lengths)
            flops += sum(model_flops(config, w) for w in works)
            spreads.append(max(lengths) / min(lengths))
    spreads.sort()
    return {"tokens": tokens, "flops": flops, "spread": spreads[len(spreads) // 2], "padding": 1 - tokens / positions}


def _print_table(results: dict[str, dict], args) -> None:
    import torch

    workload = (f"{args.image_size_px}px image + {args.text_tokens} text tokens per sample"
                if args.workload == "uniform" else "realistic sizes (280-1344 px shortest side, aspect 0.5-2, "
                "answers of 1-256 tokens)")
    spread = next((r["spread"] for r in results.values() if r.get("spread")), None)
    device = "CPU (smoke: nothing measured)" if args.cpu_smoke else torch.cuda.get_device_name()
    print(f"\n{device}, batch {args.batch_size}, {workload}, LoRA r={args.lora_rank} on every "
          f"linear layer, {args.steps} timed steps after {args.warmup_steps}; MFU against "
          f"{H200_BF16_DENSE_PEAK_FLOPS / 1e12:.1f} TFLOP/s (bf16 dense, datasheet)"
          + (f"; a batch's longest sample has {spread:.1f}x the tokens of its shortest (median)" if spread else ""))
    print("| loop / backend | method | gradient checkpointing | GPUs | samples/s | real tokens/s | padding | MFU "
          "| peak GiB (rank 0) | vs plain | largest loss difference vs plain |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for config, result in results.items():
        backend, method, checkpointing, gpus = config.split(":")
        baseline = results.get(f"plain:{method}:{checkpointing}:{gpus}")
        ratio = f"{result['samples_per_second'] / baseline['samples_per_second']:.2f}x" if baseline else "-"
        drift = "-"
        same_batches = backend != "grouped" and not (result.get("max_tokens_per_batch") and args.max_tokens_per_batch)
        if baseline and backend != "plain" and same_batches:
            drift = f"{max(abs(a - b) / abs(b) for a, b in zip(result['losses'], baseline['losses'])):.2%}"
        tokens = f"{result['tokens_per_second']:,.0f}" if result.get("tokens_per_second") else "-"
        mfu = f"{result['mfu']:.1%}" if result.get("mfu") else "-"
        padding = f"{result['padding']:.0%}" if result.get("padding") is not None else "-"
        if result.get("max_tokens_per_batch"):
            backend += f" ({result['max_tokens_per_batch']:,} tokens a row)"
        print(f"| {backend} | {method} | {'on' if checkpointing == 'gc' else 'off'} | {gpus.removesuffix('gpu')} | "
              f"{result['samples_per_second']:.2f} | {tokens} | {padding} | {mfu} | {result['peak_gib']:.1f} | "
              f"{ratio} | {drift} |")
    for config, result in results.items():
        print(f"{config} first losses: {', '.join(f'{loss:.4f}' for loss in result['losses'][:5])}")


if __name__ == "__main__":
    main()
