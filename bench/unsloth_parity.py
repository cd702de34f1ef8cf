"""Why Unsloth's losses leave plain transformers + peft's: one experiment that separates the candidate causes.

Two processes on one model directory (Unsloth patches transformers when imported), the same two batches, the
same seed. `reference` (transformers + peft, the plain loop: `model(**batch).loss`, no autocast) saves its LoRA
weights before and after one AdamW step, its gradients and both losses. `unsloth` then reports what its
`get_peft_model` made (trainable names, dtypes, PEFT config, each layer's scaling, dropout) and, with the
reference's own initial weights loaded into it, the gradients it computes on the same batch and its loss on
the second batch with the reference's updated weights: equal forward + backward means the difference is in
the set-up (which tensors train, in which dtype, at which scale), unequal means its kernels.

    python bench/unsloth_parity.py --model-dir DIR --work-dir /tmp/parity
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", type=Path, required=True)
    parser.add_argument("--work-dir", type=Path, required=True)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lora-rank", type=int, default=16)
    parser.add_argument("--lora-alpha", type=float, default=16)
    parser.add_argument("--child", choices=("reference", "unsloth"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        report = _reference(args) if args.child == "reference" else _unsloth(args)
        (args.work_dir / f"{args.child}.json").write_text(json.dumps(report, indent=1))
        return
    args.work_dir.mkdir(parents=True, exist_ok=True)
    for child in ("reference", "unsloth"):
        started = time.perf_counter()
        done = subprocess.run([sys.executable, __file__, *sys.argv[1:], "--child", child],
                              env={**os.environ, "HF_HUB_OFFLINE": "1", "UNSLOTH_DISABLE_STATISTICS": "1"})
        print(f"{child}: exit {done.returncode} in {time.perf_counter() - started:.0f} s", flush=True)
        if done.returncode:
            sys.exit(done.returncode)
    _compare(args.work_dir)


def _hyper(args):
    from trainer_service.job_spec import Hyperparameters

    return Hyperparameters(max_steps=2, batch_size=args.batch_size, learning_rate=2e-4, lora_rank=args.lora_rank,
                           lora_alpha=args.lora_alpha, gradient_checkpointing=False, checkpoint_every_steps=10**6,
                           scheduler="constant", max_sequence_length=16384)


def _batches(args, processor, model_type: str):
    from train_throughput import _samples

    from trainer_service.worker.train import _to_device
    from vlmforge.chat_format import ChatCollator
    from vlmforge.families import family_for_model_type

    collate = ChatCollator(processor, family=family_for_model_type(model_type), max_length=16384)
    samples = _samples(processor, 2 * args.batch_size, 64, 448)
    return [collate(samples[i * args.batch_size:(i + 1) * args.batch_size]) for i in range(2)], _to_device


def _trainable(model) -> dict:
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


def _setup_report(model) -> dict:
    """What an adapter set-up consists of: the trainable tensors, the PEFT config, each layer's scale."""
    import torch
    from peft.tuners.lora import LoraLayer

    trainable = _trainable(model)
    scalings, dropouts, forwards = {}, {}, {}
    for name, module in model.named_modules():
        if isinstance(module, LoraLayer):
            scale = module.scaling.get("default")
            scalings[str(scale)] = scalings.get(str(scale), 0) + 1
            drop = type(module.lora_dropout["default"]).__name__
            dropouts[drop] = dropouts.get(drop, 0) + 1
            forward = f"{type(module).__module__}.{type(module).__qualname__}:{type(module).forward.__module__}"
            forwards[forward] = forwards.get(forward, 0) + 1
    config = model.peft_config["default"]
    dtypes: dict[str, int] = {}
    for p in trainable.values():
        dtypes[str(p.dtype)] = dtypes.get(str(p.dtype), 0) + p.numel()
    frozen_dtypes: dict[str, int] = {}
    for p in model.parameters():
        if not p.requires_grad:
            frozen_dtypes[str(p.dtype)] = frozen_dtypes.get(str(p.dtype), 0) + p.numel()
    return {
        "trainable_tensors": len(trainable), "trainable_parameters": sum(p.numel() for p in trainable.values()),
        "trainable_dtypes": dtypes, "frozen_dtypes": frozen_dtypes,
        "non_lora_trainable": [n for n in trainable if ".lora_" not in n],
        "lora_scalings": scalings, "lora_dropouts": dropouts, "lora_layer_classes": forwards,
        "peft_config": {k: str(getattr(config, k, None)) for k in ("r", "lora_alpha", "use_rslora", "lora_dropout",
                                                                    "init_lora_weights", "bias", "target_modules",
                                                                    "use_dora")},
        "patched": {"AdamW": torch.optim.AdamW.__module__,
                    "clip_grad_norm_": torch.nn.utils.clip_grad_norm_.__module__,
                    "cross_entropy": torch.nn.functional.cross_entropy.__module__,
                    "checkpoint": torch.utils.checkpoint.checkpoint.__module__,
                    "model_forward": f"{type(model.base_model.model).forward.__module__}"},
        "names": sorted(trainable),
    }


