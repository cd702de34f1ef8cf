"""`Trainer`: one gRPC channel to the trainer, with the `jobs` and `files` resources on it."""

from __future__ import annotations

import os
from collections.abc import Sequence

import grpc

from vlmforge.trainer.v1 import files_pb2_grpc, trainer_pb2_grpc

from ._channel import Tls, channel_options, open_channel
from ._files import Files
from ._jobs import Jobs
from .errors import from_rpc_error

DEFAULT_ADDRESS = "127.0.0.1:50051"
ADDRESS_ENV = "VLMFORGE_TRAINER_ADDRESS"
API_KEY_ENV = "VLMFORGE_API_KEY"


def resolve_address(address: str | None) -> str:
    return address or os.environ.get(ADDRESS_ENV) or DEFAULT_ADDRESS


def call_metadata(api_key: str | None) -> tuple[tuple[str, str], ...]:
    key = api_key if api_key is not None else os.environ.get(API_KEY_ENV)
    return (("authorization", f"Bearer {key}"),) if key else ()


class Trainer:
    """A client of the trainer's gRPC API, used like the OpenAI SDK's fine-tuning calls::

        with Trainer("trainer.example:50051") as client:
            file = client.files.upload("./charts")
            job = client.jobs.create(model="Qwen2-VL-2B-Instruct", training_file=file.id)

    `address` defaults to $VLMFORGE_TRAINER_ADDRESS, then 127.0.0.1:50051. `api_key` (default
    $VLMFORGE_API_KEY) goes out as `authorization: Bearer ...` on every call. `timeout_s` bounds each unary
    call; streams (uploads, downloads, events) have no deadline of their own.

    TLS: `ca_bundle` (default $VLMFORGE_CA_BUNDLE), a PEM file of the roots the trainer's certificate chains to,
    makes the channel secure; `tls=True` does too, trusting the system's roots. A trainer that requires client
    certificates (mTLS) gets `client_cert` and `client_key` (default $VLMFORGE_CLIENT_CERT /
    $VLMFORGE_CLIENT_KEY). `credentials` (any grpc.ChannelCredentials) overrides all of these."""

    def __init__(self, address: str | None = None, *, api_key: str | None = None, timeout_s: float = 30.0,
                 tls: bool | None = None, ca_bundle: str | os.PathLike | None = None,
                 client_cert: str | os.PathLike | None = None, client_key: str | os.PathLike | None = None,
                 credentials: grpc.ChannelCredentials | None = None,
                 options: Sequence[tuple[str, object]] = ()):
        self.address = resolve_address(address)
        self.timeout_s = timeout_s
        self.metadata = call_metadata(api_key)
        security = None if credentials else Tls.resolve(tls=tls, ca_bundle=ca_bundle, client_cert=client_cert,
                                                         client_key=client_key)
        self._channel = open_channel(self.address, tls=security, credentials=credentials,
                                     options=channel_options(options))
        self.jobs_stub = trainer_pb2_grpc.FineTuningServiceStub(self._channel)
        self.files_stub = files_pb2_grpc.FilesServiceStub(self._channel)
        self.jobs = Jobs(self)
        self.files = Files(self)

    def unary(self, method, request, *, timeout_s: float | None = None):
        """Calls a unary method; a failure leaves as the typed error of its status code."""
        try:
            return method(request, timeout=timeout_s or self.timeout_s, metadata=self.metadata)
        except grpc.RpcError as error:
            raise from_rpc_error(error) from None

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> Trainer:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Trainer({self.address!r})"
