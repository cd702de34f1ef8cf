"""`python -m trainer_service.healthcheck [ADDRESS] [--ca-bundle CA.pem]`: exit 0 when the trainer's
grpc.health.v1 says SERVING, 1 otherwise (NOT_SERVING while starting or draining, or no answer). For the image's
HEALTHCHECK and the Kubernetes exec probes: the kubelet's native gRPC probe speaks plaintext only, and with
--tls-cert the trainer serves TLS only.

TLS as the client library does it (vlmforge.client): --ca-bundle / $VLMFORGE_CA_BUNDLE makes the check connect
with TLS, --client-cert / --client-key (or $VLMFORGE_CLIENT_CERT / $VLMFORGE_CLIENT_KEY) answer a trainer that
requires client certificates."""

from __future__ import annotations

import argparse
import os
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from vlmforge.client._channel import CA_BUNDLE_ENV, Tls, open_channel

TRAINER_TLS_CERT_ENV = "VLMFORGE_TRAINER_TLS_CERT"  # the trainer's --tls-cert, set in its container


def is_serving(address: str, timeout_s: float, tls: Tls | None = None) -> bool:
    with open_channel(address, tls=tls) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=timeout_s)
        except grpc.RpcError:
            return False
    return reply.status == health_pb2.HealthCheckResponse.SERVING


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m trainer_service.healthcheck", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("address", nargs="?", default="127.0.0.1:50051",
                        help="with TLS, a name or IP address the trainer's certificate holds (e.g. localhost)")
    parser.add_argument("--timeout-s", type=float, default=3.0)
    parser.add_argument("--ca-bundle", help="PEM CA of the trainer's certificate: check over TLS")
    parser.add_argument("--client-cert", help="PEM client certificate (mutual TLS)")
    parser.add_argument("--client-key", help="its private key")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        tls = Tls.resolve(ca_bundle=args.ca_bundle, client_cert=args.client_cert, client_key=args.client_key)
        if tls is None and os.environ.get(TRAINER_TLS_CERT_ENV):  # inside the trainer's container (HEALTHCHECK)
            print(f"error: the trainer serves TLS only ({TRAINER_TLS_CERT_ENV} is set): pass --ca-bundle or set "
                  f"{CA_BUNDLE_ENV}")
            return 1
        serving = is_serving(args.address, args.timeout_s, tls)
    except ValueError as error:  # a CA or client certificate file that cannot be read
        print(f"error: {error}")
        return 1
    print("SERVING" if serving else "not serving")
    return 0 if serving else 1


if __name__ == "__main__":
    sys.exit(main())
