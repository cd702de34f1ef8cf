"""Builds the trainer's client-facing gRPC server on grpc.aio: FineTuningService plus grpc.health.v1 and server
reflection (so `grpcurl` works without the .proto). `create_server` is separate from serving, so tests start a
real server on port 0.

An open stream costs a coroutine, not a thread: blocking work goes through one bounded pool (`BlockingCalls`),
and health / reflection answer on the event loop however busy that pool is."""

from __future__ import annotations

from dataclasses import dataclass

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from vlmforge.trainer.v1 import files_pb2, files_pb2_grpc, trainer_pb2, trainer_pb2_grpc

from ..event_hub import EventHub
from ..files import FileService
from ..files.uploads import MAX_CHUNK_BYTES
from ..jobs import JobService
from .aio_loop import AsyncServer, ServerLoop
from .auth_interceptor import Callers, ClientAuth
from .blocking import BlockingCalls
from .files_servicer import FilesServicer
from .malformed import MalformedRequestInterceptor
from .servicer import FineTuningServicer
from .stream_limits import StreamLimits
from .tls import ServerTls, bind

SERVICE_NAME = trainer_pb2.DESCRIPTOR.services_by_name["FineTuningService"].full_name
FILES_SERVICE_NAME = files_pb2.DESCRIPTOR.services_by_name["FilesService"].full_name
HEALTH_SERVICE_NAME = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name


@dataclass(frozen=True)
class ServerLimits:
    """Connection and stream limits (TrainerSettings has the same names, documented there)."""

    blocking_workers: int = 8
    create_workers: int = 4
    max_streams_total: int = 4096
    max_streams_per_client: int = 1024
    keepalive_time_s: float = 60.0
    keepalive_timeout_s: float = 20.0
    max_connection_age_s: float | None = 1800.0
    max_connection_age_grace_s: float = 300.0

    def channel_options(self, max_message_bytes: int) -> list[tuple[str, int]]:
        options = [
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.keepalive_time_ms", int(self.keepalive_time_s * 1000)),
            ("grpc.keepalive_timeout_ms", int(self.keepalive_timeout_s * 1000)),
            # A Watch stream may go minutes without an event: pings must be allowed on a quiet connection, and
            # clients that keep their own connection alive every >= 10 s are not told off (GOAWAY too_many_pings).
            ("grpc.http2.max_pings_without_data", 0),
            ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
        ]
        if self.max_connection_age_s is not None:
            options += [("grpc.max_connection_age_ms", int(self.max_connection_age_s * 1000)),
                        ("grpc.max_connection_age_grace_ms", int(self.max_connection_age_grace_s * 1000))]
        return options

    @classmethod
    def from_settings(cls, settings) -> ServerLimits:
        return cls(**{name: getattr(settings, name) for name in cls.__dataclass_fields__})


@dataclass
class RunningServer:
    server: AsyncServer
    port: int
    health: health.aio.HealthServicer
    events: EventHub
    stream_limits: StreamLimits
    loop: ServerLoop
    services: tuple[str, ...] = (SERVICE_NAME,)  # the health status of each, and of "" (the whole server)

    def set_serving(self, serving: bool) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        self.loop.run(self._set_health(status))

    async def _set_health(self, status) -> None:
        for service in ("", *self.services):
            await self.health.set(service, status)

    def drain(self, grace_s: float) -> None:
        """Ends open Watch streams with UNAVAILABLE (they reconnect and resume from their last event), then gives
        in-flight calls `grace_s` seconds and stops."""
        self.loop.run(self.events.close())
        self.server.stop(grace_s).wait()


def create_server(jobs: JobService, address: str, *, max_message_bytes: int,
                  limits: ServerLimits = ServerLimits(), files: FileService | None = None,
                  tls: ServerTls | None = None, auth: ClientAuth | None = None) -> RunningServer:
    """Binds and starts the server, reporting NOT_SERVING until the caller says it is ready. With `files`, it
    also serves FilesService; with `tls`, TLS only (health and reflection too); with `auth`, FineTuningService and
    FilesService require an API key (health and reflection stay open: see auth_interceptor.py)."""
    loop = ServerLoop.shared()
    return loop.run(_start(loop, jobs, address, max_message_bytes, limits, files, tls, auth))


async def _start(loop: ServerLoop, jobs: JobService, address: str, max_message_bytes: int,
                 limits: ServerLimits, files: FileService | None = None,
                 tls: ServerTls | None = None, auth: ClientAuth | None = None) -> RunningServer:
    blocking = BlockingCalls(limits.blocking_workers)
    # Create reads model configs and datasets: its own threads, so Get / List / Watch never queue behind it.
    checks = BlockingCalls(limits.create_workers, thread_name_prefix="grpc-create")
    if files is not None:  # an upload chunk is up to 4 MiB plus its framing
        max_message_bytes = max(max_message_bytes, MAX_CHUNK_BYTES + 64 * 1024)
    interceptors = [MalformedRequestInterceptor()]
    if auth is not None:  # first: a caller without a valid key learns nothing, not even that a request is malformed
        interceptors.insert(0, auth.interceptor((SERVICE_NAME, FILES_SERVICE_NAME)))
    callers = Callers(keys_required=auth is not None)
    server = grpc.aio.server(options=limits.channel_options(max_message_bytes), interceptors=interceptors)
    events = EventHub(jobs.store, blocking, poll_interval_s=jobs.watch_poll_interval_s)
    stream_limits = StreamLimits(limits.max_streams_total, limits.max_streams_per_client)
    trainer_pb2_grpc.add_FineTuningServiceServicer_to_server(
        FineTuningServicer(jobs, events, blocking, checks, stream_limits, callers), server)
    served = [SERVICE_NAME]
    if files is not None:
        files_pb2_grpc.add_FilesServiceServicer_to_server(FilesServicer(files, blocking, stream_limits, callers),
                                                    server)
        served.append(FILES_SERVICE_NAME)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection((*served, HEALTH_SERVICE_NAME, reflection.SERVICE_NAME), server)
    port = bind(server, address, tls)
    for service in ("", *served):
        await health_servicer.set(service, health_pb2.HealthCheckResponse.NOT_SERVING)
    await events.start()
    await server.start()

    def stopped() -> None:
        blocking.shutdown()
        checks.shutdown()
        loop.call_soon(lambda: loop.loop.create_task(events.close()))

    return RunningServer(AsyncServer(loop, server, on_stopped=stopped), port, health_servicer, events,
                         stream_limits, loop, tuple(served))
