"""Protobuf <-> the client's dataclasses, at the edge of the client only."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, fields
from datetime import datetime, timezone
from typing import Any

from vlmforge.trainer.v1 import files_pb2 as files_pb
from vlmforge.trainer.v1 import trainer_pb2 as pb

from . import types

_JOB_STATUS = {pb.JOB_STATUS_VALIDATING_FILES: "validating_files", pb.JOB_STATUS_QUEUED: "queued",
               pb.JOB_STATUS_RUNNING: "running", pb.JOB_STATUS_SUCCEEDED: "succeeded",
               pb.JOB_STATUS_FAILED: "failed", pb.JOB_STATUS_CANCELLED: "cancelled"}
_JOB_STATUS_TO_PB = {name: number for number, name in _JOB_STATUS.items()}
_METHOD = {pb.FINE_TUNING_METHOD_UNSPECIFIED: "lora", pb.FINE_TUNING_METHOD_LORA: "lora",
           pb.FINE_TUNING_METHOD_QLORA: "qlora"}
_METHOD_TO_PB = {"lora": pb.FINE_TUNING_METHOD_LORA, "qlora": pb.FINE_TUNING_METHOD_QLORA}
_FORMAT_TO_PB = {None: pb.DATASET_FORMAT_UNSPECIFIED, "conversation": pb.DATASET_FORMAT_CONVERSATION,
                 "openai": pb.DATASET_FORMAT_OPENAI, "table": pb.DATASET_FORMAT_TABLE,
                 "sharegpt": pb.DATASET_FORMAT_SHAREGPT, "alpaca": pb.DATASET_FORMAT_ALPACA,
                 "llava": pb.DATASET_FORMAT_LLAVA, "trl_messages": pb.DATASET_FORMAT_TRL_MESSAGES}
_SCHEDULER = {pb.LEARNING_RATE_SCHEDULER_COSINE: "cosine", pb.LEARNING_RATE_SCHEDULER_LINEAR: "linear",
              pb.LEARNING_RATE_SCHEDULER_CONSTANT: "constant"}
_SCHEDULER_TO_PB = {name: number for number, name in _SCHEDULER.items()}
_FILE_STATUS = {files_pb.FILE_STATUS_UPLOADED: "uploaded", files_pb.FILE_STATUS_PROCESSED: "processed",
                files_pb.FILE_STATUS_ERROR: "error"}
_FILE_PURPOSE_TO_PB = {"fine-tune": files_pb.FILE_PURPOSE_FINE_TUNE}
_FILE_PURPOSE = {files_pb.FILE_PURPOSE_UNSPECIFIED: "fine-tune", files_pb.FILE_PURPOSE_FINE_TUNE: "fine-tune"}
_SCALARS = tuple(f.name for f in fields(types.Hyperparameters) if f.name not in ("scheduler", "lora_target_modules"))


def _choice(table: Mapping, value, what: str):
    if value not in table:
        raise ValueError(f"{what}: {value!r} is not one of {', '.join(repr(k) for k in table if k is not None)}")
    return table[value]


def hyperparameters_to_pb(value: types.Hyperparameters | Mapping[str, Any] | None) -> pb.Hyperparameters:
    if value is None:
        return pb.Hyperparameters()
    given = {k: v for k, v in asdict(value).items()} if isinstance(value, types.Hyperparameters) else dict(value)
    unknown = sorted(set(given) - set(types.Hyperparameters.field_names()))
    if unknown:
        raise ValueError(f"hyperparameters: unknown field(s) {', '.join(unknown)}")
    message = pb.Hyperparameters()
    for name in _SCALARS:
        if given.get(name) is not None:
            try:
                setattr(message, name, given[name])
            except (TypeError, ValueError):
                kind = {bool: "true or false", int: "a whole number"}.get(type(getattr(message, name)), "a number")
                raise ValueError(f"hyperparameters.{name}: {given[name]!r} must be {kind}") from None
    if given.get("scheduler") is not None:
        message.scheduler = _choice(_SCHEDULER_TO_PB, given["scheduler"], "hyperparameters.scheduler")
    message.lora_target_modules.extend(given.get("lora_target_modules") or ())
    return message


def hyperparameters_from_pb(message: pb.Hyperparameters) -> types.Hyperparameters:
    values: dict[str, Any] = {name: getattr(message, name) for name in _SCALARS if message.HasField(name)}
    return types.Hyperparameters(scheduler=_SCHEDULER.get(message.scheduler),
                                 lora_target_modules=tuple(message.lora_target_modules), **values)


def placement_to_pb(value: types.Placement | Mapping[str, Any] | None) -> pb.Placement | None:
    if value is None:
        return None
    if isinstance(value, Mapping):
        value = types.Placement(**{**value, "tolerations": tuple(
            t if isinstance(t, types.Toleration) else types.Toleration(**t) for t in value.get("tolerations", ()))})
    return pb.Placement(gpu_count=value.gpu_count, node_selector=value.node_selector,
                        tolerations=[pb.Toleration(**asdict(t)) for t in value.tolerations], nodes=value.nodes,
                        strategy=_strategy_to_pb(value.strategy))


def _strategy_to_pb(strategy: str) -> int:
    try:
        return pb.DistributedStrategy.Value("DISTRIBUTED_STRATEGY_" + strategy.upper())
    except ValueError:
        raise ValueError(f"placement.strategy: {strategy!r} is not one of auto, ddp, fsdp") from None


def _strategy_from_pb(value: int) -> str:
    name = pb.DistributedStrategy.Name(value).removeprefix("DISTRIBUTED_STRATEGY_").lower()
    return "auto" if name == "unspecified" else name


def create_request(*, model: str, training_file: str, validation_file: str, test_file: str, dataset_name: str,
                   dataset_format: str | None, columns: types.ColumnMapping | None, method: str,
                   hyperparameters, suffix: str, metadata: Mapping[str, str] | None, request_id: str,
                   placement) -> pb.CreateFineTuningJobRequest:
    request = pb.CreateFineTuningJobRequest(
        model=model, training_file=training_file, validation_file=validation_file, test_file=test_file,
        dataset_name=dataset_name, dataset_format=_choice(_FORMAT_TO_PB, dataset_format, "dataset_format"),
        method=_choice(_METHOD_TO_PB, method, "method"), hyperparameters=hyperparameters_to_pb(hyperparameters),
        suffix=suffix, metadata=dict(metadata or {}), client_request_id=request_id)
    if columns is not None:
        request.columns.CopyFrom(pb.ColumnMapping(**asdict(columns)))
    placement_pb = placement_to_pb(placement)
    if placement_pb is not None:
        request.placement.CopyFrom(placement_pb)
    return request


def job_statuses_to_pb(statuses) -> list[int]:
    return [_choice(_JOB_STATUS_TO_PB, status, "statuses") for status in statuses or ()]


def _time(message, name: str) -> datetime | None:
    if not message.HasField(name):
        return None
    stamp = getattr(message, name)
    return datetime.fromtimestamp(stamp.seconds + stamp.nanos / 1e9, tz=timezone.utc)


def _error(message: pb.JobError) -> types.JobError | None:
    return types.JobError(message.code, message.message) if message.code or message.message else None


def _scores(message: pb.EvaluationScores) -> types.EvaluationScores:
    return types.EvaluationScores(message.exact_match, message.relaxed_accuracy, message.bertscore_precision,
                                  message.bertscore_recall, message.bertscore_f1, message.examples)


def _job_status(value: int) -> str:
    # A status this client does not know (a newer trainer) reads as its enum name rather than failing.
    return _JOB_STATUS.get(value) or pb.JobStatus.Name(value).removeprefix("JOB_STATUS_").lower()


def job_from_pb(message: pb.FineTuningJob) -> types.FineTuningJob:
    placement = types.Placement(message.placement.gpu_count, dict(message.placement.node_selector), tuple(
        types.Toleration(t.key, t.operator, t.value, t.effect) for t in message.placement.tolerations),
        nodes=message.placement.nodes, strategy=_strategy_from_pb(message.placement.strategy))
    return types.FineTuningJob(
        id=message.id, model=message.model, status=_job_status(message.status),
        method=_METHOD.get(message.method, "lora"), hyperparameters=hyperparameters_from_pb(message.hyperparameters),
        training_file=message.training_file, validation_file=message.validation_file, test_file=message.test_file,
        dataset_name=message.dataset_name, suffix=message.suffix, metadata=dict(message.metadata),
        placement=placement, created_at=_time(message, "created_at"), started_at=_time(message, "started_at"),
        finished_at=_time(message, "finished_at"), fine_tuned_model=message.fine_tuned_model,
        adapter_path=message.adapter_path, merged_model_path=message.merged_model_path,
        trained_steps=message.trained_steps, total_steps=message.total_steps,
        error=_error(message.error) if message.HasField("error") else None,
        evaluation_before=_scores(message.evaluation_before) if message.HasField("evaluation_before") else None,
        evaluation_after=_scores(message.evaluation_after) if message.HasField("evaluation_after") else None)


def event_from_pb(message: pb.FineTuningJobEvent) -> types.JobEvent:
    kind = message.WhichOneof("payload")
    data = None
    if kind == "status_changed":
        changed = message.status_changed
        data = types.StatusChanged(_job_status(changed.status),
                                   _error(changed.error) if changed.HasField("error") else None)
    elif kind == "progress":
        p = message.progress
        data = types.TrainingProgress(p.step, p.total_steps, p.loss, p.learning_rate, p.samples_per_second,
                                      p.eta_seconds, p.epoch, p.tokens_per_second, p.step_seconds)
    elif kind == "evaluation":
        e = message.evaluation
        data = types.EvaluationResult(e.phase, e.step, _scores(e.scores))
    elif kind == "checkpoint":
        data = types.CheckpointSaved(message.checkpoint.step, message.checkpoint.path)
    return types.JobEvent(message.job_id, message.sequence, _time(message, "created_at"), message.message, data)


def checkpoint_from_pb(message: pb.Checkpoint) -> types.Checkpoint:
    return types.Checkpoint(message.step, message.path, dict(message.metrics), _time(message, "created_at"))


def file_from_pb(message: files_pb.File) -> types.FileObject:
    return types.FileObject(
        id=message.id, bytes=message.bytes, created_at=_time(message, "created_at"), filename=message.filename,
        purpose=_FILE_PURPOSE.get(message.purpose, "fine-tune"), status=_FILE_STATUS.get(message.status, "uploaded"),
        status_details=message.status_details, sha256=message.sha256,
        record_count=message.record_count if message.HasField("record_count") else None)


def file_purpose_to_pb(purpose: str) -> int:
    return _choice(_FILE_PURPOSE_TO_PB, purpose, "purpose")
