"""`AsyncTrainer`: the jobs calls over grpc.aio, for asyncio programs (a web backend following many jobs on one
event loop). Uploads and downloads stay in the sync `Trainer`: they are file I/O bound, not waiting-bound."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from typing import Any

import grpc

from vlmforge.trainer.v1 import trainer_pb2 as pb
from vlmforge.trainer.v1 import trainer_pb2_grpc

from . import _convert, types
from ._channel import Tls, channel_options, open_channel
from ._jobs import file_id_or_path
from ._reconnect import Reconnects
from ._trainer import call_metadata, resolve_address
from .errors import TrainerError, UnavailableError, from_rpc_error


class AsyncTrainer:
    """As `Trainer` (the same address, key and TLS arguments), with `await client.jobs.retrieve(...)` and
    `async for event in client.jobs.events(...)`."""

    def __init__(self, address: str | None = None, *, api_key: str | None = None, timeout_s: float = 30.0,
                 tls: bool | None = None, ca_bundle: str | os.PathLike | None = None,
                 client_cert: str | os.PathLike | None = None, client_key: str | os.PathLike | None = None,
                 credentials: grpc.ChannelCredentials | None = None, options: Sequence[tuple[str, object]] = ()):
        self.address = resolve_address(address)
        self.timeout_s = timeout_s
        self.metadata = call_metadata(api_key)
        security = None if credentials else Tls.resolve(tls=tls, ca_bundle=ca_bundle, client_cert=client_cert,
                                                         client_key=client_key)
        self._channel = open_channel(self.address, tls=security, credentials=credentials,
                                     options=channel_options(options), aio=True)
        self.jobs_stub = trainer_pb2_grpc.FineTuningServiceStub(self._channel)
        self.jobs = AsyncJobs(self)

    async def unary(self, method, request):
        try:
            return await method(request, timeout=self.timeout_s, metadata=self.metadata)
        except grpc.RpcError as error:
            raise from_rpc_error(error) from None

    async def close(self) -> None:
        await self._channel.close()

    async def __aenter__(self) -> AsyncTrainer:
        return self

    async def __aexit__(self, *exc_info) -> None:
        await self.close()


class AsyncJobs:
    def __init__(self, client: AsyncTrainer):
        self._client = client

    async def create(self, *, model: str, training_file: str | types.FileObject,
                     validation_file: str | types.FileObject = "", test_file: str | types.FileObject = "",
                     dataset_name: str = "", dataset_format: types.DatasetFormat | None = None,
                     columns: types.ColumnMapping | None = None, method: types.Method = "lora",
                     hyperparameters: types.Hyperparameters | Mapping[str, Any] | None = None, suffix: str = "",
                     metadata: Mapping[str, str] | None = None, request_id: str = "",
                     placement: types.Placement | Mapping[str, Any] | None = None) -> types.FineTuningJob:
        request = _convert.create_request(
            model=model, training_file=file_id_or_path(training_file),
            validation_file=file_id_or_path(validation_file), test_file=file_id_or_path(test_file),
            dataset_name=dataset_name, dataset_format=dataset_format, columns=columns, method=method,
            hyperparameters=hyperparameters, suffix=suffix, metadata=metadata, request_id=request_id,
            placement=placement)
        return _convert.job_from_pb(await self._client.unary(self._client.jobs_stub.CreateFineTuningJob, request))

    async def retrieve(self, job_id: str) -> types.FineTuningJob:
        return _convert.job_from_pb(await self._client.unary(self._client.jobs_stub.GetFineTuningJob,
                                                             pb.GetFineTuningJobRequest(id=job_id)))

    async def list(self, *, statuses: Iterable[types.JobStatus] = (),
                   page_size: int = 100) -> AsyncIterator[types.FineTuningJob]:
        request = pb.ListFineTuningJobsRequest(statuses=_convert.job_statuses_to_pb(statuses), page_size=page_size)
        while True:
            page = await self._client.unary(self._client.jobs_stub.ListFineTuningJobs, request)
            for job in page.jobs:
                yield _convert.job_from_pb(job)
            if not page.next_page_token:
                return
            request.page_token = page.next_page_token

    async def cancel(self, job_id: str) -> types.FineTuningJob:
        return _convert.job_from_pb(await self._client.unary(self._client.jobs_stub.CancelFineTuningJob,
                                                             pb.CancelFineTuningJobRequest(id=job_id)))

    async def events(self, job_id: str, *, after_sequence: int = 0,
                     reconnect_timeout_s: float = 60.0) -> AsyncIterator[types.JobEvent]:
        """As `Trainer.jobs.events(follow=True)`: until the job has ended, reconnecting on UNAVAILABLE."""
        last, ended = after_sequence, False
        reconnects = Reconnects(reconnect_timeout_s)
        while True:
            failure: TrainerError | None = None
            call = self._client.jobs_stub.WatchFineTuningJob(
                pb.WatchFineTuningJobRequest(id=job_id, after_sequence=last), metadata=self._client.metadata)
            try:
                async for message in call:
                    reconnects.received()
                    event = _convert.event_from_pb(message)
                    last = event.sequence
                    ended = ended or (isinstance(event.data, types.StatusChanged)
                                      and event.data.status in types.TERMINAL_JOB_STATUSES)
                    yield event
                if ended or (await self.retrieve(job_id)).done:
                    return
            except grpc.RpcError as error:
                failure = from_rpc_error(error)
            except UnavailableError as error:
                failure = error
            finally:
                call.cancel()
            await asyncio.sleep(reconnects.delay_after(failure))
