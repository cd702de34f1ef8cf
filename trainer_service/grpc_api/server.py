"""Builds the gRPC server: FineTuningService plus grpc.health.v1 and server reflection (so `grpcurl` works
without the .proto). `create_server` is separate from serving, so tests start a real server on port 0."""

from __future__ import annotations

from concurrent import futures
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from vlmforge.trainer.v1 import trainer_pb2, trainer_pb2_grpc

from ..jobs import JobService
from .malformed import MalformedRequestInterceptor
from .servicer import FineTuningServicer

SERVICE_NAME = trainer_pb2.DESCRIPTOR.services_by_name["FineTuningService"].full_name


@dataclass
class RunningServer:
    server: grpc.Server
    port: int
    health: health.HealthServicer

    def set_serving(self, serving: bool) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        for service in ("", SERVICE_NAME):
            self.health.set(service, status)


def create_server(jobs: JobService, address: str, *, max_message_bytes: int, max_workers: int = 16) -> RunningServer:
    """Binds and starts the server, reporting NOT_SERVING until the caller says it is ready."""
    options = [("grpc.max_receive_message_length", max_message_bytes),
               ("grpc.max_send_message_length", max_message_bytes)]
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="grpc"),
                         options=options, interceptors=[MalformedRequestInterceptor()])
    trainer_pb2_grpc.add_FineTuningServiceServicer_to_server(FineTuningServicer(jobs), server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME), server)
    port = server.add_insecure_port(address)
    running = RunningServer(server, port, health_servicer)
    running.set_serving(False)
    server.start()
    return running
