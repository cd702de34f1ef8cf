"""FineTuningService handlers (grpc.aio): convert the request, hand the job service's blocking call to the pool,
convert the answer. Watch streams follow the event hub and hold no thread. The caller (its API key's project)
is passed to the job service as a plain domain `Caller`; another project's job is NOT_FOUND there."""

from __future__ import annotations

from vlmforge.trainer.v1 import trainer_pb2 as pb
from vlmforge.trainer.v1 import trainer_pb2_grpc

from ..event_hub import EventHub
from ..jobs import JobService
from .audited import audited
from .auth_interceptor import Callers
from .blocking import BlockingCalls
from .convert import event_to_pb, job_to_pb, spec_from_pb, statuses_from_pb
from .status_codes import grpc_errors
from .stream_limits import StreamLimits


class FineTuningServicer(trainer_pb2_grpc.FineTuningServiceServicer):
    def __init__(self, jobs: JobService, events: EventHub, blocking: BlockingCalls, checks: BlockingCalls,
                 stream_limits: StreamLimits, callers: Callers = Callers()):
        self.jobs = jobs
        self.events = events
        self.blocking = blocking  # store reads and writes: short
        self.checks = checks  # Create: model and dataset checks, longer
        self.stream_limits = stream_limits
        self.callers = callers

    @grpc_errors
    @audited("job_id")
    async def CreateFineTuningJob(self, request, context):  # noqa: N802 - gRPC's method names
        spec, client_request_id = spec_from_pb(request)
        return job_to_pb(await self.checks(self.jobs.create, spec, client_request_id, caller=self.callers.current()))

    @grpc_errors
    async def GetFineTuningJob(self, request, context):  # noqa: N802
        return job_to_pb(await self.blocking(self.jobs.get, request.id, self.callers.current()))

    @grpc_errors
    async def ListFineTuningJobs(self, request, context):  # noqa: N802
        jobs, next_token = await self.blocking(self.jobs.list, statuses_from_pb(request.statuses), request.page_size,
                                               request.page_token, self.callers.current())
        return pb.ListFineTuningJobsResponse(jobs=[job_to_pb(job) for job in jobs], next_page_token=next_token)

    @grpc_errors
    @audited("job_id")
    async def CancelFineTuningJob(self, request, context):  # noqa: N802
        return job_to_pb(await self.blocking(self.jobs.cancel, request.id, self.callers.current()))

    @grpc_errors
    async def WatchFineTuningJob(self, request, context):  # noqa: N802
        await self.blocking(self.jobs.get, request.id, self.callers.current())  # another project's: NOT_FOUND
        async with self.stream_limits.hold(context.peer()):
            async for event in self.events.follow(request.id, request.after_sequence):
                yield event_to_pb(event)

    @grpc_errors
    async def ListFineTuningCheckpoints(self, request, context):  # noqa: N802
        job = await self.blocking(self.jobs.get, request.job_id, self.callers.current())
        return pb.ListFineTuningCheckpointsResponse(checkpoints=[
            pb.Checkpoint(step=c["step"], path=c["path"], metrics=c.get("metrics", {}))
            for c in job.result.get("checkpoints", [])
        ])