def _step(model, batches, to_device, placement, hyper, work_dir: Path, tag: str, *, start_state=None) -> dict:
    """Loss + gradients on batch 0, one AdamW step (the trainer's: clip 1.0, fused), loss on batch 1."""
    import torch

    trainable = _trainable(model)
    if start_state is not None:
        with torch.no_grad():
            for name, p in trainable.items():
                p.copy_(start_state[name])
    optimizer = torch.optim.AdamW(list(trainable.values()), lr=hyper.learning_rate, weight_decay=0.0, fused=True)
    with torch.no_grad():
        loss1_init = model(**to_device(batches[1], placement)).loss.item()
    loss0 = model(**to_device(batches[0], placement)).loss
    loss0.backward()
    grads = {name: p.grad.detach().float().cpu() for name, p in trainable.items() if p.grad is not None}
    total_norm = float(torch.nn.utils.clip_grad_norm_(list(trainable.values()), 1.0))
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    with torch.no_grad():
        loss1 = model(**to_device(batches[1], placement)).loss
    after = {name: p.detach().float().cpu() for name, p in trainable.items()}
    torch.save(grads, work_dir / f"{tag}_grads.pt")
    torch.save(after, work_dir / f"{tag}_after.pt")
    return {"loss0": loss0.item(), "loss1_init": loss1_init, "loss1": loss1.item(), "grad_norm": total_norm,
            "no_grad": [n for n in trainable if n not in grads]}


def _reference(args) -> dict:
    import torch
    from transformers import AutoProcessor

    from trainer_service.worker.backends import select_backend
    from trainer_service.worker.train import seed_everything

    hyper = _hyper(args)
    backend = select_backend("transformers")
    processor = AutoProcessor.from_pretrained(args.model_dir)
    model = backend.load(args.model_dir, quantize_4bit=False, hyper=hyper)
    seed_everything(hyper.seed)
    model = backend.add_lora(model, hyper)
    report = _setup_report(model)
    torch.save({n: p.detach().float().cpu() for n, p in _trainable(model).items()}, args.work_dir / "init.pt")
    batches, to_device = _batches(args, processor, model.config.model_type)
    model.train()
    report["step"] = _step(model, batches, to_device, backend.placement, hyper, args.work_dir, "reference")
    # The step without its projector part: batch 1's loss with the merger adapters' B back at zero.
    with torch.no_grad():
        for name, p in _trainable(model).items():
            if "merger" in name and "lora_B" in name:
                p.zero_()
        report["loss1_without_merger_update"] = model(**to_device(batches[1], backend.placement)).loss.item()
    return report


