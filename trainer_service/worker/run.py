"""One job, start to finish, in this process: evaluate the base, train (resuming from a checkpoint), write
the artifacts atomically, evaluate the result, and report every step through the job store."""

from __future__ import annotations

import dataclasses
import gc
import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

import torch

from vlmforge.artifacts import ADAPTER_DIR, LOSS_PLOT_FILE, MANIFEST_FILE, MERGED_DIR, model_config_digest, safe_model_name
from vlmforge.build_cache import built_atomically
from vlmforge.families import family_for_model_dir
from vlmforge.families.checkpoints import rename_weights_for_vllm

from ..deploy import InferenceNotifier
from ..launcher import SERVICE_PID_ENV
from ..domain import JobError, JobStatus
from ..errors import FailedPreconditionError
from ..evaluation import answer_questions, score_answers
from ..job_spec import Hyperparameters, JobSpec, dataset_sources, load_job_dataset
from ..promotion import promote_job_adapter, dataset_sha256
from ..store import JobRecords
from .backends import TrainingBackend, select_backend
from .distributed import Ranks, bf16_parameter_bytes, choose_strategy, gpu_memory_bytes
from .splits import split_training_set
from .tracking import JobTracking, TrackedRecords
from .train import Cancelled, Progress, seed_everything, train

logger = logging.getLogger(__name__)


def fine_tuned_model_name(model_dir: Path, suffix: str, job_id: str) -> str:
    """Also the artifact store entry's directory name; matches vlmforge.artifacts.MODEL_NAME_PATTERN."""
    return f"{safe_model_name(model_dir.name)}-ft-{suffix + '-' if suffix else ''}{job_id.removeprefix('ftjob-')[:8]}"


def run_job(store: JobRecords, job_id: str, state_dir: Path, *, backend: TrainingBackend | None = None,
            artifacts_dir: Path | None = None, notifier: InferenceNotifier | None = None,
            ranks: Ranks = Ranks()) -> None:
    """Rank 0 does everything; other ranks (torchrun) only train their slice of each batch. Rank 0 also reports
    to the job's experiment trackers (worker/tracking.py): its progress and evaluations as they are recorded."""
    tracking = _open_tracking(store, job_id) if ranks.is_main else JobTracking.off()
    try:
        _run_job(TrackedRecords(store, tracking), job_id, state_dir, tracking, backend=backend,
                 artifacts_dir=artifacts_dir, notifier=notifier, ranks=ranks)
    except Cancelled:
        tracking.finish("cancelled")
        raise
    except BaseException:
        tracking.finish("failed")
        raise


def _open_tracking(store: JobRecords, job_id: str) -> JobTracking:
    """The trackers the job's stored spec names (Create filled in where each writes); a failing one is said on
    the job and dropped."""
    def warn(message: str) -> None:
        store.append_event(job_id, "log", message)

    return JobTracking.open(store.get_job(job_id).spec.get("tracking") or {}, warn)


def _tracked_parameters(spec: JobSpec, hyper: Hyperparameters, model_dir: Path, backend: TrainingBackend,
                        samples: dict[str, int]) -> dict:
    """What the trackers record of a job: its model, datasets (and their sizes) and hyperparameters as used."""
    return {"model": spec.model, "model_dir": str(model_dir), "method": spec.method, "suffix": spec.suffix,
            "training_backend": backend.name, "training_file": spec.training_file,
            "validation_file": spec.validation_file, "test_file": spec.test_file, "dataset_name": spec.dataset_name,
            **{f"{split}_samples": count for split, count in samples.items()},
            **{f"hyperparameters.{name}": value for name, value in dataclasses.asdict(hyper).items()}}


