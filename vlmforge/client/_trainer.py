"""`Trainer`: one gRPC channel to the trainer, with the `jobs` and `files` resources on it."""

from __future__ import annotations

import os
from collections.abc import Sequence

import grpc

from vlmforge.trainer.v1 import files_pb2_grpc, trainer_pb2_grpc

from ._files import Files
from ._jobs import Jobs
from .errors import from_rpc_error

DEFAULT_ADDRESS = "127.0.0.1:50051"
ADDRESS_ENV = "VLMFORGE_TRAINER_ADDRESS"
API_KEY_ENV = "VLMFORGE_API_KEY"
# A restarted trainer is reconnected to within seconds (gRPC's own backoff grows to 120 s between attempts), and
# a connection that died silently (a laptop asleep, a NAT timeout) is noticed by keepalive pings every 30 s
# (the trainer accepts them from 10 s on), so a long Watch stream breaks with UNAVAILABLE and reconnects.
_DEFAULT_CHANNEL_OPTIONS = (("grpc.max_reconnect_backoff_ms", 5000), ("grpc.keepalive_time_ms", 30_000),
                            ("grpc.keepalive_timeout_ms", 10_000))


def resolve_address(address: str | None) -> str:
    return address or os.environ.get(ADDRESS_ENV) or DEFAULT_ADDRESS


def channel_options(options: Sequence[tuple[str, object]]) -> list[tuple[str, object]]:
    """The caller's options over our defaults."""
    given = dict(options)
    return [*given.items(), *((k, v) for k, v in _DEFAULT_CHANNEL_OPTIONS if k not in given)]


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
    call; streams (uploads, downloads, events) have no deadline of their own. Pass `credentials`
    (grpc.ssl_channel_credentials()) for TLS."""

    def __init__(self, address: str | None = None, *, api_key: str | None = None, timeout_s: float = 30.0,
                 credentials: grpc.ChannelCredentials | None = None,
                 options: Sequence[tuple[str, object]] = ()):
        self.address = resolve_address(address)
        self.timeout_s = timeout_s
        self.metadata = call_metadata(api_key)
        options = channel_options(options)
        self._channel = (grpc.secure_channel(self.address, credentials, options=options) if credentials
                         else grpc.insecure_channel(self.address, options=options))
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
