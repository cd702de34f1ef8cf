"""The job store seen from a worker in a Kubernetes Job: the same five calls as JobStore, made over the trainer's
JobReportingService. The protobuf edge of the worker: run_job and the notifier never see `_pb2`.

A trainer restart (a Deployment rollout, a node drain) must not fail a training run that took hours: every call
waits for the channel to be ready (`wait_for_ready`) up to `call_timeout_s`, and gRPC retries UNAVAILABLE."""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Any

import grpc

from vlmforge.client._channel import Tls, open_channel
from vlmforge.trainer.v1 import worker_pb2 as pb
from vlmforge.trainer.v1 import worker_pb2_grpc
from vlmforge.trainer.v1.trainer_pb2 import JobError as JobErrorPb

from ..domain import Job, JobError, JobEvent, JobStatus
from ..errors import FailedPreconditionError, InvalidArgumentError, JobNotFoundError, TrainerError
from ..grpc_api.convert import status_from_pb, status_to_pb

WORKER_API_TOKEN_ENV = "VLMFORGE_TRAINER_WORKER_API_TOKEN"  # the trainer's setting of the same name
# Set when the worker API serves TLS: the PEM CA its certificate chains to (the launcher mounts it in the pod).
WORKER_API_CA_BUNDLE_ENV = "VLMFORGE_WORKER_API_CA_BUNDLE"

_RETRY_UNAVAILABLE = json.dumps({"methodConfig": [{
    "name": [{"service": "vlmforge.trainer.v1.JobReportingService"}],
    "retryPolicy": {"maxAttempts": 5, "initialBackoff": "0.5s", "maxBackoff": "10s", "backoffMultiplier": 2,
                    "retryableStatusCodes": ["UNAVAILABLE"]},
}]})


class RemoteJobStore:
    def __init__(self, address: str, *, token: str | None = None, ca_bundle: str | os.PathLike | None = None,
                 call_timeout_s: float = 300.0):
        """`ca_bundle`: connect with TLS, verifying the trainer's certificate against it (else plaintext)."""
        self.address = address
        self.call_timeout_s = call_timeout_s
        self._metadata = (("authorization", f"Bearer {token}"),) if token else ()
        self._channel = open_channel(address, tls=Tls(Path(ca_bundle)) if ca_bundle else None,
                                     options=[("grpc.service_config", _RETRY_UNAVAILABLE), ("grpc.enable_retries", 1)])
        self._stub = worker_pb2_grpc.JobReportingServiceStub(self._channel)

    def close(self) -> None:
        self._channel.close()

    def _call(self, method, request):
        try:
            return method(request, timeout=self.call_timeout_s, metadata=self._metadata, wait_for_ready=True)
        except grpc.RpcError as error:
            raise _typed(error, getattr(request, "job_id", "")) from error

    def get_job(self, job_id: str) -> Job:
        return _job(self._call(self._stub.GetJobRecord, pb.GetJobRecordRequest(job_id=job_id)))

    def append_event(self, job_id: str, kind: str, message: str, payload: dict[str, Any] | None = None) -> JobEvent:
        reply = self._call(self._stub.AppendEvent, pb.AppendEventRequest(
            job_id=job_id, kind=kind, message=message, payload_json=json.dumps(payload or {}), report_id=_report_id()))
        return JobEvent(job_id, reply.sequence, 0.0, kind, message, payload or {})

    def record_progress(self, job_id: str, trained_steps: int, total_steps: int, message: str,
                        payload: dict[str, Any]) -> JobEvent:
        reply = self._call(self._stub.RecordProgress, pb.RecordProgressRequest(
            job_id=job_id, trained_steps=trained_steps, total_steps=total_steps, message=message,
            payload_json=json.dumps(payload), report_id=_report_id()))
        return JobEvent(job_id, reply.sequence, 0.0, "progress", message, payload)

    def merge_result(self, job_id: str, result: dict[str, Any]) -> None:
        self._call(self._stub.MergeResult, pb.MergeResultRequest(job_id=job_id, result_json=json.dumps(result)))

    def transition(self, job_id: str, status: JobStatus, message: str, *, error: JobError | None = None,
                   result: dict[str, Any] | None = None) -> Job:
        request = pb.TransitionJobRequest(job_id=job_id, status=status_to_pb(status), message=message,
                                          result_json=json.dumps(result or {}), report_id=_report_id())
        if error is not None:
            request.error.CopyFrom(JobErrorPb(code=error.code, message=error.message))
        return _job(self._call(self._stub.TransitionJob, request))


def _report_id() -> str:
    """One per report; gRPC sends the same request, so the same id, on each retry of it."""
    return uuid.uuid4().hex


def _typed(error: grpc.RpcError, job_id: str) -> TrainerError | grpc.RpcError:
    """The store's own errors, so callers handle a remote store as they handle a local one."""
    code, details = error.code(), error.details()
    if code is grpc.StatusCode.NOT_FOUND:
        return JobNotFoundError(job_id)
    if code is grpc.StatusCode.FAILED_PRECONDITION:
        return FailedPreconditionError(details)
    if code is grpc.StatusCode.INVALID_ARGUMENT:
        return InvalidArgumentError("request", details)
    return error


def _job(record: pb.JobRecord) -> Job:
    """Only what a worker reads is carried: status, spec and result (times and counters stay on the trainer)."""
    return Job(id=record.id, status=status_from_pb(record.status), spec=json.loads(record.spec_json),
               created_at=0.0, result=json.loads(record.result_json))