def _run_job(store: JobRecords, job_id: str, state_dir: Path, tracking: JobTracking, *,
             backend: TrainingBackend | None, artifacts_dir: Path | None, notifier: InferenceNotifier | None,
             ranks: Ranks) -> None:
    from transformers import AutoProcessor

    backend = backend or select_backend("auto")
    job = store.get_job(job_id)
    spec = JobSpec.from_json(job.spec)
    hyper = spec.hyperparameters
    model_dir = Path(job.spec["model_dir"])
    ranks, strategy_event = _with_strategy(ranks, spec, model_dir, backend)
    if ranks.is_main:
        gpus = f" x {ranks.world_size} processes with {ranks.strategy.upper()}" if ranks.distributed else ""
        store.append_event(job_id, "log", f"training with {backend.name} on {backend.placement.device}{gpus} "
                           f"({str(backend.placement.dtype).removeprefix('torch.')}"
                           f"{', 4-bit NF4 base' if spec.method == 'qlora' else ''})")
        if strategy_event:
            store.append_event(job_id, "log", *strategy_event)
        for field_name, chosen in job.spec.get("dataset_formats", {}).items():  # as Create detected them
            store.append_event(job_id, "log", f"dataset format: {chosen} for {field_name}")
    if hyper.packing and backend.fused_loss:  # same decision on every rank
        hyper = dataclasses.replace(hyper, packing=False)
        if ranks.is_main:
            store.append_event(job_id, "log", f"packing off: the {backend.name} backend's own forward and loss do "
                               f"not take packed rows; training padded batches of {hyper.batch_size} samples")
    if ranks.is_main:
        store.append_event(job_id, "log", training_levers(hyper), {"levers": _lever_values(hyper)})
    processor = AutoProcessor.from_pretrained(model_dir)
    # A sharded model is built with its adapters, shard by shard, below (fsdp.py): no rank loads it whole here.
    model = None if ranks.shards_model else backend.load(model_dir, quantize_4bit=spec.method == "qlora", hyper=hyper)
    sources = dataset_sources(job.spec)  # a file id's stored dataset, or the path the job names
    train_set = load_job_dataset(spec, "training_file", sources["training_file"])
    test_set = load_job_dataset(spec, "test_file", sources["test_file"]) if spec.test_file else []
    validation_set = (load_job_dataset(spec, "validation_file", sources["validation_file"])
                      if spec.validation_file and hyper.eval_every_steps else [])
    train_set, held_out = split_training_set(train_set, hyper, validation_file_given=bool(spec.validation_file))
    validation_set = validation_set or (held_out if hyper.eval_every_steps else [])
    gc.freeze()  # the rows live as long as the job: full collections during training need not walk them again
    if ranks.is_main and tracking.trackers:
        samples = {"training": len(train_set), "validation": len(validation_set), "test": len(test_set)}
        resume = job.result.get("tracking", {})  # an earlier attempt's runs: logged into again
        state = tracking.start(job_id, _tracked_parameters(spec, hyper, model_dir, backend, samples), resume)
        if state != resume:
            store.merge_result(job_id, {"tracking": state})

    evaluate_before = test_set and "evaluation_before" not in job.result
    if ranks.is_main and evaluate_before and not ranks.shards_model:
        _evaluate(store, job_id, "before", backend, model, processor, test_set)

    seed_everything(hyper.seed)
    if ranks.shards_model:
        from .fsdp import build_sharded_peft_model

        peft_model = build_sharded_peft_model(model_dir, backend, hyper, ranks, seed=hyper.seed)
        if evaluate_before:
            with peft_model.disable_adapter():  # the base, as the other strategies score it
                _evaluate_on_every_rank(store, job_id, "before", backend, peft_model, processor, test_set, ranks)
    else:
        peft_model = backend.add_lora(model, hyper)

    def validate(step: int) -> None:  # rank 0, as it reports the step
        if validation_set and not ranks.shards_model:
            _evaluate(store, job_id, "validation", backend, peft_model, processor, validation_set, step=step)
            backend.for_training(peft_model)

    def validate_sharded(step: int) -> None:  # every rank after the step: a sharded model's forward is a collective
        if validation_set and ranks.shards_model and hyper.eval_every_steps and step % hyper.eval_every_steps == 0:
            _evaluate_on_every_rank(store, job_id, "validation", backend, peft_model, processor, validation_set,
                                    ranks, step=step)
            backend.for_training(peft_model)

    if ranks.is_main:
        vision_attention = backend.vision_attention(peft_model)
        store.append_event(job_id, "log", f"vision attention: {vision_attention}",
                           {"levers": {"vision_attention": vision_attention}})
    reporter = _JobReporter(store, job_id, hyper, validate)
    losses = train(peft_model, processor, train_set, hyper, state_dir / "checkpoints" / job_id, backend,
                   reporter.on_progress, reporter.on_checkpoint,
                   reporter.should_stop if ranks.is_main else lambda: False, ranks, after_step=validate_sharded)
    adapter_weights, after = None, None  # None: peft reads a whole model's own weights
    if ranks.shards_model:
        from .fsdp import full_adapter_state

        adapter_weights = full_adapter_state(peft_model)  # every rank sends its shards to rank 0
        if test_set:
            after = _evaluate_on_every_rank(store, job_id, "after", backend, peft_model, processor, test_set, ranks)
    if not ranks.is_main:
        return
    if test_set and not ranks.shards_model:
        after = _evaluate(store, job_id, "after", backend, peft_model, processor, test_set)
    name = fine_tuned_model_name(model_dir, spec.suffix, job_id)
    test_set_sha256 = dataset_sha256(test_set) if test_set else None  # what an alias's quality gate compares on
    artifact_dir = (artifacts_dir or state_dir / "artifacts") / name
    manifest = {
        "fine_tuned_model": name, "base_model": str(model_dir), "base_model_config_sha256":
        model_config_digest(model_dir), "job_id": job_id, "created_at": time.time(), "method": spec.method,
        "training_backend": backend.name, "hyperparameters": dataclasses.asdict(hyper),
        "training_file": spec.training_file, "test_set_sha256": test_set_sha256,
        "evaluation_before": store.get_job(job_id).result.get("evaluation_before"), "evaluation_after": after,
    }
    family = family_for_model_dir(model_dir)
    with built_atomically(artifact_dir) as staging:
        # adapter_config.json + adapter_model.safetensors
        peft_model.save_pretrained(staging / ADAPTER_DIR, state_dict=adapter_weights)
        del model, peft_model, adapter_weights  # the merge reloads the base in full precision: free the training copy
        if backend.placement.device.type == "cuda":
            torch.cuda.empty_cache()
        # A model sharded for not fitting one GPU is merged in host RAM.
        merge_to_16bit(model_dir, staging / ADAPTER_DIR, staging / MERGED_DIR,
                       torch.device("cpu") if ranks.shards_model else backend.placement.device)
        processor.save_pretrained(staging / MERGED_DIR)
        # What transformers writes is not always what vLLM reads (the adapter keeps peft's names: transformers
        # and peft load it, and vLLM serves it where the family allows).
        rename_weights_for_vllm(staging / MERGED_DIR, family)
        (staging / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n")
        _plot_losses(losses, staging / LOSS_PLOT_FILE)
    tracking.log_artifacts(artifact_dir / ADAPTER_DIR, artifact_dir / LOSS_PLOT_FILE)
    tracking.finish("succeeded")  # before SUCCEEDED: a client that sees it finds the runs complete
    if notifier is not None and family.vllm_serves:  # else the job said when created why nothing serves it
        notifier.notify(job_id, name)
    if spec.promote_to_alias is not None:  # after the push: the alias then moves to an adapter already loaded
        promote_job_adapter(store, job_id, spec.promote_to_alias, name, after, test_set_sha256, artifact_dir.parent,
                            servable=family.vllm_serves)
    store.transition(job_id, JobStatus.SUCCEEDED, f"succeeded: {name}", result={
        "fine_tuned_model": name, "adapter_path": str(artifact_dir / ADAPTER_DIR),
        "merged_model_path": str(artifact_dir / MERGED_DIR),
    })


def _with_strategy(ranks: Ranks, spec: JobSpec, model_dir: Path,
                   backend: TrainingBackend) -> tuple[Ranks, tuple[str, dict] | None]:
    """The job's `placement.strategy` on this machine (`auto` decided here, where the GPUs are known), and the
    log event saying which and why (None in one process: there is nothing to spread over)."""
    if not ranks.distributed:
        return ranks, None
    weights = bf16_parameter_bytes(model_dir)
    memory = gpu_memory_bytes()  # None on every rank or on none: CUDA is there for all or for no process
    memory = None if memory is None else ranks.smallest(memory)
    requested = "ddp" if spec.method == "qlora" else spec.placement.strategy  # a 4-bit base is not sharded
    strategy = choose_strategy(requested, parameter_bytes=weights, gpu_memory_bytes=memory,
                               gpu_count=ranks.world_size)
    if strategy == "fsdp" and backend.name != "transformers":
        raise FailedPreconditionError(f"placement.strategy fsdp trains with the transformers backend, not "
                                      f"{backend.name}")
    fits = f"{weights / 1e9:.1f} GB of bf16 weights" + (f", {memory / 1e9:.0f} GB per GPU" if memory else "")
    return dataclasses.replace(ranks, strategy=strategy), (
        f"strategy: {strategy} ({spec.placement.strategy} asked; {fits})",
        {"strategy": strategy, "parameter_bytes": weights, "gpu_memory_bytes": memory})


def _evaluate_on_every_rank(store: JobRecords, job_id: str, phase: str, backend: TrainingBackend, model, processor,
                            samples, ranks: Ranks, *, step: int = 0) -> dict | None:
    """A sharded model's forward is a collective: every rank generates the same answers in lockstep (same inputs,
    same gathered weights, greedy), and rank 0 alone scores and records them."""
    from .fsdp import reshard

    scores = None
    if ranks.is_main:
        scores = _evaluate(store, job_id, phase, backend, model, processor, samples, step=step)
    else:
        backend.for_inference(model)
        answer_questions(model, processor, samples)
    reshard(model)
    return scores


def _lever_values(hyper: Hyperparameters) -> dict:
    return {"packing": hyper.packing, "max_tokens_per_batch": hyper.max_tokens_per_batch if hyper.packing else None,
            "batch_size": hyper.batch_size, "group_by_length": hyper.group_by_length,
            "gradient_checkpointing": hyper.gradient_checkpointing}


def training_levers(hyper: Hyperparameters) -> str:
    """The job's event line saying what its speed depends on."""
    batches = (f"packing on (rows of at most {hyper.max_tokens_per_batch} tokens and {hyper.batch_size} samples)"
               if hyper.packing else
               f"packing off (batches of {hyper.batch_size}{', grouped by length' if hyper.group_by_length else ''})")
    return f"training levers: {batches}, gradient checkpointing {'on' if hyper.gradient_checkpointing else 'off'}"


class _JobReporter:
    """The training loop's callbacks: progress and checkpoints into the store, validation every
    `eval_every_steps`, and whether to stop (cancelled, or the launching service is gone)."""

    def __init__(self, store: JobRecords, job_id: str, hyper: Hyperparameters, validate: Callable[[int], None]):
        self.store, self.job_id, self.hyper, self.validate = store, job_id, hyper, validate
        self.parent_pid = os.getppid()
        # The local launcher names itself: under torchrun the parent is torchrun, which outlives a killed
        # service. A Kubernetes Job has no service process to watch; it outlives trainer restarts on purpose.
        service_pid = os.environ.get(SERVICE_PID_ENV)
        self.service_pid = int(service_pid) if service_pid else None

    def should_stop(self) -> bool:
        # A service that comes back requeues the job, which then resumes from its last checkpoint.
        if self.service_pid is not None and (os.getppid() != self.parent_pid
                                             or not _process_exists(self.service_pid)):
            return True
        return self.store.get_job(self.job_id).status is not JobStatus.RUNNING

    def on_progress(self, progress: Progress) -> None:
        self.store.record_progress(self.job_id, progress.step, progress.total_steps,
                                   f"step {progress.step}/{progress.total_steps} loss {progress.loss:.4f}",
                                   dataclasses.asdict(progress))
        every = self.hyper.eval_every_steps
        if every and progress.step % every == 0:
            self.validate(progress.step)

    def on_checkpoint(self, step: int, path: Path) -> None:
        self.store.append_event(self.job_id, "checkpoint", f"checkpoint at step {step}",
                                {"step": step, "path": str(path)})
        # A step redone after a resume is saved again: keep one entry per step.
        kept = [c for c in self.store.get_job(self.job_id).result.get("checkpoints", []) if c["step"] != step]
        self.store.merge_result(self.job_id, {"checkpoints": [*kept, {"step": step, "path": str(path)}]})


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def merge_to_16bit(model_dir: Path, adapter_dir: Path, merged_dir: Path, device: torch.device) -> None:
    """The base reloaded in fp32 (never the 4-bit copy QLoRA trained on), the adapter folded in, then saved in
    bf16: what `vllm serve` and transformers load as they are, whichever backend trained it."""
    from peft import PeftModel
    from transformers import AutoModelForImageTextToText

    base = AutoModelForImageTextToText.from_pretrained(model_dir, dtype=torch.float32, device_map={"": device})
    merged = PeftModel.from_pretrained(base, adapter_dir).merge_and_unload()
    merged.to(torch.bfloat16).save_pretrained(merged_dir)


def _evaluate(store: JobRecords, job_id: str, phase: str, backend: TrainingBackend, model, processor,
              samples, *, step: int = 0) -> dict:
    """`before` / `after` score the test file and are kept on the job; `validation` (every eval_every_steps)
    scores the validation file and is an event only."""
    backend.for_inference(model)
    answers = answer_questions(model, processor, samples)
    scores = dataclasses.asdict(score_answers([a.prediction for a in answers], [a.reference for a in answers]))
    at_step = f" at step {step}" if step else ""
    store.append_event(job_id, "evaluation", f"{phase}{at_step}: exact match {scores['exact_match']:.3f}",
                       {"phase": phase, "step": step, "scores": scores})
    if phase != "validation":
        store.merge_result(job_id, {f"evaluation_{phase}": scores})
    return scores


def _plot_losses(losses: list[float], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6, 3.5), dpi=100)
    axes.plot(range(1, len(losses) + 1), losses)
    axes.set_xlabel("step")
    axes.set_ylabel("training loss")
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def main_for(store: JobRecords, job_id: str, state_dir: Path, *, backend: TrainingBackend | None = None,
             artifacts_dir: Path | None = None, notifier: InferenceNotifier | None = None,
             ranks: Ranks = Ranks()) -> int:
    """Exit codes the launcher reads: 0 finished (succeeded, or stopped because cancelled), 3 failed for good."""
    try:
        run_job(store, job_id, state_dir, backend=backend, artifacts_dir=artifacts_dir, notifier=notifier,
                ranks=ranks)
    except Cancelled:
        logger.info("job %s stopped: cancelled or the service went away", job_id)
    except Exception as error:  # noqa: BLE001 - every failure is reported on the job, then the process ends
        logger.exception("job %s failed", job_id)
        if ranks.is_main and not store.get_job(job_id).status.is_terminal:
            store.transition(job_id, JobStatus.FAILED, f"failed: {type(error).__name__}",
                             error=JobError("training_failed", f"{type(error).__name__}: {error}"))
        return 3
    return 0
