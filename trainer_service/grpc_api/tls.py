"""TLS for the trainer's gRPC servers: the certificate files are re-read when they change, without a restart
(cert-manager rotates them in the Secret the pod mounts). gRPC's own mechanism does it: a certificate-configuration
fetcher that gRPC calls before each new connection's handshake; open connections keep the certificate they
started with."""

from __future__ import annotations

import logging
import os
import ssl
import threading
from dataclasses import dataclass, replace
from pathlib import Path

import grpc

logger = logging.getLogger(__name__)


class TlsFilesError(ValueError):
    """A certificate, key or CA file that cannot be used, named by its setting."""


@dataclass(frozen=True)
class ServerTls:
    """PEM files: the certificate chain and its key, and for mutual TLS the CA that signs client certificates
    (clients without such a certificate are then refused at the handshake)."""

    cert_path: Path
    key_path: Path
    client_ca_path: Path | None = None

    @classmethod
    def from_settings(cls, settings) -> ServerTls | None:
        if settings.tls_cert is None:
            return None
        return cls(Path(settings.tls_cert), Path(settings.tls_key), settings.tls_client_ca)

    def without_client_auth(self) -> ServerTls:
        """The worker API: workers prove who they are with the worker token, not a client certificate."""
        return replace(self, client_ca_path=None)

    def credentials(self) -> grpc.ServerCredentials:
        """Reads and checks the files now (a TlsFilesError names the bad one), then follows their changes."""
        files = ReloadingCertificates(self)
        return grpc.dynamic_ssl_server_credentials(files.current, files.fetch,
                                                   require_client_authentication=self.client_ca_path is not None)


def bind(server: grpc.aio.Server, address: str, tls: ServerTls | None) -> int:
    """Opens `address` on `server`, with TLS when `tls` is given; returns the port."""
    if tls is None:
        return server.add_insecure_port(address)
    return server.add_secure_port(address, tls.credentials())


class ReloadingCertificates:
    """The fetcher: answers None (no change) while the files' stat stamps are the same, which costs three
    stat() calls per new connection; loads and checks them again when a stamp moves. A half-written pair (a
    key that does not match the certificate yet, an unparsable file) keeps the previous certificate in use and
    is tried again when the files change next."""

    def __init__(self, tls: ServerTls):
        self.tls = tls
        self._lock = threading.Lock()
        self._stamp = self._stat()
        self.current = self._load()
        self._failed_stamp: tuple | None = None
        self._last_warning: str | None = None

    def _paths(self) -> list[tuple[str, Path]]:
        paths = [("--tls-cert", self.tls.cert_path), ("--tls-key", self.tls.key_path)]
        if self.tls.client_ca_path is not None:
            paths.append(("--tls-client-ca", self.tls.client_ca_path))
        return paths

    def _stat(self) -> tuple:
        stamps = []
        for setting, path in self._paths():
            try:
                # stat follows symlinks: a Secret volume swaps its `..data` link, and the target is new.
                info = os.stat(path)
            except OSError as error:
                raise TlsFilesError(f"{setting} {path}: {error.strerror}") from None
            stamps.append((info.st_ino, info.st_mtime_ns, info.st_size))
        return tuple(stamps)

    def _read(self) -> list[bytes]:
        contents = []
        for setting, path in self._paths():
            try:
                contents.append(path.read_bytes())
            except OSError as error:
                raise TlsFilesError(f"{setting} {path}: {error.strerror}") from None
        return contents

    def _load(self) -> grpc.ServerCertificateConfiguration:
        contents = self._read()
        _check(self.tls)
        if self._read() != contents:  # changed while being checked: not a consistent pair yet
            raise TlsFilesError(f"--tls-cert {self.tls.cert_path}: the files changed while being read")
        cert, key, *client_ca = contents
        return grpc.ssl_server_certificate_configuration([(key, cert)], client_ca[0] if client_ca else None)

    def fetch(self) -> grpc.ServerCertificateConfiguration | None:
        with self._lock:
            try:
                stamp = self._stat()
                if stamp in (self._stamp, self._failed_stamp):
                    return None
                self._failed_stamp = stamp  # until it loads: tried once per change, not once per connection
                config = self._load()
            except TlsFilesError as error:
                self._warn(str(error))
                return None
            self._stamp, self._failed_stamp, self.current = stamp, None, config
            self._last_warning = None
            logger.info("TLS certificate reloaded from %s", self.tls.cert_path)
            return config

    def _warn(self, message: str) -> None:
        if message != self._last_warning:
            logger.warning("TLS files not reloaded, the previous certificate stays in use: %s", message)
            self._last_warning = message


def _check(tls: ServerTls) -> None:
    """The key matches the certificate and every file parses: Python's ssl module reads the same PEM files."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        # An encrypted key would make OpenSSL prompt on the terminal; gRPC cannot use one anyway.
        context.load_cert_chain(tls.cert_path, tls.key_path, password=lambda: _encrypted(tls))
    except ssl.SSLError as error:
        raise TlsFilesError(f"--tls-cert {tls.cert_path} / --tls-key {tls.key_path}: {_reason(error)}") from None
    except OSError as error:
        raise TlsFilesError(f"--tls-cert {tls.cert_path}: {error.strerror}") from None
    if tls.client_ca_path is not None:
        try:
            context.load_verify_locations(cafile=tls.client_ca_path)
        except (ssl.SSLError, OSError) as error:
            raise TlsFilesError(f"--tls-client-ca {tls.client_ca_path}: {_reason(error)}") from None


def _encrypted(tls: ServerTls) -> bytes:
    raise TlsFilesError(f"--tls-key {tls.key_path}: the key is encrypted; give an unencrypted PEM key (gRPC reads "
                        "no passphrase)")


def _reason(error: Exception) -> str:
    reason = getattr(error, "reason", None) or getattr(error, "strerror", None) or str(error)
    return {"KEY_VALUES_MISMATCH": "the key does not belong to the certificate",
            "NO_START_LINE": "not a PEM file", "PEM_LIB": "not a PEM certificate or key"}.get(reason, str(reason))
