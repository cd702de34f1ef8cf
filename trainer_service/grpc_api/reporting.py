"""JobReportingService: the job-store calls of workers that run away from the store (Kubernetes Jobs), served on
their own port with a bearer token. Each handler converts, calls the store, converts back."""

from __future__ import annotations

import hashlib
import json
import secrets
from concurrent import futures

import grpc

from vlmforge.trainer.v1 import worker_pb2 as pb
from vlmforge.trainer.v1 import worker_pb2_grpc

from ..domain import Job, JobError
from ..errors import InvalidArgumentError
from ..store import JobStore
from .convert import status_from_pb, status_to_pb
from .malformed import MalformedRequestInterceptor
from .status_codes import grpc_errors


def job_record_to_pb(job: Job) -> pb.JobRecord:
    return pb.JobRecord(id=job.id, status=status_to_pb(job.status), spec_json=json.dumps(job.spec),
                        result_json=json.dumps(job.result))


class JobReportingServicer(worker_pb2_grpc.JobReportingServiceServicer):
    def __init__(self, store: JobStore):
        self.store = store

    @grpc_errors
    def GetJobRecord(self, request, context):  # noqa: N802 - gRPC's method names
        return job_record_to_pb(self.store.get_job(request.job_id))

    @grpc_errors
    def AppendEvent(self, request, context):  # noqa: N802
        event = self.store.append_event(request.job_id, request.kind, request.message,
                                        _json_object(request.payload_json, "payload_json"),
                                        report_id=request.report_id or None)
        return pb.AppendEventResponse(sequence=event.sequence)

    @grpc_errors
    def RecordProgress(self, request, context):  # noqa: N802
        event = self.store.record_progress(request.job_id, request.trained_steps, request.total_steps,
                                           request.message, _json_object(request.payload_json, "payload_json"),
                                           report_id=request.report_id or None)
        return pb.AppendEventResponse(sequence=event.sequence)

    @grpc_errors
    def MergeResult(self, request, context):  # noqa: N802
        self.store.merge_result(request.job_id, _json_object(request.result_json, "result_json"))
        return pb.MergeResultResponse()

    @grpc_errors
    def TransitionJob(self, request, context):  # noqa: N802
        error = JobError(request.error.code, request.error.message) if request.HasField("error") else None
        job = self.store.transition(request.job_id, status_from_pb(request.status), request.message, error=error,
                                    result=_json_object(request.result_json, "result_json"),
                                    report_id=request.report_id or None)
        return job_record_to_pb(job)


def _json_object(text: str, field: str) -> dict:
    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise InvalidArgumentError(field, f"not JSON: {error}") from None
    if not isinstance(value, dict):
        raise InvalidArgumentError(field, "must be a JSON object")
    return value


class BearerTokenInterceptor(grpc.ServerInterceptor):
    """Every call must carry `authorization: Bearer <token>`; compared as digests, in constant time."""

    def __init__(self, token: str):
        self._digest = hashlib.sha256(token.encode()).digest()

    def intercept_service(self, continuation, handler_call_details):
        metadata = dict(handler_call_details.invocation_metadata or ())
        scheme, _, token = str(metadata.get("authorization", "")).partition(" ")
        if scheme.lower() == "bearer" and secrets.compare_digest(hashlib.sha256(token.encode()).digest(),
                                                                 self._digest):
            return continuation(handler_call_details)
        return grpc.unary_unary_rpc_method_handler(_refuse)


def _refuse(request, context):
    context.abort(grpc.StatusCode.UNAUTHENTICATED, "a valid worker token is required (authorization: Bearer ...)")


def create_worker_api_server(store: JobStore, address: str, *, token: str | None,
                             max_workers: int = 8) -> tuple[grpc.Server, int]:
    """Binds and starts the worker API; returns the server and its port. Without a token it relies on the
    network alone (NetworkPolicy)."""
    interceptors = [MalformedRequestInterceptor()]
    if token:
        interceptors.insert(0, BearerTokenInterceptor(token))
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="worker-api"),
                         interceptors=interceptors)
    worker_pb2_grpc.add_JobReportingServiceServicer_to_server(JobReportingServicer(store), server)
    port = server.add_insecure_port(address)
    server.start()
    return server, port
