"""JobReportingService: the job-store calls of workers that run away from the store (Kubernetes Jobs), served on
their own port with a bearer token, on grpc.aio like the client API. Each handler converts, hands the store
call to the pool, converts back."""

from __future__ import annotations

import hashlib
import json
import secrets

import grpc

from vlmforge.trainer.v1 import worker_pb2 as pb
from vlmforge.trainer.v1 import worker_pb2_grpc

from ..domain import Job, JobError
from ..errors import InvalidArgumentError
from ..store import JobStore
from .aio_loop import AsyncServer, ServerLoop
from .blocking import BlockingCalls
from .convert import status_from_pb, status_to_pb
from .malformed import MalformedRequestInterceptor
from .status_codes import grpc_errors
from .tls import ServerTls, bind


def job_record_to_pb(job: Job) -> pb.JobRecord:
    return pb.JobRecord(id=job.id, status=status_to_pb(job.status), spec_json=json.dumps(job.spec),
                        result_json=json.dumps(job.result))


class JobReportingServicer(worker_pb2_grpc.JobReportingServiceServicer):
    def __init__(self, store: JobStore, blocking: BlockingCalls):
        self.store = store
        self.blocking = blocking

    @grpc_errors
    async def GetJobRecord(self, request, context):  # noqa: N802 - gRPC's method names
        return job_record_to_pb(await self.blocking(self.store.get_job, request.job_id))

    @grpc_errors
    async def AppendEvent(self, request, context):  # noqa: N802
        event = await self.blocking(self.store.append_event, request.job_id, request.kind, request.message,
                                    _json_object(request.payload_json, "payload_json"),
                                    report_id=request.report_id or None)
        return pb.AppendEventResponse(sequence=event.sequence)

    @grpc_errors
    async def RecordProgress(self, request, context):  # noqa: N802
        event = await self.blocking(self.store.record_progress, request.job_id, request.trained_steps,
                                    request.total_steps, request.message,
                                    _json_object(request.payload_json, "payload_json"),
                                    report_id=request.report_id or None)
        return pb.AppendEventResponse(sequence=event.sequence)

    @grpc_errors
    async def MergeResult(self, request, context):  # noqa: N802
        await self.blocking(self.store.merge_result, request.job_id, _json_object(request.result_json, "result_json"))
        return pb.MergeResultResponse()

    @grpc_errors
    async def TransitionJob(self, request, context):  # noqa: N802
        error = JobError(request.error.code, request.error.message) if request.HasField("error") else None
        job = await self.blocking(self.store.transition, request.job_id, status_from_pb(request.status),
                                  request.message, error=error,
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


class BearerTokenInterceptor(grpc.aio.ServerInterceptor):
    """Every call must carry `authorization: Bearer <token>`; compared as digests, in constant time."""

    def __init__(self, token: str):
        self._digest = hashlib.sha256(token.encode()).digest()

    async def intercept_service(self, continuation, handler_call_details):
        metadata = dict(handler_call_details.invocation_metadata or ())
        scheme, _, token = str(metadata.get("authorization", "")).partition(" ")
        if scheme.lower() == "bearer" and secrets.compare_digest(hashlib.sha256(token.encode()).digest(),
                                                                 self._digest):
            return await continuation(handler_call_details)
        return grpc.unary_unary_rpc_method_handler(_refuse)


async def _refuse(request, context):
    await context.abort(grpc.StatusCode.UNAUTHENTICATED, "a valid worker token is required (authorization: Bearer ...)")


def create_worker_api_server(store: JobStore, address: str, *, token: str | None, blocking_workers: int = 4,
                             tls: ServerTls | None = None) -> tuple[AsyncServer, int]:
    """Binds and starts the worker API; returns the server and its port. Without a token it relies on the
    network alone (NetworkPolicy). Its own pool: the client API's load never delays a worker's report. With
    `tls`, TLS only; workers verify it with the CA they are given (remote_store.WORKER_API_CA_BUNDLE_ENV)."""
    loop = ServerLoop.shared()
    return loop.run(_start(loop, store, address, token, blocking_workers, tls))


async def _start(loop: ServerLoop, store: JobStore, address: str, token: str | None,
                 blocking_workers: int, tls: ServerTls | None) -> tuple[AsyncServer, int]:
    interceptors = [MalformedRequestInterceptor()]
    if token:
        interceptors.insert(0, BearerTokenInterceptor(token))
    blocking = BlockingCalls(blocking_workers, thread_name_prefix="worker-api")
    server = grpc.aio.server(interceptors=interceptors)
    worker_pb2_grpc.add_JobReportingServiceServicer_to_server(JobReportingServicer(store, blocking), server)
    port = bind(server, address, tls.without_client_auth() if tls else None)
    await server.start()
    return AsyncServer(loop, server, on_stopped=blocking.shutdown), port
