"""The one place that opens a channel to the trainer, for the sync and the asyncio client (and the trainer's
health check and workers): plain `grpc.secure_channel` credentials from PEM files, or an insecure channel."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc

CA_BUNDLE_ENV = "VLMFORGE_CA_BUNDLE"
CLIENT_CERT_ENV = "VLMFORGE_CLIENT_CERT"
CLIENT_KEY_ENV = "VLMFORGE_CLIENT_KEY"
# A restarted trainer is reconnected to within seconds (gRPC's own backoff grows to 120 s between attempts), and
# a connection that died silently (a laptop asleep, a NAT timeout) is noticed by keepalive pings every 30 s
# (the trainer accepts them from 10 s on), so a long Watch stream breaks with UNAVAILABLE and reconnects.
_DEFAULT_CHANNEL_OPTIONS = (("grpc.max_reconnect_backoff_ms", 5000), ("grpc.keepalive_time_ms", 30_000),
                            ("grpc.keepalive_timeout_ms", 10_000))


def channel_options(options: Sequence[tuple[str, object]]) -> list[tuple[str, object]]:
    """The caller's options over our defaults."""
    given = dict(options)
    return [*given.items(), *((k, v) for k, v in _DEFAULT_CHANNEL_OPTIONS if k not in given)]


@dataclass(frozen=True)
class Tls:
    """How the channel is secured. `ca_bundle`: the PEM roots the trainer's certificate must chain to (None:
    the system's roots); `client_cert` / `client_key`: a certificate for a trainer that requires one (mTLS)."""

    ca_bundle: Path | None = None
    client_cert: Path | None = None
    client_key: Path | None = None

    @classmethod
    def resolve(cls, *, tls: bool | None = None, ca_bundle: str | os.PathLike | None = None,
                client_cert: str | os.PathLike | None = None,
                client_key: str | os.PathLike | None = None) -> Tls | None:
        """Arguments over $VLMFORGE_CA_BUNDLE / $VLMFORGE_CLIENT_CERT / $VLMFORGE_CLIENT_KEY. Any of them (or
        tls=True) makes the channel secure; tls=False forces plaintext whatever the environment says."""
        if tls is False:
            return None
        ca_bundle = ca_bundle or os.environ.get(CA_BUNDLE_ENV) or None
        client_cert = client_cert or os.environ.get(CLIENT_CERT_ENV) or None
        client_key = client_key or os.environ.get(CLIENT_KEY_ENV) or None
        if (client_cert is None) != (client_key is None):
            raise ValueError("client_cert and client_key go together (a client certificate and its private key)")
        if not (tls or ca_bundle or client_cert):
            return None
        return cls(*(Path(p) if p is not None else None for p in (ca_bundle, client_cert, client_key)))

    def credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(root_certificates=_read("ca_bundle", self.ca_bundle),
                                            private_key=_read("client_key", self.client_key),
                                            certificate_chain=_read("client_cert", self.client_cert))


def _read(name: str, path: Path | None) -> bytes | None:
    if path is None:
        return None
    try:
        content = path.read_bytes()
    except OSError as error:
        raise ValueError(f"{name} {path}: {error.strerror}") from None
    if b"-----BEGIN" not in content:
        raise ValueError(f"{name} {path}: not a PEM file")
    return content


def open_channel(address: str, *, tls: Tls | None = None, credentials: grpc.ChannelCredentials | None = None,
                 options: Sequence[tuple[str, object]] = (), aio: bool = False):
    """A grpc.Channel (or grpc.aio.Channel with aio=True): `credentials` as given, else from `tls`, else
    plaintext."""
    if credentials is None and tls is not None:
        credentials = tls.credentials()
    module = grpc.aio if aio else grpc
    if credentials is None:
        return module.insecure_channel(address, options=options)
    return module.secure_channel(address, credentials, options=options)
