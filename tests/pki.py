"""Certificates for the TLS tests, made with `cryptography`: CAs, server certificates for localhost and
127.0.0.1, client certificates, written as files the way a Secret volume or cert-manager leaves them."""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from trainer_service.grpc_api.tls import ServerTls


@dataclass(frozen=True)
class Issued:
    cert: bytes
    key: bytes


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _pem_key(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


class Authority:
    """A CA that signs server certificates (SAN localhost and 127.0.0.1) and client certificates."""

    def __init__(self, name: str):
        self.name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        self.key = _key()
        self.cert = self._build(self.name, self.key.public_key(), ca=True).sign(self.key, hashes.SHA256())
        self.pem = self.cert.public_bytes(serialization.Encoding.PEM)

    def _build(self, subject: x509.Name, public_key, *, ca: bool) -> x509.CertificateBuilder:
        now = datetime.datetime.now(datetime.timezone.utc)
        return (x509.CertificateBuilder().subject_name(subject).issuer_name(self.name).public_key(public_key)
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(minutes=5))
                .not_valid_after(now + datetime.timedelta(days=1))
                .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))

    def issue(self, common_name: str, *, client: bool = False) -> Issued:
        key = _key()
        builder = self._build(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]),
                              key.public_key(), ca=False)
        if client:
            builder = builder.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        else:
            builder = builder.add_extension(x509.SubjectAlternativeName([
                x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            builder = builder.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        cert = builder.sign(self.key, hashes.SHA256())
        return Issued(cert.public_bytes(serialization.Encoding.PEM), _pem_key(key))


class Pki:
    """Files in a directory, as a Secret volume or cert-manager leaves them."""

    def __init__(self, directory: Path):
        self.directory = directory
        self.ca, self.other_ca, self.client_ca = Authority("test CA"), Authority("other CA"), Authority("client CA")
        self.ca_file = self.write("ca.crt", self.ca.pem)
        self.other_ca_file = self.write("other-ca.crt", self.other_ca.pem)
        self.client_ca_file = self.write("client-ca.crt", self.client_ca.pem)
        server = self.ca.issue("vlmforge-trainer")
        self.cert_file, self.key_file = self.write("tls.crt", server.cert), self.write("tls.key", server.key)

    def write(self, name: str, content: bytes) -> Path:
        """Replaces the file by a rename, as an atomic writer does (a new inode under the same name)."""
        path = self.directory / name
        partial = self.directory / f".{name}.partial"
        partial.write_bytes(content)
        partial.replace(path)
        return path

    def client_files(self, authority: Authority, name: str) -> tuple[Path, Path]:
        issued = authority.issue(name, client=True)
        return self.write(f"{name}.crt", issued.cert), self.write(f"{name}.key", issued.key)

    def server_tls(self, *, mutual: bool = False) -> ServerTls:
        return ServerTls(self.cert_file, self.key_file, self.client_ca_file if mutual else None)
