"""FineTuningService handlers: convert the request, call the job service, convert the answer."""

from __future__ import annotations

from vlmforge.trainer.v1 import trainer_pb2 as pb
from vlmforge.trainer.v1 import trainer_pb2_grpc

from ..jobs import JobService
from .convert import event_to_pb, job_to_pb, spec_from_pb, statuses_from_pb
from .status_codes import grpc_errors


class FineTuningServicer(trainer_pb2_grpc.FineTuningServiceServicer):
    def __init__(self, jobs: JobService):
        self.jobs = jobs

    @grpc_errors
    def CreateFineTuningJob(self, request, context):  # noqa: N802 - gRPC's method names
        spec, client_request_id = spec_from_pb(request)
        return job_to_pb(self.jobs.create(spec, client_request_id))

    @grpc_errors
    def GetFineTuningJob(self, request, context):  # noqa: N802
        return job_to_pb(self.jobs.get(request.id))

    @grpc_errors
    def ListFineTuningJobs(self, request, context):  # noqa: N802
        jobs, next_token = self.jobs.list(statuses_from_pb(request.statuses), request.page_size, request.page_token)
        return pb.ListFineTuningJobsResponse(jobs=[job_to_pb(job) for job in jobs], next_page_token=next_token)

    @grpc_errors
    def CancelFineTuningJob(self, request, context):  # noqa: N802
        return job_to_pb(self.jobs.cancel(request.id))

    @grpc_errors
    def WatchFineTuningJob(self, request, context):  # noqa: N802
        for event in self.jobs.watch(request.id, request.after_sequence, context.is_active):
            yield event_to_pb(event)

    @grpc_errors
    def ListFineTuningCheckpoints(self, request, context):  # noqa: N802
        job = self.jobs.get(request.job_id)
        return pb.ListFineTuningCheckpointsResponse(checkpoints=[
            pb.Checkpoint(step=c["step"], path=c["path"], metrics=c.get("metrics", {}))
            for c in job.result.get("checkpoints", [])
        ])
