"""`client.jobs`: create / retrieve / list / cancel / events / checkpoints / wait / download_adapter."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc

from vlmforge.trainer.v1 import files_pb2 as files_pb
from vlmforge.trainer.v1 import trainer_pb2 as pb

from . import _convert, types
from ._artifacts import receive_artifacts
from ._reconnect import Reconnects
from .errors import UnavailableError, from_rpc_error

if TYPE_CHECKING:
    from ._trainer import Trainer



def file_id_or_path(value: str | types.FileObject) -> str:
    return value.id if isinstance(value, types.FileObject) else str(value)


class Jobs:
    def __init__(self, client: Trainer):
        self._client = client

    def create(self, *, model: str, training_file: str | types.FileObject,
               validation_file: str | types.FileObject = "", test_file: str | types.FileObject = "",
               dataset_name: str = "", dataset_format: types.DatasetFormat | None = None,
               columns: types.ColumnMapping | None = None, method: types.Method = "lora",
               hyperparameters: types.Hyperparameters | Mapping[str, Any] | None = None, suffix: str = "",
               metadata: Mapping[str, str] | None = None, request_id: str = "",
               placement: types.Placement | Mapping[str, Any] | None = None) -> types.FineTuningJob:
        """Submits a job; it comes back at once (status "validating_files" or "queued"). Files are uploaded
        file ids ("file-...") or paths on the trainer's disk. `request_id` makes a retried create idempotent."""
        request = _convert.create_request(
            model=model, training_file=file_id_or_path(training_file),
            validation_file=file_id_or_path(validation_file), test_file=file_id_or_path(test_file),
            dataset_name=dataset_name, dataset_format=dataset_format, columns=columns, method=method,
            hyperparameters=hyperparameters, suffix=suffix, metadata=metadata, request_id=request_id,
            placement=placement)
        return _convert.job_from_pb(self._client.unary(self._client.jobs_stub.CreateFineTuningJob, request))

    def retrieve(self, job_id: str) -> types.FineTuningJob:
        return _convert.job_from_pb(self._client.unary(self._client.jobs_stub.GetFineTuningJob,
                                                       pb.GetFineTuningJobRequest(id=job_id)))

    def list(self, *, statuses: Iterable[types.JobStatus] = (), page_size: int = 100) -> Iterator[types.FineTuningJob]:
        """Every job, newest first, fetching pages of `page_size` as the iteration goes."""
        request = pb.ListFineTuningJobsRequest(statuses=_convert.job_statuses_to_pb(statuses), page_size=page_size)
        while True:
            page = self._client.unary(self._client.jobs_stub.ListFineTuningJobs, request)
            yield from (_convert.job_from_pb(job) for job in page.jobs)
            if not page.next_page_token:
                return
            request.page_token = page.next_page_token

    def cancel(self, job_id: str) -> types.FineTuningJob:
        return _convert.job_from_pb(self._client.unary(self._client.jobs_stub.CancelFineTuningJob,
                                                       pb.CancelFineTuningJobRequest(id=job_id)))

    def checkpoints(self, job_id: str) -> list[types.Checkpoint]:
        response = self._client.unary(self._client.jobs_stub.ListFineTuningCheckpoints,
                                      pb.ListFineTuningCheckpointsRequest(job_id=job_id))
        return [_convert.checkpoint_from_pb(c) for c in response.checkpoints]

    def events(self, job_id: str, *, after_sequence: int = 0, follow: bool = True,
               reconnect_timeout_s: float = 60.0, replay_timeout_s: float = 2.0) -> Iterator[types.JobEvent]:
        """The job's events after `after_sequence`, oldest first.

        follow=True: then the live ones until the job has ended. When the stream breaks with UNAVAILABLE (the
        trainer restarts, or drains and tells its streams to go elsewhere) it reconnects, resuming after the
        last event it yielded, so nothing is missed or repeated; it gives up once the trainer has been
        unreachable for `reconnect_timeout_s`. follow=False: the events the trainer sends within
        `replay_timeout_s` (all recorded ones, for any job of ordinary length)."""
        stub, last, ended = self._client.jobs_stub, after_sequence, False
        reconnects = Reconnects(reconnect_timeout_s)
        while True:
            call = stub.WatchFineTuningJob(pb.WatchFineTuningJobRequest(id=job_id, after_sequence=last),
                                           metadata=self._client.metadata,
                                           timeout=None if follow else replay_timeout_s)
            try:
                for message in call:
                    reconnects.received()
                    event = _convert.event_from_pb(message)
                    last = event.sequence
                    ended = ended or (isinstance(event.data, types.StatusChanged)
                                      and event.data.status in types.TERMINAL_JOB_STATUSES)
                    yield event
                # A stream that ends cleanly before the job did was closed by a draining trainer.
                if not follow or ended or self.retrieve(job_id).done:
                    return
            except grpc.RpcError as error:
                if not follow and error.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                    return
                failure = from_rpc_error(error)
            except UnavailableError as error:  # from retrieve()
                failure = error
            else:
                failure = None
            finally:
                call.cancel()
            time.sleep(reconnects.delay_after(failure))

    def wait(self, job_id: str, *, on_event: Callable[[types.JobEvent], None] | None = None,
             reconnect_timeout_s: float = 60.0) -> types.FineTuningJob:
        """Follows the job's events until it has ended, then returns the job."""
        for event in self.events(job_id, reconnect_timeout_s=reconnect_timeout_s):
            if on_event is not None:
                on_event(event)
        return self.retrieve(job_id)

    def download_adapter(self, job_id: str, dest: str | Path, *, merged: bool = False,
                         progress: Callable[[int], None] | None = None) -> types.DownloadedArtifacts:
        """Downloads a succeeded job's artifacts into the new directory `dest`: `adapter/` (PEFT), plus
        `merged_model/` with merged=True. The tar stream's sha256 is checked before anything is unpacked
        (DataLossError if it differs); `dest` appears whole or not at all. `progress` gets the bytes so far."""
        call = self._client.files_stub.DownloadJobArtifacts(
            files_pb.DownloadJobArtifactsRequest(job_id=job_id, include_merged_model=merged),
            metadata=self._client.metadata)
        try:
            return receive_artifacts(call, Path(dest), merged=merged, progress=progress)
        except grpc.RpcError as error:
            raise from_rpc_error(error) from None
        finally:
            call.cancel()