def _unsloth(args) -> dict:
    import torch

    from trainer_service.worker.backends import select_backend
    from trainer_service.worker.train import seed_everything

    hyper = _hyper(args)
    backend = select_backend("unsloth")  # imports Unsloth, which must come before transformers
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(args.model_dir)
    model = backend.load(args.model_dir, quantize_4bit=False, hyper=hyper)
    seed_everything(hyper.seed)
    model = backend.add_lora(model, hyper)
    report = _setup_report(model)
    init = torch.load(args.work_dir / "init.pt")
    own = {n: p.detach().float().cpu() for n, p in _trainable(model).items()}
    report["init_vs_reference"] = {
        "same_names": sorted(own) == sorted(init),
        "max_abs_diff_A": max((float((own[n] - init[n]).abs().max()) for n in own if n in init and "lora_A" in n),
                              default=None),
        "max_abs_B": max((float(own[n].abs().max()) for n in own if "lora_B" in n), default=None),
    }
    batches, to_device = _batches(args, processor, model.config.model_type)
    backend.for_training(model)
    shared_init = {n: init[n] for n in own if n in init}
    report["step_own_init"] = _step(model, batches, to_device, backend.placement, hyper, args.work_dir, "unsloth_own")
    report["step"] = _step(model, batches, to_device, backend.placement, hyper, args.work_dir, "unsloth",
                           start_state={**own, **shared_init})
    # Forward alone: batch 1's loss with the reference's weights after its step.
    reference_after = torch.load(args.work_dir / "reference_after.pt")
    with torch.no_grad():
        for name, p in _trainable(model).items():
            if name in reference_after:
                p.copy_(reference_after[name])
        report["loss1_with_reference_weights"] = model(**to_device(batches[1], backend.placement)).loss.item()
        # The same weights through transformers' own loss on the logits Unsloth's forward returns (its fused
        # cross-entropy left out): tells its loss apart from its forward.
        os.environ["UNSLOTH_RETURN_LOGITS"] = "1"
        try:
            report["loss1_with_reference_weights_logits_path"] = model(
                **to_device(batches[1], backend.placement)).loss.item()
        except Exception as error:  # noqa: BLE001 - a diagnostic: report what failed and carry on
            report["loss1_with_reference_weights_logits_path"] = float("nan")
            report["logits_path_error"] = repr(error)[:300]
    return report


def _compare(work_dir: Path) -> None:
    import torch

    ref = json.loads((work_dir / "reference.json").read_text())
    uns = json.loads((work_dir / "unsloth.json").read_text())
    for key in ("trainable_tensors", "trainable_parameters", "trainable_dtypes", "frozen_dtypes", "lora_scalings",
                "lora_dropouts", "lora_layer_classes", "peft_config", "patched", "non_lora_trainable"):
        print(f"{key}:\n  reference {ref[key]}\n  unsloth   {uns[key]}")
    only_ref = sorted(set(ref["names"]) - set(uns["names"]))
    only_uns = sorted(set(uns["names"]) - set(ref["names"]))
    print(f"trainable only in reference ({len(only_ref)}): {only_ref[:8]}")
    print(f"trainable only in unsloth ({len(only_uns)}): {only_uns[:8]}")
    print(f"init vs reference: {uns['init_vs_reference']}; logits path error: {uns.get('logits_path_error')}")
    print(f"reference step: {ref['step']}")
    print(f"unsloth step, reference init: {uns['step']}")
    print(f"unsloth step, its own init: {uns['step_own_init']}")
    print(f"unsloth loss on batch 1 with the reference's updated weights: {uns['loss1_with_reference_weights']:.4f} "
          f"(through the logits: {uns['loss1_with_reference_weights_logits_path']:.4f}; reference "
          f"{ref['step']['loss1']:.4f}, reference without its merger update {ref['loss1_without_merger_update']:.4f})")
    ref_grads = torch.load(work_dir / "reference_grads.pt")
    uns_grads = torch.load(work_dir / "unsloth_grads.pt")
    groups: dict[str, list[tuple[float, float]]] = {}
    for name, grad in ref_grads.items():
        if name not in uns_grads:
            continue
        other = uns_grads[name]
        group = ("vision" if ".visual." in name else "language") + (".merger" if "merger" in name else "") + \
            (".A" if "lora_A" in name else ".B")
        ratio = float(other.norm() / grad.norm().clamp_min(1e-30))
        cosine = float(torch.nn.functional.cosine_similarity(other.flatten(), grad.flatten(), dim=0))
        groups.setdefault(group, []).append((ratio, cosine))
    print("| gradient group | tensors | norm ratio unsloth/reference (min, median, max) | cosine (min, median) |")
    print("|---|---|---|---|")
    for group, values in sorted(groups.items()):
        ratios = sorted(v[0] for v in values)
        cosines = sorted(v[1] for v in values)
        print(f"| {group} | {len(values)} | {ratios[0]:.3f}, {ratios[len(ratios) // 2]:.3f}, {ratios[-1]:.3f} | "
              f"{cosines[0]:.4f}, {cosines[len(cosines) // 2]:.4f} |")


if __name__ == "__main__":
    main()
