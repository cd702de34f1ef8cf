"""`python -m trainer_service.healthcheck [ADDRESS]`: exit 0 when the trainer's grpc.health.v1 says SERVING,
1 otherwise (NOT_SERVING while starting or draining, or no answer). For the image's HEALTHCHECK; Kubernetes
uses its native gRPC probe instead."""

from __future__ import annotations

import argparse
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def is_serving(address: str, timeout_s: float) -> bool:
    with grpc.insecure_channel(address) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=timeout_s)
        except grpc.RpcError:
            return False
    return reply.status == health_pb2.HealthCheckResponse.SERVING


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trainer_service.healthcheck", description=__doc__)
    parser.add_argument("address", nargs="?", default="127.0.0.1:50051")
    parser.add_argument("--timeout-s", type=float, default=3.0)
    args = parser.parse_args(argv)
    serving = is_serving(args.address, args.timeout_s)
    print("SERVING" if serving else "not serving")
    return 0 if serving else 1


if __name__ == "__main__":
    sys.exit(main())
