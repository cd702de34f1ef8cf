"""Protobuf <-> domain, at the edge only (TGI's from_pb/to_pb idea): nothing past this module sees `_pb2`."""

from __future__ import annotations

import dataclasses
import math

from google.protobuf.timestamp_pb2 import Timestamp

from vlmforge.data import ColumnMapping, DatasetFormat
from vlmforge.trainer.v1 import trainer_pb2 as pb

from ..domain import Job, JobEvent, JobStatus
from ..errors import InvalidArgumentError
from ..job_spec import AliasPromotion, Hyperparameters, JobSpec, Placement, Toleration

_STATUS_TO_PB = {
    JobStatus.VALIDATING_FILES: pb.JOB_STATUS_VALIDATING_FILES,
    JobStatus.QUEUED: pb.JOB_STATUS_QUEUED,
    JobStatus.RUNNING: pb.JOB_STATUS_RUNNING,
    JobStatus.SUCCEEDED: pb.JOB_STATUS_SUCCEEDED,
    JobStatus.FAILED: pb.JOB_STATUS_FAILED,
    JobStatus.CANCELLED: pb.JOB_STATUS_CANCELLED,
}
_STATUS_FROM_PB = {value: key for key, value in _STATUS_TO_PB.items()}
_FORMAT_FROM_PB = {
    pb.DATASET_FORMAT_UNSPECIFIED: None,
    pb.DATASET_FORMAT_CONVERSATION: DatasetFormat.CONVERSATION,
    pb.DATASET_FORMAT_OPENAI: DatasetFormat.OPENAI,
    pb.DATASET_FORMAT_TABLE: DatasetFormat.TABLE,
    pb.DATASET_FORMAT_SHAREGPT: DatasetFormat.SHAREGPT,
    pb.DATASET_FORMAT_ALPACA: DatasetFormat.ALPACA,
    pb.DATASET_FORMAT_LLAVA: DatasetFormat.LLAVA,
    pb.DATASET_FORMAT_TRL_MESSAGES: DatasetFormat.TRL_MESSAGES,
}
_METHOD_FROM_PB = {pb.FINE_TUNING_METHOD_UNSPECIFIED: "lora", pb.FINE_TUNING_METHOD_LORA: "lora",
                   pb.FINE_TUNING_METHOD_QLORA: "qlora"}
_METHOD_TO_PB = {"lora": pb.FINE_TUNING_METHOD_LORA, "qlora": pb.FINE_TUNING_METHOD_QLORA}
_SCHEDULER_FROM_PB = {pb.LEARNING_RATE_SCHEDULER_UNSPECIFIED: "cosine", pb.LEARNING_RATE_SCHEDULER_COSINE: "cosine",
                      pb.LEARNING_RATE_SCHEDULER_LINEAR: "linear", pb.LEARNING_RATE_SCHEDULER_CONSTANT: "constant"}
_SCHEDULER_TO_PB = {name: number for number, name in _SCHEDULER_FROM_PB.items() if number}
_STRATEGY_FROM_PB = {pb.DISTRIBUTED_STRATEGY_UNSPECIFIED: "auto", pb.DISTRIBUTED_STRATEGY_AUTO: "auto",
                     pb.DISTRIBUTED_STRATEGY_DDP: "ddp", pb.DISTRIBUTED_STRATEGY_FSDP: "fsdp"}
_STRATEGY_TO_PB = {name: number for number, name in _STRATEGY_FROM_PB.items() if number}
# Optional scalar fields copied as they are when the client set them.
_SCALAR_HYPERPARAMETERS = (
    "epochs", "max_steps", "batch_size", "gradient_accumulation_steps", "learning_rate", "warmup_steps",
    "weight_decay", "seed", "max_sequence_length", "lora_rank", "lora_alpha", "lora_dropout",
    "finetune_vision_layers", "finetune_language_layers", "finetune_attention_modules", "finetune_mlp_modules",
    "eval_every_steps", "checkpoint_every_steps", "gradient_checkpointing", "finetune_projector",
    "warmup_ratio", "validation_split", "max_samples", "packing", "max_tokens_per_batch", "group_by_length",
)


def spec_from_pb(request: pb.CreateFineTuningJobRequest) -> tuple[JobSpec, str | None]:
    columns = None
    if request.HasField("columns"):
        columns = ColumnMapping(request.columns.image, request.columns.question, request.columns.answer)
    spec = JobSpec(
        model=request.model,
        training_file=request.training_file,
        validation_file=request.validation_file,
        test_file=request.test_file,
        dataset_format=_enum(_FORMAT_FROM_PB, request.dataset_format, "dataset_format"),
        columns=columns,
        method=_enum(_METHOD_FROM_PB, request.method, "method"),
        hyperparameters=hyperparameters_from_pb(request.hyperparameters),
        suffix=request.suffix,
        metadata=dict(request.metadata),
        placement=placement_from_pb(request.placement),
        dataset_name=request.dataset_name,
        promote_to_alias=promotion_from_pb(request),
        report_to=tuple(request.report_to),
    )
    return spec, request.client_request_id or None


def promotion_from_pb(request: pb.CreateFineTuningJobRequest) -> AliasPromotion | None:
    if not request.HasField("promote_to_alias"):
        return None
    return AliasPromotion(request.promote_to_alias.alias, request.promote_to_alias.metric or AliasPromotion.metric)


def placement_from_pb(message: pb.Placement) -> Placement:
    return Placement(message.gpu_count, dict(message.node_selector), tuple(
        Toleration(t.key, t.operator or "Equal", t.value, t.effect) for t in message.tolerations),
        nodes=message.nodes, strategy=_enum(_STRATEGY_FROM_PB, message.strategy, "placement.strategy"))


def _placement_to_pb(placement: dict) -> pb.Placement:
    return pb.Placement(gpu_count=placement.get("gpu_count", 0), node_selector=placement.get("node_selector", {}),
                        tolerations=[pb.Toleration(**t) for t in placement.get("tolerations", ())],
                        nodes=placement.get("nodes", 0),
                        strategy=_STRATEGY_TO_PB.get(placement.get("strategy", "auto"), 0))


def hyperparameters_from_pb(message: pb.Hyperparameters) -> Hyperparameters:
    values = {name: getattr(message, name) for name in _SCALAR_HYPERPARAMETERS if message.HasField(name)}
    for name, value in values.items():
        if isinstance(value, float) and not math.isfinite(value):
            raise InvalidArgumentError(f"hyperparameters.{name}", "must be a finite number")
    values["scheduler"] = _enum(_SCHEDULER_FROM_PB, message.scheduler, "hyperparameters.scheduler")
    values["lora_target_modules"] = tuple(message.lora_target_modules)
    return dataclasses.replace(Hyperparameters(), **values)


def statuses_from_pb(values) -> list[JobStatus]:
    return [_enum(_STATUS_FROM_PB, value, "statuses") for value in values]


def job_to_pb(job: Job) -> pb.FineTuningJob:
    spec, result = job.spec, job.result
    message = pb.FineTuningJob(
        id=job.id, model=spec.get("model", ""), status=_STATUS_TO_PB[job.status],
        method=_METHOD_TO_PB.get(spec.get("method", "lora"), pb.FINE_TUNING_METHOD_UNSPECIFIED),
        training_file=spec.get("training_file", ""), validation_file=spec.get("validation_file", ""),
        test_file=spec.get("test_file", ""), suffix=spec.get("suffix", ""), metadata=spec.get("metadata", {}),
        created_at=_timestamp(job.created_at), fine_tuned_model=result.get("fine_tuned_model", ""),
        adapter_path=result.get("adapter_path", ""), merged_model_path=result.get("merged_model_path", ""),
        trained_steps=job.trained_steps, total_steps=job.total_steps, dataset_name=spec.get("dataset_name", ""),
        report_to=spec.get("report_to") or (),
    )
    hyper = spec.get("hyperparameters") or {}
    for name in _SCALAR_HYPERPARAMETERS:
        if hyper.get(name) is not None:
            setattr(message.hyperparameters, name, hyper[name])
    message.hyperparameters.scheduler = _SCHEDULER_TO_PB.get(hyper.get("scheduler", "cosine"), 0)
    message.hyperparameters.lora_target_modules.extend(hyper.get("lora_target_modules", ()))
    message.placement.CopyFrom(_placement_to_pb(spec.get("placement") or {}))
    if promotion := spec.get("promote_to_alias"):
        message.promote_to_alias.CopyFrom(pb.AliasPromotion(alias=promotion["alias"], metric=promotion["metric"]))
    if job.started_at:
        message.started_at.CopyFrom(_timestamp(job.started_at))
    if job.finished_at:
        message.finished_at.CopyFrom(_timestamp(job.finished_at))
    if job.error:
        message.error.code, message.error.message = job.error.code, job.error.message
    for phase, target in (("before", message.evaluation_before), ("after", message.evaluation_after)):
        if f"evaluation_{phase}" in result:
            target.CopyFrom(pb.EvaluationScores(**result[f"evaluation_{phase}"]))
    return message


def event_to_pb(event: JobEvent) -> pb.FineTuningJobEvent:
    message = pb.FineTuningJobEvent(job_id=event.job_id, sequence=event.sequence, message=event.message,
                                    created_at=_timestamp(event.created_at))
    payload = event.payload
    if event.kind == "status_changed":
        message.status_changed.status = _STATUS_TO_PB[JobStatus(payload["status"])]
        if "error" in payload:
            message.status_changed.error.code = payload["error"]["code"]
            message.status_changed.error.message = payload["error"]["message"]
    elif event.kind == "progress":
        message.progress.CopyFrom(pb.TrainingProgress(**payload))
    elif event.kind == "evaluation":
        message.evaluation.CopyFrom(pb.EvaluationResult(phase=payload["phase"], step=payload.get("step", 0),
                                                        scores=pb.EvaluationScores(**payload["scores"])))
    elif event.kind == "checkpoint":
        message.checkpoint.CopyFrom(pb.CheckpointSaved(step=payload["step"], path=payload["path"]))
    elif event.kind == "alias_decision":
        message.alias_decision.CopyFrom(_alias_decision_to_pb(payload))
    elif event.kind == "gpu_assignment":
        message.gpu_assignment.CopyFrom(pb.GpuAssignment(gpus=payload["gpus"],
                                                         visible_devices=payload["visible_devices"]))
    return message


def _alias_decision_to_pb(payload: dict) -> pb.AliasDecision:
    decision = pb.AliasDecision(alias=payload["alias"], metric=payload["metric"], promoted=payload["promoted"],
                                reason=payload["reason"], candidate=payload["candidate"],
                                current_target=payload.get("current_target") or "",
                                test_set_sha256=payload.get("test_set_sha256", ""),
                                alias_version=payload.get("version", 0))
    for name in ("candidate_score", "current_score"):
        if payload.get(name) is not None:
            setattr(decision, name, payload[name])
    return decision


def status_to_pb(status: JobStatus) -> int:
    return _STATUS_TO_PB[status]


def status_from_pb(value: int, field: str = "status") -> JobStatus:
    return _enum(_STATUS_FROM_PB, value, field)


def _enum(table: dict, value: int, field: str):
    if value not in table:
        raise InvalidArgumentError(field, f"unknown enum value {value}")
    return table[value]


def _timestamp(seconds: float) -> Timestamp:
    stamp = Timestamp()
    stamp.FromNanoseconds(int(seconds * 1e9))
    return stamp
